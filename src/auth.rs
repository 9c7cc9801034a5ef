//! Who may call tidegate: bearer tokens (a producer's, SPEC §15; a
//! person's and their role, SPEC §18), and the checks that keep web pages
//! out of listeners meant for programs and operators. Used by ingress,
//! admin and the console alike, so that none imports another for it.
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

use crate::config::{AdminConfig, BrowserPolicy, IngressConfig, Role, Secret, User};
use crate::problem::Problem;

/// The `producer` label of a request that carried the shared
/// `ingress.auth_token_env` token.
pub const SHARED: &str = "shared";
/// The `producer` label of a request when ingress asks for no token, and
/// the actor of an admin request when the admin listener asks for none.
pub const ANONYMOUS: &str = crate::config::ANONYMOUS;

/// Who made an admin or console request, as far as its token says, and
/// what they may do (SPEC §18).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    /// A person's name, [`crate::config::ROOT`] for the admin token, or
    /// [`ANONYMOUS`] where no token is asked for.
    pub name: String,
    pub role: Role,
    /// The destinations they may act on; `None`: all.
    destinations: Option<Vec<String>>,
    /// A person's own token: their decisions are recorded under their
    /// name, whatever a request body says.
    pub personal: bool,
}

/// What an admin request does, for [`Actor::may`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Act {
    /// Reads, and previews (which store nothing): every role.
    Read,
    /// Decides a review item, sends feedback: reviewers and operators.
    Decide,
    /// Pauses, resumes, replays, purges, reloads: operators.
    Operate,
}

impl Act {
    fn needs(self) -> Role {
        match self {
            Act::Read => Role::Viewer,
            Act::Decide => Role::Reviewer,
            Act::Operate => Role::Operator,
        }
    }
}

impl Actor {
    /// The root operator: the admin token, or no token on a loopback
    /// listener that asks for none.
    pub fn root(name: &str) -> Actor {
        Actor {
            name: name.to_string(),
            role: Role::Operator,
            destinations: None,
            personal: false,
        }
    }

    /// Refuses `act` on `dest` (`None`: every destination, as a reload
    /// acts) when the role lacks it (403 `forbidden_role`) or the
    /// destination is outside the actor's list (403 `forbidden_destination`).
    pub fn may(&self, act: Act, dest: Option<&str>) -> Result<(), Problem> {
        if self.role < act.needs() {
            return Err(Problem::forbidden_role(
                &self.name,
                self.role.as_str(),
                act.needs().as_str(),
            ));
        }
        if act == Act::Read {
            return Ok(());
        }
        match (&self.destinations, dest) {
            (None, _) => Ok(()),
            (Some(list), Some(d)) if list.iter().any(|x| x == d) => Ok(()),
            (Some(_), Some(d)) => Err(Problem::forbidden_destination(format!(
                "user {:?} may not act on destination {d:?}",
                self.name
            ))),
            (Some(_), None) => Err(Problem::forbidden_destination(format!(
                "user {:?} acts on some destinations only, and this acts on every one",
                self.name
            ))),
        }
    }

    /// Whether `may(act, dest)` would pass: what the console offers.
    pub fn can(&self, act: Act, dest: Option<&str>) -> bool {
        self.may(act, dest).is_ok()
    }

    /// The reviewer a decision is recorded under: a person's own name (a
    /// body that names someone else is refused, 400 `reviewer_mismatch`);
    /// with the root token, the name the body gives.
    pub fn reviewer(&self, named: Option<String>) -> Result<Option<String>, Problem> {
        if !self.personal {
            return Ok(named);
        }
        match named.as_deref().map(str::trim) {
            Some(n) if !n.is_empty() && n != self.name => Err(Problem::reviewer_mismatch(&self.name, n)),
            _ => Ok(Some(self.name.clone())),
        }
    }
}

/// Identifies who made an admin request from its bearer token: a person
/// (`[[admin.user]]`), the root operator (`admin.token_env`), or, when
/// neither is configured, the anonymous operator of a loopback listener.
/// Every token is compared, in constant time and without stopping at a
/// match.
pub fn actor(headers: &HeaderMap, cfg: &AdminConfig) -> Result<Actor, Problem> {
    if !cfg.needs_token() {
        return Ok(Actor::root(ANONYMOUS));
    }
    let presented = presented(headers).ok_or_else(Problem::unauthorized)?;
    holder_of(presented, cfg)
        .map(|(a, _)| a)
        .ok_or_else(Problem::unauthorized)
}

/// The person or root operator whose token `presented` is, with that
/// token, if any (the console's sign-in takes a typed token through here
/// too).
pub fn holder_of<'a>(presented: &str, cfg: &'a AdminConfig) -> Option<(Actor, &'a Secret)> {
    let mut found = None;
    for u in &cfg.users {
        if same(presented, u.token.expose()) {
            found = Some((Actor::from(u), &u.token));
        }
    }
    if let Some(root) = &cfg.token {
        if same(presented, root.expose()) && found.is_none() {
            found = Some((Actor::root(crate::config::ROOT), root));
        }
    }
    found
}

/// The person (or root operator) named `name` and the token they hold
/// now: a console session names who signed in, and ends when that token
/// changes or goes.
pub fn person<'a>(name: &str, cfg: &'a AdminConfig) -> Option<(Actor, &'a Secret)> {
    if name == crate::config::ROOT {
        return cfg.token.as_ref().map(|t| (Actor::root(name), t));
    }
    cfg.users
        .iter()
        .find(|u| u.name == name)
        .map(|u| (Actor::from(u), &u.token))
}

impl From<&User> for Actor {
    fn from(u: &User) -> Actor {
        Actor {
            name: u.name.clone(),
            role: u.role,
            destinations: u.destinations.clone(),
            personal: true,
        }
    }
}

/// The token a request presents as `Authorization: Bearer`.
fn presented(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
}

/// Equal, without an early exit on the first differing byte (the length
/// is not secret).
pub fn same(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

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
            Some(list) if !list.iter().any(|d| d == dest) => Err(Problem::forbidden_destination(format!(
                "producer {:?} may not send to destination {dest:?}",
                self.name
            ))),
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
    presented(headers).is_some_and(|p| same(p, expected.expose()))
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
    fn roles_are_ordered_and_lists_limit_acts_not_reads() {
        let person = |role, destinations: Option<&[&str]>| Actor {
            name: "p".into(),
            role,
            destinations: destinations.map(|d| d.iter().map(|s| s.to_string()).collect()),
            personal: true,
        };
        let code = |r: Result<(), Problem>| r.err().map_or("ok", |p| p.code);
        let viewer = person(Role::Viewer, None);
        assert_eq!(code(viewer.may(Act::Read, Some("a"))), "ok");
        assert_eq!(code(viewer.may(Act::Decide, Some("a"))), "forbidden_role");
        let reviewer = person(Role::Reviewer, Some(&["a"]));
        assert_eq!(code(reviewer.may(Act::Read, Some("b"))), "ok", "reads are not limited");
        assert_eq!(code(reviewer.may(Act::Decide, Some("a"))), "ok");
        assert_eq!(code(reviewer.may(Act::Decide, Some("b"))), "forbidden_destination");
        assert_eq!(code(reviewer.may(Act::Operate, Some("a"))), "forbidden_role");
        let operator = person(Role::Operator, Some(&["a"]));
        assert_eq!(code(operator.may(Act::Operate, Some("a"))), "ok");
        assert_eq!(
            code(operator.may(Act::Operate, None)),
            "forbidden_destination",
            "no reload"
        );
        assert_eq!(code(Actor::root("admin").may(Act::Operate, None)), "ok");
        // A person decides as themselves; the root names anyone.
        assert_eq!(reviewer.reviewer(None).unwrap().as_deref(), Some("p"));
        assert_eq!(reviewer.reviewer(Some(" p ".into())).unwrap().as_deref(), Some("p"));
        assert_eq!(code(reviewer.reviewer(Some("q".into())).map(drop)), "reviewer_mismatch");
        assert_eq!(
            Actor::root("admin").reviewer(Some("q".into())).unwrap().as_deref(),
            Some("q")
        );
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
