//! Configuration: the TOML file parsed into raw serde types (every table
//! `deny_unknown_fields`), then validated into the typed [`Config`] that the
//! rest of tidegate sees. Nothing outside this module touches raw config.
//!
//! Invariants: every error names the file, the line and column, and the key
//! where toml can tell us; secrets (header values, tokens) are held in
//! [`Secret`], whose `Debug` and `Display` never print the value.

mod cluster;
mod handoff;
mod review;
mod units;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::auth::BrowserPolicy;

pub use cluster::{Backend, JetStreamConfig};
pub use handoff::Handoff;
pub use review::{Alerts, Governance, OnHoldTimeout, OnThreshold, ReviewPolicy, ReviewStation};
pub use units::{expand_env, ByteSize, EnvString, HumanDuration, Rate};

/// A config that could not be loaded, with where and why.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path}:{line}:{col}: {key_part}{reason}", key_part = key.as_ref().map(|k| format!("key `{k}`: ")).unwrap_or_default())]
    Invalid {
        path: String,
        line: usize,
        col: usize,
        key: Option<String>,
        reason: String,
    },
}

/// A value that must never reach a log line or an API answer.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: String) -> Self {
        Secret(s)
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureMode {
    Retry,
    Buffer,
    Log,
    Halt,
}

impl FailureMode {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureMode::Retry => "retry",
            FailureMode::Buffer => "buffer",
            FailureMode::Log => "log",
            FailureMode::Halt => "halt",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    /// Answer 429 `queue_full` at once.
    Reject,
    /// Hold the request up to `block_timeout` for room.
    Block,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Ordering {
    Unordered,
    Fifo,
    /// Per key: same key in order, one at a time; keys in parallel.
    Key,
}

impl Ordering {
    pub fn as_str(self) -> &'static str {
        match self {
            Ordering::Unordered => "unordered",
            Ordering::Fifo => "fifo",
            Ordering::Key => "key",
        }
    }
}

/// Where a key-ordered destination finds a message's key (SPEC §14).
#[derive(Clone, Debug, PartialEq)]
pub enum OrderingKey {
    /// A jq program on the body; it runs in the handoff sandbox.
    Program(String),
    /// A request header's value.
    Header(http::HeaderName),
}

/// The validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub source: PathBuf,
    pub ingress: IngressConfig,
    pub admin: AdminConfig,
    pub storage: StorageConfig,
    pub log: LogConfig,
    pub server: ServerConfig,
    pub destinations: Vec<Destination>,
    /// `[review]`: what the review station keeps.
    pub review: ReviewStation,
    /// `[alerts]`: where alerts go besides the log and metrics.
    pub alerts: Alerts,
    /// Valid but probably not meant (no destination at all): printed by
    /// `check` and logged at start.
    pub warnings: Vec<String>,
}

#[derive(Clone, Debug)]
pub struct IngressConfig {
    pub listen: SocketAddr,
    pub max_body: u64,
    /// Open producer connections beyond this get a 503 and are closed.
    pub max_connections: usize,
    /// How long a producer may take to send a request's headers.
    pub header_read_timeout: Duration,
    pub auth_token: Option<Secret>,
    /// Which browser requests the listener refuses (`crate::auth`).
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

#[derive(Clone, Debug)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    pub token: Option<Secret>,
    pub browser: BrowserPolicy,
}

#[derive(Clone, Debug)]
pub struct StorageConfig {
    /// Where the queue lives (SPEC §13); `path` still holds what stays
    /// local in cluster mode: nothing but the lock of a SQLite journal.
    pub backend: Backend,
    pub path: PathBuf,
    pub max_disk: u64,
    pub history_retention: Duration,
}

#[derive(Clone, Debug)]
pub struct LogConfig {
    pub format: LogFormat,
    pub level: String,
}

#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub shutdown_timeout: Duration,
}

#[derive(Clone, Debug)]
pub struct Destination {
    pub name: String,
    pub url: reqwest::Url,
    pub owner: String,
    pub on_failure: FailureMode,
    pub timeout: Duration,
    /// Added to every delivery; values are secrets.
    pub headers: Vec<(http::HeaderName, Secret)>,
    pub accept_while_halted: bool,
    pub rate_limit: RateLimit,
    pub retry: RetryPolicy,
    pub queue: QueuePolicy,
    /// Extra certificate authorities trusted for this destination's HTTPS,
    /// on top of the bundled web roots.
    pub ca_file: Option<Arc<TrustedCa>>,
    /// `[destination.handoff]`: schema, routes, transform, format.
    pub handoff: Option<Handoff>,
    /// `[destination.review]`: what is held for a human, sampled, audited.
    pub review: Option<ReviewPolicy>,
    /// `[destination.governance]`: the thresholds that stop a bad flow.
    pub governance: Option<Governance>,
    /// The URL's path and query are a secret (a webhook's): shown redacted.
    pub secret_url: bool,
    /// What producers will send at peak, messages per second (SPEC §11).
    pub expected_volume: Option<f64>,
    /// The oldest message must be delivered within this (SPEC §11).
    pub latency_objective: Option<Duration>,
    /// Systems behind this downstream, named for the chain map.
    pub feeds: Vec<String>,
}

/// A PEM bundle of certificate authorities, read and checked when the config
/// is loaded (so a bad file is a config error, not a delivery failure).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrustedCa {
    pub path: PathBuf,
    pub pem: Arc<[u8]>,
    /// A digest of `pem`: delivery keeps one HTTP client per distinct bundle.
    pub fingerprint: u64,
}

impl TrustedCa {
    fn load(path: PathBuf) -> Result<TrustedCa, String> {
        let pem = std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        match reqwest::Certificate::from_pem_bundle(&pem) {
            Ok(certs) if !certs.is_empty() => {}
            _ => return Err(format!("{} holds no PEM certificate", path.display())),
        }
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        pem.hash(&mut h);
        Ok(TrustedCa {
            path,
            pem: pem.into(),
            fingerprint: h.finish(),
        })
    }
}

impl Destination {
    /// The URL with any userinfo replaced, fit for logs and API answers.
    pub fn redacted_url(&self) -> String {
        if self.secret_url {
            let mut u = self.url.clone();
            u.set_path("/<redacted>");
            u.set_query(None);
            return redact_url(&u);
        }
        redact_url(&self.url)
    }
}

pub fn redact_url(url: &reqwest::Url) -> String {
    let mut u = url.clone();
    if !u.username().is_empty() || u.password().is_some() {
        let _ = u.set_username("redacted");
        let _ = u.set_password(None);
    }
    u.to_string()
}

#[derive(Clone, Debug, PartialEq)]
pub struct RateLimit {
    /// Messages per second, `None` for no token bucket.
    pub rate: Option<f64>,
    pub burst: u32,
    pub max_in_flight: u32,
    pub adaptive: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    pub multiplier: f64,
    pub jitter: bool,
    pub max_age: Duration,
}

#[derive(Clone, Debug, PartialEq)]
pub struct QueuePolicy {
    pub max_messages: u64,
    pub max_bytes: u64,
    pub when_full: WhenFull,
    pub block_timeout: Duration,
    pub ordering: Ordering,
    /// Set exactly when `ordering` is `Key`.
    pub key: Option<OrderingKey>,
}

// ---------------------------------------------------------------- raw types

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    ingress: RawIngress,
    #[serde(default)]
    admin: RawAdmin,
    #[serde(default)]
    storage: RawStorage,
    #[serde(default)]
    log: RawLog,
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    destination: Vec<RawDestination>,
    #[serde(default)]
    review: review::RawReviewStation,
    #[serde(default)]
    alerts: review::RawAlerts,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawIngress {
    listen: Option<Spanned<EnvString>>,
    max_body: Option<ByteSize>,
    max_connections: Option<Spanned<i64>>,
    header_read_timeout: Option<HumanDuration>,
    auth_token_env: Option<Spanned<String>>,
    #[serde(default)]
    allowed_origins: Vec<Spanned<EnvString>>,
    #[serde(default)]
    allowed_hosts: Vec<Spanned<EnvString>>,
    allow_anonymous: Option<bool>,
    #[serde(default)]
    producer: Vec<RawProducer>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProducer {
    name: Spanned<String>,
    token_env: Spanned<String>,
    destinations: Option<Vec<Spanned<String>>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    listen: Option<Spanned<EnvString>>,
    token_env: Option<Spanned<String>>,
    #[serde(default)]
    allowed_origins: Vec<Spanned<EnvString>>,
    #[serde(default)]
    allowed_hosts: Vec<Spanned<EnvString>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawStorage {
    backend: Option<Spanned<String>>,
    jetstream: Option<Spanned<cluster::RawJetStream>>,
    path: Option<EnvString>,
    max_disk: Option<ByteSize>,
    history_retention: Option<HumanDuration>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLog {
    format: Option<Spanned<String>>,
    level: Option<EnvString>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawServer {
    shutdown_timeout: Option<HumanDuration>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDestination {
    name: Spanned<String>,
    url: Spanned<EnvString>,
    owner: Spanned<EnvString>,
    on_failure: Option<FailureMode>,
    timeout: Option<HumanDuration>,
    #[serde(default)]
    headers: BTreeMap<Spanned<String>, EnvString>,
    accept_while_halted: Option<bool>,
    #[serde(default)]
    rate_limit: RawRateLimit,
    #[serde(default)]
    retry: RawRetry,
    #[serde(default)]
    queue: RawQueue,
    ca_file: Option<Spanned<EnvString>>,
    handoff: Option<handoff::RawHandoff>,
    review: Option<Spanned<review::RawReview>>,
    governance: Option<Spanned<review::RawGovernance>>,
    expected_volume: Option<Spanned<Rate>>,
    latency_objective: Option<HumanDuration>,
    #[serde(default)]
    feeds: Vec<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRateLimit {
    rate: Option<Rate>,
    burst: Option<Spanned<i64>>,
    max_in_flight: Option<Spanned<i64>>,
    adaptive: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRetry {
    max_attempts: Option<Spanned<i64>>,
    initial_backoff: Option<Spanned<HumanDuration>>,
    max_backoff: Option<Spanned<HumanDuration>>,
    multiplier: Option<Spanned<f64>>,
    jitter: Option<bool>,
    max_age: Option<HumanDuration>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawQueue {
    max_messages: Option<Spanned<i64>>,
    max_bytes: Option<ByteSize>,
    when_full: Option<WhenFull>,
    block_timeout: Option<HumanDuration>,
    ordering: Option<Spanned<Ordering>>,
    key: Option<Spanned<String>>,
    key_header: Option<Spanned<String>>,
}

// ---------------------------------------------------------------- loading

/// `[destination.queue]`'s key settings: `ordering = "key"` takes exactly
/// one of `key` (a jq program, checked here so that a mistake points at
/// its line and column) and `key_header`; other orderings take neither.
fn ordering_key(q: &RawQueue, loc: &Locator) -> Result<Option<OrderingKey>, ConfigError> {
    let keyed = q.ordering.as_ref().is_some_and(|o| *o.get_ref() == Ordering::Key);
    match (&q.key, &q.key_header) {
        (Some(_), Some(h)) => Err(loc.error(
            h.span(),
            "set key (a jq expression on the body) or key_header, not both".to_string(),
        )),
        (Some(k), None) | (None, Some(k)) if !keyed => Err(loc.error(
            k.span(),
            "key and key_header apply only with ordering = \"key\"".to_string(),
        )),
        (None, None) if keyed => {
            let span = q.ordering.as_ref().map(|o| o.span()).unwrap_or(0..0);
            Err(loc.error(
                span,
                "ordering = \"key\" needs key (a jq expression on the body, e.g. \".contact_id\") \
                 or key_header (e.g. \"X-Ordering-Key\")"
                    .to_string(),
            ))
        }
        (Some(k), None) => {
            handoff::inline_program(k, "destination.queue.key", loc)?;
            Ok(Some(OrderingKey::Program(k.get_ref().clone())))
        }
        (None, Some(h)) => match http::HeaderName::from_bytes(h.get_ref().as_bytes()) {
            Ok(name) => Ok(Some(OrderingKey::Header(name))),
            Err(_) => Err(loc.error(
                h.span(),
                format!("key_header {:?} is not a valid HTTP header name", h.get_ref()),
            )),
        },
        (None, None) => Ok(None),
    }
}

impl Config {
    /// Reads and validates the config at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Validates config text; `path` locates errors, and relative paths in
    /// the config (`storage.path`, `ca_file`) are resolved against its
    /// directory, never the working directory: the same file opens the same
    /// queue wherever tidegate is started from.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let located = Locator {
            path,
            text,
            base: config_dir(path),
        };
        let de = toml::Deserializer::parse(text)
            .map_err(|e| located.error(e.span().unwrap_or(0..0), e.message().to_string()))?;
        // serde_path_to_error follows the deserializer down the tables, so
        // an error names the key it is about (a missing `owner`, an unknown
        // `[alerts]` table), not whatever line its span happens to start on.
        let raw: RawConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = key_path(&e.path().to_string(), e.inner().message());
            let inner = e.into_inner();
            let mut err = located.error(inner.span().unwrap_or(0..0), inner.message().to_string());
            if let ConfigError::Invalid { key: k, .. } = &mut err {
                *k = Some(key);
            }
            err
        })?;
        build(raw, &located)
    }

    pub fn destination(&self, name: &str) -> Option<&Destination> {
        self.destinations.iter().find(|d| d.name == name)
    }
}

/// The directory relative paths in the config file at `path` are resolved
/// against: its own, made absolute (and free of symbolic links where it
/// exists) so that the resolved paths can be printed and compared.
fn config_dir(path: &Path) -> PathBuf {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    dir.canonicalize()
        .or_else(|_| std::path::absolute(dir))
        .unwrap_or_else(|_| dir.to_path_buf())
}

/// `base.join(p)`, with the `..` of `p` that climb out of `base` taken off
/// `base` (whose components are real directories: see `config_dir`), so
/// that `../data` beside `/srv/app/config/` reads `/srv/app/data`.
fn resolve_against(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        return p.to_path_buf();
    }
    let mut out = base.to_path_buf();
    let mut climbing = true;
    for c in p.components() {
        match c {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir if climbing && out.parent().is_some() => {
                out.pop();
            }
            other => {
                climbing = false;
                out.push(other);
            }
        }
    }
    out
}

/// The dotted key an error from deserializing is about. `path` is where
/// serde was (`destination[0].retry`); a missing or unknown field named in
/// the message is the key itself. Array indexes are dropped: the line
/// number says which `[[destination]]` it is.
fn key_path(path: &str, message: &str) -> String {
    let mut parts: Vec<String> = path
        .split('.')
        .map(|p| p.split('[').next().unwrap_or(p).to_string())
        // Spanned values are a private inner map to serde: not a key.
        .filter(|p| !p.is_empty() && p != "?" && !p.starts_with("$__serde"))
        .collect();
    let named = ["missing field `", "unknown field `"]
        .iter()
        .find_map(|prefix| message.strip_prefix(prefix))
        .and_then(|rest| rest.split('`').next());
    if let Some(field) = named {
        if parts.last().map(String::as_str) != Some(field) {
            parts.push(field.to_string());
        }
    }
    parts.join(".")
}

struct Locator<'a> {
    path: &'a Path,
    text: &'a str,
    /// Where relative paths in the file are resolved (`config_dir`).
    base: PathBuf,
}

impl Locator<'_> {
    fn resolve(&self, p: &str) -> PathBuf {
        resolve_against(&self.base, Path::new(p))
    }

    fn error(&self, span: std::ops::Range<usize>, reason: String) -> ConfigError {
        let start = span.start.min(self.text.len());
        let before = &self.text[..start];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
        let col = before[line_start..].chars().count() + 1;
        ConfigError::Invalid {
            path: self.path.display().to_string(),
            line,
            col,
            key: self.key_at(start),
            reason,
        }
    }

    /// An error at `offset` about `key`, whatever line that offset is on
    /// (inside a multi-line program, say).
    fn error_with_key(&self, offset: usize, key: &str, reason: String) -> ConfigError {
        named(self.error(offset..offset, reason), key, true)
    }

    /// As `error`, naming `key` when the span does not (a defaulted value).
    fn error_at_key(&self, span: std::ops::Range<usize>, key: &str, reason: String) -> ConfigError {
        named(self.error(span, reason), key, false)
    }

    /// The dotted key whose value starts at `offset`: the table header above
    /// it plus the bare key on its line, e.g. `destination.retry.multiplier`.
    fn key_at(&self, offset: usize) -> Option<String> {
        let before = &self.text[..offset];
        let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
        let line_end = self.text[line_start..]
            .find('\n')
            .map(|i| line_start + i)
            .unwrap_or(self.text.len());
        let line = &self.text[line_start..line_end];
        let key = line
            .split_once('=')
            .map(|(k, _)| k.trim().trim_matches('"').to_string())
            .filter(|k| !k.is_empty() && !k.starts_with('['));
        let table = before[..line_start]
            .lines()
            .rev()
            .map(str::trim)
            .find(|l| l.starts_with('['))
            .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim().to_string());
        match (table, key) {
            (Some(t), Some(k)) => Some(format!("{t}.{k}")),
            (None, Some(k)) => Some(k),
            (Some(t), None) if line.trim_start().starts_with('[') => Some(t),
            _ => None,
        }
    }
}

/// `e` naming `key`: always, or only where it names none.
fn named(e: ConfigError, key: &str, always: bool) -> ConfigError {
    match e {
        ConfigError::Invalid {
            path,
            line,
            col,
            key: k,
            reason,
        } if always || k.is_none() => ConfigError::Invalid {
            path,
            line,
            col,
            key: Some(key.to_string()),
            reason,
        },
        e => e,
    }
}

fn positive<T>(v: &Option<Spanned<i64>>, default: T, loc: &Locator, what: &str) -> Result<T, ConfigError>
where
    T: TryFrom<i64> + Copy,
{
    match v {
        None => Ok(default),
        Some(s) => {
            let n = *s.get_ref();
            if n < 1 {
                return Err(loc.error(s.span(), format!("{what} must be at least 1, got {n}")));
            }
            T::try_from(n).map_err(|_| loc.error(s.span(), format!("{what} is too large: {n}")))
        }
    }
}

fn secret_from_env(name: &Option<Spanned<String>>, loc: &Locator) -> Result<Option<Secret>, ConfigError> {
    let Some(name) = name else { return Ok(None) };
    match std::env::var(name.get_ref()) {
        Ok(v) if !v.is_empty() => Ok(Some(Secret(v))),
        _ => Err(loc.error(
            name.span(),
            format!("environment variable `{}` is not set or empty", name.get_ref()),
        )),
    }
}

fn socket_addr(v: &Option<Spanned<EnvString>>, default: &str, loc: &Locator) -> Result<SocketAddr, ConfigError> {
    match v {
        None => Ok(default.parse().expect("default listen address is valid")),
        Some(s) => s.get_ref().0.parse().map_err(|_| {
            loc.error(
                s.span(),
                format!("{:?} is not an address like \"127.0.0.1:9090\"", s.get_ref().0),
            )
        }),
    }
}

/// Validates `[[ingress.producer]]`: names like destinations', unique;
/// tokens set and distinct (a token must say who sent a request); listed
/// destinations configured.
fn producers(raw: &[RawProducer], destinations: &[Destination], loc: &Locator) -> Result<Vec<Producer>, ConfigError> {
    let mut out: Vec<Producer> = Vec::new();
    for p in raw {
        let name = p.name.get_ref().clone();
        if !valid_name(&name) {
            return Err(loc.error(
                p.name.span(),
                format!("producer name {name:?} must match [a-z0-9][a-z0-9_-]{{0,62}}"),
            ));
        }
        if out.iter().any(|o| o.name == name) {
            return Err(loc.error(p.name.span(), format!("producer {name:?} is defined twice")));
        }
        let token = secret_from_env(&Some(p.token_env.clone()), loc)?
            .ok_or_else(|| loc.error(p.token_env.span(), "token_env is required".to_string()))?;
        if let Some(other) = out.iter().find(|o| o.token == token) {
            return Err(loc.error(
                p.token_env.span(),
                format!(
                    "producers {:?} and {name:?} have the same token: each needs its own",
                    other.name
                ),
            ));
        }
        let dests = match &p.destinations {
            None => None,
            Some(list) => {
                let mut names = Vec::new();
                for d in list {
                    if !destinations.iter().any(|x| x.name == *d.get_ref()) {
                        return Err(loc.error(
                            d.span(),
                            format!(
                                "producer {name:?} names destination {:?}, which is not configured",
                                d.get_ref()
                            ),
                        ));
                    }
                    names.push(d.get_ref().clone());
                }
                Some(names)
            }
        };
        out.push(Producer {
            name,
            token,
            destinations: dests,
        });
    }
    Ok(out)
}

/// A listener's browser policy: origins as `scheme://host[:port]` (or the
/// literal `null`), hosts as bare names; both compared lower-case.
fn browser_policy(
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

fn valid_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b[1..]
            .iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_' || *c == b'-')
}

/// Header names tidegate sets itself or that would break the delivery.
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "x-tidegate-message-id",
    "x-tidegate-attempt",
];

fn build(raw: RawConfig, loc: &Locator) -> Result<Config, ConfigError> {
    let ingress_listen = socket_addr(&raw.ingress.listen, "0.0.0.0:8080", loc)?;
    let admin_listen = socket_addr(&raw.admin.listen, "127.0.0.1:9090", loc)?;
    let ingress = IngressConfig {
        listen: ingress_listen,
        browser: browser_policy(
            ingress_listen,
            &raw.ingress.allowed_origins,
            &raw.ingress.allowed_hosts,
            loc,
        )?,
        max_body: raw.ingress.max_body.map(|b| b.0).unwrap_or(1 << 20),
        max_connections: positive(&raw.ingress.max_connections, 4096usize, loc, "max_connections")?,
        header_read_timeout: raw
            .ingress
            .header_read_timeout
            .map(|d| d.0)
            .unwrap_or(Duration::from_secs(10)),
        auth_token: secret_from_env(&raw.ingress.auth_token_env, loc)?,
        // Filled in below, once the destinations they name are known.
        producers: Vec::new(),
        allow_anonymous: raw.ingress.allow_anonymous.unwrap_or(false),
    };
    let admin = AdminConfig {
        listen: admin_listen,
        token: secret_from_env(&raw.admin.token_env, loc)?,
        browser: browser_policy(admin_listen, &raw.admin.allowed_origins, &raw.admin.allowed_hosts, loc)?,
    };
    if !admin.listen.ip().is_loopback() && admin.token.is_none() {
        let span = raw.admin.listen.as_ref().map(|s| s.span()).unwrap_or(0..0);
        return Err(loc.error(
            span,
            format!(
                "admin.listen {} is not a loopback address; set admin.token_env so the admin API requires a token",
                admin.listen
            ),
        ));
    }
    let storage = StorageConfig {
        backend: cluster::backend(&raw.storage.backend, raw.storage.jetstream.as_ref(), loc)?,
        path: loc.resolve(&raw.storage.path.map(|p| p.0).unwrap_or_else(|| "./data".into())),
        max_disk: raw.storage.max_disk.map(|b| b.0).unwrap_or(10 << 30),
        history_retention: raw
            .storage
            .history_retention
            .map(|d| d.0)
            .unwrap_or(Duration::from_secs(86400)),
    };
    let log = LogConfig {
        format: match &raw.log.format {
            None => LogFormat::Text,
            Some(f) => match f.get_ref().as_str() {
                "text" => LogFormat::Text,
                "json" => LogFormat::Json,
                other => {
                    return Err(loc.error(
                        f.span(),
                        format!("log.format must be \"text\" or \"json\", got {other:?}"),
                    ))
                }
            },
        },
        level: raw.log.level.map(|l| l.0).unwrap_or_else(|| "info".into()),
    };
    let server = ServerConfig {
        shutdown_timeout: raw
            .server
            .shutdown_timeout
            .map(|d| d.0)
            .unwrap_or(Duration::from_secs(30)),
    };

    let mut destinations: Vec<Destination> = Vec::new();
    let mut handoffs = Vec::new();
    for d in raw.destination {
        let name = d.name.get_ref().clone();
        if !valid_name(&name) {
            return Err(loc.error(
                d.name.span(),
                format!("destination name {name:?} must match [a-z0-9][a-z0-9_-]{{0,62}}"),
            ));
        }
        if destinations.iter().any(|x| x.name == name) {
            return Err(loc.error(d.name.span(), format!("destination {name:?} is defined twice")));
        }
        let url_text = &d.url.get_ref().0;
        let url = reqwest::Url::parse(url_text)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
            .ok_or_else(|| {
                loc.error(
                    d.url.span(),
                    "url must be an absolute http:// or https:// URL".to_string(),
                )
            })?;
        let owner = d.owner.get_ref().0.trim().to_string();
        if owner.is_empty() {
            return Err(loc.error(d.owner.span(), "owner must not be empty".to_string()));
        }
        let mut headers = Vec::new();
        for (k, v) in d.headers {
            let hname = http::HeaderName::from_bytes(k.get_ref().as_bytes())
                .map_err(|_| loc.error(k.span(), format!("{:?} is not a valid header name", k.get_ref())))?;
            if RESERVED_HEADERS.contains(&hname.as_str()) {
                return Err(loc.error(
                    k.span(),
                    format!("header {:?} is set by tidegate and cannot be configured", k.get_ref()),
                ));
            }
            if http::HeaderValue::from_str(&v.0).is_err() {
                // The value is a secret: name the header, never the value.
                return Err(loc.error(
                    k.span(),
                    format!("the value of header {:?} is not a valid header value", k.get_ref()),
                ));
            }
            headers.push((hname, Secret(v.0)));
        }
        let rl = &d.rate_limit;
        let rate = rl
            .rate
            .unwrap_or(Rate {
                per_second: Some(100.0),
            })
            .per_second;
        let rate_limit = RateLimit {
            rate,
            burst: positive(&rl.burst, 10u32, loc, "burst")?,
            max_in_flight: positive(&rl.max_in_flight, 8u32, loc, "max_in_flight")?,
            adaptive: rl.adaptive.unwrap_or(true),
        };
        let r = &d.retry;
        let multiplier = match &r.multiplier {
            None => 2.0,
            Some(m) if *m.get_ref() >= 1.0 && m.get_ref().is_finite() => *m.get_ref(),
            Some(m) => return Err(loc.error(m.span(), "multiplier must be a number >= 1.0".to_string())),
        };
        let retry = RetryPolicy {
            max_attempts: positive(&r.max_attempts, 8u32, loc, "max_attempts")?,
            initial_backoff: r
                .initial_backoff
                .as_ref()
                .map(|x| x.get_ref().0)
                .unwrap_or(Duration::from_millis(500)),
            max_backoff: r
                .max_backoff
                .as_ref()
                .map(|x| x.get_ref().0)
                .unwrap_or(Duration::from_secs(60)),
            multiplier,
            jitter: r.jitter.unwrap_or(true),
            max_age: r.max_age.map(|x| x.0).unwrap_or(Duration::from_secs(86400)),
        };
        if retry.max_backoff < retry.initial_backoff {
            // Point at whichever of the two the file sets (the other is
            // its default).
            let span = r
                .max_backoff
                .as_ref()
                .or(r.initial_backoff.as_ref())
                .map(|s| s.span())
                .unwrap_or(0..0);
            return Err(loc.error(
                span,
                format!(
                    "max_backoff ({}) is below initial_backoff ({}): every back-off would be max_backoff",
                    HumanDuration(retry.max_backoff),
                    HumanDuration(retry.initial_backoff)
                ),
            ));
        }
        let q = &d.queue;
        let queue = QueuePolicy {
            max_messages: positive(&q.max_messages, 1_000_000u64, loc, "max_messages")?,
            max_bytes: q.max_bytes.map(|b| b.0).unwrap_or(1 << 30),
            when_full: q.when_full.unwrap_or(WhenFull::Reject),
            block_timeout: q.block_timeout.map(|x| x.0).unwrap_or(Duration::from_secs(5)),
            ordering: q.ordering.as_ref().map_or(Ordering::Unordered, |o| *o.get_ref()),
            key: ordering_key(q, loc)?,
        };
        let ca_file = match &d.ca_file {
            None => None,
            Some(f) => {
                let path = loc.resolve(&f.get_ref().0);
                Some(Arc::new(
                    TrustedCa::load(path).map_err(|reason| loc.error(f.span(), reason))?,
                ))
            }
        };
        let expected_volume =
            match &d.expected_volume {
                None => None,
                Some(v) => match v.get_ref().per_second {
                    Some(r) => Some(r),
                    None => return Err(loc.error(
                        v.span(),
                        "expected_volume is what producers send at peak, like \"20000/h\"; \"unlimited\" says nothing"
                            .into(),
                    )),
                },
            };
        let mut feeds = Vec::new();
        for f in &d.feeds {
            let f_name = f.get_ref().trim();
            if f_name.is_empty() || f_name.len() > 100 || f_name.chars().any(char::is_control) {
                return Err(loc.error(
                    f.span(),
                    format!(
                        "feeds names a system: 1 to 100 printable characters, got {:?}",
                        f.get_ref()
                    ),
                ));
            }
            if feeds.iter().any(|x: &String| x == f_name) {
                return Err(loc.error(f.span(), format!("{f_name:?} is listed twice in feeds")));
            }
            feeds.push(f_name.to_string());
        }
        let mut handoff = d.handoff.map(|h| handoff::spec(h, loc)).transpose()?;
        let review = d.review.map(|r| review::review(r.into_inner(), loc)).transpose()?;
        let governance = d
            .governance
            .map(|g| review::governance(g.into_inner(), loc))
            .transpose()?;
        // The key program and the hold predicate run where the other
        // programs run: in the handoff sandbox, at ingress. Without a
        // handoff of its own the body is read for them and otherwise
        // forwarded as received.
        let key = match &queue.key {
            Some(OrderingKey::Program(code)) => Some(code.clone()),
            _ => None,
        };
        let hold_when = review.as_ref().and_then(|r| r.hold_when.clone());
        if key.is_some() || hold_when.is_some() {
            let (spec, _) = handoff.get_or_insert_with(|| (crate::handoff::Spec::passthrough(), Vec::new()));
            spec.key = key;
            spec.hold_when = hold_when;
        }
        if let Some((spec, targets)) = handoff {
            handoffs.push((name.clone(), spec, targets));
        }
        destinations.push(Destination {
            name,
            url,
            owner,
            on_failure: d.on_failure.unwrap_or(FailureMode::Retry),
            timeout: d.timeout.map(|t| t.0).unwrap_or(Duration::from_secs(10)),
            headers,
            accept_while_halted: d.accept_while_halted.unwrap_or(false),
            rate_limit,
            retry,
            queue,
            ca_file,
            handoff: None,
            review,
            governance,
            secret_url: false,
            expected_volume,
            latency_objective: d.latency_objective.map(|o| o.0).filter(|o| !o.is_zero()),
            feeds,
        });
    }
    handoff::link(&mut destinations, handoffs, loc)?;
    let alerts = review::alerts(raw.alerts, loc)?;
    if let Some(url) = &alerts.webhook_url {
        destinations.push(alerts_destination(url.clone()));
    }
    let mut ingress = ingress;
    ingress.producers = producers(&raw.ingress.producer, &destinations, loc)?;
    if !ingress.listen.ip().is_loopback()
        && ingress.producers.is_empty()
        && ingress.auth_token.is_none()
        && !ingress.allow_anonymous
    {
        let span = raw.ingress.listen.as_ref().map(|s| s.span()).unwrap_or(0..0);
        // The default listen has no span: the error still names its key.
        return Err(loc.error_at_key(
            span,
            "ingress.listen",
            format!(
                "{} is not a loopback address and no [[ingress.producer]] or auth_token_env is \
                 configured: anyone who reaches it could send with the destinations' credentials; configure \
                 producers, or set ingress.allow_anonymous = true if that is meant",
                ingress.listen
            ),
        ));
    }
    let mut warnings = Vec::new();
    if destinations.is_empty() {
        warnings.push(format!(
            "{}: no [[destination]] is configured: every producer request will get 404 unknown_destination",
            loc.path.display()
        ));
    }
    Ok(Config {
        source: loc.path.to_path_buf(),
        ingress,
        admin,
        storage,
        log,
        server,
        destinations,
        review: review::station(raw.review),
        alerts,
        warnings,
    })
}

/// The internal destination alerts are queued on (`[alerts] webhook_url`):
/// buffer mode, so a webhook that is down for hours loses no alert and
/// gets them in order once it is back; probes at most 5 s apart.
fn alerts_destination(url: reqwest::Url) -> Destination {
    Destination {
        name: crate::review::ALERTS.to_string(),
        url,
        owner: "tidegate".to_string(),
        on_failure: FailureMode::Buffer,
        timeout: Duration::from_secs(10),
        headers: Vec::new(),
        accept_while_halted: true,
        rate_limit: RateLimit {
            rate: Some(10.0),
            burst: 10,
            max_in_flight: 2,
            adaptive: true,
        },
        retry: RetryPolicy {
            max_attempts: 1_000_000,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(5),
            multiplier: 2.0,
            jitter: true,
            max_age: Duration::from_secs(7 * 86400),
        },
        queue: QueuePolicy {
            max_messages: 100_000,
            max_bytes: 64 << 20,
            when_full: WhenFull::Reject,
            block_timeout: Duration::from_secs(5),
            ordering: Ordering::Unordered,
            key: None,
        },
        ca_file: None,
        handoff: None,
        review: None,
        governance: None,
        secret_url: true,
        expected_volume: None,
        latency_objective: None,
        feeds: Vec::new(),
    }
}

impl Config {
    /// The one-screen summary `tidegate check` prints: effective values,
    /// secrets shown only as `<redacted>`.
    pub fn summary(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(s, "config {} is valid", self.source.display());
        let _ = writeln!(
            s,
            "ingress  listen={} max_body={} max_connections={} header_read_timeout={} auth={}",
            self.ingress.listen,
            ByteSize(self.ingress.max_body),
            self.ingress.max_connections,
            HumanDuration(self.ingress.header_read_timeout),
            match (self.ingress.producers.len(), self.ingress.auth_token.is_some()) {
                (0, false) if self.ingress.allow_anonymous => "none (allow_anonymous)",
                (0, false) => "none (loopback)",
                (0, true) => "shared bearer token",
                (_, false) => "producer tokens",
                (_, true) => "producer tokens and a shared one",
            }
        );
        for p in &self.ingress.producers {
            let _ = writeln!(
                s,
                "  producer {:?} token=<redacted> destinations={}",
                p.name,
                p.destinations.as_ref().map_or("all".to_string(), |d| d.join(","))
            );
        }
        let _ = writeln!(
            s,
            "admin    listen={} auth={}",
            self.admin.listen,
            if self.admin.token.is_some() {
                "bearer token"
            } else {
                "none (loopback)"
            }
        );
        let _ = writeln!(
            s,
            "storage  path={} max_disk={} history_retention={}",
            self.storage.path.display(),
            ByteSize(self.storage.max_disk),
            HumanDuration(self.storage.history_retention)
        );
        let _ = writeln!(
            s,
            "log      format={} level={}   server shutdown_timeout={}",
            if self.log.format == LogFormat::Json {
                "json"
            } else {
                "text"
            },
            self.log.level,
            HumanDuration(self.server.shutdown_timeout)
        );
        for w in &self.warnings {
            let _ = writeln!(s, "warning: {w}");
        }
        for d in &self.destinations {
            let _ = writeln!(
                s,
                "destination {:?} -> {} (owner {})",
                d.name,
                d.redacted_url(),
                d.owner
            );
            if let Some(h) = &d.handoff {
                let _ = writeln!(s, "  handoff {}", handoff::describe(&h.spec));
            }
            if let Some(r) = &d.review {
                let _ = writeln!(
                    s,
                    "  review hold_when={} sample={} sample_by_category={:?} audit_sample={} hold_timeout={} on_hold_timeout={:?}",
                    if r.hold_when.is_some() { "set" } else { "none" },
                    r.sample,
                    r.sample_by_category,
                    r.audit_sample,
                    r.hold_timeout.map_or("none".to_string(), |t| HumanDuration(t).to_string()),
                    r.on_hold_timeout
                );
            }
            if let Some(g) = &d.governance {
                let _ = writeln!(
                    s,
                    "  governance error_threshold={} window={} min_reviews={} on_threshold={:?} downstream_error_threshold={}",
                    g.error_threshold.map_or("none".to_string(), |x| x.to_string()),
                    HumanDuration(g.window),
                    g.min_reviews,
                    g.on_threshold,
                    g.downstream_error_threshold.map_or("none".to_string(), |x| x.to_string())
                );
            }
            let _ = writeln!(
                s,
                "  on_failure={} timeout={} accept_while_halted={} headers=[{}]",
                d.on_failure.as_str(),
                HumanDuration(d.timeout),
                d.accept_while_halted,
                d.headers
                    .iter()
                    .map(|(k, _)| format!("{k}=<redacted>"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            let _ = writeln!(
                s,
                "  rate_limit rate={} burst={} max_in_flight={} adaptive={}",
                Rate {
                    per_second: d.rate_limit.rate
                },
                d.rate_limit.burst,
                d.rate_limit.max_in_flight,
                d.rate_limit.adaptive
            );
            let _ = writeln!(
                s,
                "  retry max_attempts={} initial_backoff={} max_backoff={} multiplier={} jitter={} max_age={}",
                d.retry.max_attempts,
                HumanDuration(d.retry.initial_backoff),
                HumanDuration(d.retry.max_backoff),
                d.retry.multiplier,
                d.retry.jitter,
                HumanDuration(d.retry.max_age)
            );
            let _ = writeln!(
                s,
                "  queue max_messages={} max_bytes={} when_full={} block_timeout={} ordering={}",
                d.queue.max_messages,
                ByteSize(d.queue.max_bytes),
                if d.queue.when_full == WhenFull::Block {
                    "block"
                } else {
                    "reject"
                },
                HumanDuration(d.queue.block_timeout),
                d.queue.ordering.as_str()
            );
            match &d.queue.key {
                Some(OrderingKey::Program(p)) => {
                    let _ = writeln!(s, "  ordering key {p}");
                }
                Some(OrderingKey::Header(h)) => {
                    let _ = writeln!(s, "  ordering key header {h}");
                }
                None => {}
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("t.toml"), text)
    }

    /// The smallest config that loads: a loopback ingress (a public one
    /// needs producers or `allow_anonymous`) and one destination.
    const MIN: &str = "[ingress]\nlisten = \"127.0.0.1:8080\"\n[[destination]]\nname = \"crm\"\nurl = \"http://127.0.0.1:9/api\"\nowner = \"ops@example.com\"\n";

    #[test]
    fn storage_backends_are_checked_where_they_are_written() {
        let js = "[storage]\nbackend = \"jetstream\"\n[storage.jetstream]\nurls = [\"nats://127.0.0.1:4222\"]\n";
        let c = parse(&format!("{js}{MIN}")).unwrap();
        match &c.storage.backend {
            Backend::JetStream(j) => {
                assert_eq!(j.urls, ["nats://127.0.0.1:4222"]);
                assert_eq!((j.replicas, j.stream_prefix.as_str()), (3, "TIDEGATE"));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(parse(MIN).unwrap().storage.backend, Backend::Sqlite);
        let e = parse(&format!("[storage]\nbackend = \"jetstream\"\n{MIN}"))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("t.toml:2:") && e.contains("needs a [storage.jetstream]"),
            "{e}"
        );
        let e = parse(&format!("[storage]\nbackend = \"redis\"\n{MIN}"))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("t.toml:2:") && e.contains("\"sqlite\" or \"jetstream\""),
            "{e}"
        );
        let e = parse(&format!("[storage.jetstream]\nurls = [\"nats://a:4222\"]\n{MIN}"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("storage.backend is not \"jetstream\""), "{e}");
        let e = parse(&format!(
            "[storage]\nbackend = \"jetstream\"\n[storage.jetstream]\nurls = [\"http://a:4222\"]\n{MIN}"
        ))
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("t.toml:4:") && e.contains("not a NATS URL"), "{e}");
        let e = parse(&format!("{js}replicas = 7\n{MIN}")).unwrap_err().to_string();
        assert!(e.starts_with("t.toml:5:") && e.contains("1 to 5"), "{e}");
        let e = parse(&format!("{js}stream_prefix = \"a.b\"\n{MIN}"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("t.toml:5:") && e.contains("stream_prefix"), "{e}");
        // The review station works in cluster mode too.
        let c = parse(&format!(
            "{js}{MIN}[destination.review]\nsample = 0.1\n[destination.governance]\nerror_threshold = 0.5\n"
        ))
        .unwrap();
        assert!(c.destinations[0].review.is_some());
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = parse(MIN).unwrap();
        assert_eq!(c.ingress.max_body, 1 << 20);
        assert_eq!(c.destinations[0].retry.max_attempts, 8);
        assert_eq!(c.destinations[0].on_failure, FailureMode::Retry);
        assert!(c.admin.listen.ip().is_loopback());
    }

    #[test]
    fn key_ordering_takes_exactly_one_key_source_and_checks_it() {
        let q = |lines: &str| parse(&format!("{MIN}[destination.queue]\n{lines}"));
        let e = q("ordering = \"key\"\n").unwrap_err().to_string();
        assert!(e.starts_with("t.toml:8:12:") && e.contains("key_header"), "{e}");
        let e = q("ordering = \"key\"\nkey = \".a\"\nkey_header = \"X-K\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("t.toml:10:") && e.contains("not both"), "{e}");
        let e = q("ordering = \"fifo\"\nkey = \".a\"\n").unwrap_err().to_string();
        assert!(e.contains("only with ordering"), "{e}");
        let e = q("ordering = \"key\"\nkey = \".a |\"\n").unwrap_err().to_string();
        assert!(e.starts_with("t.toml:9:") && e.contains("destination.queue.key"), "{e}");
        let e = q("ordering = \"key\"\nkey_header = \"bad header\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a valid HTTP header name"), "{e}");
        let c = q("ordering = \"key\"\nkey_header = \"X-Ordering-Key\"\n").unwrap();
        assert_eq!(
            c.destinations[0].queue.key,
            Some(OrderingKey::Header(http::HeaderName::from_static("x-ordering-key")))
        );
        assert!(c.destinations[0].handoff.is_none(), "a header key needs no sandbox");
        let c = q("ordering = \"key\"\nkey = \".contact_id\"\n").unwrap();
        let h = c.destinations[0]
            .handoff
            .as_ref()
            .expect("the key program runs in the handoff");
        assert_eq!(h.spec.key.as_deref(), Some(".contact_id"));
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let text = format!("{MIN}[destination.retry]\nmax_atempts = 3\n");
        let e = parse(&text).unwrap_err().to_string();
        assert!(e.starts_with("t.toml:8:1:"), "{e}");
        assert!(e.contains("max_atempts"), "{e}");
    }

    #[test]
    fn bad_duration_points_at_the_value() {
        let text = format!("{MIN}timeout = \"10 parsecs\"\n");
        let e = parse(&text).unwrap_err().to_string();
        assert!(e.starts_with("t.toml:7:11:"), "{e}");
        assert!(e.contains("destination.timeout"), "{e}");
    }

    #[test]
    fn missing_owner_is_an_error() {
        let e = parse("[[destination]]\nname = \"a\"\nurl = \"http://x/\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("owner"), "{e}");
    }

    #[test]
    fn non_loopback_admin_without_token_is_refused() {
        let e = parse(&format!("[admin]\nlisten = \"0.0.0.0:9090\"\n{MIN}"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("token_env"), "{e}");
    }

    #[test]
    fn header_values_never_appear_in_errors_or_debug() {
        std::env::set_var("TIDEGATE_CFG_TEST_SECRET", "s3cr3t-value");
        let c = parse(&format!(
            "{MIN}headers = {{ Authorization = \"Bearer ${{TIDEGATE_CFG_TEST_SECRET}}\" }}\n"
        ))
        .unwrap();
        assert_eq!(c.destinations[0].headers[0].1.expose(), "Bearer s3cr3t-value");
        assert!(!format!("{c:?}").contains("s3cr3t"));
        assert!(!c.summary().contains("s3cr3t"));
    }

    #[test]
    fn bad_destination_names_are_refused() {
        for bad in ["Crm", "-x", "", "a/b"] {
            let text = MIN.replace("\"crm\"", &format!("{bad:?}"));
            assert!(parse(&text).is_err(), "{bad}");
        }
    }

    fn key_of(e: ConfigError) -> String {
        match e {
            ConfigError::Invalid { key, .. } => key.unwrap_or_default(),
            other => panic!("not an Invalid error: {other}"),
        }
    }

    #[test]
    fn errors_name_the_key_they_are_about() {
        // A missing owner, not the table the parser was in.
        let e = parse("[server]\nshutdown_timeout = \"5s\"\n[[destination]]\nname = \"a\"\nurl = \"http://x/\"\n")
            .unwrap_err();
        assert_eq!(key_of(e), "destination.owner");
        // An unknown sub-table of a destination.
        let e = parse(&format!("{MIN}[destination.retries]\nmax_attempts = 3\n")).unwrap_err();
        assert_eq!(key_of(e), "destination.retries");
        // An unknown top-level table after a destination's sub-table.
        let e = parse(&format!(
            "{MIN}[destination.queue]\nmax_messages = 5\n[alarms]\nwebhook_url = \"x\"\n"
        ))
        .unwrap_err();
        assert_eq!(key_of(e), "alarms");
        // A webhook that is not a URL.
        let e = parse(&format!("{MIN}[alerts]\nwebhook_url = \"x\"\n")).unwrap_err();
        assert_eq!(key_of(e), "alerts.webhook_url");
        // A wrong type.
        let e = parse(&format!("{MIN}[destination.rate_limit]\nburst = \"ten\"\n")).unwrap_err();
        assert_eq!(key_of(e), "destination.rate_limit.burst");
    }

    #[test]
    fn max_backoff_below_initial_backoff_is_an_error() {
        let e = parse(&format!(
            "{MIN}[destination.retry]\ninitial_backoff = \"10s\"\nmax_backoff = \"1s\"\n"
        ))
        .unwrap_err();
        let text = e.to_string();
        assert!(text.starts_with("t.toml:9:15:"), "{text}");
        assert_eq!(key_of(e), "destination.retry.max_backoff");
        // Only initial_backoff set, above the default max_backoff of 1m.
        let e = parse(&format!("{MIN}[destination.retry]\ninitial_backoff = \"2m\"\n")).unwrap_err();
        assert_eq!(key_of(e), "destination.retry.initial_backoff");
        assert!(parse(&format!(
            "{MIN}[destination.retry]\ninitial_backoff = \"1s\"\nmax_backoff = \"1s\"\n"
        ))
        .is_ok());
    }

    #[test]
    fn a_config_without_destinations_loads_with_a_warning() {
        let c = parse("[ingress]\nlisten = \"127.0.0.1:8080\"\n[log]\nlevel = \"info\"\n").unwrap();
        assert_eq!(c.warnings.len(), 1);
        assert!(
            c.summary().contains("warning: t.toml: no [[destination]]"),
            "{}",
            c.summary()
        );
        assert!(parse(MIN).unwrap().warnings.is_empty());
    }

    #[test]
    fn relative_paths_are_resolved_against_the_config_files_directory() {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("etc");
        std::fs::create_dir(&conf).unwrap();
        let base = conf.canonicalize().unwrap();
        let at = |p: &str| {
            Config::parse(&conf.join("t.toml"), &format!("[storage]\npath = {p:?}\n{MIN}"))
                .unwrap()
                .storage
                .path
        };
        assert_eq!(at("./data"), base.join("data"));
        assert_eq!(at("q/data"), base.join("q/data"));
        assert_eq!(at("../data"), base.parent().unwrap().join("data"));
        assert_eq!(at("/var/lib/tidegate"), PathBuf::from("/var/lib/tidegate"));
        // The summary `check` prints shows where the queue really is.
        let c = Config::parse(&conf.join("t.toml"), MIN).unwrap();
        assert!(
            c.summary().contains(&format!("path={}", base.join("data").display())),
            "{}",
            c.summary()
        );
    }

    /// The shipped config, one key at a time: renamed to an unknown key,
    /// given a value of the wrong type, or (name, url, owner) removed.
    /// Each error must name the key path it is about.
    mod single_key_mutations {
        use super::*;
        use proptest::prelude::*;

        const SHIPPED: &str = include_str!("../../config/tidegate.toml");

        /// (line index, table path, key) for every `key = value` line.
        fn keys() -> Vec<(usize, String, String)> {
            let mut table = String::new();
            let mut out = Vec::new();
            for (i, line) in SHIPPED.lines().enumerate() {
                let t = line.trim();
                if t.starts_with('#') || t.is_empty() {
                    continue;
                }
                if t.starts_with('[') {
                    table = t.trim_matches(|c| c == '[' || c == ']').to_string();
                    continue;
                }
                if let Some((k, _)) = t.split_once('=') {
                    out.push((i, table.clone(), k.trim().to_string()));
                }
            }
            out
        }

        fn with_line(i: usize, new: Option<String>) -> String {
            SHIPPED
                .lines()
                .enumerate()
                .filter_map(|(j, l)| if j == i { new.clone() } else { Some(l.to_string()) })
                .collect::<Vec<_>>()
                .join("\n")
        }

        fn dotted(table: &str, key: &str) -> String {
            if table.is_empty() {
                key.to_string()
            } else {
                format!("{table}.{key}")
            }
        }

        #[test]
        fn the_shipped_config_loads() {
            parse(SHIPPED).unwrap();
            assert!(keys().len() > 25);
        }

        proptest! {
            #[test]
            fn each_mutation_names_its_own_key(pick in any::<prop::sample::Index>(), how in 0..3u8) {
                let keys = keys();
                let (i, table, key) = &keys[pick.index(keys.len())];
                let line = SHIPPED.lines().nth(*i).unwrap();
                let value = line.split_once('=').unwrap().1.split('#').next().unwrap().trim();
                let (text, expect) = match how {
                    0 => (with_line(*i, Some(format!("{key}_typo = {value}"))), dotted(table, &format!("{key}_typo"))),
                    1 => {
                        let wrong = if value.starts_with('"') { "12345".to_string() } else { "\"wrong\"".to_string() };
                        (with_line(*i, Some(format!("{key} = {wrong}"))), dotted(table, key))
                    }
                    _ if table == "destination" && ["name", "url", "owner"].contains(&key.as_str()) => {
                        (with_line(*i, None), dotted(table, key))
                    }
                    _ => return Ok(()),
                };
                let e = parse(&text).expect_err(&text);
                prop_assert_eq!(key_of(e), expect);
            }
        }
    }

    #[test]
    fn userinfo_is_redacted() {
        let c = parse(&MIN.replace("http://127.0.0.1:9/api", "http://user:pw@127.0.0.1:9/api")).unwrap();
        assert!(!c.destinations[0].redacted_url().contains("pw"));
    }
}
