//! What a stranger and an attacker found (issue 29, SPEC §17): limits on
//! both listeners, untrusted text on its way out, paths and headers that
//! could mislead a downstream, secrets in URLs, files only their owner can
//! read, and the words tidegate uses where they were wrong.

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{cli, destination, eventually, problem, Downstream, Extra, Reply, Tidegate};

/// Reads until the peer closes or `limit` passes.
async fn read_until_closed(s: &mut TcpStream, limit: Duration) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return String::from_utf8_lossy(&out).into_owned(),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test]
async fn idle_admin_connections_cannot_take_the_descriptors_ingress_needs() {
    // 400 descriptors: the admin listener gets a quarter of what is left
    // after the reserve; past it, connections wait in the backlog.
    let ds = Downstream::start().await;
    let tg = Tidegate::start_with(
        &destination("crm", &ds.url(), ""),
        Extra {
            open_files_limit: Some(400),
            ..Extra::default()
        },
    )
    .await;
    let mut idle = Vec::new();
    for _ in 0..450 {
        if let Ok(s) = TcpStream::connect(tg.admin).await {
            idle.push(s);
        }
    }
    // Producers are served while 450 admin connections sit there.
    for i in 0..20 {
        let r = tg.post(&format!("/crm/x{i}"), "{}").await;
        assert_eq!(r.status(), 202);
    }
    drop(idle);
    eventually(Duration::from_secs(20), "the admin listener serving again", || async {
        matches!(tg.client.get(tg.admin_url("/healthz")).send().await, Ok(r) if r.status() == 200)
    })
    .await;
    assert!(!tg.log().contains("Too many open files"), "{}", tg.log());
}

#[tokio::test]
async fn a_body_sent_too_slowly_is_answered_408_and_nothing_is_stored() {
    let ds = Downstream::start().await;
    let tg = Tidegate::start_with(
        &destination("crm", &ds.url(), ""),
        Extra {
            ingress: "body_timeout = \"1s\"",
            ..Extra::default()
        },
    )
    .await;
    let mut s = TcpStream::connect(tg.ingress).await.unwrap();
    s.write_all(
        b"POST /crm/x HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{",
    )
    .await
    .unwrap();
    let started = Instant::now();
    // A byte every 300 ms: never idle long, never done.
    let writer = tokio::spawn(async move {
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            if s.write_all(b" ").await.is_err() {
                break;
            }
        }
        s
    });
    let mut s = writer.await.unwrap();
    let answer = read_until_closed(&mut s, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"code\":\"body_timeout\""), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(tg.destination("crm").await["queue"]["depth"], 0);
}

#[tokio::test]
async fn paths_a_downstream_could_read_as_others_are_refused() {
    let ds = Downstream::start().await;
    let tg = Tidegate::start(&destination(
        "crm",
        &format!("{}/api?apikey=s3cret&tenant=acme", ds.url()),
        "",
    ))
    .await;
    for path in [
        "/crm/..;/admin",
        "/crm/a;jsessionid=1/x",
        "/crm/%252e%252e/x",
        "/crm/a%00b",
    ] {
        let r = tg.post(path, "{}").await;
        problem(r, 400, "invalid_path").await;
    }
    let r = tg.post("/crm/x?apikey=mine", "{}").await;
    let v = problem(r, 400, "forbidden_query").await;
    assert!(v["detail"].as_str().unwrap().contains("apikey"), "{v}");
    assert!(!v.to_string().contains("s3cret"), "{v}");
    let r = tg.post("/crm/x?page=2", "{}").await;
    assert_eq!(r.status(), 202, "a name the URL does not set is fine");
    assert_eq!(
        tg.destination("crm").await["counters"]["received"],
        1,
        "the refused stored nothing"
    );
}

#[tokio::test]
async fn spoofable_forwarding_headers_never_reach_the_downstream() {
    let ds = Downstream::start().await;
    let tg = Tidegate::start(&destination("crm", &ds.url(), "")).await;
    let r = tg
        .client
        .post(tg.url("/crm/x"))
        .header("forwarded", "for=10.0.0.1;proto=https")
        .header("x-forwarded-for", "10.0.0.1")
        .header("x-forwarded-host", "admin.internal")
        .header("x-real-ip", "10.0.0.1")
        .header("x-http-method-override", "DELETE")
        .header("x-kept", "yes")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    eventually(Duration::from_secs(10), "the delivery", || async { ds.count() == 1 }).await;
    let seen = &ds.seen()[0];
    for h in [
        "forwarded",
        "x-forwarded-for",
        "x-forwarded-host",
        "x-real-ip",
        "x-http-method-override",
    ] {
        assert!(seen.header(h).is_none(), "{h} was forwarded");
    }
    assert_eq!(seen.header("x-kept").as_deref(), Some("yes"));
}

#[tokio::test]
async fn secrets_in_a_urls_query_are_shown_nowhere() {
    let ds = Downstream::start().await;
    let tg = Tidegate::start(&destination(
        "crm",
        &format!("{}/api?apikey=s3cret-key&tenant=acme", ds.url()),
        "",
    ))
    .await;
    let d = tg.destination("crm").await;
    assert_eq!(
        d["url"],
        format!("{}/api?apikey=<redacted>&tenant=<redacted>", ds.url())
    );
    let preview = tg
        .admin_post("/v1/destinations/crm/preview?path=/orders/batch", "{}")
        .await;
    let preview: Value = preview.json().await.unwrap();
    assert_eq!(
        preview["request"]["url"],
        format!("{}/api/orders/batch?apikey=<redacted>&tenant=<redacted>", ds.url()),
        "the producer's path is in the preview; the query's values are not"
    );
    let check = std::process::Command::new(env!("CARGO_BIN_EXE_tidegate"))
        .args(["check", "--config"])
        .arg(&tg.config_path)
        .output()
        .unwrap();
    let map = std::process::Command::new(env!("CARGO_BIN_EXE_tidegate"))
        .args(["map", "--format", "json", "--config"])
        .arg(&tg.config_path)
        .output()
        .unwrap();
    for out in [&check.stdout, &map.stdout] {
        let text = String::from_utf8_lossy(out);
        assert!(text.contains("apikey=<redacted>"), "{text}");
        assert!(!text.contains("s3cret"), "{text}");
    }
    let page = tg.client_get(&tg.admin_url("/ui/destinations/crm")).await;
    assert!(
        !page.contains("s3cret") && page.contains("apikey=&lt;redacted&gt;"),
        "{page}"
    );
    // The delivery itself carries the key.
    tg.send("/crm/x", "{}").await;
    eventually(Duration::from_secs(10), "the delivery", || async { ds.count() == 1 }).await;
    assert!(ds.seen()[0].path_and_query.contains("apikey=s3cret-key"));
    assert!(!tg.log().contains("s3cret"));
}

#[tokio::test]
async fn the_files_of_the_queue_are_readable_by_their_owner_only() {
    let ds = Downstream::start().await;
    let tg = Tidegate::start(&destination("crm", &ds.url(), "")).await;
    tg.send("/crm/x", "{}").await;
    let dir = tg.data_dir();
    let mut seen = Vec::new();
    for e in std::fs::read_dir(&dir).unwrap() {
        let e = e.unwrap();
        let mode = e.metadata().unwrap().permissions().mode() & 0o777;
        seen.push(e.file_name().to_string_lossy().into_owned());
        assert_eq!(mode & 0o077, 0, "{:?} is {mode:o}", e.file_name());
    }
    for f in ["journal.db", "journal.db-wal", "journal.lock", "journal.salt"] {
        assert!(seen.iter().any(|s| s == f), "{f} not among {seen:?}");
    }
    assert_eq!(
        std::fs::metadata(&dir).unwrap().permissions().mode() & 0o077,
        0,
        "the directory it made"
    );
}

#[tokio::test]
async fn a_twenty_digit_id_passes_a_transform_as_those_digits() {
    let ds = Downstream::start().await;
    let tg = Tidegate::start(&destination(
        "crm",
        &ds.url(),
        "[destination.handoff]\ntransform = '{account: .account_id, price: .price, doubled: (.n * 2)}'",
    ))
    .await;
    tg.send(
        "/crm/x",
        r#"{"account_id": 12345678901234567890123, "price": 19.90, "n": 21}"#,
    )
    .await;
    eventually(Duration::from_secs(10), "the delivery", || async { ds.count() == 1 }).await;
    assert_eq!(
        String::from_utf8_lossy(&ds.seen()[0].body),
        r#"{"account":12345678901234567890123,"price":19.90,"doubled":42}"#
    );
}

#[tokio::test]
async fn a_category_too_long_or_unprintable_is_refused_and_never_becomes_a_label() {
    let ds = Downstream::start().await;
    let tg = Tidegate::start(&destination(
        "crm",
        &ds.url(),
        "[destination.handoff]\ncategory = \".kind\"",
    ))
    .await;
    let before = tg.metrics_text().await.len();
    let long = "x".repeat(900_000);
    for kind in [long.as_str(), "a\nforged_line 1", "\u{1b}[31mred"] {
        let r = tg.post("/crm/x", &json!({ "kind": kind }).to_string()).await;
        problem(r, 422, "invalid_category").await;
    }
    let after = tg.metrics_text().await;
    assert!(after.len() < before + 10_000, "{} -> {}", before, after.len());
    assert!(!after.contains("forged_line"));
    assert_eq!(tg.destination("crm").await["queue"]["depth"], 0);
}

#[tokio::test]
async fn downstream_text_with_line_breaks_and_escapes_forges_no_log_line_and_no_terminal_sequence() {
    let ds = Downstream::start().await;
    ds.respond(|_, _| Reply::status(400).body("bad\ntidegate forged=1 level=ERROR\u{1b}[2J"));
    let tg = Tidegate::start(&destination("crm", &ds.url(), "on_failure = \"log\"")).await;
    let id = tg.send("/crm/x", "{}").await;
    tg.wait_message_state(&id, "dropped").await;
    let log = tg.log();
    assert!(
        !log.lines().any(|l| l.starts_with("tidegate forged=1")),
        "a line was forged: {log}"
    );
    let (ok, out, err) = cli(&tg, &["message", &id]);
    assert!(ok, "{err}");
    assert!(!out.contains('\u{1b}'), "{out:?}");
    assert!(out.contains("\\u{1b}"), "{out:?}");
}

#[tokio::test]
async fn a_producer_reads_its_own_message_at_the_location_it_was_given() {
    let ds = Downstream::start().await;
    let tg = Tidegate::start_with(
        &destination("crm", &ds.url(), ""),
        Extra {
            ingress: "[[ingress.producer]]\nname = \"a\"\ntoken_env = \"TOKEN_A\"\n[[ingress.producer]]\nname = \"b\"\ntoken_env = \"TOKEN_B\"",
            env: &[("TOKEN_A", "token-a-0123456789"), ("TOKEN_B", "token-b-0123456789")],
            ..Extra::default()
        },
    )
    .await;
    let r = tg
        .client
        .post(tg.url("/crm/x"))
        .bearer_auth("token-a-0123456789")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let location = r.headers()["location"].to_str().unwrap().to_string();
    let get = |token: &'static str| {
        let (c, url) = (tg.client.clone(), tg.url(&location));
        async move { c.get(url).bearer_auth(token).send().await.unwrap() }
    };
    let mine = get("token-a-0123456789").await;
    assert_eq!(mine.status(), 200);
    let v: Value = mine.json().await.unwrap();
    assert_eq!(v["destination"], "crm");
    assert!(
        ["queued", "in_flight", "delivered"].contains(&v["state"].as_str().unwrap()),
        "{v}"
    );
    problem(get("token-b-0123456789").await, 404, "not_found").await;
    let none = tg.client.get(tg.url(&location)).send().await.unwrap();
    problem(none, 401, "unauthorized").await;
}

#[tokio::test]
async fn a_config_without_an_ingress_table_starts_on_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.toml");
    std::fs::write(
        &path,
        "[admin]\nlisten = \"127.0.0.1:0\"\n[[destination]]\nname = \"crm\"\nurl = \"http://127.0.0.1:9/\"\nowner = \"o@example.com\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tidegate"))
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("listen=127.0.0.1:8080"), "{text}");
}

#[tokio::test]
async fn check_shows_every_effective_value_as_the_config_spells_it() {
    let ds = Downstream::start().await;
    let tg = Tidegate::start(&destination(
        "crm",
        &ds.url(),
        "expected_volume = \"20000/h\"\nlatency_objective = \"15m\"\nfeeds = [\"wms\"]\n[destination.review]\nsample = 0.1\non_hold_timeout = \"deliver\"\n[destination.governance]\nerror_threshold = 0.2\non_threshold = \"pause\"\n[destination.handoff]\nformat = \"csv\"\ncsv = { columns = [\"a\"] }",
    ))
    .await;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tidegate"))
        .args(["check", "--config"])
        .arg(&tg.config_path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for want in [
        "backend=sqlite",
        "expected_volume=5.56/s",
        "latency_objective=15m",
        "feeds=[wms]",
        "on_hold_timeout=deliver",
        "on_threshold=pause",
        "format=csv",
        "idle_timeout=1m",
        "body_timeout=30s",
    ] {
        assert!(text.contains(want), "{want} missing from:\n{text}");
    }
    for internal in ["Deliver", "Pause", "text/csv"] {
        assert!(!text.contains(internal), "{internal} in:\n{text}");
    }
}

#[tokio::test]
async fn preview_refuses_what_ingress_refuses() {
    let ds = Downstream::start().await;
    let tg = Tidegate::start(&destination(
        "crm",
        &ds.url(),
        "[destination.handoff]\ntransform = '{name}'",
    ))
    .await;
    let r = tg
        .client
        .post(tg.admin_url("/v1/destinations/crm/preview"))
        .header("content-type", "text/plain")
        .body("{\"name\": \"x\"}")
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        (v["ok"].clone(), v["stage"].clone()),
        (json!(false), json!("parse")),
        "{v}"
    );
    let ingress = tg
        .client
        .post(tg.url("/crm/x"))
        .header("content-type", "text/plain")
        .body("{\"name\": \"x\"}")
        .send()
        .await
        .unwrap();
    problem(ingress, 415, "unsupported_media_type").await;
}

#[tokio::test]
async fn jq_modules_and_imports_are_refused_by_check_and_halt_fails_one_message_only() {
    let dir = tempfile::tempdir().unwrap();
    for (program, want) in [
        ("include \"lib\"; .", "not supported"),
        ("import \"data\" as $d; .", "not supported"),
    ] {
        let path = dir.path().join("t.toml");
        std::fs::write(
            &path,
            format!("[[destination]]\nname = \"crm\"\nurl = \"http://127.0.0.1:9/\"\nowner = \"o\"\n[destination.handoff]\ntransform = '{program}'\n"),
        )
        .unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tidegate"))
            .args(["check", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{program} passed check");
        assert!(err.contains(want), "{err}");
    }
    let ds = Downstream::start().await;
    let tg = Tidegate::start(&destination(
        "crm",
        &ds.url(),
        "[destination.handoff]\ntransform = 'if .stop then (\"no\" | halt_error) else . end'",
    ))
    .await;
    let r = tg.post("/crm/x", r#"{"stop": true}"#).await;
    let v = problem(r, 422, "transform_failed").await;
    assert!(v["detail"].as_str().unwrap().contains("halted"), "{v}");
    // The worker lived: the next message goes through.
    tg.send("/crm/x", r#"{"stop": false}"#).await;
}

#[tokio::test]
async fn plan_fails_a_flow_whose_queue_fills_and_says_what_an_unlimited_rate_is_bound_by() {
    let ds = Downstream::start().await;
    let tg = Tidegate::start(&format!(
        "{}\n{}",
        destination(
            "crm",
            &ds.url(),
            "expected_volume = \"200/s\"\n[destination.rate_limit]\nrate = \"100/s\"\n[destination.queue]\nmax_messages = 500000"
        ),
        destination(
            "fast",
            &ds.url(),
            "expected_volume = \"10/s\"\n[destination.rate_limit]\nrate = \"unlimited\"\nmax_in_flight = 4"
        )
    ))
    .await;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tidegate"))
        .args(["plan", "--config"])
        .arg(&tg.config_path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("crm: FILLS ITS QUEUE after 1.4h"), "{text}");
    assert!(text.contains("the queue is full before that hour ends"), "{text}");
    assert!(text.contains("4 at a time") && !text.contains("drains in 0s"), "{text}");
}

#[tokio::test]
async fn map_and_plan_with_admin_alone_read_the_running_instances_chain() {
    let ds = Downstream::start().await;
    let tg = Tidegate::start(&destination(
        "crm",
        &ds.url(),
        "expected_volume = \"10/s\"\nfeeds = [\"billing\"]\n[destination.rate_limit]\nrate = \"100/s\"",
    ))
    .await;
    // From a directory with no config file at all.
    let elsewhere = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tidegate"))
            .args(args)
            .current_dir(elsewhere.path())
            .env_remove("TIDEGATE_CONFIG")
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let admin = tg.admin_url("");
    let (code, out, err) = run(&["map", "--admin", &admin]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("billing") && out.contains("rate 100.0/s") && out.contains("running"),
        "{out}"
    );
    let (code, out, err) = run(&["plan", "--admin", &admin]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains(&format!("tidegate plan for the instance at {admin}")),
        "{out}"
    );
    assert!(out.contains("crm: meets"), "{out}");
    // Without --admin, the default file is needed, and missing says so.
    let (code, _, err) = run(&["map"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("config/tidegate.toml"), "{err}");
    // With TIDEGATE_ADMIN set, usage lines do not demand --admin.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tidegate"))
        .args(["pause"])
        .env("TIDEGATE_ADMIN", &admin)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Usage: tidegate pause <DESTINATION>"), "{err}");
}

#[tokio::test]
async fn operator_commands_say_what_they_found_in_words_and_numbers_people_read() {
    let ds = Downstream::start().await;
    let tg = Tidegate::start(&destination("crm", &ds.url(), "")).await;
    let (ok, out, err) = cli(&tg, &["dead-letters", "list", "crm"]);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "no dead letters");
    tg.admin_post("/v1/destinations/crm/pause", "").await;
    for i in 0..1200 {
        tg.send(&format!("/crm/{i}"), "{}").await;
    }
    let (ok, out, err) = cli(&tg, &["status"]);
    assert!(ok, "{err}");
    assert!(out.contains("1,200"), "{out}");
}

#[tokio::test]
async fn readiness_and_logs_speak_plainly_about_a_first_start() {
    let ds = Downstream::start().await;
    let tg = Tidegate::start(&destination("crm", &ds.url(), "")).await;
    let log = tg.log();
    let line = log.lines().find(|l| l.contains("created a new, empty one")).unwrap();
    assert!(line.contains("INFO"), "{line}");
}

#[tokio::test]
async fn alert_texts_show_untrusted_text_as_text_to_a_chat_webhook() {
    let hook = Downstream::start().await;
    let ds = Downstream::start().await;
    let tg = Tidegate::start(&format!(
        "[alerts]\nwebhook_url = \"{}/hooks/T0/secret-path\"\n{}",
        hook.url(),
        destination(
            "crm",
            &ds.url(),
            "[destination.handoff]\ncategory = \".kind\"\n[destination.review]\nsample = 1.0\n[destination.governance]\nerror_threshold = 0.2\nmin_reviews = 2\non_threshold = \"alert\""
        )
    ))
    .await;
    let kind = "<!channel> <https://evil.example|click here> & co";
    for _ in 0..2 {
        let r = tg.post("/crm/x", &json!({ "kind": kind }).to_string()).await;
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["status"], "held", "{v}");
        let id = v["id"].as_str().unwrap();
        let d = tg
            .admin_post(&format!("/v1/reviews/{id}/reject"), r#"{"reviewer": "ann"}"#)
            .await;
        assert_eq!(d.status(), 200);
    }
    let waited = tokio::time::timeout(Duration::from_secs(20), async {
        while hook.count() == 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "no alert at the webhook: {}", tg.log());
    let body: Value = serde_json::from_slice(&hook.seen()[0].body).unwrap();
    let text = body["text"].as_str().unwrap();
    assert!(!text.contains("<!channel>") && !text.contains("<https://"), "{text}");
    assert!(text.contains("&lt;!channel&gt;") && text.contains("&amp; co"), "{text}");
    // The webhook's URL is its secret: shown as <redacted>, readably.
    let check = std::process::Command::new(env!("CARGO_BIN_EXE_tidegate"))
        .args(["check", "--config"])
        .arg(&tg.config_path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&check.stdout);
    assert!(
        text.contains(&format!("webhook_url={}/<redacted>", hook.url())),
        "{text}"
    );
    assert!(!text.contains("secret-path") && !text.contains("%3C"), "{text}");
    // The internal alerts destination is not an AI flow: not in the report.
    let (ok, out, err) = cli(&tg, &["report"]);
    assert!(ok, "{err}");
    assert!(!out.contains("_alerts"), "{out}");
}

#[tokio::test]
async fn exports_and_reports_defuse_spreadsheet_formulas_and_terminals_see_no_escapes() {
    let ds = Downstream::start().await;
    let tg = Tidegate::start(&destination(
        "crm",
        &ds.url(),
        "[destination.handoff]\ncategory = \".kind\"\n[destination.review]\nhold_when = \".hold == true\"",
    ))
    .await;
    let kind = "=HYPERLINK(\"https://evil.example\")";
    let held = |body: Value| {
        let tg = &tg;
        async move {
            let v: Value = tg.post("/crm/x", &body.to_string()).await.json().await.unwrap();
            assert_eq!(v["status"], "held", "{v}");
            v["id"].as_str().unwrap().to_string()
        }
    };
    let id = held(json!({"kind": kind, "hold": true, "text": "\u{1b}[2J\u{1b}]0;owned\u{7}"})).await;
    // The terminal shows the escapes as text, never obeys them.
    let (ok, out, err) = cli(&tg, &["reviews", "list"]);
    assert!(ok, "{err}");
    assert!(
        out.contains(&id) && !out.contains('\u{1b}') && !out.contains('\u{7}'),
        "{out:?}"
    );
    let d = tg
        .admin_post(
            &format!("/v1/reviews/{id}/edit"),
            &json!({"reviewer": "=cmd()", "note": "+cmd|' /C calc'!A0", "body": {"kind": kind, "hold": false}})
                .to_string(),
        )
        .await;
    assert_eq!(d.status(), 200, "{}", d.text().await.unwrap());
    let cells = |csv: &str| -> Vec<String> {
        let mut r = csv::ReaderBuilder::new().from_reader(csv.as_bytes());
        r.records()
            .flat_map(|rec| rec.unwrap().iter().map(str::to_string).collect::<Vec<_>>())
            .collect()
    };
    let api = tg.client_get(&tg.admin_url("/v1/corrections?format=csv")).await;
    let (ok, exported, err) = cli(&tg, &["corrections", "export", "--format", "csv"]);
    assert!(ok, "{err}");
    for csv in [&api, &exported] {
        let cells = cells(csv);
        assert!(cells.contains(&format!("'{kind}")), "{cells:?}");
        assert!(cells.contains(&"'=cmd()".to_string()), "{cells:?}");
        assert!(cells.contains(&"'+cmd|' /C calc'!A0".to_string()), "{cells:?}");
        assert!(
            cells.iter().all(|c| !c.starts_with(['=', '+', '-', '@', '\t', '\r'])),
            "{cells:?}"
        );
    }
    let (ok, report, err) = cli(&tg, &["report", "--format", "csv"]);
    assert!(ok, "{err}");
    assert!(cells(&report).contains(&format!("'{kind}")), "{report}");
}

/// What Python's `http.client` sees POSTing a body over `max_body`, `n`
/// times: (413s with their problem body, broken pipes, anything else).
fn post_big(tg: &Tidegate, size: usize, n: usize) -> (u64, u64, Value) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/clients/post_big.py");
    let out = std::process::Command::new("python3")
        .arg(script)
        .arg(tg.ingress.port().to_string())
        .arg(size.to_string())
        .arg(n.to_string())
        .output()
        .expect("python3 (scripts/install-test-deps.sh installs it)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    (
        v["answered"].as_u64().unwrap(),
        v["broken"].as_u64().unwrap(),
        v["other"].clone(),
    )
}

#[tokio::test]
async fn a_body_over_max_body_gets_its_413_even_from_a_client_that_sends_it_all_first() {
    let ds = Downstream::start().await;
    let tg = Tidegate::start(&destination("crm", &ds.url(), "")).await;
    for (size, n) in [(2 << 20, 30), (20 << 20, 30)] {
        let (answered, broken, other) = post_big(&tg, size, n);
        assert_eq!((answered, broken), (n as u64, 0), "{size} bytes: other {other}");
    }
    assert_eq!(tg.destination("crm").await["counters"]["received"], 0);
}

#[tokio::test]
async fn a_client_that_waits_for_100_continue_is_refused_before_it_sends_the_body() {
    let ds = Downstream::start().await;
    let tg = Tidegate::start(&destination("crm", &ds.url(), "")).await;
    let mut s = TcpStream::connect(tg.ingress).await.unwrap();
    s.write_all(
        format!(
            "POST /crm/x HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\nexpect: 100-continue\r\ncontent-length: {}\r\n\r\n",
            20 << 20
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    // No body sent: the answer comes anyway, and it is not "100 Continue".
    let answer = read_until_closed(&mut s, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(!answer.contains("100 Continue"), "{answer}");
    // Refusals that come before the body is read linger the same way.
    let mut s = TcpStream::connect(tg.ingress).await.unwrap();
    let body = vec![b'a'; 4 << 20];
    s.write_all(
        format!(
            "POST /nope/x HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    s.write_all(&body).await.unwrap();
    let answer = read_until_closed(&mut s, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
}

/// The resident memory of each handoff worker of `pid`, in bytes.
fn workers_resident(pid: u32) -> Vec<u64> {
    let mut children = Vec::new();
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            let list = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
            children.extend(list.split_whitespace().map(str::to_string));
        }
    }
    children
        .iter()
        .filter_map(|c| std::fs::read_to_string(format!("/proc/{c}/status")).ok())
        .filter_map(|s| {
            let kb = s
                .lines()
                .find(|l| l.starts_with("VmRSS:"))?
                .split_whitespace()
                .nth(1)?
                .parse::<u64>()
                .ok()?;
            Some(kb * 1024)
        })
        .collect()
}

#[tokio::test]
async fn a_worker_that_grew_large_on_one_message_does_not_stay_large_when_idle() {
    let ds = Downstream::start().await;
    let tg = Tidegate::start(&destination(
        "crm",
        &ds.url(),
        // 200,000 strings of 400 bytes: the worker's heap grows past 64
        // MiB and (freed in pieces) would not shrink again by itself; in
        // well under the sandbox's 2 s even in a debug build on a busy
        // machine (1.5 million one-byte strings took half of it).
        "[destination.handoff]\ntransform = 'if .big then {n: ((\"x\" * 400 + \",\") * 200000 | split(\",\") | length)} else . end'",
    ))
    .await;
    let r = tg.post("/crm/x", r#"{"big": true}"#).await;
    assert_eq!(r.status(), 202);
    tg.send("/crm/x", r#"{"big": false}"#).await;
    eventually(Duration::from_secs(20), "both delivered", || async { ds.count() == 2 }).await;
    eventually(
        Duration::from_secs(10),
        "no worker holding what the big one took",
        || async {
            let rss = workers_resident(tg.pid());
            !rss.is_empty() && rss.iter().all(|r| *r < 64 << 20)
        },
    )
    .await;
}
