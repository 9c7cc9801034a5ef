//! `[destination.batch]` (SPEC §16): how many messages one downstream
//! request carries, how the request body is made of them, and how a 2xx
//! answer is read back into one outcome per message.
//!
//! Invariants: `max_messages`, `max_bytes` and `max_wait` are at least 1 (a
//! batch always leaves); an `envelope` is set only with `json_array`; the
//! encoding agrees with the handoff's format (`csv` needs `format = "csv"`,
//! the JSON encodings a JSON item); the programs compile, and a mistake in
//! one names its line and column.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::handoff::inline_program;
use super::locate::positive;
use super::{ByteSize, ConfigError, HumanDuration, Locator};
use crate::handoff::{Format, Program, Spec};

/// The most messages one request may carry: past this a batch is a bulk
/// import, and one retried whole (a 429 to all of it) costs too much.
pub const MAX_BATCH_MESSAGES: usize = 10_000;

/// How a batch's items become the request body.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Encoding {
    /// `[item, item, …]`, or what `envelope` makes of that array.
    JsonArray,
    /// One item per line.
    Ndjson,
    /// The CSV header once, then each item's row.
    Csv,
}

impl Encoding {
    pub fn as_str(self) -> &'static str {
        match self {
            Encoding::JsonArray => "json_array",
            Encoding::Ndjson => "ndjson",
            Encoding::Csv => "csv",
        }
    }

    /// Whether each item must be JSON (ingress refuses other bodies, 415).
    pub fn needs_json(self) -> bool {
        !matches!(self, Encoding::Csv)
    }
}

#[derive(Clone, Debug)]
pub struct Batch {
    pub max_messages: usize,
    pub max_bytes: u64,
    pub max_wait: Duration,
    pub encoding: Encoding,
    /// jq on the JSON array of items → the request body.
    pub envelope: Option<Arc<Program>>,
    /// Where batches go, appended to the destination's url; `None`: the
    /// messages' own path (a batch then holds one method and path).
    pub path: Option<String>,
    /// jq on a 2xx answer → one outcome per item, in order.
    pub results: Option<Arc<Program>>,
    /// The CSV header line comes once per batch (`csv` with a header).
    pub csv_header: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBatch {
    max_messages: Option<Spanned<i64>>,
    max_bytes: Option<Spanned<ByteSize>>,
    max_wait: Option<Spanned<HumanDuration>>,
    encoding: Option<Spanned<Encoding>>,
    envelope: Option<Spanned<String>>,
    path: Option<Spanned<String>>,
    results: Option<Spanned<String>>,
}

const KEY: &str = "destination.batch";

/// Validates `[destination.batch]` against the destination's handoff
/// (`spec`, when it has one) and ordering.
pub(super) fn batch(
    raw: &Spanned<RawBatch>,
    spec: Option<&Spec>,
    fifo: bool,
    loc: &Locator,
) -> Result<Batch, ConfigError> {
    let r = raw.get_ref();
    if fifo {
        return Err(loc.error(
            raw.span(),
            "[destination.batch] needs ordering \"unordered\" or \"key\": under \"fifo\" a retried item would \
             fall behind the batch sent after it"
                .to_string(),
        ));
    }
    let max_messages: usize = positive(&r.max_messages, 1usize, loc, "max_messages")?;
    if max_messages > MAX_BATCH_MESSAGES {
        let span = r.max_messages.as_ref().map(|m| m.span()).unwrap_or(0..0);
        return Err(loc.error(
            span,
            format!("max_messages is at most {MAX_BATCH_MESSAGES}, got {max_messages}"),
        ));
    }
    let max_bytes = match &r.max_bytes {
        None => 1 << 20,
        Some(b) if b.get_ref().0 == 0 => {
            return Err(loc.error(b.span(), "max_bytes must be at least 1B".to_string()));
        }
        Some(b) => b.get_ref().0,
    };
    let max_wait = match &r.max_wait {
        None => Duration::from_millis(200),
        Some(w) if w.get_ref().0.is_zero() || w.get_ref().0 > Duration::from_secs(60) => {
            return Err(loc.error(
                w.span(),
                "max_wait must be between 1ms and 60s: a partial batch must leave".to_string(),
            ));
        }
        Some(w) => w.get_ref().0,
    };
    let encoding = r.encoding.as_ref().map_or(Encoding::JsonArray, |e| *e.get_ref());
    let format = spec.filter(|s| !s.passthrough).map(|s| s.format);
    let encoding_span = || r.encoding.as_ref().map(|e| e.span()).unwrap_or(raw.span());
    match (encoding, format) {
        (Encoding::Csv, Some(Format::Csv)) => {}
        (Encoding::Csv, _) => {
            return Err(loc.error(
                encoding_span(),
                "encoding = \"csv\" needs [destination.handoff] format = \"csv\" (each item is one CSV row)"
                    .to_string(),
            ))
        }
        (_, Some(Format::Csv | Format::Form)) => {
            return Err(loc.error(
                encoding_span(),
                format!(
                    "encoding = \"{}\" needs JSON items, but the handoff's format is {}",
                    encoding.as_str(),
                    format.map_or("", Format::name)
                ),
            ))
        }
        _ => {}
    }
    let envelope = match &r.envelope {
        None => None,
        Some(_) if encoding != Encoding::JsonArray => {
            return Err(loc.error(
                r.envelope.as_ref().map(|e| e.span()).unwrap_or(0..0),
                "envelope applies only with encoding = \"json_array\"".to_string(),
            ))
        }
        Some(code) => Some(program(code, "envelope", loc)?),
    };
    let results = r.results.as_ref().map(|c| program(c, "results", loc)).transpose()?;
    let path = match &r.path {
        None => None,
        Some(p) => {
            let text = p.get_ref();
            let sound = text.starts_with('/')
                && !text.contains(['#', ' ', '\\'])
                && !text.chars().any(char::is_control)
                && !text.split(['/', '?']).any(|seg| seg == "..");
            if !sound {
                return Err(loc.error(
                    p.span(),
                    format!("path {text:?} must be a path like \"/v3/objects/contacts/batch/create\""),
                ));
            }
            Some(text.clone())
        }
    };
    let csv_header = spec.and_then(|s| s.csv.as_ref()).is_some_and(|c| c.header);
    Ok(Batch {
        max_messages,
        max_bytes,
        max_wait,
        encoding,
        envelope,
        path,
        results,
        csv_header,
    })
}

fn program(code: &Spanned<String>, what: &str, loc: &Locator) -> Result<Arc<Program>, ConfigError> {
    inline_program(code, &format!("{KEY}.{what}"), loc)?;
    Program::compile(code.get_ref())
        .map(Arc::new)
        .map_err(|e| loc.error(code.span(), format!("jq: {}", e.message)))
}
