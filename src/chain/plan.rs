//! The capacity plan (SPEC §11): queueing arithmetic on one destination's
//! declared peak volume, its delivery rate and its latency objective. Pure
//! functions of numbers; the model is a fluid queue (arrivals and
//! deliveries at constant rates, first in first out), which is what a
//! pre-deployment check needs: it is exact for steady peaks and errs on
//! the side of caution for bursty ones only through the volume declared.

use serde::Serialize;

/// What the plan needs to know about one destination.
#[derive(Clone, Debug, PartialEq)]
pub struct Inputs {
    /// Declared peak arrivals, messages per second.
    pub volume: Option<f64>,
    /// Delivery rate, messages per second; `None` is unlimited.
    pub rate: Option<f64>,
    /// Latency objective, seconds.
    pub objective: Option<f64>,
    /// Mean message size, bytes (live: the queue's; static: assumed).
    pub mean_size: f64,
    pub max_messages: u64,
    pub max_bytes: u64,
}

impl Inputs {
    /// "its 15m objective", or that there is none.
    pub fn latency_objective_text(&self) -> String {
        match self.objective {
            Some(o) => format!("its {} objective", human(o)),
            None => "(no latency_objective)".to_string(),
        }
    }
}

/// The plan for one destination. Durations in seconds; `None` where a
/// figure does not apply (nothing grows, nothing declared) or never comes.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Plan {
    /// Messages per hour the queue grows by at peak (0 when it keeps up).
    pub growth_per_hour: f64,
    /// From the start of a sustained peak to the first message older than
    /// the objective; `None` when it never happens.
    pub first_breach_after: Option<f64>,
    /// The delivery rate that meets the objective at the declared peak.
    pub rate_needed: Option<f64>,
    /// Backlog after a one-hour outage at peak: at most what the queue
    /// holds (`max_messages`, `max_bytes`).
    pub outage_backlog: Option<f64>,
    /// Of a one-hour outage at peak, the messages refused (429
    /// `queue_full`) once the queue is full.
    pub outage_refused: Option<f64>,
    /// How long that backlog takes to drain once the downstream is back;
    /// `None` when it never does (volume at or above the rate) or when it
    /// cannot be known (no rate: it drains as fast as the downstream
    /// answers, `max_in_flight` at a time).
    pub outage_drain: Option<f64>,
    /// Disk that backlog takes (messages times the mean size).
    pub outage_disk_bytes: Option<f64>,
    /// At peak, when the queue reaches `max_messages` or `max_bytes`
    /// (whichever first); `None` when it does not grow.
    pub full_after: Option<f64>,
    /// During an outage at peak, when the queue is full.
    pub full_during_outage_after: Option<f64>,
    pub verdict: Verdict,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// The rate keeps up with the declared volume (and so the objective).
    Meets,
    /// Volume above the rate with an objective: it will be breached.
    Breaches,
    /// Volume above the rate, no objective: the queue grows until it is
    /// full, and producers are then refused. A failure too: a flow that
    /// will refuse its producers is not ready to go live.
    Grows,
    /// No `expected_volume`: nothing to check.
    Undeclared,
}

impl Verdict {
    /// Whether `tidegate plan` fails for it (exit 1): an objective broken,
    /// or a queue that fills and refuses producers.
    pub fn fails(self) -> bool {
        matches!(self, Verdict::Breaches | Verdict::Grows)
    }
}

const HOUR: f64 = 3600.0;

/// The arithmetic. At volume `v` above rate `r`, a fluid FIFO queue that
/// starts empty delivers by time `T` what arrived by `T·r/v`, so the oldest
/// message waiting is `T·(1 − r/v)` old: the objective `o` is first broken
/// at `T = o·v/(v − r)`. Volume equal to the rate keeps up (the queue does
/// not grow). An outage of an hour leaves `v·3600` messages, drained at
/// `r − v`.
pub fn plan(i: &Inputs) -> Plan {
    // (The queue's capacity in messages: what fills it at one a second.)
    let Some(v) = i.volume.filter(|v| *v > 0.0) else {
        return Plan {
            growth_per_hour: 0.0,
            first_breach_after: None,
            rate_needed: None,
            outage_backlog: None,
            outage_refused: None,
            outage_drain: None,
            outage_disk_bytes: None,
            full_after: None,
            full_during_outage_after: None,
            verdict: Verdict::Undeclared,
        };
    };
    let excess = match i.rate {
        None => 0.0,
        Some(r) => (v - r).max(0.0),
    };
    let first_breach_after = match (i.objective, excess > 0.0) {
        (Some(o), true) => Some(o * v / excess),
        _ => None,
    };
    let until_full = |inflow: f64| -> Option<f64> {
        if inflow <= 0.0 {
            return None;
        }
        let by_count = i.max_messages as f64 / inflow;
        let by_bytes = if i.mean_size > 0.0 {
            i.max_bytes as f64 / (inflow * i.mean_size)
        } else {
            f64::INFINITY
        };
        Some(by_count.min(by_bytes))
    };
    let capacity = until_full(1.0).unwrap_or(f64::INFINITY);
    let arrived = v * HOUR;
    let backlog = arrived.min(capacity);
    let outage_drain = match i.rate {
        None => None,
        Some(r) if r > v => Some(backlog / (r - v)),
        Some(_) => None,
    };
    let verdict = match (excess > 0.0, i.objective.is_some()) {
        (false, _) => Verdict::Meets,
        (true, true) => Verdict::Breaches,
        (true, false) => Verdict::Grows,
    };
    Plan {
        growth_per_hour: excess * HOUR,
        first_breach_after,
        rate_needed: Some(v),
        outage_backlog: Some(backlog),
        outage_refused: Some((arrived - backlog).max(0.0)),
        outage_drain,
        outage_disk_bytes: Some(backlog * i.mean_size),
        full_after: until_full(excess),
        full_during_outage_after: until_full(v),
        verdict,
    }
}

/// A duration for people: "42s", "12m", "3.5h", "2.1d".
pub fn human(secs: f64) -> String {
    if !secs.is_finite() {
        return "never".into();
    }
    if secs < 60.0 {
        format!("{secs:.0}s")
    } else if secs < HOUR {
        format!("{:.0}m", secs / 60.0)
    } else if secs < 48.0 * HOUR {
        format!("{:.1}h", secs / HOUR)
    } else {
        format!("{:.1}d", secs / 86400.0)
    }
}

/// Bytes for people: "512 B", "1.5 MiB".
pub fn bytes(n: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut x = n;
    let mut u = 0;
    while x >= 1024.0 && u < UNITS.len() - 1 {
        x /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{x:.0} {}", UNITS[u])
    } else {
        format!("{x:.1} {}", UNITS[u])
    }
}

/// A rate for people: messages per second, or per hour when slow.
pub fn per(rate: f64) -> String {
    if rate >= 1.0 {
        format!("{rate:.1}/s")
    } else {
        format!("{:.0}/h", rate * HOUR)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs(volume: Option<f64>, rate: Option<f64>, objective: Option<f64>) -> Inputs {
        Inputs {
            volume,
            rate,
            objective,
            mean_size: 1024.0,
            max_messages: 1_000_000,
            max_bytes: 1 << 30,
        }
    }

    fn close(a: Option<f64>, b: f64) -> bool {
        a.is_some_and(|a| (a - b).abs() < 1e-6 * b.abs().max(1.0))
    }

    /// The brief's fulfilment case: the AI sends 500/s, the warehouse takes
    /// 100/s, orders must land within 15 minutes.
    #[test]
    fn five_times_the_rate_breaches_in_under_19_minutes_and_needs_the_volume() {
        let p = plan(&inputs(Some(500.0), Some(100.0), Some(900.0)));
        assert_eq!(p.verdict, Verdict::Breaches);
        // 400 more per second than it delivers: 1.44 million an hour.
        assert_eq!(p.growth_per_hour, 1_440_000.0);
        // The oldest waits T·(1 − 100/500) = 0.8·T: 900 s at T = 1125 s.
        assert!(close(p.first_breach_after, 1125.0), "{p:?}");
        assert!(close(p.rate_needed, 500.0));
        // A million messages at 400/s more than delivered: 2500 s; 1 GiB
        // of 1 KiB messages is 1,048,576 of them, later.
        assert!(close(p.full_after, 2500.0), "{p:?}");
        assert!(close(p.full_during_outage_after, 2000.0));
        // An hour's outage: 1.8 million arrive, the queue holds a million
        // (max_messages) and the rest are refused; never drained at 100/s.
        assert!(close(p.outage_backlog, 1_000_000.0), "{p:?}");
        assert!(close(p.outage_refused, 800_000.0), "{p:?}");
        assert_eq!(p.outage_drain, None);
        assert!(close(p.outage_disk_bytes, 1_000_000.0 * 1024.0));
    }

    #[test]
    fn a_rate_above_the_volume_meets_it_and_drains_an_outage() {
        let p = plan(&inputs(Some(20000.0 / 3600.0), Some(50.0), Some(900.0)));
        assert_eq!(p.verdict, Verdict::Meets);
        assert_eq!(
            (p.growth_per_hour, p.first_breach_after, p.full_after),
            (0.0, None, None)
        );
        // 20,000 queued by the outage, drained at 50 − 5.56 = 44.4/s: 450 s.
        assert!(close(p.outage_backlog, 20000.0));
        assert!(close(p.outage_drain, 20000.0 / (50.0 - 20000.0 / 3600.0)), "{p:?}");
    }

    #[test]
    fn edge_cases_volume_equal_to_rate_unlimited_rate_and_nothing_declared() {
        let equal = plan(&inputs(Some(100.0), Some(100.0), Some(60.0)));
        assert_eq!(equal.verdict, Verdict::Meets, "keeps up, exactly");
        assert_eq!(equal.first_breach_after, None);
        assert_eq!(equal.outage_drain, None, "but an outage's backlog never drains");
        let unlimited = plan(&inputs(Some(1e6), None, Some(1.0)));
        assert_eq!(unlimited.verdict, Verdict::Meets);
        assert_eq!(
            unlimited.outage_drain, None,
            "not known before it runs: max_in_flight bounds it"
        );
        let undeclared = plan(&inputs(None, Some(10.0), Some(60.0)));
        assert_eq!(undeclared.verdict, Verdict::Undeclared);
        assert_eq!(undeclared.rate_needed, None);
        let no_objective = plan(&inputs(Some(20.0), Some(10.0), None));
        assert_eq!(no_objective.verdict, Verdict::Grows);
        assert_eq!(no_objective.first_breach_after, None);
        // Bytes fill first when messages are large.
        let big = Inputs {
            mean_size: 1048576.0,
            ..inputs(Some(20.0), Some(10.0), None)
        };
        assert!(close(plan(&big).full_after, 1024.0 / 10.0));
    }

    #[test]
    fn figures_read_as_people_write_them() {
        assert_eq!(human(1125.0), "19m");
        assert_eq!(human(42.0), "42s");
        assert_eq!(human(5400.0), "1.5h");
        assert_eq!(human(3.0 * 86400.0), "3.0d");
        assert_eq!(human(f64::INFINITY), "never");
        assert_eq!(bytes(1_800_000.0 * 1024.0), "1.7 GiB");
        assert_eq!(per(100.0), "100.0/s");
        assert_eq!(per(20000.0 / 3600.0), "5.6/s");
        assert_eq!(per(0.5), "1800/h");
    }
}
