//! Signing in, each person with their own token (or the admin token),
//! and out.

use axum::body::Body;
use std::net::SocketAddr;

use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{html, Markup, DOCTYPE};

use super::layout::head;
use super::{checked_form, cookie, html, read_form, session, session_of, Console, FORM_LIMIT};

pub(super) async fn page(State(a): State<Console>, headers: HeaderMap) -> Response {
    match session_of(&a, &headers) {
        Ok(_) => Redirect::to("/ui/").into_response(),
        Err(_) => html(StatusCode::OK, view(None)),
    }
}

/// Most of an oversized sign-in form read and dropped: nobody is signed
/// in yet, so a refusal here must cost little.
const SIGN_IN_LINGER: usize = 1 << 20;

pub(super) async fn sign_in(
    State(a): State<Console>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    body: Body,
) -> Response {
    let live = a.config();
    if !live.admin.needs_token() {
        return Redirect::to("/ui/").into_response();
    }
    let now = crate::queue::now_ms();
    if let Some(wait_ms) = a.sessions.wait(client.ip(), now) {
        tracing::warn!(client = %client.ip(), "console sign-in refused: too many wrong tokens from this address");
        let mut r = html(
            StatusCode::TOO_MANY_REQUESTS,
            view(Some("Too many wrong tokens from here. Wait a moment, then try again.")),
        );
        let secs = (wait_ms + 999) / 1000;
        if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return r;
    }
    let timeout = live.admin.connections.body_timeout;
    let form = match read_form(body, FORM_LIMIT, timeout, SIGN_IN_LINGER).await {
        Ok(f) => f,
        Err(status) => return html(status, view(Some("That is not a token."))),
    };
    let typed = form.get("token").map(String::as_str).unwrap_or("");
    let Some((who, token)) = crate::auth::holder_of(typed, &live.admin) else {
        a.sessions.failed(client.ip(), now);
        tracing::warn!(client = %client.ip(), "console sign-in refused: wrong token");
        return html(StatusCode::UNAUTHORIZED, view(Some("Wrong token.")));
    };
    a.sessions.succeeded(client.ip());
    let value = a.sessions.open(&who.name, token, now);
    tracing::info!(client = %client.ip(), who = %who.name, role = who.role.as_str(), "console sign-in");
    let mut r = Redirect::to("/ui/").into_response();
    if let Ok(v) = HeaderValue::from_str(&format!(
        "{}={value}; Path=/ui; HttpOnly; SameSite=Strict; Max-Age={}{}",
        session::COOKIE,
        session::LIFETIME_MS / 1000,
        secure(&a)
    )) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

/// Ends the session on the server, not only in this browser: a copy of the
/// cookie stops working too.
pub(super) async fn sign_out(State(a): State<Console>, headers: HeaderMap, body: Body) -> Response {
    if let Err(r) = checked_form(&a, &headers, body, FORM_LIMIT).await {
        return r;
    }
    if let Some(c) = cookie(&headers, session::COOKIE) {
        a.sessions.close(c);
    }
    let mut r = Redirect::to("/ui/login").into_response();
    if let Ok(v) = HeaderValue::from_str(&format!(
        "{}=; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=0{}",
        session::COOKIE,
        secure(&a)
    )) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

/// `; Secure` when the console is reached over HTTPS (`admin.public_url`,
/// behind a TLS terminator): the cookie then never travels in clear.
fn secure(a: &Console) -> &'static str {
    match &a.config().admin.public_url {
        Some(u) if u.scheme() == "https" => "; Secure",
        _ => "",
    }
}

fn view(error: Option<&str>) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head("Sign in", false))
            body.login {
                main #main {
                    h1 { "tidegate" }
                    form method="post" action="/ui/login" {
                        label for="token" { "Your token" }
                        input #token type="password" name="token" autocomplete="current-password" required autofocus;
                        @if let Some(e) = error {
                            p.notice.bad role="alert" { (e) }
                        }
                        button type="submit" { "Sign in" }
                    }
                    p.hint { "Your own token (" code { "[[admin.user]]" } "), or the admin token (" code { "admin.token_env" } ")." }
                }
            }
        }
    }
}
