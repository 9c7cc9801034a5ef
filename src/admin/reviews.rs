//! The review station's admin API (SPEC §10): review items and decisions,
//! feedback, quality and the corrections export. Thin: every rule lives in
//! `crate::review`; this module turns requests into its calls and its
//! errors into problem+json.

use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{page_size, ApiPath, ApiQuery, Who};
use crate::config::HumanDuration;
use crate::ops::{internal, review_problem as problem, Ops};
use crate::problem::Problem;
use crate::queue::review::Verdict;
use crate::review::{DecisionRequest, FeedbackRequest};

/// Most of an oversized body read and thrown away before answering 413, so
/// that the client, still sending, reads the answer instead of a reset.
const DRAIN_LIMIT: usize = 64 << 20;

/// A JSON request body, read up to the ingress body limit (a correction is
/// a producer body) plus room for the decision around it.
async fn json_body<T: serde::de::DeserializeOwned>(a: &Ops, body: axum::body::Body) -> Result<T, Problem> {
    use futures_util::StreamExt as _;
    let limit = a.config().ingress.max_body;
    let cap = (limit + 64 * 1024) as usize;
    let mut stream = body.into_data_stream();
    let mut bytes = Vec::new();
    let mut seen = 0usize;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| Problem::invalid_request(format!("the body could not be read: {e}")))?;
        seen += chunk.len();
        if seen > cap {
            if seen > DRAIN_LIMIT {
                break;
            }
            continue;
        }
        bytes.extend_from_slice(&chunk);
    }
    if seen > cap {
        return Err(Problem::payload_too_large(limit));
    }
    serde_json::from_slice(&bytes)
        .map_err(|e| Problem::invalid_request(format!("the body is not the JSON expected: {e}")))
}

fn after_seq(a: &Ops, after: Option<&str>) -> Result<u64, Problem> {
    match after {
        None => Ok(0),
        Some(id) => a
            .seq_of(id)?
            .ok_or_else(|| Problem::not_found(format!("after={id:?} names no message of this instance"))),
    }
}

fn known(a: &Ops, dest: &Option<String>) -> Result<(), Problem> {
    if let Some(d) = dest {
        if a.dispatcher.destination(d).is_none() {
            return Err(Problem::unknown_destination(d));
        }
    }
    Ok(())
}

fn duration(what: &str, text: &str) -> Result<std::time::Duration, Problem> {
    text.parse::<HumanDuration>()
        .map(|d| d.0)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| Problem::invalid_request(format!("{what}={text:?} is not a duration like \"24h\" or \"7d\"")))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ListQuery {
    destination: Option<String>,
    category: Option<String>,
    limit: Option<String>,
    after: Option<String>,
}

pub(super) async fn list(State(a): State<Ops>, ApiQuery(q): ApiQuery<ListQuery>) -> Result<Json<Value>, Problem> {
    known(&a, &q.destination)?;
    let limit = page_size(q.limit.as_deref())?;
    let after = after_seq(&a, q.after.as_deref())?;
    let mut items = a
        .station
        .list(q.destination, q.category, after, limit + 1)
        .await
        .map_err(problem)?;
    let more = items.len() > limit;
    items.truncate(limit);
    let next = if more {
        items.last().map(|i| i["id"].clone())
    } else {
        None
    };
    Ok(Json(json!({ "items": items, "next": next })))
}

async fn decide(
    a: Ops,
    who: Who,
    id: String,
    verdict: Verdict,
    body: axum::body::Body,
) -> Result<Json<Value>, Problem> {
    let seq = a
        .seq_of(&id)?
        .ok_or_else(|| Problem::not_found(format!("no message {id:?}")))?;
    let req: DecisionRequest = json_body(&a, body).await?;
    a.decide(&who.0, seq, verdict, req)
        .await
        .map(Json)
        .map_err(Problem::from)
}

pub(super) async fn approve(
    State(a): State<Ops>,
    who: Who,
    ApiPath(id): ApiPath<String>,
    body: axum::body::Body,
) -> Result<Json<Value>, Problem> {
    decide(a, who, id, Verdict::Approve, body).await
}

pub(super) async fn edit(
    State(a): State<Ops>,
    who: Who,
    ApiPath(id): ApiPath<String>,
    body: axum::body::Body,
) -> Result<Json<Value>, Problem> {
    decide(a, who, id, Verdict::Edit, body).await
}

pub(super) async fn reject(
    State(a): State<Ops>,
    who: Who,
    ApiPath(id): ApiPath<String>,
    body: axum::body::Body,
) -> Result<Json<Value>, Problem> {
    decide(a, who, id, Verdict::Reject, body).await
}

pub(super) async fn feedback(
    State(a): State<Ops>,
    Who(who): Who,
    ApiPath(id): ApiPath<String>,
    body: axum::body::Body,
) -> Result<Json<Value>, Problem> {
    let seq = a
        .seq_of(&id)?
        .ok_or_else(|| Problem::not_found(format!("no message {id:?}")))?;
    let req: FeedbackRequest = json_body(&a, body).await?;
    a.feedback(&who, seq, req).await.map(Json).map_err(Problem::from)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct QualityQuery {
    destination: Option<String>,
    window: Option<String>,
    /// `reviewer`: one row per reviewer, with their agreement.
    by: Option<String>,
}

pub(super) async fn quality(State(a): State<Ops>, ApiQuery(q): ApiQuery<QualityQuery>) -> Result<Json<Value>, Problem> {
    known(&a, &q.destination)?;
    let text = q.window.as_deref().unwrap_or("7d");
    let window = duration("window", text)?;
    match q.by.as_deref() {
        None | Some("category") => {}
        Some("reviewer") => {
            let (rows, agreement) = a
                .station
                .quality_by_reviewer(q.destination, window)
                .await
                .map_err(problem)?;
            return Ok(Json(
                json!({ "window": text, "by": "reviewer", "reviewers": rows, "agreement": agreement }),
            ));
        }
        Some(other) => {
            return Err(Problem::invalid_request(format!(
                "by={other:?}: \"category\" (the default) or \"reviewer\""
            )))
        }
    }
    let rows = a.station.quality(q.destination, window).await.map_err(problem)?;
    Ok(Json(json!({ "window": text, "categories": rows })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CorrectionsQuery {
    destination: Option<String>,
    since: Option<String>,
    format: Option<String>,
}

/// Every edit and override since `since` (default 30d), as JSON Lines or
/// CSV: the training data. Read in pages, written as one body.
pub(super) async fn corrections(
    State(a): State<Ops>,
    ApiQuery(q): ApiQuery<CorrectionsQuery>,
) -> Result<Response, Problem> {
    known(&a, &q.destination)?;
    let since = duration("since", q.since.as_deref().unwrap_or("30d"))?;
    let csv = match q.format.as_deref() {
        None | Some("jsonl") => false,
        Some("csv") => true,
        Some(other) => {
            return Err(Problem::invalid_request(format!(
                "format={other:?}: \"jsonl\" or \"csv\""
            )))
        }
    };
    let since = crate::queue::now_ms() - since.as_millis().min(i64::MAX as u128) as i64;
    let mut rows = Vec::new();
    let mut after = 0;
    loop {
        let page = a
            .station
            .corrections(q.destination.clone(), since, after, 1000)
            .await
            .map_err(problem)?;
        let n = page.len();
        if let Some(last) = page.last() {
            after = last["id"]
                .as_str()
                .and_then(|id| a.queues.parse_id(id))
                .unwrap_or(u64::MAX);
        }
        rows.extend(page);
        if n < 1000 {
            break;
        }
    }
    let (body, content_type) = if csv {
        (
            crate::review::corrections_csv(&rows).map_err(internal)?,
            "text/csv; charset=utf-8",
        )
    } else {
        let mut out = Vec::new();
        for r in &rows {
            out.extend_from_slice(r.to_string().as_bytes());
            out.push(b'\n');
        }
        (out, "application/jsonl")
    };
    let mut resp = body.into_response();
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    Ok(resp)
}
