//! `[storage]`: where the queue lives and how much of the disk it may
//! take; `[storage.jetstream]` (cluster mode) is read in `cluster`.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::{cluster, Backend, ByteSize, ConfigError, EnvString, HumanDuration, Locator};

#[derive(Clone, Debug)]
pub struct StorageConfig {
    /// Where the queue lives (SPEC §13); `path` still holds what stays
    /// local in cluster mode: nothing but the lock of a SQLite journal.
    pub backend: Backend,
    pub path: PathBuf,
    pub max_disk: u64,
    pub history_retention: Duration,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStorage {
    pub(super) backend: Option<Spanned<String>>,
    pub(super) jetstream: Option<Spanned<cluster::RawJetStream>>,
    pub(super) path: Option<EnvString>,
    pub(super) max_disk: Option<ByteSize>,
    pub(super) history_retention: Option<HumanDuration>,
}

pub(super) fn build(raw: RawStorage, loc: &Locator) -> Result<StorageConfig, ConfigError> {
    Ok(StorageConfig {
        backend: cluster::backend(&raw.backend, raw.jetstream.as_ref(), loc)?,
        path: loc.resolve(&raw.path.map(|p| p.0).unwrap_or_else(|| "./data".into())),
        max_disk: raw.max_disk.map(|b| b.0).unwrap_or(10 << 30),
        history_retention: raw.history_retention.map(|d| d.0).unwrap_or(Duration::from_secs(86400)),
    })
}
