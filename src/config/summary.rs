//! What `tidegate check` prints: the effective values of a valid config on
//! one screen, secrets shown only as `<redacted>`.

use super::{handoff, ByteSize, Config, HumanDuration, LogFormat, OrderingKey, Rate, WhenFull};

impl Config {
    /// The one-screen summary `tidegate check` prints: effective values,
    /// secrets shown only as `<redacted>`.
    pub fn summary(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(s, "config {} is valid", self.source.display());
        let _ = writeln!(
            s,
            "ingress  listen={} max_body={} max_connections={} header_read_timeout={} auth={}",
            self.ingress.listen,
            ByteSize(self.ingress.max_body),
            self.ingress.max_connections,
            HumanDuration(self.ingress.header_read_timeout),
            match (self.ingress.producers.len(), self.ingress.auth_token.is_some()) {
                (0, false) if self.ingress.allow_anonymous => "none (allow_anonymous)",
                (0, false) => "none (loopback)",
                (0, true) => "shared bearer token",
                (_, false) => "producer tokens",
                (_, true) => "producer tokens and a shared one",
            }
        );
        for p in &self.ingress.producers {
            let _ = writeln!(
                s,
                "  producer {:?} token=<redacted> destinations={}",
                p.name,
                p.destinations.as_ref().map_or("all".to_string(), |d| d.join(","))
            );
        }
        let _ = writeln!(
            s,
            "admin    listen={} auth={}",
            self.admin.listen,
            if self.admin.token.is_some() {
                "bearer token"
            } else {
                "none (loopback)"
            }
        );
        let _ = writeln!(
            s,
            "storage  path={} max_disk={} history_retention={}",
            self.storage.path.display(),
            ByteSize(self.storage.max_disk),
            HumanDuration(self.storage.history_retention)
        );
        let _ = writeln!(
            s,
            "log      format={} level={}   server shutdown_timeout={}",
            if self.log.format == LogFormat::Json {
                "json"
            } else {
                "text"
            },
            self.log.level,
            HumanDuration(self.server.shutdown_timeout)
        );
        for w in &self.warnings {
            let _ = writeln!(s, "warning: {w}");
        }
        for d in &self.destinations {
            let _ = writeln!(
                s,
                "destination {:?} -> {} (owner {})",
                d.name,
                d.redacted_url(),
                d.owner
            );
            if let Some(h) = &d.handoff {
                let _ = writeln!(s, "  handoff {}", handoff::describe(&h.spec));
            }
            if let Some(r) = &d.review {
                let _ = writeln!(
                    s,
                    "  review hold_when={} sample={} sample_by_category={:?} audit_sample={} hold_timeout={} on_hold_timeout={:?}",
                    if r.hold_when.is_some() { "set" } else { "none" },
                    r.sample,
                    r.sample_by_category,
                    r.audit_sample,
                    r.hold_timeout.map_or("none".to_string(), |t| HumanDuration(t).to_string()),
                    r.on_hold_timeout
                );
            }
            if let Some(g) = &d.governance {
                let _ = writeln!(
                    s,
                    "  governance error_threshold={} window={} min_reviews={} on_threshold={:?} downstream_error_threshold={}",
                    g.error_threshold.map_or("none".to_string(), |x| x.to_string()),
                    HumanDuration(g.window),
                    g.min_reviews,
                    g.on_threshold,
                    g.downstream_error_threshold.map_or("none".to_string(), |x| x.to_string())
                );
            }
            let _ = writeln!(
                s,
                "  on_failure={} timeout={} accept_while_halted={} headers=[{}]",
                d.on_failure.as_str(),
                HumanDuration(d.timeout),
                d.accept_while_halted,
                d.headers
                    .iter()
                    .map(|(k, _)| format!("{k}=<redacted>"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            let _ = writeln!(
                s,
                "  rate_limit rate={} burst={} max_in_flight={} adaptive={}",
                Rate {
                    per_second: d.rate_limit.rate
                },
                d.rate_limit.burst,
                d.rate_limit.max_in_flight,
                d.rate_limit.adaptive
            );
            let _ = writeln!(
                s,
                "  retry max_attempts={} initial_backoff={} max_backoff={} multiplier={} jitter={} max_age={}",
                d.retry.max_attempts,
                HumanDuration(d.retry.initial_backoff),
                HumanDuration(d.retry.max_backoff),
                d.retry.multiplier,
                d.retry.jitter,
                HumanDuration(d.retry.max_age)
            );
            let _ = writeln!(
                s,
                "  queue max_messages={} max_bytes={} when_full={} block_timeout={} ordering={}",
                d.queue.max_messages,
                ByteSize(d.queue.max_bytes),
                if d.queue.when_full == WhenFull::Block {
                    "block"
                } else {
                    "reject"
                },
                HumanDuration(d.queue.block_timeout),
                d.queue.ordering.as_str()
            );
            match &d.queue.key {
                Some(OrderingKey::Program(p)) => {
                    let _ = writeln!(s, "  ordering key {p}");
                }
                Some(OrderingKey::Header(h)) => {
                    let _ = writeln!(s, "  ordering key header {h}");
                }
                None => {}
            }
        }
        s
    }
}
