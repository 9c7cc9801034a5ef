//! Which producer headers are stored and forwarded, and `Prefer: wait`.

use std::time::Duration;

use axum::http::{header, HeaderMap, HeaderName};

use super::MAX_WAIT;

/// Looked up on every request: parsed once, not at each lookup.
pub static IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
static PREFER: HeaderName = HeaderName::from_static("prefer");

/// Never forwarded: hop-by-hop headers (RFC 9110 §7.6.1), credentials meant
/// for tidegate, headers tidegate sets itself, and request framing.
const NOT_FORWARDED: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "authorization",
    "cookie",
    "host",
    "content-length",
    "expect",
    "prefer",
    "idempotency-key",
    // Spoofable claims about the client or the method (SPEC §17): a
    // downstream that trusts them would take a producer's word for who
    // sent the request and what it asks.
    "forwarded",
    "x-real-ip",
    "x-http-method-override",
    "x-method-override",
];

/// The headers to store with a message, in order, names lower-case.
pub fn forwardable(headers: &HeaderMap) -> Vec<(String, String)> {
    // Headers named in `Connection` are hop-by-hop too.
    let listed: Vec<String> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_ascii_lowercase())
        .collect();
    headers
        .iter()
        .filter(|(k, _)| {
            let k = k.as_str();
            !NOT_FORWARDED.contains(&k)
                && !k.starts_with("x-tidegate-")
                && !k.starts_with("x-forwarded-")
                && !listed.iter().any(|l| l == k)
        })
        .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
        .collect()
}

/// `Prefer: wait=N` (RFC 7240), capped at [`MAX_WAIT`].
pub fn prefer_wait(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get_all(&PREFER)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split([',', ';']))
        .find_map(|p| {
            let (k, v) = p.split_once('=')?;
            (k.trim().eq_ignore_ascii_case("wait")).then(|| v.trim().trim_matches('"').parse::<u64>().ok())?
        })
        .map(|n| Duration::from_secs(n).min(MAX_WAIT))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn credentials_and_hop_by_hop_headers_stay_behind() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("content-type", "application/json"),
            ("authorization", "Bearer producer"),
            ("cookie", "a=b"),
            ("connection", "x-private"),
            ("x-private", "1"),
            ("x-custom", "yes"),
            ("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
            ("x-tidegate-attempt", "9"),
        ] {
            h.insert(k, HeaderValue::from_static(v));
        }
        let names: Vec<_> = forwardable(&h).into_iter().map(|(k, _)| k).collect();
        assert_eq!(names, vec!["content-type", "x-custom", "traceparent"]);
    }

    #[test]
    fn prefer_wait_is_parsed_and_capped() {
        let mut h = HeaderMap::new();
        h.insert("prefer", HeaderValue::from_static("respond-async, wait=5"));
        assert_eq!(prefer_wait(&h), Some(Duration::from_secs(5)));
        h.insert("prefer", HeaderValue::from_static("wait=600"));
        assert_eq!(prefer_wait(&h), Some(MAX_WAIT));
        h.insert("prefer", HeaderValue::from_static("return=minimal"));
        assert_eq!(prefer_wait(&h), None);
    }
}
