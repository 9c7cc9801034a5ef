//! The console (SPEC §12) in Debian's Chromium, driven through WebDriver
//! (chromedriver) as a person would: sign in, read, click, type, press
//! keys. What the pages do is checked through the admin API. Screenshots
//! go to `target/console-screenshots/` (and, with UPDATE_SCREENSHOTS=1, to
//! `docs/`, where the README shows them).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

use crate::support::{destination, eventually, Downstream, Extra, Reply, Tidegate};

const TOKEN: &str = "console-test-token-0123456789";

struct Browser {
    client: Client,
    driver: Child,
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Headless Chromium under chromedriver, at 1280×800; `None` (skipped)
/// only outside CI when they are not installed.
async fn browser() -> Option<Browser> {
    let driver = ["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]
        .into_iter()
        .find(|p| Path::new(p).exists());
    let chromium = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .find(|p| Path::new(p).exists());
    let (Some(driver), Some(chromium)) = (driver, chromium) else {
        assert!(
            std::env::var_os("CI").is_none(),
            "chromium and chromedriver are not installed; .ci/run installs them"
        );
        eprintln!("SKIPPED: no chromium or chromedriver");
        return None;
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(driver)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let profile = tempfile::tempdir().unwrap();
    let caps: serde_json::Map<String, Value> = serde_json::from_value(json!({
        "goog:chromeOptions": {
            "binary": chromium,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1280,800", "--no-first-run", "--disable-background-networking",
                     "--disable-component-update", "--disable-sync",
                     format!("--user-data-dir={}", profile.path().display())]
        }
    }))
    .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let client = loop {
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        match ClientBuilder::new(connector)
            .capabilities(caps.clone())
            .connect(&url)
            .await
        {
            Ok(c) => break c,
            Err(e) if std::time::Instant::now() < deadline => {
                eprintln!("waiting for chromedriver: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("chromedriver did not start a session: {e}"),
        }
    };
    Some(Browser {
        client,
        driver: child,
        _profile: profile,
    })
}

async fn screenshot(b: &Client, name: &str) {
    let png = b.screenshot().await.unwrap();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/console-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(format!("{name}.png")), &png).unwrap();
    if std::env::var_os("UPDATE_SCREENSHOTS").is_some() {
        let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs");
        std::fs::write(docs.join(format!("console-{name}.png")), &png).unwrap();
    }
}

/// The admin API, with the token.
async fn api(tg: &Tidegate, path: &str) -> Value {
    tg.client
        .get(tg.admin_url(path))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn signed_in(b: &Client, tg: &Tidegate) {
    b.goto(&tg.admin_url("/ui/")).await.unwrap();
    assert!(b.current_url().await.unwrap().path().ends_with("/ui/login"));
    type_into(b, "#token", TOKEN).await;
    click(b, "button[type=submit]").await;
    wait_for(b, "table#overview").await;
}

async fn wait_for(b: &Client, css: &str) {
    b.wait()
        .at_most(Duration::from_secs(20))
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css} did not appear: {e}"));
}

async fn click(b: &Client, css: &str) {
    b.find(Locator::Css(css)).await.unwrap().click().await.unwrap();
}

async fn type_into(b: &Client, css: &str, text: &str) {
    b.find(Locator::Css(css)).await.unwrap().send_keys(text).await.unwrap();
}

async fn text_of(b: &Client, css: &str) -> String {
    b.find(Locator::Css(css)).await.unwrap().text().await.unwrap()
}

/// The text of `css` now, or `None` while the page is replacing it (the
/// overview's live refresh swaps its rows: an element found a moment ago
/// may be gone when its text is read).
async fn text_now(b: &Client, css: &str) -> Option<String> {
    b.find(Locator::Css(css)).await.ok()?.text().await.ok()
}

/// The browser's session cookie (as a `Cookie` header) and a CSRF value
/// of its session, for posting forms the page would not offer.
async fn session_and_csrf(b: &Client, tg: &Tidegate) -> (String, String) {
    let cookie = b.get_named_cookie("tidegate_session").await.unwrap();
    let cookie = format!("tidegate_session={}", cookie.value());
    let csrf = crate::support::console_csrf(tg, &tg.client, &cookie).await;
    (cookie, csrf)
}

async fn no_script_ran(b: &Client) {
    let ran = b.execute("return window.__pwned === undefined;", vec![]).await.unwrap();
    assert_eq!(ran, json!(true), "a script from the data ran in the console");
}

async fn start(extra_dests: &str, ds: &Downstream) -> Tidegate {
    let u = ds.url();
    Tidegate::start_with(
        &format!(
            "{}{}{extra_dests}",
            destination(
                "crm",
                &format!("{u}/ok"),
                "latency_objective = \"15m\"\nfeeds = [\"dashboards\"]"
            ),
            destination(
                "erp",
                &format!("{u}/erp"),
                "on_failure = \"retry\"\n[destination.retry]\nmax_attempts = 1"
            )
        ),
        Extra {
            admin: "token_env = \"CONSOLE_TOKEN\"",
            env: &[("CONSOLE_TOKEN", TOKEN)],
            ..Extra::default()
        },
    )
    .await
}

#[tokio::test]
async fn an_operator_signs_in_watches_live_depth_pauses_replays_and_reads_the_map() {
    let ds = Downstream::start().await;
    let erp_down = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    {
        let erp_down = erp_down.clone();
        ds.respond(move |s, _| {
            if s.path_and_query.starts_with("/erp") && erp_down.load(std::sync::atomic::Ordering::SeqCst) {
                Reply::status(400)
            } else {
                Reply::status(200)
            }
        });
    }
    let halting = destination("billing", &format!("{}/erp", ds.url()), "on_failure = \"halt\"");
    let tg = start(&halting, &ds).await;
    let Some(browser) = browser().await else { return };
    let b = &browser.client;

    // A wrong token is refused, and says so.
    b.goto(&tg.admin_url("/ui/")).await.unwrap();
    assert!(b.current_url().await.unwrap().path().ends_with("/ui/login"));
    type_into(b, "#token", "not-the-token").await;
    click(b, "button[type=submit]").await;
    wait_for(b, "p.notice.bad").await;
    assert_eq!(text_of(b, "p.notice.bad").await, "Wrong token.");
    assert!(b.current_url().await.unwrap().path().ends_with("/ui/login"));

    signed_in(b, &tg).await;
    // Every destination, with its live depth.
    let rows = b.find_all(Locator::Css("table#overview tbody tr")).await.unwrap();
    assert_eq!(rows.len(), 3);
    let pause = tg
        .client
        .post(tg.admin_url("/v1/destinations/crm/pause"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(pause.status(), 200);
    for _ in 0..3 {
        tg.send("/crm/x", "{}").await;
    }
    eventually(
        Duration::from_secs(20),
        "the overview to show crm's depth of 3",
        || async {
            text_now(b, "tr[data-destination=crm] td[data-field=depth]")
                .await
                .as_deref()
                == Some("3")
        },
    )
    .await;
    eventually(Duration::from_secs(10), "crm's row to say paused", || async {
        text_now(b, "tr[data-destination=crm]")
            .await
            .is_some_and(|t| t.contains("paused"))
    })
    .await;
    screenshot(b, "overview").await;

    // Resume from crm's page, then pause it with a click.
    // The row may be swapped by a refresh between finding and clicking.
    eventually(Duration::from_secs(10), "a click on crm's link", || async {
        match b.find(Locator::LinkText("crm")).await {
            Ok(link) => link.click().await.is_ok(),
            Err(_) => false,
        }
    })
    .await;
    wait_for(b, "button#resume").await;
    click(b, "#resume").await;
    wait_for(b, "p.notice.good").await;
    assert_eq!(api(&tg, "/v1/destinations/crm").await["state"], "running");
    click(b, "#pause").await;
    wait_for(b, "button#resume").await;
    assert_eq!(api(&tg, "/v1/destinations/crm").await["state"], "paused");

    // A dead letter at erp, replayed from its page once erp is fixed.
    let id = tg.send("/erp/x", "{}").await;
    eventually(Duration::from_secs(20), "the dead letter", || async {
        api(&tg, &format!("/v1/messages/{id}")).await["state"] == "dead_lettered"
    })
    .await;
    erp_down.store(false, std::sync::atomic::Ordering::SeqCst);
    b.goto(&tg.admin_url("/ui/destinations/erp")).await.unwrap();
    wait_for(b, "button#replay-all").await;
    assert!(b.source().await.unwrap().contains(&id));
    click(b, "#replay-all").await;
    wait_for(b, "p.notice.good").await;
    assert!(text_of(b, "p.notice.good")
        .await
        .contains("1 dead letter(s) back in the queue"));
    eventually(Duration::from_secs(20), "the replayed message delivered", || async {
        api(&tg, &format!("/v1/messages/{id}")).await["state"] == "delivered"
    })
    .await;

    // A halted destination resumed past its failed head, from its page.
    erp_down.store(true, std::sync::atomic::Ordering::SeqCst);
    let head = tg.send("/billing/x", "{}").await;
    eventually(Duration::from_secs(20), "billing to halt", || async {
        api(&tg, "/v1/destinations/billing").await["state"] == "halted"
    })
    .await;
    b.goto(&tg.admin_url("/ui/destinations/billing")).await.unwrap();
    wait_for(b, "button#skip-head").await;
    assert!(text_of(b, "h1").await.contains("halted"));
    click(b, "#skip-head").await;
    wait_for(b, "p.notice.good").await;
    assert_eq!(api(&tg, "/v1/destinations/billing").await["state"], "running");
    let m = api(&tg, &format!("/v1/messages/{head}")).await;
    assert_eq!(
        (m["state"].as_str(), m["reason"].as_str()),
        (Some("dead_lettered"), Some("skipped_by_operator"))
    );
    erp_down.store(false, std::sync::atomic::Ordering::SeqCst);

    // The map: a node per destination, states in words; reached by keys.
    b.goto(&tg.admin_url("/ui/")).await.unwrap();
    wait_for(b, "table#overview").await;
    type_into(b, "body", "gm").await;
    wait_for(b, "svg.chain").await;
    assert!(b.current_url().await.unwrap().path().ends_with("/ui/map"));
    let nodes = b.find_all(Locator::Css("svg.chain g.node.destination")).await.unwrap();
    assert_eq!(nodes.len(), 3);
    let svg = text_of(b, "figure.map").await;
    assert!(
        svg.contains("paused") && svg.contains("running") && svg.contains("dashboards"),
        "{svg}"
    );
    screenshot(b, "map").await;

    // Keyboard: the first Tab reaches the skip link; Enter on a nav link goes.
    b.goto(&tg.admin_url("/ui/")).await.unwrap();
    wait_for(b, "table#overview").await;
    type_into(b, "body", "\u{E004}").await;
    let focused = b
        .execute("return document.activeElement.textContent;", vec![])
        .await
        .unwrap();
    assert_eq!(focused, json!("Skip to content"));
    b.execute("document.querySelector('header nav a[data-key=q]').focus();", vec![])
        .await
        .unwrap();
    b.active_element().await.unwrap().send_keys("\u{E007}").await.unwrap();
    wait_for(b, "body[data-section=quality]").await;

    // A phone's width: the overview still reads (labels per cell).
    b.set_window_size(390, 844).await.unwrap();
    b.goto(&tg.admin_url("/ui/")).await.unwrap();
    wait_for(b, "table#overview").await;
    let label = b
        .execute("return document.querySelector('tr[data-destination=crm] td[data-field=depth]').getAttribute('data-label');", vec![])
        .await
        .unwrap();
    assert_eq!(label, json!("Depth"));
    screenshot(b, "overview-phone").await;

    // A cross-site POST is refused: from another origin's page in the
    // browser, and from anything without this session's form value.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let other = listener.local_addr().unwrap();
    let target = tg.admin_url("/ui/destinations/erp/pause");
    let page = format!(
        "<!doctype html><form id=f method=post action=\"{target}\"><input name=csrf value=x></form><script>document.getElementById('f').submit()</script>"
    );
    tokio::spawn(async move {
        let app = axum::Router::new().route(
            "/",
            axum::routing::get(move || async move { axum::response::Html(page) }),
        );
        axum::serve(listener, app).await
    });
    b.goto(&format!("http://{other}/")).await.unwrap();
    eventually(Duration::from_secs(20), "the forged form to be answered", || async {
        b.current_url().await.unwrap().as_str().starts_with(&target)
    })
    .await;
    assert!(
        b.source().await.unwrap().contains("forbidden"),
        "{}",
        b.source().await.unwrap()
    );
    let r = tg
        .client
        .post(tg.admin_url("/ui/destinations/erp/pause"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("csrf=")
        .send()
        .await
        .unwrap();
    // No session: sent to sign in (reqwest follows the redirect).
    assert!(r.url().path().ends_with("/ui/login"), "{} {}", r.status(), r.url());
    assert_eq!(
        api(&tg, "/v1/destinations/erp").await["state"],
        "running",
        "nothing paused erp"
    );
}

#[tokio::test]
async fn console_forms_refuse_bad_input_and_show_hostile_text_as_text() {
    let ds = Downstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let schema = dir.path().join("s.json");
    std::fs::write(
        &schema,
        r#"{"type": "object", "required": ["name"], "properties": {"name": {"type": "string", "minLength": 1}}}"#,
    )
    .unwrap();
    let review = destination(
        "leads",
        &ds.url(),
        &format!(
            "[destination.handoff]\nschema = \"{}\"\n[destination.review]\nhold_when = \"true\"",
            schema.display()
        ),
    );
    let tg = start(&review, &ds).await;
    let Some(browser) = browser().await else { return };
    let b = &browser.client;
    let hostile = r#"{"name": "<script>window.__pwned=1</script><img src=x onerror=\"window.__pwned=2\">"}"#;
    let id = {
        let r = tg.post("/leads/x", hostile).await;
        assert_eq!(r.status(), 202);
        crate::support::accepted_id(r).await
    };
    signed_in(b, &tg).await;
    b.goto(&tg.admin_url("/ui/reviews")).await.unwrap();
    wait_for(b, "article.item").await;
    no_script_ran(b).await;
    let original = text_of(b, "article.item pre.body").await;
    assert!(
        original.contains("<script>window.__pwned=1</script>"),
        "shown as text: {original}"
    );
    screenshot(b, "reviews").await;

    // An edit that fails the schema: the errors in place, still held.
    let item = b.find(Locator::Css("article.item")).await.unwrap();
    let area = item.find(Locator::Css("textarea[name=body]")).await.unwrap();
    area.clear().await.unwrap();
    area.send_keys(r#"{"name": ""}"#).await.unwrap();
    // The reviewer is typed once per item; every decision form takes it.
    type_into(b, "input[name=reviewer]", "ann").await;
    item.find(Locator::Css("form[action$='/edit'] button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_for(b, "article.item div.notice.bad").await;
    let error = text_of(b, "article.item div.notice.bad").await;
    assert!(error.contains("/name"), "{error}");
    assert_eq!(api(&tg, &format!("/v1/messages/{id}")).await["state"], "held");
    no_script_ran(b).await;

    // A name with script in it, in a URL, is shown as text on a 404 page.
    b.goto(&tg.admin_url("/ui/destinations/%3Cscript%3Ewindow.__pwned%3D3%3C%2Fscript%3E"))
        .await
        .unwrap();
    wait_for(b, "p.notice.bad").await;
    no_script_ran(b).await;

    // With a session cookie but bad fields: empty reviewer, 5 MiB field.
    let (cookie, csrf) = session_and_csrf(b, &tg).await;
    let post = |path: String, body: String| {
        let (c, cookie) = (tg.client.clone(), cookie.clone());
        async move {
            c.post(path)
                .header("cookie", cookie)
                .header("content-type", "application/x-www-form-urlencoded")
                .body(body)
                .send()
                .await
                .unwrap()
        }
    };
    let r = post(
        tg.admin_url(&format!("/ui/reviews/{id}/approve")),
        format!("csrf={csrf}&reviewer="),
    )
    .await;
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("reviewer"), "the error in place");
    let big = "x".repeat(5 << 20);
    let r = post(
        tg.admin_url(&format!("/ui/reviews/{id}/approve")),
        format!("csrf={csrf}&reviewer={big}"),
    )
    .await;
    assert_eq!(r.status(), 413);
    let r = post(
        tg.admin_url("/ui/destinations/crm/pause"),
        format!("csrf={csrf}&x={big}"),
    )
    .await;
    assert_eq!(r.status(), 413);
    assert_eq!(
        api(&tg, &format!("/v1/messages/{id}")).await["state"],
        "held",
        "nothing decided"
    );
    // Approve with the keyboard: j selects the item, a approves.
    b.goto(&tg.admin_url("/ui/reviews")).await.unwrap();
    wait_for(b, "article.item").await;
    type_into(b, "article.item input[name=reviewer]", "ann").await;
    click(b, "body").await;
    type_into(b, "body", "ja").await;
    eventually(Duration::from_secs(20), "approved from the keyboard", || async {
        api(&tg, &format!("/v1/messages/{id}")).await["state"] != "held"
    })
    .await;
}

/// SPEC §18 in the console: a reviewer signs in with their own token,
/// sees who they are, no pause, resume, replay or purge, decides without
/// typing a name, and the decision is theirs (in the item and the audit
/// trail); a destination outside their list offers no decision.
#[tokio::test]
async fn a_reviewer_signs_in_with_their_own_token_and_decides_under_their_name_only() {
    const RITA: &str = "rita-console-token-0123456789";
    let ds = Downstream::start().await;
    let held = "[destination.review]\nhold_when = \"true\"";
    let tg = Tidegate::start_with(
        &format!(
            "{}{}",
            destination("contracts", &ds.url(), held),
            destination("invoices", &ds.url(), held)
        ),
        Extra {
            admin: "token_env = \"CONSOLE_TOKEN\"\n[[admin.user]]\nname = \"rita\"\ntoken_env = \"RITA_TOKEN\"\nrole = \"reviewer\"\ndestinations = [\"contracts\"]",
            env: &[("CONSOLE_TOKEN", TOKEN), ("RITA_TOKEN", RITA)],
            ..Extra::default()
        },
    )
    .await;
    let Some(browser) = browser().await else { return };
    let b = &browser.client;
    let id = {
        let r = tg.post("/contracts/x", r#"{"name": "c"}"#).await;
        assert_eq!(r.status(), 202);
        crate::support::accepted_id(r).await
    };
    let other = {
        let r = tg.post("/invoices/x", r#"{"name": "i"}"#).await;
        assert_eq!(r.status(), 202);
        crate::support::accepted_id(r).await
    };

    b.goto(&tg.admin_url("/ui/login")).await.unwrap();
    type_into(b, "#token", RITA).await;
    click(b, "button[type=submit]").await;
    wait_for(b, "table#overview").await;
    assert_eq!(text_of(b, "#who").await, "rita · reviewer");

    // A destination page: facts, no actions.
    b.goto(&tg.admin_url("/ui/destinations/contracts")).await.unwrap();
    wait_for(b, "dl.facts").await;
    for css in ["#pause", "#resume", "#skip-head", "#replay-all", "#purge"] {
        assert!(b.find(Locator::Css(css)).await.is_err(), "{css} offered to a reviewer");
    }
    // Posting the form anyway is refused: the role is the server's.
    let (cookie, csrf) = session_and_csrf(b, &tg).await;
    let r = tg
        .client
        .post(tg.admin_url("/ui/destinations/contracts/pause"))
        .header("cookie", &cookie)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("csrf={csrf}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(api(&tg, "/v1/destinations/contracts").await["state"], "running");

    // The reviews: deciding as rita, no name to type; the invoice (not
    // hers) is shown without decision forms.
    b.goto(&tg.admin_url("/ui/reviews")).await.unwrap();
    wait_for(b, "#deciding-as").await;
    assert_eq!(text_of(b, "#deciding-as").await, "Deciding as rita.");
    assert!(b
        .find(Locator::Css("input[name=reviewer]:not([type=hidden])"))
        .await
        .is_err());
    let theirs = b.find(Locator::Css(&format!("#item-{other}"))).await.unwrap();
    assert!(
        theirs.find(Locator::Css("form")).await.is_err(),
        "no decision on invoices"
    );
    screenshot(b, "reviews-as-reviewer").await;
    b.find(Locator::Css(&format!("#item-{id} form[action$='/approve'] button")))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    eventually(Duration::from_secs(20), "approved", || async {
        api(&tg, &format!("/v1/messages/{id}")).await["state"] != "held"
    })
    .await;
    let trail = api(&tg, "/v1/audit?action=approve").await;
    let items = trail["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{trail}");
    assert_eq!(items[0]["actor"], "rita");
    assert_eq!(items[0]["target"], id.as_str());
    assert_eq!(items[0]["detail"]["reviewer"], "rita");
    assert_eq!(api(&tg, &format!("/v1/messages/{other}")).await["state"], "held");

    // The audit page shows it.
    b.goto(&tg.admin_url("/ui/audit")).await.unwrap();
    wait_for(b, "table#audit").await;
    let table = text_of(b, "table#audit").await;
    assert!(
        table.contains("rita") && table.contains("approve") && table.contains(&id),
        "{table}"
    );
}
