//! Compiled mappings: the jq programs that handoffs mostly are (objects of
//! paths and literals, `path // default`, predicates such as `.confidence <
//! 0.8 and .kind == "nda"`) evaluated directly on the parsed body, with no
//! jq engine and no sandbox.
//!
//! What compiles here: paths (`.`, `.a`, `."a b"`, `.["a"]`, `.[2]`, and
//! chains of them), literals (null, booleans, numbers, strings), strings
//! with interpolation (`"\(.who): \(.text)"`), objects (`{a: f, "b": g,
//! c}`) and arrays (`[f, g]`) of such, `f // g`, comparisons (`==`, `!=`,
//! `<`, `<=`, `>`, `>=`), `and`, `or`, pipes `f | g`, `not`,
//! `ascii_downcase`, `ascii_upcase`, `map(f)`, `select(f)`, `if f then g
//! else h end` (with `elif`), parentheses, and `$message_id` (the one
//! variable: the message's id, SPEC §16).
//! Each of these yields at most one value (`select` none or one, and `map`
//! one array), and none recurses or loops but over the elements of an
//! array it is given, so a program made of them terminates by construction
//! and needs none of the sandbox's time limit. Its memory is bounded too:
//! compiling refuses a program that could copy its input more than
//! [`MAX_COPIES`] times (pipes multiply: `[., .] | [., .]` copies it four
//! times). Anything else (a function, another variable, `..`, `.[]`, `reduce`,
//! `,`) is refused with the reason, and the program runs in jq as before.
//!
//! Invariant: jq's answer is the contract. Where this evaluator is not sure
//! to give exactly what jaq gives (an index into the wrong type, which is an
//! error whose wording is jaq's; a `-0` that jaq prints as `0`; an output
//! nested deeper than [`jq::MAX_DEPTH`]) it answers [`Unsure`] and the
//! caller asks jaq. Literals are evaluated by jaq itself when compiled, and
//! comparisons use jaq's own ordering of values, so neither can drift.
//! `tests/it/…` and this module's tests compare both on random JSON.

use std::borrow::Cow;
use std::cmp::Ordering;

use serde_json::Value;

use super::jq;

/// The most copies of its input a compiled program may make (see
/// [`Node::copies`]): what keeps its output, and so its memory, within a
/// small multiple of the body's size.
pub const MAX_COPIES: u64 = 64;

/// A program in the subset above.
#[derive(Debug, Clone)]
pub struct Expr {
    node: Node,
    /// No object in the program's outer structure names a key twice, so
    /// its output can be written as it is evaluated ([`Expr::write_json_for`]):
    /// jq keeps a repeated key once, at its first place, with its last
    /// value, which only a built map gives.
    writable: bool,
}

#[derive(Debug, Clone)]
enum Node {
    Path(Vec<Step>),
    /// The literal's value as jaq makes it.
    Literal(Value),
    /// `$message_id`: the message's id (SPEC §16), a string.
    MessageId,
    Object(Vec<(String, Node)>),
    Array(Vec<Node>),
    Alt(Box<Node>, Box<Node>),
    Compare(Box<Node>, Op, Box<Node>),
    And(Box<Node>, Box<Node>),
    Or(Box<Node>, Box<Node>),
    /// `f | g`: `g` on `f`'s output.
    Pipe(Box<Node>, Box<Node>),
    /// `not`, `ascii_downcase`, `ascii_upcase` on the input.
    Builtin(Builtin),
    If(Box<Node>, Box<Node>, Box<Node>),
    /// `map(f)`: `f` on each element of an array, its outputs collected.
    Map(Box<Node>),
    /// `select(f)`: the input when `f` holds, else nothing.
    Select(Box<Node>),
    /// A string with interpolations: literal text and values made text as
    /// jq's `tostring` makes them.
    Format(Vec<Part>),
}

#[derive(Debug, Clone)]
enum Part {
    Text(String),
    Value(Node),
}

impl Node {
    /// At most how many copies of its input the node's output holds: a
    /// path, one; a literal or a boolean, none; an object or array, the
    /// sum of its parts; a pipe, the product of its two sides.
    fn copies(&self) -> u64 {
        match self {
            Node::Path(_) | Node::Select(_) => 1,
            Node::Literal(_) | Node::MessageId | Node::Compare(..) | Node::And(..) | Node::Or(..) => 0,
            Node::Builtin(b) => u64::from(*b != Builtin::Not),
            Node::Object(entries) => entries.iter().map(|(_, n)| n.copies()).fold(0, u64::saturating_add),
            Node::Array(items) => items.iter().map(Node::copies).fold(0, u64::saturating_add),
            Node::Format(parts) => parts
                .iter()
                .map(|p| match p {
                    Part::Text(_) => 0,
                    Part::Value(n) => n.copies(),
                })
                .fold(0, u64::saturating_add),
            Node::Alt(l, r) => l.copies().max(r.copies()),
            Node::If(_, t, e) => t.copies().max(e.copies()),
            Node::Map(f) => f.copies(),
            Node::Pipe(f, g) => f.copies().saturating_mul(g.copies()),
        }
    }
}

#[derive(Debug, Clone)]
enum Step {
    Key(String),
    Index(i64),
}

/// The builtins a mapping may pipe into: pure, one output, linear time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Builtin {
    Not,
    AsciiDowncase,
    AsciiUpcase,
}

impl Builtin {
    fn named(name: &str) -> Option<Builtin> {
        Some(match name {
            "not" => Builtin::Not,
            "ascii_downcase" => Builtin::AsciiDowncase,
            "ascii_upcase" => Builtin::AsciiUpcase,
            _ => return None,
        })
    }

    /// jq's `ascii_downcase` and `ascii_upcase` change ASCII letters only,
    /// and fail on anything but a string (in jaq's words: `Unsure`).
    fn apply<'a>(self, v: &Value) -> Result<Cow<'a, Value>, Unsure> {
        Ok(Cow::Owned(match (self, v) {
            (Builtin::Not, v) => Value::Bool(!truthy(v)),
            (Builtin::AsciiDowncase, Value::String(s)) => Value::String(s.to_ascii_lowercase()),
            (Builtin::AsciiUpcase, Value::String(s)) => Value::String(s.to_ascii_uppercase()),
            _ => return Err(Unsure),
        }))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

/// This input is one the evaluator cannot answer for exactly: ask jq.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unsure;

static NULL: Value = Value::Null;

/// `Some(v)`, or return `Ok(None)` from the caller: an empty part makes
/// the whole empty, as in jq.
macro_rules! one {
    ($e:expr) => {
        match $e? {
            Some(v) => v,
            None => return Ok(None),
        }
    };
}

impl Expr {
    /// The program compiled, or why it is not in the subset (a sentence
    /// for `handoff test --explain`). Only for programs jaq compiles: the
    /// grammar here is a subset of jq's, not a judge of it.
    pub fn compile(code: &str) -> Result<Expr, String> {
        let node = grammar::parse(code)?;
        let copies = node.copies();
        if copies > MAX_COPIES {
            return Err(format!(
                "the program may copy its input {copies} times (more than {MAX_COPIES})"
            ));
        }
        let writable = keys_distinct(&node);
        Ok(Expr { node, writable })
    }

    /// The program's one output for `input`, or [`Unsure`] (also when it
    /// has none: what then is jq's to say).
    #[cfg(test)]
    pub fn eval(&self, input: &Value) -> Result<Value, Unsure> {
        self.eval_for(input, "")
    }

    /// [`Expr::eval`] for the message `message_id` (its `$message_id`).
    pub fn eval_for(&self, input: &Value, message_id: &str) -> Result<Value, Unsure> {
        let out = eval(&self.node, input, message_id)?.ok_or(Unsure)?.into_owned();
        check_output(&out, 0)?;
        Ok(out)
    }

    /// jq's truthiness of the program's output (for routes and `hold_when`,
    /// whose output is never rendered, so never checked for depth).
    pub fn holds(&self, input: &Value) -> Result<bool, Unsure> {
        Ok(truthy(&*eval(&self.node, input, "")?.ok_or(Unsure)?))
    }

    /// The top-level keys of an object input the program reads, when its
    /// output (and its errors, in jaq too) are the same on the input cut
    /// down to them; `None` when it may see more. Ingress then parses only
    /// those keys' values.
    pub fn top_keys(&self) -> Option<Vec<String>> {
        let mut keys = Vec::new();
        top_keys(&self.node, &mut keys).then_some(keys)
    }

    /// [`Expr::eval_for`]'s output written as JSON to `out`, the same
    /// bytes `serde_json` writes for it, without building it first: the
    /// objects and arrays the program spells out are written around what
    /// their parts make, so a mapping's fields are written from the input
    /// where they lie instead of being copied into a new map. On
    /// [`Unsure`] nothing was written.
    pub fn write_json_for(&self, input: &Value, message_id: &str, out: &mut Vec<u8>) -> Result<(), Unsure> {
        if !self.writable {
            let v = self.eval_for(input, message_id)?;
            return serde_json::to_writer(out, &v).map_err(|_| Unsure);
        }
        let view = view(&self.node, input, message_id)?.ok_or(Unsure)?;
        view.check(0)?;
        serde_json::to_writer(out, &view).map_err(|_| Unsure)
    }
}

/// Adds to `keys` the input's top-level keys `node` reads, and answers
/// whether those are all it sees of an object input: its output and its
/// errors are then the same on the input cut down to those keys (see
/// [`Expr::top_keys`]). Not so for a node whose output is the input itself
/// or is made from all of it (`.`, `select`, `map`, a builtin on the
/// input), nor for an index into it (an error on an object that jq words
/// with the object itself).
fn top_keys(node: &Node, keys: &mut Vec<String>) -> bool {
    match node {
        Node::Path(steps) => match steps.first() {
            Some(Step::Key(k)) => {
                if !keys.contains(k) {
                    keys.push(k.clone());
                }
                true
            }
            _ => false,
        },
        Node::Literal(_) | Node::MessageId => true,
        Node::Object(entries) => entries.iter().all(|(_, n)| top_keys(n, keys)),
        Node::Array(items) => items.iter().all(|n| top_keys(n, keys)),
        Node::Alt(l, r) | Node::Compare(l, _, r) | Node::And(l, r) | Node::Or(l, r) => {
            top_keys(l, keys) && top_keys(r, keys)
        }
        // `g` sees only what `f` makes of the input.
        Node::Pipe(f, _) => top_keys(f, keys),
        Node::If(c, t, e) => top_keys(c, keys) && top_keys(t, keys) && top_keys(e, keys),
        Node::Format(parts) => parts.iter().all(|p| match p {
            Part::Text(_) => true,
            Part::Value(n) => top_keys(n, keys),
        }),
        Node::Builtin(_) | Node::Map(_) | Node::Select(_) => false,
    }
}

/// Whether the objects a program spells out, outside any pipe, name each
/// key once (see [`Expr::writable`]).
fn keys_distinct(node: &Node) -> bool {
    match node {
        Node::Object(entries) => {
            let mut keys: Vec<&str> = entries.iter().map(|(k, _)| k.as_str()).collect();
            keys.sort_unstable();
            keys.windows(2).all(|w| w[0] != w[1]) && entries.iter().all(|(_, n)| keys_distinct(n))
        }
        Node::Array(items) => items.iter().all(keys_distinct),
        // Built by `eval`, as a map.
        _ => true,
    }
}

/// An output being written: the objects and arrays the program spells out,
/// around the values their parts make (borrowed from the input where they
/// are paths).
enum View<'a> {
    Value(Cow<'a, Value>),
    Object(Vec<(&'a str, View<'a>)>),
    Array(Vec<View<'a>>),
}

/// `eval`, but objects and arrays spelled out in the program are kept as
/// views, not built.
fn view<'a>(node: &'a Node, input: &'a Value, id: &'a str) -> Result<Option<View<'a>>, Unsure> {
    Ok(Some(match node {
        Node::Object(entries) => {
            let mut fields = Vec::with_capacity(entries.len());
            for (k, n) in entries {
                fields.push((k.as_str(), one!(view(n, input, id))));
            }
            View::Object(fields)
        }
        Node::Array(items) => {
            let mut out = Vec::with_capacity(items.len());
            for n in items {
                if let Some(v) = view(n, input, id)? {
                    out.push(v);
                }
            }
            View::Array(out)
        }
        _ => View::Value(one!(eval(node, input, id))),
    }))
}

impl View<'_> {
    /// [`check_output`] on the value this view writes.
    fn check(&self, depth: usize) -> Result<(), Unsure> {
        match self {
            View::Value(v) => check_output(v, depth),
            _ if depth > jq::MAX_DEPTH => Err(Unsure),
            View::Object(fields) => fields.iter().try_for_each(|(_, v)| v.check(depth + 1)),
            View::Array(items) => items.iter().try_for_each(|v| v.check(depth + 1)),
        }
    }
}

/// Written as `serde_json` writes the `Value` it stands for: a map of its
/// fields in order, a sequence of its items.
impl serde::Serialize for View<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        match self {
            View::Value(v) => v.serialize(s),
            View::Object(fields) => {
                let mut m = s.serialize_map(Some(fields.len()))?;
                for (k, v) in fields {
                    m.serialize_entry(k, v)?;
                }
                m.end()
            }
            View::Array(items) => s.collect_seq(items),
        }
    }
}

fn truthy(v: &Value) -> bool {
    !matches!(v, Value::Null | Value::Bool(false))
}

/// What a node made: one value, or none (`select` that did not hold, and
/// whatever was built from it: jq's `empty`).
type Out<'a> = Result<Option<Cow<'a, Value>>, Unsure>;

fn eval<'a>(node: &'a Node, input: &'a Value, id: &'a str) -> Out<'a> {
    Ok(Some(match node {
        Node::Path(steps) => {
            let mut v = input;
            for step in steps {
                v = index(v, step)?;
            }
            Cow::Borrowed(v)
        }
        Node::Literal(v) => Cow::Borrowed(v),
        Node::MessageId => Cow::Owned(Value::String(id.to_string())),
        Node::Object(entries) => {
            let mut m = serde_json::Map::with_capacity(entries.len());
            for (k, n) in entries {
                m.insert(k.clone(), one!(eval(n, input, id)).into_owned());
            }
            Cow::Owned(Value::Object(m))
        }
        // `[f, g]` collects what its parts make: an empty one adds nothing.
        Node::Array(items) => {
            let mut out = Vec::with_capacity(items.len());
            for n in items {
                if let Some(v) = eval(n, input, id)? {
                    out.push(v.into_owned());
                }
            }
            Cow::Owned(Value::Array(out))
        }
        Node::Alt(l, r) => match eval(l, input, id)? {
            Some(left) if truthy(&left) => left,
            _ => one!(eval(r, input, id)),
        },
        Node::Compare(l, op, r) => {
            let (l, r) = (one!(eval(l, input, id)), one!(eval(r, input, id)));
            let ord = compare(&l, &r);
            Cow::Owned(Value::Bool(match op {
                Op::Eq => ord == Ordering::Equal,
                Op::Ne => ord != Ordering::Equal,
                Op::Lt => ord == Ordering::Less,
                Op::Le => ord != Ordering::Greater,
                Op::Gt => ord == Ordering::Greater,
                Op::Ge => ord != Ordering::Less,
            }))
        }
        Node::And(l, r) => {
            let held = truthy(&*one!(eval(l, input, id))) && truthy(&*one!(eval(r, input, id)));
            Cow::Owned(Value::Bool(held))
        }
        Node::Or(l, r) => {
            let held = truthy(&*one!(eval(l, input, id))) || truthy(&*one!(eval(r, input, id)));
            Cow::Owned(Value::Bool(held))
        }
        Node::Pipe(f, g) => match one!(eval(f, input, id)) {
            Cow::Borrowed(mid) => one!(eval(g, mid, id)),
            Cow::Owned(mid) => Cow::Owned(one!(eval(g, &mid, id)).into_owned()),
        },
        Node::Builtin(b) => b.apply(input)?,
        Node::If(c, t, e) => {
            if truthy(&*one!(eval(c, input, id))) {
                one!(eval(t, input, id))
            } else {
                one!(eval(e, input, id))
            }
        }
        // jq maps an object's values too; that is left to jq.
        Node::Map(f) => {
            let Value::Array(items) = input else { return Err(Unsure) };
            let mut out = Vec::with_capacity(items.len());
            for item in items {
                if let Some(v) = eval(f, item, id)? {
                    out.push(v.into_owned());
                }
            }
            Cow::Owned(Value::Array(out))
        }
        Node::Select(c) => {
            if truthy(&*one!(eval(c, input, id))) {
                Cow::Borrowed(input)
            } else {
                return Ok(None);
            }
        }
        Node::Format(parts) => {
            let mut text = String::new();
            for p in parts {
                match p {
                    Part::Text(t) => text.push_str(t),
                    Part::Value(n) => match &*one!(eval(n, input, id)) {
                        Value::String(s) => text.push_str(s),
                        Value::Null => text.push_str("null"),
                        Value::Bool(b) => text.push_str(if *b { "true" } else { "false" }),
                        Value::Number(n) if plain_integer(n) => text.push_str(&n.to_string()),
                        // How jaq writes other numbers (`1e3`, `19.90`)
                        // depends on where they came from; and arrays and
                        // objects hold numbers: jaq's to say.
                        _ => return Err(Unsure),
                    },
                }
            }
            Cow::Owned(Value::String(text))
        }
    }))
}

/// An integer written with digits only that fits an `i64` (not `-0`):
/// written the same by jq, jaq and serde.
fn plain_integer(n: &serde_json::Number) -> bool {
    n.as_i64().is_some()
        && n.to_string() != "-0"
        && n.to_string()
            .trim_start_matches('-')
            .bytes()
            .all(|b| b.is_ascii_digit())
}

/// `.key` and `.[n]` as jq has them on null, objects and arrays; on
/// anything else jq fails, in its own words.
fn index<'a>(v: &'a Value, step: &Step) -> Result<&'a Value, Unsure> {
    match (v, step) {
        (Value::Null, _) => Ok(&NULL),
        (Value::Object(m), Step::Key(k)) => Ok(m.get(k).unwrap_or(&NULL)),
        (Value::Array(a), Step::Index(i)) => {
            let i = if *i < 0 { a.len() as i64 + i } else { *i };
            Ok(usize::try_from(i).ok().and_then(|i| a.get(i)).unwrap_or(&NULL))
        }
        _ => Err(Unsure),
    }
}

/// jq's order of values, by jaq's own comparison: scalars cost a
/// conversion each, containers (rare in predicates) a whole one.
fn compare(l: &Value, r: &Value) -> Ordering {
    match (l, r) {
        (Value::Null, Value::Null) => Ordering::Equal,
        (Value::Bool(a), Value::Bool(b)) => a.cmp(b),
        (Value::String(a), Value::String(b)) => a.as_bytes().cmp(b.as_bytes()),
        _ => jq::from_json(l).cmp(&jq::from_json(r)),
    }
}

/// What jaq's conversion back to JSON would refuse or rewrite: nesting past
/// [`jq::MAX_DEPTH`], and `-0`, which jaq reads as the integer 0.
fn check_output(v: &Value, depth: usize) -> Result<(), Unsure> {
    if depth > jq::MAX_DEPTH {
        return Err(Unsure);
    }
    match v {
        Value::Number(n) if n.as_str() == "-0" => Err(Unsure),
        Value::Array(a) => a.iter().try_for_each(|x| check_output(x, depth + 1)),
        Value::Object(m) => m.values().try_for_each(|x| check_output(x, depth + 1)),
        _ => Ok(()),
    }
}

mod grammar;

#[cfg(test)]
mod tests;
