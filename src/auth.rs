//! Who may call tidegate: bearer tokens, and the checks that keep web pages
//! out of listeners meant for programs and operators. Used by ingress and
//! admin alike, so that neither imports the other for it.
//!
//! A browser lets any page send "simple" cross-origin requests (a POST with
//! `text/plain`) to any address, loopback included, and through DNS
//! rebinding lets a page read answers from a loopback port under its own
//! host name. tidegate adds downstream credentials to what ingress accepts
//! and the admin API steers deliveries, so both refuse what only a browser
//! acting for some page would send:
//!
//! - an `Origin` header (browsers send it on cross-origin requests and on
//!   same-origin POSTs; programs do not) that is neither the listener's own
//!   origin nor in `allowed_origins`: 403 `forbidden_origin`;
//! - on a loopback listener, a `Host` that is not a loopback name or
//!   address nor in `allowed_hosts` (what DNS rebinding sends): 421
//!   `forbidden_host`.
//!
//! A request without `Origin` (curl, SDKs, Prometheus) and without a foreign
//! `Host` is not affected. Invariant: both checks run before anything else
//! reads the request, on every path of both listeners, probes included.

use axum::http::{header, HeaderMap};

use crate::config::{BrowserPolicy, IngressConfig, Secret};
use crate::problem::Problem;

/// The `producer` label of a request that carried the shared
/// `ingress.auth_token_env` token.
pub const SHARED: &str = "shared";
/// The `producer` label of a request when ingress asks for no token.
pub const ANONYMOUS: &str = "anonymous";

/// Who sent a producer request, as far as its token says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sender<'a> {
    /// The producer's name, `SHARED` or `ANONYMOUS`.
    pub name: &'a str,
    /// The destinations it may send to; `None`: all.
    destinations: Option<&'a [String]>,
}

impl Sender<'_> {
    /// The name stored with its messages: none for an anonymous sender.
    pub fn recorded(&self) -> Option<String> {
        (self.name != ANONYMOUS).then(|| self.name.to_string())
    }

    /// Refuses a destination outside the producer's list.
    pub fn may_send_to(&self, dest: &str) -> Result<(), Problem> {
        match self.destinations {
            Some(list) if !list.iter().any(|d| d == dest) => Err(Problem::forbidden_destination(self.name, dest)),
            _ => Ok(()),
        }
    }
}

/// Identifies the sender of a producer request from its bearer token: a
/// configured producer's, the shared one, or none where none is needed.
/// Every producer's token is compared (in constant time, without stopping
/// at a match), so timing tells nothing about which one matched.
pub fn sender<'a>(headers: &HeaderMap, cfg: &'a IngressConfig) -> Result<Sender<'a>, Problem> {
    if cfg.producers.is_empty() && cfg.auth_token.is_none() {
        return Ok(Sender {
            name: ANONYMOUS,
            destinations: None,
        });
    }
    let mut found = None;
    for p in &cfg.producers {
        if bearer_matches(headers, &p.token) {
            found = Some(Sender {
                name: p.name.as_str(),
                destinations: p.destinations.as_deref(),
            });
        }
    }
    if let Some(shared) = &cfg.auth_token {
        if bearer_matches(headers, shared) && found.is_none() {
            found = Some(Sender {
                name: SHARED,
                destinations: None,
            });
        }
    }
    found.ok_or_else(Problem::unauthorized)
}

/// Constant-time comparison of a presented bearer token with the expected one.
pub fn bearer_matches(headers: &HeaderMap, expected: &Secret) -> bool {
    let Some(presented) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    let (a, b) = (presented.as_bytes(), expected.expose().as_bytes());
    // Length is not secret; the bytes are compared without early exit.
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Refuses a request a web page could have sent on its own behalf, by the
/// listener's `policy`.
pub fn check_browser(policy: &BrowserPolicy, headers: &HeaderMap) -> Result<(), Problem> {
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    if policy.loopback {
        if let Some(h) = host {
            let name = host_name(h);
            if !is_loopback_name(&name) && !policy.allowed_hosts.contains(&name) {
                return Err(Problem::forbidden_host(&name));
            }
        }
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("").trim_end_matches('/').to_ascii_lowercase();
        // The listener's own origin: a page it served (the console)
        // calling it back. Safe only together with the Host check: a
        // rebound name is refused above on a loopback listener, and a
        // non-loopback one needs a token for anything that matters.
        let same_origin = host.is_some_and(|h| origin == format!("http://{}", h.to_ascii_lowercase()));
        if !same_origin && !policy.allowed_origins.contains(&origin) {
            return Err(Problem::forbidden_origin(&origin));
        }
    }
    Ok(())
}

/// `Host` without its port, lower-case: `[::1]:9090` → `[::1]`.
fn host_name(host: &str) -> String {
    let h = host.trim().to_ascii_lowercase();
    if h.starts_with('[') {
        return match h.find(']') {
            Some(i) => h[..=i].to_string(),
            None => h,
        };
    }
    match h.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name.to_string(),
        _ => h,
    }
}

/// `localhost` and its subdomains (RFC 6761), 127.0.0.0/8 and `[::1]`.
fn is_loopback_name(name: &str) -> bool {
    let name = name.trim_end_matches('.');
    if name == "localhost" || name.ends_with(".localhost") {
        return true;
    }
    if let Some(v6) = name.strip_prefix('[').and_then(|n| n.strip_suffix(']')) {
        return v6.parse::<std::net::Ipv6Addr>().is_ok_and(|a| a.is_loopback());
    }
    name.parse::<std::net::Ipv4Addr>().is_ok_and(|a| a.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    fn code(r: Result<(), Problem>) -> &'static str {
        r.err().map_or("ok", |p| p.code)
    }

    #[test]
    fn a_loopback_listener_takes_loopback_hosts_only() {
        let p = BrowserPolicy {
            loopback: true,
            ..Default::default()
        };
        for ok in [
            "127.0.0.1:9090",
            "localhost:9090",
            "LOCALHOST",
            "a.localhost:1",
            "[::1]:9090",
            "127.1.2.3",
        ] {
            let h = HeaderMap::from_iter([(header::HOST, HeaderValue::from_static(ok))]);
            assert_eq!(code(check_browser(&p, &h)), "ok", "{ok}");
        }
        for bad in [
            "evil.example:9090",
            "attacker.example",
            "localhost.evil.example",
            "[::2]:9090",
            "10.0.0.1",
        ] {
            let h = HeaderMap::from_iter([(header::HOST, HeaderValue::from_static(bad))]);
            assert_eq!(code(check_browser(&p, &h)), "forbidden_host", "{bad}");
        }
        let p = BrowserPolicy {
            loopback: true,
            allowed_hosts: vec!["tidegate.internal".into()],
            ..Default::default()
        };
        assert_eq!(
            code(check_browser(&p, &headers(&[("host", "tidegate.internal:9090")]))),
            "ok"
        );
        // Not on loopback: any Host (a token guards it).
        assert_eq!(
            code(check_browser(
                &BrowserPolicy::default(),
                &headers(&[("host", "evil.example")])
            )),
            "ok"
        );
    }

    #[test]
    fn only_the_listeners_own_origin_and_allowed_ones_pass() {
        let p = BrowserPolicy {
            loopback: true,
            allowed_origins: vec!["https://console.example.com".into()],
            ..Default::default()
        };
        let cases = [
            (&[("host", "127.0.0.1:9090")][..], "ok"),
            (&[("host", "127.0.0.1:9090"), ("origin", "http://127.0.0.1:9090")], "ok"),
            (
                &[("host", "127.0.0.1:9090"), ("origin", "https://console.example.com")],
                "ok",
            ),
            (
                &[("host", "127.0.0.1:9090"), ("origin", "http://evil.example")],
                "forbidden_origin",
            ),
            (
                &[("host", "127.0.0.1:9090"), ("origin", "http://127.0.0.1:8000")],
                "forbidden_origin",
            ),
            (&[("host", "127.0.0.1:9090"), ("origin", "null")], "forbidden_origin"),
            (
                &[("host", "evil.example:9090"), ("origin", "http://evil.example:9090")],
                "forbidden_host",
            ),
        ];
        for (h, want) in cases {
            assert_eq!(code(check_browser(&p, &headers(h))), want, "{h:?}");
        }
    }

    #[test]
    fn bearer_tokens_must_match_exactly() {
        let t = Secret::new("abc".into());
        let mut h = HeaderMap::new();
        assert!(!bearer_matches(&h, &t));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer abd"));
        assert!(!bearer_matches(&h, &t));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer abc"));
        assert!(bearer_matches(&h, &t));
    }
}
