//! The web console (SPEC §12): server-rendered pages on the admin listener
//! at `/ui/`, for operators who would rather look than read. Its pages call
//! the operations the admin API calls (`crate::ops`: describe, find,
//! pause, resume, replay, purge) and the review station, and render what
//! they answer; it holds no logic of its own beyond the session and the
//! form checks. One file per page; [`router`] is the table of contents.
//!
//! Invariants: every page and fragment needs a session when an admin token
//! is configured (`session`); every POST carries this session's CSRF value
//! and passes the listener's Origin and Host checks; everything shown is
//! escaped by the templates (maud); bodies are bounded. Served from the
//! binary: one stylesheet and one small script of our own, no CDN.

// Helpers here answer `Err(page)` for an early exit (sign in, a refused
// form): a handler returns that page as it is, so boxing it buys nothing.
#![allow(clippy::result_large_err)]

mod audit;
mod destination;
mod layout;
mod login;
mod map;
mod overview;
mod quality;
mod reviews;
mod session;

use std::collections::HashMap;
use std::ops::Deref;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use maud::Markup;
use serde::Deserialize;

use crate::auth::{Act, Actor};
use crate::ops::Ops;

const CSS: &str = include_str!("console.css");
const JS: &str = include_str!("console.js");

/// Longest form body besides a review's correction.
const FORM_LIMIT: usize = 64 * 1024;

/// The console's state: the operations it shares with the admin API
/// (reached through `Deref`), and what it remembers between requests.
#[derive(Clone)]
pub struct Console {
    ops: Ops,
    seen: Arc<Seen>,
    sessions: Arc<session::Sessions>,
}

impl Console {
    pub fn new(ops: Ops) -> Console {
        Console {
            ops,
            seen: Arc::default(),
            sessions: Arc::default(),
        }
    }
}

impl Deref for Console {
    type Target = Ops;
    fn deref(&self) -> &Ops {
        &self.ops
    }
}

/// Delivered counters, for rates, and the override rates of the last
/// minute.
#[derive(Default)]
struct Seen {
    samples: Mutex<HashMap<String, Sample>>,
    overrides: Mutex<Option<(Instant, HashMap<String, f64>)>>,
}

/// Delivered counts of one destination as the console saw them, over the
/// last minute.
#[derive(Default)]
struct Sample {
    seen: std::collections::VecDeque<(Instant, u64)>,
}

/// The window the delivered rate is taken over: long enough that a few
/// deliveries a minute do not read as none.
const RATE_WINDOW: Duration = Duration::from_secs(60);

impl Seen {
    /// Delivered per second over the last minute (since the console first
    /// looked, when that is less), once at least a second has passed.
    fn delivered_rate(&self, dest: &str, delivered: u64) -> Option<f64> {
        let now = Instant::now();
        let mut samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        let s = samples.entry(dest.to_string()).or_default();
        while s.seen.len() > 1
            && s.seen
                .get(1)
                .is_some_and(|(at, _)| now.duration_since(*at) >= RATE_WINDOW)
        {
            s.seen.pop_front();
        }
        if s.seen
            .back()
            .is_none_or(|(at, _)| now.duration_since(*at) >= Duration::from_millis(500))
        {
            s.seen.push_back((now, delivered));
        }
        let (at, first) = *s.seen.front()?;
        let elapsed = now.duration_since(at).as_secs_f64();
        (elapsed >= 1.0).then(|| delivered.saturating_sub(first) as f64 / elapsed)
    }
}

/// Every page and action of the console.
pub fn router(console: Console) -> Router {
    Router::new()
        .route("/ui", get(|| async { Redirect::to("/ui/") }))
        .route("/ui/", get(overview::page))
        .route("/ui/login", get(login::page).post(login::sign_in))
        .route("/ui/logout", post(login::sign_out))
        .route("/ui/fragment/overview", get(overview::fragment))
        .route("/ui/map", get(map::page))
        .route("/ui/destinations/{name}", get(destination::page))
        .route("/ui/destinations/{name}/{action}", post(destination::action))
        .route(
            "/ui/destinations/{name}/dead-letters/{action}",
            post(destination::dead_letter_action),
        )
        .route("/ui/reviews", get(reviews::page))
        .route("/ui/reviews/{id}/{action}", post(reviews::decide))
        .route("/ui/quality", get(quality::page))
        .route("/ui/audit", get(audit::page))
        .route(
            "/ui/static/console.css",
            get(|| async { asset(CSS, "text/css; charset=utf-8") }),
        )
        .route(
            "/ui/static/console.js",
            get(|| async { asset(JS, "text/javascript; charset=utf-8") }),
        )
        .with_state(console)
}

fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut r = body.into_response();
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("max-age=300"));
    r
}

/// A signed-in (or open) session: its cookie value, whether a login is
/// in force, and who holds it (what the pages offer follows their role).
struct Session {
    value: String,
    signed_in: bool,
    actor: Actor,
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

/// The request's session, or the way to the login page. Each person
/// signs in with their own token (SPEC §18); a session ends when its
/// holder's token changes or they are removed (a reload).
fn session_of(a: &Console, headers: &HeaderMap) -> Result<Session, Response> {
    let live = a.config();
    if !live.admin.needs_token() {
        return Ok(Session {
            value: String::new(),
            signed_in: false,
            actor: Actor::root(crate::auth::ANONYMOUS),
        });
    }
    let token_of = |who: &str| crate::auth::person(who, &live.admin).map(|(_, t)| t);
    let who =
        cookie(headers, session::COOKIE).and_then(|c| Some((c, a.sessions.who(c, crate::queue::now_ms(), token_of)?)));
    match who.and_then(|(c, name)| Some((c, crate::auth::person(&name, &live.admin)?.0))) {
        Some((c, actor)) => Ok(Session {
            value: c.to_string(),
            signed_in: true,
            actor,
        }),
        None => Err(Redirect::to("/ui/login").into_response()),
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
) -> layout::Frame<'a> {
    layout::Frame {
        title,
        section,
        csrf,
        signed_in: s.signed_in.then_some(&s.actor),
        notice,
    }
}

fn render(s: &Session, title: &str, section: &str, notice: Option<(bool, String)>, content: Markup) -> Response {
    let csrf = s.csrf();
    html(
        StatusCode::OK,
        layout::page(&frame(s, &csrf, title, section, notice), content),
    )
}

fn failure(s: &Session, status: StatusCode, text: &str) -> Response {
    let csrf = s.csrf();
    html(
        status,
        layout::error_page(&frame(s, &csrf, "Not done", "", None), status.as_u16(), text),
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
        let t =
            match self.done.as_deref()? {
                "paused" => "Paused: deliveries stopped, ingress keeps accepting.".to_string(),
                "resumed" => "Resumed.".to_string(),
                "replayed" if n == 0 => return Some((
                    false,
                    "Nothing replayed: no dead letter was left to replay (a reviewer's rejection is never replayed)."
                        .to_string(),
                )),
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

/// A urlencoded form body, read up to `limit` bytes (more is 413; the rest
/// is read and dropped so the browser sees the answer).
async fn read_form(
    body: axum::body::Body,
    limit: usize,
    timeout: Duration,
    linger: usize,
) -> Result<HashMap<String, String>, StatusCode> {
    use crate::listener::body::{read_within, BodyError};
    match read_within(body, limit, timeout, linger).await {
        Ok(bytes) => Ok(form_urlencoded::parse(&bytes).into_owned().collect()),
        Err(BodyError::TooLarge) => Err(StatusCode::PAYLOAD_TOO_LARGE),
        Err(BodyError::TimedOut) => Err(StatusCode::REQUEST_TIMEOUT),
        Err(BodyError::Broken(_)) => Err(StatusCode::BAD_REQUEST),
    }
}

/// The session and the form of a POST, its CSRF value checked.
async fn checked_form(
    a: &Console,
    headers: &HeaderMap,
    body: axum::body::Body,
    limit: usize,
) -> Result<(Session, HashMap<String, String>), Response> {
    let s = session_of(a, headers)?;
    let timeout = a.config().admin.connections.body_timeout;
    let form = match read_form(body, limit, timeout, crate::listener::body::LINGER_BYTES).await {
        Ok(f) => f,
        Err(StatusCode::PAYLOAD_TOO_LARGE) => {
            return Err(failure(
                &s,
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("That form is over {limit} bytes."),
            ))
        }
        Err(StatusCode::REQUEST_TIMEOUT) => {
            return Err(failure(
                &s,
                StatusCode::REQUEST_TIMEOUT,
                "That form took too long to arrive.",
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

fn back(to: &str, done: &str, n: Option<u64>) -> Response {
    let n = n.map(|n| format!("&n={n}")).unwrap_or_default();
    Redirect::to(&format!("{to}?done={done}{n}")).into_response()
}
