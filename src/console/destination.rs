//! One destination: its facts and queue, pause and resume (with skip
//! head, and who and why for a governance pause), its dead letters with
//! replay and purge, and the next messages in its queue.

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use maud::{html, Markup};

use super::layout::{csrf_field, state};
use super::{back, checked_form, failure, render, session_of, Act, Actor, Console, Notice, FORM_LIMIT};
use crate::chain::plan::human;
use crate::ops::DestinationView;
use crate::queue::{DeadLetter, Queued};

/// What the page shows; each message with its public id.
struct View<'a> {
    d: &'a DestinationView,
    dead_letters: &'a [(String, DeadLetter)],
    queued: &'a [(String, Queued)],
    csrf: &'a str,
    /// Paused by governance: resuming names who and why.
    governed: bool,
    /// Who is looking: the actions are offered to an operator of this
    /// destination only, and a person resumes under their own name.
    actor: &'a Actor,
}

pub(super) async fn page(
    State(a): State<Console>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Query(n): Query<Notice>,
) -> Response {
    let s = match session_of(&a, &headers) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let d = match a.find(&name) {
        Ok(d) => d,
        Err(p) => return failure(&s, p.status, &p.detail),
    };
    let described = match a.describe(&d).await {
        Ok(v) => v,
        Err(p) => return failure(&s, p.status, &p.detail),
    };
    let dead: Vec<(String, DeadLetter)> = match a.queues.dead_letters(&name, None, 100).await {
        Ok(items) => items.into_iter().map(|l| (a.queues.message_id(l.seq), l)).collect(),
        Err(e) => return failure(&s, StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    };
    let queued: Vec<(String, Queued)> = match a.queues.queued(&name, 20).await {
        Ok(items) => items.into_iter().map(|m| (a.queues.message_id(m.seq), m)).collect(),
        Err(e) => return failure(&s, StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    };
    let governed = crate::review::is_governance_reason(&d.state().reason);
    let csrf = s.csrf();
    let page = view(&View {
        d: &described,
        dead_letters: &dead,
        queued: &queued,
        csrf: &csrf,
        governed,
        actor: &s.actor,
    });
    render(&s, &name, "overview", n.text(), page)
}

pub(super) async fn action(
    State(a): State<Console>,
    headers: HeaderMap,
    Path((name, action)): Path<(String, String)>,
    body: Body,
) -> Response {
    let (s, form) = match checked_form(&a, &headers, body, FORM_LIMIT).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    if let Err(p) = a.find(&name) {
        return failure(&s, p.status, &p.detail);
    }
    let page = format!("/ui/destinations/{name}");
    match action.as_str() {
        "pause" => match a.pause(&s.actor, &name).await {
            Ok(()) => back(&page, "paused", None),
            Err(p) => failure(&s, p.status, &p.detail),
        },
        "resume" => {
            let skip = form.get("skip_head").is_some_and(|v| v == "true");
            let by = form.get("by").cloned();
            let why = form.get("reason").cloned();
            match a.resume(&s.actor, &name, skip, None, by, why).await {
                Ok(()) => back(&page, "resumed", None),
                Err(p) => failure(&s, p.status, &p.detail),
            }
        }
        _ => failure(&s, StatusCode::NOT_FOUND, "No such action."),
    }
}

pub(super) async fn dead_letter_action(
    State(a): State<Console>,
    headers: HeaderMap,
    Path((name, action)): Path<(String, String)>,
    body: Body,
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
                Some(id) => match a.seq_of(id) {
                    Ok(Some(seq)) => Some(vec![seq]),
                    Ok(None) => Some(Vec::new()),
                    Err(p) => return failure(&s, p.status, &p.detail),
                },
            };
            a.replay_dead_letters(&s.actor, &name, seqs)
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
            a.purge_dead_letters(&s.actor, &name).await.map(|n| ("purged", n))
        }
        _ => return failure(&s, StatusCode::NOT_FOUND, "No such action."),
    };
    match outcome {
        Ok((done, n)) => back(&page, done, Some(n)),
        Err(p) => failure(&s, p.status, &p.detail),
    }
}

/// Why a reviewer's rejection sits among the dead letters.
const REJECTED: &str = "rejected_by_reviewer";

/// "1 message", "3 messages".
fn count(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// A queue time as the page shows it (RFC 3339).
fn when(ms: i64) -> String {
    crate::queue::rfc3339(ms).as_str().unwrap_or_default().to_string()
}

fn view(p: &View) -> Markup {
    let d = p.d;
    let name = d.name.as_str();
    let st = d.state;
    let q = &d.queue;
    let operates = p.actor.can(Act::Operate, Some(name));
    html! {
        h1 { (name) " " (state(st)) }
        @if !d.state_reason.is_empty() {
            @let r = &d.state_reason;
            p.reason { (r) }
        }
        dl.facts {
            dt { "Downstream" } dd { code { (d.url) } }
            dt { "Owner" } dd { (d.owner) }
            dt { "On failure" } dd { (d.on_failure) }
            dt { "Queue" } dd { (count(q.depth, "message", "messages")) " (" (q.held) " held for review), " (q.in_flight) " in flight, " (q.scheduled) " scheduled for a retry" }
            dt { "Oldest" } dd { (human(q.oldest_age_seconds))
                @if let Some(o) = &d.objective { " (objective " (human(o.latency_seconds)) ")" } }
            dt { "Dead letters" } dd { (q.dead_letters) }
            @if let Some(b) = &d.batch {
                dt { "Batches" } dd #batch {
                    "up to " (count(b.max_messages as u64, "message", "messages")) " or " (b.max_bytes) " bytes a request, "
                    (b.encoding) ", a partial batch leaving after " (format!("{:.0} ms", b.max_wait_seconds * 1000.0))
                }
                dt { "Batches sent" } dd #flushes {
                    (b.flushes.get("size").copied().unwrap_or(0)) " full, "
                    (b.flushes.get("bytes").copied().unwrap_or(0)) " at the byte limit, "
                    (b.flushes.get("time").copied().unwrap_or(0)) " at max_wait; "
                    (count(b.splits, "split", "splits")) " to isolate refused items"
                }
            }
        }
        @if operates {
        section.actions aria-label="Actions" {
            h2 { "Actions" }
            div.buttons {
                @if st != "paused" {
                    form method="post" action={ "/ui/destinations/" (name) "/pause" } {
                        (csrf_field(p.csrf))
                        button #pause type="submit" { "Pause deliveries" }
                    }
                }
                @if st != "running" {
                    form method="post" action={ "/ui/destinations/" (name) "/resume" } {
                        (csrf_field(p.csrf))
                        @if p.governed && p.actor.personal {
                            input type="hidden" name="by" value=(p.actor.name);
                            label for="why" { "Why it is safe now" }
                            input #why name="reason" required maxlength="1000";
                        } @else if p.governed {
                            label for="by" { "Resumed by" }
                            input #by name="by" required maxlength="200";
                            label for="why" { "Why it is safe now" }
                            input #why name="reason" required maxlength="1000";
                        }
                        button #resume type="submit" { "Resume" }
                    }
                }
                @if st == "halted" {
                    form method="post" action={ "/ui/destinations/" (name) "/resume" } {
                        (csrf_field(p.csrf))
                        input type="hidden" name="skip_head" value="true";
                        button #skip-head type="submit" { "Resume, dead-lettering the failed head" }
                    }
                }
            }
        }
        }
        section aria-labelledby="dl" {
            h2 #dl { "Dead letters" }
            @if p.dead_letters.is_empty() {
                p { "None." }
            } @else {
                @let replayable = p.dead_letters.iter().filter(|(_, l)| l.reason != REJECTED).count();
                @if operates {
                div.buttons {
                    @if replayable > 0 {
                        form method="post" action={ "/ui/destinations/" (name) "/dead-letters/replay" } {
                            (csrf_field(p.csrf))
                            button #replay-all type="submit" { "Replay all" }
                        }
                    }
                    form method="post" action={ "/ui/destinations/" (name) "/dead-letters/purge" } {
                        (csrf_field(p.csrf))
                        label { input type="checkbox" name="confirm" value="yes" required; " I mean it" }
                        button.danger #purge type="submit" { "Purge all for good" }
                    }
                }
                }
                div.scroll {
                    table {
                        thead { tr { th scope="col" { "Message" } th scope="col" { "Reason" } th scope="col" { "Attempts" } th scope="col" { "Last error" } th scope="col" { "When" } th scope="col" { span.sr { "Action" } } } }
                        tbody {
                            @for (id, l) in p.dead_letters {
                                tr {
                                    td { code { (id) } }
                                    td { (l.reason) }
                                    td.num { (l.attempts) }
                                    td { (l.last_error.as_ref().map_or("", |e| e.detail.as_str())) }
                                    td { (when(l.dead_lettered_at)) }
                                    td {
                                        // A reviewer's rejection is a decision, not a failure:
                                        // it is never replayed.
                                        @if operates && l.reason != REJECTED {
                                            form method="post" action={ "/ui/destinations/" (name) "/dead-letters/replay" } {
                                                (csrf_field(p.csrf))
                                                input type="hidden" name="id" value=(id);
                                                button type="submit" aria-label={ "Replay " (id) } { "Replay" }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        section aria-labelledby="queued" {
            h2 #queued { "Next in the queue" }
            @if p.queued.is_empty() && q.held > 0 {
                p { "Nothing waits for delivery: " (count(q.held, "message is", "messages are")) " held for review (see " a href={ "/ui/reviews?destination=" (name) } { "Reviews" } ")." }
            } @else if p.queued.is_empty() {
                p { "The queue is empty." }
            } @else {
                div.scroll {
                    table {
                        thead { tr { th scope="col" { "Message" } th scope="col" { "Received" } th scope="col" { "Attempts" } th scope="col" { "Last error" } } }
                        tbody {
                            @for (id, m) in p.queued {
                                tr {
                                    td { code { (id) } }
                                    td { (when(m.received_at)) }
                                    td.num { (m.attempts) }
                                    td { (m.last_error.as_ref().map_or("", |e| e.detail.as_str())) }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}
