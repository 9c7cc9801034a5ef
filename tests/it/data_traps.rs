//! The data traps a new user fell into: a reused Idempotency-Key that
//! silently dropped a new body, and a relative `storage.path` that opened
//! a new, empty queue when tidegate was started from another directory.

use std::path::Path;

use crate::support::{destination, Downstream, Extra, Tidegate};

#[tokio::test]
async fn a_reused_idempotency_key_with_another_body_is_refused_and_stores_nothing() {
    let ds = Downstream::start().await;
    let tg = Tidegate::start(&destination("crm", &ds.url(), "")).await;
    let post = |key: &'static str, path: &'static str, body: &'static str| {
        tg.client
            .post(tg.url(path))
            .header("idempotency-key", key)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let r = post("order 42", "/crm/orders", r#"{"qty":1}"#).await.unwrap();
    assert_eq!(r.status(), 202, "a key with a space is a valid key");
    let first: serde_json::Value = r.json().await.unwrap();
    // The same request again: a repeat, answered with the first id.
    let r = post("order 42", "/crm/orders", r#"{"qty":1}"#).await.unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        (v["id"].clone(), v["duplicate"].clone()),
        (first["id"].clone(), true.into())
    );
    // The quoted structured-field form is the same key.
    let r = post("\"order 42\"", "/crm/orders", r#"{"qty":1}"#).await.unwrap();
    assert_eq!(r.status(), 200);
    // The same key for another body, or another path: refused.
    for (path, body) in [("/crm/orders", r#"{"qty":2}"#), ("/crm/other", r#"{"qty":1}"#)] {
        let r = post("order 42", path, body).await.unwrap();
        assert_eq!(r.status(), 422, "{path} {body}");
        assert_eq!(r.headers()["content-type"], "application/problem+json");
        let p: serde_json::Value = r.json().await.unwrap();
        assert_eq!(p["code"], "idempotency_key_reused");
        assert!(
            p["detail"].as_str().unwrap().contains(first["id"].as_str().unwrap()),
            "{p}"
        );
    }
    // A key outside the rule gets the rule.
    let r = post("tab\there", "/crm/orders", "{}").await.unwrap();
    assert_eq!(r.status(), 400);
    let p: serde_json::Value = r.json().await.unwrap();
    assert!(p["detail"].as_str().unwrap().contains("0x20 to 0x7E"), "{p}");
    crate::support::eventually(
        std::time::Duration::from_secs(10),
        "the one message delivered",
        || async { ds.count() >= 1 },
    )
    .await;
    let d = tg.destination("crm").await;
    assert_eq!(d["counters"]["received"], 1, "{d}");
    assert_eq!(d["queue"]["depth"], 0, "{d}");
    assert_eq!(ds.count(), 1);
    assert_eq!(ds.seen()[0].body, r#"{"qty":1}"#);
    let m = tg.metrics_text().await;
    assert!(
        m.contains(r#"tidegate_messages_rejected_total{destination="crm",reason="idempotency_key_reused"} 2"#),
        "{m}"
    );
}

#[tokio::test]
async fn a_relative_storage_path_is_the_same_queue_from_any_working_directory() {
    let somewhere = tempfile::tempdir().unwrap();
    let mut tg = Tidegate::start_with(
        // Nothing listens there: the message stays queued.
        &destination(
            "crm",
            "http://127.0.0.1:1",
            "[destination.retry]\ninitial_backoff = \"1h\"\nmax_backoff = \"1h\"",
        ),
        Extra {
            data: Some(Path::new("queue")),
            cwd: Some(somewhere.path()),
            ..Extra::default()
        },
    )
    .await;
    let beside_config = tg.dir.path().canonicalize().unwrap().join("queue");
    let id = tg.send("/crm/x", "{}").await;
    assert!(tg.terminate().await.success());
    assert!(beside_config.join("journal.db").exists());
    assert!(
        !somewhere.path().join("queue").exists(),
        "nothing in the working directory"
    );
    let log = tg.log();
    assert!(log.contains(&format!("storage={}", beside_config.display())), "{log}");
    assert_eq!(log.matches("created a new, empty one").count(), 1, "{log}");

    // From another directory: the same queue, and no new journal.
    let elsewhere = tempfile::tempdir().unwrap();
    tg.cwd = Some(elsewhere.path().to_path_buf());
    tg.spawn(&[]).await;
    let m = tg.admin_get(&format!("/v1/messages/{id}")).await;
    assert_eq!(m["destination"], "crm", "{m}");
    assert_eq!(tg.destination("crm").await["queue"]["depth"], 1);
    assert!(tg.terminate().await.success());
    assert_eq!(tg.log().matches("created a new, empty one").count(), 1, "{}", tg.log());

    // `check` prints where the queue is.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tidegate"))
        .current_dir(elsewhere.path())
        .args(["check", "--config"])
        .arg(&tg.config_path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("path={}", beside_config.display())), "{text}");
}
