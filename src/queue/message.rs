//! What travels through the queue, whatever stores it: a message as a
//! producer hands it over ([`NewMessage`]) and as dispatch reads it back
//! ([`Message`]), what an attempt did to it ([`Disposition`]), how it
//! stands ([`MessageStatus`]), and the live counts dispatch and admission
//! read ([`QueueCounts`], [`Stats`]). Times are milliseconds since the Unix
//! epoch throughout ([`now_ms`]).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bytes::Bytes;
use tokio::sync::Notify;

use super::MessageState;

/// Whether `id` has the shape of a message id: 24 lowercase hex digits (a
/// journal's salt, then the sequence number). A well-formed id may still be
/// another queue's, which [`super::Queue::parse_id`] tells.
pub fn is_message_id(id: &str) -> bool {
    id.len() == 24 && id.bytes().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
}

/// The public id of message `seq` in a queue with this salt.
pub(crate) fn id_of(salt: u32, seq: u64) -> String {
    let mut id = String::with_capacity(24);
    push_hex(&mut id, &salt.to_be_bytes());
    push_hex(&mut id, &seq.to_be_bytes());
    id
}

/// Lowercase hex of `bytes`: ids, digests and key names.
pub(crate) fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(2 * bytes.len());
    push_hex(&mut s, bytes);
    s
}

// By hand, not `format!` per byte: an id is made for every accepted
// request, and formatting cost more than the rest of making the answer.
fn push_hex(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0xf)] as char);
    }
}

/// How old a message received at `received_ms` is now, in seconds; 0 for
/// none.
pub fn age_seconds(received_ms: Option<i64>) -> f64 {
    received_ms.map_or(0.0, |r| ((now_ms() - r).max(0) as f64) / 1000.0)
}

/// A queue time (ms since the epoch) as RFC 3339 text for the APIs;
/// `null` if it is out of range.
pub fn rfc3339(ms: i64) -> serde_json::Value {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000).ok();
    t.and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .map(serde_json::Value::String)
        .unwrap_or(serde_json::Value::Null)
}

/// Milliseconds since the Unix epoch; the queue's only notion of time.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A message as the producer handed it over.
#[derive(Clone, Debug)]
pub struct NewMessage {
    pub dest: String,
    pub method: String,
    /// The path after the destination segment, with its query.
    pub path: String,
    /// Headers to forward, already filtered by ingress.
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    pub idempotency_key: Option<String>,
    /// The producer is waiting for the outcome (`Prefer: wait`).
    pub wants_reply: bool,
    pub received_at: i64,
    /// Who sent it (`[[ingress.producer]]`), when producers are configured.
    pub producer: Option<String>,
    /// Its category (`[destination.handoff] category`), when it has one.
    pub category: Option<String>,
    /// The destination it was addressed to and the index of the route rule
    /// that moved it here, when a handoff route did.
    pub routed_from: Option<(String, u32)>,
    /// Its ordering key, when its destination orders by key (SPEC §14).
    pub order_key: Option<String>,
    /// What the review station asks of it, when its destination has one.
    pub review: Option<ReviewIntent>,
}

/// What the review station (SPEC §10) asks of a new message. Sampling is
/// decided by the writer, on the id it gives the message ([`sampled`]), so
/// it is deterministic per id and costs the producer nothing.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ReviewIntent {
    /// Held whatever the sampling says, and why (`predicate`, `route`).
    pub hold: Option<&'static str>,
    /// Fraction of the rest held (reason `sample`).
    pub sample: f64,
    /// Fraction delivered at once and listed for grading.
    pub audit: f64,
    /// How long a hold lasts before `on_hold_timeout`; `None`: until
    /// someone decides.
    pub hold_for_ms: Option<i64>,
}

/// Whether the message with this id falls in a sample of `rate` (a
/// fraction): a digest of `draw` and the id, read as a number in [0, 1).
/// The same id always gives the same answer; distinct draws ("sample",
/// "audit") are independent.
pub fn sampled(draw: &str, id: &str, rate: f64) -> bool {
    use sha2::{Digest, Sha256};
    if rate <= 0.0 {
        return false;
    }
    if rate >= 1.0 {
        return true;
    }
    let digest = Sha256::new()
        .chain_update(draw)
        .chain_update(b":")
        .chain_update(id)
        .finalize();
    let mut word = [0u8; 8];
    word.copy_from_slice(&digest[..8]);
    (u64::from_be_bytes(word) as f64 / 18_446_744_073_709_551_616.0) < rate
}

impl NewMessage {
    /// What an `Idempotency-Key` covers, digested: the method, the path with
    /// its query, and the body. A repeat of the key must match it to count
    /// as a repeat (the IETF Idempotency-Key draft's fingerprint).
    pub fn fingerprint(&self) -> [u8; 32] {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        // Lengths first, so that no two different triples hash alike.
        for part in [self.method.as_bytes(), self.path.as_bytes()] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part);
        }
        h.update(&self.body[..]);
        h.finalize().into()
    }
}

/// How a message a producer waits for (`Prefer: wait`) finished, as one
/// instance tells the others in cluster mode: the dispatcher that
/// delivered it may not be the instance the producer is waiting on.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    pub seq: u64,
    /// `delivered`, `dead_lettered` or `dropped`.
    pub state: String,
    pub detail: String,
    /// The downstream's last response: status, content type, body.
    pub response: Option<(u16, Option<String>, Bytes)>,
}

/// Limits the writer enforces when appending.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_messages: u64,
    pub max_bytes: u64,
    /// Idempotency keys older than this are forgotten.
    pub idempotency_window_ms: i64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Appended {
    Stored {
        seq: u64,
        /// Held for review, and why (`predicate`, `route`, `sample`).
        held: Option<&'static str>,
    },
    Duplicate {
        seq: u64,
    },
    /// The `Idempotency-Key` was seen within the window for a different
    /// request (method, path or body): nothing stored.
    KeyReused {
        seq: u64,
    },
    /// The destination's queue is at `max_messages` or `max_bytes`.
    QueueFull,
}

/// A message read back for delivery.
#[derive(Clone, Debug)]
pub struct Message {
    pub seq: u64,
    pub dest: String,
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    /// Attempts already made.
    pub attempts: u32,
    pub received_at: i64,
    pub idempotency_key: Option<String>,
    pub wants_reply: bool,
    /// Its ordering key; `None` when its destination did not order by key
    /// when it was accepted.
    pub order_key: Option<String>,
}

/// What a worker's read of its queue found. The reader hands back
/// `Due<Fetched>` (damaged rows by seq); the journal quarantines those and
/// returns `Due<Message>`.
#[derive(Debug)]
pub struct Due<M = Message> {
    /// Messages due now, in delivery order.
    pub messages: Vec<M>,
    /// When the first message not yet due becomes visible.
    pub next_due: Option<i64>,
}

/// The last failure of a message, as stored and shown to operators, and
/// the batch its last attempt went in (SPEC §16). A delivered item of a
/// batch is stored with an empty `kind`: a record of its batch, not of a
/// failure ([`MessageStatus::view`] shows it so).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LastError {
    pub kind: String,
    pub status: Option<u16>,
    pub detail: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<BatchRef>,
}

impl LastError {
    /// A failure, for the message's status (no batch in it).
    fn failure(&self) -> Option<LastError> {
        (!self.kind.is_empty()).then(|| LastError {
            batch: None,
            ..self.clone()
        })
    }
}

/// The batch an item's last attempt went in (SPEC §16).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BatchRef {
    /// Unique per downstream request; the halves of a split batch have ids
    /// of their own.
    pub id: String,
    pub size: u32,
    /// The item's place in the request, from 0.
    pub position: u32,
    /// What the downstream answered the whole request; none for no answer
    /// (a timeout, a refused connection).
    pub status: Option<u16>,
    /// The item's own outcome: `delivered`, or its failure's kind.
    pub outcome: String,
}

/// The outcome of one message's attempt, for [`super::Queue::settle_many`].
#[derive(Clone, Debug)]
pub struct Settlement {
    pub seq: u64,
    /// The new total of attempts.
    pub attempts: u32,
    pub last_error: Option<LastError>,
    pub disposition: Disposition,
}

/// How a message ends up, for commands that finish or move it.
#[derive(Clone, Debug)]
pub enum Disposition {
    /// Delivered. `keep_body`: the producer's body stays until
    /// `history_retention` (a destination under review: late feedback can
    /// still correct it, and its correction is exported beside it).
    Delivered {
        keep_body: bool,
    },
    Reschedule {
        visible_at: i64,
    },
    /// Halt mode on a key-ordered destination: the message stays pending,
    /// due at once, and its key is recorded as halted, in the same commit,
    /// until an operator resumes it (`release_key`).
    HaltKey {
        key: String,
        reason: String,
    },
    DeadLetter {
        reason: String,
    },
    Dropped {
        reason: String,
    },
    Quarantined {
        reason: String,
    },
}

/// A key of a key-ordered destination that halt mode stopped: the message
/// it stopped on, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HaltedKey {
    pub dest: String,
    pub key: String,
    pub seq: u64,
    pub reason: String,
}

/// Per-destination persisted state (paused, halted, ...).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DestinationRecord {
    pub state: String,
    pub reason: String,
    pub head_seq: Option<u64>,
    /// Where this record stands among the writes to it: a record read
    /// with a lower revision than one already written or applied is older
    /// (a replica that had not caught up) and must not replace it. 0 on a
    /// backend whose reads always see the latest write.
    pub revision: u64,
}

/// Live counts for one destination, exact after every commit, plus the
/// wake-ups dispatch and blocked producers wait on.
#[derive(Debug, Default)]
pub struct QueueCounts {
    pub depth: AtomicU64,
    pub bytes: AtomicU64,
    pub dead_letters: AtomicU64,
    /// Of `depth`, held for a review decision.
    pub held: AtomicU64,
    /// Review items (held and audit) with no decision yet.
    pub open_reviews: AtomicU64,
    /// Signalled after a commit that made messages deliverable.
    pub ready: Notify,
    /// Signalled after a commit that freed room in the queue.
    pub room: Notify,
}

/// Storage-wide counters for metrics, readiness and admission.
#[derive(Debug, Default)]
pub struct Stats {
    pub fsyncs: AtomicU64,
    pub disk_bytes: AtomicU64,
    pub corrupt_records: AtomicU64,
    pub max_disk: AtomicU64,
    pub open: AtomicBool,
    /// The filesystem is below its free-space reserve: appends are refused.
    pub low_space: AtomicBool,
    /// Set when the storage reported corruption while running: tidegate
    /// stops, so that the next start checks it.
    pub poisoned: AtomicBool,
    /// Signalled when `poisoned` is set.
    pub poison: Notify,
    /// The shared storage cannot be reached now (cluster mode): not ready.
    pub unreachable: AtomicBool,
}

impl Stats {
    /// Marks the storage as poisoned by corruption seen while running;
    /// true the first time only (the caller records and logs it once).
    pub fn poison(&self) -> bool {
        let first = !self.poisoned.swap(true, Ordering::SeqCst);
        if first {
            self.corrupt_records.fetch_add(1, Ordering::Relaxed);
        }
        self.poison.notify_waiters();
        first
    }
}

/// What `GET /v1/messages/{id}` shows of a message.
#[derive(Clone, Debug)]
pub struct MessageStatus {
    pub seq: u64,
    pub dest: String,
    /// As stored: never `InFlight` (only the dispatcher knows that; see
    /// [`MessageState::with_in_flight`]).
    pub state: MessageState,
    pub visible_at: i64,
    pub attempts: u32,
    pub received_at: i64,
    pub finished_at: Option<i64>,
    pub last_error: Option<LastError>,
    pub reason: Option<String>,
    pub producer: Option<String>,
    pub category: Option<String>,
    /// The destination it was addressed to and the route rule's index.
    pub routed_from: Option<(String, u32)>,
    pub order_key: Option<String>,
}

impl MessageStatus {
    /// The message as `GET /v1/messages/{id}` answers it, on the admin
    /// listener and (for its own producer) on ingress: `in_flight` when the
    /// dispatcher is attempting it now.
    pub fn view(&self, id: &str, in_flight: bool) -> serde_json::Value {
        use serde_json::Value;
        let state = self.state.with_in_flight(in_flight);
        serde_json::json!({
            "id": id,
            "destination": self.dest,
            "state": state.as_str(),
            "attempts": self.attempts,
            "received_at": rfc3339(self.received_at),
            "delivered_at": match (state, self.finished_at) {
                (MessageState::Delivered, Some(at)) => rfc3339(at),
                _ => Value::Null,
            },
            "next_attempt_at": if state == MessageState::Scheduled { rfc3339(self.visible_at) } else { Value::Null },
            "last_error": self.last_error.as_ref().and_then(LastError::failure),
            "batch": self.last_error.as_ref().and_then(|e| e.batch.as_ref()),
            "reason": self.reason,
            "producer": self.producer,
            "category": self.category,
            "routed_from": self.routed_from.as_ref().map(|r| &r.0),
            "route_rule": self.routed_from.as_ref().map(|r| r.1),
            "ordering_key": self.order_key,
        })
    }
}

/// A dead letter as operators list it (no body).
#[derive(Clone, Debug)]
pub struct DeadLetter {
    pub seq: u64,
    pub reason: String,
    pub attempts: u32,
    pub last_error: Option<LastError>,
    pub received_at: i64,
    pub dead_lettered_at: i64,
    pub size_bytes: u64,
}

/// A queued message as the console lists it (no body).
#[derive(Clone, Debug)]
pub struct Queued {
    pub seq: u64,
    pub received_at: i64,
    pub visible_at: i64,
    pub attempts: u32,
    pub last_error: Option<LastError>,
    pub size_bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::{hex, id_of, is_message_id};

    #[test]
    fn an_id_is_the_salt_then_the_sequence_number_in_fixed_width_lowercase_hex() {
        for (salt, seq) in [(0, 0), (0xdead_beef, 0x1234), (u32::MAX, u64::MAX), (7, 1 << 40)] {
            let id = id_of(salt, seq);
            assert_eq!(id, format!("{salt:08x}{seq:016x}"));
            assert!(is_message_id(&id), "{id}");
        }
        assert_eq!(hex(&[0x00, 0x0f, 0xa0, 0xff]), "000fa0ff");
        assert_eq!(hex(&[]), "");
    }
}
