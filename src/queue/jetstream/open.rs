//! Connecting to the cluster and preparing it: the server's version and
//! settings checked, the buckets and each destination's streams made (or
//! their limits brought in line), the cluster's id salt and each
//! destination's index allocated once for all instances.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};
use bytes::Bytes;

use super::codec::decode_outcome;
use super::lease::{count_loop, lease_loop};
use super::{
    lock, replicas_hint, station, unavailable, Ahead, Dest, Inner, JetStream, KeyIndex, Prepared, Reading, LEASE_TTL,
    MIN_SERVER,
};
use crate::config::{JetStreamConfig, UrlCredentials};
use crate::queue::{QueueError, Result, Stats};

impl JetStream {
    /// Connects, checks the server, and prepares the buckets and each
    /// destination's streams. Fails with a message an operator can act on.
    pub async fn open(
        cfg: &JetStreamConfig,
        destinations: Vec<Prepared>,
        history_retention: Duration,
        idempotency_window: Duration,
        audit_retention: Duration,
    ) -> std::result::Result<JetStream, String> {
        // Built before the connection, so the client's events can say when
        // NATS is out of reach (`/readyz` answers 503 meanwhile).
        let stats = Arc::new(Stats::default());
        let client = connect(cfg, &stats).await?;
        let urls = cfg.urls.join(",");
        let info = client.server_info();
        let version = info.version.clone();
        check_version(&version)?;
        // What one publish may carry (SPEC §17): a message over it is
        // refused at ingress with 413, never half-tried.
        let max_payload = info.max_payload as u64;
        let js = jetstream::ContextBuilder::new()
            .timeout(Duration::from_secs(5))
            .build(client.clone());
        js.query_account().await.map_err(|e| {
            format!("NATS {version} at {urls} answered, but JetStream is not available to this account: {e}")
        })?;
        let buckets = Buckets::make(&js, cfg, history_retention, idempotency_window).await?;
        let salt = cluster_salt(&buckets.state).await?;
        let audit = super::audit::prepare(&js, &cfg.stream_prefix, cfg.replicas, audit_retention).await?;
        let (stop, _) = tokio::sync::watch::channel(false);
        let (state_tx, state_rx) = tokio::sync::mpsc::unbounded_channel();
        let js_queue = JetStream {
            inner: Arc::new(Inner {
                client,
                js,
                cfg: cfg.clone(),
                max_payload,
                instance: format!("{:016x}", rand::random::<u64>()),
                salt,
                state: buckets.state,
                status: buckets.status,
                idem: buckets.idem,
                lease: buckets.lease,
                review: buckets.review,
                audit,
                mirror: Mutex::new(station::Mirror::default()),
                dests: RwLock::new(HashMap::new()),
                by_index: RwLock::new(HashMap::new()),
                queues: RwLock::new(HashMap::new()),
                stats,
                stop,
                creating: tokio::sync::Mutex::new(()),
                reload_asked: Arc::new(tokio::sync::Notify::new()),
                outcomes: Mutex::new(None),
                state_tx,
                state_rx: Mutex::new(Some(state_rx)),
                following: AtomicBool::new(false),
            }),
        };
        tokio::spawn(js_queue.clone().mirror_loop());
        js_queue.follow_outcomes().await?;
        js_queue.follow_reload_requests().await?;
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

    /// Outcomes other instances announce (`<prefix>.done`), passed on to
    /// `outcomes` until the queue stops.
    async fn follow_outcomes(&self) -> std::result::Result<(), String> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        *lock(&self.inner.outcomes) = Some(rx);
        let mut done = self
            .inner
            .client
            .subscribe(format!("{}.done", self.inner.cfg.stream_prefix))
            .await
            .map_err(|e| format!("subscribing to outcome announcements: {e}"))?;
        let (me, mut stop) = (self.inner.instance.clone(), self.inner.stop.subscribe());
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
        Ok(())
    }

    /// Reloads other instances ask for (`<prefix>.reload`; not our own),
    /// signalled on `reload_asked`.
    async fn follow_reload_requests(&self) -> std::result::Result<(), String> {
        let mut reloads = self
            .inner
            .client
            .subscribe(format!("{}.reload", self.inner.cfg.stream_prefix))
            .await
            .map_err(|e| format!("subscribing to reload announcements: {e}"))?;
        let (asked, me, mut stop) = (
            self.inner.reload_asked.clone(),
            self.inner.instance.clone(),
            self.inner.stop.subscribe(),
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
        Ok(())
    }

    /// The destination's streams, created (or their limits updated) as
    /// needed, and its lease and count loops started once.
    pub(super) async fn dest_with(&self, name: &str, limits: Option<(u64, u64)>) -> Result<Arc<Dest>> {
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
            answering: Mutex::new(None),
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

    pub(super) async fn stream(
        &self,
        name: String,
        subject: &str,
        max_messages: u64,
        max_bytes: u64,
    ) -> Result<stream::Stream> {
        self.stream_from(name, subject, max_messages, max_bytes, None).await
    }

    pub(super) async fn stream_from(
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
                QueueError::Unavailable(if text.contains("insufficient storage") {
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
    pub(super) async fn dest_index(&self, name: &str) -> Result<u32> {
        let st = &self.inner.state;
        let key = format!("idx.{name}");
        loop {
            if let Some(v) = st.get(&key).await.map_err(unavailable)? {
                return std::str::from_utf8(&v)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| QueueError::Corrupt(format!("{key} holds no index")));
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
                return Err(QueueError::Unsupported(
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

    pub(super) async fn name_of(&self, index: u32) -> Option<String> {
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

    /// A destination's stream deleted by hand (or lost): made again, empty,
    /// numbered on from the last sequence seen so that ids never repeat.
    pub(super) async fn recreate(&self, d: &Dest, dead: bool) -> Result<()> {
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
}

/// The client, connected with the configured credentials; its events keep
/// `stats.unreachable` true while NATS is out of reach.
async fn connect(cfg: &JetStreamConfig, stats: &Arc<Stats>) -> std::result::Result<async_nats::Client, String> {
    let seen = stats.clone();
    let mut opts = async_nats::ConnectOptions::new()
        .name("tidegate")
        .event_callback(move |event| {
            let seen = seen.clone();
            async move {
                match event {
                    async_nats::Event::Disconnected => seen.unreachable.store(true, Ordering::Relaxed),
                    async_nats::Event::Connected => seen.unreachable.store(false, Ordering::Relaxed),
                    _ => {}
                }
            }
        })
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
    // Credentials written into the URLs, taken out of them by the config
    // (the client would not use them, and they must not be printed with
    // the URLs).
    match &cfg.url_credentials {
        Some(UrlCredentials {
            user,
            password: Some(p),
        }) => opts = opts.user_and_password(user.expose().to_string(), p.expose().to_string()),
        Some(UrlCredentials { user, password: None }) => opts = opts.token(user.expose().to_string()),
        None => {}
    }
    opts.connect(cfg.urls.as_slice())
        .await
        .map_err(|e| format!("cannot reach NATS at {}: {e}", cfg.urls.join(",")))
}

/// The key-value buckets every instance shares, found or made.
struct Buckets {
    state: kv::Store,
    status: kv::Store,
    idem: kv::Store,
    lease: kv::Store,
    review: kv::Store,
}

impl Buckets {
    async fn make(
        js: &jetstream::Context,
        cfg: &JetStreamConfig,
        history_retention: Duration,
        idempotency_window: Duration,
    ) -> std::result::Result<Buckets, String> {
        let make = |name: &str, max_age: Duration| {
            let c = kv::Config {
                bucket: format!("{}_{name}", cfg.stream_prefix),
                history: 1,
                max_age,
                storage: stream::StorageType::File,
                num_replicas: cfg.replicas,
                ..Default::default()
            };
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
        Ok(Buckets {
            state: make("STATE", Duration::ZERO).await?,
            status: make("STATUS", history_retention).await?,
            idem: make("IDEM", idempotency_window.max(Duration::from_secs(1))).await?,
            lease: make("LEASE", LEASE_TTL).await?,
            // Swept by `[review] retention`, not by age: a held item's
            // decision is owed however old it is.
            review: make("REVIEW", Duration::ZERO).await?,
        })
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
