//! Ingress: the producer-facing listener (SPEC §3). A request passes
//! through small stages, each of which can refuse it with a problem+json
//! answer and store nothing: shutdown → browser checks → auth →
//! destination → method → path → halted → body size → headers → handoff
//! (parse, schema, route, category, hold) → queue append (with
//! backpressure). Only a durable append yields a 2xx; there is no third
//! case.

mod headers;

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::Request;
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::config::{self, WhenFull};
use crate::dispatch::{self, Dispatcher};
use crate::handoff;
use crate::listener::body::BodyError;
use crate::metrics::Metrics;
use crate::problem::Problem;
use crate::queue::{self, Appended, Limits, NewMessage, QueueError};

pub use headers::{forwardable, prefer_wait};

/// Longest `Prefer: wait` honoured.
pub const MAX_WAIT: Duration = Duration::from_secs(60);

/// What the ingress handler needs; cheap to clone.
#[derive(Clone)]
pub struct Ingress {
    pub queues: queue::Queues,
    pub dispatcher: Arc<Dispatcher>,
    pub metrics: Metrics,
    /// `max_body`, the producer token and `history_retention` come from here.
    pub live: crate::config::Live,
    pub shutting_down: Arc<AtomicBool>,
}

/// The ingress listener's service: every request goes to [`handle`]. A
/// plain service, not an axum `Router`: ingress has one handler, and the
/// router's dispatch and boxed future per request cost about 6% of its
/// throughput (HTTP alone, 256 connections).
pub fn service(
    state: Ingress,
) -> impl tower::Service<Request, Response = Response, Error = Infallible, Future = impl Send> + Clone + Send + 'static
{
    // Counter handles resolved once: a label lookup per request is a hash
    // and a lock on the hot path. One per destination and each sender that
    // may send to it, so those series also exist from the start.
    let cfg = crate::config::current(&state.live);
    let mut senders: Vec<(&str, Option<&[String]>)> = cfg
        .ingress
        .producers
        .iter()
        .map(|p| (p.name.as_str(), p.destinations.as_deref()))
        .collect();
    if cfg.ingress.auth_token.is_some() {
        senders.push((crate::auth::SHARED, None));
    }
    if senders.is_empty() {
        senders.push((crate::auth::ANONYMOUS, None));
    }
    let mut received: Counters = HashMap::new();
    for d in state.dispatcher.destinations() {
        for (producer, allowed) in &senders {
            if allowed.is_none_or(|list| list.contains(&d.name)) {
                received.entry(d.name.clone()).or_default().insert(
                    producer.to_string(),
                    state.metrics.received.with_label_values(&[d.name.as_str(), producer]),
                );
            }
        }
    }
    let shared = Arc::new(Shared { ing: state, received });
    tower::service_fn(move |req: Request| {
        let shared = shared.clone();
        async move { Ok(handle(shared, req).await) }
    })
}

/// `messages_received_total` handles by destination, then producer.
type Counters = HashMap<String, HashMap<String, prometheus::IntCounter>>;

struct Shared {
    ing: Ingress,
    received: Counters,
}

const ALLOW: &str = "POST, PUT, PATCH, DELETE";

async fn handle(shared: Arc<Shared>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let mut body = Some(body);
    match accept(&shared, &parts, &mut body).await {
        Ok(r) => r,
        Err(p) => {
            // Refused before its body was read: read it first, so the
            // producer reads this answer rather than a reset.
            if let Some(unread) = body.take() {
                crate::listener::body::linger(unread, &parts.headers).await;
            }
            p.into_response()
        }
    }
}

fn reject(ing: &Ingress, dest: &str, reason: &str, p: Problem) -> Problem {
    ing.metrics.rejected.with_label_values(&[dest, reason]).inc();
    p
}

/// A halted destination refuses new messages unless it is configured to
/// accept them while halted: the one addressed, and a route's target.
fn refuse_if_halted(ing: &Ingress, dest: &dispatch::Destination, cfg: &config::Destination) -> Result<(), Problem> {
    if dest.current_state() == dispatch::State::Halted && !cfg.accept_while_halted {
        return Err(reject(
            ing,
            &dest.name,
            "destination_halted",
            Problem::destination_halted(&dest.name),
        ));
    }
    Ok(())
}

/// Takes one producer request: who sent it and where to, its body, the
/// handoff, then the append (or a duplicate's earlier answer) and the reply.
async fn accept(shared: &Shared, parts: &Parts, body: &mut Option<Body>) -> Result<Response, Problem> {
    let ing = &shared.ing;
    let started = Instant::now();
    if ing.shutting_down.load(Ordering::Relaxed) {
        return Err(Problem::shutting_down());
    }
    let live = crate::config::current(&ing.live);
    crate::auth::check_browser(&live.ingress.browser, &parts.headers)?;
    let sender = crate::auth::sender(&parts.headers, &live.ingress)?;
    let raw_path = parts.uri.path();
    // The `Location` a 202 gave: a producer reads its own message's status
    // where it was told to, with its own token (SPEC §17).
    if let (Some(id), &Method::GET | &Method::HEAD) = (raw_path.strip_prefix("/v1/messages/"), &parts.method) {
        return own_message(ing, &sender, id).await;
    }
    let (dest, cfg, rest) = addressed(ing, parts, &sender)?;
    let body = read_body(ing, &dest.name, parts, body, &live).await?;
    let idempotency_key = match parts.headers.get(&headers::IDEMPOTENCY_KEY) {
        None => None,
        Some(v) => Some(idempotency_key(v.as_bytes())?),
    };
    let wait = prefer_wait(&parts.headers);
    let path_and_query = match parts.uri.query() {
        Some(q) => format!("{rest}?{q}"),
        None => rest.to_string(),
    };
    if cfg.handoff.is_none() {
        json_item(ing, &dest.name, &cfg, &parts.headers, &body)?;
    }
    let handed = match &cfg.handoff {
        None => Handed {
            dest,
            cfg,
            category: None,
            routed_from: None,
            key: None,
            hold: None,
        },
        Some(h) => {
            let admitted = handoff(ing, &dest.name, h, &parts.headers, &body).await?;
            Handed::from_admitted(ing, dest, cfg, admitted)?
        }
    };
    let Handed {
        dest,
        cfg,
        category,
        routed_from,
        key,
        hold,
    } = handed;
    let name = dest.name.as_str();
    let order_key = ordering_key(ing, name, &cfg, &parts.headers, key)?;
    let review = crate::review::intent(&cfg, hold, category.as_deref().unwrap_or(handoff::UNCATEGORISED));
    let msg = NewMessage {
        dest: name.to_string(),
        method: parts.method.as_str().to_string(),
        path: path_and_query,
        headers: forwardable(&parts.headers),
        body,
        idempotency_key,
        wants_reply: wait.is_some(),
        received_at: queue::now_ms(),
        producer: sender.recorded(),
        category,
        routed_from,
        order_key,
        review,
    };
    let window = live.storage.history_retention;
    let appended = append_with_backpressure(ing, &dest, &cfg, msg, window).await?;
    ing.metrics.ingest_duration.observe(started.elapsed().as_secs_f64());
    let (seq, held) = match appended {
        Appended::Stored { seq, held } => {
            if let Some(why) = held {
                ing.metrics.held.with_label_values(&[name, why]).inc();
            }
            match shared.received.get(name).and_then(|by| by.get(sender.name)) {
                Some(c) => c.inc(),
                // A destination or producer added by a reload.
                None => ing.metrics.received.with_label_values(&[name, sender.name]).inc(),
            }
            (seq, held.is_some())
        }
        Appended::Duplicate { seq } => return Ok(duplicate_answer(ing, &dest, seq).await),
        Appended::KeyReused { seq } => {
            let first = ing.queues.message_id(seq);
            return Err(reject(
                ing,
                name,
                "idempotency_key_reused",
                Problem::idempotency_key_reused(&first),
            ));
        }
        Appended::QueueFull => unreachable!("handled by append_with_backpressure"),
    };
    let id = ing.queues.message_id(seq);
    // A held message has no outcome to wait for until somebody decides.
    if let Some(wait) = wait.filter(|_| !held) {
        if let Some(done) = ing.dispatcher.completions().wait(seq, wait).await {
            return Ok(completed_response(done, wait));
        }
    }
    // Ids and destination names need no JSON escaping.
    let status = if held { "held" } else { "queued" };
    let mut body = String::with_capacity(64 + name.len());
    for part in [
        r#"{"id":""#,
        &id,
        r#"","destination":""#,
        name,
        r#"","status":""#,
        status,
        r#""}"#,
    ] {
        body.push_str(part);
    }
    Ok(json_response(StatusCode::ACCEPTED, body, &id))
}

/// The destination a request addresses and the rest of its path, once the
/// sender may send there, it exists, takes producers' messages and this
/// method, and is not halted.
fn addressed<'p>(
    ing: &Ingress,
    parts: &'p Parts,
    sender: &crate::auth::Sender<'_>,
) -> Result<(Arc<dispatch::Destination>, Arc<config::Destination>, &'p str), Problem> {
    let (dest_name, rest) = split_destination(parts.uri.path())?;
    // Before the lookup: a producer learns nothing about destinations
    // outside its list, not even whether they exist.
    sender.may_send_to(dest_name)?;
    // Internal destinations (alerts) take no producer's messages.
    let Some(dest) = ing
        .dispatcher
        .destination(dest_name)
        .filter(|_| !config::is_internal(dest_name))
    else {
        return Err(Problem::unknown_destination(dest_name));
    };
    if !matches!(
        parts.method,
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    ) {
        return Err(Problem::method_not_allowed(ALLOW));
    }
    check_path(rest)?;
    let cfg = dest.config();
    check_query(parts.uri.query(), &cfg.url)?;
    refuse_if_halted(ing, &dest, &cfg)?;
    Ok((dest, cfg, rest))
}

/// The whole body, within `ingress.max_body` and `body_timeout`. Refused
/// on a `Content-Length` over the limit before it is taken, so that it is
/// left for `handle` to read out (the producer then reads the 413, not a
/// reset).
async fn read_body(
    ing: &Ingress,
    name: &str,
    parts: &Parts,
    body: &mut Option<Body>,
    live: &config::Config,
) -> Result<bytes::Bytes, Problem> {
    let max_body = live.ingress.max_body;
    let too_large = || reject(ing, name, "payload_too_large", Problem::payload_too_large(max_body));
    if let Some(len) = parts.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()) {
        if len.parse::<u64>().map_or(true, |n| n > max_body) {
            return Err(too_large());
        }
    }
    let timeout = live.ingress.connections.body_timeout;
    match crate::listener::body::read(body.take().unwrap_or_default(), max_body as usize, timeout).await {
        Ok(b) => Ok(b),
        Err(BodyError::TooLarge) => Err(too_large()),
        Err(BodyError::TimedOut) => Err(reject(ing, name, "body_timeout", Problem::body_timeout(timeout))),
        Err(BodyError::Broken(e)) => Err(Problem::invalid_request(format!("the body could not be read: {e}"))),
    }
}

/// What the handoff made of a message: the destination that owns it from
/// here on (a route may move it to another, whose queue, limits and state
/// then apply), its category, route, ordering key and hold.
struct Handed {
    dest: Arc<dispatch::Destination>,
    cfg: Arc<config::Destination>,
    category: Option<String>,
    routed_from: Option<(String, u32)>,
    key: Option<String>,
    hold: Option<handoff::Hold>,
}

impl Handed {
    fn from_admitted(
        ing: &Ingress,
        dest: Arc<dispatch::Destination>,
        cfg: Arc<config::Destination>,
        admitted: handoff::Admitted,
    ) -> Result<Handed, Problem> {
        let Some((from, rule)) = admitted.routed_from else {
            return Ok(Handed {
                dest,
                cfg,
                category: Some(admitted.category),
                routed_from: None,
                key: admitted.key,
                hold: admitted.hold,
            });
        };
        let Some(target) = ing.dispatcher.destination(&admitted.destination) else {
            // Config validation guarantees the target exists.
            return Err(Problem::internal());
        };
        ing.metrics.routed.with_label_values(&[&from, &target.name]).inc();
        let target_cfg = target.config();
        refuse_if_halted(ing, &target, &target_cfg)?;
        Ok(Handed {
            dest: target,
            cfg: target_cfg,
            category: Some(admitted.category),
            routed_from: Some((from, rule as u32)),
            key: admitted.key,
            hold: admitted.hold,
        })
    }
}

/// A repeated idempotency key's answer: 200 with the first message's id
/// and its state now.
async fn duplicate_answer(ing: &Ingress, dest: &dispatch::Destination, seq: u64) -> Response {
    let id = ing.queues.message_id(seq);
    let status = match ing.queues.status(seq).await {
        Ok(Some(s)) => s.state.with_in_flight(dest.is_in_flight(seq)).as_str(),
        _ => "queued",
    };
    let body = serde_json::json!({"id": id, "destination": dest.name, "status": status, "duplicate": true});
    json_response(StatusCode::OK, body.to_string(), &id)
}

/// Longest ordering key taken, in bytes.
const MAX_ORDERING_KEY: usize = 1024;

/// The ordering key of a message for `cfg` (the destination that owns it),
/// when it orders by key: from the header it names, or what its key
/// program made of the body (`from_body`). A key-ordered destination
/// refuses a message without one: where it would go in order is unknown.
fn ordering_key(
    ing: &Ingress,
    name: &str,
    cfg: &config::Destination,
    headers: &http::HeaderMap,
    from_body: Option<String>,
) -> Result<Option<String>, Problem> {
    let refuse = |detail: String| {
        Err(reject(
            ing,
            name,
            "invalid_ordering_key",
            Problem::invalid_ordering_key(detail),
        ))
    };
    let key = match &cfg.queue.key {
        None => return Ok(None),
        Some(config::OrderingKey::Header(h)) => match headers.get(h).map(|v| v.to_str()) {
            None => {
                return refuse(format!(
                    "destination {name:?} orders by key: the request needs a {h} header"
                ))
            }
            Some(Err(_)) => return refuse(format!("the {h} header is not visible ASCII")),
            Some(Ok(v)) => v.to_string(),
        },
        Some(config::OrderingKey::Program(p)) => match from_body {
            None => {
                return refuse(format!(
                    "destination {name:?} orders by key: its key {p:?} found nothing (or null) in the body"
                ))
            }
            Some(k) => k,
        },
    };
    if key.is_empty() || key.len() > MAX_ORDERING_KEY {
        return refuse(format!(
            "an ordering key must be 1 to {MAX_ORDERING_KEY} bytes; this one is {}",
            key.len()
        ));
    }
    Ok(Some(key))
}

/// A batching destination that sends JSON (`json_array`, `ndjson`) and
/// has no handoff to read its bodies takes only JSON: a body that is not
/// is refused here (415), never found at delivery (SPEC §16).
fn json_item(
    ing: &Ingress,
    name: &str,
    cfg: &config::Destination,
    headers: &http::HeaderMap,
    body: &[u8],
) -> Result<(), Problem> {
    if !cfg.batch.as_ref().is_some_and(|b| b.encoding.needs_json()) {
        return Ok(());
    }
    let content_type = headers.get(header::CONTENT_TYPE).map(|v| v.to_str().unwrap_or("?"));
    let why = match content_type {
        Some(ct) if !handoff::is_json(ct) => {
            format!("destination {name:?} batches JSON (application/json), not {ct:?}")
        }
        _ => match serde_json::from_slice::<serde::de::IgnoredAny>(body) {
            Ok(_) => return Ok(()),
            Err(e) => format!("destination {name:?} batches JSON items; the body is not JSON: {e}"),
        },
    };
    Err(reject(
        ing,
        name,
        "unsupported_media_type",
        Problem::unsupported_media_type(why),
    ))
}

/// Runs the addressed destination's handoff on a body (in the sandbox):
/// content type, parse, schema, routes, category, transform and format.
/// Any failure refuses the request, and nothing is stored.
async fn handoff(
    ing: &Ingress,
    name: &str,
    h: &config::Handoff,
    headers: &http::HeaderMap,
    body: &[u8],
) -> Result<handoff::Admitted, Problem> {
    let content_type = headers.get(header::CONTENT_TYPE).map(|v| v.to_str().unwrap_or("?"));
    if let Some(ct) = content_type {
        if !handoff::is_json(ct) {
            ing.metrics.handoff_failures.with_label_values(&[name, "parse"]).inc();
            return Err(reject(
                ing,
                name,
                "unsupported_media_type",
                Problem::unsupported_media_type(format!(
                    "destination {name:?} takes JSON (application/json), not {ct:?}"
                )),
            ));
        }
    }
    match h.runner.admit(name, body).await {
        Ok(a) => Ok(a),
        Err(handoff::RunError::Failed(f)) => {
            ing.metrics
                .handoff_failures
                .with_label_values(&[&f.destination, f.stage.as_str()])
                .inc();
            let (reason, problem) = match f.stage {
                handoff::Stage::Parse => ("unsupported_media_type", Problem::unsupported_media_type(f.message)),
                handoff::Stage::Schema => (
                    "schema_violation",
                    Problem::schema_violation(format!("{}: {}", f.destination, f.message), &f.violations),
                ),
                handoff::Stage::Category => (
                    "invalid_category",
                    Problem::invalid_category(format!("{}: {}", f.destination, f.message)),
                ),
                handoff::Stage::Transform | handoff::Stage::Format => (
                    "transform_failed",
                    Problem::transform_failed(format!("{} ({}): {}", f.destination, f.stage.as_str(), f.message)),
                ),
            };
            Err(reject(ing, name, reason, problem))
        }
        Err(e @ handoff::RunError::Unavailable(_)) => {
            tracing::error!(destination = name, error = %e, "handoff failed");
            Err(reject(ing, name, "internal_error", Problem::internal()))
        }
    }
}

/// The `Idempotency-Key` value. The IETF draft makes it a structured-field
/// string; producers mostly send the bare characters, so both are taken:
/// `"abc"` and `abc` are the same key. Either way the key is 1 to 256
/// printable ASCII characters, space included (0x20 to 0x7E); in the quoted
/// form `\"` and `\\` stand for `"` and `\`.
fn idempotency_key(raw: &[u8]) -> Result<String, Problem> {
    const RULE: &str = "Idempotency-Key must be 1 to 256 printable ASCII characters (0x20 to 0x7E), \
                        bare or as a quoted structured-field string";
    let bad = || Problem::invalid_request(RULE);
    let key: Vec<u8> = match raw {
        [b'"', inner @ .., b'"'] => {
            let mut out = Vec::with_capacity(inner.len());
            let mut it = inner.iter();
            while let Some(&c) = it.next() {
                match c {
                    b'\\' => match it.next() {
                        Some(&e @ (b'"' | b'\\')) => out.push(e),
                        _ => return Err(bad()),
                    },
                    b'"' => return Err(bad()),
                    c => out.push(c),
                }
            }
            out
        }
        _ => raw.to_vec(),
    };
    if key.is_empty() || key.len() > 256 || !key.iter().all(|c| (0x20..=0x7e).contains(c)) {
        return Err(bad());
    }
    String::from_utf8(key).map_err(|_| bad())
}

/// `/{destination}/{rest}` → (destination, "/rest" or "").
fn split_destination(path: &str) -> Result<(&str, &str), Problem> {
    let trimmed = path.strip_prefix('/').unwrap_or(path);
    let (name, rest) = match trimmed.find('/') {
        Some(i) => (&trimmed[..i], &trimmed[i..]),
        None => (trimmed, ""),
    };
    let valid = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_' || c == b'-');
    if !valid {
        return Err(Problem::invalid_request(
            "the first path segment must be a destination name ([a-z0-9][a-z0-9_-]{0,62})",
        ));
    }
    Ok((name, rest))
}

/// Refuses paths that some server downstream could read as another path
/// (SPEC §17): dot segments (`..`, `.`) and encoded slashes, which climb
/// out of the destination's base path once decoded; `;` parameters in a
/// segment (`/..;/` is `..` to some Java servers); NUL; an encoded `%`
/// (`%252e` decodes twice into a dot); and what does not decode to UTF-8.
fn check_path(rest: &str) -> Result<(), Problem> {
    for seg in rest.split('/') {
        if seg.contains(';') {
            return Err(Problem::invalid_path("a path segment must not carry ';' parameters"));
        }
        if seg.to_ascii_lowercase().contains("%25") {
            return Err(Problem::invalid_path("the path must not contain an encoded '%' (%25)"));
        }
        let decoded =
            crate::text::percent_decode(seg).ok_or_else(|| Problem::invalid_path("the path is not valid UTF-8"))?;
        if decoded.contains('\0') {
            return Err(Problem::invalid_path("the path must not contain NUL"));
        }
        if decoded == ".." || decoded == "." || decoded.contains('/') || decoded.contains('\\') {
            return Err(Problem::invalid_path(
                "the path must not contain dot segments or encoded slashes",
            ));
        }
    }
    Ok(())
}

/// Refuses a producer's query that names a parameter the destination's URL
/// already sets (its API key, its tenant): the producer's is appended after
/// it, and a downstream that reads the last one would take the producer's.
fn check_query(query: Option<&str>, url: &reqwest::Url) -> Result<(), Problem> {
    let (Some(query), Some(_)) = (query, url.query()) else {
        return Ok(());
    };
    let set: Vec<String> = url.query_pairs().map(|(k, _)| k.into_owned()).collect();
    for (name, _) in form_urlencoded::parse(query.as_bytes()) {
        if set.iter().any(|s| *s == name) {
            return Err(Problem::forbidden_query(&name));
        }
    }
    Ok(())
}

/// A message's status for the producer that sent it; any other sender
/// learns nothing, not even that it exists.
async fn own_message(ing: &Ingress, sender: &crate::auth::Sender<'_>, id: &str) -> Result<Response, Problem> {
    let not_found = || {
        Problem::not_found(format!(
            "no message {id:?} of yours (unknown, or past history_retention)"
        ))
    };
    if !queue::is_message_id(id) {
        return Err(Problem::invalid_request(format!("{id:?} is not a message id")));
    }
    let seq = ing.queues.parse_id(id).ok_or_else(not_found)?;
    let status = match ing.queues.status(seq).await {
        Ok(Some(s)) if s.producer == sender.recorded() => s,
        Ok(_) => return Err(not_found()),
        Err(e) => {
            tracing::error!(error = %e, "reading a message's status failed");
            return Err(Problem::internal());
        }
    };
    let in_flight = ing
        .dispatcher
        .destination(&status.dest)
        .is_some_and(|d| d.is_in_flight(seq));
    Ok(axum::Json(status.view(id, in_flight)).into_response())
}

fn max_body_of(ing: &Ingress) -> u64 {
    crate::config::current(&ing.live).ingress.max_body
}

/// Appends, applying the destination's `when_full` policy.
async fn append_with_backpressure(
    ing: &Ingress,
    dest: &dispatch::Destination,
    cfg: &config::Destination,
    msg: NewMessage,
    idempotency_window: Duration,
) -> Result<Appended, Problem> {
    let name = dest.name.as_str();
    let limits = Limits {
        max_messages: cfg.queue.max_messages,
        max_bytes: cfg.queue.max_bytes,
        idempotency_window_ms: idempotency_window.as_millis() as i64,
    };
    let deadline = tokio::time::Instant::now() + cfg.queue.block_timeout;
    let msg = Arc::new(msg);
    // Only a producer that found the queue full waits for room; it registers
    // for the wake-up before its next attempt, so room freed in between is
    // not missed.
    let mut room = None;
    loop {
        match ing.queues.append(msg.clone(), limits).await {
            Ok(Appended::QueueFull) => {
                if cfg.queue.when_full == WhenFull::Block && tokio::time::Instant::now() < deadline {
                    match room.take() {
                        None => {
                            let mut n = Box::pin(dest.queue.room.notified());
                            n.as_mut().enable();
                            room = Some(n);
                        }
                        Some(n) => {
                            let _ = tokio::time::timeout_at(deadline, n).await;
                        }
                    }
                    continue;
                }
                let retry_after = queue_retry_after(dest, cfg);
                return Err(reject(ing, name, "queue_full", Problem::queue_full(name, retry_after)));
            }
            Ok(a) => return Ok(a),
            Err(QueueError::StorageFull) => {
                return Err(reject(ing, name, "storage_full", Problem::storage_full()));
            }
            Err(QueueError::Closed) => return Err(Problem::shutting_down()),
            Err(e @ QueueError::TooLarge { .. }) => {
                let mut p = Problem::payload_too_large(max_body_of(ing));
                p.detail = format!("{e} (in cluster mode, the NATS servers' max_payload bounds a message)");
                return Err(reject(ing, name, "payload_too_large", p));
            }
            Err(QueueError::Unavailable(e)) => {
                tracing::warn!(destination = name, error = %e, "queue storage unavailable; refused with 503");
                let mut p = Problem::storage_unavailable();
                p.retry_after = Some(1);
                return Err(reject(ing, name, "storage_unavailable", p));
            }
            Err(e) => {
                tracing::error!(destination = name, error = %e, "journal append failed");
                return Err(reject(ing, name, "internal_error", Problem::internal()));
            }
        }
    }
}

/// Seconds until the queue is likely to have room: the excess over the
/// limit divided by the effective drain rate.
fn queue_retry_after(dest: &dispatch::Destination, cfg: &config::Destination) -> u64 {
    let depth = dest.queue.depth.load(Ordering::Relaxed);
    let bytes = dest.queue.bytes.load(Ordering::Relaxed);
    let excess_msgs = (depth + 1).saturating_sub(cfg.queue.max_messages) as f64;
    let avg = if depth > 0 { bytes as f64 / depth as f64 } else { 1.0 };
    let excess_bytes_msgs = (bytes.saturating_sub(cfg.queue.max_bytes) as f64 / avg.max(1.0)).ceil();
    let excess = excess_msgs.max(excess_bytes_msgs).max(1.0);
    let rate = dest.limiter.effective().unwrap_or(1000.0).max(0.001);
    (excess / rate).ceil().clamp(1.0, 3600.0) as u64
}

fn json_response(status: StatusCode, body: String, id: &str) -> Response {
    let mut r = (status, body).into_response();
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    let mut loc = String::with_capacity(13 + id.len());
    loc.push_str("/v1/messages/");
    loc.push_str(id);
    if let Ok(loc) = HeaderValue::try_from(loc) {
        r.headers_mut().insert(header::LOCATION, loc);
    }
    r
}

/// The answer to a producer that waited and saw the message finish.
fn completed_response(done: dispatch::Completion, wait: Duration) -> Response {
    let mut r = match &done.response {
        Some(resp) => {
            let status = StatusCode::from_u16(resp.status).unwrap_or(StatusCode::BAD_GATEWAY);
            let mut r = Response::new(Body::from(resp.body.clone()));
            *r.status_mut() = status;
            if let Some(ct) = resp.content_type.as_deref().and_then(|c| HeaderValue::from_str(c).ok()) {
                r.headers_mut().insert(header::CONTENT_TYPE, ct);
            }
            r
        }
        None => Problem::downstream_unreachable(done.detail.clone()).into_response(),
    };
    let h = r.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&format!("wait={}", wait.as_secs())) {
        h.insert("preference-applied", v);
    }
    h.insert("x-tidegate-state", HeaderValue::from_static(done.state));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destination_and_rest_are_split() {
        assert_eq!(split_destination("/crm/v1/x").unwrap(), ("crm", "/v1/x"));
        assert_eq!(split_destination("/crm").unwrap(), ("crm", ""));
        assert!(split_destination("/CRM/x").is_err());
        assert!(split_destination("/").is_err());
    }

    #[test]
    fn idempotency_keys_follow_the_rule_their_error_states() {
        assert_eq!(idempotency_key(b"order 42").unwrap(), "order 42");
        assert_eq!(idempotency_key(b"\"order-42\"").unwrap(), "order-42");
        assert_eq!(idempotency_key(b"\"a\\\"b\"").unwrap(), "a\"b");
        assert_eq!(idempotency_key(&[b'k'; 256]).unwrap().len(), 256);
        for bad in [
            &b""[..],
            b"\"\"",
            &[b'k'; 257],
            b"caf\xc3\xa9",
            b"tab\there",
            b"\"a\"b\"",
            b"\"a\\b\"",
        ] {
            let e = idempotency_key(bad).unwrap_err();
            assert!(e.detail.contains("0x20 to 0x7E"), "{bad:?}: {}", e.detail);
        }
    }

    #[test]
    fn dot_segments_and_bad_encodings_are_refused() {
        assert!(check_path("/a/b").is_ok());
        assert!(check_path("/a/../b").is_err());
        assert!(check_path("/a/%2e%2E/b").is_err());
        assert!(check_path("/a%2fb").is_err());
        assert!(check_path("/%ff").is_err());
        assert!(check_path("/caf%C3%A9").is_ok());
    }
}
