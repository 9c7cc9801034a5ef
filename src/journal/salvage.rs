//! Salvage: what happens to a journal that fails its checks at start-up.
//!
//! The damaged files are moved (never deleted) to `quarantine/<time>/`; a
//! scratch copy of them is opened and every row that can still be read, and
//! whose checksum matches, is copied into a fresh journal with its original
//! sequence number, so message ids stay valid. Rows that cannot be read are
//! counted as lost. Nothing here can stop start-up except an I/O error on the
//! data directory itself.

use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OpenFlags, Row};

use super::schema::{self, DB_FILE};
use super::{checksum, now_ms, Result};

pub struct Report {
    pub salvaged: u64,
    pub lost: u64,
    pub quarantine_dir: PathBuf,
}

const SUFFIXES: [&str; 3] = ["", "-wal", "-shm"];
const CHUNK: i64 = 512;

pub fn salvage(dir: &Path, reason: &str) -> Result<Report> {
    let qdir = dir.join("quarantine").join(now_ms().to_string());
    std::fs::create_dir_all(&qdir)?;
    let scratch = dir.join("salvage-scratch");
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch)?;
    for s in SUFFIXES {
        let from = dir.join(format!("{DB_FILE}{s}"));
        if from.exists() {
            let to = qdir.join(format!("{DB_FILE}{s}"));
            std::fs::rename(&from, &to)?;
            std::fs::copy(&to, scratch.join(format!("{DB_FILE}{s}")))?;
        }
    }
    std::fs::write(qdir.join("REASON"), format!("{reason}\n"))?;

    let mut report = Report {
        salvaged: 0,
        lost: 0,
        quarantine_dir: qdir,
    };
    let fresh = schema::open_checked(&dir.join(DB_FILE))
        .map_err(|e| std::io::Error::other(format!("cannot create a fresh journal: {e}")))?;
    let new = fresh.conn;
    match Connection::open_with_flags(scratch.join(DB_FILE), OpenFlags::SQLITE_OPEN_READ_WRITE) {
        Ok(old) => copy_rows(&old, &new, &mut report),
        Err(e) => {
            tracing::error!(error = %e, "the damaged journal cannot be opened at all; starting empty")
        }
    }
    if let Err(e) = schema::set_meta(&new, "clean_shutdown", "1") {
        tracing::warn!(error = %e, "could not mark the salvaged journal clean");
    }
    drop(new);
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(report)
}

fn copy_rows(old: &Connection, new: &Connection, report: &mut Report) {
    if let Ok(Some(salt)) = schema::meta(old, "salt") {
        let _ = schema::set_meta(new, "salt", &salt);
    }
    let max_seq: i64 = old
        .query_row("SELECT max(seq) FROM messages", [], |r| r.get::<_, Option<i64>>(0))
        .ok()
        .flatten()
        .or_else(|| {
            old.query_row("SELECT seq FROM sqlite_sequence WHERE name = 'messages'", [], |r| {
                r.get(0)
            })
            .ok()
        })
        .unwrap_or(0);
    let floor = schema::meta(old, "seq_floor")
        .ok()
        .flatten()
        .and_then(|s| s.parse::<i64>().ok())
        .unwrap_or(0);
    let _ = schema::set_meta(new, "seq_floor", &floor.max(max_seq).to_string());
    let _ = new.execute_batch("BEGIN");
    let mut lo = 1;
    while lo <= max_seq {
        let hi = lo + CHUNK - 1;
        match read_range(old, lo, hi) {
            Ok(rows) => insert_rows(new, rows, report),
            Err(_) => {
                for seq in lo..=hi {
                    match read_range(old, seq, seq) {
                        Ok(rows) => insert_rows(new, rows, report),
                        Err(_) => report.lost += 1,
                    }
                }
            }
        }
        lo = hi + 1;
    }
    // Idempotency keys and destination states are best effort.
    if let Ok(mut stmt) = old.prepare("SELECT dest, key, seq, created_at FROM idempotency") {
        if let Ok(rows) = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, i64>(3)?,
            ))
        }) {
            for (d, k, s, c) in rows.flatten() {
                let _ = new.execute(
                    "INSERT OR IGNORE INTO idempotency (dest, key, seq, created_at) VALUES (?1, ?2, ?3, ?4)",
                    params![d, k, s, c],
                );
            }
        }
    }
    if let Ok(mut stmt) = old.prepare("SELECT dest, state, reason, head_seq FROM destinations") {
        if let Ok(rows) = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, Option<i64>>(3)?,
            ))
        }) {
            for (d, s, why, h) in rows.flatten() {
                let _ = new.execute(
                    "INSERT OR IGNORE INTO destinations (dest, state, reason, head_seq) VALUES (?1, ?2, ?3, ?4)",
                    params![d, s, why, h],
                );
            }
        }
    }
    if let Err(e) = new.execute_batch("COMMIT") {
        tracing::error!(error = %e, "committing the salvaged journal failed");
    }
}

type RawRow = Vec<rusqlite::types::Value>;

const COLUMNS: &str = "seq, dest, state, visible_at, received_at, attempts, method, path, headers, body, size, crc,
    version, idem_key, wants_reply, last_error, reason, finished_at";

fn read_range(old: &Connection, lo: i64, hi: i64) -> rusqlite::Result<Vec<RawRow>> {
    let mut stmt = old.prepare_cached(&format!("SELECT {COLUMNS} FROM messages WHERE seq BETWEEN ?1 AND ?2"))?;
    let rows = stmt.query_map(params![lo, hi], |r: &Row<'_>| {
        (0..18)
            .map(|i| r.get::<_, rusqlite::types::Value>(i))
            .collect::<rusqlite::Result<RawRow>>()
    })?;
    rows.collect()
}

fn insert_rows(new: &Connection, rows: Vec<RawRow>, report: &mut Report) {
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
        let state = matches!(row[2], Value::Integer(s) if s == schema::STATE_PENDING || s == schema::STATE_DEAD);
        // Rows that still carry a body must match their checksum.
        if state {
            let crc = match row[11] {
                Value::Integer(c) => c,
                _ => -1,
            };
            if checksum(&text(&row[6]), &text(&row[7]), &blob(&row[8]), &blob(&row[9])) as i64 != crc {
                report.lost += 1;
                continue;
            }
        }
        let ok = new
            .prepare_cached(&format!(
                "INSERT OR IGNORE INTO messages ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12,
                 ?13, ?14, ?15, ?16, ?17, ?18)"
            ))
            .and_then(|mut s| s.execute(rusqlite::params_from_iter(row.iter())));
        match ok {
            Ok(_) => report.salvaged += 1,
            Err(_) => report.lost += 1,
        }
    }
}
