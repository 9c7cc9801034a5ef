//! What the admin API and the console share: the operations an operator
//! (or a page acting for one) performs, and the views they read. Both
//! surfaces call these; neither imports the other, and neither has a
//! second copy of the logic.
//!
//! [`Ops`] holds what every operation needs (the queue, dispatch, the
//! review station, metrics and the config in force); each method that
//! changes something checks its destination and that its [`Actor`] may
//! (SPEC §18), does one thing, logs it, records it in the audit trail
//! before it answers, and answers a problem+json [`Problem`] on failure,
//! which the API sends as it is and the console shows on its error page.
//! Because both surfaces come through here, neither can act without the
//! role check or leave an act off the record.

mod describe;
mod preview;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use serde_json::{json, Value};

use crate::auth::{Act, Actor};
use crate::config::Config;
use crate::dispatch::{self, DispatchError, Dispatcher};
use crate::metrics::Metrics;
use crate::problem::Problem;
use crate::queue::audit;
use crate::queue::review::Verdict;
use crate::queue::{self, Queues};
use crate::reload::Reloader;
use crate::review::{DecisionRequest, FeedbackRequest, ReviewError, Station};

pub use describe::{Counters, DestinationView, HaltedKeyView, Objective, QueueView, RateView};
pub use preview::{preview, Sent};

/// What the operations act on; cheap to clone.
#[derive(Clone)]
pub struct Ops {
    pub station: Arc<Station>,
    pub queues: Queues,
    pub dispatcher: Arc<Dispatcher>,
    pub metrics: Metrics,
    pub reloader: Arc<Reloader>,
    pub shutting_down: Arc<AtomicBool>,
}

impl Ops {
    /// The configuration in force.
    pub fn config(&self) -> Arc<Config> {
        crate::config::current(&self.reloader.live)
    }

    /// A configured destination, or 404 `unknown_destination`.
    pub fn find(&self, name: &str) -> Result<Arc<dispatch::Destination>, Problem> {
        self.dispatcher
            .destination(name)
            .ok_or_else(|| Problem::unknown_destination(name))
    }

    /// The sequence number behind an id taken from a request, as everywhere
    /// an id is taken: one that is not an id is a bad request (400); a
    /// well-formed one of another instance is `None`, which the caller
    /// answers as names nothing (404) or skips.
    pub fn seq_of(&self, id: &str) -> Result<Option<u64>, Problem> {
        if !queue::is_message_id(id) {
            return Err(Problem::invalid_request(format!("{id:?} is not a message id")));
        }
        Ok(self.queues.parse_id(id))
    }

    /// Records `who`'s act on the audit trail; the act has taken effect, so
    /// a failure here is logged in full and answered 500 (the caller's
    /// answer would otherwise claim a record that is not there).
    pub async fn record(
        &self,
        who: &Actor,
        action: &str,
        destination: Option<&str>,
        target: Option<String>,
        detail: Value,
    ) -> Result<(), Problem> {
        self.queues
            .record_act(audit::Act::now(&who.name, action, destination, target, detail)).await.map_err(|e| {
            tracing::error!(error = %e, actor = %who.name, action, "the act took effect but could not be recorded in the audit trail");
            Problem::internal()
        })
    }

    /// Stops deliveries to `name`; ingress still accepts.
    pub async fn pause(&self, who: &Actor, name: &str) -> Result<(), Problem> {
        self.find(name)?;
        who.may(Act::Operate, Some(name))?;
        self.dispatcher.pause(name).await.map_err(dispatch_problem)?;
        self.record(who, "pause", Some(name), None, json!({})).await
    }

    /// Back to `running`: the whole destination, through the review station
    /// (a governance pause needs `by` and `reason`; a person's `by` is
    /// themselves), or one halted key.
    pub async fn resume(
        &self,
        who: &Actor,
        name: &str,
        skip_head: bool,
        key: Option<&str>,
        by: Option<String>,
        reason: Option<String>,
    ) -> Result<(), Problem> {
        let d = self.find(name)?;
        who.may(Act::Operate, Some(name))?;
        match key {
            Some(key) => {
                self.dispatcher
                    .resume_key(name, key, skip_head)
                    .await
                    .map_err(dispatch_problem)?;
                let detail = json!({ "skip_head": skip_head });
                self.record(who, "lift_halt", Some(name), Some(key.to_string()), detail)
                    .await
            }
            None => {
                let by = who.reviewer(by)?;
                let from = d.state();
                self.station
                    .resume(name, skip_head, by.clone(), reason.clone())
                    .await
                    .map_err(review_problem)?;
                let detail = json!({
                    "by": by,
                    "reason": reason,
                    "skip_head": skip_head,
                    "from": from.state.as_str(),
                    "paused_for": from.reason,
                });
                self.record(who, "resume", Some(name), None, detail).await
            }
        }
    }

    /// Dead letters back into the queue (all, or these).
    pub async fn replay_dead_letters(&self, who: &Actor, name: &str, seqs: Option<Vec<u64>>) -> Result<u64, Problem> {
        self.find(name)?;
        who.may(Act::Operate, Some(name))?;
        let ids: Option<Vec<String>> = seqs
            .as_ref()
            .map(|s| s.iter().map(|seq| self.queues.message_id(*seq)).collect());
        let n = self.queues.replay(name, seqs).await.map_err(internal)?;
        tracing::warn!(destination = %name, replayed = n, actor = %who.name, "dead letters replayed by an operator");
        self.record(who, "replay", Some(name), None, json!({ "replayed": n, "ids": ids }))
            .await?;
        Ok(n)
    }

    /// Deletes `name`'s dead letters for good.
    pub async fn purge_dead_letters(&self, who: &Actor, name: &str) -> Result<u64, Problem> {
        self.find(name)?;
        who.may(Act::Operate, Some(name))?;
        let n = self.queues.purge_dead_letters(name).await.map_err(internal)?;
        tracing::warn!(destination = %name, purged = n, actor = %who.name, "dead letters purged by an operator");
        self.record(who, "purge", Some(name), None, json!({ "purged": n }))
            .await?;
        Ok(n)
    }

    /// The destination of message `seq`, for a decision on it: its status
    /// (no body read), or, past `history_retention`, its review item (kept
    /// for `[review] retention`); 404 when neither is stored.
    async fn destination_of(&self, seq: u64) -> Result<String, Problem> {
        if let Some(s) = self.queues.status(seq).await.map_err(internal)? {
            return Ok(s.dest);
        }
        match self.queues.review_item(seq).await.map_err(internal)? {
            Some(item) => Ok(item.dest),
            None => Err(Problem::not_found(format!(
                "no message {:?}",
                self.queues.message_id(seq)
            ))),
        }
    }

    /// Approves, edits or rejects review item `seq`, as `who` (a person's
    /// decision is recorded under their name).
    pub async fn decide(
        &self,
        who: &Actor,
        seq: u64,
        verdict: Verdict,
        mut req: DecisionRequest,
    ) -> Result<Value, Refused> {
        let dest = self.destination_of(seq).await?;
        who.may(Act::Decide, Some(&dest))?;
        req.reviewer = who.reviewer(req.reviewer)?;
        let done = self.station.decide(seq, verdict, req).await?;
        self.record_decision(who, verdict.as_str(), &dest, seq, &done).await?;
        Ok(done)
    }

    /// Late feedback on delivered message `seq`, as `who`.
    pub async fn feedback(&self, who: &Actor, seq: u64, mut req: FeedbackRequest) -> Result<Value, Refused> {
        let dest = self.destination_of(seq).await?;
        who.may(Act::Decide, Some(&dest))?;
        req.reviewer = who.reviewer(req.reviewer)?;
        let done = self.station.feedback(seq, req).await?;
        self.record_decision(who, "feedback", &dest, seq, &done).await?;
        Ok(done)
    }

    async fn record_decision(
        &self,
        who: &Actor,
        action: &str,
        dest: &str,
        seq: u64,
        done: &Value,
    ) -> Result<(), Problem> {
        let detail = json!({
            "reviewer": done["reviewer"],
            "decision": done["decision"],
            "category": done["category"],
            "note": done["note"],
        });
        self.record(who, action, Some(dest), Some(self.queues.message_id(seq)), detail)
            .await
    }

    /// Reloads the configuration (every destination: an operator with no
    /// destinations list).
    pub async fn reload(&self, who: &Actor) -> Result<Value, Problem> {
        who.may(Act::Operate, None)?;
        match self.reloader.reload().await {
            Ok(v) => {
                self.record(who, "reload", None, None, v.clone()).await?;
                Ok(v)
            }
            Err(crate::reload::ReloadError::Invalid(reason)) => {
                tracing::error!(%reason, "reload refused: invalid configuration; nothing changed");
                Err(Problem::invalid_config(reason))
            }
            Err(crate::reload::ReloadError::Refused(reason)) => {
                tracing::error!(%reason, "reload refused; nothing changed");
                Err(Problem::reload_refused(reason))
            }
        }
    }
}

/// Why a decision was not recorded: refused before the station saw it
/// (who may, which message), or by the station, whose error the console
/// shows in place (a schema violation's paths).
#[derive(Debug)]
pub enum Refused {
    Problem(Problem),
    Review(ReviewError),
}

impl From<Problem> for Refused {
    fn from(p: Problem) -> Self {
        Refused::Problem(p)
    }
}

impl From<ReviewError> for Refused {
    fn from(e: ReviewError) -> Self {
        Refused::Review(e)
    }
}

impl From<Refused> for Problem {
    fn from(r: Refused) -> Self {
        match r {
            Refused::Problem(p) => p,
            Refused::Review(e) => review_problem(e),
        }
    }
}

/// A failure the caller cannot act on: logged in full, answered 500
/// without internals.
pub fn internal(e: impl std::fmt::Display) -> Problem {
    tracing::error!(error = %e, "admin request failed");
    Problem::internal()
}

fn dispatch_problem(e: DispatchError) -> Problem {
    match e {
        DispatchError::UnknownDestination(n) => Problem::unknown_destination(&n),
        e @ DispatchError::KeyNotHalted { .. } => Problem::key_not_halted(e.to_string()),
        DispatchError::Queue(e) => internal(e),
    }
}

/// A review station refusal as problem+json.
pub fn review_problem(e: ReviewError) -> Problem {
    match e {
        ReviewError::NotFound(_) => Problem::not_found(e.to_string()),
        ReviewError::NotHeld { .. } => Problem::not_held(e.to_string()),
        ReviewError::NotDelivered { .. } => Problem::not_delivered(e.to_string()),
        ReviewError::AlreadyDecided { .. } => Problem::already_decided(e.to_string()),
        ReviewError::Invalid(m) => Problem::invalid_request(m),
        ReviewError::ReasonRequired(m) => Problem::reason_required(m),
        ReviewError::Schema(f) => Problem::schema_violation(
            format!("the correction fails the schema of {}: {}", f.destination, f.message),
            &f.violations,
        ),
        ReviewError::Transform(f) => Problem::transform_failed(format!(
            "the correction cannot be delivered to {} ({}): {}",
            f.destination,
            f.stage.as_str(),
            f.message
        )),
        e @ (ReviewError::Unavailable(_) | ReviewError::Queue(_)) => internal(e),
    }
}
