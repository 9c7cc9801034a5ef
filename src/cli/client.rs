//! The admin API as the operator commands call it: the base URL and token,
//! and each failure as something an operator can act on ([`CliError`]).

use std::time::Duration;

use serde_json::Value;

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

/// A problem+json refusal as the CLI reports it: its detail, then each of
/// its `errors` (a schema violation lists every one, not the first).
fn problem(status: u16, v: &Value, text: &str) -> CliError {
    let mut detail = crate::text::for_terminal(v["detail"].as_str().unwrap_or(text)).into_owned();
    for e in v["errors"].as_array().into_iter().flatten() {
        let at = e["instance_path"].as_str().filter(|p| !p.is_empty()).unwrap_or("/");
        let message = e["message"].as_str().unwrap_or_default();
        detail.push_str(&format!(
            "\n  at {}: {}",
            crate::text::for_terminal(at),
            crate::text::for_terminal(message)
        ));
    }
    CliError::Problem {
        status,
        code: v["code"].as_str().unwrap_or("error").to_string(),
        detail,
    }
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
            return Err(problem(status, &v, &text));
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
            return Err(problem(status, &v, &text));
        }
        Ok(text)
    }

    pub async fn get(&self, path: &str) -> Result<Value, CliError> {
        self.call(reqwest::Method::GET, path, None).await
    }

    /// A GET read as `T`; an answer of another shape says so.
    pub async fn get_as<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, CliError> {
        let v = self.get(path).await?;
        serde_json::from_value(v)
            .map_err(|e| CliError::BadAnswer(format!("GET {path}: {e} (is it the same tidegate version?)")))
    }

    pub async fn post(&self, path: &str, body: Option<Value>) -> Result<Value, CliError> {
        self.call(reqwest::Method::POST, path, body).await
    }
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
        let delivered = |d: &Value| super::render::num(&d["counters"]["delivered"]);
        let mut reviewed = 0.0;
        let mut overridden = 0.0;
        for row in quality["categories"].as_array().into_iter().flatten() {
            if row["destination"] == name {
                reviewed += super::render::num(&row["reviewed"]);
                overridden += super::render::num(&row["edited"])
                    + super::render::num(&row["rejected"])
                    + super::render::num(&row["overridden"]);
            }
        }
        Some(crate::chain::Live {
            state: now["state"].as_str().unwrap_or("?").to_string(),
            depth: now["queue"]["depth"].as_u64().unwrap_or(0),
            bytes: now["queue"]["bytes"].as_u64().unwrap_or(0),
            oldest_age_seconds: super::render::num(&now["queue"]["oldest_age_seconds"]),
            effective_rate: now["rate_limit"]["effective_per_second"].as_f64(),
            delivered_rate: before.map(|b| ((delivered(&now) - delivered(&b)) / elapsed).max(0.0)),
            override_rate: (reviewed > 0.0).then(|| overridden / reviewed),
        })
    }))
}
