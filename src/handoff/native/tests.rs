//! The native evaluator against jaq: hand-picked cases, then random
//! programs of the subset on random JSON (the differential property test).
//! Wherever the evaluator answers, its answer must be jaq's, byte for byte
//! once serialised (numbers' digits and keys' order included).

use proptest::prelude::*;
use serde_json::{json, Value};

use super::*;

/// jaq's answer: its first output as JSON, or its error.
fn jaq(code: &str, input: &Value) -> Result<Option<Value>, String> {
    let p = jq::Program::compile(code).map_err(|e| format!("does not compile: {e:?}"))?;
    p.first(jq::from_json(input))?.map(|v| jq::to_json(&v)).transpose()
}

/// Checks `code` on `input` both ways; true when the evaluator answered
/// (rather than deferring to jaq).
fn agree(code: &str, input: &Value) -> bool {
    let expr = Expr::compile(code).unwrap_or_else(|e| panic!("{code} is not native: {e}"));
    let expected = jaq(code, input);
    let holds = jq::Program::compile(code)
        .unwrap()
        .first(jq::from_json(input))
        .map(|v| v.as_ref().is_some_and(jq::truthy));
    match expr.holds(input) {
        Ok(b) => assert_eq!(Ok(b), holds, "{code} holds on {input}"),
        Err(Unsure) => assert!(holds.is_err() || expr.eval(input).is_err(), "{code} unsure on {input}"),
    }
    // A program that reads only some top-level keys answers the same,
    // here and in jaq (its errors too), on the input cut down to them.
    if let (Some(keys), Value::Object(all)) = (expr.top_keys(), input) {
        let cut = Value::Object(
            all.iter()
                .filter(|(k, _)| keys.contains(k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        );
        assert_eq!(jaq(code, &cut), expected, "{code} in jaq on {input} cut to {keys:?}");
        assert_eq!(expr.eval(&cut), expr.eval(input), "{code} on {input} cut to {keys:?}");
        assert_eq!(
            expr.holds(&cut),
            expr.holds(input),
            "{code} holds on {input} cut to {keys:?}"
        );
    }
    // Written as it is evaluated: the bytes of the value it would build,
    // or unsure of the same inputs, having written nothing.
    let mut written = Vec::new();
    match (expr.write_json_for(input, "", &mut written), expr.eval(input)) {
        (Ok(()), Ok(v)) => assert_eq!(written, serde_json::to_vec(&v).unwrap(), "{code} written on {input}"),
        (Err(Unsure), Err(Unsure)) => assert!(written.is_empty(), "{code} wrote on {input} and was unsure"),
        (w, e) => panic!("{code} on {input}: written {w:?}, evaluated {e:?}"),
    }
    match expr.eval(input) {
        Ok(v) => {
            let got = v.to_string();
            match expected {
                Ok(Some(e)) => assert_eq!(got, e.to_string(), "{code} on {input}"),
                other => panic!("{code} on {input}: native {got}, jaq {other:?}"),
            }
            true
        }
        Err(Unsure) => false,
    }
}

fn parse(text: &str) -> Value {
    serde_json::from_str(text).unwrap()
}

#[test]
fn mappings_give_what_jaq_gives() {
    let body = parse(
        r#"{"request_id": 12345678901234567890123, "person": {"name": "Ada", "tags": ["x", "y"]},
            "confidence": 0.41, "price": 19.90, "tiny": 1e-400, "é": "clé", "n": null}"#,
    );
    for code in [
        ".",
        "{id: .request_id, name: .person.name, missing: .nope.deeper}",
        r#"{"é": ."é", first: .person.tags[0], last: .person.tags[-1], beyond: .person.tags[5]}"#,
        "{a: 1, b: 2, a: 3}",
        "[.confidence, .price, .tiny, \"lit\", 1.0, 1e3, -2]",
        ".n // .person.name // \"none\"",
        ".confidence < 0.5 and .person.name == \"Ada\"",
        ".confidence >= 0.5 or (.n | not)",
        "if .confidence < 0.5 then {low: true} elif .n then 1 else .person end",
        ".[\"person\"].name",
        "{price, tiny, request_id}",
        "12345678901234567890123 == .request_id",
        "{name: (.person.name | ascii_downcase), up: (.\"é\" | ascii_upcase)}",
        ".person.tags | map(ascii_upcase)",
        ".person.tags | map(select(. != \"x\"))",
        "\"id \\(.person.name): \\(.n) \\(.person.name == \"Ada\") \\(-12) \\u00e9\\n\"",
        "{s: \"\\(.person | .name | ascii_downcase) (\\(\"nested \\(.confidence < 1)\"))\"}",
        ".person | select(.name == \"Ada\") | .tags",
        "[(.person | select(.name == \"Bob\")), .n]",
    ] {
        assert!(agree(code, &body), "{code} deferred to jaq");
    }
}

#[test]
fn what_jaq_says_differently_is_left_to_jaq() {
    let body = parse(r#"{"zero": -0, "s": "text", "a": [1]}"#);
    // jaq reads -0 as the integer 0.
    assert_eq!(Expr::compile(".zero").unwrap().eval(&body), Err(Unsure));
    // Indexing the wrong type is an error in jaq's words.
    assert_eq!(Expr::compile(".s.x").unwrap().eval(&body), Err(Unsure));
    assert_eq!(Expr::compile(".a.x").unwrap().eval(&body), Err(Unsure));
    assert!(jaq(".s.x", &body).is_err());
    // Non-object inputs: null indexes to null, the rest fail.
    assert!(agree("{a: .a}", &Value::Null));
    assert!(!agree("{a: .a}", &json!([1, 2])));
    assert!(!agree(".a", &json!("x")));
}

#[test]
fn the_output_nested_too_deep_for_jaq_is_left_to_jaq() {
    let mut deep = Value::Null;
    for _ in 0..127 {
        deep = json!([deep]);
    }
    let code = "{a: {b: .}}";
    assert!(!agree(code, &deep));
    assert!(jaq(code, &deep).is_err());
}

#[test]
fn programs_outside_the_subset_say_why() {
    for (code, why) in [
        (
            "{email: (.person.email | ascii_downcase | ltrimstr(\"x\"))}",
            "ltrimstr",
        ),
        (".lines | map(.sku) | add", "`add`"),
        ("\"\\(.a, .b)\"", "more than one output"),
        ("{\"\\(.k)\": 1}", "object key"),
        (
            "[., .] | [., .] | [., .] | [., .] | [., .] | [., .] | [., .]",
            "copy its input 128 times",
        ),
        ("map", "without its argument"),
        (".a + 1", "`+`"),
        ("[.[] | select(.ok)]", "inside []"),
        (".. | numbers", "recursion"),
        (".a as $x | $x", "`as`"),
        (".a, .b", "more than one output"),
        ("{(.k): 1}", "object key"),
        (".a?", "`?`"),
        ("reduce .[] as $x (0; . + $x)", "`reduce`"),
    ] {
        let e = Expr::compile(code).expect_err(code);
        assert!(e.contains(why), "{code}: {e}");
    }
}

// ---- the differential property test --------------------------------------

const KEYS: &[&str] = &["a", "b", "name", "é", "with space", "id"];

fn arb_number() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i32>().prop_map(|n| json!(n)),
        any::<i64>().prop_map(|n| json!(n)),
        (-1e6f64..1e6).prop_map(|f| json!(f)),
        prop::sample::select(vec![
            "-0",
            "0.0",
            "1.0",
            "19.90",
            "1e-400",
            "1E400",
            "12345678901234567890",
            "-98765432109876543210987",
            "0.1",
            "3",
        ])
        .prop_map(parse),
    ]
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        arb_number(),
        "[a-zA-Zé ]{0,6}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec((prop::sample::select(KEYS), inner), 0..5)
                .prop_map(|kv| { Value::Object(kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect()) }),
        ]
    })
}

fn arb_key() -> impl Strategy<Value = String> {
    prop::sample::select(KEYS).prop_map(|k| {
        if k.chars().all(|c| c.is_ascii_alphanumeric()) {
            format!(".{k}")
        } else {
            format!(".\"{k}\"")
        }
    })
}

fn arb_path() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            3 => arb_key(),
            1 => (-3i32..4).prop_map(|i| format!(".[{i}]")),
            1 => prop::sample::select(KEYS).prop_map(|k| format!(".[\"{k}\"]")),
        ],
        0..3,
    )
    .prop_map(|steps| {
        if steps.is_empty() {
            ".".to_string()
        } else {
            steps.concat()
        }
    })
}

fn arb_literal() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "null",
        "true",
        "false",
        "0",
        "-1",
        "1.0",
        "0.5",
        "1e3",
        "12345678901234567890123",
        "\"x\"",
        "\"é\"",
        "\"\"",
        "\"MiXéD\"",
    ])
    .prop_map(str::to_string)
}

fn arb_program() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![3 => arb_path(), 1 => arb_literal()];
    leaf.prop_recursive(3, 24, 4, |inner| {
        let op = prop::sample::select(vec!["==", "!=", "<", "<=", ">", ">="]);
        prop_oneof![
            prop::collection::vec((prop::sample::select(KEYS), inner.clone()), 0..4).prop_map(|kv| {
                let entries: Vec<String> = kv.into_iter().map(|(k, v)| format!("\"{k}\": ({v})")).collect();
                format!("{{{}}}", entries.join(", "))
            }),
            prop::collection::vec(inner.clone(), 0..3).prop_map(|items| {
                let items: Vec<String> = items.into_iter().map(|v| format!("({v})")).collect();
                format!("[{}]", items.join(", "))
            }),
            (inner.clone(), inner.clone()).prop_map(|(l, r)| format!("({l}) // ({r})")),
            (inner.clone(), op, inner.clone()).prop_map(|(l, op, r)| format!("({l}) {op} ({r})")),
            (inner.clone(), inner.clone()).prop_map(|(l, r)| format!("({l}) and ({r})")),
            (inner.clone(), inner.clone()).prop_map(|(l, r)| format!("({l}) or ({r})")),
            inner.clone().prop_map(|f| format!("({f}) | not")),
            (
                inner.clone(),
                prop::sample::select(vec!["ascii_downcase", "ascii_upcase"])
            )
                .prop_map(|(f, b)| format!("({f}) | {b}")),
            (inner.clone(), inner.clone(), inner.clone()).prop_map(|(c, t, e)| format!("if {c} then {t} else {e} end")),
            (inner.clone(), inner.clone()).prop_map(|(f, g)| format!("({f}) | ({g})")),
            inner.clone().prop_map(|f| format!("map({f})")),
            inner.clone().prop_map(|f| format!("select({f})")),
            (inner.clone(), inner.clone()).prop_map(|(f, c)| format!("({f}) | map(select({c}))")),
            (inner.clone(), "[a-z :é]{0,4}", inner).prop_map(|(f, t, g)| format!("\"{t}\\({f}){t}\\({g})\"")),
        ]
    })
}

/// How many random (program, input) pairs the property test checks.
const CASES: u32 = 2000;

#[test]
fn random_programs_on_random_json_agree_with_jaq() {
    use proptest::test_runner::{Config, TestRunner};
    use std::cell::Cell;
    let (ran, answered) = (Cell::new(0u32), Cell::new(0u32));
    let mut runner = TestRunner::new(Config {
        cases: CASES,
        ..Config::default()
    });
    runner
        .run(&(arb_program(), arb_json()), |(code, input)| {
            ran.set(ran.get() + 1);
            if agree(&code, &input) {
                answered.set(answered.get() + 1);
            }
            Ok(())
        })
        .unwrap();
    eprintln!("{} cases, {} answered natively", ran.get(), answered.get());
    // Answered here in most runs about half the time (the rest index the
    // wrong type, or case a non-string: jaq's errors): a test where
    // everything deferred to jaq would prove nothing.
    assert!(
        ran.get() >= CASES && answered.get() * 3 > ran.get(),
        "{} of {}",
        answered.get(),
        ran.get()
    );
}

/// The same, without the parentheses the generator puts everywhere: what
/// people write, where precedence decides.
#[test]
fn precedence_is_jqs() {
    let body = parse(r#"{"a": null, "b": false, "c": 1, "d": "x"}"#);
    for code in [
        ".a // .b // .c",
        ".a // .c == 1",
        ".c == 1 and .d == \"x\" or .a",
        ".a or .c and .b",
        ".c < 2 and .d >= \"w\" | not",
        ".b // .a | not",
        "if .c == 1 then .d elif .a then 1 end",
        "if .a then 1 end",
        "[.a // .c, .d]",
    ] {
        agree(code, &body);
    }
}
