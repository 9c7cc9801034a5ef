//! A destination as operators see it: what `GET /v1/destinations/{name}`
//! answers (SPEC §6, §11) and what the console's overview, map and
//! destination page show, as one typed view. The API serialises it; the
//! console reads its fields.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use serde::Serialize;

use super::{internal, Ops};
use crate::dispatch;
use crate::problem::Problem;
use crate::queue;

/// `GET /v1/destinations/{name}`.
#[derive(Clone, Debug, Serialize)]
pub struct DestinationView {
    pub name: String,
    /// Credentials redacted.
    pub url: String,
    pub owner: String,
    pub on_failure: &'static str,
    pub state: &'static str,
    pub state_reason: String,
    pub ordering: &'static str,
    /// `null` without a latency objective.
    pub objective: Option<Objective>,
    pub halted_keys: Vec<HaltedKeyView>,
    pub queue: QueueView,
    pub rate_limit: RateView,
    pub counters: Counters,
    /// `[destination.batch]`, when it batches (SPEC §16).
    pub batch: Option<BatchView>,
}

/// What a batching destination's requests carry and why its batches left.
#[derive(Clone, Debug, Serialize)]
pub struct BatchView {
    pub max_messages: usize,
    pub max_bytes: u64,
    pub max_wait_seconds: f64,
    pub encoding: &'static str,
    /// Batches sent by why they left: `size`, `bytes`, `time`.
    pub flushes: BTreeMap<&'static str, u64>,
    /// Batches split after a permanent answer.
    pub splits: u64,
}

/// `objective {latency_seconds, met}`: met while the oldest message waiting
/// is younger than the objective.
#[derive(Clone, Debug, Serialize)]
pub struct Objective {
    pub latency_seconds: f64,
    pub met: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct HaltedKeyView {
    pub key: String,
    pub message_id: String,
    pub reason: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct QueueView {
    pub depth: u64,
    pub bytes: u64,
    pub in_flight: u64,
    pub scheduled: u64,
    pub dead_letters: u64,
    pub held: u64,
    pub reviews_pending: u64,
    pub oldest_age_seconds: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct RateView {
    /// `null`: no token bucket (`rate = "unlimited"`).
    pub configured_per_second: Option<f64>,
    pub effective_per_second: Option<f64>,
    pub burst: u32,
    pub max_in_flight: u32,
}

/// The destination's counters. `delivered` is one lookup; the others sum
/// every series of their family, so the live view (`describe_state`)
/// leaves them out.
#[derive(Clone, Debug, Serialize)]
pub struct Counters {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub received: Option<u64>,
    pub delivered: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed_attempts: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dead_lettered: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dropped: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rejected: Option<u64>,
}

impl Ops {
    /// A destination with every counter.
    pub async fn describe(&self, d: &dispatch::Destination) -> Result<DestinationView, Problem> {
        let mut v = self.describe_state(d).await?;
        let m = &self.metrics;
        let n = d.name.as_str();
        let failed_attempts = crate::metrics::sum_where(&m.attempts, n, |labels| {
            !labels.iter().any(|l| l.name() == "outcome" && l.value() == "success")
        });
        v.counters = Counters {
            received: Some(crate::metrics::sum(&m.received, n)),
            delivered: v.counters.delivered,
            failed_attempts: Some(failed_attempts),
            dead_lettered: Some(crate::metrics::sum(&m.dead_lettered, n)),
            dropped: Some(crate::metrics::sum(&m.dropped, n)),
            rejected: Some(crate::metrics::sum(&m.rejected, n)),
        };
        Ok(v)
    }

    /// Everything `describe` answers but the counters summed over their
    /// series (a pass over every series of each family): what the
    /// console's overview refreshes every two seconds.
    pub async fn describe_state(&self, d: &dispatch::Destination) -> Result<DestinationView, Problem> {
        let cfg = d.config();
        let info = d.state();
        let (oldest, scheduled) = self.queues.queue_detail(&d.name).await.map_err(internal)?;
        let age = queue::age_seconds(oldest);
        Ok(DestinationView {
            name: d.name.clone(),
            url: cfg.redacted_url(),
            owner: cfg.owner.clone(),
            on_failure: cfg.on_failure.as_str(),
            state: info.state.as_str(),
            state_reason: info.reason,
            ordering: cfg.queue.ordering.as_str(),
            objective: cfg.latency_objective.map(|o| Objective {
                latency_seconds: o.as_secs_f64(),
                met: age <= o.as_secs_f64(),
            }),
            halted_keys: d
                .halted_keys()
                .into_iter()
                .map(|k| HaltedKeyView {
                    message_id: self.queues.message_id(k.seq),
                    key: k.key,
                    reason: k.reason,
                })
                .collect(),
            queue: QueueView {
                depth: d.queue.depth.load(Ordering::Relaxed),
                bytes: d.queue.bytes.load(Ordering::Relaxed),
                in_flight: d.in_flight.load(Ordering::Relaxed),
                scheduled,
                dead_letters: d.queue.dead_letters.load(Ordering::Relaxed),
                held: d.queue.held.load(Ordering::Relaxed),
                reviews_pending: d.queue.open_reviews.load(Ordering::Relaxed),
                oldest_age_seconds: age,
            },
            rate_limit: RateView {
                configured_per_second: d.limiter.configured(),
                effective_per_second: d.limiter.effective(),
                burst: cfg.rate_limit.burst,
                max_in_flight: cfg.rate_limit.max_in_flight,
            },
            batch: cfg.batch.as_ref().map(|b| BatchView {
                max_messages: b.max_messages,
                max_bytes: b.max_bytes,
                max_wait_seconds: b.max_wait.as_secs_f64(),
                encoding: b.encoding.as_str(),
                flushes: ["size", "bytes", "time"]
                    .into_iter()
                    .map(|f| (f, self.metrics.batches.with_label_values(&[d.name.as_str(), f]).get()))
                    .collect(),
                splits: self.metrics.batch_splits.with_label_values(&[d.name.as_str()]).get(),
            }),
            counters: Counters {
                received: None,
                delivered: self.metrics.delivered.with_label_values(&[d.name.as_str()]).get(),
                failed_attempts: None,
                dead_lettered: None,
                dropped: None,
                rejected: None,
            },
        })
    }
}
