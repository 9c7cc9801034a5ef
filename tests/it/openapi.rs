//! `docs/openapi.yaml` against the running code: every route the admin
//! router has is described and every described operation is routed; every
//! problem code is listed; then schemathesis fuzzes both listeners of a live
//! tidegate from the description (no 5xx, no answer the description does
//! not allow, nothing stored from a refused request, the process healthy).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::support::{destination, eventually, problem, Downstream, Reply, Tidegate};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A tool `scripts/install-test-deps.sh` puts in the project's virtualenv.
fn ci_tool(name: &str) -> PathBuf {
    let p = repo().join("target/ci-tools/bin").join(name);
    assert!(
        p.exists(),
        "{} is missing: run scripts/install-test-deps.sh (the README's test command does)",
        p.display()
    );
    p
}

/// The description, as JSON (PyYAML from the same virtualenv reads it).
fn spec() -> serde_json::Value {
    let out = Command::new(ci_tool("python"))
        .args([
            "-c",
            "import json, sys, yaml; json.dump(yaml.safe_load(open(sys.argv[1])), sys.stdout)",
        ])
        .arg(repo().join("docs/openapi.yaml"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// (method, path, tag) of every described operation.
fn operations(spec: &serde_json::Value) -> BTreeSet<(String, String, String)> {
    let mut ops = BTreeSet::new();
    for (path, item) in spec["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            if method == "parameters" {
                continue;
            }
            let tag = op["tags"][0].as_str().unwrap_or("").to_string();
            ops.insert((method.to_uppercase(), path.clone(), tag));
        }
    }
    ops
}

/// The admin router's routes, read from its source: `.route("PATH", get(..).delete(..))`.
fn admin_routes() -> BTreeSet<(String, String)> {
    let src = std::fs::read_to_string(repo().join("src/admin/mod.rs")).unwrap();
    let mut routes = BTreeSet::new();
    for line in src.lines().map(str::trim).filter(|l| l.starts_with(".route(\"")) {
        let path = line.split('"').nth(1).unwrap().to_string();
        let handlers = &line[line.find(',').unwrap()..];
        for m in ["get", "post", "put", "patch", "delete"] {
            if handlers.contains(&format!("{m}(")) {
                routes.insert((m.to_uppercase(), path.clone()));
            }
        }
    }
    assert!(routes.len() >= 10, "read the router: {routes:?}");
    routes
}

#[tokio::test]
async fn the_description_matches_the_router_and_the_problem_codes() {
    let spec = spec();
    assert_eq!(spec["openapi"], "3.1.0");
    let ops = operations(&spec);
    // Admin: the same set of (method, path) both ways.
    let described: BTreeSet<(String, String)> = ops
        .iter()
        .filter(|(_, _, tag)| tag == "admin")
        .map(|(m, p, _)| (m.clone(), p.clone()))
        .collect();
    assert_eq!(
        described,
        admin_routes(),
        "admin operations in docs/openapi.yaml vs the router"
    );
    // Ingress: the methods described are the ones a live instance allows.
    let ds = Downstream::start().await;
    let tg = Tidegate::start(&destination("crm", &ds.url(), "")).await;
    let r = tg.client.get(tg.url("/crm/x")).send().await.unwrap();
    assert_eq!(r.status(), 405);
    let allow: BTreeSet<String> = r.headers()["allow"]
        .to_str()
        .unwrap()
        .split(',')
        .map(|m| m.trim().to_string())
        .collect();
    for path in ["/{destination}", "/{destination}/{path}"] {
        let methods: BTreeSet<String> = ops
            .iter()
            .filter(|(_, p, tag)| p == path && tag == "ingress")
            .map(|(m, _, _)| m.clone())
            .collect();
        assert_eq!(methods, allow, "{path}");
    }
    // Every described admin operation is routed on a live instance: not the
    // fallback's 404 nor a 405.
    for (method, path) in &described {
        let url = tg.admin_url(
            &path
                .replace("{name}", "crm")
                .replace("{id}", "000000000000000000000000"),
        );
        let r = tg.client.request(method.parse().unwrap(), url).send().await.unwrap();
        let status = r.status().as_u16();
        let body = r.text().await.unwrap();
        assert!(
            status != 405 && !body.contains("no such admin endpoint"),
            "{method} {path}: {status} {body}"
        );
    }
    // Every problem code the code can answer is listed, and nothing else.
    let in_code = crate::reference::problem_codes();
    let listed: BTreeSet<String> = spec["components"]["schemas"]["Problem"]["properties"]["code"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect();
    assert_eq!(listed, in_code, "problem codes in docs/openapi.yaml vs src/problem.rs");
}

/// What the downstream answers, so that a relayed answer (`Prefer: wait`)
/// is told apart from tidegate's own.
const RELAYED: &str = r#"{"relayed":true}"#;

/// Runs schemathesis against one listener; returns the HAR's entries.
fn fuzz(config: &Path, tag: &str, url: &str, dir: &Path) -> Vec<serde_json::Value> {
    let report = dir.join(tag);
    let out = Command::new(ci_tool("schemathesis"))
        .arg("--config-file")
        .arg(config)
        .arg("run")
        .arg(repo().join("docs/openapi.yaml"))
        .args(["--url", url, "--include-tag", tag])
        .args(["--checks", "all"])
        // Emptying a collection (DELETE .../dead-letters) leaves the
        // collection: "deleted resource still available" does not apply.
        .args(["--exclude-checks", "use_after_free"])
        // One worker: under threads, Python 3.11's ast.parse (which hypothesis
        // calls to describe its filters) fails with "AST constructor recursion
        // depth mismatch", an error of the tool, not of tidegate.
        .args(["--max-examples", "40", "--seed", "20261201", "--workers", "1"])
        .args(["--request-timeout", "10"])
        .args(["--report", "har", "--report-dir"])
        .arg(&report)
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let summary: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains("generated") || l.contains("Tested:") || l.contains("Selected:"))
        .collect();
    eprintln!("schemathesis {tag}: {}", summary.join(" / "));
    assert!(
        out.status.success(),
        "schemathesis found failures on the {tag} listener:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let har = std::fs::read_dir(&report)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("har")))
        .expect("a HAR report");
    let har: serde_json::Value = serde_json::from_slice(&std::fs::read(har).unwrap()).unwrap();
    har["log"]["entries"].as_array().unwrap().clone()
}

fn received_total(metrics: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("tidegate_messages_received_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[tokio::test]
async fn schemathesis_finds_nothing_on_either_listener() {
    let ds = Downstream::start().await;
    ds.respond(|s, _| {
        if s.path_and_query.starts_with("/dl") {
            Reply::status(400)
        } else {
            Reply::status(200)
                .header("content-type", "application/json")
                .body(RELAYED)
        }
    });
    let dests = [
        destination("crm", &format!("{}/crm", ds.url()), ""),
        destination(
            "erp",
            &format!("{}/erp", ds.url()),
            "on_failure = \"halt\"\naccept_while_halted = true",
        ),
        destination("dl", &format!("{}/dl", ds.url()), ""),
    ]
    .concat();
    let tg = Tidegate::start(&dests).await;
    // Dead letters for the admin API to list, page and replay.
    let mut seeded = Vec::new();
    for i in 0..5 {
        seeded.push(tg.send(&format!("/dl/seed/{i}"), "{}").await);
    }
    for id in &seeded {
        tg.wait_message_state(id, "dead_lettered").await;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("schemathesis.toml");
    std::fs::write(
        &config,
        r#"
[dictionaries.producer_destinations]
values = ["crm", "erp"]
[dictionaries.admin_destinations]
values = ["crm", "erp", "dl"]
[parameters]
"path.destination" = { dictionary = "producer_destinations", probability = 0.8 }
"path.name" = { dictionary = "admin_destinations", probability = 0.8 }
# A valid request may meet a state that refuses it: a reused
# Idempotency-Key (422), a full queue (429), a name not configured (404).
[checks.positive_data_acceptance]
expected-statuses = ["2xx", "401", "403", "404", "409", "422", "429"]
"#,
    )
    .unwrap();

    let ingress = fuzz(&config, "ingress", &tg.url(""), dir.path());
    let admin = fuzz(&config, "admin", &tg.admin_url(""), dir.path());

    let statuses = |entries: &[serde_json::Value]| {
        let mut by: BTreeMap<u64, usize> = BTreeMap::new();
        for e in entries {
            *by.entry(e["response"]["status"].as_u64().unwrap()).or_default() += 1;
        }
        by
    };
    eprintln!(
        "requests: ingress {} {:?}; admin {} {:?}",
        ingress.len(),
        statuses(&ingress),
        admin.len(),
        statuses(&admin)
    );
    assert!(ingress.len() >= 200 && admin.len() >= 200, "the fuzzer ran");

    // Nothing stored from a refused request: every message tidegate counts
    // is one it acknowledged (202), or one whose delivery it waited for and
    // relayed (Prefer: wait), or a seeded one.
    let acknowledged = ingress
        .iter()
        .filter(|e| {
            let status = e["response"]["status"].as_u64();
            let body = e["response"]["content"]["text"].as_str().unwrap_or("");
            status == Some(202) || (status == Some(200) && body == RELAYED)
        })
        .count() as u64;
    let stored = received_total(&tg.metrics_text().await);
    assert_eq!(
        stored,
        acknowledged + seeded.len() as u64,
        "messages stored vs acknowledged"
    );
    // And the process is healthy, with nothing panicked.
    let r = tg.client.get(tg.admin_url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    eventually(Duration::from_secs(5), "readyz", || async {
        tg.client
            .get(tg.admin_url("/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    assert!(!tg.log().contains("panicked"), "{}", tg.log());
}

/// What the fuzzer found, each kept from coming back.
#[tokio::test]
async fn the_fuzzers_findings_stay_fixed() {
    let ds = Downstream::start().await;
    let tg = Tidegate::start(&destination("crm", &ds.url(), "")).await;
    let c = &tg.client;
    // A query axum cannot read was text/plain.
    let r = c
        .post(tg.admin_url("/v1/destinations/crm/resume?skip_head=null"))
        .send()
        .await
        .unwrap();
    problem(r, 400, "invalid_request").await;
    // A page size out of range (or past u64) was a text/plain 400, or clamped.
    for limit in ["-1", "0", "1001", "46024526332203401216"] {
        let r = c
            .get(tg.admin_url(&format!("/v1/destinations/crm/dead-letters?limit={limit}")))
            .send()
            .await
            .unwrap();
        problem(r, 400, "invalid_request").await;
    }
    // A method a path does not take was an empty 405.
    let r = c.get(tg.admin_url("/v1/reload")).send().await.unwrap();
    assert_eq!(r.headers()["allow"], "POST");
    problem(r, 405, "method_not_allowed").await;
    // `"ids": null` replayed every dead letter.
    let r = tg
        .admin_post("/v1/destinations/crm/dead-letters/replay", r#"{"ids": null}"#)
        .await;
    problem(r, 400, "invalid_request").await;
    // A well-formed id of another instance was a 400, now "names nothing".
    let r = c
        .get(tg.admin_url("/v1/messages/000000000000000000000000"))
        .send()
        .await
        .unwrap();
    problem(r, 404, "not_found").await;
    let r = c.get(tg.admin_url("/v1/messages/0")).send().await.unwrap();
    problem(r, 400, "invalid_request").await;
}
