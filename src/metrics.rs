//! One `Metrics` struct, registered once and passed down by clone. Counters
//! are bumped where the event happens; gauges that mirror journal state are
//! refreshed at scrape time from the exact in-memory counts, so a scrape is
//! never stale.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    pub received: IntCounterVec,
    pub rejected: IntCounterVec,
    pub delivered: IntCounterVec,
    pub attempts: IntCounterVec,
    /// Attempts the downstream refused for good (governance's error rate).
    pub permanent_failures: IntCounterVec,
    /// Review decisions by destination, category and decision.
    pub review_decisions: IntCounterVec,
    /// Messages held for review, by why.
    pub held: IntCounterVec,
    /// Review items awaiting a decision.
    pub review_pending: IntGaugeVec,
    pub review_oldest_pending: prometheus::GaugeVec,
    /// Alerts raised, by event.
    pub alerts: IntCounterVec,
    /// Each destination's `latency_objective`, where it has one.
    pub latency_objective: prometheus::GaugeVec,
    pub dead_lettered: IntCounterVec,
    /// Handoff failures by the destination whose program failed and stage.
    pub handoff_failures: IntCounterVec,
    /// Messages a handoff route moved from the destination addressed to another.
    pub routed: IntCounterVec,
    pub dropped: IntCounterVec,
    pub journal_fsyncs: IntCounter,
    pub journal_corrupt_records: IntCounter,
    pub queue_depth: IntGaugeVec,
    pub queue_bytes: IntGaugeVec,
    pub dead_letter_depth: IntGaugeVec,
    pub in_flight: IntGaugeVec,
    /// Keys a key-ordered destination in halt mode has stopped.
    pub halted_keys: IntGaugeVec,
    pub dispatching: IntGaugeVec,
    pub oldest_age: prometheus::GaugeVec,
    pub rate_limit: prometheus::GaugeVec,
    pub destination_state: IntGaugeVec,
    pub journal_disk_bytes: IntGauge,
    pub journal_max_disk_bytes: IntGauge,
    pub delivery_duration: HistogramVec,
    pub end_to_end: HistogramVec,
    pub ingest_duration: Histogram,
    /// Items per downstream request of a batching destination (SPEC §16).
    pub batch_size: HistogramVec,
    /// Batches sent, by why they left (`size`, `bytes`, `time`).
    pub batches: IntCounterVec,
    /// Batches split in halves after a permanent answer.
    pub batch_splits: IntCounterVec,
}

fn exp_buckets(start: f64, end: f64, n: usize) -> Vec<f64> {
    let factor = (end / start).powf(1.0 / (n - 1) as f64);
    prometheus::exponential_buckets(start, factor, n).unwrap_or_default()
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new_custom(Some("tidegate".into()), None).expect("valid prefix");
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry.register(Box::new(c.clone())).expect("unique metric");
            c
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry.register(Box::new(g.clone())).expect("unique metric");
            g
        };
        let fgauge = |name: &str, help: &str, labels: &[&str]| {
            let g = prometheus::GaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry.register(Box::new(g.clone())).expect("unique metric");
            g
        };
        let hist = |name: &str, help: &str, labels: &[&str], buckets: Vec<f64>| {
            let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels).expect("valid metric");
            registry.register(Box::new(h.clone())).expect("unique metric");
            h
        };
        let journal_fsyncs =
            IntCounter::new("journal_fsyncs_total", "Journal commits (each one fsync).").expect("valid");
        registry
            .register(Box::new(journal_fsyncs.clone()))
            .expect("unique metric");
        let journal_corrupt_records = IntCounter::new(
            "journal_corrupt_records_total",
            "Journal records found corrupt (checksum or unreadable) and quarantined.",
        )
        .expect("valid");
        registry
            .register(Box::new(journal_corrupt_records.clone()))
            .expect("unique metric");
        let journal_max_disk_bytes =
            IntGauge::new("journal_max_disk_bytes", "storage.max_disk: the journal's size limit.").expect("valid");
        registry
            .register(Box::new(journal_max_disk_bytes.clone()))
            .expect("unique metric");
        let journal_disk_bytes =
            IntGauge::new("journal_disk_bytes", "Bytes the journal files take on disk.").expect("valid");
        registry
            .register(Box::new(journal_disk_bytes.clone()))
            .expect("unique metric");
        let ingest_duration = Histogram::with_opts(
            HistogramOpts::new("ingest_duration_seconds", "From request to durable.")
                .buckets(exp_buckets(0.0001, 1.0, 14)),
        )
        .expect("valid");
        registry
            .register(Box::new(ingest_duration.clone()))
            .expect("unique metric");
        let build_info = IntGaugeVec::new(Opts::new("build_info", "Build information."), &["version"]).expect("valid");
        registry.register(Box::new(build_info.clone())).expect("unique metric");
        build_info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        #[cfg(target_os = "linux")]
        {
            let pc = prometheus::process_collector::ProcessCollector::for_self();
            // The process collector registers unprefixed `process_*` names
            // in the default registry; ours carries the `tidegate_` prefix,
            // so it goes in a registry of its own, gathered alongside.
            let _ = prometheus::default_registry().register(Box::new(pc));
        }
        Metrics {
            received: counter(
                "messages_received_total",
                "Messages accepted and made durable.",
                &["destination", "producer"],
            ),
            rejected: counter(
                "messages_rejected_total",
                "Requests refused (nothing stored).",
                &["destination", "reason"],
            ),
            delivered: counter(
                "messages_delivered_total",
                "Messages delivered (2xx).",
                &["destination"],
            ),
            attempts: counter(
                "delivery_attempts_total",
                "Delivery attempts by outcome.",
                &["destination", "outcome"],
            ),
            permanent_failures: counter(
                "delivery_permanent_failures_total",
                "Attempts the downstream refused for good (4xx other than 408, 425, 429).",
                &["destination"],
            ),
            review_decisions: counter(
                "review_decisions_total",
                "Review decisions and feedback, by decision (approve, edit, reject, correct, overridden, timed_out).",
                &["destination", "category", "decision"],
            ),
            held: counter(
                "messages_held_total",
                "Messages held for review, by why (predicate, route, sample).",
                &["destination", "reason"],
            ),
            review_pending: gauge(
                "review_pending",
                "Review items (held and audit) awaiting a decision.",
                &["destination"],
            ),
            review_oldest_pending: fgauge(
                "review_oldest_pending_seconds",
                "Age of the oldest review item awaiting a decision.",
                &["destination"],
            ),
            latency_objective: fgauge(
                "latency_objective_seconds",
                "The destination's latency objective: its oldest message should be younger.",
                &["destination"],
            ),
            alerts: counter(
                "alerts_total",
                "Alerts raised (quality_threshold, downstream_errors, halted, degraded), whether or not a webhook is set.",
                &["event"],
            ),
            dead_lettered: counter(
                "messages_dead_lettered_total",
                "Messages moved to dead letters.",
                &["destination", "reason"],
            ),
            handoff_failures: counter(
                "handoff_failures_total",
                "Bodies the handoff refused at ingress or failed at delivery, by stage.",
                &["destination", "stage"],
            ),
            routed: counter(
                "messages_routed_total",
                "Messages a handoff route moved to another destination.",
                &["from", "to"],
            ),
            dropped: counter(
                "messages_dropped_total",
                "Messages dropped (on_failure = log).",
                &["destination", "reason"],
            ),
            queue_depth: gauge("queue_depth", "Messages held and not finished.", &["destination"]),
            queue_bytes: gauge("queue_bytes", "Body bytes held and not finished.", &["destination"]),
            dead_letter_depth: gauge("dead_letter_depth", "Dead letters held.", &["destination"]),
            in_flight: gauge("in_flight", "Delivery attempts under way.", &["destination"]),
            halted_keys: gauge(
                "halted_keys",
                "Ordering keys stopped by halt mode, each waiting for an operator's resume.",
                &["destination"],
            ),
            dispatching: gauge(
                "dispatching",
                "1 while this instance dispatches the destination (in cluster mode, while it holds its lease).",
                &["destination"],
            ),
            oldest_age: fgauge(
                "oldest_message_age_seconds",
                "Age of the oldest unfinished message.",
                &["destination"],
            ),
            rate_limit: fgauge(
                "rate_limit_per_second",
                "Delivery rate limit.",
                &["destination", "kind"],
            ),
            destination_state: gauge(
                "destination_state",
                "1 for the destination's current state.",
                &["destination", "state"],
            ),
            delivery_duration: hist(
                "delivery_duration_seconds",
                "One delivery attempt.",
                &["destination"],
                exp_buckets(0.001, 60.0, 16),
            ),
            end_to_end: hist(
                "end_to_end_latency_seconds",
                "From accepted to delivered.",
                &["destination"],
                exp_buckets(0.01, 86400.0, 20),
            ),
            batch_size: hist(
                "batch_size",
                "Items per downstream request of a batching destination.",
                &["destination"],
                vec![1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0],
            ),
            batches: counter(
                "batches_total",
                "Batches sent, by what made them leave: size (max_messages), bytes (max_bytes) or time (max_wait).",
                &["destination", "flush"],
            ),
            batch_splits: counter(
                "batch_splits_total",
                "Batches split in halves after a permanent answer, to find the items at fault.",
                &["destination"],
            ),
            journal_fsyncs,
            journal_corrupt_records,
            journal_disk_bytes,
            journal_max_disk_bytes,
            ingest_duration,
            registry,
        }
    }

    /// Creates a destination's series at zero, so rates and alerts see a
    /// destination from its start rather than from its first event.
    /// (`messages_received_total` is created per sender by ingress.)
    pub fn register_destination(&self, dest: &str) {
        self.delivered.with_label_values(&[dest]);
        self.permanent_failures.with_label_values(&[dest]);
        self.review_pending.with_label_values(&[dest]);
        for outcome in [
            "success",
            "http_3xx",
            "http_4xx",
            "http_429",
            "http_5xx",
            "timeout",
            "connect_error",
        ] {
            self.attempts.with_label_values(&[dest, outcome]);
        }
        for reason in [
            "permanent_failure",
            "max_attempts",
            "max_age",
            "skipped_by_operator",
            "transform_failed",
            "rejected_by_reviewer",
            "hold_timeout",
        ] {
            self.dead_lettered.with_label_values(&[dest, reason]);
        }
        for reason in ["transient_failure", "permanent_failure"] {
            self.dropped.with_label_values(&[dest, reason]);
        }
        for reason in [
            "queue_full",
            "storage_full",
            "destination_halted",
            "payload_too_large",
            "idempotency_key_reused",
            "unsupported_media_type",
            "schema_violation",
            "transform_failed",
        ] {
            self.rejected.with_label_values(&[dest, reason]);
        }
        for stage in ["parse", "schema", "transform", "format"] {
            self.handoff_failures.with_label_values(&[dest, stage]);
        }
        // Gauges are set at scrape time; histograms start empty. Created
        // here so that every series a destination has exists from its start.
        for g in [
            &self.queue_depth,
            &self.queue_bytes,
            &self.dead_letter_depth,
            &self.in_flight,
            &self.halted_keys,
            &self.dispatching,
        ] {
            g.with_label_values(&[dest]);
        }
        self.oldest_age.with_label_values(&[dest]);
        for kind in ["configured", "effective"] {
            self.rate_limit.with_label_values(&[dest, kind]);
        }
        for state in ["running", "paused", "degraded", "halted"] {
            self.destination_state.with_label_values(&[dest, state]);
        }
        for h in [&self.delivery_duration, &self.end_to_end] {
            h.with_label_values(&[dest]);
        }
    }

    /// Drops every series of a destination a reload removed: a series that
    /// stays exported reads as a destination still there, stuck.
    pub fn forget_destination(&self, dest: &str) {
        forget(&self.received, dest);
        forget(&self.rejected, dest);
        forget(&self.delivered, dest);
        forget(&self.attempts, dest);
        forget(&self.dead_lettered, dest);
        forget(&self.handoff_failures, dest);
        forget(&self.routed, dest);
        forget(&self.dropped, dest);
        forget(&self.queue_depth, dest);
        forget(&self.queue_bytes, dest);
        forget(&self.dead_letter_depth, dest);
        forget(&self.in_flight, dest);
        forget(&self.halted_keys, dest);
        forget(&self.dispatching, dest);
        forget(&self.oldest_age, dest);
        forget(&self.rate_limit, dest);
        forget(&self.destination_state, dest);
        forget(&self.delivery_duration, dest);
        forget(&self.end_to_end, dest);
        forget(&self.permanent_failures, dest);
        forget(&self.review_decisions, dest);
        forget(&self.held, dest);
        forget(&self.review_pending, dest);
        forget(&self.review_oldest_pending, dest);
        forget(&self.latency_objective, dest);
        forget(&self.batch_size, dest);
        forget(&self.batches, dest);
        forget(&self.batch_splits, dest);
    }

    /// The Prometheus text exposition of tidegate's metrics and the standard
    /// `process_*` ones.
    pub fn render(&self) -> String {
        let mut families = self.registry.gather();
        families.extend(prometheus::default_registry().gather());
        let mut buf = Vec::new();
        if TextEncoder::new().encode(&families, &mut buf).is_err() {
            return String::new();
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// Removes the series of `vec` whose `destination` label is `dest`,
/// whatever its other labels.
fn forget<T: prometheus::core::MetricVecBuilder>(vec: &prometheus::core::MetricVec<T>, dest: &str) {
    use prometheus::core::Collector;
    for family in vec.collect() {
        for m in family.get_metric() {
            let labels: std::collections::HashMap<&str, &str> =
                m.get_label().iter().map(|l| (l.name(), l.value())).collect();
            if ["destination", "from", "to"]
                .iter()
                .any(|k| labels.get(k) == Some(&dest))
            {
                let _ = vec.remove(&labels);
            }
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// The sum of one destination's series of a counter.
pub fn sum(vec: &IntCounterVec, dest: &str) -> u64 {
    sum_where(vec, dest, |_| true)
}

/// The sum of one destination's series whose labels pass `keep`. One pass
/// over one snapshot: subtracting two separate reads of counters that
/// deliveries keep raising could go below zero.
pub fn sum_where(vec: &IntCounterVec, dest: &str, keep: impl Fn(&[prometheus::proto::LabelPair]) -> bool) -> u64 {
    use prometheus::core::Collector;
    vec.collect()
        .iter()
        .flat_map(|mf| mf.get_metric().iter())
        .filter(|m| {
            let labels = m.get_label();
            labels.iter().any(|l| l.name() == "destination" && l.value() == dest) && keep(labels)
        })
        .map(|m| m.get_counter().value() as u64)
        .sum()
}
