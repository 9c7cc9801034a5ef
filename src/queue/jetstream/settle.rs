//! How a message leaves its queue stream (`impl Operations` and the
//! mechanics under `settle`): its status recorded first (`P_STATUS`, and
//! the dead-letter stream for a dead letter), then the message deleted, so
//! that a crash between the two leaves it delivered again, never lost; the
//! operators' dead letters, status and records.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;

use async_nats::jetstream::{self, stream};
use async_nats::HeaderMap;
use async_trait::async_trait;
use bytes::Bytes;

use super::codec::{Finished, Record, Retry};
use super::{hex, lock, no_message, put_json, unavailable, Dest, Halted, Handed, JetStream, SEQ_BITS, SEQ_MASK};
use crate::queue::{
    now_ms, stored, DeadLetter, DestinationRecord, Disposition, HaltedKey, LastError, MessageState, MessageStatus,
    Operations, Queue, QueueError, Queued, Result,
};

/// How a message ended, as its status record will say.
pub(super) struct Ending {
    pub(super) state: i64,
    pub(super) attempts: u32,
    pub(super) last_error: Option<LastError>,
    pub(super) reason: Option<String>,
    /// The body, kept for late feedback (`Delivered { keep_body }`).
    pub(super) original: Option<Bytes>,
}

impl JetStream {
    pub(super) async fn finish(&self, d: &Dest, id: u64, ending: Ending) -> Result<()> {
        let Ending {
            state,
            attempts,
            last_error,
            reason,
            original,
        } = ending;
        let handed = lock(&d.handed).get(&id).cloned();
        let handed = match handed {
            Some(h) => h,
            None => Handed {
                stream_seq: id & SEQ_MASK,
                received_at: 0,
                producer: None,
                category: None,
                order_key: None,
            },
        };
        let rec = Finished {
            dest: d.name.clone(),
            state,
            attempts,
            received_at: handed.received_at,
            finished_at: now_ms(),
            last_error,
            reason,
            producer: handed.producer,
            category: handed.category,
            order_key: handed.order_key,
            original,
        };
        put_json(&self.inner.status, format!("s.{id:016x}"), &rec).await?;
        {
            // A count reads the streams under the write side: the delete
            // and its local decrement land wholly before it or after it,
            // so a count begun before the delete cannot undo the decrement.
            let _moving = d.moving.read().await;
            self.delete(&d.queue, handed.stream_seq).await?;
            let depth = d.counts.depth.load(Ordering::Relaxed);
            d.counts.depth.store(depth.saturating_sub(1), Ordering::Relaxed);
        }
        lock(&d.keys).pending.remove(&handed.stream_seq);
        let had_retry = lock(&d.reading).scheduled.remove(&handed.stream_seq).is_some();
        if had_retry || attempts > 1 {
            let _ = self
                .inner
                .state
                .purge(format!("r.{}.{}", d.name, handed.stream_seq))
                .await;
        }
        d.counts.room.notify_waiters();
        Ok(())
    }

    /// Publishes message `id` (its stored headers and body) to `d`'s dead
    /// letters, with why and when; the caller removes it from where it was.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn to_dead(
        &self,
        d: &Dest,
        mut headers: HeaderMap,
        body: Bytes,
        id: u64,
        reason: &str,
        attempts: u32,
        last_error: Option<&LastError>,
    ) -> Result<()> {
        headers.insert("Tg-Id", id.to_string().as_str());
        headers.insert("Tg-Reason", reason);
        headers.insert("Tg-Attempts", attempts.to_string().as_str());
        headers.insert("Tg-Dead-At", now_ms().to_string().as_str());
        if let Some(e) = last_error {
            headers.insert("Tg-Last-Error", serde_json::to_string(e).unwrap_or_default().as_str());
        }
        match self.publish(&d.dead_subject, headers.clone(), body.clone()).await {
            Ok(_) => {}
            Err(QueueError::Corrupt(_)) => {
                self.recreate(d, true).await?;
                self.publish(&d.dead_subject, headers, body).await?;
            }
            Err(e) => return Err(e),
        }
        // Counted from the stream before the message reads dead: a local
        // increment could meet a count that already saw it.
        let _ = self.count(d).await;
        Ok(())
    }

    /// Removes a finished message from its stream. Without `no_erase` the
    /// server overwrites the message's bytes on disk first (a secure
    /// erase, one more synchronous write per message): the client's
    /// `delete_message` asks for that, so the request is made here.
    /// Already gone (a retried settle, the previous holder's) is fine.
    pub(super) async fn delete(&self, s: &stream::Stream, seq: u64) -> Result<()> {
        let name = &s.cached_info().config.name;
        let answer: serde_json::Value = self
            .inner
            .js
            .request(
                format!("STREAM.MSG.DELETE.{name}"),
                &serde_json::json!({"seq": seq, "no_erase": true}),
            )
            .await
            .map_err(unavailable)?;
        match answer.get("error") {
            None => Ok(()),
            Some(e) => {
                let text = e.get("description").and_then(|d| d.as_str()).unwrap_or_default();
                if text.contains("no message found") || text.contains("not found") && !text.contains("stream") {
                    Ok(())
                } else {
                    Err(unavailable(e))
                }
            }
        }
    }

    /// Every dead letter of `d`, oldest id first, with its stream sequence:
    /// the stream's sequences asked for 256 at a time, not one by one.
    pub(super) async fn all_dead(&self, d: &Dest) -> Result<Vec<(u64, jetstream::message::StreamMessage)>> {
        let info = d.dead.get_info().await.map_err(unavailable)?;
        let (first, last) = (info.state.first_sequence, info.state.last_sequence);
        let mut out = Vec::new();
        let mut from = first.max(1);
        while info.state.messages > 0 && from <= last {
            let upto = (from + 255).min(last);
            let got = futures_util::future::join_all((from..=upto).map(|s| d.dead.get_raw_message(s))).await;
            for r in got {
                match r {
                    Ok(m) => out.push((m.sequence, m)),
                    Err(e) if no_message(&e) => {}
                    Err(e) => return Err(unavailable(e)),
                }
            }
            from = upto + 1;
        }
        let id_of_dead = |m: &jetstream::message::StreamMessage| {
            m.headers
                .get("Tg-Id")
                .and_then(|v| v.as_str().parse::<u64>().ok())
                .unwrap_or(0)
        };
        out.sort_by_key(|(_, m)| id_of_dead(m));
        Ok(out)
    }
}

#[async_trait]
impl Operations for JetStream {
    async fn halted_keys(&self) -> Result<Vec<HaltedKey>> {
        let mut out = Vec::new();
        let mut keys = self.inner.state.keys().await.map_err(unavailable)?;
        use futures_util::StreamExt as _;
        while let Some(k) = keys.next().await {
            let k = k.map_err(unavailable)?;
            if !k.starts_with("h.") {
                continue;
            }
            if let Some(v) = self.inner.state.get(&k).await.map_err(unavailable)? {
                if let Ok(h) = serde_json::from_slice::<Halted>(&v) {
                    out.push(HaltedKey {
                        dest: h.dest,
                        key: h.key,
                        seq: h.id,
                        reason: h.reason,
                    });
                }
            }
        }
        Ok(out)
    }

    async fn release_key(&self, dest: &str, key: &str, skip_head: bool) -> Result<Option<u64>> {
        let name = format!("h.{dest}.{}", hex(key.as_bytes()));
        let Some(v) = self.inner.state.get(&name).await.map_err(unavailable)? else {
            return Ok(None);
        };
        let Ok(h) = serde_json::from_slice::<Halted>(&v) else {
            return Ok(None);
        };
        if skip_head {
            let retry = match self
                .inner
                .state
                .get(format!("r.{dest}.{}", h.id & SEQ_MASK))
                .await
                .map_err(unavailable)?
            {
                Some(v) => serde_json::from_slice::<Retry>(&v).ok(),
                None => None,
            };
            let (attempts, last_error) = retry.map_or((0, None), |r| (r.attempts, r.last_error));
            let reason = "skipped_by_operator".to_string();
            self.settle(h.id, dest, attempts, last_error, Disposition::DeadLetter { reason })
                .await?;
        }
        self.inner.state.purge(&name).await.map_err(unavailable)?;
        if let Some(d) = self.known(dest) {
            d.counts.ready.notify_waiters();
        }
        Ok(Some(h.id))
    }

    async fn destination_records(&self) -> Result<HashMap<String, DestinationRecord>> {
        // One read per destination this instance knows (those configured
        // here): polled by every instance to follow pauses made elsewhere,
        // so it must not list the whole bucket (retry schedules live there).
        let mut out = HashMap::new();
        for name in self.known_destinations() {
            // A direct read may be answered by a replica behind the
            // leader: the entry's revision lets the reader tell.
            let entry = self.inner.state.entry(format!("d.{name}")).await.map_err(unavailable)?;
            let Some(entry) = entry.filter(|e| e.operation == jetstream::kv::Operation::Put) else {
                continue;
            };
            if let Ok(r) = serde_json::from_slice::<Record>(&entry.value) {
                out.insert(
                    name,
                    DestinationRecord {
                        state: r.state,
                        reason: r.reason,
                        head_seq: r.head_seq,
                        revision: entry.revision,
                    },
                );
            }
        }
        Ok(out)
    }

    async fn set_destination_record(&self, dest: &str, record: DestinationRecord) -> Result<u64> {
        let r = Record {
            state: record.state,
            reason: record.reason,
            head_seq: record.head_seq,
        };
        put_json(&self.inner.state, format!("d.{dest}"), &r).await
    }

    async fn replay(&self, dest: &str, seqs: Option<Vec<u64>>) -> Result<u64> {
        let d = self.dest(dest).await?;
        let wanted: Option<HashSet<u64>> = seqs.map(|s| s.into_iter().collect());
        let mut n = 0;
        for (dead_seq, m) in self.all_dead(&d).await? {
            let id = m
                .headers
                .get("Tg-Id")
                .and_then(|v| v.as_str().parse::<u64>().ok())
                .unwrap_or(0);
            if wanted.as_ref().is_some_and(|w| !w.contains(&id)) {
                continue;
            }
            let mut headers = HeaderMap::new();
            for (k, vs) in m.headers.iter() {
                let name: &str = k.as_ref();
                if matches!(name, "Tg-Reason" | "Tg-Attempts" | "Tg-Dead-At" | "Tg-Last-Error")
                    || name.starts_with("Nats-")
                {
                    continue;
                }
                for v in vs {
                    headers.append(name.to_string(), v.as_str());
                }
            }
            // An operator's replay is delivered, as on SQLite: a message
            // the review station held (and a reviewer or a timeout
            // rejected) is not drawn for review again.
            headers.insert("Tg-Released", "1");
            match self.publish(&d.subject, headers, m.payload.clone()).await {
                Ok(_) => {}
                Err(QueueError::StorageFull) => break,
                Err(e) => return Err(e),
            }
            // Queued again under its old id (its stream sequence is new):
            // the status record says so until it finishes.
            let again = Finished {
                dest: d.name.clone(),
                state: stored::PENDING,
                attempts: 0,
                received_at: m
                    .headers
                    .get("Tg-Received")
                    .and_then(|v| v.as_str().parse().ok())
                    .unwrap_or(0),
                finished_at: 0,
                last_error: None,
                reason: None,
                producer: m.headers.get("Tg-Producer").map(|v| v.as_str().to_string()),
                category: m.headers.get("Tg-Category").map(|v| v.as_str().to_string()),
                order_key: m
                    .headers
                    .get("Tg-Key")
                    .and_then(|v| serde_json::from_str(v.as_str()).ok()),
                original: None,
            };
            put_json(&self.inner.status, format!("s.{id:016x}"), &again).await?;
            self.delete(&d.dead, dead_seq).await?;
            n += 1;
        }
        if n > 0 {
            let _ = self.count(&d).await;
            d.counts.ready.notify_waiters();
        }
        Ok(n)
    }

    async fn purge_dead_letters(&self, dest: &str) -> Result<u64> {
        let d = self.dest(dest).await?;
        let r = d.dead.purge().await.map_err(unavailable)?;
        d.counts.dead_letters.store(0, Ordering::Relaxed);
        Ok(r.purged)
    }

    async fn dead_letters(&self, dest: &str, after: Option<u64>, limit: usize) -> Result<Vec<DeadLetter>> {
        let Some(d) = self.known(dest) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for (_, m) in self.all_dead(&d).await? {
            let h = |k: &str| m.headers.get(k).map(|v| v.as_str().to_string());
            let id = h("Tg-Id").and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
            if after.is_some_and(|a| id <= a) {
                continue;
            }
            out.push(DeadLetter {
                seq: id,
                reason: h("Tg-Reason").unwrap_or_default(),
                attempts: h("Tg-Attempts").and_then(|s| s.parse().ok()).unwrap_or(0),
                last_error: h("Tg-Last-Error").and_then(|s| serde_json::from_str(&s).ok()),
                received_at: h("Tg-Received").and_then(|s| s.parse().ok()).unwrap_or(0),
                dead_lettered_at: h("Tg-Dead-At").and_then(|s| s.parse().ok()).unwrap_or(0),
                size_bytes: m.payload.len() as u64,
            });
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    async fn status(&self, seq: u64) -> Result<Option<MessageStatus>> {
        if let Some(v) = self
            .inner
            .status
            .get(format!("s.{seq:016x}"))
            .await
            .map_err(unavailable)?
        {
            if let Ok(f) = serde_json::from_slice::<Finished>(&v) {
                return Ok(Some(MessageStatus {
                    seq,
                    dest: f.dest,
                    state: MessageState::from_stored(f.state, 0, 0),
                    visible_at: 0,
                    attempts: f.attempts,
                    received_at: f.received_at,
                    finished_at: (f.state != stored::PENDING && f.state != stored::HELD).then_some(f.finished_at),
                    last_error: f.last_error,
                    reason: f.reason,
                    producer: f.producer,
                    category: f.category,
                    routed_from: None,
                    order_key: f.order_key,
                }));
            }
        }
        let Some(name) = self.name_of((seq >> SEQ_BITS) as u32).await else {
            return Ok(None);
        };
        let d = self.dest(&name).await?;
        let stream_seq = seq & SEQ_MASK;
        let m = match d.queue.get_raw_message(stream_seq).await {
            Ok(m) => m,
            Err(e) if no_message(&e) => return Ok(None),
            Err(e) => return Err(unavailable(e)),
        };
        let (msg, handed) = self.decode(&d, &m);
        if msg.seq != seq {
            return Ok(None);
        }
        let retry = match self
            .inner
            .state
            .get(format!("r.{name}.{stream_seq}"))
            .await
            .map_err(unavailable)?
        {
            Some(v) => serde_json::from_slice::<Retry>(&v).ok(),
            None => None,
        };
        let visible_at = retry.as_ref().map_or(0, |r| r.visible_at);
        Ok(Some(MessageStatus {
            seq,
            dest: name,
            state: MessageState::from_stored(stored::PENDING, visible_at, now_ms()),
            visible_at,
            attempts: retry.as_ref().map_or(0, |r| r.attempts),
            received_at: msg.received_at,
            finished_at: None,
            last_error: retry.and_then(|r| r.last_error),
            reason: None,
            producer: handed.producer,
            category: handed.category,
            routed_from: None,
            order_key: handed.order_key,
        }))
    }

    async fn queued(&self, dest: &str, limit: usize) -> Result<Vec<Queued>> {
        let Some(d) = self.known(dest) else {
            return Ok(Vec::new());
        };
        // The queue's front, read as the dispatcher reads it (pipelined).
        let mut out = Vec::new();
        let mut from = 1;
        while out.len() < limit {
            let (batch, next) = self.read_from(&d, from, limit - out.len()).await?;
            if batch.is_empty() {
                break;
            }
            from = next;
            for m in batch {
                let (msg, _) = self.decode(&d, &m);
                let retry = lock(&d.reading).scheduled.get(&m.sequence).cloned();
                out.push(Queued {
                    seq: msg.seq,
                    received_at: msg.received_at,
                    visible_at: retry.as_ref().map_or(msg.received_at, |r| r.visible_at),
                    attempts: retry.as_ref().map_or(0, |r| r.attempts),
                    last_error: retry.and_then(|r| r.last_error),
                    size_bytes: m.payload.len() as u64,
                });
            }
        }
        Ok(out)
    }

    async fn oldest_pending(&self, dest: &str) -> Result<Option<i64>> {
        let Some(d) = self.known(dest) else { return Ok(None) };
        Ok(self.next_at(&d, 1).await?.map(|m| self.decode(&d, &m).0.received_at))
    }

    async fn queue_detail(&self, dest: &str) -> Result<(Option<i64>, u64)> {
        let oldest = self.oldest_pending(dest).await?;
        let scheduled = self.known(dest).map_or(0, |d| lock(&d.reading).scheduled.len() as u64);
        Ok((oldest, scheduled))
    }

    async fn sweep(&self, _retention_ms: i64, review_retention_ms: i64) -> Result<u64> {
        // History and key records expire by their buckets' max_age; review
        // records by `[review] retention`, except held ones still owed a
        // decision.
        self.sweep_reviews(now_ms() - review_retention_ms).await
    }
}
