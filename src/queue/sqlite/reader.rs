//! Read connections: a small pool used from `spawn_blocking`, so reads never
//! wait behind the writer (WAL readers see the last committed batch).

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, Row};

use super::record::decode_record;
use super::schema;
use crate::queue::{
    DeadLetter, DestinationRecord, Due, HaltedKey, LastError, Message, MessageState, MessageStatus, Queued, Result,
};

#[derive(Clone)]
pub(crate) struct Pool {
    path: PathBuf,
    idle: Arc<Mutex<Vec<Connection>>>,
}

/// Idle read connections kept open.
const MAX_IDLE: usize = 8;

impl Pool {
    pub fn new(path: PathBuf) -> Self {
        Pool {
            path,
            idle: Arc::new(Mutex::new(Vec::new())),
        }
    }

    pub fn with<T>(&self, f: impl FnOnce(&Reader) -> rusqlite::Result<T>) -> Result<T> {
        let conn = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let conn = match conn {
            Some(c) => c,
            None => {
                let c = Connection::open_with_flags(
                    &self.path,
                    OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )?;
                schema::configure(&c, false)?;
                c
            }
        };
        let reader = Reader { conn };
        let out = f(&reader).map_err(super::from_sqlite);
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < MAX_IDLE {
            idle.push(reader.conn);
        }
        out
    }
}

pub(crate) struct Reader {
    conn: Connection,
}

impl Reader {
    /// For queries kept beside the records they read (`review`).
    pub(super) fn conn(&self) -> &Connection {
        &self.conn
    }
}

/// The delivery path's scan of a queue: what is due, in order. It selects
/// only columns the `messages_ready` index holds, so SQLite answers it from
/// the index alone: messages in flight are skipped without reading their
/// rows (a scan that selected bodies read every in-flight body again on
/// every fetch, then threw it away).
const READY_SCAN_SQL: &str = "SELECT seq, visible_at FROM messages INDEXED BY messages_ready
     WHERE dest = ?1 AND state = 0 ORDER BY visible_at, seq";

/// A key-ordered queue from its oldest message, with what deciding its
/// heads needs.
const KEYED_WINDOW_SQL: &str = "SELECT seq, order_key, visible_at FROM messages INDEXED BY messages_pending
     WHERE dest = ?1 AND state = 0 ORDER BY seq";

/// How many of the oldest pending messages a keyed fetch reads in order.
const KEYED_WINDOW: usize = 512;

/// The head of the first key after ?2: one seek in `messages_keyed`,
/// answered from the index alone.
const KEY_HEAD_SQL: &str = "SELECT order_key, seq, visible_at FROM messages INDEXED BY messages_keyed
     WHERE dest = ?1 AND state = 0 AND order_key IS NOT NULL AND order_key > ?2 ORDER BY order_key, seq LIMIT 1";

/// Most keys one keyed fetch looks at past the window.
const KEYS_PER_FETCH: usize = 1024;

/// One message by its seq, if it is still pending.
static FETCH_ONE_SQL: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| format!("SELECT {MESSAGE_COLUMNS} FROM messages WHERE seq = ?1 AND state = 0"));

const MESSAGE_COLUMNS: &str =
    "seq, dest, method, path, headers, body, attempts, received_at, idem_key, wants_reply, crc, order_key";

/// A row read for delivery, or the seq of one that is damaged: its checksum
/// fails, or a column no longer holds what was written (bad UTF-8, a wrong
/// type). Damage quarantines the row; it must never fail the whole read, or
/// one bad row would stall its destination.
pub(crate) fn message_from_row(r: &Row<'_>) -> rusqlite::Result<std::result::Result<Message, u64>> {
    // The rowid: always an integer, whatever the record holds.
    let seq: i64 = r.get(0)?;
    Ok(decode_message(r, seq).ok_or(seq as u64))
}

fn decode_message(r: &Row<'_>, seq: i64) -> Option<Message> {
    let Record {
        method,
        path,
        headers,
        body,
    } = read_record(r, [2, 3, 4, 5, 10])?;
    Some(Message {
        seq: seq as u64,
        dest: r.get(1).ok()?,
        method,
        path,
        headers,
        body: Bytes::from(body),
        attempts: r.get::<_, i64>(6).ok()? as u32,
        received_at: r.get(7).ok()?,
        idempotency_key: r.get(8).ok()?,
        wants_reply: r.get::<_, i64>(9).ok()? != 0,
        order_key: r.get(11).ok()?,
    })
}

/// A saved destination state from `(dest, state, reason, head_seq)`;
/// `None` if a column no longer holds what was written.
fn destination_record(r: &Row<'_>) -> Option<(String, DestinationRecord)> {
    Some((
        r.get::<_, String>(0).ok()?,
        DestinationRecord {
            state: r.get(1).ok()?,
            reason: r.get(2).ok()?,
            head_seq: r.get::<_, Option<i64>>(3).ok()?.map(|s| s as u64),
            revision: 0,
        },
    ))
}

/// The checksummed part of a stored message.
pub(crate) struct Record {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// Reads a record from the columns at `[method, path, headers, body, crc]`
/// and checks it as the delivery path does. `None`: damaged, because a
/// column no longer holds what was written or the checksum fails.
pub(crate) fn read_record(r: &Row<'_>, [m, p, h, b, c]: [usize; 5]) -> Option<Record> {
    let method: String = r.get(m).ok()?;
    let path: String = r.get(p).ok()?;
    let headers_raw: Vec<u8> = r.get::<_, Option<Vec<u8>>>(h).ok()?.unwrap_or_default();
    let body: Vec<u8> = r.get::<_, Option<Vec<u8>>>(b).ok()?.unwrap_or_default();
    let crc = u32::try_from(r.get::<_, i64>(c).ok()?).ok()?;
    let headers = decode_record(&method, &path, &headers_raw, &body, crc)?;
    Some(Record {
        method,
        path,
        headers,
        body,
    })
}

fn last_error(raw: Option<String>) -> Option<LastError> {
    raw.and_then(|s| serde_json::from_str(&s).ok())
}

/// A fetched message, or one that failed its checksum and must be
/// quarantined by the caller.
pub type Fetched = std::result::Result<Message, u64>;

impl Reader {
    /// Up to `limit` messages of `dest` due at `now`, skipping `exclude`
    /// (those in flight), and when the first message not yet due becomes
    /// visible. The scan stops at that message: behind it, in index order,
    /// nothing is due. Also the highest seq in the snapshot read (one read
    /// transaction), which the destination's tail starts above.
    pub fn fetch_ready(
        &self,
        dest: &str,
        now: i64,
        limit: usize,
        exclude: &[u64],
    ) -> rusqlite::Result<(Due<Fetched>, u64)> {
        let snapshot = self.conn.unchecked_transaction()?;
        let last_seq: i64 = snapshot
            .prepare_cached("SELECT coalesce(max(seq), 0) FROM messages")?
            .query_row([], |r| r.get(0))?;
        let mut due = Vec::with_capacity(limit);
        let mut next_due = None;
        {
            // No LIMIT: rows stream in index order and stepping stops once
            // enough are taken. A bound LIMIT would make SQLite re-prepare
            // the statement on every call (the plan depends on its value).
            let mut scan = self.conn.prepare_cached(READY_SCAN_SQL)?;
            let mut rows = scan.query([dest])?;
            while let Some(row) = rows.next()? {
                let seq: i64 = row.get(0)?;
                // A damaged `visible_at` (outside the checksum) means "due now".
                let visible_at: i64 = row.get(1).unwrap_or(0);
                if visible_at > now {
                    next_due = Some(visible_at);
                    break;
                }
                if !exclude.contains(&(seq as u64)) {
                    due.push(seq);
                    if due.len() >= limit {
                        break;
                    }
                }
            }
        }
        let mut one = self.conn.prepare_cached(&FETCH_ONE_SQL)?;
        let mut messages = Vec::with_capacity(due.len());
        for seq in due {
            // Settled since the scan (purged, dead-lettered by an operator):
            // no longer ours to deliver.
            if let Some(m) = one.query_row([seq], message_from_row).optional()? {
                messages.push(m);
            }
        }
        drop(one);
        snapshot.commit()?;
        Ok((Due { messages, next_due }, last_seq as u64))
    }

    /// See `Journal::fetch_keyed`. Two walks, one read transaction:
    /// - the window: the oldest `KEYED_WINDOW` pending messages in seq
    ///   order; the first seen of each key is its head, a message without a
    ///   key stands alone. When keys interleave (the usual case) this finds
    ///   every head there is to take, oldest first, at the cost of reading
    ///   the rows in front;
    /// - only when the window holds fewer free heads than there is room
    ///   for and more messages lie behind it (a key with a large backlog in
    ///   front): key by key through `messages_keyed`, one index seek per key
    ///   for its head, round robin from after `after`, at most
    ///   `KEYS_PER_FETCH` keys. So a fetch costs about the same whether a
    ///   key has one message waiting or a million, and every key gets its
    ///   turn.
    ///
    /// A head is taken when it is due, not in flight (`exclude`) and its key
    /// is not halted. Also returned: the last key the second walk looked
    /// at (`after` if it did not run), where the next one starts.
    pub fn fetch_keyed(
        &self,
        dest: &str,
        now: i64,
        limit: usize,
        exclude: &HashSet<u64>,
        halted: &HashSet<String>,
        after: &str,
    ) -> rusqlite::Result<(Due<Fetched>, String)> {
        let snapshot = self.conn.unchecked_transaction()?;
        let mut due = Vec::with_capacity(limit);
        let mut next_due: Option<i64> = None;
        let mut later = |at: i64| next_due = Some(next_due.map_or(at, |n: i64| n.min(at)));
        let mut seen: HashSet<String> = halted.clone();
        let mut window_full = false;
        {
            let mut scan = self.conn.prepare_cached(KEYED_WINDOW_SQL)?;
            let mut rows = scan.query([dest])?;
            let mut scanned = 0;
            while let Some(row) = rows.next()? {
                scanned += 1;
                if scanned > KEYED_WINDOW {
                    window_full = true;
                    break;
                }
                let seq = row.get::<_, i64>(0)? as u64;
                // A damaged key (outside the checksum) reads as none: that
                // message is then ordered by nothing, not stalled forever.
                if let Some(k) = row.get::<_, Option<String>>(1).ok().flatten() {
                    if !seen.insert(k) {
                        continue; // not its key's head
                    }
                }
                if exclude.contains(&seq) {
                    continue;
                }
                // A damaged `visible_at` (outside the checksum) means "due now".
                let visible_at: i64 = row.get(2).unwrap_or(0);
                if visible_at > now {
                    later(visible_at);
                    continue;
                }
                due.push(seq);
                if due.len() >= limit {
                    break;
                }
            }
        }
        let mut cursor = after.to_string();
        if window_full && due.len() < limit {
            let mut head = self.conn.prepare_cached(KEY_HEAD_SQL)?;
            let mut wrapped = false;
            let mut looked = 0;
            while due.len() < limit && looked < KEYS_PER_FETCH {
                let next = head
                    .query_row(params![dest, cursor], |r| {
                        Ok((
                            r.get::<_, String>(0)?,
                            r.get::<_, i64>(1)? as u64,
                            r.get::<_, i64>(2).unwrap_or(0),
                        ))
                    })
                    .optional()?;
                let Some((key, seq, visible_at)) = next else {
                    if wrapped || after.is_empty() {
                        break;
                    }
                    wrapped = true;
                    cursor.clear();
                    continue;
                };
                if wrapped && key.as_str() > after {
                    break; // round to where this walk began
                }
                looked += 1;
                // Keys the window saw were decided there.
                let free = !seen.contains(&key) && !exclude.contains(&seq);
                if free && visible_at > now {
                    later(visible_at);
                } else if free {
                    due.push(seq);
                }
                cursor = key;
            }
        }
        let mut one = self.conn.prepare_cached(&FETCH_ONE_SQL)?;
        let mut messages = Vec::with_capacity(due.len());
        for seq in due {
            if let Some(m) = one.query_row([seq as i64], message_from_row).optional()? {
                messages.push(m);
            }
        }
        drop(one);
        snapshot.commit()?;
        Ok((Due { messages, next_due }, cursor))
    }

    pub fn halted_keys(&self) -> rusqlite::Result<Vec<HaltedKey>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT dest, key, seq, reason FROM halted_keys ORDER BY dest, key")?;
        let rows = stmt.query_map([], |r| {
            Ok(HaltedKey {
                dest: r.get(0)?,
                key: r.get(1)?,
                seq: r.get::<_, i64>(2)? as u64,
                reason: r.get(3)?,
            })
        })?;
        rows.collect()
    }

    pub fn head(&self, dest: &str) -> rusqlite::Result<Option<(Fetched, i64)>> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {MESSAGE_COLUMNS}, visible_at FROM messages INDEXED BY messages_pending
             WHERE dest = ?1 AND state = 0 ORDER BY seq LIMIT 1"
        ))?;
        // A damaged `visible_at` (outside the checksum) means "due now".
        stmt.query_row([dest], |r| Ok((message_from_row(r)?, r.get::<_, i64>(12).unwrap_or(0))))
            .optional()
    }

    pub fn status(&self, seq: u64) -> rusqlite::Result<Option<MessageStatus>> {
        self.conn
            .prepare_cached(
                "SELECT seq, dest, state, visible_at, attempts, received_at, finished_at, last_error, reason, producer,
                 category, routed_from, route_rule, order_key FROM messages WHERE seq = ?1",
            )?
            .query_row([seq as i64], |r| {
                Ok(MessageStatus {
                    seq: r.get::<_, i64>(0)? as u64,
                    dest: r.get(1)?,
                    state: MessageState::from_stored(r.get(2)?, r.get(3)?, crate::queue::now_ms()),
                    visible_at: r.get(3)?,
                    attempts: r.get::<_, i64>(4)? as u32,
                    received_at: r.get(5)?,
                    finished_at: r.get(6).ok().flatten(),
                    last_error: last_error(r.get(7).ok().flatten()),
                    reason: r.get(8).ok().flatten(),
                    producer: r.get(9).ok().flatten(),
                    category: r.get(10).ok().flatten(),
                    routed_from: match (r.get::<_, Option<String>>(11), r.get::<_, Option<i64>>(12)) {
                        (Ok(Some(from)), Ok(Some(rule))) => Some((from, rule as u32)),
                        _ => None,
                    },
                    order_key: r.get(13).ok().flatten(),
                })
            })
            .optional()
    }

    pub fn dead_letters(&self, dest: &str, after: Option<u64>, limit: usize) -> rusqlite::Result<Vec<DeadLetter>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT seq, reason, attempts, last_error, received_at, finished_at, size FROM messages
             INDEXED BY messages_dead WHERE dest = ?1 AND state = 1 AND seq > ?2 ORDER BY seq LIMIT ?3",
        )?;
        let rows = stmt.query_map(params![dest, after.unwrap_or(0) as i64, limit as i64], |r| {
            // Only the seq is required: a damaged column must not hide the
            // rest of the dead letters from the operator.
            Ok(DeadLetter {
                seq: r.get::<_, i64>(0)? as u64,
                reason: r.get::<_, Option<String>>(1).ok().flatten().unwrap_or_default(),
                attempts: r.get::<_, i64>(2).unwrap_or(0) as u32,
                last_error: last_error(r.get(3).ok().flatten()),
                received_at: r.get(4).unwrap_or(0),
                dead_lettered_at: r.get::<_, Option<i64>>(5).ok().flatten().unwrap_or(0),
                size_bytes: r.get::<_, i64>(6).unwrap_or(0) as u64,
            })
        })?;
        rows.collect()
    }

    /// The first `limit` messages waiting in `dest`'s queue, oldest first.
    pub fn queued(&self, dest: &str, limit: usize) -> rusqlite::Result<Vec<Queued>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT seq, received_at, visible_at, attempts, last_error, size FROM messages
             INDEXED BY messages_pending WHERE dest = ?1 AND state = 0 ORDER BY seq LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![dest, limit as i64], |r| {
            Ok(Queued {
                seq: r.get::<_, i64>(0)? as u64,
                received_at: r.get(1).unwrap_or(0),
                visible_at: r.get(2).unwrap_or(0),
                attempts: r.get::<_, i64>(3).unwrap_or(0) as u32,
                last_error: last_error(r.get(4).ok().flatten()),
                size_bytes: r.get::<_, i64>(5).unwrap_or(0) as u64,
            })
        })?;
        rows.collect()
    }

    /// The oldest pending message's `received_at`.
    pub fn oldest_pending(&self, dest: &str) -> rusqlite::Result<Option<i64>> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT received_at FROM messages INDEXED BY messages_pending WHERE dest = ?1 AND state = 0
                 ORDER BY seq LIMIT 1",
            )?
            .query_row([dest], |r| Ok(r.get::<_, i64>(0).ok()))
            .optional()?
            .flatten())
    }

    /// The oldest pending message's `received_at`, and how many pending
    /// messages are scheduled for later.
    pub fn queue_detail(&self, dest: &str, now: i64) -> rusqlite::Result<(Option<i64>, u64)> {
        let oldest = self.oldest_pending(dest)?;
        let scheduled: i64 = self
            .conn
            .prepare_cached(
                "SELECT count(*) FROM messages INDEXED BY messages_ready WHERE dest = ?1 AND state = 0 AND visible_at > ?2",
            )?
            .query_row(params![dest, now], |r| r.get(0))?;
        Ok((oldest, scheduled as u64))
    }

    /// Destination states kept across restarts. A row whose columns no
    /// longer decode (damage the quick check cannot see) is left out with a
    /// warning: its destination starts running, and start-up goes on.
    pub fn destination_records(&self) -> rusqlite::Result<HashMap<String, DestinationRecord>> {
        let mut stmt = self
            .conn
            .prepare("SELECT dest, state, reason, head_seq FROM destinations")?;
        let mut rows = stmt.query([])?;
        let mut out = HashMap::new();
        while let Some(r) = rows.next()? {
            match destination_record(r) {
                Some((name, record)) => {
                    out.insert(name, record);
                }
                None => tracing::warn!("a destination's saved state is unreadable; that destination starts running"),
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hot read is prepared once per connection, not once per call.
    #[test]
    fn fetching_ready_messages_does_not_re_prepare() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(schema::DB_FILE);
        drop(schema::open_checked(&path).unwrap());
        let pool = Pool::new(path);
        pool.with(|r| {
            for (now, limit, exclude) in [(1, 4, vec![]), (2, 8, vec![1, 2]), (3, 128, vec![5])] {
                r.fetch_ready("d", now, limit, &exclude)?;
            }
            for sql in [READY_SCAN_SQL, FETCH_ONE_SQL.as_str()] {
                let stmt = r.conn.prepare_cached(sql)?;
                assert_eq!(stmt.get_status(rusqlite::StatementStatus::RePrepare), 0, "{sql}");
            }
            Ok(())
        })
        .unwrap();
    }

    /// Messages in flight are skipped on every fetch; the scan must find
    /// them in the index without reading their rows and bodies.
    #[test]
    fn the_ready_scan_is_answered_from_the_index_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(schema::DB_FILE);
        let conn = schema::open_checked(&path).unwrap().conn;
        let plan: String = conn
            .query_row(&format!("EXPLAIN QUERY PLAN {READY_SCAN_SQL}"), ["d"], |r| r.get(3))
            .unwrap();
        assert!(plan.contains("COVERING INDEX messages_ready"), "{plan}");
    }

    /// A key's head is one seek in the keyed index, whatever its backlog:
    /// never a scan of the queue, never a read of a row.
    #[test]
    fn a_keys_head_is_one_seek_in_the_keyed_index() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(schema::DB_FILE);
        let conn = schema::open_checked(&path).unwrap().conn;
        let plan: String = conn
            .query_row(&format!("EXPLAIN QUERY PLAN {KEY_HEAD_SQL}"), params!["d", "k"], |r| {
                r.get(3)
            })
            .unwrap();
        assert!(
            plan.contains("COVERING INDEX messages_keyed (dest=? AND order_key>?)"),
            "{plan}"
        );
    }
}
