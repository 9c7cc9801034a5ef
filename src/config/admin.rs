//! `[admin]`: where operators, Prometheus and probes reach tidegate, and
//! the token that guards it when it is not on loopback.

use std::net::SocketAddr;

use serde::Deserialize;
use toml::Spanned;

use super::browser::browser_policy;
use super::locate::{secret_from_env, socket_addr};
use super::{BrowserPolicy, ConfigError, EnvString, Locator, Secret};

#[derive(Clone, Debug)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    pub token: Option<Secret>,
    pub browser: BrowserPolicy,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    pub(super) listen: Option<Spanned<EnvString>>,
    pub(super) token_env: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) allowed_origins: Vec<Spanned<EnvString>>,
    #[serde(default)]
    pub(super) allowed_hosts: Vec<Spanned<EnvString>>,
}

pub(super) fn build(raw: &RawAdmin, loc: &Locator) -> Result<AdminConfig, ConfigError> {
    let listen = socket_addr(&raw.listen, "127.0.0.1:9090", loc)?;
    let admin = AdminConfig {
        listen,
        token: secret_from_env(&raw.token_env, loc)?,
        browser: browser_policy(listen, &raw.allowed_origins, &raw.allowed_hosts, loc)?,
    };
    if !admin.listen.ip().is_loopback() && admin.token.is_none() {
        let span = raw.listen.as_ref().map(|s| s.span()).unwrap_or(0..0);
        return Err(loc.error(
            span,
            format!(
                "admin.listen {} is not a loopback address; set admin.token_env so the admin API requires a token",
                admin.listen
            ),
        ));
    }
    Ok(admin)
}
