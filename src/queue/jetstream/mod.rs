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
//! | the audit trail (who did what) | stream `P_AUDIT`, subject `P.audit` | `max_age` = `[admin] audit_retention` (module `audit`) |
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

mod audit;
mod codec;
mod lease;
mod open;
mod read;
mod settle;
mod station;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv, stream};
use serde::{Deserialize, Serialize};

use crate::config::JetStreamConfig;
use crate::queue::{hex, Outcome, QueueCounts, QueueError, Result, Stats};

use codec::Retry;

pub use open::check_version;

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

/// A stream or bucket that could not be made, with what to do when it is
/// for want of servers.
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

fn unavailable(e: impl std::fmt::Display) -> QueueError {
    QueueError::Unavailable(e.to_string())
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
    /// Where the read in progress began.
    running_from: u64,
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
    /// While this instance holds the lease: its answer to other instances'
    /// state announcements (`P.state.<dest>`).
    answering: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Dest {
    fn forget_ahead(&self) {
        let mut a = lock(&self.ahead);
        a.generation += 1;
        a.batch = None;
    }

    /// A message being settled leaves what was read ahead: read before
    /// its attempt ended (after a rewind, or as a retry handed out from
    /// the schedule while the stream still held it), a copy there would go
    /// out again once it is delivered and deleted. A read in progress that
    /// may hold it is dropped.
    fn settling(&self, stream_seq: u64) {
        let mut a = lock(&self.ahead);
        if let Some((_, msgs, _)) = a.batch.as_mut() {
            msgs.retain(|m| m.sequence != stream_seq);
        }
        if a.running && a.running_from <= stream_seq {
            a.generation += 1;
        }
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

/// The JetStream queue; cheap to clone.
#[derive(Clone)]
pub struct JetStream {
    inner: Arc<Inner>,
}

struct Inner {
    client: async_nats::Client,
    js: jetstream::Context,
    cfg: JetStreamConfig,
    /// The servers' `max_payload`: the most one publish may carry.
    max_payload: u64,
    instance: String,
    salt: u32,
    state: kv::Store,
    status: kv::Store,
    idem: kv::Store,
    lease: kv::Store,
    review: kv::Store,
    /// The audit trail (`audit`).
    audit: stream::Stream,
    /// `review`'s records without bodies, kept by a watch.
    mirror: Mutex<station::Mirror>,
    dests: RwLock<HashMap<String, Arc<Dest>>>,
    by_index: RwLock<HashMap<u32, String>>,
    queues: RwLock<HashMap<String, Arc<QueueCounts>>>,
    stats: Arc<Stats>,
    stop: tokio::sync::watch::Sender<bool>,
    /// Serialises stream creation per process.
    creating: tokio::sync::Mutex<()>,
    /// Signalled when another instance reloaded (`P.reload`).
    reload_asked: Arc<tokio::sync::Notify>,
    /// Outcomes other instances announced (`P.done`), until taken.
    outcomes: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<Outcome>>>,
    /// Asks to apply a destination's record, for the dispatcher.
    state_tx: tokio::sync::mpsc::UnboundedSender<crate::queue::StateAsked>,
    /// Their receiving end, until the dispatcher takes it (`following`).
    state_rx: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<crate::queue::StateAsked>>>,
    following: AtomicBool,
}

/// A destination to prepare at start: its name and queue limits.
pub struct Prepared {
    pub name: String,
    pub max_messages: u64,
    pub max_bytes: u64,
}

impl JetStream {
    /// This instance's name in leases.
    /// The most one message may take as stored (headers and body): the
    /// servers' `max_payload`.
    pub fn max_payload(&self) -> u64 {
        self.inner.max_payload
    }

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
}

/// The message asked for is not in the stream (finished meanwhile).
fn no_message(e: &stream::RawMessageError) -> bool {
    e.kind() == stream::RawMessageErrorKind::NoMessageFound
}

/// A mutex's guard, poisoned or not: the state each one guards is valid
/// after any panic between its statements.
/// `dest`'s live counts, created empty on first use.
fn queue_of(queues: &RwLock<HashMap<String, Arc<QueueCounts>>>, dest: &str) -> Arc<QueueCounts> {
    if let Some(q) = queues.read().unwrap_or_else(|e| e.into_inner()).get(dest) {
        return q.clone();
    }
    let mut map = queues.write().unwrap_or_else(|e| e.into_inner());
    map.entry(dest.to_string()).or_default().clone()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Writes `value` as JSON under `key`, durably (a quorum of the bucket's
/// replicas) before it returns.
/// Writes `value` as JSON under `key`; the write's revision.
async fn put_json(store: &kv::Store, key: String, value: &impl Serialize) -> Result<u64> {
    let body = serde_json::to_vec(value).map_err(unavailable)?;
    store.put(key, body.into()).await.map_err(unavailable)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    pub(super) fn servers_before_2_10_are_refused_with_the_version_needed() {
        assert!(check_version("2.10.0").is_ok());
        assert!(check_version("2.15.1").is_ok());
        assert!(check_version("3.0.0-beta").is_ok());
        let e = check_version("2.9.25").unwrap_err();
        assert!(e.contains("2.9.25") && e.contains("2.10"), "{e}");
        assert!(check_version("garbage").is_err());
    }

    #[test]
    pub(super) fn ids_carry_the_destination_index_and_the_stream_sequence() {
        let id = (7u64 << SEQ_BITS) | 12345;
        assert_eq!(id >> SEQ_BITS, 7);
        assert_eq!(id & SEQ_MASK, 12345);
    }
}
