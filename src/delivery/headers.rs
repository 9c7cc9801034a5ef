//! Parsers for the headers a downstream uses to slow us down: `Retry-After`
//! (seconds or HTTP-date) and the rate-limit families (`RateLimit` /
//! `RateLimit-Policy` from the IETF drafts, `RateLimit-Remaining` /
//! `RateLimit-Reset`, and the common `X-RateLimit-Remaining` /
//! `X-RateLimit-Reset`). All are lenient: an unparseable header is ignored.

use std::time::{Duration, SystemTime};

use http::HeaderMap;

/// Longest pause any header can impose; a typo in a downstream's header must
/// not park a destination for a year.
pub const MAX_PAUSE: Duration = Duration::from_secs(3600);

/// `Retry-After` as a delay from `now`: delta-seconds or an HTTP-date.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs).min(MAX_PAUSE));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO).min(MAX_PAUSE))
}

/// A reset value: delta seconds, or (as some APIs send) a Unix timestamp.
fn reset_delay(value: &str, now: SystemTime) -> Option<Duration> {
    let n: f64 = value.trim().parse().ok()?;
    if !n.is_finite() || n < 0.0 {
        return None;
    }
    let now_s = now.duration_since(SystemTime::UNIX_EPOCH).ok()?.as_secs_f64();
    let delay = if n > 1_000_000_000.0 { (n - now_s).max(0.0) } else { n };
    // Clamped before converting: a huge value would make the conversion
    // panic (found by fuzzing: `X-RateLimit-Reset: 5555…5`).
    Some(Duration::from_secs_f64(delay.min(MAX_PAUSE.as_secs_f64())))
}

/// When the rate-limit headers say the quota is spent (remaining = 0), how
/// long until it resets. `None` if there is quota left or no such header.
pub fn parse_rate_limit_pause(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    // Separate-header forms.
    for (rem, reset) in [
        ("x-ratelimit-remaining", "x-ratelimit-reset"),
        ("ratelimit-remaining", "ratelimit-reset"),
    ] {
        if let Some(r) = get(rem) {
            if r.trim().parse::<f64>().ok() == Some(0.0) {
                return Some(
                    get(reset)
                        .and_then(|v| reset_delay(v, now))
                        .unwrap_or(Duration::from_secs(1)),
                );
            }
        }
    }
    // `RateLimit: limit=10, remaining=0, reset=5` (draft 6) or
    // `RateLimit: "default";r=0;t=5` (structured-field drafts).
    let combined = get("ratelimit")?;
    let mut remaining = None;
    let mut reset = None;
    for part in combined.split([',', ';']) {
        let Some((k, v)) = part.split_once('=') else {
            continue;
        };
        match k.trim() {
            "remaining" | "r" => remaining = v.trim().parse::<f64>().ok(),
            "reset" | "t" => reset = reset_delay(v, now),
            _ => {}
        }
    }
    (remaining == Some(0.0)).then(|| reset.unwrap_or(Duration::from_secs(1)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)
    }

    #[test]
    fn retry_after_takes_seconds_and_dates() {
        assert_eq!(parse_retry_after("7", now()), Some(Duration::from_secs(7)));
        let date = httpdate::fmt_http_date(now() + Duration::from_secs(30));
        assert_eq!(parse_retry_after(&date, now()), Some(Duration::from_secs(30)));
        let past = httpdate::fmt_http_date(now() - Duration::from_secs(30));
        assert_eq!(parse_retry_after(&past, now()), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now()), None);
        assert_eq!(parse_retry_after("99999999", now()), Some(MAX_PAUSE));
    }

    fn map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.insert(*k, HeaderValue::from_static(v));
        }
        m
    }

    #[test]
    fn spent_quota_pauses_until_reset() {
        let m = map(&[("x-ratelimit-remaining", "0"), ("x-ratelimit-reset", "4")]);
        assert_eq!(parse_rate_limit_pause(&m, now()), Some(Duration::from_secs(4)));
        let m = map(&[("x-ratelimit-remaining", "0"), ("x-ratelimit-reset", "1700000010")]);
        assert_eq!(parse_rate_limit_pause(&m, now()), Some(Duration::from_secs(10)));
        let m = map(&[("ratelimit", "limit=10, remaining=0, reset=3")]);
        assert_eq!(parse_rate_limit_pause(&m, now()), Some(Duration::from_secs(3)));
        let m = map(&[
            ("ratelimit", "\"default\";r=0;t=2"),
            ("ratelimit-policy", "\"default\";q=10;w=1"),
        ]);
        assert_eq!(parse_rate_limit_pause(&m, now()), Some(Duration::from_secs(2)));
    }

    #[test]
    fn absurd_reset_values_are_capped_not_a_crash() {
        // Regression: fuzz/artifacts crash-27381b8f (a reset of 58 digits).
        let m = map(&[
            ("x-ratelimit-remaining", "0"),
            (
                "x-ratelimit-reset",
                "5555555555555555555555555555555555555555555555555555555555",
            ),
        ]);
        assert_eq!(parse_rate_limit_pause(&m, now()), Some(MAX_PAUSE));
        let m = map(&[("ratelimit", "r=0;t=1e308")]);
        assert_eq!(parse_rate_limit_pause(&m, now()), Some(MAX_PAUSE));
    }

    #[test]
    fn quota_left_means_no_pause() {
        let m = map(&[("x-ratelimit-remaining", "5"), ("x-ratelimit-reset", "4")]);
        assert_eq!(parse_rate_limit_pause(&m, now()), None);
        assert_eq!(parse_rate_limit_pause(&map(&[("ratelimit", "r=3;t=2")]), now()), None);
        assert_eq!(parse_rate_limit_pause(&HeaderMap::new(), now()), None);
    }
}
