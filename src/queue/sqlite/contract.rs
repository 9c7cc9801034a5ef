//! The SQLite journal behind the queue's contract (`crate::queue`): each
//! method of the five traits, applied through the writer thread (changes)
//! or the read pool (looks). What a method guarantees is said once, on the
//! trait; what is said here is how the journal keeps it.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use async_trait::async_trait;

use super::{audit, review, writer, Journal};
use crate::queue::audit::{Act, Entry, Filter};
use crate::queue::review::{Decided, Decision, Item, Tally};
use crate::queue::{
    id_of, is_message_id, now_ms, Appended, AuditLog, Cluster, DeadLetter, DestinationRecord, Disposition, Due,
    HaltedKey, LastError, Limits, Message, MessageState, MessageStatus, NewMessage, Operations, Queue, QueueCounts,
    Queued, Result, ReviewStore, Settlement, Stats,
};

#[async_trait]
impl Queue for Journal {
    fn stats(&self) -> &Arc<Stats> {
        &self.inner.stats
    }

    fn queue(&self, dest: &str) -> Arc<QueueCounts> {
        self.lane(dest).counts.clone()
    }

    fn known_destinations(&self) -> Vec<String> {
        let map = self.inner.lanes.read().unwrap_or_else(|e| e.into_inner());
        map.keys().cloned().collect()
    }

    // A per-database salt and the sequence number, so ids never repeat
    // even if the data directory is wiped.
    fn message_id(&self, seq: u64) -> String {
        id_of(self.inner.salt, seq)
    }

    fn parse_id(&self, id: &str) -> Option<u64> {
        if !is_message_id(id) {
            return None;
        }
        let salt = u32::from_str_radix(&id[..8], 16).ok()?;
        if salt != self.inner.salt {
            return None;
        }
        u64::from_str_radix(&id[8..], 16).ok()
    }

    async fn append(&self, msg: Arc<NewMessage>, limits: Limits) -> Result<Appended> {
        // Digested here, on the caller's task, not on the single writer.
        let fingerprint = msg.idempotency_key.as_ref().map(|_| msg.fingerprint());
        self.call(|reply| writer::Command::Append {
            msg,
            fingerprint,
            limits,
            reply,
        })
        .await
    }

    // Once the worker has caught up, new messages come from the
    // destination's tail (the committed copies, in memory), each once;
    // until then, from an index-only scan of what is due.
    async fn fetch_ready(&self, dest: &str, limit: usize, exclude: &(dyn Fn() -> Vec<u64> + Sync)) -> Result<Due> {
        let queue = self.lane(dest);
        if let Some(messages) = queue.tail.take(limit) {
            return Ok(Due {
                messages,
                next_due: None,
            });
        }
        queue.tail.begin_read();
        let exclude = exclude();
        let d = dest.to_string();
        let now = now_ms();
        let (ready, last_seq) = match self.read(move |r| r.fetch_ready(&d, now, limit, &exclude)).await {
            Ok(read) => read,
            Err(e) => {
                queue.tail.stop();
                return Err(e);
            }
        };
        queue
            .tail
            .end_read(last_seq, ready.messages.is_empty() && ready.next_due.is_none());
        let messages = self.sound(dest, ready.messages).await?;
        Ok(Due {
            messages,
            next_due: ready.next_due,
        })
    }

    async fn fetch_keyed(
        &self,
        dest: &str,
        limit: usize,
        exclude: HashSet<u64>,
        halted: HashSet<String>,
        after: String,
    ) -> Result<(Due, String)> {
        // The tail is not used: it would hand out new messages without
        // regard to their keys.
        self.lane(dest).tail.stop();
        let d = dest.to_string();
        let now = now_ms();
        let (ready, cursor) = self
            .read(move |r| r.fetch_keyed(&d, now, limit, &exclude, &halted, &after))
            .await?;
        let messages = self.sound(dest, ready.messages).await?;
        Ok((
            Due {
                messages,
                next_due: ready.next_due,
            },
            cursor,
        ))
    }

    async fn head(&self, dest: &str) -> Result<Option<(Message, i64)>> {
        // The head may be a message the tail holds too: delivered from
        // here, the tail must not hand it out again.
        self.lane(dest).tail.stop();
        loop {
            let d = dest.to_string();
            match self.read(move |r| r.head(&d)).await? {
                None => return Ok(None),
                Some((Ok(m), visible_at)) => return Ok(Some((m, visible_at))),
                Some((Err(seq), _)) => self.quarantine(dest, seq).await?,
            }
        }
    }

    fn give_back(&self, dest: &str) {
        self.lane(dest).tail.stop();
    }

    async fn settle(
        &self,
        seq: u64,
        dest: &str,
        attempts: u32,
        last_error: Option<LastError>,
        disposition: Disposition,
    ) -> Result<()> {
        let dest = dest.to_string();
        self.call(|reply| writer::Command::Settle {
            seq,
            dest,
            attempts,
            last_error,
            disposition,
            reply,
        })
        .await
    }

    // One writer command: one trip through the writer's channel, one
    // answer, the same commit.
    async fn settle_many(&self, dest: &str, items: Vec<Settlement>) -> Result<()> {
        let dest = dest.to_string();
        self.call(|reply| writer::Command::SettleMany { dest, items, reply })
            .await
    }

    // Pending commands are committed, the clean-shutdown marker is set,
    // and the writer thread exits.
    fn close(&self) {
        self.inner.stats.open.store(false, Ordering::Relaxed);
        // Stop checkpointing first: the writer's final TRUNCATE checkpoint
        // needs the WAL to itself.
        let threads = self
            .inner
            .writer_thread
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let writer = threads.map(|(writer, ckpt, stop)| {
            drop(stop);
            let _ = ckpt.join();
            writer
        });
        let (reply, rx) = std::sync::mpsc::channel();
        if self.inner.tx.send(writer::Command::Close { reply }).is_ok() {
            let _ = rx.recv();
        }
        if let Some(w) = writer {
            let _ = w.join();
        }
        // Nothing writes the files any more: another journal may take them.
        self.inner.lock.lock().unwrap_or_else(|e| e.into_inner()).take();
    }
}

#[async_trait]
impl Operations for Journal {
    async fn halted_keys(&self) -> Result<Vec<HaltedKey>> {
        self.read(|r| r.halted_keys()).await
    }

    async fn release_key(&self, dest: &str, key: &str, skip_head: bool) -> Result<Option<u64>> {
        let (dest, key) = (dest.to_string(), key.to_string());
        let seq = self
            .call(|reply| writer::Command::ReleaseKey {
                dest,
                key,
                skip_head,
                reply,
            })
            .await?;
        // Sequence numbers start at 1: 0 says the key was not halted.
        Ok((seq > 0).then_some(seq))
    }

    async fn destination_records(&self) -> Result<HashMap<String, DestinationRecord>> {
        self.read(|r| r.destination_records()).await
    }

    async fn set_destination_record(&self, dest: &str, record: DestinationRecord) -> Result<u64> {
        let dest = dest.to_string();
        self.call(|reply| writer::Command::SetDestination { dest, record, reply })
            .await?;
        // One process reads what its writer committed: nothing is older.
        Ok(0)
    }

    async fn replay(&self, dest: &str, seqs: Option<Vec<u64>>) -> Result<u64> {
        let dest = dest.to_string();
        self.call(|reply| writer::Command::Replay { dest, seqs, reply }).await
    }

    async fn purge_dead_letters(&self, dest: &str) -> Result<u64> {
        let dest = dest.to_string();
        self.call(|reply| writer::Command::Purge { dest, reply }).await
    }

    async fn dead_letters(&self, dest: &str, after: Option<u64>, limit: usize) -> Result<Vec<DeadLetter>> {
        let dest = dest.to_string();
        self.read(move |r| r.dead_letters(&dest, after, limit)).await
    }

    async fn status(&self, seq: u64) -> Result<Option<MessageStatus>> {
        self.read(move |r| r.status(seq)).await
    }

    async fn queued(&self, dest: &str, limit: usize) -> Result<Vec<Queued>> {
        let dest = dest.to_string();
        self.read(move |r| r.queued(&dest, limit)).await
    }

    async fn oldest_pending(&self, dest: &str) -> Result<Option<i64>> {
        let dest = dest.to_string();
        self.read(move |r| r.oldest_pending(&dest)).await
    }

    async fn queue_detail(&self, dest: &str) -> Result<(Option<i64>, u64)> {
        let dest = dest.to_string();
        let now = now_ms();
        self.read(move |r| r.queue_detail(&dest, now)).await
    }

    async fn sweep(&self, retention_ms: i64, review_retention_ms: i64) -> Result<u64> {
        self.call(|reply| writer::Command::Sweep {
            retention_ms,
            review_retention_ms,
            reply,
        })
        .await
    }
}

#[async_trait]
impl ReviewStore for Journal {
    async fn decide(&self, seq: u64, decision: Decision) -> Result<Decided> {
        self.call(|reply| writer::Command::Decide { seq, decision, reply })
            .await
    }

    async fn expire_holds(&self, dest: &str, deliver: bool, now: i64) -> Result<u64> {
        let dest = dest.to_string();
        self.call(|reply| writer::Command::ExpireHolds {
            dest,
            deliver,
            now,
            reply,
        })
        .await
    }

    async fn review_item(&self, seq: u64) -> Result<Option<Item>> {
        self.read(move |r| review::get(r.conn(), seq)).await
    }

    async fn kept_body(&self, seq: u64) -> Result<Option<bytes::Bytes>> {
        self.read(move |r| review::kept_body(r.conn(), seq)).await
    }

    async fn open_reviews(
        &self,
        dest: Option<String>,
        category: Option<String>,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Item>> {
        self.read(move |r| review::open(r.conn(), dest.as_deref(), category.as_deref(), after, limit))
            .await
    }

    async fn oldest_open_review(&self, dest: &str) -> Result<Option<i64>> {
        let dest = dest.to_string();
        self.read(move |r| review::oldest_open(r.conn(), &dest)).await
    }

    async fn review_tallies(&self, dest: Option<String>, since: i64) -> Result<Vec<((String, String), Tally)>> {
        self.read(move |r| review::tallies(r.conn(), dest.as_deref(), since))
            .await
    }

    async fn reviewer_tallies(
        &self,
        dest: Option<String>,
        since: i64,
    ) -> Result<Vec<(crate::queue::review::ReviewerKey, Tally)>> {
        self.read(move |r| review::reviewer_tallies(r.conn(), dest.as_deref(), since))
            .await
    }

    async fn review_tally(&self, dest: &str, category: &str, since: i64) -> Result<Tally> {
        let (dest, category) = (dest.to_string(), category.to_string());
        self.read(move |r| review::tally(r.conn(), &dest, &category, since))
            .await
    }

    async fn volumes(&self, dest: Option<String>, since: i64) -> Result<Vec<(String, String, MessageState, u64)>> {
        self.read(move |r| review::volumes(r.conn(), dest.as_deref(), since))
            .await
    }

    async fn corrections(&self, dest: Option<String>, since: i64, after: u64, limit: usize) -> Result<Vec<Item>> {
        self.read(move |r| review::corrections(r.conn(), dest.as_deref(), since, after, limit))
            .await
    }
}

/// A journal is one process's own: the defaults (nothing shared).
#[async_trait]
impl AuditLog for Journal {
    async fn record_act(&self, act: Act) -> Result<()> {
        self.call(|reply| writer::Command::RecordAct { act, reply }).await
    }

    async fn acts(&self, filter: Filter) -> Result<Vec<Entry>> {
        self.read(move |r| audit::read(r.conn(), &filter)).await
    }

    async fn sweep_acts(&self, before: i64) -> Result<u64> {
        self.call(|reply| writer::Command::SweepActs { before, reply }).await
    }
}

impl Cluster for Journal {}
