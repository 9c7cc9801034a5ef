//! The per-destination rate limiter: a governor token bucket (`rate`,
//! `burst`) whose effective rate adapts when `adaptive = true`, plus a pause
//! ("do not send before") that `Retry-After` and spent rate-limit quotas set.
//!
//! governor's quota is fixed per limiter, so a rate change builds a new one;
//! a rebuilt bucket starts empty, so a change never hands out a fresh burst.
//!
//! Adapting (SPEC §4, §14) is AIMD with a memory, as TCP congestion control
//! is: a 429 or 503 cuts the rate once per round (the refusals of attempts
//! sent before the cut are the same signal); the rate that drew it is
//! remembered as a ceiling; calm seconds win the rate back quickly up to
//! 90% of that ceiling and only slowly beyond it, because with a downstream
//! that answers `Retry-After` each probe that fails costs a whole pause.
//! After any pause, sending resumes with an empty bucket: a bucket that
//! refilled during the pause would spend its burst into a downstream whose
//! own allowance has just started again.

use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
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
/// Below a ceiling drawn by a refusal that carried `Retry-After`, the rate
/// climbs to this share of it and holds there until the ceiling is
/// forgotten: there, each probe past the limit costs a whole pause (one
/// `Retry-After: 1` a few seconds is a fifth of the allowance), so the
/// limit is probed once per `CEILING_MEMORY`, not every few seconds.
const HOLD_BELOW_PAUSING: f64 = 0.95;
/// ...provided the downstream took at least this share of that rate over
/// the last second.
const HELD_WHEN_ACCEPTED: f64 = 0.5;
/// A ceiling is forgotten after this long without a 429 or 503: the
/// downstream's capacity may have changed.
const CEILING_MEMORY: Duration = Duration::from_secs(60);
/// A slowdown never goes below this share of what the downstream accepted
/// over the last second...
const ACCEPTED_SHARE: f64 = 0.95;
/// ...but always cuts at least this much, so a 429 is never ignored.
const LEAST_CUT: f64 = 0.9;
/// Successes are counted in four slots of this width: the last second.
const SLOT: Duration = Duration::from_millis(250);

pub struct Limiter {
    inner: Mutex<State>,
}

struct State {
    configured: Option<f64>,
    burst: u32,
    adaptive: bool,
    effective: Option<f64>,
    bucket: Option<Arc<DefaultDirectRateLimiter>>,
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
    /// Whether that push-back came with a pause (`Retry-After`).
    ceiling_paused: bool,
    /// The adaptive cap on attempts in flight (below `max_in_flight`): a
    /// downstream that limits concurrency refuses on the number in flight,
    /// whatever the rate. `None`: no cap beyond the configured one.
    in_flight_cap: Option<u32>,
    /// The number in flight that drew the last refusal.
    in_flight_ceiling: Option<u32>,
    /// Calm seconds since the cap last moved.
    cap_calm: u32,
    /// Successes per `SLOT`, as (slot number since `epoch`, count).
    accepted: [(u64, u32); 4],
    epoch: Instant,
}

impl State {
    fn slot(&self, now: Instant) -> u64 {
        (now.duration_since(self.epoch).as_millis() / SLOT.as_millis()) as u64
    }

    /// Successes per second over the last second (three whole slots and
    /// the current one).
    fn accepted_per_second(&self, now: Instant) -> f64 {
        let cur = self.slot(now);
        let n: u32 = self
            .accepted
            .iter()
            .filter(|(slot, _)| slot.saturating_add(3) >= cur && *slot <= cur)
            .map(|(_, n)| n)
            .sum();
        let into_current = now.duration_since(self.epoch).as_secs_f64() - cur as f64 * SLOT.as_secs_f64();
        let window = (3.0 * SLOT.as_secs_f64() + into_current).min(now.duration_since(self.epoch).as_secs_f64());
        if window <= 0.0 {
            0.0
        } else {
            f64::from(n) / window
        }
    }

    /// A fresh, empty bucket at the effective rate (see the module doc).
    fn rebuild_bucket(&mut self) {
        self.bucket = self
            .effective
            .map(|r| bucket(r, burst_for(self.configured, r, self.burst), true));
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
        if below_ceiling || self.cap_calm >= PROBE_AFTER {
            self.in_flight_cap = Some(cap + 1);
            self.cap_calm = 0;
        }
    }
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

fn bucket(rate: f64, burst: u32, drained: bool) -> Arc<DefaultDirectRateLimiter> {
    let period = Duration::from_secs_f64(1.0 / rate.max(1e-6));
    let burst = NonZeroU32::new(burst.max(1)).unwrap_or(NonZeroU32::MIN);
    let quota = Quota::with_period(period)
        .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
        .allow_burst(burst);
    let b = RateLimiter::direct(quota);
    if drained {
        let _ = b.check_n(burst);
    }
    Arc::new(b)
}

impl Limiter {
    pub fn new(rate: Option<f64>, burst: u32, adaptive: bool) -> Self {
        Limiter {
            inner: Mutex::new(State {
                configured: rate,
                burst,
                adaptive,
                effective: rate,
                bucket: rate.map(|r| bucket(r, burst, false)),
                paused_until: None,
                drain_after_pause: false,
                last_slowdown: None,
                last_decrease: None,
                recovered: false,
                ceiling: None,
                ceiling_paused: false,
                in_flight_cap: None,
                in_flight_ceiling: None,
                cap_calm: 0,
                accepted: [(u64::MAX, 0); 4],
                epoch: Instant::now(),
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
        }
        s.effective = match (rate, s.effective) {
            (Some(r), Some(e)) if adaptive && slowed => Some(e.min(r)),
            _ => rate,
        };
        s.rebuild_bucket();
    }

    pub fn configured(&self) -> Option<f64> {
        self.state().configured
    }

    pub fn effective(&self) -> Option<f64> {
        self.state().effective
    }

    /// At most this many attempts in flight: the configured `max_in_flight`,
    /// or the adaptive cap below it.
    pub fn in_flight_limit(&self, configured: u32) -> u32 {
        self.state()
            .in_flight_cap
            .map_or(configured, |c| c.clamp(1, configured))
    }

    /// Waits for the pause to pass and a token to be free.
    pub async fn acquire(&self) {
        loop {
            let (pause, b) = {
                let s = self.state();
                (s.paused_until, s.bucket.clone())
            };
            if let Some(until) = pause {
                if until > Instant::now() {
                    tokio::time::sleep_until(until).await;
                    continue;
                }
            }
            let b = {
                let mut s = self.state();
                if s.drain_after_pause && s.paused_until.is_none_or(|u| u <= Instant::now()) {
                    s.drain_after_pause = false;
                    s.rebuild_bucket();
                    s.bucket.clone()
                } else {
                    b
                }
            };
            if let Some(b) = b {
                b.until_ready().await;
            }
            // A pause set while we waited for the token still applies.
            let s = self.state();
            if s.paused_until.is_none_or(|u| u <= Instant::now()) {
                return;
            }
        }
    }

    /// A 2xx to an attempt sent at `sent`: counted, so a slowdown knows
    /// what the downstream accepts; one sent after the last cut shows the
    /// downstream has taken the cut rate, which ends that round.
    pub fn note_success(&self, sent: Instant) {
        let mut s = self.state();
        if !s.adaptive {
            return;
        }
        if s.last_decrease.is_some_and(|t| sent > t) {
            s.recovered = true;
        }
        let slot = s.slot(Instant::now());
        let i = (slot % 4) as usize;
        if s.accepted[i].0 == slot {
            s.accepted[i].1 += 1;
        } else {
            s.accepted[i] = (slot, 1);
        }
    }

    /// A 429 or 503 to an attempt sent at `sent`: pause until `retry_after`,
    /// and cut the effective rate, once per round. A round ends when an
    /// attempt sent after the cut succeeds, or a second after the cut:
    /// until then, refusals are the signal already acted on (attempts sent
    /// before the cut, or a quota window the rate before the cut spent).
    ///
    /// The cut halves (SPEC §4), tempered by evidence: it never goes below
    /// 95% of the successes of the last second, because the downstream has
    /// just shown it takes that many. A downstream that refuses everything
    /// accepted nothing, so it is halved all the way down; one that pushes
    /// back at its limit is held just under the limit instead of
    /// saw-toothing between half of it and all of it. Every cut is at least
    /// 10%.
    ///
    /// `in_flight` is the number of attempts in flight when the refusal
    /// came (this one included): the cut also caps attempts in flight one
    /// below it, which is what a downstream that limits concurrency needs.
    pub fn slow_down(&self, retry_after: Option<Duration>, sent: Instant, in_flight: u32) {
        let mut s = self.state();
        if !s.adaptive {
            return;
        }
        let now = Instant::now();
        s.last_slowdown = Some(now);
        if let Some(ra) = retry_after {
            s.pause_until(now + ra);
        }
        if let Some(t) = s.last_decrease {
            let round_over = s.recovered || now.duration_since(t) >= ROUND_AT_MOST;
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
        let informative = s.last_decrease.is_none() || s.recovered;
        s.last_decrease = Some(now);
        s.recovered = false;
        if in_flight > 1 {
            s.in_flight_ceiling = match s.in_flight_ceiling {
                Some(k) if !informative => Some(k.max(in_flight)),
                _ => Some(in_flight),
            };
            s.in_flight_cap = Some(in_flight - 1);
            s.cap_calm = 0;
        }
        if let (Some(c), Some(e)) = (s.configured, s.effective) {
            let accepted = s.accepted_per_second(now);
            let cut = (e / 2.0)
                .max((accepted * ACCEPTED_SHARE).min(e * LEAST_CUT))
                .max(c * FLOOR_SHARE);
            if cut < e {
                // Held below only when the downstream had been taking
                // about that rate: a refusal of the first attempts says
                // nothing of where its limit is. When it had, what it took
                // is the better ceiling: it refused the rest.
                let held = retry_after.is_some() && accepted >= e * HELD_WHEN_ACCEPTED;
                let drawn = if held { accepted.min(e) } else { e };
                s.ceiling = match s.ceiling {
                    Some(k) if !informative => Some(k.max(drawn)),
                    _ => Some(drawn),
                };
                s.ceiling_paused = held;
                s.effective = Some(cut);
                s.rebuild_bucket();
            }
        }
    }

    /// Rate-limit headers said the quota is spent: pause for `d`.
    pub fn pause_for(&self, d: Duration) {
        let mut s = self.state();
        if !s.adaptive {
            return;
        }
        s.pause_until(Instant::now() + d);
    }

    /// Called once a second: a second without 429/503 raises the effective
    /// rate, by 5% of the configured rate up to 90% of the ceiling, by 1%
    /// of the ceiling beyond it (only up to 95% of a ceiling drawn with
    /// `Retry-After`), and never past the configured rate.
    pub fn tick(&self) {
        let mut s = self.state();
        if s.last_slowdown.is_none_or(|t| t.elapsed() >= CEILING_MEMORY) {
            s.ceiling = None;
            s.in_flight_ceiling = None;
            s.in_flight_cap = None;
        }
        s.raise_in_flight_cap();
        let (Some(c), Some(e)) = (s.configured, s.effective) else {
            return;
        };
        if e >= c {
            return;
        }
        if s.last_slowdown.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
            return;
        }
        let fast_up_to = s.ceiling.map_or(c, |k| k * FAST_UP_TO);
        let probe_up_to = match s.ceiling {
            Some(k) if s.ceiling_paused => k * HOLD_BELOW_PAUSING,
            _ => f64::INFINITY,
        };
        let raised = if e < fast_up_to {
            (e + c * RECOVERY_SHARE).min(fast_up_to)
        } else {
            (e + s.ceiling.unwrap_or(c) * PROBE_SHARE).min(probe_up_to.max(e))
        }
        .min(c);
        s.effective = Some(raised);
        s.rebuild_bucket();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn slowdowns_halve_once_per_round_down_to_one_percent() {
        let l = Limiter::new(Some(100.0), 10, true);
        let round = Instant::now();
        l.slow_down(None, round, 1);
        assert_eq!(l.effective(), Some(50.0));
        // 429s to attempts sent before the cut are the same round.
        tokio::time::advance(Duration::from_millis(500)).await;
        l.slow_down(None, round, 1);
        l.slow_down(None, round, 1);
        assert_eq!(l.effective(), Some(50.0));
        // A refusal of an attempt sent after the cut, before any success:
        // the same round still (a quota window the old rate spent).
        tokio::time::advance(Duration::from_millis(10)).await;
        l.slow_down(None, Instant::now(), 1);
        assert_eq!(l.effective(), Some(50.0));
        // A success of an attempt sent after the cut ends the round.
        l.note_success(Instant::now());
        tokio::time::advance(Duration::from_millis(10)).await;
        l.slow_down(None, Instant::now(), 1);
        assert_eq!(l.effective(), Some(25.0));
        // A downstream that refuses everything: one cut a second.
        for _ in 0..20 {
            tokio::time::advance(ROUND_AT_MOST).await;
            l.slow_down(None, Instant::now(), 1);
        }
        assert_eq!(l.effective(), Some(1.0));
    }

    /// A refusal with `Retry-After` at a rate the downstream had mostly
    /// been taking sets the ceiling at what it took; the rate holds at 95%
    /// of that until it is forgotten: probing would cost a pause each time.
    #[tokio::test(start_paused = true)]
    async fn below_a_ceiling_that_paused_the_rate_holds_instead_of_probing() {
        let l = Limiter::new(Some(1000.0), 10, true);
        l.slow_down(None, Instant::now(), 1);
        tokio::time::advance(Duration::from_millis(10)).await;
        // It had been taking 300/s (six successes in the last second,
        // counted as 50/s each here) when it refused 500/s with Retry-After:
        // 300 is the ceiling, and the cut goes to 95% of it.
        for _ in 0..6 {
            l.note_success(Instant::now());
        }
        tokio::time::advance(Duration::from_millis(10)).await;
        l.slow_down(Some(Duration::from_secs(1)), Instant::now(), 1);
        assert_eq!(l.effective(), Some(285.0), "cut to 95% of what it took");
        tokio::time::advance(Duration::from_secs(1)).await;
        for _ in 0..30 {
            l.tick();
        }
        assert_eq!(l.effective(), Some(285.0), "95% of the 300 it took, held");
        tokio::time::advance(CEILING_MEMORY).await;
        l.tick();
        assert_eq!(l.effective(), Some(335.0), "forgotten: recovering again");
    }

    #[tokio::test(start_paused = true)]
    async fn recovery_is_fast_up_to_the_ceiling_and_slow_beyond_it() {
        let l = Limiter::new(Some(1000.0), 10, true);
        l.slow_down(None, Instant::now(), 1);
        tokio::time::advance(Duration::from_millis(10)).await;
        // The downstream takes the cut rate, then pushes back at 500/s: cut
        // to 250, with a ceiling of 500.
        l.note_success(Instant::now());
        tokio::time::advance(Duration::from_millis(10)).await;
        l.slow_down(None, Instant::now(), 1);
        assert_eq!(l.effective(), Some(250.0));
        // A tick right after a slowdown does nothing.
        l.tick();
        assert_eq!(l.effective(), Some(250.0));
        tokio::time::advance(Duration::from_secs(1)).await;
        // +5% of the configured rate a second, up to 90% of the ceiling...
        for _ in 0..4 {
            l.tick();
        }
        assert_eq!(l.effective(), Some(450.0));
        // ...then +1% of the ceiling a second.
        l.tick();
        assert_eq!(l.effective(), Some(455.0));
        // A ceiling a minute old is forgotten: fast again, to the configured.
        tokio::time::advance(CEILING_MEMORY).await;
        for _ in 0..20 {
            l.tick();
        }
        assert_eq!(l.effective(), Some(1000.0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_refusal_caps_attempts_in_flight_one_below_the_number_refused() {
        let l = Limiter::new(Some(100.0), 10, true);
        assert_eq!(l.in_flight_limit(8), 8);
        // Refused with 5 in flight: at most 4.
        l.slow_down(None, Instant::now(), 5);
        assert_eq!(l.in_flight_limit(8), 4);
        // Calm seconds do not raise it to the refused number at once...
        for _ in 0..PROBE_AFTER - 1 {
            tokio::time::advance(Duration::from_secs(1)).await;
            l.tick();
            assert_eq!(l.in_flight_limit(8), 4);
        }
        // ...only after PROBE_AFTER of them.
        tokio::time::advance(Duration::from_secs(1)).await;
        l.tick();
        assert_eq!(l.in_flight_limit(8), 5);
        // A refusal at 3 a second later: at most 2, where calm seconds
        // keep it (one below the new ceiling) until the next probe.
        tokio::time::advance(ROUND_AT_MOST).await;
        l.note_success(Instant::now());
        tokio::time::advance(Duration::from_millis(10)).await;
        l.slow_down(None, Instant::now(), 3);
        assert_eq!(l.in_flight_limit(8), 2);
        tokio::time::advance(Duration::from_secs(1)).await;
        l.tick();
        assert_eq!(l.in_flight_limit(8), 2, "the ceiling is now 3: one below it is 2");
        // Never above the configured cap; forgotten after a calm minute.
        assert_eq!(l.in_flight_limit(1), 1);
        tokio::time::advance(CEILING_MEMORY).await;
        l.tick();
        assert_eq!(l.in_flight_limit(8), 8);
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_rate_limit_a_refusal_still_caps_attempts_in_flight_once_per_round() {
        let l = Limiter::new(None, 1, true);
        let sent = Instant::now();
        tokio::time::advance(Duration::from_millis(5)).await;
        l.slow_down(None, sent, 6);
        assert_eq!(l.in_flight_limit(8), 5);
        // The other refusals of that round do not cut it further.
        l.slow_down(None, sent, 5);
        tokio::time::advance(Duration::from_millis(5)).await;
        l.slow_down(None, Instant::now(), 5);
        assert_eq!(l.in_flight_limit(8), 5);
        assert_eq!(l.effective(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_storm_of_refusals_does_not_lower_the_ceiling() {
        let l = Limiter::new(Some(1000.0), 10, true);
        // Refused at 1000/s with 8 in flight, then nothing but refusals
        // (an outage) for ten seconds.
        l.slow_down(None, Instant::now(), 8);
        for _ in 0..10 {
            tokio::time::advance(ROUND_AT_MOST).await;
            l.slow_down(None, Instant::now(), 2);
        }
        assert_eq!(l.effective(), Some(10.0));
        assert_eq!(l.in_flight_limit(8), 1);
        // Once it answers again, both climb quickly to 90% of the rate and
        // one below the number in flight of before the storm.
        tokio::time::advance(Duration::from_secs(1)).await;
        for _ in 0..6 {
            l.tick();
        }
        assert_eq!(l.in_flight_limit(8), 7);
        for _ in 0..12 {
            l.tick();
        }
        assert_eq!(l.effective(), Some(900.0));
    }

    // Real time: governor's bucket keeps its own clock.
    #[tokio::test]
    async fn after_a_pause_sending_resumes_with_an_empty_bucket() {
        // 50/s with a burst of 10: the pause refills the bucket, and ten
        // attempts would go at once the moment it ends.
        let l = Limiter::new(Some(50.0), 10, true);
        l.pause_for(Duration::from_millis(300));
        l.acquire().await;
        let resumed = std::time::Instant::now();
        for _ in 0..4 {
            l.acquire().await;
        }
        // After the first, one every 20 ms: no burst.
        assert!(
            resumed.elapsed() >= Duration::from_millis(75),
            "{:?}",
            resumed.elapsed()
        );
        // Retry-After the same (the cut keeps the burst at 1 as well).
        l.reconfigure(Some(50.0), 10, false);
        l.reconfigure(Some(50.0), 10, true);
        tokio::time::sleep(Duration::from_millis(300)).await;
        l.slow_down(Some(Duration::from_millis(300)), Instant::now(), 1);
        let e = l.effective().unwrap();
        l.acquire().await;
        let resumed = std::time::Instant::now();
        for _ in 0..3 {
            l.acquire().await;
        }
        let gap = Duration::from_secs_f64(2.5 / e);
        assert!(resumed.elapsed() >= gap, "{:?} < {gap:?}", resumed.elapsed());
    }

    #[tokio::test(start_paused = true)]
    async fn a_reload_applies_a_raise_at_once_unless_a_slowdown_is_in_force() {
        let l = Limiter::new(Some(2.0), 1, true);
        l.reconfigure(Some(200.0), 1, true);
        assert_eq!(l.effective(), Some(200.0));
        // Pushed back: the slowdown holds through a raise...
        l.slow_down(None, Instant::now(), 1);
        assert_eq!(l.effective(), Some(100.0));
        l.reconfigure(Some(400.0), 1, true);
        assert_eq!(l.effective(), Some(100.0));
        // ...and a cut below it applies at once.
        l.reconfigure(Some(50.0), 1, true);
        assert_eq!(l.effective(), Some(50.0));
    }

    #[tokio::test]
    async fn a_non_adaptive_limiter_ignores_slowdowns() {
        let l = Limiter::new(Some(100.0), 10, false);
        l.slow_down(Some(Duration::from_secs(60)), Instant::now(), 1);
        assert_eq!(l.effective(), Some(100.0));
        tokio::time::timeout(Duration::from_secs(1), l.acquire()).await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_pauses_acquisition() {
        let l = Limiter::new(None, 1, true);
        l.slow_down(Some(Duration::from_secs(5)), Instant::now(), 1);
        let start = Instant::now();
        l.acquire().await;
        assert!(start.elapsed() >= Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn a_slowdown_holds_just_under_what_the_downstream_accepted() {
        async fn accept(l: &Limiter, per_second: u32, for_ms: u64) {
            for _ in 0..for_ms / 50 {
                for _ in 0..per_second / 20 {
                    l.note_success(Instant::now());
                }
                tokio::time::advance(Duration::from_millis(50)).await;
            }
        }
        let l = Limiter::new(Some(1000.0), 10, true);
        // The downstream takes 200/s and refuses the rest: halvings bring
        // the rate down, but not below 95% of what it accepted.
        accept(&l, 200, 1000).await;
        l.slow_down(None, Instant::now(), 1);
        assert_eq!(l.effective(), Some(500.0));
        accept(&l, 200, 250).await;
        l.slow_down(None, Instant::now(), 1);
        assert_eq!(l.effective(), Some(250.0));
        accept(&l, 200, 250).await;
        l.slow_down(None, Instant::now(), 1);
        let e = l.effective().unwrap();
        assert!((185.0..=195.0).contains(&e), "effective {e}");
        // Refused attempts are not successes: with none in the last second,
        // slowdowns halve as the SPEC says.
        tokio::time::advance(Duration::from_secs(2)).await;
        l.slow_down(None, Instant::now(), 1);
        assert!((e / 2.0 - 0.01..=e / 2.0 + 0.01).contains(&l.effective().unwrap()));
        // Even when every attempt in the last second succeeded, a 429 cuts
        // at least 10%.
        let l = Limiter::new(Some(100.0), 10, true);
        accept(&l, 100, 1000).await;
        l.slow_down(None, Instant::now(), 1);
        assert_eq!(l.effective(), Some(90.0));
    }
}
