//! Signing in with the admin token, and out.

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{html, Markup, DOCTYPE};

use super::layout::head;
use super::{checked_form, html, read_form, session, session_of, Console, FORM_LIMIT};

pub(super) async fn page(State(a): State<Console>, headers: HeaderMap) -> Response {
    match session_of(&a, &headers) {
        Ok(_) => Redirect::to("/ui/").into_response(),
        Err(_) => html(StatusCode::OK, view(None)),
    }
}

pub(super) async fn sign_in(State(a): State<Console>, body: Body) -> Response {
    let live = a.config();
    let Some(token) = &live.admin.token else {
        return Redirect::to("/ui/").into_response();
    };
    let form = match read_form(body, FORM_LIMIT).await {
        Ok(f) => f,
        Err(status) => return html(status, view(Some("That is not a token."))),
    };
    let typed = form.get("token").map(String::as_str).unwrap_or("");
    if !session::token_matches(typed, token) {
        tracing::warn!("console sign-in refused: wrong token");
        return html(StatusCode::UNAUTHORIZED, view(Some("Wrong token.")));
    }
    let value = session::issue(token, crate::queue::now_ms());
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

pub(super) async fn sign_out(State(a): State<Console>, headers: HeaderMap, body: Body) -> Response {
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

fn view(error: Option<&str>) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head("Sign in", false))
            body.login {
                main #main {
                    h1 { "tidegate" }
                    form method="post" action="/ui/login" {
                        label for="token" { "Admin token" }
                        input #token type="password" name="token" autocomplete="current-password" required autofocus;
                        @if let Some(e) = error {
                            p.notice.bad role="alert" { (e) }
                        }
                        button type="submit" { "Sign in" }
                    }
                    p.hint { "The token named by " code { "admin.token_env" } " in tidegate's config." }
                }
            }
        }
    }
}
