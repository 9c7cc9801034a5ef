//! The browser-facing policy of a listener (SPEC §15): which `Origin`s
//! and `Host`s it accepts besides its own. The data lives here; the check
//! a request passes is `auth::check_browser`.

use std::net::SocketAddr;

use toml::Spanned;

use super::{ConfigError, EnvString, Locator};

/// The browser-facing policy of one listener.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BrowserPolicy {
    /// The listener is bound to a loopback address: only loopback `Host`s.
    pub loopback: bool,
    /// Origins allowed besides the listener's own, lower-case, no trailing `/`.
    pub allowed_origins: Vec<String>,
    /// Host names (no port) accepted on a loopback listener besides the
    /// loopback ones, lower-case.
    pub allowed_hosts: Vec<String>,
}

/// A listener's browser policy: origins as `scheme://host[:port]` (or the
/// literal `null`), hosts as bare names; both compared lower-case.
pub(super) fn browser_policy(
    listen: SocketAddr,
    origins: &[Spanned<EnvString>],
    hosts: &[Spanned<EnvString>],
    loc: &Locator,
) -> Result<BrowserPolicy, ConfigError> {
    let mut allowed_origins = Vec::new();
    for o in origins {
        let text = o.get_ref().0.trim().trim_end_matches('/').to_ascii_lowercase();
        let valid = text == "null"
            || reqwest::Url::parse(&text).is_ok_and(|u| {
                matches!(u.scheme(), "http" | "https")
                    && u.host().is_some()
                    && u.path() == "/"
                    && u.query().is_none()
                    && u.username().is_empty()
            }) && !text.ends_with(':');
        if !valid {
            return Err(loc.error(
                o.span(),
                format!("{text:?} is not an origin like \"https://console.example.com\" (scheme, host, optional port; no path)"),
            ));
        }
        allowed_origins.push(text);
    }
    let mut allowed_hosts = Vec::new();
    for h in hosts {
        let text = h.get_ref().0.trim().to_ascii_lowercase();
        if text.is_empty() || text.contains(['/', ':', ' ']) && !text.starts_with('[') {
            return Err(loc.error(
                h.span(),
                format!("{text:?} is not a host name like \"tidegate.internal\" (no scheme, no port)"),
            ));
        }
        allowed_hosts.push(text);
    }
    Ok(BrowserPolicy {
        loopback: listen.ip().is_loopback(),
        allowed_origins,
        allowed_hosts,
    })
}
