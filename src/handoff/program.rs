//! One handoff program (a transform, category, key, route or `hold_when`),
//! compiled twice: for jaq, always, and natively where it is a mapping
//! (`super::native`). It runs natively when it can, and in jaq when the
//! program is outside the native subset or the evaluator is unsure of an
//! input; the answer is the same either way (jaq's is the contract).
//!
//! The body is parsed once per message ([`Input`]); jaq's copy of it is
//! made only when a program actually runs in jaq.

use std::cell::OnceCell;

use serde_json::Value;

use super::jq;
use super::native;

/// A compiled program.
pub struct Code {
    jq: jq::Program,
    native: Result<native::Expr, String>,
}

impl Code {
    pub fn compile(code: &str) -> Result<Code, jq::CompileError> {
        let jq = jq::Program::compile(code)?;
        Ok(Code {
            jq,
            native: native::Expr::compile(code),
        })
    }

    /// Whether it runs natively: a mapping that terminates by construction
    /// and needs no sandbox.
    pub fn is_native(&self) -> bool {
        self.native.is_ok()
    }

    /// The top-level keys of an object input it reads, when that is all
    /// it sees ([`native::Expr::top_keys`]).
    pub fn top_keys(&self) -> Option<Vec<String>> {
        self.native.as_ref().ok()?.top_keys()
    }

    /// Why it runs in jq (and so in the sandbox), if it does.
    pub fn why_not_native(&self) -> Option<&str> {
        self.native.as_ref().err().map(String::as_str)
    }

    /// The first output as JSON (`Ok(None)` when there is none), or jq's
    /// error message.
    pub fn output(&self, input: &Input<'_>) -> Result<Option<Value>, String> {
        if let Ok(expr) = &self.native {
            if let Ok(v) = expr.eval_for(input.value, input.message_id) {
                return Ok(Some(v));
            }
        }
        self.jq_output(input)
    }

    fn jq_output(&self, input: &Input<'_>) -> Result<Option<Value>, String> {
        match self.jq.first_for(input.val(), input.message_id)? {
            None => Ok(None),
            Some(v) => jq::to_json(&v).map(Some),
        }
    }

    /// The first output written as JSON to `out` (`Ok(false)` when there
    /// is none), or jq's error message: [`Code::output`] as `serde_json`
    /// writes it, natively without building the output first.
    pub fn write_json(&self, input: &Input<'_>, out: &mut Vec<u8>) -> Result<bool, String> {
        if let Ok(expr) = &self.native {
            if expr.write_json_for(input.value, input.message_id, out).is_ok() {
                return Ok(true);
            }
        }
        match self.jq_output(input)? {
            None => Ok(false),
            Some(v) => serde_json::to_writer(out, &v).map(|()| true).map_err(|e| e.to_string()),
        }
    }

    /// Whether the first output is truthy (none is not), or jq's error.
    pub fn holds(&self, input: &Input<'_>) -> Result<bool, String> {
        if let Ok(expr) = &self.native {
            if let Ok(b) = expr.holds(input.value) {
                return Ok(b);
            }
        }
        Ok(self
            .jq
            .first_for(input.val(), input.message_id)?
            .as_ref()
            .is_some_and(jq::truthy))
    }
}

/// A parsed body, the id of its message (`$message_id`; empty before it
/// has one), and jaq's copy of the body once a program needs one.
pub struct Input<'a> {
    value: &'a Value,
    message_id: &'a str,
    val: OnceCell<jaq_json::Val>,
}

impl<'a> Input<'a> {
    pub fn new(value: &'a Value) -> Input<'a> {
        Input::of_message(value, "")
    }

    pub fn of_message(value: &'a Value, message_id: &'a str) -> Input<'a> {
        Input {
            value,
            message_id,
            val: OnceCell::new(),
        }
    }

    pub fn value(&self) -> &'a Value {
        self.value
    }

    fn val(&self) -> jaq_json::Val {
        self.val.get_or_init(|| jq::from_json(self.value)).clone()
    }
}
