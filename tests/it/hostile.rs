//! Hostile producers: slow headers, more connections than slots,
//! oversized headers. The process stays up and keeps serving others.

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
async fn a_kept_alive_connection_lives_idle_timeout_between_requests_not_header_read_timeout() {
    let ds = Downstream::start().await;
    let tg = Tidegate::start_with(
        &destination("crm", &ds.url(), ""),
        Extra {
            ingress: "header_read_timeout = \"1s\"\nidle_timeout = \"3s\"",
            ..Extra::default()
        },
    )
    .await;
    let req = b"POST /crm/k HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-length: 2\r\n\r\n{}";
    let mut s = TcpStream::connect(tg.ingress).await.unwrap();
    s.write_all(req).await.unwrap();
    // Answered, then still open past header_read_timeout.
    let (answer, closed) = read_until_closed(&mut s, Duration::from_millis(1500)).await;
    assert!(answer.starts_with("HTTP/1.1 202") && !closed, "{answer}");
    // The same connection takes the next request...
    s.write_all(req).await.unwrap();
    let (answer, closed) = read_until_closed(&mut s, Duration::from_millis(500)).await;
    assert!(answer.starts_with("HTTP/1.1 202") && !closed, "{answer}");
    // ...and is closed once idle past idle_timeout.
    let quiet = Instant::now();
    let (_, closed) = read_until_closed(&mut s, Duration::from_secs(10)).await;
    assert!(closed, "never closed");
    assert!(quiet.elapsed() >= Duration::from_millis(2000), "{:?}", quiet.elapsed());
    // A connection that sends nothing at all is closed after the header
    // deadline.
    let mut silent = TcpStream::connect(tg.ingress).await.unwrap();
    let started = Instant::now();
    let (_, closed) = read_until_closed(&mut silent, Duration::from_secs(10)).await;
    assert!(
        closed && started.elapsed() < Duration::from_millis(2900),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_kept_alive_connection_that_stalls_in_its_next_request_is_cut_off_at_the_header_deadline() {
    // Between requests the connection's watcher sleeps until idle_timeout;
    // the next request's first byte must bring its deadline forward.
    let ds = Downstream::start().await;
    let tg = Tidegate::start_with(
        &destination("crm", &ds.url(), ""),
        Extra {
            ingress: "header_read_timeout = \"1s\"\nidle_timeout = \"20s\"",
            ..Extra::default()
        },
    )
    .await;
    let mut s = TcpStream::connect(tg.ingress).await.unwrap();
    s.write_all(b"POST /crm/k HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-length: 2\r\n\r\n{}")
        .await
        .unwrap();
    let (answer, closed) = read_until_closed(&mut s, Duration::from_millis(1500)).await;
    assert!(answer.starts_with("HTTP/1.1 202") && !closed, "{answer}");
    s.write_all(b"POST /crm/k HTTP/1.1\r\nhost: 127.0.0.1\r\nx-slow: ")
        .await
        .unwrap();
    let started = Instant::now();
    let (_, closed) = read_until_closed(&mut s, Duration::from_secs(15)).await;
    assert!(closed, "the stalled request was left open");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(10),
        "closed after {took:?}: not at the header deadline"
    );
}

#[tokio::test]
async fn connections_over_the_limit_wait_in_the_backlog_and_are_served_when_a_slot_frees() {
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
    // A fifth connects (the kernel's backlog) but is not served yet.
    let mut over = TcpStream::connect(tg.ingress).await.unwrap();
    over.write_all(b"POST /crm/waited HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}")
        .await
        .unwrap();
    let (answer, _) = read_until_closed(&mut over, Duration::from_millis(500)).await;
    assert!(answer.is_empty(), "served past max_connections: {answer}");
    // The admin listener is not affected.
    assert_eq!(
        tg.client.get(tg.admin_url("/healthz")).send().await.unwrap().status(),
        200
    );
    // A freed slot serves the waiting connection, its request intact.
    drop(idle.pop());
    let (answer, closed) = read_until_closed(&mut over, Duration::from_secs(10)).await;
    assert!(closed && answer.starts_with("HTTP/1.1 202"), "{answer}");
    crate::support::eventually(Duration::from_secs(10), "the waited message delivered", || async {
        ds.seen().iter().any(|s| s.path_and_query == "/waited")
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
async fn under_a_low_open_files_limit_connections_wait_instead_of_running_out_of_descriptors() {
    // tidegate under `ulimit -n 320` with the default max_connections
    // (4096): it lowers the limit to fit (320 - 256 reserved, a quarter of
    // that to admin: 48 for ingress); connections past it wait in the
    // backlog, and no accept ever fails for want of a descriptor.
    let ds = Downstream::start().await;
    let extra = Extra {
        open_files_limit: Some(320),
        ..Extra::default()
    };
    let tg = Tidegate::start_with(&destination("crm", &ds.url(), ""), extra).await;

    let mut idle = Vec::new();
    for _ in 0..48 {
        idle.push(TcpStream::connect(tg.ingress).await.unwrap());
    }
    // Past the lowered limit: a hundred more wait, holding no descriptor.
    let mut waiting = Vec::new();
    for i in 0..100 {
        let mut s = TcpStream::connect(tg.ingress).await.unwrap();
        let req =
            format!("POST /crm/w{i} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{{}}");
        s.write_all(req.as_bytes()).await.unwrap();
        waiting.push(s);
    }
    let health = tg.client.get(tg.admin_url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    drop(idle);
    // Every waiting connection is served once slots free up.
    for s in &mut waiting {
        let (answer, _) = read_until_closed(s, Duration::from_secs(20)).await;
        assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
    }
    crate::support::eventually(Duration::from_secs(20), "every waiting message delivered", || async {
        ds.count() >= 100
    })
    .await;
    let log = tg.log();
    assert!(log.contains("ingress.max_connections lowered"), "{log}");
    assert!(!log.contains("Too many open files"), "{log}");
}
