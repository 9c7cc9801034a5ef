//! The per-destination worker loop and the life of one attempt.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::Instrument;

use super::batch;
use super::policy::{self, Class, Facts, StateChange, Step};
use super::{set_state, Completion, Context, Destination, State};
use crate::config::Ordering as QueueOrdering;
use crate::delivery::{self, join_url, put_header, Outcome};
use crate::handoff::{Rendered, RunError};
use crate::queue::{now_ms, Disposition, HaltedKey, LastError, Message, Settlement};

/// Longest a worker sleeps without re-checking the queue; a safety net for
/// wake-ups, not the mechanism (commits and state changes wake it).
const IDLE_RECHECK: Duration = Duration::from_secs(5);
/// Most bytes of a downstream's error body kept as the failure detail.
const DETAIL_LIMIT: usize = 512;

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
                        Ok(_) => {
                            tokio::select! {
                                _ = ready => {}
                                _ = tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)) => {}
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

fn lease(d: &Destination, seq: u64) {
    lease_all(d, [seq]);
}

/// Leases the messages of one downstream request: each is in flight (no
/// fetch hands it out again), and they count once against
/// `max_in_flight`, which counts requests.
fn lease_all(d: &Destination, seqs: impl IntoIterator<Item = u64>) {
    d.in_flight_seqs.lock().unwrap_or_else(|e| e.into_inner()).extend(seqs);
    d.in_flight.fetch_add(1, Ordering::Relaxed);
}

/// Ends the leases of one downstream request's messages; see [`release`].
pub(super) fn release_all(ctx: &Context, d: &Destination, settled: &[(u64, bool)]) {
    {
        let mut leased = d.in_flight_seqs.lock().unwrap_or_else(|e| e.into_inner());
        for (seq, _) in settled {
            leased.remove(seq);
        }
    }
    d.in_flight.fetch_sub(1, Ordering::Relaxed);
    if settled.iter().any(|(_, finished)| !finished) {
        ctx.queues.give_back(&d.name);
    }
    d.settled.notify_waiters();
    ctx.any_settled.notify_waiters();
}

/// Ends a lease. A message not `finished` is pending still (a retry, a
/// halt, an outcome not recorded) and is given back to be read again: after
/// the lease is gone, so that read does not skip it as in flight, and
/// before the worker is woken, so it does not find the journal's tail
/// still claiming to hold everything.
fn release(ctx: &Context, d: &Destination, seq: u64, finished: bool) {
    release_all(ctx, d, &[(seq, finished)]);
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
    put_configured_headers(cfg, &mut headers);
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

/// The destination's configured headers (secrets: marked sensitive, so
/// no debug output shows them), over whatever `headers` holds.
pub(super) fn put_configured_headers(cfg: &crate::config::Destination, headers: &mut http::HeaderMap) {
    for (k, v) in &cfg.headers {
        if let Ok(mut val) = http::HeaderValue::from_str(v.expose()) {
            val.set_sensitive(true);
            headers.insert(k.clone(), val);
        }
    }
}

pub(super) fn last_error_of(outcome: &Outcome) -> Option<LastError> {
    match outcome {
        Outcome::Delivered(_) => None,
        Outcome::Transient { kind, response, detail } => Some(LastError {
            kind: kind.label().to_string(),
            status: response.as_ref().map(|r| r.status),
            detail: response.as_ref().map(body_detail).unwrap_or_else(|| detail.clone()),
            batch: None,
        }),
        Outcome::Permanent { kind, response } => Some(LastError {
            kind: kind.label().to_string(),
            status: Some(response.status),
            detail: body_detail(response),
            batch: None,
        }),
    }
}

pub(super) fn body_detail(r: &delivery::Response) -> String {
    let end = r.body.len().min(DETAIL_LIMIT);
    let text = String::from_utf8_lossy(&r.body[..end]).into_owned();
    if text.is_empty() {
        format!("downstream answered {}", r.status)
    } else {
        text
    }
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
            None => Outcome::Permanent {
                kind: delivery::FailureKind::Http4xx,
                response: delivery::Response {
                    status: 400,
                    body: bytes::Bytes::from_static(b"stored request cannot be turned into a valid HTTP request"),
                    ..Default::default()
                },
            },
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

/// What one downstream answer teaches the limiter (its rate, a pause),
/// and the attempt's class with the count of consecutive transient
/// failures it makes. One call per downstream request, batch or not.
pub(super) fn learn(d: &Destination, outcome: &Outcome, started: std::time::Instant) -> (Class, u32) {
    if let Some(r) = outcome.response() {
        let sent = tokio::time::Instant::from_std(started);
        let in_flight = u32::try_from(d.in_flight.load(Ordering::Relaxed)).unwrap_or(u32::MAX);
        if r.status == 429 && r.retry_after.is_none() && r.quota_pause.is_none() {
            // Says neither when nor how much: see `limiter`.
            d.limiter.refused_bare(sent, in_flight);
        } else if r.status == 429 || r.status == 503 {
            d.limiter.slow_down(r.retry_after, sent, in_flight);
        } else if let Some(p) = r.quota_pause {
            d.limiter.pause_for(p);
        }
    }
    let class = match outcome {
        Outcome::Delivered(_) => {
            d.limiter.note_success(tokio::time::Instant::from_std(started));
            Class::Delivered
        }
        Outcome::Transient { .. } => Class::Transient,
        Outcome::Permanent { .. } => Class::Permanent,
    };
    let retry_after = outcome.response().and_then(|r| r.retry_after);
    let consecutive = match class {
        // Pacing (a refusal that says when), not failing: see `policy`.
        Class::Transient if retry_after.is_some() => d.consecutive_transient.load(Ordering::Relaxed),
        Class::Transient => d.consecutive_transient.fetch_add(1, Ordering::Relaxed) + 1,
        _ => {
            d.consecutive_transient.store(0, Ordering::Relaxed);
            0
        }
    };
    (class, consecutive)
}

/// Carries out the state change an attempt's decision asked for.
pub(super) async fn apply_change(ctx: &Context, d: &Destination, change: StateChange, consecutive: u32) {
    match change {
        StateChange::Degrade if d.current_state() == State::Running => {
            let reason = format!("{consecutive} consecutive transient failures");
            if let Err(e) = set_state(ctx, d, State::Degraded, &reason, None).await {
                tracing::error!(error = %e, "persisting the degraded state failed");
            }
        }
        StateChange::Recover if d.current_state() == State::Degraded => {
            if let Err(e) = set_state(ctx, d, State::Running, "probe delivered", None).await {
                tracing::error!(error = %e, "persisting the running state failed");
            }
        }
        _ => {}
    }
}

/// A message whose handoff fails at delivery never reaches the downstream.
/// A failing program is the message's fault, whatever the failure mode: it
/// is dead-lettered (`transform_failed`) to be replayed once a reload fixes
/// the program. A sandbox that cannot start is tidegate's: the message
/// waits a second and is tried again, its attempts unchanged.
pub(super) async fn unsendable(ctx: &Context, d: &Destination, msg: &Message, id: &str, n: u32, e: RunError) -> bool {
    let (attempts, last_error, disposition) = match &e {
        RunError::Failed(f) => {
            ctx.metrics
                .handoff_failures
                .with_label_values(&[&d.name, f.stage.as_str()])
                .inc();
            tracing::warn!(id, destination = %d.name, error = %f, "handoff failed at delivery; message dead-lettered");
            (
                n,
                Some(LastError {
                    kind: "transform_failed".to_string(),
                    status: None,
                    detail: f.to_string(),
                    batch: None,
                }),
                Disposition::DeadLetter {
                    reason: "transform_failed".to_string(),
                },
            )
        }
        RunError::Unavailable(_) => {
            tracing::error!(id, destination = %d.name, error = %e, "handoff unavailable; delivery postponed");
            (
                msg.attempts,
                None,
                Disposition::Reschedule {
                    visible_at: now_ms() + 1000,
                },
            )
        }
    };
    let dead = matches!(disposition, Disposition::DeadLetter { .. });
    if let Err(err) = ctx
        .queues
        .settle(msg.seq, &d.name, attempts, last_error, disposition)
        .await
    {
        tracing::error!(id, error = %err, "recording the handoff failure failed; the message will be retried");
        tokio::time::sleep(Duration::from_secs(1)).await;
        return false;
    }
    if dead {
        ctx.metrics
            .dead_lettered
            .with_label_values(&[d.name.as_str(), "transform_failed"])
            .inc();
        if msg.wants_reply {
            ctx.completions.finish(
                msg.seq,
                Completion {
                    state: "dead_lettered",
                    response: None,
                    detail: e.to_string(),
                },
            );
        }
    }
    dead
}

/// An attempt's decided step for one message, to be settled: what the
/// queue records ([`Settled::disposition`]) and what follows the record.
pub(super) struct Settled<'a> {
    pub msg: &'a Message,
    pub id: &'a str,
    pub attempts: u32,
    pub step: Step,
    pub last_error: Option<LastError>,
    pub outcome: &'a Outcome,
    pub age: Duration,
    pub disposition: Disposition,
    /// `delivered`, `dead_lettered` or `dropped`: how a waiting producer
    /// is told it finished; `None` while it is still pending.
    pub finished: Option<&'static str>,
}

impl<'a> Settled<'a> {
    /// What the queue records for `step` (and its log line).
    #[allow(clippy::too_many_arguments)]
    pub fn decide(
        d: &Destination,
        msg: &'a Message,
        id: &'a str,
        attempts: u32,
        step: Step,
        last_error: Option<LastError>,
        outcome: &'a Outcome,
        age: Duration,
    ) -> Settled<'a> {
        let status = outcome.response().map(|r| r.status);
        let (disposition, finished) = match &step {
            // Under review, the body stays for late feedback (SPEC §10).
            Step::Ack => (
                Disposition::Delivered {
                    keep_body: d.config().review.is_some(),
                },
                Some("delivered"),
            ),
            Step::Retry { delay } => {
                tracing::debug!(
                    status,
                    kind = last_error.as_ref().map_or("", |e| e.kind.as_str()),
                    delay_ms = delay.as_millis() as u64,
                    "attempt failed; retry scheduled"
                );
                (
                    Disposition::Reschedule {
                        visible_at: now_ms() + delay.as_millis() as i64,
                    },
                    None,
                )
            }
            Step::DeadLetter { reason } => {
                tracing::warn!(id, destination = %d.name, status, reason, "message dead-lettered");
                (
                    Disposition::DeadLetter {
                        reason: reason.to_string(),
                    },
                    Some("dead_lettered"),
                )
            }
            Step::Drop { reason } => {
                let detail = last_error.as_ref().map(|e| e.kind.as_str()).unwrap_or("");
                tracing::warn!(id, destination = %d.name, status, reason, kind = detail, "message dropped (on_failure = log)");
                (
                    Disposition::Dropped {
                        reason: reason.to_string(),
                    },
                    Some("dropped"),
                )
            }
            // The message stays at the head: due at once when resumed. Under
            // key ordering only its key stops; a message without a key
            // (queued before the destination ordered by key) halts it all.
            Step::Halt { reason } => match (&d.config().queue.ordering, &msg.order_key) {
                (QueueOrdering::Key, Some(key)) => (
                    Disposition::HaltKey {
                        key: key.clone(),
                        reason: halt_reason(reason, id, status),
                    },
                    None,
                ),
                _ => (Disposition::Reschedule { visible_at: 0 }, None),
            },
        };
        Settled {
            msg,
            id,
            attempts,
            step,
            last_error,
            outcome,
            age,
            disposition,
            finished,
        }
    }

    /// What the queue is asked to record.
    pub fn settlement(&self) -> Settlement {
        Settlement {
            seq: self.msg.seq,
            attempts: self.attempts,
            last_error: self.last_error.clone(),
            disposition: self.disposition.clone(),
        }
    }

    /// What follows the record once it is committed: metrics, a halt, the
    /// waiting producer. Returns whether the message is finished.
    pub async fn follow(self, ctx: &Context, d: &Destination) -> bool {
        let m = &ctx.metrics;
        let status = self.outcome.response().map(|r| r.status);
        let (msg, id) = (self.msg, self.id);
        match &self.step {
            Step::Ack => {
                m.delivered.with_label_values(&[&d.name]).inc();
                m.end_to_end
                    .with_label_values(&[&d.name])
                    .observe(self.age.as_secs_f64());
            }
            Step::DeadLetter { reason } => m.dead_lettered.with_label_values(&[d.name.as_str(), reason]).inc(),
            Step::Drop { reason } => m.dropped.with_label_values(&[d.name.as_str(), reason]).inc(),
            Step::Halt { reason } => match &self.disposition {
                Disposition::HaltKey { key, reason } => {
                    tracing::error!(id, destination = %d.name, key = %key, %reason, "ordering key halted; its later messages wait, other keys flow");
                    d.halted_keys.lock().unwrap_or_else(|e| e.into_inner()).insert(
                        key.clone(),
                        HaltedKey {
                            dest: d.name.clone(),
                            key: key.clone(),
                            seq: msg.seq,
                            reason: reason.clone(),
                        },
                    );
                }
                _ => {
                    let why = halt_reason(reason, id, status);
                    if let Err(e) = set_state(ctx, d, State::Halted, &why, Some(msg.seq)).await {
                        tracing::error!(error = %e, "persisting the halted state failed");
                    }
                }
            },
            Step::Retry { .. } => {}
        }
        if let (Some(state), true) = (self.finished, msg.wants_reply) {
            let detail = self.last_error.map(|e| e.detail).unwrap_or_default();
            ctx.completions.finish(
                msg.seq,
                Completion {
                    state,
                    response: self.outcome.response().cloned(),
                    detail,
                },
            );
        }
        self.finished.is_some()
    }
}

/// Records an attempt's outcome for one message and carries out what
/// follows; returns whether the message is finished.
#[allow(clippy::too_many_arguments)]
pub(super) async fn carry_out(
    ctx: &Context,
    d: &Destination,
    msg: &Message,
    id: &str,
    attempts: u32,
    step: Step,
    last_error: Option<LastError>,
    outcome: &Outcome,
    age: Duration,
) -> bool {
    let settled = Settled::decide(d, msg, id, attempts, step, last_error, outcome, age);
    let s = settled.settlement();
    if let Err(e) = ctx
        .queues
        .settle(s.seq, &d.name, s.attempts, s.last_error, s.disposition)
        .await
    {
        // Nothing changed on disk: the message is still pending and will be
        // delivered again (at-least-once).
        tracing::error!(id, error = %e, "recording the attempt's outcome failed; the message will be retried");
        // Keep the lease a while: retrying at once would hammer the
        // downstream with a message we cannot record anyway.
        tokio::time::sleep(Duration::from_secs(1)).await;
        return false;
    }
    settled.follow(ctx, d).await
}

/// Why a destination or a key halted, as its state reason shows it.
fn halt_reason(reason: &str, id: &str, status: Option<u16>) -> String {
    format!(
        "{reason} (message {id}, last status {})",
        status.map_or("none".to_string(), |s| s.to_string())
    )
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
