//! The quality page: override rates per destination and category over
//! three windows.

use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use maud::{html, Markup};

use super::{failure, render, session_of, Console};

pub(super) async fn page(State(a): State<Console>, headers: HeaderMap) -> Response {
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
    render(&s, "Quality", "quality", None, view(&windows))
}

fn view(windows: &[(&str, Vec<crate::review::quality::Row>)]) -> Markup {
    html! {
        h1 { "Quality" }
        p.lede { "Reviews that edited, rejected or overrode the output, over those reviewed, per destination and category, over three windows; categories over their threshold first." }
        @for (label, rows) in windows {
            section {
                h2 { "Last " (label) }
                @if rows.is_empty() {
                    p { "No messages or reviews in this window." }
                } @else {
                    div.scroll {
                        table {
                            thead { tr {
                                th scope="col" { "Destination" } th scope="col" { "Category" } th scope="col" { "Messages" }
                                th scope="col" { "Reviewed" } th scope="col" { "Approved" } th scope="col" { "Edited" }
                                th scope="col" { "Rejected" } th scope="col" { "Overridden" } th scope="col" { "Override rate (95% CI)" }
                            } }
                            tbody {
                                @for r in rows {
                                    tr.over[r.over_threshold] {
                                        td { (r.destination) } td { (r.category) } td.num { (r.messages) }
                                        td.num { (r.reviews.reviewed) } td.num { (r.reviews.approved) } td.num { (r.reviews.edited) }
                                        td.num { (r.reviews.rejected) } td.num { (r.reviews.overridden) }
                                        td.num {
                                            @match (r.reviews.override_rate, r.reviews.override_rate_ci95) {
                                                (Some(x), Some((lo, hi))) => { (format!("{:.1}% ({:.0}–{:.0}%)", x * 100.0, lo * 100.0, hi * 100.0)) }
                                                _ => "–",
                                            }
                                            @if r.over_threshold { " " span.state.bad { "over threshold" } }
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
}
