//! Salvage: what happens to a journal that fails its checks at start-up.
//!
//! The damaged files are moved (never deleted) to `quarantine/<time>/`; a
//! scratch copy of them is opened and every row that can still be read, and
//! whose checksum matches, is copied into a fresh journal with its original
//! sequence number, so message ids stay valid. Rows are read through the
//! table's b-tree first; what it no longer leads to (a damaged interior page
//! cuts off every leaf below it) is then looked for on the leaf pages
//! themselves (`leaves`). What neither finds intact is counted as lost.
//! Nothing here can stop start-up except an I/O error on the data directory
//! or too little room for the fresh journal; the salvage is then carried out
//! at the next start, and never counts what it could not write as lost.
//!
//! A salvage survives a crash at any instant. `journal.salvage`, written and
//! synced before any file moves, names the quarantine directory; the
//! database file moves last, so once it is in quarantine, anything beside
//! the marker is the fresh journal's; the fresh journal is checkpointed to
//! disk before the marker is removed. A start that finds the marker
//! discards that partial journal and salvages the quarantined files again.
//!
//! Two witnesses say what was owed: the pending and dead-letter indexes
//! (read without the table) and the high-water mark. A row the indexes list
//! is restored in the state they give; without a complete index, every row
//! found speaks for itself, and a finished copy wins over a live one (a
//! finished message never goes back to pending).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OpenFlags, Row};

use super::leaves;
use super::record::decode_record;
use super::schema::{self, sync_dir, write_durably, DB_FILE, SALVAGE_FILE};
use crate::queue::{now_ms, stored, Result};

pub struct Report {
    pub salvaged: u64,
    pub lost: u64,
    pub quarantine_dir: PathBuf,
}

/// The database's files, in the order they are moved to quarantine: the
/// database itself last, so that once it is there, whatever is left beside
/// the marker is a fresh journal's and not the damaged one's.
const SUFFIXES: [&str; 3] = ["-shm", "-wal", ""];
const CHUNK: i64 = 512;

/// The journal's database file in `dir` with `suffix` (one of `SUFFIXES`).
fn db_file(dir: &Path, suffix: &str) -> PathBuf {
    dir.join(format!("{DB_FILE}{suffix}"))
}

/// Removes the fresh journal a salvage was filling, once the damaged one is
/// wholly in `qdir`: the files beside the marker are then that partial
/// journal's, never the damaged one's.
fn discard_partial_journal(dir: &Path, qdir: &Path) -> std::io::Result<()> {
    if db_file(qdir, "").exists() {
        for s in SUFFIXES {
            remove_if_there(&db_file(dir, s))?;
        }
    }
    Ok(())
}

/// Quarantines the damaged journal in `dir` and salvages it into a fresh one;
/// or, if a salvage was cut short (`SALVAGE_FILE` is there), carries that one
/// out again from the files it had quarantined.
pub fn salvage(dir: &Path, reason: &str) -> Result<Report> {
    let marker = dir.join(SALVAGE_FILE);
    let qdir = match std::fs::read_to_string(&marker) {
        Ok(q) if !q.trim().is_empty() => {
            let qdir = PathBuf::from(q.trim());
            tracing::warn!(quarantine = %qdir.display(), "a salvage was cut short; carrying it out again");
            // Gone only if someone removed it: start it again with what is here.
            std::fs::create_dir_all(&qdir)?;
            discard_partial_journal(dir, &qdir)?;
            qdir
        }
        _ => {
            let qdir = dir.join("quarantine").join(now_ms().to_string());
            std::fs::create_dir_all(&qdir)?;
            std::fs::write(qdir.join("REASON"), format!("{reason}\n"))?;
            // Durable before anything moves: a start after a crash from here
            // on must find the damaged files, not start on an empty journal.
            write_durably(&marker, &format!("{}\n", qdir.display()))?;
            qdir
        }
    };
    quarantine(dir, &qdir)?;
    tracing::info!(quarantine = %qdir.display(), "damaged journal moved to quarantine; copying what is intact into a fresh journal");
    let scratch = dir.join("salvage-scratch");
    let rebuilt = rebuild(dir, &qdir, &scratch);
    // The scratch copy is as large as the damaged journal: never left behind.
    let _ = std::fs::remove_dir_all(&scratch);
    let report = rebuilt.map_err(|e| {
        // A failed write (a full disk) fails the salvage, marker kept: the
        // next start carries it out again, rather than this one counting
        // intact messages lost. Its partial journal goes now, for the room.
        let _ = discard_partial_journal(dir, &qdir);
        let need: u64 = SUFFIXES
            .iter()
            .filter_map(|s| std::fs::metadata(db_file(&qdir, s)).ok())
            .map(|m| 2 * m.len())
            .sum();
        let free = fs4::available_space(dir)
            .map(|f| f.to_string())
            .unwrap_or_else(|_| "?".into());
        std::io::Error::other(format!(
            "{e} (a salvage needs room for a copy of the damaged journal and for the fresh one: \
             about {need} bytes; the disk has {free} bytes free)"
        ))
    })?;
    std::fs::remove_file(&marker)?;
    sync_dir(dir)?;
    Ok(report)
}

/// Copies what is intact in the quarantined journal into a fresh one in
/// `dir`, through a scratch copy (opening the damaged files would change
/// them), and makes it durable.
fn rebuild(dir: &Path, qdir: &Path, scratch: &Path) -> std::io::Result<Report> {
    let _ = std::fs::remove_dir_all(scratch);
    std::fs::create_dir_all(scratch)?;
    for s in SUFFIXES {
        let from = db_file(qdir, s);
        if from.exists() {
            std::fs::copy(&from, db_file(scratch, s))?;
        }
    }
    let mut report = Report {
        salvaged: 0,
        lost: 0,
        quarantine_dir: qdir.to_path_buf(),
    };
    let fresh = schema::open_checked(&dir.join(DB_FILE))
        .map_err(|e| std::io::Error::other(format!("cannot create a fresh journal: {e}")))?;
    let new = fresh.conn;
    match Connection::open_with_flags(scratch.join(DB_FILE), OpenFlags::SQLITE_OPEN_READ_WRITE) {
        Ok(old) => copy_rows(
            &old,
            &scratch.join(DB_FILE),
            &new,
            schema::high_water_mark(&dir.join(DB_FILE)),
            &mut report,
        )
        .map_err(|e| std::io::Error::other(format!("cannot write the salvaged journal: {e}")))?,
        Err(e) => {
            tracing::error!(error = %e, "the damaged journal cannot be opened at all; starting empty")
        }
    }
    if let Err(e) = schema::set_meta(&new, "clean_shutdown", "1") {
        tracing::warn!(error = %e, "could not mark the salvaged journal clean");
    }
    // The salvaged rows on stable storage (a checkpoint syncs the WAL, then
    // the database) before the marker goes: until then a crash means
    // salvaging again.
    new.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .map_err(|e| std::io::Error::other(format!("cannot make the salvaged journal durable: {e}")))?;
    Ok(report)
}

/// Moves whatever of the damaged journal's files is still in `dir` into
/// `qdir` (all of them on a first salvage; the rest, if one was cut short
/// while moving them), then makes the moves durable.
fn quarantine(dir: &Path, qdir: &Path) -> std::io::Result<()> {
    for s in SUFFIXES {
        let from = db_file(dir, s);
        if from.exists() {
            std::fs::rename(&from, db_file(qdir, s))?;
        }
    }
    sync_dir(qdir)?;
    sync_dir(dir)
}

fn remove_if_there(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// How far past the last row the salvage reads looking for rows that the
/// damaged b-tree no longer leads to; beyond it, sequence numbers up to the
/// high-water mark are counted lost without being read.
const PROBE_PAST_END: i64 = 1 << 22;

/// Copies what the damaged journal still holds into the fresh one, in one
/// transaction: the messages (see `copy_messages`), then the side tables
/// whose loss costs no acknowledged message (see `copy_side_tables`).
fn copy_rows(
    old: &Connection,
    old_path: &Path,
    new: &Connection,
    hwm: i64,
    report: &mut Report,
) -> rusqlite::Result<()> {
    // The fresh journal took the salt kept beside the database; the old
    // meta table, where readable, is the authority on it.
    if let Ok(Some(salt)) = schema::meta(old, "salt") {
        if schema::parse_salt(&salt).is_some() {
            schema::set_meta(new, "salt", &salt)?;
        }
    }
    new.execute_batch("BEGIN")?;
    copy_messages(old, old_path, new, hwm, report)?;
    copy_side_tables(old, new);
    new.execute_batch("COMMIT")
}

/// What the copy of the messages has seen so far.
#[derive(Default)]
struct Copied {
    recovered: SeqSet,
    lost: HashSet<i64>,
    highest_seen: i64,
}

impl Copied {
    fn insert(&mut self, new: &Connection, rows: Vec<RawRow>) -> rusqlite::Result<()> {
        insert_rows(new, rows, &mut self.recovered, &mut self.lost, &mut self.highest_seen)
    }
}

/// Copies every message row that can be read, through the b-tree and then
/// from the leaf pages, and counts the acknowledged ones that could not be
/// (`report.lost`) against the high-water mark `hwm`.
fn copy_messages(
    old: &Connection,
    old_path: &Path,
    new: &Connection,
    hwm: i64,
    report: &mut Report,
) -> rusqlite::Result<()> {
    // The pending and dead-letter indexes list every message still owed a
    // delivery, independently of the table's b-tree: they say what a damaged
    // table lost.
    let (mut owed, index_complete) = indexed_live_seqs(old);
    let max_seq: i64 = old
        .query_row("SELECT max(seq) FROM messages", [], |r| r.get::<_, Option<i64>>(0))
        .ok()
        .flatten()
        .unwrap_or(0);
    let floor = schema::meta(old, "seq_floor")
        .ok()
        .flatten()
        .and_then(|s| s.parse::<i64>().ok())
        .unwrap_or(0);
    let last = max_seq.max(
        owed.pending
            .max()
            .max(owed.dead.max())
            .max(owed.held.max())
            .unwrap_or(0),
    );
    let top = last.max(hwm.min(last.saturating_add(PROBE_PAST_END)));

    let mut copied = Copied::default();
    let unreadable = copy_through_btree(old, new, top, &mut copied)?;
    // Owed messages the b-tree no longer leads to, and (without a complete
    // index to say they were not owed) rows it could not read: look for
    // them on the leaf pages themselves.
    owed.pending.retain(|s| !copied.recovered.contains(s));
    owed.dead.retain(|s| !copied.recovered.contains(s));
    owed.held.retain(|s| !copied.recovered.contains(s));
    let unwitnessed = if index_complete {
        SeqSet::default()
    } else {
        let mut u = unreadable;
        u.retain(|s| !copied.recovered.contains(s));
        u
    };
    if !owed.is_empty() || !unwitnessed.is_empty() {
        copy_from_leaves(old, old_path, new, &owed, &unwitnessed, &mut copied)?;
    }
    let Copied {
        recovered,
        mut lost,
        highest_seen,
    } = copied;
    lost.extend(
        owed.pending
            .iter()
            .chain(owed.dead.iter())
            .chain(owed.held.iter())
            .chain(unwitnessed.iter()),
    );
    lost.retain(|&s| !recovered.contains(s));
    // Acknowledged (the high-water mark says so) but above anything the
    // database knows of: lost with the end of the WAL. Counted, not listed:
    // a mark far ahead (a restored backup) must not cost memory.
    let known = highest_seen.max(last).max(floor);
    let tail = (hwm - known).max(0) as u64;
    let already = lost.iter().filter(|&&s| s > known && s <= hwm).count() as u64;
    report.lost = lost.len() as u64 + tail - already;
    report.salvaged = recovered.len() as u64;
    // Ids are never reused, lost or not.
    schema::set_meta(new, "seq_floor", &floor.max(top).max(hwm).to_string())
}

/// Reads sequence numbers 1..=`top` through the table's b-tree, a chunk at
/// a time and one by one where a chunk fails; returns those it could not
/// read.
fn copy_through_btree(old: &Connection, new: &Connection, top: i64, copied: &mut Copied) -> rusqlite::Result<SeqSet> {
    let mut unreadable = SeqSet::default();
    let mut lo = 1;
    while lo <= top {
        let hi = (lo + CHUNK - 1).min(top);
        match read_range(old, lo, hi) {
            Ok(rows) => copied.insert(new, rows)?,
            Err(_) => {
                for seq in lo..=hi {
                    match read_range(old, seq, seq) {
                        Ok(rows) => copied.insert(new, rows)?,
                        Err(_) => unreadable.insert(seq),
                    }
                }
            }
        }
        lo = hi + 1;
    }
    Ok(unreadable)
}

/// Copies the rows `owed` and `unwitnessed` name from the leaf pages, where
/// a finished copy replaces a live one kept before it.
fn copy_from_leaves(
    old: &Connection,
    old_path: &Path,
    new: &Connection,
    owed: &Owed,
    unwitnessed: &SeqSet,
    copied: &mut Copied,
) -> rusqlite::Result<()> {
    let mut failed = None;
    rows_from_leaves(old, old_path, owed, unwitnessed, &mut |row| {
        use rusqlite::types::Value;
        if failed.is_some() {
            return;
        }
        if let (Value::Integer(seq), Value::Integer(state)) = (&row[0], &row[2]) {
            let finished = (stored::DELIVERED..=stored::QUARANTINED).contains(state);
            if finished && owed.state_of(*seq).is_none() {
                if let Err(e) = new.execute("DELETE FROM messages WHERE seq = ?1 AND state IN (0, 1, 5)", [seq]) {
                    failed = Some(e);
                    return;
                }
            }
        }
        if let Err(e) = copied.insert(new, vec![row]) {
            failed = Some(e);
        }
    });
    failed.map_or(Ok(()), Err)
}

/// Idempotency keys, destination states, halted keys and review records:
/// best effort (a halted key lost is delivered again: at-least-once holds;
/// a held message whose review record is lost is listed again by
/// `review_gaps`).
fn copy_side_tables(old: &Connection, new: &Connection) {
    // A file from before fingerprints has no such column: its keys come
    // over without one.
    let keys = old
        .prepare("SELECT dest, key, seq, created_at, fingerprint FROM idempotency")
        .or_else(|_| old.prepare("SELECT dest, key, seq, created_at, NULL FROM idempotency"));
    if let Ok(stmt) = keys {
        copy_each(
            stmt,
            5,
            new,
            "INSERT OR IGNORE INTO idempotency (dest, key, seq, created_at, fingerprint) VALUES (?1, ?2, ?3, ?4, ?5)",
        );
    }
    if let Ok(stmt) = old.prepare("SELECT dest, key, seq, reason FROM halted_keys") {
        copy_each(
            stmt,
            4,
            new,
            "INSERT OR IGNORE INTO halted_keys (dest, key, seq, reason) VALUES (?1, ?2, ?3, ?4)",
        );
    }
    // Whole review rows or nothing.
    if let Ok(stmt) = old.prepare(
        "SELECT seq, dest, category, kind, reason, received_at, created_at, original, decision, reviewer, note,
         corrected, patch, decided_at FROM reviews",
    ) {
        copy_each(
            stmt,
            14,
            new,
            "INSERT OR IGNORE INTO reviews (seq, dest, category, kind, reason, received_at, created_at,
             original, decision, reviewer, note, corrected, patch, decided_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
        );
    }
    review_gaps(new);
    if let Ok(stmt) = old.prepare(&format!("SELECT {} FROM audit", super::audit::COLUMNS)) {
        copy_each(
            stmt,
            7,
            new,
            &format!(
                "INSERT OR IGNORE INTO audit ({}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                super::audit::COLUMNS
            ),
        );
    }
    if let Ok(stmt) = old.prepare("SELECT dest, state, reason, head_seq FROM destinations") {
        copy_each(
            stmt,
            4,
            new,
            "INSERT OR IGNORE INTO destinations (dest, state, reason, head_seq) VALUES (?1, ?2, ?3, ?4)",
        );
    }
}

/// Runs `insert` for each row of `select` that reads whole (its first
/// `columns` columns); rows that do not are skipped, and so is a failed
/// insert.
fn copy_each(mut select: rusqlite::Statement<'_>, columns: usize, new: &Connection, insert: &str) {
    use rusqlite::types::{Type, Value, ValueRef};
    let Ok(rows) = select.query_map([], |r| {
        (0..columns)
            .map(|i| {
                // Not `Value::from`: it panics on text that is not UTF-8,
                // which is what damage produces; such a row is skipped.
                Ok(match r.get_ref(i)? {
                    ValueRef::Text(t) => match std::str::from_utf8(t) {
                        Ok(t) => Value::Text(t.to_string()),
                        Err(e) => return Err(rusqlite::Error::FromSqlConversionFailure(i, Type::Text, Box::new(e))),
                    },
                    other => Value::from(other),
                })
            })
            .collect::<rusqlite::Result<Vec<_>>>()
    }) else {
        return;
    };
    for row in rows.flatten() {
        let _ = new.execute(insert, rusqlite::params_from_iter(row));
    }
}

type RawRow = Vec<rusqlite::types::Value>;

/// Held messages whose review record did not survive get a new one, so
/// that a reviewer still sees them (the body is the message's own).
fn review_gaps(new: &Connection) {
    if let Err(e) = new.execute(
        "INSERT OR IGNORE INTO reviews (seq, dest, category, kind, reason, received_at, created_at, original)
         SELECT seq, dest, coalesce(category, 'uncategorised'), 'held', 'salvaged', received_at, received_at, body
         FROM messages WHERE state = 5 AND seq NOT IN (SELECT seq FROM reviews)",
        [],
    ) {
        tracing::warn!(error = %e, "salvage: could not list held messages for review again");
    }
}

const COLUMNS: &str = "seq, dest, state, visible_at, received_at, attempts, method, path, headers, body, size, crc,
    version, idem_key, wants_reply, last_error, reason, finished_at, producer, category, routed_from, route_rule,
    order_key";
/// The same, for a journal from before `order_key` was added.
const COLUMNS_BEFORE_KEY: &str = "seq, dest, state, visible_at, received_at, attempts, method, path, headers, body,
    size, crc, version, idem_key, wants_reply, last_error, reason, finished_at, producer, category, routed_from,
    route_rule, NULL";
/// The same, for a journal from before the handoff columns were added.
const COLUMNS_BEFORE_HANDOFF: &str = "seq, dest, state, visible_at, received_at, attempts, method, path, headers, body,
    size, crc, version, idem_key, wants_reply, last_error, reason, finished_at, producer, NULL, NULL, NULL, NULL";
/// The same, for a journal from before `producer` was added.
const COLUMNS_BEFORE_PRODUCER: &str =
    "seq, dest, state, visible_at, received_at, attempts, method, path, headers, body,
    size, crc, version, idem_key, wants_reply, last_error, reason, finished_at, NULL, NULL, NULL, NULL, NULL";
/// How many `COLUMNS` name; a leaf row written before `producer` existed
/// holds 18, one written before the handoff columns 19, before `order_key`
/// 22; all are padded.
const COLUMN_COUNT: usize = 23;
const OLDEST_COLUMN_COUNT: usize = 18;

fn read_range(old: &Connection, lo: i64, hi: i64) -> rusqlite::Result<Vec<RawRow>> {
    let query = |columns| format!("SELECT {columns} FROM messages WHERE seq BETWEEN ?1 AND ?2");
    let mut stmt = old
        .prepare_cached(&query(COLUMNS))
        .or_else(|_| old.prepare_cached(&query(COLUMNS_BEFORE_KEY)))
        .or_else(|_| old.prepare_cached(&query(COLUMNS_BEFORE_HANDOFF)))
        .or_else(|_| old.prepare_cached(&query(COLUMNS_BEFORE_PRODUCER)))?;
    let rows = stmt.query_map(params![lo, hi], |r: &Row<'_>| {
        (0..COLUMN_COUNT)
            .map(|i| {
                use rusqlite::types::{Value, ValueRef};
                // Not `Value::from`: it panics on text that is not UTF-8,
                // which is exactly what damage produces. Such text comes
                // back as a blob, and `insert_rows` treats it as damage.
                Ok(match r.get_ref(i)? {
                    ValueRef::Null => Value::Null,
                    ValueRef::Integer(n) => Value::Integer(n),
                    ValueRef::Real(x) => Value::Real(x),
                    ValueRef::Text(t) => match std::str::from_utf8(t) {
                        Ok(t) => Value::Text(t.to_string()),
                        Err(_) => Value::Blob(t.to_vec()),
                    },
                    ValueRef::Blob(b) => Value::Blob(b.to_vec()),
                })
            })
            .collect::<rusqlite::Result<RawRow>>()
    })?;
    rows.collect()
}

/// Rows the b-tree walk did not reach, read from the scratch copy's leaf
/// pages (see `leaves`) and handed to `keep` one by one (a whole queue may
/// be down there: never all in memory). Rows the indexes say are owed get
/// the state the index gives (a stale copy may carry an older one);
/// `unwitnessed` rows come in the state they carry, and a finished copy
/// replaces a live one kept before it: a finished message never goes back
/// to pending, so the finished copy is the later one.
fn rows_from_leaves(
    old: &Connection,
    old_path: &Path,
    owed: &Owed,
    unwitnessed: &SeqSet,
    keep: &mut dyn FnMut(RawRow),
) {
    use rusqlite::types::Value;
    // The leaves are read from the file: bring the WAL's pages into it.
    if let Err(e) = old.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())) {
        tracing::warn!(error = %e, "salvage: the damaged journal's WAL could not be checkpointed; reading its database file alone");
    }
    let want = |seq| owed.state_of(seq).is_some() || unwitnessed.contains(seq);
    let mut found = |r: leaves::LeafRow| {
        let mut row = r.values;
        // A message row: 18 columns (19 since `producer`, 22 since the
        // handoff's, 23 since `order_key`), the first (seq, the rowid) stored as NULL, a state
        // tidegate writes.
        if !(OLDEST_COLUMN_COUNT..=COLUMN_COUNT).contains(&row.len()) || row[0] != Value::Null {
            return;
        }
        row.resize(COLUMN_COUNT, Value::Null);
        let Value::Integer(state) = row[2] else { return };
        if !(stored::PENDING..=stored::HELD).contains(&state) {
            return;
        }
        row[0] = Value::Integer(r.rowid);
        if let Some(witnessed) = owed.state_of(r.rowid) {
            row[2] = Value::Integer(witnessed);
        }
        keep(row);
    };
    if let Err(e) = leaves::rows(old_path, &want, &mut found) {
        tracing::warn!(error = %e, "salvage: the damaged journal's pages cannot be read");
    }
}

/// Sequence numbers, held compactly for a salvage of millions of rows: a
/// sorted vector (8 bytes a number, searched by bisection) for numbers that
/// come in increasing order, as the b-tree walk gives them, and a hash set
/// for the rest.
#[derive(Default)]
struct SeqSet {
    sorted: Vec<i64>,
    rest: HashSet<i64>,
}

impl SeqSet {
    fn from_unsorted(mut seqs: Vec<i64>) -> SeqSet {
        seqs.sort_unstable();
        seqs.dedup();
        SeqSet {
            sorted: seqs,
            rest: HashSet::new(),
        }
    }

    fn insert(&mut self, seq: i64) {
        if self.sorted.last().is_none_or(|&last| last < seq) {
            self.sorted.push(seq);
        } else if self.sorted.binary_search(&seq).is_err() {
            self.rest.insert(seq);
        }
    }

    fn contains(&self, seq: i64) -> bool {
        self.sorted.binary_search(&seq).is_ok() || self.rest.contains(&seq)
    }

    fn retain(&mut self, keep: impl Fn(i64) -> bool) {
        self.sorted.retain(|&s| keep(s));
        self.rest.retain(|&s| keep(s));
    }

    fn iter(&self) -> impl Iterator<Item = i64> + '_ {
        self.sorted.iter().chain(&self.rest).copied()
    }

    fn max(&self) -> Option<i64> {
        self.sorted.last().copied().max(self.rest.iter().copied().max())
    }

    fn len(&self) -> usize {
        self.sorted.len() + self.rest.len()
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The messages the queue indexes say are still owed, by state.
struct Owed {
    pending: SeqSet,
    dead: SeqSet,
    /// Held for review (state 5): owed a decision, then a delivery.
    held: SeqSet,
}

impl Owed {
    fn state_of(&self, seq: i64) -> Option<i64> {
        if self.pending.contains(seq) {
            Some(stored::PENDING)
        } else if self.dead.contains(seq) {
            Some(stored::DEAD)
        } else if self.held.contains(seq) {
            Some(stored::HELD)
        } else {
            None
        }
    }

    fn is_empty(&self) -> bool {
        self.pending.is_empty() && self.dead.is_empty() && self.held.is_empty()
    }
}

/// Reads the sequence numbers the pending and dead-letter indexes hold
/// (covering-index scans, which do not touch the table); `false` if an
/// index could not be read to its end.
fn indexed_live_seqs(old: &Connection) -> (Owed, bool) {
    let mut complete = true;
    let mut read = |index: &str, state: i64| {
        // What was read before an error still counts.
        let mut seqs = Vec::new();
        let sql = format!("SELECT seq FROM messages INDEXED BY {index} WHERE state = {state}");
        let whole = old.prepare(&sql).and_then(|mut stmt| {
            for seq in stmt.query_map([], |r| r.get::<_, i64>(0))? {
                seqs.push(seq?);
            }
            Ok(())
        });
        complete &= whole.is_ok();
        SeqSet::from_unsorted(seqs)
    };
    let owed = Owed {
        pending: read("messages_pending", stored::PENDING),
        dead: read("messages_dead", stored::DEAD),
        held: read("messages_held", stored::HELD),
    };
    (owed, complete)
}

fn insert_rows(
    new: &Connection,
    rows: Vec<RawRow>,
    recovered: &mut SeqSet,
    lost: &mut HashSet<i64>,
    highest_seen: &mut i64,
) -> rusqlite::Result<()> {
    use rusqlite::types::Value;
    for row in rows {
        let text = |v: &Value| match v {
            Value::Text(t) => t.clone(),
            _ => String::new(),
        };
        let blob = |v: &Value| match v {
            Value::Blob(b) => b.clone(),
            _ => Vec::new(),
        };
        let Value::Integer(seq) = row[0] else {
            continue;
        };
        *highest_seen = (*highest_seen).max(seq);
        let state = matches!(row[2], Value::Integer(s) if s == stored::PENDING || s == stored::DEAD);
        // Text columns holding bytes that are not text: damaged.
        const TEXT_COLUMNS: [usize; 10] = [1, 6, 7, 13, 15, 16, 18, 19, 20, 22];
        if TEXT_COLUMNS.iter().any(|&i| matches!(row[i], Value::Blob(_))) {
            if state {
                lost.insert(seq);
            }
            continue;
        }
        // Rows that still carry a body must pass the check delivery makes.
        if state {
            let crc = match row[11] {
                Value::Integer(c) => u32::try_from(c).ok(),
                _ => None,
            };
            let intact =
                crc.and_then(|crc| decode_record(&text(&row[6]), &text(&row[7]), &blob(&row[8]), &blob(&row[9]), crc));
            if intact.is_none() {
                lost.insert(seq);
                continue;
            }
        }
        let ok = new
            .prepare_cached(&format!(
                "INSERT OR IGNORE INTO messages ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12,
                 ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23)"
            ))
            .and_then(|mut s| s.execute(rusqlite::params_from_iter(row.iter())));
        match ok {
            Ok(_) => {
                recovered.insert(seq);
            }
            // Refused for what the row holds (a value of the wrong type, too
            // large): that row is lost.
            Err(e) if row_is_at_fault(&e) => {
                if state {
                    lost.insert(seq);
                }
            }
            // Anything else (a full disk, an I/O error) is the fresh
            // journal's, not the row's.
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn row_is_at_fault(e: &rusqlite::Error) -> bool {
    use rusqlite::ErrorCode::{ConstraintViolation, TooBig, TypeMismatch};
    matches!(e.sqlite_error_code(), Some(ConstraintViolation | TooBig | TypeMismatch))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The live-seq read must not touch the table: that is what makes it a
    /// second witness when the table's b-tree is damaged.
    #[test]
    fn live_seqs_are_read_from_the_indexes_alone() {
        let dir = tempfile::tempdir().unwrap();
        let opened = schema::open_checked(&dir.path().join(DB_FILE)).unwrap();
        for (index, state) in [("messages_pending", stored::PENDING), ("messages_dead", stored::DEAD)] {
            let plan: String = opened
                .conn
                .query_row(
                    &format!("EXPLAIN QUERY PLAN SELECT seq FROM messages INDEXED BY {index} WHERE state = {state}"),
                    [],
                    |r| r.get(3),
                )
                .unwrap();
            assert!(plan.contains("COVERING INDEX"), "{plan}");
        }
    }
}
