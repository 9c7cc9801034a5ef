//! The review station's records in cluster mode (SPEC §10 on §13): the
//! same contract as the SQLite journal's `sqlite::review`, kept in JetStream.
//!
//! | what | where |
//! |---|---|
//! | one review item (held, audit or feedback), with the producer's original body and the decision | KV bucket `P_REVIEW`, key `v.<id>` |
//! | a held message, parked until it is decided or its hold ends | stream `P_HELD_<dest>`, subject `P.held.<dest>.<id>` |
//!
//! A message the station may hold carries its review intent in a header
//! (`Tg-Review`). Whether it is held or audited is a function of its id and
//! that intent ([`review::on_append`]), so the instance that stores it and
//! the instance that dispatches it draw the same answer without asking
//! each other. The storing instance answers `held` and records the item;
//! the dispatcher, meeting the message in the queue, records it too (if
//! the first instance died between its publish and its record) and parks
//! it in the held stream. A decision moves it out: approve and edit
//! publish it to the queue again under its old id (marked `Tg-Released`, so
//! it is not drawn again), reject makes it a dead letter.
//!
//! Invariants:
//! - the first decision wins: a record is written with a revision check,
//!   and a later decision reads the winner (`AlreadyDecided`);
//! - a held message is released only after its record holds a decision,
//!   and release is idempotent (the queue publish is de-duplicated by
//!   `rel-<id>`, the park by `held-<id>`), so a release interrupted at any
//!   point is finished by the next pass of the holder ([`JetStream::sweep_held`]);
//! - every instance keeps a mirror of the bucket without bodies (a KV
//!   watch), so listing, tallies and the open-review gauge do not read the
//!   whole bucket per question; bodies are read per item asked for.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::jetstream::kv;
use async_nats::HeaderMap;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use async_trait::async_trait;

use super::codec::Finished;
use super::{lock, no_message, put_json, unavailable, Dest, JetStream};
use crate::queue::review::{self, on_append, Decided, OnAppend};
use crate::queue::{
    now_ms, stored, Message, MessageState, NewMessage, Operations, QueueError, Result, ReviewIntent, ReviewStore,
};

/// One review item, as `v.<id>` holds it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(super) struct Record {
    dest: String,
    category: String,
    /// `held`, `audit` or `feedback`.
    kind: String,
    reason: String,
    received_at: i64,
    created_at: i64,
    #[serde(default, with = "super::codec::base64_body")]
    original: Option<Bytes>,
    decision: Option<String>,
    reviewer: Option<String>,
    note: Option<String>,
    #[serde(default, with = "super::codec::base64_body")]
    corrected: Option<Bytes>,
    patch: Option<String>,
    decided_at: Option<i64>,
}

impl Record {
    fn open(&self) -> bool {
        self.decision.is_none() && self.kind != "feedback"
    }

    /// The record as the mirror keeps it: without its bodies.
    fn light(&self) -> Record {
        Record {
            original: None,
            corrected: None,
            patch: None,
            note: None,
            ..self.clone()
        }
    }

    fn item(self, seq: u64) -> review::Item {
        review::Item {
            seq,
            dest: self.dest,
            category: self.category,
            kind: self.kind,
            reason: self.reason,
            received_at: self.received_at,
            original: self.original,
            decision: self.decision,
            reviewer: self.reviewer,
            note: self.note,
            corrected: self.corrected,
            patch: self.patch,
            decided_at: self.decided_at,
        }
    }
}

/// Every instance's copy of `P_REVIEW` without bodies, kept by a watch.
#[derive(Default)]
pub(super) struct Mirror {
    records: BTreeMap<u64, Record>,
    /// Open items per destination (the `open_reviews` gauge).
    open: std::collections::HashMap<String, u64>,
    /// The watch has delivered the bucket's state as of its start.
    caught_up: bool,
}

impl Mirror {
    fn put(&mut self, id: u64, rec: Record) {
        self.remove(id);
        if rec.open() {
            *self.open.entry(rec.dest.clone()).or_default() += 1;
        }
        self.records.insert(id, rec.light());
    }

    fn remove(&mut self, id: u64) {
        if let Some(old) = self.records.remove(&id) {
            if old.open() {
                if let Some(n) = self.open.get_mut(&old.dest) {
                    *n = n.saturating_sub(1);
                }
            }
        }
    }

    pub(super) fn open_of(&self, dest: &str) -> u64 {
        self.open.get(dest).copied().unwrap_or(0)
    }
}

/// A revision-checked write that lost to a concurrent one. A clustered
/// stream answers a write racing another proposal for the same key with
/// error 10164 ("wrong last sequence", no number), which the client does
/// not map to its `WrongLastRevision` (10071 only).
fn lost_race(e: &impl std::fmt::Display) -> bool {
    e.to_string().contains("wrong last sequence")
}

/// A de-duplicated publish racing another with the same id (error 10158):
/// the other one finishes the move.
fn in_process(e: &QueueError) -> bool {
    e.to_string().contains("duplicate message id is in process")
}

fn key(id: u64) -> String {
    format!("v.{id:016x}")
}

fn id_of_key(key: &str) -> Option<u64> {
    u64::from_str_radix(key.strip_prefix("v.")?, 16).ok()
}

/// The review intent as a header: `hold reason;sample;audit;hold_for_ms`.
pub(super) fn encode_intent(intent: &ReviewIntent, h: &mut HeaderMap) {
    let value = format!(
        "{};{};{};{}",
        intent.hold.unwrap_or(""),
        intent.sample,
        intent.audit,
        intent.hold_for_ms.map(|ms| ms.to_string()).unwrap_or_default()
    );
    h.insert("Tg-Review", value.as_str());
}

/// The intent a queued message was stored with; `None` for a message the
/// station does not look at, or one it already released.
fn decode_intent(h: &HeaderMap) -> Option<ReviewIntent> {
    if h.get("Tg-Released").is_some() {
        return None;
    }
    let v = h.get("Tg-Review")?.as_str().to_string();
    let mut parts = v.split(';');
    let hold = match parts.next()? {
        "" => None,
        // The reasons a handoff holds for, as 'static names.
        r => Some(
            ["predicate", "route", "sample", "audit"]
                .into_iter()
                .find(|k| *k == r)
                .unwrap_or("predicate"),
        ),
    };
    Some(ReviewIntent {
        hold,
        sample: parts.next()?.parse().ok()?,
        audit: parts.next()?.parse().ok()?,
        hold_for_ms: parts.next().and_then(|s| s.parse().ok()),
    })
}

/// What [`JetStream::screen`] made of a queued message.
pub(super) enum Screened {
    /// Deliver it.
    Deliver(Message),
    /// Parked (held), or released elsewhere: not for delivery now.
    Parked,
}

impl JetStream {
    pub(super) fn held_subject(&self, d: &Dest, id: u64) -> String {
        format!("{}.{:016x}", d.held_subject_prefix, id)
    }

    /// Keeps this instance's mirror of `P_REVIEW` until the queue closes.
    pub(super) async fn mirror_loop(self) {
        use futures_util::StreamExt as _;
        let mut stop = self.inner.stop.subscribe();
        loop {
            let store = &self.inner.review;
            let empty = store.status().await.map(|s| s.values() == 0).unwrap_or(false);
            if empty {
                lock(&self.inner.mirror).caught_up = true;
            }
            match store.watch_with_history(">").await {
                Ok(mut w) => loop {
                    tokio::select! {
                        e = w.next() => match e {
                            Some(Ok(e)) => {
                                let mut m = lock(&self.inner.mirror);
                                if let Some(id) = id_of_key(&e.key) {
                                    match e.operation {
                                        kv::Operation::Put => {
                                            if let Ok(rec) = serde_json::from_slice::<Record>(&e.value) {
                                                m.put(id, rec);
                                            }
                                        }
                                        kv::Operation::Delete | kv::Operation::Purge => m.remove(id),
                                    }
                                }
                                if e.delta == 0 || e.seen_current {
                                    m.caught_up = true;
                                }
                            }
                            Some(Err(e)) => {
                                tracing::debug!(error = %e, "review mirror: watch failed; starting again");
                                break;
                            }
                            None => break,
                        },
                        _ = stop.changed() => return,
                    }
                },
                Err(e) => tracing::debug!(error = %e, "review mirror: cannot watch"),
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = stop.changed() => return,
            }
        }
    }

    /// Waits (a few seconds at most) for the mirror to hold the bucket as
    /// it was when the watch started: a question asked just after a start
    /// must not be answered from an empty mirror.
    pub(super) async fn mirror_ready(&self) -> Result<()> {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !lock(&self.inner.mirror).caught_up {
            if std::time::Instant::now() > deadline {
                return Err(QueueError::Unavailable(
                    "the review records are still loading from NATS".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }

    /// The record of `id`, read from the bucket (not the mirror), with its
    /// revision.
    /// Message `id`'s status record, as `P_STATUS` holds it.
    async fn finished(&self, id: u64) -> Result<Option<Finished>> {
        let v = self
            .inner
            .status
            .get(format!("s.{id:016x}"))
            .await
            .map_err(unavailable)?;
        Ok(v.and_then(|v| serde_json::from_slice::<Finished>(&v).ok()))
    }

    pub(super) async fn record(&self, id: u64) -> Result<Option<(Record, u64)>> {
        let e = self.inner.review.entry(key(id)).await.map_err(unavailable)?;
        Ok(match e {
            Some(e) if e.operation == kv::Operation::Put => {
                serde_json::from_slice::<Record>(&e.value).ok().map(|r| (r, e.revision))
            }
            _ => None,
        })
    }

    /// Writes `rec` as `id`'s first record; one already there stays.
    pub(super) async fn ensure(&self, id: u64, rec: Record) -> Result<()> {
        let body = serde_json::to_vec(&rec).map_err(unavailable)?;
        match self.inner.review.create(key(id), body.into()).await {
            Ok(_) => {
                lock(&self.inner.mirror).put(id, rec);
                Ok(())
            }
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists || lost_race(&e) => Ok(()),
            Err(e) => Err(unavailable(e)),
        }
    }

    /// What the station makes of a message it just stored: `Some(reason)`
    /// when it is held. Its record is written here so that it is listed at
    /// once; if that write fails, the dispatcher writes it when it meets
    /// the message, so the 2xx already earned is not taken back.
    pub(super) async fn on_stored(&self, msg: &NewMessage, id: u64) -> Option<&'static str> {
        let intent = msg.review.as_ref()?;
        let what = on_append(intent, || self.id_text(id), msg.received_at);
        let (kind, reason) = match what {
            OnAppend::Hold { reason, .. } => ("held", reason),
            OnAppend::Audit => ("audit", "audit"),
            OnAppend::Pass => return None,
        };
        let rec = Record {
            dest: msg.dest.clone(),
            category: msg
                .category
                .clone()
                .unwrap_or_else(|| crate::handoff::UNCATEGORISED.to_string()),
            kind: kind.into(),
            reason: reason.into(),
            received_at: msg.received_at,
            created_at: msg.received_at,
            original: Some(msg.body.clone()),
            ..Record::default()
        };
        if let Err(e) = self.ensure(id, rec).await {
            tracing::warn!(destination = %msg.dest, error = %e, "review record not written at ingest; the dispatcher writes it");
        }
        (kind == "held").then_some(reason)
    }

    pub(super) fn id_text(&self, id: u64) -> String {
        crate::queue::id_of(self.inner.salt, id)
    }

    /// Asks the station about a message read from the queue: audit items
    /// get their record, held ones are parked (and released at once when a
    /// decision came first).
    pub(super) async fn screen(
        &self,
        d: &Dest,
        m: &async_nats::jetstream::message::StreamMessage,
        msg: Message,
    ) -> Result<Screened> {
        let Some(intent) = decode_intent(&m.headers) else {
            return Ok(Screened::Deliver(msg));
        };
        let what = on_append(&intent, || self.id_text(msg.seq), msg.received_at);
        let (kind, reason, until) = match what {
            OnAppend::Pass => return Ok(Screened::Deliver(msg)),
            OnAppend::Audit => ("audit", "audit", None),
            OnAppend::Hold { reason, until } => ("held", reason, Some(until)),
        };
        let category = m
            .headers
            .get("Tg-Category")
            .map(|v| v.as_str().to_string())
            .unwrap_or_else(|| crate::handoff::UNCATEGORISED.to_string());
        let rec = Record {
            dest: d.name.clone(),
            category,
            kind: kind.into(),
            reason: reason.into(),
            received_at: msg.received_at,
            created_at: msg.received_at,
            original: Some(m.payload.clone()),
            ..Record::default()
        };
        // The mirror usually has it already (the storing instance wrote
        // it); a mirror a moment behind costs one refused create.
        let mirrored = lock(&self.inner.mirror).records.get(&msg.seq).cloned();
        if mirrored.is_none() {
            self.ensure(msg.seq, rec).await?;
        }
        let Some(until) = until else {
            return Ok(Screened::Deliver(msg));
        };
        self.park(d, m, &msg, until).await?;
        // Decided before it was parked: released now. A decision the
        // mirror has not seen yet is released by the holder's next pass
        // over the held messages.
        if mirrored.is_none_or(|r| r.decision.is_some()) {
            self.release(d, msg.seq).await?;
        }
        Ok(Screened::Parked)
    }

    /// Moves a held message from the queue to the held stream.
    pub(super) async fn park(
        &self,
        d: &Dest,
        m: &async_nats::jetstream::message::StreamMessage,
        msg: &Message,
        until: i64,
    ) -> Result<()> {
        let id = msg.seq;
        let mut headers = m.headers.clone();
        headers.insert("Tg-Id", id.to_string().as_str());
        if until != i64::MAX {
            headers.insert("Tg-Until", until.to_string().as_str());
        }
        headers.insert("Nats-Msg-Id", format!("held-{id:016x}").as_str());
        let _moving = d.moving.read().await;
        self.publish(&self.held_subject(d, id), headers, m.payload.clone())
            .await?;
        let status = Finished {
            dest: d.name.clone(),
            state: stored::HELD,
            attempts: 0,
            received_at: msg.received_at,
            finished_at: 0,
            last_error: None,
            reason: None,
            producer: m.headers.get("Tg-Producer").map(|v| v.as_str().to_string()),
            category: m.headers.get("Tg-Category").map(|v| v.as_str().to_string()),
            order_key: msg.order_key.clone(),
            original: None,
        };
        put_json(&self.inner.status, format!("s.{id:016x}"), &status).await?;
        self.delete(&d.queue, m.sequence).await?;
        lock(&d.keys).pending.remove(&m.sequence);
        d.counts.held.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Moves a decided held message out of the held stream: to the queue
    /// (approve, edit, a timeout that delivers) or to the dead letters.
    /// Answers whether it moved one; an undecided record or a message not
    /// parked (still queued, or released already) moves nothing.
    pub(super) async fn release(&self, d: &Dest, id: u64) -> Result<bool> {
        match self.record(id).await? {
            Some((rec, _)) => self.release_as(d, id, &rec).await,
            None => Ok(false),
        }
    }

    /// [`JetStream::release`] with the record as its caller just wrote it:
    /// a read back may be served by a replica that has not applied it yet.
    pub(super) async fn release_as(&self, d: &Dest, id: u64, rec: &Record) -> Result<bool> {
        let Some(decision) = rec.decision.as_deref() else {
            return Ok(false);
        };
        let m = match d.held.get_last_raw_message_by_subject(&self.held_subject(d, id)).await {
            Ok(m) => m,
            Err(e) if no_message(&e) => return Ok(false),
            Err(e) => return Err(unavailable(e)),
        };
        let rejected = match (decision, rec.note.as_deref()) {
            ("reject", _) => Some("rejected_by_reviewer"),
            ("timed_out", Some("rejected")) => Some("hold_timeout"),
            _ => None,
        };
        let mut headers = HeaderMap::new();
        for (k, vs) in m.headers.iter() {
            let name: &str = k.as_ref();
            if name == "Tg-Until" || name.starts_with("Nats-") {
                continue;
            }
            for v in vs {
                headers.append(name.to_string(), v.as_str());
            }
        }
        let h = |k: &str| m.headers.get(k).map(|v| v.as_str().to_string());
        // Taken for a move to the queue (a dead letter is not in the
        // depth; `to_dead` counts, and takes it itself).
        let mut _moving = None;
        let mut again = false;
        let received_at = h("Tg-Received").and_then(|s| s.parse().ok()).unwrap_or(0);
        let mut status = Finished {
            dest: d.name.clone(),
            state: stored::PENDING,
            attempts: 0,
            received_at,
            finished_at: 0,
            last_error: None,
            reason: None,
            producer: h("Tg-Producer"),
            category: h("Tg-Category"),
            order_key: h("Tg-Key").and_then(|k| serde_json::from_str(&k).ok()),
            original: None,
        };
        match rejected {
            Some(reason) => {
                // De-duplicated like the queue publish below: the deciding
                // instance and the holder's pass may release it at once,
                // and two dead letters would be two deliveries on replay.
                headers.insert("Nats-Msg-Id", format!("dead-{id:016x}").as_str());
                match self.to_dead(d, headers, m.payload.clone(), id, reason, 0, None).await {
                    Ok(()) => {}
                    Err(e) if in_process(&e) => return Ok(false),
                    Err(e) => return Err(e),
                }
                status.state = stored::DEAD;
                status.finished_at = now_ms();
                status.reason = Some(reason.to_string());
            }
            None => {
                let body = match decision {
                    "edit" => rec.corrected.clone().unwrap_or_else(|| m.payload.clone()),
                    _ => m.payload.clone(),
                };
                headers.insert("Tg-Released", "1");
                headers.insert("Nats-Msg-Id", format!("rel-{id:016x}").as_str());
                _moving = Some(d.moving.read().await);
                match self.publish(&d.subject, headers, body).await {
                    Ok(ack) => again = ack.duplicate,
                    // The holder's pass is releasing it this very moment
                    // (error 10158): that release finishes the move.
                    Err(e) if in_process(&e) => return Ok(false),
                    Err(e) => return Err(e),
                }
            }
        }
        // A release finished a second time (after a crash, or beside
        // another) leaves the status alone: the message may be delivered
        // by now, and its dispatcher writes the status that stays.
        if !again {
            put_json(&self.inner.status, format!("s.{id:016x}"), &status).await?;
        }
        self.delete(&d.held, m.sequence).await?;
        let held = d.counts.held.load(Ordering::Relaxed);
        d.counts.held.store(held.saturating_sub(1), Ordering::Relaxed);
        if rejected.is_none() {
            d.counts.ready.notify_waiters();
        }
        Ok(true)
    }

    /// One pass over `d`'s held messages by the instance dispatching it:
    /// those decided whose release was interrupted are released, and with
    /// `timeout` (`Some(deliver)`) those whose hold ended by `now` are
    /// decided `timed_out` and released. Answers how many timed out.
    pub(super) async fn sweep_held(&self, d: &Dest, timeout: Option<bool>, now: i64) -> Result<u64> {
        if !d.dispatching() {
            return Ok(0);
        }
        let info = d.held.get_info().await.map_err(unavailable)?;
        let (first, last) = (info.state.first_sequence.max(1), info.state.last_sequence);
        let mut n = 0;
        let mut from = first;
        while info.state.messages > 0 && from <= last {
            let upto = (from + 255).min(last);
            let got = futures_util::future::join_all((from..=upto).map(|s| d.held.get_raw_message(s))).await;
            for r in got {
                let m = match r {
                    Ok(m) => m,
                    Err(e) if no_message(&e) => continue,
                    Err(e) => return Err(unavailable(e)),
                };
                let Some(id) = m.headers.get("Tg-Id").and_then(|v| v.as_str().parse::<u64>().ok()) else {
                    continue;
                };
                let until = m
                    .headers
                    .get("Tg-Until")
                    .and_then(|v| v.as_str().parse::<i64>().ok())
                    .unwrap_or(i64::MAX);
                let Some((mut rec, revision)) = self.record(id).await? else {
                    continue;
                };
                if rec.decision.is_none() {
                    let Some(deliver) = timeout else { continue };
                    if until > now {
                        continue;
                    }
                    rec.decision = Some("timed_out".into());
                    rec.note = Some(if deliver { "delivered" } else { "rejected" }.into());
                    rec.decided_at = Some(now);
                    let body = serde_json::to_vec(&rec).map_err(unavailable)?;
                    match self.inner.review.update(key(id), body.into(), revision).await {
                        Ok(_) => {
                            lock(&self.inner.mirror).put(id, rec.clone());
                            n += 1;
                        }
                        // Decided meanwhile: the next pass releases that
                        // decision.
                        Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision || lost_race(&e) => continue,
                        Err(e) => return Err(unavailable(e)),
                    }
                }
                self.release_as(d, id, &rec).await?;
            }
            from = upto + 1;
        }
        Ok(n)
    }

    /// The full records of `ids`, read at once, in order.
    pub(super) async fn items(&self, ids: Vec<u64>) -> Result<Vec<review::Item>> {
        let got = futures_util::future::join_all(ids.iter().map(|id| self.record(*id))).await;
        let mut out = Vec::with_capacity(ids.len());
        for (id, r) in ids.into_iter().zip(got) {
            if let Some((rec, _)) = r? {
                out.push(rec.item(id));
            }
        }
        Ok(out)
    }

    /// Up to `limit` full items after `after` (an id) whose mirrored
    /// record `wanted` picks, oldest first.
    pub(super) async fn page(
        &self,
        after: u64,
        limit: usize,
        wanted: impl Fn(&Record) -> bool,
    ) -> Result<Vec<review::Item>> {
        self.mirror_ready().await?;
        let ids: Vec<u64> = lock(&self.inner.mirror)
            .records
            .range(after.saturating_add(1)..)
            .filter(|(_, r)| wanted(r))
            .take(limit)
            .map(|(id, _)| *id)
            .collect();
        self.items(ids).await
    }

    pub(super) async fn tallies_of(
        &self,
        dest: Option<&str>,
        category: Option<&str>,
        since: i64,
    ) -> Result<Vec<((String, String), review::Tally)>> {
        self.mirror_ready().await?;
        let m = lock(&self.inner.mirror);
        let mut out: BTreeMap<(String, String), review::Tally> = BTreeMap::new();
        for r in m.records.values() {
            let Some(decision) = &r.decision else { continue };
            if r.decided_at.unwrap_or(0) < since
                || dest.is_some_and(|d| d != r.dest)
                || category.is_some_and(|c| c != r.category)
            {
                continue;
            }
            out.entry((r.dest.clone(), r.category.clone()))
                .or_default()
                .count(decision, 1);
        }
        Ok(out.into_iter().collect())
    }

    /// Decisions since `since` by destination, category and reviewer, from
    /// the mirror.
    pub(super) async fn reviewer_tallies_of(
        &self,
        dest: Option<&str>,
        since: i64,
    ) -> Result<Vec<(review::ReviewerKey, review::Tally)>> {
        self.mirror_ready().await?;
        let m = lock(&self.inner.mirror);
        let mut out: BTreeMap<review::ReviewerKey, review::Tally> = BTreeMap::new();
        for r in m.records.values() {
            let (Some(decision), Some(reviewer)) = (&r.decision, &r.reviewer) else {
                continue;
            };
            if r.decided_at.unwrap_or(0) < since || dest.is_some_and(|d| d != r.dest) {
                continue;
            }
            out.entry((r.dest.clone(), r.category.clone(), reviewer.clone()))
                .or_default()
                .count(decision, 1);
        }
        Ok(out.into_iter().collect())
    }

    /// Deletes review records created before `cutoff`, except those of
    /// messages still held (their decision is still owed).
    pub(super) async fn sweep_reviews(&self, cutoff: i64) -> Result<u64> {
        let old: Vec<u64> = {
            let m = lock(&self.inner.mirror);
            m.records
                .iter()
                .filter(|(_, r)| r.created_at < cutoff && !(r.kind == "held" && r.decision.is_none()))
                .map(|(id, _)| *id)
                .collect()
        };
        let mut n = 0;
        for id in old {
            self.inner.review.purge(key(id)).await.map_err(unavailable)?;
            lock(&self.inner.mirror).remove(id);
            n += 1;
        }
        Ok(n)
    }
}

#[async_trait]
impl ReviewStore for JetStream {
    /// Records a decision (see [`Decided`]); the first decision on an item
    /// wins, by the bucket's revision check.
    async fn decide(&self, id: u64, dn: review::Decision) -> Result<Decided> {
        let feedback = dn.verdict.is_feedback();
        for attempt in 0..16u64 {
            if attempt > 0 {
                // A write that lost is read back; reads may come from a
                // replica a few milliseconds behind the winner.
                tokio::time::sleep(Duration::from_millis(5 * attempt)).await;
            }
            let mut note = dn.note.clone();
            let (mut rec, revision, open) = match self.record(id).await? {
                Some((rec, revision)) => match rec.decision.as_deref() {
                    // A timeout nobody looked at, or an approval
                    // overridden downstream: see `Verdict::replaces`.
                    Some(decision) if dn.verdict.replaces(decision) => {
                        note = review::replacing_note(decision, rec.reviewer.as_deref(), dn.note.as_deref());
                        (rec, Some(revision), false)
                    }
                    Some(decision) => {
                        return Ok(Decided::AlreadyDecided {
                            decision: decision.to_string(),
                            reviewer: rec.reviewer.clone(),
                        })
                    }
                    None if rec.kind == "held" && feedback => {
                        return Ok(Decided::NotReviewable {
                            state: MessageState::Held,
                        });
                    }
                    None => (rec, Some(revision), true),
                },
                None => {
                    let Some(st) = self.status(id).await? else {
                        return Ok(Decided::NotFound);
                    };
                    if !feedback || st.state != MessageState::Delivered {
                        return Ok(Decided::NotReviewable { state: st.state });
                    }
                    // Feedback on a message nobody reviewed before: the
                    // original is its body, kept after delivery on a
                    // destination under review (else gone).
                    let original = self.kept_body(id).await?;
                    let rec = Record {
                        original,
                        dest: st.dest,
                        category: st.category.unwrap_or_else(|| crate::handoff::UNCATEGORISED.to_string()),
                        kind: "feedback".into(),
                        reason: "feedback".into(),
                        received_at: st.received_at,
                        created_at: dn.at,
                        ..Record::default()
                    };
                    (rec, None, true)
                }
            };
            rec.decision = Some(dn.verdict.as_str().to_string());
            rec.reviewer = Some(dn.reviewer.clone());
            rec.note = note;
            rec.corrected = dn.corrected.clone();
            rec.patch = dn.patch.clone();
            rec.decided_at = Some(dn.at);
            let body = serde_json::to_vec(&rec).map_err(unavailable)?;
            let wrote = match revision {
                Some(r) => match self.inner.review.update(key(id), body.into(), r).await {
                    Ok(_) => true,
                    Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision || lost_race(&e) => false,
                    Err(e) => return Err(unavailable(e)),
                },
                None => match self.inner.review.create(key(id), body.into()).await {
                    Ok(_) => true,
                    Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists || lost_race(&e) => false,
                    Err(e) => return Err(unavailable(e)),
                },
            };
            if !wrote {
                // Somebody wrote first: read what they wrote.
                continue;
            }
            let (dest, category, kind) = (rec.dest.clone(), rec.category.clone(), rec.kind.clone());
            lock(&self.inner.mirror).put(id, rec.clone());
            if kind == "held" && open {
                if let Some(d) = self.known(&dest) {
                    // Not parked yet (still queued): the dispatcher
                    // releases it when it meets it.
                    self.release_as(&d, id, &rec).await?;
                }
            }
            return Ok(Decided::Done { dest, category, kind });
        }
        Err(QueueError::Unavailable(
            "the review record kept changing while deciding; try again".into(),
        ))
    }

    async fn expire_holds(&self, dest: &str, deliver: bool, now: i64) -> Result<u64> {
        let Some(d) = self.known(dest) else { return Ok(0) };
        self.sweep_held(&d, Some(deliver), now).await
    }

    async fn review_item(&self, id: u64) -> Result<Option<review::Item>> {
        Ok(self.record(id).await?.map(|(r, _)| r.item(id)))
    }

    async fn kept_body(&self, id: u64) -> Result<Option<Bytes>> {
        Ok(self.finished(id).await?.and_then(|f| f.original))
    }

    async fn open_reviews(
        &self,
        dest: Option<String>,
        category: Option<String>,
        after: u64,
        limit: usize,
    ) -> Result<Vec<review::Item>> {
        self.page(after, limit, |r| {
            r.decision.is_none()
                && dest.as_ref().is_none_or(|d| &r.dest == d)
                && category.as_ref().is_none_or(|c| &r.category == c)
        })
        .await
    }

    async fn oldest_open_review(&self, dest: &str) -> Result<Option<i64>> {
        self.mirror_ready().await?;
        let m = lock(&self.inner.mirror);
        Ok(m.records
            .values()
            .find(|r| r.decision.is_none() && r.dest == dest)
            .map(|r| r.received_at))
    }

    async fn review_tallies(&self, dest: Option<String>, since: i64) -> Result<Vec<((String, String), review::Tally)>> {
        self.tallies_of(dest.as_deref(), None, since).await
    }

    async fn reviewer_tallies(
        &self,
        dest: Option<String>,
        since: i64,
    ) -> Result<Vec<(review::ReviewerKey, review::Tally)>> {
        self.reviewer_tallies_of(dest.as_deref(), since).await
    }

    async fn review_tally(&self, dest: &str, category: &str, since: i64) -> Result<review::Tally> {
        Ok(self
            .tallies_of(Some(dest), Some(category), since)
            .await?
            .into_iter()
            .next()
            .map(|(_, t)| t)
            .unwrap_or_default())
    }

    /// Message counts since `since` by destination, category and state:
    /// finished, held and re-queued messages from their status records,
    /// pending ones from the queue streams. It reads all of them, so it
    /// costs in proportion to history and backlog (the quality report
    /// asks; the live pages use the tallies alone).
    async fn volumes(&self, dest: Option<String>, since: i64) -> Result<Vec<(String, String, MessageState, u64)>> {
        use futures_util::StreamExt as _;
        let mut counts: BTreeMap<(String, String, i64), u64> = BTreeMap::new();
        let cat = |c: Option<String>| c.unwrap_or_else(|| crate::handoff::UNCATEGORISED.to_string());
        let store = &self.inner.status;
        if store.status().await.map_err(unavailable)?.values() > 0 {
            let mut w = store.watch_with_history(">").await.map_err(unavailable)?;
            loop {
                let e = match tokio::time::timeout(Duration::from_secs(5), w.next()).await {
                    Ok(Some(e)) => e.map_err(unavailable)?,
                    Ok(None) => break,
                    Err(_) => return Err(QueueError::Unavailable("reading message history timed out".into())),
                };
                if e.operation == kv::Operation::Put {
                    if let Ok(f) = serde_json::from_slice::<Finished>(&e.value) {
                        // Pending ones are counted from their queue below.
                        if f.state != stored::PENDING
                            && f.received_at >= since
                            && dest.as_ref().is_none_or(|d| &f.dest == d)
                        {
                            *counts.entry((f.dest, cat(f.category), f.state)).or_default() += 1;
                        }
                    }
                }
                if e.delta == 0 || e.seen_current {
                    break;
                }
            }
        }
        let dests: Vec<std::sync::Arc<Dest>> = self
            .inner
            .dests
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .filter(|d| dest.as_ref().is_none_or(|n| &d.name == n))
            .cloned()
            .collect();
        for d in dests {
            let mut from = 1;
            loop {
                let (batch, next) = self.read_from(&d, from, 256).await?;
                if batch.is_empty() {
                    break;
                }
                from = next;
                for m in batch {
                    let (msg, handed) = self.decode(&d, &m);
                    if msg.received_at >= since {
                        *counts
                            .entry((d.name.clone(), cat(handed.category), stored::PENDING))
                            .or_default() += 1;
                    }
                }
            }
        }
        Ok(counts
            .into_iter()
            .map(|((d, c, s), n)| (d, c, MessageState::from_stored(s, 0, 0), n))
            .collect())
    }

    async fn corrections(
        &self,
        dest: Option<String>,
        since: i64,
        after: u64,
        limit: usize,
    ) -> Result<Vec<review::Item>> {
        self.page(after, limit, |r| {
            matches!(r.decision.as_deref(), Some("edit" | "overridden"))
                && r.decided_at.unwrap_or(0) >= since
                && dest.as_ref().is_none_or(|d| &r.dest == d)
        })
        .await
    }
}
