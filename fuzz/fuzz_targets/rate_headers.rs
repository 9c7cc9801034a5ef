//! Any header values as Retry-After and rate-limit headers: a delay within
//! bounds, or none; never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::time::{Duration, SystemTime};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    if let Some(d) = tidegate::delivery::parse_retry_after(text, now) {
        assert!(d <= Duration::from_secs(3600));
    }
    let mut headers = http::HeaderMap::new();
    let mut parts = text.splitn(3, '\n');
    for name in ["x-ratelimit-remaining", "x-ratelimit-reset", "ratelimit"] {
        if let Some(v) = parts.next().and_then(|v| http::HeaderValue::from_str(v).ok()) {
            headers.insert(name, v);
        }
    }
    if let Some(d) = tidegate::delivery::parse_rate_limit_pause(&headers, now) {
        assert!(d <= Duration::from_secs(3600));
    }
});
