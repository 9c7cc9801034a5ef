//! The tail of one destination's queue, kept in memory for its worker.
//!
//! A worker that keeps up with its producers reads back, moments after each
//! commit, the messages it has just seen written: a read transaction, an
//! index scan and a row read per message, on a blocking thread. The tail
//! spares that. Once a read of the journal finds nothing due that is not
//! already leased, and nothing scheduled, every message that will become
//! deliverable next is a new append; the writer hands those over here as it
//! commits them, and the worker takes them from memory.
//!
//! The journal stays the truth. Invariant: while the tail is *caught up*,
//! every pending message of the destination is either taken (leased by the
//! worker), in the tail, or was appended after the read whose snapshot
//! ended at `floor` and is being offered; and everything in the tail is
//! pending and untouched since its append. Whatever breaks that calls
//! `stop`, and the worker reads the journal until it catches up afresh:
//! a replay makes dead letters pending (the writer); a message the worker
//! took goes back still pending, unattempted or after a retry, a halt or
//! an outcome it could not record (the worker, once its lease is gone, so
//! that the next read does not skip it as leased); a settle of a message
//! the tail still holds (the writer); a read of the queue another way, the
//! serial head, which may be a message the tail holds too.
//!
//! The tail is bounded: a worker that falls behind overflows it, which
//! stops it; bodies stay on disk while a backlog builds, as before. A
//! worker that is not delivering from its queue (paused, halted, serial)
//! stops it too, so it holds nothing then.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use crate::queue::{Message, NewMessage};

/// Most messages the tail holds before it gives up and the worker reads
/// the journal instead.
const MAX_MESSAGES: usize = 1024;
/// Most body bytes it holds.
const MAX_BYTES: usize = 4 << 20;

#[derive(Debug, Default)]
pub struct Tail {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// The writer offers appends (a read to catch up has begun).
    following: bool,
    /// A read found nothing due beyond the leased: the tail is complete.
    caught_up: bool,
    /// The highest seq the catching-up read could see; offers at or below
    /// it were in that read.
    floor: u64,
    held: VecDeque<(u64, Arc<NewMessage>)>,
    bytes: usize,
}

impl State {
    fn stop(&mut self) {
        self.following = false;
        self.caught_up = false;
        self.held.clear();
        self.bytes = 0;
    }
}

impl Tail {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The writer, after committing an append of `dest`.
    pub(crate) fn offer(&self, seq: u64, msg: &Arc<NewMessage>) {
        let mut s = self.lock();
        // At or below the floor: the catching-up read saw it, so it was
        // either handed out then or leased already. The writer offers after
        // its commit, and a read may have begun in between.
        if !s.following || (s.caught_up && seq <= s.floor) {
            return;
        }
        if s.held.len() >= MAX_MESSAGES || s.bytes + msg.body.len() > MAX_BYTES {
            s.stop();
            return;
        }
        s.bytes += msg.body.len();
        s.held.push_back((seq, msg.clone()));
    }

    /// Something other than an append made a message pending, or a message
    /// the tail handed out went back: the worker must read the journal.
    pub(crate) fn stop(&self) {
        self.lock().stop();
    }

    /// The writer, after committing a settle of `seq`. A message is settled
    /// by the worker once it took it, so the tail does not hold it; if it
    /// does (an operator's command, or a caller outside the worker's
    /// protocol), its copy is stale and the tail stops.
    pub(crate) fn settled(&self, seq: u64) {
        let mut s = self.lock();
        // Offers come from one writer in commit order: `held` is sorted.
        if s.held.binary_search_by_key(&seq, |(held, _)| *held).is_ok() {
            s.stop();
        }
    }

    /// Up to `limit` new messages, oldest first, if the tail is caught up;
    /// `None` if the worker must read the journal.
    pub(crate) fn take(&self, limit: usize) -> Option<Vec<Message>> {
        let mut s = self.lock();
        if !s.caught_up {
            return None;
        }
        let n = limit.min(s.held.len());
        let taken: Vec<_> = s.held.drain(..n).collect();
        s.bytes -= taken.iter().map(|(_, m)| m.body.len()).sum::<usize>();
        drop(s);
        Some(taken.into_iter().map(|(seq, m)| fresh(seq, &m)).collect())
    }

    /// Before a read of the journal: from now on, keep what is appended.
    pub(crate) fn begin_read(&self) {
        let mut s = self.lock();
        s.stop();
        s.following = true;
    }

    /// After that read, whose snapshot held seqs up to `last_seq`:
    /// `caught_up` if it found nothing due that was not leased and nothing
    /// scheduled. Unless stopped meanwhile, the tail is then complete.
    pub(crate) fn end_read(&self, last_seq: u64, caught_up: bool) {
        let mut s = self.lock();
        if !s.following {
            return;
        }
        if !caught_up {
            s.stop();
            return;
        }
        s.caught_up = true;
        s.floor = last_seq;
        while s.held.front().is_some_and(|(seq, _)| *seq <= last_seq) {
            if let Some((_, m)) = s.held.pop_front() {
                s.bytes -= m.body.len();
            }
        }
    }
}

/// A message as the worker gets it from the journal, before any attempt.
fn fresh(seq: u64, m: &NewMessage) -> Message {
    Message {
        seq,
        dest: m.dest.clone(),
        method: m.method.clone(),
        path: m.path.clone(),
        headers: m.headers.clone(),
        body: m.body.clone(),
        attempts: 0,
        received_at: m.received_at,
        idempotency_key: m.idempotency_key.clone(),
        wants_reply: m.wants_reply,
        order_key: m.order_key.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(body: usize) -> Arc<NewMessage> {
        Arc::new(NewMessage {
            dest: "d".into(),
            method: "POST".into(),
            path: "/x".into(),
            headers: vec![("content-type".into(), "application/json".into())],
            body: bytes::Bytes::from(vec![b'x'; body]),
            idempotency_key: None,
            wants_reply: false,
            producer: None,
            category: None,
            routed_from: None,
            order_key: None,
            review: None,
            received_at: 7,
        })
    }

    /// A tail whose catching-up read saw seqs up to 0.
    fn caught_up() -> Tail {
        let t = Tail::default();
        t.begin_read();
        t.end_read(0, true);
        t
    }

    fn seqs(t: &Tail) -> Option<Vec<u64>> {
        t.take(usize::MAX).map(|v| v.into_iter().map(|m| m.seq).collect())
    }

    #[test]
    fn nothing_is_kept_until_a_read_begins_and_nothing_is_handed_out_until_it_catches_up() {
        let t = Tail::default();
        t.offer(1, &msg(10));
        assert_eq!(seqs(&t), None);
        t.begin_read();
        t.offer(2, &msg(10));
        assert_eq!(seqs(&t), None, "not caught up yet");
        t.end_read(1, true);
        assert_eq!(seqs(&t), Some(vec![2]));
        assert_eq!(seqs(&t), Some(vec![]));
    }

    #[test]
    fn offers_the_read_already_saw_are_dropped() {
        let t = Tail::default();
        t.begin_read();
        for seq in 1..=4 {
            t.offer(seq, &msg(10));
        }
        t.end_read(2, true);
        assert_eq!(seqs(&t), Some(vec![3, 4]));
    }

    #[test]
    fn an_offer_the_catching_up_read_already_saw_is_dropped_even_when_late() {
        let t = Tail::default();
        t.begin_read();
        t.end_read(5, true);
        t.offer(5, &msg(10));
        t.offer(6, &msg(10));
        assert_eq!(seqs(&t), Some(vec![6]));
    }

    #[test]
    fn a_read_that_found_work_or_a_stop_meanwhile_leaves_it_off() {
        let t = Tail::default();
        t.begin_read();
        t.offer(1, &msg(10));
        t.end_read(0, false);
        assert_eq!(seqs(&t), None);
        t.offer(2, &msg(10));
        t.end_read(0, true);
        assert_eq!(seqs(&t), None, "an end without its begin changes nothing");

        t.begin_read();
        t.stop();
        t.end_read(0, true);
        assert_eq!(seqs(&t), None, "a stop during the read wins");
    }

    #[test]
    fn a_stop_once_caught_up_empties_it_until_the_next_read() {
        let t = caught_up();
        t.offer(1, &msg(10));
        t.stop();
        assert_eq!(seqs(&t), None);
        t.offer(2, &msg(10));
        assert_eq!(seqs(&t), None);
    }

    #[test]
    fn settling_a_message_it_still_holds_stops_it_settling_one_taken_does_not() {
        let t = caught_up();
        for seq in 1..=3 {
            t.offer(seq, &msg(10));
        }
        assert_eq!(t.take(1).map(|v| v.len()), Some(1));
        t.settled(1);
        assert_eq!(seqs(&t), Some(vec![2, 3]), "1 was taken");
        t.offer(4, &msg(10));
        t.settled(4);
        assert_eq!(seqs(&t), None, "4 was held: its copy is stale");
    }

    #[test]
    fn overflowing_it_stops_it() {
        let t = caught_up();
        for seq in 1..=MAX_MESSAGES as u64 {
            t.offer(seq, &msg(1));
        }
        assert_eq!(t.take(3).map(|v| v.len()), Some(3));
        t.offer(5000, &msg(1));
        t.offer(5001, &msg(1));
        t.offer(5002, &msg(1));
        t.offer(5003, &msg(1));
        assert_eq!(seqs(&t), None, "one offer past the bound stops it");

        t.begin_read();
        t.end_read(0, true);
        t.offer(1, &msg(MAX_BYTES));
        t.offer(2, &msg(1));
        assert_eq!(seqs(&t), None, "bytes are bounded too");
    }

    #[test]
    fn messages_come_out_as_they_went_in_before_any_attempt() {
        let t = caught_up();
        let m = msg(3);
        t.offer(9, &m);
        let out = t.take(1).unwrap_or_default();
        assert_eq!(out.len(), 1);
        let got = &out[0];
        assert_eq!((got.seq, got.attempts, got.received_at), (9, 0, 7));
        assert_eq!(
            (&got.method[..], &got.path[..], &got.body[..]),
            ("POST", "/x", &b"xxx"[..])
        );
        assert_eq!(got.headers, m.headers);
    }
}
