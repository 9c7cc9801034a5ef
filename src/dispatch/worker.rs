//! The per-destination worker loop: what it fetches, when it waits, and
//! the life of one attempt of a message sent alone (a batch's is
//! `batch`'s; what follows either answer is `settle`'s).

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::Instrument;

use super::batch;
use super::policy::{self, Facts};
use super::settle::{
    apply_change, carry_out, invalid_request, last_error_of, learn, lease, lease_all, release, unsendable,
};
use super::{Context, Destination, State};
use crate::config::Ordering as QueueOrdering;
use crate::delivery::{self, join_url, put_header, Outcome};
use crate::handoff::Rendered;
use crate::queue::{now_ms, Message};

/// Longest a worker sleeps without re-checking the queue; a safety net for
/// wake-ups, not the mechanism (commits and state changes wake it).
const IDLE_RECHECK: Duration = Duration::from_secs(5);

pub(crate) async fn run(ctx: Arc<Context>, d: Arc<Destination>, mut shutdown: watch::Receiver<bool>) {
    let mut kick = d.kick.subscribe();
    let mut buffer: VecDeque<Message> = VecDeque::new();
    // The ordering the buffered messages were fetched under: a reload that
    // changes it must not let them out of their new order.
    let mut buffered_as = d.config().queue.ordering;
    // Where the next keyed fetch starts its round of the keys.
    let mut key_cursor = String::new();
    // When the batch now forming took its first message (SPEC §16): a
    // partial batch leaves `max_wait` after that.
    let mut batch_opened: Option<std::time::Instant> = None;
    loop {
        if *shutdown.borrow() {
            break;
        }
        if buffer.is_empty() {
            batch_opened = None;
        }
        kick.borrow_and_update();
        let state = d.current_state();
        let cfg = d.config();
        let ordering = cfg.queue.ordering;
        if ordering != buffered_as {
            give_back(&ctx, &d, &mut buffer);
            buffered_as = ordering;
        }
        if matches!(state, State::Paused | State::Halted) {
            give_back(&ctx, &d, &mut buffer);
            tokio::select! {
                _ = kick.changed() => {}
                _ = shutdown.changed() => {}
            }
            continue;
        }
        let keyed = ordering == QueueOrdering::Key;
        // A degraded key-ordered destination probes through its keyed
        // fetch, one at a time: the oldest message of all may belong to a
        // halted key, which must not be sent.
        if (state == State::Degraded && !keyed) || ordering == QueueOrdering::Fifo {
            give_back(&ctx, &d, &mut buffer);
            if !serial_step(&ctx, &d, &mut kick, &mut shutdown).await {
                break;
            }
            continue;
        }

        let max_in_flight = match state {
            State::Degraded => 1,
            _ => u64::from(d.limiter.in_flight_limit(cfg.rate_limit.max_in_flight)),
        };
        if buffer.is_empty() {
            let prefetch = match &cfg.batch {
                // Enough for two full batches, so the next one forms while
                // one is out.
                Some(b) => (b.max_messages * 2).max(4),
                None => (max_in_flight as usize * 2).clamp(4, 128),
            };
            let leased = || -> Vec<u64> {
                d.in_flight_seqs
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .iter()
                    .copied()
                    .collect()
            };
            let ready = d.queue.ready.notified();
            // Registered before the read, so an attempt that ends during
            // it still wakes the worker: under key ordering that end is
            // what frees its key's next message, and a wake-up missed here
            // would wait for the idle re-check.
            let settled = d.settled.notified();
            tokio::pin!(settled);
            settled.as_mut().enable();
            let fetched = if keyed {
                let in_flight = d.in_flight_seqs.lock().unwrap_or_else(|e| e.into_inner()).clone();
                let fetched = ctx
                    .queues
                    .fetch_keyed(&d.name, prefetch, in_flight, d.halted_key_names(), key_cursor.clone())
                    .await;
                fetched.map(|(due, cursor)| {
                    key_cursor = cursor;
                    due
                })
            } else {
                ctx.queues.fetch_ready(&d.name, prefetch, &leased).await
            };
            match fetched {
                Ok(due) if !due.messages.is_empty() => buffer.extend(due.messages),
                Ok(due) => {
                    tokio::select! {
                        _ = ready => {}
                        _ = settled => {}
                        _ = tokio::time::sleep(idle_wait(due.next_due)) => {}
                        _ = kick.changed() => {}
                        _ = shutdown.changed() => {}
                    }
                    continue;
                }
                Err(e) => {
                    tracing::error!(destination = %d.name, error = %e, "reading the queue failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = shutdown.changed() => {}
                    }
                    continue;
                }
            }
        }

        // A batch that is not full waits for more, up to `max_wait` (a
        // key-ordered one takes what one keyed fetch found: a second fetch
        // could bring a key already waiting in the buffer).
        if let (Some(b), false) = (&cfg.batch, keyed) {
            if !batch::ready_to_leave(&buffer, b) {
                let deadline = *batch_opened.get_or_insert_with(std::time::Instant::now) + b.max_wait;
                if std::time::Instant::now() < deadline {
                    let ready = d.queue.ready.notified();
                    tokio::pin!(ready);
                    ready.as_mut().enable();
                    // Buffered messages are not leased yet; a read of the
                    // index must skip them as it skips those in flight.
                    let buffered: Vec<u64> = buffer.iter().map(|m| m.seq).collect();
                    let exclude = || {
                        let mut seqs: Vec<u64> = d
                            .in_flight_seqs
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .iter()
                            .copied()
                            .collect();
                        seqs.extend_from_slice(&buffered);
                        seqs
                    };
                    let room = b.max_messages.saturating_sub(buffer.len()).max(1);
                    match ctx.queues.fetch_ready(&d.name, room, &exclude).await {
                        Ok(due) if !due.messages.is_empty() => {
                            buffer.extend(due.messages);
                            continue;
                        }
                        Ok(due) => {
                            // New messages signal `ready`; a retry coming
                            // due (the rest of a batch rescheduled together)
                            // signals nothing, so its time is a wake-up too.
                            let wake = match due.next_due {
                                Some(at) => deadline.min(std::time::Instant::now() + idle_wait(Some(at))),
                                None => deadline,
                            };
                            tokio::select! {
                                _ = ready => {}
                                _ = tokio::time::sleep_until(tokio::time::Instant::from_std(wake)) => {}
                                _ = kick.changed() => {}
                                _ = shutdown.changed() => {}
                            }
                            continue;
                        }
                        // The batch leaves with what it has.
                        Err(e) => tracing::warn!(destination = %d.name, error = %e, "reading more for a batch failed"),
                    }
                }
            }
        }

        // The in-flight cap is read from the live config, so a reload
        // changes it at once.
        if d.in_flight.load(Ordering::Relaxed) >= max_in_flight {
            // Registered before the re-check, so a release in between is
            // not missed.
            let settled = d.settled.notified();
            tokio::pin!(settled);
            settled.as_mut().enable();
            if d.in_flight.load(Ordering::Relaxed) >= max_in_flight {
                tokio::select! {
                    _ = settled => {}
                    _ = kick.changed() => {}
                    _ = shutdown.changed() => {}
                }
            }
            continue;
        }
        tokio::select! {
            _ = d.limiter.acquire() => {}
            _ = shutdown.changed() => continue,
        }
        let now = d.current_state();
        if !(now == State::Running || (keyed && now == State::Degraded)) || d.config().queue.ordering != ordering {
            continue; // re-evaluate
        }
        // Cluster mode: a dispatcher that lost its lease attempts nothing
        // more, not even what it fetched while it held it.
        if !ctx.queues.may_dispatch(&d.name) {
            give_back(&ctx, &d, &mut buffer);
            continue;
        }
        if let Some(b) = &cfg.batch {
            let (items, flush) = batch::take(&mut buffer, b);
            if items.is_empty() {
                continue;
            }
            batch_opened = None;
            lease_all(&d, items.iter().map(|m| m.seq));
            let (ctx, d) = (ctx.clone(), d.clone());
            tokio::spawn(async move { batch::attempt(&ctx, &d, items, flush).await });
            continue;
        }
        let Some(msg) = buffer.pop_front() else {
            continue;
        };
        lease(&d, msg.seq);
        let (ctx, d) = (ctx.clone(), d.clone());
        tokio::spawn(async move { attempt(&ctx, &d, msg).await });
    }
    // Stopped by a reload that removed the destination, or by shutdown.
    give_back(&ctx, &d, &mut buffer);
}

/// How long to sleep when nothing is deliverable: until the next scheduled
/// retry, or the idle re-check. Messages in flight need no timer: their
/// settlement wakes the worker.
fn idle_wait(next_due: Option<i64>) -> Duration {
    match next_due {
        Some(at) => Duration::from_millis((at - now_ms()).max(1) as u64).min(IDLE_RECHECK),
        None => IDLE_RECHECK,
    }
}

/// One step of serial delivery (FIFO ordering, or the probe of a degraded
/// destination): the lowest-seq message, alone, when it is due. Returns
/// false on shutdown.
async fn serial_step(
    ctx: &Arc<Context>,
    d: &Arc<Destination>,
    kick: &mut watch::Receiver<u64>,
    shutdown: &mut watch::Receiver<bool>,
) -> bool {
    // Attempts started before the switch to serial finish first.
    if d.in_flight.load(Ordering::Relaxed) > 0 {
        tokio::select! {
            _ = d.settled.notified() => {}
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = shutdown.changed() => return false,
        }
        return true;
    }
    let ready = d.queue.ready.notified();
    let head = match ctx.queues.head(&d.name).await {
        Ok(h) => h,
        Err(e) => {
            tracing::error!(destination = %d.name, error = %e, "reading the queue head failed; retrying");
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = shutdown.changed() => return false,
            }
            return true;
        }
    };
    let Some((msg, visible_at)) = head else {
        tokio::select! {
            _ = ready => {}
            _ = tokio::time::sleep(IDLE_RECHECK) => {}
            _ = kick.changed() => {}
            _ = shutdown.changed() => return false,
        }
        return true;
    };
    let due_in = visible_at - now_ms();
    if due_in > 0 {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(due_in as u64)) => {}
            _ = kick.changed() => {}
            _ = shutdown.changed() => return false,
        }
        return true;
    }
    tokio::select! {
        _ = d.limiter.acquire() => {}
        _ = kick.changed() => return true,
        _ = shutdown.changed() => return false,
    }
    if d.current_state() == State::Paused || d.current_state() == State::Halted || !ctx.queues.may_dispatch(&d.name) {
        return true;
    }
    lease(d, msg.seq);
    if d.config().batch.is_some() {
        // A batching downstream takes batches, even a probe's batch of one.
        batch::attempt(ctx, d, vec![msg], batch::Flush::Time).await;
    } else {
        attempt(ctx, d, msg).await;
    }
    true
}

/// Drops fetched messages not yet attempted; they stay pending in the
/// journal, which must be told so that it offers them again. Told even
/// with none fetched: a destination that is not delivering from its queue
/// (paused, halted, serial) keeps no new messages in memory.
fn give_back(ctx: &Context, d: &Destination, buffer: &mut VecDeque<Message>) {
    buffer.clear();
    ctx.queues.give_back(&d.name);
}

/// Builds the downstream request for a message.
/// `rendered`: what the destination's handoff made of the stored body, sent
/// in its place with its content type.
fn request_for(
    cfg: &crate::config::Destination,
    msg: &Message,
    id: &str,
    attempt: u32,
    rendered: Option<Rendered>,
) -> Option<delivery::Request> {
    let url = join_url(&cfg.url, &msg.path)?;
    let method = http::Method::from_bytes(msg.method.as_bytes()).ok()?;
    let mut headers = http::HeaderMap::new();
    for (k, v) in &msg.headers {
        if k == "traceparent" {
            // Same trace, a new span per attempt; an invalid one is dropped
            // rather than forwarded (W3C trace context says to restart).
            if let Some(tp) = delivery::attempt_traceparent(v, rand::random()) {
                put_header(&mut headers, k, &tp);
            }
            continue;
        }
        put_header(&mut headers, k, v);
    }
    delivery::put_configured_headers(cfg, &mut headers);
    let idem = msg.idempotency_key.as_deref().unwrap_or(id);
    headers.remove("idempotency-key");
    put_header(&mut headers, "idempotency-key", idem);
    put_header(&mut headers, "x-tidegate-message-id", id);
    put_header(&mut headers, "x-tidegate-attempt", &attempt.to_string());
    let body = match rendered {
        None => msg.body.clone(),
        Some(r) => {
            headers.remove(http::header::CONTENT_ENCODING);
            headers.remove(http::header::CONTENT_TYPE);
            put_header(&mut headers, "content-type", &r.content_type);
            bytes::Bytes::from(r.body)
        }
    };
    Some(delivery::Request {
        method,
        url,
        headers,
        body,
        timeout: cfg.timeout,
        trust: cfg.ca_file.clone(),
    })
}

/// One delivery attempt of a leased message, from request to committed
/// outcome. Releases the lease at the end, whatever happens.
async fn attempt(ctx: &Context, d: &Destination, msg: Message) {
    let cfg = d.config();
    let n = msg.attempts + 1;
    let id = ctx.queues.message_id(msg.seq);
    let span = tracing::info_span!("delivery", id = %id, destination = %d.name, attempt = n);
    let finished = async {
        let m = &ctx.metrics;
        m.in_flight
            .with_label_values(&[&d.name])
            .set(d.in_flight.load(Ordering::Relaxed) as i64);
        // The transform runs again at every attempt, from the stored
        // original: a reload that fixes it applies to what is queued.
        let rendered = match &cfg.handoff {
            None => None,
            Some(h) => match h.runner.render(&d.name, &msg.body, &id).await {
                Ok(r) => r,
                Err(e) => return unsendable(ctx, d, &msg, &id, n, e).await,
            },
        };
        let started = std::time::Instant::now();
        let outcome = match request_for(&cfg, &msg, &id, n, rendered) {
            Some(req) => ctx.deliver.deliver(req).await,
            None => invalid_request(),
        };
        m.delivery_duration
            .with_label_values(&[&d.name])
            .observe(started.elapsed().as_secs_f64());
        m.attempts.with_label_values(&[&d.name, outcome.label()]).inc();
        if matches!(outcome, Outcome::Permanent { .. }) {
            m.permanent_failures.with_label_values(&[&d.name]).inc();
        }

        let response = outcome.response();
        let (class, consecutive) = learn(d, &outcome, started);
        let retry_after = response.and_then(|r| r.retry_after);
        let age = Duration::from_millis((now_ms() - msg.received_at).max(0) as u64);
        let facts = Facts {
            mode: cfg.on_failure,
            class,
            attempts: n,
            age,
            retry: &cfg.retry,
            consecutive_transient: consecutive,
            retry_after,
            jitter_draw: rand::random::<f64>(),
        };
        let (step, change) = policy::decide(&facts);
        let last_error = last_error_of(&outcome);
        let finished = carry_out(ctx, d, &msg, &id, n, step, last_error, &outcome, age).await;
        apply_change(ctx, d, change, consecutive).await;
        finished
    }
    .instrument(span)
    .await;
    release(ctx, d, msg.seq, finished);
    ctx.metrics
        .in_flight
        .with_label_values(&[&d.name])
        .set(d.in_flight.load(Ordering::Relaxed) as i64);
}

/// Once a second, let adaptive destinations win back rate.
pub(crate) async fn recover_rate(d: Arc<Destination>, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => d.limiter.tick(),
            _ = shutdown.changed() => return,
        }
    }
}
