//! The operator CLI: subcommands that talk to a running instance's admin
//! API (`--admin URL`, token from `TIDEGATE_ADMIN_TOKEN`). Human-readable
//! output by default, the API's JSON with `--json`; a failed call exits
//! non-zero and prints the server's problem detail.

use std::time::Duration;

use serde_json::Value;

/// Why a CLI call failed; printed as one line.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("cannot reach the admin API at {url}: {}", reach_error(.source))]
    Unreachable { url: String, source: reqwest::Error },
    #[error("{status} {code}: {detail}{}", hint(*.status))]
    Problem { status: u16, code: String, detail: String },
    #[error("unexpected answer from the admin API: {0}")]
    BadAnswer(String),
    /// The operator did not confirm a destructive command.
    #[error("{0}")]
    NotConfirmed(String),
}

/// What an operator does about a refusal the server gave.
fn hint(status: u16) -> &'static str {
    match status {
        401 => " (set TIDEGATE_ADMIN_TOKEN to the token named by admin.token_env)",
        _ => "",
    }
}

/// reqwest's own text ("error sending request for url") does not say why;
/// the innermost cause does ("Connection refused (os error 111)").
fn reach_error(e: &reqwest::Error) -> String {
    let mut cause: &dyn std::error::Error = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    if e.is_timeout() {
        "timed out".to_string()
    } else {
        cause.to_string()
    }
}

pub struct Client {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl Client {
    pub fn new(base: &str, token: Option<String>) -> Client {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
        Client {
            base: base.trim_end_matches('/').to_string(),
            token: token.filter(|t| !t.is_empty()),
            http,
        }
    }

    pub async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Result<Value, CliError> {
        let url = format!("{}{path}", self.base);
        let mut req = self.http.request(method, &url);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b.to_string());
        }
        let resp = req
            .send()
            .await
            .map_err(|source| CliError::Unreachable { url, source })?;
        let status = resp.status().as_u16();
        let text = resp.text().await.map_err(|e| CliError::BadAnswer(e.to_string()))?;
        let v: Value = serde_json::from_str(&text).map_err(|_| CliError::BadAnswer(text.clone()))?;
        if status >= 400 {
            return Err(CliError::Problem {
                status,
                code: v["code"].as_str().unwrap_or("error").to_string(),
                detail: v["detail"].as_str().unwrap_or(&text).to_string(),
            });
        }
        Ok(v)
    }

    /// The status of a plain GET (probes answer text, not JSON).
    pub async fn probe(&self, path: &str) -> Result<u16, CliError> {
        let url = format!("{}{path}", self.base);
        let resp = self
            .http
            .get(&url)
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .map_err(|source| CliError::Unreachable { url, source })?;
        Ok(resp.status().as_u16())
    }

    /// A GET whose answer is text (an export), returned as it came.
    pub async fn get_text(&self, path: &str) -> Result<String, CliError> {
        let url = format!("{}{path}", self.base);
        let mut req = self.http.get(&url);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        let resp = req
            .send()
            .await
            .map_err(|source| CliError::Unreachable { url, source })?;
        let status = resp.status().as_u16();
        let text = resp.text().await.map_err(|e| CliError::BadAnswer(e.to_string()))?;
        if status >= 400 {
            let v: Value = serde_json::from_str(&text).unwrap_or_default();
            return Err(CliError::Problem {
                status,
                code: v["code"].as_str().unwrap_or("error").to_string(),
                detail: v["detail"].as_str().unwrap_or(&text).to_string(),
            });
        }
        Ok(text)
    }

    pub async fn get(&self, path: &str) -> Result<Value, CliError> {
        self.call(reqwest::Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Option<Value>) -> Result<Value, CliError> {
        self.call(reqwest::Method::POST, path, body).await
    }
}

fn num(v: &Value) -> f64 {
    v.as_f64().unwrap_or(0.0)
}

fn rate(v: &Value) -> String {
    match v.as_f64() {
        None => "unlimited".into(),
        Some(r) if r >= 10.0 => format!("{r:.0}"),
        Some(r) => format!("{r:.2}"),
    }
}

fn age(secs: f64) -> String {
    let s = secs as u64;
    match s {
        0..=59 => format!("{secs:.1}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// `tidegate status`: samples the destinations twice, `interval` apart, to
/// show delivered/s, and renders a table.
pub async fn status(client: &Client, interval: Duration, json: bool) -> Result<String, CliError> {
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
            q["depth"].to_string(),
            age(num(&q["oldest_age_seconds"])),
            q["in_flight"].to_string(),
            format!(
                "{}/{}",
                rate(&rl["effective_per_second"]),
                rate(&rl["configured_per_second"])
            ),
            q["dead_letters"].to_string(),
            rate_of(d),
        ));
        if let Some(reason) = d["state_reason"]
            .as_str()
            .filter(|r| !r.is_empty() && d["state"] != "running")
        {
            out.push_str(&format!("  └ {reason}\n"));
        }
    }
    Ok(out)
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
        d["state_reason"]
            .as_str()
            .filter(|r| !r.is_empty())
            .map(|r| format!(" — {r}"))
            .unwrap_or_default()
    );
    // Halted keys are each a stop an operator must lift: one line each.
    for k in d["halted_keys"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "\n  key {} halted at {} — {}",
            k["key"].as_str().unwrap_or("?"),
            k["message_id"].as_str().unwrap_or("?"),
            k["reason"].as_str().unwrap_or("")
        ));
    }
    out
}

pub fn render_dead_letters(v: &Value) -> String {
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
                e["detail"].as_str().unwrap_or("").chars().take(60).collect::<String>()
            )
        };
        out.push_str(&format!(
            "{:<26} {:<22} {:>8} {:<28} {}\n",
            i["id"].as_str().unwrap_or("?"),
            i["reason"].as_str().unwrap_or(""),
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
                v.as_str().map(str::to_string).unwrap_or(v.to_string())
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
            e["detail"].as_str().unwrap_or("")
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
        let mut original = i["original"].to_string();
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
            i["category"].as_str().unwrap_or_default(),
            i["kind"].as_str().unwrap_or_default(),
            i["reason"].as_str().unwrap_or_default(),
            i["received_at"].as_str().unwrap_or_default(),
        );
    }
    if let Some(next) = v["next"].as_str() {
        let _ = writeln!(s, "more: --after {next}");
    }
    s
}

/// Live figures for a chain from a running instance: two looks at its
/// destinations `interval` apart (for delivered rates) and the last day's
/// override rates.
pub async fn live_chain(
    client: &Client,
    chain: crate::chain::Chain,
    interval: Duration,
) -> Result<crate::chain::Chain, CliError> {
    let first = client.get("/v1/destinations").await?;
    let t0 = std::time::Instant::now();
    tokio::time::sleep(interval).await;
    let second = client.get("/v1/destinations").await?;
    let elapsed = t0.elapsed().as_secs_f64().max(0.001);
    let quality = client.get("/v1/quality?window=24h").await?;
    let find = |v: &Value, name: &str| -> Option<Value> {
        v["destinations"]
            .as_array()?
            .iter()
            .find(|d| d["name"] == name)
            .cloned()
    };
    Ok(chain.with_live(|name| {
        let now = find(&second, name)?;
        let before = find(&first, name);
        let delivered = |d: &Value| num(&d["counters"]["delivered"]);
        let mut reviewed = 0.0;
        let mut overridden = 0.0;
        for row in quality["categories"].as_array().into_iter().flatten() {
            if row["destination"] == name {
                reviewed += num(&row["reviewed"]);
                overridden += num(&row["edited"]) + num(&row["rejected"]) + num(&row["overridden"]);
            }
        }
        Some(crate::chain::Live {
            state: now["state"].as_str().unwrap_or("?").to_string(),
            depth: now["queue"]["depth"].as_u64().unwrap_or(0),
            bytes: now["queue"]["bytes"].as_u64().unwrap_or(0),
            oldest_age_seconds: num(&now["queue"]["oldest_age_seconds"]),
            effective_rate: now["rate_limit"]["effective_per_second"].as_f64(),
            delivered_rate: before.map(|b| ((delivered(&now) - delivered(&b)) / elapsed).max(0.0)),
            override_rate: (reviewed > 0.0).then(|| overridden / reviewed),
        })
    }))
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
        let rate = i
            .rate
            .map_or("an unlimited rate".to_string(), |r| format!("rate {}", per(r)));
        let objective = i.latency_objective_text();
        let head = match p.verdict {
            Verdict::Meets => format!("meets {objective}"),
            Verdict::Breaches => {
                ok = false;
                format!("CANNOT MEET {objective}")
            }
            Verdict::Grows => "falls behind (no latency_objective to check)".to_string(),
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
            let drain = match p.outage_drain {
                Some(d) => format!("drains in {} once the downstream is back", human(d)),
                None => "never drains at this rate while the peak lasts".to_string(),
            };
            let _ = writeln!(
                s,
                "  a 1-hour outage at peak queues {backlog:.0} messages ({}) and {drain}",
                bytes(disk)
            );
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
