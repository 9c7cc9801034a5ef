//! The chain map, drawn as SVG by `chain::svg` with live figures.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use maud::{html, Markup, PreEscaped};

use super::{failure, overview, render, session_of, Console};

pub(super) async fn page(State(a): State<Console>, headers: HeaderMap) -> Response {
    let s = match session_of(&a, &headers) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let (dests, overrides) = match overview::data(&a).await {
        Ok(x) => x,
        Err(p) => return failure(&s, p.status, &p.detail),
    };
    let config = a.config();
    let chain = crate::chain::Chain::of(&config).with_live(|name| {
        let d = dests.iter().find(|d| d.name == name)?;
        Some(crate::chain::Live {
            state: d.state.to_string(),
            depth: d.queue.depth,
            bytes: d.queue.bytes,
            oldest_age_seconds: d.queue.oldest_age_seconds,
            effective_rate: d.rate_limit.effective_per_second,
            delivered_rate: a.seen.delivered_rate(name, d.counters.delivered),
            override_rate: overrides.get(name).copied(),
        })
    });
    render(&s, "Chain map", "map", None, view(&crate::chain::svg::svg(&chain)))
}

fn view(svg: &str) -> Markup {
    html! {
        h1 { "Chain map" }
        p.lede { "Producers → tidegate → each destination → what it feeds, as the config declares it, with live state. "
            "The same map as text: " code { "tidegate map --admin URL" } "." }
        figure.map { (PreEscaped(svg)) }
        p.legend {
            span.state.ok { "running" } " " span.state.warn { "paused or degraded" } " " span.state.bad { "halted" }
        }
    }
}
