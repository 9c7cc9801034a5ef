//! The audit trail in the journal: table `audit`, one row per act, written
//! by the writer thread in its group commit (so an act answered is on
//! disk) and read from a reader connection. Rows are numbered by
//! `AUTOINCREMENT`, so a number is never handed out twice, even after the
//! oldest rows are swept.

use rusqlite::{params, Connection, Transaction};

use crate::queue::audit::{Act, Entry, Filter};

pub(super) const CREATE: &str = "
CREATE TABLE IF NOT EXISTS audit (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    at          INTEGER NOT NULL,
    actor       TEXT    NOT NULL,
    action      TEXT    NOT NULL,
    destination TEXT,
    target      TEXT,
    detail      TEXT    NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_at ON audit(at);
";

/// The columns salvage copies, in order.
pub(super) const COLUMNS: &str = "seq, at, actor, action, destination, target, detail";

pub(super) fn record(tx: &Transaction<'_>, act: &Act) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO audit (at, actor, action, destination, target, detail) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        act.at,
        act.actor,
        act.action,
        act.destination,
        act.target,
        act.detail.to_string()
    ])?;
    Ok(())
}

pub(super) fn sweep(tx: &Transaction<'_>, before: i64, chunk: i64) -> rusqlite::Result<u64> {
    Ok(tx.execute(
        "DELETE FROM audit WHERE seq IN (SELECT seq FROM audit WHERE at < ?1 ORDER BY seq LIMIT ?2)",
        params![before, chunk],
    )? as u64)
}

pub(super) fn read(conn: &Connection, f: &Filter) -> rusqlite::Result<Vec<Entry>> {
    const SELECT: &str = "SELECT seq, at, actor, action, destination, target, detail FROM audit
         WHERE seq > ?1 AND at >= ?2 AND (?3 IS NULL OR actor = ?3) AND (?4 IS NULL OR action = ?4)
         AND (?5 IS NULL OR destination = ?5)";
    let mut stmt = if f.newest {
        conn.prepare_cached(&format!("{SELECT} ORDER BY seq DESC LIMIT ?6"))?
    } else {
        conn.prepare_cached(&format!("{SELECT} ORDER BY seq LIMIT ?6"))?
    };
    let rows = stmt.query_map(
        params![
            f.after.min(i64::MAX as u64) as i64,
            f.since,
            f.actor,
            f.action,
            f.destination,
            f.limit.min(i64::MAX as usize) as i64
        ],
        |r| {
            let detail: String = r.get(6)?;
            Ok(Entry {
                seq: r.get::<_, i64>(0)? as u64,
                act: Act {
                    at: r.get(1)?,
                    actor: r.get(2)?,
                    action: r.get(3)?,
                    destination: r.get(4)?,
                    target: r.get(5)?,
                    detail: serde_json::from_str(&detail).unwrap_or(serde_json::Value::String(detail)),
                },
            })
        },
    )?;
    let mut out = rows.collect::<rusqlite::Result<Vec<_>>>()?;
    if f.newest {
        out.reverse();
    }
    Ok(out)
}
