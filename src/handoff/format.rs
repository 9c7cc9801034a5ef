//! Output formats: a JSON value (the transform's output, or the producer's
//! body when there is no transform) written as the bytes and Content-Type
//! the downstream accepts.
//!
//! Invariant: the same value and settings always give the same bytes, so
//! what `preview` shows is what a delivery attempt sends.

use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    Json,
    Ndjson,
    Csv,
    Form,
}

impl Format {
    /// Its name in the config (`format = "csv"`).
    pub fn name(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::Ndjson => "ndjson",
            Format::Csv => "csv",
            Format::Form => "form",
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Json => "application/json",
            Format::Ndjson => "application/x-ndjson",
            Format::Csv => "text/csv; charset=utf-8",
            Format::Form => "application/x-www-form-urlencoded",
        }
    }
}

/// `csv = { columns, header, delimiter }`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CsvLayout {
    pub columns: Vec<String>,
    pub header: bool,
    pub delimiter: u8,
}

/// Writes `value` as `format`. Errors say which row or key is at fault.
pub fn write(value: &Value, format: Format, csv: Option<&CsvLayout>) -> Result<Vec<u8>, String> {
    match format {
        Format::Json => serde_json::to_vec(value).map_err(|e| e.to_string()),
        Format::Ndjson => {
            let mut out = Vec::new();
            let items: &[Value] = match value {
                Value::Array(a) => a,
                single => std::slice::from_ref(single),
            };
            for item in items {
                serde_json::to_writer(&mut out, item).map_err(|e| e.to_string())?;
                out.push(b'\n');
            }
            Ok(out)
        }
        Format::Csv => {
            let layout = csv.ok_or("format csv needs csv.columns")?;
            write_csv(value, layout)
        }
        Format::Form => {
            let Value::Object(o) = value else {
                return Err(format!("form encoding needs an object, got {}", kind(value)));
            };
            let mut ser = form_urlencoded::Serializer::new(String::new());
            for (k, v) in o {
                ser.append_pair(k, &cell(v));
            }
            Ok(ser.finish().into_bytes())
        }
    }
}

fn write_csv(value: &Value, layout: &CsvLayout) -> Result<Vec<u8>, String> {
    let rows: &[Value] = match value {
        Value::Array(a) => a,
        Value::Object(_) => std::slice::from_ref(value),
        other => {
            return Err(format!(
                "csv needs an object or an array of objects, got {}",
                kind(other)
            ))
        }
    };
    let mut w = csv::WriterBuilder::new()
        .delimiter(layout.delimiter)
        .terminator(csv::Terminator::CRLF)
        .from_writer(Vec::new());
    if layout.header {
        w.write_record(&layout.columns).map_err(|e| e.to_string())?;
    }
    for (i, row) in rows.iter().enumerate() {
        let Value::Object(o) = row else {
            return Err(format!("csv row {i} is {}, not an object", kind(row)));
        };
        w.write_record(layout.columns.iter().map(|c| o.get(c).map(cell).unwrap_or_default()))
            .map_err(|e| e.to_string())?;
    }
    w.into_inner().map_err(|e| e.to_string())
}

/// One scalar field: strings as they are, `null` empty, other scalars as
/// their JSON text, arrays and objects as JSON.
pub fn cell(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn layout(cols: &[&str]) -> CsvLayout {
        CsvLayout {
            columns: cols.iter().map(|s| s.to_string()).collect(),
            header: true,
            delimiter: b',',
        }
    }

    #[test]
    fn csv_quotes_fields_and_writes_nested_values_as_json() {
        let v = json!([
            {"sku": "A-1", "qty": 2, "site": "Leeds, UK", "tags": ["x", "y"]},
            {"sku": "B \"2\"", "qty": null, "extra": 1}
        ]);
        let out = write(&v, Format::Csv, Some(&layout(&["sku", "qty", "site", "tags"]))).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "sku,qty,site,tags\r\nA-1,2,\"Leeds, UK\",\"[\"\"x\"\",\"\"y\"\"]\"\r\n\"B \"\"2\"\"\",,,\r\n"
        );
    }

    #[test]
    fn form_and_ndjson() {
        let v = json!({"name": "Ada L", "n": 3, "ok": true, "x": null, "o": {"a": 1}});
        let out = write(&v, Format::Form, None).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "name=Ada+L&n=3&ok=true&x=&o=%7B%22a%22%3A1%7D"
        );
        assert!(write(&json!([1]), Format::Form, None).unwrap_err().contains("an array"));
        let out = write(&json!([{"a": 1}, 2]), Format::Ndjson, None).unwrap();
        assert_eq!(out, b"{\"a\":1}\n2\n");
        assert_eq!(write(&json!({"a": 1}), Format::Ndjson, None).unwrap(), b"{\"a\":1}\n");
    }

    #[test]
    fn csv_refuses_what_is_not_rows() {
        let l = layout(&["a"]);
        assert!(write(&json!("x"), Format::Csv, Some(&l))
            .unwrap_err()
            .contains("a string"));
        assert!(write(&json!([{"a": 1}, 3]), Format::Csv, Some(&l))
            .unwrap_err()
            .contains("row 1"));
    }

    fn scalar() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            ".*".prop_map(Value::String),
            "[ ,\"\r\n;a-z]{0,8}".prop_map(Value::String),
        ]
    }

    fn field() -> impl Strategy<Value = Value> {
        scalar().prop_recursive(2, 8, 3, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
                prop::collection::btree_map("[a-z]{1,3}", inner, 0..3)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// Whatever the objects hold, the CSV parses back to each column's
        /// value as `cell` writes it.
        #[test]
        fn csv_output_parses_back_to_the_same_column_values(
            rows in prop::collection::vec(prop::collection::btree_map("[a-e]", field(), 0..5), 1..6),
            delimiter in prop_oneof![Just(b','), Just(b';'), Just(b'\t')],
            header in any::<bool>(),
        ) {
            let columns: Vec<String> = ["a", "b", "c", "d", "e"].iter().map(|s| s.to_string()).collect();
            let l = CsvLayout { columns: columns.clone(), header, delimiter };
            let value = Value::Array(rows.iter().map(|r| Value::Object(r.clone().into_iter().collect())).collect());
            let out = write(&value, Format::Csv, Some(&l)).unwrap();
            let mut reader = csv::ReaderBuilder::new().delimiter(delimiter).has_headers(header).from_reader(&out[..]);
            if header {
                let h: Vec<String> = reader.headers().unwrap().iter().map(String::from).collect();
                prop_assert_eq!(h, columns.clone());
            }
            let back: Vec<csv::StringRecord> = reader.records().collect::<Result<_, _>>().unwrap();
            prop_assert_eq!(back.len(), rows.len());
            for (rec, row) in back.iter().zip(&rows) {
                for (i, c) in columns.iter().enumerate() {
                    let want = row.get(c).map(cell).unwrap_or_default();
                    prop_assert_eq!(rec.get(i).unwrap_or(""), want.as_str());
                }
            }
        }
    }
}
