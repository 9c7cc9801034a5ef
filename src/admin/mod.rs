//! The admin listener: probes, Prometheus exposition and the `/v1`
//! operations API. It reads dispatch and journal state and asks dispatch to
//! change it; it never touches the queue's rows itself except through the
//! journal's operations (replay, purge).
//!
//! It listens from the first moment of start-up (`during_start_up`), so
//! that probes see a live process while the journal opens, which takes
//! minutes when a large journal is salvaged.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use axum::extract::{FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::dispatch::{self, DispatchError, Dispatcher};
use crate::journal::{self, MessageStatus};
use crate::metrics::Metrics;
use crate::problem::Problem;

mod reviews;

#[derive(Clone)]
pub struct Admin {
    pub station: Arc<crate::review::Station>,
    pub console: Arc<crate::console::Console>,
    pub journal: journal::Queues,
    pub dispatcher: Arc<Dispatcher>,
    pub metrics: Metrics,
    pub reloader: Arc<crate::reload::Reloader>,
    pub shutting_down: Arc<AtomicBool>,
}

pub fn router(state: Admin) -> Router {
    let v1 = Router::new()
        .route("/v1/destinations", get(list_destinations))
        .route("/v1/destinations/{name}", get(one_destination))
        .route("/v1/destinations/{name}/pause", post(pause))
        .route("/v1/destinations/{name}/preview", post(preview))
        .route("/v1/destinations/{name}/resume", post(resume))
        .route("/v1/destinations/{name}/dead-letters", get(dead_letters).delete(purge))
        .route("/v1/destinations/{name}/dead-letters/replay", post(replay))
        .route("/v1/messages/{id}", get(message))
        .route("/v1/messages/{id}/feedback", post(reviews::feedback))
        .route("/v1/reviews", get(reviews::list))
        .route("/v1/reviews/{id}/approve", post(reviews::approve))
        .route("/v1/reviews/{id}/edit", post(reviews::edit))
        .route("/v1/reviews/{id}/reject", post(reviews::reject))
        .route("/v1/quality", get(reviews::quality))
        .route("/v1/corrections", get(reviews::corrections))
        .route("/v1/reload", post(reload))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route("/healthz", get(|| async { ALIVE }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(v1)
        .merge(crate::console::router())
        .fallback(|| async { Problem::not_found("no such admin endpoint") })
        .method_not_allowed_fallback(|| async { Problem::method_not_allowed_here() })
        .with_state(state)
}

/// axum's `Path`, refusing with problem+json like every other answer (its
/// own refusal is text/plain).
struct ApiPath<T>(T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = Problem;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(v)) => Ok(ApiPath(v)),
            Err(e) => Err(Problem::invalid_request(e.body_text())),
        }
    }
}

/// axum's `Query`, refusing with problem+json.
struct ApiQuery<T>(T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = Problem;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(v)) => Ok(ApiQuery(v)),
            Err(e) => Err(Problem::invalid_request(e.body_text())),
        }
    }
}

/// The admin router before tidegate is up: `/healthz` answers 200 (the
/// process serves), `/readyz` 503 (the queue is not open), anything else
/// 503 `starting`. Once `up` holds the full router, every request goes to it.
///
/// Every request, from the first, passes the admin listener's browser
/// checks (`crate::auth`) against the config in force.
pub fn during_start_up(up: Arc<OnceLock<Router>>, live: crate::reload::Live) -> Router {
    use tower::ServiceExt as _;
    let guard = move |req: Request, next: Next| {
        let policy = crate::reload::current(&live);
        async move {
            match policy.admin.browser.check(req.headers()) {
                Ok(()) => next.run(req).await,
                Err(p) => p.into_response(),
            }
        }
    };
    Router::new()
        .fallback(move |req: Request| {
            let up = up.clone();
            async move {
                match up.get() {
                    Some(full) => match full.clone().oneshot(req).await {
                        Ok(response) => response,
                        Err(never) => match never {},
                    },
                    None => match req.uri().path() {
                        "/healthz" => ALIVE.into_response(),
                        "/readyz" => not_ready(),
                        _ => Problem::starting().into_response(),
                    },
                }
            }
        })
        .layer(middleware::from_fn(guard))
}

async fn require_token(State(a): State<Admin>, req: Request, next: Next) -> Response {
    let live = crate::reload::current(&a.reloader.live);
    if let Some(token) = &live.admin.token {
        if !crate::auth::bearer_matches(req.headers(), token) {
            return Problem::unauthorized().into_response();
        }
    }
    next.run(req).await
}

async fn readyz(State(a): State<Admin>) -> Response {
    let open = a.journal.stats().open.load(Ordering::Relaxed);
    if open && !a.shutting_down.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        not_ready()
    }
}

/// `/healthz`'s answer, from the first moment of start-up to the last of
/// the drain.
const ALIVE: &str = "ok\n";

fn not_ready() -> Response {
    (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
}

/// Refreshes the gauges that mirror journal and dispatch state, then renders.
async fn metrics(State(a): State<Admin>) -> Response {
    let m = &a.metrics;
    let stats = a.journal.stats();
    m.journal_disk_bytes
        .set(stats.disk_bytes.load(Ordering::Relaxed) as i64);
    let fsyncs = stats.fsyncs.load(Ordering::Relaxed);
    m.journal_fsyncs.inc_by(fsyncs.saturating_sub(m.journal_fsyncs.get()));
    let corrupt = stats.corrupt_records.load(Ordering::Relaxed);
    m.journal_corrupt_records
        .inc_by(corrupt.saturating_sub(m.journal_corrupt_records.get()));
    for d in a.dispatcher.destinations() {
        let n = d.name.as_str();
        m.queue_depth
            .with_label_values(&[n])
            .set(d.queue.depth.load(Ordering::Relaxed) as i64);
        m.queue_bytes
            .with_label_values(&[n])
            .set(d.queue.bytes.load(Ordering::Relaxed) as i64);
        m.dead_letter_depth
            .with_label_values(&[n])
            .set(d.queue.dead_letters.load(Ordering::Relaxed) as i64);
        m.in_flight
            .with_label_values(&[n])
            .set(d.in_flight.load(Ordering::Relaxed) as i64);
        m.halted_keys.with_label_values(&[n]).set(d.halted_keys().len() as i64);
        m.dispatching
            .with_label_values(&[n])
            .set(i64::from(a.journal.may_dispatch(n)));
        let oldest = journal::age_seconds(a.journal.oldest_pending(n).await.ok().flatten());
        m.oldest_age.with_label_values(&[n]).set(oldest);
        match d.config().latency_objective {
            Some(o) => m.latency_objective.with_label_values(&[n]).set(o.as_secs_f64()),
            None => {
                let _ = m.latency_objective.remove_label_values(&[n]);
            }
        }
        let open_reviews = d.queue.open_reviews.load(Ordering::Relaxed);
        m.review_pending.with_label_values(&[n]).set(open_reviews as i64);
        if open_reviews > 0 || d.config().review.is_some() {
            let oldest = journal::age_seconds(a.journal.oldest_open_review(n).await.ok().flatten());
            m.review_oldest_pending.with_label_values(&[n]).set(oldest);
        }
        m.rate_limit
            .with_label_values(&[n, "configured"])
            .set(d.limiter.configured().unwrap_or(0.0));
        m.rate_limit
            .with_label_values(&[n, "effective"])
            .set(d.limiter.effective().unwrap_or(0.0));
        let state = d.current_state();
        for s in dispatch::State::ALL {
            m.destination_state
                .with_label_values(&[n, s.as_str()])
                .set((s == state) as i64);
        }
    }
    let mut r = m.render().into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    r
}

/// `objective {latency_seconds, met}`: met while the oldest message waiting
/// is younger than the objective; `null` without one.
fn objective(objective: Option<std::time::Duration>, oldest_received: Option<i64>) -> Value {
    let Some(o) = objective else { return Value::Null };
    let age = journal::age_seconds(oldest_received);
    json!({"latency_seconds": o.as_secs_f64(), "met": age <= o.as_secs_f64()})
}

/// A destination as `GET /v1/destinations/{name}` answers.
pub(crate) async fn describe(a: &Admin, d: &dispatch::Destination) -> Result<Value, Problem> {
    let mut v = describe_state(a, d).await?;
    let m = &a.metrics;
    let n = d.name.as_str();
    let failed_attempts = crate::metrics::sum_where(&m.attempts, n, |labels| {
        !labels.iter().any(|l| l.name() == "outcome" && l.value() == "success")
    });
    v["counters"] = json!({
        "received": crate::metrics::sum(&m.received, n),
        "delivered": m.delivered.with_label_values(&[n]).get(),
        "failed_attempts": failed_attempts,
        "dead_lettered": crate::metrics::sum(&m.dead_lettered, n),
        "dropped": crate::metrics::sum(&m.dropped, n),
        "rejected": crate::metrics::sum(&m.rejected, n),
    });
    Ok(v)
}

/// Everything `describe` answers but the counters summed over their
/// series (a pass over every series of each family): what the console's
/// overview refreshes every two seconds, plus `counters.delivered`, which
/// is one lookup.
pub(crate) async fn describe_state(a: &Admin, d: &dispatch::Destination) -> Result<Value, Problem> {
    let cfg = d.config();
    let info = d.state();
    let (oldest, scheduled) = a.journal.queue_detail(&d.name).await.map_err(internal)?;
    Ok(json!({
        "name": d.name,
        "url": cfg.redacted_url(),
        "owner": cfg.owner,
        "on_failure": cfg.on_failure.as_str(),
        "state": info.state.as_str(),
        "state_reason": info.reason,
        "ordering": cfg.queue.ordering.as_str(),
        "objective": objective(cfg.latency_objective, oldest),
        "halted_keys": d.halted_keys().iter().map(|k| json!({
            "key": k.key,
            "message_id": a.journal.message_id(k.seq),
            "reason": k.reason,
        })).collect::<Vec<_>>(),
        "queue": {
            "depth": d.queue.depth.load(Ordering::Relaxed),
            "bytes": d.queue.bytes.load(Ordering::Relaxed),
            "in_flight": d.in_flight.load(Ordering::Relaxed),
            "scheduled": scheduled,
            "dead_letters": d.queue.dead_letters.load(Ordering::Relaxed),
            "held": d.queue.held.load(Ordering::Relaxed),
            "reviews_pending": d.queue.open_reviews.load(Ordering::Relaxed),
            "oldest_age_seconds": journal::age_seconds(oldest),
        },
        "rate_limit": {
            "configured_per_second": d.limiter.configured(),
            "effective_per_second": d.limiter.effective(),
            "burst": cfg.rate_limit.burst,
            "max_in_flight": cfg.rate_limit.max_in_flight,
        },
        "counters": {
            "delivered": a.metrics.delivered.with_label_values(&[d.name.as_str()]).get(),
        },
    }))
}

pub(crate) fn internal(e: impl std::fmt::Display) -> Problem {
    tracing::error!(error = %e, "admin request failed");
    Problem::internal()
}

fn dispatch_error(e: DispatchError) -> Problem {
    match e {
        DispatchError::UnknownDestination(n) => Problem::unknown_destination(&n),
        e @ DispatchError::KeyNotHalted { .. } => Problem::key_not_halted(e.to_string()),
        DispatchError::Journal(e) => internal(e),
    }
}

pub(crate) fn find(a: &Admin, name: &str) -> Result<Arc<dispatch::Destination>, Problem> {
    a.dispatcher
        .destination(name)
        .ok_or_else(|| Problem::unknown_destination(name))
}

async fn list_destinations(State(a): State<Admin>) -> Result<Json<Value>, Problem> {
    let mut out = Vec::new();
    for d in a.dispatcher.destinations() {
        out.push(describe(&a, &d).await?);
    }
    Ok(Json(json!({ "destinations": out })))
}

async fn one_destination(State(a): State<Admin>, ApiPath(name): ApiPath<String>) -> Result<Json<Value>, Problem> {
    let d = find(&a, &name)?;
    Ok(Json(describe(&a, &d).await?))
}

async fn pause(State(a): State<Admin>, ApiPath(name): ApiPath<String>) -> Result<Json<Value>, Problem> {
    a.dispatcher.pause(&name).await.map_err(dispatch_error)?;
    one_destination(State(a), ApiPath(name)).await
}

/// What the handoff would do with a producer body sent to `name`; stores
/// nothing (see `handoff::preview`).
async fn preview(
    State(a): State<Admin>,
    ApiPath(name): ApiPath<String>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, Problem> {
    let entry = find(&a, &name)?.config();
    let lookup = |n: &str| a.dispatcher.destination(n).map(|d| d.config());
    match crate::handoff::preview(&entry, &body, lookup).await {
        Ok(v) => Ok(Json(v)),
        Err(e) => {
            tracing::error!(destination = %name, error = %e, "preview failed");
            Err(Problem::internal())
        }
    }
}

#[derive(Deserialize)]
struct ResumeQuery {
    #[serde(default)]
    skip_head: bool,
    /// A halted key of a key-ordered destination: resume that key alone.
    key: Option<String>,
    /// Who resumes, and why: required to lift a governance pause.
    by: Option<String>,
    reason: Option<String>,
}

async fn resume(
    State(a): State<Admin>,
    ApiPath(name): ApiPath<String>,
    ApiQuery(q): ApiQuery<ResumeQuery>,
) -> Result<Json<Value>, Problem> {
    match &q.key {
        Some(key) => a
            .dispatcher
            .resume_key(&name, key, q.skip_head)
            .await
            .map(drop)
            .map_err(dispatch_error)?,
        None => {
            find(&a, &name)?;
            a.station
                .resume(&name, q.skip_head, q.by, q.reason)
                .await
                .map_err(reviews::problem)?
        }
    }
    one_destination(State(a), ApiPath(name)).await
}

/// The sequence number behind an id taken from a request, as everywhere an
/// id is taken: one that is not an id is a bad request (400); a well-formed
/// one of another instance is `None`, which the caller answers as names
/// nothing (404) or skips.
pub(crate) fn seq_of(a: &Admin, id: &str) -> Result<Option<u64>, Problem> {
    if !journal::is_message_id(id) {
        return Err(Problem::invalid_request(format!("{id:?} is not a message id")));
    }
    Ok(a.journal.parse_id(id))
}

/// The state a message is in, as the API names it.
pub fn state_name(s: &MessageStatus, in_flight: bool) -> &'static str {
    match s.state {
        0 if in_flight => "in_flight",
        0 if s.visible_at > journal::now_ms() => "scheduled",
        0 => "queued",
        1 => "dead_lettered",
        2 => "delivered",
        3 => "dropped",
        journal::STATE_HELD => "held",
        _ => "quarantined",
    }
}

async fn message(State(a): State<Admin>, ApiPath(id): ApiPath<String>) -> Result<Json<Value>, Problem> {
    let not_found = || Problem::not_found(format!("no message {id:?} (unknown, or past history_retention)"));
    let seq = seq_of(&a, &id)?.ok_or_else(not_found)?;
    let s = a.journal.status(seq).await.map_err(internal)?.ok_or_else(not_found)?;
    let in_flight = a.dispatcher.destination(&s.dest).is_some_and(|d| d.is_in_flight(seq));
    let state = state_name(&s, in_flight);
    Ok(Json(json!({
        "id": id,
        "destination": s.dest,
        "state": state,
        "attempts": s.attempts,
        "received_at": journal::rfc3339(s.received_at),
        "delivered_at": if s.state == 2 { s.finished_at.map(journal::rfc3339).unwrap_or(Value::Null) } else { Value::Null },
        "next_attempt_at": if state == "scheduled" { journal::rfc3339(s.visible_at) } else { Value::Null },
        "last_error": s.last_error,
        "reason": s.reason,
        "producer": s.producer,
        "category": s.category,
        "routed_from": s.routed_from.as_ref().map(|r| &r.0),
        "route_rule": s.routed_from.as_ref().map(|r| r.1),
        "ordering_key": s.order_key,
    })))
}

#[derive(Deserialize)]
struct DeadLetterQuery {
    limit: Option<String>,
    after: Option<String>,
}

async fn dead_letters(
    State(a): State<Admin>,
    ApiPath(name): ApiPath<String>,
    ApiQuery(q): ApiQuery<DeadLetterQuery>,
) -> Result<Json<Value>, Problem> {
    find(&a, &name)?;
    let limit = match q.limit.as_deref() {
        None => 100,
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=1000).contains(n))
            .ok_or_else(|| Problem::invalid_request(format!("limit={l:?}: the page size is 1 to 1000")))?,
    };
    let after = match &q.after {
        None => None,
        Some(id) => Some(
            seq_of(&a, id)?
                .ok_or_else(|| Problem::not_found(format!("after={id:?} names no message of this instance")))?,
        ),
    };
    let items = a
        .journal
        .dead_letters(&name, after, limit + 1)
        .await
        .map_err(internal)?;
    let more = items.len() > limit;
    let items: Vec<Value> = items
        .iter()
        .take(limit)
        .map(|dl| {
            json!({
                "id": a.journal.message_id(dl.seq),
                "reason": dl.reason,
                "attempts": dl.attempts,
                "last_error": dl.last_error,
                "received_at": journal::rfc3339(dl.received_at),
                "dead_lettered_at": journal::rfc3339(dl.dead_lettered_at),
                "size_bytes": dl.size_bytes,
            })
        })
        .collect();
    let next = if more {
        items.last().map(|i| i["id"].clone())
    } else {
        None
    };
    Ok(Json(json!({ "items": items, "next": next })))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ReplayBody {
    /// Absent: every dead letter. `null` is refused rather than read as
    /// "all": a script that meant a list must not replay everything.
    #[serde(default, deserialize_with = "present")]
    ids: Option<Vec<String>>,
}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    Vec::<String>::deserialize(d).map(Some)
}

async fn replay(
    State(a): State<Admin>,
    ApiPath(name): ApiPath<String>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, Problem> {
    find(&a, &name)?;
    let req: ReplayBody = if body.iter().all(|b| b.is_ascii_whitespace()) {
        ReplayBody::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| Problem::invalid_request(format!("body must be {{}} or {{\"ids\": [...]}}: {e}")))?
    };
    let seqs = match req.ids {
        None => None,
        // A well-formed id of another instance names no dead letter here:
        // like an id already replayed, it is not counted.
        Some(ids) => Some(
            ids.iter()
                .filter_map(|id| seq_of(&a, id).transpose())
                .collect::<Result<Vec<_>, _>>()?,
        ),
    };
    let n = replay_dead_letters(&a, &name, seqs).await?;
    Ok(Json(json!({ "replayed": n })))
}

/// Dead letters back into the queue (all, or these): the API's and the
/// console's one way to do it.
pub(crate) async fn replay_dead_letters(a: &Admin, name: &str, seqs: Option<Vec<u64>>) -> Result<u64, Problem> {
    find(a, name)?;
    let n = a.journal.replay(name, seqs).await.map_err(internal)?;
    tracing::warn!(destination = %name, replayed = n, "dead letters replayed by an operator");
    Ok(n)
}

async fn purge(State(a): State<Admin>, ApiPath(name): ApiPath<String>) -> Result<Json<Value>, Problem> {
    let n = purge_dead_letters(&a, &name).await?;
    Ok(Json(json!({ "purged": n })))
}

pub(crate) async fn purge_dead_letters(a: &Admin, name: &str) -> Result<u64, Problem> {
    find(a, name)?;
    let n = a.journal.purge_dead_letters(name).await.map_err(internal)?;
    tracing::warn!(destination = %name, purged = n, "dead letters purged by an operator");
    Ok(n)
}

async fn reload(State(a): State<Admin>) -> Result<Json<Value>, Problem> {
    match a.reloader.reload().await {
        Ok(v) => Ok(Json(v)),
        Err(crate::reload::ReloadError::Invalid(reason)) => {
            tracing::error!(%reason, "reload refused: invalid configuration; nothing changed");
            Err(Problem::invalid_config(reason))
        }
        Err(crate::reload::ReloadError::Refused(reason)) => {
            tracing::error!(%reason, "reload refused; nothing changed");
            Err(Problem::reload_refused(reason))
        }
    }
}
