//! Batch delivery (SPEC §16): many messages in one downstream request, each
//! settled on its own.
//!
//! The worker forms a batch from the front of what it fetched ([`take`]):
//! one method, one path unless `[destination.batch] path` is set, at most
//! `max_messages` items and about `max_bytes`; a key-ordered destination's
//! fetch holds at most one message per key, so a batch does too. A batch
//! counts once against the rate and `max_in_flight`, which count requests.
//!
//! Invariants:
//! - every item of a batch is settled by the same rules as a message sent
//!   alone ([`policy::decide`]), on its own outcome: the whole answer's,
//!   or its entry in what `results` made of a 2xx;
//! - an item is never lost to a batch's trouble: a `results` program that
//!   fails retries every item (at-least-once), an item that cannot be
//!   encoded or enveloped is found by splitting and dead-lettered alone;
//! - a permanent answer without per-item results splits the batch in
//!   halves, down to single items: k bad items in a batch of B cost at most
//!   2k·⌈log₂ B⌉ extra requests;
//! - each item's status records the batch it last went in ([`BatchRef`]),
//!   durably, with its settlement.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::policy::{self, Class, Facts, StateChange, Step};
use super::settle::{apply_change, invalid_request, last_error_of, learn, release_all, unsendable, Settled};
use super::{Context, Destination};
use crate::config::{Batch, Encoding};
use crate::delivery::{self, join_url, put_header, FailureKind, Outcome, Response};
use crate::handoff::{Program, RunError};
use crate::queue::{now_ms, BatchRef, LastError, Message};

/// Longest an `envelope` or `results` program may run on one batch. It runs
/// off the async workers; one that runs away is abandoned (its thread runs
/// on, which is why the configured program, not the data, is at fault).
const PROGRAM_DEADLINE: Duration = Duration::from_secs(2);

/// The failure of an item whose batch got a 2xx the `results` program
/// could not read: its kind in the item's status.
const RESULTS_UNREADABLE: &str = "results_unreadable";

/// Why a batch left.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Flush {
    /// It reached `max_messages`.
    Size,
    /// The next message would have taken it past `max_bytes`.
    Bytes,
    /// `max_wait` passed, or nothing more was waiting.
    Time,
}

impl Flush {
    fn as_str(self) -> &'static str {
        match self {
            Flush::Size => "size",
            Flush::Bytes => "bytes",
            Flush::Time => "time",
        }
    }
}

/// Whether the buffer holds a full batch (by count or by bytes), so it
/// need not wait for more.
pub(super) fn ready_to_leave(buffer: &VecDeque<Message>, b: &Batch) -> bool {
    buffer.len() >= b.max_messages || buffer.iter().map(|m| m.body.len() as u64).sum::<u64>() >= b.max_bytes
}

/// Takes the next batch off the front of `buffer`: the first message and
/// those after it that may share its request, up to the limits. Messages
/// it skips (another method or path) keep their places.
pub(super) fn take(buffer: &mut VecDeque<Message>, b: &Batch) -> (Vec<Message>, Flush) {
    let Some(first) = buffer.pop_front() else {
        return (Vec::new(), Flush::Time);
    };
    let mut bytes = first.body.len() as u64;
    let mut items = vec![first];
    let mut flush = Flush::Time;
    let mut i = 0;
    while items.len() < b.max_messages && i < buffer.len() {
        let m = &buffer[i];
        let fits = m.method == items[0].method && (b.path.is_some() || m.path == items[0].path);
        if !fits {
            i += 1;
            continue;
        }
        // A separator byte per item, as the encodings add.
        if bytes + m.body.len() as u64 + 1 > b.max_bytes {
            flush = Flush::Bytes;
            break;
        }
        bytes += m.body.len() as u64 + 1;
        if let Some(m) = buffer.remove(i) {
            items.push(m);
        }
    }
    if items.len() >= b.max_messages {
        flush = Flush::Size;
    }
    (items, flush)
}

/// One message of a batch, rendered as it would be sent alone.
struct Item {
    msg: Message,
    id: String,
    /// This attempt's number.
    n: u32,
    body: Bytes,
}

/// What happened to one item.
struct ItemOutcome {
    outcome: Outcome,
    batch: BatchRef,
}

/// Sends a leased batch and settles each of its items; releases the
/// leases at the end, whatever happens.
pub(super) async fn attempt(ctx: &Context, d: &Destination, msgs: Vec<Message>, flush: Flush) {
    let cfg = d.config();
    let Some(b) = cfg.batch.clone() else {
        // A reload took batching away between the fetch and now: the
        // messages stay pending and go out alone.
        let done: Vec<(u64, bool)> = msgs.iter().map(|m| (m.seq, false)).collect();
        release_all(ctx, d, &done);
        return;
    };
    let m = &ctx.metrics;
    m.in_flight
        .with_label_values(&[&d.name])
        .set(d.in_flight.load(Ordering::Relaxed) as i64);
    // Every series of the batch metrics exists from the first batch on, so
    // a rate of none is 0, not absent.
    m.batch_splits.with_label_values(&[&d.name]);
    for f in [Flush::Size, Flush::Bytes, Flush::Time] {
        m.batches.with_label_values(&[&d.name, f.as_str()]);
    }
    let mut done: Vec<(u64, bool)> = Vec::with_capacity(msgs.len());
    let mut items = Vec::with_capacity(msgs.len());
    for msg in msgs {
        let id = ctx.queues.message_id(msg.seq);
        let n = msg.attempts + 1;
        // As for a message sent alone: the transform runs at every
        // attempt, from the stored original.
        let rendered = match &cfg.handoff {
            None => Ok(None),
            Some(h) => h.runner.render(&d.name, &msg.body, &id).await,
        };
        match rendered {
            Ok(r) => {
                let body = r.map_or_else(|| msg.body.clone(), |r| Bytes::from(r.body));
                items.push(Item { msg, id, n, body });
            }
            Err(e) => {
                let finished = unsendable(ctx, d, &msg, &id, n, e).await;
                done.push((msg.seq, finished));
            }
        }
    }
    if !items.is_empty() {
        m.batch_size.with_label_values(&[&d.name]).observe(items.len() as f64);
        m.batches.with_label_values(&[&d.name, flush.as_str()]).inc();
        send(ctx, d, &cfg, &b, items, &mut done).await;
    }
    release_all(ctx, d, &done);
    m.in_flight
        .with_label_values(&[&d.name])
        .set(d.in_flight.load(Ordering::Relaxed) as i64);
}

/// Sends `items` as one request, or as halves of it after a permanent
/// answer, and settles each item; records each settled seq in `done`.
async fn send(
    ctx: &Context,
    d: &Destination,
    cfg: &crate::config::Destination,
    b: &Batch,
    items: Vec<Item>,
    done: &mut Vec<(u64, bool)>,
) {
    // Depth first, first half first; the caller's rate token pays for the
    // first request, each later one waits for its own.
    let mut work: Vec<Vec<Item>> = vec![items];
    let mut paid = true;
    while let Some(group) = work.pop() {
        let parts: Vec<(&str, &[u8])> = group.iter().map(|i| (i.id.as_str(), &i.body[..])).collect();
        let body = match encode(b, &parts).await {
            Ok(body) if body.len() as u64 > b.max_bytes && group.len() > 1 => {
                // The rendered items came out larger than their originals.
                split(group, &mut work);
                continue;
            }
            Ok(body) => body,
            Err(_) if group.len() > 1 => {
                // One item spoils the envelope, or is not JSON: find it.
                ctx.metrics.batch_splits.with_label_values(&[&d.name]).inc();
                split(group, &mut work);
                continue;
            }
            Err(why) => {
                for item in group {
                    let failure = crate::handoff::Failure {
                        stage: crate::handoff::Stage::Format,
                        destination: d.name.clone(),
                        message: why.clone(),
                        violations: Vec::new(),
                    };
                    let finished = unsendable(ctx, d, &item.msg, &item.id, item.n, RunError::Failed(failure)).await;
                    done.push((item.msg.seq, finished));
                }
                continue;
            }
        };
        if !paid {
            d.limiter.acquire().await;
        }
        paid = false;
        let batch_id = format!("{:016x}", rand::random::<u64>());
        let started = Instant::now();
        let outcome = match request(cfg, b, &group, &batch_id, body) {
            Some(req) => ctx.deliver.deliver(req).await,
            None => invalid_request(),
        };
        ctx.metrics
            .delivery_duration
            .with_label_values(&[&d.name])
            .observe(started.elapsed().as_secs_f64());
        let (class, consecutive) = learn(d, &outcome, started);
        if class == Class::Permanent && group.len() > 1 {
            ctx.metrics.batch_splits.with_label_values(&[&d.name]).inc();
            tracing::info!(destination = %d.name, batch = %batch_id, size = group.len(), status = outcome.response().map(|r| r.status), "batch refused for good; splitting it to find the items at fault");
            split(group, &mut work);
            continue;
        }
        let outcomes = item_outcomes(b, &group, &outcome, &batch_id).await;
        let mut change = StateChange::None;
        let mut settled = Vec::with_capacity(group.len());
        for (item, o) in group.iter().zip(&outcomes) {
            let (s, c) = decide(ctx, d, cfg, item, o, consecutive);
            settled.push(s);
            if matches!(change, StateChange::None) {
                change = c;
            }
        }
        // The batch's outcomes are recorded together: one command, one
        // commit, one answer.
        let records = settled.iter().map(Settled::settlement).collect();
        match ctx.queues.settle_many(&d.name, records).await {
            Ok(()) => {
                for s in settled {
                    let seq = s.msg.seq;
                    done.push((seq, s.follow(ctx, d).await));
                }
            }
            Err(e) => {
                // Pending still (or some of them recorded): delivered
                // again (at-least-once). The leases are kept a while, as
                // for a message sent alone.
                tracing::error!(destination = %d.name, batch = %batch_id, error = %e, "recording a batch's outcomes failed; its items will be retried");
                tokio::time::sleep(Duration::from_secs(1)).await;
                done.extend(settled.iter().map(|s| (s.msg.seq, false)));
            }
        }
        apply_change(ctx, d, change, consecutive).await;
    }
}

fn split(mut group: Vec<Item>, work: &mut Vec<Vec<Item>>) {
    let second = group.split_off(group.len() / 2);
    // Popped last-in first: the first half goes first.
    work.push(second);
    work.push(group);
}

/// The request body for `items` (each its message id and rendered body):
/// see [`Encoding`]. Errors name the item at fault when there is one.
/// Delivery and preview (`ops::preview`) share it, so a preview shows the
/// bytes an attempt sends.
pub async fn encode(b: &Batch, items: &[(&str, &[u8])]) -> Result<Bytes, String> {
    match b.encoding {
        Encoding::JsonArray if b.envelope.is_none() => {
            let mut out = Vec::with_capacity(items.iter().map(|(_, body)| body.len() + 1).sum::<usize>() + 2);
            out.push(b'[');
            for (n, (id, body)) in items.iter().enumerate() {
                json_item(id, body)?;
                if n > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(body);
            }
            out.push(b']');
            Ok(Bytes::from(out))
        }
        Encoding::JsonArray => {
            let values = items
                .iter()
                .map(|(id, body)| serde_json::from_slice::<Value>(body).map_err(|e| not_json(id, &e)))
                .collect::<Result<Vec<Value>, String>>()?;
            let Some(envelope) = b.envelope.clone() else {
                return Err("no envelope".to_string());
            };
            let out = run(envelope, Value::Array(values)).await?;
            let Some(out) = out else {
                return Err("the envelope program yielded nothing".to_string());
            };
            serde_json::to_vec(&out).map(Bytes::from).map_err(|e| e.to_string())
        }
        Encoding::Ndjson => {
            let mut out = Vec::new();
            for (id, body) in items {
                json_item(id, body)?;
                if body.contains(&b'\n') {
                    // Pretty-printed: one line per item is the format.
                    let v: Value = serde_json::from_slice(body).map_err(|e| not_json(id, &e))?;
                    serde_json::to_writer(&mut out, &v).map_err(|e| e.to_string())?;
                } else {
                    out.extend_from_slice(body);
                }
                out.push(b'\n');
            }
            Ok(Bytes::from(out))
        }
        Encoding::Csv => {
            let mut out = Vec::new();
            for (n, (_, body)) in items.iter().enumerate() {
                let mut rows: &[u8] = body;
                if n > 0 && b.csv_header {
                    // Every item carries the header; the batch keeps one.
                    rows = match rows.iter().position(|c| *c == b'\n') {
                        Some(end) => &rows[end + 1..],
                        None => &[],
                    };
                }
                out.extend_from_slice(rows);
                if !rows.is_empty() && !rows.ends_with(b"\n") {
                    out.extend_from_slice(b"\r\n");
                }
            }
            Ok(Bytes::from(out))
        }
    }
}

/// The `Content-Type` of a batch request.
pub fn content_type(encoding: Encoding) -> &'static str {
    match encoding {
        Encoding::JsonArray => "application/json",
        Encoding::Ndjson => "application/x-ndjson",
        Encoding::Csv => "text/csv; charset=utf-8",
    }
}

fn json_item(id: &str, body: &[u8]) -> Result<(), String> {
    serde_json::from_slice::<serde::de::IgnoredAny>(body)
        .map(|_| ())
        .map_err(|e| not_json(id, &e))
}

fn not_json(id: &str, e: &serde_json::Error) -> String {
    format!("message {id} is not JSON and cannot go in a JSON batch: {e}")
}

/// Runs an operator's program off the async workers, within
/// [`PROGRAM_DEADLINE`].
async fn run(program: std::sync::Arc<Program>, input: Value) -> Result<Option<Value>, String> {
    let task = tokio::task::spawn_blocking(move || program.first(&input));
    match tokio::time::timeout(PROGRAM_DEADLINE, task).await {
        Ok(Ok(out)) => out,
        Ok(Err(_)) => Err("the program panicked".to_string()),
        Err(_) => Err(format!(
            "the program ran past {} s and was abandoned",
            PROGRAM_DEADLINE.as_secs()
        )),
    }
}

/// The downstream request for a batch. Headers are the destination's (not
/// the producers'), and say which batch this is; the `Idempotency-Key` is a
/// digest of the items' ids, so the same items sent again carry the same
/// key.
fn request(
    cfg: &crate::config::Destination,
    b: &Batch,
    items: &[Item],
    batch_id: &str,
    body: Bytes,
) -> Option<delivery::Request> {
    let first = &items.first()?.msg;
    let url = join_url(&cfg.url, b.path.as_deref().unwrap_or(&first.path))?;
    let method = http::Method::from_bytes(first.method.as_bytes()).ok()?;
    let mut headers = http::HeaderMap::new();
    delivery::put_configured_headers(cfg, &mut headers);
    put_header(&mut headers, "content-type", content_type(b.encoding));
    let mut digest = Sha256::new();
    for item in items {
        digest.update(item.id.as_bytes());
        digest.update(b",");
    }
    let key = digest.finalize();
    let key: String = key[..16].iter().map(|b| format!("{b:02x}")).collect();
    put_header(&mut headers, "idempotency-key", &key);
    put_header(&mut headers, "x-tidegate-batch-id", batch_id);
    put_header(&mut headers, "x-tidegate-batch-size", &items.len().to_string());
    Some(delivery::Request {
        method,
        url,
        headers,
        body,
        timeout: cfg.timeout,
        trust: cfg.ca_file.clone(),
    })
}

/// Each item's outcome of one request (SPEC §16): the whole answer's, or,
/// for a 2xx with `results`, its own entry.
async fn item_outcomes(b: &Batch, items: &[Item], outcome: &Outcome, batch_id: &str) -> Vec<ItemOutcome> {
    let status = outcome.response().map(|r| r.status);
    let size = items.len() as u32;
    let at = |position: usize, outcome: Outcome| {
        let label = match &outcome {
            Outcome::Delivered(_) => "delivered".to_string(),
            other => other.label().to_string(),
        };
        ItemOutcome {
            outcome,
            batch: BatchRef {
                id: batch_id.to_string(),
                size,
                position: position as u32,
                status,
                outcome: label,
            },
        }
    };
    let per_item = match (outcome, &b.results) {
        (Outcome::Delivered(resp), Some(program)) => Some(read_results(program, resp, items.len()).await),
        _ => None,
    };
    match per_item {
        None => (0..items.len()).map(|i| at(i, outcome.clone())).collect(),
        Some(Ok(entries)) => entries.into_iter().enumerate().map(|(i, o)| at(i, o)).collect(),
        Some(Err(why)) => {
            // The answer was a success, but says nothing readable about
            // each item: every item is retried (at-least-once).
            let response = outcome.response().cloned().map(|mut r| {
                r.body = Bytes::from(format!("{RESULTS_UNREADABLE}: {why}"));
                r
            });
            (0..items.len())
                .map(|i| {
                    let mut o = at(
                        i,
                        Outcome::Transient {
                            kind: FailureKind::Http5xx,
                            response: response.clone(),
                            detail: format!("{RESULTS_UNREADABLE}: {why}"),
                        },
                    );
                    o.batch.outcome = RESULTS_UNREADABLE.to_string();
                    o
                })
                .collect()
        }
    }
}

/// Reads one outcome per item out of a 2xx answer with the `results`
/// program: a status number, or `{status, error}`.
async fn read_results(
    program: &std::sync::Arc<Program>,
    resp: &Response,
    count: usize,
) -> Result<Vec<Outcome>, String> {
    let answer: Value = serde_json::from_slice(&resp.body).map_err(|e| format!("the answer is not JSON: {e}"))?;
    let out = run(program.clone(), answer).await?;
    let Some(Value::Array(entries)) = out else {
        return Err("results did not yield an array".to_string());
    };
    if entries.len() != count {
        return Err(format!("results yielded {} entries for {count} items", entries.len()));
    }
    entries
        .into_iter()
        .enumerate()
        .map(|(i, entry)| {
            let (status, error) = match &entry {
                Value::Number(n) => (n.as_u64(), None),
                Value::Object(o) => (
                    o.get("status").and_then(Value::as_u64),
                    o.get("error").map(|e| match e {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    }),
                ),
                _ => (None, None),
            };
            let status = status
                .and_then(|s| u16::try_from(s).ok())
                .filter(|s| (100..=599).contains(s))
                .ok_or_else(|| format!("entry {i} is not a status or {{status, error}}: {entry}"))?;
            // What a producer waiting on the item (`Prefer: wait`) is
            // answered: its error, or its own entry.
            let (body, content_type) = match error {
                Some(e) => (Bytes::from(e), Some("text/plain; charset=utf-8".to_string())),
                None => (Bytes::from(entry.to_string()), Some("application/json".to_string())),
            };
            Ok(Outcome::from_response(Response {
                status,
                content_type,
                body,
                retry_after: resp.retry_after,
                quota_pause: None,
            }))
        })
        .collect()
}

/// Decides what follows one item's outcome, by the rules of a message sent
/// alone (and counts the attempt); the state change it asks for.
fn decide<'a>(
    ctx: &Context,
    d: &Destination,
    cfg: &crate::config::Destination,
    item: &'a Item,
    o: &'a ItemOutcome,
    consecutive: u32,
) -> (Settled<'a>, StateChange) {
    let m = &ctx.metrics;
    m.attempts.with_label_values(&[&d.name, o.outcome.label()]).inc();
    let class = match &o.outcome {
        Outcome::Delivered(_) => Class::Delivered,
        Outcome::Transient { .. } => Class::Transient,
        Outcome::Permanent { .. } => {
            m.permanent_failures.with_label_values(&[&d.name]).inc();
            Class::Permanent
        }
    };
    let age = Duration::from_millis((now_ms() - item.msg.received_at).max(0) as u64);
    let retry_after = o.outcome.response().and_then(|r| r.retry_after);
    let facts = Facts {
        mode: cfg.on_failure,
        class,
        attempts: item.n,
        age,
        retry: &cfg.retry,
        consecutive_transient: consecutive,
        retry_after,
        jitter_draw: rand::random::<f64>(),
    };
    let (step, change): (Step, StateChange) = policy::decide(&facts);
    // The batch is recorded with the item, delivered or not.
    let last_error = match last_error_of(&o.outcome) {
        Some(e) => LastError {
            // An answer the `results` program could not read is its own
            // kind of failure (SPEC §16), whatever it counts as.
            kind: if o.batch.outcome == RESULTS_UNREADABLE {
                RESULTS_UNREADABLE.to_string()
            } else {
                e.kind
            },
            batch: Some(o.batch.clone()),
            ..e
        },
        None => LastError {
            status: o.outcome.response().map(|r| r.status),
            batch: Some(o.batch.clone()),
            ..Default::default()
        },
    };
    let settled = Settled::decide(d, &item.msg, &item.id, item.n, step, Some(last_error), &o.outcome, age);
    (settled, change)
}
