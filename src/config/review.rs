//! `[destination.review]`, `[destination.governance]`, `[review]` and
//! `[alerts]` (SPEC §10): who looks at a flow's output, how much of it,
//! and what happens when its quality crosses its owner's threshold.
//! Fractions are checked to lie in 0..=1 and the hold predicate compiles,
//! so a mistake is a config error at its file:line:col.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::{handoff, ConfigError, EnvString, HumanDuration, Locator};

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawReview {
    hold_when: Option<Spanned<String>>,
    sample: Option<Spanned<f64>>,
    #[serde(default)]
    sample_by_category: BTreeMap<String, Spanned<f64>>,
    audit_sample: Option<Spanned<f64>>,
    hold_timeout: Option<HumanDuration>,
    on_hold_timeout: Option<OnHoldTimeout>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGovernance {
    error_threshold: Option<Spanned<f64>>,
    window: Option<HumanDuration>,
    min_reviews: Option<Spanned<i64>>,
    on_threshold: Option<OnThreshold>,
    downstream_error_threshold: Option<Spanned<f64>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawReviewStation {
    retention: Option<HumanDuration>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAlerts {
    webhook_url: Option<Spanned<EnvString>>,
}

/// What a held message that nobody decided within `hold_timeout` becomes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnHoldTimeout {
    Deliver,
    Reject,
}

impl OnHoldTimeout {
    /// As the config spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            OnHoldTimeout::Deliver => "deliver",
            OnHoldTimeout::Reject => "reject",
        }
    }
}

/// What crossing a governance threshold does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnThreshold {
    Pause,
    Alert,
}

impl OnThreshold {
    /// As the config spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            OnThreshold::Pause => "pause",
            OnThreshold::Alert => "alert",
        }
    }
}

/// `[destination.review]`. The predicate itself lives in the handoff spec
/// (`Spec::hold_when`): it runs where the other programs run.
#[derive(Clone, Debug, PartialEq)]
pub struct ReviewPolicy {
    pub hold_when: Option<String>,
    /// Fraction of the messages not held by the predicate also held.
    pub sample: f64,
    /// `sample` for these categories instead.
    pub sample_by_category: BTreeMap<String, f64>,
    /// Fraction delivered at once and listed for grading afterwards.
    pub audit_sample: f64,
    pub hold_timeout: Option<Duration>,
    pub on_hold_timeout: OnHoldTimeout,
}

impl ReviewPolicy {
    /// The fraction of messages of `category` sampled for holding.
    pub fn sample_for(&self, category: &str) -> f64 {
        self.sample_by_category.get(category).copied().unwrap_or(self.sample)
    }
}

/// `[destination.governance]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Governance {
    /// Override rate per category above which the flow is stopped.
    pub error_threshold: Option<f64>,
    pub window: Duration,
    /// No verdict on a category with fewer reviews in the window.
    pub min_reviews: u64,
    pub on_threshold: OnThreshold,
    /// Permanent downstream failures per attempt above which it is stopped.
    pub downstream_error_threshold: Option<f64>,
}

/// `[review]`: what the station keeps.
#[derive(Clone, Debug, PartialEq)]
pub struct ReviewStation {
    /// How long decisions, corrections and audit items are kept; separate
    /// from message history, which is usually far shorter.
    pub retention: Duration,
}

impl Default for ReviewStation {
    fn default() -> Self {
        ReviewStation {
            retention: Duration::from_secs(90 * 86400),
        }
    }
}

/// `[alerts]`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Alerts {
    /// Where alerts are posted (Slack-compatible JSON). The URL may carry a
    /// secret (Slack's do), so it is only ever shown redacted.
    pub webhook_url: Option<reqwest::Url>,
}

fn fraction(v: &Option<Spanned<f64>>, what: &str, loc: &Locator) -> Result<Option<f64>, ConfigError> {
    match v {
        None => Ok(None),
        Some(s) => {
            let x = *s.get_ref();
            if !(0.0..=1.0).contains(&x) {
                return Err(loc.error(s.span(), format!("{what} must be between 0 and 1, got {x}")));
            }
            Ok(Some(x))
        }
    }
}

pub(super) fn review(raw: RawReview, loc: &Locator) -> Result<ReviewPolicy, ConfigError> {
    if let Some(p) = &raw.hold_when {
        handoff::inline_program(p, "destination.review.hold_when", loc)?;
    }
    let mut sample_by_category = BTreeMap::new();
    for (category, rate) in &raw.sample_by_category {
        let r = fraction(&Some(rate.clone()), &format!("sample_by_category.{category}"), loc)?.unwrap_or(0.0);
        sample_by_category.insert(category.clone(), r);
    }
    Ok(ReviewPolicy {
        hold_when: raw.hold_when.map(|p| p.into_inner()),
        sample: fraction(&raw.sample, "sample", loc)?.unwrap_or(0.0),
        sample_by_category,
        audit_sample: fraction(&raw.audit_sample, "audit_sample", loc)?.unwrap_or(0.0),
        hold_timeout: raw.hold_timeout.map(|d| d.0),
        on_hold_timeout: raw.on_hold_timeout.unwrap_or(OnHoldTimeout::Deliver),
    })
}

pub(super) fn governance(raw: RawGovernance, loc: &Locator) -> Result<Governance, ConfigError> {
    let min_reviews = match &raw.min_reviews {
        None => 20,
        Some(s) if *s.get_ref() >= 1 => *s.get_ref() as u64,
        Some(s) => return Err(loc.error(s.span(), format!("min_reviews must be at least 1, got {}", s.get_ref()))),
    };
    let window = raw.window.map(|w| w.0).unwrap_or(Duration::from_secs(86400));
    if window.is_zero() {
        return Err(loc.error_at_key(
            0..0,
            "destination.governance.window",
            "window must be longer than 0s".into(),
        ));
    }
    Ok(Governance {
        error_threshold: fraction(&raw.error_threshold, "error_threshold", loc)?,
        window,
        min_reviews,
        on_threshold: raw.on_threshold.unwrap_or(OnThreshold::Pause),
        downstream_error_threshold: fraction(&raw.downstream_error_threshold, "downstream_error_threshold", loc)?,
    })
}

pub(super) fn station(raw: RawReviewStation) -> ReviewStation {
    let mut s = ReviewStation::default();
    if let Some(r) = raw.retention {
        s.retention = r.0;
    }
    s
}

pub(super) fn alerts(raw: RawAlerts, loc: &Locator) -> Result<Alerts, ConfigError> {
    let Some(u) = &raw.webhook_url else {
        return Ok(Alerts::default());
    };
    let text = u.get_ref().0.trim();
    if text.is_empty() {
        // `webhook_url = "${ALERT_WEBHOOK}"` with the variable unset or
        // empty: no webhook, alerts go to the log and metrics only.
        return Ok(Alerts::default());
    }
    let url = reqwest::Url::parse(text)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
        .ok_or_else(|| {
            loc.error(
                u.span(),
                "webhook_url must be an absolute http:// or https:// URL".to_string(),
            )
        })?;
    Ok(Alerts { webhook_url: Some(url) })
}
