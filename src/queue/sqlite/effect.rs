//! What one writer command did, held until its batch commits: the answer
//! it owes its caller ([`Answer`]) and the change it makes to the live
//! counts and the destination's tail ([`Effect`]). Both are applied only
//! once the commit stands, so counts never run ahead of the disk.

use std::sync::Arc;

use crate::queue::review::Decided;
use crate::queue::{Appended, NewMessage, Result};

/// What a command changed, applied to the in-memory counts only once the
/// batch is committed.
#[derive(Default)]
pub(crate) struct Effect {
    pub dest: Option<String>,
    pub depth: i64,
    pub bytes: i64,
    pub dead: i64,
    /// Change in held messages.
    pub held: i64,
    /// Change in review items awaiting a decision.
    pub open_reviews: i64,
    pub ready: bool,
    /// A new message, for the destination's tail.
    pub appended: Option<(u64, Arc<NewMessage>)>,
    /// Messages became pending again other than by an append.
    pub requeued: bool,
    /// The messages a settle changed.
    pub settled: Vec<u64>,
}

/// Answers a command that was applied, with the answer computed for it.
pub(crate) enum Answer {
    Append(Result<Appended>),
    Unit,
    Count(u64),
    Decided(Decided),
}
