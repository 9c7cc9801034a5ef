//! The journal: tidegate's durable queue. It knows nothing of HTTP.
//!
//! # Storage
//!
//! One process per directory: `journal.lock` is held (`flock`) from before
//! the database is opened until `close`, and a second opener is refused.
//!
//! One SQLite database (`<storage.path>/journal.db`) in WAL mode with
//! `auto_vacuum=INCREMENTAL` (set before the tables exist
//! so freed pages can be handed back while running). One table, `messages`,
//! holds every message from acceptance until its history expires:
//!
//! | state | meaning | body kept |
//! |---|---|---|
//! | 0 `pending` | waiting, in flight, or scheduled for a retry (`visible_at` in the future) | yes |
//! | 1 `dead` | dead-lettered, with a reason; replay turns it back into 0 | yes |
//! | 2 `delivered` | finished; kept for `history_retention` for status look-ups | no |
//! | 3 `dropped` | finished by `on_failure = "log"`; kept like 2 | no |
//! | 4 `quarantined` | its checksum did not match; never delivered, kept for forensics | yes |
//!
//! Every row carries a CRC-32 over its method, path, headers and body, and a
//! format version. Partial indexes serve the queue: `(dest, visible_at, seq)`
//! for "next deliverable", `(dest, seq)` for the FIFO head and the oldest
//! message, `(dest, seq)` over dead letters, `finished_at` for history expiry.
//! In-flight is not a state on disk: a message being delivered is still
//! `pending`, so a crash makes it deliverable again (at-least-once).
//!
//! # Writes and durability
//!
//! A single writer thread owns the write connection. Every change (append,
//! ack, reschedule, dead-letter, drop, replay, purge, sweep) is a command on
//! its channel; the thread takes whatever is pending (up to a bound), applies
//! it in one transaction and commits (one WAL append); a syncer thread then
//! fdatasyncs the WAL and only then answers each command. That is
//! `synchronous=FULL`'s guarantee with the fsync taken off the writer's path
//! (SQLite runs with `NORMAL`; see `writer::syncer`). So a producer's 202 is sent only after the batch
//! holding its message is on disk, and throughput grows with concurrency
//! instead of being capped by the fsync rate (group commit). The writer also
//! enforces queue limits and `max_disk` itself: it is the only place that
//! sees appends in order, so limits are exact without reservations.
//!
//! # What a crash leaves
//!
//! SQLite's WAL makes each batch atomic: after kill -9 or power loss a batch
//! is either wholly there or wholly absent, and an absent batch was never
//! answered. Messages that were in flight are still `pending` and are
//! delivered again (the downstream sees the same `Idempotency-Key`).
//!
//! # Recovery and corruption
//!
//! Opening checks the schema and the format version, then counts the queue
//! through its indexes. After an unclean shutdown it also runs
//! `PRAGMA quick_check`. If opening, counting or the check fails, the
//! database files are moved to `quarantine/<time>/` (never deleted) and every
//! row that can still be read and whose checksum matches is salvaged into a
//! fresh database, through the b-tree and then, for what it no longer leads
//! to, from the leaf pages directly; what was lost is logged and counted.
//! A row whose checksum fails at delivery time is moved to state 4 and
//! counted; it never takes other rows with it.
//!
//! # Space
//!
//! Delivering or dropping a message clears its body and headers in the same
//! row change; a periodic sweep deletes history past retention and expired
//! idempotency keys in bounded chunks, then runs `incremental_vacuum`, so the
//! file shrinks back as the queue drains. Bodies never live in memory beyond
//! the few messages being delivered and a destination's tail (below: at
//! most 1,024 messages or 4 MiB, and only while its worker keeps up), so
//! RSS stays flat as the queue grows.
//!
//! # Reading back
//!
//! A worker reads its queue through `fetch_ready`: an index-only scan for
//! what is due, then each due row by seq, in one read transaction on a
//! pooled connection. Once a read finds nothing due that is not already in
//! flight and nothing scheduled, the worker has caught up, and the writer
//! hands each new message of that destination to its `tail` as it commits
//! it: a worker that keeps up reads nothing back. `tail` says what stops
//! that and why the journal stays the truth.

pub mod jetstream;
mod leaves;
mod queue;
mod reader;
pub mod review;
mod salvage;
mod schema;
mod tail;
mod verify;
mod writer;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, Notify};

pub use queue::{Queue, Queues};
pub use reader::{DeadLetter, MessageStatus, Queued};
pub use schema::{STATE_DEAD, STATE_DELIVERED, STATE_DROPPED, STATE_HELD, STATE_PENDING, STATE_QUARANTINED};
pub use verify::{verify, Report as VerifyReport};

/// Why a journal call failed, and so what the caller does next.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// The disk or `max_disk` is full: refuse new work, retry later.
    #[error("storage is full")]
    StorageFull,
    /// The journal is closed (shutting down).
    #[error("journal is closed")]
    Closed,
    /// The database is damaged. The journal stops (fail-stop) so that the
    /// next start checks and salvages it.
    #[error("journal is corrupt: {0}")]
    Corrupt(String),
    /// SQLite failed; the operation did not happen.
    #[error("journal storage error: {0}")]
    Storage(rusqlite::Error),
    #[error("journal i/o error: {0}")]
    Io(std::io::Error),
    /// Another process holds the storage directory.
    #[error("{0}")]
    InUse(String),
    /// The shared storage of cluster mode cannot be reached (or did not
    /// confirm in time): nothing was stored, the caller may retry.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// The storage cannot do this (a feature the backend does not have).
    #[error("{0}")]
    Unsupported(&'static str),
}

// By hand, not `#[from]`: that would also make the inner error the
// `source`, and its text, already in the message, would print twice in an
// error chain (`{:#}`).
impl From<rusqlite::Error> for JournalError {
    fn from(e: rusqlite::Error) -> Self {
        JournalError::Storage(e)
    }
}

impl From<std::io::Error> for JournalError {
    fn from(e: std::io::Error) -> Self {
        JournalError::Io(e)
    }
}

impl JournalError {
    fn from_sqlite(e: rusqlite::Error) -> Self {
        match e.sqlite_error_code() {
            Some(rusqlite::ErrorCode::DiskFull) => JournalError::StorageFull,
            Some(rusqlite::ErrorCode::DatabaseCorrupt) | Some(rusqlite::ErrorCode::NotADatabase) => {
                JournalError::Corrupt(e.to_string())
            }
            _ => JournalError::Storage(e),
        }
    }
}

pub type Result<T> = std::result::Result<T, JournalError>;

/// Whether `id` has the shape of a message id: 24 lowercase hex digits (a
/// journal's salt, then the sequence number). A well-formed id may still be
/// another journal's, which [`Journal::parse_id`] tells.
pub fn is_message_id(id: &str) -> bool {
    id.len() == 24 && id.bytes().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
}

/// Milliseconds since the Unix epoch; the journal's only notion of time.
/// The public id of message `seq` in a journal with this salt.
pub(crate) fn id_of(salt: u32, seq: u64) -> String {
    format!("{salt:08x}{seq:016x}")
}

/// How old a message received at `received_ms` is now, in seconds; 0 for
/// none.
pub fn age_seconds(received_ms: Option<i64>) -> f64 {
    received_ms.map_or(0.0, |r| ((now_ms() - r).max(0) as f64) / 1000.0)
}

/// A journal time (ms since the epoch) as RFC 3339 text for the APIs;
/// `null` if it is out of range.
pub fn rfc3339(ms: i64) -> serde_json::Value {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000).ok();
    t.and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .map(serde_json::Value::String)
        .unwrap_or(serde_json::Value::Null)
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A message as the producer handed it over.
#[derive(Clone, Debug)]
pub struct NewMessage {
    pub dest: String,
    pub method: String,
    /// The path after the destination segment, with its query.
    pub path: String,
    /// Headers to forward, already filtered by ingress.
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    pub idempotency_key: Option<String>,
    /// The producer is waiting for the outcome (`Prefer: wait`).
    pub wants_reply: bool,
    pub received_at: i64,
    /// Who sent it (`[[ingress.producer]]`), when producers are configured.
    pub producer: Option<String>,
    /// Its category (`[destination.handoff] category`), when it has one.
    pub category: Option<String>,
    /// The destination it was addressed to and the index of the route rule
    /// that moved it here, when a handoff route did.
    pub routed_from: Option<(String, u32)>,
    /// Its ordering key, when its destination orders by key (SPEC §14).
    pub order_key: Option<String>,
    /// What the review station asks of it, when its destination has one.
    pub review: Option<ReviewIntent>,
}

/// What the review station (SPEC §10) asks of a new message. Sampling is
/// decided by the writer, on the id it gives the message ([`sampled`]), so
/// it is deterministic per id and costs the producer nothing.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ReviewIntent {
    /// Held whatever the sampling says, and why (`predicate`, `route`).
    pub hold: Option<&'static str>,
    /// Fraction of the rest held (reason `sample`).
    pub sample: f64,
    /// Fraction delivered at once and listed for grading.
    pub audit: f64,
    /// How long a hold lasts before `on_hold_timeout`; `None`: until
    /// someone decides.
    pub hold_for_ms: Option<i64>,
}

/// Whether the message with this id falls in a sample of `rate` (a
/// fraction): a digest of `draw` and the id, read as a number in [0, 1).
/// The same id always gives the same answer; distinct draws ("sample",
/// "audit") are independent.
pub fn sampled(draw: &str, id: &str, rate: f64) -> bool {
    use sha2::{Digest, Sha256};
    if rate <= 0.0 {
        return false;
    }
    if rate >= 1.0 {
        return true;
    }
    let digest = Sha256::new()
        .chain_update(draw)
        .chain_update(b":")
        .chain_update(id)
        .finalize();
    let mut word = [0u8; 8];
    word.copy_from_slice(&digest[..8]);
    (u64::from_be_bytes(word) as f64 / 18_446_744_073_709_551_616.0) < rate
}

impl NewMessage {
    /// What an `Idempotency-Key` covers, digested: the method, the path with
    /// its query, and the body. A repeat of the key must match it to count
    /// as a repeat (the IETF Idempotency-Key draft's fingerprint).
    pub fn fingerprint(&self) -> [u8; 32] {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        // Lengths first, so that no two different triples hash alike.
        for part in [self.method.as_bytes(), self.path.as_bytes()] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part);
        }
        h.update(&self.body[..]);
        h.finalize().into()
    }
}

/// How a message a producer waits for (`Prefer: wait`) finished, as one
/// instance tells the others in cluster mode: the dispatcher that
/// delivered it may not be the instance the producer is waiting on.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    pub seq: u64,
    /// `delivered`, `dead_lettered` or `dropped`.
    pub state: String,
    pub detail: String,
    /// The downstream's last response: status, content type, body.
    pub response: Option<(u16, Option<String>, Bytes)>,
}

/// Limits the writer enforces when appending.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_messages: u64,
    pub max_bytes: u64,
    /// Idempotency keys older than this are forgotten.
    pub idempotency_window_ms: i64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Appended {
    Stored {
        seq: u64,
        /// Held for review, and why (`predicate`, `route`, `sample`).
        held: Option<&'static str>,
    },
    Duplicate {
        seq: u64,
    },
    /// The `Idempotency-Key` was seen within the window for a different
    /// request (method, path or body): nothing stored.
    KeyReused {
        seq: u64,
    },
    /// The destination's queue is at `max_messages` or `max_bytes`.
    QueueFull,
}

/// A message read back for delivery.
#[derive(Clone, Debug)]
pub struct Message {
    pub seq: u64,
    pub dest: String,
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    /// Attempts already made.
    pub attempts: u32,
    pub received_at: i64,
    pub idempotency_key: Option<String>,
    pub wants_reply: bool,
    /// Its ordering key; `None` when its destination did not order by key
    /// when it was accepted.
    pub order_key: Option<String>,
}

/// What a worker's read of its queue found. The reader hands back
/// `Due<Fetched>` (damaged rows by seq); the journal quarantines those and
/// returns `Due<Message>`.
#[derive(Debug)]
pub struct Due<M = Message> {
    /// Messages due now, in delivery order.
    pub messages: Vec<M>,
    /// When the first message not yet due becomes visible.
    pub next_due: Option<i64>,
}

/// The last failure of a message, as stored and shown to operators.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LastError {
    pub kind: String,
    pub status: Option<u16>,
    pub detail: String,
}

/// How a message ends up, for commands that finish or move it.
#[derive(Clone, Debug)]
pub enum Disposition {
    Delivered,
    Reschedule {
        visible_at: i64,
    },
    /// Halt mode on a key-ordered destination: the message stays pending,
    /// due at once, and its key is recorded as halted, in the same commit,
    /// until an operator resumes it (`release_key`).
    HaltKey {
        key: String,
        reason: String,
    },
    DeadLetter {
        reason: String,
    },
    Dropped {
        reason: String,
    },
    Quarantined {
        reason: String,
    },
}

/// A key of a key-ordered destination that halt mode stopped: the message
/// it stopped on, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HaltedKey {
    pub dest: String,
    pub key: String,
    pub seq: u64,
    pub reason: String,
}

/// Per-destination persisted state (paused, halted, ...).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DestinationRecord {
    pub state: String,
    pub reason: String,
    pub head_seq: Option<u64>,
}

/// Live counts for one destination, exact after every commit, plus the
/// wake-ups dispatch and blocked producers wait on.
#[derive(Debug, Default)]
pub struct QueueCounts {
    pub depth: AtomicU64,
    pub bytes: AtomicU64,
    pub dead_letters: AtomicU64,
    /// Of `depth`, held for a review decision.
    pub held: AtomicU64,
    /// Review items (held and audit) with no decision yet.
    pub open_reviews: AtomicU64,
    /// Signalled after a commit that made messages deliverable.
    pub ready: Notify,
    /// Signalled after a commit that freed room in the queue.
    pub room: Notify,
    /// New messages handed to the worker from memory once it keeps up.
    pub(crate) tail: tail::Tail,
}

/// Journal-wide counters for metrics.
#[derive(Debug, Default)]
pub struct JournalStats {
    pub fsyncs: AtomicU64,
    pub disk_bytes: AtomicU64,
    pub corrupt_records: AtomicU64,
    pub max_disk: AtomicU64,
    pub open: AtomicBool,
    /// The filesystem is below its free-space reserve: appends are refused.
    pub low_space: AtomicBool,
    /// Set when SQLite reported corruption while running.
    pub poisoned: AtomicBool,
    /// Signalled when `poisoned` is set.
    pub poison: Notify,
    /// Where a corruption seen while running is recorded for the next start.
    pub(crate) suspect_marker: std::sync::OnceLock<std::path::PathBuf>,
    /// Test hook: the writer exits without checkpointing or marking the
    /// journal clean, as a killed process would.
    pub(crate) abandon: AtomicBool,
}

impl JournalStats {
    pub(crate) fn note_error(&self, e: &JournalError) {
        if let JournalError::Corrupt(detail) = e {
            if !self.poisoned.swap(true, Ordering::SeqCst) {
                tracing::error!(%detail, "journal corruption detected while running; stopping so the next start can salvage it");
                if let Some(marker) = self.suspect_marker.get() {
                    if let Err(e) = std::fs::write(marker, detail) {
                        tracing::error!(error = %e, path = %marker.display(), "could not record the corruption for the next start");
                    }
                }
                self.corrupt_records.fetch_add(1, Ordering::Relaxed);
            }
            self.poison.notify_waiters();
        }
    }
}

/// A handle on the journal; cheap to clone.
#[derive(Clone)]
pub struct Journal {
    inner: Arc<Inner>,
}

struct Inner {
    tx: mpsc::UnboundedSender<writer::Command>,
    readers: reader::Pool,
    salt: u32,
    queues: RwLock<HashMap<String, Arc<QueueCounts>>>,
    stats: Arc<JournalStats>,
    /// The storage directory's lock (see `lock_storage`), let go by `close`.
    lock: std::sync::Mutex<Option<std::fs::File>>,
    #[allow(clippy::type_complexity)]
    writer_thread: std::sync::Mutex<
        Option<(
            std::thread::JoinHandle<()>,
            std::thread::JoinHandle<()>,
            std::sync::mpsc::Sender<()>,
        )>,
    >,
}

impl Journal {
    /// Takes the storage directory `dir` (creating it) for this process,
    /// or refuses it, naming the process that holds it. Start-up takes it
    /// before it binds any port, so that a second tidegate on the same
    /// directory is told so, not that a port the first one holds is taken.
    pub fn lock(dir: &Path) -> Result<StorageLock> {
        // The queue holds what producers sent, often personal data: a
        // directory tidegate creates is its user's alone (an existing one
        // keeps the mode its operator gave it).
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
        Ok(StorageLock {
            dir: dir.to_path_buf(),
            file: lock_storage(dir)?,
        })
    }

    /// Opens (creating, recovering or salvaging as needed) the journal in
    /// `dir`. Blocking: call from start-up or `spawn_blocking`.
    pub fn open(dir: &Path, max_disk: u64) -> Result<Journal> {
        Self::open_locked(Self::lock(dir)?, max_disk)
    }

    /// `open`, on a directory already taken with `lock`. Nothing is read or
    /// moved before that: a salvage must never run under a journal another
    /// process is using.
    pub fn open_locked(lock: StorageLock, max_disk: u64) -> Result<Journal> {
        let dir = lock.dir.as_path();
        let stats = Arc::new(JournalStats::default());
        stats.max_disk.store(max_disk, Ordering::Relaxed);
        let db = dir.join(schema::DB_FILE);
        let new_journal = !db.exists();
        let suspect = dir.join(schema::SUSPECT_FILE);
        stats.suspect_marker.get_or_init(|| suspect.clone());
        // Corruption seen while running may be of a kind the start-up check
        // does not find (an index that disagrees with its table): the marker
        // left then sends the journal straight to salvage.
        let checked = if dir.join(schema::SALVAGE_FILE).exists() {
            // A salvage was cut short: the journal beside the marker is its
            // partial output, never to be opened as the queue.
            Err(schema::OpenError::Damaged("a salvage was cut short".into()))
        } else {
            match std::fs::read_to_string(&suspect) {
                Ok(why) => Err(schema::OpenError::Damaged(format!(
                    "corruption seen while running: {}",
                    why.trim()
                ))),
                Err(_) => schema::open_checked(&db),
            }
        };
        let opened = match checked {
            Ok(o) => {
                if new_journal {
                    // Said loudly: a storage.path that points somewhere new
                    // (a typo, another working directory) looks like a queue
                    // that emptied itself.
                    tracing::warn!(path = %db.display(), "no journal here: created a new, empty one");
                }
                o
            }
            Err(schema::OpenError::Refused(reason)) => {
                return Err(JournalError::Io(std::io::Error::other(format!(
                    "{}: {reason}{}",
                    db.display(),
                    full_disk_hint(dir)
                ))))
            }
            Err(schema::OpenError::Damaged(reason)) => {
                tracing::error!(path = %db.display(), %reason, "journal failed its checks; quarantining it and salvaging intact messages");
                let report = salvage::salvage(dir, &reason).map_err(|e| {
                    JournalError::Io(std::io::Error::other(format!(
                        "salvage of {} failed, to be carried out again at the next start: {e}",
                        dir.display()
                    )))
                })?;
                stats.corrupt_records.fetch_add(report.lost, Ordering::Relaxed);
                tracing::error!(
                    salvaged = report.salvaged,
                    lost = report.lost,
                    quarantine = %report.quarantine_dir.display(),
                    "journal salvaged"
                );
                let _ = std::fs::remove_file(&suspect);
                schema::open_checked(&db).map_err(|r| {
                    JournalError::Io(std::io::Error::other(format!("salvaged journal does not open: {r}")))
                })?
            }
        };
        let schema::Opened {
            conn,
            salt,
            counts,
            known_seq,
        } = opened;
        // Acknowledged sequence numbers above everything the database knows
        // of were lost with the end of the WAL (truncated or deleted while
        // stopped); a salvage has already counted what it lost below.
        let hwm = schema::high_water_mark(&db);
        let lost = (hwm - known_seq).max(0) as u64;
        if lost > 0 {
            tracing::error!(
                lost,
                last_known = known_seq,
                high_water_mark = hwm,
                "the journal lost acknowledged messages: the end of its WAL is missing"
            );
        }
        stats.corrupt_records.fetch_add(lost, Ordering::Relaxed);
        // Never reuse the ids of lost messages.
        let next_seq = known_seq.max(hwm) + 1;
        let mut queues = HashMap::new();
        for (dest, c) in counts {
            let q = Arc::new(QueueCounts::default());
            q.depth.store(c.depth, Ordering::Relaxed);
            q.bytes.store(c.bytes, Ordering::Relaxed);
            q.dead_letters.store(c.dead, Ordering::Relaxed);
            q.held.store(c.held, Ordering::Relaxed);
            q.open_reviews.store(c.open_reviews, Ordering::Relaxed);
            queues.insert(dest, q);
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let readers = reader::Pool::new(db.clone());
        let inner = Arc::new(Inner {
            tx,
            readers,
            salt,
            queues: RwLock::new(queues),
            stats: stats.clone(),
            lock: std::sync::Mutex::new(Some(lock.file)),
            writer_thread: std::sync::Mutex::new(None),
        });
        let journal = Journal { inner };
        let wal_restart = Arc::new(AtomicBool::new(false));
        let shared = writer::Shared {
            queues: QueuesHandle(Arc::downgrade(&journal.inner)),
            stats: journal.inner.stats.clone(),
            wal_restart: wal_restart.clone(),
            salt,
        };
        let w = writer::Writer::new(conn, db.clone(), shared, next_seq)?;
        let handle = std::thread::Builder::new()
            .name("journal-writer".into())
            .spawn(move || w.run(rx))?;
        let (stop_tx, stop_rx) = std::sync::mpsc::channel();
        let ckpt = std::thread::Builder::new()
            .name("journal-checkpoint".into())
            .spawn(move || writer::checkpointer(db, stop_rx, wal_restart))?;
        *journal.inner.writer_thread.lock().unwrap_or_else(|e| e.into_inner()) = Some((handle, ckpt, stop_tx));
        stats.open.store(true, Ordering::Relaxed);
        Ok(journal)
    }

    pub fn stats(&self) -> &Arc<JournalStats> {
        &self.inner.stats
    }

    /// Counts for `dest`, created empty on first use.
    pub fn queue(&self, dest: &str) -> Arc<QueueCounts> {
        queue_of(&self.inner.queues, dest)
    }

    /// The destinations that have rows in the journal.
    pub fn known_destinations(&self) -> Vec<String> {
        let map = self.inner.queues.read().unwrap_or_else(|e| e.into_inner());
        map.keys().cloned().collect()
    }

    /// The public id of a message: a per-database salt and the sequence
    /// number, so ids never repeat even if the data directory is wiped.
    pub fn message_id(&self, seq: u64) -> String {
        id_of(self.inner.salt, seq)
    }

    /// The sequence number behind an id of this journal, if it is one
    /// (a well-formed id of another journal is not).
    pub fn parse_id(&self, id: &str) -> Option<u64> {
        if !is_message_id(id) {
            return None;
        }
        let salt = u32::from_str_radix(&id[..8], 16).ok()?;
        if salt != self.inner.salt {
            return None;
        }
        u64::from_str_radix(&id[8..], 16).ok()
    }

    async fn call<T>(&self, make: impl FnOnce(oneshot::Sender<Result<T>>) -> writer::Command) -> Result<T> {
        let (reply, rx) = oneshot::channel();
        self.inner.tx.send(make(reply)).map_err(|_| JournalError::Closed)?;
        let out = rx.await.map_err(|_| JournalError::Closed)?;
        if let Err(e) = &out {
            self.inner.stats.note_error(e);
        }
        out
    }

    /// Makes a message durable. Returns only after the commit.
    pub async fn append(&self, msg: impl Into<Arc<NewMessage>>, limits: Limits) -> Result<Appended> {
        let msg = msg.into();
        // Digested here, on the caller's task, not on the single writer.
        let fingerprint = msg.idempotency_key.as_ref().map(|_| msg.fingerprint());
        self.call(|reply| writer::Command::Append {
            msg,
            fingerprint,
            limits,
            reply,
        })
        .await
    }

    /// Records the outcome of an attempt: `attempts` is the new total.
    pub async fn settle(
        &self,
        seq: u64,
        dest: &str,
        attempts: u32,
        last_error: Option<LastError>,
        disposition: Disposition,
    ) -> Result<()> {
        let dest = dest.to_string();
        self.call(|reply| writer::Command::Settle {
            seq,
            dest,
            attempts,
            last_error,
            disposition,
            reply,
        })
        .await
    }

    /// Dead letters back into the queue as fresh attempts; `None` = all.
    pub async fn replay(&self, dest: &str, seqs: Option<Vec<u64>>) -> Result<u64> {
        let dest = dest.to_string();
        self.call(|reply| writer::Command::Replay { dest, seqs, reply }).await
    }

    /// Lets a halted key go (`HaltKey`): its head is delivered again, or,
    /// with `skip_head`, dead-lettered (`skipped_by_operator`) in the same
    /// commit. The halted head's seq; `None` if the key was not halted.
    pub async fn release_key(&self, dest: &str, key: &str, skip_head: bool) -> Result<Option<u64>> {
        let (dest, key) = (dest.to_string(), key.to_string());
        let seq = self
            .call(|reply| writer::Command::ReleaseKey {
                dest,
                key,
                skip_head,
                reply,
            })
            .await?;
        // Sequence numbers start at 1: 0 says the key was not halted.
        Ok((seq > 0).then_some(seq))
    }

    /// Every halted key, of every destination.
    pub async fn halted_keys(&self) -> Result<Vec<HaltedKey>> {
        self.read(|r| r.halted_keys()).await
    }

    /// Up to `limit` messages of a key-ordered `dest` that may be attempted
    /// now: the oldest pending message of each key, when it is due, its key
    /// is not `halted`, and no message of its key is in flight (`exclude`;
    /// one in flight is pending, so it is its key's head and hides the
    /// rest). A message without a key (accepted before the destination
    /// ordered by key) is a key of its own. Heads are taken oldest first
    /// from a window at the front of the queue and, past it, key by key
    /// round robin from after `after` (`Reader::fetch_keyed`); also
    /// returned: where the next fetch's round starts, and when the first
    /// head not yet due becomes visible.
    ///
    /// A look, not a hand-out: the tail is not used (it would hand out new
    /// messages without regard to their keys), so nothing needs giving back.
    pub async fn fetch_keyed(
        &self,
        dest: &str,
        limit: usize,
        exclude: std::collections::HashSet<u64>,
        halted: std::collections::HashSet<String>,
        after: String,
    ) -> Result<(Due, String)> {
        self.queue(dest).tail.stop();
        let d = dest.to_string();
        let now = now_ms();
        let (ready, cursor) = self
            .read(move |r| r.fetch_keyed(&d, now, limit, &exclude, &halted, &after))
            .await?;
        let messages = self.sound(dest, ready.messages).await?;
        Ok((
            Due {
                messages,
                next_due: ready.next_due,
            },
            cursor,
        ))
    }

    pub async fn purge_dead_letters(&self, dest: &str) -> Result<u64> {
        let dest = dest.to_string();
        self.call(|reply| writer::Command::Purge { dest, reply }).await
    }

    pub async fn set_destination_record(&self, dest: &str, record: DestinationRecord) -> Result<()> {
        let dest = dest.to_string();
        self.call(|reply| writer::Command::SetDestination { dest, record, reply })
            .await
    }

    /// Deletes history older than `retention_ms` and review records older
    /// than `review_retention_ms`; returns the history rows deleted.
    pub async fn sweep(&self, retention_ms: i64, review_retention_ms: i64) -> Result<u64> {
        self.call(|reply| writer::Command::Sweep {
            retention_ms,
            review_retention_ms,
            reply,
        })
        .await
    }

    /// Records a decision or feedback on message `seq`, durably, with the
    /// change it makes to a held message (`review::Decided` says which).
    pub async fn decide(&self, seq: u64, decision: review::Decision) -> Result<review::Decided> {
        self.call(|reply| writer::Command::Decide { seq, decision, reply })
            .await
    }

    /// Ends the holds of `dest` that timed out by `now` (at most a chunk;
    /// call again while it answers a full one).
    pub async fn expire_holds(&self, dest: &str, deliver: bool, now: i64) -> Result<u64> {
        let dest = dest.to_string();
        self.call(|reply| writer::Command::ExpireHolds {
            dest,
            deliver,
            now,
            reply,
        })
        .await
    }

    /// One review record.
    pub async fn review_item(&self, seq: u64) -> Result<Option<review::Item>> {
        self.read(move |r| review::get(r.conn(), seq)).await
    }

    /// Review items awaiting a decision, oldest first.
    pub async fn open_reviews(
        &self,
        dest: Option<String>,
        category: Option<String>,
        after: u64,
        limit: usize,
    ) -> Result<Vec<review::Item>> {
        self.read(move |r| review::open(r.conn(), dest.as_deref(), category.as_deref(), after, limit))
            .await
    }

    /// When `dest`'s oldest open review item was received.
    pub async fn oldest_open_review(&self, dest: &str) -> Result<Option<i64>> {
        let dest = dest.to_string();
        self.read(move |r| review::oldest_open(r.conn(), &dest)).await
    }

    /// Decisions since `since` (ms), by destination and category.
    pub async fn review_tallies(
        &self,
        dest: Option<String>,
        since: i64,
    ) -> Result<Vec<((String, String), review::Tally)>> {
        self.read(move |r| review::tallies(r.conn(), dest.as_deref(), since))
            .await
    }

    /// One destination and category's decisions since `since` (ms).
    pub async fn review_tally(&self, dest: &str, category: &str, since: i64) -> Result<review::Tally> {
        let (dest, category) = (dest.to_string(), category.to_string());
        self.read(move |r| review::tally(r.conn(), &dest, &category, since))
            .await
    }

    /// Messages received since `since` (ms): `(dest, category, state, n)`.
    pub async fn volumes(&self, dest: Option<String>, since: i64) -> Result<Vec<(String, String, i64, u64)>> {
        self.read(move |r| review::volumes(r.conn(), dest.as_deref(), since))
            .await
    }

    /// Edits and overrides decided since `since` (ms), after seq `after`.
    pub async fn corrections(
        &self,
        dest: Option<String>,
        since: i64,
        after: u64,
        limit: usize,
    ) -> Result<Vec<review::Item>> {
        self.read(move |r| review::corrections(r.conn(), dest.as_deref(), since, after, limit))
            .await
    }

    /// Up to `limit` deliverable messages of `dest` (visible now), in
    /// (visible_at, seq) order, skipping `exclude` (already leased). Rows
    /// whose checksum fails are quarantined here and not returned. Also
    /// says when the next message not yet due becomes visible, so a worker
    /// with nothing to do knows how long to sleep without a second read.
    ///
    /// A hand-out, not a look: once the worker has caught up, new messages
    /// come from the destination's tail (the committed copies, in memory),
    /// each once. So every message returned must be settled or given back
    /// (`give_back`). `exclude` is asked for the leased seqs once the read
    /// has begun: a lease let go before then must not be skipped.
    pub async fn fetch_ready(&self, dest: &str, limit: usize, exclude: impl FnOnce() -> Vec<u64>) -> Result<Due> {
        let queue = self.queue(dest);
        if let Some(messages) = queue.tail.take(limit) {
            return Ok(Due {
                messages,
                next_due: None,
            });
        }
        queue.tail.begin_read();
        let exclude = exclude();
        let d = dest.to_string();
        let now = now_ms();
        let (ready, last_seq) = match self.read(move |r| r.fetch_ready(&d, now, limit, &exclude)).await {
            Ok(read) => read,
            Err(e) => {
                queue.tail.stop();
                return Err(e);
            }
        };
        queue
            .tail
            .end_read(last_seq, ready.messages.is_empty() && ready.next_due.is_none());
        let messages = self.sound(dest, ready.messages).await?;
        Ok(Due {
            messages,
            next_due: ready.next_due,
        })
    }

    /// The worker let go of messages `fetch_ready` gave it while they are
    /// still pending: unattempted, or released after an attempt that did
    /// not finish them (a retry, a halt, an outcome it could not record).
    /// Called after the lease is gone, so that the next read sees them.
    pub fn give_back(&self, dest: &str) {
        self.queue(dest).tail.stop();
    }

    /// The lowest-seq pending message of `dest`, visible or not, with its
    /// `visible_at`.
    pub async fn head(&self, dest: &str) -> Result<Option<(Message, i64)>> {
        // The head may be a message the tail holds too: delivered from
        // here, the tail must not hand it out again.
        self.queue(dest).tail.stop();
        loop {
            let d = dest.to_string();
            match self.read(move |r| r.head(&d)).await? {
                None => return Ok(None),
                Some((Ok(m), visible_at)) => return Ok(Some((m, visible_at))),
                Some((Err(seq), _)) => self.quarantine(dest, seq).await?,
            }
        }
    }

    /// The fetched messages that are sound; each damaged one is
    /// quarantined on the way.
    async fn sound(&self, dest: &str, fetched: Vec<reader::Fetched>) -> Result<Vec<Message>> {
        let mut messages = Vec::with_capacity(fetched.len());
        for f in fetched {
            match f {
                Ok(m) => messages.push(m),
                Err(seq) => self.quarantine(dest, seq).await?,
            }
        }
        Ok(messages)
    }

    /// Moves a damaged row out of the queue. Counted and logged only once
    /// that is committed: a row whose move fails stays pending, and the
    /// salvage that follows counts it, once.
    async fn quarantine(&self, dest: &str, seq: u64) -> Result<()> {
        let reason = "checksum mismatch".to_string();
        self.settle(seq, dest, 0, None, Disposition::Quarantined { reason })
            .await?;
        self.inner.stats.corrupt_records.fetch_add(1, Ordering::Relaxed);
        tracing::error!(id = %self.message_id(seq), destination = dest, "message failed its checksum; quarantined");
        Ok(())
    }

    pub async fn status(&self, seq: u64) -> Result<Option<MessageStatus>> {
        self.read(move |r| r.status(seq)).await
    }

    pub async fn dead_letters(&self, dest: &str, after: Option<u64>, limit: usize) -> Result<Vec<DeadLetter>> {
        let dest = dest.to_string();
        self.read(move |r| r.dead_letters(&dest, after, limit)).await
    }

    /// The first `limit` messages waiting in `dest`'s queue, oldest first.
    pub async fn queued(&self, dest: &str, limit: usize) -> Result<Vec<Queued>> {
        let dest = dest.to_string();
        self.read(move |r| r.queued(&dest, limit)).await
    }

    /// When `dest`'s oldest pending message was received.
    pub async fn oldest_pending(&self, dest: &str) -> Result<Option<i64>> {
        let dest = dest.to_string();
        self.read(move |r| r.oldest_pending(&dest)).await
    }

    /// `(received_at of the oldest pending message, scheduled count)`.
    pub async fn queue_detail(&self, dest: &str) -> Result<(Option<i64>, u64)> {
        let dest = dest.to_string();
        let now = now_ms();
        self.read(move |r| r.queue_detail(&dest, now)).await
    }

    pub async fn destination_records(&self) -> Result<HashMap<String, DestinationRecord>> {
        self.read(|r| r.destination_records()).await
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&reader::Reader) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T> {
        let pool = self.inner.readers.clone();
        let out = tokio::task::spawn_blocking(move || pool.with(f))
            .await
            .map_err(|e| JournalError::Io(std::io::Error::other(e.to_string())))?;
        if let Err(e) = &out {
            self.inner.stats.note_error(e);
        }
        out
    }

    /// Stops like a killed process: committed work stays (it is durable),
    /// but nothing is checkpointed and the journal is not marked clean.
    #[cfg(test)]
    pub(crate) fn crash(&self) {
        self.inner.stats.abandon.store(true, Ordering::SeqCst);
        self.close();
    }

    /// Flushes and closes: pending commands are committed, the clean-shutdown
    /// marker is set, and the writer thread exits.
    pub fn close(&self) {
        self.inner.stats.open.store(false, Ordering::Relaxed);
        // Stop checkpointing first: the writer's final TRUNCATE checkpoint
        // needs the WAL to itself.
        let threads = self
            .inner
            .writer_thread
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let writer = threads.map(|(writer, ckpt, stop)| {
            drop(stop);
            let _ = ckpt.join();
            writer
        });
        let (reply, rx) = std::sync::mpsc::channel();
        if self.inner.tx.send(writer::Command::Close { reply }).is_ok() {
            let _ = rx.recv();
        }
        if let Some(w) = writer {
            let _ = w.join();
        }
        // Nothing writes the files any more: another journal may take them.
        self.inner.lock.lock().unwrap_or_else(|e| e.into_inner()).take();
    }
}

/// A storage directory taken for this process (`Journal::lock`); let go
/// when dropped, or by the journal opened on it when that closes.
pub struct StorageLock {
    dir: PathBuf,
    file: std::fs::File,
}

/// When the disk is (nearly) full, says so: SQLite reports a WAL or
/// shared-memory file it cannot create as a bare "disk I/O error".
fn full_disk_hint(dir: &Path) -> String {
    // The WAL index alone needs 32 KiB; a first commit a few pages more.
    const ROOM_TO_START: u64 = 1 << 20;
    match fs4::available_space(dir) {
        Ok(free) if free < ROOM_TO_START => format!(
            "; the disk holding it has {free} bytes free, and the journal needs room for its \
             WAL to start (and then to drain): free some space, then start again"
        ),
        _ => String::new(),
    }
}

/// Takes the storage directory for this process. Two tidegates on one
/// journal would hand out the same sequence numbers, deliver every message
/// twice, and a salvage by one would pull the files from under the other;
/// so the second is refused, naming the first. An advisory `flock` on
/// `journal.lock`: the kernel lets it go when the holder exits, however it
/// exits, so a restart after kill -9 is never locked out.
pub(crate) fn lock_storage(dir: &Path) -> Result<std::fs::File> {
    use std::io::{Read, Seek, Write};
    let path = dir.join(schema::LOCK_FILE);
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    // fs4's, not std's `File::try_lock` (Rust 1.89, above this crate's MSRV).
    match fs4::FileExt::try_lock(&file) {
        Ok(()) => {
            // Only for the message the next one prints; not relied on.
            let _ = file
                .set_len(0)
                .and_then(|()| file.rewind())
                .and_then(|()| writeln!(file, "{}", std::process::id()));
            Ok(file)
        }
        Err(fs4::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = match holder.trim() {
                "" => String::new(),
                pid => format!(" (pid {pid})"),
            };
            Err(JournalError::InUse(format!(
                "{} is in use by another tidegate{holder}: one storage.path serves one process",
                dir.display()
            )))
        }
        Err(fs4::TryLockError::Error(e)) => Err(JournalError::Io(std::io::Error::new(
            e.kind(),
            format!("cannot lock {}: {e}", path.display()),
        ))),
    }
}

fn queue_of(queues: &RwLock<HashMap<String, Arc<QueueCounts>>>, dest: &str) -> Arc<QueueCounts> {
    if let Some(q) = queues.read().unwrap_or_else(|e| e.into_inner()).get(dest) {
        return q.clone();
    }
    let mut map = queues.write().unwrap_or_else(|e| e.into_inner());
    map.entry(dest.to_string()).or_default().clone()
}

/// The writer's view of the queue counters (it must not keep the journal
/// alive, or `close` could never finish).
#[derive(Clone)]
pub(crate) struct QueuesHandle(std::sync::Weak<Inner>);

impl QueuesHandle {
    fn get(&self, dest: &str) -> Option<Arc<QueueCounts>> {
        self.0.upgrade().map(|inner| queue_of(&inner.queues, dest))
    }
}

/// CRC-32 over everything a delivery sends, with field separators so that
/// moving bytes between fields changes the sum.
pub fn checksum(method: &str, path: &str, headers: &[u8], body: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(method.as_bytes());
    h.update(&[0]);
    h.update(path.as_bytes());
    h.update(&[0]);
    h.update(headers);
    h.update(&[0]);
    h.update(body);
    h.finalize()
}

pub(crate) fn encode_headers(headers: &[(String, String)]) -> Vec<u8> {
    serde_json::to_vec(headers).unwrap_or_else(|_| b"[]".to_vec())
}

/// Checks one stored record against its checksum and decodes its headers:
/// what the journal does with every row before it is delivered. `None`
/// means the record is corrupt and must be quarantined.
pub fn decode_record(method: &str, path: &str, headers: &[u8], body: &[u8], crc: u32) -> Option<Vec<(String, String)>> {
    if checksum(method, path, headers, body) != crc {
        return None;
    }
    decode_headers(headers)
}

pub(crate) fn decode_headers(raw: &[u8]) -> Option<Vec<(String, String)>> {
    serde_json::from_slice(raw).ok()
}

/// How many rows a salvage would find on the table-leaf pages of the file
/// at `db`. For the fuzz target: any bytes must give a count or an error,
/// never a panic.
#[doc(hidden)]
pub fn count_leaf_rows(db: &Path) -> std::io::Result<usize> {
    let mut n = 0;
    leaves::rows(db, &|_| true, &mut |_| n += 1)?;
    Ok(n)
}

#[cfg(test)]
mod tests;
