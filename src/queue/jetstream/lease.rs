//! One dispatcher per destination: the lease in `P_LEASE` that an instance
//! takes, refreshes and lets go, the reading epoch each new holder starts,
//! the counts read back from the streams for every instance, and what
//! instances tell each other (`impl Cluster`).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use async_nats::jetstream::stream;
use async_nats::HeaderMap;
use async_trait::async_trait;
use bytes::Bytes;

use super::codec::Retry;
use super::{lock, unavailable, Dest, JetStream, Reading, COUNT_EVERY, HELD_SWEEP_TICKS, LEASE_REFRESH, LEASE_SAFE};
use crate::queue::{now_ms, Cluster, Outcome, Result};

/// Takes the destination's lease when it is free, keeps it refreshed while
/// held, and lets go the moment a refresh fails for longer than
/// `LEASE_SAFE` (or another instance holds it).
pub(super) async fn lease_loop(q: JetStream, d: Arc<Dest>) {
    let key = format!("l.{}", d.name);
    let me = Bytes::from(q.inner.instance.clone());
    let mut revision: Option<u64> = None;
    let mut stop = q.inner.stop.subscribe();
    loop {
        let now = Instant::now();
        let result = match revision {
            Some(r) => q
                .inner
                .lease
                .update(&key, me.clone(), r)
                .await
                .map_err(|e| e.to_string()),
            None => q.inner.lease.create(&key, me.clone()).await.map_err(|e| e.to_string()),
        };
        match result {
            Ok(r) => {
                if revision.is_none() {
                    d.epoch.fetch_add(1, Ordering::SeqCst);
                    tracing::info!(destination = %d.name, instance = %q.inner.instance, "took the dispatch lease");
                    // The state last recorded (a pause through another
                    // instance) is in force before the first attempt.
                    q.apply_state(&d.name).await;
                    *lock(&d.answering) = Some(tokio::spawn(answer_states(q.clone(), d.clone())));
                }
                revision = Some(r);
                *lock(&d.refreshed) = Some(now);
                d.holding.store(true, Ordering::SeqCst);
                d.counts.ready.notify_waiters();
            }
            Err(e) => {
                if revision.is_some() {
                    let stale = lock(&d.refreshed).is_none_or(|t| t.elapsed() >= LEASE_SAFE);
                    // A wrong revision: someone else holds it now. A
                    // failure to reach NATS: keep trying until LEASE_SAFE.
                    if stale || e.contains("wrong last sequence") || e.contains("revision") {
                        tracing::warn!(destination = %d.name, error = %e, "lost the dispatch lease; stopped dispatching");
                        d.holding.store(false, Ordering::SeqCst);
                        if let Some(t) = lock(&d.answering).take() {
                            t.abort();
                        }
                        d.epoch.fetch_add(1, Ordering::SeqCst);
                        revision = None;
                    }
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(LEASE_REFRESH) => {}
            _ = stop.changed() => break,
        }
    }
    if let Some(t) = lock(&d.answering).take() {
        t.abort();
    }
    if revision.is_some() {
        d.holding.store(false, Ordering::SeqCst);
        // Let go at once on a clean stop, so another takes over now.
        let _ = q.inner.lease.purge(&key).await;
    }
}

/// While this instance holds `d`'s lease: answers each state announcement
/// once the dispatcher has applied the record it announces.
async fn answer_states(q: JetStream, d: Arc<Dest>) {
    use futures_util::StreamExt as _;
    let subject = format!("{}.state.{}", q.inner.cfg.stream_prefix, d.name);
    let mut asks = match q.inner.client.subscribe(subject).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(destination = %d.name, error = %e, "cannot answer state announcements; pauses through other instances take effect within a second");
            return;
        }
    };
    while let Some(m) = asks.next().await {
        q.apply_state(&d.name).await;
        if let Some(reply) = m.reply {
            let _ = q.inner.client.publish(reply, Bytes::new()).await;
        }
    }
}

impl JetStream {
    /// Has the dispatcher apply `dest`'s record now, and waits (a bounded
    /// while) until it has; nothing to wait for before a dispatcher follows.
    async fn apply_state(&self, dest: &str) {
        if !self.inner.following.load(Ordering::SeqCst) {
            return;
        }
        let (done, applied) = tokio::sync::oneshot::channel();
        if self.inner.state_tx.send((dest.to_string(), done)).is_ok() {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(2), applied).await;
        }
    }
}

/// Keeps a destination's counts close to the streams', and wakes its
/// dispatcher when messages arrive through other instances.
pub(super) async fn count_loop(q: JetStream, d: Arc<Dest>) {
    let mut stop = q.inner.stop.subscribe();
    let mut last = 0;
    let mut tick = 0u64;
    loop {
        if let Ok(seen) = q.count(&d).await {
            if seen != last {
                last = seen;
                d.counts.ready.notify_waiters();
            }
        }
        tick += 1;
        // Releases a decision could not finish (an instance died between
        // its record and the move, or a message was parked just after
        // it was decided): the holder finishes them.
        if tick % HELD_SWEEP_TICKS == 0 && d.dispatching() && d.counts.held.load(Ordering::Relaxed) > 0 {
            if let Err(e) = q.sweep_held(&d, None, now_ms()).await {
                tracing::debug!(destination = %d.name, error = %e, "cannot look over the held messages");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(COUNT_EVERY) => {}
            _ = stop.changed() => break,
        }
    }
}

impl JetStream {
    /// Reads a destination's counts back from its streams; returns the
    /// queue stream's last sequence (it moves when anyone appends).
    pub(super) async fn count(&self, d: &Dest) -> Result<u64> {
        let gone = |e: &stream::InfoError| e.to_string().contains("stream not found");
        let moving = d.moving.write().await;
        let q = match d.queue.get_info().await {
            Ok(q) => q,
            Err(e) if gone(&e) => return self.recreate(d, false).await.map(|_| 0),
            Err(e) => return Err(unavailable(e)),
        };
        let dead = match d.dead.get_info().await {
            Ok(q) => q,
            Err(e) if gone(&e) => return self.recreate(d, true).await.map(|_| 0),
            Err(e) => return Err(unavailable(e)),
        };
        let held = d.held.get_info().await.map_err(unavailable)?;
        drop(moving);
        d.last_seen.fetch_max(q.state.last_sequence, Ordering::SeqCst);
        // Held messages count in the queue's depth and bytes, as they do
        // on SQLite: they are owed a delivery or a decision.
        let before_depth = d
            .counts
            .depth
            .swap(q.state.messages + held.state.messages, Ordering::Relaxed);
        d.counts
            .bytes
            .store(q.state.bytes + held.state.bytes, Ordering::Relaxed);
        d.counts.held.store(held.state.messages, Ordering::Relaxed);
        d.counts
            .open_reviews
            .store(lock(&self.inner.mirror).open_of(&d.name), Ordering::Relaxed);
        d.counts.dead_letters.store(dead.state.messages, Ordering::Relaxed);
        d.stored_bytes
            .store(q.state.bytes + dead.state.bytes + held.state.bytes, Ordering::Relaxed);
        let total: u64 = self
            .inner
            .dests
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(|d| d.stored_bytes.load(Ordering::Relaxed))
            .sum();
        self.inner.stats.disk_bytes.store(total, Ordering::Relaxed);
        if q.state.messages + held.state.messages < before_depth {
            d.counts.room.notify_waiters();
        }
        Ok(q.state.last_sequence)
    }

    /// Starts a new lease epoch's reading: from the first message, with the
    /// retry schedules recorded by whoever dispatched before.
    pub(super) async fn begin_epoch(&self, d: &Dest, epoch: u64) -> Result<()> {
        let prefix = format!("r.{}.", d.name);
        let mut scheduled = BTreeMap::new();
        let mut keys = self.inner.state.keys().await.map_err(unavailable)?;
        use futures_util::StreamExt as _;
        while let Some(k) = keys.next().await {
            let k = k.map_err(unavailable)?;
            let Some(seq) = k.strip_prefix(&prefix).and_then(|s| s.parse::<u64>().ok()) else {
                continue;
            };
            if let Some(v) = self.inner.state.get(&k).await.map_err(unavailable)? {
                if let Ok(r) = serde_json::from_slice::<Retry>(&v) {
                    scheduled.insert(seq, r);
                }
            }
        }
        d.forget_ahead();
        let mut r = lock(&d.reading);
        *r = Reading {
            epoch,
            cursor: 1,
            rewind: false,
            scheduled,
        };
        Ok(())
    }

    pub(super) async fn reading_ready(&self, d: &Dest) -> Result<bool> {
        let epoch = d.epoch.load(Ordering::SeqCst);
        let stale = lock(&d.reading).epoch != epoch;
        if stale {
            self.begin_epoch(d, epoch).await?;
        }
        Ok(d.dispatching())
    }
}

#[async_trait]
impl Cluster for JetStream {
    fn shared(&self) -> bool {
        true
    }

    fn may_dispatch(&self, dest: &str) -> bool {
        self.known(dest).is_some_and(|d| d.dispatching())
    }

    fn announce_outcome(&self, o: Outcome) {
        let mut h = HeaderMap::new();
        h.insert("Tg-Instance", self.inner.instance.as_str());
        h.insert("Tg-Id", o.seq.to_string().as_str());
        h.insert("Tg-State", o.state.as_str());
        if !o.detail.is_empty() {
            // Header values end at a line break.
            h.insert("Tg-Detail", o.detail.replace(['\r', '\n'], " ").as_str());
        }
        let body = match o.response {
            Some((status, content_type, body)) => {
                h.insert("Tg-Status", status.to_string().as_str());
                if let Some(ct) = content_type {
                    h.insert("Tg-Content-Type", ct.as_str());
                }
                body
            }
            None => Bytes::new(),
        };
        let (client, subject) = (
            self.inner.client.clone(),
            format!("{}.done", self.inner.cfg.stream_prefix),
        );
        tokio::spawn(async move {
            if let Err(e) = client.publish_with_headers(subject, h, body).await {
                tracing::debug!(error = %e, "could not announce an outcome");
            }
        });
    }

    fn outcomes(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<Outcome>> {
        lock(&self.inner.outcomes).take()
    }

    async fn announce_reload(&self) {
        let subject = format!("{}.reload", self.inner.cfg.stream_prefix);
        let me = Bytes::from(self.inner.instance.clone());
        if let Err(e) = self.inner.client.publish(subject, me).await {
            tracing::warn!(error = %e, "could not tell the other instances to reload");
        }
    }

    fn reload_asked(&self) -> Option<Arc<tokio::sync::Notify>> {
        Some(self.inner.reload_asked.clone())
    }

    async fn announce_state(&self, dest: &str) {
        if self.may_dispatch(dest) {
            return;
        }
        // Only the holder answers (it subscribes while it holds the
        // lease): nobody dispatching is "no responders", at once. A holder
        // that does not answer in time has either applied the record by
        // its own reading or stopped: past LEASE_SAFE it hands out nothing.
        let subject = format!("{}.state.{dest}", self.inner.cfg.stream_prefix);
        let wait = LEASE_SAFE + std::time::Duration::from_millis(500);
        match tokio::time::timeout(wait, self.inner.client.request(subject, Bytes::new())).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) if e.kind() == async_nats::RequestErrorKind::NoResponders => {}
            Ok(Err(e)) => {
                tracing::warn!(destination = dest, error = %e, "the dispatching instance did not confirm a state change")
            }
            Err(_) => tracing::warn!(
                destination = dest,
                "the dispatching instance did not confirm a state change in time"
            ),
        }
    }

    fn state_asked(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<crate::queue::StateAsked>> {
        let rx = lock(&self.inner.state_rx).take();
        if rx.is_some() {
            self.inner.following.store(true, Ordering::SeqCst);
        }
        rx
    }
}
