//! What the admin API and the console share: the operations an operator
//! (or a page acting for one) performs, and the views they read. Both
//! surfaces call these; neither imports the other, and neither has a
//! second copy of the logic.
//!
//! [`Ops`] holds what every operation needs (the queue, dispatch, the
//! review station, metrics and the config in force); each method checks
//! its destination, does one thing, logs it, and answers a problem+json
//! [`Problem`] on failure, which the API sends as it is and the console
//! shows on its error page.

mod describe;
mod preview;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use crate::config::Config;
use crate::dispatch::{self, DispatchError, Dispatcher};
use crate::metrics::Metrics;
use crate::problem::Problem;
use crate::queue::{self, Queues};
use crate::reload::Reloader;
use crate::review::{ReviewError, Station};

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

    /// Stops deliveries to `name`; ingress still accepts.
    pub async fn pause(&self, name: &str) -> Result<(), Problem> {
        self.dispatcher.pause(name).await.map(drop).map_err(dispatch_problem)
    }

    /// Back to `running`: the whole destination, through the review station
    /// (a governance pause needs `by` and `reason`), or one halted key.
    pub async fn resume(
        &self,
        name: &str,
        skip_head: bool,
        key: Option<&str>,
        by: Option<String>,
        reason: Option<String>,
    ) -> Result<(), Problem> {
        match key {
            Some(key) => self
                .dispatcher
                .resume_key(name, key, skip_head)
                .await
                .map(drop)
                .map_err(dispatch_problem),
            None => {
                self.find(name)?;
                self.station
                    .resume(name, skip_head, by, reason)
                    .await
                    .map_err(review_problem)
            }
        }
    }

    /// Dead letters back into the queue (all, or these).
    pub async fn replay_dead_letters(&self, name: &str, seqs: Option<Vec<u64>>) -> Result<u64, Problem> {
        self.find(name)?;
        let n = self.queues.replay(name, seqs).await.map_err(internal)?;
        tracing::warn!(destination = %name, replayed = n, "dead letters replayed by an operator");
        Ok(n)
    }

    /// Deletes `name`'s dead letters for good.
    pub async fn purge_dead_letters(&self, name: &str) -> Result<u64, Problem> {
        self.find(name)?;
        let n = self.queues.purge_dead_letters(name).await.map_err(internal)?;
        tracing::warn!(destination = %name, purged = n, "dead letters purged by an operator");
        Ok(n)
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
