//! The audit trail (SPEC §18): who paused, resumed, lifted a halt,
//! replayed, purged, reloaded, decided or sent feedback, when, on what, and
//! with what detail. Backend-neutral records; each backend keeps them
//! durably ([`super::AuditLog`]) for `[admin] audit_retention`.
//!
//! Invariant: an act is recorded after it took effect and before it is
//! answered, so every acknowledged act is on record once (a crash between
//! the two leaves an act that was never acknowledged and is not listed).

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One act, as recorded.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Act {
    /// When it took effect (ms since the epoch).
    pub at: i64,
    /// Who: a person's name, `admin` (the root token), `anonymous`,
    /// [`TIDEGATE`] or [`SIGNAL`].
    pub actor: String,
    /// `pause`, `resume`, `lift_halt`, `replay`, `purge`, `reload`,
    /// `approve`, `edit`, `reject` or `feedback`.
    pub action: String,
    /// The destination acted on; none for a reload.
    pub destination: Option<String>,
    /// What within it: a message id, a halted key.
    pub target: Option<String>,
    /// What else the act said (a resume's `by` and `reason`, a count, a
    /// note), as a JSON object.
    pub detail: Value,
}

impl Act {
    /// An act taking effect now.
    pub fn now(actor: &str, action: &str, destination: Option<&str>, target: Option<String>, detail: Value) -> Act {
        Act {
            at: super::now_ms(),
            actor: actor.to_string(),
            action: action.to_string(),
            destination: destination.map(str::to_string),
            target,
            detail,
        }
    }
}

/// The actor of what tidegate does by itself (a governance threshold's
/// pause).
pub const TIDEGATE: &str = "tidegate";
/// The actor of a reload asked for by `SIGHUP`.
pub const SIGNAL: &str = "signal";

/// One act with its place in the trail (ascending, never reused).
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub seq: u64,
    pub act: Act,
}

/// Which acts to read: at or after `since` (ms), after `after` (a seq),
/// matching each filter given, at most `limit`: the oldest such, or with
/// `newest`, the newest (still in ascending order).
#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub since: i64,
    pub actor: Option<String>,
    pub action: Option<String>,
    pub destination: Option<String>,
    pub after: u64,
    pub limit: usize,
    pub newest: bool,
}

impl Filter {
    /// Whether `e` is one of the acts asked for (a backend that cannot
    /// filter where it reads filters here).
    pub fn matches(&self, e: &Entry) -> bool {
        e.seq > self.after
            && e.act.at >= self.since
            && self.actor.as_ref().is_none_or(|a| *a == e.act.actor)
            && self.action.as_ref().is_none_or(|a| *a == e.act.action)
            && self
                .destination
                .as_ref()
                .is_none_or(|d| Some(d) == e.act.destination.as_ref())
    }
}
