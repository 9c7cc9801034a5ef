//! `tidegate journal verify`: an offline check of a journal, for operators
//! who want to know what is in a queue and whether it is sound before they
//! start on it. It holds the storage lock while it reads, so it refuses a
//! journal in use and no tidegate starts on it meanwhile. It reads only: it
//! opens the database without checkpointing on close, runs SQLite's full
//! `integrity_check`, re-computes the checksum of every row that still
//! carries a body, and counts rows by destination and state. A salvage cut
//! short is reported as such, whatever the files beside its marker hold.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;

use rusqlite::config::DbConfig;
use rusqlite::{Connection, OpenFlags};

use super::reader::read_record;
use super::schema::{self, DB_FILE};
use crate::queue::{stored, MessageState};

#[derive(Debug, Default)]
pub struct Report {
    pub integrity: String,
    /// (destination, state name) → (rows, body bytes)
    pub counts: BTreeMap<(String, &'static str), (u64, u64)>,
    pub bad_checksums: Vec<u64>,
    pub unreadable: bool,
    pub quarantined_files: Vec<String>,
    pub wal_bytes: u64,
    /// A salvage was cut short: the quarantine directory it works from.
    pub salvage_pending: Option<String>,
}

impl Report {
    pub fn healthy(&self) -> bool {
        self.integrity == "ok" && self.bad_checksums.is_empty() && !self.unreadable && self.salvage_pending.is_none()
    }

    pub fn render(&self, dir: &Path) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "journal {}", dir.join(DB_FILE).display());
        if let Some(q) = &self.salvage_pending {
            let _ = writeln!(
                s,
                "a salvage was cut short: the next start salvages {q} again; what follows is its partial output"
            );
        }
        let _ = writeln!(s, "integrity_check: {}", self.integrity);
        let _ = writeln!(s, "wal: {} bytes not yet checkpointed", self.wal_bytes);
        let _ = writeln!(
            s,
            "{:<24} {:<13} {:>10} {:>14}",
            "DESTINATION", "STATE", "MESSAGES", "BODY BYTES"
        );
        for ((dest, state), (n, bytes)) in &self.counts {
            let _ = writeln!(s, "{dest:<24} {state:<13} {n:>10} {bytes:>14}");
        }
        let _ = writeln!(s, "rows failing their checksum: {}", self.bad_checksums.len());
        for seq in self.bad_checksums.iter().take(20) {
            let _ = writeln!(s, "  seq {seq}");
        }
        if self.unreadable {
            let _ = writeln!(s, "some rows could not be read (see integrity_check)");
        }
        for q in &self.quarantined_files {
            let _ = writeln!(s, "quarantined earlier: {q}");
        }
        let _ = writeln!(s, "verdict: {}", if self.healthy() { "healthy" } else { "DAMAGED" });
        s
    }
}

pub fn verify(dir: &Path) -> Result<Report, String> {
    let path = dir.join(DB_FILE);
    let salvage = dir.join(schema::SALVAGE_FILE);
    if !path.exists() && !salvage.exists() {
        return Err(format!("no journal at {}", path.display()));
    }
    // Offline only: a long read beside a running tidegate would hold back
    // its checkpoints (the writer waits for readers to rewind the WAL), and
    // a tidegate must not start on the journal while it is being read.
    let _lock = super::lock_storage(dir).map_err(|e| format!("{e}; journal verify reads a stopped journal"))?;
    let salvage_pending = std::fs::read_to_string(&salvage).ok().map(|q| q.trim().to_string());
    if !path.exists() {
        // A salvage cut short before it made the fresh journal: the files
        // are all in quarantine, and the next start salvages them.
        return Ok(Report {
            integrity: "not run: the journal is in quarantine".into(),
            salvage_pending,
            ..Report::default()
        });
    }
    let conn = Connection::open_with_flags(
        &path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    // Read only, and leave the files as they are when done.
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)
        .map_err(|e| e.to_string())?;
    conn.pragma_update(None, "query_only", true)
        .map_err(|e| e.to_string())?;
    let mut report = Report {
        salvage_pending,
        wal_bytes: std::fs::metadata(dir.join(format!("{DB_FILE}-wal")))
            .map(|m| m.len())
            .unwrap_or(0),
        ..Report::default()
    };
    report.integrity = match conn.prepare("PRAGMA integrity_check(20)").and_then(|mut st| {
        st.query_map([], |r| r.get::<_, String>(0))?
            .collect::<rusqlite::Result<Vec<String>>>()
    }) {
        Ok(lines) => lines.join("; "),
        Err(e) => format!("failed: {e}"),
    };
    let rows = conn
        .prepare("SELECT seq, dest, state, method, path, headers, body, size, crc FROM messages")
        .and_then(|mut st| {
            let mut rows = st.query([])?;
            while let Some(r) = rows.next()? {
                let seq: i64 = r.get(0)?;
                // A damaged row must not end the scan: what cannot be read
                // as written is counted as failing its checksum.
                let dest = match r.get_ref(1)? {
                    rusqlite::types::ValueRef::Text(t) => String::from_utf8_lossy(t).into_owned(),
                    _ => "?".to_string(),
                };
                let (Ok(state), Ok(size)) = (r.get::<_, i64>(2), r.get::<_, i64>(7)) else {
                    report.bad_checksums.push(seq as u64);
                    continue;
                };
                let e = report
                    .counts
                    .entry((dest, MessageState::from_stored(state, 0, 0).as_str()))
                    .or_default();
                e.0 += 1;
                if matches!(state, stored::PENDING | stored::DEAD) {
                    e.1 += size as u64;
                    // The same check the delivery path makes.
                    if read_record(r, [3, 4, 5, 6, 8]).is_none() {
                        report.bad_checksums.push(seq as u64);
                    }
                }
            }
            Ok(())
        });
    if rows.is_err() {
        report.unreadable = true;
    }
    if let Ok(entries) = std::fs::read_dir(dir.join("quarantine")) {
        let mut q: Vec<String> = entries.flatten().map(|e| e.path().display().to_string()).collect();
        q.sort();
        report.quarantined_files = q;
    }
    Ok(report)
}
