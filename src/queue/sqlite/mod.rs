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

mod audit;
mod contract;
mod effect;
mod leaves;
mod reader;
mod record;
mod review;
mod salvage;
mod schema;
mod tail;
mod verify;
mod writer;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use tokio::sync::{mpsc, oneshot};

use crate::queue::{Disposition, Message, Queue, QueueCounts, QueueError, Result, Stats};

pub use record::{checksum, decode_record};
pub use verify::{verify, Report as VerifyReport};

/// A handle on the journal; cheap to clone.
#[derive(Clone)]
pub struct Journal {
    inner: Arc<Inner>,
}

struct Inner {
    tx: mpsc::UnboundedSender<writer::Command>,
    readers: reader::Pool,
    salt: u32,
    lanes: RwLock<HashMap<String, Arc<Lane>>>,
    stats: Arc<Stats>,
    health: Arc<Health>,
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
        let stats = Arc::new(Stats::default());
        stats.max_disk.store(max_disk, Ordering::Relaxed);
        let db = dir.join(schema::DB_FILE);
        let new_journal = !db.exists();
        let suspect = dir.join(schema::SUSPECT_FILE);
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
                    // Said with the path: a storage.path that points
                    // somewhere new (a typo, another working directory)
                    // looks like a queue that emptied itself. Not a warning:
                    // every first start does it.
                    tracing::info!(path = %db.display(), "no journal here: created a new, empty one");
                }
                o
            }
            Err(schema::OpenError::Refused(reason)) => {
                return Err(QueueError::Io(std::io::Error::other(format!(
                    "{}: {reason}{}",
                    db.display(),
                    full_disk_hint(dir)
                ))))
            }
            Err(schema::OpenError::Damaged(reason)) => {
                tracing::error!(path = %db.display(), %reason, "journal failed its checks; quarantining it and salvaging intact messages");
                let report = salvage::salvage(dir, &reason).map_err(|e| {
                    QueueError::Io(std::io::Error::other(format!(
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
                    QueueError::Io(std::io::Error::other(format!("salvaged journal does not open: {r}")))
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
        let mut lanes = HashMap::new();
        for (dest, c) in counts {
            let lane = Lane::default();
            let q = &lane.counts;
            q.depth.store(c.depth, Ordering::Relaxed);
            q.bytes.store(c.bytes, Ordering::Relaxed);
            q.dead_letters.store(c.dead, Ordering::Relaxed);
            q.held.store(c.held, Ordering::Relaxed);
            q.open_reviews.store(c.open_reviews, Ordering::Relaxed);
            lanes.insert(dest, Arc::new(lane));
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let readers = reader::Pool::new(db.clone());
        let inner = Arc::new(Inner {
            tx,
            readers,
            salt,
            lanes: RwLock::new(lanes),
            stats: stats.clone(),
            health: Arc::new(Health {
                stats: stats.clone(),
                suspect,
                abandon: AtomicBool::new(false),
            }),
            lock: std::sync::Mutex::new(Some(lock.file)),
            writer_thread: std::sync::Mutex::new(None),
        });
        let journal = Journal { inner };
        let wal_restart = Arc::new(AtomicBool::new(false));
        let shared = writer::Shared {
            queues: Lanes(Arc::downgrade(&journal.inner)),
            health: journal.inner.health.clone(),
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

    /// `dest`'s lane, created empty on first use.
    fn lane(&self, dest: &str) -> Arc<Lane> {
        lane_of(&self.inner.lanes, dest)
    }

    async fn call<T>(&self, make: impl FnOnce(oneshot::Sender<Result<T>>) -> writer::Command) -> Result<T> {
        let (reply, rx) = oneshot::channel();
        self.inner.tx.send(make(reply)).map_err(|_| QueueError::Closed)?;
        let out = rx.await.map_err(|_| QueueError::Closed)?;
        if let Err(e) = &out {
            self.inner.health.note_error(e);
        }
        out
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

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&reader::Reader) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T> {
        let pool = self.inner.readers.clone();
        let out = tokio::task::spawn_blocking(move || pool.with(f))
            .await
            .map_err(|e| QueueError::Io(std::io::Error::other(e.to_string())))?;
        if let Err(e) = &out {
            self.inner.health.note_error(e);
        }
        out
    }

    /// Stops like a killed process: committed work stays (it is durable),
    /// but nothing is checkpointed and the journal is not marked clean.
    #[cfg(test)]
    pub(crate) fn crash(&self) {
        self.inner.health.abandon.store(true, Ordering::SeqCst);
        self.close();
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
            Err(QueueError::InUse(format!(
                "{} is in use by another tidegate{holder}: one storage.path serves one process",
                dir.display()
            )))
        }
        Err(fs4::TryLockError::Error(e)) => Err(QueueError::Io(std::io::Error::new(
            e.kind(),
            format!("cannot lock {}: {e}", path.display()),
        ))),
    }
}

// By hand, not `#[from]`: that would also make the inner error the
// `source`, and its text, already in the message, would print twice in an
// error chain (`{:#}`).
impl From<rusqlite::Error> for QueueError {
    fn from(e: rusqlite::Error) -> Self {
        QueueError::Storage(e.to_string())
    }
}

/// A SQLite error as the queue's: a full disk and a damaged file say so;
/// the rest is a storage failure.
pub(crate) fn from_sqlite(e: rusqlite::Error) -> QueueError {
    match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::DiskFull) => QueueError::StorageFull,
        Some(rusqlite::ErrorCode::DatabaseCorrupt) | Some(rusqlite::ErrorCode::NotADatabase) => {
            QueueError::Corrupt(e.to_string())
        }
        _ => QueueError::from(e),
    }
}

/// One destination's live counts, and the tail its worker takes new
/// messages from once it keeps up.
#[derive(Default)]
pub(crate) struct Lane {
    pub counts: Arc<QueueCounts>,
    pub tail: tail::Tail,
}

fn lane_of(lanes: &RwLock<HashMap<String, Arc<Lane>>>, dest: &str) -> Arc<Lane> {
    if let Some(l) = lanes.read().unwrap_or_else(|e| e.into_inner()).get(dest) {
        return l.clone();
    }
    let mut map = lanes.write().unwrap_or_else(|e| e.into_inner());
    map.entry(dest.to_string()).or_default().clone()
}

/// The writer's view of the lanes (it must not keep the journal alive, or
/// `close` could never finish).
#[derive(Clone)]
pub(crate) struct Lanes(std::sync::Weak<Inner>);

impl Lanes {
    fn get(&self, dest: &str) -> Option<Arc<Lane>> {
        self.0.upgrade().map(|inner| lane_of(&inner.lanes, dest))
    }
}

/// The journal's counters, and what it records of damage seen while
/// running.
pub(crate) struct Health {
    pub stats: Arc<Stats>,
    /// Where a corruption seen while running is recorded for the next start.
    suspect: PathBuf,
    /// Test hook: the writer exits without checkpointing or marking the
    /// journal clean, as a killed process would.
    pub abandon: AtomicBool,
}

impl Health {
    /// Corruption seen while running poisons the journal (tidegate stops)
    /// and leaves a marker, so that the next start salvages it even when
    /// its quick check passes.
    pub(crate) fn note_error(&self, e: &QueueError) {
        let QueueError::Corrupt(detail) = e else { return };
        if self.stats.poison() {
            tracing::error!(%detail, "journal corruption detected while running; stopping so the next start can salvage it");
            if let Err(e) = std::fs::write(&self.suspect, detail) {
                tracing::error!(error = %e, path = %self.suspect.display(), "could not record the corruption for the next start");
            }
        }
    }
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
