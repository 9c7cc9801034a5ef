//! `[[destination]]`: where a flow goes, who owns it, and how it is
//! delivered (rate, retry, failure behaviour, queue limits and ordering),
//! with its handoff, review and governance read in their own modules.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::batch::{batch, Batch, RawBatch};
use super::handoff::{self, RawHandoff};
use super::locate::positive;
use super::review;
use super::{
    redact_url, redact_url_path, ByteSize, ConfigError, EnvString, Governance, Handoff, HumanDuration, Locator, Rate,
    ReviewPolicy, Secret,
};

/// The internal destination alerts are queued on (SPEC §10). Its name
/// cannot be a configured one (names start with a letter or digit), and
/// ingress refuses to take messages for it.
pub const ALERTS: &str = "_alerts";

/// Whether `name` is an internal destination (alerts): producers cannot
/// send to it, and reports and the console's overview leave it out.
pub fn is_internal(name: &str) -> bool {
    name.starts_with('_')
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureMode {
    Retry,
    Buffer,
    Log,
    Halt,
}

impl FailureMode {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureMode::Retry => "retry",
            FailureMode::Buffer => "buffer",
            FailureMode::Log => "log",
            FailureMode::Halt => "halt",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    /// Answer 429 `queue_full` at once.
    Reject,
    /// Hold the request up to `block_timeout` for room.
    Block,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Ordering {
    Unordered,
    Fifo,
    /// Per key: same key in order, one at a time; keys in parallel.
    Key,
}

impl Ordering {
    pub fn as_str(self) -> &'static str {
        match self {
            Ordering::Unordered => "unordered",
            Ordering::Fifo => "fifo",
            Ordering::Key => "key",
        }
    }
}

/// Where a key-ordered destination finds a message's key (SPEC §14).
#[derive(Clone, Debug, PartialEq)]
pub enum OrderingKey {
    /// A jq program on the body; it runs in the handoff sandbox.
    Program(String),
    /// A request header's value.
    Header(http::HeaderName),
}

#[derive(Clone, Debug)]
pub struct Destination {
    pub name: String,
    pub url: reqwest::Url,
    pub owner: String,
    pub on_failure: FailureMode,
    pub timeout: Duration,
    /// Added to every delivery; values are secrets.
    pub headers: Vec<(http::HeaderName, Secret)>,
    pub accept_while_halted: bool,
    pub rate_limit: RateLimit,
    pub retry: RetryPolicy,
    pub queue: QueuePolicy,
    /// Extra certificate authorities trusted for this destination's HTTPS,
    /// on top of the bundled web roots.
    pub ca_file: Option<Arc<TrustedCa>>,
    /// `[destination.handoff]`: schema, routes, transform, format.
    pub handoff: Option<Handoff>,
    /// `[destination.review]`: what is held for a human, sampled, audited.
    pub review: Option<ReviewPolicy>,
    /// `[destination.governance]`: the thresholds that stop a bad flow.
    pub governance: Option<Governance>,
    /// The URL's path and query are a secret (a webhook's): shown redacted.
    pub secret_url: bool,
    /// What producers will send at peak, messages per second (SPEC §11).
    pub expected_volume: Option<f64>,
    /// The oldest message must be delivered within this (SPEC §11).
    pub latency_objective: Option<Duration>,
    /// Systems behind this downstream, named for the chain map.
    pub feeds: Vec<String>,
    /// `[destination.batch]`: many messages per downstream request (SPEC §16).
    pub batch: Option<Batch>,
}

/// A PEM bundle of certificate authorities, read and checked when the config
/// is loaded (so a bad file is a config error, not a delivery failure).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrustedCa {
    pub path: PathBuf,
    pub pem: Arc<[u8]>,
    /// A digest of `pem`: delivery keeps one HTTP client per distinct bundle.
    pub fingerprint: u64,
}

impl TrustedCa {
    fn load(path: PathBuf) -> Result<TrustedCa, String> {
        let pem = std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        match reqwest::Certificate::from_pem_bundle(&pem) {
            Ok(certs) if !certs.is_empty() => {}
            _ => return Err(format!("{} holds no PEM certificate", path.display())),
        }
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        pem.hash(&mut h);
        Ok(TrustedCa {
            path,
            pem: pem.into(),
            fingerprint: h.finish(),
        })
    }
}

impl Destination {
    /// The URL with any userinfo replaced, fit for logs and API answers.
    pub fn redacted_url(&self) -> String {
        if self.secret_url {
            return redact_url_path(&self.url);
        }
        redact_url(&self.url)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct RateLimit {
    /// Messages per second, `None` for no token bucket.
    pub rate: Option<f64>,
    pub burst: u32,
    pub max_in_flight: u32,
    pub adaptive: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    pub multiplier: f64,
    pub jitter: bool,
    pub max_age: Duration,
}

#[derive(Clone, Debug, PartialEq)]
pub struct QueuePolicy {
    pub max_messages: u64,
    pub max_bytes: u64,
    pub when_full: WhenFull,
    pub block_timeout: Duration,
    pub ordering: Ordering,
    /// Set exactly when `ordering` is `Key`.
    pub key: Option<OrderingKey>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDestination {
    pub(super) name: Spanned<String>,
    pub(super) url: Spanned<EnvString>,
    pub(super) owner: Spanned<EnvString>,
    pub(super) on_failure: Option<FailureMode>,
    pub(super) timeout: Option<HumanDuration>,
    #[serde(default)]
    pub(super) headers: BTreeMap<Spanned<String>, EnvString>,
    pub(super) accept_while_halted: Option<bool>,
    #[serde(default)]
    pub(super) rate_limit: RawRateLimit,
    #[serde(default)]
    pub(super) retry: RawRetry,
    #[serde(default)]
    pub(super) queue: RawQueue,
    pub(super) ca_file: Option<Spanned<EnvString>>,
    pub(super) handoff: Option<handoff::RawHandoff>,
    pub(super) review: Option<Spanned<review::RawReview>>,
    pub(super) governance: Option<Spanned<review::RawGovernance>>,
    pub(super) expected_volume: Option<Spanned<Rate>>,
    pub(super) latency_objective: Option<HumanDuration>,
    #[serde(default)]
    pub(super) feeds: Vec<Spanned<String>>,
    pub(super) batch: Option<Spanned<RawBatch>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRateLimit {
    pub(super) rate: Option<Rate>,
    pub(super) burst: Option<Spanned<i64>>,
    pub(super) max_in_flight: Option<Spanned<i64>>,
    pub(super) adaptive: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRetry {
    pub(super) max_attempts: Option<Spanned<i64>>,
    pub(super) initial_backoff: Option<Spanned<HumanDuration>>,
    pub(super) max_backoff: Option<Spanned<HumanDuration>>,
    pub(super) multiplier: Option<Spanned<f64>>,
    pub(super) jitter: Option<bool>,
    pub(super) max_age: Option<HumanDuration>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawQueue {
    pub(super) max_messages: Option<Spanned<i64>>,
    pub(super) max_bytes: Option<ByteSize>,
    pub(super) when_full: Option<WhenFull>,
    pub(super) block_timeout: Option<HumanDuration>,
    pub(super) ordering: Option<Spanned<Ordering>>,
    pub(super) key: Option<Spanned<String>>,
    pub(super) key_header: Option<Spanned<String>>,
}

/// `[destination.queue]`'s key settings: `ordering = "key"` takes exactly
/// one of `key` (a jq program, checked here so that a mistake points at
/// its line and column) and `key_header`; other orderings take neither.
fn ordering_key(q: &RawQueue, loc: &Locator) -> Result<Option<OrderingKey>, ConfigError> {
    let keyed = q.ordering.as_ref().is_some_and(|o| *o.get_ref() == Ordering::Key);
    match (&q.key, &q.key_header) {
        (Some(_), Some(h)) => Err(loc.error(
            h.span(),
            "set key (a jq expression on the body) or key_header, not both".to_string(),
        )),
        (Some(k), None) | (None, Some(k)) if !keyed => Err(loc.error(
            k.span(),
            "key and key_header apply only with ordering = \"key\"".to_string(),
        )),
        (None, None) if keyed => {
            let span = q.ordering.as_ref().map(|o| o.span()).unwrap_or(0..0);
            Err(loc.error(
                span,
                "ordering = \"key\" needs key (a jq expression on the body, e.g. \".contact_id\") \
                 or key_header (e.g. \"X-Ordering-Key\")"
                    .to_string(),
            ))
        }
        (Some(k), None) => {
            handoff::inline_program(k, "destination.queue.key", loc)?;
            Ok(Some(OrderingKey::Program(k.get_ref().clone())))
        }
        (None, Some(h)) => match http::HeaderName::from_bytes(h.get_ref().as_bytes()) {
            Ok(name) => Ok(Some(OrderingKey::Header(name))),
            Err(_) => Err(loc.error(
                h.span(),
                format!("key_header {:?} is not a valid HTTP header name", h.get_ref()),
            )),
        },
        (None, None) => Ok(None),
    }
}

pub(super) fn valid_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b[1..]
            .iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_' || *c == b'-')
}

/// Header names tidegate sets itself or that would break the delivery.
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "x-tidegate-message-id",
    "x-tidegate-attempt",
];

/// Every `[[destination]]`, validated, with their handoffs linked (a
/// route names another destination, so links wait for all of them).
pub(super) fn build_all(raw: Vec<RawDestination>, loc: &Locator) -> Result<Vec<Destination>, ConfigError> {
    let mut destinations: Vec<Destination> = Vec::new();
    let mut handoffs = Vec::new();
    for d in raw {
        let (dest, handoff) = build(d, &destinations, loc)?;
        if let Some((spec, targets)) = handoff {
            handoffs.push((dest.name.clone(), spec, targets));
        }
        destinations.push(dest);
    }
    handoff::link(&mut destinations, handoffs, loc)?;
    Ok(destinations)
}

type Linked = Option<(crate::handoff::Spec, Vec<Spanned<String>>)>;

/// One destination, and its handoff still to be linked.
fn build(d: RawDestination, earlier: &[Destination], loc: &Locator) -> Result<(Destination, Linked), ConfigError> {
    let name = name(&d.name, earlier, loc)?;
    let url_text = &d.url.get_ref().0;
    let url = reqwest::Url::parse(url_text)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
        .ok_or_else(|| {
            loc.error(
                d.url.span(),
                "url must be an absolute http:// or https:// URL".to_string(),
            )
        })?;
    let owner = d.owner.get_ref().0.trim().to_string();
    if owner.is_empty() {
        return Err(loc.error(d.owner.span(), "owner must not be empty".to_string()));
    }
    let headers = headers(d.headers, loc)?;
    let rate_limit = rate_limit(&d.rate_limit, loc)?;
    let retry = retry(&d.retry, loc)?;
    let queue = queue(&d.queue, loc)?;
    let ca_file = match &d.ca_file {
        None => None,
        Some(f) => {
            let path = loc.resolve(&f.get_ref().0);
            Some(Arc::new(
                TrustedCa::load(path).map_err(|reason| loc.error(f.span(), reason))?,
            ))
        }
    };
    let expected_volume = expected_volume(&d.expected_volume, loc)?;
    let feeds = feeds(&d.feeds, loc)?;
    let review = d.review.map(|r| review::review(r.into_inner(), loc)).transpose()?;
    let governance = d
        .governance
        .map(|g| review::governance(g.into_inner(), loc))
        .transpose()?;
    let handoff = programs(d.handoff, &queue, review.as_ref(), loc)?;
    let batch = d
        .batch
        .as_ref()
        .map(|b| {
            batch(
                b,
                handoff.as_ref().map(|(s, _)| s),
                queue.ordering == Ordering::Fifo,
                loc,
            )
        })
        .transpose()?;
    let dest = Destination {
        name,
        url,
        owner,
        on_failure: d.on_failure.unwrap_or(FailureMode::Retry),
        timeout: d.timeout.map(|t| t.0).unwrap_or(Duration::from_secs(10)),
        headers,
        accept_while_halted: d.accept_while_halted.unwrap_or(false),
        rate_limit,
        retry,
        queue,
        ca_file,
        handoff: None,
        review,
        governance,
        secret_url: false,
        expected_volume,
        latency_objective: d.latency_objective.map(|o| o.0).filter(|o| !o.is_zero()),
        feeds,
        batch,
    };
    Ok((dest, handoff))
}

fn name(raw: &Spanned<String>, earlier: &[Destination], loc: &Locator) -> Result<String, ConfigError> {
    let name = raw.get_ref().clone();
    if !valid_name(&name) {
        return Err(loc.error(
            raw.span(),
            format!("destination name {name:?} must match [a-z0-9][a-z0-9_-]{{0,62}}"),
        ));
    }
    if earlier.iter().any(|x| x.name == name) {
        return Err(loc.error(raw.span(), format!("destination {name:?} is defined twice")));
    }
    Ok(name)
}

fn headers(
    raw: BTreeMap<Spanned<String>, EnvString>,
    loc: &Locator,
) -> Result<Vec<(http::HeaderName, Secret)>, ConfigError> {
    let mut headers = Vec::new();
    for (k, v) in raw {
        let hname = http::HeaderName::from_bytes(k.get_ref().as_bytes())
            .map_err(|_| loc.error(k.span(), format!("{:?} is not a valid header name", k.get_ref())))?;
        if RESERVED_HEADERS.contains(&hname.as_str()) {
            return Err(loc.error(
                k.span(),
                format!("header {:?} is set by tidegate and cannot be configured", k.get_ref()),
            ));
        }
        if http::HeaderValue::from_str(&v.0).is_err() {
            // The value is a secret: name the header, never the value.
            return Err(loc.error(
                k.span(),
                format!("the value of header {:?} is not a valid header value", k.get_ref()),
            ));
        }
        headers.push((hname, Secret::new(v.0)));
    }
    Ok(headers)
}

fn rate_limit(rl: &RawRateLimit, loc: &Locator) -> Result<RateLimit, ConfigError> {
    let rate = rl
        .rate
        .unwrap_or(Rate {
            per_second: Some(100.0),
        })
        .per_second;
    Ok(RateLimit {
        rate,
        burst: positive(&rl.burst, 10u32, loc, "burst")?,
        max_in_flight: positive(&rl.max_in_flight, 8u32, loc, "max_in_flight")?,
        adaptive: rl.adaptive.unwrap_or(true),
    })
}

fn retry(r: &RawRetry, loc: &Locator) -> Result<RetryPolicy, ConfigError> {
    let multiplier = match &r.multiplier {
        None => 2.0,
        Some(m) if *m.get_ref() >= 1.0 && m.get_ref().is_finite() => *m.get_ref(),
        Some(m) => return Err(loc.error(m.span(), "multiplier must be a number >= 1.0".to_string())),
    };
    let retry = RetryPolicy {
        max_attempts: positive(&r.max_attempts, 8u32, loc, "max_attempts")?,
        initial_backoff: r
            .initial_backoff
            .as_ref()
            .map(|x| x.get_ref().0)
            .unwrap_or(Duration::from_millis(500)),
        max_backoff: r
            .max_backoff
            .as_ref()
            .map(|x| x.get_ref().0)
            .unwrap_or(Duration::from_secs(60)),
        multiplier,
        jitter: r.jitter.unwrap_or(true),
        max_age: r.max_age.map(|x| x.0).unwrap_or(Duration::from_secs(86400)),
    };
    if retry.max_backoff < retry.initial_backoff {
        // Point at whichever of the two the file sets (the other is its
        // default).
        let span = r
            .max_backoff
            .as_ref()
            .or(r.initial_backoff.as_ref())
            .map(|s| s.span())
            .unwrap_or(0..0);
        return Err(loc.error(
            span,
            format!(
                "max_backoff ({}) is below initial_backoff ({}): every back-off would be max_backoff",
                HumanDuration(retry.max_backoff),
                HumanDuration(retry.initial_backoff)
            ),
        ));
    }
    Ok(retry)
}

fn queue(q: &RawQueue, loc: &Locator) -> Result<QueuePolicy, ConfigError> {
    Ok(QueuePolicy {
        max_messages: positive(&q.max_messages, 1_000_000u64, loc, "max_messages")?,
        max_bytes: q.max_bytes.map(|b| b.0).unwrap_or(1 << 30),
        when_full: q.when_full.unwrap_or(WhenFull::Reject),
        block_timeout: q.block_timeout.map(|x| x.0).unwrap_or(Duration::from_secs(5)),
        ordering: q.ordering.as_ref().map_or(Ordering::Unordered, |o| *o.get_ref()),
        key: ordering_key(q, loc)?,
    })
}

fn expected_volume(raw: &Option<Spanned<Rate>>, loc: &Locator) -> Result<Option<f64>, ConfigError> {
    let Some(v) = raw else { return Ok(None) };
    match v.get_ref().per_second {
        Some(r) => Ok(Some(r)),
        None => Err(loc.error(
            v.span(),
            "expected_volume is what producers send at peak, like \"20000/h\"; \"unlimited\" says nothing".into(),
        )),
    }
}

fn feeds(raw: &[Spanned<String>], loc: &Locator) -> Result<Vec<String>, ConfigError> {
    let mut feeds: Vec<String> = Vec::new();
    for f in raw {
        let f_name = f.get_ref().trim();
        if f_name.is_empty() || f_name.len() > 100 || f_name.chars().any(char::is_control) {
            return Err(loc.error(
                f.span(),
                format!(
                    "feeds names a system: 1 to 100 printable characters, got {:?}",
                    f.get_ref()
                ),
            ));
        }
        if feeds.iter().any(|x| x == f_name) {
            return Err(loc.error(f.span(), format!("{f_name:?} is listed twice in feeds")));
        }
        feeds.push(f_name.to_string());
    }
    Ok(feeds)
}

/// The destination's programs: its handoff's, plus the key program and
/// the hold predicate, which run where the other programs run (in the
/// handoff sandbox, at ingress). Without a handoff of its own the body is
/// read for them and otherwise forwarded as received.
fn programs(
    raw: Option<RawHandoff>,
    queue: &QueuePolicy,
    review: Option<&ReviewPolicy>,
    loc: &Locator,
) -> Result<Linked, ConfigError> {
    let mut handoff = raw.map(|h| handoff::spec(h, loc)).transpose()?;
    let key = match &queue.key {
        Some(OrderingKey::Program(code)) => Some(code.clone()),
        _ => None,
    };
    let hold_when = review.and_then(|r| r.hold_when.clone());
    if key.is_some() || hold_when.is_some() {
        let (spec, _) = handoff.get_or_insert_with(|| (crate::handoff::Spec::passthrough(), Vec::new()));
        spec.key = key;
        spec.hold_when = hold_when;
    }
    Ok(handoff)
}

/// The internal destination alerts are queued on (`[alerts] webhook_url`):
/// buffer mode, so a webhook that is down for hours loses no alert and
/// gets them in order once it is back; probes at most 5 s apart.
pub(super) fn alerts_destination(url: reqwest::Url) -> Destination {
    Destination {
        name: ALERTS.to_string(),
        url,
        owner: "tidegate".to_string(),
        on_failure: FailureMode::Buffer,
        timeout: Duration::from_secs(10),
        headers: Vec::new(),
        accept_while_halted: true,
        rate_limit: RateLimit {
            rate: Some(10.0),
            burst: 10,
            max_in_flight: 2,
            adaptive: true,
        },
        retry: RetryPolicy {
            max_attempts: 1_000_000,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(5),
            multiplier: 2.0,
            jitter: true,
            max_age: Duration::from_secs(7 * 86400),
        },
        queue: QueuePolicy {
            max_messages: 100_000,
            max_bytes: 64 << 20,
            when_full: WhenFull::Reject,
            block_timeout: Duration::from_secs(5),
            ordering: Ordering::Unordered,
            key: None,
        },
        ca_file: None,
        handoff: None,
        review: None,
        governance: None,
        secret_url: true,
        expected_volume: None,
        latency_objective: None,
        feeds: Vec::new(),
        batch: None,
    }
}
