//! The dependency chain (SPEC §11): producers → tidegate → each
//! destination → the systems it feeds, drawn ([`map`]) and checked
//! ([`plan`]) before going live. A [`Chain`] is built from the config alone
//! and, when a running instance is asked, annotated with its live figures
//! ([`Live`], read from the admin API's JSON by the CLI and from dispatch
//! by the console). No I/O here: building, rendering and the arithmetic are
//! pure functions, tested on their own.

pub mod map;
pub mod plan;
pub mod svg;

use serde::{Deserialize, Serialize};

use crate::config::{Config, Destination};

/// Assumed mean message size for a plan made from the config alone.
pub const ASSUMED_MEAN_SIZE: f64 = 1024.0;

/// The chain of one config.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Chain {
    /// Named producers (`[[ingress.producer]]`); empty: anyone with access.
    pub producers: Vec<String>,
    pub links: Vec<Link>,
}

/// One destination and what it takes and feeds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Link {
    pub destination: String,
    pub owner: String,
    /// The downstream's URL, credentials redacted.
    pub url: String,
    /// What it is sent: `json`, `csv`..., or `as received`.
    pub format: String,
    /// Declared peak, messages per second.
    pub expected_volume: Option<f64>,
    /// Configured delivery rate, messages per second; `None` unlimited.
    pub rate: Option<f64>,
    pub latency_objective_seconds: Option<f64>,
    pub on_failure: String,
    /// Held for review: `hold_when`, `sample` ... in words; empty if none.
    pub review: String,
    /// Destinations its handoff routes may move messages to.
    pub routes_to: Vec<String>,
    pub feeds: Vec<String>,
    pub max_messages: u64,
    pub max_bytes: u64,
    /// Deliveries at once: what bounds an unlimited rate.
    pub max_in_flight: u32,
    /// Messages per downstream request (`[destination.batch]
    /// max_messages`, SPEC §16): the rate counts requests, so capacity is
    /// the rate times this.
    #[serde(default = "one")]
    pub batch_size: u32,
    /// Figures of a running instance, when asked for.
    pub live: Option<Live>,
}

/// What a running instance says of a destination.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Live {
    pub state: String,
    pub depth: u64,
    pub bytes: u64,
    pub oldest_age_seconds: f64,
    pub effective_rate: Option<f64>,
    /// Delivered per second, over the sampling interval.
    pub delivered_rate: Option<f64>,
    /// Reviews that reworked the output over those reviewed, recent window.
    pub override_rate: Option<f64>,
}

impl Live {
    /// The mean size of what is queued, when anything is.
    pub fn mean_size(&self) -> Option<f64> {
        (self.depth > 0).then(|| self.bytes as f64 / self.depth as f64)
    }
}

impl Chain {
    /// The chain as the config declares it. Internal destinations (alerts)
    /// are tidegate's own, not part of the flow.
    pub fn of(config: &Config) -> Chain {
        Chain {
            producers: config.ingress.producers.iter().map(|p| p.name.clone()).collect(),
            links: config
                .destinations
                .iter()
                .filter(|d| !d.name.starts_with('_'))
                .map(link)
                .collect(),
        }
    }

    /// Attaches live figures by destination name.
    pub fn with_live(mut self, mut live: impl FnMut(&str) -> Option<Live>) -> Chain {
        for l in &mut self.links {
            l.live = live(&l.destination);
        }
        self
    }

    /// Each destination's plan: live rate and mean size when known.
    pub fn plans(&self) -> Vec<(&Link, plan::Plan)> {
        self.links.iter().map(|l| (l, plan::plan(&l.plan_inputs()))).collect()
    }
}

fn one() -> u32 {
    1
}

impl Link {
    /// Messages per second the rate allows: requests per second times the
    /// messages each request carries.
    pub fn capacity(&self, requests_per_second: Option<f64>) -> Option<f64> {
        requests_per_second.map(|r| r * f64::from(self.batch_size.max(1)))
    }

    pub fn plan_inputs(&self) -> plan::Inputs {
        let live = self.live.as_ref();
        plan::Inputs {
            volume: self.expected_volume,
            // A live instance's effective rate is what it can deliver now
            // (the adaptive limiter may sit below the configured one).
            rate: self.capacity(live.and_then(|l| l.effective_rate).or(self.rate)),
            objective: self.latency_objective_seconds,
            mean_size: live.and_then(Live::mean_size).unwrap_or(ASSUMED_MEAN_SIZE),
            max_messages: self.max_messages,
            max_bytes: self.max_bytes,
        }
    }
}

fn link(d: &Destination) -> Link {
    let format = match &d.handoff {
        Some(h) if !h.spec.passthrough => h.spec.format.name().to_string(),
        _ => "as received".to_string(),
    };
    let review = match &d.review {
        None => String::new(),
        Some(r) => {
            let mut parts = Vec::new();
            if r.hold_when.is_some() {
                parts.push("hold_when".to_string());
            }
            if r.sample > 0.0 || !r.sample_by_category.is_empty() {
                parts.push(format!("sample {}%", r.sample * 100.0));
            }
            if r.audit_sample > 0.0 {
                parts.push(format!("audit {}%", r.audit_sample * 100.0));
            }
            parts.join(", ")
        }
    };
    let mut routes_to: Vec<String> = d
        .handoff
        .iter()
        .flat_map(|h| h.spec.routes.iter().map(|r| r.to.clone()))
        .collect();
    routes_to.dedup();
    Link {
        destination: d.name.clone(),
        owner: d.owner.clone(),
        url: d.redacted_url(),
        format,
        expected_volume: d.expected_volume,
        rate: d.rate_limit.rate,
        latency_objective_seconds: d.latency_objective.map(|o| o.as_secs_f64()),
        on_failure: d.on_failure.as_str().to_string(),
        review,
        routes_to,
        feeds: d.feeds.clone(),
        max_messages: d.queue.max_messages,
        max_bytes: d.queue.max_bytes,
        max_in_flight: d.rate_limit.max_in_flight,
        batch_size: d.batch.as_ref().map_or(1, |b| b.max_messages as u32),
        live: None,
    }
}
