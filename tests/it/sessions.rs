//! Console sessions over plain HTTP (SPEC §17): signing out ends a session
//! on the server, wrong tokens are slowed per address and logged with it,
//! a console behind a TLS terminator gets a `Secure` cookie and its public
//! origin, and a sign-in page refuses a large body cheaply.

use std::time::Duration;

use crate::support::{destination, Downstream, Extra, Tidegate};

const TOKEN: &str = "session-test-token-0123456789";

async fn start(ds: &Downstream, admin: &'static str) -> Tidegate {
    Tidegate::start_with(
        &destination("crm", &ds.url(), ""),
        Extra {
            admin,
            env: &[("CONSOLE_TOKEN", TOKEN)],
            ..Extra::default()
        },
    )
    .await
}

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// Signs in; the `Set-Cookie` header and the session's cookie pair.
async fn sign_in(tg: &Tidegate, c: &reqwest::Client) -> (String, String) {
    let r = c
        .post(tg.admin_url("/ui/login"))
        .form(&[("token", TOKEN)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303, "{:?}", r.text().await);
    let set = r.headers()["set-cookie"].to_str().unwrap().to_string();
    let pair = set.split(';').next().unwrap().to_string();
    (set, pair)
}

/// The status of the overview with `cookie`: 200 signed in, 303 to the
/// sign-in page when not.
async fn overview(tg: &Tidegate, c: &reqwest::Client, cookie: &str) -> u16 {
    c.get(tg.admin_url("/ui/"))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn signing_out_ends_the_session_for_every_copy_of_its_cookie() {
    let ds = Downstream::start().await;
    let tg = start(&ds, "token_env = \"CONSOLE_TOKEN\"").await;
    let c = no_redirects();
    let (_, cookie) = sign_in(&tg, &c).await;
    assert_eq!(overview(&tg, &c, &cookie).await, 200);
    let copy = cookie.clone();
    let token = crate::support::console_csrf(&tg, &c, &cookie).await;
    let out = c
        .post(tg.admin_url("/ui/logout"))
        .header("cookie", &cookie)
        .form(&[("csrf", token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), 303);
    assert_eq!(overview(&tg, &c, &copy).await, 303, "a captured cookie is dead too");
    // Signing in again works, with a new session.
    let (_, again) = sign_in(&tg, &c).await;
    assert_ne!(again, copy);
    assert_eq!(overview(&tg, &c, &again).await, 200);
}

#[tokio::test]
async fn wrong_tokens_are_slowed_per_address_and_logged_with_it() {
    let ds = Downstream::start().await;
    let tg = start(&ds, "token_env = \"CONSOLE_TOKEN\"").await;
    let c = no_redirects();
    let mut statuses = Vec::new();
    for i in 0..8 {
        let r = c
            .post(tg.admin_url("/ui/login"))
            .form(&[("token", format!("wrong-{i}"))])
            .send()
            .await
            .unwrap();
        if r.status() == 429 {
            assert!(r.headers().contains_key("retry-after"));
        }
        statuses.push(r.status().as_u16());
    }
    assert_eq!(&statuses[..5], &[401; 5], "{statuses:?}");
    assert!(statuses[5..].iter().all(|s| *s == 429), "{statuses:?}");
    // While slowed, even the right token waits: guessing gains nothing.
    let r = c
        .post(tg.admin_url("/ui/login"))
        .form(&[("token", TOKEN)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    let log = tg.log();
    assert!(
        log.lines()
            .any(|l| l.contains("wrong token") && l.contains("client=127.0.0.1")),
        "{log}"
    );
}

#[tokio::test]
async fn behind_a_tls_terminator_the_cookie_is_secure_and_the_public_origin_accepted() {
    let ds = Downstream::start().await;
    let tg = start(
        &ds,
        "token_env = \"CONSOLE_TOKEN\"\npublic_url = \"https://tidegate.example.com\"",
    )
    .await;
    let c = no_redirects();
    let (set, cookie) = sign_in(&tg, &c).await;
    assert!(set.contains("; Secure"), "{set}");
    let token = crate::support::console_csrf(&tg, &c, &cookie).await;
    // The console's own form, as the browser posts it through the proxy.
    let r = c
        .post(tg.admin_url("/ui/destinations/crm/pause"))
        .header("cookie", &cookie)
        .header("origin", "https://tidegate.example.com")
        .header("host", "tidegate.example.com")
        .form(&[("csrf", token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303, "{:?}", r.text().await);
    let d: serde_json::Value = c
        .get(tg.admin_url("/v1/destinations/crm"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(d["state"], "paused");
    let other = c
        .post(tg.admin_url("/ui/destinations/crm/resume"))
        .header("cookie", &cookie)
        .header("origin", "https://evil.example")
        .form(&[("csrf", token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 403);
}

#[tokio::test]
async fn the_sign_in_page_refuses_a_large_body_without_reading_all_of_it() {
    let ds = Downstream::start().await;
    let tg = start(&ds, "token_env = \"CONSOLE_TOKEN\"").await;
    let c = no_redirects();
    // Just over the form's limit: refused, and the answer arrives.
    let r = c
        .post(tg.admin_url("/ui/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(vec![b'a'; 256 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    // 64 MiB announced: tidegate stops reading long before the end
    // (nobody is signed in yet), so the upload cannot complete. (The
    // kernel's buffers take a few MiB more than tidegate reads.)
    let mut s = tokio::net::TcpStream::connect(tg.admin).await.unwrap();
    let head = format!(
        "POST /ui/login HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/x-www-form-urlencoded\r\ncontent-length: {}\r\n\r\n",
        64 << 20
    );
    use tokio::io::AsyncWriteExt;
    s.write_all(head.as_bytes()).await.unwrap();
    let chunk = vec![b'a'; 64 * 1024];
    let mut sent = 0usize;
    while sent < 64 << 20 {
        match tokio::time::timeout(Duration::from_secs(10), s.write_all(&chunk)).await {
            Ok(Ok(())) => sent += chunk.len(),
            _ => break,
        }
    }
    assert!(sent < 32 << 20, "tidegate read {sent} bytes of a sign-in form");
    // And it still serves.
    assert_eq!(c.get(tg.admin_url("/healthz")).send().await.unwrap().status(), 200);
}

/// The destination page says what is true (issue 29, item 24): messages
/// held for review are counted as such, not as "the queue is empty", and
/// a reviewer's rejection (a decision, not a failure) is offered no
/// Replay.
#[tokio::test]
async fn the_console_counts_what_is_held_and_offers_no_replay_of_a_reviewers_rejection() {
    let ds = Downstream::start().await;
    let tg = Tidegate::start_with(
        &destination(
            "crm",
            &ds.url(),
            "[destination.review]\nhold_when = \"true\"\nhold_timeout = \"1h\"",
        ),
        Extra {
            admin: "token_env = \"CONSOLE_TOKEN\"",
            env: &[("CONSOLE_TOKEN", TOKEN)],
            ..Extra::default()
        },
    )
    .await;
    let mut ids = Vec::new();
    for i in 0..2 {
        let r = tg.post(&format!("/crm/{i}"), "{\"n\": 1}").await;
        assert_eq!(r.status(), 202);
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["status"], "held", "{v}");
        ids.push(v["id"].as_str().unwrap().to_string());
    }
    let c = no_redirects();
    let (_, cookie) = sign_in(&tg, &c).await;
    let page = |c: reqwest::Client, cookie: String| {
        let url = tg.admin_url("/ui/destinations/crm");
        async move {
            let r = c.get(url).header("cookie", cookie).send().await.unwrap();
            assert_eq!(r.status(), 200);
            r.text().await.unwrap()
        }
    };
    let held = page(c.clone(), cookie.clone()).await;
    assert!(held.contains("2 messages are held for review"), "{held}");
    assert!(!held.contains("The queue is empty"), "{held}");

    let r = c
        .post(tg.admin_url(&format!("/v1/reviews/{}/reject", ids[0])))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body(r#"{"reviewer": "ann@ops", "reason": "spam"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    let rejected = page(c, cookie).await;
    assert!(rejected.contains("rejected_by_reviewer"), "{rejected}");
    assert!(
        !rejected.contains("replay-all"),
        "no Replay all for a rejection: {rejected}"
    );
    assert!(
        !rejected.contains(&format!("Replay {}", ids[0])),
        "no Replay for a rejection: {rejected}"
    );
    assert!(rejected.contains("1 message is held for review"), "{rejected}");
}
