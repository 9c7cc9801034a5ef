//! The queue on a NATS JetStream cluster (cluster mode, SPEC §13): any
//! number of tidegate instances share it, and exactly one of them
//! dispatches each destination at a time.
//!
//! # What lives where (all names start with `storage.jetstream.stream_prefix`, `P`)
//!
//! | thing | JetStream object | |
//! |---|---|---|
//! | a destination's queue | stream `P_Q_<dest>`, subject `P.q.<dest>` | limits retention, `discard = new`, `max_msgs`/`max_bytes` from `[destination.queue]` |
//! | its dead letters | stream `P_DEAD_<dest>` | |
//! | retry schedules, destination records (pause, halt), halted keys, ids | KV bucket `P_STATE` | `r.<dest>.<stream seq>`, `d.<dest>`, `h.<dest>.<hex key>`, `idx.<dest>`, `salt` |
//! | finished messages, for status look-ups | KV bucket `P_STATUS`, `max_age` = `history_retention` | |
//! | `Idempotency-Key` records | KV bucket `P_IDEM`, `max_age` = `history_retention` | |
//! | dispatch leases | KV bucket `P_LEASE`, `max_age` = [`LEASE_TTL`] | `l.<dest>` |
//! | review items (held, audit, feedback) and their decisions | KV bucket `P_REVIEW`, swept by `[review] retention` | `v.<id>` (module `station`) |
//! | held messages awaiting a decision | stream `P_HELD_<dest>`, subject `P.held.<dest>.<id>` | |
//! | reloads, outcomes for `Prefer: wait` | core NATS subjects `P.reload`, `P.done` | at most once |
//!
//! # Invariants
//!
//! - A producer's 2xx follows JetStream's publish acknowledgement: the
//!   message is stored on a quorum of the stream's replicas. A publish that
//!   fails or is not confirmed in time is a 503 `storage_unavailable`; the
//!   publish itself is atomic, so nothing is half-stored.
//! - The queue stream is used as a work queue by its one dispatcher: it
//!   reads forward from the stream's first message and deletes each message
//!   it finishes, after recording how it finished (`P_STATUS`, and the dead
//!   letter stream first for a dead letter). JetStream's own work-queue
//!   retention is not used: it forbids the non-acknowledging reads with
//!   which a new dispatcher picks up where a dead one stopped.
//! - One dispatcher per destination: an instance dispatches only while it
//!   holds `l.<dest>`, created when absent and refreshed every
//!   [`LEASE_REFRESH`] with a revision check. An instance that has not
//!   refreshed for [`LEASE_SAFE`] stops handing out messages and starting
//!   attempts (`may_dispatch`, asked before each one); the lease
//!   expires on the servers only after [`LEASE_TTL`], so two instances never
//!   hand out the same destination's messages at once. What the old holder
//!   had in flight may be delivered again by the new one (at-least-once,
//!   bounded by `max_in_flight`).
//! - Message ids are cluster-wide: a salt drawn once per cluster, then the
//!   destination's index (allocated once, `idx.<dest>`) in the high 24 bits
//!   and the stream sequence in the low 40. A replayed dead letter is
//!   published again under its old id (`Tg-Id`).
//! - Retries are scheduled in `r.<dest>.<seq>` before the attempt counts as
//!   settled, so a new dispatcher honours the schedule and the attempt count.
//! - Key ordering: the dispatcher indexes the pending messages it has read
//!   (sequence, id, key; not bodies) and hands out each key's oldest when
//!   due, its key not halted and nothing of its key in flight. A halted key
//!   is recorded in `h.<dest>.<hex key>` in the same way, for every instance.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv, stream};
use async_nats::HeaderMap;
use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::{
    id_of, is_message_id, now_ms, review, Appended, DeadLetter, DestinationRecord, Disposition, Due, HaltedKey,
    JournalError, JournalStats, LastError, Limits, Message, MessageStatus, NewMessage, Outcome, Queue, QueueCounts,
    Queued, Result, STATE_DEAD, STATE_DELIVERED, STATE_DROPPED, STATE_HELD, STATE_PENDING, STATE_QUARANTINED,
};
use crate::config::JetStreamConfig;

mod station;
use station::Screened;

/// How long a lease outlives its last refresh on the servers.
pub const LEASE_TTL: Duration = Duration::from_secs(3);
/// How often the holder refreshes its lease, and others try to take it.
pub const LEASE_REFRESH: Duration = Duration::from_millis(500);
/// How long a holder goes on handing out messages without a refresh:
/// well inside `LEASE_TTL`, so it has stopped before anyone else can start.
pub const LEASE_SAFE: Duration = Duration::from_millis(1800);
/// The oldest NATS server cluster mode runs on.
pub const MIN_SERVER: (u64, u64) = (2, 10);
/// How often counts are read back from the streams.
const COUNT_EVERY: Duration = Duration::from_millis(200);
/// Every how many counts the holder looks over its held messages for
/// releases left unfinished (about every 2 s).
const HELD_SWEEP_TICKS: u64 = 10;
/// The stream sequence's bits in a message id.
const SEQ_BITS: u32 = 40;
const SEQ_MASK: u64 = (1 << SEQ_BITS) - 1;

fn unavailable(e: impl std::fmt::Display) -> JournalError {
    JournalError::Unavailable(e.to_string())
}

/// A message's retry schedule, as `r.<dest>.<stream seq>` holds it.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Retry {
    id: u64,
    attempts: u32,
    visible_at: i64,
    last_error: Option<LastError>,
}

/// A finished message, as `P_STATUS` holds it.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Finished {
    dest: String,
    state: i64,
    attempts: u32,
    received_at: i64,
    finished_at: i64,
    last_error: Option<LastError>,
    reason: Option<String>,
    producer: Option<String>,
    category: Option<String>,
    #[serde(default)]
    order_key: Option<String>,
}

/// An `Idempotency-Key` record.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct KeyRecord {
    id: u64,
    fingerprint: String,
    at: i64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Record {
    state: String,
    reason: String,
    head_seq: Option<u64>,
}

/// What the dispatcher of this instance was handed, by id: enough to
/// record how it finished once its body is gone.
#[derive(Clone, Debug)]
struct Handed {
    stream_seq: u64,
    received_at: i64,
    producer: Option<String>,
    category: Option<String>,
    order_key: Option<String>,
}

/// The next batch of a backlogged queue, read while the dispatcher works
/// through the current one, so that it never waits on NATS between
/// batches: a wait lets the token bucket fill to its burst, and the
/// downstream then sees that burst at once.
#[derive(Default)]
struct Ahead {
    /// Bumped by every rewind and lease epoch: a read begun before it is
    /// dropped.
    generation: u64,
    running: bool,
    /// From this cursor: the messages read, and the cursor after them.
    batch: Option<(u64, Vec<jetstream::message::StreamMessage>, u64)>,
}

/// This instance's reading position in a destination it dispatches.
#[derive(Default)]
struct Reading {
    /// The lease epoch this state belongs to; a new epoch starts over.
    epoch: u64,
    /// The next stream sequence to read.
    cursor: u64,
    /// Read from the start again (messages were given back).
    rewind: bool,
    /// Scheduled retries, by stream sequence.
    scheduled: BTreeMap<u64, Retry>,
}

struct Dest {
    name: String,
    index: u32,
    subject: String,
    dead_subject: String,
    queue: stream::Stream,
    dead: stream::Stream,
    /// Held messages awaiting a decision (`review`).
    held: stream::Stream,
    held_subject_prefix: String,
    counts: Arc<QueueCounts>,
    limits: Mutex<(u64, u64)>,
    /// Set while this instance holds the lease, with when it last refreshed.
    holding: AtomicBool,
    /// The highest stream sequence seen in the queue stream.
    last_seen: AtomicU64,
    /// What its two streams store, as JetStream counts it.
    stored_bytes: AtomicU64,
    refreshed: Mutex<Option<Instant>>,
    epoch: AtomicU64,
    reading: Mutex<Reading>,
    ahead: Mutex<Ahead>,
    /// Shared by this instance's moves of messages between the queue and
    /// the held stream, exclusive while it counts both: a count between a
    /// move's publish and its delete would see the message twice.
    moving: tokio::sync::RwLock<()>,
    /// Key ordering: the pending messages read so far, with their keys.
    keys: Mutex<KeyIndex>,
    handed: Mutex<HashMap<u64, Handed>>,
}

/// What the dispatcher of a key-ordered destination knows of its queue:
/// every pending message read so far (stream sequence → id and key; the
/// bodies stay in the stream), so that the head of each key is found in
/// memory. Built as it reads forward, reset with each lease epoch.
#[derive(Default)]
struct KeyIndex {
    epoch: u64,
    cursor: u64,
    pending: BTreeMap<u64, (u64, Option<String>)>,
}

/// A halted key, as `h.<dest>.<hex key>` holds it.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Halted {
    dest: String,
    key: String,
    id: u64,
    reason: String,
}

impl Dest {
    fn forget_ahead(&self) {
        let mut a = lock(&self.ahead);
        a.generation += 1;
        a.batch = None;
    }

    /// Up to `want` messages read ahead from `cursor`, with the cursor
    /// after them; `None` when nothing was read ahead from there.
    fn take_ahead(&self, cursor: u64, want: usize) -> Option<(Vec<jetstream::message::StreamMessage>, u64)> {
        let mut a = lock(&self.ahead);
        let (from, mut msgs, next) = a.batch.take()?;
        if from != cursor || msgs.is_empty() {
            return None;
        }
        if msgs.len() > want {
            let rest = msgs.split_off(want);
            let resume = rest[0].sequence;
            a.batch = Some((resume, rest, next));
            return Some((msgs, resume));
        }
        Some((msgs, next))
    }

    fn dispatching(&self) -> bool {
        self.holding.load(Ordering::SeqCst) && lock(&self.refreshed).is_some_and(|t| t.elapsed() < LEASE_SAFE)
    }

    fn id(&self, stream_seq: u64) -> u64 {
        (u64::from(self.index) << SEQ_BITS) | (stream_seq & SEQ_MASK)
    }
}

/// The JetStream queue; cheap to clone.
#[derive(Clone)]
pub struct JetStream {
    inner: Arc<Inner>,
}

struct Inner {
    client: async_nats::Client,
    js: jetstream::Context,
    cfg: JetStreamConfig,
    instance: String,
    salt: u32,
    state: kv::Store,
    status: kv::Store,
    idem: kv::Store,
    lease: kv::Store,
    review: kv::Store,
    /// `review`'s records without bodies, kept by a watch.
    mirror: Mutex<station::Mirror>,
    dests: RwLock<HashMap<String, Arc<Dest>>>,
    by_index: RwLock<HashMap<u32, String>>,
    queues: RwLock<HashMap<String, Arc<QueueCounts>>>,
    stats: Arc<JournalStats>,
    stop: tokio::sync::watch::Sender<bool>,
    /// Serialises stream creation per process.
    creating: tokio::sync::Mutex<()>,
    /// Signalled when another instance reloaded (`P.reload`).
    reload_asked: Arc<tokio::sync::Notify>,
    /// Outcomes other instances announced (`P.done`), until taken.
    outcomes: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<Outcome>>>,
}

/// A destination to prepare at start: its name and queue limits.
pub struct Prepared {
    pub name: String,
    pub max_messages: u64,
    pub max_bytes: u64,
}

impl JetStream {
    /// Connects, checks the server, and prepares the buckets and each
    /// destination's streams. Fails with a message an operator can act on.
    pub async fn open(
        cfg: &JetStreamConfig,
        destinations: Vec<Prepared>,
        history_retention: Duration,
        idempotency_window: Duration,
    ) -> std::result::Result<JetStream, String> {
        let mut opts = async_nats::ConnectOptions::new()
            .name("tidegate")
            .connection_timeout(Duration::from_secs(5))
            .request_timeout(Some(Duration::from_secs(5)));
        if let Some(path) = &cfg.credentials_file {
            opts = opts
                .credentials_file(path)
                .await
                .map_err(|e| format!("reading storage.jetstream.credentials_file {}: {e}", path.display()))?;
        }
        if let Some(t) = &cfg.token {
            opts = opts.token(t.expose().to_string());
        }
        let urls = cfg.urls.join(",");
        let client = opts
            .connect(cfg.urls.as_slice())
            .await
            .map_err(|e| format!("cannot reach NATS at {urls}: {e}"))?;
        let version = client.server_info().version;
        check_version(&version)?;
        let js = jetstream::ContextBuilder::new()
            .timeout(Duration::from_secs(5))
            .build(client.clone());
        js.query_account().await.map_err(|e| {
            format!("NATS {version} at {urls} answered, but JetStream is not available to this account: {e}")
        })?;
        let p = &cfg.stream_prefix;
        let bucket = |name: &str, max_age: Duration, history: i64| kv::Config {
            bucket: format!("{p}_{name}"),
            history,
            max_age,
            storage: stream::StorageType::File,
            num_replicas: cfg.replicas,
            ..Default::default()
        };
        let make = |c: kv::Config| {
            let js = js.clone();
            async move {
                let name = c.bucket.clone();
                match js.get_key_value(&name).await {
                    Ok(s) => Ok(s),
                    Err(_) => js
                        .create_key_value(c)
                        .await
                        .map_err(|e| replicas_hint(&name, e, cfg.replicas)),
                }
            }
        };
        let state = make(bucket("STATE", Duration::ZERO, 1)).await?;
        let status = make(bucket("STATUS", history_retention, 1)).await?;
        let idem = make(bucket("IDEM", idempotency_window.max(Duration::from_secs(1)), 1)).await?;
        let lease = make(bucket("LEASE", LEASE_TTL, 1)).await?;
        // Swept by `[review] retention`, not by age: a held item's
        // decision is owed however old it is.
        let review = make(bucket("REVIEW", Duration::ZERO, 1)).await?;
        let salt = cluster_salt(&state).await?;
        let (stop, _) = tokio::sync::watch::channel(false);
        let js_queue = JetStream {
            inner: Arc::new(Inner {
                client,
                js,
                cfg: cfg.clone(),
                instance: format!("{:016x}", rand::random::<u64>()),
                salt,
                state,
                status,
                idem,
                lease,
                review,
                mirror: Mutex::new(station::Mirror::default()),
                dests: RwLock::new(HashMap::new()),
                by_index: RwLock::new(HashMap::new()),
                queues: RwLock::new(HashMap::new()),
                stats: Arc::new(JournalStats::default()),
                stop,
                creating: tokio::sync::Mutex::new(()),
                reload_asked: Arc::new(tokio::sync::Notify::new()),
                outcomes: Mutex::new(None),
            }),
        };
        tokio::spawn(js_queue.clone().mirror_loop());
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        *lock(&js_queue.inner.outcomes) = Some(rx);
        let mut done = js_queue
            .inner
            .client
            .subscribe(format!("{}.done", cfg.stream_prefix))
            .await
            .map_err(|e| format!("subscribing to outcome announcements: {e}"))?;
        let (me, mut stop) = (js_queue.inner.instance.clone(), js_queue.inner.stop.subscribe());
        tokio::spawn(async move {
            use futures_util::StreamExt as _;
            loop {
                tokio::select! {
                    m = done.next() => match m {
                        Some(m) => {
                            if let Some(o) = decode_outcome(&m, &me) {
                                let _ = tx.send(o);
                            }
                        }
                        None => break,
                    },
                    _ = stop.changed() => break,
                }
            }
        });
        let mut reloads = js_queue
            .inner
            .client
            .subscribe(format!("{}.reload", cfg.stream_prefix))
            .await
            .map_err(|e| format!("subscribing to reload announcements: {e}"))?;
        let (asked, me, mut stop) = (
            js_queue.inner.reload_asked.clone(),
            js_queue.inner.instance.clone(),
            js_queue.inner.stop.subscribe(),
        );
        tokio::spawn(async move {
            use futures_util::StreamExt as _;
            loop {
                tokio::select! {
                    m = reloads.next() => match m {
                        Some(m) if m.payload != me.as_bytes() => asked.notify_one(),
                        Some(_) => {}
                        None => break,
                    },
                    _ = stop.changed() => break,
                }
            }
        });
        for d in destinations {
            js_queue
                .dest_with(&d.name, Some((d.max_messages, d.max_bytes)))
                .await
                .map_err(|e| format!("preparing the streams of destination {:?}: {e}", d.name))?;
        }
        js_queue.inner.stats.open.store(true, Ordering::Relaxed);
        tracing::warn!(
            "cluster mode: a publish is acknowledged once a quorum of replicas holds it; \
             for an fsync before every acknowledgement, run nats-server with jetstream {{ sync_interval: always }} \
             (tidegate cannot read that setting over the client protocol)"
        );
        Ok(js_queue)
    }

    /// This instance's name in leases.
    pub fn instance(&self) -> &str {
        &self.inner.instance
    }

    fn known(&self, dest: &str) -> Option<Arc<Dest>> {
        self.inner
            .dests
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(dest)
            .cloned()
    }

    async fn dest(&self, dest: &str) -> Result<Arc<Dest>> {
        match self.known(dest) {
            Some(d) => Ok(d),
            None => self.dest_with(dest, None).await,
        }
    }

    /// The destination's streams, created (or their limits updated) as
    /// needed, and its lease and count loops started once.
    async fn dest_with(&self, name: &str, limits: Option<(u64, u64)>) -> Result<Arc<Dest>> {
        let _one = self.inner.creating.lock().await;
        if let Some(d) = self.known(name) {
            return Ok(d);
        }
        let p = &self.inner.cfg.stream_prefix;
        let (max_messages, max_bytes) = limits.unwrap_or((1_000_000, 1 << 30));
        let index = self.dest_index(name).await?;
        let subject = format!("{p}.q.{name}");
        let dead_subject = format!("{p}.dead.{name}");
        let queue = self
            .stream(format!("{p}_Q_{name}"), &subject, max_messages, max_bytes)
            .await?;
        let dead = self
            .stream(format!("{p}_DEAD_{name}"), &dead_subject, -1i64 as u64, u64::MAX)
            .await?;
        let held_subject_prefix = format!("{p}.held.{name}");
        let held = self
            .stream(
                format!("{p}_HELD_{name}"),
                &format!("{held_subject_prefix}.*"),
                -1i64 as u64,
                u64::MAX,
            )
            .await?;
        let counts = super::queue_of(&self.inner.queues, name);
        let d = Arc::new(Dest {
            name: name.to_string(),
            index,
            subject,
            dead_subject,
            queue,
            dead,
            held,
            held_subject_prefix,
            counts,
            limits: Mutex::new((max_messages, max_bytes)),
            holding: AtomicBool::new(false),
            last_seen: AtomicU64::new(0),
            stored_bytes: AtomicU64::new(0),
            refreshed: Mutex::new(None),
            epoch: AtomicU64::new(0),
            reading: Mutex::new(Reading::default()),
            ahead: Mutex::new(Ahead::default()),
            moving: tokio::sync::RwLock::new(()),
            keys: Mutex::new(KeyIndex::default()),
            handed: Mutex::new(HashMap::new()),
        });
        self.inner
            .dests
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_string(), d.clone());
        self.inner
            .by_index
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(index, name.to_string());
        let _ = self.count(&d).await;
        tokio::spawn(lease_loop(self.clone(), d.clone()));
        tokio::spawn(count_loop(self.clone(), d.clone()));
        Ok(d)
    }

    async fn stream(&self, name: String, subject: &str, max_messages: u64, max_bytes: u64) -> Result<stream::Stream> {
        self.stream_from(name, subject, max_messages, max_bytes, None).await
    }

    async fn stream_from(
        &self,
        name: String,
        subject: &str,
        max_messages: u64,
        max_bytes: u64,
        first_sequence: Option<u64>,
    ) -> Result<stream::Stream> {
        let config = stream::Config {
            first_sequence,
            name: name.clone(),
            subjects: vec![subject.to_string()],
            retention: stream::RetentionPolicy::Limits,
            storage: stream::StorageType::File,
            num_replicas: self.inner.cfg.replicas,
            max_messages: i64::try_from(max_messages).unwrap_or(-1),
            max_bytes: i64::try_from(max_bytes).unwrap_or(-1),
            discard: stream::DiscardPolicy::New,
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        };
        match self.inner.js.get_stream(&name).await {
            Ok(mut s) => {
                let info = s.info().await.map_err(unavailable)?.clone();
                if info.config.num_replicas < self.inner.cfg.replicas {
                    tracing::warn!(stream = %name, replicas = info.config.num_replicas, wanted = self.inner.cfg.replicas,
                        "stream has fewer replicas than storage.jetstream.replicas; tidegate does not shrink or grow existing streams");
                }
                if info.config.max_messages != config.max_messages || info.config.max_bytes != config.max_bytes {
                    let mut c = info.config.clone();
                    c.max_messages = config.max_messages;
                    c.max_bytes = config.max_bytes;
                    self.inner.js.update_stream(c).await.map_err(unavailable)?;
                }
                Ok(s)
            }
            Err(_) => self.inner.js.create_stream(config).await.map_err(|e| {
                let text = replicas_hint(&name, e, self.inner.cfg.replicas);
                JournalError::Unavailable(if text.contains("insufficient storage") {
                    // The server reserves a stream's max_bytes on every
                    // replica when the stream is made, not as it fills.
                    format!(
                        "{text}: JetStream reserves a queue stream's max_bytes ({}) on each of its {} replicas \
                             when it is made; lower this destination's [destination.queue] max_bytes or raise \
                             max_file_store in the servers' jetstream block",
                        crate::config::ByteSize(max_bytes),
                        self.inner.cfg.replicas
                    )
                } else {
                    text
                })
            }),
        }
    }

    /// The destination's index in message ids: allocated once per
    /// cluster, first come first served.
    async fn dest_index(&self, name: &str) -> Result<u32> {
        let st = &self.inner.state;
        let key = format!("idx.{name}");
        loop {
            if let Some(v) = st.get(&key).await.map_err(unavailable)? {
                return std::str::from_utf8(&v)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| JournalError::Corrupt(format!("{key} holds no index")));
            }
            // The next free index: a counter advanced with a revision check.
            let (next, rev) = match st.entry("idx-next").await.map_err(unavailable)? {
                Some(e) => (
                    std::str::from_utf8(&e.value)
                        .ok()
                        .and_then(|s| s.parse::<u32>().ok())
                        .unwrap_or(1),
                    Some(e.revision),
                ),
                None => (1, None),
            };
            if next >= 1 << 24 {
                return Err(JournalError::Unsupported(
                    "more than 16,777,215 destinations in one cluster",
                ));
            }
            let bumped = Bytes::from((next + 1).to_string());
            let won = match rev {
                Some(r) => st.update("idx-next", bumped, r).await.is_ok(),
                None => st.create("idx-next", bumped).await.is_ok(),
            };
            if won {
                // Someone may have named this destination meanwhile: the
                // first mapping stands, and `next` is simply unused.
                let _ = st.create(&key, Bytes::from(next.to_string())).await;
            }
        }
    }

    async fn name_of(&self, index: u32) -> Option<String> {
        if let Some(n) = self
            .inner
            .by_index
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&index)
        {
            return Some(n.clone());
        }
        // Another instance's destination: look its index up once.
        let mut keys = self.inner.state.keys().await.ok()?;
        use futures_util::StreamExt as _;
        while let Some(Ok(k)) = keys.next().await {
            if let Some(name) = k.strip_prefix("idx.") {
                if let Ok(Some(v)) = self.inner.state.get(&k).await {
                    if std::str::from_utf8(&v).ok().and_then(|s| s.parse::<u32>().ok()) == Some(index) {
                        self.inner
                            .by_index
                            .write()
                            .unwrap_or_else(|e| e.into_inner())
                            .insert(index, name.to_string());
                        return Some(name.to_string());
                    }
                }
            }
        }
        None
    }

    /// Reads a destination's counts back from its streams; returns the
    /// queue stream's last sequence (it moves when anyone appends).
    async fn count(&self, d: &Dest) -> Result<u64> {
        let gone = |e: &stream::InfoError| e.to_string().contains("stream not found");
        let moving = d.moving.write().await;
        let q = match d.queue.get_info().await {
            Ok(q) => q,
            Err(e) if gone(&e) => return self.recreate(d, false).await.map(|_| 0),
            Err(e) => return Err(unavailable(e)),
        };
        let dead = match d.dead.get_info().await {
            Ok(q) => q,
            Err(e) if gone(&e) => return self.recreate(d, true).await.map(|_| 0),
            Err(e) => return Err(unavailable(e)),
        };
        let held = d.held.get_info().await.map_err(unavailable)?;
        drop(moving);
        d.last_seen.fetch_max(q.state.last_sequence, Ordering::SeqCst);
        // Held messages count in the queue's depth and bytes, as they do
        // on SQLite: they are owed a delivery or a decision.
        let before_depth = d
            .counts
            .depth
            .swap(q.state.messages + held.state.messages, Ordering::Relaxed);
        d.counts
            .bytes
            .store(q.state.bytes + held.state.bytes, Ordering::Relaxed);
        d.counts.held.store(held.state.messages, Ordering::Relaxed);
        d.counts
            .open_reviews
            .store(lock(&self.inner.mirror).open_of(&d.name), Ordering::Relaxed);
        d.counts.dead_letters.store(dead.state.messages, Ordering::Relaxed);
        d.stored_bytes
            .store(q.state.bytes + dead.state.bytes + held.state.bytes, Ordering::Relaxed);
        let total: u64 = self
            .inner
            .dests
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(|d| d.stored_bytes.load(Ordering::Relaxed))
            .sum();
        self.inner.stats.disk_bytes.store(total, Ordering::Relaxed);
        if q.state.messages + held.state.messages < before_depth {
            d.counts.room.notify_waiters();
        }
        Ok(q.state.last_sequence)
    }

    async fn publish(&self, subject: &str, headers: HeaderMap, body: Bytes) -> Result<jetstream::publish::PublishAck> {
        use async_nats::connection::State;
        if self.inner.client.connection_state() != State::Connected {
            return Err(JournalError::Unavailable("not connected to NATS".into()));
        }
        let ack = self
            .inner
            .js
            .publish_with_headers(subject.to_string(), headers, body)
            .await
            .map_err(unavailable)?;
        ack.await.map_err(|e| {
            let text = e.to_string();
            if e.kind() == jetstream::context::PublishErrorKind::StreamNotFound {
                JournalError::Corrupt(format!("no stream takes {subject}"))
            } else if text.contains("maximum messages") || text.contains("maximum bytes") {
                JournalError::StorageFull
            } else {
                unavailable(text)
            }
        })
    }

    /// A destination's stream deleted by hand (or lost): made again, empty,
    /// numbered on from the last sequence seen so that ids never repeat.
    async fn recreate(&self, d: &Dest, dead: bool) -> Result<()> {
        let p = &self.inner.cfg.stream_prefix;
        let (name, subject, limits) = if dead {
            (format!("{p}_DEAD_{}", d.name), &d.dead_subject, (u64::MAX, u64::MAX))
        } else {
            let l = *lock(&d.limits);
            (format!("{p}_Q_{}", d.name), &d.subject, l)
        };
        let first = d.last_seen.load(Ordering::SeqCst) + 1;
        tracing::error!(stream = %name, destination = %d.name, first_sequence = first,
            "the stream is gone (deleted by hand?); made again, empty: the messages it held are lost");
        self.stream_from(name, subject, limits.0, limits.1, Some(first)).await?;
        Ok(())
    }

    fn decode(&self, d: &Dest, m: &jetstream::message::StreamMessage) -> (Message, Handed) {
        let h = |k: &str| m.headers.get(k).map(|v| v.as_str().to_string());
        let id = h("Tg-Id")
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| d.id(m.sequence));
        let received_at = h("Tg-Received").and_then(|s| s.parse().ok()).unwrap_or(0);
        let headers: Vec<(String, String)> = h("Tg-Headers")
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or_default();
        let msg = Message {
            seq: id,
            dest: d.name.clone(),
            method: h("Tg-Method").unwrap_or_else(|| "POST".into()),
            path: h("Tg-Path").unwrap_or_default(),
            headers,
            body: m.payload.clone(),
            attempts: 0,
            received_at,
            idempotency_key: h("Tg-Idem"),
            wants_reply: h("Tg-Reply").is_some(),
            order_key: h("Tg-Key").and_then(|k| serde_json::from_str(&k).ok()),
        };
        let handed = Handed {
            stream_seq: m.sequence,
            received_at,
            producer: h("Tg-Producer"),
            category: h("Tg-Category"),
            order_key: msg.order_key.clone(),
        };
        (msg, handed)
    }

    /// The pending message at or after `from` in `d`'s queue.
    async fn next_at(&self, d: &Dest, from: u64) -> Result<Option<jetstream::message::StreamMessage>> {
        next_raw(&d.queue, &d.subject, from).await
    }

    /// Up to `want` pending messages from stream sequence `from` on, and
    /// where to read next. The first is found by subject (one round trip);
    /// the sequences after it, up to the last one seen, are asked for all at
    /// once, since a queue's pending messages are mostly contiguous: a
    /// batch costs about two round trips, not one per message, so a
    /// dispatcher does not stall between batches (and then burst).
    async fn read_from(
        &self,
        d: &Dest,
        from: u64,
        want: usize,
    ) -> Result<(Vec<jetstream::message::StreamMessage>, u64)> {
        let Some(first) = self.next_at(d, from).await? else {
            return Ok((Vec::new(), from));
        };
        let last = d.last_seen.load(Ordering::SeqCst).max(first.sequence);
        let upto = (first.sequence + want as u64).saturating_sub(1).min(last);
        let rest =
            futures_util::future::join_all((first.sequence + 1..=upto).map(|s| d.queue.get_raw_message(s))).await;
        let mut out = vec![first];
        for r in rest {
            match r {
                Ok(m) => out.push(m),
                Err(e) if no_message(&e) => {}
                Err(e) => return Err(unavailable(e)),
            }
        }
        Ok((out, upto + 1))
    }

    /// Reads the batch after `from` in the background (once at a time).
    fn read_ahead(&self, d: &Arc<Dest>, from: u64, want: usize) {
        let generation = {
            let mut a = lock(&d.ahead);
            if a.running || a.batch.as_ref().is_some_and(|b| b.0 == from) {
                return;
            }
            a.running = true;
            a.generation
        };
        let (q, d) = (self.clone(), d.clone());
        tokio::spawn(async move {
            let got = q.read_from(&d, from, want).await;
            let mut a = lock(&d.ahead);
            a.running = false;
            if a.generation == generation {
                if let Ok((msgs, next)) = got {
                    a.batch = Some((from, msgs, next));
                }
            }
        });
    }

    /// Starts a new lease epoch's reading: from the first message, with the
    /// retry schedules recorded by whoever dispatched before.
    async fn begin_epoch(&self, d: &Dest, epoch: u64) -> Result<()> {
        let prefix = format!("r.{}.", d.name);
        let mut scheduled = BTreeMap::new();
        let mut keys = self.inner.state.keys().await.map_err(unavailable)?;
        use futures_util::StreamExt as _;
        while let Some(k) = keys.next().await {
            let k = k.map_err(unavailable)?;
            let Some(seq) = k.strip_prefix(&prefix).and_then(|s| s.parse::<u64>().ok()) else {
                continue;
            };
            if let Some(v) = self.inner.state.get(&k).await.map_err(unavailable)? {
                if let Ok(r) = serde_json::from_slice::<Retry>(&v) {
                    scheduled.insert(seq, r);
                }
            }
        }
        d.forget_ahead();
        let mut r = lock(&d.reading);
        *r = Reading {
            epoch,
            cursor: 1,
            rewind: false,
            scheduled,
        };
        Ok(())
    }

    async fn reading_ready(&self, d: &Dest) -> Result<bool> {
        let epoch = d.epoch.load(Ordering::SeqCst);
        let stale = lock(&d.reading).epoch != epoch;
        if stale {
            self.begin_epoch(d, epoch).await?;
        }
        Ok(d.dispatching())
    }

    async fn finish(
        &self,
        d: &Dest,
        id: u64,
        state: i64,
        attempts: u32,
        last_error: Option<LastError>,
        reason: Option<String>,
    ) -> Result<()> {
        let handed = lock(&d.handed).get(&id).cloned();
        let handed = match handed {
            Some(h) => h,
            None => Handed {
                stream_seq: id & SEQ_MASK,
                received_at: 0,
                producer: None,
                category: None,
                order_key: None,
            },
        };
        let rec = Finished {
            dest: d.name.clone(),
            state,
            attempts,
            received_at: handed.received_at,
            finished_at: now_ms(),
            last_error,
            reason,
            producer: handed.producer,
            category: handed.category,
            order_key: handed.order_key,
        };
        put_json(&self.inner.status, format!("s.{id:016x}"), &rec).await?;
        self.delete(&d.queue, handed.stream_seq).await?;
        lock(&d.keys).pending.remove(&handed.stream_seq);
        let had_retry = lock(&d.reading).scheduled.remove(&handed.stream_seq).is_some();
        if had_retry || attempts > 1 {
            let _ = self
                .inner
                .state
                .purge(format!("r.{}.{}", d.name, handed.stream_seq))
                .await;
        }
        let depth = d.counts.depth.load(Ordering::Relaxed);
        d.counts.depth.store(depth.saturating_sub(1), Ordering::Relaxed);
        d.counts.room.notify_waiters();
        Ok(())
    }

    /// Publishes message `id` (its stored headers and body) to `d`'s dead
    /// letters, with why and when; the caller removes it from where it was.
    #[allow(clippy::too_many_arguments)]
    async fn to_dead(
        &self,
        d: &Dest,
        mut headers: HeaderMap,
        body: Bytes,
        id: u64,
        reason: &str,
        attempts: u32,
        last_error: Option<&LastError>,
    ) -> Result<()> {
        headers.insert("Tg-Id", id.to_string().as_str());
        headers.insert("Tg-Reason", reason);
        headers.insert("Tg-Attempts", attempts.to_string().as_str());
        headers.insert("Tg-Dead-At", now_ms().to_string().as_str());
        if let Some(e) = last_error {
            headers.insert("Tg-Last-Error", serde_json::to_string(e).unwrap_or_default().as_str());
        }
        match self.publish(&d.dead_subject, headers.clone(), body.clone()).await {
            Ok(_) => {}
            Err(JournalError::Corrupt(_)) => {
                self.recreate(d, true).await?;
                self.publish(&d.dead_subject, headers, body).await?;
            }
            Err(e) => return Err(e),
        }
        // Counted from the stream before the message reads dead: a local
        // increment could meet a count that already saw it.
        let _ = self.count(d).await;
        Ok(())
    }

    /// Removes a finished message from its stream. Without `no_erase` the
    /// server overwrites the message's bytes on disk first (a secure
    /// erase, one more synchronous write per message): the client's
    /// `delete_message` asks for that, so the request is made here.
    /// Already gone (a retried settle, the previous holder's) is fine.
    async fn delete(&self, s: &stream::Stream, seq: u64) -> Result<()> {
        let name = &s.cached_info().config.name;
        let answer: serde_json::Value = self
            .inner
            .js
            .request(
                format!("STREAM.MSG.DELETE.{name}"),
                &serde_json::json!({"seq": seq, "no_erase": true}),
            )
            .await
            .map_err(unavailable)?;
        match answer.get("error") {
            None => Ok(()),
            Some(e) => {
                let text = e.get("description").and_then(|d| d.as_str()).unwrap_or_default();
                if text.contains("no message found") || text.contains("not found") && !text.contains("stream") {
                    Ok(())
                } else {
                    Err(unavailable(e))
                }
            }
        }
    }

    /// Every dead letter of `d`, oldest id first, with its stream sequence:
    /// the stream's sequences asked for 256 at a time, not one by one.
    async fn all_dead(&self, d: &Dest) -> Result<Vec<(u64, jetstream::message::StreamMessage)>> {
        let info = d.dead.get_info().await.map_err(unavailable)?;
        let (first, last) = (info.state.first_sequence, info.state.last_sequence);
        let mut out = Vec::new();
        let mut from = first.max(1);
        while info.state.messages > 0 && from <= last {
            let upto = (from + 255).min(last);
            let got = futures_util::future::join_all((from..=upto).map(|s| d.dead.get_raw_message(s))).await;
            for r in got {
                match r {
                    Ok(m) => out.push((m.sequence, m)),
                    Err(e) if no_message(&e) => {}
                    Err(e) => return Err(unavailable(e)),
                }
            }
            from = upto + 1;
        }
        let id_of_dead = |m: &jetstream::message::StreamMessage| {
            m.headers
                .get("Tg-Id")
                .and_then(|v| v.as_str().parse::<u64>().ok())
                .unwrap_or(0)
        };
        out.sort_by_key(|(_, m)| id_of_dead(m));
        Ok(out)
    }
}

/// The message of `subject` at or after stream sequence `from`.
async fn next_raw(s: &stream::Stream, subject: &str, from: u64) -> Result<Option<jetstream::message::StreamMessage>> {
    match s
        .raw_message_builder()
        .sequence(from)
        .next_by_subject(subject.to_string())
        .send()
        .await
    {
        Ok(m) => Ok(Some(m)),
        Err(e) if e.kind() == stream::RawMessageErrorKind::NoMessageFound => Ok(None),
        Err(e) => Err(unavailable(e)),
    }
}

/// The message asked for is not in the stream (finished meanwhile).
fn no_message(e: &stream::RawMessageError) -> bool {
    e.kind() == stream::RawMessageErrorKind::NoMessageFound
}

fn replicas_hint(name: &str, e: impl std::fmt::Display, replicas: usize) -> String {
    let text = e.to_string();
    if text.contains("insufficient resources") || text.contains("replicas") {
        format!(
            "creating {name}: {text}: storage.jetstream.replicas = {replicas} needs a JetStream cluster of at least \
             {replicas} servers"
        )
    } else {
        format!("creating {name}: {text}")
    }
}

/// Refuses a server older than [`MIN_SERVER`].
pub fn check_version(version: &str) -> std::result::Result<(), String> {
    let mut parts = version.trim_start_matches('v').split(['.', '-']);
    let major = parts.next().and_then(|s| s.parse::<u64>().ok());
    let minor = parts.next().and_then(|s| s.parse::<u64>().ok());
    match (major, minor) {
        (Some(a), Some(b)) if (a, b) >= MIN_SERVER => Ok(()),
        _ => Err(format!(
            "NATS server {version} is too old for cluster mode: tidegate needs {}.{} or later \
             (direct reads by subject, stream limits with discard-new per stream, KV revision checks)",
            MIN_SERVER.0, MIN_SERVER.1
        )),
    }
}

/// The cluster's id salt: drawn by whichever instance starts first.
async fn cluster_salt(state: &kv::Store) -> std::result::Result<u32, String> {
    let drawn: u32 = rand::random();
    let _ = state.create("salt", Bytes::from(format!("{drawn:08x}"))).await;
    let v = state
        .get("salt")
        .await
        .map_err(|e| format!("reading the cluster's id salt: {e}"))?
        .ok_or("the cluster's id salt is missing")?;
    std::str::from_utf8(&v)
        .ok()
        .and_then(|s| u32::from_str_radix(s, 16).ok())
        .ok_or_else(|| "the cluster's id salt is damaged".to_string())
}

/// Takes the destination's lease when it is free, keeps it refreshed while
/// held, and lets go the moment a refresh fails for longer than
/// `LEASE_SAFE` (or another instance holds it).
async fn lease_loop(q: JetStream, d: Arc<Dest>) {
    let key = format!("l.{}", d.name);
    let me = Bytes::from(q.inner.instance.clone());
    let mut revision: Option<u64> = None;
    let mut stop = q.inner.stop.subscribe();
    loop {
        let now = Instant::now();
        let result = match revision {
            Some(r) => q
                .inner
                .lease
                .update(&key, me.clone(), r)
                .await
                .map_err(|e| e.to_string()),
            None => q.inner.lease.create(&key, me.clone()).await.map_err(|e| e.to_string()),
        };
        match result {
            Ok(r) => {
                if revision.is_none() {
                    d.epoch.fetch_add(1, Ordering::SeqCst);
                    tracing::info!(destination = %d.name, instance = %q.inner.instance, "took the dispatch lease");
                }
                revision = Some(r);
                *lock(&d.refreshed) = Some(now);
                d.holding.store(true, Ordering::SeqCst);
                d.counts.ready.notify_waiters();
            }
            Err(e) => {
                if revision.is_some() {
                    let stale = lock(&d.refreshed).is_none_or(|t| t.elapsed() >= LEASE_SAFE);
                    // A wrong revision: someone else holds it now. A
                    // failure to reach NATS: keep trying until LEASE_SAFE.
                    if stale || e.contains("wrong last sequence") || e.contains("revision") {
                        tracing::warn!(destination = %d.name, error = %e, "lost the dispatch lease; stopped dispatching");
                        d.holding.store(false, Ordering::SeqCst);
                        d.epoch.fetch_add(1, Ordering::SeqCst);
                        revision = None;
                    }
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(LEASE_REFRESH) => {}
            _ = stop.changed() => break,
        }
    }
    if revision.is_some() {
        d.holding.store(false, Ordering::SeqCst);
        // Let go at once on a clean stop, so another takes over now.
        let _ = q.inner.lease.purge(&key).await;
    }
}

/// Keeps a destination's counts close to the streams', and wakes its
/// dispatcher when messages arrive through other instances.
async fn count_loop(q: JetStream, d: Arc<Dest>) {
    let mut stop = q.inner.stop.subscribe();
    let mut last = 0;
    let mut tick = 0u64;
    loop {
        if let Ok(seen) = q.count(&d).await {
            if seen != last {
                last = seen;
                d.counts.ready.notify_waiters();
            }
        }
        tick += 1;
        // Releases a decision could not finish (an instance died between
        // its record and the move, or a message was parked just after
        // it was decided): the holder finishes them.
        if tick % HELD_SWEEP_TICKS == 0 && d.dispatching() && d.counts.held.load(Ordering::Relaxed) > 0 {
            if let Err(e) = q.sweep_held(&d, None, now_ms()).await {
                tracing::debug!(destination = %d.name, error = %e, "cannot look over the held messages");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(COUNT_EVERY) => {}
            _ = stop.changed() => break,
        }
    }
}

fn encode(msg: &NewMessage, id: Option<u64>) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("Tg-Method", msg.method.as_str());
    h.insert("Tg-Path", msg.path.as_str());
    h.insert("Tg-Received", msg.received_at.to_string().as_str());
    if !msg.headers.is_empty() {
        h.insert(
            "Tg-Headers",
            serde_json::to_string(&msg.headers).unwrap_or_default().as_str(),
        );
    }
    if let Some(k) = &msg.idempotency_key {
        h.insert("Tg-Idem", k.as_str());
    }
    if msg.wants_reply {
        h.insert("Tg-Reply", "1");
    }
    if let Some(p) = &msg.producer {
        h.insert("Tg-Producer", p.as_str());
    }
    if let Some(c) = &msg.category {
        h.insert("Tg-Category", c.as_str());
    }
    if let Some(k) = &msg.order_key {
        // Header values end at a line break: keys are stored escaped.
        h.insert("Tg-Key", serde_json::to_string(k).unwrap_or_default().as_str());
    }
    if let Some(id) = id {
        h.insert("Tg-Id", id.to_string().as_str());
    }
    h
}

/// An outcome another instance announced; `None` for this instance's own.
fn decode_outcome(m: &async_nats::Message, me: &str) -> Option<Outcome> {
    let h = m.headers.as_ref()?;
    let get = |k: &str| h.get(k).map(|v| v.as_str().to_string());
    if get("Tg-Instance").as_deref() == Some(me) {
        return None;
    }
    Some(Outcome {
        seq: get("Tg-Id")?.parse().ok()?,
        state: get("Tg-State")?,
        detail: get("Tg-Detail").unwrap_or_default(),
        response: get("Tg-Status")
            .and_then(|s| s.parse().ok())
            .map(|status| (status, get("Tg-Content-Type"), m.payload.clone())),
    })
}

/// A mutex's guard, poisoned or not: the state each one guards is valid
/// after any panic between its statements.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Writes `value` as JSON under `key`, durably (a quorum of the bucket's
/// replicas) before it returns.
async fn put_json(store: &kv::Store, key: String, value: &impl Serialize) -> Result<()> {
    let body = serde_json::to_vec(value).map_err(unavailable)?;
    store.put(key, body.into()).await.map_err(unavailable)?;
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[async_trait]
impl Queue for JetStream {
    fn message_id(&self, seq: u64) -> String {
        id_of(self.inner.salt, seq)
    }

    fn parse_id(&self, id: &str) -> Option<u64> {
        if !is_message_id(id) {
            return None;
        }
        let salt = u32::from_str_radix(&id[..8], 16).ok()?;
        (salt == self.inner.salt).then(|| u64::from_str_radix(&id[8..], 16).ok())?
    }

    fn queue(&self, dest: &str) -> Arc<QueueCounts> {
        super::queue_of(&self.inner.queues, dest)
    }

    fn known_destinations(&self) -> Vec<String> {
        self.inner
            .dests
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect()
    }

    fn stats(&self) -> &Arc<JournalStats> {
        &self.inner.stats
    }

    fn shared(&self) -> bool {
        true
    }

    fn may_dispatch(&self, dest: &str) -> bool {
        self.known(dest).is_some_and(|d| d.dispatching())
    }

    fn announce_outcome(&self, o: Outcome) {
        let mut h = HeaderMap::new();
        h.insert("Tg-Instance", self.inner.instance.as_str());
        h.insert("Tg-Id", o.seq.to_string().as_str());
        h.insert("Tg-State", o.state.as_str());
        if !o.detail.is_empty() {
            // Header values end at a line break.
            h.insert("Tg-Detail", o.detail.replace(['\r', '\n'], " ").as_str());
        }
        let body = match o.response {
            Some((status, content_type, body)) => {
                h.insert("Tg-Status", status.to_string().as_str());
                if let Some(ct) = content_type {
                    h.insert("Tg-Content-Type", ct.as_str());
                }
                body
            }
            None => Bytes::new(),
        };
        let (client, subject) = (
            self.inner.client.clone(),
            format!("{}.done", self.inner.cfg.stream_prefix),
        );
        tokio::spawn(async move {
            if let Err(e) = client.publish_with_headers(subject, h, body).await {
                tracing::debug!(error = %e, "could not announce an outcome");
            }
        });
    }

    fn outcomes(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<Outcome>> {
        lock(&self.inner.outcomes).take()
    }

    async fn announce_reload(&self) {
        let subject = format!("{}.reload", self.inner.cfg.stream_prefix);
        let me = Bytes::from(self.inner.instance.clone());
        if let Err(e) = self.inner.client.publish(subject, me).await {
            tracing::warn!(error = %e, "could not tell the other instances to reload");
        }
    }

    fn reload_asked(&self) -> Option<Arc<tokio::sync::Notify>> {
        Some(self.inner.reload_asked.clone())
    }

    async fn append(&self, msg: Arc<NewMessage>, limits: Limits) -> Result<Appended> {
        let d = self.dest(&msg.dest).await?;
        {
            let want = (limits.max_messages, limits.max_bytes);
            let changed = *lock(&d.limits) != want;
            if changed {
                let p = &self.inner.cfg.stream_prefix;
                self.stream(format!("{p}_Q_{}", d.name), &d.subject, want.0, want.1)
                    .await?;
                *lock(&d.limits) = want;
            }
        }
        let fingerprint = msg.idempotency_key.as_ref().map(|_| hex(&msg.fingerprint()));
        let key_name = msg.idempotency_key.as_ref().map(|k| {
            use sha2::{Digest, Sha256};
            let digest = Sha256::new()
                .chain_update(msg.dest.as_bytes())
                .chain_update(b"\0")
                .chain_update(k.as_bytes())
                .finalize();
            format!("i.{}.{}", msg.dest, hex(&digest))
        });
        if let (Some(name), Some(fp)) = (&key_name, &fingerprint) {
            if let Some(v) = self.inner.idem.get(name).await.map_err(unavailable)? {
                if let Ok(r) = serde_json::from_slice::<KeyRecord>(&v) {
                    if now_ms() - r.at < limits.idempotency_window_ms {
                        return Ok(if &r.fingerprint == fp {
                            Appended::Duplicate { seq: r.id }
                        } else {
                            Appended::KeyReused { seq: r.id }
                        });
                    }
                }
            }
        }
        let mut headers = encode(&msg, None);
        if let Some(intent) = &msg.review {
            station::encode_intent(intent, &mut headers);
        }
        if let Some(name) = &key_name {
            // The server's de-duplication covers producers racing on one
            // key within its window (two minutes); the record above covers
            // the rest of the configured window.
            headers.insert("Nats-Msg-Id", name.as_str());
        }
        let mut published = self.publish(&d.subject, headers.clone(), msg.body.clone()).await;
        if let Err(JournalError::Corrupt(_)) = &published {
            self.recreate(&d, false).await?;
            published = self.publish(&d.subject, headers, msg.body.clone()).await;
        }
        let ack = match published {
            Ok(a) => a,
            Err(JournalError::StorageFull) => return Ok(Appended::QueueFull),
            Err(JournalError::Corrupt(e)) => return Err(JournalError::Unavailable(e)),
            Err(e) => return Err(e),
        };
        d.last_seen.fetch_max(ack.sequence, Ordering::SeqCst);
        let id = d.id(ack.sequence);
        if let (Some(name), Some(fp)) = (key_name, fingerprint) {
            let rec = KeyRecord {
                id,
                fingerprint: fp,
                at: msg.received_at,
            };
            // Failing here answers 503: the producer retries with the same
            // key and the server's de-duplication gives it this message.
            put_json(&self.inner.idem, name, &rec).await?;
        }
        if ack.duplicate {
            return Ok(Appended::Duplicate { seq: id });
        }
        // Bytes (as JetStream counts them, headers too) come with the next
        // count, within COUNT_EVERY; depth is adjusted here at once, and
        // that count sets it right if a count in flight also saw this.
        d.counts.depth.fetch_add(1, Ordering::Relaxed);
        let held = self.on_stored(&msg, id).await;
        d.counts.ready.notify_waiters();
        Ok(Appended::Stored { seq: id, held })
    }

    async fn fetch_ready(&self, dest: &str, limit: usize, exclude: &(dyn Fn() -> Vec<u64> + Sync)) -> Result<Due> {
        let Some(d) = self.known(dest) else {
            return Ok(Due {
                messages: Vec::new(),
                next_due: None,
            });
        };
        if !self.reading_ready(&d).await? {
            return Ok(Due {
                messages: Vec::new(),
                next_due: None,
            });
        }
        let excluded: HashSet<u64> = exclude().into_iter().collect();
        let now = now_ms();
        let mut out = Vec::new();
        // Retries that are due, then reading forward.
        let (due, rewind, mut cursor) = {
            let mut r = lock(&d.reading);
            let due: Vec<(u64, Retry)> = r
                .scheduled
                .iter()
                .filter(|(_, x)| x.visible_at <= now && !excluded.contains(&x.id))
                .take(limit)
                .map(|(s, x)| (*s, x.clone()))
                .collect();
            let rewind = std::mem::take(&mut r.rewind);
            (due, rewind, r.cursor)
        };
        if rewind {
            cursor = 1;
        }
        // A retry that is due is handed out from the schedule; reading
        // forward from a rewind meets it again in the stream, and must not
        // hand it out a second time in the same batch.
        let mut taken: HashSet<u64> = due.iter().map(|(s, _)| *s).collect();
        for (seq, retry) in due {
            match d.queue.get_raw_message(seq).await {
                Ok(m) => {
                    let (mut msg, handed) = self.decode(&d, &m);
                    msg.attempts = retry.attempts;
                    if let Screened::Deliver(msg) = self.screen(&d, &m, msg).await? {
                        lock(&d.handed).insert(msg.seq, handed);
                        out.push(msg);
                    }
                }
                Err(e) if no_message(&e) => {}
                Err(e) => return Err(unavailable(e)),
            }
            lock(&d.reading).scheduled.remove(&seq);
        }
        while out.len() < limit {
            let want = limit - out.len();
            let (batch, next) = match d.take_ahead(cursor, want) {
                Some(b) => b,
                None => self.read_from(&d, cursor, want).await?,
            };
            if batch.is_empty() {
                break;
            }
            cursor = next;
            let mut fresh = Vec::new();
            for m in batch {
                let scheduled = lock(&d.reading).scheduled.contains_key(&m.sequence);
                let (msg, handed) = self.decode(&d, &m);
                if scheduled || excluded.contains(&msg.seq) || !taken.insert(m.sequence) {
                    continue;
                }
                fresh.push((m, msg, handed));
            }
            // Screened all at once: a park is a few round trips to NATS,
            // and one after another they would stall the dispatcher.
            let screened =
                futures_util::future::join_all(fresh.iter().map(|(m, msg, _)| self.screen(&d, m, msg.clone()))).await;
            for ((_, _, handed), s) in fresh.into_iter().zip(screened) {
                if let Screened::Deliver(msg) = s? {
                    lock(&d.handed).insert(msg.seq, handed);
                    out.push(msg);
                }
            }
        }
        if out.len() >= limit {
            // A backlog: the next batch is read while this one goes out.
            self.read_ahead(&d, cursor, limit);
        }
        let mut r = lock(&d.reading);
        r.cursor = cursor;
        let next_due = r
            .scheduled
            .values()
            .filter(|x| !excluded.contains(&x.id))
            .map(|x| x.visible_at)
            .min();
        Ok(Due {
            messages: out,
            next_due,
        })
    }

    async fn fetch_keyed(
        &self,
        dest: &str,
        limit: usize,
        exclude: HashSet<u64>,
        halted: HashSet<String>,
        after: String,
    ) -> Result<(Due, String)> {
        let empty = || {
            Ok((
                Due {
                    messages: Vec::new(),
                    next_due: None,
                },
                String::new(),
            ))
        };
        let Some(d) = self.known(dest) else { return empty() };
        if !self.reading_ready(&d).await? {
            return empty();
        }
        // Read what arrived since the last look into the index.
        let epoch = d.epoch.load(Ordering::SeqCst);
        let mut cursor = {
            let mut k = lock(&d.keys);
            if k.epoch != epoch {
                *k = KeyIndex {
                    epoch,
                    cursor: 1,
                    pending: BTreeMap::new(),
                };
            }
            k.cursor
        };
        loop {
            let (batch, next) = self.read_from(&d, cursor, 256).await?;
            let full = batch.len() == 256;
            {
                let mut k = lock(&d.keys);
                for m in &batch {
                    let (msg, _) = self.decode(&d, m);
                    k.pending.insert(m.sequence, (msg.seq, msg.order_key));
                }
                k.cursor = next.max(k.cursor);
            }
            cursor = next;
            if !full {
                break;
            }
        }
        // The head of each key, oldest first: due, not halted, and no
        // message of its key in flight (one in flight is its key's head).
        let now = now_ms();
        let scheduled: HashMap<u64, Retry> = lock(&d.reading)
            .scheduled
            .iter()
            .map(|(s, r)| (*s, r.clone()))
            .collect();
        let mut next_due: Option<i64> = None;
        let mut chosen = Vec::new();
        {
            let k = lock(&d.keys);
            let mut seen: HashSet<&str> = HashSet::new();
            let mut own = Vec::new();
            for (seq, (id, key)) in &k.pending {
                match key {
                    Some(key) => {
                        if !seen.insert(key.as_str()) || halted.contains(key) {
                            continue;
                        }
                    }
                    // A message without a key is a key of its own.
                    None => own.push(*seq),
                }
                if exclude.contains(id) {
                    continue;
                }
                if let Some(r) = scheduled.get(seq) {
                    if r.visible_at > now {
                        next_due = Some(next_due.map_or(r.visible_at, |n| n.min(r.visible_at)));
                        continue;
                    }
                }
                chosen.push(*seq);
                if chosen.len() >= limit {
                    break;
                }
            }
        }
        let got = futures_util::future::join_all(chosen.iter().map(|s| d.queue.get_raw_message(*s))).await;
        let mut fresh = Vec::new();
        for (seq, r) in chosen.into_iter().zip(got) {
            match r {
                Ok(m) => {
                    let (mut msg, handed) = self.decode(&d, &m);
                    if let Some(r) = scheduled.get(&seq) {
                        msg.attempts = r.attempts;
                    }
                    lock(&d.reading).scheduled.remove(&seq);
                    fresh.push((m, msg, handed));
                }
                Err(e) if no_message(&e) => {
                    lock(&d.keys).pending.remove(&seq);
                }
                Err(e) => return Err(unavailable(e)),
            }
        }
        let screened =
            futures_util::future::join_all(fresh.iter().map(|(m, msg, _)| self.screen(&d, m, msg.clone()))).await;
        let mut messages = Vec::new();
        for ((_, _, handed), s) in fresh.into_iter().zip(screened) {
            if let Screened::Deliver(msg) = s? {
                lock(&d.handed).insert(msg.seq, handed);
                messages.push(msg);
            }
        }
        Ok((Due { messages, next_due }, after))
    }

    async fn head(&self, dest: &str) -> Result<Option<(Message, i64)>> {
        let Some(d) = self.known(dest) else {
            return Ok(None);
        };
        if !self.reading_ready(&d).await? {
            return Ok(None);
        }
        // The first message the review station lets through: a held one
        // is parked, and the next one is the head.
        let mut from = 1;
        let (m, mut msg, handed) = loop {
            let Some(m) = self.next_at(&d, from).await? else {
                return Ok(None);
            };
            let (msg, handed) = self.decode(&d, &m);
            match self.screen(&d, &m, msg).await? {
                Screened::Deliver(msg) => break (m, msg, handed),
                Screened::Parked => from = m.sequence + 1,
            }
        };
        let visible_at = match lock(&d.reading).scheduled.get(&m.sequence) {
            Some(r) => {
                msg.attempts = r.attempts;
                r.visible_at
            }
            None => 0,
        };
        lock(&d.handed).insert(msg.seq, handed);
        Ok(Some((msg, visible_at)))
    }

    fn give_back(&self, dest: &str) {
        if let Some(d) = self.known(dest) {
            lock(&d.reading).rewind = true;
            d.forget_ahead();
        }
    }

    async fn settle(
        &self,
        seq: u64,
        dest: &str,
        attempts: u32,
        last_error: Option<LastError>,
        disposition: Disposition,
    ) -> Result<()> {
        let d = self.dest(dest).await?;
        let handed = lock(&d.handed).get(&seq).cloned();
        let stream_seq = handed.as_ref().map_or(seq & SEQ_MASK, |h| h.stream_seq);
        let result = match disposition {
            Disposition::Delivered => self.finish(&d, seq, STATE_DELIVERED, attempts, last_error, None).await,
            Disposition::Dropped { reason } => {
                self.finish(&d, seq, STATE_DROPPED, attempts, last_error, Some(reason))
                    .await
            }
            Disposition::Quarantined { reason } => {
                self.finish(&d, seq, STATE_QUARANTINED, attempts, last_error, Some(reason))
                    .await
            }
            Disposition::Reschedule { visible_at } => {
                let retry = Retry {
                    id: seq,
                    attempts,
                    visible_at,
                    last_error,
                };
                put_json(&self.inner.state, format!("r.{}.{stream_seq}", d.name), &retry).await?;
                lock(&d.reading).scheduled.insert(stream_seq, retry);
                // Still pending: it stays in `handed` until it finishes.
                return Ok(());
            }
            Disposition::DeadLetter { reason } => {
                let original = match d.queue.get_raw_message(stream_seq).await {
                    Ok(m) => m,
                    Err(e) if no_message(&e) => return Ok(()),
                    Err(e) => return Err(unavailable(e)),
                };
                self.to_dead(
                    &d,
                    original.headers.clone(),
                    original.payload.clone(),
                    seq,
                    &reason,
                    attempts,
                    last_error.as_ref(),
                )
                .await?;
                self.finish(&d, seq, STATE_DEAD, attempts, last_error, Some(reason))
                    .await
            }
            Disposition::HaltKey { key, reason } => {
                // Stays pending, due at once, with its attempts kept; its
                // key is recorded as halted for every instance.
                let retry = Retry {
                    id: seq,
                    attempts,
                    visible_at: 0,
                    last_error,
                };
                let halted = Halted {
                    dest: d.name.clone(),
                    key: key.clone(),
                    id: seq,
                    reason,
                };
                put_json(&self.inner.state, format!("r.{}.{stream_seq}", d.name), &retry).await?;
                put_json(
                    &self.inner.state,
                    format!("h.{}.{}", d.name, hex(key.as_bytes())),
                    &halted,
                )
                .await?;
                lock(&d.reading).scheduled.insert(stream_seq, retry);
                return Ok(());
            }
        };
        if result.is_ok() {
            lock(&d.handed).remove(&seq);
        }
        result
    }

    async fn halted_keys(&self) -> Result<Vec<HaltedKey>> {
        let mut out = Vec::new();
        let mut keys = self.inner.state.keys().await.map_err(unavailable)?;
        use futures_util::StreamExt as _;
        while let Some(k) = keys.next().await {
            let k = k.map_err(unavailable)?;
            if !k.starts_with("h.") {
                continue;
            }
            if let Some(v) = self.inner.state.get(&k).await.map_err(unavailable)? {
                if let Ok(h) = serde_json::from_slice::<Halted>(&v) {
                    out.push(HaltedKey {
                        dest: h.dest,
                        key: h.key,
                        seq: h.id,
                        reason: h.reason,
                    });
                }
            }
        }
        Ok(out)
    }

    async fn release_key(&self, dest: &str, key: &str, skip_head: bool) -> Result<Option<u64>> {
        let name = format!("h.{dest}.{}", hex(key.as_bytes()));
        let Some(v) = self.inner.state.get(&name).await.map_err(unavailable)? else {
            return Ok(None);
        };
        let Ok(h) = serde_json::from_slice::<Halted>(&v) else {
            return Ok(None);
        };
        if skip_head {
            let retry = match self
                .inner
                .state
                .get(format!("r.{dest}.{}", h.id & SEQ_MASK))
                .await
                .map_err(unavailable)?
            {
                Some(v) => serde_json::from_slice::<Retry>(&v).ok(),
                None => None,
            };
            let (attempts, last_error) = retry.map_or((0, None), |r| (r.attempts, r.last_error));
            let reason = "skipped_by_operator".to_string();
            self.settle(h.id, dest, attempts, last_error, Disposition::DeadLetter { reason })
                .await?;
        }
        self.inner.state.purge(&name).await.map_err(unavailable)?;
        if let Some(d) = self.known(dest) {
            d.counts.ready.notify_waiters();
        }
        Ok(Some(h.id))
    }

    async fn destination_records(&self) -> Result<HashMap<String, DestinationRecord>> {
        // One read per destination this instance knows (those configured
        // here): polled by every instance to follow pauses made elsewhere,
        // so it must not list the whole bucket (retry schedules live there).
        let mut out = HashMap::new();
        for name in self.known_destinations() {
            if let Some(v) = self.inner.state.get(format!("d.{name}")).await.map_err(unavailable)? {
                if let Ok(r) = serde_json::from_slice::<Record>(&v) {
                    out.insert(
                        name,
                        DestinationRecord {
                            state: r.state,
                            reason: r.reason,
                            head_seq: r.head_seq,
                        },
                    );
                }
            }
        }
        Ok(out)
    }

    async fn set_destination_record(&self, dest: &str, record: DestinationRecord) -> Result<()> {
        let r = Record {
            state: record.state,
            reason: record.reason,
            head_seq: record.head_seq,
        };
        put_json(&self.inner.state, format!("d.{dest}"), &r).await?;
        Ok(())
    }

    async fn replay(&self, dest: &str, seqs: Option<Vec<u64>>) -> Result<u64> {
        let d = self.dest(dest).await?;
        let wanted: Option<HashSet<u64>> = seqs.map(|s| s.into_iter().collect());
        let mut n = 0;
        for (dead_seq, m) in self.all_dead(&d).await? {
            let id = m
                .headers
                .get("Tg-Id")
                .and_then(|v| v.as_str().parse::<u64>().ok())
                .unwrap_or(0);
            if wanted.as_ref().is_some_and(|w| !w.contains(&id)) {
                continue;
            }
            let mut headers = HeaderMap::new();
            for (k, vs) in m.headers.iter() {
                let name: &str = k.as_ref();
                if matches!(name, "Tg-Reason" | "Tg-Attempts" | "Tg-Dead-At" | "Tg-Last-Error")
                    || name.starts_with("Nats-")
                {
                    continue;
                }
                for v in vs {
                    headers.append(name.to_string(), v.as_str());
                }
            }
            // An operator's replay is delivered, as on SQLite: a message
            // the review station held (and a reviewer or a timeout
            // rejected) is not drawn for review again.
            headers.insert("Tg-Released", "1");
            match self.publish(&d.subject, headers, m.payload.clone()).await {
                Ok(_) => {}
                Err(JournalError::StorageFull) => break,
                Err(e) => return Err(e),
            }
            // Queued again under its old id (its stream sequence is new):
            // the status record says so until it finishes.
            let again = Finished {
                dest: d.name.clone(),
                state: STATE_PENDING,
                attempts: 0,
                received_at: m
                    .headers
                    .get("Tg-Received")
                    .and_then(|v| v.as_str().parse().ok())
                    .unwrap_or(0),
                finished_at: 0,
                last_error: None,
                reason: None,
                producer: m.headers.get("Tg-Producer").map(|v| v.as_str().to_string()),
                category: m.headers.get("Tg-Category").map(|v| v.as_str().to_string()),
                order_key: m
                    .headers
                    .get("Tg-Key")
                    .and_then(|v| serde_json::from_str(v.as_str()).ok()),
            };
            put_json(&self.inner.status, format!("s.{id:016x}"), &again).await?;
            self.delete(&d.dead, dead_seq).await?;
            n += 1;
        }
        if n > 0 {
            let _ = self.count(&d).await;
            d.counts.ready.notify_waiters();
        }
        Ok(n)
    }

    async fn purge_dead_letters(&self, dest: &str) -> Result<u64> {
        let d = self.dest(dest).await?;
        let r = d.dead.purge().await.map_err(unavailable)?;
        d.counts.dead_letters.store(0, Ordering::Relaxed);
        Ok(r.purged)
    }

    async fn dead_letters(&self, dest: &str, after: Option<u64>, limit: usize) -> Result<Vec<DeadLetter>> {
        let Some(d) = self.known(dest) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for (_, m) in self.all_dead(&d).await? {
            let h = |k: &str| m.headers.get(k).map(|v| v.as_str().to_string());
            let id = h("Tg-Id").and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
            if after.is_some_and(|a| id <= a) {
                continue;
            }
            out.push(DeadLetter {
                seq: id,
                reason: h("Tg-Reason").unwrap_or_default(),
                attempts: h("Tg-Attempts").and_then(|s| s.parse().ok()).unwrap_or(0),
                last_error: h("Tg-Last-Error").and_then(|s| serde_json::from_str(&s).ok()),
                received_at: h("Tg-Received").and_then(|s| s.parse().ok()).unwrap_or(0),
                dead_lettered_at: h("Tg-Dead-At").and_then(|s| s.parse().ok()).unwrap_or(0),
                size_bytes: m.payload.len() as u64,
            });
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    async fn status(&self, seq: u64) -> Result<Option<MessageStatus>> {
        if let Some(v) = self
            .inner
            .status
            .get(format!("s.{seq:016x}"))
            .await
            .map_err(unavailable)?
        {
            if let Ok(f) = serde_json::from_slice::<Finished>(&v) {
                return Ok(Some(MessageStatus {
                    seq,
                    dest: f.dest,
                    state: f.state,
                    visible_at: 0,
                    attempts: f.attempts,
                    received_at: f.received_at,
                    finished_at: (f.state != STATE_PENDING && f.state != STATE_HELD).then_some(f.finished_at),
                    last_error: f.last_error,
                    reason: f.reason,
                    producer: f.producer,
                    category: f.category,
                    routed_from: None,
                    order_key: f.order_key,
                }));
            }
        }
        let Some(name) = self.name_of((seq >> SEQ_BITS) as u32).await else {
            return Ok(None);
        };
        let d = self.dest(&name).await?;
        let stream_seq = seq & SEQ_MASK;
        let m = match d.queue.get_raw_message(stream_seq).await {
            Ok(m) => m,
            Err(e) if no_message(&e) => return Ok(None),
            Err(e) => return Err(unavailable(e)),
        };
        let (msg, handed) = self.decode(&d, &m);
        if msg.seq != seq {
            return Ok(None);
        }
        let retry = match self
            .inner
            .state
            .get(format!("r.{name}.{stream_seq}"))
            .await
            .map_err(unavailable)?
        {
            Some(v) => serde_json::from_slice::<Retry>(&v).ok(),
            None => None,
        };
        Ok(Some(MessageStatus {
            seq,
            dest: name,
            state: STATE_PENDING,
            visible_at: retry.as_ref().map_or(0, |r| r.visible_at),
            attempts: retry.as_ref().map_or(0, |r| r.attempts),
            received_at: msg.received_at,
            finished_at: None,
            last_error: retry.and_then(|r| r.last_error),
            reason: None,
            producer: handed.producer,
            category: handed.category,
            routed_from: None,
            order_key: handed.order_key,
        }))
    }

    async fn queued(&self, dest: &str, limit: usize) -> Result<Vec<Queued>> {
        let Some(d) = self.known(dest) else {
            return Ok(Vec::new());
        };
        // The queue's front, read as the dispatcher reads it (pipelined).
        let mut out = Vec::new();
        let mut from = 1;
        while out.len() < limit {
            let (batch, next) = self.read_from(&d, from, limit - out.len()).await?;
            if batch.is_empty() {
                break;
            }
            from = next;
            for m in batch {
                let (msg, _) = self.decode(&d, &m);
                let retry = lock(&d.reading).scheduled.get(&m.sequence).cloned();
                out.push(Queued {
                    seq: msg.seq,
                    received_at: msg.received_at,
                    visible_at: retry.as_ref().map_or(msg.received_at, |r| r.visible_at),
                    attempts: retry.as_ref().map_or(0, |r| r.attempts),
                    last_error: retry.and_then(|r| r.last_error),
                    size_bytes: m.payload.len() as u64,
                });
            }
        }
        Ok(out)
    }

    async fn oldest_pending(&self, dest: &str) -> Result<Option<i64>> {
        let Some(d) = self.known(dest) else { return Ok(None) };
        Ok(self.next_at(&d, 1).await?.map(|m| self.decode(&d, &m).0.received_at))
    }

    async fn queue_detail(&self, dest: &str) -> Result<(Option<i64>, u64)> {
        let oldest = self.oldest_pending(dest).await?;
        let scheduled = self.known(dest).map_or(0, |d| lock(&d.reading).scheduled.len() as u64);
        Ok((oldest, scheduled))
    }

    async fn sweep(&self, _retention_ms: i64, review_retention_ms: i64) -> Result<u64> {
        // History and key records expire by their buckets' max_age; review
        // records by `[review] retention`, except held ones still owed a
        // decision.
        self.sweep_reviews(now_ms() - review_retention_ms).await
    }

    async fn decide(&self, seq: u64, decision: review::Decision) -> Result<review::Decided> {
        self.decide_review(seq, decision).await
    }

    async fn expire_holds(&self, dest: &str, deliver: bool, now: i64) -> Result<u64> {
        let Some(d) = self.known(dest) else { return Ok(0) };
        self.sweep_held(&d, Some(deliver), now).await
    }

    async fn review_item(&self, seq: u64) -> Result<Option<review::Item>> {
        self.review_item_of(seq).await
    }

    async fn open_reviews(
        &self,
        dest: Option<String>,
        category: Option<String>,
        after: u64,
        limit: usize,
    ) -> Result<Vec<review::Item>> {
        self.open_reviews_of(dest, category, after, limit).await
    }

    async fn oldest_open_review(&self, dest: &str) -> Result<Option<i64>> {
        self.oldest_open_of(dest).await
    }

    async fn review_tallies(&self, dest: Option<String>, since: i64) -> Result<Vec<((String, String), review::Tally)>> {
        self.tallies_of(dest.as_deref(), None, since).await
    }

    async fn review_tally(&self, dest: &str, category: &str, since: i64) -> Result<review::Tally> {
        Ok(self
            .tallies_of(Some(dest), Some(category), since)
            .await?
            .into_iter()
            .next()
            .map(|(_, t)| t)
            .unwrap_or_default())
    }

    async fn volumes(&self, dest: Option<String>, since: i64) -> Result<Vec<(String, String, i64, u64)>> {
        self.volumes_of(dest, since).await
    }

    async fn corrections(
        &self,
        dest: Option<String>,
        since: i64,
        after: u64,
        limit: usize,
    ) -> Result<Vec<review::Item>> {
        self.corrections_of(dest, since, after, limit).await
    }

    fn close(&self) {
        self.inner.stats.open.store(false, Ordering::Relaxed);
        let _ = self.inner.stop.send(true);
        // Give the lease loops a moment to let go of their leases, so
        // another instance takes over at once rather than after LEASE_TTL.
        let deadline = Instant::now() + Duration::from_secs(2);
        let dests: Vec<Arc<Dest>> = self
            .inner
            .dests
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        while Instant::now() < deadline && dests.iter().any(|d| d.holding.load(Ordering::SeqCst)) {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_before_2_10_are_refused_with_the_version_needed() {
        assert!(check_version("2.10.0").is_ok());
        assert!(check_version("2.15.1").is_ok());
        assert!(check_version("3.0.0-beta").is_ok());
        let e = check_version("2.9.25").unwrap_err();
        assert!(e.contains("2.9.25") && e.contains("2.10"), "{e}");
        assert!(check_version("garbage").is_err());
    }

    #[test]
    fn ids_carry_the_destination_index_and_the_stream_sequence() {
        let id = (7u64 << SEQ_BITS) | 12345;
        assert_eq!(id >> SEQ_BITS, 7);
        assert_eq!(id & SEQ_MASK, 12345);
    }
}
