//! Web pages against loopback listeners: a page open in a browser on the
//! same machine can send simple cross-origin requests to any port, and read
//! answers through DNS rebinding. Both listeners refuse what only such a
//! page sends: a foreign `Origin`, a foreign `Host` on loopback.

use std::time::Duration;

use crate::support::{destination, eventually, Downstream, Extra, Tidegate};

async fn code(r: reqwest::Response) -> (u16, String) {
    let status = r.status().as_u16();
    let v: serde_json::Value = r.json().await.unwrap_or_default();
    (status, v["code"].as_str().unwrap_or("").to_string())
}

#[tokio::test]
async fn requests_a_web_page_could_send_are_refused_on_both_listeners() {
    let ds = Downstream::start().await;
    let tg = Tidegate::start(&destination("crm", &ds.url(), "")).await;
    let c = &tg.client;
    let admin_host = format!("evil.example:{}", tg.admin.port());
    // The issue's first case: a simple cross-origin POST under a rebound name.
    let r = c
        .post(tg.admin_url("/v1/destinations/crm/pause"))
        .header("origin", "http://evil.example")
        .header("content-type", "text/plain")
        .header("host", &admin_host)
        .send()
        .await
        .unwrap();
    assert_eq!(code(r).await, (421, "forbidden_host".into()));
    // The same with a loopback Host: the Origin gives it away.
    let r = c
        .post(tg.admin_url("/v1/destinations/crm/pause"))
        .header("origin", "http://evil.example")
        .header("content-type", "text/plain")
        .send()
        .await
        .unwrap();
    assert_eq!(code(r).await, (403, "forbidden_origin".into()));
    // DNS rebinding reads: the API and the probes.
    for path in ["/v1/destinations", "/metrics", "/healthz"] {
        let r = c
            .get(tg.admin_url(path))
            .header("host", "attacker.example")
            .send()
            .await
            .unwrap();
        assert_eq!(code(r).await, (421, "forbidden_host".into()), "{path}");
    }
    // Ingress: a page posting text/plain through tidegate to the CRM.
    for (origin, host) in [
        (Some("http://evil.example"), None),
        (None, Some("evil.example:8080")),
        (Some("null"), None),
    ] {
        let mut r = c
            .post(tg.url("/crm/contacts"))
            .header("content-type", "text/plain")
            .body("x");
        if let Some(o) = origin {
            r = r.header("origin", o);
        }
        if let Some(h) = host {
            r = r.header("host", h);
        }
        let (status, _) = code(r.send().await.unwrap()).await;
        assert!(status == 403 || status == 421, "{origin:?} {host:?}: {status}");
    }
    // Nothing happened: still running, nothing stored, nothing delivered.
    let d = tg.destination("crm").await;
    assert_eq!(d["state"], "running");
    assert_eq!(d["counters"]["received"], 0);
    assert_eq!(ds.count(), 0);
    // Programs (no Origin, a loopback Host) and same-origin pages are not affected.
    let same = format!("http://{}", tg.admin);
    let r = c
        .post(tg.admin_url("/v1/destinations/crm/pause"))
        .header("origin", &same)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = c
        .post(tg.admin_url("/v1/destinations/crm/resume"))
        .header("host", format!("localhost:{}", tg.admin.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    tg.send("/crm/contacts", "{}").await;
    eventually(Duration::from_secs(10), "the program's message delivered", || async {
        ds.count() == 1
    })
    .await;
}

#[tokio::test]
async fn allowed_origins_and_hosts_are_deliberate_exceptions() {
    let ds = Downstream::start().await;
    let tg = Tidegate::start_with(
        &destination("crm", &ds.url(), ""),
        Extra {
            ingress: "allowed_origins = [\"https://app.example.com/\"]",
            admin: "allowed_hosts = [\"tidegate.internal\"]\nallowed_origins = [\"https://ops.example.com\"]",
            ..Extra::default()
        },
    )
    .await;
    let c = &tg.client;
    let r = c
        .post(tg.url("/crm/x"))
        .header("origin", "https://app.example.com")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let r = c
        .post(tg.url("/crm/x"))
        .header("origin", "https://ops.example.com")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(
        code(r).await,
        (403, "forbidden_origin".into()),
        "admin's origins are not ingress's"
    );
    let r = c
        .get(tg.admin_url("/v1/destinations"))
        .header("host", "tidegate.internal:9090")
        .header("origin", "https://ops.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // A config error names a bad entry.
    let (dir, path) = crate::support::config_file(
        "[admin]\nlisten = \"127.0.0.1:0\"\nallowed_origins = [\"https://ops.example.com/console\"]\n",
        "",
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tidegate"))
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("tidegate.toml:3:") && err.contains("admin.allowed_origins"),
        "{err}"
    );
    drop(dir);
}

/// The same attacks from a real page in headless Chromium, served from
/// another loopback port: against a tidegate with the default policy they
/// change nothing; against one that lists the page's origin (the control,
/// proving the browser really sends them) they pause it and deliver.
#[tokio::test]
async fn a_page_in_headless_chromium_cannot_pause_or_send_through_tidegate() {
    let Some(chromium) = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
    else {
        assert!(
            std::env::var_os("CI").is_none(),
            "chromium is not installed; .ci/run installs it"
        );
        eprintln!("SKIPPED: no chromium");
        return;
    };
    // The attacker's page, on its own loopback port.
    let done: std::sync::Arc<std::sync::Mutex<Option<String>>> = Default::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let page_origin = format!("http://{}", listener.local_addr().unwrap());
    let page = {
        let done = done.clone();
        axum::Router::new()
            .route(
                "/attack",
                axum::routing::get(|| async { axum::response::Html(ATTACK_PAGE) }),
            )
            .route(
                "/done",
                axum::routing::post(move |body: String| {
                    let done = done.clone();
                    async move {
                        *done.lock().unwrap() = Some(body);
                    }
                }),
            )
    };
    tokio::spawn(async move { axum::serve(listener, page).await });

    let (ds, control_ds) = (Downstream::start().await, Downstream::start().await);
    let protected = Tidegate::start(&destination("crm", &ds.url(), "")).await;
    let allow = format!("allowed_origins = [\"{page_origin}\"]");
    let control = Tidegate::start_with(
        &destination("crm", &control_ds.url(), ""),
        Extra {
            ingress: &allow,
            admin: &allow,
            ..Extra::default()
        },
    )
    .await;
    let url = format!(
        "{page_origin}/attack?t={},{}&c={},{}",
        protected.admin, protected.ingress, control.admin, control.ingress
    );
    let profile = tempfile::tempdir().unwrap();
    let mut browser = std::process::Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(&url)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    while done.lock().unwrap().is_none() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = browser.kill();
    let _ = browser.wait();
    let report = done
        .lock()
        .unwrap()
        .clone()
        .expect("the page reported back within 90 s");
    // The control shows the browser sent both requests: it stored the
    // message (delivered once resumed) and was paused.
    let c = control.destination("crm").await;
    assert_eq!(
        (c["state"].as_str(), c["counters"]["received"].as_u64()),
        (Some("paused"), Some(1)),
        "{report}"
    );
    control.admin_post("/v1/destinations/crm/resume", "").await;
    eventually(
        Duration::from_secs(10),
        "the control's downstream to get the page's body",
        || async { control_ds.seen().iter().any(|s| s.body == "stolen") },
    )
    .await;
    // The protected instance saw the same requests and did nothing.
    let d = protected.destination("crm").await;
    assert_eq!(d["state"], "running", "{report}");
    assert_eq!(d["counters"]["received"], 0, "{report}");
    assert_eq!(ds.count(), 0, "{report}");
    // And the page could not read its admin API.
    let v: serde_json::Value = serde_json::from_str(&report).unwrap();
    assert!(!v["t_read"].as_str().unwrap_or("").contains("crm"), "{report}");
}

/// Sends a simple cross-origin pause, a text/plain message and a read to
/// each target (`t`: protected, `c`: control), then posts what it saw.
const ATTACK_PAGE: &str = r#"<!doctype html><html><body><script>
const q = new URLSearchParams(location.search);
async function attack(tag, admin, ingress) {
  const out = {};
  const tries = [
    ["send", "http://" + ingress + "/crm/contacts",
      {method: "POST", mode: "no-cors", headers: {"content-type": "text/plain"}, body: "stolen"}],
    ["read", "http://" + admin + "/v1/destinations", {}],
    ["pause", "http://" + admin + "/v1/destinations/crm/pause",
      {method: "POST", mode: "no-cors", headers: {"content-type": "text/plain"}, body: "x"}],
  ];
  for (const [name, url, opts] of tries) {
    try {
      const r = await fetch(url, opts);
      out[tag + "_" + name] = r.type + " " + r.status + " " + (r.type === "opaque" ? "" : await r.text());
    } catch (e) {
      out[tag + "_" + name] = "error " + e;
    }
  }
  return out;
}
(async () => {
  const [ta, ti] = q.get("t").split(","), [ca, ci] = q.get("c").split(",");
  const out = Object.assign(await attack("t", ta, ti), await attack("c", ca, ci));
  await fetch("/done", {method: "POST", body: JSON.stringify(out)});
})();
</script></body></html>"#;
