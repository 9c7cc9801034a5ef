//! `[admin]`: where operators, Prometheus and probes reach tidegate, the
//! token that guards it when it is not on loopback, the people with tokens
//! of their own (`[[admin.user]]`, SPEC §18, validated in `people`) and how
//! long their acts stay on record.

use std::net::SocketAddr;

use serde::Deserialize;
use toml::Spanned;

use super::browser::browser_policy;
use super::connections::{self, Connections, RawConnections};
use super::locate::{listen_addr, secret_from_env};
use super::people::{RawUser, User};
use super::{BrowserPolicy, ConfigError, EnvString, HumanDuration, Locator, Secret};

/// Overrides `admin.listen` (`tidegate serve --admin-listen`).
pub const ADMIN_LISTEN_ENV: &str = "TIDEGATE_ADMIN_LISTEN";

#[derive(Clone, Debug)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    pub token: Option<Secret>,
    pub browser: BrowserPolicy,
    /// Connection limits and timeouts (SPEC §17).
    pub connections: Connections,
    /// Where people reach the console when it is not this listener's own
    /// address (behind a TLS terminator): its origin is accepted, and an
    /// `https` one marks the session cookie `Secure`.
    pub public_url: Option<reqwest::Url>,
    /// People with their own tokens and roles; filled once destinations
    /// are known (`people::users`).
    pub users: Vec<User>,
    /// How long the audit trail keeps an act (default 365 days).
    pub audit_retention: std::time::Duration,
}

impl AdminConfig {
    /// Whether every admin request must carry a token: a root token or
    /// any person's is configured.
    pub fn needs_token(&self) -> bool {
        self.token.is_some() || !self.users.is_empty()
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    pub(super) listen: Option<Spanned<EnvString>>,
    pub(super) token_env: Option<Spanned<String>>,
    pub(super) public_url: Option<Spanned<EnvString>>,
    pub(super) max_connections: Option<Spanned<i64>>,
    pub(super) header_read_timeout: Option<Spanned<HumanDuration>>,
    pub(super) idle_timeout: Option<Spanned<HumanDuration>>,
    pub(super) body_timeout: Option<Spanned<HumanDuration>>,
    #[serde(default)]
    pub(super) allowed_origins: Vec<Spanned<EnvString>>,
    #[serde(default)]
    pub(super) allowed_hosts: Vec<Spanned<EnvString>>,
    #[serde(default)]
    pub(super) user: Vec<RawUser>,
    pub(super) audit_retention: Option<HumanDuration>,
}

pub(super) fn build(raw: &RawAdmin, loc: &Locator) -> Result<AdminConfig, ConfigError> {
    let listen = listen_addr(ADMIN_LISTEN_ENV, "admin.listen", &raw.listen, "127.0.0.1:9090", loc)?;
    let public_url = match &raw.public_url {
        None => None,
        Some(u) => {
            let text = u.get_ref().0.trim();
            let url = reqwest::Url::parse(text)
                .ok()
                .filter(|p| matches!(p.scheme(), "http" | "https") && p.host().is_some() && p.username().is_empty())
                .ok_or_else(|| {
                    loc.error(
                        u.span(),
                        format!("public_url {text:?} is not a URL like \"https://tidegate.example.com\""),
                    )
                })?;
            Some(url)
        }
    };
    let mut browser = browser_policy(listen, &raw.allowed_origins, &raw.allowed_hosts, loc)?;
    if let Some(u) = &public_url {
        // The console's own pages post back to this origin, through a
        // proxy that passes the public host name on.
        browser.allowed_origins.push(u.origin().ascii_serialization());
        if let Some(h) = u.host_str() {
            browser.allowed_hosts.push(h.to_ascii_lowercase());
        }
    }
    let admin = AdminConfig {
        listen,
        token: secret_from_env(&raw.token_env, loc)?,
        browser,
        public_url,
        users: Vec::new(),
        audit_retention: raw
            .audit_retention
            .map(|d| d.0)
            .unwrap_or(std::time::Duration::from_secs(365 * 86400)),
        connections: connections::build(
            RawConnections {
                max_connections: &raw.max_connections,
                header_read_timeout: &raw.header_read_timeout,
                idle_timeout: &raw.idle_timeout,
                body_timeout: &raw.body_timeout,
            },
            256,
            loc,
        )?,
    };
    if !admin.listen.ip().is_loopback() && admin.token.is_none() && raw.user.is_empty() {
        let span = raw.listen.as_ref().map(|s| s.span()).unwrap_or(0..0);
        return Err(loc.error(
            span,
            format!(
                "admin.listen {} is not a loopback address; set admin.token_env (or [[admin.user]]) so the admin API requires a token",
                admin.listen
            ),
        ));
    }
    Ok(admin)
}
