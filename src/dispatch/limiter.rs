//! The per-destination rate limiter: a governor token bucket (`rate`,
//! `burst`) whose effective rate adapts when `adaptive = true`, plus a pause
//! ("do not send before") that `Retry-After` and spent rate-limit quotas set.
//!
//! governor's quota is fixed per limiter, so a rate change builds a new one;
//! a rebuilt bucket starts empty, so a change never hands out a fresh burst.

use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::time::Instant;

/// The effective rate never drops below this share of the configured rate.
const FLOOR_SHARE: f64 = 0.01;
/// Each calm second raises the effective rate by this share of the configured.
const RECOVERY_SHARE: f64 = 0.05;
/// At most one halving per this interval: the 429s of attempts already in
/// flight arrive together and are one signal, not eight (TCP's AIMD halves
/// once per round trip for the same reason).
const HALVE_AT_MOST_EVERY: Duration = Duration::from_millis(250);
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
    last_slowdown: Option<Instant>,
    last_halved: Option<Instant>,
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
                last_slowdown: None,
                last_halved: None,
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
        s.effective = match (rate, s.effective) {
            (Some(r), Some(e)) if adaptive && slowed => Some(e.min(r)),
            _ => rate,
        };
        s.bucket = s.effective.map(|r| bucket(r, burst_for(rate, r, burst), true));
    }

    pub fn configured(&self) -> Option<f64> {
        self.state().configured
    }

    pub fn effective(&self) -> Option<f64> {
        self.state().effective
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

    /// A 2xx: counted, so a slowdown knows what the downstream accepts.
    pub fn note_success(&self) {
        let mut s = self.state();
        if !s.adaptive {
            return;
        }
        let slot = s.slot(Instant::now());
        let i = (slot % 4) as usize;
        if s.accepted[i].0 == slot {
            s.accepted[i].1 += 1;
        } else {
            s.accepted[i] = (slot, 1);
        }
    }

    /// A 429 or 503: halve the effective rate and pause until `retry_after`.
    ///
    /// Halving (SPEC §4) is tempered by evidence: it never goes below 95% of
    /// the successes of the last second, because the downstream has just
    /// shown it takes that many. A downstream that refuses everything
    /// accepted nothing, so it is halved all the way down; one that pushes
    /// back at its limit is held just under the limit instead of
    /// saw-toothing between half of it and all of it. Every slowdown still
    /// cuts at least 10%.
    pub fn slow_down(&self, retry_after: Option<Duration>) {
        let mut s = self.state();
        if !s.adaptive {
            return;
        }
        let now = Instant::now();
        s.last_slowdown = Some(now);
        if let Some(ra) = retry_after {
            s.paused_until = Some(s.paused_until.map_or(now + ra, |p| p.max(now + ra)));
        }
        if s.last_halved
            .is_some_and(|t| now.duration_since(t) < HALVE_AT_MOST_EVERY)
        {
            return;
        }
        if let (Some(c), Some(e)) = (s.configured, s.effective) {
            let accepted = s.accepted_per_second(now);
            let halved = (e / 2.0)
                .max((accepted * ACCEPTED_SHARE).min(e * LEAST_CUT))
                .max(c * FLOOR_SHARE);
            if halved < e {
                s.effective = Some(halved);
                s.bucket = Some(bucket(halved, burst_for(s.configured, halved, s.burst), true));
                s.last_halved = Some(now);
            }
        }
    }

    /// Rate-limit headers said the quota is spent: pause for `d`.
    pub fn pause_for(&self, d: Duration) {
        let mut s = self.state();
        if !s.adaptive {
            return;
        }
        let until = Instant::now() + d;
        s.paused_until = Some(s.paused_until.map_or(until, |p| p.max(until)));
    }

    /// Called once a second: a second without 429/503 raises the effective
    /// rate by 5% of the configured rate, up to it.
    pub fn tick(&self) {
        let mut s = self.state();
        let (Some(c), Some(e)) = (s.configured, s.effective) else {
            return;
        };
        if e >= c {
            return;
        }
        if s.last_slowdown.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
            return;
        }
        let raised = (e + c * RECOVERY_SHARE).min(c);
        s.effective = Some(raised);
        s.bucket = Some(bucket(raised, burst_for(s.configured, raised, s.burst), true));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn slowdowns_halve_down_to_one_percent_and_ticks_recover_by_five_percent() {
        let l = Limiter::new(Some(100.0), 10, true);
        l.slow_down(None);
        assert_eq!(l.effective(), Some(50.0));
        // A burst of 429s from attempts already in flight halves once.
        l.slow_down(None);
        l.slow_down(None);
        assert_eq!(l.effective(), Some(50.0));
        for _ in 0..20 {
            tokio::time::advance(HALVE_AT_MOST_EVERY).await;
            l.slow_down(None);
        }
        assert_eq!(l.effective(), Some(1.0));
        // A tick right after a slowdown does nothing.
        l.tick();
        assert_eq!(l.effective(), Some(1.0));
        l.inner.lock().unwrap().last_slowdown = Some(Instant::now() - Duration::from_secs(2));
        l.tick();
        assert_eq!(l.effective(), Some(6.0));
        for _ in 0..40 {
            l.tick();
        }
        assert_eq!(l.effective(), Some(100.0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_reload_applies_a_raise_at_once_unless_a_slowdown_is_in_force() {
        let l = Limiter::new(Some(2.0), 1, true);
        l.reconfigure(Some(200.0), 1, true);
        assert_eq!(l.effective(), Some(200.0));
        // Pushed back: the slowdown holds through a raise...
        l.slow_down(None);
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
        l.slow_down(Some(Duration::from_secs(60)));
        assert_eq!(l.effective(), Some(100.0));
        tokio::time::timeout(Duration::from_secs(1), l.acquire()).await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_pauses_acquisition() {
        let l = Limiter::new(None, 1, true);
        l.slow_down(Some(Duration::from_secs(5)));
        let start = Instant::now();
        l.acquire().await;
        assert!(start.elapsed() >= Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn a_slowdown_holds_just_under_what_the_downstream_accepted() {
        async fn accept(l: &Limiter, per_second: u32, for_ms: u64) {
            for _ in 0..for_ms / 50 {
                for _ in 0..per_second / 20 {
                    l.note_success();
                }
                tokio::time::advance(Duration::from_millis(50)).await;
            }
        }
        let l = Limiter::new(Some(1000.0), 10, true);
        // The downstream takes 200/s and refuses the rest: halvings bring
        // the rate down, but not below 95% of what it accepted.
        accept(&l, 200, 1000).await;
        l.slow_down(None);
        assert_eq!(l.effective(), Some(500.0));
        accept(&l, 200, 250).await;
        l.slow_down(None);
        assert_eq!(l.effective(), Some(250.0));
        accept(&l, 200, 250).await;
        l.slow_down(None);
        let e = l.effective().unwrap();
        assert!((185.0..=195.0).contains(&e), "effective {e}");
        // Refused attempts are not successes: with none in the last second,
        // slowdowns halve as the SPEC says.
        tokio::time::advance(Duration::from_secs(2)).await;
        l.slow_down(None);
        assert!((e / 2.0 - 0.01..=e / 2.0 + 0.01).contains(&l.effective().unwrap()));
        // Even when every attempt in the last second succeeded, a 429 cuts
        // at least 10%.
        let l = Limiter::new(Some(100.0), 10, true);
        accept(&l, 100, 1000).await;
        l.slow_down(None);
        assert_eq!(l.effective(), Some(90.0));
    }
}
