//! jq programs (the jaq crates): compiled once, run on one value, first
//! output only. Values cross between serde_json (what the schema validator
//! and the formats read) and jaq's own value type here and nowhere else.
//!
//! Nothing here bounds a program's time, memory or stack: jaq has no such
//! limits, so programs run inside the sandbox's worker processes
//! (`super::sandbox`), which the server kills when they run away. The one
//! exception is a mapping (the `native` module's subset), which terminates
//! by construction: jaq runs it in place when the native evaluator defers.

use jaq_core::data::JustLut;
use jaq_core::load::{Arena, File, Loader};
use jaq_core::{Compiler, Ctx, Native, Vars};
use jaq_json::{Num, Val};
use serde_json::Value;

type Data = JustLut<Val>;

/// The one variable every program may read: the message's id (SPEC §16),
/// so an item can carry a key its downstream de-duplicates on. Empty where
/// no message is meant yet (ingress checks a body before it has an id).
pub const MESSAGE_ID: &str = "$message_id";

/// Deepest value a program may produce: serde_json reads no deeper either,
/// and converting (recursively) a deeper one could overflow the stack.
pub const MAX_DEPTH: usize = 128;

/// A compiled jq program.
pub struct Program {
    filter: jaq_core::compile::Filter<Native<Data>>,
}

/// Why a program does not compile: what, and where in its text (a byte
/// offset into the code; the caller turns it into line:col of its file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompileError {
    pub offset: usize,
    pub message: String,
}

impl Program {
    pub fn compile(code: &str) -> Result<Program, CompileError> {
        let at = |s: &str| {
            let (start, p) = (code.as_ptr() as usize, s.as_ptr() as usize);
            if p >= start && p <= start + code.len() {
                p - start
            } else {
                0
            }
        };
        let defs = jaq_core::defs().chain(jaq_std::defs()).chain(jaq_json::defs());
        let loader = Loader::new(defs);
        let arena = Arena::default();
        let modules = loader.load(&arena, File { code, path: () }).map_err(|errs| {
            use jaq_core::load::Error;
            let first = errs.into_iter().next().map(|(_, e)| e);
            match first {
                Some(Error::Lex(v)) => v.first().map_or_else(unknown, |(expect, s)| CompileError {
                    offset: at(s),
                    message: format!("expected {}", expect.as_str()),
                }),
                Some(Error::Parse(v)) => v.first().map_or_else(unknown, |(expect, s)| CompileError {
                    offset: at(s),
                    message: if s.is_empty() {
                        format!("expected {} at the end of the program", expect.as_str())
                    } else {
                        format!("expected {}, found {:?}", expect.as_str(), truncate(s, 20))
                    },
                }),
                // `include` and `import` of modules: nothing is read from
                // files (the loader has no reader).
                Some(Error::Io(v)) => v.first().map_or_else(unknown, |(path, _)| CompileError {
                    offset: at(path),
                    message: "modules (include, import) are not supported: put the definitions in the program"
                        .to_string(),
                }),
                None => unknown(),
            }
        })?;
        // Data imports (`import "f" as $x;`) would be read at run time, by
        // the worker, from files it has no business reading: refused here,
        // so `check` says so rather than every message failing.
        jaq_core::load::import(&modules, |_| {
            Err("data imports (import \"…\" as $name) are not supported: put the data in the program".into())
        })
        .map_err(|errs| {
            use jaq_core::load::Error;
            let first = errs.into_iter().next().map(|(_, e)| e);
            match first {
                Some(Error::Io(v)) => v.first().map_or_else(unknown, |(path, m)| CompileError {
                    offset: at(path),
                    message: m.clone(),
                }),
                _ => unknown(),
            }
        })?;
        let funs = jaq_core::funs().chain(jaq_std::funs()).chain(jaq_json::funs());
        let filter = Compiler::default()
            .with_funs(funs)
            .with_global_vars([MESSAGE_ID])
            .compile(modules)
            .map_err(|errs| {
                let first = errs.into_iter().next().and_then(|(_, v)| v.into_iter().next());
                match first {
                    Some((name, undefined)) => CompileError {
                        offset: at(name),
                        message: format!("undefined {} `{name}`", undefined.as_str()),
                    },
                    None => unknown(),
                }
            })?;
        Ok(Program { filter })
    }

    /// The program's first output for `input`: `Ok(None)` when it yields
    /// nothing, `Err` with jq's message when its first result is an error.
    pub fn first(&self, input: Val) -> Result<Option<Val>, String> {
        self.first_for(input, "")
    }

    /// [`Program::first`] for the message `message_id` (its `$message_id`).
    pub fn first_for(&self, input: Val, message_id: &str) -> Result<Option<Val>, String> {
        let id = Val::from(message_id.to_string());
        let ctx = Ctx::<Data>::new(&self.filter.lut, Vars::new([id]));
        let mut out = self.filter.id.run((ctx, input));
        match out.next() {
            None => Ok(None),
            Some(Ok(v)) => Ok(Some(v)),
            // Not `jaq_core::unwrap_valr`: on `halt` it exits the process.
            Some(Err(exn)) => Err(match exn.get_err() {
                Ok(e) => e.to_string(),
                Err(exn) => match exn.get_halt() {
                    Ok(code) => format!("the program halted (halt or halt_error, exit code {code})"),
                    Err(_) => "the program failed".to_string(),
                },
            }),
        }
    }
}

fn unknown() -> CompileError {
    CompileError {
        offset: 0,
        message: "the program does not compile".to_string(),
    }
}

fn truncate(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

/// jq's truthiness: everything but `false` and `null`.
pub fn truthy(v: &Val) -> bool {
    !matches!(v, Val::Null | Val::Bool(false))
}

/// A serde_json value as a jaq value.
pub fn from_json(v: &Value) -> Val {
    match v {
        Value::Null => Val::Null,
        Value::Bool(b) => Val::Bool(*b),
        // Numbers keep the digits they were written with (SPEC §17): an id
        // of 20 digits passes a transform as those 20 digits, and a
        // decimal as its text, until the program computes with it.
        // (serde_json keeps each number's text: `arbitrary_precision`.)
        Value::Number(n) => match n.as_i64().and_then(|i| isize::try_from(i).ok()) {
            Some(i) => Val::from(i),
            None => {
                let text = n.to_string();
                match Num::from_str_radix(&text, 10) {
                    Some(big) => Val::Num(big),
                    None => Val::Num(Num::Dec(std::rc::Rc::new(text))),
                }
            }
        },
        Value::String(s) => Val::from(s.clone()),
        Value::Array(a) => a.iter().map(from_json).collect(),
        Value::Object(o) => {
            let mut m = jaq_json::Map::default();
            for (k, v) in o {
                m.insert(Val::from(k.clone()), from_json(v));
            }
            Val::obj(m)
        }
    }
}

/// A jaq value as a serde_json value. Byte strings become (lossy) text,
/// non-string object keys their JSON text, NaN and infinities `null` (as jq
/// prints them); nesting deeper than [`MAX_DEPTH`] is an error.
pub fn to_json(v: &Val) -> Result<Value, String> {
    to_json_at(v, 0)
}

fn to_json_at(v: &Val, depth: usize) -> Result<Value, String> {
    if depth > MAX_DEPTH {
        return Err(format!("the output is nested deeper than {MAX_DEPTH} levels"));
    }
    Ok(match v {
        Val::Null => Value::Null,
        Val::Bool(b) => Value::Bool(*b),
        Val::Num(n) => number(n),
        Val::TStr(b) | Val::BStr(b) => Value::String(String::from_utf8_lossy(b).into_owned()),
        Val::Arr(a) => Value::Array(a.iter().map(|x| to_json_at(x, depth + 1)).collect::<Result<_, _>>()?),
        Val::Obj(o) => {
            let mut m = serde_json::Map::with_capacity(o.len());
            for (k, x) in o.iter() {
                let key = match k {
                    Val::TStr(b) | Val::BStr(b) => String::from_utf8_lossy(b).into_owned(),
                    other => other.to_string(),
                };
                m.insert(key, to_json_at(x, depth + 1)?);
            }
            Value::Object(m)
        }
    })
}

fn number(n: &Num) -> Value {
    match n {
        Num::Int(i) => Value::from(*i as i64),
        Num::Float(f) => serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number),
        // Big integers and decimals: as serde_json reads their text (an f64
        // where it does not fit an integer).
        other => serde_json::from_str(&other.to_string()).unwrap_or(Value::Null),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(code: &str, input: Value) -> Result<Option<Value>, String> {
        let p = Program::compile(code).map_err(|e| e.message)?;
        p.first(from_json(&input))?.map(|v| to_json(&v)).transpose()
    }

    #[test]
    fn a_program_maps_an_object_and_only_its_first_output_counts() {
        let out = run("{name: .a.b, n: (.n + 1)}, 2", json!({"a": {"b": "x"}, "n": 1})).unwrap();
        assert_eq!(out, Some(json!({"name": "x", "n": 2})));
        assert_eq!(run("empty", json!(1)).unwrap(), None);
        assert_eq!(run(".[] | select(. > 1)", json!([1, 2, 3])).unwrap(), Some(json!(2)));
    }

    #[test]
    fn runtime_errors_carry_jqs_message() {
        let e = run(".a + 1", json!({"a": "x"})).unwrap_err();
        assert!(e.contains("cannot") || e.contains("add"), "{e}");
        let e = run("error(\"custom failure\")", json!(null)).unwrap_err();
        assert!(e.contains("custom failure"), "{e}");
    }

    #[test]
    fn modules_and_data_imports_are_refused_when_compiled() {
        for code in [
            "include \"lib\"; .",
            "import \"lib\" as l; .",
            "import \"data\" as $d; .",
        ] {
            let e = Program::compile(code)
                .err()
                .unwrap_or_else(|| panic!("{code} compiled"));
            assert!(e.message.contains("not supported"), "{code}: {e:?}");
        }
    }

    #[test]
    fn halt_fails_the_message_instead_of_ending_the_process() {
        let e = run("\"bye\" | halt_error", json!(null)).unwrap_err();
        assert!(e.contains("halted"), "{e}");
        let e = run("halt", json!(null)).unwrap_err();
        assert!(e.contains("exit code 0"), "{e}");
    }

    #[test]
    fn compile_errors_point_into_the_program() {
        let e = Program::compile("{name: .a,, }").err().unwrap();
        assert!(e.offset > 0 && e.offset <= 12, "{e:?}");
        let e = Program::compile(".a | nosuchfn(1)").err().unwrap();
        assert_eq!(e.offset, 5, "{e:?}");
        assert!(e.message.contains("nosuchfn"), "{e:?}");
    }

    #[test]
    fn numbers_pass_through_as_written_unless_computed_with() {
        let body: Value =
            serde_json::from_str(r#"{"account_id": 12345678901234567890123, "price": 19.90, "tiny": 1e-400, "n": 7}"#)
                .unwrap();
        let out = run("{account: .account_id, price, tiny, n}", body.clone())
            .unwrap()
            .unwrap();
        assert_eq!(
            out.to_string(),
            r#"{"account":12345678901234567890123,"price":19.90,"tiny":1e-400,"n":7}"#
        );
        // Arithmetic is jq's, in floating point.
        let sum = run(".price + 1", body).unwrap().unwrap();
        assert_eq!(sum.as_f64(), Some(20.9));
    }

    #[test]
    fn values_round_trip_between_serde_and_jaq() {
        let v = json!({"s": "é", "i": -3, "big": 12345678901234_i64, "f": 0.5, "a": [null, true, {"k": []}]});
        assert_eq!(run(".", v.clone()).unwrap(), Some(v));
    }

    #[test]
    fn output_nested_too_deep_is_an_error_not_a_crash() {
        let e = run("reduce range(1000) as $i (null; [.])", json!(null)).unwrap_err();
        assert!(e.contains("deeper"), "{e}");
    }
}
