use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::{
    accepted_id, addr_in, all_delivered, destination, eventually, journal_verify, Downstream, Extra, RawTidegate,
    Reply, Tidegate,
};

#[tokio::test]
async fn sigterm_exits_zero_and_queued_messages_are_delivered_after_restart() {
    let ds = Downstream::start().await;
    let mut tg = Tidegate::start(&destination("crm", &ds.url(), "")).await;
    tg.admin_post("/v1/destinations/crm/pause", "").await;
    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(tg.send(&format!("/crm/{i}"), &format!("{{\"n\":{i}}}")).await);
    }
    let status = tg.terminate().await;
    assert_eq!(status.code(), Some(0), "log:\n{}", tg.log());
    assert!(tg.log().contains("stopped cleanly"));

    tg.spawn(&[]).await;
    // The operator's pause survives the restart.
    assert_eq!(tg.destination("crm").await["state"], "paused");
    assert_eq!(tg.destination("crm").await["queue"]["depth"], 20);
    tg.admin_post("/v1/destinations/crm/resume", "").await;
    for id in &ids {
        tg.wait_message_state(id, "delivered").await;
    }
    let delivered: HashSet<_> = ds.seen().iter().map(|s| s.message_id()).collect();
    assert_eq!(delivered.len(), 20);
}

#[tokio::test]
async fn sigterm_lets_an_attempt_in_flight_finish() {
    let ds = Downstream::start().await;
    ds.respond(|_, _| Reply::status(200).delay(Duration::from_millis(1500)));
    let mut tg = Tidegate::start(&destination("crm", &ds.url(), "")).await;
    let id = tg.send("/crm/x", "{}").await;
    eventually(Duration::from_secs(5), "the attempt to start", || async {
        ds.count() == 1
    })
    .await;
    let status = tg.terminate().await;
    assert!(status.success(), "{status:?}; log:\n{}", tg.log());
    // Restarted, the message is known as delivered: it was not cut off.
    tg.spawn(&[]).await;
    assert_eq!(tg.message(&id).await["state"], "delivered");
    assert_eq!(ds.count(), 1);
}

#[tokio::test]
async fn a_second_sigterm_stops_without_waiting_for_attempts_in_flight() {
    let ds = Downstream::start().await;
    // The first attempt hangs far past any deadline of this test.
    ds.respond(|_, n| match n {
        1 => Reply::status(200).delay(Duration::from_secs(600)),
        _ => Reply::status(200),
    });
    let extra = Extra {
        shutdown_timeout: Some("10m"),
        ..Extra::default()
    };
    let mut tg = Tidegate::start_with(&destination("crm", &ds.url(), "timeout = \"10m\""), extra).await;
    let id = tg.send("/crm/x", "{}").await;
    eventually(Duration::from_secs(5), "the attempt to start", || async {
        ds.count() == 1
    })
    .await;
    crate::support::signal(tg.pid(), "TERM");
    eventually(Duration::from_secs(10), "the drain to start", || {
        std::future::ready(tg.log().contains("shutdown requested"))
    })
    .await;
    crate::support::signal(tg.pid(), "TERM");
    // Without the second signal it would wait the full 10 minutes.
    let status = tokio::time::timeout(Duration::from_secs(30), tg.wait_exit())
        .await
        .expect("exited after the second SIGTERM");
    assert_eq!(status.code(), Some(0), "log:\n{}", tg.log());
    assert!(tg.log().contains("second stop signal"), "{}", tg.log());
    assert!(tg.log().contains("stopped cleanly"), "{}", tg.log());

    // The cut-off attempt was not lost: it is made again after the restart.
    tg.spawn(&[]).await;
    tg.wait_message_state(&id, "delivered").await;
    assert_eq!(ds.attempts_for(&id).len(), 2);
}

#[tokio::test]
async fn kill_9_under_concurrent_load_loses_no_acknowledged_message() {
    let ds = Downstream::start().await;
    // A slowish, sometimes failing downstream keeps messages in every state.
    ds.respond(|s, n| {
        if s.body.len() % 7 == 0 && n == 1 {
            Reply::status(503)
        } else {
            Reply::status(200).delay(Duration::from_millis(5))
        }
    });
    let mut tg = Tidegate::start(&destination(
        "crm",
        &ds.url(),
        "[destination.rate_limit]\nrate = \"unlimited\"\nmax_in_flight = 16\n[destination.retry]\ninitial_backoff = \"20ms\"\njitter = false",
    ))
    .await;
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut producers = Vec::new();
    for p in 0..8 {
        let client = tg.client.clone();
        let url = tg.url("/crm/load");
        let acked = acked.clone();
        producers.push(tokio::spawn(async move {
            for i in 0..10_000 {
                let body = "x".repeat(10 + (p * 37 + i * 11) % 900);
                match client.post(&url).body(body).send().await {
                    Ok(r) if r.status() == 202 => {
                        let v: serde_json::Value = match r.json().await {
                            Ok(v) => v,
                            Err(_) => return,
                        };
                        acked.lock().unwrap().push(v["id"].as_str().unwrap().to_string());
                    }
                    _ => return, // the process died under us
                }
            }
        }));
    }
    eventually(Duration::from_secs(30), "a few hundred acknowledged", || async {
        acked.lock().unwrap().len() >= 400
    })
    .await;
    tg.kill9();
    for p in producers {
        let _ = p.await;
    }
    let acked: Vec<String> = acked.lock().unwrap().clone();
    tg.spawn(&[]).await;
    all_delivered(&ds, &acked, Duration::from_secs(60)).await;
    let d = tg.destination("crm").await;
    eventually(Duration::from_secs(20), "the queue to drain", || async {
        tg.destination("crm").await["queue"]["depth"] == 0
    })
    .await;
    assert!(d["counters"]["received"].as_u64().is_some());
}

#[tokio::test]
async fn a_corrupted_database_page_does_not_stop_start_up() {
    let ds = Downstream::start().await;
    let mut tg = Tidegate::start(&destination("crm", &ds.url(), "")).await;
    tg.admin_post("/v1/destinations/crm/pause", "").await;
    for i in 0..200 {
        tg.send(&format!("/crm/{i}"), &"y".repeat(2000)).await;
    }
    // A clean stop checkpoints everything into the main database file.
    assert!(tg.terminate().await.success());
    // Scribble over a stretch of pages in the middle of it.
    let path = tg.data_dir().join("journal.db");
    let mut bytes = std::fs::read(&path).unwrap();
    assert!(bytes.len() > 200 * 1024, "database is {} bytes", bytes.len());
    let mid = bytes.len() / 2;
    for b in &mut bytes[mid..mid + 16 * 1024] {
        *b = 0x5A;
    }
    std::fs::write(&path, bytes).unwrap();
    tg.spawn(&[]).await;
    let r = tg.client.get(tg.admin_url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    // It still takes and delivers new work.
    tg.admin_post("/v1/destinations/crm/resume", "").await;
    let id = tg.send("/crm/after", "{}").await;
    tg.wait_message_state(&id, "delivered").await;
    // What survived is delivered; the damage was reported.
    eventually(Duration::from_secs(30), "the queue to drain", || async {
        tg.destination("crm").await["queue"]["depth"] == 0
    })
    .await;
    let delivered = ds.count();
    assert!(delivered > 100, "intact messages were delivered ({delivered})");
    // The damaged file is kept for forensics, not deleted.
    assert!(tg.data_dir().join("quarantine").read_dir().unwrap().next().is_some());
    let log = tg.log();
    assert!(
        log.contains("quarantin") || log.contains("checksum"),
        "the corruption is reported in the log:\n{log}"
    );
}

#[tokio::test]
async fn a_second_tidegate_on_the_same_storage_is_refused_and_a_crash_frees_it() {
    let ds = Downstream::start().await;
    let mut tg = Tidegate::start(&destination("crm", &ds.url(), "")).await;
    tg.admin_post("/v1/destinations/crm/pause", "").await;
    let id = tg.send("/crm/a", "{}").await;

    // The same config: the same storage.path (ports are 0).
    let (status, err) = RawTidegate::spawn(&tg.config_path)
        .exit_within(Duration::from_secs(30))
        .await;
    assert!(!status.success(), "{err}");
    let expected = format!("is in use by another tidegate (pid {})", tg.pid());
    assert!(err.contains(&expected), "{err}");
    // The same config with fixed ports, as a service's would be: it is the
    // journal that is named, not the ports the first one holds.
    let fixed = std::fs::read_to_string(&tg.config_path)
        .unwrap()
        .replacen("listen = \"127.0.0.1:0\"", &format!("listen = \"{}\"", tg.ingress), 1)
        .replacen("listen = \"127.0.0.1:0\"", &format!("listen = \"{}\"", tg.admin), 1);
    let fixed_path = tg.dir.path().join("fixed-ports.toml");
    std::fs::write(&fixed_path, fixed).unwrap();
    let (status, err) = RawTidegate::spawn(&fixed_path)
        .exit_within(Duration::from_secs(30))
        .await;
    assert!(!status.success(), "{err}");
    assert!(err.contains(&expected), "{err}");

    // The first one was not disturbed: its message is queued and goes out.
    assert_eq!(tg.destination("crm").await["queue"]["depth"], 1);
    tg.admin_post("/v1/destinations/crm/resume", "").await;
    tg.wait_message_state(&id, "delivered").await;

    // kill -9 lets go of the lock: the restart comes up on the same files.
    tg.kill9();
    tg.spawn(&[]).await;
    assert_eq!(tg.message(&id).await["state"], "delivered");
    assert_eq!(ds.count(), 1);
}

/// Whether `pid` has a handler installed for SIGTERM (`SigCgt` in
/// /proc/PID/status, one bit per signal, SIGTERM = 15).
fn catches_sigterm(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            let mask = s.lines().find_map(|l| l.strip_prefix("SigCgt:"))?.trim().to_string();
            u64::from_str_radix(&mask, 16).ok()
        })
        .is_some_and(|mask| mask & (1 << (15 - 1)) != 0)
}

/// Holds a stopped instance's journal write lock until the connection is
/// rolled back or dropped: the next start stalls opening the journal
/// (SQLite waits for the lock).
fn stall_the_next_start(tg: &Tidegate) -> rusqlite::Connection {
    let db = rusqlite::Connection::open(tg.data_dir().join("journal.db")).unwrap();
    db.execute_batch("BEGIN IMMEDIATE").unwrap();
    db
}

#[tokio::test]
async fn sigterm_during_start_up_stops_cleanly_once_up() {
    let ds = Downstream::start().await;
    let mut tg = Tidegate::start(&destination("crm", &ds.url(), "")).await;
    tg.admin_post("/v1/destinations/crm/pause", "").await;
    for i in 0..3 {
        tg.send(&format!("/crm/{i}"), "{}").await;
    }
    assert!(tg.terminate().await.success(), "{}", tg.log());

    let db = stall_the_next_start(&tg);
    let mut child = RawTidegate::spawn(&tg.config_path);
    let pid = child.0.id();
    eventually(
        Duration::from_secs(20),
        "tidegate to catch SIGTERM while starting",
        || std::future::ready(catches_sigterm(pid)),
    )
    .await;
    crate::support::signal(pid, "TERM");
    db.execute_batch("ROLLBACK").unwrap();
    drop(db);

    let (status, err) = child.exit_within(Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(0), "{err}");
    assert!(err.contains("stopped cleanly"), "{err}");
    tg.spawn(&[]).await;
    assert_eq!(tg.destination("crm").await["queue"]["depth"], 3);
}

#[tokio::test]
async fn while_the_journal_opens_the_admin_port_says_alive_but_not_ready() {
    let ds = Downstream::start().await;
    let mut tg = Tidegate::start(&destination("crm", &ds.url(), "")).await;
    tg.admin_post("/v1/destinations/crm/pause", "").await;
    tg.send("/crm/1", "{}").await;
    assert!(tg.terminate().await.success(), "{}", tg.log());

    // The start stalls opening the journal, as it would salvaging a large one.
    let db = stall_the_next_start(&tg);
    let mut child = RawTidegate::spawn(&tg.config_path);
    let mut stderr = child.stderr_lines();
    let admin = addr_in(&stderr.until("admin listener up").await, "admin");
    let get = |path: &str| tg.client.get(format!("http://{admin}{path}")).send();
    assert_eq!(get("/healthz").await.unwrap().status(), 200);
    assert_eq!(get("/readyz").await.unwrap().status(), 503);
    let r = get("/v1/destinations").await.unwrap();
    assert_eq!(r.status(), 503);
    let problem: serde_json::Value = r.json().await.unwrap();
    assert_eq!(problem["code"], "starting");

    // Up: the same port serves everything.
    db.execute_batch("ROLLBACK").unwrap();
    drop(db);
    stderr.until("tidegate ready").await;
    assert_eq!(get("/readyz").await.unwrap().status(), 200);
    let d: serde_json::Value = get("/v1/destinations/crm").await.unwrap().json().await.unwrap();
    assert_eq!(d["queue"]["depth"], 1);
}

/// Which of tidegate's output streams loses its reader.
#[derive(Clone, Copy, PartialEq)]
enum Gone {
    Stdout,
    Stderr,
}

/// Starts tidegate with the reader of `gone` closed at once (start-up takes
/// milliseconds, so before its first line) and checks that it serves
/// (readiness, operator actions that log, an append), stops cleanly on
/// SIGTERM, and keeps the message. The other stream is read throughout.
async fn serves_with_a_reader_gone(gone: Gone) {
    let ds = Downstream::start().await;
    let mut tg = Tidegate::start(&destination("crm", &ds.url(), "")).await;
    tg.admin_post("/v1/destinations/crm/pause", "").await;
    assert!(tg.terminate().await.success());

    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tidegate"))
        .arg("serve")
        .arg("--config")
        .arg(&tg.config_path)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let kept: Box<dyn std::io::Read + Send> = match gone {
        Gone::Stdout => {
            drop(child.stdout.take());
            Box::new(child.stderr.take().unwrap())
        }
        Gone::Stderr => {
            drop(child.stderr.take());
            Box::new(child.stdout.take().unwrap())
        }
    };
    let mut raw = RawTidegate(child);
    // Both the listening line (stdout) and the ready line (stderr) name
    // the addresses.
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        let mut lines = Vec::new();
        for line in std::io::BufReader::new(kept).lines().map_while(Result::ok) {
            if line.contains("ingress=") {
                let _ = tx.send(line.clone());
            }
            lines.push(line);
        }
        lines.join("\n")
    });
    let line = tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(30)))
        .await
        .unwrap()
        .expect("a line with the addresses");
    let (admin, ingress) = (addr_in(&line, "admin"), addr_in(&line, "ingress"));

    let client = reqwest::Client::new();
    let readyz = client.get(format!("http://{admin}/readyz")).send().await.unwrap();
    assert_eq!(readyz.status(), 200);
    // Each of these logs a line.
    for action in ["resume", "pause"] {
        let r = client
            .post(format!("http://{admin}/v1/destinations/crm/{action}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{action}");
    }
    let sent = client
        .post(format!("http://{ingress}/crm/x"))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(sent.status(), 202);

    crate::support::signal(raw.0.id(), "TERM");
    let (status, _) = raw.exit_within(Duration::from_secs(30)).await;
    let output = reader.join().unwrap();
    assert_eq!(status.code(), Some(0), "{output}");
    if gone == Gone::Stdout {
        assert!(output.contains("stopped cleanly"), "{output}");
    }
    tg.spawn(&[]).await;
    assert_eq!(tg.destination("crm").await["queue"]["depth"], 1);
}

#[tokio::test]
async fn a_stdout_reader_that_goes_away_does_not_stop_it() {
    serves_with_a_reader_gone(Gone::Stdout).await;
}

#[tokio::test]
async fn a_log_reader_that_goes_away_does_not_stop_it() {
    serves_with_a_reader_gone(Gone::Stderr).await;
}

#[tokio::test]
async fn journal_verify_reports_counts_and_finds_a_damaged_row() {
    let ds = Downstream::start().await;
    let mut tg = Tidegate::start(&destination("crm", &ds.url(), "")).await;
    tg.admin_post("/v1/destinations/crm/pause", "").await;
    for i in 0..5 {
        tg.send(&format!("/crm/{i}"), "{\"v\":1}").await;
    }
    let config = tg.config_path.clone();
    // Offline only: refused while the instance runs, which goes on serving.
    let out = journal_verify(&config);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("in use by another tidegate (pid {})", tg.pid())),
        "{err}"
    );
    assert_eq!(tg.destination("crm").await["queue"]["depth"], 5);

    assert!(tg.terminate().await.success());
    let out = journal_verify(&config);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}");
    assert!(text.contains("integrity_check: ok"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("crm") && l.contains("queued") && l.contains(" 5 ")),
        "{text}"
    );
    assert!(text.contains("verdict: healthy"), "{text}");

    // Change one body behind tidegate's back.
    let db = rusqlite::Connection::open(tg.data_dir().join("journal.db")).unwrap();
    db.execute(
        "UPDATE messages SET body = x'00' WHERE seq = (SELECT min(seq) FROM messages)",
        [],
    )
    .unwrap();
    drop(db);
    let out = journal_verify(&config);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("rows failing their checksum: 1"), "{text}");
    assert!(text.contains("verdict: DAMAGED"), "{text}");
}

/// What is done to a killed instance's files before it is started again.
#[derive(Clone, Copy, Debug)]
enum Damage {
    DeleteWal,
    /// The WAL cut at this fraction of its length.
    TruncateWal(f64),
    /// This many 64-byte runs of random bytes written at random offsets of
    /// the database file, from this seed.
    RandomBytes {
        runs: usize,
        seed: u64,
    },
    /// The root page of the messages table (an interior page) overwritten,
    /// once the WAL has been folded into the database file.
    InteriorPage,
}

struct DamageReport {
    acked: usize,
    missing: u64,
    reported_lost: u64,
}

/// What tidegate reported lost over every start in `log`: each message it
/// quarantined (by id), and the `lost=N` of every salvage and WAL check.
fn losses_in_log(log: &str) -> u64 {
    let field = |line: &'_ str, name: &str| -> Option<String> {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(name))
            .map(|v| v.trim_matches('"').to_string())
    };
    let quarantined: HashSet<String> = log
        .lines()
        .filter(|l| l.contains("failed its checksum; quarantined"))
        .filter_map(|l| field(l, "id="))
        .collect();
    let counted: u64 = log
        .lines()
        .filter_map(|l| field(l, "lost="))
        .filter_map(|n| n.parse::<u64>().ok())
        .sum();
    quarantined.len() as u64 + counted
}

/// Overwrites the root page of the messages table, an interior page above
/// every row, in a stopped instance's database.
fn wreck_the_messages_root_page(db: &std::path::Path) {
    // Opening and closing the database checkpoints the WAL into it, so the
    // damage is not hidden by a newer copy of the page.
    let c = rusqlite::Connection::open(db).unwrap();
    let root: u64 = c
        .query_row("SELECT rootpage FROM sqlite_master WHERE name = 'messages'", [], |r| {
            r.get(0)
        })
        .unwrap();
    let page: u64 = c.query_row("PRAGMA page_size", [], |r| r.get(0)).unwrap();
    drop(c);
    let mut bytes = std::fs::read(db).unwrap();
    let at = ((root - 1) * page) as usize;
    assert_eq!(bytes[at], 0x05, "the table's root is an interior page");
    bytes[at..at + page as usize].fill(0xa5);
    std::fs::write(db, bytes).unwrap();
}

/// Acknowledges 300 messages to a paused destination, kills tidegate with
/// SIGKILL, damages its files, starts it again and drains the queue; counts
/// acknowledged messages never delivered and what tidegate reported lost.
async fn survive(damage: Damage) -> DamageReport {
    use rand::{Rng, SeedableRng};
    let ds = Downstream::start().await;
    let mut tg = Tidegate::start(&destination("crm", &ds.url(), "")).await;
    tg.admin_post("/v1/destinations/crm/pause", "").await;
    let mut acked = Vec::new();
    for i in 0..300 {
        acked.push(tg.send(&format!("/crm/{i}"), &"w".repeat(500)).await);
    }
    tg.kill9();
    let db = tg.data_dir().join("journal.db");
    let wal = tg.data_dir().join("journal.db-wal");
    match damage {
        Damage::DeleteWal => {
            let _ = std::fs::remove_file(&wal);
            let _ = std::fs::remove_file(tg.data_dir().join("journal.db-shm"));
        }
        Damage::TruncateWal(share) => {
            let len = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
            let f = std::fs::OpenOptions::new().write(true).open(&wal).unwrap();
            f.set_len((len as f64 * share) as u64).unwrap();
        }
        Damage::RandomBytes { runs, seed } => {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let mut bytes = std::fs::read(&db).unwrap();
            for _ in 0..runs {
                let at = rng.random_range(0..bytes.len().saturating_sub(64).max(1));
                let end = (at + 64).min(bytes.len());
                rng.fill(&mut bytes[at..end]);
            }
            std::fs::write(&db, bytes).unwrap();
        }
        Damage::InteriorPage => wreck_the_messages_root_page(&db),
    }
    // Damage the start-up check cannot see (a page half-checkpointed when
    // the WAL went) may surface while running: tidegate then stops with an
    // error, leaving a marker so that the next start salvages. A supervisor
    // restarts it; so does this loop, a bounded number of times.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut starts = 0;
    'run: loop {
        starts += 1;
        assert!(starts <= 3, "{damage:?}: started {starts} times:\n{}", tg.log());
        tg.spawn(&[]).await;
        let r = tg.client.get(tg.admin_url("/readyz")).send().await.unwrap();
        assert_eq!(r.status(), 200, "{damage:?}: not ready:\n{}", tg.log());
        let _ = tg.client.post(tg.admin_url("/v1/destinations/crm/resume")).send().await;
        loop {
            if let Some(status) = tg.exited() {
                assert!(
                    tg.log().contains("corruption detected while running"),
                    "{damage:?}: exited ({status}) for another reason:\n{}",
                    tg.log()
                );
                continue 'run;
            }
            let depth = match tg.client.get(tg.admin_url("/v1/destinations/crm")).send().await {
                Ok(r) => r
                    .json::<serde_json::Value>()
                    .await
                    .ok()
                    .map(|d| d["queue"]["depth"].clone()),
                Err(_) => None,
            };
            if depth == Some(serde_json::json!(0)) {
                break 'run;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{damage:?}: the queue did not drain: {depth:?}\n{}",
                tg.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // A start stopped by corruption takes its metrics with it; the log is
    // the record that outlives it (as in an operator's log store). So the
    // losses are counted from the log of every start, and the metric must
    // agree with it when a single start did all the work.
    let log = tg.log();
    let reported_lost = losses_in_log(&log);
    let metrics = tg.metrics_text().await;
    let metric: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("tidegate_journal_corrupt_records_total "))
        .map(|v| v.trim().parse().unwrap())
        .unwrap();
    if starts == 1 {
        assert_eq!(
            metric, reported_lost,
            "{damage:?}: the metric and the log disagree:\n{log}"
        );
    }
    let delivered: HashSet<String> = ds.seen().iter().map(|s| s.message_id()).collect();
    let missing = acked.iter().filter(|id| !delivered.contains(*id)).count() as u64;
    eprintln!(
        "{damage:?}: {missing} of {} acknowledged messages missing, {reported_lost} reported lost over {starts} start(s)",
        acked.len()
    );
    if missing > reported_lost {
        eprintln!("{damage:?} log:\n{log}");
    }
    DamageReport {
        acked: acked.len(),
        missing,
        reported_lost,
    }
}

#[tokio::test]
async fn a_deleted_wal_is_survived_and_every_acknowledged_message_is_delivered_or_counted_lost() {
    let r = survive(Damage::DeleteWal).await;
    // Whatever the WAL held is gone; tidegate must say exactly how much.
    assert_eq!(r.missing, r.reported_lost, "of {} acknowledged", r.acked);
}

#[tokio::test]
async fn a_truncated_wal_is_survived_and_every_acknowledged_message_is_delivered_or_counted_lost() {
    for share in [0.5, 0.9] {
        let r = survive(Damage::TruncateWal(share)).await;
        assert!(r.missing <= r.reported_lost, "{share}: of {} acknowledged", r.acked);
    }
}

#[tokio::test]
async fn a_damaged_interior_page_loses_no_message_and_reports_none_lost() {
    // The leaves below the page are intact; salvage reads them directly.
    let r = survive(Damage::InteriorPage).await;
    assert_eq!((r.missing, r.reported_lost), (0, 0), "of {} acknowledged", r.acked);
}

#[tokio::test]
async fn a_kill_9_during_a_salvage_loses_nothing_the_next_start_salvages_again() {
    let ds = Downstream::start().await;
    let mut tg = Tidegate::start(&destination(
        "crm",
        &ds.url(),
        "[destination.rate_limit]\nrate = \"unlimited\"\nmax_in_flight = 32",
    ))
    .await;
    tg.admin_post("/v1/destinations/crm/pause", "").await;
    // Enough messages that the salvage takes a moment (tens of
    // milliseconds), so that a kill can land inside it.
    let mut producers = Vec::new();
    for p in 0..16 {
        let client = tg.client.clone();
        let url = tg.url("/crm/x");
        producers.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in 0..200 {
                let r = client
                    .post(&url)
                    .body(format!("{p}-{i}-{}", "w".repeat(500)))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 202);
                ids.push(accepted_id(r).await);
            }
            ids
        }));
    }
    let mut acked = Vec::new();
    for p in producers {
        acked.extend(p.await.unwrap());
    }
    tg.kill9();

    // Killed once the damaged files are in quarantine and the salvage is
    // copying rows. A kill that comes too late (the salvage done) is tried
    // again on the salvaged journal, damaged the same way.
    let db = tg.data_dir().join("journal.db");
    let mut tries = 0;
    loop {
        tries += 1;
        assert!(tries <= 5, "no kill landed inside a salvage");
        wreck_the_messages_root_page(&db);
        let mut raw = RawTidegate::spawn(&tg.config_path);
        raw.stderr_lines()
            .until("copying what is intact into a fresh journal")
            .await;
        raw.0.kill().unwrap();
        raw.0.wait().unwrap();
        if tg.data_dir().join("journal.salvage").exists() {
            break;
        }
    }
    // The journal file beside the marker is the salvage's partial output:
    // verify must not call it healthy.
    let out = journal_verify(&tg.config_path);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{text}{err}");
    assert!(text.contains("a salvage was cut short"), "{text}{err}");

    tg.spawn(&[]).await;
    assert!(tg.log().contains("a salvage was cut short"), "{}", tg.log());
    tg.admin_post("/v1/destinations/crm/resume", "").await;
    all_delivered(&ds, &acked, Duration::from_secs(60)).await;
    assert_eq!(losses_in_log(&tg.log()), 0, "{}", tg.log());
}

#[tokio::test]
async fn random_bytes_in_the_database_file_are_survived_and_losses_are_counted() {
    // CI runs 4 seeds; `TIDEGATE_DAMAGE_SEEDS=N` sweeps N of them.
    let seeds: u64 = std::env::var("TIDEGATE_DAMAGE_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4);
    for seed in 1..=seeds {
        let r = survive(Damage::RandomBytes { runs: 8, seed }).await;
        assert!(r.missing <= r.reported_lost, "seed {seed}: of {} acknowledged", r.acked);
    }
}
