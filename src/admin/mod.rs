//! The admin listener: probes, Prometheus exposition and the `/v1`
//! operations API (SPEC §6, §10). Its handlers turn requests into the
//! operations of `crate::ops` (shared with the console) and the review
//! station's calls, and their answers into JSON or problem+json; the rules
//! live there, not here.
//!
//! It listens from the first moment of start-up (`during_start_up`), so
//! that probes see a live process while the journal opens, which takes
//! minutes when a large journal is salvaged.

use std::sync::atomic::Ordering;
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

use crate::auth::Actor;
use crate::dispatch;
use crate::ops::{internal, DestinationView, Ops};
use crate::problem::Problem;
use crate::queue;

mod audit;
mod reviews;

/// The admin API on `ops`. The console's pages are another router on the
/// same listener (`app` merges them); neither imports the other.
pub fn router(state: Ops) -> Router {
    let v1 = Router::new()
        .route("/v1/chain", get(chain))
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
        .route("/v1/audit", get(audit::list))
        .route_layer(middleware::from_fn_with_state(state.clone(), identify));
    Router::new()
        .route("/healthz", get(|| async { ALIVE }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(v1)
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

/// `limit=` of a paged list: 1 to 1000, 100 when absent.
fn page_size(limit: Option<&str>) -> Result<usize, Problem> {
    match limit {
        None => Ok(100),
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=1000).contains(n))
            .ok_or_else(|| Problem::invalid_request(format!("limit={l:?}: the page size is 1 to 1000"))),
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
pub fn during_start_up(up: Arc<OnceLock<Router>>, live: crate::config::Live) -> Router {
    use tower::ServiceExt as _;
    let guard = move |req: Request, next: Next| {
        let policy = crate::config::current(&live);
        async move {
            match crate::auth::check_browser(&policy.admin.browser, req.headers()) {
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

/// Who the request is from (`auth::actor`: a person, the root token, or
/// anyone on a loopback listener that asks for no token), put where the
/// handlers find it ([`Who`]); a token that names nobody is 401.
async fn identify(State(a): State<Ops>, mut req: Request, next: Next) -> Response {
    match crate::auth::actor(req.headers(), &a.config().admin) {
        Ok(actor) => {
            req.extensions_mut().insert(actor);
            next.run(req).await
        }
        Err(p) => p.into_response(),
    }
}

/// The request's [`Actor`], as `identify` found it.
struct Who(Actor);

impl<S: Send + Sync> FromRequestParts<S> for Who {
    type Rejection = Problem;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Problem> {
        parts.extensions.get::<Actor>().cloned().map(Who).ok_or_else(|| {
            tracing::error!("an admin handler ran without the identify layer");
            Problem::internal()
        })
    }
}

async fn readyz(State(a): State<Ops>) -> Response {
    let stats = a.queues.stats();
    // Ready means ingress would take a message now: the queue open and
    // reachable (in cluster mode, NATS connected), not shutting down.
    let open = stats.open.load(Ordering::Relaxed) && !stats.unreachable.load(Ordering::Relaxed);
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
async fn metrics(State(a): State<Ops>) -> Response {
    let m = &a.metrics;
    let stats = a.queues.stats();
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
            .set(i64::from(a.queues.may_dispatch(n)));
        let oldest = queue::age_seconds(a.queues.oldest_pending(n).await.ok().flatten());
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
            let oldest = queue::age_seconds(a.queues.oldest_open_review(n).await.ok().flatten());
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

/// The chain as the running config declares it (`tidegate map` and
/// `plan` with `--admin` and no config file of their own).
async fn chain(State(a): State<Ops>) -> Json<crate::chain::Chain> {
    Json(crate::chain::Chain::of(&a.config()))
}

async fn list_destinations(State(a): State<Ops>) -> Result<Json<Value>, Problem> {
    let mut out = Vec::new();
    for d in a.dispatcher.destinations() {
        out.push(a.describe(&d).await?);
    }
    Ok(Json(json!({ "destinations": out })))
}

async fn one_destination(
    State(a): State<Ops>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<DestinationView>, Problem> {
    let d = a.find(&name)?;
    Ok(Json(a.describe(&d).await?))
}

async fn pause(
    State(a): State<Ops>,
    Who(who): Who,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<DestinationView>, Problem> {
    a.pause(&who, &name).await?;
    one_destination(State(a), ApiPath(name)).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PreviewQuery {
    /// The producer's path after the destination's name, with its query.
    #[serde(default)]
    path: String,
    method: Option<String>,
}

/// What the handoff would do with a producer body sent to `name` (with its
/// `Content-Type`, to `?path=`); stores nothing (see `ops::preview`).
async fn preview(
    State(a): State<Ops>,
    ApiPath(name): ApiPath<String>,
    ApiQuery(q): ApiQuery<PreviewQuery>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<Value>, Problem> {
    let entry = a.find(&name)?.config();
    let lookup = |n: &str| a.dispatcher.destination(n).map(|d| d.config());
    if !q.path.is_empty() && !q.path.starts_with('/') {
        return Err(Problem::invalid_request(format!(
            "path={:?}: the path after the destination's name starts with '/'",
            q.path
        )));
    }
    let method = q.method.as_deref().unwrap_or("POST").to_ascii_uppercase();
    if !matches!(method.as_str(), "POST" | "PUT" | "PATCH" | "DELETE") {
        return Err(Problem::invalid_request(format!(
            "method={method:?}: producers send POST, PUT, PATCH or DELETE"
        )));
    }
    let sent = crate::ops::Sent {
        method: &method,
        path: &q.path,
        content_type: headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()),
    };
    match crate::ops::preview(&entry, &sent, &body, lookup).await {
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
    State(a): State<Ops>,
    Who(who): Who,
    ApiPath(name): ApiPath<String>,
    ApiQuery(q): ApiQuery<ResumeQuery>,
) -> Result<Json<DestinationView>, Problem> {
    a.resume(&who, &name, q.skip_head, q.key.as_deref(), q.by, q.reason)
        .await?;
    one_destination(State(a), ApiPath(name)).await
}

async fn message(State(a): State<Ops>, ApiPath(id): ApiPath<String>) -> Result<Json<Value>, Problem> {
    let not_found = || Problem::not_found(format!("no message {id:?} (unknown, or past history_retention)"));
    let seq = a.seq_of(&id)?.ok_or_else(not_found)?;
    let s = a.queues.status(seq).await.map_err(internal)?.ok_or_else(not_found)?;
    let in_flight = a.dispatcher.destination(&s.dest).is_some_and(|d| d.is_in_flight(seq));
    Ok(Json(s.view(&id, in_flight)))
}

#[derive(Deserialize)]
struct DeadLetterQuery {
    limit: Option<String>,
    after: Option<String>,
}

async fn dead_letters(
    State(a): State<Ops>,
    ApiPath(name): ApiPath<String>,
    ApiQuery(q): ApiQuery<DeadLetterQuery>,
) -> Result<Json<Value>, Problem> {
    a.find(&name)?;
    let limit = page_size(q.limit.as_deref())?;
    let after = match &q.after {
        None => None,
        Some(id) => Some(
            a.seq_of(id)?
                .ok_or_else(|| Problem::not_found(format!("after={id:?} names no message of this instance")))?,
        ),
    };
    let items = a.queues.dead_letters(&name, after, limit + 1).await.map_err(internal)?;
    let more = items.len() > limit;
    let items: Vec<Value> = items
        .iter()
        .take(limit)
        .map(|dl| {
            json!({
                "id": a.queues.message_id(dl.seq),
                "reason": dl.reason,
                "attempts": dl.attempts,
                "last_error": dl.last_error,
                "received_at": queue::rfc3339(dl.received_at),
                "dead_lettered_at": queue::rfc3339(dl.dead_lettered_at),
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
    State(a): State<Ops>,
    Who(who): Who,
    ApiPath(name): ApiPath<String>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, Problem> {
    a.find(&name)?;
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
                .filter_map(|id| a.seq_of(id).transpose())
                .collect::<Result<Vec<_>, _>>()?,
        ),
    };
    let n = a.replay_dead_letters(&who, &name, seqs).await?;
    Ok(Json(json!({ "replayed": n })))
}

async fn purge(State(a): State<Ops>, Who(who): Who, ApiPath(name): ApiPath<String>) -> Result<Json<Value>, Problem> {
    let n = a.purge_dead_letters(&who, &name).await?;
    Ok(Json(json!({ "purged": n })))
}

async fn reload(State(a): State<Ops>, Who(who): Who) -> Result<Json<Value>, Problem> {
    a.reload(&who).await.map(Json)
}
