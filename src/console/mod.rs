//! The web console (SPEC §12): server-rendered pages on the admin listener
//! at `/ui/`, for operators who would rather look than read. It calls the
//! functions the admin API calls (`admin::describe`, the dispatcher, the
//! review station, the journal) and renders what they answer; it holds no
//! logic of its own beyond the session and the form checks.
//!
//! Invariants: every page and fragment needs a session when an admin token
//! is configured (`session`); every POST carries this session's CSRF value
//! and passes the listener's Origin and Host checks; everything shown is
//! escaped by the templates (`views`); bodies are bounded. Served from the
//! binary: one stylesheet and one small script of our own, no CDN.

// Helpers here answer `Err(page)` for an early exit (sign in, a refused
// form): a handler returns that page as it is, so boxing it buys nothing.
#![allow(clippy::result_large_err)]

mod session;
mod views;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use maud::Markup;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::admin::Admin;
use crate::journal::review::Verdict;
use crate::review::{DecisionRequest, ReviewError};

const CSS: &str = include_str!("console.css");
const JS: &str = include_str!("console.js");

/// Longest form body besides a review's correction.
const FORM_LIMIT: usize = 64 * 1024;

/// What the console remembers between requests: delivered counters, for
/// rates, and the override rates of the last minute.
#[derive(Default)]
pub struct Console {
    samples: Mutex<HashMap<String, Sample>>,
    overrides: Mutex<Option<(Instant, HashMap<String, f64>)>>,
}

#[derive(Clone, Copy)]
struct Sample {
    at: Instant,
    delivered: u64,
    rate: Option<f64>,
}

impl Console {
    /// Delivered per second since the last look at least a second ago.
    fn delivered_rate(&self, dest: &str, delivered: u64) -> Option<f64> {
        let now = Instant::now();
        let mut samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        let s = samples.entry(dest.to_string()).or_insert(Sample {
            at: now,
            delivered,
            rate: None,
        });
        let elapsed = now.duration_since(s.at).as_secs_f64();
        if elapsed >= 1.0 {
            s.rate = Some(delivered.saturating_sub(s.delivered) as f64 / elapsed);
            s.at = now;
            s.delivered = delivered;
        }
        s.rate
    }
}

pub fn router() -> Router<Admin> {
    Router::new()
        .route("/ui", get(|| async { Redirect::to("/ui/") }))
        .route("/ui/", get(overview))
        .route("/ui/login", get(login_page).post(login))
        .route("/ui/logout", post(logout))
        .route("/ui/fragment/overview", get(overview_fragment))
        .route("/ui/map", get(map))
        .route("/ui/destinations/{name}", get(destination))
        .route("/ui/destinations/{name}/{action}", post(destination_action))
        .route(
            "/ui/destinations/{name}/dead-letters/{action}",
            post(dead_letter_action),
        )
        .route("/ui/reviews", get(reviews))
        .route("/ui/reviews/{id}/{action}", post(decide))
        .route("/ui/quality", get(quality))
        .route(
            "/ui/static/console.css",
            get(|| async { asset(CSS, "text/css; charset=utf-8") }),
        )
        .route(
            "/ui/static/console.js",
            get(|| async { asset(JS, "text/javascript; charset=utf-8") }),
        )
}

fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut r = body.into_response();
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("max-age=300"));
    r
}

/// A signed-in (or open) session: its cookie value and whether a login is
/// in force.
struct Session {
    value: String,
    signed_in: bool,
}

impl Session {
    fn csrf(&self) -> String {
        session::csrf(&self.value)
    }
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The request's session, or the way to the login page.
fn session_of(a: &Admin, headers: &HeaderMap) -> Result<Session, Response> {
    let live = crate::reload::current(&a.reloader.live);
    let Some(token) = &live.admin.token else {
        return Ok(Session {
            value: String::new(),
            signed_in: false,
        });
    };
    match cookie(headers, session::COOKIE) {
        Some(c) if session::valid(c, token, crate::journal::now_ms()) => Ok(Session {
            value: c.to_string(),
            signed_in: true,
        }),
        _ => Err(Redirect::to("/ui/login").into_response()),
    }
}

fn html(status: StatusCode, m: Markup) -> Response {
    let mut r = (status, m.into_string()).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    // The console is never framed (clickjacking) and runs only its own script.
    r.headers_mut()
        .insert("x-frame-options", HeaderValue::from_static("DENY"));
    r.headers_mut().insert(
        "content-security-policy",
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'",
        ),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn frame<'a>(
    s: &'a Session,
    csrf: &'a str,
    title: &'a str,
    section: &'a str,
    notice: Option<(bool, String)>,
) -> views::Frame<'a> {
    views::Frame {
        title,
        section,
        csrf,
        signed_in: s.signed_in,
        notice,
    }
}

fn render(s: &Session, title: &str, section: &str, notice: Option<(bool, String)>, content: Markup) -> Response {
    let csrf = s.csrf();
    html(
        StatusCode::OK,
        views::page(&frame(s, &csrf, title, section, notice), content),
    )
}

fn failure(s: &Session, status: StatusCode, text: &str) -> Response {
    let csrf = s.csrf();
    html(
        status,
        views::error_page(&frame(s, &csrf, "Not done", "", None), status.as_u16(), text),
    )
}

/// What a redirect after an action tells the next page, by code (never
/// text from the request: nothing is reflected).
#[derive(Deserialize, Default)]
struct Notice {
    done: Option<String>,
    n: Option<u64>,
}

impl Notice {
    fn text(&self) -> Option<(bool, String)> {
        let n = self.n.unwrap_or(0);
        let t = match self.done.as_deref()? {
            "paused" => "Paused: deliveries stopped, ingress keeps accepting.".to_string(),
            "resumed" => "Resumed.".to_string(),
            "replayed" => format!("{n} dead letter(s) back in the queue."),
            "purged" => format!("{n} dead letter(s) deleted."),
            "approve" => "Approved: queued for delivery.".to_string(),
            "edit" => "Correction saved and queued for delivery.".to_string(),
            "reject" => "Rejected: dead-lettered, never delivered.".to_string(),
            _ => return None,
        };
        Some((true, t))
    }
}

// ------------------------------------------------------------ sign in/out

async fn login_page(State(a): State<Admin>, headers: HeaderMap) -> Response {
    match session_of(&a, &headers) {
        Ok(_) => Redirect::to("/ui/").into_response(),
        Err(_) => html(StatusCode::OK, views::login(None)),
    }
}

async fn login(State(a): State<Admin>, body: axum::body::Body) -> Response {
    let live = crate::reload::current(&a.reloader.live);
    let Some(token) = &live.admin.token else {
        return Redirect::to("/ui/").into_response();
    };
    let form = match read_form(body, FORM_LIMIT).await {
        Ok(f) => f,
        Err(status) => return html(status, views::login(Some("That is not a token."))),
    };
    let typed = form.get("token").map(String::as_str).unwrap_or("");
    if !session::token_matches(typed, token) {
        tracing::warn!("console sign-in refused: wrong token");
        return html(StatusCode::UNAUTHORIZED, views::login(Some("Wrong token.")));
    }
    let value = session::issue(token, crate::journal::now_ms());
    let mut r = Redirect::to("/ui/").into_response();
    if let Ok(v) = HeaderValue::from_str(&format!(
        "{}={value}; Path=/ui; HttpOnly; SameSite=Strict; Max-Age={}",
        session::COOKIE,
        session::LIFETIME_MS / 1000
    )) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

async fn logout(State(a): State<Admin>, headers: HeaderMap, body: axum::body::Body) -> Response {
    if let Err(r) = checked_form(&a, &headers, body, FORM_LIMIT).await {
        return r;
    }
    let mut r = Redirect::to("/ui/login").into_response();
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("tidegate_session=; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    r
}

// ------------------------------------------------------------ forms

/// A urlencoded form body, read up to `limit` bytes (more is 413; the rest
/// is read and dropped so the browser sees the answer).
async fn read_form(body: axum::body::Body, limit: usize) -> Result<HashMap<String, String>, StatusCode> {
    use futures_util::StreamExt as _;
    let mut stream = body.into_data_stream();
    let mut bytes = Vec::new();
    let mut seen = 0usize;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|_| StatusCode::BAD_REQUEST)?;
        seen += chunk.len();
        if seen > limit {
            if seen > 64 << 20 {
                break;
            }
            continue;
        }
        bytes.extend_from_slice(&chunk);
    }
    if seen > limit {
        return Err(StatusCode::PAYLOAD_TOO_LARGE);
    }
    Ok(form_urlencoded::parse(&bytes).into_owned().collect())
}

/// The session and the form of a POST, its CSRF value checked.
async fn checked_form(
    a: &Admin,
    headers: &HeaderMap,
    body: axum::body::Body,
    limit: usize,
) -> Result<(Session, HashMap<String, String>), Response> {
    let s = session_of(a, headers)?;
    let form = match read_form(body, limit).await {
        Ok(f) => f,
        Err(StatusCode::PAYLOAD_TOO_LARGE) => {
            return Err(failure(
                &s,
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("That form is over {limit} bytes."),
            ))
        }
        Err(status) => return Err(failure(&s, status, "That form could not be read.")),
    };
    let presented = form.get("csrf").map(String::as_str).unwrap_or("");
    if !session::csrf_ok(&s.value, presented) {
        tracing::warn!("console form refused: missing or stale CSRF value");
        return Err(failure(
            &s,
            StatusCode::FORBIDDEN,
            "This form is stale or was not sent from tidegate's console. Reload the page and try again.",
        ));
    }
    Ok((s, form))
}

// ------------------------------------------------------------ pages

async fn overview_data(a: &Admin) -> Result<(Vec<Value>, HashMap<String, f64>), crate::problem::Problem> {
    let mut dests = Vec::new();
    for d in a.dispatcher.destinations() {
        dests.push(crate::admin::describe_state(a, &d).await?);
    }
    let overrides = {
        let cached = a.console.overrides.lock().unwrap_or_else(|e| e.into_inner()).clone();
        match cached {
            Some((at, m)) if at.elapsed() < Duration::from_secs(60) => m,
            _ => {
                let m = a
                    .station
                    .override_rates(Duration::from_secs(86400))
                    .await
                    .unwrap_or_default();
                *a.console.overrides.lock().unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), m.clone()));
                m
            }
        }
    };
    Ok((dests, overrides))
}

fn overview_rows(a: &Admin, dests: &[Value], overrides: &HashMap<String, f64>) -> Markup {
    let delivered = |name: &str| {
        let n = dests
            .iter()
            .find(|d| d["name"] == name)
            .and_then(|d| d["counters"]["delivered"].as_u64())
            .unwrap_or(0);
        a.console.delivered_rate(name, n)
    };
    let over = |name: &str| overrides.get(name).copied();
    views::overview_rows(dests, &delivered, &over)
}

async fn overview(State(a): State<Admin>, headers: HeaderMap, Query(n): Query<Notice>) -> Response {
    let s = match session_of(&a, &headers) {
        Ok(s) => s,
        Err(r) => return r,
    };
    match overview_data(&a).await {
        Ok((dests, overrides)) => {
            let rows = overview_rows(&a, &dests, &overrides);
            render(&s, "Overview", "overview", n.text(), views::overview(rows, dests.len()))
        }
        Err(p) => failure(&s, p.status, &p.detail),
    }
}

async fn overview_fragment(State(a): State<Admin>, headers: HeaderMap) -> Response {
    if session_of(&a, &headers).is_err() {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    match overview_data(&a).await {
        Ok((dests, overrides)) => html(StatusCode::OK, overview_rows(&a, &dests, &overrides)),
        Err(p) => (p.status, p.detail).into_response(),
    }
}

async fn map(State(a): State<Admin>, headers: HeaderMap) -> Response {
    let s = match session_of(&a, &headers) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let (dests, overrides) = match overview_data(&a).await {
        Ok(x) => x,
        Err(p) => return failure(&s, p.status, &p.detail),
    };
    let config = crate::reload::current(&a.reloader.live);
    let chain = crate::chain::Chain::of(&config).with_live(|name| {
        let d = dests.iter().find(|d| d["name"] == name)?;
        let q = &d["queue"];
        Some(crate::chain::Live {
            state: d["state"].as_str().unwrap_or("?").to_string(),
            depth: q["depth"].as_u64().unwrap_or(0),
            bytes: q["bytes"].as_u64().unwrap_or(0),
            oldest_age_seconds: q["oldest_age_seconds"].as_f64().unwrap_or(0.0),
            effective_rate: d["rate_limit"]["effective_per_second"].as_f64(),
            delivered_rate: a
                .console
                .delivered_rate(name, d["counters"]["delivered"].as_u64().unwrap_or(0)),
            override_rate: overrides.get(name).copied(),
        })
    });
    render(
        &s,
        "Chain map",
        "map",
        None,
        views::map(&crate::chain::svg::svg(&chain)),
    )
}

async fn destination(
    State(a): State<Admin>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Query(n): Query<Notice>,
) -> Response {
    let s = match session_of(&a, &headers) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let d = match crate::admin::find(&a, &name) {
        Ok(d) => d,
        Err(p) => return failure(&s, p.status, &p.detail),
    };
    let described = match crate::admin::describe(&a, &d).await {
        Ok(v) => v,
        Err(p) => return failure(&s, p.status, &p.detail),
    };
    let dead: Vec<Value> = match a.journal.dead_letters(&name, None, 100).await {
        Ok(items) => items
            .iter()
            .map(|l| {
                json!({"id": a.journal.message_id(l.seq), "reason": l.reason, "attempts": l.attempts,
                       "last_error": l.last_error, "dead_lettered_at": crate::journal::rfc3339(l.dead_lettered_at)})
            })
            .collect(),
        Err(e) => return failure(&s, StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    };
    let queued: Vec<Value> = match a.journal.queued(&name, 20).await {
        Ok(items) => items
            .iter()
            .map(|m| {
                json!({"id": a.journal.message_id(m.seq), "received_at": crate::journal::rfc3339(m.received_at), "attempts": m.attempts,
                       "last_error": m.last_error.as_ref().map(|e| e.detail.clone())})
            })
            .collect(),
        Err(e) => return failure(&s, StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    };
    let info = d.state();
    let governed = crate::review::is_governance_reason(&info.reason);
    let csrf = s.csrf();
    let page = views::destination(&views::DestinationPage {
        d: &described,
        dead_letters: &dead,
        queued: &queued,
        csrf: &csrf,
        governed,
    });
    render(&s, &name, "overview", n.text(), page)
}

fn back(to: &str, done: &str, n: Option<u64>) -> Response {
    let n = n.map(|n| format!("&n={n}")).unwrap_or_default();
    Redirect::to(&format!("{to}?done={done}{n}")).into_response()
}

async fn destination_action(
    State(a): State<Admin>,
    headers: HeaderMap,
    Path((name, action)): Path<(String, String)>,
    body: axum::body::Body,
) -> Response {
    let (s, form) = match checked_form(&a, &headers, body, FORM_LIMIT).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    if let Err(p) = crate::admin::find(&a, &name) {
        return failure(&s, p.status, &p.detail);
    }
    let page = format!("/ui/destinations/{name}");
    match action.as_str() {
        "pause" => match a.dispatcher.pause(&name).await {
            Ok(_) => back(&page, "paused", None),
            Err(e) => failure(&s, StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        },
        "resume" => {
            let skip = form.get("skip_head").is_some_and(|v| v == "true");
            let by = form.get("by").cloned();
            let why = form.get("reason").cloned();
            match a.station.resume(&name, skip, by, why).await {
                Ok(()) => back(&page, "resumed", None),
                Err(e @ ReviewError::ReasonRequired(_)) => failure(&s, StatusCode::BAD_REQUEST, &e.to_string()),
                Err(e) => failure(&s, StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
            }
        }
        _ => failure(&s, StatusCode::NOT_FOUND, "No such action."),
    }
}

async fn dead_letter_action(
    State(a): State<Admin>,
    headers: HeaderMap,
    Path((name, action)): Path<(String, String)>,
    body: axum::body::Body,
) -> Response {
    let (s, form) = match checked_form(&a, &headers, body, FORM_LIMIT).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let page = format!("/ui/destinations/{name}");
    let outcome = match action.as_str() {
        "replay" => {
            let seqs = match form.get("id") {
                None => None,
                Some(id) => match crate::admin::seq_of(&a, id) {
                    Ok(Some(seq)) => Some(vec![seq]),
                    Ok(None) => Some(Vec::new()),
                    Err(p) => return failure(&s, p.status, &p.detail),
                },
            };
            crate::admin::replay_dead_letters(&a, &name, seqs)
                .await
                .map(|n| ("replayed", n))
        }
        "purge" => {
            if form.get("confirm").map(String::as_str) != Some("yes") {
                return failure(
                    &s,
                    StatusCode::BAD_REQUEST,
                    "Purging needs the confirmation box ticked.",
                );
            }
            crate::admin::purge_dead_letters(&a, &name).await.map(|n| ("purged", n))
        }
        _ => return failure(&s, StatusCode::NOT_FOUND, "No such action."),
    };
    match outcome {
        Ok((done, n)) => back(&page, done, Some(n)),
        Err(p) => failure(&s, p.status, &p.detail),
    }
}

#[derive(Deserialize, Default)]
struct ReviewsQuery {
    destination: Option<String>,
    done: Option<String>,
}

const REVIEWER_COOKIE: &str = "tidegate_reviewer";

async fn reviews(State(a): State<Admin>, headers: HeaderMap, Query(q): Query<ReviewsQuery>) -> Response {
    let s = match session_of(&a, &headers) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let notice = Notice {
        done: q.done.clone(),
        n: None,
    };
    reviews_page(
        &a,
        &s,
        &headers,
        q.destination,
        HashMap::new(),
        notice.text(),
        StatusCode::OK,
    )
    .await
}

async fn reviews_page(
    a: &Admin,
    s: &Session,
    headers: &HeaderMap,
    destination: Option<String>,
    errors: HashMap<String, ((String, Vec<String>), String)>,
    notice: Option<(bool, String)>,
    status: StatusCode,
) -> Response {
    if let Some(d) = &destination {
        if let Err(p) = crate::admin::find(a, d) {
            return failure(s, p.status, &p.detail);
        }
    }
    let items = match a.station.list(destination.clone(), None, 0, 50).await {
        Ok(items) => items,
        Err(e) => return failure(s, StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    };
    let reviewer = cookie(headers, REVIEWER_COOKIE)
        .map(|r| {
            form_urlencoded::parse(format!("r={r}").as_bytes())
                .map(|(_, v)| v.into_owned())
                .next()
                .unwrap_or_default()
        })
        .unwrap_or_default();
    let rendered: Vec<views::ReviewItem> = items
        .iter()
        .map(|item| {
            let id = item["id"].as_str().unwrap_or("");
            let e = errors.get(id);
            views::ReviewItem {
                item,
                error: e.map(|(err, _)| err),
                draft: e.map(|(_, draft)| draft.as_str()),
            }
        })
        .collect();
    let csrf = s.csrf();
    let content = views::reviews(&rendered, &reviewer, &csrf, destination.as_deref());
    let mut r = html(
        status,
        views::page(&frame(s, &csrf, "Reviews", "reviews", notice), content),
    );
    *r.status_mut() = status;
    r
}

async fn decide(
    State(a): State<Admin>,
    headers: HeaderMap,
    Path((id, action)): Path<(String, String)>,
    body: axum::body::Body,
) -> Response {
    let limit = crate::reload::current(&a.reloader.live).ingress.max_body as usize + FORM_LIMIT;
    let (s, form) = match checked_form(&a, &headers, body, limit).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let verdict = match action.as_str() {
        "approve" => Verdict::Approve,
        "edit" => Verdict::Edit,
        "reject" => Verdict::Reject,
        _ => return failure(&s, StatusCode::NOT_FOUND, "No such decision."),
    };
    let seq = match crate::admin::seq_of(&a, &id) {
        Ok(Some(seq)) => seq,
        Ok(None) => return failure(&s, StatusCode::NOT_FOUND, "No such message here."),
        Err(p) => return failure(&s, p.status, &p.detail),
    };
    let reviewer = form.get("reviewer").cloned().unwrap_or_default();
    let draft = form.get("body").cloned().unwrap_or_default();
    let in_place = |message: String, paths: Vec<String>, status: StatusCode| {
        let mut errors = HashMap::new();
        errors.insert(id.clone(), ((message, paths), draft.clone()));
        (errors, status)
    };
    let body = match verdict {
        Verdict::Edit => match serde_json::from_str::<Value>(&draft) {
            Ok(v) => Some(v),
            Err(e) => {
                let (errors, status) = in_place(
                    format!("The correction is not JSON: {e}"),
                    vec![],
                    StatusCode::BAD_REQUEST,
                );
                return reviews_page(&a, &s, &headers, None, errors, None, status).await;
            }
        },
        _ => None,
    };
    let req = DecisionRequest {
        reviewer: Some(reviewer.clone()),
        note: None,
        body,
        reason: form.get("reason").cloned().filter(|r| !r.is_empty()),
    };
    match a.station.decide(seq, verdict, req).await {
        Ok(_) => {
            let mut r = back("/ui/reviews", verdict.as_str(), None);
            let value: String = form_urlencoded::byte_serialize(reviewer.as_bytes()).collect();
            if let Ok(v) = HeaderValue::from_str(&format!(
                "{REVIEWER_COOKIE}={value}; Path=/ui; SameSite=Strict; Max-Age=2592000"
            )) {
                r.headers_mut().insert(header::SET_COOKIE, v);
            }
            r
        }
        Err(e) => {
            let (status, paths) = match &e {
                ReviewError::Schema(f) => (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    f.violations
                        .iter()
                        .map(|v| {
                            let at = if v.instance_path.is_empty() {
                                "/"
                            } else {
                                &v.instance_path
                            };
                            format!("{at}: {}", v.message)
                        })
                        .collect(),
                ),
                ReviewError::Transform(_) => (StatusCode::UNPROCESSABLE_ENTITY, vec![]),
                ReviewError::Invalid(_) => (StatusCode::BAD_REQUEST, vec![]),
                ReviewError::NotFound(_) => (StatusCode::NOT_FOUND, vec![]),
                ReviewError::AlreadyDecided { .. } | ReviewError::NotHeld { .. } | ReviewError::NotDelivered { .. } => {
                    (StatusCode::CONFLICT, vec![])
                }
                _ => (StatusCode::INTERNAL_SERVER_ERROR, vec![]),
            };
            let (errors, status) = in_place(e.to_string(), paths, status);
            reviews_page(&a, &s, &headers, None, errors, None, status).await
        }
    }
}

async fn quality(State(a): State<Admin>, headers: HeaderMap) -> Response {
    let s = match session_of(&a, &headers) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let mut windows = Vec::new();
    for (label, secs) in [("hour", 3600), ("24 hours", 86400), ("7 days", 7 * 86400)] {
        match a.station.quality(None, Duration::from_secs(secs)).await {
            Ok(rows) => windows.push((label, rows)),
            Err(e) => return failure(&s, StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        }
    }
    render(&s, "Quality", "quality", None, views::quality(&windows))
}
