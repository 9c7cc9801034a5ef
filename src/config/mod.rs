//! Configuration: the TOML file parsed into raw serde types (every table
//! `deny_unknown_fields`), then validated into the typed [`Config`] that the
//! rest of tidegate sees. Nothing outside this module touches raw config.
//! One file per section reads its raw table and validates it; [`Live`] is
//! the config in force, swapped whole by a reload.
//!
//! Invariants: every error names the file, the line and column, and the key
//! where toml can tell us; secrets (header values, tokens) are held in
//! [`Secret`], whose `Debug` and `Display` never print the value.

mod admin;
mod batch;
mod browser;
mod cluster;
mod connections;
mod destination;
mod handoff;
mod ingress;
mod locate;
mod people;
mod process;
mod review;
mod secret;
mod storage;
mod summary;
mod units;

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use serde::Deserialize;

pub use admin::{AdminConfig, ADMIN_LISTEN_ENV};
pub use batch::{Batch, Encoding};
pub use browser::BrowserPolicy;
pub use cluster::{Backend, JetStreamConfig, UrlCredentials};
pub use connections::Connections;
pub use destination::{
    is_internal, Destination, FailureMode, Ordering, OrderingKey, QueuePolicy, RateLimit, RetryPolicy, TrustedCa,
    WhenFull, ALERTS,
};
pub use handoff::Handoff;
pub use ingress::{IngressConfig, Producer, INGRESS_LISTEN_ENV};
pub use people::{Role, User, ANONYMOUS, ROOT};
pub use process::{LogConfig, LogFormat, ServerConfig};
pub use review::{Alerts, Governance, OnHoldTimeout, OnThreshold, ReviewPolicy, ReviewStation};
pub use secret::{redact_url, redact_url_path, Secret, REDACTED};
pub use storage::StorageConfig;
pub use units::{expand_env, ByteSize, EnvString, HumanDuration, Rate};

use locate::Locator;

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

/// What one NATS publish may carry unless the servers say otherwise.
const NATS_DEFAULT_MAX_PAYLOAD: u64 = 1 << 20;

/// The configuration in force; swapped whole by a reload.
pub type Live = Arc<RwLock<Arc<Config>>>;

/// The configuration in force now.
pub fn current(live: &Live) -> Arc<Config> {
    live.read().unwrap_or_else(|e| e.into_inner()).clone()
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

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    ingress: ingress::RawIngress,
    #[serde(default)]
    admin: admin::RawAdmin,
    #[serde(default)]
    storage: storage::RawStorage,
    #[serde(default)]
    log: process::RawLog,
    #[serde(default)]
    server: process::RawServer,
    #[serde(default)]
    destination: Vec<destination::RawDestination>,
    #[serde(default)]
    review: review::RawReviewStation,
    #[serde(default)]
    alerts: review::RawAlerts,
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
            base: locate::config_dir(path),
        };
        let de = toml::Deserializer::parse(text)
            .map_err(|e| located.error(e.span().unwrap_or(0..0), e.message().to_string()))?;
        // serde_path_to_error follows the deserializer down the tables, so
        // an error names the key it is about (a missing `owner`, an unknown
        // `[alerts]` table), not whatever line its span happens to start on.
        let raw: RawConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = locate::key_path(&e.path().to_string(), e.inner().message());
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

/// The sections, each validated by its own module, in the order their
/// errors are reported.
fn build(raw: RawConfig, loc: &Locator) -> Result<Config, ConfigError> {
    let mut ingress = ingress::build(&raw.ingress, loc)?;
    let mut admin = admin::build(&raw.admin, loc)?;
    let storage = storage::build(raw.storage, loc)?;
    let log = process::log(raw.log, loc)?;
    let server = process::server(raw.server);
    let mut destinations = destination::build_all(raw.destination, loc)?;
    let alerts = review::alerts(raw.alerts, loc)?;
    if let Some(url) = &alerts.webhook_url {
        destinations.push(destination::alerts_destination(url.clone()));
    }
    ingress.producers = ingress::producers(&raw.ingress.producer, &destinations, loc)?;
    admin.users = people::users(&raw.admin.user, admin.token.as_ref(), &destinations, loc)?;
    ingress::refuse_open(&ingress, &raw.ingress, loc)?;
    let mut warnings = Vec::new();
    // The servers' own limit is read at start; what `check` can say
    // without them is NATS's default.
    if matches!(storage.backend, Backend::JetStream(_)) && ingress.max_body > NATS_DEFAULT_MAX_PAYLOAD {
        warnings.push(format!(
            "{}: ingress.max_body ({}) is above NATS's default max_payload ({}): unless the servers raise it, \
             larger bodies are refused with 413 (the servers' limit is logged at start)",
            loc.path.display(),
            ByteSize(ingress.max_body),
            ByteSize(NATS_DEFAULT_MAX_PAYLOAD)
        ));
    }
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

#[cfg(test)]
mod tests;
