//! The failure behaviour as a pure function: (mode, outcome, attempts, age)
//! → next step. No I/O, no clock, no randomness of its own (the jitter draw
//! is an input), so every branch is unit-tested exhaustively.

use std::time::Duration;

use crate::config::{FailureMode, RetryPolicy};

/// What an attempt's outcome amounts to for the policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    Delivered,
    Transient,
    Permanent,
}

/// Everything the decision depends on.
#[derive(Clone, Debug)]
pub struct Facts<'a> {
    pub mode: FailureMode,
    pub class: Class,
    /// Attempts made, this one included.
    pub attempts: u32,
    /// Time since the message was accepted.
    pub age: Duration,
    pub retry: &'a RetryPolicy,
    /// Transient failures in a row at this destination, this one included.
    pub consecutive_transient: u32,
    /// The downstream's `Retry-After`, if any.
    pub retry_after: Option<Duration>,
    /// A uniform draw in [0, 1) for full jitter.
    pub jitter_draw: f64,
}

/// What happens to the message.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    Ack,
    Retry {
        delay: Duration,
    },
    DeadLetter {
        reason: &'static str,
    },
    Drop {
        reason: &'static str,
    },
    /// Halt the destination; the message stays at the head.
    Halt {
        reason: &'static str,
    },
}

/// What happens to the destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StateChange {
    None,
    /// Buffer mode: stop regular deliveries and probe.
    Degrade,
    /// A success: leave `degraded` if we were in it.
    Recover,
}

/// Consecutive transient failures that turn a buffer destination degraded.
pub const DEGRADE_AFTER: u32 = 3;

/// The back-off before attempt `attempts + 1`:
/// `min(max_backoff, initial * multiplier^(attempts-1))`, drawn uniformly in
/// [0, that] with jitter, and never below the downstream's `Retry-After`.
pub fn backoff(retry: &RetryPolicy, attempts: u32, jitter_draw: f64, retry_after: Option<Duration>) -> Duration {
    let exp = attempts.saturating_sub(1).min(1000) as i32;
    let ceiling = retry.initial_backoff.as_secs_f64() * retry.multiplier.powi(exp);
    let ceiling = ceiling.min(retry.max_backoff.as_secs_f64());
    let secs = if retry.jitter {
        ceiling * jitter_draw.clamp(0.0, 1.0)
    } else {
        ceiling
    };
    let d = Duration::from_secs_f64(secs.max(0.0));
    d.max(retry_after.unwrap_or(Duration::ZERO))
}

pub fn decide(f: &Facts<'_>) -> (Step, StateChange) {
    use Class::*;
    use FailureMode::*;
    if f.class == Delivered {
        return (Step::Ack, StateChange::Recover);
    }
    let exhausted = f.attempts >= f.retry.max_attempts || f.age >= f.retry.max_age;
    let exhausted_reason = if f.attempts >= f.retry.max_attempts {
        "max_attempts"
    } else {
        "max_age"
    };
    let delay = || backoff(f.retry, f.attempts, f.jitter_draw, f.retry_after);
    // A refusal that says when to come back (429 or 503 with Retry-After)
    // is the downstream pacing tidegate, not failing the message: the
    // message goes back in line at that time, not on its exponential
    // schedule (which would hold it long after the downstream is ready:
    // the adaptive rate paces the destination as a whole), it does not
    // count toward `degraded`, and it does not use up `max_attempts`
    // (`max_age` still bounds it). SPEC §4's "at least its value" holds.
    if let (Retry | Buffer | Halt, Transient, Some(told)) = (f.mode, f.class, f.retry_after) {
        if f.age < f.retry.max_age {
            return (Step::Retry { delay: told }, StateChange::None);
        }
    }
    match (f.mode, f.class) {
        (_, Delivered) => unreachable!("handled above"),
        (Retry, Permanent) | (Buffer, Permanent) => (
            Step::DeadLetter {
                reason: "permanent_failure",
            },
            StateChange::None,
        ),
        (Retry, Transient) if exhausted => (
            Step::DeadLetter {
                reason: exhausted_reason,
            },
            StateChange::None,
        ),
        (Retry, Transient) => (Step::Retry { delay: delay() }, StateChange::None),
        (Buffer, Transient) => {
            let change = if f.consecutive_transient >= DEGRADE_AFTER {
                StateChange::Degrade
            } else {
                StateChange::None
            };
            (Step::Retry { delay: delay() }, change)
        }
        (Log, Transient) => (
            Step::Drop {
                reason: "transient_failure",
            },
            StateChange::None,
        ),
        (Log, Permanent) => (
            Step::Drop {
                reason: "permanent_failure",
            },
            StateChange::None,
        ),
        (Halt, Permanent) => (
            Step::Halt {
                reason: "permanent_failure",
            },
            StateChange::None,
        ),
        (Halt, Transient) if exhausted => (
            Step::Halt {
                reason: exhausted_reason,
            },
            StateChange::None,
        ),
        (Halt, Transient) => (Step::Retry { delay: delay() }, StateChange::None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 4,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            multiplier: 2.0,
            jitter: false,
            max_age: Duration::from_secs(60),
        }
    }

    fn facts(mode: FailureMode, class: Class, attempts: u32, retry: &RetryPolicy) -> Facts<'_> {
        Facts {
            mode,
            class,
            attempts,
            age: Duration::from_secs(1),
            retry,
            consecutive_transient: 1,
            retry_after: None,
            jitter_draw: 0.5,
        }
    }

    #[test]
    fn every_mode_and_outcome_maps_as_the_spec_table_says() {
        use Class::*;
        use FailureMode::*;
        let p = policy();
        let cases: &[(FailureMode, Class, u32, Step)] = &[
            (Retry, Delivered, 1, Step::Ack),
            (
                Retry,
                Transient,
                1,
                Step::Retry {
                    delay: Duration::from_millis(100),
                },
            ),
            (Retry, Transient, 4, Step::DeadLetter { reason: "max_attempts" }),
            (
                Retry,
                Permanent,
                1,
                Step::DeadLetter {
                    reason: "permanent_failure",
                },
            ),
            (Buffer, Delivered, 9, Step::Ack),
            (
                Buffer,
                Transient,
                99,
                Step::Retry {
                    delay: Duration::from_secs(2),
                },
            ),
            (
                Buffer,
                Permanent,
                1,
                Step::DeadLetter {
                    reason: "permanent_failure",
                },
            ),
            (Log, Delivered, 1, Step::Ack),
            (
                Log,
                Transient,
                1,
                Step::Drop {
                    reason: "transient_failure",
                },
            ),
            (
                Log,
                Permanent,
                1,
                Step::Drop {
                    reason: "permanent_failure",
                },
            ),
            (Halt, Delivered, 1, Step::Ack),
            (
                Halt,
                Transient,
                2,
                Step::Retry {
                    delay: Duration::from_millis(200),
                },
            ),
            (Halt, Transient, 4, Step::Halt { reason: "max_attempts" }),
            (
                Halt,
                Permanent,
                1,
                Step::Halt {
                    reason: "permanent_failure",
                },
            ),
        ];
        for (mode, class, attempts, want) in cases {
            let (got, _) = decide(&facts(*mode, *class, *attempts, &p));
            assert_eq!(&got, want, "{mode:?} {class:?} attempts={attempts}");
        }
    }

    #[test]
    fn max_age_ends_retries_even_with_attempts_left() {
        let p = policy();
        let mut f = facts(FailureMode::Retry, Class::Transient, 1, &p);
        f.age = Duration::from_secs(61);
        assert_eq!(decide(&f).0, Step::DeadLetter { reason: "max_age" });
        f.mode = FailureMode::Halt;
        assert_eq!(decide(&f).0, Step::Halt { reason: "max_age" });
        // Buffer never gives up.
        f.mode = FailureMode::Buffer;
        assert!(matches!(decide(&f).0, Step::Retry { .. }));
    }

    #[test]
    fn buffer_degrades_on_the_third_consecutive_transient_failure() {
        let p = policy();
        let mut f = facts(FailureMode::Buffer, Class::Transient, 1, &p);
        for (n, want) in [
            (1, StateChange::None),
            (2, StateChange::None),
            (3, StateChange::Degrade),
        ] {
            f.consecutive_transient = n;
            assert_eq!(decide(&f).1, want);
        }
        f.class = Class::Delivered;
        assert_eq!(decide(&f).1, StateChange::Recover);
    }

    #[test]
    fn retry_after_floors_the_delay() {
        let p = policy();
        let mut f = facts(FailureMode::Retry, Class::Transient, 1, &p);
        f.retry_after = Some(Duration::from_secs(7));
        assert_eq!(
            decide(&f).0,
            Step::Retry {
                delay: Duration::from_secs(7)
            }
        );
    }

    /// Told when to come back, a message comes back then: not later on
    /// its exponential schedule, not dead-lettered by its attempt count,
    /// and the destination does not degrade; only `max_age` ends it.
    #[test]
    fn a_refusal_that_says_when_is_paced_not_failed() {
        let p = policy();
        for mode in [FailureMode::Retry, FailureMode::Buffer, FailureMode::Halt] {
            let mut f = facts(mode, Class::Transient, 40, &p);
            f.retry_after = Some(Duration::from_millis(300));
            f.consecutive_transient = 10;
            assert_eq!(
                decide(&f),
                (
                    Step::Retry {
                        delay: Duration::from_millis(300)
                    },
                    StateChange::None
                ),
                "{mode:?}"
            );
            f.age = p.max_age;
            if mode != FailureMode::Buffer {
                assert!(
                    !matches!(decide(&f).0, Step::Retry { .. }),
                    "{mode:?}: max_age still ends it"
                );
            }
        }
        let mut f = facts(FailureMode::Log, Class::Transient, 1, &p);
        f.retry_after = Some(Duration::from_secs(1));
        assert!(matches!(decide(&f).0, Step::Drop { .. }), "log mode drops as before");
    }

    proptest! {
        #[test]
        fn backoff_never_exceeds_the_cap_or_undercuts_retry_after(
            attempts in 1u32..200,
            draw in 0.0f64..1.0,
            init_ms in 1u64..10_000,
            max_ms in 1u64..600_000,
            mult in 1.0f64..10.0,
            jitter: bool,
            retry_after_ms in proptest::option::of(0u64..100_000),
        ) {
            let p = RetryPolicy {
                max_attempts: 10,
                initial_backoff: Duration::from_millis(init_ms),
                max_backoff: Duration::from_millis(max_ms),
                multiplier: mult,
                jitter,
                max_age: Duration::from_secs(3600),
            };
            let ra = retry_after_ms.map(Duration::from_millis);
            let d = backoff(&p, attempts, draw, ra);
            let cap = (init_ms as f64 * mult.powi(attempts as i32 - 1)).min(max_ms as f64);
            let floor = ra.unwrap_or_default();
            prop_assert!(d >= floor);
            prop_assert!(d.as_secs_f64() * 1000.0 <= cap.max(floor.as_secs_f64() * 1000.0) + 0.001);
            if !jitter && ra.is_none() {
                prop_assert!((d.as_secs_f64() * 1000.0 - cap).abs() < 0.01);
            }
        }

        #[test]
        fn backoff_grows_monotonically_without_jitter(attempts in 1u32..60) {
            let mut p = policy();
            p.max_backoff = Duration::from_secs(86400);
            prop_assert!(backoff(&p, attempts + 1, 0.0, None) >= backoff(&p, attempts, 0.0, None));
        }
    }
}
