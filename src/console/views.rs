//! The console's pages, rendered on the server with maud (which escapes
//! every interpolated value: names, bodies and reasons come from producers
//! and operators, and are shown, never run). Each function takes the data
//! the admin API would answer and returns the page; none reads state.

use maud::{html, Markup, PreEscaped, DOCTYPE};
use serde_json::Value;

use crate::chain::plan::{human, per};

/// What every page needs besides its content.
pub struct Frame<'a> {
    pub title: &'a str,
    /// The nav entry to mark current.
    pub section: &'a str,
    /// The CSRF value for this session's forms.
    pub csrf: &'a str,
    /// A login is in force (show "sign out").
    pub signed_in: bool,
    /// A one-line notice at the top (what the last action did, or why not).
    pub notice: Option<(bool, String)>,
}

/// Every page's `<head>`; the sign-in page runs no script.
fn head(title: &str, script: bool) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            title { (title) " · tidegate" }
            link rel="stylesheet" href="/ui/static/console.css";
            @if script { script src="/ui/static/console.js" defer {} }
        }
    }
}

pub fn page(f: &Frame, content: Markup) -> Markup {
    let nav = [
        ("overview", "/ui/", "Overview", "o"),
        ("map", "/ui/map", "Chain map", "m"),
        ("reviews", "/ui/reviews", "Reviews", "v"),
        ("quality", "/ui/quality", "Quality", "q"),
    ];
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(f.title, true))
            body data-section=(f.section) {
                a.skip href="#main" { "Skip to content" }
                header.top {
                    a.brand href="/ui/" { "tidegate" }
                    nav aria-label="Console" {
                        ul {
                            @for (key, href, label, shortcut) in nav {
                                li {
                                    a href=(href) aria-current=[(key == f.section).then_some("page")] data-key=(shortcut) {
                                        (label)
                                    }
                                }
                            }
                        }
                    }
                    @if f.signed_in {
                        form.signout method="post" action="/ui/logout" {
                            input type="hidden" name="csrf" value=(f.csrf);
                            button type="submit" { "Sign out" }
                        }
                    }
                }
                main #main tabindex="-1" {
                    @if let Some((ok, text)) = &f.notice {
                        p.notice.(if *ok { "good" } else { "bad" }) role="status" { (text) }
                    }
                    (content)
                }
                footer { "Keys: " kbd { "g o" } " overview · " kbd { "g m" } " map · " kbd { "g v" } " reviews · " kbd { "g q" } " quality · " kbd { "j" } "/" kbd { "k" } " next/previous item" }
            }
        }
    }
}

pub fn login(error: Option<&str>) -> Markup {
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

/// A state in words, coloured: the colour is never the only sign.
pub fn state(s: &str) -> Markup {
    let class = match s {
        "running" => "ok",
        "paused" | "degraded" => "warn",
        "halted" => "bad",
        _ => "plain",
    };
    html! { span.state.(class) { (s) } }
}

fn num(v: &Value) -> f64 {
    v.as_f64().unwrap_or(0.0)
}

/// One overview row per destination (also the live-refresh fragment).
pub fn overview_rows(
    dests: &[Value],
    delivered_rates: &dyn Fn(&str) -> Option<f64>,
    overrides: &dyn Fn(&str) -> Option<f64>,
) -> Markup {
    html! {
        @for d in dests {
            @let name = d["name"].as_str().unwrap_or("?");
            @let q = &d["queue"];
            @let objective = &d["objective"];
            tr data-destination=(name) {
                th scope="row" { a href={ "/ui/destinations/" (name) } { (name) } }
                td { (state(d["state"].as_str().unwrap_or("?"))) }
                td.num data-field="depth" { (q["depth"]) }
                td.num {
                    (human(num(&q["oldest_age_seconds"])))
                    @if let Some(o) = objective["latency_seconds"].as_f64() {
                        " / " (human(o))
                        @if objective["met"] == false { " " span.state.bad { "over objective" } }
                    }
                }
                td.num { (delivered_rates(name).map_or("–".to_string(), per)) }
                td.num {
                    (d["rate_limit"]["effective_per_second"].as_f64().map_or("unlimited".to_string(), per))
                    @if let Some(c) = d["rate_limit"]["configured_per_second"].as_f64() { " of " (per(c)) }
                }
                td.num { (q["dead_letters"]) }
                td.num { (q["reviews_pending"]) }
                td.num { (overrides(name).map_or("–".to_string(), |r| format!("{:.0}%", r * 100.0))) }
            }
        }
    }
}

pub fn overview(rows: Markup, count: usize) -> Markup {
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

pub fn map(svg: &str) -> Markup {
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

fn csrf_field(csrf: &str) -> Markup {
    html! { input type="hidden" name="csrf" value=(csrf); }
}

pub struct DestinationPage<'a> {
    pub d: &'a Value,
    pub dead_letters: &'a [Value],
    pub queued: &'a [Value],
    pub csrf: &'a str,
    pub governed: bool,
}

pub fn destination(p: &DestinationPage) -> Markup {
    let d = p.d;
    let name = d["name"].as_str().unwrap_or("?");
    let st = d["state"].as_str().unwrap_or("?");
    let q = &d["queue"];
    html! {
        h1 { (name) " " (state(st)) }
        @if let Some(r) = d["state_reason"].as_str().filter(|r| !r.is_empty()) {
            p.reason { (r) }
        }
        dl.facts {
            dt { "Downstream" } dd { code { (d["url"].as_str().unwrap_or("")) } }
            dt { "Owner" } dd { (d["owner"].as_str().unwrap_or("")) }
            dt { "On failure" } dd { (d["on_failure"].as_str().unwrap_or("")) }
            dt { "Queue" } dd { (q["depth"]) " messages (" (q["held"]) " held for review), " (q["in_flight"]) " in flight, " (q["scheduled"]) " scheduled for a retry" }
            dt { "Oldest" } dd { (human(num(&q["oldest_age_seconds"])))
                @if let Some(o) = d["objective"]["latency_seconds"].as_f64() { " (objective " (human(o)) ")" } }
            dt { "Dead letters" } dd { (q["dead_letters"]) }
        }
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
                        @if p.governed {
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
        section aria-labelledby="dl" {
            h2 #dl { "Dead letters" }
            @if p.dead_letters.is_empty() {
                p { "None." }
            } @else {
                div.buttons {
                    form method="post" action={ "/ui/destinations/" (name) "/dead-letters/replay" } {
                        (csrf_field(p.csrf))
                        button #replay-all type="submit" { "Replay all" }
                    }
                    form method="post" action={ "/ui/destinations/" (name) "/dead-letters/purge" } {
                        (csrf_field(p.csrf))
                        label { input type="checkbox" name="confirm" value="yes" required; " I mean it" }
                        button.danger #purge type="submit" { "Purge all for good" }
                    }
                }
                div.scroll {
                    table {
                        thead { tr { th scope="col" { "Message" } th scope="col" { "Reason" } th scope="col" { "Attempts" } th scope="col" { "Last error" } th scope="col" { "When" } th scope="col" { span.sr { "Action" } } } }
                        tbody {
                            @for l in p.dead_letters {
                                @let id = l["id"].as_str().unwrap_or("");
                                tr {
                                    td { code { (id) } }
                                    td { (l["reason"].as_str().unwrap_or("")) }
                                    td.num { (l["attempts"]) }
                                    td { (l["last_error"]["detail"].as_str().unwrap_or("")) }
                                    td { (l["dead_lettered_at"].as_str().unwrap_or("")) }
                                    td {
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
        section aria-labelledby="queued" {
            h2 #queued { "Next in the queue" }
            @if p.queued.is_empty() {
                p { "The queue is empty." }
            } @else {
                div.scroll {
                    table {
                        thead { tr { th scope="col" { "Message" } th scope="col" { "Received" } th scope="col" { "Attempts" } th scope="col" { "Last error" } } }
                        tbody {
                            @for m in p.queued {
                                tr {
                                    td { code { (m["id"].as_str().unwrap_or("")) } }
                                    td { (m["received_at"].as_str().unwrap_or("")) }
                                    td.num { (m["attempts"]) }
                                    td { (m["last_error"].as_str().unwrap_or("")) }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// One review item, with the error its last decision met, if any.
pub struct ReviewItem<'a> {
    pub item: &'a Value,
    pub error: Option<&'a (String, Vec<String>)>,
    /// What the edit box holds: the last attempt, or the original.
    pub draft: Option<&'a str>,
}

pub fn reviews(items: &[ReviewItem], reviewer: &str, csrf: &str, destination: Option<&str>) -> Markup {
    html! {
        h1 { "Reviews" @if let Some(d) = destination { " · " (d) } }
        p.lede { "Held and audit items awaiting a decision, oldest first. Keys on the selected item: "
            kbd { "a" } " approve · " kbd { "e" } " edit · " kbd { "r" } " reject." }
        @if items.is_empty() {
            p { "Nothing awaits review." }
        }
        @for it in items {
            @let v = it.item;
            @let id = v["id"].as_str().unwrap_or("");
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
                div.decide {
                    form method="post" action={ "/ui/reviews/" (id) "/approve" } {
                        (csrf_field(csrf))
                        label { "Reviewer " input name="reviewer" value=(reviewer) required maxlength="200"; }
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

pub fn quality(windows: &[(&str, Vec<crate::review::quality::Row>)]) -> Markup {
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
                                        td.num { (r.reviewed) } td.num { (r.approved) } td.num { (r.edited) }
                                        td.num { (r.rejected) } td.num { (r.overridden) }
                                        td.num {
                                            @match (r.override_rate, r.override_rate_ci95) {
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

pub fn error_page(f: &Frame, status: u16, text: &str) -> Markup {
    page(
        f,
        html! {
            h1 { "Not done (" (status) ")" }
            p.notice.bad role="alert" { (text) }
            p { a href="/ui/" { "Back to the overview" } }
        },
    )
}
