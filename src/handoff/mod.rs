//! Handoff: what turns a producer's body into what its downstream accepts.
//! Per destination (`[destination.handoff]`, SPEC §9): a JSON Schema the
//! body must meet, ordered routes to other destinations, a category, a jq
//! transform and an output format.
//!
//! The layers, outside in:
//! - [`Spec`] is plain data read from the config (sources, not programs):
//!   cheap to clone, serialisable, so it can be handed to a worker process.
//! - [`Table`] is a spec compiled: pure functions from a body to a result,
//!   no I/O, used by the tests and benches directly. [`Table::admit`] is
//!   the ingress pipeline (parse → schema → route → category → transform +
//!   format); [`Table::render`] is what each delivery attempt runs.
//! - Each program is a [`program::Code`]: compiled for jaq, and natively
//!   (`native`) when it is a mapping of paths and literals, which then runs
//!   without the jq engine; jaq's answer stays the contract.
//! - [`Runner`] (in `sandbox`) runs a table in worker processes that are
//!   killed when a program runs too long, and die alone when it recurses too
//!   deep or takes too much memory. Every caller in the server goes through
//!   it: jq has no limits of its own, and this is the one place they are
//!   enforced. Calls whose programs are all native (and so terminate by
//!   construction) it runs in place.
//!
//! Invariants: the stored body is always the producer's original; the same
//! table and body give the same bytes every time; a failure names its stage
//! (parse, schema, transform, format), which is also its metric label.

mod format;
pub mod jq;
mod native;
mod program;

mod sandbox;

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use program::{Code, Input};

pub use format::{CsvLayout, Format};

pub use sandbox::{worker_main, Explanation, RunError, Runner, WORKER_ARG};

/// At most this many schema errors are reported.
pub const MAX_SCHEMA_ERRORS: usize = 20;
/// A rendered body larger than this fails with `transform_failed`.
pub const MAX_OUTPUT: usize = 16 << 20;

/// One destination's handoff, as configured. Paths are already read: the
/// schema is the file's JSON, `transform` the program text.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Spec {
    pub schema: Option<Value>,
    pub transform: Option<String>,
    pub format: Format,
    pub csv: Option<CsvLayout>,
    pub category: Option<String>,
    pub routes: Vec<Route>,
    /// The ordering key (`[destination.queue] key`, SPEC §14): a jq
    /// program on the body.
    #[serde(default)]
    pub key: Option<String>,
    /// The review predicate (`[destination.review] hold_when`, SPEC §10):
    /// a body it holds true for is held for a human decision.
    #[serde(default)]
    pub hold_when: Option<String>,
    /// No `[destination.handoff]` of its own: the body is read only for
    /// the key and the hold predicate, and otherwise forwarded as received.
    #[serde(default)]
    pub passthrough: bool,
}

impl Spec {
    /// A spec that renders nothing: the body is read for its labels (key,
    /// hold predicate) and forwarded as received.
    pub fn passthrough() -> Spec {
        Spec {
            schema: None,
            transform: None,
            format: Format::Json,
            csv: None,
            category: None,
            routes: Vec::new(),
            key: None,
            hold_when: None,
            passthrough: true,
        }
    }

    /// Whether deliveries send what the handoff renders (schema, transform,
    /// format...) rather than the stored bytes: every spec from a
    /// `[destination.handoff]` table, even an empty one (it re-serialises
    /// the JSON).
    fn renders(&self) -> bool {
        !self.passthrough
    }
}

/// The route target that holds a message for a human (SPEC §9, §10)
/// instead of moving it to another destination.
pub const REVIEW: &str = "review";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Route {
    pub when: String,
    pub to: String,
}

/// Every destination's spec, by name: what a worker process compiles.
pub type Specs = Vec<(String, Spec)>;

/// The stage a failure happened at (`handoff_failures_total{stage}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    Parse,
    Schema,
    Transform,
    Format,
    /// The category program gave what cannot be a category (too long, or
    /// not printable: it becomes a metric label and a report column).
    Category,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Parse => "parse",
            Stage::Schema => "schema",
            Stage::Transform => "transform",
            Stage::Format => "format",
            Stage::Category => "category",
        }
    }
}

/// An operator's jq program run in place on tidegate's own data: a batch's
/// `envelope` (on the array of items) and `results` (on the downstream's
/// answer), SPEC §16. Natively when it is a mapping, in jaq otherwise; the
/// caller bounds its time (it runs off the async workers, with a deadline),
/// since jaq bounds nothing.
pub struct Program {
    source: String,
    code: Code,
}

impl Program {
    pub fn compile(source: &str) -> Result<Program, jq::CompileError> {
        Ok(Program {
            source: source.to_string(),
            code: Code::compile(source)?,
        })
    }

    /// The program's text, as configured.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Its first output (`Ok(None)`: none), or jq's error.
    pub fn first(&self, input: &Value) -> Result<Option<Value>, String> {
        self.code.output(&Input::new(input))
    }
}

impl std::fmt::Debug for Program {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.source)
    }
}

/// Whether a `Content-Type` says JSON: what a handoff reads (ingress answers
/// 415 otherwise, and preview says so).
pub fn is_json(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// One JSON Schema violation, as the 422 lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Violation {
    pub instance_path: String,
    pub schema_path: String,
    pub message: String,
}

/// Why a body cannot be handed off.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    pub stage: Stage,
    /// Which destination's program failed (the route target's, once routed).
    pub destination: String,
    pub message: String,
    /// Schema violations, at most [`MAX_SCHEMA_ERRORS`].
    #[serde(default)]
    pub violations: Vec<Violation>,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.stage.as_str(), self.message)
    }
}

/// The bytes a delivery sends.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rendered {
    pub content_type: String,
    pub body: Vec<u8>,
}

/// A body admitted at ingress: where it goes and what it is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Admitted {
    /// The destination that owns the message (the route's target, or the
    /// one addressed).
    pub destination: String,
    /// Set when a route moved it: the destination addressed, and the rule's
    /// index among its routes.
    pub routed_from: Option<(String, usize)>,
    pub category: String,
    /// The owner's ordering key, when it takes one from the body; `None`
    /// also when its program yields nothing or `null` (ingress refuses
    /// such a message for a key-ordered destination).
    #[serde(default)]
    pub key: Option<String>,
    /// What the first delivery attempt would send; `None` when the owner
    /// has no handoff (bytes forwarded as received).
    pub rendered: Option<Rendered>,
    /// Why it is held for a human decision, when it is.
    #[serde(default)]
    pub hold: Option<Hold>,
}

/// Why a message is held for review (`messages_held_total{reason}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Hold {
    /// The owner's `hold_when` held true.
    Predicate,
    /// A route with `to = "review"` matched.
    Route,
    /// Deterministic sampling picked it (`sample`, `sample_by_category`).
    Sample,
}

impl Hold {
    pub fn as_str(self) -> &'static str {
        match self {
            Hold::Predicate => "predicate",
            Hold::Route => "route",
            Hold::Sample => "sample",
        }
    }
}

impl Admitted {
    /// A body for `dest`, which has no handoff: stored and sent as received.
    pub fn as_received(dest: &str, routed_from: Option<(String, usize)>) -> Admitted {
        Admitted {
            destination: dest.to_string(),
            routed_from,
            category: UNCATEGORISED.to_string(),
            key: None,
            rendered: None,
            hold: None,
        }
    }
}

/// The category of a message whose destination has none configured, or
/// whose category program yields nothing.
pub const UNCATEGORISED: &str = "uncategorised";

struct Compiled {
    spec: Spec,
    schema: Option<jsonschema::Validator>,
    transform: Option<Code>,
    category: Option<Code>,
    key: Option<Code>,
    hold_when: Option<Code>,
    routes: Vec<(Code, String)>,
    /// The top-level keys an admission to this destination reads, when
    /// that is all it needs of an object body (no schema, and every
    /// program, its own and its routes' targets', reads only those keys):
    /// ingress then parses only their values and skips the rest.
    admission_reads: Option<Vec<String>>,
}

impl Compiled {
    /// The top-level keys this destination's own part of an admission
    /// reads (see `admission_reads`).
    fn own_reads(&self) -> Option<Vec<String>> {
        if self.schema.is_some() || (self.transform.is_none() && self.spec.renders()) {
            return None;
        }
        let mut keys = Vec::new();
        for (_, code) in self.programs() {
            add_keys(&mut keys, code.top_keys()?);
        }
        Some(keys)
    }

    /// Each program with the key it is configured under.
    fn programs(&self) -> impl Iterator<Item = (String, &Code)> {
        let named = [
            ("transform", &self.transform),
            ("category", &self.category),
            ("key", &self.key),
            ("hold_when", &self.hold_when),
        ];
        named
            .into_iter()
            .filter_map(|(k, c)| c.as_ref().map(|c| (k.to_string(), c)))
            .chain(
                self.routes
                    .iter()
                    .enumerate()
                    .map(|(i, (c, _))| (format!("route[{i}].when"), c)),
            )
    }
}

/// `more` added to `keys`, each key once.
fn add_keys(keys: &mut Vec<String>, more: Vec<String>) {
    for k in more {
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
}

/// Every destination's handoff, compiled.
pub struct Table {
    by_name: HashMap<String, Compiled>,
}

/// Where a spec does not compile: the key (`transform`, `category`,
/// `route[2].when`, `schema`), and the compiler's error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecError {
    pub destination: String,
    pub key: String,
    pub error: jq::CompileError,
}

impl Table {
    pub fn compile(specs: &Specs) -> Result<Table, SpecError> {
        let mut by_name = HashMap::new();
        for (name, spec) in specs {
            let fail = |key: String, error: jq::CompileError| SpecError {
                destination: name.clone(),
                key,
                error,
            };
            let program = |key: &str, code: &Option<String>| {
                code.as_deref()
                    .map(Code::compile)
                    .transpose()
                    .map_err(|e| fail(key.to_string(), e))
            };
            let schema = match &spec.schema {
                None => None,
                Some(s) => Some(jsonschema::validator_for(s).map_err(|e| {
                    fail(
                        "schema".into(),
                        jq::CompileError {
                            offset: 0,
                            message: e.to_string(),
                        },
                    )
                })?),
            };
            let mut routes = Vec::new();
            for (i, r) in spec.routes.iter().enumerate() {
                let p = Code::compile(&r.when).map_err(|e| fail(format!("route[{i}].when"), e))?;
                routes.push((p, r.to.clone()));
            }
            by_name.insert(
                name.clone(),
                Compiled {
                    schema,
                    transform: program("transform", &spec.transform)?,
                    category: program("category", &spec.category)?,
                    key: program("key", &spec.key)?,
                    hold_when: program("hold_when", &spec.hold_when)?,
                    routes,
                    spec: spec.clone(),
                    admission_reads: None,
                },
            );
        }
        let reads: Vec<(String, Option<Vec<String>>)> = by_name
            .iter()
            .map(|(name, c)| {
                let mut keys = c.own_reads();
                for (_, to) in &c.routes {
                    let (Some(have), Some(target)) = (keys.as_mut(), by_name.get(to)) else {
                        continue;
                    };
                    match target.own_reads() {
                        Some(more) => add_keys(have, more),
                        None => keys = None,
                    }
                }
                (name.clone(), keys)
            })
            .collect();
        for (name, keys) in reads {
            if let Some(c) = by_name.get_mut(&name) {
                c.admission_reads = keys;
            }
        }
        Ok(Table { by_name })
    }

    /// The ingress pipeline for a body addressed to `dest`: parse, the
    /// addressed destination's schema, its routes (first match wins; a
    /// target's own routes are not followed), then the owner's schema (when
    /// routed), category, transform and format. Destinations without a
    /// handoff pass through untouched (and unparsed).
    pub fn admit(&self, dest: &str, body: &[u8]) -> Result<Admitted, Failure> {
        let Some(addressed) = self.by_name.get(dest) else {
            return Ok(Admitted::as_received(dest, None));
        };
        let value = match &addressed.admission_reads {
            Some(keys) => parse_keys(dest, body, keys)?,
            None => parse(dest, body)?,
        };
        validate(dest, addressed, &value)?;
        let input = Input::new(&value);
        let mut owner = (dest, addressed);
        let mut routed_from = None;
        let mut hold = None;
        for (i, (when, to)) in addressed.routes.iter().enumerate() {
            let hit = when
                .holds(&input)
                .map_err(|e| transform_failure(dest, format!("route {i} (when): {e}")))?;
            if hit {
                if to == REVIEW {
                    // Held where it was addressed, for a human to decide.
                    hold = Some(Hold::Route);
                    break;
                }
                routed_from = Some((dest.to_string(), i));
                owner = match self.by_name.get(to.as_str()) {
                    Some(c) => (to.as_str(), c),
                    // A target without a handoff of its own (nor a key or
                    // a hold predicate): stored as sent.
                    None => return Ok(Admitted::as_received(to, routed_from)),
                };
                break;
            }
        }
        let (name, compiled) = owner;
        if routed_from.is_some() {
            validate(name, compiled, &value)?;
        }
        let category =
            text_of(name, "category", &compiled.category, &input)?.unwrap_or_else(|| UNCATEGORISED.to_string());
        if let Some(why) = crate::text::category_problem(&category) {
            return Err(Failure {
                stage: Stage::Category,
                destination: name.to_string(),
                message: why,
                violations: Vec::new(),
            });
        }
        let key = text_of(name, "key", &compiled.key, &input)?;
        if hold.is_none() {
            if let Some(p) = &compiled.hold_when {
                let hit = p
                    .holds(&input)
                    .map_err(|e| transform_failure(name, format!("hold_when: {e}")))?;
                if hit {
                    hold = Some(Hold::Predicate);
                }
            }
        }
        let rendered = if compiled.spec.renders() {
            Some(render_value(name, compiled, &input, body.len())?)
        } else {
            None
        };
        Ok(Admitted {
            destination: name.to_string(),
            routed_from,
            category,
            key,
            rendered,
            hold,
        })
    }

    /// What a delivery attempt to `dest` sends for a stored body: its
    /// transform and format (no schema, no routes: those were ingress's).
    /// `Ok(None)`: no handoff, forward the body as stored. Programs read
    /// the message's id as `$message_id`.
    pub fn render(&self, dest: &str, body: &[u8], message_id: &str) -> Result<Option<Rendered>, Failure> {
        let Some(compiled) = self.by_name.get(dest).filter(|c| c.spec.renders()) else {
            return Ok(None);
        };
        let value = parse(dest, body)?;
        render_value(dest, compiled, &Input::of_message(&value, message_id), body.len()).map(Some)
    }
}

impl Table {
    /// Whether a body addressed to `dest` is admitted without the sandbox:
    /// every program its admission may run (its own, and those of the
    /// destinations its routes lead to) is native, so it terminates by
    /// construction. A destination without a handoff runs nothing.
    pub fn admits_natively(&self, dest: &str) -> bool {
        self.why_admitted_in_sandbox(dest).is_none()
    }

    /// The first program that keeps `dest`'s admissions in the sandbox, as
    /// `key` or `key of target` (a route's target).
    pub fn why_admitted_in_sandbox(&self, dest: &str) -> Option<String> {
        let c = self.by_name.get(dest)?;
        if let Some((key, _)) = c.programs().find(|(_, p)| !p.is_native()) {
            return Some(key);
        }
        c.routes.iter().find_map(|(_, to)| {
            let target = self.by_name.get(to.as_str())?;
            let (key, _) = target.programs().find(|(_, p)| !p.is_native())?;
            Some(format!("{key} of {to}, where a route leads"))
        })
    }

    /// Whether a delivery's (or a correction's) rendering for `dest` runs
    /// without the sandbox: its transform, if any, is native.
    pub fn renders_natively(&self, dest: &str) -> bool {
        self.by_name
            .get(dest)
            .and_then(|c| c.transform.as_ref())
            .is_none_or(Code::is_native)
    }

    /// Each of `dest`'s programs (by its config key) and, when it runs in
    /// the sandbox, why (`tidegate handoff test --explain`).
    pub fn explain(&self, dest: &str) -> Vec<(String, Option<String>)> {
        self.by_name.get(dest).map_or_else(Vec::new, |c| {
            c.programs()
                .map(|(key, p)| (key, p.why_not_native().map(str::to_string)))
                .collect()
        })
    }
}

impl Table {
    /// A corrected body for `dest` (a reviewer's edit): parsed, checked
    /// against `dest`'s own schema, and rendered as a delivery would. No
    /// routes and no hold: the message already belongs to `dest`.
    pub fn check(&self, dest: &str, body: &[u8]) -> Result<Option<Rendered>, Failure> {
        let value = parse(dest, body)?;
        let Some(compiled) = self.by_name.get(dest) else {
            return Ok(None);
        };
        validate(dest, compiled, &value)?;
        if !compiled.spec.renders() {
            return Ok(None);
        }
        render_value(dest, compiled, &Input::new(&value), body.len()).map(Some)
    }
}

/// What a labelling program (category, key) makes of a body, as text: a
/// string as it is, any other value as its JSON; `None` when it yields
/// nothing or `null`.
fn text_of(dest: &str, what: &str, program: &Option<Code>, input: &Input<'_>) -> Result<Option<String>, Failure> {
    let Some(p) = program else { return Ok(None) };
    match p.output(input) {
        Err(e) => Err(transform_failure(dest, format!("{what}: {e}"))),
        Ok(None) | Ok(Some(Value::Null)) => Ok(None),
        Ok(Some(Value::String(s))) => Ok(Some(s)),
        Ok(Some(other)) => Ok(Some(other.to_string())),
    }
}

fn parse(dest: &str, body: &[u8]) -> Result<Value, Failure> {
    let fail = |message: String| Failure {
        stage: Stage::Parse,
        destination: dest.to_string(),
        message,
        violations: Vec::new(),
    };
    // serde_json checks each string it reads as UTF-8, and the rest of a
    // document is ASCII: a body it takes is UTF-8. What is wrong with one
    // it refuses is worked out only then.
    serde_json::from_slice(body).map_err(|e| {
        fail(if body.iter().all(u8::is_ascii_whitespace) {
            "the body is empty; a JSON document is expected".to_string()
        } else if let Err(u) = std::str::from_utf8(body) {
            format!("the body is not valid UTF-8 (at byte {})", u.valid_up_to())
        } else {
            format!("the body is not valid JSON: {e}")
        })
    })
}

/// [`parse`], keeping of an object body only the values of `keys` (the
/// others are checked as JSON and skipped, never built). Any other body,
/// and any error, goes through [`parse`], whose words are the contract.
fn parse_keys(dest: &str, body: &[u8], keys: &[String]) -> Result<Value, Failure> {
    let mut de = serde_json::Deserializer::from_slice(body);
    match serde::de::DeserializeSeed::deserialize(pruned::Object(keys), &mut de).and_then(|v| de.end().map(|()| v)) {
        // UTF-8 throughout: every string was read, skipped ones too.
        Ok(v) => Ok(v),
        Err(_) => parse(dest, body),
    }
}

mod pruned {
    //! An object body with only some keys' values built.
    use std::borrow::Cow;
    use std::fmt;

    use serde::de::{DeserializeSeed, Deserializer, Error, MapAccess, SeqAccess, Visitor};
    use serde_json::Value;

    /// Deserialises an object keeping the values of these keys only, as
    /// `Value`'s own deserialisation keeps them (a repeated key keeps its
    /// first place and its last value). Anything but an object is an error.
    pub struct Object<'k>(pub &'k [String]);

    impl<'de> DeserializeSeed<'de> for Object<'_> {
        type Value = Value;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
            d.deserialize_any(self)
        }
    }

    impl<'de> Visitor<'de> for Object<'_> {
        type Value = Value;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
            let mut out = serde_json::Map::new();
            while let Some(key) = map.next_key_seed(Key)? {
                if self.0.iter().any(|k| *k == *key) {
                    out.insert(key.into_owned(), map.next_value()?);
                } else {
                    map.next_value_seed(Skip)?;
                }
            }
            Ok(Value::Object(out))
        }
    }

    /// A value checked and dropped as it is read. Not serde's `IgnoredAny`:
    /// serde_json skips that without its nesting limit, and a body nested
    /// past it must fail here as it fails a full parse.
    struct Skip;

    impl<'de> DeserializeSeed<'de> for Skip {
        type Value = ();
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_any(self)
        }
    }

    impl<'de> Visitor<'de> for Skip {
        type Value = ();
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("any JSON value")
        }
        fn visit_bool<E: Error>(self, _: bool) -> Result<(), E> {
            Ok(())
        }
        fn visit_i64<E: Error>(self, _: i64) -> Result<(), E> {
            Ok(())
        }
        fn visit_u64<E: Error>(self, _: u64) -> Result<(), E> {
            Ok(())
        }
        fn visit_f64<E: Error>(self, _: f64) -> Result<(), E> {
            Ok(())
        }
        fn visit_str<E: Error>(self, _: &str) -> Result<(), E> {
            Ok(())
        }
        fn visit_unit<E: Error>(self) -> Result<(), E> {
            Ok(())
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            while seq.next_element_seed(Skip)?.is_some() {}
            Ok(())
        }
        // Objects, and numbers too (`arbitrary_precision` hands a number
        // over as a one-entry map of its text).
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            while map.next_key_seed(Skip)?.is_some() {
                map.next_value_seed(Skip)?;
            }
            Ok(())
        }
    }

    /// A key, borrowed from the body when it has no escapes.
    struct Key;

    impl<'de> DeserializeSeed<'de> for Key {
        type Value = Cow<'de, str>;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_str(self)
        }
    }

    impl<'de> Visitor<'de> for Key {
        type Value = Cow<'de, str>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a key")
        }
        fn visit_borrowed_str<E: Error>(self, v: &'de str) -> Result<Self::Value, E> {
            Ok(Cow::Borrowed(v))
        }
        fn visit_str<E: Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(Cow::Owned(v.to_string()))
        }
    }
}

fn validate(dest: &str, c: &Compiled, value: &Value) -> Result<(), Failure> {
    let Some(schema) = &c.schema else { return Ok(()) };
    // The common answer, without collecting errors.
    if schema.is_valid(value) {
        return Ok(());
    }
    let mut errors = schema.iter_errors(value).peekable();
    if errors.peek().is_none() {
        return Ok(());
    }
    let mut violations = Vec::new();
    let mut total = 0usize;
    for e in errors {
        total += 1;
        if violations.len() < MAX_SCHEMA_ERRORS {
            violations.push(Violation {
                instance_path: e.instance_path().to_string(),
                schema_path: e.schema_path().to_string(),
                message: e.to_string(),
            });
        }
    }
    let first = &violations[0];
    let at = if first.instance_path.is_empty() {
        "the document".to_string()
    } else {
        first.instance_path.clone()
    };
    Err(Failure {
        stage: Stage::Schema,
        destination: dest.to_string(),
        message: format!(
            "{total} schema violation{}; first at {at}: {}",
            if total == 1 { "" } else { "s" },
            first.message
        ),
        violations,
    })
}

fn transform_failure(dest: &str, message: String) -> Failure {
    Failure {
        stage: Stage::Transform,
        destination: dest.to_string(),
        message,
        violations: Vec::new(),
    }
}

/// `size_hint`: the body's length, about what a mapping of it writes.
fn render_value(dest: &str, c: &Compiled, input: &Input<'_>, size_hint: usize) -> Result<Rendered, Failure> {
    let no_output = || transform_failure(dest, "the transform produced no output".to_string());
    let body = match (&c.transform, c.spec.format) {
        // JSON out: written as the program makes it, with no value between.
        (Some(p), Format::Json) => {
            let mut body = Vec::with_capacity(size_hint.min(MAX_OUTPUT));
            if !p.write_json(input, &mut body).map_err(|e| transform_failure(dest, e))? {
                return Err(no_output());
            }
            body
        }
        (transform, format) => {
            let transformed;
            let out = match transform {
                None => input.value(),
                Some(p) => {
                    transformed = p
                        .output(input)
                        .map_err(|e| transform_failure(dest, e))?
                        .ok_or_else(no_output)?;
                    &transformed
                }
            };
            format::write(out, format, c.spec.csv.as_ref()).map_err(|message| Failure {
                stage: Stage::Format,
                destination: dest.to_string(),
                message,
                violations: Vec::new(),
            })?
        }
    };
    if body.len() > MAX_OUTPUT {
        return Err(transform_failure(
            dest,
            format!("the output is {} bytes, over the {} byte limit", body.len(), MAX_OUTPUT),
        ));
    }
    Ok(Rendered {
        content_type: c.spec.format.content_type().to_string(),
        body,
    })
}

#[cfg(test)]
mod tests;
