//! The queue's contract: a small core trait that every caller needs
//! ([`Queue`]: append, hand out, settle), and capability traits for the
//! rest ([`Operations`] for operators and dispatch's records,
//! [`ReviewStore`] for the review station, [`AuditLog`] for the record of
//! who did what, [`Cluster`] for instances that share one queue).
//! [`Backend`] is all five; callers hold one as
//! [`Queues`]. The model is apalis' backend traits: one contract, several
//! storages, one behaviour suite run against each (`tests/queue_contract.rs`).
//!
//! Contracts every implementation keeps:
//! - `append` answers `Stored` only once the message is durable (a crash
//!   after the answer loses nothing), and never half-stores: an error means
//!   nothing was kept.
//! - A message handed out by `fetch_ready` is the caller's until it is
//!   settled or given back (`give_back`); a crash makes it deliverable
//!   again (at-least-once).
//! - Counts (`queue`) are exact after each of this process's own changes,
//!   and the `ready` and `room` wake-ups fire after changes that make
//!   messages deliverable or free room.
//! - A decision (`decide`) is recorded with the change it makes to its held
//!   message, atomically; the first decision on an item wins.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use async_trait::async_trait;

use super::audit::{Act, Entry, Filter};
use super::review::{Decided, Decision, Item, Tally};
use super::{
    Appended, DeadLetter, DestinationRecord, Disposition, Due, HaltedKey, LastError, Limits, Message, MessageState,
    MessageStatus, NewMessage, Outcome, QueueCounts, Queued, Result, Settlement, Stats,
};

/// The queue every caller holds; cheap to clone.
pub type Queues = Arc<dyn Backend>;

/// Every capability of a queue backend, as one object.
pub trait Backend: Queue + Operations + ReviewStore + AuditLog + Cluster {}
impl<T: Queue + Operations + ReviewStore + AuditLog + Cluster> Backend for T {}

/// What ingress and dispatch need: identity, counts, append, hand-out and
/// settlement.
#[async_trait]
pub trait Queue: Send + Sync + 'static {
    /// The public id of message `seq` (24 hex digits).
    fn message_id(&self, seq: u64) -> String;
    /// The seq behind an id of this queue; `None` for another queue's id.
    fn parse_id(&self, id: &str) -> Option<u64>;
    /// Live counts and wake-ups for `dest`, created empty on first use.
    fn queue(&self, dest: &str) -> Arc<QueueCounts>;
    /// The destinations that have messages stored.
    fn known_destinations(&self) -> Vec<String>;
    /// Storage-wide counters for metrics and readiness.
    fn stats(&self) -> &Arc<Stats>;

    /// Makes a message durable (see the module's contracts).
    async fn append(&self, msg: Arc<NewMessage>, limits: Limits) -> Result<Appended>;

    /// Up to `limit` deliverable messages of `dest` (visible now), in
    /// (visible_at, seq) order, skipping `exclude` (the seqs already in
    /// flight, asked once the read has begun: one let go before then must
    /// not be skipped). Damaged messages are quarantined on the way, never
    /// returned. Also says when the next message not yet due becomes
    /// visible, so a worker with nothing to do knows how long to sleep.
    ///
    /// A hand-out, not a look: each message returned must be settled or
    /// given back (`give_back`).
    async fn fetch_ready(&self, dest: &str, limit: usize, exclude: &(dyn Fn() -> Vec<u64> + Sync)) -> Result<Due>;

    /// Up to `limit` messages of a key-ordered `dest` that may be attempted
    /// now: the oldest pending message of each key, when it is due, its key
    /// is not `halted`, and no message of its key is in flight (`exclude`;
    /// one in flight is pending, so it is its key's head and hides the
    /// rest). A message without a key (accepted before the destination
    /// ordered by key) is a key of its own. Heads are taken oldest first
    /// from a window at the front of the queue and, past it, key by key
    /// round robin from after `after`; also returned: where the next
    /// fetch's round starts (and, in the `Due`, when the first head not yet
    /// due becomes visible).
    ///
    /// A look, not a hand-out: nothing needs giving back.
    async fn fetch_keyed(
        &self,
        dest: &str,
        limit: usize,
        exclude: HashSet<u64>,
        halted: HashSet<String>,
        after: String,
    ) -> Result<(Due, String)>;

    /// The oldest pending message of `dest`, visible or not, and its
    /// `visible_at` (FIFO and the degraded probe).
    async fn head(&self, dest: &str) -> Result<Option<(Message, i64)>>;

    /// The caller let go of messages `fetch_ready` gave it while they are
    /// still pending (unattempted, or released after an attempt that did
    /// not finish them); called after their leases are gone, so that the
    /// next read sees them.
    fn give_back(&self, dest: &str);

    /// Records the outcome of an attempt: `attempts` is the new total.
    async fn settle(
        &self,
        seq: u64,
        dest: &str,
        attempts: u32,
        last_error: Option<LastError>,
        disposition: Disposition,
    ) -> Result<()>;

    /// Records the outcomes of the messages of one downstream request (a
    /// batch, SPEC §16), all of `dest`. A backend that can commits them
    /// together; this one settles them in turn. On an error some may be
    /// recorded and the rest not: those stay pending, and are delivered
    /// again (at-least-once).
    async fn settle_many(&self, dest: &str, items: Vec<Settlement>) -> Result<()> {
        for s in items {
            self.settle(s.seq, dest, s.attempts, s.last_error, s.disposition)
                .await?;
        }
        Ok(())
    }

    /// Flushes and closes; blocking (call it off the runtime's workers).
    fn close(&self);
}

/// What operators and dispatch's durable records need: dead letters,
/// message status, the queue's front, destination records and halted
/// keys, and the history sweep.
#[async_trait]
pub trait Operations: Send + Sync + 'static {
    /// Every halted key, of every destination.
    async fn halted_keys(&self) -> Result<Vec<HaltedKey>>;
    /// Lets a halted key go (`Disposition::HaltKey`): its head is delivered
    /// again, or, with `skip_head`, dead-lettered (`skipped_by_operator`)
    /// in the same change. The halted head's seq; `None` if the key was not
    /// halted.
    async fn release_key(&self, dest: &str, key: &str, skip_head: bool) -> Result<Option<u64>>;
    /// Every destination's saved state (paused, halted...).
    async fn destination_records(&self) -> Result<HashMap<String, DestinationRecord>>;
    /// Saves `record` (its `revision` is ignored); returns the revision
    /// the write got.
    async fn set_destination_record(&self, dest: &str, record: DestinationRecord) -> Result<u64>;

    /// Dead letters back into the queue as fresh attempts; `None` = all.
    /// Reviewer rejections stay where they are.
    async fn replay(&self, dest: &str, seqs: Option<Vec<u64>>) -> Result<u64>;
    async fn purge_dead_letters(&self, dest: &str) -> Result<u64>;
    /// Up to `limit` dead letters of `dest`, oldest first, after `after`.
    async fn dead_letters(&self, dest: &str, after: Option<u64>, limit: usize) -> Result<Vec<DeadLetter>>;
    /// One message's state, while it is stored or within its history.
    async fn status(&self, seq: u64) -> Result<Option<MessageStatus>>;
    /// The first `limit` messages waiting in `dest`'s queue, oldest first.
    async fn queued(&self, dest: &str, limit: usize) -> Result<Vec<Queued>>;
    /// When `dest`'s oldest pending message was received.
    async fn oldest_pending(&self, dest: &str) -> Result<Option<i64>>;
    /// `(received_at of the oldest pending message, scheduled count)`.
    async fn queue_detail(&self, dest: &str) -> Result<(Option<i64>, u64)>;
    /// Deletes history older than `retention_ms` and review records older
    /// than `review_retention_ms`; returns the history rows deleted (call
    /// again while it answers a full chunk).
    async fn sweep(&self, retention_ms: i64, review_retention_ms: i64) -> Result<u64>;
}

/// What the review station needs: decisions recorded with the change they
/// make to their held message, hold timeouts, and the items and tallies.
#[async_trait]
pub trait ReviewStore: Send + Sync + 'static {
    /// Records a decision or feedback on message `seq`, durably, with the
    /// change it makes to a held message (`Decided` says which).
    async fn decide(&self, seq: u64, decision: Decision) -> Result<Decided>;
    /// Ends the holds of `dest` that timed out by `now` (at most a chunk;
    /// call again while it answers a full one).
    async fn expire_holds(&self, dest: &str, deliver: bool, now: i64) -> Result<u64>;
    async fn review_item(&self, seq: u64) -> Result<Option<Item>>;
    /// The producer's body of delivered message `seq`, when its
    /// destination kept it for late feedback
    /// (`Disposition::Delivered { keep_body }`) and history has not swept
    /// it.
    async fn kept_body(&self, seq: u64) -> Result<Option<bytes::Bytes>>;
    /// Review items awaiting a decision, oldest first.
    async fn open_reviews(
        &self,
        dest: Option<String>,
        category: Option<String>,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Item>>;
    /// When `dest`'s oldest open review item was received.
    async fn oldest_open_review(&self, dest: &str) -> Result<Option<i64>>;
    /// Decisions since `since` (ms), by destination and category.
    async fn review_tallies(&self, dest: Option<String>, since: i64) -> Result<Vec<((String, String), Tally)>>;
    /// Decisions since `since` (ms), by destination, category and reviewer
    /// (holds that timed out have none and are left out).
    async fn reviewer_tallies(
        &self,
        dest: Option<String>,
        since: i64,
    ) -> Result<Vec<(crate::queue::review::ReviewerKey, Tally)>>;
    /// One destination and category's decisions since `since` (ms).
    async fn review_tally(&self, dest: &str, category: &str, since: i64) -> Result<Tally>;
    /// Messages received since `since` (ms): `(dest, category, state, n)`.
    async fn volumes(&self, dest: Option<String>, since: i64) -> Result<Vec<(String, String, MessageState, u64)>>;
    /// Edits and overrides decided since `since` (ms), after seq `after`.
    async fn corrections(&self, dest: Option<String>, since: i64, after: u64, limit: usize) -> Result<Vec<Item>>;
}

/// The audit trail (SPEC §18, `super::audit`).
#[async_trait]
pub trait AuditLog: Send + Sync + 'static {
    /// Records `act` durably: once this answers, a crash does not lose it.
    async fn record_act(&self, act: Act) -> Result<()>;
    /// The acts `filter` asks for, oldest first.
    async fn acts(&self, filter: Filter) -> Result<Vec<Entry>>;
    /// Forgets acts older than `before` (ms); how many went (a chunk at a
    /// time: call again while it answers a full one). A backend whose
    /// storage ages them out by itself answers 0.
    async fn sweep_acts(&self, before: i64) -> Result<u64>;
}

/// What instances sharing one queue (cluster mode) tell each other. A
/// queue of one process keeps the defaults: nothing to share.
#[async_trait]
pub trait Cluster: Send + Sync + 'static {
    /// Whether other processes change this queue too: then destination
    /// records (pause, resume) are followed, not only written.
    fn shared(&self) -> bool {
        false
    }
    /// Whether this process may start an attempt on `dest` now: always on
    /// a queue of its own; in cluster mode, only while it holds the
    /// destination's lease (checked before each attempt, so one that lost
    /// it does not go on with messages it fetched before).
    fn may_dispatch(&self, _dest: &str) -> bool {
        true
    }
    /// Tells the other instances how a message a producer may be waiting
    /// for finished (best effort: a producer that misses it gets the 202
    /// `Prefer: wait` gives when the wait runs out).
    fn announce_outcome(&self, _outcome: Outcome) {}
    /// The outcomes other instances announce; taken once, by the dispatcher.
    fn outcomes(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<Outcome>> {
        None
    }
    /// Tells the other instances that this one reloaded its configuration
    /// (at most once, best effort).
    async fn announce_reload(&self) {}
    /// Signalled when another instance announced a reload.
    fn reload_asked(&self) -> Option<Arc<tokio::sync::Notify>> {
        None
    }
    /// Returns once the instance that dispatches `dest` has applied the
    /// destination record this one just wrote (a pause is then in force
    /// everywhere: SPEC §17), or cannot be dispatching any more (its lease
    /// is past `LEASE_SAFE`). At once when this instance dispatches it, or
    /// nobody does.
    async fn announce_state(&self, _dest: &str) {}
    /// Asks from other instances (and from this one's lease, when it takes
    /// a destination) to apply a destination's record now; each is
    /// answered once applied. Taken once, by the dispatcher.
    fn state_asked(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<StateAsked>> {
        None
    }
}

/// An ask to apply destination `0`'s record; `1` is answered once it is.
pub type StateAsked = (String, tokio::sync::oneshot::Sender<()>);
