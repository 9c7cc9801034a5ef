//! Deciding held and audited messages: listing them, checking a decision
//! (a named reviewer; a correction valid against the destination's schema
//! and transform) and recording it through the queue, where the first
//! decision wins.

use super::*;

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

    pub(super) fn id(&self, seq: u64) -> String {
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
    pub(super) async fn preview(&self, it: &Item) -> Value {
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
        match h.runner.render(&it.dest, original, &self.id(it.seq)).await {
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
    pub(super) async fn record(
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
    pub(super) async fn not_held(&self, seq: u64, id: &str) -> ReviewError {
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
    pub(super) async fn checked(&self, dest: &str, body: &Value) -> Result<(), ReviewError> {
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
}

pub(super) fn reviewer(r: Option<String>) -> Result<String, ReviewError> {
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
pub(super) fn correction(original: Option<&Bytes>, corrected: &Value) -> (Option<Bytes>, Option<String>) {
    let patch = original
        .and_then(|o| serde_json::from_slice::<Value>(o).ok())
        .map(|o| json_patch::diff(&o, corrected))
        .and_then(|p| serde_json::to_string(&p).ok());
    (Some(Bytes::from(corrected.to_string())), patch)
}
