//! Configuration reload (SIGHUP or `POST /v1/reload`): re-read the file,
//! validate it whole, and only then apply it. An invalid file, or one that
//! would remove a destination still holding messages, changes nothing.
//!
//! Applied live: destinations (added, removed when empty, and changed rate,
//! retry, timeout, header, failure-mode, queue and ordering settings, which
//! take effect for messages already queued), ingress `max_body` and token,
//! admin token, `storage.max_disk` and `history_retention`,
//! `server.shutdown_timeout`. Listen addresses, `storage.path` and `log.*`
//! need a restart; the answer lists them when they changed.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use serde_json::{json, Value};

use crate::config::{current, Config, Live};
use crate::dispatch::Dispatcher;
use crate::queue;

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The file does not load or validate; nothing changed.
    #[error("{0}")]
    Invalid(String),
    /// The file is valid but cannot be applied; nothing changed.
    #[error("{0}")]
    Refused(String),
}

pub struct Reloader {
    pub path: PathBuf,
    pub live: Live,
    pub dispatcher: Arc<Dispatcher>,
    pub queues: queue::Queues,
    /// The config the process started with: what its listeners, storage
    /// and logging really use. A setting that needs a restart is reported
    /// while it differs from this, not from the last reload.
    started: Arc<Config>,
    /// One reload at a time.
    lock: tokio::sync::Mutex<()>,
}

impl Reloader {
    pub fn new(path: PathBuf, live: Live, dispatcher: Arc<Dispatcher>, queues: queue::Queues) -> Self {
        Reloader {
            path,
            started: current(&live),
            live,
            dispatcher,
            queues,
            lock: tokio::sync::Mutex::new(()),
        }
    }

    /// Reloads this instance's file and, in cluster mode, asks every other
    /// instance to reload its own (`Queue::announce_reload`).
    pub async fn reload(&self) -> Result<Value, ReloadError> {
        let out = self.reload_file().await?;
        self.queues.announce_reload().await;
        Ok(out)
    }

    /// Reloads this instance's file because another instance reloaded: a
    /// cluster shares one configuration (one ConfigMap, one file per host),
    /// so an operator's reload anywhere is seen everywhere.
    pub async fn follow(&self) {
        match self.reload_file().await {
            Ok(_) => {}
            Err(e) => {
                tracing::error!(error = %e, "reload asked by another instance refused; this instance keeps its configuration")
            }
        }
    }

    async fn reload_file(&self) -> Result<Value, ReloadError> {
        let _one = self.lock.lock().await;
        let path = self.path.clone();
        let new = tokio::task::spawn_blocking(move || Config::load(&path))
            .await
            .map_err(|e| ReloadError::Invalid(e.to_string()))?
            .map_err(|e| ReloadError::Invalid(e.to_string()))?;
        let old = &self.started;
        let mut restart_required = Vec::new();
        if new.ingress.listen != old.ingress.listen {
            restart_required.push("ingress.listen");
        }
        if new.admin.listen != old.admin.listen {
            restart_required.push("admin.listen");
        }
        if new.storage.path != old.storage.path {
            restart_required.push("storage.path");
        }
        if new.storage.backend != old.storage.backend {
            restart_required.push("storage.backend");
        }
        if new.log.format != old.log.format || new.log.level != old.log.level {
            restart_required.push("log");
        }
        let changes = self.dispatcher.apply(&new).map_err(ReloadError::Refused)?;
        self.queues
            .stats()
            .max_disk
            .store(new.storage.max_disk, Ordering::Relaxed);
        *self.live.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(new);
        tracing::info!(
            added = ?changes.added,
            removed = ?changes.removed,
            changed = ?changes.changed,
            restart_required = ?restart_required,
            "configuration reloaded"
        );
        Ok(json!({
            "reloaded": true,
            "added": changes.added,
            "removed": changes.removed,
            "changed": changes.changed,
            "restart_required": restart_required,
        }))
    }
}
