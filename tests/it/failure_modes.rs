use std::time::Duration;

use crate::support::{destination, eventually, Downstream, Reply, Tidegate};

const FAST_RETRY: &str = "[destination.retry]\ninitial_backoff = \"20ms\"\nmax_backoff = \"100ms\"\njitter = false";

#[tokio::test]
async fn transient_failures_are_retried_until_delivered() {
    let ds = Downstream::start().await;
    ds.respond(|_, n| if n < 3 { Reply::status(503) } else { Reply::status(200) });
    let tg = Tidegate::start(&destination("crm", &ds.url(), FAST_RETRY)).await;
    let id = tg.send("/crm/x", "{}").await;
    tg.wait_message_state(&id, "delivered").await;
    let attempts = ds.attempts_for(&id);
    let numbers: Vec<_> = attempts
        .iter()
        .map(|s| s.header("x-tidegate-attempt").unwrap())
        .collect();
    assert_eq!(numbers, ["1", "2", "3"]);
    assert_eq!(tg.message(&id).await["attempts"], 3);
    // Each retry is due 20 ms after its failure; the worker must wake for
    // it, not wait for its idle re-check (5 s) to find it.
    for pair in attempts.windows(2) {
        let gap = pair[1].at - pair[0].at;
        assert!(gap < Duration::from_secs(2), "a retry came {gap:?} after the failure");
    }
}

#[tokio::test]
async fn retry_after_delays_the_next_attempt() {
    let ds = Downstream::start().await;
    ds.respond(|_, n| {
        if n == 1 {
            Reply::status(429).header("retry-after", "2")
        } else {
            Reply::status(200)
        }
    });
    let tg = Tidegate::start(&destination("crm", &ds.url(), FAST_RETRY)).await;
    let id = tg.send("/crm/x", "{}").await;
    tg.wait_message_state(&id, "delivered").await;
    let a = ds.attempts_for(&id);
    assert_eq!(a.len(), 2);
    let gap = a[1].at - a[0].at;
    assert!(
        gap >= Duration::from_millis(1900),
        "second attempt came after {gap:?}, before Retry-After"
    );
}

#[tokio::test]
async fn retries_exhausted_dead_letter_after_exactly_max_attempts() {
    let ds = Downstream::start().await;
    ds.respond(|_, _| Reply::status(500));
    let tg = Tidegate::start(&destination(
        "crm",
        &ds.url(),
        &format!("{FAST_RETRY}\nmax_attempts = 4"),
    ))
    .await;
    let id = tg.send("/crm/x", "{}").await;
    tg.wait_message_state(&id, "dead_lettered").await;
    assert_eq!(ds.attempts_for(&id).len(), 4);
    let dl = tg.admin_get("/v1/destinations/crm/dead-letters").await;
    assert_eq!(dl["items"][0]["id"], id.as_str());
    assert_eq!(dl["items"][0]["attempts"], 4);
    assert_eq!(dl["items"][0]["reason"], "max_attempts");
    assert_eq!(dl["next"], serde_json::Value::Null);
    let d = tg.destination("crm").await;
    assert_eq!(d["queue"]["depth"], 0);
    assert_eq!(d["queue"]["dead_letters"], 1);
    assert_eq!(d["counters"]["dead_lettered"], 1);
    assert_eq!(d["counters"]["failed_attempts"], 4);
}

#[tokio::test]
async fn a_permanent_failure_dead_letters_at_once_and_replay_delivers_it() {
    let ds = Downstream::start().await;
    ds.respond(|_, _| Reply::status(422).body("bad field"));
    let tg = Tidegate::start(&destination("crm", &ds.url(), FAST_RETRY)).await;
    let id = tg.send("/crm/x", "{\"v\":1}").await;
    let other = tg.send("/crm/y", "{\"v\":2}").await;
    tg.wait_message_state(&id, "dead_lettered").await;
    tg.wait_message_state(&other, "dead_lettered").await;
    assert_eq!(ds.attempts_for(&id).len(), 1);
    let m = tg.message(&id).await;
    assert_eq!(m["last_error"]["status"], 422);
    assert_eq!(m["last_error"]["detail"], "bad field");

    // Paging: one at a time.
    let page = tg.admin_get("/v1/destinations/crm/dead-letters?limit=1").await;
    assert_eq!(page["items"].as_array().unwrap().len(), 1);
    let next = page["next"].as_str().unwrap().to_string();
    let page2 = tg
        .admin_get(&format!("/v1/destinations/crm/dead-letters?limit=1&after={next}"))
        .await;
    assert_eq!(page2["items"][0]["id"], other.as_str());

    ds.respond(|_, _| Reply::status(200));
    let r = tg
        .admin_post(
            "/v1/destinations/crm/dead-letters/replay",
            &format!("{{\"ids\": [\"{id}\"]}}"),
        )
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<serde_json::Value>().await.unwrap()["replayed"], 1);
    tg.wait_message_state(&id, "delivered").await;
    assert_eq!(&ds.attempts_for(&id).last().unwrap().body[..], b"{\"v\":1}");
    // A replay is a fresh start: attempt numbering restarts.
    assert_eq!(
        ds.attempts_for(&id)
            .last()
            .unwrap()
            .header("x-tidegate-attempt")
            .as_deref(),
        Some("1")
    );

    let r = tg
        .client
        .delete(tg.admin_url("/v1/destinations/crm/dead-letters"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<serde_json::Value>().await.unwrap()["purged"], 1);
    assert_eq!(tg.destination("crm").await["queue"]["dead_letters"], 0);
}

#[tokio::test]
async fn log_mode_drops_failures_and_keeps_the_rest_flowing() {
    let ds = Downstream::start().await;
    ds.respond(|s, _| {
        if s.path_and_query.contains("bad") {
            Reply::status(503)
        } else {
            Reply::status(200)
        }
    });
    let tg = Tidegate::start(&destination(
        "crm",
        &ds.url(),
        &format!("on_failure = \"log\"\n{FAST_RETRY}"),
    ))
    .await;
    let bad = tg.send("/crm/bad", "{}").await;
    let good = tg.send("/crm/good", "{}").await;
    tg.wait_message_state(&bad, "dropped").await;
    tg.wait_message_state(&good, "delivered").await;
    assert_eq!(ds.attempts_for(&bad).len(), 1, "log mode never retries");
    let d = tg.destination("crm").await;
    assert_eq!(d["counters"]["dropped"], 1);
    assert_eq!(d["queue"]["depth"], 0);
    let log = tg.log();
    assert!(
        log.contains("message dropped") && log.contains(&bad),
        "drop is logged with the id"
    );
}

#[tokio::test]
async fn buffer_mode_degrades_probes_the_oldest_and_recovers() {
    let ds = Downstream::start().await;
    ds.respond(|_, _| Reply::status(503));
    let tg = Tidegate::start(&destination(
        "crm",
        &ds.url(),
        "on_failure = \"buffer\"\n[destination.rate_limit]\nmax_in_flight = 1\n[destination.retry]\ninitial_backoff = \"100ms\"\nmax_backoff = \"300ms\"\nmax_attempts = 2\njitter = false",
    ))
    .await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(tg.send(&format!("/crm/m{i}"), "{}").await);
    }
    tg.wait_state("crm", "degraded").await;
    // While degraded only the oldest message is probed, past max_attempts:
    // buffer never gives up.
    let before = ds.count();
    eventually(Duration::from_secs(10), "several probes", || async {
        ds.count() >= before + 3
    })
    .await;
    let probes: Vec<_> = ds.seen()[before..].iter().map(|s| s.message_id()).collect();
    assert!(
        probes.iter().all(|p| p == &ids[0]),
        "probes went to {probes:?}, not only {}",
        ids[0]
    );
    assert_eq!(tg.destination("crm").await["queue"]["depth"], 5);
    assert_eq!(tg.destination("crm").await["queue"]["dead_letters"], 0);
    // Still accepting while degraded.
    ids.push(tg.send("/crm/late", "{}").await);

    ds.respond(|_, _| Reply::status(200));
    tg.wait_state("crm", "running").await;
    for id in &ids {
        tg.wait_message_state(id, "delivered").await;
    }
}

#[tokio::test]
async fn halt_mode_stops_on_a_permanent_failure_until_an_operator_resumes() {
    let ds = Downstream::start().await;
    ds.respond(|s, _| {
        if s.path_and_query.contains("poison") {
            Reply::status(400)
        } else {
            Reply::status(200)
        }
    });
    let tg = Tidegate::start(&destination(
        "erp",
        &ds.url(),
        &format!("on_failure = \"halt\"\n[destination.queue]\nordering = \"fifo\"\n{FAST_RETRY}"),
    ))
    .await;
    let poison = tg.send("/erp/poison", "{}").await;
    tg.wait_state("erp", "halted").await;
    let d = tg.destination("erp").await;
    assert!(d["state_reason"].as_str().unwrap().contains("permanent_failure"));
    // New messages are refused while halted.
    let r = tg.post("/erp/next", "{}").await;
    assert_eq!(r.status(), 503);
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap()["code"],
        "destination_halted"
    );
    assert_eq!(
        tg.message(&poison).await["state"],
        "queued",
        "the failed message stays at the head"
    );

    // Resume without skipping: the head fails again and halts again.
    let r = tg.admin_post("/v1/destinations/erp/resume", "").await;
    assert_eq!(r.status(), 200);
    eventually(Duration::from_secs(10), "a second attempt at the head", || async {
        ds.attempts_for(&poison).len() >= 2
    })
    .await;
    tg.wait_state("erp", "halted").await;

    // Skip the head: it is dead-lettered, and delivery flows again.
    let r = tg.admin_post("/v1/destinations/erp/resume?skip_head=true", "").await;
    assert_eq!(r.json::<serde_json::Value>().await.unwrap()["state"], "running");
    tg.wait_message_state(&poison, "dead_lettered").await;
    // It keeps the failure that halted the destination.
    let m = tg.message(&poison).await;
    assert_eq!(m["reason"], "skipped_by_operator", "{m}");
    assert_eq!(m["last_error"]["status"], 400, "{m}");
    let dl = tg.admin_get("/v1/destinations/erp/dead-letters").await;
    assert_eq!(dl["items"][0]["last_error"]["status"], 400, "{dl}");
    let next = tg.send("/erp/next", "{}").await;
    tg.wait_message_state(&next, "delivered").await;
}

#[tokio::test]
async fn halt_mode_with_accept_while_halted_queues_behind_the_failed_head() {
    let ds = Downstream::start().await;
    ds.respond(|_, _| Reply::status(503));
    let tg = Tidegate::start(&destination(
        "erp",
        &ds.url(),
        &format!("on_failure = \"halt\"\naccept_while_halted = true\n{FAST_RETRY}\nmax_attempts = 2"),
    ))
    .await;
    let head = tg.send("/erp/a", "{}").await;
    tg.wait_state("erp", "halted").await;
    assert_eq!(
        ds.attempts_for(&head).len(),
        2,
        "halt comes after max_attempts transient failures"
    );
    let queued = tg.send("/erp/b", "{}").await;
    ds.respond(|_, _| Reply::status(200));
    tg.admin_post("/v1/destinations/erp/resume", "").await;
    tg.wait_message_state(&head, "delivered").await;
    tg.wait_message_state(&queued, "delivered").await;
}

#[tokio::test]
async fn fifo_ordering_holds_later_messages_behind_a_failing_head() {
    let ds = Downstream::start().await;
    ds.respond(|s, n| {
        if s.path_and_query.contains("first") && n < 3 {
            Reply::status(503)
        } else {
            Reply::status(200)
        }
    });
    let tg = Tidegate::start(&destination(
        "crm",
        &ds.url(),
        &format!("[destination.queue]\nordering = \"fifo\"\n{FAST_RETRY}"),
    ))
    .await;
    let first = tg.send("/crm/first", "{}").await;
    let second = tg.send("/crm/second", "{}").await;
    let third = tg.send("/crm/third", "{}").await;
    tg.wait_message_state(&third, "delivered").await;
    let order: Vec<_> = ds.seen().iter().map(|s| s.message_id()).collect();
    assert_eq!(order, vec![first.clone(), first.clone(), first, second, third]);
}

#[tokio::test]
async fn pause_stops_deliveries_and_resume_restarts_them() {
    let ds = Downstream::start().await;
    let tg = Tidegate::start(&destination("crm", &ds.url(), "")).await;
    let r = tg.admin_post("/v1/destinations/crm/pause", "").await;
    assert_eq!(r.json::<serde_json::Value>().await.unwrap()["state"], "paused");
    let id = tg.send("/crm/x", "{}").await;
    // Ingress still accepts; nothing goes out while paused.
    assert_eq!(tg.message(&id).await["state"], "queued");
    assert_eq!(tg.destination("crm").await["queue"]["depth"], 1);
    assert_eq!(ds.count(), 0);
    tg.admin_post("/v1/destinations/crm/resume", "").await;
    tg.wait_message_state(&id, "delivered").await;
}
