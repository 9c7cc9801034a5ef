//! Dispatch: one worker per destination takes deliverable messages from the
//! queue and runs delivery attempts at the pace the downstream can take.
//!
//! # What a worker guarantees
//!
//! - At most `max_in_flight` attempts at once (one with `ordering = "fifo"`
//!   or while `degraded`), and no more than the token bucket allows. An
//!   attempt is one downstream request: a batch (`batch`) counts once.
//! - With `ordering = "key"`, at most one attempt per key at once, and a
//!   key's messages in the order they were accepted: only the oldest
//!   pending message of a key is ever fetched, and never while one of its
//!   key is in flight (`Queue::fetch_keyed`). In halt mode a permanent
//!   failure stops its key alone, durably (`Disposition::HaltKey`), until an
//!   operator resumes that key.
//! - A message is never attempted twice at once: a fetched message is
//!   leased in memory until its outcome is committed, and fetches exclude
//!   leased messages. Leases are not on disk, so a crash makes every leased
//!   message deliverable again (at-least-once).
//! - What follows an attempt is decided only by [`policy::decide`], a pure
//!   function; this module carries the decision out (queue change, state
//!   change, metrics, log line, waiting producer).
//!
//! # States
//!
//! `running` delivers; `paused` (operator) and `halted` (halt mode) deliver
//! nothing and keep the queue; `degraded` (buffer mode, downstream failing)
//! delivers only one probe at a time, the oldest message, with back-off, and
//! the first success returns to `running`. States survive restarts: they
//! are stored in the queue.

pub mod batch;
pub mod completions;
pub mod limiter;
pub mod policy;
mod settle;
mod worker;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::sync::{watch, Notify};

use crate::config;
use crate::delivery::Deliver;
use crate::metrics::Metrics;
use crate::queue::{self, DestinationRecord, Disposition, HaltedKey, QueueCounts, QueueError};

pub use completions::{Completion, Completions};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Running,
    Paused,
    Degraded,
    Halted,
}

impl State {
    pub const ALL: [State; 4] = [State::Running, State::Paused, State::Degraded, State::Halted];

    pub fn as_str(self) -> &'static str {
        match self {
            State::Running => "running",
            State::Paused => "paused",
            State::Degraded => "degraded",
            State::Halted => "halted",
        }
    }

    fn parse(s: &str) -> Option<State> {
        State::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

#[derive(Clone, Debug)]
pub struct StateInfo {
    pub state: State,
    pub reason: String,
    /// The message a halted destination stopped on.
    pub head_seq: Option<u64>,
}

/// A destination as dispatch runs it; shared with ingress and admin.
pub struct Destination {
    pub name: String,
    config: RwLock<Arc<config::Destination>>,
    state: Mutex<StateInfo>,
    /// Cluster mode (`apply_records`): a shared record must never undo a
    /// change this instance made. While this instance writes its own
    /// change (counted here, raised under the `state` lock), every record
    /// read is at best the one before; once written, a record older than
    /// `record_revision` (the newest written or applied here) is one a
    /// replica answered before it caught up.
    writes_in_flight: AtomicU64,
    record_revision: AtomicU64,
    /// Bumped on every state or config change so the worker re-evaluates.
    kick: watch::Sender<u64>,
    /// Set to stop the worker (shutdown, or removed by a reload).
    stop: watch::Sender<bool>,
    /// Signalled when an attempt finishes.
    settled: Notify,
    pub in_flight: AtomicU64,
    in_flight_seqs: Mutex<HashSet<u64>>,
    pub limiter: limiter::Limiter,
    consecutive_transient: AtomicU32,
    pub queue: Arc<QueueCounts>,
    /// Keys halt mode stopped (key-ordered destinations): key → the
    /// message it stopped on and why. A copy of the queue's record.
    halted_keys: Mutex<BTreeMap<String, HaltedKey>>,
}

impl Destination {
    pub fn config(&self) -> Arc<config::Destination> {
        self.config.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn state(&self) -> StateInfo {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The state alone, without copying the reason (ingress and the worker
    /// ask on every message).
    pub fn current_state(&self) -> State {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).state
    }

    pub fn is_in_flight(&self, seq: u64) -> bool {
        self.in_flight_seqs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&seq)
    }

    fn kick(&self) {
        self.kick.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// The keys halt mode has stopped, in key order.
    pub fn halted_keys(&self) -> Vec<HaltedKey> {
        self.halted_keys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    fn halted_key_names(&self) -> HashSet<String> {
        self.halted_keys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect()
    }
}

/// Why an operator request was refused.
#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    #[error("no destination named {0:?}")]
    UnknownDestination(String),
    #[error("destination {destination:?} has no halted key {key:?}")]
    KeyNotHalted { destination: String, key: String },
    #[error(transparent)]
    Queue(#[from] QueueError),
}

/// Everything attempts need, shared by all workers.
pub(crate) struct Context {
    pub queues: queue::Queues,
    pub metrics: Metrics,
    pub deliver: Arc<dyn Deliver>,
    pub completions: Arc<Completions>,
    /// Signalled whenever any attempt finishes (shutdown waits on it).
    pub any_settled: Notify,
}

pub struct Dispatcher {
    ctx: Arc<Context>,
    destinations: RwLock<HashMap<String, Arc<Destination>>>,
    /// Persisted states, for destinations added by a reload.
    restored: HashMap<String, StateInfo>,
    /// Persisted halted keys, by destination, likewise.
    restored_keys: HashMap<String, Vec<HaltedKey>>,
}

/// What a reload changed.
#[derive(Debug, Default, serde::Serialize)]
pub struct Changes {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
}

impl Dispatcher {
    /// Starts one worker per configured destination, restoring each one's
    /// persisted state.
    pub async fn start(
        cfg: &config::Config,
        queues: queue::Queues,
        metrics: Metrics,
        deliver: Arc<dyn Deliver>,
    ) -> Result<Arc<Dispatcher>, QueueError> {
        let restored = queues
            .destination_records()
            .await?
            .into_iter()
            .filter_map(|(name, r)| {
                let state = State::parse(&r.state)?;
                Some((
                    name,
                    StateInfo {
                        state,
                        reason: r.reason,
                        head_seq: r.head_seq,
                    },
                ))
            })
            .collect();
        let mut restored_keys: HashMap<String, Vec<HaltedKey>> = HashMap::new();
        for k in queues.halted_keys().await? {
            restored_keys.entry(k.dest.clone()).or_default().push(k);
        }
        let dispatcher = Arc::new(Dispatcher {
            ctx: Arc::new(Context {
                queues,
                metrics,
                deliver,
                completions: Arc::new(Completions::default()),
                any_settled: Notify::new(),
            }),
            destinations: RwLock::new(HashMap::new()),
            restored,
            restored_keys,
        });
        for d in &cfg.destinations {
            dispatcher.add(d);
        }
        dispatcher.relay_outcomes();
        Ok(dispatcher)
    }

    /// Starts a worker for a destination.
    fn add(&self, d: &config::Destination) {
        let info = self.restored.get(&d.name).cloned().unwrap_or(StateInfo {
            state: State::Running,
            reason: String::new(),
            head_seq: None,
        });
        if info.state != State::Running {
            tracing::warn!(destination = %d.name, state = info.state.as_str(), reason = %info.reason, "destination restored in a stopped state");
        }
        self.ctx.metrics.register_destination(&d.name);
        let rl = &d.rate_limit;
        let dest = Arc::new(Destination {
            name: d.name.clone(),
            config: RwLock::new(Arc::new(d.clone())),
            state: Mutex::new(info),
            writes_in_flight: AtomicU64::new(0),
            record_revision: AtomicU64::new(0),
            kick: watch::channel(0).0,
            stop: watch::channel(false).0,
            settled: Notify::new(),
            in_flight: AtomicU64::new(0),
            in_flight_seqs: Mutex::new(HashSet::new()),
            limiter: limiter::Limiter::new(rl.rate, rl.burst, rl.adaptive),
            consecutive_transient: AtomicU32::new(0),
            queue: self.ctx.queues.queue(&d.name),
            halted_keys: Mutex::new(
                self.restored_keys
                    .get(&d.name)
                    .into_iter()
                    .flatten()
                    .map(|k| (k.key.clone(), k.clone()))
                    .collect(),
            ),
        });
        tokio::spawn(worker::run(self.ctx.clone(), dest.clone(), dest.stop.subscribe()));
        tokio::spawn(worker::recover_rate(dest.clone(), dest.stop.subscribe()));
        self.destinations
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(d.name.clone(), dest);
    }

    /// Applies a new configuration's destinations: new ones start, removed
    /// ones stop (refused if they still hold messages), changed ones take
    /// their new rate, retry, failure, header and queue settings, which
    /// apply to messages already queued.
    pub fn apply(&self, cfg: &config::Config) -> Result<Changes, String> {
        let current = self.destinations();
        for d in &current {
            if cfg.destination(&d.name).is_none() {
                let depth = d.queue.depth.load(Ordering::Relaxed);
                let dead = d.queue.dead_letters.load(Ordering::Relaxed);
                let in_flight = d.in_flight.load(Ordering::Relaxed);
                if depth + dead + in_flight > 0 {
                    return Err(format!(
                        "destination {:?} cannot be removed: it still holds {depth} queued ({in_flight} in flight) and {dead} dead-lettered messages; drain or purge it first",
                        d.name
                    ));
                }
            }
        }
        let mut changes = Changes::default();
        for d in &current {
            match cfg.destination(&d.name) {
                None => {
                    let _ = d.stop.send(true);
                    self.destinations
                        .write()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&d.name);
                    self.ctx.metrics.forget_destination(&d.name);
                    changes.removed.push(d.name.clone());
                }
                Some(new) => {
                    let old = d.config();
                    let changed = format!("{:?}", *old) != format!("{new:?}") || old.headers != new.headers;
                    // Swapped even when unchanged: the new config carries the
                    // reload's handoff runner, which every destination must
                    // share (routes read their targets' programs from it).
                    *d.config.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(new.clone());
                    if changed {
                        let rl = &new.rate_limit;
                        d.limiter.reconfigure(rl.rate, rl.burst, rl.adaptive);
                        d.kick();
                        changes.changed.push(d.name.clone());
                    }
                }
            }
        }
        for new in &cfg.destinations {
            if !current.iter().any(|d| d.name == new.name) {
                self.add(new);
                changes.added.push(new.name.clone());
            }
        }
        Ok(changes)
    }

    pub fn destination(&self, name: &str) -> Option<Arc<Destination>> {
        self.destinations
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }

    /// Destinations sorted by name.
    pub fn destinations(&self) -> Vec<Arc<Destination>> {
        let mut v: Vec<_> = self
            .destinations
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    pub fn completions(&self) -> &Arc<Completions> {
        &self.ctx.completions
    }

    fn get(&self, name: &str) -> Result<Arc<Destination>, DispatchError> {
        self.destination(name)
            .ok_or_else(|| DispatchError::UnknownDestination(name.to_string()))
    }

    /// Operator pause: deliveries stop, ingress keeps accepting.
    pub async fn pause(&self, name: &str) -> Result<StateInfo, DispatchError> {
        self.pause_because(name, "paused by an operator").await
    }

    /// A pause with its reason (`state_reason`): an operator's, or a
    /// governance threshold's (`quality_threshold: ...`).
    pub async fn pause_because(&self, name: &str, reason: &str) -> Result<StateInfo, DispatchError> {
        let d = self.get(name)?;
        set_state(&self.ctx, &d, State::Paused, reason, None).await?;
        // In cluster mode another instance may be the one dispatching: the
        // pause is answered only once it is in force there too.
        self.ctx.queues.announce_state(name).await;
        Ok(d.state())
    }

    /// Back to running from paused, halted or degraded. With `skip_head`, a
    /// halted destination first dead-letters the message it stopped on.
    pub async fn resume(&self, name: &str, skip_head: bool) -> Result<StateInfo, DispatchError> {
        self.resume_because(name, skip_head, "resumed by an operator").await
    }

    /// `resume`, recording why (`state_reason`): who resumed a quality
    /// pause, and on what grounds.
    pub async fn resume_because(&self, name: &str, skip_head: bool, reason: &str) -> Result<StateInfo, DispatchError> {
        let d = self.get(name)?;
        let info = d.state();
        if skip_head && info.state == State::Halted {
            if let Some(seq) = info.head_seq {
                // The dead letter keeps the failure that halted the
                // destination: it is what the operator replays it after fixing.
                let (attempts, last_error) = match self.ctx.queues.status(seq).await? {
                    Some(s) => (s.attempts, s.last_error),
                    None => (0, None),
                };
                let reason = "skipped_by_operator".to_string();
                self.ctx
                    .queues
                    .settle(seq, name, attempts, last_error, Disposition::DeadLetter { reason })
                    .await?;
                self.ctx
                    .metrics
                    .dead_lettered
                    .with_label_values(&[name, "skipped_by_operator"])
                    .inc();
                tracing::warn!(id = %self.ctx.queues.message_id(seq), destination = name, "halted head message dead-lettered by operator");
            }
        }
        d.consecutive_transient.store(0, Ordering::Relaxed);
        set_state(&self.ctx, &d, State::Running, reason, None).await?;
        self.ctx.queues.announce_state(name).await;
        Ok(d.state())
    }

    /// Lets one halted key of a key-ordered destination go: its head is
    /// attempted again, or with `skip_head` dead-lettered first
    /// (`skipped_by_operator`, keeping the failure that halted it).
    pub async fn resume_key(&self, name: &str, key: &str, skip_head: bool) -> Result<HaltedKey, DispatchError> {
        let d = self.get(name)?;
        let not_halted = || DispatchError::KeyNotHalted {
            destination: name.to_string(),
            key: key.to_string(),
        };
        let Some(halted) = d
            .halted_keys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .cloned()
        else {
            return Err(not_halted());
        };
        if self.ctx.queues.release_key(name, key, skip_head).await?.is_none() {
            return Err(not_halted());
        }
        d.halted_keys.lock().unwrap_or_else(|e| e.into_inner()).remove(key);
        let id = self.ctx.queues.message_id(halted.seq);
        if skip_head {
            self.ctx
                .metrics
                .dead_lettered
                .with_label_values(&[name, "skipped_by_operator"])
                .inc();
            tracing::warn!(id = %id, destination = name, key, "halted key resumed; its head message dead-lettered by operator");
        } else {
            tracing::warn!(id = %id, destination = name, key, "halted key resumed by operator");
        }
        d.kick();
        Ok(halted)
    }

    /// Stops workers from starting attempts, then waits up to `timeout` for
    /// attempts in flight to finish. Returns how many were still running.
    pub async fn shutdown(&self, timeout: Duration) -> u64 {
        let all = self.destinations();
        for d in &all {
            let _ = d.stop.send(true);
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let in_flight: u64 = all.iter().map(|d| d.in_flight.load(Ordering::Relaxed)).sum();
            if in_flight == 0 || tokio::time::Instant::now() >= deadline {
                return in_flight;
            }
            let step = deadline.min(tokio::time::Instant::now() + Duration::from_millis(50));
            let _ = tokio::time::timeout_at(step, self.ctx.any_settled.notified()).await;
        }
    }
}

impl Dispatcher {
    /// The state `name` was in when this process started (restored from
    /// the queue), before anything it did since.
    pub fn started_in(&self, name: &str) -> State {
        self.restored.get(name).map_or(State::Running, |i| i.state)
    }

    /// Cluster mode: a producer waiting (`Prefer: wait`) on one instance
    /// hears how its message finished on whichever instance delivered it.
    fn relay_outcomes(&self) {
        let Some(mut incoming) = self.ctx.queues.outcomes() else {
            return;
        };
        let queues = self.ctx.queues.clone();
        self.ctx.completions.relay_to(Box::new(move |seq, c| {
            queues.announce_outcome(queue::Outcome {
                seq,
                state: c.state.to_string(),
                detail: c.detail.clone(),
                response: c
                    .response
                    .as_ref()
                    .map(|r| (r.status, r.content_type.clone(), r.body.clone())),
            })
        }));
        let completions = self.ctx.completions.clone();
        tokio::spawn(async move {
            while let Some(o) = incoming.recv().await {
                let state = match o.state.as_str() {
                    "delivered" => "delivered",
                    "dead_lettered" => "dead_lettered",
                    "dropped" => "dropped",
                    _ => continue,
                };
                let response = o
                    .response
                    .map(|(status, content_type, body)| crate::delivery::Response {
                        status,
                        content_type,
                        body,
                        retry_after: None,
                        quota_pause: None,
                    });
                completions.finish_here(
                    o.seq,
                    Completion {
                        state,
                        response,
                        detail: o.detail,
                    },
                );
            }
        });
    }

    /// Cluster mode: applies the state other instances recorded (an
    /// operator's pause or resume through another instance's admin API, a
    /// halt by the instance that dispatches), every half second, until
    /// `stop`. What this instance changes itself is recorded first, so it
    /// reads back its own change.
    pub async fn follow_records(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut asked = self.ctx.queues.state_asked();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                Some((dest, applied)) = async {
                    match asked.as_mut() {
                        Some(rx) => rx.recv().await,
                        None => std::future::pending().await,
                    }
                } => {
                    // Another instance paused (or resumed) a destination
                    // this one dispatches, and waits until it is in force.
                    self.apply_records(Some(&dest)).await;
                    let _ = applied.send(());
                    continue;
                }
                _ = stop.changed() => return,
            }
            self.apply_records(None).await;
            self.follow_halted_keys().await;
        }
    }

    /// Applies the recorded state of every destination (or of `only`),
    /// except a record older than this instance's own change: applying it
    /// would undo a pause or resume that was just acknowledged. The next
    /// round reads the change.
    async fn apply_records(&self, only: Option<&str>) {
        let records = match self.ctx.queues.destination_records().await {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(error = %e, "could not read destination records");
                return;
            }
        };
        for (name, r) in records {
            if only.is_some_and(|o| o != name) {
                continue;
            }
            let (Some(d), Some(state)) = (self.destination(&name), State::parse(&r.state)) else {
                continue;
            };
            let changed = {
                let mut s = d.state.lock().unwrap_or_else(|e| e.into_inner());
                if d.writes_in_flight.load(Ordering::SeqCst) > 0
                    || r.revision < d.record_revision.load(Ordering::SeqCst)
                {
                    continue;
                }
                d.record_revision.fetch_max(r.revision, Ordering::SeqCst);
                let changed = s.state != state || s.reason != r.reason;
                if changed {
                    tracing::warn!(destination = %name, from = s.state.as_str(), to = state.as_str(), reason = %r.reason,
                        "destination state changed by another instance");
                    *s = StateInfo {
                        state,
                        reason: r.reason,
                        head_seq: r.head_seq,
                    };
                }
                changed
            };
            if changed {
                d.kick();
            }
        }
    }

    /// Halted keys, so that whichever instance dispatches next keeps them
    /// halted, and any instance's admin API can resume one. Only
    /// key-ordered destinations have any: the others skip the read.
    async fn follow_halted_keys(&self) {
        let keyed = self
            .destinations()
            .iter()
            .any(|d| d.config().queue.ordering == config::Ordering::Key);
        if !keyed {
            return;
        }
        let Ok(halted) = self.ctx.queues.halted_keys().await else {
            return;
        };
        let mut by_dest: HashMap<String, HashMap<String, HaltedKey>> = HashMap::new();
        for k in halted {
            by_dest.entry(k.dest.clone()).or_default().insert(k.key.clone(), k);
        }
        for d in self.destinations() {
            let now = by_dest.remove(&d.name).unwrap_or_default();
            let released = {
                let mut mine = d.halted_keys.lock().unwrap_or_else(|e| e.into_inner());
                let released = mine.keys().any(|k| !now.contains_key(k));
                *mine = now.into_iter().collect();
                released
            };
            if released {
                d.kick();
            }
        }
    }
}

/// Changes a destination's state, persists it, logs it, wakes its worker.
pub(crate) async fn set_state(
    ctx: &Context,
    d: &Destination,
    state: State,
    reason: &str,
    head_seq: Option<u64>,
) -> Result<(), QueueError> {
    let previous = {
        let mut s = d.state.lock().unwrap_or_else(|e| e.into_inner());
        d.writes_in_flight.fetch_add(1, Ordering::SeqCst);
        let prev = s.state;
        *s = StateInfo {
            state,
            reason: reason.to_string(),
            head_seq,
        };
        prev
    };
    // Counted down however this ends, a dropped future included: a count
    // left up would stop this instance following the others for good.
    struct Written<'a>(&'a AtomicU64);
    impl Drop for Written<'_> {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::SeqCst);
        }
    }
    let _written = Written(&d.writes_in_flight);
    d.kick();
    if previous != state {
        match state {
            State::Halted => {
                tracing::error!(destination = %d.name, from = previous.as_str(), %reason, "destination halted")
            }
            State::Running => {
                tracing::warn!(destination = %d.name, from = previous.as_str(), %reason, "destination running")
            }
            _ => {
                tracing::warn!(destination = %d.name, from = previous.as_str(), to = state.as_str(), %reason, "destination state changed")
            }
        }
    }
    let record = DestinationRecord {
        state: state.as_str().to_string(),
        reason: reason.to_string(),
        head_seq,
        revision: 0,
    };
    let revision = ctx.queues.set_destination_record(&d.name, record).await?;
    d.record_revision.fetch_max(revision, Ordering::SeqCst);
    Ok(())
}
