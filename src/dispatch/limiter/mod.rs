//! The per-destination rate limiter: a token bucket (`rate`, `burst`)
//! whose effective rate adapts when `adaptive = true`, plus a pause ("do
//! not send before") that `Retry-After`, spent rate-limit quotas and bare
//! 429s set.
//!
//! The bucket is a GCRA ([`Pacer`]): one "theoretical arrival time", so a
//! rate change keeps its place (a rebuilt bucket would either hand out a
//! fresh burst or, drained, lose up to a whole period: at 4/s, a quarter of
//! every second the rate moved in).
//!
//! Adapting (SPEC §4, §14) is AIMD with a memory, as TCP congestion control
//! is: a 429 or 503 cuts the rate once per round (the refusals of attempts
//! sent before the cut are the same signal); the rate that drew it is
//! remembered as a ceiling; calm seconds win the rate back quickly up to
//! 90% of that ceiling and only slowly beyond it, because with a downstream
//! that answers `Retry-After` each probe that fails costs a whole pause.
//! A ceiling the downstream showed (it took at least half the rate it
//! refused) is held: the rate climbs fast to 95% of it and stays there for
//! a minute, within 90-100% of the limit (SPEC §14), instead of
//! saw-toothing past it. From far above, a second of refusals measures
//! what the downstream accepts, and the rate goes straight to 95% of that
//! instead of halving once a round. The count starts at the first refusal
//! (the burst spent before it is not rate), is taken at the refusal or the
//! tick that comes first, and is left out where it would read something
//! else: a pause the downstream asked for in it, a cap on attempts in
//! flight that holds the rate back, a window's streak (see below). A
//! measured rate is probed past slowly after calm seconds, so a low
//! reading does not stick. `convergence` (tests) runs every model of
//! `loadtests/rate-models.sh` against it in simulated time.
//! After any pause, sending resumes with an empty bucket: a bucket that
//! refilled during the pause would spend its burst into a downstream whose
//! own allowance has just started again.
//!
//! A bare 429 (no `Retry-After`, no quota headers) says neither when to
//! come back nor how much is allowed: a downstream counting requests in a
//! window of seconds (PocketBase: 20 per 5 s) refuses everything until the
//! window turns. So the first one of a streak pauses the destination, not
//! only its message, and single probes follow at growing intervals until
//! one succeeds: the window turned. From one turn to the next the
//! downstream took what it allows per window, so successes over that span
//! are its sustainable rate, which becomes the ceiling when the rate that
//! met the refusal was far above it (the descent from a rate configured
//! far too high takes one window, not a halving per window). That span
//! also becomes the horizon over which "what it accepted" is counted.
//! Windows turn on a beat: once two turns are known, the next streak's
//! first probe goes out just before the next turn is due, and the next
//! just after, so a window learned costs about one refusal per streak,
//! not a ladder of them.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// The effective rate never drops below this share of the configured rate.
const FLOOR_SHARE: f64 = 0.01;
/// Each calm second raises the effective rate by this share of the configured.
const RECOVERY_SHARE: f64 = 0.05;
/// Calm seconds at one below the refused number in flight before the cap
/// probes that number again.
const PROBE_AFTER: u32 = 10;
/// A round of refusals (see `slow_down`) lasts at most this long: a
/// downstream that refuses everything is cut again each second.
const ROUND_AT_MOST: Duration = Duration::from_secs(1);
/// Above 90% of the ceiling, each calm second raises the rate by this share
/// of the ceiling: probing, slowly, whether the downstream now takes more.
const PROBE_SHARE: f64 = 0.01;
/// Recovery is fast up to this share of the ceiling.
const FAST_UP_TO: f64 = 0.9;
/// Below a held ceiling (see `ceiling_held`), the rate climbs to this share
/// of it and holds there for `CEILING_MEMORY`: within 90-100% of the
/// limit, as SPEC §14 asks, and where a probe past the limit costs a whole
/// pause (one `Retry-After: 1` a few seconds is a fifth of the allowance),
/// the limit is probed once per `CEILING_MEMORY`, not every few seconds.
const HOLD_BELOW: f64 = 0.95;
/// ...provided the downstream took at least this share of that rate over
/// the horizon.
const HELD_WHEN_ACCEPTED: f64 = 0.5;
/// A ceiling without a 429 or 503 for this long: a held one is probed past
/// slowly (the downstream's capacity may have grown), any other forgotten.
const CEILING_MEMORY: Duration = Duration::from_secs(60);
/// A slowdown never goes below this share of what the downstream accepted
/// over the horizon...
const ACCEPTED_SHARE: f64 = 0.95;
/// ...but always cuts at least this much, so a 429 is never ignored.
const LEAST_CUT: f64 = 0.9;
/// A count with our own pauses in it (see `State::measured`) is held at
/// this share of it: within 90-100% of the allowance for a count 3% off
/// either way.
const PAUSED_SHARE: f64 = 0.97;
/// Successes are counted in slots of this width...
const SLOT: Duration = Duration::from_millis(250);
/// ...kept for a minute: the longest horizon.
const SLOTS: usize = 240;
/// A bare 429's first probe waits this long; each refused probe waits
/// `PROBE_GROWTH` times longer, up to `PROBE_WAIT_MAX`. Fine steps keep the
/// turn of the downstream's window well placed, which the sustainable rate
/// is measured from; each costs one refused attempt.
const PROBE_FIRST: Duration = Duration::from_millis(100);
const PROBE_GROWTH: f64 = 1.25;
const PROBE_WAIT_MAX: Duration = Duration::from_secs(10);
/// A probe aimed at a learned window's turn goes out this share of the
/// window before it.
const AIM_EARLY: f64 = 0.02;
/// A streak of bare 429s shorter than this is a token bucket or a
/// concurrency limit catching up, not a window: it says nothing about a
/// window's rate, and probing past its ceiling is cheap.
const LONG_WAIT: Duration = Duration::from_millis(500);
/// The rate that met a bare 429 was "far above" the sustainable one when
/// over this multiple of it.
const FAR_ABOVE: f64 = 1.5;
/// Refusals this long (none this far apart), with no pause the downstream
/// asked for among them: what it took over the last second of them is
/// what it allows (see `State::measured`).
const SATURATED_AFTER: Duration = Duration::from_secs(1);
/// A learned window longer than this (a second, and the probes' step that
/// places its turns) is not measured by a second's count.
const LONG_WINDOW: Duration = Duration::from_millis(1500);
/// Calm seconds at a measured rate before it is probed past.
const MEASURED_CALM: Duration = Duration::from_secs(5);
/// What the downstream takes while refusing is measured over this long at
/// least (at 50/s, a dozen successes).
const MEASURE_AT_LEAST: Duration = Duration::from_millis(250);

pub struct Limiter {
    inner: Mutex<State>,
}

/// A token bucket as the generic cell rate algorithm: a cell conforms when
/// the theoretical arrival time `tat` is at most `tolerance` ahead of now.
struct Pacer {
    period: Duration,
    /// `(burst - 1) * period`: how far ahead `tat` may run.
    tolerance: Duration,
    tat: Instant,
}

impl Pacer {
    fn new(rate: f64, burst: u32, now: Instant) -> Pacer {
        let (period, tolerance) = Pacer::shape(rate, burst);
        Pacer {
            period,
            tolerance,
            tat: now,
        }
    }

    fn shape(rate: f64, burst: u32) -> (Duration, Duration) {
        let period = Duration::from_secs_f64(1.0 / rate.max(1e-6));
        (period, period.saturating_mul(burst.max(1) - 1))
    }

    /// A new rate or burst from where the bucket is: the next cell is due
    /// no earlier than it was, and no burst is handed out.
    fn reshape(&mut self, rate: f64, burst: u32, now: Instant) {
        let next = self.tat.checked_sub(self.tolerance).unwrap_or(self.tat).max(now);
        (self.period, self.tolerance) = Pacer::shape(rate, burst);
        self.tat = next + self.tolerance;
    }

    /// Empty but for the cell due now: after a pause, no burst.
    fn empty(&mut self, now: Instant) {
        self.tat = self.tat.max(now + self.tolerance);
    }

    /// Gives back the last cell taken: the attempt it paced took nothing.
    fn give_back(&mut self) {
        self.tat = self.tat.checked_sub(self.period).unwrap_or(self.tat);
    }

    /// Takes a cell now, or says when one is due. A cell taken late (a
    /// timer wakes up to a millisecond after the due time) keeps the
    /// schedule: up to half a period late, the next cell is due a period
    /// after this one was due, not after now. Otherwise each wake-up's
    /// delay would be lost: at 50/s with a burst of 1, 4% of the rate.
    /// Later than that (idle), the schedule starts again from now.
    fn take(&mut self, now: Instant) -> Result<(), Instant> {
        let due = self.tat.checked_sub(self.tolerance).unwrap_or(self.tat);
        if now >= due {
            let late = now.saturating_duration_since(self.tat);
            let from = if late <= self.period / 2 { self.tat } else { now };
            self.tat = from + self.period;
            Ok(())
        } else {
            Err(due)
        }
    }
}

struct State {
    configured: Option<f64>,
    burst: u32,
    adaptive: bool,
    effective: Option<f64>,
    bucket: Option<Pacer>,
    paused_until: Option<Instant>,
    /// The bucket is emptied when the pause ends (see the module doc).
    drain_after_pause: bool,
    last_slowdown: Option<Instant>,
    /// When the rate was last cut: refusals of attempts sent before this
    /// belong to the round that was already cut for.
    last_decrease: Option<Instant>,
    /// Whether an attempt sent after the last cut has succeeded.
    recovered: bool,
    /// The effective rate in force when the downstream last pushed back.
    ceiling: Option<f64>,
    /// Whether the downstream showed that ceiling (it took at least half
    /// the rate it refused, or a second of refusals measured it): the rate
    /// holds below.
    ceiling_held: bool,
    /// A held ceiling that outlived `CEILING_MEMORY`: probed past slowly,
    /// following the rate up.
    ceiling_stale: bool,
    /// The ceiling is what refusals measured (see `measured`), not a rate
    /// refused: the rate holds here, and a probe refused near it does not
    /// raise it.
    measured_hold: Option<f64>,
    /// How long a successful attempt takes, averaged (an exponentially
    /// weighted mean): with the cap on attempts in flight, the most it lets
    /// through.
    answer_time: Option<Duration>,
    /// The adaptive cap on attempts in flight (below `max_in_flight`): a
    /// downstream that limits concurrency refuses on the number in flight,
    /// whatever the rate. `None`: no cap beyond the configured one.
    in_flight_cap: Option<u32>,
    /// The number in flight that drew the last refusal.
    in_flight_ceiling: Option<u32>,
    /// That refusal came with a pause the downstream asked for.
    in_flight_told: bool,
    /// Calm seconds since the cap last moved.
    cap_calm: u32,
    /// Successes per `SLOT`, as (slot number since `epoch`, count), a ring.
    accepted: Vec<(u64, u32)>,
    /// Over how long "what the downstream accepted" is counted: a learned
    /// window (see the module doc), one second at least.
    horizon: Duration,
    epoch: Instant,
    /// The first attempt: where the first window began, as far as we know.
    first_sent: Option<Instant>,
    /// The first refusal of the refusals in progress (none a second
    /// apart): a second after it, the downstream has been refusing what
    /// it does not take for a whole horizon, so what it accepted over that
    /// second is what it allows (see `cut`).
    refusing_since: Option<Instant>,
    /// When the attempts sent since `refusing_since` that succeeded were
    /// sent, over the last `SATURATED_AFTER`: what the downstream takes
    /// while it refuses the rest (its burst, spent before the first
    /// refusal, is not in it).
    taken_while_refusing: VecDeque<Instant>,
    /// When the last pause a downstream asked for (`Retry-After`, a spent
    /// quota) ends: time it told us not to send, whose allowance a
    /// measure over wall time would miss.
    told_pause_until: Option<Instant>,
    bare: Bare,
}

/// What the downstream took while refusing the rest (see
/// `State::measured`).
struct Measure {
    /// Per second.
    rate: f64,
    /// The rate to hold at.
    hold: f64,
    /// Over a whole `SATURATED_AFTER`: what it allows, however far above
    /// it the rate was.
    whole: bool,
}

/// What a streak of bare 429s taught (see the module doc).
#[derive(Default)]
struct Bare {
    /// The streak in progress: when it began, and the rate then.
    streak: Option<(Instant, Option<f64>)>,
    /// How long the next probe waits.
    probe_wait: Duration,
    /// When the last bare pause ends: a refusal of an attempt sent before
    /// is a straggler of what the streak already counted.
    probes_from: Option<Instant>,
    /// The last refused probe of the streak.
    refused_probe: Option<Instant>,
    /// When the downstream last turned its window (halfway between the last
    /// refused probe and the one that succeeded).
    turned: Option<Instant>,
    /// Successes since then.
    since_turn: u32,
    /// The downstream's window, as the time between turns (the shortest
    /// one the turns seen fit as multiples of).
    period: Option<Duration>,
    /// The streak's first probe was aimed at the turn the beat predicts.
    /// Refused (as it is meant to be, a little early), it bounds the turn
    /// from below, and probing goes on from the first step.
    aimed: bool,
}

impl State {
    fn forget_taken_before(&mut self, now: Instant) {
        while self
            .taken_while_refusing
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) > SATURATED_AFTER)
        {
            self.taken_while_refusing.pop_front();
        }
    }

    /// What the downstream takes while it refuses the rest (see
    /// [`Measure`]): the successes of attempts sent since the first
    /// refusal (not the burst before it), over the last second of that, or
    /// all of it when shorter, but at least `MEASURE_AT_LEAST`. `None`
    /// before, with a pause the downstream asked for in the span (time it
    /// told us not to send, whose allowance the count would miss), or when
    /// it took nothing (a window that has not turned: the time measured
    /// says nothing).
    fn measured(&mut self, now: Instant) -> Option<Measure> {
        let since = self.refusing_since?;
        let span = now.duration_since(since);
        let told = self.told_pause_until.is_some_and(|p| p > since);
        // A window longer than the count's second (learned from a streak
        // of bare 429s): a second of it says nothing of its allowance.
        let windowed = self.horizon > LONG_WINDOW;
        // A streak of bare 429s waiting this long waits for a window to
        // turn, and its turn measures it.
        let waiting = self
            .bare
            .streak
            .is_some_and(|(began, _)| now.duration_since(began) >= LONG_WAIT);
        if told || windowed || waiting || span < MEASURE_AT_LEAST {
            return None;
        }
        self.forget_taken_before(now);
        let n = self.taken_while_refusing.len();
        let over = span.min(SATURATED_AFTER);
        let rate = n as f64 / over.as_secs_f64();
        // Limited in flight (see `cut`), and the cap is what holds it back
        // (its attempts in flight, each as long as an answer takes, let
        // through little more than the count): the count is the cap's, not
        // a rate.
        let capped = match (self.in_flight_cap, self.answer_time) {
            (Some(cap), Some(t)) => f64::from(cap) / t.as_secs_f64().max(1e-6) < 2.0 * rate,
            (Some(_), None) => true,
            _ => false,
        };
        if capped {
            return None;
        }
        // Our own pauses (probes after bare 429s) in the span: the count
        // reads a little off, low where the downstream's allowance accrued
        // past a burst it could hold, high where it banked it and we spent
        // it after; held at `PAUSED_SHARE` of it. Without one, it is what
        // the downstream takes: held at `ACCEPTED_SHARE` of it.
        let paused = self.paused_until.is_some_and(|p| p + over > now);
        let hold = rate * if paused { PAUSED_SHARE } else { ACCEPTED_SHARE };
        (n > 0).then_some(Measure {
            rate,
            hold,
            whole: span >= SATURATED_AFTER,
        })
    }

    /// Holds at a measure: the ceiling is what it measured, the rate its
    /// hold; the cut to it is this round's.
    fn hold_measured(&mut self, m: &Measure, now: Instant) {
        let rate = m.rate.min(self.effective.unwrap_or(m.rate));
        self.ceiling = Some(rate);
        self.ceiling_held = true;
        self.measured_hold = Some(m.hold);
        self.ceiling_stale = false;
        self.last_decrease = Some(now);
        self.recovered = false;
        self.set_effective(m.hold);
    }

    fn slot(&self, now: Instant) -> u64 {
        (now.duration_since(self.epoch).as_millis() / SLOT.as_millis()) as u64
    }

    /// Successes per second over the horizon (its whole slots and the
    /// current one).
    fn accepted_per_second(&self, now: Instant) -> f64 {
        let cur = self.slot(now);
        let slots = ((self.horizon.as_millis() / SLOT.as_millis()) as u64).clamp(4, SLOTS as u64);
        let n: u32 = self
            .accepted
            .iter()
            .filter(|(slot, _)| slot.saturating_add(slots - 1) >= cur && *slot <= cur)
            .map(|(_, n)| n)
            .sum();
        let since_epoch = now.duration_since(self.epoch).as_secs_f64();
        let into_current = since_epoch - cur as f64 * SLOT.as_secs_f64();
        // Not counting the time before anything was sent, which would
        // read a downstream that took all it allows as one that took less.
        let first = self.first_sent.unwrap_or(self.epoch);
        let sending = now
            .saturating_duration_since(first)
            .as_secs_f64()
            .max(SLOT.as_secs_f64());
        let window = ((slots - 1) as f64 * SLOT.as_secs_f64() + into_current).min(sending);
        if window <= 0.0 {
            0.0
        } else {
            f64::from(n) / window
        }
    }

    /// The bucket at the effective rate, from where it was.
    fn reshape_bucket(&mut self) {
        let now = Instant::now();
        let burst = self.effective.map(|r| burst_for(self.configured, r, self.burst));
        self.bucket = match (self.effective, burst, self.bucket.take()) {
            (Some(r), Some(b), Some(mut p)) => {
                p.reshape(r, b, now);
                Some(p)
            }
            (Some(r), Some(b), None) => Some(Pacer::new(r, b, now)),
            _ => None,
        };
    }

    fn set_effective(&mut self, rate: f64) {
        if self.effective != Some(rate) {
            self.effective = Some(rate);
            self.reshape_bucket();
        }
    }

    /// No sending before `until` (a later pause already set stands), then
    /// resume with an empty bucket.
    fn pause_until(&mut self, until: Instant) {
        self.paused_until = Some(self.paused_until.map_or(until, |p| p.max(until)));
        self.drain_after_pause = true;
    }

    /// A calm second: the in-flight cap rises by one a second up to one
    /// below the number that was refused, and to it (a probe) only after
    /// `PROBE_AFTER` calm seconds there.
    fn raise_in_flight_cap(&mut self) {
        let Some(cap) = self.in_flight_cap else {
            return;
        };
        if self.last_slowdown.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
            return;
        }
        self.cap_calm += 1;
        let below_ceiling = self.in_flight_ceiling.is_some_and(|k| cap + 1 < k);
        // A probe refused with a pause the downstream asks for costs the
        // whole pause: probed once a `CEILING_MEMORY`, as a held rate is.
        let probe_after = if self.in_flight_told {
            u32::try_from(CEILING_MEMORY.as_secs()).unwrap_or(u32::MAX)
        } else {
            PROBE_AFTER
        };
        if below_ceiling || self.cap_calm >= probe_after {
            self.in_flight_cap = Some(cap + 1);
            self.cap_calm = 0;
        }
    }

    /// The end of a streak of bare 429s: a probe sent at `sent`, after the
    /// streak began, succeeded at `now`.
    fn window_turned(&mut self, now: Instant) {
        let Some((began, rate_then)) = self.bare.streak.take() else {
            return;
        };
        let refused_probe = self.bare.refused_probe.take();
        if std::mem::take(&mut self.bare.aimed) && refused_probe.is_none() {
            // Aimed early and still past the turn: the beat runs slow.
            self.bare.period = self.bare.period.map(|w| w.mul_f64(1.0 - AIM_EARLY));
        }
        let turned = match refused_probe {
            Some(refused) => refused + (now - refused) / 2,
            None => now,
        };
        let waited = turned.saturating_duration_since(began);
        if waited < LONG_WAIT {
            // A bucket or a concurrency limit catching up: it says nothing
            // of a window's rate, and a probe past the limit costs little.
            // A held ceiling near the rate it refused becomes that rate,
            // which is above its limit: held at 95% of it, the next refusal
            // brings it closer, where what it accepted over a second can
            // read low and hold the rate there. Far above, that rate says
            // little, and what it accepted stands.
            if let (true, false, Some(r), Some(k)) =
                (self.ceiling_held, self.measured_hold.is_some(), rate_then, self.ceiling)
            {
                if r <= k * FAR_ABOVE {
                    self.ceiling = Some(r);
                }
            }
        } else {
            // A window: what it allows is measured by its turns, not by
            // a count over a span that waited for one.
            self.refusing_since = None;
            self.taken_while_refusing.clear();
            let from = self.bare.turned.or(self.first_sent);
            if let Some(from) = from.filter(|f| turned > *f) {
                let span = turned - from;
                // A turn bracketed by a refused probe places the beat.
                if let (Some(prev), Some(_)) = (self.bare.turned, refused_probe) {
                    self.bare.period = Some(beat(self.bare.period, turned - prev));
                }
                // One window from the last turn: what it took since (from
                // the probe that met the last turn) is its allowance, to
                // the request, over the window as the beat knows it.
                let one_window = self
                    .bare
                    .turned
                    .and(self.bare.period)
                    .filter(|w| (0.9..1.1).contains(&(span.as_secs_f64() / w.as_secs_f64())));
                let per = one_window.unwrap_or(span);
                let sustainable = f64::from(self.bare.since_turn) / per.as_secs_f64();
                if sustainable > 0.0 {
                    self.horizon = span.clamp(Duration::from_secs(1), SLOT * SLOTS as u32);
                    // The allowance known: held below. Otherwise, near
                    // the rate that met the refusal: that rate, held below.
                    // Far above it: the descent's first measure, which only
                    // says where to start (the turn is placed within a
                    // probe's step), so no ceiling: the rate climbs back
                    // until the next refusal, which, a window on, gives the
                    // allowance.
                    let near = rate_then.is_some_and(|r| r <= FAR_ABOVE * sustainable);
                    let ceiling = match rate_then {
                        _ if one_window.is_some() => Some(sustainable),
                        Some(r) if near => Some(r),
                        _ => None,
                    };
                    if let Some(c) = self.configured {
                        self.ceiling = ceiling;
                        self.ceiling_held = ceiling.is_some();
                        self.ceiling_stale = false;
                        self.measured_hold = None;
                        let k = ceiling.unwrap_or(sustainable);
                        let held = (k * HOLD_BELOW).max(c * FLOOR_SHARE).min(c);
                        if one_window.is_some() || self.effective.is_some_and(|e| held < e) {
                            self.set_effective(held);
                        }
                    }
                }
            }
        }
        self.bare.turned = Some(turned);
        self.bare.since_turn = 0;
    }
}

/// The window a new span between two turns shows: a span that is about a
/// whole multiple of the window known (windows without a streak between)
/// refines it, averaged in; any other replaces it.
fn beat(known: Option<Duration>, span: Duration) -> Duration {
    if let Some(w) = known.filter(|w| !w.is_zero()) {
        let n = (span.as_secs_f64() / w.as_secs_f64()).round();
        if n >= 1.0 {
            let w_new = span.div_f64(n);
            if (w_new.as_secs_f64() - w.as_secs_f64()).abs() <= 0.1 * w.as_secs_f64() {
                // Each turn is placed within half a probe step: averaged.
                return (w + w_new) / 2;
            }
        }
    }
    span
}

/// The bucket size to use: the configured burst at full rate, but 1 while
/// adapting, because a downstream that pushed back is often one that counts
/// requests in short windows, and a burst is what trips it.
fn burst_for(configured: Option<f64>, effective: f64, burst: u32) -> u32 {
    match configured {
        Some(c) if effective < c => 1,
        _ => burst,
    }
}

impl Limiter {
    pub fn new(rate: Option<f64>, burst: u32, adaptive: bool) -> Self {
        let now = Instant::now();
        Limiter {
            inner: Mutex::new(State {
                configured: rate,
                burst,
                adaptive,
                effective: rate,
                bucket: rate.map(|r| Pacer::new(r, burst, now)),
                paused_until: None,
                drain_after_pause: false,
                last_slowdown: None,
                last_decrease: None,
                recovered: false,
                ceiling: None,
                ceiling_held: false,
                ceiling_stale: false,
                measured_hold: None,
                answer_time: None,
                in_flight_cap: None,
                in_flight_ceiling: None,
                in_flight_told: false,
                cap_calm: 0,
                accepted: vec![(u64::MAX, 0); SLOTS],
                horizon: Duration::from_secs(1),
                epoch: now,
                first_sent: None,
                refusing_since: None,
                taken_while_refusing: VecDeque::new(),
                told_pause_until: None,
                bare: Bare::default(),
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies new settings (reload). A slowdown still in force (the
    /// effective rate below the configured one: the downstream pushed back
    /// and the rate is still winning its way back) is kept, capped by the
    /// new rate; without one, the new rate applies at once, a raise
    /// included: nothing says the downstream cannot take it.
    pub fn reconfigure(&self, rate: Option<f64>, burst: u32, adaptive: bool) {
        let mut s = self.state();
        if s.configured == rate && s.burst == burst && s.adaptive == adaptive {
            return;
        }
        let slowed = matches!((s.configured, s.effective), (Some(c), Some(e)) if e < c);
        s.configured = rate;
        s.burst = burst;
        s.adaptive = adaptive;
        if !adaptive {
            s.in_flight_cap = None;
            s.bare = Bare::default();
        }
        s.effective = match (rate, s.effective) {
            (Some(r), Some(e)) if adaptive && slowed => Some(e.min(r)),
            _ => rate,
        };
        s.reshape_bucket();
    }

    pub fn configured(&self) -> Option<f64> {
        self.state().configured
    }

    pub fn effective(&self) -> Option<f64> {
        self.state().effective
    }

    /// At most this many attempts in flight: the configured `max_in_flight`,
    /// or the adaptive cap below it; one (the probe) during a streak of
    /// bare 429s.
    pub fn in_flight_limit(&self, configured: u32) -> u32 {
        let s = self.state();
        if s.bare.streak.is_some() {
            return 1;
        }
        s.in_flight_cap.map_or(configured, |c| c.clamp(1, configured))
    }

    /// Waits for the pause to pass and a cell of the bucket to be due.
    pub async fn acquire(&self) {
        loop {
            let wake = {
                let mut s = self.state();
                let now = Instant::now();
                match s.paused_until.filter(|u| *u > now) {
                    Some(until) => until,
                    None => {
                        if s.drain_after_pause {
                            s.drain_after_pause = false;
                            if let Some(b) = s.bucket.as_mut() {
                                b.empty(now);
                            }
                        }
                        let taken = s.bucket.as_mut().map_or(Ok(()), |b| b.take(now));
                        match taken {
                            Ok(()) => {
                                s.first_sent.get_or_insert(now);
                                return;
                            }
                            Err(due) => due,
                        }
                    }
                }
            };
            // A pause set while we wait is seen when we wake.
            tokio::time::sleep_until(wake).await;
        }
    }

    /// A 2xx to an attempt sent at `sent`: counted, so a slowdown knows
    /// what the downstream accepts; one sent after the last cut shows the
    /// downstream has taken the cut rate, which ends that round; one sent
    /// during a streak of bare 429s ends the streak.
    pub fn note_success(&self, sent: Instant) {
        let mut s = self.state();
        if !s.adaptive {
            return;
        }
        let now = Instant::now();
        let took = now.saturating_duration_since(sent);
        s.answer_time = Some(s.answer_time.map_or(took, |t| t.mul_f64(0.9) + took.mul_f64(0.1)));
        // Only while a spell of refusals is live: a refusal more than
        // `SATURATED_AFTER` after the last starts a new one, counted anew.
        let live = s.last_slowdown.is_some_and(|t| now.duration_since(t) < SATURATED_AFTER);
        if live && s.refusing_since.is_some_and(|t| sent >= t) {
            s.taken_while_refusing.push_back(sent);
            s.forget_taken_before(now);
        }
        if s.last_decrease.is_some_and(|t| sent > t) {
            s.recovered = true;
        }
        if s.bare.streak.is_some_and(|(began, _)| sent >= began) {
            s.window_turned(now);
        }
        s.bare.since_turn = s.bare.since_turn.saturating_add(1);
        let slot = s.slot(now);
        let i = (slot % SLOTS as u64) as usize;
        if s.accepted[i].0 == slot {
            s.accepted[i].1 += 1;
        } else {
            s.accepted[i] = (slot, 1);
        }
    }

    /// A 429 with neither `Retry-After` nor quota headers, to an attempt
    /// sent at `sent`, with `in_flight` in flight. The first of a streak
    /// pauses the destination (then single probes, further apart each
    /// time) and cuts as `slow_down` does, holding below the rate it
    /// measures; a refused probe pauses again; refusals of attempts sent
    /// before the pause are stragglers of the same news.
    pub fn refused_bare(&self, sent: Instant, in_flight: u32) {
        let mut s = self.state();
        if !s.adaptive {
            return;
        }
        let now = Instant::now();
        let probe = s.bare.probes_from.is_some_and(|p| sent >= p);
        match s.bare.streak {
            None if s.bare.probes_from.is_none() || probe => {
                s.bare.streak = Some((now, s.effective));
                s.bare.refused_probe = None;
                // The next turn, when the beat is known, aimed at a little
                // early: a refusal just before the turn and a success just
                // after place it well, where a probe late would place it
                // late, and later each time.
                let aim = match (s.bare.turned, s.bare.period) {
                    (Some(t), Some(w)) if !w.is_zero() => {
                        let from = now.saturating_duration_since(t);
                        let n = (from.as_secs_f64() / w.as_secs_f64()).ceil().max(1.0);
                        let aim = t + w.mul_f64(n) - w.mul_f64(AIM_EARLY);
                        Some(aim.saturating_duration_since(now).max(PROBE_FIRST))
                    }
                    _ => None,
                };
                let aim = aim.filter(|wait| *wait <= PROBE_WAIT_MAX);
                s.bare.aimed = aim.is_some();
                s.bare.probe_wait = aim.unwrap_or(PROBE_FIRST);
                s.cut(true, sent, in_flight, now);
            }
            Some(_) if probe => {
                s.last_slowdown = Some(now);
                s.bare.refused_probe = Some(now);
                s.bare.probe_wait = if std::mem::take(&mut s.bare.aimed) {
                    PROBE_FIRST
                } else {
                    s.bare.probe_wait.mul_f64(PROBE_GROWTH).min(PROBE_WAIT_MAX)
                };
            }
            _ => return,
        }
        // A refused attempt took nothing from the downstream's allowance:
        // the probe after the pause waits for the pause, not the bucket.
        if let Some(b) = s.bucket.as_mut() {
            b.give_back();
        }
        let until = now + s.bare.probe_wait;
        s.pause_until(until);
        s.bare.probes_from = s.paused_until;
    }

    /// A 429 or 503 to an attempt sent at `sent`: pause until `retry_after`,
    /// and cut the effective rate, once per round (see `cut`).
    pub fn slow_down(&self, retry_after: Option<Duration>, sent: Instant, in_flight: u32) {
        let mut s = self.state();
        if !s.adaptive {
            return;
        }
        let now = Instant::now();
        if let Some(ra) = retry_after {
            s.pause_until(now + ra);
            s.told_pause_until = s.paused_until;
        }
        s.cut(retry_after.is_some(), sent, in_flight, now);
    }

    /// Rate-limit headers said the quota is spent: pause for `d`.
    pub fn pause_for(&self, d: Duration) {
        let mut s = self.state();
        if !s.adaptive {
            return;
        }
        s.pause_until(Instant::now() + d);
        s.told_pause_until = s.paused_until;
    }

    /// Called once a second: a second without 429/503 raises the effective
    /// rate, by 5% of the configured rate up to 90% of the ceiling, by 1%
    /// of the ceiling beyond it (only up to 95% of a ceiling drawn by a
    /// pause, until it is `CEILING_MEMORY` old), and never past the
    /// configured rate.
    pub fn tick(&self) {
        let mut s = self.state();
        if s.last_slowdown.is_none_or(|t| t.elapsed() >= CEILING_MEMORY) {
            if s.ceiling.is_some() && (s.ceiling_held || s.ceiling_stale) {
                // Held long enough: probe past it, slowly.
                s.ceiling_held = false;
                s.ceiling_stale = true;
                s.measured_hold = None;
            } else {
                s.ceiling = None;
            }
            s.in_flight_ceiling = None;
            s.in_flight_cap = None;
        }
        s.raise_in_flight_cap();
        let (Some(c), Some(e)) = (s.configured, s.effective) else {
            return;
        };
        // Refusals still coming a second after they began: what the
        // downstream took over that second is what it allows (SPEC §14),
        // whether or not the next refusal starts a new round.
        let now = Instant::now();
        let refusing = s.last_slowdown.is_some_and(|t| now.duration_since(t) < SATURATED_AFTER);
        // (`adaptive` may have been turned off by a reload mid-spell.)
        if let Some(m) = s.measured(now).filter(|m| m.whole && s.adaptive && refusing) {
            if m.rate < e && m.hold.max(c * FLOOR_SHARE) < e {
                s.hold_measured(&m, now);
                return;
            }
        }
        if e >= c {
            return;
        }
        if s.last_slowdown.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
            return;
        }
        let raised = match s.ceiling {
            Some(k) if s.ceiling_stale => {
                let r = e + k * PROBE_SHARE;
                s.ceiling = Some(k.max(r));
                r
            }
            // Below a held ceiling, 95% of it is known to be taken: as fast
            // as below any ceiling, up to there.
            // A measure may read a little low (our own pauses in it, an
            // answer slow to come): after calm seconds held under it, the
            // rate rises to it, slowly; past it only once the ceiling is
            // stale, as any held one.
            Some(k) if s.measured_hold.is_some_and(|h| e >= h) => {
                let calm = s.last_slowdown.is_none_or(|t| t.elapsed() >= MEASURED_CALM);
                if calm {
                    (e + k * PROBE_SHARE).min(k).max(e)
                } else {
                    e
                }
            }
            Some(k) if s.ceiling_held => (e + c * RECOVERY_SHARE)
                .min(s.measured_hold.unwrap_or(k * HOLD_BELOW))
                .max(e),
            Some(k) if e >= k * FAST_UP_TO => e + k * PROBE_SHARE,
            Some(k) => (e + c * RECOVERY_SHARE).min(k * FAST_UP_TO),
            None => e + c * RECOVERY_SHARE,
        }
        .min(c);
        s.set_effective(raised);
    }
}

impl State {
    /// The cut of one refusal (429 or 503) to an attempt sent at `sent`,
    /// once per round. A round ends when an attempt sent after the cut
    /// succeeds, or a second after the cut: until then, refusals are the
    /// signal already acted on (attempts sent before the cut, or a quota
    /// window the rate before the cut spent).
    ///
    /// The cut halves (SPEC §4), tempered by evidence: it never goes below
    /// 95% of what the downstream accepted over the horizon, because it has
    /// just shown it takes that many. A downstream that refuses everything
    /// accepted nothing, so it is halved all the way down; one that pushes
    /// back at its limit is held just under the limit instead of
    /// saw-toothing between half of it and all of it. Every cut is at least
    /// 10%. After a whole second of refusals with no pause among them, the
    /// downstream has shown what it allows: the cut goes straight to 95% of
    /// what it accepted over that second, however far above it the rate
    /// was (SPEC §14), and holds there.
    ///
    /// `in_flight` is the number of attempts in flight when the refusal
    /// came (this one included): the cut also caps attempts in flight one
    /// below it, which is what a downstream that limits concurrency needs.
    /// `pausing`: the refusal paused the destination, so a held ceiling is
    /// what the downstream accepted (each probe past it costs a pause), not
    /// the rate it refused.
    fn cut(&mut self, pausing: bool, sent: Instant, in_flight: u32, now: Instant) {
        if self
            .last_slowdown
            .is_none_or(|t| now.duration_since(t) >= SATURATED_AFTER)
        {
            self.refusing_since = Some(now);
            self.taken_while_refusing.clear();
        }
        self.last_slowdown = Some(now);
        self.ceiling_stale = false;
        if let Some(t) = self.last_decrease {
            let round_over = self.recovered || now.duration_since(t) >= ROUND_AT_MOST;
            if sent <= t || !round_over {
                return;
            }
        }
        // A new round: the cap on attempts in flight and the rate are cut
        // together (with `rate = "unlimited"`, only the cap). What drew the
        // refusal becomes the ceiling only if the downstream had taken
        // traffic since the last cut: in a storm of refusals (an outage, a
        // spent quota) the cuts say nothing about its capacity, and the
        // ceiling from before the storm stands.
        let informative = self.last_decrease.is_none() || self.recovered;
        self.last_decrease = Some(now);
        self.recovered = false;
        if in_flight > 1 {
            self.in_flight_ceiling = match self.in_flight_ceiling {
                Some(k) if !informative => Some(k.max(in_flight)),
                _ => Some(in_flight),
            };
            self.in_flight_cap = Some(in_flight - 1);
            self.cap_calm = 0;
            self.in_flight_told = self.told_pause_until.is_some_and(|p| p > now);
        }
        if let (Some(c), Some(e)) = (self.configured, self.effective) {
            // Refused for a whole second with no pause the downstream asked
            // for in it, it took what it allows over that second: straight
            // there (SPEC §14), however far above it the rate was. Counted
            // from the first refusal, so the burst spent before it is not
            // read as rate.
            let measured = self.measured(now);
            let jump = measured.as_ref().is_some_and(|m| m.whole);
            let accepted = measured
                .as_ref()
                .map_or_else(|| self.accepted_per_second(now), |m| m.rate);
            let under = measured.as_ref().map_or(accepted * ACCEPTED_SHARE, |m| m.hold);
            let halved = if jump { 0.0 } else { e / 2.0 };
            let cut = halved.max(under.min(e * LEAST_CUT)).max(c * FLOOR_SHARE);
            if cut < e {
                // Held below only when the downstream had been taking
                // about that rate (or a whole second of refusals measured
                // it): a refusal of the first attempts says nothing of
                // where its limit is, and probing on finds it. Held, the
                // rate stays within 90-100% of the limit (SPEC §14). The
                // rate refused is the ceiling; after a pause (a probe past
                // it costs a whole one) or a measured second, what the
                // downstream took, the safer of the two: it refused the
                // rest.
                let took_most = accepted >= e * HELD_WHEN_ACCEPTED;
                let held = jump || took_most;
                let drawn = if jump || pausing && took_most {
                    accepted.min(e)
                } else {
                    e
                };
                self.ceiling = match self.ceiling {
                    Some(k) if !informative => Some(k.max(drawn)),
                    _ => Some(drawn),
                };
                self.ceiling_held = held;
                self.measured_hold = measured.map(|m| m.hold);
                self.ceiling_stale = false;
                self.set_effective(cut);
            }
        }
    }
}

#[cfg(test)]
mod convergence;
#[cfg(test)]
mod tests;
