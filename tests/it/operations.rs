//! The operations surface: metrics, logs, reload, admin security, the
//! operator CLI.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use crate::support::{cli, destination, eventually, Downstream, Extra, Reply, Tidegate};

/// `name{k="v",...}` → value, labels sorted by name.
fn parse_metrics(text: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let key = match series.split_once('{') {
            Some((name, labels)) => {
                let mut ls: Vec<&str> = labels
                    .trim_end_matches('}')
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .collect();
                ls.sort();
                format!("{name}{{{}}}", ls.join(","))
            }
            None => series.to_string(),
        };
        out.insert(key, value.parse().unwrap_or(f64::NAN));
    }
    out
}

async fn metrics(tg: &Tidegate) -> (String, BTreeMap<String, f64>) {
    let text = tg.metrics_text().await;
    let parsed = parse_metrics(&text);
    (text, parsed)
}

fn promtool() -> Option<std::path::PathBuf> {
    ["/usr/bin/promtool", "/usr/local/bin/promtool"]
        .iter()
        .map(std::path::PathBuf::from)
        .find(|p| p.exists())
}

#[tokio::test]
async fn metrics_count_exactly_what_happened_and_pass_promtool() {
    let ds = Downstream::start().await;
    ds.respond(|s, n| {
        let p = &s.path_and_query;
        if p.starts_with("/flaky") && n == 1 {
            Reply::status(503)
        } else if p.starts_with("/bad") {
            Reply::status(422)
        } else if p.starts_with("/logd") {
            Reply::status(500)
        } else if p.starts_with("/halter") {
            Reply::status(400)
        } else {
            Reply::status(200)
        }
    });
    let fast = "[destination.retry]\ninitial_backoff = \"20ms\"\njitter = false";
    let u = ds.url();
    let dests = [
        destination("ok", &format!("{u}/ok"), ""),
        destination("flaky", &format!("{u}/flaky"), fast),
        destination("bad", &format!("{u}/bad"), fast),
        destination("logd", &format!("{u}/logd"), "on_failure = \"log\""),
        destination("full", &format!("{u}/full"), "[destination.queue]\nmax_messages = 1"),
        destination("halter", &format!("{u}/halter"), "on_failure = \"halt\""),
    ]
    .concat();
    let tg = Tidegate::start(&dests).await;
    tg.admin_post("/v1/destinations/full/pause", "").await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(tg.send("/ok/x", "{}").await);
    }
    let flaky = tg.send("/flaky/x", "{}").await;
    let bad = tg.send("/bad/x", "{}").await;
    let logd = tg.send("/logd/x", "{}").await;
    tg.send("/full/x", "{}").await;
    assert_eq!(tg.post("/full/y", "{}").await.status(), 429);
    tg.send("/halter/x", "1234567").await;
    for id in &ids {
        tg.wait_message_state(id, "delivered").await;
    }
    tg.wait_message_state(&flaky, "delivered").await;
    tg.wait_message_state(&bad, "dead_lettered").await;
    tg.wait_message_state(&logd, "dropped").await;
    tg.wait_state("halter", "halted").await;

    let (text, m) = metrics(&tg).await;
    let get = |k: &str| *m.get(k).unwrap_or_else(|| panic!("no series {k} in\n{text}"));
    assert_eq!(
        get("tidegate_messages_received_total{destination=\"ok\",producer=\"anonymous\"}"),
        3.0
    );
    assert_eq!(get("tidegate_messages_delivered_total{destination=\"ok\"}"), 3.0);
    assert_eq!(
        get("tidegate_delivery_attempts_total{destination=\"ok\",outcome=\"success\"}"),
        3.0
    );
    assert_eq!(
        get("tidegate_delivery_attempts_total{destination=\"flaky\",outcome=\"http_5xx\"}"),
        1.0
    );
    assert_eq!(
        get("tidegate_delivery_attempts_total{destination=\"flaky\",outcome=\"success\"}"),
        1.0
    );
    assert_eq!(
        get("tidegate_delivery_attempts_total{destination=\"bad\",outcome=\"http_4xx\"}"),
        1.0
    );
    assert_eq!(
        get("tidegate_messages_dead_lettered_total{destination=\"bad\",reason=\"permanent_failure\"}"),
        1.0
    );
    assert_eq!(get("tidegate_dead_letter_depth{destination=\"bad\"}"), 1.0);
    assert_eq!(
        get("tidegate_messages_dropped_total{destination=\"logd\",reason=\"transient_failure\"}"),
        1.0
    );
    assert_eq!(
        get("tidegate_messages_rejected_total{destination=\"full\",reason=\"queue_full\"}"),
        1.0
    );
    assert_eq!(get("tidegate_queue_depth{destination=\"full\"}"), 1.0);
    assert_eq!(get("tidegate_queue_depth{destination=\"halter\"}"), 1.0);
    // Body bytes on SQLite; on JetStream what the stream stores (headers
    // too, read back from the servers), which backpressure.rs checks to the
    // byte against max_bytes.
    if crate::BACKEND == crate::support::Backend::Sqlite {
        assert_eq!(get("tidegate_queue_bytes{destination=\"full\"}"), 2.0);
        assert_eq!(get("tidegate_queue_bytes{destination=\"halter\"}"), 7.0);
    }
    assert_eq!(get("tidegate_queue_depth{destination=\"ok\"}"), 0.0);
    assert_eq!(
        get("tidegate_destination_state{destination=\"halter\",state=\"halted\"}"),
        1.0
    );
    assert_eq!(
        get("tidegate_destination_state{destination=\"halter\",state=\"running\"}"),
        0.0
    );
    assert_eq!(
        get("tidegate_destination_state{destination=\"full\",state=\"paused\"}"),
        1.0
    );
    assert_eq!(get("tidegate_in_flight{destination=\"ok\"}"), 0.0);
    assert!(get("tidegate_oldest_message_age_seconds{destination=\"full\"}") >= 0.0);
    assert_eq!(get("tidegate_oldest_message_age_seconds{destination=\"ok\"}"), 0.0);
    assert_eq!(
        get("tidegate_rate_limit_per_second{destination=\"ok\",kind=\"configured\"}"),
        100.0
    );
    assert_eq!(
        get("tidegate_delivery_duration_seconds_count{destination=\"flaky\"}"),
        2.0
    );
    assert_eq!(
        get("tidegate_end_to_end_latency_seconds_count{destination=\"ok\"}"),
        3.0
    );
    // One observation per stored message (eight); the rejection stored nothing.
    assert_eq!(get("tidegate_ingest_duration_seconds_count"), 8.0);
    // The SQLite journal's own commits and file; on JetStream the servers
    // sync, and an emptied queue stores nothing.
    if crate::BACKEND == crate::support::Backend::Sqlite {
        assert!(get("tidegate_journal_fsyncs_total") >= 1.0);
        assert!(get("tidegate_journal_disk_bytes") > 0.0);
    }
    assert_eq!(get("tidegate_build_info{version=\"0.1.0\"}"), 1.0);
    assert!(m.keys().any(|k| k.starts_with("process_resident_memory_bytes")));

    if let Some(promtool) = promtool() {
        let path = tg.dir.path().join("metrics.txt");
        std::fs::write(&path, &text).unwrap();
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!("{} check metrics < {}", promtool.display(), path.display()))
            .output()
            .unwrap();
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && said.trim().is_empty(),
            "promtool check metrics:\n{said}"
        );
    } else if std::env::var_os("CI").is_some() {
        panic!("promtool is not installed; .ci/run installs it");
    }
}

#[tokio::test]
async fn json_logs_parse_carry_message_ids_and_never_secrets() {
    let ds = Downstream::start().await;
    ds.respond(|_, _| Reply::status(422).body("rejected"));
    let secret_header = "header-secret-9f3a";
    let ingress_token = "ingress-secret-77c1";
    let admin_token = "admin-secret-41d0";
    let body_marker = "body-secret-5e2b";
    let tg = Tidegate::start_with(
        &destination(
            "crm",
            &format!("http://user:url-secret-0a1b@{}", ds.addr),
            "headers = { Authorization = \"Bearer ${CRM_TOKEN}\" }",
        ),
        Extra {
            ingress: "auth_token_env = \"IN_TOKEN\"",
            env: &[
                ("CRM_TOKEN", secret_header),
                ("IN_TOKEN", ingress_token),
                ("ADMIN_TOKEN", admin_token),
            ],
            log_json: true,
            admin: "token_env = \"ADMIN_TOKEN\"",
            ..Extra::default()
        },
    )
    .await;
    let r = tg
        .client
        .post(tg.url("/crm/x"))
        .bearer_auth(ingress_token)
        .body(format!("{{\"note\":\"{body_marker}\"}}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let id = crate::support::accepted_id(r).await;
    eventually(Duration::from_secs(10), "the dead letter", || async {
        tg.client
            .get(tg.admin_url(&format!("/v1/messages/{id}")))
            .bearer_auth(admin_token)
            .send()
            .await
            .unwrap()
            .json::<serde_json::Value>()
            .await
            .unwrap()["state"]
            == "dead_lettered"
    })
    .await;
    // The downstream did get the configured secret header.
    assert_eq!(
        ds.seen()[0].header("authorization"),
        Some(format!("Bearer {secret_header}"))
    );
    // Also answers with the redacted URL.
    let d: serde_json::Value = tg
        .client
        .get(tg.admin_url("/v1/destinations/crm"))
        .bearer_auth(admin_token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(!d["url"].as_str().unwrap().contains("url-secret"));

    let log = tg.log();
    let mut saw_id = false;
    for line in log.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v["level"].is_string() && v["timestamp"].is_string(), "{line}");
        if line.contains(&id) && line.contains("dead-lettered") {
            saw_id = true;
        }
    }
    assert!(saw_id, "the dead-letter log line carries the message id:\n{log}");
    for secret in [secret_header, ingress_token, admin_token, body_marker, "url-secret"] {
        assert!(!log.contains(secret), "{secret} leaked into the log");
    }
}

#[tokio::test]
async fn a_connect_error_shows_no_url_credentials() {
    let tg = Tidegate::start(&destination(
        "crm",
        "http://user:url-secret-0a1b@127.0.0.1:1/api",
        "[destination.retry]\nmax_attempts = 1",
    ))
    .await;
    let id = tg.send("/crm/x", "{}").await;
    tg.wait_message_state(&id, "dead_lettered").await;
    let m = tg.message(&id).await;
    assert_eq!(m["last_error"]["kind"], "connect_error");
    let shown = format!("{m} {} {}", tg.destination("crm").await, tg.log());
    assert!(!shown.contains("url-secret"), "{shown}");
}

#[tokio::test]
async fn admin_calls_need_the_token_when_one_is_configured_but_probes_do_not() {
    let tg = Tidegate::start_with(
        &destination("crm", "http://127.0.0.1:1", ""),
        Extra {
            admin: "token_env = \"ADMIN_TOKEN\"",
            env: &[("ADMIN_TOKEN", "s3cret")],
            ..Extra::default()
        },
    )
    .await;
    for path in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(
            tg.client.get(tg.admin_url(path)).send().await.unwrap().status(),
            200,
            "{path}"
        );
    }
    for (method, path) in [
        (reqwest::Method::GET, "/v1/destinations"),
        (reqwest::Method::GET, "/v1/destinations/crm"),
        (reqwest::Method::POST, "/v1/destinations/crm/pause"),
        (reqwest::Method::POST, "/v1/reload"),
        (reqwest::Method::DELETE, "/v1/destinations/crm/dead-letters"),
    ] {
        let r = tg
            .client
            .request(method.clone(), tg.admin_url(path))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{method} {path} without a token");
        assert_eq!(r.json::<serde_json::Value>().await.unwrap()["code"], "unauthorized");
        let r = tg
            .client
            .request(method.clone(), tg.admin_url(path))
            .bearer_auth("s3creT")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{method} {path} with a wrong token");
    }
    let r = tg
        .client
        .get(tg.admin_url("/v1/destinations"))
        .bearer_auth("s3cret")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // The CLI's refusal says what to set.
    let (ok, _, err) = cli(&tg, &["status"]);
    assert!(
        !ok && err.contains("401 unauthorized") && err.contains("TIDEGATE_ADMIN_TOKEN"),
        "{err}"
    );
}

#[test]
fn a_non_loopback_admin_listener_without_a_token_refuses_to_start() {
    let (dir, cfg) = crate::support::config_file(
        "[admin]\nlisten = \"0.0.0.0:0\"\n",
        &destination("crm", "http://127.0.0.1:1", ""),
    );
    let out = Command::new(env!("CARGO_BIN_EXE_tidegate"))
        .args(["serve", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("tidegate.toml:2:10") && err.contains("token_env"), "{err}");
    assert!(!dir.path().join("data").exists(), "nothing was started");
}

#[tokio::test]
async fn reload_changes_the_rate_of_a_queue_already_holding_messages() {
    let ds = Downstream::start().await;
    // Adaptive (the default): with no 429 seen, a raise applies at once.
    let slow = "[destination.rate_limit]\nrate = \"2/s\"\nburst = 1";
    let tg = Tidegate::start(&destination("crm", &ds.url(), slow)).await;
    tg.admin_post("/v1/destinations/crm/pause", "").await;
    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(tg.send(&format!("/crm/{i}"), "{}").await);
    }
    tg.rewrite_destinations(&destination(
        "crm",
        &ds.url(),
        "[destination.rate_limit]\nrate = \"200/s\"\nburst = 1",
    ));
    let r = tg.admin_post("/v1/reload", "").await;
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["changed"], serde_json::json!(["crm"]));
    let rl = &tg.destination("crm").await["rate_limit"];
    assert_eq!(rl["configured_per_second"], 200.0);
    assert_eq!(rl["effective_per_second"], 200.0, "{rl}");
    tg.admin_post("/v1/destinations/crm/resume", "").await;
    for id in &ids {
        tg.wait_message_state(id, "delivered").await;
    }
    // At the old 2/s, 20 messages need 9.5 s at least; the busiest second
    // shows the new rate at work.
    let times: Vec<_> = ds.seen().iter().map(|s| s.at).collect();
    let busiest = times
        .iter()
        .map(|t| {
            times
                .iter()
                .filter(|u| **u >= *t && **u < *t + Duration::from_secs(1))
                .count()
        })
        .max()
        .unwrap();
    assert!(
        busiest > 3,
        "only {busiest} deliveries in the busiest second: the old rate still applies"
    );
}

#[tokio::test]
async fn an_invalid_reload_changes_nothing_and_says_where() {
    let ds = Downstream::start().await;
    let mut tg = Tidegate::start(&destination("crm", &ds.url(), "")).await;
    std::fs::write(
        &tg.config_path,
        "[ingress]\nlisten = \"127.0.0.1:0\"\nmax_body = \"lots\"\n",
    )
    .unwrap();
    let r = tg.admin_post("/v1/reload", "").await;
    assert_eq!(r.status(), 400);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["code"], "invalid_config");
    let detail = v["detail"].as_str().unwrap();
    assert!(
        detail.contains("tidegate.toml:3:12") && detail.contains("ingress.max_body"),
        "{detail}"
    );
    // Still serving the old config.
    tg.send("/crm/x", "{}").await;
    // SIGHUP with the same bad file: logged, nothing changes, still up.
    crate::support::signal(tg.pid(), "HUP");
    eventually(Duration::from_secs(5), "the refusal in the log", || async {
        tg.log().contains("reload refused")
    })
    .await;
    tg.send("/crm/y", "{}").await;
    assert!(tg.terminate().await.success());
}

#[tokio::test]
async fn reload_adds_destinations_and_refuses_to_remove_one_holding_messages() {
    let ds = Downstream::start().await;
    let tg = Tidegate::start(&format!(
        "{}{}",
        destination("keep", &ds.url(), ""),
        destination("busy", &ds.url(), "")
    ))
    .await;
    tg.admin_post("/v1/destinations/busy/pause", "").await;
    tg.send("/busy/x", "{}").await;
    // Removing "busy" while it holds a message is refused.
    tg.rewrite_destinations(&destination("keep", &ds.url(), ""));
    let r = tg.admin_post("/v1/reload", "").await;
    assert_eq!(r.status(), 409);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["code"], "reload_refused");
    assert!(v["detail"].as_str().unwrap().contains("busy"));
    assert_eq!(tg.destination("busy").await["queue"]["depth"], 1);
    // Adding one works, through SIGHUP too.
    tg.rewrite_destinations(&format!(
        "{}{}{}",
        destination("keep", &ds.url(), ""),
        destination("busy", &ds.url(), ""),
        destination("fresh", &ds.url(), "")
    ));
    crate::support::signal(tg.pid(), "HUP");
    eventually(Duration::from_secs(5), "the new destination", || async {
        tg.post("/fresh/x", "{}").await.status() == 202
    })
    .await;
    // Once drained, "busy" can go.
    tg.admin_post("/v1/destinations/busy/resume", "").await;
    // Drained means nothing queued and nothing in flight: the depth drops
    // when the acknowledgement commits, a moment before the worker lets go.
    eventually(Duration::from_secs(10), "busy to drain", || async {
        let busy = tg.destination("busy").await;
        busy["queue"]["depth"] == 0 && busy["queue"]["in_flight"] == 0
    })
    .await;
    tg.rewrite_destinations(&format!(
        "{}{}",
        destination("keep", &ds.url(), ""),
        destination("fresh", &ds.url(), "")
    ));
    let r = tg.admin_post("/v1/reload", "").await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap()["removed"],
        serde_json::json!(["busy"])
    );
    assert_eq!(tg.post("/busy/x", "{}").await.status(), 404);
    // Its series are gone from /metrics; the others stay.
    let m = tg.metrics_text().await;
    assert!(!m.contains("destination=\"busy\""), "{m}");
    assert!(m.contains("tidegate_queue_depth{destination=\"keep\"}"), "{m}");
}

#[tokio::test]
async fn restart_required_is_reported_only_while_a_setting_differs_from_the_one_in_use() {
    let ds = Downstream::start().await;
    let tg = Tidegate::start(&destination("crm", &ds.url(), "")).await;
    let original = std::fs::read_to_string(&tg.config_path).unwrap();
    let moved = original.replacen("listen = \"127.0.0.1:0\"", "listen = \"127.0.0.1:1\"", 1);
    assert_ne!(moved, original);
    std::fs::write(&tg.config_path, &moved).unwrap();
    let v: serde_json::Value = tg.admin_post("/v1/reload", "").await.json().await.unwrap();
    assert_eq!(v["restart_required"], serde_json::json!(["ingress.listen"]), "{v}");
    // Set back to what the listener really uses: nothing to restart for.
    std::fs::write(&tg.config_path, &original).unwrap();
    let v: serde_json::Value = tg.admin_post("/v1/reload", "").await.json().await.unwrap();
    assert_eq!(v["restart_required"], serde_json::json!([]), "{v}");
}

#[tokio::test]
async fn the_operator_cli_drives_a_live_instance() {
    let ds = Downstream::start().await;
    ds.refuse_under("/bad", 400);
    let u = ds.url();
    let tg = Tidegate::start(&format!(
        "{}{}{}",
        destination("crm", &format!("{u}/ok"), ""),
        destination("erp", &format!("{u}/bad"), "on_failure = \"halt\""),
        destination("wh", &format!("{u}/bad"), "")
    ))
    .await;
    let (ok, out, _) = cli(&tg, &["pause", "crm"]);
    assert!(ok);
    assert!(out.contains("crm: paused"), "{out}");
    tg.send("/crm/x", "{}").await;
    tg.send("/erp/x", "{}").await;
    let dead = tg.send("/wh/x", "{}").await;
    tg.wait_state("erp", "halted").await;
    tg.wait_message_state(&dead, "dead_lettered").await;

    let (ok, out, _) = cli(&tg, &["status", "--interval", "100ms"]);
    assert!(ok);
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("DESTINATION"), "{out}");
    let row = |name: &str| lines.iter().find(|l| l.starts_with(name)).copied().unwrap_or_default();
    assert!(row("crm ").contains("paused"), "{out}");
    assert!(row("erp ").contains("halted"), "{out}");
    assert!(row("wh ").contains("running"), "{out}");
    let (ok, out, _) = cli(&tg, &["status", "--interval", "100ms", "--json"]);
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["destinations"].as_array().unwrap().len(), 3);

    let (ok, out, _) = cli(&tg, &["dead-letters", "list", "wh"]);
    assert!(ok && out.contains(&dead) && out.contains("permanent_failure"), "{out}");
    let (ok, out, _) = cli(&tg, &["message", &dead]);
    assert!(ok && out.contains("dead_lettered"), "{out}");
    let (ok, out, _) = cli(&tg, &["message", &dead, "--json"]);
    assert!(ok);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&out).unwrap()["id"],
        dead.as_str()
    );
    let (ok, out, _) = cli(&tg, &["dead-letters", "replay", "wh", "--id", &dead]);
    assert!(ok && out.contains("replayed 1"), "{out}");
    tg.wait_message_state(&dead, "dead_lettered").await;
    // Purge asks first; with no terminal to ask on, it needs --yes.
    let (ok, _, err) = cli(&tg, &["dead-letters", "purge", "wh"]);
    assert!(
        !ok && err.contains("purge 1 dead letter of destination wh") && err.contains("--yes"),
        "{err}"
    );
    assert_eq!(tg.destination("wh").await["queue"]["dead_letters"], 1);
    let (ok, out, _) = cli(&tg, &["dead-letters", "purge", "wh", "--yes"]);
    assert!(ok && out.contains("purged 1"), "{out}");
    let (ok, out, _) = cli(&tg, &["resume", "erp", "--skip-head"]);
    assert!(ok && out.contains("erp: running"), "{out}");

    // Failures exit non-zero with the server's problem detail.
    let (ok, _, err) = cli(&tg, &["pause", "nope"]);
    assert!(!ok);
    assert!(err.contains("404 unknown_destination") && err.contains("nope"), "{err}");
    // A malformed id is a bad request wherever it is given.
    let (ok, _, err) = cli(&tg, &["message", "not-an-id"]);
    assert!(!ok && err.contains("400 invalid_request"), "{err}");
    let (ok, _, err) = cli(&tg, &["dead-letters", "replay", "wh", "--id", "not-an-id"]);
    assert!(!ok && err.contains("400 invalid_request"), "{err}");
    // A well-formed id that names nothing is not found.
    let unknown = format!("{}ffffff", &dead[..dead.len() - 6]);
    let (ok, _, err) = cli(&tg, &["message", &unknown]);
    assert!(!ok && err.contains("404 not_found"), "{err}");
    // Reload speaks to a person unless asked for JSON.
    let (ok, out, _) = cli(&tg, &["reload"]);
    assert!(
        ok && out.starts_with("reloaded: added none; removed none; changed none"),
        "{out}"
    );
    let (ok, out, _) = cli(&tg, &["reload", "--json"]);
    assert!(
        ok && serde_json::from_str::<serde_json::Value>(&out).unwrap()["reloaded"] == true,
        "{out}"
    );
    // A reader that stops early is no panic.
    let mut child = Command::new(env!("CARGO_BIN_EXE_tidegate"))
        .args(["status", "--json", "--interval", "10ms", "--admin", &tg.admin_url("")])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take()); // the reader is gone before anything is written
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && !err.contains("panicked"), "{err}");
}

#[test]
fn operator_commands_say_what_went_wrong_and_what_to_do() {
    // Nothing listens on a port just let go of.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dead = format!("http://127.0.0.1:{port}");
    let out = Command::new(env!("CARGO_BIN_EXE_tidegate"))
        .args(["healthcheck", "--admin", &dead])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.to_lowercase().contains("connection refused"),
        "{err}"
    );
    // Help text for every dead-letter command.
    for sub in ["list", "replay", "purge"] {
        let out = Command::new(env!("CARGO_BIN_EXE_tidegate"))
            .args(["dead-letters", "--help"])
            .output()
            .unwrap();
        let help = String::from_utf8_lossy(&out.stdout);
        let line = help
            .lines()
            .find(|l| l.trim_start().starts_with(sub))
            .unwrap_or_default();
        assert!(line.trim().len() > sub.len() + 5, "no help for {sub}: {help}");
    }
}

/// A pause or resume the admin API acknowledged is the state read back at
/// once, every time. In cluster mode each instance also applies the shared
/// records every half second; one read just before a change here must not
/// undo the change.
#[tokio::test]
async fn an_acknowledged_pause_or_resume_is_never_undone_by_an_older_record() {
    let ds = Downstream::start().await;
    let tg = Tidegate::start(&destination("crm", &ds.url(), "")).await;
    for round in 0..150 {
        for (action, state) in [("pause", "paused"), ("resume", "running")] {
            let r = tg.admin_post(&format!("/v1/destinations/crm/{action}"), "").await;
            assert_eq!(r.status(), 200, "round {round}: {action}");
            let read = tg.destination("crm").await;
            assert_eq!(read["state"], state, "round {round}: right after {action}: {read}");
        }
    }
}
