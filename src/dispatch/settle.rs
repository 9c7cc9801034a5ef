//! From a downstream's answer to the queue's record, for a message sent
//! alone (`worker`) or in a batch (`batch`): the leases that keep a
//! message from being attempted twice at once, what an answer teaches the
//! limiter, the record an attempt's decision makes ([`Settled`]), and what
//! follows it (metrics, a halt, a waiting producer, a state change).
//!
//! Invariant: nothing follows a record that was not committed; a message
//! whose record failed stays pending, is given back when its lease ends,
//! and is delivered again (at-least-once).

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::policy::{Class, StateChange, Step};
use super::{set_state, Completion, Context, Destination, State};
use crate::config::Ordering as QueueOrdering;
use crate::delivery::{self, Outcome};
use crate::handoff::RunError;
use crate::queue::{now_ms, Disposition, HaltedKey, LastError, Message, Settlement};

/// Most bytes of a downstream's error body kept as the failure detail.
const DETAIL_LIMIT: usize = 512;

/// The outcome of an attempt whose stored request cannot be made into a
/// valid HTTP request (its method, or its path against the URL): refused
/// for good, as a 400 would be, without sending anything.
pub(super) fn invalid_request() -> Outcome {
    Outcome::Permanent {
        kind: delivery::FailureKind::Http4xx,
        response: delivery::Response {
            status: 400,
            body: bytes::Bytes::from_static(b"stored request cannot be turned into a valid HTTP request"),
            ..Default::default()
        },
    }
}

pub(super) fn lease(d: &Destination, seq: u64) {
    lease_all(d, [seq]);
}

/// Leases the messages of one downstream request: each is in flight (no
/// fetch hands it out again), and they count once against
/// `max_in_flight`, which counts requests.
pub(super) fn lease_all(d: &Destination, seqs: impl IntoIterator<Item = u64>) {
    d.in_flight_seqs.lock().unwrap_or_else(|e| e.into_inner()).extend(seqs);
    d.in_flight.fetch_add(1, Ordering::Relaxed);
}

/// Ends the leases of one downstream request's messages; see [`release`].
pub(super) fn release_all(ctx: &Context, d: &Destination, settled: &[(u64, bool)]) {
    {
        let mut leased = d.in_flight_seqs.lock().unwrap_or_else(|e| e.into_inner());
        for (seq, _) in settled {
            leased.remove(seq);
        }
    }
    d.in_flight.fetch_sub(1, Ordering::Relaxed);
    if settled.iter().any(|(_, finished)| !finished) {
        ctx.queues.give_back(&d.name);
    }
    d.settled.notify_waiters();
    ctx.any_settled.notify_waiters();
}

/// Ends a lease. A message not `finished` is pending still (a retry, a
/// halt, an outcome not recorded) and is given back to be read again: after
/// the lease is gone, so that read does not skip it as in flight, and
/// before the worker is woken, so it does not find the journal's tail
/// still claiming to hold everything.
pub(super) fn release(ctx: &Context, d: &Destination, seq: u64, finished: bool) {
    release_all(ctx, d, &[(seq, finished)]);
}

pub(super) fn last_error_of(outcome: &Outcome) -> Option<LastError> {
    match outcome {
        Outcome::Delivered(_) => None,
        Outcome::Transient { kind, response, detail } => Some(LastError {
            kind: kind.label().to_string(),
            status: response.as_ref().map(|r| r.status),
            detail: response.as_ref().map(body_detail).unwrap_or_else(|| detail.clone()),
            batch: None,
        }),
        Outcome::Permanent { kind, response } => Some(LastError {
            kind: kind.label().to_string(),
            status: Some(response.status),
            detail: body_detail(response),
            batch: None,
        }),
    }
}

pub(super) fn body_detail(r: &delivery::Response) -> String {
    let end = r.body.len().min(DETAIL_LIMIT);
    let text = String::from_utf8_lossy(&r.body[..end]).into_owned();
    if text.is_empty() {
        format!("downstream answered {}", r.status)
    } else {
        text
    }
}

/// What one downstream answer teaches the limiter (its rate, a pause),
/// and the attempt's class with the count of consecutive transient
/// failures it makes. One call per downstream request, batch or not.
pub(super) fn learn(d: &Destination, outcome: &Outcome, started: std::time::Instant) -> (Class, u32) {
    if let Some(r) = outcome.response() {
        let sent = tokio::time::Instant::from_std(started);
        let in_flight = u32::try_from(d.in_flight.load(Ordering::Relaxed)).unwrap_or(u32::MAX);
        if r.status == 429 && r.retry_after.is_none() && r.quota_pause.is_none() {
            // Says neither when nor how much: see `limiter`.
            d.limiter.refused_bare(sent, in_flight);
        } else if r.status == 429 || r.status == 503 {
            d.limiter.slow_down(r.retry_after, sent, in_flight);
        } else if let Some(p) = r.quota_pause {
            d.limiter.pause_for(p);
        }
    }
    let class = match outcome {
        Outcome::Delivered(_) => {
            d.limiter.note_success(tokio::time::Instant::from_std(started));
            Class::Delivered
        }
        Outcome::Transient { .. } => Class::Transient,
        Outcome::Permanent { .. } => Class::Permanent,
    };
    let retry_after = outcome.response().and_then(|r| r.retry_after);
    let consecutive = match class {
        // Pacing (a refusal that says when), not failing: see `policy`.
        Class::Transient if retry_after.is_some() => d.consecutive_transient.load(Ordering::Relaxed),
        Class::Transient => d.consecutive_transient.fetch_add(1, Ordering::Relaxed) + 1,
        _ => {
            d.consecutive_transient.store(0, Ordering::Relaxed);
            0
        }
    };
    (class, consecutive)
}

/// Carries out the state change an attempt's decision asked for.
pub(super) async fn apply_change(ctx: &Context, d: &Destination, change: StateChange, consecutive: u32) {
    match change {
        StateChange::Degrade if d.current_state() == State::Running => {
            let reason = format!("{consecutive} consecutive transient failures");
            if let Err(e) = set_state(ctx, d, State::Degraded, &reason, None).await {
                tracing::error!(error = %e, "persisting the degraded state failed");
            }
        }
        StateChange::Recover if d.current_state() == State::Degraded => {
            if let Err(e) = set_state(ctx, d, State::Running, "probe delivered", None).await {
                tracing::error!(error = %e, "persisting the running state failed");
            }
        }
        _ => {}
    }
}

/// A message whose handoff fails at delivery never reaches the downstream.
/// A failing program is the message's fault, whatever the failure mode: it
/// is dead-lettered (`transform_failed`) to be replayed once a reload fixes
/// the program. A sandbox that cannot start is tidegate's: the message
/// waits a second and is tried again, its attempts unchanged.
pub(super) async fn unsendable(ctx: &Context, d: &Destination, msg: &Message, id: &str, n: u32, e: RunError) -> bool {
    let (attempts, last_error, disposition) = match &e {
        RunError::Failed(f) => {
            ctx.metrics
                .handoff_failures
                .with_label_values(&[&d.name, f.stage.as_str()])
                .inc();
            tracing::warn!(id, destination = %d.name, error = %f, "handoff failed at delivery; message dead-lettered");
            (
                n,
                Some(LastError {
                    kind: "transform_failed".to_string(),
                    status: None,
                    detail: f.to_string(),
                    batch: None,
                }),
                Disposition::DeadLetter {
                    reason: "transform_failed".to_string(),
                },
            )
        }
        RunError::Unavailable(_) => {
            tracing::error!(id, destination = %d.name, error = %e, "handoff unavailable; delivery postponed");
            (
                msg.attempts,
                None,
                Disposition::Reschedule {
                    visible_at: now_ms() + 1000,
                },
            )
        }
    };
    let dead = matches!(disposition, Disposition::DeadLetter { .. });
    if let Err(err) = ctx
        .queues
        .settle(msg.seq, &d.name, attempts, last_error, disposition)
        .await
    {
        tracing::error!(id, error = %err, "recording the handoff failure failed; the message will be retried");
        tokio::time::sleep(Duration::from_secs(1)).await;
        return false;
    }
    if dead {
        ctx.metrics
            .dead_lettered
            .with_label_values(&[d.name.as_str(), "transform_failed"])
            .inc();
        if msg.wants_reply {
            ctx.completions.finish(
                msg.seq,
                Completion {
                    state: "dead_lettered",
                    response: None,
                    detail: e.to_string(),
                },
            );
        }
    }
    dead
}

/// An attempt's decided step for one message, to be settled: what the
/// queue records ([`Settled::disposition`]) and what follows the record.
pub(super) struct Settled<'a> {
    pub msg: &'a Message,
    pub id: &'a str,
    pub attempts: u32,
    pub step: Step,
    pub last_error: Option<LastError>,
    pub outcome: &'a Outcome,
    pub age: Duration,
    pub disposition: Disposition,
    /// `delivered`, `dead_lettered` or `dropped`: how a waiting producer
    /// is told it finished; `None` while it is still pending.
    pub finished: Option<&'static str>,
}

impl<'a> Settled<'a> {
    /// What the queue records for `step` (and its log line).
    #[allow(clippy::too_many_arguments)]
    pub fn decide(
        d: &Destination,
        msg: &'a Message,
        id: &'a str,
        attempts: u32,
        step: Step,
        last_error: Option<LastError>,
        outcome: &'a Outcome,
        age: Duration,
    ) -> Settled<'a> {
        let status = outcome.response().map(|r| r.status);
        let (disposition, finished) = match &step {
            // Under review, the body stays for late feedback (SPEC §10).
            Step::Ack => (
                Disposition::Delivered {
                    keep_body: d.config().review.is_some(),
                },
                Some("delivered"),
            ),
            Step::Retry { delay } => {
                tracing::debug!(
                    status,
                    kind = last_error.as_ref().map_or("", |e| e.kind.as_str()),
                    delay_ms = delay.as_millis() as u64,
                    "attempt failed; retry scheduled"
                );
                (
                    Disposition::Reschedule {
                        visible_at: now_ms() + delay.as_millis() as i64,
                    },
                    None,
                )
            }
            Step::DeadLetter { reason } => {
                tracing::warn!(id, destination = %d.name, status, reason, "message dead-lettered");
                (
                    Disposition::DeadLetter {
                        reason: reason.to_string(),
                    },
                    Some("dead_lettered"),
                )
            }
            Step::Drop { reason } => {
                let detail = last_error.as_ref().map(|e| e.kind.as_str()).unwrap_or("");
                tracing::warn!(id, destination = %d.name, status, reason, kind = detail, "message dropped (on_failure = log)");
                (
                    Disposition::Dropped {
                        reason: reason.to_string(),
                    },
                    Some("dropped"),
                )
            }
            // The message stays at the head: due at once when resumed. Under
            // key ordering only its key stops; a message without a key
            // (queued before the destination ordered by key) halts it all.
            Step::Halt { reason } => match (&d.config().queue.ordering, &msg.order_key) {
                (QueueOrdering::Key, Some(key)) => (
                    Disposition::HaltKey {
                        key: key.clone(),
                        reason: halt_reason(reason, id, status),
                    },
                    None,
                ),
                _ => (Disposition::Reschedule { visible_at: 0 }, None),
            },
        };
        Settled {
            msg,
            id,
            attempts,
            step,
            last_error,
            outcome,
            age,
            disposition,
            finished,
        }
    }

    /// What the queue is asked to record.
    pub fn settlement(&self) -> Settlement {
        Settlement {
            seq: self.msg.seq,
            attempts: self.attempts,
            last_error: self.last_error.clone(),
            disposition: self.disposition.clone(),
        }
    }

    /// What follows the record once it is committed: metrics, a halt, the
    /// waiting producer. Returns whether the message is finished.
    pub async fn follow(self, ctx: &Context, d: &Destination) -> bool {
        let m = &ctx.metrics;
        let status = self.outcome.response().map(|r| r.status);
        let (msg, id) = (self.msg, self.id);
        match &self.step {
            Step::Ack => {
                m.delivered.with_label_values(&[&d.name]).inc();
                m.end_to_end
                    .with_label_values(&[&d.name])
                    .observe(self.age.as_secs_f64());
            }
            Step::DeadLetter { reason } => m.dead_lettered.with_label_values(&[d.name.as_str(), reason]).inc(),
            Step::Drop { reason } => m.dropped.with_label_values(&[d.name.as_str(), reason]).inc(),
            Step::Halt { reason } => match &self.disposition {
                Disposition::HaltKey { key, reason } => {
                    tracing::error!(id, destination = %d.name, key = %key, %reason, "ordering key halted; its later messages wait, other keys flow");
                    d.halted_keys.lock().unwrap_or_else(|e| e.into_inner()).insert(
                        key.clone(),
                        HaltedKey {
                            dest: d.name.clone(),
                            key: key.clone(),
                            seq: msg.seq,
                            reason: reason.clone(),
                        },
                    );
                }
                _ => {
                    let why = halt_reason(reason, id, status);
                    if let Err(e) = set_state(ctx, d, State::Halted, &why, Some(msg.seq)).await {
                        tracing::error!(error = %e, "persisting the halted state failed");
                    }
                }
            },
            Step::Retry { .. } => {}
        }
        if let (Some(state), true) = (self.finished, msg.wants_reply) {
            let detail = self.last_error.map(|e| e.detail).unwrap_or_default();
            ctx.completions.finish(
                msg.seq,
                Completion {
                    state,
                    response: self.outcome.response().cloned(),
                    detail,
                },
            );
        }
        self.finished.is_some()
    }
}

/// Records an attempt's outcome for one message and carries out what
/// follows; returns whether the message is finished.
#[allow(clippy::too_many_arguments)]
pub(super) async fn carry_out(
    ctx: &Context,
    d: &Destination,
    msg: &Message,
    id: &str,
    attempts: u32,
    step: Step,
    last_error: Option<LastError>,
    outcome: &Outcome,
    age: Duration,
) -> bool {
    let settled = Settled::decide(d, msg, id, attempts, step, last_error, outcome, age);
    let s = settled.settlement();
    if let Err(e) = ctx
        .queues
        .settle(s.seq, &d.name, s.attempts, s.last_error, s.disposition)
        .await
    {
        // Nothing changed on disk: the message is still pending and will be
        // delivered again (at-least-once).
        tracing::error!(id, error = %e, "recording the attempt's outcome failed; the message will be retried");
        // Keep the lease a while: retrying at once would hammer the
        // downstream with a message we cannot record anyway.
        tokio::time::sleep(Duration::from_secs(1)).await;
        return false;
    }
    settled.follow(ctx, d).await
}

/// Why a destination or a key halted, as its state reason shows it.
pub(super) fn halt_reason(reason: &str, id: &str, status: Option<u16>) -> String {
    format!(
        "{reason} (message {id}, last status {})",
        status.map_or("none".to_string(), |s| s.to_string())
    )
}
