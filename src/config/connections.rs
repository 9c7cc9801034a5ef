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
    pub header_read_timeout: &'a Option<HumanDuration>,
    pub idle_timeout: &'a Option<HumanDuration>,
    pub body_timeout: &'a Option<HumanDuration>,
}

pub(super) fn build(raw: RawConnections, default_max: usize, loc: &Locator) -> Result<Connections, ConfigError> {
    let or = |d: &Option<HumanDuration>, default: u64| d.map_or(Duration::from_secs(default), |d| d.0);
    Ok(Connections {
        max_connections: positive(raw.max_connections, default_max, loc, "max_connections")?,
        header_read_timeout: or(raw.header_read_timeout, 5),
        idle_timeout: or(raw.idle_timeout, 60),
        body_timeout: or(raw.body_timeout, 30),
    })
}
