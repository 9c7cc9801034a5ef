//! The on-disk schema, pragmas, and the checks run when the journal opens.

use std::collections::HashMap;
use std::path::Path;

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};

pub const DB_FILE: &str = "journal.db";
/// The highest sequence number known durable, kept outside the database.
pub const HWM_FILE: &str = "journal.hwm";
/// The journal's id salt, kept beside the database too: a salvage whose
/// meta table is unreadable must not change every message id (producers
/// hold them, and downstreams see them as the default idempotency key).
pub const SALT_FILE: &str = "journal.salt";
/// Held (`flock`) by the process using the journal; holds its pid.
pub const LOCK_FILE: &str = "journal.lock";
/// Present while a salvage runs, naming the quarantine directory it moved
/// the damaged files to: a start that finds it carries the salvage out
/// again instead of opening the partial journal beside it.
pub const SALVAGE_FILE: &str = "journal.salvage";
/// Left when corruption is seen while running; its presence at start-up
/// sends the journal to salvage even if the quick check passes.
pub const SUSPECT_FILE: &str = "journal.suspect";

/// Bumped whenever the row format changes; a journal of another version is
/// refused rather than misread.
pub const FORMAT_VERSION: i64 = 1;

// The `state` column holds `crate::queue::stored` codes. A held message
// (SPEC §10) is counted in the queue, never fetched for delivery; its
// `visible_at` is when its hold times out (`i64::MAX` when it never does).

const CREATE: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS messages (
    seq          INTEGER PRIMARY KEY,
    dest         TEXT    NOT NULL,
    state        INTEGER NOT NULL,
    visible_at   INTEGER NOT NULL,
    received_at  INTEGER NOT NULL,
    attempts     INTEGER NOT NULL DEFAULT 0,
    method       TEXT    NOT NULL,
    path         TEXT    NOT NULL,
    headers      BLOB,
    body         BLOB,
    size         INTEGER NOT NULL,
    crc          INTEGER NOT NULL,
    version      INTEGER NOT NULL,
    idem_key     TEXT,
    wants_reply  INTEGER NOT NULL DEFAULT 0,
    last_error   TEXT,
    reason       TEXT,
    finished_at  INTEGER,
    producer     TEXT,
    category     TEXT,
    routed_from  TEXT,
    route_rule   INTEGER
);
CREATE INDEX IF NOT EXISTS messages_ready    ON messages(dest, visible_at, seq) WHERE state = 0;
CREATE INDEX IF NOT EXISTS messages_pending  ON messages(dest, seq) WHERE state = 0;
CREATE INDEX IF NOT EXISTS messages_dead     ON messages(dest, seq) WHERE state = 1;
CREATE INDEX IF NOT EXISTS messages_finished ON messages(finished_at) WHERE state IN (2, 3);
CREATE TABLE IF NOT EXISTS idempotency (
    dest       TEXT    NOT NULL,
    key        TEXT    NOT NULL,
    seq        INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    fingerprint BLOB,
    PRIMARY KEY (dest, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS idempotency_age ON idempotency(created_at);
CREATE TABLE IF NOT EXISTS destinations (
    dest     TEXT PRIMARY KEY,
    state    TEXT NOT NULL,
    reason   TEXT NOT NULL,
    head_seq INTEGER
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS reviews (
    seq         INTEGER PRIMARY KEY,
    dest        TEXT    NOT NULL,
    category    TEXT    NOT NULL,
    kind        TEXT    NOT NULL,
    reason      TEXT    NOT NULL,
    received_at INTEGER NOT NULL,
    created_at  INTEGER NOT NULL,
    original    BLOB,
    decision    TEXT,
    reviewer    TEXT,
    note        TEXT,
    corrected   BLOB,
    patch       TEXT,
    decided_at  INTEGER
);
CREATE INDEX IF NOT EXISTS reviews_open     ON reviews(dest, seq) WHERE decision IS NULL;
CREATE INDEX IF NOT EXISTS reviews_open_all ON reviews(seq) WHERE decision IS NULL;
CREATE INDEX IF NOT EXISTS reviews_decided  ON reviews(dest, category, decided_at) WHERE decision IS NOT NULL;
CREATE INDEX IF NOT EXISTS reviews_age      ON reviews(created_at);
CREATE TABLE IF NOT EXISTS halted_keys (
    dest   TEXT    NOT NULL,
    key    TEXT    NOT NULL,
    seq    INTEGER NOT NULL,
    reason TEXT    NOT NULL,
    PRIMARY KEY (dest, key)
) WITHOUT ROWID;
";

/// The heads of a key-ordered queue, key by key (`Reader::fetch_keyed`).
/// Partial: messages of destinations that do not order by key carry no
/// key, and cost nothing here.
const KEYED_INDEX: &str = "CREATE INDEX IF NOT EXISTS messages_keyed ON messages(dest, order_key, seq, visible_at)
     WHERE state = 0 AND order_key IS NOT NULL;";

/// Held messages by when their hold times out (the timeout sweep) and,
/// per destination, in order (depth at start-up). Created beside the
/// other indexes on journals from before the review station.
const HELD_INDEX: &str = "CREATE INDEX IF NOT EXISTS messages_held ON messages(dest, visible_at, seq) WHERE state = 5;";

/// Applies the connection settings every journal connection uses.
pub fn configure(conn: &Connection, writer: bool) -> rusqlite::Result<()> {
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    // A modest page cache: bodies live on disk, not in memory.
    conn.pragma_update(None, "cache_size", -8192)?;
    if writer {
        // Must precede table creation to take effect on a new file.
        conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // NORMAL: commits append to the WAL without syncing; the writer's
        // syncer thread fdatasyncs the WAL before any commit is answered
        // (see `writer::syncer`), so durability is that of FULL with the
        // sync taken off the commit path.
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        // Checkpoints run on their own thread (see `writer::checkpointer`)
        // so the group-commit path only ever appends to the WAL.
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        conn.pragma_update(None, "temp_store", "MEMORY")?;
        // Cap how large the WAL file stays after a checkpoint.
        conn.pragma_update(None, "journal_size_limit", 64 * 1024 * 1024)?;
    } else {
        conn.pragma_update(None, "query_only", true)?;
    }
    Ok(())
}

#[derive(Default)]
pub struct QueueCount {
    pub depth: u64,
    pub bytes: u64,
    pub dead: u64,
    /// Of `depth`, held for review.
    pub held: u64,
    /// Review items (held and audit) with no decision yet.
    pub open_reviews: u64,
}

pub struct Opened {
    pub conn: Connection,
    pub salt: u32,
    /// The highest sequence number the database knows of, including rows
    /// since deleted (ids must never repeat).
    pub known_seq: i64,
    pub counts: HashMap<String, QueueCount>,
}

/// Why a journal did not open.
#[derive(Debug)]
pub enum OpenError {
    /// The file is damaged: quarantine it and salvage what can be read.
    Damaged(String),
    /// The file may be fine but cannot be used now (permissions, I/O, a full
    /// disk, a newer format): refuse to start and touch nothing, so that
    /// fixing the cause brings every message back.
    Refused(String),
}

impl OpenError {
    fn of(context: &str, e: rusqlite::Error) -> OpenError {
        // A value of the wrong type or text that is not UTF-8 was not
        // written by tidegate: damage the quick check cannot see.
        let undecodable = matches!(
            e,
            rusqlite::Error::Utf8Error(_)
                | rusqlite::Error::FromSqlConversionFailure(..)
                | rusqlite::Error::InvalidColumnType(..)
                | rusqlite::Error::IntegralValueOutOfRange(..)
        );
        let damaged = undecodable
            || matches!(
                e.sqlite_error_code(),
                Some(rusqlite::ErrorCode::DatabaseCorrupt) | Some(rusqlite::ErrorCode::NotADatabase)
            );
        let text = format!("{context}: {e}");
        if damaged {
            OpenError::Damaged(text)
        } else {
            OpenError::Refused(text)
        }
    }
}

impl std::fmt::Display for OpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpenError::Damaged(s) | OpenError::Refused(s) => f.write_str(s),
        }
    }
}

/// Opens the database, creating it if needed, and checks it.
pub fn open_checked(path: &Path) -> Result<Opened, OpenError> {
    let e = |context: &'static str| move |e: rusqlite::Error| OpenError::of(context, e);
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(e("open"))?;
    configure(&conn, true).map_err(e("pragmas"))?;
    conn.execute_batch(CREATE).map_err(e("schema"))?;
    conn.execute_batch(super::audit::CREATE).map_err(e("schema"))?;
    // Columns added after the first release, to journals that predate them.
    add_column(&conn, "idempotency", "fingerprint", "BLOB").map_err(e("schema"))?;
    add_column(&conn, "messages", "producer", "TEXT").map_err(e("schema"))?;
    add_column(&conn, "messages", "category", "TEXT").map_err(e("schema"))?;
    add_column(&conn, "messages", "routed_from", "TEXT").map_err(e("schema"))?;
    add_column(&conn, "messages", "route_rule", "INTEGER").map_err(e("schema"))?;
    add_column(&conn, "messages", "order_key", "TEXT").map_err(e("schema"))?;
    // After the column it covers: a journal from before it gains both.
    conn.execute_batch(KEYED_INDEX).map_err(e("schema"))?;
    conn.execute_batch(HELD_INDEX).map_err(e("schema"))?;

    let version: Option<String> = meta(&conn, "format_version").map_err(e("meta"))?;
    match version.as_deref().map(str::parse::<i64>) {
        None => set_meta(&conn, "format_version", &FORMAT_VERSION.to_string()).map_err(e("meta"))?,
        Some(Ok(v)) if v == FORMAT_VERSION => {}
        Some(Ok(v)) => {
            return Err(OpenError::Refused(format!(
                "journal format version {v} is not supported (this build reads {FORMAT_VERSION}); \
                 run the tidegate that wrote it"
            )))
        }
        // Not a number: no tidegate wrote that.
        Some(Err(_)) => return Err(OpenError::Damaged(format!("unreadable format version {version:?}"))),
    }
    let beside = salt_beside(path);
    let salt = match meta(&conn, "salt").map_err(e("meta"))? {
        Some(s) => parse_salt(&s).ok_or_else(|| OpenError::Damaged(format!("bad salt {s:?}")))?,
        None => {
            // A new journal, or a salvage's fresh one: the salt beside it,
            // if any, keeps the ids of the journal it replaces.
            let s = beside.unwrap_or_else(rand::random);
            set_meta(&conn, "salt", &format!("{s:08x}")).map_err(e("meta"))?;
            s
        }
    };
    if beside != Some(salt) {
        // Not fatal: only a later salvage of an unreadable meta table needs it.
        if let Err(err) = keep_salt_beside(path, salt) {
            tracing::warn!(error = %err, file = SALT_FILE, "cannot keep the id salt beside the journal; a salvage that cannot read it would change message ids");
        }
    }
    // Always checked, not only after a crash: a page damaged while the
    // process was stopped must be found here, where salvage is cheap, not in
    // the middle of a delivery.
    let clean = meta(&conn, "clean_shutdown").map_err(e("meta"))?.as_deref() != Some("0");
    let result: String = conn
        .query_row("PRAGMA quick_check(1)", [], |r| r.get(0))
        .map_err(e("quick_check"))?;
    if result != "ok" {
        return Err(OpenError::Damaged(format!("quick_check: {result}")));
    }
    if !clean {
        tracing::warn!("the journal was not closed cleanly; messages in flight at the crash will be delivered again");
    }
    let counts = count_queues(&conn).map_err(e("counting the queue"))?;
    let max_seq: i64 = conn
        .query_row("SELECT coalesce(max(seq), 0) FROM messages", [], |r| r.get(0))
        .map_err(e("reading the last sequence number"))?;
    let floor: i64 = meta(&conn, "seq_floor")
        .map_err(e("meta"))?
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    set_meta(&conn, "clean_shutdown", "0").map_err(e("meta"))?;
    Ok(Opened {
        conn,
        salt,
        counts,
        known_seq: max_seq.max(floor),
    })
}

/// Adds a column a journal from an older build lacks; its rows get NULL.
/// `idempotency.fingerprint`: a reuse of a key stored without one cannot be
/// told from a repeat, and is taken as a repeat. `messages.producer`: who
/// sent it is unknown; `category`, `routed_from`, `route_rule`, `order_key`: none. Either way the format stays readable by the build
/// that wrote it (it names its columns), so the format version is unchanged.
fn add_column(conn: &Connection, table: &str, column: &str, kind: &str) -> rusqlite::Result<()> {
    let has: bool = conn.query_row(
        &format!("SELECT count(*) FROM pragma_table_info('{table}') WHERE name = ?1"),
        [column],
        |r| r.get::<_, i64>(0).map(|n| n > 0),
    )?;
    if !has {
        conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {kind}"))?;
    }
    Ok(())
}

/// A salt as stored: eight hex digits.
pub fn parse_salt(s: &str) -> Option<u32> {
    (s.len() == 8).then(|| u32::from_str_radix(s, 16).ok()).flatten()
}

/// The salt kept beside the database at `db`, if it is there and readable.
pub fn salt_beside(db: &Path) -> Option<u32> {
    parse_salt(std::fs::read_to_string(db.with_file_name(SALT_FILE)).ok()?.trim())
}

/// Writes the salt beside the database, durably: ids made with it may be
/// handed out as soon as the journal opens.
fn keep_salt_beside(db: &Path, salt: u32) -> std::io::Result<()> {
    write_durably(&db.with_file_name(SALT_FILE), &format!("{salt:08x}\n"))
}

/// Replaces the file at `path` with `text`, atomically and durably: a
/// crash leaves the old file or the new one, never a part of either, and
/// once this returns the new one survives a power loss.
pub(super) fn write_durably(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp_name);
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// Makes the creations, renames and removals in `dir` durable.
pub(super) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// The high-water mark: the highest sequence number ever acknowledged, kept
/// outside SQLite (see `HWM_FILE`); 0 if there is none.
pub fn high_water_mark(db: &Path) -> i64 {
    std::fs::read_to_string(db.with_file_name(HWM_FILE))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

fn count_queues(conn: &Connection) -> rusqlite::Result<HashMap<String, QueueCount>> {
    let mut counts: HashMap<String, QueueCount> = HashMap::new();
    let mut stmt = conn.prepare(
        "SELECT dest, count(*), coalesce(sum(size), 0) FROM messages INDEXED BY messages_pending
         WHERE state = 0 GROUP BY dest",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
    })?;
    for row in rows {
        let (dest, n, bytes) = row?;
        counts.insert(
            dest,
            QueueCount {
                depth: n as u64,
                bytes: bytes as u64,
                ..QueueCount::default()
            },
        );
    }
    // Held messages count in the queue (its limits, its depth) too.
    let mut stmt = conn.prepare(
        "SELECT dest, count(*), coalesce(sum(size), 0) FROM messages INDEXED BY messages_held
         WHERE state = 5 GROUP BY dest",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
    })?;
    for row in rows {
        let (dest, n, bytes) = row?;
        let c = counts.entry(dest).or_default();
        c.depth += n as u64;
        c.bytes += bytes as u64;
        c.held = n as u64;
    }
    let mut stmt = conn
        .prepare("SELECT dest, count(*) FROM reviews INDEXED BY reviews_open WHERE decision IS NULL GROUP BY dest")?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
    for row in rows {
        let (dest, n) = row?;
        counts.entry(dest).or_default().open_reviews = n as u64;
    }
    let mut stmt = conn.prepare("SELECT dest, count(*) FROM messages WHERE state = 1 GROUP BY dest")?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
    for row in rows {
        let (dest, n) = row?;
        counts.entry(dest).or_default().dead = n as u64;
    }
    Ok(counts)
}

pub fn meta(conn: &Connection, key: &str) -> rusqlite::Result<Option<String>> {
    conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
        .optional()
}

pub fn set_meta(conn: &Connection, key: &str, value: &str) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        params![key, value],
    )
    .map(|_| ())
}
