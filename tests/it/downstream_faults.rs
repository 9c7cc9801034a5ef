//! Downstream faults made to happen with a raw TCP server that misbehaves
//! on purpose; each must map to the right outcome class, and none may stall
//! delivery to a healthy destination.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::support::{destination, eventually, Downstream, Reply, Tidegate};

#[derive(Clone, Copy)]
enum Evil {
    ResetBeforeHeaders,
    ResetAfterHeaders,
    HeadersNeverSent,
    TrickledBody,
    HugeErrorBody,
    HugeSuccessBody,
    InvalidHttp,
}

/// Reads one request's head, then misbehaves.
async fn evil_server(mode: Evil) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                match mode {
                    Evil::ResetBeforeHeaders => {
                        let _ = s.set_zero_linger(); // RST, not FIN
                        drop(s);
                    }
                    Evil::ResetAfterHeaders => {
                        let _ = s
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\npartial")
                            .await;
                        let _ = s.flush().await;
                        let _ = s.set_zero_linger();
                        drop(s);
                    }
                    Evil::HeadersNeverSent => tokio::time::sleep(Duration::from_secs(30)).await,
                    Evil::TrickledBody => {
                        let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n").await;
                        for _ in 0..1000 {
                            if s.write_all(b"x").await.is_err() {
                                return;
                            }
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                    Evil::HugeErrorBody | Evil::HugeSuccessBody => {
                        let status = if matches!(mode, Evil::HugeErrorBody) {
                            "500 Internal Server Error"
                        } else {
                            "200 OK"
                        };
                        let len = 64usize << 20;
                        let head = format!("HTTP/1.1 {status}\r\ncontent-length: {len}\r\n\r\n");
                        if s.write_all(head.as_bytes()).await.is_err() {
                            return;
                        }
                        let chunk = vec![b'e'; 1 << 16];
                        for _ in 0..(len / chunk.len()) {
                            if s.write_all(&chunk).await.is_err() {
                                return;
                            }
                        }
                    }
                    Evil::InvalidHttp => {
                        let _ = s.write_all(b"HELLO THERE\r\nthis is not http\r\n\r\n").await;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn each_downstream_fault_maps_to_its_outcome_class() {
    let cases = [
        ("reset", Evil::ResetBeforeHeaders, "connect_error"),
        ("reset-mid-body", Evil::ResetAfterHeaders, "connect_error"),
        ("silent", Evil::HeadersNeverSent, "timeout"),
        ("trickle", Evil::TrickledBody, "timeout"),
        ("huge-error", Evil::HugeErrorBody, "http_5xx"),
        ("invalid", Evil::InvalidHttp, "connect_error"),
    ];
    let mut dests = String::new();
    for (name, mode, _) in cases {
        let addr = evil_server(mode).await;
        dests.push_str(&destination(
            name,
            &format!("http://{addr}"),
            "timeout = \"800ms\"\n[destination.retry]\nmax_attempts = 1",
        ));
    }
    // Connection refused: a port that was just free.
    let refused = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    dests.push_str(&destination(
        "refused",
        &format!("http://{refused}"),
        "[destination.retry]\nmax_attempts = 1",
    ));
    let huge_ok = evil_server(Evil::HugeSuccessBody).await;
    dests.push_str(&destination(
        "huge-ok",
        &format!("http://{huge_ok}"),
        "timeout = \"10s\"",
    ));
    let tg = Tidegate::start(&dests).await;
    let names = cases
        .iter()
        .map(|(n, _, k)| (*n, *k))
        .chain([("refused", "connect_error")]);
    for (name, kind) in names {
        let id = tg.send(&format!("/{name}/x"), "{}").await;
        tg.wait_message_state(&id, "dead_lettered").await;
        let m = tg.message(&id).await;
        assert_eq!(m["last_error"]["kind"], kind, "{name}: {m}");
        if name == "huge-error" {
            // Only a bounded prefix of a huge error body is kept.
            assert_eq!(m["last_error"]["status"], 500);
            assert!(m["last_error"]["detail"].as_str().unwrap().len() <= 512);
        }
    }
    // A 64 MiB success body: delivered, read only up to the bounded prefix.
    let id = tg.send("/huge-ok/x", "{}").await;
    tg.wait_message_state(&id, "delivered").await;
    assert_eq!(
        tg.client.get(tg.admin_url("/healthz")).send().await.unwrap().status(),
        200
    );
}

/// Delivery rate to a healthy destination, with and without a dead one.
async fn healthy_rate(with_dead: bool) -> f64 {
    const N: usize = 400;
    let ds = Downstream::start().await;
    let silent = evil_server(Evil::HeadersNeverSent).await;
    let mut dests = destination(
        "healthy",
        &ds.url(),
        "[destination.rate_limit]\nrate = \"unlimited\"\nmax_in_flight = 16",
    );
    if with_dead {
        dests.push_str(&destination(
            "dead",
            &format!("http://{silent}"),
            "timeout = \"5s\"\n[destination.rate_limit]\nrate = \"unlimited\"\nmax_in_flight = 64",
        ));
    }
    let tg = Tidegate::start(&dests).await;
    tg.admin_post("/v1/destinations/healthy/pause", "").await;
    for i in 0..N {
        tg.send(&format!("/healthy/{i}"), "{}").await;
        if with_dead {
            tg.send(&format!("/dead/{i}"), "{}").await;
        }
    }
    let started = Instant::now();
    tg.admin_post("/v1/destinations/healthy/resume", "").await;
    eventually(Duration::from_secs(60), "the healthy destination to drain", || async {
        tg.destination("healthy").await["counters"]["delivered"] == N as u64
    })
    .await;
    N as f64 / started.elapsed().as_secs_f64()
}

#[tokio::test]
async fn a_dead_downstream_does_not_slow_a_healthy_one() {
    let alone = healthy_rate(false).await;
    let beside_dead = healthy_rate(true).await;
    let ratio = beside_dead / alone;
    eprintln!("isolation: healthy alone {alone:.0}/s, beside a dead destination {beside_dead:.0}/s, ratio {ratio:.2}");
    let _ = std::fs::write(
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("isolation-report.txt"),
        format!("alone {alone:.0}/s, beside dead {beside_dead:.0}/s, ratio {ratio:.3}\n"),
    );
    // A behavioural bound, not a benchmark: a shared bottleneck (one
    // connection pool, one worker) would stall the healthy destination for
    // the dead one's 5 s timeouts and drop this far below 0.5.
    assert!(
        ratio > 0.5,
        "healthy delivery fell to {ratio:.2} of its rate beside a dead destination"
    );
}

/// An HTTPS server with a freshly minted self-signed certificate for
/// 127.0.0.1, answering 200 to everything; returns its address, the
/// certificate's PEM and a counter of requests served.
async fn self_signed_https() -> (SocketAddr, String, Arc<AtomicUsize>) {
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(signing_key.serialize_der()));
    let tls = tokio_rustls::rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let served = Arc::new(AtomicUsize::new(0));
    let counter = served.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let counter = counter.clone();
            tokio::spawn(async move {
                // A client that rejects the certificate fails the handshake
                // here; that is the point of the test.
                let Ok(stream) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(move |_req| {
                    counter.fetch_add(1, Ordering::SeqCst);
                    async { Ok::<_, std::convert::Infallible>(hyper::Response::new(String::from("ok"))) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, cert.pem(), served)
}

#[tokio::test]
async fn a_self_signed_https_downstream_fails_clearly_until_its_ca_file_is_trusted() {
    let (addr, pem, served) = self_signed_https().await;
    let ca = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(ca.path(), &pem).unwrap();
    let url = format!("https://{addr}");
    let dests = destination("untrusted", &url, "[destination.retry]\nmax_attempts = 1")
        + &destination(
            "trusted",
            &url,
            &format!("ca_file = {:?}", ca.path().display().to_string()),
        );
    let tg = Tidegate::start(&dests).await;

    let id = tg.send("/untrusted/x", "{}").await;
    tg.wait_message_state(&id, "dead_lettered").await;
    let m = tg.message(&id).await;
    assert_eq!(m["last_error"]["kind"], "connect_error", "{m}");
    let detail = m["last_error"]["detail"].as_str().unwrap().to_lowercase();
    assert!(
        detail.contains("certificate"),
        "the error should name the certificate: {detail}"
    );
    assert_eq!(served.load(Ordering::SeqCst), 0);

    let id = tg.send("/trusted/x", "{}").await;
    tg.wait_message_state(&id, "delivered").await;
    assert_eq!(served.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_ca_file_that_holds_no_certificate_is_a_config_error() {
    let bogus = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(bogus.path(), "not a certificate\n").unwrap();
    let (_dir, cfg) = crate::support::config_file(
        "",
        &destination(
            "d",
            "https://127.0.0.1:9",
            &format!("ca_file = {:?}", bogus.path().display().to_string()),
        ),
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tidegate"))
        .args(["check", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("key `destination.ca_file`") || err.contains("ca_file"),
        "{err}"
    );
    assert!(err.contains("holds no PEM certificate"), "{err}");
}

/// Ids that got a 2xx, with how many 2xx each got.
fn delivered_ids(ds: &Downstream) -> std::collections::HashMap<String, usize> {
    let mut m = std::collections::HashMap::new();
    for s in ds.seen().into_iter().filter(|s| (200..300).contains(&s.status)) {
        *m.entry(s.message_id()).or_insert(0) += 1;
    }
    m
}

#[tokio::test]
async fn a_429_storm_is_backed_off_from_and_every_message_is_delivered_once() {
    const STORM: Duration = Duration::from_secs(3);
    const RATE: f64 = 200.0;
    let ds = Downstream::start().await;
    let storm_start = Arc::new(std::sync::OnceLock::<Instant>::new());
    let start = storm_start.clone();
    // Every request is refused with a bare 429 (no Retry-After, no quota
    // headers) for STORM after the first one, then the downstream is fine.
    ds.respond(move |_, _| {
        if start.get_or_init(Instant::now).elapsed() < STORM {
            Reply::status(429)
        } else {
            Reply::status(200)
        }
    });
    let tg = Tidegate::start(&destination(
        "crm",
        &ds.url(),
        &format!(
            "[destination.rate_limit]\nrate = \"{RATE}/s\"\nburst = 10\nmax_in_flight = 4\nadaptive = true\n\
             [destination.retry]\nmax_attempts = 100\ninitial_backoff = \"50ms\"\nmax_backoff = \"1s\""
        ),
    ))
    .await;
    let mut ids = Vec::new();
    for i in 0..200 {
        ids.push(tg.send(&format!("/crm/{i}"), "{}").await);
    }
    let lowest = std::cell::Cell::new(RATE);
    eventually(Duration::from_secs(60), "every message to be delivered", || async {
        let d = tg.destination("crm").await;
        if let Some(e) = d["rate_limit"]["effective_per_second"].as_f64() {
            lowest.set(lowest.get().min(e));
        }
        let got = delivered_ids(&ds);
        ids.iter().all(|id| got.contains_key(id))
    })
    .await;
    let lowest = lowest.get();
    let got = delivered_ids(&ds);
    assert!(got.values().all(|&n| n == 1), "a message was delivered twice");
    let storms = ds.seen().iter().filter(|s| s.status == 429).count();
    // Sending blindly at the configured rate would have drawn RATE × STORM
    // 429s; adapting must cut that at least in half.
    let blind = RATE * STORM.as_secs_f64();
    eprintln!("429 storm: {storms} refused attempts (blind: {blind}), lowest effective rate {lowest}/s");
    assert!(
        (storms as f64) < blind / 2.0,
        "{storms} 429s during a {STORM:?} storm (blind sending: {blind})"
    );
    // Bare 429s pause the destination and probe one attempt at a time, so
    // the rate needs cutting only once: probes, not the rate, bound the
    // load on a downstream that refuses everything.
    assert!(lowest <= RATE / 2.0, "effective rate only fell to {lowest}/s");
    assert!(
        storms <= 40,
        "{storms} 429s: more than the probes and the first attempts in flight"
    );
    assert_eq!(tg.destination("crm").await["state"], "running");
}

#[tokio::test]
async fn a_flapping_downstream_with_buffer_loses_nothing_and_keeps_draining() {
    // Down for 400 ms of every 800 ms, alternating between 503s and
    // answers slower than the timeout, for 4 s; up for good after that.
    const PERIOD: Duration = Duration::from_millis(800);
    const FLAPPING: Duration = Duration::from_secs(4);
    let ds = Downstream::start().await;
    let t0 = Instant::now();
    ds.respond(move |_, _| {
        let t = t0.elapsed();
        let phase = (t.as_millis() / PERIOD.as_millis()) as u64;
        let down = t < FLAPPING && (t.as_millis() % PERIOD.as_millis()) < PERIOD.as_millis() / 2;
        match (down, phase % 2) {
            (false, _) => Reply::status(200),
            (true, 0) => Reply::status(503),
            // Never reaches tidegate (it gives up at 300 ms); 504 keeps it
            // out of the 2xx count.
            (true, _) => Reply::status(504).delay(Duration::from_secs(2)),
        }
    });
    let tg = Tidegate::start(&destination(
        "crm",
        &ds.url(),
        "on_failure = \"buffer\"\ntimeout = \"300ms\"\n\
         [destination.rate_limit]\nrate = \"200/s\"\nmax_in_flight = 4\nadaptive = false\n\
         [destination.retry]\ninitial_backoff = \"50ms\"\nmax_backoff = \"400ms\"",
    ))
    .await;
    // Producers keep sending through the flapping: 60 messages every 200 ms.
    let mut ids = Vec::new();
    while t0.elapsed() < FLAPPING {
        for i in 0..60 {
            ids.push(tg.send(&format!("/crm/{i}"), "{}").await);
        }
        tokio::time::sleep(Duration::from_millis(200)).await; // pacing the producer, not synchronising
    }
    eventually(Duration::from_secs(60), "every message to be delivered", || async {
        let got = delivered_ids(&ds);
        ids.iter().all(|id| got.contains_key(id))
    })
    .await;
    let seen = ds.seen();
    let count = |st: u16| seen.iter().filter(|s| s.status == st).count();
    eprintln!(
        "flapping: {} messages, {} 200s, {} 503s, {} timeouts",
        ids.len(),
        count(200),
        count(503),
        count(504)
    );
    assert!(count(503) > 0 && count(504) > 0, "the downstream never flapped");
    // buffer mode was exercised: degraded on the failures, back on a probe.
    let log = tg.log();
    assert!(
        log.contains("to=degraded") || log.contains("to=\"degraded\""),
        "never degraded:\n{log}"
    );
    assert!(log.contains("probe delivered"), "never recovered:\n{log}");
    assert!(
        delivered_ids(&ds).values().all(|&n| n == 1),
        "a message was delivered twice"
    );
    let m = tg.metrics_text().await;
    assert!(
        m.lines().any(|l| l.starts_with("tidegate_delivery_attempts_total")
            && l.contains("outcome=\"timeout\"")
            && !l.ends_with(" 0")),
        "slow answers counted as timeouts"
    );
    let d = tg.destination("crm").await;
    assert_eq!(d["state"], "running", "{d}");
    assert_eq!(d["queue"]["depth"], 0, "{d}");
}
