//! What both listeners share (SPEC §17): how many connections each may
//! hold, and how long a client may take to send headers and a body, or sit
//! idle. The same keys under `[ingress]` and `[admin]`.

use std::time::Duration;

use toml::Spanned;

use super::locate::positive;
use super::{ConfigError, HumanDuration, Locator};

/// One listener's connection limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Connections {
    /// Open connections at most; more wait in the backlog.
    pub max_connections: usize,
    /// A connection that has not sent a request's headers in this long is
    /// closed.
    pub header_read_timeout: Duration,
    /// A connection with nothing read or written for this long is closed.
    pub idle_timeout: Duration,
    /// A body not received within this is answered 408 `body_timeout`.
    pub body_timeout: Duration,
}

/// The raw keys, as each listener's table holds them.
pub(super) struct RawConnections<'a> {
    pub max_connections: &'a Option<Spanned<i64>>,
    pub header_read_timeout: &'a Option<Spanned<HumanDuration>>,
    pub idle_timeout: &'a Option<Spanned<HumanDuration>>,
    pub body_timeout: &'a Option<Spanned<HumanDuration>>,
}

pub(super) fn build(raw: RawConnections, default_max: usize, loc: &Locator) -> Result<Connections, ConfigError> {
    // Zero would close every connection at once (or answer every body
    // 408): refused, not taken to mean "no timeout".
    let or = |d: &Option<Spanned<HumanDuration>>, default: u64, key: &str| match d {
        None => Ok(Duration::from_secs(default)),
        Some(d) if d.get_ref().0.is_zero() => Err(loc.error(
            d.span(),
            format!("{key} must be longer than 0: a zero timeout would close every connection at once"),
        )),
        Some(d) => Ok(d.get_ref().0),
    };
    Ok(Connections {
        max_connections: positive(raw.max_connections, default_max, loc, "max_connections")?,
        header_read_timeout: or(raw.header_read_timeout, 5, "header_read_timeout")?,
        idle_timeout: or(raw.idle_timeout, 60, "idle_timeout")?,
        body_timeout: or(raw.body_timeout, 30, "body_timeout")?,
    })
}
