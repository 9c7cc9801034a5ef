use std::time::Duration;

use crate::support::{destination, eventually, Downstream, Reply, Tidegate};

#[tokio::test]
async fn a_message_is_forwarded_with_method_path_query_body_and_headers() {
    let ds = Downstream::start().await;
    let tg = Tidegate::start(&destination(
        "crm",
        &format!("{}/api", ds.url()),
        "headers = { X-Api-Key = \"configured-key\" }",
    ))
    .await;
    let r = tg
        .client
        .put(tg.url("/crm/v1/contacts/42?expand=true&x=1"))
        .header("content-type", "application/vnd.test+json")
        .header("authorization", "Bearer producer-secret")
        .header("cookie", "session=1")
        .header("x-custom", "kept")
        .header("tracestate", "vendor=opaque")
        .header("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
        .body("{\"name\":\"Ada\"}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let location = r.headers()["location"].to_str().unwrap().to_string();
    let v: serde_json::Value = r.json().await.unwrap();
    let id = v["id"].as_str().unwrap().to_string();
    assert_eq!(v["destination"], "crm");
    assert_eq!(v["status"], "queued");
    assert_eq!(location, format!("/v1/messages/{id}"));

    tg.wait_message_state(&id, "delivered").await;
    let seen = ds.seen();
    assert_eq!(seen.len(), 1);
    let s = &seen[0];
    assert_eq!(s.method, "PUT");
    assert_eq!(s.path_and_query, "/api/v1/contacts/42?expand=true&x=1");
    assert_eq!(&s.body[..], b"{\"name\":\"Ada\"}");
    assert_eq!(s.header("content-type").as_deref(), Some("application/vnd.test+json"));
    assert_eq!(s.header("x-custom").as_deref(), Some("kept"));
    assert_eq!(s.header("x-api-key").as_deref(), Some("configured-key"));
    assert_eq!(
        s.header("authorization"),
        None,
        "the producer's credentials must not be forwarded"
    );
    assert_eq!(s.header("cookie"), None);
    assert_eq!(s.header("idempotency-key").as_deref(), Some(id.as_str()));
    assert_eq!(s.header("x-tidegate-message-id").as_deref(), Some(id.as_str()));
    assert_eq!(s.header("x-tidegate-attempt").as_deref(), Some("1"));
    // The same trace, a new span for the attempt; tracestate as sent.
    let tp = s.header("traceparent").unwrap();
    assert!(tp.starts_with("00-0af7651916cd43dd8448eb211c80319c-"), "{tp}");
    assert!(!tp.contains("b7ad6b7169203331"), "{tp}");
    assert_eq!(s.header("tracestate").as_deref(), Some("vendor=opaque"));
    let m = tg.message(&id).await;
    assert_eq!(m["attempts"], 1);
    assert!(m["delivered_at"].is_string());
}

#[tokio::test]
async fn a_repeated_idempotency_key_answers_200_with_the_first_id_and_stores_nothing() {
    let ds = Downstream::start().await;
    let tg = Tidegate::start(&destination("crm", &ds.url(), "")).await;
    let post = || {
        tg.client
            .post(tg.url("/crm/x"))
            .header("idempotency-key", "order-7")
            .body("a")
            .send()
    };
    let first = post().await.unwrap();
    assert_eq!(first.status(), 202);
    let first: serde_json::Value = first.json().await.unwrap();
    let again = post().await.unwrap();
    assert_eq!(again.status(), 200);
    let again: serde_json::Value = again.json().await.unwrap();
    assert_eq!(again["id"], first["id"]);
    assert_eq!(again["duplicate"], true);
    let id = first["id"].as_str().unwrap();
    tg.wait_message_state(id, "delivered").await;
    assert_eq!(ds.count(), 1);
    // The producer's key is the one the downstream sees.
    assert_eq!(ds.seen()[0].header("idempotency-key").as_deref(), Some("order-7"));
    assert_eq!(tg.destination("crm").await["counters"]["received"], 1);
}

#[tokio::test]
async fn prefer_wait_answers_with_the_downstream_response() {
    let ds = Downstream::start().await;
    ds.respond(|_, _| {
        Reply::status(201)
            .header("content-type", "application/json")
            .body("{\"crm_id\":9}")
    });
    let tg = Tidegate::start(&destination("crm", &ds.url(), "")).await;
    let r = tg
        .client
        .post(tg.url("/crm/x"))
        .header("prefer", "wait=10")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(r.headers()["preference-applied"], "wait=10");
    assert_eq!(r.headers()["x-tidegate-state"], "delivered");
    assert_eq!(r.headers()["content-type"], "application/json");
    assert_eq!(r.text().await.unwrap(), "{\"crm_id\":9}");

    // A downstream that cannot be reached: 502 problem once dead-lettered.
    let tg2 = Tidegate::start(&destination(
        "down",
        "http://127.0.0.1:1",
        "[destination.retry]\nmax_attempts = 1",
    ))
    .await;
    let r = tg2
        .client
        .post(tg2.url("/down/x"))
        .header("prefer", "wait=10")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    assert_eq!(r.headers()["x-tidegate-state"], "dead_lettered");
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["code"], "downstream_unreachable");

    // Not finished within the wait: 202, and the message is still durable.
    ds.respond(|_, _| Reply::status(200).delay(Duration::from_secs(3)));
    let r = tg
        .client
        .post(tg.url("/crm/slow"))
        .header("prefer", "wait=1")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let id = crate::support::accepted_id(r).await;
    tg.wait_message_state(&id, "delivered").await;
}

#[tokio::test]
async fn message_status_reports_scheduled_retries_with_the_last_error() {
    let ds = Downstream::start().await;
    ds.respond(|_, _| Reply::status(503).body("maintenance"));
    let tg = Tidegate::start(&destination(
        "crm",
        &ds.url(),
        "[destination.retry]\ninitial_backoff = \"30s\"\njitter = false",
    ))
    .await;
    let id = tg.send("/crm/x", "{}").await;
    eventually(Duration::from_secs(10), "a scheduled retry", || async {
        tg.message(&id).await["state"] == "scheduled"
    })
    .await;
    let m = tg.message(&id).await;
    assert_eq!(m["attempts"], 1);
    assert_eq!(m["last_error"]["status"], 503);
    assert_eq!(m["last_error"]["kind"], "http_5xx");
    assert_eq!(m["last_error"]["detail"], "maintenance");
    assert!(m["next_attempt_at"].is_string());
    let d = tg.destination("crm").await;
    assert_eq!(d["queue"]["depth"], 1);
    assert_eq!(d["queue"]["scheduled"], 1);
}

/// A producer chooses the path under its destination and nothing else: no
/// path trick, Host or forwarding header, and no redirect from the
/// downstream sends a delivery (with the destination's credentials)
/// anywhere but the configured url.
#[tokio::test]
async fn deliveries_go_only_where_the_config_says() {
    let ds = Downstream::start().await;
    let elsewhere = Downstream::start().await;
    let tg = Tidegate::start(&destination(
        "crm",
        &format!("{}/api", ds.url()),
        "headers = { X-Api-Key = \"configured-key\" }\n[destination.retry]\nmax_attempts = 1",
    ))
    .await;
    let other = elsewhere.addr.to_string();
    let mut ids = Vec::new();
    for path in [
        format!("/crm//{other}/x"),
        format!("/crm/@{other}/x"),
        format!("/crm/x?u=http://{other}/"),
        "/crm/%2F%2Fevil/x".to_string(),
    ] {
        let r = tg
            .client
            .post(tg.url(&path))
            .header("x-forwarded-host", other.as_str())
            .header("forwarded", format!("host={other}"))
            .body("{}")
            .send()
            .await
            .unwrap();
        match r.status().as_u16() {
            202 => ids.push(crate::support::accepted_id(r).await),
            400 => {}
            s => panic!("{path}: {s}"),
        }
    }
    assert!(ids.len() >= 2, "the ordinary-looking paths were accepted");
    for id in &ids {
        tg.wait_message_state(id, "delivered").await;
    }
    for s in ds.seen() {
        assert!(s.path_and_query.starts_with("/api/"), "{}", s.path_and_query);
    }
    // A downstream that redirects elsewhere: not followed, a permanent
    // failure, the other server never sees the credentials.
    let steal = format!("http://{other}/steal");
    ds.respond(move |_, _| Reply::status(302).header("location", &steal));
    let id = tg.send("/crm/y", "{}").await;
    tg.wait_message_state(&id, "dead_lettered").await;
    assert_eq!(tg.message(&id).await["last_error"]["status"], 302);
    assert_eq!(elsewhere.count(), 0, "a delivery reached a server not in the config");
}
