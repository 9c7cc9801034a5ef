//! `GET /v1/audit` (SPEC §18): the audit trail, filtered, as a page of
//! JSON or, with `format=jsonl`, the whole selection as JSON Lines (the
//! export). Readable by every role; recorded by `crate::ops`.

use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::ApiQuery;
use crate::ops::{internal, Ops};
use crate::problem::Problem;
use crate::queue::audit::{Entry, Filter};

/// Most acts one JSONL export carries; narrow `since` or the filters for
/// more.
const EXPORT_LIMIT: usize = 1_000_000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AuditQuery {
    /// A duration back from now (`24h`, `7d`) or an RFC 3339 time.
    since: Option<String>,
    actor: Option<String>,
    action: Option<String>,
    destination: Option<String>,
    limit: Option<String>,
    /// The `seq` of the last entry of the previous page.
    after: Option<String>,
    format: Option<String>,
}

/// The JSON view of one entry.
fn view(e: &Entry) -> Value {
    json!({
        "seq": e.seq,
        "at": crate::queue::rfc3339(e.act.at),
        "actor": e.act.actor,
        "action": e.act.action,
        "destination": e.act.destination,
        "target": e.act.target,
        "detail": e.act.detail,
    })
}

/// `since=` as ms since the epoch: a duration back from now or a time.
fn since_ms(text: Option<&str>) -> Result<i64, Problem> {
    let Some(text) = text else { return Ok(0) };
    if let Ok(d) = text.parse::<crate::config::HumanDuration>() {
        return Ok(crate::queue::now_ms() - d.0.as_millis().min(i64::MAX as u128) as i64);
    }
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
        .map_err(|_| {
            Problem::invalid_request(format!(
                "since={text:?} is neither a duration like \"24h\" nor an RFC 3339 time"
            ))
        })
}

pub(super) async fn list(State(a): State<Ops>, ApiQuery(q): ApiQuery<AuditQuery>) -> Result<Response, Problem> {
    let jsonl = match q.format.as_deref() {
        None | Some("json") => false,
        Some("jsonl") => true,
        Some(other) => {
            return Err(Problem::invalid_request(format!(
                "format={other:?}: \"json\" or \"jsonl\""
            )))
        }
    };
    let limit = super::page_size(q.limit.as_deref())?;
    let after = match q.after.as_deref() {
        None => 0,
        // An entry's seq, as JSON carries integers exactly (below 2^53).
        Some(s) => s
            .parse::<u64>()
            .ok()
            .filter(|n| *n < 1 << 53)
            .ok_or_else(|| Problem::invalid_request(format!("after={s:?} is not an entry's seq")))?,
    };
    let mut filter = Filter {
        since: since_ms(q.since.as_deref())?,
        actor: q.actor,
        action: q.action,
        destination: q.destination,
        after,
        limit: limit + 1,
        newest: false,
    };
    if !jsonl {
        let mut items = a.queues.acts(filter).await.map_err(internal)?;
        let more = items.len() > limit;
        items.truncate(limit);
        let next = if more { items.last().map(|e| e.seq) } else { None };
        let items: Vec<Value> = items.iter().map(view).collect();
        return Ok(Json(json!({ "items": items, "next": next })).into_response());
    }
    let mut out = Vec::new();
    let mut n = 0;
    filter.limit = 1000;
    loop {
        let page = a.queues.acts(filter.clone()).await.map_err(internal)?;
        for e in &page {
            out.extend_from_slice(view(e).to_string().as_bytes());
            out.push(b'\n');
        }
        n += page.len();
        match page.last() {
            Some(last) if page.len() == filter.limit && n < EXPORT_LIMIT => filter.after = last.seq,
            _ => break,
        }
    }
    let mut resp = out.into_response();
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/jsonl"));
    Ok(resp)
}
