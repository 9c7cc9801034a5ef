//! Batch delivery (SPEC §16): many messages per downstream request, each
//! settled on its own, on real downstreams.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::downstream::Seen;
use crate::support::{destination, eventually, problem, Downstream, Reply, Tidegate};

/// The items of a JSON-array batch as the downstream got them.
fn items(s: &Seen) -> Vec<serde_json::Value> {
    serde_json::from_slice::<serde_json::Value>(&s.body)
        .ok()
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
}

/// The `n` of each item a downstream answered 2xx, with how many times.
fn delivered_ns(ds: &Downstream) -> HashMap<u64, usize> {
    let mut out = HashMap::new();
    for s in ds.seen() {
        if (200..300).contains(&s.status) {
            for item in items(&s) {
                if let Some(n) = item["n"].as_u64() {
                    *out.entry(n).or_default() += 1;
                }
            }
        }
    }
    out
}

/// Pauses a destination, so that what is sent next waits in its queue and
/// the batches formed on `resumed` do not depend on how fast the test
/// sends.
async fn paused(tg: &Tidegate, dest: &str) {
    let r = tg.admin_post(&format!("/v1/destinations/{dest}/pause"), "").await;
    assert_eq!(r.status(), 200);
}

async fn resumed(tg: &Tidegate, dest: &str) {
    let r = tg.admin_post(&format!("/v1/destinations/{dest}/resume"), "").await;
    assert_eq!(r.status(), 200);
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn a_batch_carries_many_messages_and_each_item_is_settled_by_its_own_result() {
    let ds = Downstream::start().await;
    // Per-item results: a `bad` item is refused for good (422), a `busy`
    // one is refused for now the first time it is seen (503), the rest
    // are created (201).
    let busy_seen = Arc::new(Mutex::new(std::collections::HashSet::new()));
    let seen_busy = busy_seen.clone();
    ds.respond(move |s, _| {
        let results: Vec<serde_json::Value> = items(s)
            .iter()
            .map(|i| {
                let n = i["n"].as_u64().unwrap_or(0);
                if i["bad"] == true {
                    serde_json::json!({"status": 422, "error": format!("item {n} is missing an email")})
                } else if i["busy"] == true && seen_busy.lock().unwrap().insert(n) {
                    serde_json::json!({"status": 503})
                } else {
                    serde_json::json!({"status": 201, "id": n})
                }
            })
            .collect();
        Reply::status(200).body(&serde_json::json!({ "results": results }).to_string())
    });
    let tg = Tidegate::start(&destination(
        "crm",
        &format!("{}/api", ds.url()),
        r#"retry = { initial_backoff = "50ms", max_backoff = "100ms", jitter = false }
[destination.batch]
max_messages = 10
max_wait = "300ms"
results = '.results | map({status, error})'
"#,
    ))
    .await;
    paused(&tg, "crm").await;
    let mut ids = Vec::new();
    for n in 0..25u64 {
        let body = serde_json::json!({"n": n, "bad": n == 7 || n == 19, "busy": n == 3});
        ids.push(tg.send("/crm/v1/contacts", &body.to_string()).await);
    }
    resumed(&tg, "crm").await;
    for (n, id) in ids.iter().enumerate() {
        let want = if n == 7 || n == 19 {
            "dead_lettered"
        } else {
            "delivered"
        };
        tg.wait_message_state(id, want).await;
    }
    let got = delivered_ns(&ds);
    for n in 0..25u64 {
        assert!(got.contains_key(&n), "item {n} never reached the downstream");
    }
    let requests = ds.seen();
    assert!(
        requests.len() <= 6,
        "25 messages in batches of 10 (one retry of a busy item): {} requests",
        requests.len()
    );
    for s in &requests {
        assert_eq!(s.method, "POST");
        assert_eq!(s.path_and_query, "/api/v1/contacts");
        assert_eq!(s.header("content-type").as_deref(), Some("application/json"));
        assert!(s.header("x-tidegate-batch-id").is_some());
        assert_eq!(s.header("x-tidegate-batch-size"), Some(items(s).len().to_string()));
        assert!(items(s).len() <= 10);
    }
    // Each item's status names its batch and its own outcome.
    let bad = tg.message(&ids[7]).await;
    assert_eq!(bad["batch"]["outcome"], "http_4xx", "{bad}");
    assert_eq!(bad["batch"]["status"], 200, "{bad}");
    assert_eq!(bad["last_error"]["status"], 422, "{bad}");
    assert!(
        bad["last_error"]["detail"]
            .as_str()
            .unwrap()
            .contains("missing an email"),
        "{bad}"
    );
    let busy = tg.message(&ids[3]).await;
    assert_eq!(busy["attempts"], 2, "{busy}");
    assert_eq!(busy["batch"]["outcome"], "delivered", "{busy}");
    assert_eq!(busy["last_error"], serde_json::Value::Null, "{busy}");
    let good = tg.message(&ids[12]).await;
    assert_eq!(good["attempts"], 1, "{good}");
    assert_eq!(good["batch"]["outcome"], "delivered");
    let size = good["batch"]["size"].as_u64().unwrap();
    assert!((1..=10).contains(&size), "{good}");
    assert!(good["batch"]["position"].as_u64().unwrap() < size, "{good}");
    let d = tg.destination("crm").await;
    assert_eq!(d["batch"]["max_messages"], 10, "{d}");
    assert_eq!(d["batch"]["encoding"], "json_array", "{d}");
    let flushes = &d["batch"]["flushes"];
    let sent = ["size", "bytes", "time"]
        .iter()
        .map(|f| flushes[f].as_u64().unwrap())
        .sum::<u64>();
    assert_eq!(sent as usize, requests.len(), "{d}");
    assert!(flushes["size"].as_u64().unwrap() >= 1, "{d}");
    // The console's destination page says what a request carries and why
    // batches left.
    let page = tg.client_get(&tg.admin_url("/ui/destinations/crm")).await;
    assert!(page.contains("up to 10 messages"), "{page}");
    assert!(page.contains(&format!("{} full,", flushes["size"])), "{page}");
    let metrics = tg.metrics_text().await;
    assert!(
        metric(&metrics, "tidegate_batches_total{destination=\"crm\"") >= 3.0,
        "{metrics}"
    );
    assert!(metric(&metrics, "tidegate_batch_size_count{destination=\"crm\"}") >= 3.0);
    assert_eq!(
        metric(&metrics, "tidegate_messages_delivered_total{destination=\"crm\"}"),
        23.0
    );
}

#[tokio::test]
async fn a_permanent_answer_splits_the_batch_until_only_the_bad_item_fails() {
    let ds = Downstream::start().await;
    // No per-item results: a request holding a bad item is refused whole.
    ds.respond(|s, _| {
        if items(s).iter().any(|i| i["bad"] == true) {
            Reply::status(400).body("one of the records is invalid")
        } else {
            Reply::status(200)
        }
    });
    let tg = Tidegate::start(&destination(
        "crm",
        &ds.url(),
        r#"rate_limit = { rate = "unlimited" }
[destination.batch]
max_messages = 16
max_wait = "2s"
"#,
    ))
    .await;
    paused(&tg, "crm").await;
    let mut ids = Vec::new();
    for n in 0..16u64 {
        let body = serde_json::json!({"n": n, "bad": n == 11});
        ids.push(tg.send("/crm/records", &body.to_string()).await);
    }
    resumed(&tg, "crm").await;
    for (n, id) in ids.iter().enumerate() {
        tg.wait_message_state(id, if n == 11 { "dead_lettered" } else { "delivered" })
            .await;
    }
    // One bad item in 16: the first request, then at most 2·1·log2(16).
    let requests = ds.seen().len();
    assert!(
        requests <= 1 + 2 * 4,
        "{requests} requests to isolate one bad item in 16"
    );
    let got = delivered_ns(&ds);
    for n in (0..16u64).filter(|n| *n != 11) {
        assert_eq!(got.get(&n), Some(&1), "item {n}: delivered exactly once");
    }
    assert_eq!(got.get(&11), None);
    let metrics = tg.metrics_text().await;
    let splits = metric(&metrics, "tidegate_batch_splits_total{destination=\"crm\"}");
    assert!((1.0..=4.0).contains(&splits), "{splits} splits\n{metrics}");
    let bad = tg.message(&ids[11]).await;
    assert_eq!(bad["batch"]["size"], 1, "{bad}");
    assert_eq!(bad["last_error"]["status"], 400, "{bad}");
}

#[tokio::test]
async fn an_envelope_and_a_path_shape_the_request_and_a_transient_answer_retries_every_item() {
    let ds = Downstream::start().await;
    // The first request is refused for now; the next ones are taken.
    ds.respond(|_, _| Reply::status(200));
    let first = Arc::new(AtomicBool::new(true));
    let f = first.clone();
    ds.respond(move |_, _| {
        if f.swap(false, Ordering::SeqCst) {
            Reply::status(503).header("retry-after", "1")
        } else {
            Reply::status(200).body("{\"status\":\"COMPLETE\"}")
        }
    });
    let tg = Tidegate::start(&destination(
        "crm",
        &format!("{}/crm", ds.url()),
        r#"headers = { Authorization = "Bearer configured" }
[destination.handoff]
transform = '{properties: {email: .email, firstname: .name, tidegate_id: $message_id}}'
[destination.batch]
max_messages = 3
max_wait = "5s"
envelope = '{inputs: .}'
path = "/v3/objects/contacts/batch/create"
"#,
    ))
    .await;
    // A preview shows the request a batch of that one message would be.
    let r = tg
        .admin_post(
            "/v1/destinations/crm/preview",
            r#"{"email": "p@example.com", "name": "Pat"}"#,
        )
        .await;
    assert_eq!(r.status(), 200);
    let p: serde_json::Value = r.json().await.unwrap();
    assert_eq!(p["ok"], true, "{p}");
    assert!(
        p["request"]["url"]
            .as_str()
            .unwrap()
            .ends_with("/crm/v3/objects/contacts/batch/create"),
        "{p}"
    );
    let previewed: serde_json::Value = serde_json::from_str(p["request"]["body"].as_str().unwrap()).unwrap();
    assert_eq!(previewed["inputs"][0]["properties"]["email"], "p@example.com", "{p}");
    assert_eq!(ds.count(), 0, "a preview sends nothing");
    paused(&tg, "crm").await;
    let mut ids = Vec::new();
    for (n, name) in ["Ada", "Grace", "Edsger"].iter().enumerate() {
        let body = serde_json::json!({"email": format!("{n}@example.com"), "name": name});
        ids.push(tg.send("/crm/anything", &body.to_string()).await);
    }
    resumed(&tg, "crm").await;
    for id in &ids {
        tg.wait_message_state(id, "delivered").await;
    }
    let seen = ds.seen();
    assert_eq!(seen.len(), 2, "one refused request, then one retry of all three");
    for s in &seen {
        assert_eq!(s.path_and_query, "/crm/v3/objects/contacts/batch/create");
        assert_eq!(s.header("authorization").as_deref(), Some("Bearer configured"));
        let body: serde_json::Value = serde_json::from_slice(&s.body).unwrap();
        let inputs = body["inputs"].as_array().expect("an enveloped array");
        assert_eq!(inputs.len(), 3, "{body}");
        // Each item carries its own message id, the key a downstream can
        // de-duplicate on (`$message_id`).
        assert_eq!(
            inputs[0],
            serde_json::json!({"properties": {"email": "0@example.com", "firstname": "Ada", "tidegate_id": ids[0]}})
        );
        for (item, id) in inputs.iter().zip(&ids) {
            assert_eq!(item["properties"]["tidegate_id"], id.as_str(), "{body}");
        }
    }
    // The same items sent again carry the same Idempotency-Key.
    assert_eq!(seen[0].header("idempotency-key"), seen[1].header("idempotency-key"));
    assert!(
        seen[1].at.duration_since(seen[0].at) >= Duration::from_millis(900),
        "Retry-After honoured"
    );
    for id in &ids {
        let m = tg.message(id).await;
        assert_eq!(m["attempts"], 2, "{m}");
    }
}

#[tokio::test]
async fn a_results_program_that_cannot_read_the_answer_retries_the_items() {
    let ds = Downstream::start().await;
    let calls = Arc::new(AtomicU64::new(0));
    let c = calls.clone();
    ds.respond(move |s, _| {
        // First answer: a shape the results program does not expect.
        if c.fetch_add(1, Ordering::SeqCst) == 0 {
            Reply::status(200).body("{\"unexpected\": true}")
        } else {
            let r: Vec<u16> = items(s).iter().map(|_| 201).collect();
            Reply::status(200).body(&serde_json::json!({ "results": r }).to_string())
        }
    });
    let tg = Tidegate::start(&destination(
        "crm",
        &ds.url(),
        r#"retry = { initial_backoff = "50ms", max_backoff = "100ms", jitter = false }
[destination.batch]
max_messages = 2
max_wait = "5s"
results = '.results'
"#,
    ))
    .await;
    paused(&tg, "crm").await;
    let a = tg.send("/crm/x", "{\"n\":1}").await;
    let b = tg.send("/crm/x", "{\"n\":2}").await;
    resumed(&tg, "crm").await;
    tg.wait_message_state(&a, "delivered").await;
    tg.wait_message_state(&b, "delivered").await;
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    let m = tg.message(&a).await;
    assert_eq!(m["attempts"], 2, "{m}");
}

#[tokio::test]
async fn a_batching_destination_refuses_a_body_that_is_not_json() {
    let ds = Downstream::start().await;
    let tg = Tidegate::start(&destination(
        "crm",
        &ds.url(),
        "[destination.batch]\nmax_messages = 5\nencoding = \"ndjson\"\nmax_wait = \"50ms\"\n",
    ))
    .await;
    let r = tg
        .client
        .post(tg.url("/crm/x"))
        .header("content-type", "text/plain")
        .body("hello")
        .send()
        .await
        .unwrap();
    problem(r, 415, "unsupported_media_type").await;
    let r = tg.post("/crm/x", "{not json").await;
    problem(r, 415, "unsupported_media_type").await;
    // Pretty-printed JSON still goes one item per line.
    let id = tg.send("/crm/x", "{\n  \"n\": 1\n}").await;
    tg.wait_message_state(&id, "delivered").await;
    let s = &ds.seen()[0];
    assert_eq!(&s.body[..], b"{\"n\":1}\n");
    assert_eq!(s.header("content-type").as_deref(), Some("application/x-ndjson"));
}

/// kill -9 with batches in flight: every acknowledged item is delivered,
/// and no more than `max_in_flight × max_messages` items a crash are
/// delivered twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_with_batches_in_flight_redelivers_at_most_the_batches_out() {
    const MAX_IN_FLIGHT: u64 = 2;
    const MAX_MESSAGES: u64 = 20;
    const CYCLES: usize = 4;
    let ds = Downstream::start().await;
    // Slow answers: a kill finds batches out.
    ds.respond(|_, _| Reply::status(200).delay(Duration::from_millis(150)));
    let mut tg = Tidegate::start(&destination(
        "crm",
        &ds.url(),
        &format!(
            "rate_limit = {{ rate = \"unlimited\", max_in_flight = {MAX_IN_FLIGHT} }}\n\
             [destination.batch]\nmax_messages = {MAX_MESSAGES}\nmax_wait = \"50ms\"\n"
        ),
    ))
    .await;
    let mut acked = Vec::new();
    let mut n = 0u64;
    for _ in 0..CYCLES {
        for _ in 0..150 {
            tg.send("/crm/x", &serde_json::json!({ "n": n }).to_string()).await;
            acked.push(n);
            n += 1;
        }
        // Batches are out when the kill comes.
        let before = ds.count();
        eventually(Duration::from_secs(10), "a batch in flight", || async {
            ds.count() > before
        })
        .await;
        tg.kill9();
        tg.spawn(&[]).await;
    }
    eventually(Duration::from_secs(60), "every acknowledged item delivered", || async {
        let got = delivered_ns(&ds);
        acked.iter().all(|n| got.contains_key(n))
    })
    .await;
    let got = delivered_ns(&ds);
    let duplicates: usize = got.values().map(|c| c - 1).sum();
    let bound = CYCLES * (MAX_IN_FLIGHT * MAX_MESSAGES) as usize;
    eprintln!(
        "{} items acknowledged, {} requests, {duplicates} items delivered twice over {CYCLES} kills (bound {bound})",
        acked.len(),
        ds.count()
    );
    assert!(
        duplicates <= bound,
        "{duplicates} items delivered twice over {CYCLES} kills; at most {bound}"
    );
}

#[tokio::test]
async fn a_key_ordered_destination_batches_one_message_per_key_in_key_order() {
    let ds = Downstream::start().await;
    // A transient refusal now and then: retried items must still keep their
    // keys' order.
    let calls = Arc::new(AtomicU64::new(0));
    let c = calls.clone();
    ds.respond(move |_, _| {
        Reply::status(if c.fetch_add(1, Ordering::SeqCst) % 4 == 1 {
            503
        } else {
            200
        })
    });
    let tg = Tidegate::start(&destination(
        "crm",
        &ds.url(),
        r#"retry = { initial_backoff = "20ms", max_backoff = "50ms", jitter = false }
[destination.queue]
ordering = "key"
key = ".contact"
[destination.batch]
max_messages = 8
max_wait = "20ms"
"#,
    ))
    .await;
    let mut last = String::new();
    for i in 0..60u64 {
        let body = serde_json::json!({"contact": format!("c{}", i % 5), "n": i});
        last = tg.send("/crm/x", &body.to_string()).await;
    }
    eventually(Duration::from_secs(30), "every item delivered", || async {
        delivered_ns(&ds).len() == 60
    })
    .await;
    tg.wait_message_state(&last, "delivered").await;
    let mut order: HashMap<String, Vec<u64>> = HashMap::new();
    for s in ds.seen().iter().filter(|s| s.status == 200) {
        let batch = items(s);
        let mut keys: Vec<&str> = batch.iter().map(|i| i["contact"].as_str().unwrap()).collect();
        keys.sort_unstable();
        let before = keys.len();
        keys.dedup();
        assert_eq!(keys.len(), before, "two messages of one key in a batch: {batch:?}");
        for item in &batch {
            let key = item["contact"].as_str().unwrap().to_string();
            order.entry(key).or_default().push(item["n"].as_u64().unwrap());
        }
    }
    for (key, ns) in &order {
        let mut sorted = ns.clone();
        sorted.sort_unstable();
        assert_eq!(ns, &sorted, "key {key} delivered out of order");
        assert_eq!(ns.len(), 12, "key {key}: each message once");
    }
    assert!(calls.load(Ordering::SeqCst) >= 8, "some refusals happened");
}

#[tokio::test]
async fn a_producer_waiting_on_an_item_gets_its_own_result() {
    let ds = Downstream::start().await;
    ds.respond(|s, _| {
        let results: Vec<serde_json::Value> = items(s)
            .iter()
            .map(|i| serde_json::json!({"status": 201, "crm_id": i["n"]}))
            .collect();
        Reply::status(200).body(&serde_json::json!({ "results": results }).to_string())
    });
    let tg = Tidegate::start(&destination(
        "crm",
        &ds.url(),
        "[destination.batch]\nmax_messages = 50\nmax_wait = \"100ms\"\nresults = '.results'\n",
    ))
    .await;
    let r = tg
        .client
        .post(tg.url("/crm/x"))
        .header("prefer", "wait=10")
        .header("content-type", "application/json")
        .body("{\"n\": 7}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(r.headers()["x-tidegate-state"], "delivered");
    assert_eq!(r.headers()["content-type"], "application/json");
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v, serde_json::json!({"status": 201, "crm_id": 7}));
}

#[tokio::test]
async fn an_item_whose_results_stay_unreadable_says_so_when_it_gives_up() {
    let ds = Downstream::start().await;
    ds.respond(|_, _| Reply::status(200).body("not json at all"));
    let tg = Tidegate::start(&destination(
        "crm",
        &ds.url(),
        r#"retry = { max_attempts = 2, initial_backoff = "20ms", max_backoff = "20ms", jitter = false }
[destination.batch]
max_messages = 5
max_wait = "20ms"
results = '.results'
"#,
    ))
    .await;
    let id = tg.send("/crm/x", "{\"n\": 1}").await;
    tg.wait_message_state(&id, "dead_lettered").await;
    let m = tg.message(&id).await;
    assert_eq!(m["last_error"]["kind"], "results_unreadable", "{m}");
    assert!(m["last_error"]["detail"].as_str().unwrap().contains("not JSON"), "{m}");
    assert_eq!(m["batch"]["outcome"], "results_unreadable", "{m}");
    assert_eq!(m["batch"]["status"], 200, "{m}");
    assert_eq!(ds.count(), 2, "both attempts were sent");
}

/// Items of one batch retried together become due a few milliseconds
/// apart (jittered back-off): the partial batch the first of them starts
/// waits for the rest to come due, rather than leaving without them at
/// `max_wait`.
#[tokio::test]
async fn items_retried_together_go_out_together_again() {
    let ds = Downstream::start().await;
    let first = Arc::new(AtomicBool::new(true));
    let f = first.clone();
    ds.respond(move |_, _| Reply::status(if f.swap(false, Ordering::SeqCst) { 503 } else { 200 }));
    let tg = Tidegate::start(&destination(
        "crm",
        &ds.url(),
        r#"retry = { initial_backoff = "300ms", max_backoff = "300ms", jitter = true }
[destination.batch]
max_messages = 3
max_wait = "10s"
"#,
    ))
    .await;
    paused(&tg, "crm").await;
    let mut ids = Vec::new();
    for n in 0..3 {
        ids.push(tg.send("/crm/x", &format!("{{\"n\": {n}}}")).await);
    }
    resumed(&tg, "crm").await;
    for id in &ids {
        tg.wait_message_state(id, "delivered").await;
    }
    let seen = ds.seen();
    assert_eq!(seen.len(), 2, "the refused batch, then its three items again, together");
    assert_eq!(items(&seen[1]).len(), 3);
}
