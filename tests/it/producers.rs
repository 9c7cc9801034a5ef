//! Producer identities: each `[[ingress.producer]]` token says who sent a
//! request and which destinations it may reach; refusals store nothing;
//! the name travels with the message into the admin API and the metrics;
//! tokens are reloadable and never logged; a public ingress without any
//! token refuses to start unless that is said on purpose.

use std::time::Duration;

use crate::support::{accepted_id, destination, eventually, Downstream, Extra, Tidegate};

const AGENT: &str = "agent-token-4f9c1e7a";
const AGENT_NEXT: &str = "agent-token-next-8b2d";
const BATCH: &str = "batch-token-0d3a55c2";
const ENV: &[(&str, &str)] = &[
    ("TG_TEST_AGENT_TOKEN", AGENT),
    ("TG_TEST_AGENT_TOKEN_NEXT", AGENT_NEXT),
    ("TG_TEST_BATCH_TOKEN", BATCH),
];

fn producers(agent_env: &str, agent_destinations: &str) -> String {
    format!(
        "[[ingress.producer]]\nname = \"extraction-agent\"\ntoken_env = \"{agent_env}\"\ndestinations = {agent_destinations}\n\
         [[ingress.producer]]\nname = \"batch\"\ntoken_env = \"TG_TEST_BATCH_TOKEN\"\n"
    )
}

async fn send(tg: &Tidegate, path: &str, token: Option<&str>) -> reqwest::Response {
    let mut req = tg.client.post(tg.url(path)).body("{\"n\":1}");
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send().await.unwrap()
}

async fn refused(r: reqwest::Response, status: u16, code: &str) {
    assert_eq!(r.status(), status, "expected {status} {code}");
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["code"], code, "{v}");
}

fn received(metrics: &str, dest: &str, producer: &str) -> Option<f64> {
    let series = format!("tidegate_messages_received_total{{destination=\"{dest}\",producer=\"{producer}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series.as_str()))
        .map(|v| v.trim().parse().unwrap())
}

#[tokio::test]
async fn each_producer_sends_only_where_its_token_allows_and_is_named_on_its_messages() {
    let ds = Downstream::start().await;
    let ingress = producers("TG_TEST_AGENT_TOKEN", "[\"crm\"]");
    let tg = Tidegate::start_with(
        &format!(
            "{}{}",
            destination("crm", &ds.url(), ""),
            destination("erp", &ds.url(), "")
        ),
        Extra {
            ingress: &ingress,
            env: ENV,
            ..Extra::default()
        },
    )
    .await;

    refused(send(&tg, "/crm/x", None).await, 401, "unauthorized").await;
    refused(send(&tg, "/crm/x", Some("not-a-token")).await, 401, "unauthorized").await;
    // Outside its list: 403, and the same for a destination that does not
    // exist, so the answer tells it nothing about what is configured.
    refused(send(&tg, "/erp/x", Some(AGENT)).await, 403, "forbidden_destination").await;
    refused(send(&tg, "/hidden/x", Some(AGENT)).await, 403, "forbidden_destination").await;
    // A producer with no list may send anywhere configured.
    refused(send(&tg, "/hidden/x", Some(BATCH)).await, 404, "unknown_destination").await;

    let r = send(&tg, "/crm/contacts", Some(AGENT)).await;
    assert_eq!(r.status(), 202);
    let from_agent = accepted_id(r).await;
    let r = send(&tg, "/erp/orders", Some(BATCH)).await;
    assert_eq!(r.status(), 202);
    let from_batch = accepted_id(r).await;

    eventually(Duration::from_secs(10), "both delivered", || async { ds.count() == 2 }).await;
    let paths: Vec<String> = ds.seen().iter().map(|s| s.path_and_query.clone()).collect();
    assert!(
        paths.contains(&"/contacts".to_string()) && paths.contains(&"/orders".to_string()),
        "{paths:?}"
    );
    assert_eq!(tg.message(&from_agent).await["producer"], "extraction-agent");
    assert_eq!(tg.message(&from_batch).await["producer"], "batch");

    // Only the accepted requests were stored and counted.
    assert_eq!(tg.destination("crm").await["counters"]["received"], 1);
    assert_eq!(tg.destination("erp").await["counters"]["received"], 1);
    let m = tg.metrics_text().await;
    assert_eq!(received(&m, "crm", "extraction-agent"), Some(1.0), "{m}");
    assert_eq!(received(&m, "erp", "batch"), Some(1.0), "{m}");
    assert_eq!(received(&m, "crm", "batch"), Some(0.0), "{m}");
    // A series for what a producer may not do would only be noise.
    assert_eq!(received(&m, "erp", "extraction-agent"), None, "{m}");

    let log = tg.log();
    for secret in [AGENT, AGENT_NEXT, BATCH] {
        assert!(!log.contains(secret), "a token reached the log");
    }
}

#[tokio::test]
async fn a_reload_rotates_a_producers_token_and_changes_its_destinations() {
    let ds = Downstream::start().await;
    let ingress = producers("TG_TEST_AGENT_TOKEN", "[\"crm\"]");
    let tg = Tidegate::start_with(
        &format!(
            "{}{}",
            destination("crm", &ds.url(), ""),
            destination("erp", &ds.url(), "")
        ),
        Extra {
            ingress: &ingress,
            env: ENV,
            ..Extra::default()
        },
    )
    .await;
    assert_eq!(send(&tg, "/crm/x", Some(AGENT)).await.status(), 202);

    let text = std::fs::read_to_string(&tg.config_path).unwrap();
    let rotated = text.replace(&ingress, &producers("TG_TEST_AGENT_TOKEN_NEXT", "[\"erp\"]"));
    assert_ne!(text, rotated);
    std::fs::write(&tg.config_path, rotated).unwrap();
    let r = tg.admin_post("/v1/reload", "").await;
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["restart_required"], serde_json::json!([]), "{v}");

    refused(send(&tg, "/crm/x", Some(AGENT)).await, 401, "unauthorized").await;
    refused(
        send(&tg, "/crm/x", Some(AGENT_NEXT)).await,
        403,
        "forbidden_destination",
    )
    .await;
    let r = send(&tg, "/erp/x", Some(AGENT_NEXT)).await;
    assert_eq!(r.status(), 202);
    let id = accepted_id(r).await;
    assert_eq!(tg.message(&id).await["producer"], "extraction-agent");
    let m = tg.metrics_text().await;
    assert_eq!(received(&m, "erp", "extraction-agent"), Some(1.0), "{m}");
}

#[tokio::test]
async fn the_shared_token_and_anonymous_senders_are_labelled_as_such() {
    let ds = Downstream::start().await;
    let tg = Tidegate::start_with(
        &destination("crm", &ds.url(), ""),
        Extra {
            ingress: "auth_token_env = \"TG_TEST_BATCH_TOKEN\"",
            env: ENV,
            ..Extra::default()
        },
    )
    .await;
    let r = send(&tg, "/crm/x", Some(BATCH)).await;
    assert_eq!(r.status(), 202);
    assert_eq!(tg.message(&accepted_id(r).await).await["producer"], "shared");
    assert_eq!(received(&tg.metrics_text().await, "crm", "shared"), Some(1.0));

    let open = Tidegate::start(&destination("crm", &ds.url(), "")).await;
    let r = send(&open, "/crm/x", None).await;
    assert_eq!(r.status(), 202);
    assert_eq!(
        open.message(&accepted_id(r).await).await["producer"],
        serde_json::Value::Null
    );
    assert_eq!(received(&open.metrics_text().await, "crm", "anonymous"), Some(1.0));
}

#[test]
fn a_public_ingress_with_no_token_refuses_to_start_unless_allowed_on_purpose() {
    let check = |sections: &str, env: &[(&str, &str)]| {
        let (dir, path) = crate::support::config_file(sections, &destination("crm", "http://127.0.0.1:9", ""));
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tidegate"))
            .args(["check", "--config"])
            .arg(&path)
            .envs(env.iter().copied())
            .output()
            .unwrap();
        drop(dir);
        (out.status.success(), String::from_utf8_lossy(&out.stderr).to_string())
    };
    let (ok, err) = check("[ingress]\nlisten = \"0.0.0.0:0\"\n", &[]);
    assert!(!ok, "a public ingress without tokens started");
    assert!(
        err.contains("tidegate.toml:2:") && err.contains("ingress.listen") && err.contains("allow_anonymous"),
        "{err}"
    );
    // The default listen is loopback: a config without [ingress] starts.
    let (ok, err) = check("[log]\nlevel = \"info\"\n", &[]);
    assert!(ok, "{err}");
    assert!(check("[ingress]\nlisten = \"0.0.0.0:0\"\nallow_anonymous = true\n", &[]).0);
    let with_producer =
        "[ingress]\nlisten = \"0.0.0.0:0\"\n[[ingress.producer]]\nname = \"a\"\ntoken_env = \"TG_TEST_AGENT_TOKEN\"\n";
    assert!(check(with_producer, ENV).0);
    // A producer whose token is not set cannot be admitted.
    let (ok, err) = check(with_producer, &[]);
    assert!(!ok && err.contains("TG_TEST_AGENT_TOKEN"), "{err}");
    // Two producers with one token: a request could not say who sent it.
    let (ok, err) = check(
        "[ingress]\nlisten = \"127.0.0.1:0\"\n[[ingress.producer]]\nname = \"a\"\ntoken_env = \"TG_TEST_AGENT_TOKEN\"\n\
         [[ingress.producer]]\nname = \"b\"\ntoken_env = \"TG_TEST_AGENT_TOKEN\"\n",
        ENV,
    );
    assert!(!ok && err.contains("same token"), "{err}");
    let (ok, err) = check(
        "[ingress]\nlisten = \"127.0.0.1:0\"\n[[ingress.producer]]\nname = \"a\"\ntoken_env = \"TG_TEST_AGENT_TOKEN\"\ndestinations = [\"nope\"]\n",
        ENV,
    );
    assert!(
        !ok && err.contains("ingress.producer") && err.contains("\"nope\""),
        "{err}"
    );
}
