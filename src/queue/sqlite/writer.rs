//! The single writer thread: group commit of every change to the journal.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use rusqlite::{params, Connection, OptionalExtension, Transaction};
use tokio::sync::{mpsc, oneshot};

use super::effect::{Answer, Effect};
use super::record::{checksum, encode_headers};
use super::review as reviews;
use super::schema;
use super::{Health, Lanes};
use crate::queue::review::{on_append, Decided, Decision, OnAppend};
use crate::queue::{
    id_of, now_ms, stored, Appended, DestinationRecord, Disposition, LastError, Limits, NewMessage, QueueError, Result,
    Settlement,
};

/// Most commands folded into one transaction; bounds the latency one batch
/// adds to the first command in it.
const MAX_BATCH: usize = 2048;
/// Most body bytes folded into one transaction.
const MAX_BATCH_BYTES: usize = 32 << 20;
/// Rows deleted per sweep chunk, so a sweep never holds the writer long.
const SWEEP_CHUNK: i64 = crate::queue::SWEEP_CHUNK as i64;

pub enum Command {
    Append {
        msg: Arc<NewMessage>,
        /// `msg.fingerprint()`, when it has an idempotency key.
        fingerprint: Option<[u8; 32]>,
        limits: Limits,
        reply: oneshot::Sender<Result<Appended>>,
    },
    Settle {
        seq: u64,
        dest: String,
        attempts: u32,
        last_error: Option<LastError>,
        disposition: Disposition,
        reply: oneshot::Sender<Result<()>>,
    },
    /// The messages of one downstream request, settled in one command.
    SettleMany {
        dest: String,
        items: Vec<Settlement>,
        reply: oneshot::Sender<Result<()>>,
    },
    Replay {
        dest: String,
        seqs: Option<Vec<u64>>,
        reply: oneshot::Sender<Result<u64>>,
    },
    Purge {
        dest: String,
        reply: oneshot::Sender<Result<u64>>,
    },
    ReleaseKey {
        dest: String,
        key: String,
        skip_head: bool,
        /// The halted head's seq, 0 if the key was not halted.
        reply: oneshot::Sender<Result<u64>>,
    },
    /// A reviewer's decision or a downstream's feedback on one message.
    Decide {
        seq: u64,
        decision: Decision,
        reply: oneshot::Sender<Result<Decided>>,
    },
    /// Ends the holds of `dest` that timed out by `now`: delivered, or
    /// dead-lettered (`hold_timeout`).
    ExpireHolds {
        dest: String,
        deliver: bool,
        now: i64,
        reply: oneshot::Sender<Result<u64>>,
    },
    SetDestination {
        dest: String,
        record: DestinationRecord,
        reply: oneshot::Sender<Result<()>>,
    },
    Sweep {
        retention_ms: i64,
        /// Review items and decisions older than this go too.
        review_retention_ms: i64,
        reply: oneshot::Sender<Result<u64>>,
    },
    /// One act for the audit trail.
    RecordAct {
        act: crate::queue::audit::Act,
        reply: oneshot::Sender<Result<()>>,
    },
    /// Acts older than `before` (ms) forgotten, a chunk at a time.
    SweepActs {
        before: i64,
        reply: oneshot::Sender<Result<u64>>,
    },
    Close {
        reply: std::sync::mpsc::Sender<()>,
    },
}

pub(crate) struct Shared {
    pub queues: Lanes,
    pub health: Arc<Health>,
    /// Set by the checkpointer when the WAL should be rewound.
    pub wal_restart: Arc<std::sync::atomic::AtomicBool>,
    /// The journal's id salt: sampling draws on the message id.
    pub salt: u32,
}

/// A command's answer, held until the commit decides whether it stands.
enum Pending {
    Append(oneshot::Sender<Result<Appended>>, Result<Appended>),
    Unit(oneshot::Sender<Result<()>>, Result<()>),
    Count(oneshot::Sender<Result<u64>>, Result<u64>),
    Decided(oneshot::Sender<Result<Decided>>, Result<Decided>),
}

impl Pending {
    fn fail(self, err: impl Fn() -> QueueError) {
        match self {
            Pending::Append(tx, _) => drop(tx.send(Err(err()))),
            Pending::Unit(tx, _) => drop(tx.send(Err(err()))),
            Pending::Count(tx, _) => drop(tx.send(Err(err()))),
            Pending::Decided(tx, _) => drop(tx.send(Err(err()))),
        }
    }
    fn answer(self) {
        match self {
            Pending::Append(tx, r) => drop(tx.send(r)),
            Pending::Unit(tx, r) => drop(tx.send(r)),
            Pending::Count(tx, r) => drop(tx.send(r)),
            Pending::Decided(tx, r) => drop(tx.send(r)),
        }
    }
}

pub(crate) struct Writer {
    conn: Connection,
    path: PathBuf,
    shared: Shared,
    /// Pending bytes per destination as seen inside the open transaction,
    /// so limits hold within a batch too.
    staged: std::collections::HashMap<String, (i64, i64)>,
    /// The sequence number the next append gets.
    next_seq: i64,
    /// Hands committed batches to the syncer thread.
    syncer: Option<std::sync::mpsc::Sender<Synced>>,
    syncer_thread: Option<std::thread::JoinHandle<()>>,
    last_disk_check: std::time::Instant,
    /// Free space is within a few reserves of the limit: check every batch.
    near_full: bool,
}

impl Writer {
    pub fn new(conn: Connection, path: PathBuf, shared: Shared, next_seq: i64) -> std::io::Result<Self> {
        let (tx, rx) = std::sync::mpsc::channel();
        let mut wal = path.clone().into_os_string();
        wal.push("-wal");
        let health = shared.health.clone();
        let hwm = path.with_file_name(schema::HWM_FILE);
        let syncer_thread = std::thread::Builder::new()
            .name("journal-sync".into())
            .spawn(move || syncer(PathBuf::from(wal), hwm, rx, health))?;
        let mut w = Writer {
            conn,
            path,
            shared,
            staged: Default::default(),
            next_seq,
            syncer: Some(tx),
            syncer_thread: Some(syncer_thread),
            last_disk_check: std::time::Instant::now(),
            near_full: true,
        };
        w.refresh_disk_bytes();
        Ok(w)
    }

    pub fn run(mut self, mut rx: mpsc::UnboundedReceiver<Command>) {
        let mut batch: Vec<Command> = Vec::with_capacity(MAX_BATCH);
        let mut close_reply = None;
        while close_reply.is_none() {
            let Some(first) = rx.blocking_recv() else {
                break;
            };
            let mut bytes = 0usize;
            let mut next = Some(first);
            while let Some(cmd) = next.take() {
                match cmd {
                    Command::Close { reply } => close_reply = Some(reply),
                    cmd => {
                        if let Command::Append { msg, .. } = &cmd {
                            bytes += msg.body.len();
                        }
                        batch.push(cmd);
                    }
                }
                if close_reply.is_none() && batch.len() < MAX_BATCH && bytes < MAX_BATCH_BYTES {
                    next = rx.try_recv().ok();
                }
            }
            if !batch.is_empty() {
                self.commit_batch(std::mem::take(&mut batch));
            }
            if self.shared.health.stats.low_space.load(Ordering::Relaxed) {
                // Short of space: after every batch, hand freed pages back to
                // the filesystem and truncate the WAL.
                let _ = self.conn.execute_batch("PRAGMA incremental_vacuum");
                let _ = self.conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
                self.refresh_disk_bytes();
            } else if self.shared.wal_restart.swap(false, Ordering::Relaxed) {
                if let Err(e) = self.conn.query_row("PRAGMA wal_checkpoint(RESTART)", [], |_| Ok(())) {
                    tracing::warn!(error = %e, "WAL restart checkpoint failed; will retry");
                }
            }
        }
        // Anything still queued after Close is answered as closed.
        rx.close();
        while let Ok(cmd) = rx.try_recv() {
            reject(cmd);
        }
        // Let the syncer make the last batches durable and answer them.
        self.syncer.take();
        if let Some(t) = self.syncer_thread.take() {
            let _ = t.join();
        }
        if self.shared.health.abandon.load(Ordering::SeqCst) {
            if let Some(reply) = close_reply {
                let _ = reply.send(());
            }
            return;
        }
        let _ = self.conn.pragma_update(None, "wal_checkpoint", "TRUNCATE");
        if let Err(e) = schema::set_meta(&self.conn, "clean_shutdown", "1") {
            tracing::warn!(error = %e, "could not mark the journal as cleanly closed");
        }
        if let Some(reply) = close_reply {
            let _ = reply.send(());
        }
    }

    fn commit_batch(&mut self, batch: Vec<Command>) {
        let n = batch.len();
        match self.try_batch(batch) {
            Ok(()) => {}
            Err((e, batch)) => {
                // One command's failure must not fail its neighbours: run
                // each alone so only the culprit gets the error.
                if n == 1 {
                    for cmd in batch {
                        let code = e.sqlite_error_code();
                        reject_with(cmd, || error_of(code, &e));
                    }
                } else {
                    for cmd in batch {
                        if let Err((e, rest)) = self.try_batch(vec![cmd]) {
                            let code = e.sqlite_error_code();
                            for cmd in rest {
                                reject_with(cmd, || error_of(code, &e));
                            }
                        }
                    }
                }
            }
        }
        // A few stat calls: cheap, but not for every batch under load,
        // unless free space is close to the reserve.
        if self.near_full || self.last_disk_check.elapsed() >= std::time::Duration::from_millis(50) {
            self.refresh_disk_bytes();
        }
    }

    /// Applies and commits one batch; on failure hands the commands back
    /// (nothing was committed, nothing answered).
    #[allow(clippy::result_large_err)]
    fn try_batch(&mut self, batch: Vec<Command>) -> std::result::Result<(), (rusqlite::Error, Vec<Command>)> {
        self.staged.clear();
        let first_seq = self.next_seq;
        let tx = match self.conn.transaction() {
            Ok(tx) => tx,
            Err(e) => return Err((e, batch)),
        };
        let mut answers = Vec::with_capacity(batch.len());
        let mut effects = Vec::with_capacity(batch.len());
        let mut failed = None;
        // Commands are consumed as applied; keep a way back on failure by
        // applying against references first.
        for cmd in batch.iter() {
            match apply(&tx, cmd, &self.shared, &mut self.staged, &mut self.next_seq) {
                Ok((ans, eff)) => {
                    answers.push(ans);
                    effects.push(eff);
                }
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        if let Some(e) = failed {
            drop(tx);
            self.next_seq = first_seq;
            return Err((e, batch));
        }
        if let Err(e) = tx.commit() {
            self.next_seq = first_seq;
            return Err((e, batch));
        }
        for eff in effects {
            self.apply_effect(eff);
        }
        // The batch is in the WAL but not yet on stable storage: the syncer
        // answers once an fdatasync has covered it.
        let pending: Vec<Pending> = batch.into_iter().zip(answers).map(|(c, a)| pending_of(c, a)).collect();
        let last_seq = self.next_seq - 1;
        match &self.syncer {
            Some(tx) => {
                if let Err(std::sync::mpsc::SendError(Synced { pending, .. })) = tx.send(Synced { pending, last_seq }) {
                    for p in pending {
                        p.fail(|| QueueError::Closed);
                    }
                }
            }
            None => pending.into_iter().for_each(|p| p.fail(|| QueueError::Closed)),
        }
        Ok(())
    }

    fn apply_effect(&self, eff: Effect) {
        let Some(dest) = eff.dest else { return };
        let Some(q) = self.shared.queues.get(&dest) else {
            return;
        };
        add(&q.counts.depth, eff.depth);
        add(&q.counts.bytes, eff.bytes);
        add(&q.counts.dead_letters, eff.dead);
        add(&q.counts.held, eff.held);
        add(&q.counts.open_reviews, eff.open_reviews);
        // Before `ready` wakes the worker, so it finds them there.
        if let Some((seq, msg)) = &eff.appended {
            q.tail.offer(*seq, msg);
        }
        if eff.requeued {
            q.tail.stop();
        }
        for seq in eff.settled {
            q.tail.settled(seq);
        }
        if eff.ready {
            q.counts.ready.notify_one();
        }
        if eff.depth < 0 || eff.bytes < 0 {
            q.counts.room.notify_waiters();
        }
    }

    fn refresh_disk_bytes(&mut self) {
        self.last_disk_check = std::time::Instant::now();
        let mut total = 0;
        let mut wal = 0;
        for suffix in ["", "-wal", "-shm"] {
            let mut p = self.path.clone().into_os_string();
            p.push(suffix);
            if let Ok(m) = std::fs::metadata(&p) {
                total += m.len();
                if suffix == "-wal" {
                    wal = m.len();
                }
            }
        }
        let stats = &self.shared.health.stats;
        stats.disk_bytes.store(total, Ordering::Relaxed);
        // Keep a reserve of free space: acks, dead-lettering and checkpoints
        // need room in the WAL too, and a disk filled by appends would leave
        // no way to drain it.
        let dir = self.path.parent().unwrap_or(std::path::Path::new("."));
        let (low, near) = match (fs4::available_space(dir), fs4::total_space(dir)) {
            (Ok(free), Ok(size)) => {
                // Checkpointing may grow the database by up to the WAL's
                // size: that space is spoken for.
                let free = free.saturating_sub(wal);
                let reserve = (size / 8).clamp(1 << 20, 256 << 20);
                (
                    free < reserve,
                    free < reserve.saturating_mul(4).max(MAX_BATCH_BYTES as u64 * 2),
                )
            }
            _ => (false, false),
        };
        self.near_full = near;
        if low != stats.low_space.swap(low, Ordering::Relaxed) {
            if low {
                tracing::error!(path = %dir.display(), "the disk is nearly full: refusing new messages (507) until deliveries free space");
            } else {
                tracing::warn!(path = %dir.display(), "disk space recovered: accepting messages again");
            }
        }
    }
}

fn add(a: &std::sync::atomic::AtomicU64, delta: i64) {
    if delta >= 0 {
        a.fetch_add(delta as u64, Ordering::Relaxed);
    } else {
        // Saturating: counts are rebuilt from disk at start-up anyway.
        let _ = a.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
            Some(v.saturating_sub((-delta) as u64))
        });
    }
}

fn error_of(code: Option<rusqlite::ErrorCode>, e: &rusqlite::Error) -> QueueError {
    match code {
        Some(rusqlite::ErrorCode::DiskFull) => QueueError::StorageFull,
        Some(rusqlite::ErrorCode::DatabaseCorrupt) | Some(rusqlite::ErrorCode::NotADatabase) => {
            QueueError::Corrupt(e.to_string())
        }
        _ => QueueError::Io(std::io::Error::other(e.to_string())),
    }
}

fn pending_of(cmd: Command, ans: Answer) -> Pending {
    match (cmd, ans) {
        (Command::Append { reply, .. }, Answer::Append(r)) => Pending::Append(reply, r),
        (Command::Settle { reply, .. }, _)
        | (Command::SettleMany { reply, .. }, _)
        | (Command::SetDestination { reply, .. }, _)
        | (Command::RecordAct { reply, .. }, _) => Pending::Unit(reply, Ok(())),
        (Command::Replay { reply, .. }, Answer::Count(n))
        | (Command::Purge { reply, .. }, Answer::Count(n))
        | (Command::ReleaseKey { reply, .. }, Answer::Count(n))
        | (Command::ExpireHolds { reply, .. }, Answer::Count(n))
        | (Command::Sweep { reply, .. }, Answer::Count(n))
        | (Command::SweepActs { reply, .. }, Answer::Count(n)) => Pending::Count(reply, Ok(n)),
        (Command::Decide { reply, .. }, Answer::Decided(d)) => Pending::Decided(reply, Ok(d)),
        (cmd, _) => {
            reject(cmd);
            Pending::Count(oneshot::channel().0, Ok(0))
        }
    }
}

fn reject(cmd: Command) {
    reject_with(cmd, || QueueError::Closed)
}

fn reject_with(cmd: Command, err: impl Fn() -> QueueError) {
    let p = match cmd {
        Command::Append { reply, .. } => Pending::Append(reply, Ok(Appended::QueueFull)),
        Command::Settle { reply, .. }
        | Command::SettleMany { reply, .. }
        | Command::SetDestination { reply, .. }
        | Command::RecordAct { reply, .. } => Pending::Unit(reply, Ok(())),
        Command::Replay { reply, .. }
        | Command::Purge { reply, .. }
        | Command::ReleaseKey { reply, .. }
        | Command::ExpireHolds { reply, .. }
        | Command::Sweep { reply, .. }
        | Command::SweepActs { reply, .. } => Pending::Count(reply, Ok(0)),
        Command::Decide { reply, .. } => Pending::Decided(reply, Ok(Decided::NotFound)),
        Command::Close { reply } => {
            let _ = reply.send(());
            return;
        }
    };
    p.fail(err)
}

fn apply(
    tx: &Transaction<'_>,
    cmd: &Command,
    shared: &Shared,
    staged: &mut std::collections::HashMap<String, (i64, i64)>,
    next_seq: &mut i64,
) -> rusqlite::Result<(Answer, Effect)> {
    // Deleting rows must not let their sequence numbers be handed out again.
    let keep_floor = |tx: &Transaction<'_>, next: i64| {
        tx.execute(
            "INSERT INTO meta (key, value) VALUES ('seq_floor', ?1)
             ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            [(next - 1).to_string()],
        )
    };
    match cmd {
        Command::Append {
            msg,
            fingerprint,
            limits,
            ..
        } => append(tx, msg, fingerprint.as_ref(), limits, shared, staged, next_seq),
        Command::Settle {
            seq,
            dest,
            attempts,
            last_error,
            disposition,
            ..
        } => settle(tx, *seq, dest, *attempts, last_error.as_ref(), disposition),
        Command::SettleMany { dest, items, .. } => {
            let mut all = Effect {
                dest: Some(dest.clone()),
                ..Effect::default()
            };
            for s in items {
                let (_, eff) = settle(tx, s.seq, dest, s.attempts, s.last_error.as_ref(), &s.disposition)?;
                all.depth += eff.depth;
                all.bytes += eff.bytes;
                all.dead += eff.dead;
                all.ready |= eff.ready;
                all.settled.extend(eff.settled);
            }
            Ok((Answer::Unit, all))
        }
        Command::Replay { dest, seqs, .. } => {
            // What a reviewer rejected is never delivered: replay leaves it
            // (purge removes it; its review record stays for retention).
            let now = now_ms();
            let mut n = 0u64;
            let mut bytes = 0i64;
            let mut one = |seq: Option<u64>| -> rusqlite::Result<()> {
                let mut stmt = tx.prepare_cached(
                    "UPDATE messages SET state = 0, attempts = 0, visible_at = ?2, last_error = NULL, reason = NULL,
                     finished_at = NULL WHERE dest = ?1 AND state = 1 AND (?3 IS NULL OR seq = ?3)
                     AND reason IS NOT 'rejected_by_reviewer' RETURNING size",
                )?;
                let sizes = stmt.query_map(params![dest, now, seq.map(|s| s as i64)], |r| r.get::<_, i64>(0))?;
                for s in sizes {
                    n += 1;
                    bytes += s?;
                }
                Ok(())
            };
            match seqs {
                None => one(None)?,
                Some(list) => {
                    for s in list {
                        one(Some(*s))?
                    }
                }
            }
            let eff = Effect {
                dest: Some(dest.clone()),
                depth: n as i64,
                bytes,
                dead: -(n as i64),
                ready: n > 0,
                requeued: n > 0,
                ..Effect::default()
            };
            Ok((Answer::Count(n), eff))
        }
        Command::Purge { dest, .. } => {
            let n = tx.execute("DELETE FROM messages WHERE dest = ?1 AND state = 1", [dest])? as u64;
            keep_floor(tx, *next_seq)?;
            let eff = Effect {
                dest: Some(dest.clone()),
                dead: -(n as i64),
                ..Effect::default()
            };
            Ok((Answer::Count(n), eff))
        }
        Command::ReleaseKey {
            dest, key, skip_head, ..
        } => release_key(tx, dest, key, *skip_head),
        Command::Decide { seq, decision, .. } => reviews::decide(tx, *seq, decision),
        Command::ExpireHolds { dest, deliver, now, .. } => reviews::expire_holds(tx, dest, *deliver, *now),
        Command::SetDestination { dest, record, .. } => {
            tx.execute(
                "INSERT INTO destinations (dest, state, reason, head_seq) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(dest) DO UPDATE SET state = excluded.state, reason = excluded.reason, head_seq = excluded.head_seq",
                params![dest, record.state, record.reason, record.head_seq.map(|s| s as i64)],
            )?;
            Ok((Answer::Unit, Effect::default()))
        }
        Command::Sweep {
            retention_ms,
            review_retention_ms,
            ..
        } => {
            let cutoff = now_ms() - retention_ms;
            reviews::sweep(tx, now_ms() - review_retention_ms, SWEEP_CHUNK)?;
            let n = tx.execute(
                "DELETE FROM messages WHERE seq IN (SELECT seq FROM messages INDEXED BY messages_finished
                 WHERE state IN (2, 3) AND finished_at < ?1 LIMIT ?2)",
                params![cutoff, SWEEP_CHUNK],
            )? as u64;
            tx.execute(
                "DELETE FROM idempotency WHERE (dest, key) IN
                 (SELECT dest, key FROM idempotency WHERE created_at < ?1 LIMIT ?2)",
                params![cutoff, SWEEP_CHUNK],
            )?;
            keep_floor(tx, *next_seq)?;
            tx.execute_batch("PRAGMA incremental_vacuum(2000)")?;
            Ok((Answer::Count(n), Effect::default()))
        }
        Command::RecordAct { act, .. } => {
            super::audit::record(tx, act)?;
            Ok((Answer::Unit, Effect::default()))
        }
        Command::SweepActs { before, .. } => {
            let n = super::audit::sweep(tx, *before, SWEEP_CHUNK)?;
            Ok((Answer::Count(n), Effect::default()))
        }
        Command::Close { .. } => Ok((Answer::Unit, Effect::default())),
    }
}

fn append(
    tx: &Transaction<'_>,
    msg: &Arc<NewMessage>,
    fingerprint: Option<&[u8; 32]>,
    limits: &Limits,
    shared: &Shared,
    staged: &mut std::collections::HashMap<String, (i64, i64)>,
    next_seq: &mut i64,
) -> rusqlite::Result<(Answer, Effect)> {
    if let Some(key) = &msg.idempotency_key {
        let found: Option<(i64, i64, Option<Vec<u8>>)> = tx
            .prepare_cached("SELECT seq, created_at, fingerprint FROM idempotency WHERE dest = ?1 AND key = ?2")?
            .query_row(params![msg.dest, key], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .optional()?;
        if let Some((seq, created_at, stored)) = found {
            if msg.received_at - created_at <= limits.idempotency_window_ms {
                let seq = seq as u64;
                // A key stored without a fingerprint (by an older build)
                // cannot be told apart from a repeat: taken as one.
                let same = match (stored, fingerprint) {
                    (Some(s), Some(f)) => s[..] == f[..],
                    _ => true,
                };
                let answer = if same {
                    Appended::Duplicate { seq }
                } else {
                    Appended::KeyReused { seq }
                };
                return Ok((Answer::Append(Ok(answer)), Effect::default()));
            }
        }
    }
    let stats = &shared.health.stats;
    if stats.low_space.load(Ordering::Relaxed)
        || stats.disk_bytes.load(Ordering::Relaxed) >= stats.max_disk.load(Ordering::Relaxed)
    {
        return Ok((Answer::Append(Err(QueueError::StorageFull)), Effect::default()));
    }
    let size = msg.body.len() as i64;
    let (staged_n, staged_b) = staged.entry(msg.dest.clone()).or_insert((0, 0));
    if let Some(q) = shared.queues.get(&msg.dest) {
        let depth = q.counts.depth.load(Ordering::Relaxed) as i64 + *staged_n;
        let bytes = q.counts.bytes.load(Ordering::Relaxed) as i64 + *staged_b;
        let cap = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        if depth + 1 > cap(limits.max_messages) || bytes + size > cap(limits.max_bytes) {
            return Ok((Answer::Append(Ok(Appended::QueueFull)), Effect::default()));
        }
    }
    let headers = encode_headers(&msg.headers);
    let crc = checksum(&msg.method, &msg.path, &headers, &msg.body);
    let seq = *next_seq;
    let review = msg
        .review
        .as_ref()
        .map(|r| on_append(r, || id_of(shared.salt, seq as u64), msg.received_at));
    let (state, visible_at) = match &review {
        Some(OnAppend::Hold { until, .. }) => (stored::HELD, *until),
        _ => (stored::PENDING, msg.received_at),
    };
    tx.prepare_cached(
        "INSERT INTO messages (seq, dest, state, visible_at, received_at, method, path, headers, body, size, crc,
         version, idem_key, wants_reply, producer, category, routed_from, route_rule, order_key)
         VALUES (?1, ?2, ?18, ?19, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)",
    )?
    .execute(params![
        seq,
        msg.dest,
        msg.received_at,
        msg.method,
        msg.path,
        headers,
        &msg.body[..],
        size,
        crc,
        schema::FORMAT_VERSION,
        msg.idempotency_key,
        msg.wants_reply,
        msg.producer,
        msg.category,
        msg.routed_from.as_ref().map(|r| &r.0),
        msg.routed_from.as_ref().map(|r| r.1),
        msg.order_key,
        state,
        visible_at
    ])?;
    *next_seq += 1;
    let held = match &review {
        Some(r) => reviews::record_item(tx, seq, msg, r)?,
        None => None,
    };
    if let Some(key) = &msg.idempotency_key {
        tx.prepare_cached(
            "INSERT INTO idempotency (dest, key, seq, created_at, fingerprint) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT(dest, key) DO UPDATE SET seq = excluded.seq, created_at = excluded.created_at,
             fingerprint = excluded.fingerprint",
        )?
        .execute(params![
            msg.dest,
            key,
            seq,
            msg.received_at,
            fingerprint.map(|f| &f[..])
        ])?;
    }
    *staged_n += 1;
    *staged_b += size;
    let listed = matches!(review, Some(OnAppend::Hold { .. } | OnAppend::Audit));
    let eff = Effect {
        dest: Some(msg.dest.clone()),
        depth: 1,
        bytes: size,
        dead: 0,
        held: held.is_some() as i64,
        open_reviews: listed as i64,
        // A held message is not deliverable: the worker is not woken and
        // its tail never sees it.
        ready: held.is_none(),
        appended: held.is_none().then(|| (seq as u64, msg.clone())),
        ..Effect::default()
    };
    Ok((Answer::Append(Ok(Appended::Stored { seq: seq as u64, held })), eff))
}

fn settle(
    tx: &Transaction<'_>,
    seq: u64,
    dest: &str,
    attempts: u32,
    last_error: Option<&LastError>,
    disposition: &Disposition,
) -> rusqlite::Result<(Answer, Effect)> {
    let now = now_ms();
    let last_error = last_error.and_then(|e| serde_json::to_string(e).ok());
    let seq = seq as i64;
    // Only a pending row can be settled: a message purged or already settled
    // (a duplicate delivery after replay) must not be counted twice.
    let size: Option<i64> = match disposition {
        Disposition::Delivered { keep_body } => tx
            .prepare_cached(
                "UPDATE messages SET state = ?2, attempts = ?3, last_error = ?4, finished_at = ?5,
                 body = CASE WHEN ?6 THEN body END, headers = NULL WHERE seq = ?1 AND state = 0 RETURNING size",
            )?
            .query_row(
                params![seq, stored::DELIVERED, attempts, last_error, now, keep_body],
                |r| r.get(0),
            )
            .optional()?,
        Disposition::Dropped { reason } => tx
            .prepare_cached(
                "UPDATE messages SET state = ?2, attempts = ?3, last_error = ?4, finished_at = ?5, reason = ?6,
                 body = NULL, headers = NULL WHERE seq = ?1 AND state = 0 RETURNING size",
            )?
            .query_row(params![seq, stored::DROPPED, attempts, last_error, now, reason], |r| {
                r.get(0)
            })
            .optional()?,
        Disposition::DeadLetter { reason } | Disposition::Quarantined { reason } => {
            let state = if matches!(disposition, Disposition::DeadLetter { .. }) {
                stored::DEAD
            } else {
                stored::QUARANTINED
            };
            tx.prepare_cached(
                "UPDATE messages SET state = ?2, attempts = ?3, last_error = ?4, finished_at = ?5, reason = ?6
                 WHERE seq = ?1 AND state = 0 RETURNING size",
            )?
            .query_row(params![seq, state, attempts, last_error, now, reason], |r| r.get(0))
            .optional()?
        }
        Disposition::Reschedule { .. } | Disposition::HaltKey { .. } => {
            let visible_at = match disposition {
                Disposition::Reschedule { visible_at } => *visible_at,
                _ => 0,
            };
            let n = tx
                .prepare_cached(
                    "UPDATE messages SET attempts = ?2, last_error = ?3, visible_at = ?4 WHERE seq = ?1 AND state = ?5",
                )?
                .execute(params![seq, attempts, last_error, visible_at, stored::PENDING])?;
            if let (Disposition::HaltKey { key, reason }, true) = (disposition, n > 0) {
                tx.prepare_cached(
                    "INSERT INTO halted_keys (dest, key, seq, reason) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT(dest, key) DO UPDATE SET seq = excluded.seq, reason = excluded.reason",
                )?
                .execute(params![dest, key, seq, reason])?;
            }
            let eff = Effect {
                dest: Some(dest.to_string()),
                ready: n > 0,
                settled: (n > 0).then_some(seq as u64).into_iter().collect(),
                ..Effect::default()
            };
            return Ok((Answer::Unit, eff));
        }
    };
    let Some(size) = size else {
        return Ok((Answer::Unit, Effect::default()));
    };
    let eff = Effect {
        dest: Some(dest.to_string()),
        depth: -1,
        bytes: -size,
        dead: if matches!(disposition, Disposition::DeadLetter { .. }) {
            1
        } else {
            0
        },
        settled: vec![seq as u64],
        ..Effect::default()
    };
    Ok((Answer::Unit, eff))
}

/// Forgets a halted key; with `skip_head`, dead-letters its head too.
fn release_key(tx: &Transaction<'_>, dest: &str, key: &str, skip_head: bool) -> rusqlite::Result<(Answer, Effect)> {
    let seq: Option<i64> = tx
        .query_row(
            "DELETE FROM halted_keys WHERE dest = ?1 AND key = ?2 RETURNING seq",
            params![dest, key],
            |r| r.get(0),
        )
        .optional()?;
    let Some(seq) = seq else {
        return Ok((Answer::Count(0), Effect::default()));
    };
    let mut eff = Effect {
        dest: Some(dest.to_string()),
        ready: true,
        ..Effect::default()
    };
    if skip_head {
        // The dead letter keeps the failure that halted the key: it is what
        // the operator replays it after fixing.
        let size: Option<i64> = tx
            .query_row(
                "UPDATE messages SET state = ?2, finished_at = ?3, reason = 'skipped_by_operator'
                 WHERE seq = ?1 AND state = 0 RETURNING size",
                params![seq, stored::DEAD, now_ms()],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(size) = size {
            eff.depth = -1;
            eff.bytes = -size;
            eff.dead = 1;
            eff.settled = vec![seq as u64];
        }
    }
    Ok((Answer::Count(seq as u64), eff))
}

/// WAL frames (8 MiB of 4 KiB pages) past which the writer restarts the WAL
/// from its beginning. Small on purpose: the RESTART pause grows with the
/// WAL, and it is the tail of ingest latency. Under wrk with 32
/// connections, ingest and relay: 2,048 frames with a checkpoint every
/// 25 ms gave p99 3.1–3.6 ms; 8,192 and 100 ms, 5.0–9.1 ms; 32,768 and
/// 250 ms (relay), 33 ms and 5–10% less throughput. Throughput of the first
/// two is within noise (docs/performance.md).
const WAL_RESTART_FRAMES: i64 = 2048;

/// Copies the WAL back into the database on its own connection, so commits
/// rarely wait for a checkpoint. PASSIVE mode never blocks the writer, but
/// it cannot rewind the WAL while appends keep coming; so when the WAL is
/// long, it asks the writer (through `wal_restart`) to run a RESTART
/// checkpoint between two batches. By then almost every frame has been
/// copied, so that pause is short, and the WAL stays small and cached.
pub(crate) fn checkpointer(
    path: PathBuf,
    stop: std::sync::mpsc::Receiver<()>,
    wal_restart: Arc<std::sync::atomic::AtomicBool>,
) {
    const EVERY: std::time::Duration = std::time::Duration::from_millis(25);
    let conn = match Connection::open(&path).and_then(|c| {
        schema::configure(&c, false)?;
        c.pragma_update(None, "query_only", false)?;
        Ok(c)
    }) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot open the checkpoint connection; the writer will checkpoint alone");
            wal_restart.store(true, Ordering::Relaxed);
            return;
        }
    };
    while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(EVERY) {
        match conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get::<_, i64>(1)) {
            Ok(log_frames) if log_frames > WAL_RESTART_FRAMES => wal_restart.store(true, Ordering::Relaxed),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "WAL checkpoint failed; will retry"),
        }
    }
}

/// Makes committed batches durable and only then answers them: group commit
/// of the fsync. The writer commits with `synchronous=NORMAL` (SQLite then
/// writes WAL frames without syncing; it still syncs around checkpoints and
/// WAL resets, so the file is never corrupted), and this thread calls
/// `fdatasync` on the WAL for every group of batches that queued up while
/// the previous sync ran. A batch's frames were written before it was
/// queued here, so the sync covers them. The writer applies the next batch
/// while this one syncs.
///
/// A failed fdatasync leaves the state of the file unknown (the kernel may
/// have dropped the dirty pages): the batch is failed and the journal is
/// poisoned, which stops the process (fail-stop, as PostgreSQL does).
/// A committed batch waiting for its fdatasync.
pub(crate) struct Synced {
    pending: Vec<Pending>,
    /// The highest sequence number handed out so far.
    last_seq: i64,
}

fn syncer(wal: PathBuf, hwm: PathBuf, rx: std::sync::mpsc::Receiver<Synced>, health: Arc<Health>) {
    use std::os::unix::fs::FileExt;
    let mut file: Option<std::fs::File> = None;
    // Kept open and overwritten in place: a fixed-width number, one pwrite.
    let mark = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&hwm)
        .map_err(|e| tracing::warn!(error = %e, "cannot open the journal's high-water mark; losses of a deleted WAL will not be counted"))
        .ok();
    while let Ok(first) = rx.recv() {
        let mut group = first.pending;
        let mut last_seq = first.last_seq;
        while let Ok(more) = rx.try_recv() {
            group.extend(more.pending);
            last_seq = last_seq.max(more.last_seq);
        }
        let synced = match &file {
            Some(f) => f.sync_data(),
            None => std::fs::OpenOptions::new().read(true).open(&wal).and_then(|f| {
                let r = f.sync_data();
                file = Some(f);
                r
            }),
        };
        match synced {
            Ok(()) => {
                health.stats.fsyncs.fetch_add(1, Ordering::Relaxed);
                // Outside SQLite, so a WAL lost or cut short while tidegate
                // was stopped shows at the next start as a gap below this
                // mark. Not synced: a stale mark only under-reports.
                if let Some(m) = &mark {
                    let _ = m.write_all_at(format!("{last_seq:020}\n").as_bytes(), 0);
                }
                group.into_iter().for_each(Pending::answer);
            }
            Err(e) => {
                let detail = format!("fdatasync of the WAL failed: {e}");
                health.note_error(&QueueError::Corrupt(detail.clone()));
                for p in group {
                    p.fail(|| QueueError::Io(std::io::Error::other(detail.clone())));
                }
            }
        }
    }
}
