//! The operator commands: each one call (or two) to a running instance's
//! admin API, printed as the operator asked (a table, or `--json`).

use std::time::Duration;

use serde_json::{json, Value};

use super::args::{
    Admin, Command, CorrectionAction, DeadLetterAction, ExportFormat, ReportBy, ReportFormat, ReviewAction,
};
use super::render::{self, age, num, rate};
use super::{read_input, runtime, CliError, Client};
use std::process::ExitCode;

/// Runs an operator subcommand against the admin API.
pub(super) fn operator(cmd: Command) -> ExitCode {
    let rt = match runtime(tokio::runtime::Builder::new_current_thread()) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let token = std::env::var("TIDEGATE_ADMIN_TOKEN").ok();
    let client = |a: &Admin| admin_client(a, &token);
    let result = rt.block_on(async {
        match cmd {
            Command::Status { admin, interval } => status(&client(&admin), interval, admin.json).await,
            Command::Pause { destination, admin } => {
                let v = client(&admin)
                    .post(&format!("/v1/destinations/{destination}/pause"), None)
                    .await?;
                Ok(shown(admin.json, &v, render::render_destination))
            }
            Command::Resume {
                destination,
                skip_head,
                key,
                by,
                reason,
                admin,
            } => resume(&client(&admin), &destination, skip_head, [key, by, reason], admin.json).await,
            Command::Reviews { action } => reviews(action, &token).await,
            Command::Report {
                since,
                destination,
                format,
                by,
                admin,
            } => report(&client(&admin), &since, destination.as_deref(), format, by, admin.json).await,
            Command::Audit {
                since,
                actor,
                action,
                destination,
                jsonl,
                admin,
            } => {
                let filters = [
                    ("since", since),
                    ("actor", actor),
                    ("action", action),
                    ("destination", destination),
                ];
                audit(&client(&admin), filters, jsonl, admin.json).await
            }
            Command::Corrections {
                action:
                    CorrectionAction::Export {
                        destination,
                        since,
                        format,
                        admin,
                    },
            } => export_corrections(&client(&admin), &since, destination.as_deref(), format).await,
            Command::Message { id, admin } => {
                let v = client(&admin).get(&format!("/v1/messages/{id}")).await?;
                Ok(shown(admin.json, &v, render::render_message))
            }
            Command::Healthcheck { ready, admin } => healthcheck(&client(&admin), ready).await,
            Command::Reload { admin } => {
                let v = client(&admin).post("/v1/reload", None).await?;
                Ok(shown(admin.json, &v, render::render_reload))
            }
            Command::DeadLetters { action } => dead_letters(action, &token).await,
            Command::Serve { .. }
            | Command::Check { .. }
            | Command::Journal { .. }
            | Command::Handoff { .. }
            | Command::Map { .. }
            | Command::Plan { .. } => {
                unreachable!("handled in main")
            }
        }
    });
    print_answer(result)
}

/// A client for the admin API `a` names, with the token from the
/// environment.
fn admin_client(a: &Admin, token: &Option<String>) -> Client {
    Client::new(&a.url(), token.clone())
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

/// An admin answer as the operator asked for it: the JSON, or the table.
fn shown(json: bool, v: &Value, human: fn(&Value) -> String) -> String {
    if json {
        pretty(v)
    } else {
        human(v)
    }
}

/// The answer on stdout, or the error on stderr; the exit code.
fn print_answer(result: Result<String, CliError>) -> ExitCode {
    match result {
        Ok(out) => {
            use std::io::Write;
            // A reader that went away (`tidegate status | head`) is not an
            // error, and must not be a panic, as println! would make it.
            match writeln!(std::io::stdout().lock(), "{}", out.trim_end()) {
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                    eprintln!("tidegate: cannot write the answer: {e}");
                    ExitCode::FAILURE
                }
                _ => ExitCode::SUCCESS,
            }
        }
        Err(e) => {
            eprintln!("tidegate: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `resume`: `[key, by, reason]` as the API's query.
async fn resume(
    c: &Client,
    destination: &str,
    skip_head: bool,
    [key, by, reason]: [Option<String>; 3],
    json: bool,
) -> Result<String, CliError> {
    let mut query = form_urlencoded::Serializer::new(String::new());
    query.append_pair("skip_head", &skip_head.to_string());
    for (k, v) in [("key", &key), ("by", &by), ("reason", &reason)] {
        if let Some(v) = v {
            query.append_pair(k, v);
        }
    }
    let path = format!("/v1/destinations/{destination}/resume?{}", query.finish());
    let v = c.post(&path, None).await.map_err(|e| match e {
        // The API names its query parameters; here they are flags.
        CliError::Problem { status, code, .. } if code == "reason_required" => CliError::Problem {
            status,
            code,
            detail: format!(
                "{destination} was paused by governance: say who resumes it and why \
                 (tidegate resume {destination} --by WHO --reason WHY)"
            ),
        },
        e => e,
    })?;
    Ok(shown(json, &v, render::render_destination))
}

/// `report`: quality over `since`, as a table, CSV or JSON.
async fn report(
    c: &Client,
    since: &str,
    destination: Option<&str>,
    format: ReportFormat,
    by: ReportBy,
    json: bool,
) -> Result<String, CliError> {
    let mut query = form_urlencoded::Serializer::new(String::new());
    query.append_pair("window", since);
    if let Some(d) = destination {
        query.append_pair("destination", d);
    }
    if by == ReportBy::Reviewer {
        query.append_pair("by", "reviewer");
    }
    let v = c.get(&format!("/v1/quality?{}", query.finish())).await?;
    match (json, format, by) {
        (true, ..) | (_, ReportFormat::Json, _) => Ok(pretty(&v)),
        (_, ReportFormat::Table, ReportBy::Category) => render::render_report(&v, since),
        (_, ReportFormat::Csv, ReportBy::Category) => render::report_csv(&v),
        (_, ReportFormat::Table, ReportBy::Reviewer) => render::render_reviewers(&v, since),
        (_, ReportFormat::Csv, ReportBy::Reviewer) => render::reviewers_csv(&v),
    }
}

/// `audit`: a table of the acts, or (`--jsonl`) the export as it comes.
async fn audit(c: &Client, filters: [(&str, Option<String>); 4], jsonl: bool, json: bool) -> Result<String, CliError> {
    let mut query = form_urlencoded::Serializer::new(String::new());
    for (k, v) in &filters {
        if let Some(v) = v {
            query.append_pair(k, v);
        }
    }
    if jsonl {
        query.append_pair("format", "jsonl");
        return c.get_text(&format!("/v1/audit?{}", query.finish())).await;
    }
    query.append_pair("limit", "1000");
    let v = c.get(&format!("/v1/audit?{}", query.finish())).await?;
    Ok(shown(json, &v, render::render_audit))
}

/// `corrections export`: the API's export, passed through as it comes.
async fn export_corrections(
    c: &Client,
    since: &str,
    destination: Option<&str>,
    format: ExportFormat,
) -> Result<String, CliError> {
    let mut query = form_urlencoded::Serializer::new(String::new());
    query.append_pair("since", since);
    query.append_pair(
        "format",
        match format {
            ExportFormat::Jsonl => "jsonl",
            ExportFormat::Csv => "csv",
        },
    );
    if let Some(d) = destination {
        query.append_pair("destination", d);
    }
    c.get_text(&format!("/v1/corrections?{}", query.finish())).await
}

/// `healthcheck`: exit 0 when the probe answers 200.
async fn healthcheck(c: &Client, ready: bool) -> Result<String, CliError> {
    let path = if ready { "/readyz" } else { "/healthz" };
    let status = c.probe(path).await?;
    if status == 200 {
        Ok(format!("{path}: ok"))
    } else {
        Err(CliError::Problem {
            status,
            code: "unhealthy".into(),
            detail: format!("{path} answered {status}"),
        })
    }
}

/// `dead-letters list|replay|purge`.
async fn dead_letters(action: DeadLetterAction, token: &Option<String>) -> Result<String, CliError> {
    let client = |a: &Admin| admin_client(a, token);
    match action {
        DeadLetterAction::List {
            destination,
            limit,
            after,
            admin,
        } => {
            let mut path = format!("/v1/destinations/{destination}/dead-letters?limit={limit}");
            if let Some(a) = after {
                path.push_str(&format!("&after={a}"));
            }
            let v = client(&admin).get(&path).await?;
            Ok(shown(admin.json, &v, render::render_dead_letters))
        }
        DeadLetterAction::Replay {
            destination,
            ids,
            admin,
        } => {
            let body = if ids.is_empty() {
                json!({})
            } else {
                json!({ "ids": ids })
            };
            let path = format!("/v1/destinations/{destination}/dead-letters/replay");
            let v = client(&admin).post(&path, Some(body)).await?;
            Ok(if admin.json {
                pretty(&v)
            } else {
                format!("replayed {}", v["replayed"])
            })
        }
        DeadLetterAction::Purge {
            destination,
            yes,
            admin,
        } => {
            let c = client(&admin);
            if !yes {
                let d = c.get(&format!("/v1/destinations/{destination}")).await?;
                let n = d["queue"]["dead_letters"].as_u64().unwrap_or(0);
                confirm(&format!(
                    "purge {n} dead letter{} of destination {destination} for good",
                    if n == 1 { "" } else { "s" }
                ))?;
            }
            let path = format!("/v1/destinations/{destination}/dead-letters");
            let v = c.call(reqwest::Method::DELETE, &path, None).await?;
            Ok(if admin.json {
                pretty(&v)
            } else {
                format!("purged {}", v["purged"])
            })
        }
    }
}

/// A decision as the CLI prints it: the API's JSON, or one line.
fn decided(json: bool, v: serde_json::Value) -> String {
    if json {
        serde_json::to_string_pretty(&v).unwrap_or_default()
    } else {
        format!(
            "{} {}: {} by {}",
            v["id"].as_str().unwrap_or_default(),
            v["destination"].as_str().unwrap_or_default(),
            v["decision"].as_str().unwrap_or_default(),
            v["reviewer"].as_str().unwrap_or_default()
        )
    }
}

/// `tidegate reviews ...`.
async fn reviews(action: ReviewAction, token: &Option<String>) -> Result<String, CliError> {
    let client = |a: &Admin| admin_client(a, token);
    let pretty = |v: &serde_json::Value| serde_json::to_string_pretty(v).unwrap_or_default();
    let decide = |admin: &Admin, id: &str, what: &str, body: serde_json::Value| {
        let (client, path) = (client(admin), format!("/v1/reviews/{id}/{what}"));
        let json = admin.json;
        async move {
            let v = client.post(&path, Some(body)).await?;
            Ok::<_, CliError>(decided(json, v))
        }
    };
    match action {
        ReviewAction::List {
            destination,
            category,
            limit,
            after,
            admin,
        } => {
            let mut query = form_urlencoded::Serializer::new(String::new());
            query.append_pair("limit", &limit.to_string());
            for (k, v) in [
                ("destination", &destination),
                ("category", &category),
                ("after", &after),
            ] {
                if let Some(v) = v {
                    query.append_pair(k, v);
                }
            }
            let v = client(&admin).get(&format!("/v1/reviews?{}", query.finish())).await?;
            Ok(if admin.json {
                pretty(&v)
            } else {
                render::render_reviews(&v)
            })
        }
        ReviewAction::Approve {
            id,
            reviewer,
            note,
            admin,
        } => decide(&admin, &id, "approve", json!({"reviewer": reviewer, "note": note})).await,
        ReviewAction::Edit {
            id,
            reviewer,
            body,
            note,
            admin,
        } => {
            let text = read_input(&body).map_err(CliError::BadAnswer)?;
            let corrected: serde_json::Value = serde_json::from_slice(&text)
                .map_err(|e| CliError::BadAnswer(format!("{} is not JSON: {e}", body.display())))?;
            decide(
                &admin,
                &id,
                "edit",
                json!({"reviewer": reviewer, "note": note, "body": corrected}),
            )
            .await
        }
        ReviewAction::Reject {
            id,
            reviewer,
            reason,
            admin,
        } => decide(&admin, &id, "reject", json!({"reviewer": reviewer, "reason": reason})).await,
    }
}

/// Asks the operator to confirm `what` on the terminal; refuses when
/// standard input is not one (a script must say --yes).
fn confirm(what: &str) -> Result<(), CliError> {
    use std::io::{BufRead, IsTerminal, Write};
    if !std::io::stdin().is_terminal() {
        return Err(CliError::NotConfirmed(format!(
            "refusing to {what} without confirmation: run it on a terminal, or pass --yes"
        )));
    }
    eprint!("{what}? [y/N] ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    let _ = std::io::stdin().lock().read_line(&mut answer);
    if matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes") {
        Ok(())
    } else {
        Err(CliError::NotConfirmed("nothing purged".to_string()))
    }
}

/// `tidegate status`: samples the destinations twice, `interval` apart, to
/// show delivered/s, and renders a table.
async fn status(client: &Client, interval: Duration, json: bool) -> Result<String, CliError> {
    let first = client.get("/v1/destinations").await?;
    tokio::time::sleep(interval).await;
    let second = client.get("/v1/destinations").await?;
    let empty = vec![];
    let before = first["destinations"].as_array().unwrap_or(&empty);
    let after = second["destinations"].as_array().unwrap_or(&empty);
    let rate_of = |d: &Value| {
        let prev = before
            .iter()
            .find(|p| p["name"] == d["name"])
            .map(|p| num(&p["counters"]["delivered"]))
            .unwrap_or(0.0);
        (num(&d["counters"]["delivered"]) - prev).max(0.0) / interval.as_secs_f64()
    };
    if json {
        let rows: Vec<Value> = after
            .iter()
            .map(|d| {
                let mut d = d.clone();
                d["delivered_per_second"] = serde_json::json!(rate_of(&d));
                d
            })
            .collect();
        return Ok(serde_json::to_string_pretty(&serde_json::json!({ "destinations": rows })).unwrap_or_default());
    }
    let mut out = format!(
        "{:<20} {:<9} {:>9} {:>10} {:>9} {:>21} {:>12} {:>12}\n",
        "DESTINATION", "STATE", "DEPTH", "OLDEST", "IN FLIGHT", "RATE EFF/CONF (/s)", "DEAD LETTERS", "DELIVERED/S"
    );
    for d in after {
        let q = &d["queue"];
        let rl = &d["rate_limit"];
        out.push_str(&format!(
            "{:<20} {:<9} {:>9} {:>10} {:>9} {:>21} {:>12} {:>12.1}\n",
            d["name"].as_str().unwrap_or("?"),
            d["state"].as_str().unwrap_or("?"),
            crate::text::thousands(q["depth"].as_u64().unwrap_or(0)),
            age(num(&q["oldest_age_seconds"])),
            crate::text::thousands(q["in_flight"].as_u64().unwrap_or(0)),
            format!(
                "{}/{}",
                rate(&rl["effective_per_second"]),
                rate(&rl["configured_per_second"])
            ),
            crate::text::thousands(q["dead_letters"].as_u64().unwrap_or(0)),
            rate_of(d),
        ));
        if let Some(reason) = d["state_reason"]
            .as_str()
            .filter(|r| !r.is_empty() && d["state"] != "running")
        {
            out.push_str(&format!("  └ {}\n", crate::text::for_terminal(reason)));
        }
    }
    Ok(out)
}
