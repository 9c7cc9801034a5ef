//! The durable queue: what ingress appends to, dispatch hands out and
//! settles from, and the review station and operators read and change. It
//! knows nothing of HTTP.
//!
//! - [`contract`](Queue) is the contract every backend keeps, as a small
//!   core trait and capability traits; callers hold a [`Queues`].
//! - The types that travel through it are backend-neutral ([`NewMessage`],
//!   [`Message`], [`Disposition`], [`MessageStatus`], one [`MessageState`],
//!   one [`QueueError`]).
//! - [`sqlite`] is the journal of a single instance: SQLite in WAL mode,
//!   one writer thread with group commit; its module essay says what is
//!   fsync'd when and what a crash at each instant leaves.
//! - [`jetstream`] is cluster mode (SPEC §13): streams and key-value
//!   buckets on a NATS JetStream cluster shared by any number of instances,
//!   one of which dispatches each destination at a time.
//!
//! To add a backend: implement the four traits of `contract` in a module
//! beside these two, add its `[storage] backend` value to `config`, open it
//! in [`open`], and add it to the contract suite (`tests/queue_contract.rs`)
//! and the end-to-end suite (`tests/cluster_suite.rs` shows how).

pub mod audit;
mod contract;
mod error;
pub mod jetstream;
mod message;
pub mod review;
pub mod sqlite;
mod state;

use std::sync::Arc;

pub use contract::{AuditLog, Backend, Cluster, Operations, Queue, Queues, ReviewStore, StateAsked};
pub use error::{QueueError, Result};
pub use message::{
    age_seconds, is_message_id, now_ms, rfc3339, sampled, Appended, BatchRef, DeadLetter, DestinationRecord,
    Disposition, Due, HaltedKey, LastError, Limits, Message, MessageStatus, NewMessage, Outcome, QueueCounts, Queued,
    ReviewIntent, Settlement, Stats,
};
pub(crate) use message::{hex, id_of};
pub use state::{stored, MessageState};

use crate::config::{Backend as StorageBackend, Config};

/// Rows a sweep (`Operations::sweep`, `AuditLog::sweep_acts`) deletes at
/// most per call: a caller calls again while it answers this many.
pub const SWEEP_CHUNK: u64 = 5000;

/// The local storage a backend needs taken before anything else starts
/// (see [`lock`]); nothing in cluster mode.
pub struct Taken(Option<sqlite::StorageLock>);

/// Takes what `config`'s backend keeps on this machine: the SQLite
/// journal's directory, locked for this process (a second tidegate on it is
/// refused, naming the first). Start-up calls it before it binds any port.
pub fn lock(config: &Config) -> Result<Taken> {
    match &config.storage.backend {
        StorageBackend::Sqlite => Ok(Taken(Some(sqlite::Journal::lock(&config.storage.path)?))),
        StorageBackend::JetStream(_) => Ok(Taken(None)),
    }
}

/// Opens the queue of `[storage] backend`: the SQLite journal on the
/// directory `taken` holds (recovering or salvaging it as needed), or the
/// JetStream cluster with every configured destination's streams prepared.
/// The error is one an operator can act on.
pub async fn open(config: &Config, taken: Taken) -> std::result::Result<Queues, String> {
    match (&config.storage.backend, taken.0) {
        (StorageBackend::JetStream(js), _) => {
            let prepared = config
                .destinations
                .iter()
                .map(|d| jetstream::Prepared {
                    name: d.name.clone(),
                    max_messages: d.queue.max_messages,
                    max_bytes: d.queue.max_bytes,
                })
                .collect();
            let retention = config.storage.history_retention;
            let queue = jetstream::JetStream::open(js, prepared, retention, retention, config.admin.audit_retention)
                .await
                .map_err(|e| format!("opening the queue on NATS JetStream (storage.backend = \"jetstream\"): {e}"))?;
            tracing::info!(
                urls = %js.urls.join(","),
                instance = queue.instance(),
                max_payload = queue.max_payload(),
                "queue on NATS JetStream"
            );
            if config.ingress.max_body > queue.max_payload() {
                tracing::warn!(
                    max_body = config.ingress.max_body,
                    max_payload = queue.max_payload(),
                    "ingress.max_body is above the NATS servers' max_payload: larger bodies are refused with 413; \
                     lower max_body or raise max_payload on the servers"
                );
            }
            Ok(Arc::new(queue))
        }
        (StorageBackend::Sqlite, lock) => {
            let path = config.storage.path.clone();
            let lock = lock.ok_or_else(|| format!("{}: the storage directory was not locked", path.display()))?;
            let max_disk = config.storage.max_disk;
            let opened = tokio::task::spawn_blocking(move || sqlite::Journal::open_locked(lock, max_disk))
                .await
                .map_err(|e| e.to_string())?;
            let journal = opened.map_err(|e| format!("opening the journal in {}: {e}", path.display()))?;
            Ok(Arc::new(journal))
        }
    }
}
