//! Alerts and the loop that raises them: holds that time out, halted and
//! long-degraded destinations, latency objectives missed, a downstream
//! refusing for good. An alert is a message on the internal alerts
//! destination, durable before it counts as raised.

use super::*;

impl Station {
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

    pub(super) async fn expire_holds(&self) {
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

    pub(super) async fn watch_states(&self, watch: &mut Watch) {
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
    pub(super) async fn watch_objectives(&self, watch: &mut Watch) {
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
    pub(super) async fn govern_downstream(&self, watch: &mut Watch) {
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
pub(super) struct Watch {
    /// Per destination: the state it was last seen in, and since when.
    states: HashMap<String, Option<Spell>>,
    /// Per destination with an objective: whether it was breached.
    breached: HashMap<String, bool>,
    /// Per destination: (when, attempts, permanent failures) samples.
    samples: HashMap<String, std::collections::VecDeque<(std::time::Instant, u64, u64)>>,
}

/// A destination's spell in one state, as the station's loop saw it.
#[derive(Clone, Copy, Debug)]
pub(super) struct Spell {
    state: State,
    since: std::time::Instant,
    /// A degraded alert went out for this spell.
    alerted: bool,
}

#[derive(Debug, PartialEq, Eq)]
pub(super) enum StateEvent {
    Halted,
    Degraded { minutes: u64 },
}

/// What seeing a destination in `state` at `now` raises, given the spell
/// it was last seen in: `Halted` on entering halted; `Degraded` once a
/// degraded spell has lasted `DEGRADED_ALERT_AFTER`, once per spell. A
/// destination seen for the first time starts a spell and raises nothing
/// (the watch seeds it with the state the process started in).
pub(super) fn state_event(spell: &mut Option<Spell>, state: State, now: std::time::Instant) -> Option<StateEvent> {
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
