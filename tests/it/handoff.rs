//! The handoff layer end to end: schema, routes, transforms and formats on
//! a real tidegate, delivered to real downstream servers; bad input and
//! runaway programs refused without harm to anything else.

use std::path::PathBuf;
use std::time::Duration;

use crate::support::{destination, eventually, problem, Downstream, Extra, Tidegate};

/// A file in a temporary directory the test keeps alive.
fn file(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
    let p = dir.path().join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[tokio::test]
async fn an_llm_extraction_becomes_the_crms_contact_json() {
    let ds = Downstream::start().await;
    let tg = Tidegate::start(&destination(
        "crm",
        &ds.url(),
        r#"[destination.handoff]
transform = '''
{ name: .person.full_name, email: .person.contact.email, company: .org.name, source: "ai" }
'''
category = ".document_type""#,
    ))
    .await;
    let body = r#"{"document_type": "lead", "confidence": 0.93, "model": "x-1",
        "person": {"full_name": "Ada Lovelace", "contact": {"email": "ada@example.com", "phone": null}},
        "org": {"name": "Analytical Engines", "size": 12}, "reasoning": "long text"}"#;
    let id = tg.send("/crm/contacts", body).await;
    tg.wait_message_state(&id, "delivered").await;
    let seen = ds.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        std::str::from_utf8(&seen[0].body).unwrap(),
        r#"{"name":"Ada Lovelace","email":"ada@example.com","company":"Analytical Engines","source":"ai"}"#
    );
    assert_eq!(seen[0].header("content-type").as_deref(), Some("application/json"));
    assert_eq!(seen[0].path_and_query, "/contacts");
    let m = tg.message(&id).await;
    assert_eq!(m["category"], "lead");
    assert_eq!(m["routed_from"], serde_json::Value::Null);
}

#[tokio::test]
async fn line_items_become_one_csv_upload_and_other_formats_are_written_as_configured() {
    let ds = Downstream::start().await;
    let dests = [
        destination(
            "warehouse",
            &ds.url(),
            r#"[destination.handoff]
transform = ".items | map({sku, qty, site: .location.site, attrs})"
format = "csv"
csv = { columns = ["sku", "qty", "site", "attrs"], header = true, delimiter = "," }"#,
        ),
        destination("forms", &ds.url(), "[destination.handoff]\nformat = \"form\""),
        destination(
            "lines",
            &ds.url(),
            "[destination.handoff]\nformat = \"ndjson\"\ntransform = \".events\"",
        ),
    ]
    .concat();
    let tg = Tidegate::start(&dests).await;
    let csv_body = r#"{"items": [
        {"sku": "A-1", "qty": 2, "location": {"site": "Leeds, UK"}, "attrs": {"colour": "red"}},
        {"sku": "B \"big\"", "qty": 1, "location": {"site": "York"}, "attrs": ["x"]}]}"#;
    let a = tg.send("/warehouse/upload", csv_body).await;
    let b = tg
        .send("/forms/submit", r#"{"name": "Ada L", "n": 3, "tags": ["a"]}"#)
        .await;
    let c = tg.send("/lines/bulk", r#"{"events": [{"a": 1}, {"b": [2]}]}"#).await;
    for id in [&a, &b, &c] {
        tg.wait_message_state(id, "delivered").await;
    }
    let seen = ds.seen();
    let by = |id: &str| seen.iter().find(|s| s.message_id() == id).unwrap().clone();
    let csv = by(&a);
    assert_eq!(csv.header("content-type").as_deref(), Some("text/csv; charset=utf-8"));
    assert_eq!(csv.headers.get_all("content-type").iter().count(), 1);
    assert_eq!(
        std::str::from_utf8(&csv.body).unwrap(),
        "sku,qty,site,attrs\r\nA-1,2,\"Leeds, UK\",\"{\"\"colour\"\":\"\"red\"\"}\"\r\n\"B \"\"big\"\"\",1,York,\"[\"\"x\"\"]\"\r\n"
    );
    let form = by(&b);
    assert_eq!(
        form.header("content-type").as_deref(),
        Some("application/x-www-form-urlencoded")
    );
    assert_eq!(&form.body[..], b"name=Ada+L&n=3&tags=%5B%22a%22%5D");
    let nd = by(&c);
    assert_eq!(nd.header("content-type").as_deref(), Some("application/x-ndjson"));
    assert_eq!(&nd.body[..], b"{\"a\":1}\n{\"b\":[2]}\n");
}

#[tokio::test]
async fn low_confidence_goes_to_the_second_destination_and_the_message_names_its_route() {
    let crm = Downstream::start().await;
    let triage = Downstream::start().await;
    let dests = [
        destination(
            "crm",
            &crm.url(),
            r#"rate_limit = { rate = "50/s", burst = 5 }
[destination.handoff]
transform = "{name: .name}"
[[destination.handoff.route]]
when = ".confidence < 0.8"
to = "triage""#,
        ),
        destination(
            "triage",
            &triage.url(),
            r#"rate_limit = { rate = "5/s", burst = 1 }
[destination.handoff]
transform = "{name: .name, confidence: .confidence, queue: \"manual\"}""#,
        ),
    ]
    .concat();
    let tg = Tidegate::start(&dests).await;
    let high = tg.send("/crm/c", r#"{"name": "Ada", "confidence": 0.95}"#).await;
    let r = tg.post("/crm/c", r#"{"name": "Bob", "confidence": 0.4}"#).await;
    assert_eq!(r.status(), 202);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["destination"], "triage", "the answer names the owner: {v}");
    let low = v["id"].as_str().unwrap().to_string();
    tg.wait_message_state(&high, "delivered").await;
    tg.wait_message_state(&low, "delivered").await;
    assert_eq!(&crm.seen()[0].body[..], br#"{"name":"Ada"}"#);
    assert_eq!(crm.seen().len(), 1);
    assert_eq!(
        &triage.seen()[0].body[..],
        br#"{"name":"Bob","confidence":0.4,"queue":"manual"}"#
    );
    let m = tg.message(&low).await;
    assert_eq!(m["destination"], "triage");
    assert_eq!(m["routed_from"], "crm");
    assert_eq!(m["route_rule"], 0);
    let m = tg.message(&high).await;
    assert_eq!(m["routed_from"], serde_json::Value::Null);
    let text = tg.metrics_text().await;
    assert!(
        text.contains(r#"tidegate_messages_routed_total{from="crm",to="triage"} 1"#),
        "{text}"
    );
    // A preview shows the route and exactly what would be sent, and stores
    // nothing.
    let r = tg
        .admin_post("/v1/destinations/crm/preview", r#"{"name": "Cy", "confidence": 0.1}"#)
        .await;
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["destination"], "triage");
    assert_eq!(v["routed_from"], "crm");
    assert_eq!(v["route_rule"], 0);
    assert_eq!(v["request"]["headers"]["content-type"], "application/json");
    assert_eq!(
        v["request"]["body"],
        r#"{"name":"Cy","confidence":0.1,"queue":"manual"}"#
    );
    let r = tg.admin_post("/v1/destinations/crm/preview", "not json").await;
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        (v["ok"].clone(), v["stage"].clone()),
        (false.into(), "parse".into()),
        "{v}"
    );
    assert_eq!(tg.destination("triage").await["counters"]["received"], 1);
    assert_eq!(tg.destination("crm").await["counters"]["received"], 1);
}

#[tokio::test]
async fn schema_violations_are_refused_naming_the_instance_path_and_nothing_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let schema = file(
        &dir,
        "contact.json",
        r#"{"$schema": "http://json-schema.org/draft-07/schema#", "type": "object",
            "required": ["email", "kind"],
            "properties": {"email": {"type": "string"}, "age": {"type": "integer"},
                           "kind": {"enum": ["lead", "customer"]}}}"#,
    );
    let ds = Downstream::start().await;
    let tg = Tidegate::start(&destination(
        "crm",
        &ds.url(),
        &format!("[destination.handoff]\nschema = \"{}\"", schema.display()),
    ))
    .await;
    for (body, path, says) in [
        (r#"{"kind": "lead"}"#, "", "email"),
        (r#"{"email": "a@b", "kind": "lead", "age": "forty"}"#, "/age", "integer"),
        (r#"{"email": "a@b", "kind": "prospect"}"#, "/kind", "prospect"),
    ] {
        let v = problem(tg.post("/crm/c", body).await, 422, "schema_violation").await;
        let errors = v["errors"].as_array().expect("an errors member");
        assert!(
            errors
                .iter()
                .any(|e| e["instance_path"] == path && e["message"].as_str().unwrap().contains(says)),
            "{body}: {v}"
        );
        assert!(errors.iter().all(|e| e["schema_path"].is_string()), "{v}");
    }
    let ok = tg.send("/crm/c", r#"{"email": "a@b", "kind": "lead"}"#).await;
    tg.wait_message_state(&ok, "delivered").await;
    assert_eq!(ds.seen().len(), 1, "only the valid message is delivered");
    let d = tg.destination("crm").await;
    assert_eq!(d["queue"]["depth"], 0, "{d}");
    assert_eq!(d["counters"]["received"], 1, "{d}");
    assert_eq!(d["counters"]["rejected"], 3, "{d}");
    let text = tg.metrics_text().await;
    assert!(
        text.contains(r#"tidegate_handoff_failures_total{destination="crm",stage="schema"} 3"#),
        "{text}"
    );
}

#[tokio::test]
async fn bad_input_gets_a_clear_4xx_and_the_process_stays_healthy() {
    let ds = Downstream::start().await;
    let tg = Tidegate::start_with(
        &destination("crm", &ds.url(), "[destination.handoff]\ntransform = \"{a: .a}\""),
        Extra {
            ingress: "max_body = \"2MiB\"",
            ..Extra::default()
        },
    )
    .await;
    // 10,000 levels, padded to 1 MiB.
    let deep = format!(
        "{}{}{}",
        "{\"a\":".repeat(10_000),
        format_args!("\"{}\"", "x".repeat((1 << 20) - 80_000)),
        "}".repeat(10_000)
    );
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("application/json", b"{\"a\": ".to_vec(), "not valid JSON"),
        ("text/plain", b"{\"a\": 1}".to_vec(), "text/plain"),
        ("application/json", Vec::new(), "empty"),
        ("application/json", deep.into_bytes(), "recursion"),
        ("application/json", b"{\"a\": \"\xff\xfe\"}".to_vec(), "UTF-8"),
    ];
    for (ct, body, says) in cases {
        let r = tg
            .client
            .post(tg.url("/crm/c"))
            .header("content-type", ct)
            .body(body)
            .send()
            .await
            .unwrap();
        let v = problem(r, 415, "unsupported_media_type").await;
        assert!(v["detail"].as_str().unwrap().contains(says), "{says}: {v}");
    }
    let health = tg.client.get(tg.admin_url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let id = tg.send("/crm/c", r#"{"a": 1, "b": 2}"#).await;
    tg.wait_message_state(&id, "delivered").await;
    assert_eq!(ds.seen().len(), 1);
    assert_eq!(&ds.seen()[0].body[..], br#"{"a":1}"#);
}

/// Programs that never end, recurse without bound or grow without bound.
const RUNAWAYS: [(&str, &str); 4] = [
    ("recursion", "def f: 1 + f; f"),
    ("repeat", "[repeat(.)] | length"),
    ("range", "[range(1e12)] | length"),
    ("doubling", "reduce range(64) as $i (\"xxxxxxxx\"; . + .)"),
];

/// One destination per (name, transform) program, and a well-behaved one,
/// `ok`, with `ok_extra` as its settings; all sending to `url`.
fn program_destinations(url: &str, programs: &[(&str, &str)], ok_extra: &str) -> String {
    let mut d: String = programs
        .iter()
        .map(|(name, prog)| destination(name, url, &format!("[destination.handoff]\ntransform = '''{prog}'''")))
        .collect();
    d.push_str(&destination("ok", url, ok_extra));
    d
}

#[tokio::test]
async fn runaway_programs_at_ingress_fail_their_message_and_nothing_else() {
    let ds = Downstream::start().await;
    let dests = program_destinations(&ds.url(), &RUNAWAYS, "[destination.handoff]\ntransform = \"{v: .v}\"");
    let tg = Tidegate::start(&dests).await;
    let tg_ref = &tg;
    let runaway = async {
        let all = RUNAWAYS.iter().map(|(name, _)| async move {
            let r = tg_ref.post(&format!("/{name}/x"), r#"{"v": 1}"#).await;
            let v = problem(r, 422, "transform_failed").await;
            assert!(v["detail"].as_str().unwrap().contains("stopped"), "{name}: {v}");
        });
        futures_util::future::join_all(all).await;
    };
    // Meanwhile another destination takes and delivers messages.
    let others = async {
        let mut ids = Vec::new();
        for i in 0..20 {
            ids.push(tg.send("/ok/x", &format!("{{\"v\": {i}}}")).await);
        }
        ids
    };
    let ((), ids) = tokio::join!(runaway, others);
    for id in &ids {
        tg.wait_message_state(id, "delivered").await;
    }
    assert_eq!(
        ds.seen().len(),
        20,
        "nothing of the runaway destinations was stored or sent"
    );
    let health = tg.client.get(tg.admin_url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    // The sandbox recovers: the same destinations still answer.
    let r = tg.post("/recursion/x", "{}").await;
    problem(r, 422, "transform_failed").await;
}

/// Sandboxed calls go to the workers in batches; a message that runs away
/// inside a batch fails alone: its batch's other calls are answered (those
/// before it by the worker that timed out, those after it by another, one
/// at a time), and every sound message is stored and delivered.
#[tokio::test]
async fn a_runaway_message_in_a_batch_fails_alone() {
    let ds = Downstream::start().await;
    // A general program (in the sandbox), which spins on request.
    let program = r#"if .spin then (def f: f; f) else {v: .v, at: "\(.v)"} end"#;
    let tg = Tidegate::start(&destination(
        "mixed",
        &ds.url(),
        &format!("[destination.handoff]\ntransform = '''{program}'''"),
    ))
    .await;
    let tg_ref = &tg;
    // Two spinning messages hold both of the destination's worker slots
    // while the rest queue up behind them, to go as one batch with a third
    // spinning message in its middle.
    let spin = || async move {
        let r = tg_ref.post("/mixed/x", r#"{"spin": true}"#).await;
        let v = problem(r, 422, "transform_failed").await;
        assert!(v["detail"].as_str().unwrap().contains("stopped"), "{v}");
    };
    let sound = |i: usize| async move {
        let r = tg_ref.post("/mixed/x", &format!("{{\"v\": {i}}}")).await;
        assert_eq!(r.status(), 202, "message {i}");
    };
    let first = futures_util::future::join(spin(), spin());
    let queued = async {
        let before = futures_util::future::join_all((0..10).map(sound));
        let after = futures_util::future::join_all((10..20).map(sound));
        futures_util::future::join3(before, spin(), after).await;
    };
    futures_util::future::join(first, queued).await;
    eventually(Duration::from_secs(30), "the 20 sound messages delivered", || async {
        ds.seen().len() >= 20
    })
    .await;
    let mut seen: Vec<String> = ds
        .seen()
        .iter()
        .map(|s| String::from_utf8(s.body.to_vec()).unwrap())
        .collect();
    seen.sort_by_key(|b| serde_json::from_str::<serde_json::Value>(b).unwrap()["v"].as_u64());
    let expected: Vec<String> = (0..20).map(|i| format!(r#"{{"v":{i},"at":"{i}"}}"#)).collect();
    assert_eq!(seen, expected);
}

#[tokio::test]
async fn a_transform_broken_by_a_reload_dead_letters_and_a_fixed_one_delivers_the_replay() {
    let ds = Downstream::start().await;
    let with = |transform: &str| {
        destination(
            "crm",
            &ds.url(),
            &format!("[destination.handoff]\ntransform = '''{transform}'''"),
        )
    };
    let tg = Tidegate::start(&with("{name: .n}")).await;
    let r = tg.admin_post("/v1/destinations/crm/pause", "").await;
    assert_eq!(r.status(), 200);
    let mut ids = Vec::new();
    for n in ["a", "b", "c"] {
        ids.push(tg.send("/crm/c", &format!("{{\"n\": \"{n}\"}}")).await);
    }
    // A bug (adding a number to a string), then each runaway kind: at
    // delivery they all dead-letter the message, reason transform_failed.
    tg.rewrite_destinations(&with("{name: (.n + 1)}"));
    assert_eq!(tg.admin_post("/v1/reload", "").await.status(), 200);
    assert_eq!(tg.admin_post("/v1/destinations/crm/resume", "").await.status(), 200);
    for id in &ids {
        tg.wait_message_state(id, "dead_lettered").await;
        let m = tg.message(id).await;
        assert_eq!(m["reason"], "transform_failed", "{m}");
        assert_eq!(m["last_error"]["kind"], "transform_failed", "{m}");
        assert!(m["last_error"]["detail"].as_str().unwrap().contains("transform"), "{m}");
    }
    assert!(ds.seen().is_empty(), "a failing transform never reaches the downstream");
    tg.rewrite_destinations(&with("{name: (.n | ascii_upcase)}"));
    assert_eq!(tg.admin_post("/v1/reload", "").await.status(), 200);
    let r = tg.admin_post("/v1/destinations/crm/dead-letters/replay", "{}").await;
    assert_eq!(r.status(), 200);
    for id in &ids {
        tg.wait_message_state(id, "delivered").await;
    }
    let mut bodies: Vec<String> = ds
        .seen()
        .iter()
        .map(|s| String::from_utf8(s.body.to_vec()).unwrap())
        .collect();
    bodies.sort();
    assert_eq!(bodies, [r#"{"name":"A"}"#, r#"{"name":"B"}"#, r#"{"name":"C"}"#]);
}

#[tokio::test]
async fn runaway_programs_at_delivery_dead_letter_their_message_and_nothing_else() {
    let ds = Downstream::start().await;
    let config = |programs: &[(&str, &str)]| program_destinations(&ds.url(), programs, "");
    let fine: Vec<(&str, &str)> = RUNAWAYS.iter().map(|(n, _)| (*n, ".")).collect();
    let tg = Tidegate::start(&config(&fine)).await;
    let mut ids = Vec::new();
    for (name, _) in RUNAWAYS {
        assert_eq!(
            tg.admin_post(&format!("/v1/destinations/{name}/pause"), "")
                .await
                .status(),
            200
        );
        ids.push(tg.send(&format!("/{name}/x"), "{}").await);
    }
    tg.rewrite_destinations(&config(&RUNAWAYS));
    assert_eq!(tg.admin_post("/v1/reload", "").await.status(), 200);
    for (name, _) in RUNAWAYS {
        assert_eq!(
            tg.admin_post(&format!("/v1/destinations/{name}/resume"), "")
                .await
                .status(),
            200
        );
    }
    let mut others = Vec::new();
    for i in 0..10 {
        others.push(tg.send("/ok/x", &format!("{{\"i\": {i}}}")).await);
    }
    for id in ids.iter().chain(&others) {
        eventually(Duration::from_secs(30), "every message settled", || async {
            let s = tg.message(id).await["state"].as_str().unwrap_or("").to_string();
            s == "delivered" || s == "dead_lettered"
        })
        .await;
    }
    for id in &ids {
        let m = tg.message(id).await;
        assert_eq!(m["state"], "dead_lettered", "{m}");
        assert_eq!(m["reason"], "transform_failed", "{m}");
    }
    for id in &others {
        assert_eq!(tg.message(id).await["state"], "delivered");
    }
    assert_eq!(ds.seen().len(), 10);
    let health = tg.client.get(tg.admin_url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
}

/// The README's handoff section is what `tidegate handoff test` prints:
/// every `$ tidegate …` line in its console blocks is run from the
/// repository root and its output compared with the lines under it; a
/// failure is shown with exit 1, a success with 0.
#[test]
fn the_readmes_handoff_examples_print_what_the_readme_shows() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let section = readme
        .split("\n## ")
        .find(|s| s.starts_with("Handoff"))
        .expect("README has a Handoff section");
    let mut env: Vec<(String, String)> = Vec::new();
    let mut checked = 0;
    for block in section.split("```console\n").skip(1) {
        let block = block.split("\n```").next().unwrap();
        // Commands, each with the output lines that follow it.
        let mut runs: Vec<(&str, Vec<&str>)> = Vec::new();
        for line in block.lines() {
            match line.strip_prefix("$ ") {
                Some(cmd) => runs.push((cmd, Vec::new())),
                None => runs.last_mut().expect("output before a command").1.push(line),
            }
        }
        for (cmd, expected) in runs {
            if let Some(var) = cmd.strip_prefix("export ") {
                let (k, v) = var.split_once('=').unwrap();
                env.push((k.into(), v.into()));
                continue;
            }
            let args: Vec<&str> = cmd.split_whitespace().collect();
            assert_eq!(args[..3], ["tidegate", "handoff", "test"], "{cmd}");
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_tidegate"))
                .args(&args[1..])
                .current_dir(root)
                .envs(env.clone())
                .output()
                .unwrap();
            // A CSV body's CRLF line ends are shown as plain line ends.
            let stdout = String::from_utf8(out.stdout).unwrap().replace("\r\n", "\n");
            assert_eq!(
                stdout.trim_end(),
                expected.join("\n").trim_end(),
                "{cmd}\nstderr: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let failed = stdout.starts_with("handoff failed");
            assert_eq!(out.status.code(), Some(if failed { 1 } else { 0 }), "{cmd}");
            checked += 1;
        }
    }
    assert!(checked >= 4, "the README shows its examples ({checked} commands)");
}

/// `tidegate handoff test` reads standard input, touches no storage, and
/// says plainly what is wrong with its arguments.
#[test]
fn handoff_test_reads_stdin_stores_nothing_and_names_what_is_wrong() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    file(&dir, "n.json", r#"{"type": "object", "required": ["n"]}"#);
    let config = file(
        &dir,
        "tidegate.toml",
        r#"[ingress]
listen = "127.0.0.1:0"
[storage]
path = "queue"
[[destination]]
name = "sink"
url = "http://127.0.0.1:9/in"
owner = "test"
[destination.handoff]
schema = "n.json"
transform = "{doubled: (.n * 2)}"
"#,
    );
    let run = |args: &[&str], stdin: &str| {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tidegate"))
            .args(["handoff", "test", "--config"])
            .arg(&config)
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        (
            out.status.code(),
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        )
    };
    let (code, out, err) = run(&["--destination", "sink", "--json"], r#"{"n": 21}"#);
    assert_eq!(code, Some(0), "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["request"]["body"], r#"{"doubled":42}"#);
    assert_eq!(v["request"]["url"], "http://127.0.0.1:9/in");
    let (code, out, _) = run(&["--destination", "sink", "-"], r#"{"m": 1}"#);
    assert_eq!(code, Some(1));
    assert!(
        out.contains("schema stage") && out.contains("\"n\" is a required property"),
        "{out}"
    );
    let (code, out, _) = run(&["--destination", "sink"], "not json");
    assert_eq!(code, Some(1));
    assert!(out.contains("parse stage"), "{out}");
    let (code, _, err) = run(&["--destination", "nowhere"], "{}");
    assert_eq!(code, Some(1));
    assert!(
        err.contains("no destination \"nowhere\"") && err.contains("sink"),
        "{err}"
    );
    let (code, _, err) = run(&["--destination", "sink", "/no/such/body.json"], "");
    assert_eq!(code, Some(1));
    assert!(err.contains("cannot read /no/such/body.json"), "{err}");
    assert!(!dir.path().join("queue").exists(), "handoff test created the queue");
}

/// The sandbox's workers (tidegate's child processes), by pid.
fn workers(tg: &Tidegate) -> std::collections::BTreeSet<u32> {
    let mut out = std::collections::BTreeSet::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", tg.pid())) else {
        return out;
    };
    for t in tasks.flatten() {
        if let Ok(children) = std::fs::read_to_string(t.path().join("children")) {
            out.extend(children.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
        }
    }
    out
}

/// A worker retires when it holds too much memory itself, not because the
/// tidegate that started it once did: Linux carries a parent's peak
/// resident size into its child across exec, so a worker that judged by
/// `getrusage`'s peak retired after every batch of a tidegate that had once
/// held a large body. Seen from outside, as the workers' pids.
/// (`sandbox::tests::memory_is_looked_at_after_growth_and_judged_by_what_is_resident`
/// covers the retiring itself.)
#[tokio::test]
async fn a_large_server_does_not_make_its_workers_retire_after_every_call() {
    let ds = Downstream::start().await;
    let tg = Tidegate::start_with(
        &format!(
            "{}{}",
            destination("big", &ds.url(), "[destination.queue]\nmax_bytes = \"1GiB\""),
            destination(
                "s",
                &ds.url(),
                "[destination.handoff]\ntransform = '.a as $x | {x: $x}'",
            )
        ),
        Extra {
            ingress: "max_body = \"200MiB\"",
            ..Extra::default()
        },
    )
    .await;
    // The server holds a 120 MiB body once: its peak passes any limit.
    let big = format!("\"{}\"", "x".repeat(120 << 20));
    let r = tg.post("/big/x", &big).await;
    assert_eq!(r.status(), 202);
    drop(big);
    let mut seen = std::collections::BTreeSet::new();
    for i in 0..8 {
        tg.send("/s/x", &format!("{{\"a\": {i}}}")).await;
        seen.extend(workers(&tg));
    }
    assert!(
        !seen.is_empty() && seen.len() <= 2,
        "light calls one after another are answered by the same worker or two, not one each: {seen:?}"
    );
}
