//! Console sessions and cross-site request protection. With an admin token
//! or people (`[[admin.user]]`) configured, each person enters their own
//! token once on the login page and gets a session cookie: a random id
//! naming a session kept here, with who holds it and a digest of their
//! token. A restart, signing out, or a change to that person's token (a
//! reload) ends it. Without any token (a loopback admin listener) there is
//! no login, only the form check.
//!
//! Every form carries a CSRF value, a MAC of the session, checked on POST;
//! the admin listener's Origin and Host checks (`crate::auth`) and a
//! `SameSite=Strict` cookie come on top.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, OnceLock};

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::config::Secret;
use crate::queue::hex;

/// The session cookie's name.
pub const COOKIE: &str = "tidegate_session";
/// How long a session lasts.
pub const LIFETIME_MS: i64 = 12 * 3600 * 1000;
/// Wrong sign-ins from one address within [`FAILURE_WINDOW_MS`] before it
/// must wait.
const FREE_FAILURES: u32 = 5;
const FAILURE_WINDOW_MS: i64 = 60_000;
/// The longest wait a run of wrong sign-ins earns.
const MAX_WAIT_MS: i64 = 60_000;

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

fn token_digest(token: &Secret) -> [u8; 32] {
    Sha256::digest(token.expose().as_bytes()).into()
}

use crate::auth::same;

/// The console's sessions, kept on the server: a cookie is a random id
/// that names one, so signing out ends it for whoever holds a copy, and a
/// restart ends them all. Each remembers who signed in and a digest of the
/// token they used: a token changed or removed by a reload ends its
/// sessions. Wrong sign-ins are counted per client address.
#[derive(Default)]
pub struct Sessions {
    open: Mutex<HashMap<String, Entry>>,
    failures: Mutex<HashMap<IpAddr, Failures>>,
}

struct Entry {
    who: String,
    token: [u8; 32],
    expires: i64,
}

#[derive(Clone, Copy)]
struct Failures {
    count: u32,
    first: i64,
    until: i64,
}

impl Sessions {
    /// Opens a session for `who`, signed in with `token`; its cookie value.
    pub fn open(&self, who: &str, token: &Secret, now_ms: i64) -> String {
        let id = hex(&rand::random::<[u8; 32]>());
        let mut open = lock(&self.open);
        open.retain(|_, e| e.expires > now_ms);
        open.insert(
            id.clone(),
            Entry {
                who: who.to_string(),
                token: token_digest(token),
                expires: now_ms + LIFETIME_MS,
            },
        );
        id
    }

    /// Who holds the live session `cookie`, given the token each person
    /// has now (`token_of`).
    pub fn who<'a>(&self, cookie: &str, now_ms: i64, token_of: impl Fn(&str) -> Option<&'a Secret>) -> Option<String> {
        let open = lock(&self.open);
        let e = open.get(cookie)?;
        let token = token_of(&e.who)?;
        (e.expires > now_ms && token_digest(token) == e.token).then(|| e.who.clone())
    }

    /// Ends the session `cookie` (signing out).
    pub fn close(&self, cookie: &str) {
        lock(&self.open).remove(cookie);
    }

    /// How long `from` must wait before its next sign-in, if it must.
    pub fn wait(&self, from: IpAddr, now_ms: i64) -> Option<i64> {
        let f = *lock(&self.failures).get(&from)?;
        (f.until > now_ms).then_some(f.until - now_ms)
    }

    /// Counts a wrong sign-in from `from`: past [`FREE_FAILURES`] within a
    /// minute, each one doubles the wait before the next (to a minute).
    pub fn failed(&self, from: IpAddr, now_ms: i64) {
        let mut all = lock(&self.failures);
        all.retain(|_, f| f.first + FAILURE_WINDOW_MS > now_ms || f.until > now_ms);
        let f = all.entry(from).or_insert(Failures {
            count: 0,
            first: now_ms,
            until: 0,
        });
        if f.first + FAILURE_WINDOW_MS <= now_ms && f.until <= now_ms {
            *f = Failures {
                count: 0,
                first: now_ms,
                until: 0,
            };
        }
        f.count += 1;
        if f.count >= FREE_FAILURES {
            let doublings = (f.count - FREE_FAILURES).min(16);
            f.until = now_ms + (1000i64 << doublings).min(MAX_WAIT_MS);
        }
    }

    /// A right sign-in from `from` clears its count.
    pub fn succeeded(&self, from: IpAddr) {
        lock(&self.failures).remove(&from);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The form value that proves a POST came from a page this session loaded
/// (`session` is the cookie value, or "" without a token).
pub fn csrf(session: &str) -> String {
    mac(&[b"csrf", session.as_bytes()])
}

pub fn csrf_ok(session: &str, presented: &str) -> bool {
    same(presented, &csrf(session))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_ends_when_it_expires_is_closed_or_its_token_changes() {
        let s = Sessions::default();
        let t = Secret::new("s3cret-token".into());
        let other = Secret::new("another".into());
        let c = s.open("admin", &t, 1000);
        assert_eq!(s.who(&c, 2000, |_| Some(&t)).as_deref(), Some("admin"));
        assert_eq!(s.who(&c, 2000, |_| Some(&other)), None, "a changed token ends it");
        assert_eq!(s.who(&c, 2000, |_| None), None, "a removed person's ends too");
        assert_eq!(s.who(&c, 1000 + LIFETIME_MS, |_| Some(&t)), None, "expired");
        assert_eq!(s.who("garbage", 2000, |_| Some(&t)), None);
        s.close(&c);
        assert_eq!(
            s.who(&c, 2000, |_| Some(&t)),
            None,
            "signed out, even for a copy of the cookie"
        );
    }

    #[test]
    fn wrong_sign_ins_from_one_address_are_slowed_and_a_right_one_clears_them() {
        let s = Sessions::default();
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        for _ in 0..4 {
            s.failed(a, 0);
        }
        assert_eq!(s.wait(a, 0), None, "a few mistakes are free");
        s.failed(a, 0);
        assert_eq!(s.wait(a, 0), Some(1000));
        s.failed(a, 1000);
        assert_eq!(s.wait(a, 1000), Some(2000), "each further one doubles the wait");
        assert_eq!(s.wait(b, 0), None, "another address is not slowed");
        s.succeeded(a);
        assert_eq!(s.wait(a, 1000), None);
    }

    #[test]
    fn csrf_values_belong_to_one_session() {
        assert!(csrf_ok("a", &csrf("a")));
        assert!(!csrf_ok("b", &csrf("a")));
        assert!(!csrf_ok("a", ""));
    }
}
