use serde_json::json;

use super::*;

/// A spec with nothing set (an empty `[destination.handoff]` table).
fn spec() -> Spec {
    Spec {
        passthrough: false,
        ..Spec::passthrough()
    }
}

fn table(specs: Vec<(&str, Spec)>) -> Table {
    Table::compile(&specs.into_iter().map(|(n, s)| (n.to_string(), s)).collect()).unwrap()
}

#[test]
fn a_destination_without_a_handoff_passes_bytes_through_unparsed() {
    let t = table(vec![]);
    let a = t.admit("crm", b"not json at all").unwrap();
    assert_eq!(a.destination, "crm");
    assert_eq!(a.rendered, None);
    assert_eq!(t.render("crm", b"\xff", "").unwrap(), None);
}

/// A destination whose handoff is only its ordering key: the key comes
/// from the body, the body goes out as it came in (not re-serialised).
#[test]
fn a_key_only_handoff_reads_the_key_and_forwards_the_bytes() {
    let t = table(vec![
        (
            "crm",
            Spec {
                key: Some(".contact.id".into()),
                ..Spec::passthrough()
            },
        ),
        (
            "erp",
            Spec {
                key: Some(".n".into()),
                category: Some(".kind".into()),
                ..spec()
            },
        ),
    ]);
    let body = br#"{ "contact": {"id": "c-7"} }"#;
    let a = t.admit("crm", body).unwrap();
    assert_eq!((a.key.as_deref(), a.rendered), (Some("c-7"), None));
    assert_eq!(t.render("crm", body, "").unwrap(), None);
    assert_eq!(t.admit("crm", br#"{"contact": null}"#).unwrap().key, None);
    // Beside other handoff settings, the key changes nothing else.
    let a = t.admit("erp", br#"{ "n": 5 }"#).unwrap();
    assert_eq!(a.key.as_deref(), Some("5"));
    assert_eq!(a.rendered.unwrap().body, br#"{"n":5}"#);
}

#[test]
fn schema_violations_name_instance_and_schema_paths() {
    let mut s = spec();
    s.schema = Some(json!({
        "type": "object",
        "required": ["email"],
        "properties": {"age": {"type": "integer"}, "kind": {"enum": ["a", "b"]}}
    }));
    let t = table(vec![("crm", s)]);
    let f = t.admit("crm", br#"{"age": "x", "kind": "c"}"#).unwrap_err();
    assert_eq!(f.stage, Stage::Schema);
    let paths: Vec<&str> = f.violations.iter().map(|v| v.instance_path.as_str()).collect();
    assert!(
        paths.contains(&"/age") && paths.contains(&"/kind") && paths.contains(&""),
        "{f:?}"
    );
    assert!(f.violations.iter().any(|v| v.schema_path.contains("required")), "{f:?}");
    assert!(t.admit("crm", br#"{"email": "a@b", "age": 3}"#).is_ok());
}

#[test]
fn at_most_twenty_violations_are_listed() {
    let mut s = spec();
    s.schema = Some(json!({"type": "array", "items": {"type": "string"}}));
    let t = table(vec![("d", s)]);
    let body = serde_json::to_vec(&(0..50).collect::<Vec<i32>>()).unwrap();
    let f = t.admit("d", &body).unwrap_err();
    assert_eq!(f.violations.len(), MAX_SCHEMA_ERRORS);
    assert!(f.message.starts_with("50 schema violations"), "{}", f.message);
}

#[test]
fn bad_bodies_fail_at_parse_with_what_is_wrong() {
    let t = table(vec![("d", spec())]);
    for (body, says) in [
        (&b""[..], "empty"),
        (b"  \n", "empty"),
        (b"{\"a\": \xff}", "UTF-8"),
        // Inside a string, a key, and a string a cut-down parse skips.
        (b"{\"a\": \"\xc3\x28\"}", "UTF-8"),
        (b"{\"\xe2\x82\": 1}", "UTF-8"),
        (b"{\"a\": ", "not valid JSON"),
    ] {
        let f = t.admit("d", body).unwrap_err();
        assert_eq!(f.stage, Stage::Parse);
        assert!(f.message.contains(says), "{:?}: {}", body, f.message);
    }
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let f = t.admit("d", deep.as_bytes()).unwrap_err();
    assert_eq!(f.stage, Stage::Parse);
    assert!(f.message.contains("recursion"), "{}", f.message);
}

#[test]
fn the_first_matching_route_moves_the_message_and_the_targets_handoff_applies() {
    let mut src = spec();
    src.transform = Some("{from: \"source\"}".into());
    src.routes = vec![
        Route {
            when: ".confidence < 0.5".into(),
            to: "triage".into(),
        },
        Route {
            when: ".confidence < 0.8".into(),
            to: "second".into(),
        },
    ];
    let mut second = spec();
    second.transform = Some("{from: \"second\", c: .confidence}".into());
    second.category = Some(".kind".into());
    // The target's own routes are not followed.
    second.routes = vec![Route {
        when: "true".into(),
        to: "elsewhere".into(),
    }];
    let t = table(vec![("crm", src), ("second", second)]);
    let a = t.admit("crm", br#"{"confidence": 0.7, "kind": "invoice"}"#).unwrap();
    assert_eq!(a.destination, "second");
    assert_eq!(a.routed_from, Some(("crm".to_string(), 1)));
    assert_eq!(a.category, "invoice");
    assert_eq!(a.rendered.unwrap().body, br#"{"from":"second","c":0.7}"#);
    let a = t.admit("crm", br#"{"confidence": 0.2}"#).unwrap();
    assert_eq!((a.destination.as_str(), a.rendered), ("triage", None));
    let a = t.admit("crm", br#"{"confidence": 0.9}"#).unwrap();
    assert_eq!(a.destination, "crm");
    assert_eq!(a.routed_from, None);
    assert_eq!(a.category, UNCATEGORISED);
}

#[test]
fn transform_errors_and_empty_output_fail_at_transform() {
    let mut s = spec();
    s.transform = Some(".a.b + 1".into());
    let t = table(vec![("d", s.clone())]);
    let f = t.admit("d", br#"{"a": {"b": "x"}}"#).unwrap_err();
    assert_eq!(f.stage, Stage::Transform);
    let f = t.render("d", br#"{"a": {"b": "x"}}"#, "").unwrap_err();
    assert_eq!(f.stage, Stage::Transform);
    s.transform = Some("empty".into());
    let f = table(vec![("d", s)]).admit("d", b"{}").unwrap_err();
    assert!(f.message.contains("no output"), "{}", f.message);
}

#[test]
fn format_errors_fail_at_format() {
    let mut s = spec();
    s.format = Format::Form;
    let f = table(vec![("d", s)]).admit("d", b"[1, 2]").unwrap_err();
    assert_eq!(f.stage, Stage::Format);
}

#[test]
fn programs_that_do_not_compile_name_their_key() {
    let mut s = spec();
    s.routes = vec![Route {
        when: ".a <".into(),
        to: "x".into(),
    }];
    let e = Table::compile(&vec![("d".to_string(), s)]).err().unwrap();
    assert_eq!(e.key, "route[0].when");
    let mut s = spec();
    s.schema = Some(json!({"type": 12}));
    let e = Table::compile(&vec![("d".to_string(), s)]).err().unwrap();
    assert_eq!(e.key, "schema");
}

#[test]
fn a_transform_reads_the_message_id_natively_and_in_jaq_alike() {
    // A mapping (native) and a program outside the subset (jaq) see the
    // same `$message_id`; an unknown variable does not compile.
    let t = table(vec![
        (
            "native",
            Spec {
                transform: Some("{id: $message_id, email: .email}".to_string()),
                ..spec()
            },
        ),
        (
            "jaq",
            Spec {
                transform: Some("{id: $message_id, email: (.email | ltrimstr(\"x\"))}".to_string()),
                ..spec()
            },
        ),
    ]);
    assert!(t.renders_natively("native"));
    assert!(!t.renders_natively("jaq"));
    for dest in ["native", "jaq"] {
        let r = t
            .render(dest, br#"{"email": "a@example.com"}"#, "0a1b2c3d0000000000000001")
            .unwrap()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["id"], "0a1b2c3d0000000000000001", "{dest}");
        assert_eq!(v["email"], "a@example.com", "{dest}");
    }
    assert!(jq::Program::compile("$other").is_err());
}

/// An admission that reads only some top-level keys parses only those:
/// what it keeps of a body is the full parse's, key for key, and any body
/// it cannot take (not an object, not JSON, not UTF-8) fails with the
/// full parse's words.
#[test]
fn an_admission_parses_only_the_keys_its_programs_read() {
    let keys = vec!["confidence".to_string(), "kind".to_string(), "clé".to_string()];
    for body in [
        &br#"{"confidence": 0.41, "other": {"deep": [1, 2, {"x": 1e999}]}, "kind": "nda"}"#[..],
        br#"{"kind": "a", "kind": "b", "confidence": 12345678901234567890123}"#,
        br#"{"cl\u00e9": "escaped key", "\u0063onfidence": -0, "skip": "\ud83d\ude00"}"#,
        br#"{}"#,
        br#"  {"confidence": null}  "#,
    ] {
        let full = parse("d", body).unwrap();
        let cut = parse_keys("d", body, &keys).unwrap();
        let Value::Object(cut) = cut else {
            panic!("not an object")
        };
        let kept: Vec<_> = full
            .as_object()
            .unwrap()
            .iter()
            .filter(|(k, _)| keys.contains(k))
            .collect();
        assert_eq!(
            cut.iter().collect::<Vec<_>>(),
            kept,
            "{}",
            String::from_utf8_lossy(body)
        );
        for (k, v) in &cut {
            assert_eq!(v.to_string(), full[k].to_string());
        }
    }
    // Past serde_json's nesting limit, in a value that is skipped.
    let deep = [&b"{\"skip\": "[..], &[b'['; 200], &[b']'; 200], b"}"].concat();
    for body in [
        &b"[1, 2]"[..],
        b"\"text\"",
        b"",
        b"{\"confidence\": 1,}",
        b"{\"skip\": \"\xff\"}",
        b"{\"confidence\": 1} trailing",
        &deep,
    ] {
        let full = parse("d", body);
        let cut = parse_keys("d", body, &keys);
        match (full, cut) {
            (Ok(f), Ok(c)) => assert_eq!(f, c, "{}", String::from_utf8_lossy(body)),
            (Err(f), Err(c)) => assert_eq!(f.message, c.message),
            (f, c) => panic!("{}: full {f:?}, cut {c:?}", String::from_utf8_lossy(body)),
        }
    }
}

/// Which admissions parse only some keys: none with a schema, none whose
/// programs see the whole body, and a route's target counts.
#[test]
fn only_admissions_that_read_keys_alone_parse_keys_alone() {
    let hold = |code: &str| Spec {
        hold_when: Some(code.into()),
        ..Spec::passthrough()
    };
    let t = table(vec![
        ("bare", hold(".confidence < 0.5")),
        ("whole", hold("select(.confidence < 0.5)")),
        (
            "mapped",
            Spec {
                transform: Some("{id: .request_id, who: .person.name}".into()),
                category: Some(".kind".into()),
                ..spec()
            },
        ),
        (
            "checked",
            Spec {
                schema: Some(json!({"type": "object"})),
                ..hold(".a")
            },
        ),
        (
            "router",
            Spec {
                routes: vec![Route {
                    when: ".urgent".into(),
                    to: "whole".into(),
                }],
                ..hold(".b")
            },
        ),
    ]);
    let reads = |d: &str| t.by_name[d].admission_reads.clone();
    assert_eq!(reads("bare"), Some(vec!["confidence".to_string()]));
    assert_eq!(reads("whole"), None);
    let mut mapped = reads("mapped").unwrap();
    mapped.sort();
    assert_eq!(mapped, ["kind", "person", "request_id"]);
    assert_eq!(reads("checked"), None);
    assert_eq!(reads("router"), None);
}
