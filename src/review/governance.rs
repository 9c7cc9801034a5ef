//! Quality over a window and the owner's threshold: override rates by
//! category, and the pause (or alert) when a category crosses it, and the
//! resume that needs who and why.

use super::*;

impl Station {
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

    /// Quality split by reviewer over `window`, with the agreement of
    /// reviewers of one category (`quality::by_reviewer`).
    pub async fn quality_by_reviewer(
        &self,
        dest: Option<String>,
        window: Duration,
    ) -> Result<(Vec<quality::ReviewerRow>, Vec<quality::Agreement>), ReviewError> {
        let since = queue::now_ms() - window.as_millis().min(i64::MAX as u128) as i64;
        let mut tallies = self.queues.reviewer_tallies(dest, since).await?;
        tallies.retain(|((d, ..), _)| !config::is_internal(d));
        Ok(quality::by_reviewer(&tallies))
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
    pub(super) fn window_start(&self, dest: &str, window: Duration, now: i64) -> i64 {
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
    pub(super) async fn enforce(
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
                } else {
                    let act = queue::audit::Act::now(
                        queue::audit::TIDEGATE,
                        "pause",
                        Some(dest),
                        None,
                        serde_json::json!({ "reason": reason }),
                    );
                    if let Err(e) = self.queues.record_act(act).await {
                        tracing::error!(destination = dest, error = %e, "governance paused, but the audit trail could not record it");
                    }
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

    pub(super) fn first_in_window(&self, dest: &str, event: &str, subject: &str, window: Duration) -> bool {
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
}

/// Whether a pause reason is a governance threshold's.
pub fn is_governance_reason(reason: &str) -> bool {
    reason.starts_with("quality_threshold:") || reason.starts_with("downstream_error_threshold:")
}
