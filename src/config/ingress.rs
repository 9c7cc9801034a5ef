//! `[ingress]` and `[[ingress.producer]]`: where producers send, how big
//! and how slow a request may be, and who may send where (SPEC §3, §15).

use std::net::SocketAddr;

use serde::Deserialize;
use toml::Spanned;

use super::browser::browser_policy;
use super::connections::{self, Connections, RawConnections};
use super::locate::{listen_addr, secret_from_env};
use super::people::{holders, RawHolder};
use super::{BrowserPolicy, ByteSize, ConfigError, Destination, EnvString, HumanDuration, Locator, Secret};

/// Overrides `ingress.listen` (`tidegate serve --ingress-listen`).
pub const INGRESS_LISTEN_ENV: &str = "TIDEGATE_INGRESS_LISTEN";

#[derive(Clone, Debug)]
pub struct IngressConfig {
    pub listen: SocketAddr,
    pub max_body: u64,
    /// Connection limits and timeouts (SPEC §17).
    pub connections: Connections,
    pub auth_token: Option<Secret>,
    /// Which browser requests the listener refuses (see `auth`).
    pub browser: BrowserPolicy,
    /// Named producers, each with its own token and destinations. When any
    /// is configured, every request needs one of their tokens (or the
    /// shared `auth_token`).
    pub producers: Vec<Producer>,
    /// A non-loopback ingress with no token at all is refused at load
    /// unless this says so on purpose.
    pub allow_anonymous: bool,
}

/// A producer identity (`[[ingress.producer]]`).
#[derive(Clone, Debug)]
pub struct Producer {
    pub name: String,
    pub token: Secret,
    /// The destinations it may send to; `None`: all.
    pub destinations: Option<Vec<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawIngress {
    pub(super) listen: Option<Spanned<EnvString>>,
    pub(super) max_body: Option<ByteSize>,
    pub(super) max_connections: Option<Spanned<i64>>,
    pub(super) header_read_timeout: Option<Spanned<HumanDuration>>,
    pub(super) idle_timeout: Option<Spanned<HumanDuration>>,
    pub(super) body_timeout: Option<Spanned<HumanDuration>>,
    pub(super) auth_token_env: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) allowed_origins: Vec<Spanned<EnvString>>,
    #[serde(default)]
    pub(super) allowed_hosts: Vec<Spanned<EnvString>>,
    pub(super) allow_anonymous: Option<bool>,
    #[serde(default)]
    pub(super) producer: Vec<RawProducer>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProducer {
    pub(super) name: Spanned<String>,
    pub(super) token_env: Spanned<String>,
    pub(super) destinations: Option<Vec<Spanned<String>>>,
}

/// `[ingress]` without its producers, which name destinations and so are
/// read once those are known ([`producers`]).
pub(super) fn build(raw: &RawIngress, loc: &Locator) -> Result<IngressConfig, ConfigError> {
    // Loopback unless said otherwise: a config without [ingress] must start
    // (a public listener needs producer tokens, or allow_anonymous).
    let listen = listen_addr(INGRESS_LISTEN_ENV, "ingress.listen", &raw.listen, "127.0.0.1:8080", loc)?;
    Ok(IngressConfig {
        listen,
        browser: browser_policy(listen, &raw.allowed_origins, &raw.allowed_hosts, loc)?,
        max_body: raw.max_body.map(|b| b.0).unwrap_or(1 << 20),
        connections: connections::build(
            RawConnections {
                max_connections: &raw.max_connections,
                header_read_timeout: &raw.header_read_timeout,
                idle_timeout: &raw.idle_timeout,
                body_timeout: &raw.body_timeout,
            },
            4096,
            loc,
        )?,
        auth_token: secret_from_env(&raw.auth_token_env, loc)?,
        producers: Vec::new(),
        allow_anonymous: raw.allow_anonymous.unwrap_or(false),
    })
}

/// Refuses an ingress that anyone who reaches it could send through: not
/// on loopback, and no token of any kind, unless `allow_anonymous` says
/// that is meant.
pub(super) fn refuse_open(ingress: &IngressConfig, raw: &RawIngress, loc: &Locator) -> Result<(), ConfigError> {
    if ingress.listen.ip().is_loopback()
        || !ingress.producers.is_empty()
        || ingress.auth_token.is_some()
        || ingress.allow_anonymous
    {
        return Ok(());
    }
    let span = raw.listen.as_ref().map(|s| s.span()).unwrap_or(0..0);
    // The default listen has no span: the error still names its key.
    Err(loc.error_at_key(
        span,
        "ingress.listen",
        format!(
            "{} is not a loopback address and no [[ingress.producer]] or auth_token_env is \
             configured: anyone who reaches it could send with the destinations' credentials; configure \
             producers, or set ingress.allow_anonymous = true if that is meant",
            ingress.listen
        ),
    ))
}

/// Validates `[[ingress.producer]]` (`people::holders`).
pub(super) fn producers(
    raw: &[RawProducer],
    destinations: &[Destination],
    loc: &Locator,
) -> Result<Vec<Producer>, ConfigError> {
    let held = holders(
        "producer",
        raw.iter().map(|p| RawHolder {
            name: &p.name,
            token_env: &p.token_env,
            destinations: &p.destinations,
        }),
        (&[super::ANONYMOUS, "shared"], None),
        destinations,
        loc,
    )?;
    Ok(held
        .into_iter()
        .map(|h| Producer {
            name: h.name,
            token: h.token,
            destinations: h.destinations,
        })
        .collect())
}
