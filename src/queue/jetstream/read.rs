//! The core of the contract on JetStream (`impl Queue`): a publish per
//! append, acknowledged by a quorum before the 2xx; reading a queue stream
//! forward from the holder's position, with the next batch read ahead;
//! and settling each attempt (`settle`, through `settle.rs`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, stream};
use async_nats::HeaderMap;
use async_trait::async_trait;
use bytes::Bytes;

use super::codec::{encode, KeyRecord, Retry};
use super::settle::Ending;
use super::station::Screened;
use super::{
    hex, lock, no_message, put_json, station, unavailable, Dest, Halted, Handed, JetStream, KeyIndex, SEQ_MASK,
};
use crate::queue::{
    id_of, is_message_id, now_ms, stored, Appended, Disposition, Due, LastError, Limits, Message, NewMessage, Queue,
    QueueCounts, QueueError, Result, Settlement, Stats,
};

/// At most this many of a batch's items settle at once (`settle_many`).
const SETTLE_AT_ONCE: usize = 64;

impl JetStream {
    pub(super) async fn publish(
        &self,
        subject: &str,
        headers: HeaderMap,
        body: Bytes,
    ) -> Result<jetstream::publish::PublishAck> {
        use async_nats::connection::State;
        if self.inner.client.connection_state() != State::Connected {
            return Err(QueueError::Unavailable("not connected to NATS".into()));
        }
        let ack = self
            .inner
            .js
            .publish_with_headers(subject.to_string(), headers, body)
            .await
            .map_err(unavailable)?;
        ack.await.map_err(|e| {
            let text = e.to_string();
            if e.kind() == jetstream::context::PublishErrorKind::StreamNotFound {
                QueueError::Corrupt(format!("no stream takes {subject}"))
            } else if text.contains("maximum messages") || text.contains("maximum bytes") {
                QueueError::StorageFull
            } else {
                unavailable(text)
            }
        })
    }

    pub(super) fn decode(&self, d: &Dest, m: &jetstream::message::StreamMessage) -> (Message, Handed) {
        let h = |k: &str| m.headers.get(k).map(|v| v.as_str().to_string());
        let id = h("Tg-Id")
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| d.id(m.sequence));
        let received_at = h("Tg-Received").and_then(|s| s.parse().ok()).unwrap_or(0);
        let headers: Vec<(String, String)> = h("Tg-Headers")
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or_default();
        let msg = Message {
            seq: id,
            dest: d.name.clone(),
            method: h("Tg-Method").unwrap_or_else(|| "POST".into()),
            path: h("Tg-Path").unwrap_or_default(),
            headers,
            body: m.payload.clone(),
            attempts: 0,
            received_at,
            idempotency_key: h("Tg-Idem"),
            wants_reply: h("Tg-Reply").is_some(),
            order_key: h("Tg-Key").and_then(|k| serde_json::from_str(&k).ok()),
        };
        let handed = Handed {
            stream_seq: m.sequence,
            received_at,
            producer: h("Tg-Producer"),
            category: h("Tg-Category"),
            order_key: msg.order_key.clone(),
        };
        (msg, handed)
    }

    /// The pending message at or after `from` in `d`'s queue.
    pub(super) async fn next_at(&self, d: &Dest, from: u64) -> Result<Option<jetstream::message::StreamMessage>> {
        next_raw(&d.queue, &d.subject, from).await
    }

    /// Up to `want` pending messages from stream sequence `from` on, and
    /// where to read next. The first is found by subject (one round trip);
    /// the sequences after it, up to the last one seen, are asked for all at
    /// once, since a queue's pending messages are mostly contiguous: a
    /// batch costs about two round trips, not one per message, so a
    /// dispatcher does not stall between batches (and then burst).
    pub(super) async fn read_from(
        &self,
        d: &Dest,
        from: u64,
        want: usize,
    ) -> Result<(Vec<jetstream::message::StreamMessage>, u64)> {
        let Some(first) = self.next_at(d, from).await? else {
            return Ok((Vec::new(), from));
        };
        let last = d.last_seen.load(Ordering::SeqCst).max(first.sequence);
        let upto = (first.sequence + want as u64).saturating_sub(1).min(last);
        let rest =
            futures_util::future::join_all((first.sequence + 1..=upto).map(|s| d.queue.get_raw_message(s))).await;
        let mut out = vec![first];
        for r in rest {
            match r {
                Ok(m) => out.push(m),
                Err(e) if no_message(&e) => {}
                Err(e) => return Err(unavailable(e)),
            }
        }
        Ok((out, upto + 1))
    }

    /// Reads the batch after `from` in the background (once at a time).
    pub(super) fn read_ahead(&self, d: &Arc<Dest>, from: u64, want: usize) {
        let generation = {
            let mut a = lock(&d.ahead);
            if a.running || a.batch.as_ref().is_some_and(|b| b.0 == from) {
                return;
            }
            a.running = true;
            a.running_from = from;
            a.generation
        };
        let (q, d) = (self.clone(), d.clone());
        tokio::spawn(async move {
            let got = q.read_from(&d, from, want).await;
            let mut a = lock(&d.ahead);
            a.running = false;
            if a.generation == generation {
                if let Ok((msgs, next)) = got {
                    a.batch = Some((from, msgs, next));
                }
            }
        });
    }
}

/// The message of `subject` at or after stream sequence `from`.
async fn next_raw(s: &stream::Stream, subject: &str, from: u64) -> Result<Option<jetstream::message::StreamMessage>> {
    match s
        .raw_message_builder()
        .sequence(from)
        .next_by_subject(subject.to_string())
        .send()
        .await
    {
        Ok(m) => Ok(Some(m)),
        Err(e) if e.kind() == stream::RawMessageErrorKind::NoMessageFound => Ok(None),
        Err(e) => Err(unavailable(e)),
    }
}

/// What NATS counts of a message's headers toward `max_payload`: the
/// `NATS/1.0` line and each `name: value` line.
fn headers_len(h: &HeaderMap) -> usize {
    let mut n = "NATS/1.0\r\n\r\n".len();
    for (name, values) in h.iter() {
        for v in values {
            n += name.to_string().len() + 2 + v.as_str().len() + 2;
        }
    }
    n
}

#[async_trait]
impl Queue for JetStream {
    fn message_id(&self, seq: u64) -> String {
        id_of(self.inner.salt, seq)
    }

    fn parse_id(&self, id: &str) -> Option<u64> {
        if !is_message_id(id) {
            return None;
        }
        let salt = u32::from_str_radix(&id[..8], 16).ok()?;
        (salt == self.inner.salt).then(|| u64::from_str_radix(&id[8..], 16).ok())?
    }

    fn queue(&self, dest: &str) -> Arc<QueueCounts> {
        super::queue_of(&self.inner.queues, dest)
    }

    fn known_destinations(&self) -> Vec<String> {
        self.inner
            .dests
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect()
    }

    fn stats(&self) -> &Arc<Stats> {
        &self.inner.stats
    }

    async fn append(&self, msg: Arc<NewMessage>, limits: Limits) -> Result<Appended> {
        let d = self.dest(&msg.dest).await?;
        {
            let want = (limits.max_messages, limits.max_bytes);
            let changed = *lock(&d.limits) != want;
            if changed {
                let p = &self.inner.cfg.stream_prefix;
                self.stream(format!("{p}_Q_{}", d.name), &d.subject, want.0, want.1)
                    .await?;
                *lock(&d.limits) = want;
            }
        }
        let fingerprint = msg.idempotency_key.as_ref().map(|_| hex(&msg.fingerprint()));
        let key_name = msg.idempotency_key.as_ref().map(|k| {
            use sha2::{Digest, Sha256};
            let digest = Sha256::new()
                .chain_update(msg.dest.as_bytes())
                .chain_update(b"\0")
                .chain_update(k.as_bytes())
                .finalize();
            format!("i.{}.{}", msg.dest, hex(&digest))
        });
        if let (Some(name), Some(fp)) = (&key_name, &fingerprint) {
            if let Some(v) = self.inner.idem.get(name).await.map_err(unavailable)? {
                if let Ok(r) = serde_json::from_slice::<KeyRecord>(&v) {
                    if now_ms() - r.at < limits.idempotency_window_ms {
                        return Ok(if &r.fingerprint == fp {
                            Appended::Duplicate { seq: r.id }
                        } else {
                            Appended::KeyReused { seq: r.id }
                        });
                    }
                }
            }
        }
        let mut headers = encode(&msg, None);
        if let Some(intent) = &msg.review {
            station::encode_intent(intent, &mut headers);
        }
        if let Some(name) = &key_name {
            // The server's de-duplication covers producers racing on one
            // key within its window (two minutes); the record above covers
            // the rest of the configured window.
            headers.insert("Nats-Msg-Id", name.as_str());
        }
        // Over the servers' max_payload the publish could never succeed (and
        // the client would drop its connection): refused here, for a 413.
        let size = (msg.body.len() + headers_len(&headers)) as u64;
        if size > self.inner.max_payload {
            return Err(QueueError::TooLarge {
                size,
                limit: self.inner.max_payload,
            });
        }
        // Held until the local count is raised: a count (the write side)
        // sees the publish and the increment together or neither.
        let moving = d.moving.read().await;
        let mut published = self.publish(&d.subject, headers.clone(), msg.body.clone()).await;
        if let Err(QueueError::Corrupt(_)) = &published {
            self.recreate(&d, false).await?;
            published = self.publish(&d.subject, headers, msg.body.clone()).await;
        }
        let ack = match published {
            Ok(a) => a,
            Err(QueueError::StorageFull) => return Ok(Appended::QueueFull),
            Err(QueueError::Corrupt(e)) => return Err(QueueError::Unavailable(e)),
            Err(e) => return Err(e),
        };
        d.last_seen.fetch_max(ack.sequence, Ordering::SeqCst);
        if !ack.duplicate {
            // Bytes (as JetStream counts them, headers too) come with the
            // next count, within COUNT_EVERY; depth is adjusted at once.
            d.counts.depth.fetch_add(1, Ordering::Relaxed);
        }
        drop(moving);
        let id = d.id(ack.sequence);
        if let (Some(name), Some(fp)) = (key_name, fingerprint) {
            let rec = KeyRecord {
                id,
                fingerprint: fp,
                at: msg.received_at,
            };
            // Failing here answers 503: the producer retries with the same
            // key and the server's de-duplication gives it this message.
            put_json(&self.inner.idem, name, &rec).await?;
        }
        if ack.duplicate {
            return Ok(Appended::Duplicate { seq: id });
        }
        let held = self.on_stored(&msg, id).await;
        d.counts.ready.notify_waiters();
        Ok(Appended::Stored { seq: id, held })
    }

    async fn fetch_ready(&self, dest: &str, limit: usize, exclude: &(dyn Fn() -> Vec<u64> + Sync)) -> Result<Due> {
        let Some(d) = self.known(dest) else {
            return Ok(Due {
                messages: Vec::new(),
                next_due: None,
            });
        };
        if !self.reading_ready(&d).await? {
            return Ok(Due {
                messages: Vec::new(),
                next_due: None,
            });
        }
        let excluded: HashSet<u64> = exclude().into_iter().collect();
        let now = now_ms();
        let mut out = Vec::new();
        // Retries that are due, then reading forward.
        let (due, rewind, mut cursor) = {
            let mut r = lock(&d.reading);
            let due: Vec<(u64, Retry)> = r
                .scheduled
                .iter()
                .filter(|(_, x)| x.visible_at <= now && !excluded.contains(&x.id))
                .take(limit)
                .map(|(s, x)| (*s, x.clone()))
                .collect();
            let rewind = std::mem::take(&mut r.rewind);
            (due, rewind, r.cursor)
        };
        if rewind {
            cursor = 1;
        }
        // A retry that is due is handed out from the schedule; reading
        // forward from a rewind meets it again in the stream, and must not
        // hand it out a second time in the same batch.
        let mut taken: HashSet<u64> = due.iter().map(|(s, _)| *s).collect();
        for (seq, retry) in due {
            match d.queue.get_raw_message(seq).await {
                Ok(m) => {
                    let (mut msg, handed) = self.decode(&d, &m);
                    msg.attempts = retry.attempts;
                    if let Screened::Deliver(msg) = self.screen(&d, &m, msg).await? {
                        lock(&d.handed).insert(msg.seq, handed);
                        out.push(msg);
                    }
                }
                Err(e) if no_message(&e) => {}
                Err(e) => return Err(unavailable(e)),
            }
            lock(&d.reading).scheduled.remove(&seq);
        }
        while out.len() < limit {
            let want = limit - out.len();
            let (batch, next) = match d.take_ahead(cursor, want) {
                Some(b) => b,
                None => self.read_from(&d, cursor, want).await?,
            };
            if batch.is_empty() {
                break;
            }
            cursor = next;
            let mut fresh = Vec::new();
            for m in batch {
                let scheduled = lock(&d.reading).scheduled.contains_key(&m.sequence);
                let (msg, handed) = self.decode(&d, &m);
                if scheduled || excluded.contains(&msg.seq) || !taken.insert(m.sequence) {
                    continue;
                }
                fresh.push((m, msg, handed));
            }
            // Screened all at once: a park is a few round trips to NATS,
            // and one after another they would stall the dispatcher.
            let screened =
                futures_util::future::join_all(fresh.iter().map(|(m, msg, _)| self.screen(&d, m, msg.clone()))).await;
            for ((_, _, handed), s) in fresh.into_iter().zip(screened) {
                if let Screened::Deliver(msg) = s? {
                    lock(&d.handed).insert(msg.seq, handed);
                    out.push(msg);
                }
            }
        }
        if out.len() >= limit {
            // A backlog: the next batch is read while this one goes out.
            self.read_ahead(&d, cursor, limit);
        }
        let mut r = lock(&d.reading);
        r.cursor = cursor;
        let next_due = r
            .scheduled
            .values()
            .filter(|x| !excluded.contains(&x.id))
            .map(|x| x.visible_at)
            .min();
        Ok(Due {
            messages: out,
            next_due,
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
        let empty = || {
            Ok((
                Due {
                    messages: Vec::new(),
                    next_due: None,
                },
                String::new(),
            ))
        };
        let Some(d) = self.known(dest) else { return empty() };
        if !self.reading_ready(&d).await? {
            return empty();
        }
        // Read what arrived since the last look into the index.
        let epoch = d.epoch.load(Ordering::SeqCst);
        let mut cursor = {
            let mut k = lock(&d.keys);
            if k.epoch != epoch {
                *k = KeyIndex {
                    epoch,
                    cursor: 1,
                    pending: BTreeMap::new(),
                };
            }
            k.cursor
        };
        loop {
            let (batch, next) = self.read_from(&d, cursor, 256).await?;
            let full = batch.len() == 256;
            {
                let mut k = lock(&d.keys);
                for m in &batch {
                    let (msg, _) = self.decode(&d, m);
                    k.pending.insert(m.sequence, (msg.seq, msg.order_key));
                }
                k.cursor = next.max(k.cursor);
            }
            cursor = next;
            if !full {
                break;
            }
        }
        // The head of each key, oldest first: due, not halted, and no
        // message of its key in flight (one in flight is its key's head).
        let now = now_ms();
        let scheduled: HashMap<u64, Retry> = lock(&d.reading)
            .scheduled
            .iter()
            .map(|(s, r)| (*s, r.clone()))
            .collect();
        let mut next_due: Option<i64> = None;
        let mut chosen = Vec::new();
        {
            let k = lock(&d.keys);
            let mut seen: HashSet<&str> = HashSet::new();
            let mut own = Vec::new();
            for (seq, (id, key)) in &k.pending {
                match key {
                    Some(key) => {
                        if !seen.insert(key.as_str()) || halted.contains(key) {
                            continue;
                        }
                    }
                    // A message without a key is a key of its own.
                    None => own.push(*seq),
                }
                if exclude.contains(id) {
                    continue;
                }
                if let Some(r) = scheduled.get(seq) {
                    if r.visible_at > now {
                        next_due = Some(next_due.map_or(r.visible_at, |n| n.min(r.visible_at)));
                        continue;
                    }
                }
                chosen.push(*seq);
                if chosen.len() >= limit {
                    break;
                }
            }
        }
        let got = futures_util::future::join_all(chosen.iter().map(|s| d.queue.get_raw_message(*s))).await;
        let mut fresh = Vec::new();
        for (seq, r) in chosen.into_iter().zip(got) {
            match r {
                Ok(m) => {
                    let (mut msg, handed) = self.decode(&d, &m);
                    if let Some(r) = scheduled.get(&seq) {
                        msg.attempts = r.attempts;
                    }
                    lock(&d.reading).scheduled.remove(&seq);
                    fresh.push((m, msg, handed));
                }
                Err(e) if no_message(&e) => {
                    lock(&d.keys).pending.remove(&seq);
                }
                Err(e) => return Err(unavailable(e)),
            }
        }
        let screened =
            futures_util::future::join_all(fresh.iter().map(|(m, msg, _)| self.screen(&d, m, msg.clone()))).await;
        let mut messages = Vec::new();
        for ((_, _, handed), s) in fresh.into_iter().zip(screened) {
            if let Screened::Deliver(msg) = s? {
                lock(&d.handed).insert(msg.seq, handed);
                messages.push(msg);
            }
        }
        Ok((Due { messages, next_due }, after))
    }

    async fn head(&self, dest: &str) -> Result<Option<(Message, i64)>> {
        let Some(d) = self.known(dest) else {
            return Ok(None);
        };
        if !self.reading_ready(&d).await? {
            return Ok(None);
        }
        // The first message the review station lets through: a held one
        // is parked, and the next one is the head.
        let mut from = 1;
        let (m, mut msg, handed) = loop {
            let Some(m) = self.next_at(&d, from).await? else {
                return Ok(None);
            };
            let (msg, handed) = self.decode(&d, &m);
            match self.screen(&d, &m, msg).await? {
                Screened::Deliver(msg) => break (m, msg, handed),
                Screened::Parked => from = m.sequence + 1,
            }
        };
        let visible_at = match lock(&d.reading).scheduled.get(&m.sequence) {
            Some(r) => {
                msg.attempts = r.attempts;
                r.visible_at
            }
            None => 0,
        };
        lock(&d.handed).insert(msg.seq, handed);
        Ok(Some((msg, visible_at)))
    }

    fn give_back(&self, dest: &str) {
        if let Some(d) = self.known(dest) {
            lock(&d.reading).rewind = true;
            d.forget_ahead();
        }
    }

    async fn settle(
        &self,
        seq: u64,
        dest: &str,
        attempts: u32,
        last_error: Option<LastError>,
        disposition: Disposition,
    ) -> Result<()> {
        let d = self.dest(dest).await?;
        let handed = lock(&d.handed).get(&seq).cloned();
        let stream_seq = handed.as_ref().map_or(seq & SEQ_MASK, |h| h.stream_seq);
        d.settling(stream_seq);
        let result = match disposition {
            Disposition::Delivered { keep_body } => {
                // Under review: the body goes into the status record, for
                // late feedback, before the message leaves its stream.
                let original = if keep_body {
                    match d.queue.get_raw_message(stream_seq).await {
                        Ok(m) => Some(m.payload),
                        Err(e) if no_message(&e) => None,
                        Err(e) => return Err(unavailable(e)),
                    }
                } else {
                    None
                };
                self.finish(
                    &d,
                    seq,
                    Ending {
                        state: stored::DELIVERED,
                        attempts,
                        last_error,
                        reason: None,
                        original,
                    },
                )
                .await
            }
            Disposition::Dropped { reason } => {
                self.finish(
                    &d,
                    seq,
                    Ending {
                        state: stored::DROPPED,
                        attempts,
                        last_error,
                        reason: Some(reason),
                        original: None,
                    },
                )
                .await
            }
            Disposition::Quarantined { reason } => {
                self.finish(
                    &d,
                    seq,
                    Ending {
                        state: stored::QUARANTINED,
                        attempts,
                        last_error,
                        reason: Some(reason),
                        original: None,
                    },
                )
                .await
            }
            Disposition::Reschedule { visible_at } => {
                let retry = Retry {
                    id: seq,
                    attempts,
                    visible_at,
                    last_error,
                };
                put_json(&self.inner.state, format!("r.{}.{stream_seq}", d.name), &retry).await?;
                lock(&d.reading).scheduled.insert(stream_seq, retry);
                // Still pending: it stays in `handed` until it finishes.
                return Ok(());
            }
            Disposition::DeadLetter { reason } => {
                let original = match d.queue.get_raw_message(stream_seq).await {
                    Ok(m) => m,
                    Err(e) if no_message(&e) => return Ok(()),
                    Err(e) => return Err(unavailable(e)),
                };
                self.to_dead(
                    &d,
                    original.headers.clone(),
                    original.payload.clone(),
                    seq,
                    &reason,
                    attempts,
                    last_error.as_ref(),
                )
                .await?;
                self.finish(
                    &d,
                    seq,
                    Ending {
                        state: stored::DEAD,
                        attempts,
                        last_error,
                        reason: Some(reason),
                        original: None,
                    },
                )
                .await
            }
            Disposition::HaltKey { key, reason } => {
                // Stays pending, due at once, with its attempts kept; its
                // key is recorded as halted for every instance.
                let retry = Retry {
                    id: seq,
                    attempts,
                    visible_at: 0,
                    last_error,
                };
                let halted = Halted {
                    dest: d.name.clone(),
                    key: key.clone(),
                    id: seq,
                    reason,
                };
                put_json(&self.inner.state, format!("r.{}.{stream_seq}", d.name), &retry).await?;
                put_json(
                    &self.inner.state,
                    format!("h.{}.{}", d.name, hex(key.as_bytes())),
                    &halted,
                )
                .await?;
                lock(&d.reading).scheduled.insert(stream_seq, retry);
                return Ok(());
            }
        };
        if result.is_ok() {
            lock(&d.handed).remove(&seq);
        }
        result
    }

    // Each settle is its own round trips to NATS, and attempts of one
    // destination already settle concurrently: a batch's items do too, a
    // bounded number in flight at once. An error stops nothing already
    // under way; the first is returned once all have ended.
    async fn settle_many(&self, dest: &str, items: Vec<Settlement>) -> Result<()> {
        use futures_util::StreamExt;
        let ended: Vec<Result<()>> = futures_util::stream::iter(items)
            .map(|s| self.settle(s.seq, dest, s.attempts, s.last_error, s.disposition))
            .buffer_unordered(SETTLE_AT_ONCE)
            .collect()
            .await;
        ended.into_iter().find_map(Result::err).map_or(Ok(()), Err)
    }

    fn close(&self) {
        self.inner.stats.open.store(false, Ordering::Relaxed);
        let _ = self.inner.stop.send(true);
        // Give the lease loops a moment to let go of their leases, so
        // another instance takes over at once rather than after LEASE_TTL.
        let deadline = Instant::now() + Duration::from_secs(2);
        let dests: Vec<Arc<Dest>> = self
            .inner
            .dests
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        while Instant::now() < deadline && dests.iter().any(|d| d.holding.load(Ordering::SeqCst)) {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
