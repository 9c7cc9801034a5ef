//! Every problem+json code of the producer surface, made to happen.

use crate::support::{destination, problem, Downstream, Extra, Tidegate};

#[tokio::test]
async fn each_refusal_is_problem_json_with_its_stable_code() {
    let ds = Downstream::start().await;
    let tg = Tidegate::start_with(
        &format!(
            "{}{}",
            destination("crm", &ds.url(), ""),
            destination("erp", &ds.url(), "on_failure = \"halt\"")
        ),
        Extra {
            ingress: "max_body = \"1KiB\"\nauth_token_env = \"TEST_INGRESS_TOKEN\"",
            env: &[("TEST_INGRESS_TOKEN", "producer-token")],
            ..Extra::default()
        },
    )
    .await;
    let c = &tg.client;
    let auth = "Bearer producer-token";

    // 401: no token, wrong token.
    problem(
        c.post(tg.url("/crm/x")).body("{}").send().await.unwrap(),
        401,
        "unauthorized",
    )
    .await;
    let r = c
        .post(tg.url("/crm/x"))
        .header("authorization", "Bearer nope")
        .body("{}")
        .send()
        .await
        .unwrap();
    problem(r, 401, "unauthorized").await;
    // 400: bad destination name, dot segments.
    let r = c
        .post(tg.url("/CRM/x"))
        .header("authorization", auth)
        .body("{}")
        .send()
        .await
        .unwrap();
    problem(r, 400, "invalid_request").await;
    // Dot segments, sent raw (an HTTP client would normalise them away).
    for path in ["/crm/a/../b", "/crm/a/%2e%2E/b", "/crm/a%2Fb"] {
        let head = raw_request(tg.ingress, &format!("POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: {auth}\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{{}}")).await;
        assert!(head.starts_with("HTTP/1.1 400"), "{path}: {head}");
        assert!(head.contains("invalid_path"), "{path}: {head}");
    }
    // 404: unknown destination.
    let r = c
        .post(tg.url("/nope/x"))
        .header("authorization", auth)
        .body("{}")
        .send()
        .await
        .unwrap();
    problem(r, 404, "unknown_destination").await;
    // 405 with Allow, for GET, HEAD and OPTIONS.
    for m in [reqwest::Method::GET, reqwest::Method::OPTIONS] {
        let r = c
            .request(m, tg.url("/crm/x"))
            .header("authorization", auth)
            .send()
            .await
            .unwrap();
        assert_eq!(r.headers()["allow"], "POST, PUT, PATCH, DELETE");
        problem(r, 405, "method_not_allowed").await;
    }
    let r = c
        .head(tg.url("/crm/x"))
        .header("authorization", auth)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    // 413: over max_body, and exactly at it is fine.
    let r = c
        .post(tg.url("/crm/x"))
        .header("authorization", auth)
        .body("x".repeat(1025))
        .send()
        .await
        .unwrap();
    problem(r, 413, "payload_too_large").await;
    let r = c
        .post(tg.url("/crm/x"))
        .header("authorization", auth)
        .body("x".repeat(1024))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    // 503 destination_halted.
    let poison = tg
        .client
        .post(tg.url("/erp/x"))
        .header("authorization", auth)
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(poison.status(), 202);
    ds.respond(|_, _| crate::support::Reply::status(400));
    // The first message may already be delivered; send until one fails.
    let mut halted = false;
    for _ in 0..50 {
        let r = c
            .post(tg.url("/erp/y"))
            .header("authorization", auth)
            .body("{}")
            .send()
            .await
            .unwrap();
        if r.status() == 503 {
            problem(r, 503, "destination_halted").await;
            halted = true;
            break;
        }
        tg.wait_state("erp", "halted").await;
    }
    assert!(halted);
}

#[tokio::test]
async fn shutting_down_refuses_new_requests() {
    let ds = Downstream::start().await;
    // A delivery that hangs keeps the process draining for a while.
    ds.respond(|_, _| crate::support::Reply::status(200).delay(std::time::Duration::from_secs(3)));
    let mut tg = Tidegate::start(&destination("crm", &ds.url(), "")).await;
    tg.send("/crm/slow", "{}").await;
    crate::support::eventually(std::time::Duration::from_secs(5), "an attempt in flight", || async {
        ds.count() == 1
    })
    .await;
    crate::support::signal(tg.pid(), "TERM");
    crate::support::eventually(std::time::Duration::from_secs(5), "readyz to fail", || async {
        match tg.client.get(tg.admin_url("/readyz")).send().await {
            Ok(r) => r.status() == 503,
            Err(_) => true,
        }
    })
    .await;
    // A closed listener or a 503 shutting_down: never a 2xx.
    match tg.client.post(tg.url("/crm/late")).body("{}").send().await {
        Ok(r) => {
            problem(r, 503, "shutting_down").await;
        }
        Err(e) => assert!(e.is_connect() || e.is_request(), "{e}"),
    }
    let status = tg.wait_exit().await;
    assert!(status.success());
}

/// Sends raw bytes and returns the whole answer as text.
async fn raw_request(addr: std::net::SocketAddr, req: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}
