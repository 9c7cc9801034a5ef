//! Hostile producers: slow headers, too many connections, oversized
//! headers. The process stays up and keeps serving others.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{destination, Downstream, Extra, Tidegate};

/// Reads until the peer closes or `limit` passes; returns what came and
/// whether the peer closed.
async fn read_until_closed(s: &mut TcpStream, limit: Duration) -> (String, bool) {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&out).into_owned(), true),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => return (String::from_utf8_lossy(&out).into_owned(), false),
        }
    }
}

#[tokio::test]
async fn a_slowloris_producer_is_cut_off_after_the_header_deadline() {
    let ds = Downstream::start().await;
    let tg = Tidegate::start_with(
        &destination("crm", &ds.url(), ""),
        Extra {
            ingress: "header_read_timeout = \"1s\"",
            ..Extra::default()
        },
    )
    .await;
    let mut s = TcpStream::connect(tg.ingress).await.unwrap();
    s.write_all(b"POST /crm/x HTTP/1.1\r\nhost: 127.0.0.1\r\nx-slow: ")
        .await
        .unwrap();
    let started = Instant::now();
    let (_, closed) = read_until_closed(&mut s, Duration::from_secs(10)).await;
    assert!(closed, "the connection was left open");
    assert!(started.elapsed() >= Duration::from_millis(900));
    // Others are served meanwhile and after.
    tg.send("/crm/ok", "{}").await;
}

#[tokio::test]
async fn connections_over_the_limit_get_a_503_and_the_rest_keep_working() {
    let ds = Downstream::start().await;
    let tg = Tidegate::start_with(
        &destination("crm", &ds.url(), ""),
        Extra {
            ingress: "max_connections = 4",
            ..Extra::default()
        },
    )
    .await;
    // Four idle connections take every slot.
    let mut idle = Vec::new();
    for _ in 0..4 {
        idle.push(TcpStream::connect(tg.ingress).await.unwrap());
    }
    let mut over = TcpStream::connect(tg.ingress).await.unwrap();
    let (answer, closed) = read_until_closed(&mut over, Duration::from_secs(10)).await;
    assert!(closed);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    let body = answer.split("\r\n\r\n").nth(1).unwrap();
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(v["code"], "too_many_connections");
    // The admin listener is not affected.
    assert_eq!(
        tg.client.get(tg.admin_url("/healthz")).send().await.unwrap().status(),
        200
    );
    // Freed slots serve again.
    drop(idle);
    crate::support::eventually(Duration::from_secs(10), "a slot to free up", || async {
        let c = reqwest::Client::new();
        matches!(c.post(tg.url("/crm/x")).body("{}").send().await, Ok(r) if r.status() == 202)
    })
    .await;
}

#[tokio::test]
async fn oversized_headers_and_a_flood_to_an_unknown_destination_leave_it_healthy() {
    let ds = Downstream::start().await;
    let tg = Tidegate::start(&destination("crm", &ds.url(), "")).await;
    // 200 headers: over hyper's limit, refused with 431, nothing stored.
    let mut req = String::from("POST /crm/x HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-length: 2\r\n");
    for i in 0..200 {
        req.push_str(&format!("x-h{i}: v\r\n"));
    }
    req.push_str("\r\n{}");
    let mut s = TcpStream::connect(tg.ingress).await.unwrap();
    s.write_all(req.as_bytes()).await.unwrap();
    let (answer, _) = read_until_closed(&mut s, Duration::from_secs(10)).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    // One header of 1 MiB: refused too.
    let mut s = TcpStream::connect(tg.ingress).await.unwrap();
    let big = format!(
        "POST /crm/x HTTP/1.1\r\nhost: 127.0.0.1\r\nx-big: {}\r\ncontent-length: 2\r\n\r\n{{}}",
        "a".repeat(1 << 20)
    );
    let _ = s.write_all(big.as_bytes()).await;
    let (answer, closed) = read_until_closed(&mut s, Duration::from_secs(10)).await;
    assert!(
        closed && (answer.is_empty() || answer.starts_with("HTTP/1.1 431")),
        "{answer}"
    );
    // A flood of requests to a destination that does not exist.
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (c, u) = (tg.client.clone(), tg.url("/nope/x"));
        tasks.push(tokio::spawn(async move {
            for _ in 0..250 {
                let r = c.post(&u).body("{}").send().await.unwrap();
                assert_eq!(r.status(), 404);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(tg.destination("crm").await["queue"]["depth"], 0);
    tg.send("/crm/ok", "{}").await;
    assert_eq!(
        tg.client.get(tg.admin_url("/healthz")).send().await.unwrap().status(),
        200
    );
}

#[tokio::test]
async fn under_a_low_open_files_limit_idle_connections_are_refused_before_fds_run_out() {
    // tidegate under `ulimit -n 320` with the default max_connections
    // (4096): it must lower the limit to fit (320 - 256 reserved = 64) and
    // refuse the rest with its 503, never run out of descriptors.
    let ds = Downstream::start().await;
    let extra = Extra {
        open_files_limit: Some(320),
        ..Extra::default()
    };
    let tg = Tidegate::start_with(&destination("crm", &ds.url(), ""), extra).await;

    let mut idle = Vec::new();
    for _ in 0..64 {
        idle.push(TcpStream::connect(tg.ingress).await.unwrap());
    }
    // Past the lowered limit: refused with the 503, many times over.
    for _ in 0..100 {
        let mut over = TcpStream::connect(tg.ingress).await.unwrap();
        let (answer, _) = read_until_closed(&mut over, Duration::from_secs(10)).await;
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
        assert!(answer.contains("too_many_connections"), "{answer}");
    }
    let health = tg.client.get(tg.admin_url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    drop(idle);
    crate::support::eventually(Duration::from_secs(10), "a slot to free up", || async {
        matches!(tg.client.post(tg.url("/crm/x")).body("{}").send().await, Ok(r) if r.status() == 202)
    })
    .await;
    let log = tg.log();
    assert!(log.contains("ingress.max_connections lowered"), "{log}");
}
