//! The review station's records as the queue keeps them, whatever the
//! backend (SPEC §10): a decision ([`Decision`]), what it did
//! ([`Decided`]), an item as read back ([`Item`]), decision counts
//! ([`Tally`]), and what the station makes of a new message
//! ([`on_append`]), the same pure function of the id on both backends, so
//! the instance that stores a message and the one that dispatches it agree
//! without asking each other.

use bytes::Bytes;

use super::{sampled, MessageState, ReviewIntent};

/// What a reviewer or a downstream said of one message.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    pub verdict: Verdict,
    pub reviewer: String,
    pub note: Option<String>,
    /// The corrected producer body (edit, or feedback with a correction).
    pub corrected: Option<Bytes>,
    /// RFC 6902 patch from the original to `corrected`, as JSON text.
    pub patch: Option<String>,
    pub at: i64,
}

/// The five verdicts: three decisions on review items, two of feedback.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Approve,
    Edit,
    Reject,
    Correct,
    Overridden,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Approve => "approve",
            Verdict::Edit => "edit",
            Verdict::Reject => "reject",
            Verdict::Correct => "correct",
            Verdict::Overridden => "overridden",
        }
    }

    pub(crate) fn is_feedback(self) -> bool {
        matches!(self, Verdict::Correct | Verdict::Overridden)
    }

    /// Whether this verdict takes the place of `earlier`, the decision a
    /// review row already holds: any human feedback replaces a hold's
    /// timeout (nobody had looked), and an override found downstream
    /// replaces an approval (the approved output was reworked after all,
    /// which is what the override rate must count). Otherwise the first
    /// decision wins.
    pub(crate) fn replaces(self, earlier: &str) -> bool {
        match earlier {
            "timed_out" => self.is_feedback(),
            "approve" => self == Verdict::Overridden,
            _ => false,
        }
    }
}

/// The note a row keeps when feedback replaces its `earlier` decision: an
/// approval's reviewer is kept on the record.
pub(crate) fn replacing_note(earlier: &str, approver: Option<&str>, note: Option<&str>) -> Option<String> {
    match (earlier, approver) {
        ("approve", Some(who)) => Some(match note {
            Some(n) => format!("approved by {who}; {n}"),
            None => format!("approved by {who}"),
        }),
        _ => note.map(str::to_string),
    }
}

/// The answer to a decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decided {
    /// Recorded. For a held message, it is now queued (approve, edit) or a
    /// dead letter (reject).
    Done {
        dest: String,
        category: String,
        kind: String,
    },
    /// No such message.
    NotFound,
    /// The message is not a review item (a decision), or not delivered yet
    /// (feedback): nothing to decide on.
    NotReviewable { state: MessageState },
    /// Somebody decided first.
    AlreadyDecided { decision: String, reviewer: Option<String> },
}

/// One review row as read back.
#[derive(Clone, Debug, PartialEq)]
pub struct Item {
    pub seq: u64,
    pub dest: String,
    pub category: String,
    /// `held`, `audit` or `feedback`.
    pub kind: String,
    /// Why it is here: `predicate`, `route`, `sample`, `audit`, `feedback`.
    pub reason: String,
    pub received_at: i64,
    pub original: Option<Bytes>,
    pub decision: Option<String>,
    pub reviewer: Option<String>,
    pub note: Option<String>,
    pub corrected: Option<Bytes>,
    pub patch: Option<String>,
    pub decided_at: Option<i64>,
}

/// (destination, category, reviewer): what per-reviewer tallies are keyed by.
pub type ReviewerKey = (String, String, String);

/// Decision counts of one destination and category.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub approved: u64,
    pub edited: u64,
    pub rejected: u64,
    pub correct: u64,
    pub overridden: u64,
    /// Holds that timed out: no human looked, so not a review.
    pub timed_out: u64,
}

impl Tally {
    /// Human reviews: decisions and feedback.
    pub fn reviewed(&self) -> u64 {
        self.approved + self.edited + self.rejected + self.correct + self.overridden
    }

    /// Reviews that changed or refused the output.
    pub fn overrides(&self) -> u64 {
        self.edited + self.rejected + self.overridden
    }

    pub(crate) fn count(&mut self, decision: &str, n: u64) {
        match decision {
            "approve" => self.approved += n,
            "edit" => self.edited += n,
            "reject" => self.rejected += n,
            "correct" => self.correct += n,
            "overridden" => self.overridden += n,
            "timed_out" => self.timed_out += n,
            _ => {}
        }
    }
}

/// What the station makes of a new message, once it has an id.
pub enum OnAppend {
    /// Held until `until` (ms; `i64::MAX` for no timeout).
    Hold { reason: &'static str, until: i64 },
    /// Delivered, and listed for grading.
    Audit,
    /// Neither: an ordinary message.
    Pass,
}

/// `id` is the message's id, formatted only when a draw needs it (most
/// destinations with a review station sample nothing, and this runs on the
/// writer's thread for every message they take).
pub fn on_append(intent: &ReviewIntent, id: impl Fn() -> String, received_at: i64) -> OnAppend {
    let hold = |reason| OnAppend::Hold {
        reason,
        until: intent.hold_for_ms.map_or(i64::MAX, |ms| received_at.saturating_add(ms)),
    };
    if let Some(reason) = intent.hold {
        return hold(reason);
    }
    if intent.sample <= 0.0 && intent.audit <= 0.0 {
        return OnAppend::Pass;
    }
    let id = id();
    if sampled("sample", &id, intent.sample) {
        return hold("sample");
    }
    if sampled("audit", &id, intent.audit) {
        return OnAppend::Audit;
    }
    OnAppend::Pass
}
