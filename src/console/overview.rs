//! The overview: every destination's state, queue, rates, dead letters,
//! reviews and override rate, refreshed live (the fragment).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use maud::{html, Markup};

use super::layout::state;
use super::{failure, html, render, session_of, Console, Notice};
use crate::chain::plan::{human, per};
use crate::ops::DestinationView;
use crate::problem::Problem;

/// Every destination's live view, and the override rates of the last 24
/// hours by destination (read at most once a minute).
pub(super) async fn data(a: &Console) -> Result<(Vec<DestinationView>, HashMap<String, f64>), Problem> {
    let mut dests = Vec::new();
    for d in a.dispatcher.destinations() {
        if crate::config::is_internal(&d.name) {
            continue;
        }
        dests.push(a.describe_state(&d).await?);
    }
    let overrides = {
        let cached = a.seen.overrides.lock().unwrap_or_else(|e| e.into_inner()).clone();
        match cached {
            Some((at, m)) if at.elapsed() < Duration::from_secs(60) => m,
            _ => {
                let m = a
                    .station
                    .override_rates(Duration::from_secs(86400))
                    .await
                    .unwrap_or_default();
                *a.seen.overrides.lock().unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), m.clone()));
                m
            }
        }
    };
    Ok((dests, overrides))
}

pub(super) async fn page(State(a): State<Console>, headers: HeaderMap, Query(n): Query<Notice>) -> Response {
    let s = match session_of(&a, &headers) {
        Ok(s) => s,
        Err(r) => return r,
    };
    match data(&a).await {
        Ok((dests, overrides)) => {
            let content = view(rows(&a, &dests, &overrides), dests.len());
            render(&s, "Overview", "overview", n.text(), content)
        }
        Err(p) => failure(&s, p.status, &p.detail),
    }
}

/// The rows alone, for the live refresh.
pub(super) async fn fragment(State(a): State<Console>, headers: HeaderMap) -> Response {
    if session_of(&a, &headers).is_err() {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    match data(&a).await {
        Ok((dests, overrides)) => html(StatusCode::OK, rows(&a, &dests, &overrides)),
        Err(p) => (p.status, p.detail).into_response(),
    }
}

/// One row per destination.
fn rows(a: &Console, dests: &[DestinationView], overrides: &HashMap<String, f64>) -> Markup {
    html! {
        @for d in dests {
            @let name = d.name.as_str();
            @let q = &d.queue;
            tr data-destination=(name) {
                th scope="row" { a href={ "/ui/destinations/" (name) } { (name) } }
                td { (state(d.state)) }
                td.num data-field="depth" { (q.depth) }
                td.num {
                    (human(q.oldest_age_seconds))
                    @if let Some(o) = &d.objective {
                        " / " (human(o.latency_seconds))
                        @if !o.met { " " span.state.bad { "over objective" } }
                    }
                }
                td.num { (a.seen.delivered_rate(name, d.counters.delivered).map_or("–".to_string(), per)) }
                td.num {
                    (d.rate_limit.effective_per_second.map_or("unlimited".to_string(), per))
                    @if let Some(c) = d.rate_limit.configured_per_second { " of " (per(c)) }
                }
                td.num { (q.dead_letters) }
                td.num { (q.reviews_pending) }
                td.num { (overrides.get(name).map_or("–".to_string(), |r| format!("{:.0}%", r * 100.0))) }
            }
        }
    }
}

fn view(rows: Markup, count: usize) -> Markup {
    html! {
        h1 { "Overview" }
        p.lede { (count) (if count == 1 { " destination" } else { " destinations" }) " · refreshed every 2 s while this tab is visible" }
        div.scroll {
            table.destinations #overview {
                caption.sr { "Every destination: state, queue, rates, dead letters, reviews" }
                thead {
                    tr {
                        th scope="col" { "Destination" }
                        th scope="col" { "State" }
                        th scope="col" { "Depth" }
                        th scope="col" { "Oldest / objective" }
                        th scope="col" { "Delivered" }
                        th scope="col" { "Rate (effective of configured)" }
                        th scope="col" { "Dead letters" }
                        th scope="col" { "Reviews pending" }
                        th scope="col" { "Override rate (24 h)" }
                    }
                }
                tbody data-refresh="/ui/fragment/overview" { (rows) }
            }
        }
    }
}
