//! Delivery: one HTTP attempt to a downstream, and what its result means.
//!
//! This module knows nothing of the journal or of retry policy; it turns an
//! attempt into an [`Outcome`] (delivered, transient, permanent) with the
//! response and any rate-limit hints the downstream gave. [`Deliver`] is the
//! seam dispatch tests use to run without sockets.

mod headers;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method};

pub use headers::{parse_rate_limit_pause, parse_retry_after};

use crate::config::TrustedCa;

/// At most this much of a downstream's response body is read; the rest is
/// discarded. Enough for an error detail or a `Prefer: wait` reply.
pub const RESPONSE_BODY_LIMIT: usize = 1 << 20;

/// One attempt, fully prepared.
#[derive(Clone, Debug)]
pub struct Request {
    pub method: Method,
    pub url: reqwest::Url,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub timeout: Duration,
    /// Extra CAs this destination trusts; `None` for the bundled web roots.
    pub trust: Option<Arc<TrustedCa>>,
}

/// What the downstream answered.
#[derive(Clone, Debug, Default)]
pub struct Response {
    pub status: u16,
    pub content_type: Option<String>,
    pub body: Bytes,
    /// `Retry-After`, as a delay from now.
    pub retry_after: Option<Duration>,
    /// Rate-limit headers said the quota is spent: pause this long.
    pub quota_pause: Option<Duration>,
}

/// The class of a failed attempt, as counted in metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureKind {
    Http3xx,
    Http4xx,
    Http429,
    Http5xx,
    Timeout,
    ConnectError,
}

impl FailureKind {
    /// The `outcome` label of `tidegate_delivery_attempts_total`.
    pub fn label(self) -> &'static str {
        match self {
            FailureKind::Http3xx => "http_3xx",
            FailureKind::Http4xx => "http_4xx",
            FailureKind::Http429 => "http_429",
            FailureKind::Http5xx => "http_5xx",
            FailureKind::Timeout => "timeout",
            FailureKind::ConnectError => "connect_error",
        }
    }
}

/// The result of one attempt.
#[derive(Clone, Debug)]
pub enum Outcome {
    Delivered(Response),
    /// Worth retrying: connect error, timeout, 408, 425, 429, 5xx (500,
    /// 502, 503, 504).
    Transient {
        kind: FailureKind,
        response: Option<Response>,
        detail: String,
    },
    /// Retrying will not help: every other non-2xx status.
    Permanent {
        kind: FailureKind,
        response: Response,
    },
}

impl Outcome {
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Delivered(_) => "success",
            Outcome::Transient { kind, .. } | Outcome::Permanent { kind, .. } => kind.label(),
        }
    }

    pub fn response(&self) -> Option<&Response> {
        match self {
            Outcome::Delivered(r) => Some(r),
            Outcome::Transient { response, .. } => response.as_ref(),
            Outcome::Permanent { response, .. } => Some(response),
        }
    }

    /// Classifies a complete HTTP response.
    pub fn from_response(resp: Response) -> Outcome {
        let status = resp.status;
        match status {
            200..=299 => Outcome::Delivered(resp),
            408 | 425 | 429 | 500 | 502 | 503 | 504 => {
                let kind = match status {
                    429 => FailureKind::Http429,
                    s if s >= 500 => FailureKind::Http5xx,
                    _ => FailureKind::Http4xx,
                };
                Outcome::Transient {
                    kind,
                    detail: format!("downstream answered {status}"),
                    response: Some(resp),
                }
            }
            s => {
                let kind = match s {
                    300..=399 => FailureKind::Http3xx,
                    400..=499 => FailureKind::Http4xx,
                    _ => FailureKind::Http5xx,
                };
                Outcome::Permanent { kind, response: resp }
            }
        }
    }
}

/// Performs delivery attempts.
pub trait Deliver: Send + Sync + 'static {
    fn deliver(&self, req: Request) -> Pin<Box<dyn Future<Output = Outcome> + Send + 'static>>;
}

/// The real thing: pooled reqwest clients (rustls), redirects not followed.
///
/// Destinations that trust the bundled web roots share one client (one
/// connection pool); each distinct `ca_file` bundle gets a client of its own,
/// built on first use and kept for the life of the process (a reload that
/// changes the file's contents yields a new fingerprint, hence a new client).
pub struct HttpDeliverer {
    default: reqwest::Client,
    with_ca: Mutex<HashMap<u64, reqwest::Client>>,
}

impl HttpDeliverer {
    pub fn new() -> Result<Self, reqwest::Error> {
        Ok(HttpDeliverer {
            default: Self::builder().build()?,
            with_ca: Mutex::new(HashMap::new()),
        })
    }

    fn builder() -> reqwest::ClientBuilder {
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(256)
            .connect_timeout(Duration::from_secs(10))
            .tcp_nodelay(true)
            .user_agent(concat!("tidegate/", env!("CARGO_PKG_VERSION")))
    }

    fn client_for(&self, trust: Option<&TrustedCa>) -> Result<reqwest::Client, reqwest::Error> {
        let Some(ca) = trust else {
            return Ok(self.default.clone());
        };
        let mut clients = self.with_ca.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = clients.get(&ca.fingerprint) {
            return Ok(c.clone());
        }
        let mut b = Self::builder();
        for cert in reqwest::Certificate::from_pem_bundle(&ca.pem)? {
            b = b.add_root_certificate(cert);
        }
        let client = b.build()?;
        clients.insert(ca.fingerprint, client.clone());
        Ok(client)
    }
}

impl Deliver for HttpDeliverer {
    fn deliver(&self, req: Request) -> Pin<Box<dyn Future<Output = Outcome> + Send + 'static>> {
        let client = self.client_for(req.trust.as_deref());
        Box::pin(async move {
            let client = match client {
                Ok(c) => c,
                // The bundle parsed when the config loaded, so this is rare;
                // it is the operator's to fix, and transient like a refused
                // connection.
                Err(e) => {
                    return Outcome::Transient {
                        kind: FailureKind::ConnectError,
                        response: None,
                        detail: format!("building a client for ca_file: {}", error_chain(&e)),
                    }
                }
            };
            let timeout = req.timeout;
            let attempt = async {
                let resp = client
                    .request(req.method, req.url)
                    .headers(req.headers)
                    .body(req.body)
                    .send()
                    .await?;
                let status = resp.status().as_u16();
                let headers = resp.headers().clone();
                let body = read_bounded(resp).await?;
                Ok::<_, reqwest::Error>(response_of(status, &headers, body))
            };
            match tokio::time::timeout(timeout, attempt).await {
                Err(_) => Outcome::Transient {
                    kind: FailureKind::Timeout,
                    response: None,
                    detail: format!("no complete response within {}ms", timeout.as_millis()),
                },
                Ok(Ok(resp)) => Outcome::from_response(resp),
                Ok(Err(e)) => Outcome::Transient {
                    kind: if e.is_timeout() {
                        FailureKind::Timeout
                    } else {
                        FailureKind::ConnectError
                    },
                    response: None,
                    detail: error_chain(&e.without_url()),
                },
            }
        })
    }
}

/// The error and its causes on one line (reqwest's top-level message alone
/// rarely says what went wrong).
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

async fn read_bounded(mut resp: reqwest::Response) -> Result<Bytes, reqwest::Error> {
    let mut buf = BytesMut::new();
    while let Some(chunk) = resp.chunk().await? {
        let room = RESPONSE_BODY_LIMIT - buf.len();
        buf.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if buf.len() >= RESPONSE_BODY_LIMIT {
            break; // dropping the response closes the connection
        }
    }
    Ok(buf.freeze())
}

pub fn response_of(status: u16, headers: &HeaderMap, body: Bytes) -> Response {
    let now = std::time::SystemTime::now();
    Response {
        status,
        content_type: headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        body,
        retry_after: headers
            .get(http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, now)),
        quota_pause: parse_rate_limit_pause(headers, now),
    }
}

/// Joins a destination's base URL and a producer's remaining path and
/// query. The scheme, host and port always come from the base: a producer
/// can choose the path under it, never where tidegate sends.
pub fn join_url(base: &reqwest::Url, path_and_query: &str) -> Option<reqwest::Url> {
    let (path, query) = match path_and_query.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path_and_query, None),
    };
    let mut url = base.clone();
    let joined = format!("{}{}", base.path().trim_end_matches('/'), path);
    url.set_path(if joined.is_empty() { "/" } else { &joined });
    let q = match (base.query(), query) {
        (Some(a), Some(b)) => Some(format!("{a}&{b}")),
        (Some(a), None) => Some(a.to_string()),
        (None, Some(b)) => Some(b.to_string()),
        (None, None) => None,
    };
    url.set_query(q.as_deref());
    (url.host() == base.host() && url.port_or_known_default() == base.port_or_known_default()).then_some(url)
}

/// The destination's configured headers (secrets: marked sensitive, so
/// no debug output shows them), over whatever `headers` holds.
pub fn put_configured_headers(cfg: &crate::config::Destination, headers: &mut HeaderMap) {
    for (k, v) in &cfg.headers {
        if let Ok(mut val) = http::HeaderValue::from_str(v.expose()) {
            val.set_sensitive(true);
            headers.insert(k.clone(), val);
        }
    }
}

/// Adds a header, ignoring names or values that are not valid HTTP (they
/// were validated at ingress and in config; this is belt and braces).
pub fn put_header(map: &mut HeaderMap, name: &str, value: &str) {
    if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_str(value)) {
        map.append(n, v);
    }
}

/// A W3C `traceparent` for one attempt: the producer's trace id and flags,
/// with a fresh span id, so every attempt is its own span in the trace.
/// `None` if the producer's header is not a valid version-00 traceparent.
pub fn attempt_traceparent(producer: &str, span_id: u64) -> Option<String> {
    let parts: Vec<&str> = producer.trim().split('-').collect();
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase());
    match parts.as_slice() {
        [version, trace, parent, flags]
            if hex(version, 2)
                && *version != "ff"
                && hex(trace, 32)
                && hex(parent, 16)
                && hex(flags, 2)
                && trace.bytes().any(|b| b != b'0') =>
        {
            Some(format!("00-{trace}-{:016x}-{flags}", span_id.max(1)))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_attempt_gets_a_new_span_in_the_same_trace() {
        let tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        assert_eq!(
            attempt_traceparent(tp, 0xabc).unwrap(),
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000abc-01"
        );
        assert_eq!(attempt_traceparent("garbage", 1), None);
        assert_eq!(
            attempt_traceparent("00-00000000000000000000000000000000-b7ad6b7169203331-01", 1),
            None
        );
        assert_eq!(
            attempt_traceparent("00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01", 1),
            None
        );
    }

    fn url(s: &str) -> reqwest::Url {
        reqwest::Url::parse(s).unwrap()
    }

    #[test]
    fn join_appends_path_and_query_to_the_base() {
        assert_eq!(
            join_url(&url("http://h:1/api"), "/v1/x?a=1").unwrap().as_str(),
            "http://h:1/api/v1/x?a=1"
        );
        assert_eq!(
            join_url(&url("http://h:1/api/"), "/x").unwrap().as_str(),
            "http://h:1/api/x"
        );
        assert_eq!(join_url(&url("http://h:1"), "").unwrap().as_str(), "http://h:1/");
        assert_eq!(
            join_url(&url("http://h:1/a?k=v"), "/b?x=y").unwrap().as_str(),
            "http://h:1/a/b?k=v&x=y"
        );
        // A path that looks like an authority stays a path.
        assert_eq!(
            join_url(&url("http://h:1"), "//evil:2/x").unwrap().host_str(),
            Some("h")
        );
    }

    #[test]
    fn statuses_are_classified_as_the_spec_says() {
        let class = |s| match Outcome::from_response(Response {
            status: s,
            ..Default::default()
        }) {
            Outcome::Delivered(_) => "ok",
            Outcome::Transient { .. } => "transient",
            Outcome::Permanent { .. } => "permanent",
        };
        for s in [200, 201, 202, 204, 299] {
            assert_eq!(class(s), "ok", "{s}");
        }
        for s in [408, 425, 429, 500, 502, 503, 504] {
            assert_eq!(class(s), "transient", "{s}");
        }
        for s in [301, 302, 304, 400, 401, 403, 404, 409, 422, 501, 505] {
            assert_eq!(class(s), "permanent", "{s}");
        }
    }
}
