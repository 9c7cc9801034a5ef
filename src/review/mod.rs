//! The review station (SPEC §10): where output quality is sampled,
//! decided, measured and enforced.
//!
//! - Ingress asks [`intent`] what the station wants of a new message
//!   (held by predicate or route, sampled, audited); the queue (on SQLite, the journal's writer)
//!   decides sampling on the message id and lists the item, in the commit
//!   that stores the message.
//! - [`Station::decide`] and [`Station::feedback`] check a decision
//!   (reviewer named, a correction valid against the destination's schema
//!   and transform) and record it through the queue, which applies it to
//!   the held message in the same commit: the first decision wins.
//! - After each decision the category's override rate over the governance
//!   window is judged ([`Station::govern`]); crossing the owner's threshold
//!   pauses the destination (or only alerts). A loop does the same for the
//!   downstream's permanent-failure rate, ends holds that time out, and
//!   watches for halted and long-degraded destinations.
//! - Alerts are messages on an internal destination ([`config::ALERTS`], from
//!   `[alerts] webhook_url`): durable before they count as raised, retried,
//!   and measured like any other delivery. The station never talks HTTP.

pub mod quality;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use serde_json::{json, Value};

use crate::config::{self, OnHoldTimeout, OnThreshold};
use crate::config::{current, Live};
use crate::dispatch::{Dispatcher, State};
use crate::handoff::{self, Hold};
use crate::metrics::Metrics;
use crate::queue::review::{Decided, Decision, Item, Verdict};
use crate::queue::{self, MessageState, NewMessage, QueueError, ReviewIntent};

/// A destination continuously degraded this long raises an alert.
const DEGRADED_ALERT_AFTER: Duration = Duration::from_secs(300);

/// What the station asks of a message `cfg` (its owner) takes: `None`
/// when the owner has no review and nothing holds it.
pub fn intent(cfg: &config::Destination, hold: Option<Hold>, category: &str) -> Option<ReviewIntent> {
    let policy = cfg.review.as_ref();
    if policy.is_none() && hold.is_none() {
        return None;
    }
    Some(ReviewIntent {
        hold: hold.map(Hold::as_str),
        sample: policy.map_or(0.0, |p| p.sample_for(category)),
        audit: policy.map_or(0.0, |p| p.audit_sample),
        hold_for_ms: policy
            .and_then(|p| p.hold_timeout)
            .map(|t| t.as_millis().min(i64::MAX as u128) as i64),
    })
}

/// Why a decision was not recorded; each says what the caller does next.
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    #[error("no message {0:?} (unknown, or past history_retention)")]
    NotFound(String),
    /// A decision on a message that is not held or listed for audit.
    #[error("message {id} is {state}, not waiting for review")]
    NotHeld { id: String, state: MessageState },
    /// Feedback on a message not delivered yet.
    #[error("message {id} is {state}; feedback is for delivered messages")]
    NotDelivered { id: String, state: MessageState },
    #[error("message {id} was already decided: {decision} by {reviewer}")]
    AlreadyDecided {
        id: String,
        decision: String,
        reviewer: String,
    },
    /// The request itself is wrong (no reviewer, no body for an edit...).
    #[error("{0}")]
    Invalid(String),
    /// A governance pause is lifted only by someone, for a reason.
    #[error("{0}")]
    ReasonRequired(String),
    /// The correction fails the destination's schema.
    #[error("{}", .0.message)]
    Schema(handoff::Failure),
    /// The correction cannot be transformed or formatted for delivery.
    #[error("{}", .0.message)]
    Transform(handoff::Failure),
    #[error("the handoff sandbox is unavailable: {0}")]
    Unavailable(String),
    #[error(transparent)]
    Queue(#[from] QueueError),
}

/// A decision on a review item, as the API takes it.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecisionRequest {
    pub reviewer: Option<String>,
    pub note: Option<String>,
    /// The corrected producer body (edit).
    pub body: Option<Value>,
    /// Why (reject); kept as the note when there is none.
    pub reason: Option<String>,
}

/// Late feedback on a delivered message, as the API takes it.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedbackRequest {
    pub reviewer: Option<String>,
    pub verdict: String,
    pub correction: Option<Value>,
    pub note: Option<String>,
}

pub struct Station {
    queues: queue::Queues,
    dispatcher: Arc<Dispatcher>,
    metrics: Metrics,
    live: Live,
    /// When each destination was last resumed from a governance pause: its
    /// verdicts start afresh from then, so the decisions that paused it do
    /// not pause it again the moment it runs.
    judged_from: Mutex<HashMap<String, i64>>,
    /// When an alert was last raised, by (destination, event, subject): an
    /// alert-only threshold alerts once per window, not once per decision.
    alerted: Mutex<HashMap<(String, String, String), i64>>,
}

impl Station {
    pub fn new(queues: queue::Queues, dispatcher: Arc<Dispatcher>, metrics: Metrics, live: Live) -> Arc<Station> {
        Arc::new(Station {
            queues,
            dispatcher,
            metrics,
            live,
            judged_from: Mutex::default(),
            alerted: Mutex::default(),
        })
    }

    fn id(&self, seq: u64) -> String {
        self.queues.message_id(seq)
    }

    /// Review items awaiting a decision, oldest first, each with what its
    /// delivery would send now (`preview`).
    pub async fn list(
        &self,
        dest: Option<String>,
        category: Option<String>,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Value>, ReviewError> {
        let items = self.queues.open_reviews(dest, category, after, limit).await?;
        let mut out = Vec::with_capacity(items.len());
        for it in items {
            let preview = self.preview(&it).await;
            out.push(json!({
                "id": self.id(it.seq),
                "destination": it.dest,
                "category": it.category,
                "kind": it.kind,
                "reason": it.reason,
                "received_at": queue::rfc3339(it.received_at),
                "original": body_value(it.original.as_ref()),
                "preview": preview,
            }));
        }
        Ok(out)
    }

    /// What the item's destination would send for its original body: the
    /// rendered body as text, or the error a delivery would meet.
    async fn preview(&self, it: &Item) -> Value {
        let Some(original) = &it.original else {
            return Value::Null;
        };
        let Some(d) = self.dispatcher.destination(&it.dest) else {
            return Value::Null;
        };
        let cfg = d.config();
        let Some(h) = &cfg.handoff else {
            return Value::String(String::from_utf8_lossy(original).into_owned());
        };
        match h.runner.render(&it.dest, original).await {
            Ok(Some(r)) => json!({"content_type": r.content_type, "body": String::from_utf8_lossy(&r.body)}),
            Ok(None) => Value::String(String::from_utf8_lossy(original).into_owned()),
            Err(e) => json!({"error": e.to_string()}),
        }
    }

    /// Approve, edit or reject a review item (`verdict` is one of those).
    pub async fn decide(&self, seq: u64, verdict: Verdict, req: DecisionRequest) -> Result<Value, ReviewError> {
        let reviewer = reviewer(req.reviewer)?;
        let id = self.id(seq);
        let item = self.queues.review_item(seq).await?;
        let (corrected, patch) = match verdict {
            Verdict::Edit => {
                let Some(body) = req.body else {
                    return Err(ReviewError::Invalid(
                        "an edit needs \"body\": the corrected producer body".into(),
                    ));
                };
                let Some(item) = &item else {
                    return Err(self.not_held(seq, &id).await);
                };
                self.checked(&item.dest, &body).await?;
                correction(item.original.as_ref(), &body)
            }
            _ => (None, None),
        };
        let note = req.note.or(req.reason);
        self.record(seq, &id, verdict, reviewer, note, corrected, patch).await
    }

    /// Late feedback on a delivered message.
    pub async fn feedback(&self, seq: u64, req: FeedbackRequest) -> Result<Value, ReviewError> {
        let reviewer = reviewer(req.reviewer)?;
        let verdict = match req.verdict.as_str() {
            "correct" => Verdict::Correct,
            "overridden" => Verdict::Overridden,
            other => {
                return Err(ReviewError::Invalid(format!(
                    "verdict must be \"correct\" or \"overridden\", got {other:?}"
                )))
            }
        };
        let id = self.id(seq);
        let (corrected, patch) = match (&req.correction, verdict) {
            (Some(_), Verdict::Correct) => {
                return Err(ReviewError::Invalid(
                    "a correction goes with verdict \"overridden\"".into(),
                ))
            }
            // The patch is from the original: the review item's, or the
            // body a destination under review kept after delivery.
            (Some(c), _) => {
                let original = match self.queues.review_item(seq).await? {
                    Some(item) => item.original,
                    None => self.queues.kept_body(seq).await?,
                };
                correction(original.as_ref(), c)
            }
            (None, _) => (None, None),
        };
        self.record(seq, &id, verdict, reviewer, req.note, corrected, patch)
            .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn record(
        &self,
        seq: u64,
        id: &str,
        verdict: Verdict,
        reviewer: String,
        note: Option<String>,
        corrected: Option<Bytes>,
        patch: Option<String>,
    ) -> Result<Value, ReviewError> {
        let at = queue::now_ms();
        let decision = Decision {
            verdict,
            reviewer: reviewer.clone(),
            note: note.clone(),
            corrected,
            patch: patch.clone(),
            at,
        };
        match self.queues.decide(seq, decision).await? {
            Decided::Done { dest, category, kind } => {
                self.metrics
                    .review_decisions
                    .with_label_values(&[&dest, &category, verdict.as_str()])
                    .inc();
                if verdict == Verdict::Reject && kind == "held" {
                    self.metrics
                        .dead_lettered
                        .with_label_values(&[&dest, "rejected_by_reviewer"])
                        .inc();
                }
                tracing::info!(id, destination = %dest, %category, decision = verdict.as_str(), %reviewer, "review decision recorded");
                self.govern(&dest, &category).await;
                Ok(json!({
                    "id": id,
                    "destination": dest,
                    "category": category,
                    "kind": kind,
                    "decision": verdict.as_str(),
                    "reviewer": reviewer,
                    "note": note,
                    "decided_at": queue::rfc3339(at),
                    "patch": patch.and_then(|p| serde_json::from_str::<Value>(&p).ok()),
                }))
            }
            Decided::NotFound => Err(ReviewError::NotFound(id.to_string())),
            Decided::NotReviewable { state } if verdict == Verdict::Correct || verdict == Verdict::Overridden => {
                Err(ReviewError::NotDelivered {
                    id: id.to_string(),
                    state,
                })
            }
            Decided::NotReviewable { state } => Err(ReviewError::NotHeld {
                id: id.to_string(),
                state,
            }),
            Decided::AlreadyDecided { decision, reviewer } => Err(ReviewError::AlreadyDecided {
                id: id.to_string(),
                decision,
                reviewer: reviewer.unwrap_or_else(|| "tidegate (hold timeout)".into()),
            }),
        }
    }

    /// Why a message without a review record cannot be decided.
    async fn not_held(&self, seq: u64, id: &str) -> ReviewError {
        match self.queues.status(seq).await {
            Ok(Some(s)) => ReviewError::NotHeld {
                id: id.to_string(),
                state: s.state,
            },
            Ok(None) => ReviewError::NotFound(id.to_string()),
            Err(e) => ReviewError::Queue(e),
        }
    }

    /// A correction for `dest` must pass its schema and survive its
    /// transform and format: it is what will be delivered.
    async fn checked(&self, dest: &str, body: &Value) -> Result<(), ReviewError> {
        let Some(d) = self.dispatcher.destination(dest) else {
            return Ok(());
        };
        let cfg = d.config();
        let Some(h) = &cfg.handoff else { return Ok(()) };
        match h.runner.check(dest, body.to_string().as_bytes()).await {
            Ok(_) => Ok(()),
            Err(handoff::RunError::Failed(f)) if f.stage == handoff::Stage::Schema => Err(ReviewError::Schema(f)),
            Err(handoff::RunError::Failed(f)) => Err(ReviewError::Transform(f)),
            Err(e @ handoff::RunError::Unavailable(_)) => Err(ReviewError::Unavailable(e.to_string())),
        }
    }

    /// Quality rows over `window` (`GET /v1/quality`, `tidegate report`).
    pub async fn quality(&self, dest: Option<String>, window: Duration) -> Result<Vec<quality::Row>, ReviewError> {
        let since = queue::now_ms() - window.as_millis().min(i64::MAX as u128) as i64;
        // Internal destinations (alerts) are tidegate's own traffic, not an
        // AI flow's output: no row of theirs.
        let mut volumes = self.queues.volumes(dest.clone(), since).await?;
        volumes.retain(|(d, ..)| !config::is_internal(d));
        let tallies = self.queues.review_tallies(dest, since).await?;
        let config = current(&self.live);
        let threshold = |name: &str| {
            let d = config.destinations.iter().find(|d| d.name == name)?;
            let g = d.governance.as_ref()?;
            Some(quality::Threshold {
                rate: g.error_threshold?,
                min_reviews: g.min_reviews,
            })
        };
        Ok(quality::rows(&volumes, &tallies, threshold))
    }

    /// Each destination's override rate over `window` from the decisions
    /// alone (no message volumes): cheap enough for a page refreshed live.
    pub async fn override_rates(&self, window: Duration) -> Result<HashMap<String, f64>, ReviewError> {
        let since = queue::now_ms() - window.as_millis().min(i64::MAX as u128) as i64;
        let mut sums: HashMap<String, (u64, u64)> = HashMap::new();
        for ((dest, _), t) in self.queues.review_tallies(None, since).await? {
            let s = sums.entry(dest).or_default();
            s.0 += t.overrides();
            s.1 += t.reviewed();
        }
        Ok(sums
            .into_iter()
            .filter(|(_, (_, n))| *n > 0)
            .map(|(d, (k, n))| (d, k as f64 / n as f64))
            .collect())
    }

    /// Edits and overrides since `since` (ms), for export.
    pub async fn corrections(
        &self,
        dest: Option<String>,
        since: i64,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Value>, ReviewError> {
        let items = self.queues.corrections(dest, since, after, limit).await?;
        Ok(items
            .iter()
            .map(|it| {
                json!({
                    "id": self.id(it.seq),
                    "destination": it.dest,
                    "category": it.category,
                    "decision": it.decision,
                    "original": body_value(it.original.as_ref()),
                    "corrected": body_value(it.corrected.as_ref()),
                    "patch": it.patch.as_deref().and_then(|p| serde_json::from_str::<Value>(p).ok()),
                    "reviewer": it.reviewer,
                    "note": it.note,
                    "decided_at": it.decided_at.map(queue::rfc3339),
                })
            })
            .collect())
    }

    /// Judges `dest`'s `category` after a decision: over the threshold
    /// (with enough reviews), the destination is paused or an alert raised.
    pub async fn govern(&self, dest: &str, category: &str) {
        let Some(d) = self.dispatcher.destination(dest) else {
            return;
        };
        let cfg = d.config();
        let Some(g) = &cfg.governance else { return };
        let Some(rate) = g.error_threshold else { return };
        let now = queue::now_ms();
        let since = self.window_start(dest, g.window, now);
        let tally = match self.queues.review_tally(dest, category, since).await {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(destination = dest, error = %e, "governance: cannot read the review tally");
                return;
            }
        };
        let threshold = quality::Threshold {
            rate,
            min_reviews: g.min_reviews,
        };
        if !quality::crosses(&tally, threshold) {
            return;
        }
        let observed = tally.overrides() as f64 / tally.reviewed() as f64;
        let reason = format!("quality_threshold: {category} {observed:.2}");
        let figures = json!({
            "category": category,
            "override_rate": observed,
            "threshold": rate,
            "reviewed": tally.reviewed(),
            "approved": tally.approved,
            "edited": tally.edited,
            "rejected": tally.rejected,
            "overridden": tally.overridden,
            "window": crate::config::HumanDuration(g.window).to_string(),
        });
        self.enforce(
            &d,
            &cfg,
            g.on_threshold,
            g.window,
            "quality_threshold",
            category,
            &reason,
            figures,
        )
        .await;
    }

    /// Where a destination's verdicts start: the window, or its last resume
    /// from a governance pause if that is later.
    fn window_start(&self, dest: &str, window: Duration, now: i64) -> i64 {
        let start = now - window.as_millis().min(i64::MAX as u128) as i64;
        let resumed = self
            .judged_from
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(dest)
            .copied();
        resumed.map_or(start, |r| r.max(start))
    }

    #[allow(clippy::too_many_arguments)]
    async fn enforce(
        &self,
        d: &crate::dispatch::Destination,
        cfg: &config::Destination,
        action: OnThreshold,
        window: Duration,
        event: &str,
        subject: &str,
        reason: &str,
        figures: Value,
    ) {
        let dest = d.name.as_str();
        match action {
            // Already stopped (by a threshold or an operator): nothing
            // more to do, and nothing new to say.
            OnThreshold::Pause if d.current_state() == State::Paused => return,
            OnThreshold::Pause => {
                if let Err(e) = self.dispatcher.pause_because(dest, reason).await {
                    tracing::error!(destination = dest, error = %e, "governance: cannot pause");
                }
            }
            OnThreshold::Alert if !self.first_in_window(dest, event, subject, window) => return,
            OnThreshold::Alert => {}
        }
        // The reason names an AI-made category: shown, never markup.
        let shown = crate::text::for_webhook(reason);
        let text = match action {
            OnThreshold::Pause => format!("tidegate paused {dest} (owner {}): {shown}", cfg.owner),
            OnThreshold::Alert => format!("tidegate: {dest} (owner {}) crossed its threshold: {shown}", cfg.owner),
        };
        self.alert(event, dest, &cfg.owner, text, figures).await;
    }

    fn first_in_window(&self, dest: &str, event: &str, subject: &str, window: Duration) -> bool {
        let now = queue::now_ms();
        let key = (dest.to_string(), event.to_string(), subject.to_string());
        let mut alerted = self.alerted.lock().unwrap_or_else(|e| e.into_inner());
        match alerted.get(&key) {
            Some(&at) if now - at < window.as_millis() as i64 => false,
            _ => {
                alerted.insert(key, now);
                true
            }
        }
    }

    /// Resumes a destination, recording who and why; a governance pause
    /// needs both, and its verdicts start afresh from now.
    pub async fn resume(
        &self,
        dest: &str,
        skip_head: bool,
        by: Option<String>,
        why: Option<String>,
    ) -> Result<(), ReviewError> {
        let Some(d) = self.dispatcher.destination(dest) else {
            return Err(ReviewError::NotFound(dest.to_string()));
        };
        let info = d.state();
        let governed = info.state == State::Paused && is_governance_reason(&info.reason);
        let by = by.map(|s| s.trim().to_string()).filter(|s| !s.is_empty());
        let why = why.map(|s| s.trim().to_string()).filter(|s| !s.is_empty());
        let reason = match (&by, &why) {
            (Some(by), Some(why)) => format!("resumed by {by}: {why}"),
            _ if governed => {
                return Err(ReviewError::ReasonRequired(format!(
                    "{dest} was paused by governance ({}); resuming it needs by=<who> and reason=<why>",
                    info.reason
                )))
            }
            (Some(by), None) => format!("resumed by {by}"),
            _ => "resumed by an operator".to_string(),
        };
        if governed {
            tracing::warn!(destination = dest, paused_for = %info.reason, %reason, "governance pause lifted");
            self.judged_from
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(dest.to_string(), queue::now_ms());
        }
        self.dispatcher
            .resume_because(dest, skip_head, &reason)
            .await
            .map_err(|e| match e {
                crate::dispatch::DispatchError::Queue(e) => ReviewError::Queue(e),
                e => ReviewError::Invalid(e.to_string()),
            })?;
        Ok(())
    }

    /// Raises an alert: to the log and metrics always, and queued for the
    /// webhook when one is configured (durable before this returns).
    pub async fn alert(&self, event: &str, dest: &str, owner: &str, text: String, figures: Value) {
        self.metrics.alerts.with_label_values(&[event]).inc();
        tracing::warn!(event, destination = dest, %text, "alert");
        let Some(alerts) = self.dispatcher.destination(config::ALERTS) else {
            return;
        };
        let body = json!({
            "text": text,
            "destination": dest,
            "owner": owner,
            "event": event,
            "figures": figures,
            "at": queue::rfc3339(queue::now_ms()),
        });
        let cfg = alerts.config();
        let msg = NewMessage {
            dest: config::ALERTS.to_string(),
            method: "POST".into(),
            path: String::new(),
            headers: vec![("content-type".into(), "application/json".into())],
            body: Bytes::from(body.to_string()),
            idempotency_key: None,
            wants_reply: false,
            received_at: queue::now_ms(),
            producer: None,
            category: Some(event.to_string()),
            routed_from: None,
            order_key: None,
            review: None,
        };
        let limits = queue::Limits {
            max_messages: cfg.queue.max_messages,
            max_bytes: cfg.queue.max_bytes,
            idempotency_window_ms: 0,
        };
        match self.queues.append(Arc::new(msg), limits).await {
            Ok(queue::Appended::Stored { seq, .. }) => {
                tracing::info!(id = %self.id(seq), event, destination = dest, "alert queued for the webhook")
            }
            Ok(other) => {
                tracing::error!(event, destination = dest, outcome = ?other, "alert not queued: the alerts queue is full")
            }
            Err(e) => tracing::error!(event, destination = dest, error = %e, "alert not queued"),
        }
    }

    /// The station's background work, once a second until `stop`: holds
    /// that timed out, the downstream error threshold, and alerts on
    /// halted and long-degraded destinations.
    pub async fn run(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut watch = Watch::default();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = stop.changed() => return,
            }
            self.expire_holds().await;
            self.watch_states(&mut watch).await;
            self.watch_objectives(&mut watch).await;
            self.govern_downstream(&mut watch).await;
        }
    }

    async fn expire_holds(&self) {
        for d in self.dispatcher.destinations() {
            let cfg = d.config();
            let Some(policy) = &cfg.review else { continue };
            if policy.hold_timeout.is_none() || d.queue.held.load(std::sync::atomic::Ordering::Relaxed) == 0 {
                continue;
            }
            let deliver = policy.on_hold_timeout == OnHoldTimeout::Deliver;
            loop {
                match self.queues.expire_holds(&d.name, deliver, queue::now_ms()).await {
                    Ok(0) => break,
                    Ok(n) => {
                        tracing::info!(destination = %d.name, count = n, outcome = if deliver { "delivered" } else { "rejected" }, "holds timed out");
                        if !deliver {
                            self.metrics
                                .dead_lettered
                                .with_label_values(&[&d.name, "hold_timeout"])
                                .inc_by(n);
                        }
                        if n < 1000 {
                            break;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(destination = %d.name, error = %e, "cannot end timed-out holds");
                        break;
                    }
                }
            }
        }
    }

    async fn watch_states(&self, watch: &mut Watch) {
        let now = std::time::Instant::now();
        for d in self.dispatcher.destinations() {
            if d.name == config::ALERTS {
                continue;
            }
            let info = d.state();
            // First seen as it was when this process started: a halt from
            // before a restart was alerted then, one since is new.
            let spell = watch.states.entry(d.name.clone()).or_insert_with(|| {
                Some(Spell {
                    state: self.dispatcher.started_in(&d.name),
                    since: now,
                    alerted: false,
                })
            });
            let Some(event) = state_event(spell, info.state, now) else {
                continue;
            };
            let cfg = d.config();
            let (name, text, figures) = match event {
                StateEvent::Halted => (
                    "halted",
                    format!(
                        "tidegate halted {} (owner {}): {}",
                        d.name,
                        cfg.owner,
                        crate::text::for_webhook(&info.reason)
                    ),
                    json!({"reason": info.reason}),
                ),
                StateEvent::Degraded { minutes } => (
                    "degraded",
                    format!(
                        "tidegate: {} (owner {}) has been degraded for {minutes} minutes: {}",
                        d.name,
                        cfg.owner,
                        crate::text::for_webhook(&info.reason)
                    ),
                    json!({"reason": info.reason, "minutes": minutes}),
                ),
            };
            self.alert(name, &d.name, &cfg.owner, text, figures).await;
        }
    }

    /// A destination whose oldest message outgrows its latency objective
    /// alerts once, when it starts; again only after it has been met.
    async fn watch_objectives(&self, watch: &mut Watch) {
        for d in self.dispatcher.destinations() {
            let cfg = d.config();
            let Some(objective) = cfg.latency_objective else {
                watch.breached.remove(&d.name);
                continue;
            };
            let Ok(oldest) = self.queues.oldest_pending(&d.name).await else {
                continue;
            };
            let age = queue::age_seconds(oldest);
            let breached = age > objective.as_secs_f64();
            let was = watch.breached.insert(d.name.clone(), breached).unwrap_or(false);
            if breached && !was {
                let text = format!(
                    "tidegate: {} (owner {}) holds a message {:.0}s old, past its {} latency objective",
                    d.name,
                    cfg.owner,
                    age,
                    crate::config::HumanDuration(objective)
                );
                let figures = json!({"oldest_age_seconds": age, "latency_objective_seconds": objective.as_secs_f64()});
                self.alert("latency_objective", &d.name, &cfg.owner, text, figures)
                    .await;
            }
        }
    }

    /// The downstream's permanent failures per attempt over the window,
    /// from the delivery counters sampled once a second.
    async fn govern_downstream(&self, watch: &mut Watch) {
        let now = std::time::Instant::now();
        for d in self.dispatcher.destinations() {
            let cfg = d.config();
            let Some(g) = &cfg.governance else { continue };
            let Some(rate) = g.downstream_error_threshold else {
                continue;
            };
            let attempts = crate::metrics::sum(&self.metrics.attempts, &d.name);
            let permanent = self.metrics.permanent_failures.with_label_values(&[&d.name]).get();
            // The counters start at zero with the destination: that is the
            // first sample, so failures before the loop's first look count.
            let samples = watch
                .samples
                .entry(d.name.clone())
                .or_insert_with(|| std::collections::VecDeque::from([(now, 0, 0)]));
            samples.push_back((now, attempts, permanent));
            while samples.len() > 2 && samples.front().is_some_and(|s| now.duration_since(s.0) > g.window) {
                samples.pop_front();
            }
            let (Some(first), Some(last)) = (samples.front(), samples.back()) else {
                continue;
            };
            let (n, k) = (last.1.saturating_sub(first.1), last.2.saturating_sub(first.2));
            if n == 0 || k as f64 / n as f64 <= rate {
                continue;
            }
            // The same floor as review verdicts: no verdict on a handful.
            if n < g.min_reviews {
                continue;
            }
            let observed = k as f64 / n as f64;
            let reason = format!("downstream_error_threshold: {observed:.2} of {n} attempts failed for good");
            let figures = json!({"permanent_failures": k, "attempts": n, "rate": observed, "threshold": rate});
            self.enforce(
                &d,
                &cfg,
                g.on_threshold,
                g.window,
                "downstream_errors",
                "",
                &reason,
                figures,
            )
            .await;
        }
    }
}

/// What the station's loop remembers between rounds.
#[derive(Default)]
struct Watch {
    /// Per destination: the state it was last seen in, and since when.
    states: HashMap<String, Option<Spell>>,
    /// Per destination with an objective: whether it was breached.
    breached: HashMap<String, bool>,
    /// Per destination: (when, attempts, permanent failures) samples.
    samples: HashMap<String, std::collections::VecDeque<(std::time::Instant, u64, u64)>>,
}

/// A destination's spell in one state, as the station's loop saw it.
#[derive(Clone, Copy, Debug)]
struct Spell {
    state: State,
    since: std::time::Instant,
    /// A degraded alert went out for this spell.
    alerted: bool,
}

#[derive(Debug, PartialEq, Eq)]
enum StateEvent {
    Halted,
    Degraded { minutes: u64 },
}

/// What seeing a destination in `state` at `now` raises, given the spell
/// it was last seen in: `Halted` on entering halted; `Degraded` once a
/// degraded spell has lasted `DEGRADED_ALERT_AFTER`, once per spell. A
/// destination seen for the first time starts a spell and raises nothing
/// (the watch seeds it with the state the process started in).
fn state_event(spell: &mut Option<Spell>, state: State, now: std::time::Instant) -> Option<StateEvent> {
    let fresh = Spell {
        state,
        since: now,
        alerted: false,
    };
    let Some(current) = spell.as_mut() else {
        *spell = Some(fresh);
        return None;
    };
    if current.state != state {
        *current = fresh;
        return (state == State::Halted).then_some(StateEvent::Halted);
    }
    let lasted = now.duration_since(current.since);
    if state == State::Degraded && !current.alerted && lasted >= DEGRADED_ALERT_AFTER {
        current.alerted = true;
        return Some(StateEvent::Degraded {
            minutes: lasted.as_secs() / 60,
        });
    }
    None
}

/// Whether a pause reason is a governance threshold's.
pub fn is_governance_reason(reason: &str) -> bool {
    reason.starts_with("quality_threshold:") || reason.starts_with("downstream_error_threshold:")
}

fn reviewer(r: Option<String>) -> Result<String, ReviewError> {
    match r.map(|s| s.trim().to_string()) {
        Some(s) if !s.is_empty() && s.len() <= 200 => Ok(s),
        Some(s) if !s.is_empty() => Err(ReviewError::Invalid("reviewer is at most 200 bytes".into())),
        _ => Err(ReviewError::Invalid(
            "\"reviewer\" is required: who decided, for the record".into(),
        )),
    }
}

/// The corrected bytes and the RFC 6902 patch from the item's original to
/// them (no patch when the original is gone or not JSON).
fn correction(original: Option<&Bytes>, corrected: &Value) -> (Option<Bytes>, Option<String>) {
    let patch = original
        .and_then(|o| serde_json::from_slice::<Value>(o).ok())
        .map(|o| json_patch::diff(&o, corrected))
        .and_then(|p| serde_json::to_string(&p).ok());
    (Some(Bytes::from(corrected.to_string())), patch)
}

/// A stored body as JSON when it is, else as text.
fn body_value(b: Option<&Bytes>) -> Value {
    match b {
        None => Value::Null,
        Some(b) => serde_json::from_slice(b).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(b).into_owned())),
    }
}

/// The corrections export's CSV columns, in order.
pub const CORRECTION_COLUMNS: [&str; 10] = [
    "id",
    "destination",
    "category",
    "decision",
    "original",
    "corrected",
    "patch",
    "reviewer",
    "note",
    "decided_at",
];

/// Corrections as CSV with a header row: strings as they are, bodies and
/// patches as compact JSON, absent values empty.
pub fn corrections_csv(rows: &[Value]) -> Result<Vec<u8>, csv::Error> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(CORRECTION_COLUMNS)?;
    for r in rows {
        // Every cell may hold AI output or what a reviewer typed.
        w.write_record(CORRECTION_COLUMNS.iter().map(|c| match &r[*c] {
            Value::Null => String::new(),
            Value::String(s) => crate::text::csv_cell(s).into_owned(),
            v => crate::text::csv_cell(&v.to_string()).into_owned(),
        }))?;
    }
    w.into_inner().map_err(|e| csv::Error::from(e.into_error()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn halts_alert_on_entry_and_degraded_spells_once_after_five_minutes() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut spell = None;
        assert_eq!(state_event(&mut spell, State::Running, at(0)), None);
        assert_eq!(state_event(&mut spell, State::Halted, at(1)), Some(StateEvent::Halted));
        assert_eq!(state_event(&mut spell, State::Halted, at(2)), None, "once per halt");
        assert_eq!(state_event(&mut spell, State::Degraded, at(10)), None);
        assert_eq!(state_event(&mut spell, State::Degraded, at(10 + 299)), None);
        assert_eq!(
            state_event(&mut spell, State::Degraded, at(10 + 301)),
            Some(StateEvent::Degraded { minutes: 5 })
        );
        assert_eq!(
            state_event(&mut spell, State::Degraded, at(10 + 900)),
            None,
            "once per spell"
        );
        // A recovery and a new spell: its own five minutes, its own alert.
        assert_eq!(state_event(&mut spell, State::Running, at(1000)), None);
        assert_eq!(state_event(&mut spell, State::Degraded, at(1001)), None);
        assert_eq!(state_event(&mut spell, State::Degraded, at(1200)), None);
        assert!(state_event(&mut spell, State::Degraded, at(1302)).is_some());
        // Seen first already halted (a restart): no new alert.
        let mut spell = None;
        assert_eq!(state_event(&mut spell, State::Halted, at(0)), None);
    }

    #[test]
    fn an_intent_only_where_review_is_configured_or_a_route_holds() {
        let cfg = |review: Option<crate::config::ReviewPolicy>| {
            let text = "[ingress]\nlisten = \"127.0.0.1:0\"\n[storage]\npath = \"data\"\n[[destination]]\nname = \"d\"\nurl = \"http://127.0.0.1:1/\"\nowner = \"o\"\n";
            let mut c = crate::config::Config::parse(std::path::Path::new("t.toml"), text).unwrap();
            let mut d = c.destinations.remove(0);
            d.review = review;
            d
        };
        assert_eq!(intent(&cfg(None), None, "x"), None);
        let routed = intent(&cfg(None), Some(Hold::Route), "x").unwrap();
        assert_eq!(
            (routed.hold, routed.sample, routed.hold_for_ms),
            (Some("route"), 0.0, None)
        );
        let policy = crate::config::ReviewPolicy {
            hold_when: None,
            sample: 0.1,
            sample_by_category: [("nda".to_string(), 0.5)].into(),
            audit_sample: 0.02,
            hold_timeout: Some(Duration::from_secs(4 * 3600)),
            on_hold_timeout: OnHoldTimeout::Deliver,
        };
        let i = intent(&cfg(Some(policy.clone())), None, "nda").unwrap();
        assert_eq!(
            (i.hold, i.sample, i.audit, i.hold_for_ms),
            (None, 0.5, 0.02, Some(14_400_000))
        );
        assert_eq!(intent(&cfg(Some(policy)), None, "invoice").unwrap().sample, 0.1);
    }
}
