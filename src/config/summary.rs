//! What `tidegate check` prints: the effective value of every key of a
//! valid config on one screen, spelled as the config spells it, secrets
//! shown only as `<redacted>` (URL user-info and query values included).

use std::fmt::Write;

use super::{
    handoff, Backend, ByteSize, Config, Connections, Destination, HumanDuration, LogFormat, OrderingKey, Rate, WhenFull,
};

impl Config {
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "config {} is valid", self.source.display());
        let i = &self.ingress;
        let _ = writeln!(
            s,
            "ingress  listen={} max_body={} {} auth={}",
            i.listen,
            ByteSize(i.max_body),
            connections(&i.connections),
            match (i.producers.len(), i.auth_token.is_some()) {
                (0, false) if i.allow_anonymous => "none (allow_anonymous)",
                (0, false) => "none (loopback)",
                (0, true) => "shared bearer token",
                (_, false) => "producer tokens",
                (_, true) => "producer tokens and a shared one",
            }
        );
        for p in &i.producers {
            let _ = writeln!(
                s,
                "  producer {:?} token=<redacted> destinations={}",
                p.name,
                p.destinations.as_ref().map_or("all".to_string(), |d| d.join(","))
            );
        }
        let a = &self.admin;
        let _ = writeln!(
            s,
            "admin    listen={} {} auth={}{}",
            a.listen,
            connections(&a.connections),
            if a.needs_token() {
                "bearer token"
            } else {
                "none (loopback)"
            },
            a.public_url
                .as_ref()
                .map_or(String::new(), |u| format!(" public_url={}", super::redact_url(u)))
        );
        let _ = writeln!(s, "  audit_retention={}", super::HumanDuration(a.audit_retention));
        for u in &a.users {
            let _ = writeln!(
                s,
                "  user {:?} role={} token=<redacted> destinations={}",
                u.name,
                u.role.as_str(),
                u.destinations.as_ref().map_or("all".to_string(), |d| d.join(","))
            );
        }
        let st = &self.storage;
        let backend = match &st.backend {
            Backend::Sqlite => "sqlite".to_string(),
            Backend::JetStream(js) => format!(
                "jetstream urls={} replicas={} stream_prefix={} auth={}",
                js.urls.join(","),
                js.replicas,
                js.stream_prefix,
                js.auth_summary()
            ),
        };
        let _ = writeln!(
            s,
            "storage  backend={backend} path={} max_disk={} history_retention={}",
            st.path.display(),
            ByteSize(st.max_disk),
            HumanDuration(st.history_retention)
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
        let _ = writeln!(
            s,
            "review   retention={}   alerts webhook_url={}",
            HumanDuration(self.review.retention),
            self.alerts
                .webhook_url
                .as_ref()
                .map_or("none".to_string(), super::redact_url_path)
        );
        for w in &self.warnings {
            let _ = writeln!(s, "warning: {w}");
        }
        for d in &self.destinations {
            destination(&mut s, d);
        }
        s
    }
}

/// A rate as people read it: `5.56/s`.
fn per_second(v: f64) -> String {
    let text = format!("{v:.2}");
    format!("{}/s", text.trim_end_matches('0').trim_end_matches('.'))
}

fn connections(c: &Connections) -> String {
    format!(
        "max_connections={} header_read_timeout={} idle_timeout={} body_timeout={}",
        c.max_connections,
        HumanDuration(c.header_read_timeout),
        HumanDuration(c.idle_timeout),
        HumanDuration(c.body_timeout)
    )
}

fn destination(s: &mut String, d: &Destination) {
    let _ = writeln!(
        s,
        "destination {:?} -> {} (owner {})",
        d.name,
        d.redacted_url(),
        d.owner
    );
    if d.expected_volume.is_some() || d.latency_objective.is_some() || !d.feeds.is_empty() {
        let _ = writeln!(
            s,
            "  chain expected_volume={} latency_objective={} feeds=[{}]",
            d.expected_volume.map_or("none".to_string(), per_second),
            d.latency_objective
                .map_or("none".to_string(), |o| HumanDuration(o).to_string()),
            d.feeds.join(", ")
        );
    }
    if let Some(h) = &d.handoff {
        let _ = writeln!(s, "  handoff {}", handoff::describe(&h.spec));
    }
    if let Some(r) = &d.review {
        let by_category: Vec<String> = r.sample_by_category.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let _ = writeln!(
            s,
            "  review hold_when={} sample={} sample_by_category={{{}}} audit_sample={} hold_timeout={} on_hold_timeout={}",
            if r.hold_when.is_some() { "set" } else { "none" },
            r.sample,
            by_category.join(", "),
            r.audit_sample,
            r.hold_timeout.map_or("none".to_string(), |t| HumanDuration(t).to_string()),
            r.on_hold_timeout.as_str()
        );
    }
    if let Some(g) = &d.governance {
        let _ = writeln!(
            s,
            "  governance error_threshold={} window={} min_reviews={} on_threshold={} downstream_error_threshold={}",
            g.error_threshold.map_or("none".to_string(), |x| x.to_string()),
            HumanDuration(g.window),
            g.min_reviews,
            g.on_threshold.as_str(),
            g.downstream_error_threshold
                .map_or("none".to_string(), |x| x.to_string())
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
    if let Some(b) = &d.batch {
        let _ = writeln!(
            s,
            "  batch max_messages={} max_bytes={} max_wait={} encoding={}{}{}{}",
            b.max_messages,
            ByteSize(b.max_bytes),
            HumanDuration(b.max_wait),
            b.encoding.as_str(),
            b.path.as_deref().map_or(String::new(), |p| format!(" path={p}")),
            if b.envelope.is_some() { " envelope" } else { "" },
            if b.results.is_some() { " results" } else { "" },
        );
    }
}
