//! The queue as its callers see it: the one trait that ingress, dispatch,
//! the review station, admin, the console and reload hold (as
//! [`Queues`]), whatever stores the messages underneath.
//!
//! It was written from what those callers call, not from what a storage
//! can do: appending (ingress), handing out and settling what is due
//! (dispatch, with its per-key and head-of-line variants), the review
//! station's decisions and holds, and the read-only views of admin and the
//! console. The SQLite journal ([`Journal`]) implements it; so does the
//! JetStream backend of cluster mode (SPEC §13).
//!
//! Contracts every implementation keeps, which the shared behaviour tests
//! check against each:
//! - `append` answers `Stored` only once the message is durable (a crash
//!   after the answer loses nothing), and never half-stores: an error means
//!   nothing was kept.
//! - A message handed out by `fetch_ready` is the caller's until it is
//!   settled or given back (`give_back`); a crash makes it deliverable
//!   again (at-least-once).
//! - Counts (`queue`) are exact after each of this process's own changes,
//!   and the `ready` and `room` wake-ups fire after changes that make
//!   messages deliverable or free room.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use async_trait::async_trait;

use super::review;
use super::{
    Appended, DeadLetter, DestinationRecord, Disposition, Due, HaltedKey, Journal, JournalStats, LastError, Limits,
    Message, MessageStatus, NewMessage, Outcome, QueueCounts, Queued, Result,
};

/// The queue every caller holds; cheap to clone.
pub type Queues = Arc<dyn Queue>;

/// See the module documentation. Method by method, the SQLite journal's
/// inherent methods of the same names say what each does in detail.
#[async_trait]
pub trait Queue: Send + Sync + 'static {
    // Identity and counts.

    /// The public id of message `seq` (24 hex digits).
    fn message_id(&self, seq: u64) -> String;
    /// The seq behind an id of this queue; `None` for another queue's id.
    fn parse_id(&self, id: &str) -> Option<u64>;
    /// Live counts and wake-ups for `dest`, created empty on first use.
    fn queue(&self, dest: &str) -> Arc<QueueCounts>;
    /// The destinations that have messages stored.
    fn known_destinations(&self) -> Vec<String>;
    /// Storage-wide counters for metrics and readiness.
    fn stats(&self) -> &Arc<JournalStats>;
    /// Whether other processes change this queue too (cluster mode): then
    /// destination records (pause, resume) are followed, not only written.
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
    /// for finished (cluster mode; best effort: a producer that misses it
    /// gets the 202 `Prefer: wait` gives when the wait runs out).
    fn announce_outcome(&self, _outcome: Outcome) {}
    /// The outcomes other instances announce; taken once, by the dispatcher.
    fn outcomes(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<Outcome>> {
        None
    }
    /// Tells the other instances sharing this queue that this one reloaded
    /// its configuration (cluster mode; at most once, best effort).
    async fn announce_reload(&self) {}
    /// Signalled when another instance announced a reload.
    fn reload_asked(&self) -> Option<Arc<tokio::sync::Notify>> {
        None
    }

    // Ingress.

    /// Makes a message durable (see the module's contracts).
    async fn append(&self, msg: Arc<NewMessage>, limits: Limits) -> Result<Appended>;

    // Dispatch.

    /// Up to `limit` deliverable messages, skipping `exclude` (asked once
    /// the read has begun); each must be settled or given back.
    async fn fetch_ready(&self, dest: &str, limit: usize, exclude: &(dyn Fn() -> Vec<u64> + Sync)) -> Result<Due>;
    /// The heads of a key-ordered destination's keys that may be attempted
    /// now, and where the next round starts.
    async fn fetch_keyed(
        &self,
        dest: &str,
        limit: usize,
        exclude: HashSet<u64>,
        halted: HashSet<String>,
        after: String,
    ) -> Result<(Due, String)>;
    /// The oldest pending message of `dest` and its `visible_at` (FIFO).
    async fn head(&self, dest: &str) -> Result<Option<(Message, i64)>>;
    /// Messages handed out and still pending are let go.
    fn give_back(&self, dest: &str);
    /// The outcome of an attempt; `attempts` is the new total.
    async fn settle(
        &self,
        seq: u64,
        dest: &str,
        attempts: u32,
        last_error: Option<LastError>,
        disposition: Disposition,
    ) -> Result<()>;
    async fn halted_keys(&self) -> Result<Vec<HaltedKey>>;
    async fn release_key(&self, dest: &str, key: &str, skip_head: bool) -> Result<Option<u64>>;
    async fn destination_records(&self) -> Result<HashMap<String, DestinationRecord>>;
    async fn set_destination_record(&self, dest: &str, record: DestinationRecord) -> Result<()>;

    // Operators: dead letters, status, the queue's front.

    async fn replay(&self, dest: &str, seqs: Option<Vec<u64>>) -> Result<u64>;
    async fn purge_dead_letters(&self, dest: &str) -> Result<u64>;
    async fn dead_letters(&self, dest: &str, after: Option<u64>, limit: usize) -> Result<Vec<DeadLetter>>;
    async fn status(&self, seq: u64) -> Result<Option<MessageStatus>>;
    async fn queued(&self, dest: &str, limit: usize) -> Result<Vec<Queued>>;
    async fn oldest_pending(&self, dest: &str) -> Result<Option<i64>>;
    async fn queue_detail(&self, dest: &str) -> Result<(Option<i64>, u64)>;
    /// Deletes history and review records past their retentions.
    async fn sweep(&self, retention_ms: i64, review_retention_ms: i64) -> Result<u64>;

    // The review station.

    async fn decide(&self, seq: u64, decision: review::Decision) -> Result<review::Decided>;
    async fn expire_holds(&self, dest: &str, deliver: bool, now: i64) -> Result<u64>;
    async fn review_item(&self, seq: u64) -> Result<Option<review::Item>>;
    async fn open_reviews(
        &self,
        dest: Option<String>,
        category: Option<String>,
        after: u64,
        limit: usize,
    ) -> Result<Vec<review::Item>>;
    async fn oldest_open_review(&self, dest: &str) -> Result<Option<i64>>;
    async fn review_tallies(&self, dest: Option<String>, since: i64) -> Result<Vec<((String, String), review::Tally)>>;
    async fn review_tally(&self, dest: &str, category: &str, since: i64) -> Result<review::Tally>;
    async fn volumes(&self, dest: Option<String>, since: i64) -> Result<Vec<(String, String, i64, u64)>>;
    async fn corrections(
        &self,
        dest: Option<String>,
        since: i64,
        after: u64,
        limit: usize,
    ) -> Result<Vec<review::Item>>;

    /// Flushes and closes; blocking (call it off the runtime's workers).
    fn close(&self);
}

/// The SQLite journal behind the trait: each method is the inherent one of
/// the same name (inherent methods win over trait methods, so `Journal::x`
/// below never recurses).
#[async_trait]
impl Queue for Journal {
    fn message_id(&self, seq: u64) -> String {
        Journal::message_id(self, seq)
    }
    fn parse_id(&self, id: &str) -> Option<u64> {
        Journal::parse_id(self, id)
    }
    fn queue(&self, dest: &str) -> Arc<QueueCounts> {
        Journal::queue(self, dest)
    }
    fn known_destinations(&self) -> Vec<String> {
        Journal::known_destinations(self)
    }
    fn stats(&self) -> &Arc<JournalStats> {
        Journal::stats(self)
    }
    async fn append(&self, msg: Arc<NewMessage>, limits: Limits) -> Result<Appended> {
        Journal::append(self, msg, limits).await
    }
    async fn fetch_ready(&self, dest: &str, limit: usize, exclude: &(dyn Fn() -> Vec<u64> + Sync)) -> Result<Due> {
        Journal::fetch_ready(self, dest, limit, exclude).await
    }
    async fn fetch_keyed(
        &self,
        dest: &str,
        limit: usize,
        exclude: HashSet<u64>,
        halted: HashSet<String>,
        after: String,
    ) -> Result<(Due, String)> {
        Journal::fetch_keyed(self, dest, limit, exclude, halted, after).await
    }
    async fn head(&self, dest: &str) -> Result<Option<(Message, i64)>> {
        Journal::head(self, dest).await
    }
    fn give_back(&self, dest: &str) {
        Journal::give_back(self, dest)
    }
    async fn settle(
        &self,
        seq: u64,
        dest: &str,
        attempts: u32,
        last_error: Option<LastError>,
        disposition: Disposition,
    ) -> Result<()> {
        Journal::settle(self, seq, dest, attempts, last_error, disposition).await
    }
    async fn halted_keys(&self) -> Result<Vec<HaltedKey>> {
        Journal::halted_keys(self).await
    }
    async fn release_key(&self, dest: &str, key: &str, skip_head: bool) -> Result<Option<u64>> {
        Journal::release_key(self, dest, key, skip_head).await
    }
    async fn destination_records(&self) -> Result<HashMap<String, DestinationRecord>> {
        Journal::destination_records(self).await
    }
    async fn set_destination_record(&self, dest: &str, record: DestinationRecord) -> Result<()> {
        Journal::set_destination_record(self, dest, record).await
    }
    async fn replay(&self, dest: &str, seqs: Option<Vec<u64>>) -> Result<u64> {
        Journal::replay(self, dest, seqs).await
    }
    async fn purge_dead_letters(&self, dest: &str) -> Result<u64> {
        Journal::purge_dead_letters(self, dest).await
    }
    async fn dead_letters(&self, dest: &str, after: Option<u64>, limit: usize) -> Result<Vec<DeadLetter>> {
        Journal::dead_letters(self, dest, after, limit).await
    }
    async fn status(&self, seq: u64) -> Result<Option<MessageStatus>> {
        Journal::status(self, seq).await
    }
    async fn queued(&self, dest: &str, limit: usize) -> Result<Vec<Queued>> {
        Journal::queued(self, dest, limit).await
    }
    async fn oldest_pending(&self, dest: &str) -> Result<Option<i64>> {
        Journal::oldest_pending(self, dest).await
    }
    async fn queue_detail(&self, dest: &str) -> Result<(Option<i64>, u64)> {
        Journal::queue_detail(self, dest).await
    }
    async fn sweep(&self, retention_ms: i64, review_retention_ms: i64) -> Result<u64> {
        Journal::sweep(self, retention_ms, review_retention_ms).await
    }
    async fn decide(&self, seq: u64, decision: review::Decision) -> Result<review::Decided> {
        Journal::decide(self, seq, decision).await
    }
    async fn expire_holds(&self, dest: &str, deliver: bool, now: i64) -> Result<u64> {
        Journal::expire_holds(self, dest, deliver, now).await
    }
    async fn review_item(&self, seq: u64) -> Result<Option<review::Item>> {
        Journal::review_item(self, seq).await
    }
    async fn open_reviews(
        &self,
        dest: Option<String>,
        category: Option<String>,
        after: u64,
        limit: usize,
    ) -> Result<Vec<review::Item>> {
        Journal::open_reviews(self, dest, category, after, limit).await
    }
    async fn oldest_open_review(&self, dest: &str) -> Result<Option<i64>> {
        Journal::oldest_open_review(self, dest).await
    }
    async fn review_tallies(&self, dest: Option<String>, since: i64) -> Result<Vec<((String, String), review::Tally)>> {
        Journal::review_tallies(self, dest, since).await
    }
    async fn review_tally(&self, dest: &str, category: &str, since: i64) -> Result<review::Tally> {
        Journal::review_tally(self, dest, category, since).await
    }
    async fn volumes(&self, dest: Option<String>, since: i64) -> Result<Vec<(String, String, i64, u64)>> {
        Journal::volumes(self, dest, since).await
    }
    async fn corrections(
        &self,
        dest: Option<String>,
        since: i64,
        after: u64,
        limit: usize,
    ) -> Result<Vec<review::Item>> {
        Journal::corrections(self, dest, since, after, limit).await
    }
    fn close(&self) {
        Journal::close(self)
    }
}
