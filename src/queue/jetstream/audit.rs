//! The audit trail in cluster mode: stream `P_AUDIT`, subject `P.audit`,
//! one JSON message per act, `max_age` = `[admin] audit_retention` (the
//! servers age acts out; nothing sweeps). An act is recorded once the
//! publish is acknowledged by a quorum of the stream's replicas, so every
//! instance reads the same trail in the same order; the stream sequence
//! is the entry's number.

use std::time::Duration;

use async_nats::jetstream::stream;
use async_trait::async_trait;

use super::{no_message, unavailable, JetStream};
use crate::queue::audit::{Act, Entry, Filter};
use crate::queue::{AuditLog, QueueError, Result};

/// Acts asked for at once while reading the trail.
const READ_CHUNK: u64 = 256;

/// Makes the audit stream, or sets its `max_age` to `retention` if it
/// exists with another.
pub(super) async fn prepare(
    js: &async_nats::jetstream::Context,
    prefix: &str,
    replicas: usize,
    retention: Duration,
) -> std::result::Result<stream::Stream, String> {
    let name = format!("{prefix}_AUDIT");
    let config = stream::Config {
        name: name.clone(),
        subjects: vec![format!("{prefix}.audit")],
        retention: stream::RetentionPolicy::Limits,
        storage: stream::StorageType::File,
        num_replicas: replicas,
        max_age: retention,
        ..Default::default()
    };
    match js.get_stream(&name).await {
        Ok(mut s) => {
            let info = s.info().await.map_err(|e| format!("stream {name}: {e}"))?.clone();
            if info.config.max_age != retention {
                let mut c = info.config.clone();
                c.max_age = retention;
                js.update_stream(c).await.map_err(|e| format!("stream {name}: {e}"))?;
            }
            Ok(s)
        }
        Err(_) => js
            .create_stream(config)
            .await
            .map_err(|e| super::replicas_hint(&name, e, replicas)),
    }
}

#[async_trait]
impl AuditLog for JetStream {
    async fn record_act(&self, act: Act) -> Result<()> {
        let body = serde_json::to_vec(&act).map_err(|e| QueueError::Unavailable(e.to_string()))?;
        let subject = format!("{}.audit", self.inner.cfg.stream_prefix);
        self.inner
            .js
            .publish(subject, body.into())
            .await
            .map_err(unavailable)?
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn acts(&self, filter: Filter) -> Result<Vec<Entry>> {
        let mut s = self.inner.audit.clone();
        let state = s.info().await.map_err(unavailable)?.state.clone();
        let (first, last) = ((filter.after + 1).max(state.first_sequence), state.last_sequence);
        let step = READ_CHUNK as usize;
        // Chunks of sequences from the front, or for the newest from the back.
        let chunks: Vec<(u64, u64)> = if filter.newest {
            (first..=last)
                .rev()
                .step_by(step)
                .map(|hi| ((hi + 1).saturating_sub(READ_CHUNK).max(first), hi))
                .collect()
        } else {
            (first..=last)
                .step_by(step)
                .map(|lo| (lo, (lo + READ_CHUNK - 1).min(last)))
                .collect()
        };
        let mut out = Vec::new();
        for (lo, hi) in chunks {
            if out.len() >= filter.limit {
                break;
            }
            let got = futures_util::future::join_all((lo..=hi).map(|n| s.get_raw_message(n))).await;
            let mut chunk = Vec::new();
            for r in got {
                let m = match r {
                    Ok(m) => m,
                    Err(e) if no_message(&e) => continue,
                    Err(e) => return Err(unavailable(e)),
                };
                let Ok(act) = serde_json::from_slice::<Act>(&m.payload) else {
                    tracing::warn!(seq = m.sequence, "an audit record that does not decode is skipped");
                    continue;
                };
                let e = Entry { seq: m.sequence, act };
                if filter.matches(&e) {
                    chunk.push(e);
                }
            }
            let room = filter.limit - out.len();
            if filter.newest {
                out.extend(chunk.into_iter().rev().take(room));
            } else {
                out.extend(chunk.into_iter().take(room));
            }
        }
        if filter.newest {
            out.reverse();
        }
        Ok(out)
    }

    async fn sweep_acts(&self, _before: i64) -> Result<u64> {
        // The stream's max_age does it.
        Ok(0)
    }
}
