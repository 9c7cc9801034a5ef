use std::time::Duration;

use crate::support::{destination, eventually, Downstream, Tidegate};

#[tokio::test]
async fn a_full_queue_rejects_with_429_and_retry_after() {
    let ds = Downstream::start().await;
    let tg = Tidegate::start(&destination(
        "crm",
        &ds.url(),
        "[destination.rate_limit]\nrate = \"2/s\"\n[destination.queue]\nmax_messages = 3",
    ))
    .await;
    tg.admin_post("/v1/destinations/crm/pause", "").await;
    for i in 0..3 {
        tg.send(&format!("/crm/{i}"), "{}").await;
    }
    let r = tg.post("/crm/overflow", "{}").await;
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let retry_after: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry_after >= 1);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["code"], "queue_full");
    assert_eq!(v["status"], 429);
    let d = tg.destination("crm").await;
    assert_eq!(d["queue"]["depth"], 3, "a rejected message is not stored");
    assert_eq!(d["counters"]["rejected"], 1);
}

#[tokio::test]
async fn max_bytes_is_a_limit_too() {
    let ds = Downstream::start().await;
    let tg = Tidegate::start(&destination(
        "crm",
        &ds.url(),
        "[destination.queue]\nmax_bytes = \"2KiB\"",
    ))
    .await;
    tg.admin_post("/v1/destinations/crm/pause", "").await;
    tg.send("/crm/a", &"x".repeat(1200)).await;
    // What the queue counts for it: the body, and in cluster mode what
    // JetStream stores beside it (subject, tidegate's headers).
    let bytes = || async { tg.destination("crm").await["queue"]["bytes"].as_u64().unwrap_or(0) };
    eventually(Duration::from_secs(5), "the queue's bytes", || async {
        bytes().await >= 1200
    })
    .await;
    let stored = bytes().await;
    let overhead = stored - 1200;
    assert_eq!(tg.post("/crm/b", &"x".repeat(1200)).await.status(), 429);
    // Filled exactly to the limit, not a byte past it.
    let room = 2048 - stored - overhead;
    assert_eq!(tg.post("/crm/c", &"x".repeat(room as usize + 1)).await.status(), 429);
    tg.send("/crm/c", &"x".repeat(room as usize)).await;
}

#[tokio::test]
async fn block_mode_holds_the_producer_until_there_is_room() {
    let ds = Downstream::start().await;
    let tg = Tidegate::start(&destination(
        "crm",
        &ds.url(),
        "[destination.queue]\nmax_messages = 1\nwhen_full = \"block\"\nblock_timeout = \"20s\"",
    ))
    .await;
    tg.admin_post("/v1/destinations/crm/pause", "").await;
    let first = tg.send("/crm/first", "{}").await;
    let client = tg.client.clone();
    let url = tg.url("/crm/second");
    let blocked = tokio::spawn(async move { client.post(url).body("{}").send().await.unwrap() });
    // It is still waiting: the queue is full and paused.
    assert_eq!(tg.destination("crm").await["queue"]["depth"], 1);
    assert!(!blocked.is_finished());
    tg.admin_post("/v1/destinations/crm/resume", "").await;
    let r = blocked.await.unwrap();
    assert_eq!(r.status(), 202);
    tg.wait_message_state(&first, "delivered").await;
    let id = crate::support::accepted_id(r).await;
    tg.wait_message_state(&id, "delivered").await;
}

#[tokio::test]
async fn block_mode_gives_up_with_429_after_block_timeout() {
    let ds = Downstream::start().await;
    let tg = Tidegate::start(&destination(
        "crm",
        &ds.url(),
        "[destination.queue]\nmax_messages = 1\nwhen_full = \"block\"\nblock_timeout = \"300ms\"",
    ))
    .await;
    tg.admin_post("/v1/destinations/crm/pause", "").await;
    tg.send("/crm/first", "{}").await;
    let started = std::time::Instant::now();
    let r = tg.post("/crm/second", "{}").await;
    assert_eq!(r.status(), 429);
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "it waited for block_timeout first"
    );
    assert_eq!(r.json::<serde_json::Value>().await.unwrap()["code"], "queue_full");
    eventually(Duration::from_secs(5), "depth stays 1", || async {
        tg.destination("crm").await["queue"]["depth"] == 1
    })
    .await;
}
