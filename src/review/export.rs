//! The corrections people made, for retraining: as JSON rows and as CSV
//! with spreadsheet formulas defused.

use super::*;

impl Station {
    /// Edits and overrides since `since` (ms), for export.
    pub async fn corrections(
        &self,
        dest: Option<String>,
        since: i64,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Value>, ReviewError> {
        let items = self.queues.corrections(dest, since, after, limit).await?;
        Ok(items
            .iter()
            .map(|it| {
                json!({
                    "id": self.id(it.seq),
                    "destination": it.dest,
                    "category": it.category,
                    "decision": it.decision,
                    "original": body_value(it.original.as_ref()),
                    "corrected": body_value(it.corrected.as_ref()),
                    "patch": it.patch.as_deref().and_then(|p| serde_json::from_str::<Value>(p).ok()),
                    "reviewer": it.reviewer,
                    "note": it.note,
                    "decided_at": it.decided_at.map(queue::rfc3339),
                })
            })
            .collect())
    }
}

/// Corrections as CSV with a header row: strings as they are, bodies and
/// patches as compact JSON, absent values empty.
pub fn corrections_csv(rows: &[Value]) -> Result<Vec<u8>, csv::Error> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(CORRECTION_COLUMNS)?;
    for r in rows {
        // Every cell may hold AI output or what a reviewer typed.
        w.write_record(CORRECTION_COLUMNS.iter().map(|c| match &r[*c] {
            Value::Null => String::new(),
            Value::String(s) => crate::text::csv_cell(s).into_owned(),
            v => crate::text::csv_cell(&v.to_string()).into_owned(),
        }))?;
    }
    w.into_inner().map_err(|e| csv::Error::from(e.into_error()))
}

/// The corrections export's CSV columns, in order.
pub const CORRECTION_COLUMNS: [&str; 10] = [
    "id",
    "destination",
    "category",
    "decision",
    "original",
    "corrected",
    "patch",
    "reviewer",
    "note",
    "decided_at",
];
