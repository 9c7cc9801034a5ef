//! What the operator commands print: the admin API's answers as tables and
//! lines a person reads.

use serde_json::Value;

use super::CliError;

/// A string field of an answer as a terminal may show it: what the API
/// returns includes downstream answers, AI output and what reviewers
/// typed, and none of it may move the cursor or forge a line.
fn t(v: &Value) -> String {
    crate::text::for_terminal(v.as_str().unwrap_or_default()).into_owned()
}

pub(super) fn num(v: &Value) -> f64 {
    v.as_f64().unwrap_or(0.0)
}

pub(super) fn rate(v: &Value) -> String {
    match v.as_f64() {
        None => "unlimited".into(),
        Some(r) if r >= 10.0 => format!("{r:.0}"),
        Some(r) => format!("{r:.2}"),
    }
}

pub(super) fn age(secs: f64) -> String {
    let s = secs as u64;
    match s {
        0..=59 => format!("{secs:.1}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

pub fn render_destination(d: &Value) -> String {
    let q = &d["queue"];
    let mut out = format!(
        "{}: {} (depth {}, in flight {}, dead letters {}){}",
        d["name"].as_str().unwrap_or("?"),
        d["state"].as_str().unwrap_or("?"),
        q["depth"],
        q["in_flight"],
        q["dead_letters"],
        Some(t(&d["state_reason"]))
            .filter(|r| !r.is_empty())
            .map(|r| format!(" — {r}"))
            .unwrap_or_default()
    );
    // Halted keys are each a stop an operator must lift: one line each.
    for k in d["halted_keys"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "\n  key {} halted at {} — {}",
            t(&k["key"]),
            k["message_id"].as_str().unwrap_or("?"),
            t(&k["reason"])
        ));
    }
    out
}

pub fn render_dead_letters(v: &Value) -> String {
    if v["items"].as_array().is_none_or(|a| a.is_empty()) {
        return "no dead letters".to_string();
    }
    let mut out = format!(
        "{:<26} {:<22} {:>8} {:<28} {}\n",
        "ID", "REASON", "ATTEMPTS", "DEAD-LETTERED AT", "LAST ERROR"
    );
    for i in v["items"].as_array().into_iter().flatten() {
        let e = &i["last_error"];
        let err = if e.is_null() {
            String::new()
        } else {
            format!(
                "{} {} {}",
                e["kind"].as_str().unwrap_or(""),
                e["status"],
                t(&e["detail"]).chars().take(60).collect::<String>()
            )
        };
        out.push_str(&format!(
            "{:<26} {:<22} {:>8} {:<28} {}\n",
            i["id"].as_str().unwrap_or("?"),
            t(&i["reason"]),
            i["attempts"].to_string(),
            i["dead_lettered_at"].as_str().unwrap_or(""),
            err
        ));
    }
    if let Some(next) = v["next"].as_str() {
        out.push_str(&format!("more: --after {next}\n"));
    }
    out
}

/// The answer to `POST /v1/reload`, for a person.
pub fn render_reload(v: &Value) -> String {
    let list = |k: &str| {
        let items: Vec<&str> = v[k]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        if items.is_empty() {
            "none".to_string()
        } else {
            items.join(", ")
        }
    };
    let mut out = format!(
        "reloaded: added {}; removed {}; changed {}",
        list("added"),
        list("removed"),
        list("changed")
    );
    if v["restart_required"].as_array().is_some_and(|a| !a.is_empty()) {
        out.push_str(&format!("\nnot applied until a restart: {}", list("restart_required")));
    }
    out
}

pub fn render_message(m: &Value) -> String {
    let mut out = String::new();
    for key in [
        "id",
        "destination",
        "state",
        "attempts",
        "received_at",
        "delivered_at",
        "next_attempt_at",
        "reason",
        "ordering_key",
    ] {
        let v = &m[key];
        if !v.is_null() {
            out.push_str(&format!(
                "{key:<16} {}\n",
                v.as_str().map(|_| t(v)).unwrap_or(v.to_string())
            ));
        }
    }
    let e = &m["last_error"];
    if !e.is_null() {
        out.push_str(&format!(
            "{:<16} {} {} {}\n",
            "last_error",
            e["kind"].as_str().unwrap_or(""),
            e["status"],
            t(&e["detail"])
        ));
    }
    out
}

/// The quality rows of a `/v1/quality` answer.
fn quality_rows(v: &Value) -> Result<Vec<crate::review::quality::Row>, CliError> {
    serde_json::from_value(v["categories"].clone()).map_err(|e| CliError::BadAnswer(e.to_string()))
}

/// `tidegate report` as a table.
pub fn render_report(v: &Value, since: &str) -> Result<String, CliError> {
    Ok(crate::review::quality::table(&quality_rows(v)?, since))
}

/// `tidegate report --format csv`.
pub fn report_csv(v: &Value) -> Result<String, CliError> {
    let rows = quality_rows(v)?;
    let mut w = csv::Writer::from_writer(Vec::new());
    for r in &rows {
        w.serialize(crate::review::quality::Flat::from(r))
            .map_err(|e| CliError::BadAnswer(e.to_string()))?;
    }
    let bytes = w.into_inner().map_err(|e| CliError::BadAnswer(e.to_string()))?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

fn reviewer_rows(
    v: &Value,
) -> Result<
    (
        Vec<crate::review::quality::ReviewerRow>,
        Vec<crate::review::quality::Agreement>,
    ),
    CliError,
> {
    let bad = |e: serde_json::Error| CliError::BadAnswer(format!("the quality answer is not the expected shape: {e}"));
    Ok((
        serde_json::from_value(v["reviewers"].clone()).map_err(bad)?,
        serde_json::from_value(v["agreement"].clone()).map_err(bad)?,
    ))
}

/// `tidegate report --by reviewer`: each reviewer's override rate per
/// category, then how far the reviewers of one category agree.
pub fn render_reviewers(v: &Value, since: &str) -> Result<String, CliError> {
    use std::fmt::Write;
    let (rows, agreement) = reviewer_rows(v)?;
    let mut s = format!("quality by reviewer over the last {since}\n\n");
    let pct = |x: f64| format!("{:.1}%", x * 100.0);
    let _ = writeln!(
        s,
        "{:<16} {:<16} {:<16} {:>8} {:>8} {:>6} {:>8} {:>10} {:>8}  95% CI",
        "DESTINATION", "CATEGORY", "REVIEWER", "REVIEWED", "APPROVED", "EDITED", "REJECTED", "OVERRIDDEN", "OVERRIDE"
    );
    for r in &rows {
        let ci = r.reviews.override_rate_ci95.map_or("-".to_string(), |(lo, hi)| {
            format!("{:.0}–{:.0}%", lo * 100.0, hi * 100.0)
        });
        let _ = writeln!(
            s,
            "{:<16} {:<16} {:<16} {:>8} {:>8} {:>6} {:>8} {:>10} {:>8}  {ci}",
            r.destination,
            crate::text::for_terminal(&r.category),
            crate::text::for_terminal(&r.reviewer),
            r.reviews.reviewed,
            r.reviews.approved,
            r.reviews.edited,
            r.reviews.rejected,
            r.reviews.overridden,
            r.reviews.override_rate.map_or("-".to_string(), pct),
        );
    }
    if !agreement.is_empty() {
        let _ = writeln!(
            s,
            "\nagreement: the difference of two reviewers' override rates on one category, with its 95% interval\n"
        );
        for a in &agreement {
            let _ = writeln!(
                s,
                "{} / {}: {} {} vs {} {}: {:+.1} points ({:+.1} to {:+.1}): {}",
                a.destination,
                crate::text::for_terminal(&a.category),
                crate::text::for_terminal(&a.reviewers.0),
                pct(a.override_rates.0),
                crate::text::for_terminal(&a.reviewers.1),
                pct(a.override_rates.1),
                a.difference * 100.0,
                a.difference_ci95.0 * 100.0,
                a.difference_ci95.1 * 100.0,
                if a.consistent { "consistent" } else { "DIFFER" },
            );
        }
    }
    Ok(s.trim_end().to_string())
}

/// `tidegate report --by reviewer --format csv`: the reviewer rows.
pub fn reviewers_csv(v: &Value) -> Result<String, CliError> {
    let (rows, _) = reviewer_rows(v)?;
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record([
        "destination",
        "category",
        "reviewer",
        "reviewed",
        "approved",
        "edited",
        "rejected",
        "feedback",
        "overridden",
        "override_rate",
        "override_rate_low",
        "override_rate_high",
    ])
    .map_err(|e| CliError::BadAnswer(e.to_string()))?;
    let opt = |x: Option<f64>| x.map_or(String::new(), |x| x.to_string());
    for r in &rows {
        w.write_record([
            crate::text::csv_cell(&r.destination).into_owned(),
            crate::text::csv_cell(&r.category).into_owned(),
            crate::text::csv_cell(&r.reviewer).into_owned(),
            r.reviews.reviewed.to_string(),
            r.reviews.approved.to_string(),
            r.reviews.edited.to_string(),
            r.reviews.rejected.to_string(),
            r.reviews.feedback.to_string(),
            r.reviews.overridden.to_string(),
            opt(r.reviews.override_rate),
            opt(r.reviews.override_rate_ci95.map(|c| c.0)),
            opt(r.reviews.override_rate_ci95.map(|c| c.1)),
        ])
        .map_err(|e| CliError::BadAnswer(e.to_string()))?;
    }
    let bytes = w.into_inner().map_err(|e| CliError::BadAnswer(e.to_string()))?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// `tidegate audit`: one line per act, oldest first; what people typed
/// (reasons, notes) made safe for a terminal.
pub fn render_audit(v: &Value) -> String {
    use std::fmt::Write;
    let items = v["items"].as_array().cloned().unwrap_or_default();
    if items.is_empty() {
        return "nothing on record".to_string();
    }
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<25} {:<16} {:<10} {:<16} {:<24}  DETAIL",
        "WHEN", "ACTOR", "ACTION", "DESTINATION", "TARGET"
    );
    for i in &items {
        let text = |k: &str| crate::text::for_terminal(i[k].as_str().unwrap_or("")).into_owned();
        let _ = writeln!(
            s,
            "{:<25} {:<16} {:<10} {:<16} {:<24}  {}",
            text("at"),
            text("actor"),
            text("action"),
            text("destination"),
            text("target"),
            crate::text::for_terminal(&i["detail"].to_string()),
        );
    }
    if !v["next"].is_null() {
        let _ = writeln!(s, "(more: narrow the filters, or use --jsonl for everything)");
    }
    s.trim_end().to_string()
}

/// `tidegate reviews list`.
pub fn render_reviews(v: &Value) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let items = v["items"].as_array().cloned().unwrap_or_default();
    if items.is_empty() {
        return "nothing awaits review".to_string();
    }
    let _ = writeln!(
        s,
        "{:<24} {:<16} {:<16} {:<6} {:<9} {:<24}  ORIGINAL",
        "ID", "DESTINATION", "CATEGORY", "KIND", "REASON", "RECEIVED"
    );
    for i in &items {
        let mut original = crate::text::for_terminal(&i["original"].to_string()).into_owned();
        if original.len() > 60 {
            let cut = (0..=60).rev().find(|&n| original.is_char_boundary(n)).unwrap_or(0);
            original.truncate(cut);
            original.push('…');
        }
        let _ = writeln!(
            s,
            "{:<24} {:<16} {:<16} {:<6} {:<9} {:<24}  {original}",
            i["id"].as_str().unwrap_or_default(),
            i["destination"].as_str().unwrap_or_default(),
            t(&i["category"]),
            i["kind"].as_str().unwrap_or_default(),
            t(&i["reason"]),
            i["received_at"].as_str().unwrap_or_default(),
        );
    }
    if let Some(next) = v["next"].as_str() {
        let _ = writeln!(s, "more: --after {next}");
    }
    s
}

/// `tidegate plan` as text, and whether every objective can be met.
pub fn render_plan(chain: &crate::chain::Chain, source: &str, live: bool) -> (String, bool) {
    use crate::chain::plan::{bytes, human, per, Verdict};
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "tidegate plan for {source} ({})\n",
        if live {
            "live: rates as the running instance delivers now, message size from its queue"
        } else {
            "from the config: rates as configured, messages assumed 1 KiB"
        }
    );
    let mut ok = true;
    for (l, p) in chain.plans() {
        let i = l.plan_inputs();
        let rate = match (i.rate, l.batch_size) {
            (None, _) => "an unlimited rate".to_string(),
            (Some(r), 0 | 1) => format!("rate {}", per(r)),
            // The limit counts requests; the plan counts messages.
            (Some(r), b) => format!("rate {} ({} requests × batches of {b})", per(r), per(r / f64::from(b))),
        };
        let objective = i.latency_objective_text();
        let head = match p.verdict {
            Verdict::Meets => format!("meets {objective}"),
            Verdict::Breaches => {
                ok = false;
                format!("CANNOT MEET {objective}")
            }
            Verdict::Grows => {
                ok = false;
                match p.full_after {
                    Some(f) => format!(
                        "FILLS ITS QUEUE after {} of peak: producers will then be refused",
                        human(f)
                    ),
                    None => "FALLS BEHIND: the queue grows at peak".to_string(),
                }
            }
            Verdict::Undeclared => "not checked: no expected_volume".to_string(),
        };
        let _ = writeln!(s, "{}: {head}", l.destination);
        let Some(volume) = i.volume else {
            let _ = writeln!(s, "  {rate}; declare expected_volume to plan it\n");
            continue;
        };
        if p.growth_per_hour > 0.0 {
            let _ = writeln!(
                s,
                "  peak {} against {rate}: the queue grows by {:.0} messages an hour",
                per(volume),
                p.growth_per_hour
            );
        } else {
            let _ = writeln!(s, "  peak {} against {rate}: it keeps up", per(volume));
        }
        if let (Some(t), Some(o)) = (p.first_breach_after, i.objective) {
            let _ = writeln!(
                s,
                "  the oldest message passes {} after {} of peak; a rate of {} would meet it",
                human(o),
                human(t),
                per(p.rate_needed.unwrap_or(volume))
            );
        }
        if let (Some(backlog), Some(disk)) = (p.outage_backlog, p.outage_disk_bytes) {
            let drain = match (p.outage_drain, i.rate) {
                (Some(d), _) => format!("drains in {} once the downstream is back", human(d)),
                (None, None) => format!(
                    "drains as fast as the downstream answers, {} at a time (run plan with --admin for a measured rate)",
                    l.max_in_flight
                ),
                (None, Some(_)) => "never drains at this rate while the peak lasts".to_string(),
            };
            let _ = writeln!(
                s,
                "  a 1-hour outage at peak queues {backlog:.0} messages ({}) and {drain}",
                bytes(disk)
            );
            if let Some(refused) = p.outage_refused.filter(|r| *r >= 1.0) {
                let _ = writeln!(
                    s,
                    "  the queue is full before that hour ends: {refused:.0} more are refused (429 queue_full)"
                );
            }
        }
        let limits = format!(
            "max_messages {}, max_bytes {}",
            l.max_messages,
            bytes(l.max_bytes as f64)
        );
        match (p.full_after, p.full_during_outage_after) {
            (Some(f), Some(o)) => {
                let _ = writeln!(
                    s,
                    "  the queue is full ({limits}) after {} of peak, or {} into an outage",
                    human(f),
                    human(o)
                );
            }
            (None, Some(o)) => {
                let _ = writeln!(s, "  the queue is full ({limits}) {} into an outage at peak", human(o));
            }
            _ => {}
        }
        s.push('\n');
    }
    let _ = writeln!(
        s,
        "{}",
        if ok {
            "every declared objective can be met"
        } else {
            "some objectives cannot be met: raise the rate, lower the peak, or relax the objective"
        }
    );
    (s, ok)
}

/// How a destination's programs run (for `tidegate handoff test
/// --explain`).
pub fn render_explanation(dest: &str, e: Option<&crate::handoff::Explanation>) -> String {
    let Some(e) = e.filter(|e| !e.programs.is_empty()) else {
        return format!("{dest}: no programs; bodies are not run through jq\n");
    };
    let mut out = format!("{dest}:\n");
    let width = e.programs.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (key, why) in &e.programs {
        match why {
            None => out.push_str(&format!("  {key:width$}  compiled\n")),
            Some(why) => out.push_str(&format!("  {key:width$}  sandbox: {why}\n")),
        }
    }
    let place = |held_by: Option<&str>| match held_by {
        None => "in place (compiled)".to_string(),
        Some(key) => format!("in the sandbox (for its {key})"),
    };
    let transform_sandboxed = e.programs.iter().any(|(k, why)| k == "transform" && why.is_some());
    out.push_str(&format!("at ingress:   {}\n", place(e.admission_held_by.as_deref())));
    out.push_str(&format!(
        "at delivery:  {}\n",
        place(Some("transform").filter(|_| transform_sandboxed))
    ));
    out
}

/// A preview as a person reads it (for `tidegate handoff test`).
pub fn render_preview(v: &Value) -> String {
    let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
    if v["ok"] != Value::Bool(true) {
        let mut out = format!(
            "handoff failed at the {} stage of {}: {}\n",
            s("stage"),
            s("destination"),
            s("message")
        );
        for e in v["errors"].as_array().into_iter().flatten() {
            let f = |k: &str| e[k].as_str().unwrap_or_default().to_string();
            let at = if f("instance_path").is_empty() {
                "/".to_string()
            } else {
                f("instance_path")
            };
            out.push_str(&format!("  at {at}: {} (schema {})\n", f("message"), f("schema_path")));
        }
        return out;
    }
    let mut out = format!("destination: {}\n", s("destination"));
    if let Some(from) = v["routed_from"].as_str() {
        out.push_str(&format!("routed from: {from} (rule {})\n", v["route_rule"]));
    }
    if let Some(why) = v["held"].as_str() {
        out.push_str(&format!(
            "held:        for review ({why}); sent as below once approved\n"
        ));
    }
    out.push_str(&format!("category:    {}\n\n", s("category")));
    let r = &v["request"];
    out.push_str(&format!(
        "{} {}\n",
        r["method"].as_str().unwrap_or_default(),
        r["url"].as_str().unwrap_or_default()
    ));
    for (k, val) in r["headers"].as_object().into_iter().flatten() {
        out.push_str(&format!("{k}: {}\n", val.as_str().unwrap_or_default()));
    }
    out.push('\n');
    out.push_str(r["body"].as_str().unwrap_or_default());
    if !out.ends_with('\n') {
        out.push('\n');
    }
    out
}
