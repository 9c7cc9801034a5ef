//! Console sessions and cross-site request protection. With an admin token
//! configured, the operator enters it once on the login page and gets a
//! session cookie: an expiry and a MAC over it and a digest of the token,
//! under a key drawn at start-up. Nothing is stored server-side; a restart
//! or a token change (reload) ends every session. Without a token (a
//! loopback admin listener) there is no login, only the form check.
//!
//! Every form carries a CSRF value, a MAC of the session, checked on POST;
//! the admin listener's Origin and Host checks (`crate::auth`) and a
//! `SameSite=Strict` cookie come on top.

use std::sync::OnceLock;

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::config::Secret;

/// The session cookie's name.
pub const COOKIE: &str = "tidegate_session";
/// How long a session lasts.
pub const LIFETIME_MS: i64 = 12 * 3600 * 1000;

fn key() -> &'static [u8; 32] {
    static KEY: OnceLock<[u8; 32]> = OnceLock::new();
    KEY.get_or_init(rand::random)
}

fn mac(parts: &[&[u8]]) -> String {
    let Ok(mut m) = Hmac::<Sha256>::new_from_slice(key()) else {
        return String::new();
    };
    for p in parts {
        m.update(&(p.len() as u64).to_le_bytes());
        m.update(p);
    }
    hex(&m.finalize().into_bytes())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn token_digest(token: &Secret) -> [u8; 32] {
    Sha256::digest(token.expose().as_bytes()).into()
}

/// Equal, without an early exit on the first difference.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A new session's cookie value for `token`, valid until `now + LIFETIME_MS`.
pub fn issue(token: &Secret, now_ms: i64) -> String {
    let expires = (now_ms + LIFETIME_MS).to_string();
    let m = mac(&[b"session", expires.as_bytes(), &token_digest(token)]);
    format!("{expires}.{m}")
}

/// Whether a cookie value is a live session for `token`.
pub fn valid(cookie: &str, token: &Secret, now_ms: i64) -> bool {
    let Some((expires, m)) = cookie.split_once('.') else {
        return false;
    };
    let Ok(at) = expires.parse::<i64>() else { return false };
    at > now_ms && same(m, &mac(&[b"session", expires.as_bytes(), &token_digest(token)]))
}

/// The form value that proves a POST came from a page this session loaded
/// (`session` is the cookie value, or "" without a token).
pub fn csrf(session: &str) -> String {
    mac(&[b"csrf", session.as_bytes()])
}

pub fn csrf_ok(session: &str, presented: &str) -> bool {
    same(presented, &csrf(session))
}

/// Whether the token typed on the login page is the admin token.
pub fn token_matches(typed: &str, token: &Secret) -> bool {
    same(typed, token.expose())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_is_bound_to_its_token_and_expires() {
        let t = Secret::new("s3cret-token".into());
        let other = Secret::new("another".into());
        let c = issue(&t, 1000);
        assert!(valid(&c, &t, 2000));
        assert!(!valid(&c, &other, 2000), "a changed token ends it");
        assert!(!valid(&c, &t, 1000 + LIFETIME_MS), "expired");
        let (exp, m) = c.split_once('.').unwrap();
        let forged = format!("{}.{m}", exp.parse::<i64>().unwrap() + 1);
        assert!(!valid(&forged, &t, 2000), "the expiry is under the MAC");
        assert!(!valid("garbage", &t, 0) && !valid("1.", &t, 0));
    }

    #[test]
    fn csrf_values_belong_to_one_session() {
        assert!(csrf_ok("a", &csrf("a")));
        assert!(!csrf_ok("b", &csrf("a")));
        assert!(!csrf_ok("a", ""));
        assert!(token_matches("x", &Secret::new("x".into())) && !token_matches("x ", &Secret::new("x".into())));
    }
}
