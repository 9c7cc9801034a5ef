//! Rows read straight from the database file's table-leaf pages, for the
//! salvage of rows its b-tree no longer leads to.
//!
//! SQLite finds a row by walking from the table's root page down interior
//! pages to the leaf that holds it. One damaged interior page cuts off every
//! leaf below it, though those leaves, and the rows on them, are intact. This
//! reads the file page by page instead, and decodes every cell of every table
//! leaf (following overflow chains for large rows), using SQLite's documented
//! file format (<https://sqlite.org/fileformat2.html>): nothing here depends
//! on the damaged tree.
//!
//! Invariants:
//! - Only what the caller asks for (by rowid) is decoded and returned, so a
//!   large file costs one pass of page reads, not memory.
//! - Pages on the freelist are skipped: they hold stale copies of rows since
//!   moved or deleted. If the freelist itself is damaged, the walk stops where
//!   it breaks and stale copies may be returned; the caller decides between
//!   versions (see `salvage`).
//! - Nothing read here is trusted: every length and page number is checked
//!   against the file, a cell that does not parse is skipped, and the caller
//!   still checks each row's checksum before keeping it.

use std::collections::HashSet;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use rusqlite::types::Value;

/// A table-leaf page's type byte.
const TABLE_LEAF: u8 = 0x0D;
/// The database header, at the start of page 1.
const HEADER: usize = 100;

/// A row found on a leaf page: its rowid and its columns, in table order.
pub(super) struct LeafRow {
    pub rowid: i64,
    pub values: Vec<Value>,
}

/// Hands `found` every row on a table-leaf page of `db` whose rowid `want`
/// accepts, in page order. The same rowid may come more than once.
pub(super) fn rows(db: &Path, want: &dyn Fn(i64) -> bool, found: &mut dyn FnMut(LeafRow)) -> std::io::Result<()> {
    let file = File::open(db)?;
    let len = file.metadata()?.len();
    let mut header = [0u8; HEADER];
    file.read_exact_at(&mut header, 0)?;
    let page_size = match u16::from_be_bytes([header[16], header[17]]) {
        1 => 65536,
        n if n >= 512 && n.is_power_of_two() => usize::from(n),
        // A damaged header: tidegate's journals use SQLite's default.
        _ => 4096,
    };
    let usable = page_size - usize::from(header[20]);
    if usable < 480 {
        return Ok(());
    }
    let pages = Pages {
        file,
        page_size,
        usable,
        count: (len / page_size as u64) as u32,
    };
    let free = pages.freelist(&header);
    let mut page = vec![0u8; page_size];
    for number in 1..=pages.count {
        if free.contains(&number) || pages.read(number, &mut page).is_err() {
            continue;
        }
        let base = if number == 1 { HEADER } else { 0 };
        if page[base] == TABLE_LEAF {
            pages.leaf_rows(&page, base, want, found);
        }
    }
    Ok(())
}

struct Pages {
    file: File,
    page_size: usize,
    /// Bytes of a page SQLite uses (the page less its reserved tail).
    usable: usize,
    count: u32,
}

impl Pages {
    fn read(&self, number: u32, buf: &mut [u8]) -> std::io::Result<()> {
        self.file
            .read_exact_at(buf, u64::from(number - 1) * self.page_size as u64)
    }

    fn valid(&self, number: u32) -> bool {
        (1..=self.count).contains(&number)
    }

    /// The freelist's trunk and leaf pages, as far as it can be walked.
    fn freelist(&self, header: &[u8; HEADER]) -> HashSet<u32> {
        let mut free = HashSet::new();
        let mut trunk = be32(&header[32..36]);
        let mut page = vec![0u8; self.page_size];
        while self.valid(trunk) && free.insert(trunk) && self.read(trunk, &mut page).is_ok() {
            let leaves = be32(&page[4..8]) as usize;
            for i in 0..leaves.min((self.usable - 8) / 4) {
                let leaf = be32(&page[8 + 4 * i..12 + 4 * i]);
                if self.valid(leaf) {
                    free.insert(leaf);
                }
            }
            trunk = be32(&page[0..4]);
        }
        free
    }

    /// Decodes the wanted cells of one table-leaf page into `found`.
    fn leaf_rows(&self, page: &[u8], base: usize, want: &dyn Fn(i64) -> bool, found: &mut dyn FnMut(LeafRow)) {
        let cells = usize::from(u16::from_be_bytes([page[base + 3], page[base + 4]]));
        for i in 0..cells {
            let at = base + 8 + 2 * i;
            let Some(ptr) = page.get(at..at + 2) else { break };
            let cell = usize::from(u16::from_be_bytes([ptr[0], ptr[1]]));
            if let Some(row) = self.cell(page, cell, want) {
                found(row);
            }
        }
    }

    /// One table-leaf cell: payload length, rowid, the payload's local part,
    /// then (if it did not fit) the first overflow page's number.
    fn cell(&self, page: &[u8], at: usize, want: &dyn Fn(i64) -> bool) -> Option<LeafRow> {
        let page = page.get(..self.usable)?;
        let (payload, n) = varint(page.get(at..)?)?;
        let (rowid, m) = varint(page.get(at + n..)?)?;
        let rowid = rowid as i64;
        if !want(rowid) {
            return None;
        }
        let payload = usize::try_from(payload).ok()?;
        let start = at + n + m;
        let local = self.local_size(payload);
        let mut bytes = page.get(start..start + local)?.to_vec();
        if local < payload {
            let first = be32(page.get(start + local..start + local + 4)?);
            self.overflow(first, payload, &mut bytes)?;
        }
        Some(LeafRow {
            rowid,
            values: record(&bytes)?,
        })
    }

    /// How much of a payload SQLite keeps on the leaf page itself.
    fn local_size(&self, payload: usize) -> usize {
        let u = self.usable;
        let max_local = u - 35;
        if payload <= max_local {
            return payload;
        }
        let min_local = (u - 12) * 32 / 255 - 23;
        let k = min_local + (payload - min_local) % (u - 4);
        if k <= max_local {
            k
        } else {
            min_local
        }
    }

    /// Appends the overflow chain starting at `first` until `bytes` holds the
    /// whole payload; `None` if the chain breaks first.
    fn overflow(&self, first: u32, payload: usize, bytes: &mut Vec<u8>) -> Option<()> {
        let mut next = first;
        let mut page = vec![0u8; self.page_size];
        // Each overflow page carries `usable - 4` bytes; a longer chain loops.
        let mut budget = payload.div_ceil(self.usable - 4);
        while bytes.len() < payload {
            if !self.valid(next) || budget == 0 {
                return None;
            }
            budget -= 1;
            self.read(next, &mut page).ok()?;
            let take = (payload - bytes.len()).min(self.usable - 4);
            bytes.extend_from_slice(&page[4..4 + take]);
            next = be32(&page[0..4]);
        }
        Some(())
    }
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// SQLite's variable-length integer: big-endian groups of 7 bits, the ninth
/// byte contributing all 8. Returns the value and its length.
fn varint(b: &[u8]) -> Option<(u64, usize)> {
    let mut v: u64 = 0;
    for (i, &byte) in b.iter().enumerate().take(9) {
        if i == 8 {
            return Some(((v << 8) | u64::from(byte), 9));
        }
        v = (v << 7) | u64::from(byte & 0x7f);
        if byte & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

/// Decodes a record: a header of serial types, then the values. Text that is
/// not UTF-8 comes back as a blob, as `salvage::read_range` returns it.
fn record(b: &[u8]) -> Option<Vec<Value>> {
    let (header_len, mut at) = varint(b)?;
    let header_len = usize::try_from(header_len).ok()?;
    let header = b.get(..header_len)?;
    let mut body = header_len;
    let mut values = Vec::new();
    while at < header_len {
        let (serial, n) = varint(&header[at..])?;
        at += n;
        let (value, size) = match serial {
            0 => (Value::Null, 0),
            1..=6 => {
                let size = [0, 1, 2, 3, 4, 6, 8][serial as usize];
                let raw = b.get(body..body + size)?;
                // Big-endian two's complement, sign-extended from its width.
                let mut v = i64::from(raw[0] as i8);
                for &byte in &raw[1..] {
                    v = (v << 8) | i64::from(byte);
                }
                (Value::Integer(v), size)
            }
            7 => {
                let raw: [u8; 8] = b.get(body..body + 8)?.try_into().ok()?;
                (Value::Real(f64::from_be_bytes(raw)), 8)
            }
            8 => (Value::Integer(0), 0),
            9 => (Value::Integer(1), 0),
            10 | 11 => return None,
            n => {
                let size = usize::try_from((n - 12) / 2).ok()?;
                let raw = b.get(body..body.checked_add(size)?)?.to_vec();
                if n % 2 == 0 {
                    (Value::Blob(raw), size)
                } else {
                    match String::from_utf8(raw) {
                        Ok(t) => (Value::Text(t), size),
                        Err(e) => (Value::Blob(e.into_bytes()), size),
                    }
                }
            }
        };
        body += size;
        values.push(value);
    }
    Some(values)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::Connection;

    /// Whatever SQLite writes, this reads back the same, including rows that
    /// spill onto overflow pages and integers of every width.
    #[test]
    fn rows_read_from_the_leaves_are_the_rows_sqlite_wrote() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let c = Connection::open(&path).unwrap();
        c.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, n INTEGER, r REAL, s TEXT, b BLOB)")
            .unwrap();
        let ints = [0i64, 1, -1, 127, -128, 40_000, -8_000_000, 1 << 40, i64::MIN, i64::MAX];
        let mut expected = Vec::new();
        for id in 1..=400i64 {
            let n = ints[id as usize % ints.len()];
            let blob: Vec<u8> = (0..(id as usize * 37) % 9000)
                .map(|i| (i * 7 + id as usize) as u8)
                .collect();
            let text = "é".repeat(id as usize % 50);
            c.execute(
                "INSERT INTO t VALUES (?1, ?2, ?3, ?4, ?5)",
                rusqlite::params![id, n, id as f64 + 0.25, text, blob],
            )
            .unwrap();
            expected.push((
                id,
                vec![
                    Value::Null,
                    Value::Integer(n),
                    Value::Real(id as f64 + 0.25),
                    Value::Text(text),
                    Value::Blob(blob),
                ],
            ));
        }
        c.execute("DELETE FROM t WHERE id > 380", []).unwrap();
        expected.truncate(380);
        // A dropped table's pages go to the freelist with their rows still
        // on them (unless `secure_delete`): those must not come back.
        c.pragma_update(None, "secure_delete", false).unwrap();
        c.execute_batch("CREATE TABLE gone (id INTEGER PRIMARY KEY, n INTEGER, r REAL, s TEXT, b BLOB)")
            .unwrap();
        for id in 1000..1200i64 {
            c.execute("INSERT INTO gone VALUES (?1, 1, 0.5, 'x', zeroblob(600))", [id])
                .unwrap();
        }
        c.execute_batch("DROP TABLE gone").unwrap();
        let free: i64 = c.query_row("PRAGMA freelist_count", [], |r| r.get(0)).unwrap();
        assert!(free > 20, "{free}");
        drop(c);

        let mut got: Vec<(i64, Vec<Value>)> = Vec::new();
        rows(&path, &|_| true, &mut |r| got.push((r.rowid, r.values))).unwrap();
        // sqlite_master's row for `t` sits on page 1, a table leaf too.
        got.retain(|(_, v)| v.len() == 5 && v[0] == Value::Null);
        got.sort_by_key(|(id, _)| *id);
        assert_eq!(got.len(), expected.len());
        assert!(got == expected, "rows differ");

        let mut ids = Vec::new();
        rows(&path, &|id| id % 100 == 7, &mut |r| ids.push(r.rowid)).unwrap();
        assert_eq!(ids.len(), 4, "{ids:?}");
    }

    #[test]
    fn a_file_that_is_not_a_database_gives_nothing_and_no_panic() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("junk.db");
        let junk: Vec<u8> = (0..40_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        std::fs::write(&path, &junk).unwrap();
        rows(&path, &|_| true, &mut |_| {}).unwrap();
        std::fs::write(&path, b"short").unwrap();
        assert!(rows(&path, &|_| true, &mut |_| {}).is_err());
    }

    #[test]
    fn varints_decode_as_sqlite_encodes_them() {
        assert_eq!(varint(&[0x00]), Some((0, 1)));
        assert_eq!(varint(&[0x7f]), Some((127, 1)));
        assert_eq!(varint(&[0x81, 0x00]), Some((128, 2)));
        assert_eq!(varint(&[0xff; 9]), Some((u64::MAX, 9)));
        assert_eq!(varint(&[0x81]), None);
    }
}
