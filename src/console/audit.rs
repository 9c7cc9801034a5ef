//! The audit page: the latest acts on record (SPEC §18), newest last,
//! filtered by actor, action or destination, with a link to the JSONL
//! export. What people typed (reasons, notes) is shown escaped, like
//! everything else.

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use maud::{html, Markup};
use serde::Deserialize;

use super::{failure, render, session_of, Console};
use crate::queue::audit::{Entry, Filter};

/// Acts one page shows.
const PAGE: usize = 200;

#[derive(Deserialize, Default)]
pub(super) struct AuditQuery {
    actor: Option<String>,
    action: Option<String>,
    destination: Option<String>,
}

pub(super) async fn page(State(a): State<Console>, headers: HeaderMap, Query(q): Query<AuditQuery>) -> Response {
    let s = match session_of(&a, &headers) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let nonempty = |v: Option<String>| v.filter(|v| !v.is_empty());
    let filter = Filter {
        actor: nonempty(q.actor),
        action: nonempty(q.action),
        destination: nonempty(q.destination),
        limit: PAGE,
        newest: true,
        ..Filter::default()
    };
    let acts = match a.queues.acts(filter.clone()).await {
        Ok(acts) => acts,
        Err(e) => return failure(&s, StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    };
    render(&s, "Audit", "audit", None, view(&filter, &acts))
}

fn view(f: &Filter, acts: &[Entry]) -> Markup {
    html! {
        h1 { "Audit" }
        p.lede { "Who paused, resumed, lifted a halt, replayed, purged, reloaded, decided or sent feedback: the last " (PAGE) " acts on record, oldest first. "
            a href="/v1/audit?format=jsonl" { "Export all as JSON Lines" } " (the admin API, with a token)." }
        form.filters method="get" action="/ui/audit" {
            label { "Actor " input name="actor" value=(f.actor.as_deref().unwrap_or("")) maxlength="64"; }
            label { "Action " input name="action" value=(f.action.as_deref().unwrap_or("")) maxlength="32"; }
            label { "Destination " input name="destination" value=(f.destination.as_deref().unwrap_or("")) maxlength="64"; }
            button type="submit" { "Filter" }
        }
        @if acts.is_empty() {
            p { "Nothing on record." }
        } @else {
            div.scroll {
                table #audit {
                    thead { tr {
                        th scope="col" { "When" } th scope="col" { "Actor" } th scope="col" { "Action" }
                        th scope="col" { "Destination" } th scope="col" { "Target" } th scope="col" { "Detail" }
                    } }
                    tbody {
                        @for e in acts {
                            tr {
                                td { (crate::queue::rfc3339(e.act.at).as_str().unwrap_or_default()) }
                                td { (e.act.actor) }
                                td { (e.act.action) }
                                td { (e.act.destination.as_deref().unwrap_or("")) }
                                td { code { (e.act.target.as_deref().unwrap_or("")) } }
                                td { code { (e.act.detail.to_string()) } }
                            }
                        }
                    }
                }
            }
        }
    }
}
