//! A message's state: one enum, one spelling (the API's, SPEC §6 and §10),
//! used by every surface that names a state (the admin API, the console,
//! the CLI, `journal verify`, the review station's refusals).
//!
//! Backends write a state down as a small integer ([`stored`]): both
//! backends use the same codes, so a status read back means the same on
//! either. A pending message is one code whether it waits, is scheduled
//! for a retry or is in flight: in-flight is not stored (a crash makes it
//! pending again), and scheduled is pending with a `visible_at` to come.

/// Where a message is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MessageState {
    /// Waiting for its turn.
    Queued,
    /// An attempt is under way.
    InFlight,
    /// Waiting for a retry at `next_attempt_at`.
    Scheduled,
    /// Held for a review decision (SPEC §10).
    Held,
    Delivered,
    DeadLettered,
    /// Finished by `on_failure = "log"`.
    Dropped,
    /// Its checksum failed; never delivered, kept for forensics.
    Quarantined,
}

/// The stored codes (see the module documentation).
pub mod stored {
    pub const PENDING: i64 = 0;
    pub const DEAD: i64 = 1;
    pub const DELIVERED: i64 = 2;
    pub const DROPPED: i64 = 3;
    pub const QUARANTINED: i64 = 4;
    pub const HELD: i64 = 5;
}

impl MessageState {
    pub const ALL: [MessageState; 8] = [
        MessageState::Queued,
        MessageState::InFlight,
        MessageState::Scheduled,
        MessageState::Held,
        MessageState::Delivered,
        MessageState::DeadLettered,
        MessageState::Dropped,
        MessageState::Quarantined,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            MessageState::Queued => "queued",
            MessageState::InFlight => "in_flight",
            MessageState::Scheduled => "scheduled",
            MessageState::Held => "held",
            MessageState::Delivered => "delivered",
            MessageState::DeadLettered => "dead_lettered",
            MessageState::Dropped => "dropped",
            MessageState::Quarantined => "quarantined",
        }
    }

    /// The state of a stored `code` whose message becomes visible at
    /// `visible_at`, seen at `now` (all ms). An unknown code reads as
    /// quarantined: never delivered, never lost.
    pub fn from_stored(code: i64, visible_at: i64, now: i64) -> MessageState {
        match code {
            stored::PENDING if visible_at > now => MessageState::Scheduled,
            stored::PENDING => MessageState::Queued,
            stored::DEAD => MessageState::DeadLettered,
            stored::DELIVERED => MessageState::Delivered,
            stored::DROPPED => MessageState::Dropped,
            stored::HELD => MessageState::Held,
            _ => MessageState::Quarantined,
        }
    }

    /// The code a backend writes for this state.
    pub fn stored(self) -> i64 {
        match self {
            MessageState::Queued | MessageState::InFlight | MessageState::Scheduled => stored::PENDING,
            MessageState::Held => stored::HELD,
            MessageState::Delivered => stored::DELIVERED,
            MessageState::DeadLettered => stored::DEAD,
            MessageState::Dropped => stored::DROPPED,
            MessageState::Quarantined => stored::QUARANTINED,
        }
    }

    /// Waiting, scheduled or in flight: not finished, not held.
    pub fn is_pending(self) -> bool {
        self.stored() == stored::PENDING
    }

    /// `self`, or in flight when a pending message is being attempted
    /// (only the dispatcher knows that).
    pub fn with_in_flight(self, in_flight: bool) -> MessageState {
        if in_flight && self.is_pending() {
            MessageState::InFlight
        } else {
            self
        }
    }
}

impl std::fmt::Display for MessageState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_state_survives_its_stored_code_except_the_pending_ones_which_read_back_by_visibility() {
        for s in MessageState::ALL {
            let back = MessageState::from_stored(s.stored(), 0, 1);
            if s.is_pending() {
                assert_eq!(back, MessageState::Queued);
                assert_eq!(MessageState::from_stored(s.stored(), 2, 1), MessageState::Scheduled);
            } else {
                assert_eq!(back, s);
            }
        }
    }

    #[test]
    fn spellings_are_the_apis_and_distinct() {
        let names: std::collections::HashSet<_> = MessageState::ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(names.len(), MessageState::ALL.len());
        assert_eq!(MessageState::DeadLettered.as_str(), "dead_lettered");
        assert_eq!(MessageState::InFlight.as_str(), "in_flight");
    }

    #[test]
    fn only_a_pending_message_can_be_in_flight() {
        assert_eq!(MessageState::Queued.with_in_flight(true), MessageState::InFlight);
        assert_eq!(MessageState::Held.with_in_flight(true), MessageState::Held);
        assert_eq!(MessageState::Delivered.with_in_flight(true), MessageState::Delivered);
        assert_eq!(MessageState::Queued.with_in_flight(false), MessageState::Queued);
    }
}
