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
    // It had been taking 300/s over the last second when it refused
    // 500/s with Retry-After: 300 is the ceiling, and the cut goes to 95%
    // of it.
    for _ in 0..20 {
        for _ in 0..15 {
            l.note_success(Instant::now());
        }
        tokio::time::advance(Duration::from_millis(50)).await;
    }
    l.slow_down(Some(Duration::from_secs(1)), Instant::now(), 1);
    let held = l.effective().unwrap();
    assert!((280.0..=286.0).contains(&held), "cut to 95% of what it took: {held}");
    tokio::time::advance(Duration::from_secs(1)).await;
    for _ in 0..30 {
        l.tick();
    }
    assert_eq!(l.effective(), Some(held), "95% of the 300 it took, held");
    // A minute on, the hold ends: probing past it at 1% of the ceiling
    // a second, the ceiling following the rate up (compounding), never
    // a jump of 5% of the configured rate into a known limit.
    tokio::time::advance(CEILING_MEMORY).await;
    l.tick();
    let ceiling = held / 0.95;
    let probed = l.effective().unwrap();
    assert!(
        (probed - (held + ceiling * 0.01)).abs() < 1e-9,
        "probing past the ceiling: {held} -> {probed}"
    );
    for _ in 0..100 {
        l.tick();
    }
    let e = l.effective().unwrap();
    assert!((600.0..800.0).contains(&e), "compounding 1% a second: {e}");
}

/// PocketBase's limit, 20 per 5 s answered with bare 429s: the first
/// refusal pauses the destination, single probes follow further apart
/// each time, and the window's turn gives the rate it sustains.
#[tokio::test(start_paused = true)]
async fn a_bare_429_pauses_the_destination_and_the_windows_turn_gives_its_rate() {
    let l = Limiter::new(Some(40.0), 10, true);
    let t0 = Instant::now();
    // Twenty taken in the first half second, then refused.
    l.acquire().await;
    for _ in 0..20 {
        tokio::time::advance(Duration::from_millis(25)).await;
        l.note_success(Instant::now());
    }
    let onset = Instant::now();
    l.refused_bare(onset, 3);
    assert_eq!(l.in_flight_limit(8), 1, "one probe at a time");
    // Stragglers sent before the pause change nothing.
    l.refused_bare(onset, 2);
    let resumed = {
        l.acquire().await;
        Instant::now()
    };
    assert_eq!(resumed - onset, PROBE_FIRST);
    // Probes refused until the window turns at 5 s, each wait longer.
    let mut waits = vec![PROBE_FIRST];
    let mut now = resumed;
    while now.duration_since(t0) < Duration::from_secs(5) {
        l.refused_bare(now, 1);
        l.acquire().await;
        waits.push(Instant::now() - now);
        now = Instant::now();
    }
    assert!(waits.windows(2).all(|w| w[1] > w[0]), "{waits:?}");
    assert!(waits.len() < 16, "{} probes", waits.len());
    // The probe after the turn succeeds: 20 over about 5 s.
    l.note_success(now);
    assert_eq!(l.in_flight_limit(8), 2, "not one at a time: one below the 3 refused");
    let e = l.effective().unwrap();
    assert!((3.4..=4.1).contains(&e), "just under 4/s: {e}");
    // The bucket paces at it...
    tokio::time::advance(Duration::from_secs(1)).await;
    let start = Instant::now();
    for _ in 0..9 {
        l.acquire().await;
    }
    let took = (Instant::now() - start).as_secs_f64();
    assert!((8.0 / e - 0.01..=9.0 / e + 0.01).contains(&took), "{took}");
    // ...and a first measure only says where to start (the turn is
    // placed within one probe's step): calm seconds win the rate back,
    // 5% of the configured a second, until the next refusal.
    tokio::time::advance(Duration::from_secs(1)).await;
    l.tick();
    let probed = l.effective().unwrap();
    assert!((probed - (e + 2.0)).abs() < 1e-9, "{e} -> {probed}");
}

/// Windows turn on a beat: once it is placed, a streak costs a refusal
/// or two (the probe aimed just before the turn), not a ladder, and the
/// window's allowance is known to the request.
#[tokio::test(start_paused = true)]
async fn a_learned_window_is_probed_when_it_turns() {
    let l = Limiter::new(Some(40.0), 10, true);
    let t0 = Instant::now();
    // Refused from `at` until the window turns at `turn`: the number of
    // refused probes.
    async fn streak(l: &Limiter, turn: Instant) -> usize {
        l.refused_bare(Instant::now(), 1);
        let mut refused = 0;
        loop {
            l.acquire().await;
            let now = Instant::now();
            if now >= turn {
                l.note_success(now);
                return refused;
            }
            refused += 1;
            l.refused_bare(now, 1);
        }
    }
    let window = Duration::from_secs(5);
    for k in 1..=12u32 {
        // The window's twenty, taken in its first half second, then
        // refused.
        for _ in 0..19 {
            tokio::time::advance(Duration::from_millis(25)).await;
            l.note_success(Instant::now());
        }
        let probes = streak(&l, t0 + window * k).await;
        let late = Instant::now() - (t0 + window * k);
        if k <= 2 {
            assert!(probes > 3, "window {k}: the beat is not known yet ({probes})");
        } else if k >= 5 {
            assert!(probes <= 2, "window {k}: {probes} refused probes");
            assert!(late < Duration::from_millis(250), "window {k}: {late:?} late");
            // Twenty a window over five seconds, to the request.
            let e = l.effective().unwrap();
            assert!((3.75..=3.85).contains(&e), "window {k}: {e}/s");
        }
    }
}

/// A rate change keeps the bucket's place: no burst handed out, and no
/// period lost (a drained rebuild each second lost a quarter of 4/s).
#[tokio::test(start_paused = true)]
async fn a_rate_change_keeps_the_buckets_place() {
    let start = Instant::now();
    let mut p = Pacer::new(4.0, 1, start);
    assert!(p.take(start).is_ok());
    let due = p.take(start).unwrap_err();
    assert_eq!(due - start, Duration::from_millis(250));
    p.reshape(4.0, 1, start + Duration::from_millis(100));
    assert_eq!(p.take(start + Duration::from_millis(100)).unwrap_err(), due);
    // Emptied after a pause: one cell now, the next a period later.
    let later = start + Duration::from_secs(3);
    let mut p = Pacer::new(50.0, 10, start);
    p.empty(later);
    assert!(p.take(later).is_ok());
    assert_eq!(p.take(later).unwrap_err() - later, Duration::from_millis(20));
}

/// Cells taken a little late (as a timer wakes) keep the rate: a hundred
/// cells at 50/s, each taken 0.9 ms after it was due, take two seconds,
/// not 2.09. Late by more than half a period (idle), the schedule starts
/// again: no cell sooner than a period after the next.
#[tokio::test(start_paused = true)]
async fn a_cell_taken_a_little_late_keeps_the_schedule() {
    let start = Instant::now();
    let mut p = Pacer::new(50.0, 1, start);
    assert!(p.take(start).is_ok());
    let mut now = start;
    for _ in 0..100 {
        now = p.take(now).unwrap_err() + Duration::from_micros(900);
        assert!(p.take(now).is_ok());
    }
    assert!(now - start < Duration::from_millis(2002), "{:?}", now - start);
    let idle = now + Duration::from_secs(1);
    assert!(p.take(idle).is_ok());
    assert_eq!(p.take(idle).unwrap_err() - idle, Duration::from_millis(20));
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

/// A refusal that came with `Retry-After`: a probe of the number refused
/// would cost the whole pause, so the cap stays one below it until the
/// ceiling is forgotten, as a rate held after a pause does.
#[tokio::test(start_paused = true)]
async fn after_a_retry_after_the_in_flight_cap_is_not_probed_every_few_seconds() {
    let l = Limiter::new(Some(100.0), 10, true);
    l.slow_down(Some(Duration::from_secs(1)), Instant::now(), 5);
    assert_eq!(l.in_flight_limit(8), 4);
    for _ in 0..PROBE_AFTER * 3 {
        tokio::time::advance(Duration::from_secs(1)).await;
        l.tick();
        assert_eq!(l.in_flight_limit(8), 4);
    }
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

/// SPEC §14: from ten times the allowance of a downstream that takes 50
/// per second-long window and refuses the rest (a round lasts until the
/// window turns), a second of refusals measures what it takes, and the rate
/// goes straight to 95% of it, where halving once a round would take four
/// windows; it holds there, in 90-100% of the allowance.
#[tokio::test(start_paused = true)]
async fn a_second_of_refusals_goes_straight_to_what_the_downstream_took() {
    let l = Limiter::new(Some(500.0), 50, true);
    let start = Instant::now();
    let mut taken = [0u32; 9];
    let mut at_each_second = Vec::new();
    while start.elapsed() < Duration::from_secs(8) {
        l.acquire().await;
        let now = Instant::now();
        let window = now.duration_since(start).as_secs() as usize;
        if at_each_second.len() <= window {
            at_each_second.push(l.effective().unwrap());
        }
        if taken[window] < 50 {
            taken[window] += 1;
            l.note_success(now);
        } else {
            l.slow_down(None, now, 1);
        }
    }
    // Seconds 0 and 1 begin at the configured rate and one halving; from
    // the third on, within the band.
    assert_eq!(at_each_second[..2], [500.0, 250.0], "{at_each_second:?}");
    assert!(
        at_each_second[2..].iter().all(|r| (45.0..=50.0).contains(r)),
        "{at_each_second:?}"
    );
}
