//! The review queue: held and audit items with the original and what would
//! be sent, approve, edit (errors shown in place, the draft kept) and
//! reject, with keyboard shortcuts.

use std::collections::HashMap;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use maud::{html, Markup};
use serde::Deserialize;
use serde_json::Value;

use super::layout::{self, csrf_field};
use super::{
    back, checked_form, cookie, failure, frame, html, session_of, Act, Actor, Console, Notice, Session, FORM_LIMIT,
};
use crate::ops::Refused as Refusal;
use crate::queue::review::Verdict;
use crate::review::{DecisionRequest, ReviewError};

#[derive(Deserialize, Default)]
pub(super) struct ReviewsQuery {
    destination: Option<String>,
    done: Option<String>,
}

const REVIEWER_COOKIE: &str = "tidegate_reviewer";

pub(super) async fn page(State(a): State<Console>, headers: HeaderMap, Query(q): Query<ReviewsQuery>) -> Response {
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
        Refused::default(),
        notice.text(),
        StatusCode::OK,
    )
    .await
}

/// What a refused decision leaves on the page: its error in place with
/// the draft (by item id), and who was deciding.
#[derive(Default)]
struct Refused {
    errors: HashMap<String, ((String, Vec<String>), String)>,
    reviewer: Option<String>,
}

async fn reviews_page(
    a: &Console,
    s: &Session,
    headers: &HeaderMap,
    destination: Option<String>,
    refused: Refused,
    notice: Option<(bool, String)>,
    status: StatusCode,
) -> Response {
    if let Some(d) = &destination {
        if let Err(p) = a.find(d) {
            return failure(s, p.status, &p.detail);
        }
    }
    let items = match a.station.list(destination.clone(), None, 0, 50).await {
        Ok(items) => items,
        Err(e) => return failure(s, StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    };
    let errors = refused.errors;
    // Who was deciding, when a decision was refused: kept, not cleared.
    let reviewer = refused.reviewer.unwrap_or_else(|| {
        cookie(headers, REVIEWER_COOKIE)
            .map(|r| {
                form_urlencoded::parse(format!("r={r}").as_bytes())
                    .map(|(_, v)| v.into_owned())
                    .next()
                    .unwrap_or_default()
            })
            .unwrap_or_default()
    });
    let rendered: Vec<ReviewItem> = items
        .iter()
        .map(|item| {
            let id = item["id"].as_str().unwrap_or("");
            let e = errors.get(id);
            ReviewItem {
                item,
                error: e.map(|(err, _)| err),
                draft: e.map(|(_, draft)| draft.as_str()),
            }
        })
        .collect();
    let csrf = s.csrf();
    let content = view(&rendered, &s.actor, &reviewer, &csrf, destination.as_deref());
    let mut r = html(
        status,
        layout::page(&frame(s, &csrf, "Reviews", "reviews", notice), content),
    );
    *r.status_mut() = status;
    r
}

pub(super) async fn decide(
    State(a): State<Console>,
    headers: HeaderMap,
    Path((id, action)): Path<(String, String)>,
    body: Body,
) -> Response {
    let limit = a.config().ingress.max_body as usize + FORM_LIMIT;
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
    let seq = match a.seq_of(&id) {
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
                let refused = Refused {
                    errors,
                    reviewer: Some(reviewer),
                };
                return reviews_page(&a, &s, &headers, None, refused, None, status).await;
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
    let e = match a.decide(&s.actor, seq, verdict, req).await {
        Ok(_) if s.actor.personal => return back("/ui/reviews", verdict.as_str(), None),
        Ok(_) => {
            let mut r = back("/ui/reviews", verdict.as_str(), None);
            let value: String = form_urlencoded::byte_serialize(reviewer.as_bytes()).collect();
            if let Ok(v) = HeaderValue::from_str(&format!(
                "{REVIEWER_COOKIE}={value}; Path=/ui; SameSite=Strict; Max-Age=2592000"
            )) {
                r.headers_mut().insert(header::SET_COOKIE, v);
            }
            return r;
        }
        Err(Refusal::Problem(p)) => return failure(&s, p.status, &p.detail),
        Err(Refusal::Review(e)) => e,
    };
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
    let refused = Refused {
        errors,
        reviewer: Some(reviewer),
    };
    reviews_page(&a, &s, &headers, None, refused, None, status).await
}

/// One review item, with the error its last decision met, if any.
struct ReviewItem<'a> {
    item: &'a Value,
    error: Option<&'a (String, Vec<String>)>,
    /// What the edit box holds: the last attempt, or the original.
    draft: Option<&'a str>,
}

/// The items and, where `who` may decide them, the decision forms: a
/// person decides under their own name; the admin token's holder names
/// the reviewer.
fn view(items: &[ReviewItem], who: &Actor, reviewer: &str, csrf: &str, destination: Option<&str>) -> Markup {
    html! {
        h1 { "Reviews" @if let Some(d) = destination { " · " (d) } }
        p.lede { "Held and audit items awaiting a decision, oldest first. Keys on the selected item: "
            kbd { "a" } " approve · " kbd { "e" } " edit · " kbd { "r" } " reject." }
        @if items.is_empty() {
            p { "Nothing awaits review." }
        }
        @if who.personal && who.role >= crate::config::Role::Reviewer {
            p #deciding-as { "Deciding as " strong { (who.name) } "." }
        }
        @for it in items {
            @let v = it.item;
            @let id = v["id"].as_str().unwrap_or("");
            @let decides = who.can(Act::Decide, v["destination"].as_str());
            @let original = serde_json::to_string_pretty(&v["original"]).unwrap_or_default();
            article.item tabindex="0" id={ "item-" (id) } data-item=(id) {
                h2 { code { (id) } " · " (v["destination"].as_str().unwrap_or("")) " · " (v["category"].as_str().unwrap_or(""))
                    " · " span.kind { (v["kind"].as_str().unwrap_or("")) " (" (v["reason"].as_str().unwrap_or("")) ")" } }
                div.columns {
                    div { h3 { "Original" } pre.body { (original) } }
                    div { h3 { "Would send" }
                        pre.body {
                            @match &v["preview"] {
                                Value::String(s) => (s),
                                Value::Object(o) => @if let Some(b) = o.get("body").and_then(Value::as_str) { (b) } @else { (Value::Object(o.clone()).to_string()) },
                                other => (other.to_string()),
                            }
                        }
                    }
                }
                @if let Some((message, paths)) = it.error {
                    div.notice.bad role="alert" {
                        (message)
                        @if !paths.is_empty() { ul { @for p in paths { li { (p) } } } }
                    }
                }
                @if decides {
                div.decide {
                    form method="post" action={ "/ui/reviews/" (id) "/approve" } {
                        (csrf_field(csrf))
                        @if who.personal {
                            input type="hidden" name="reviewer" value=(who.name);
                        } @else {
                            label { "Reviewer " input name="reviewer" value=(reviewer) required maxlength="200"; }
                        }
                        button.approve type="submit" data-action="a" { "Approve" }
                    }
                    form method="post" action={ "/ui/reviews/" (id) "/edit" } {
                        (csrf_field(csrf))
                        input type="hidden" name="reviewer" value=(reviewer);
                        label { "Corrected body (JSON)" textarea name="body" rows="8" data-action="e" { (it.draft.unwrap_or(&original)) } }
                        button type="submit" { "Save correction and deliver" }
                    }
                    form method="post" action={ "/ui/reviews/" (id) "/reject" } {
                        (csrf_field(csrf))
                        input type="hidden" name="reviewer" value=(reviewer);
                        label { "Reason " input name="reason" maxlength="1000" data-action="r"; }
                        button.danger type="submit" { "Reject" }
                    }
                }
                }
            }
        }
    }
}
