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
//!
//! Files: `station.rs` (listing and deciding), `governance.rs` (override
//! rates, the threshold, resume), `alerts.rs` (the alert and the loop that
//! raises them), `export.rs` (corrections for retraining), `quality.rs`
//! (the rows of the quality report).

mod alerts;
mod export;
mod governance;
pub mod quality;
mod station;

pub use export::{corrections_csv, CORRECTION_COLUMNS};
pub use governance::is_governance_reason;

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

/// A stored body as JSON when it is, else as text.
fn body_value(b: Option<&Bytes>) -> Value {
    match b {
        None => Value::Null,
        Some(b) => serde_json::from_slice(b).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(b).into_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::alerts::{state_event, StateEvent};
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
