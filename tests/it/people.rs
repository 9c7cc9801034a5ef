//! People, roles and the audit trail (SPEC §18), end to end: every role
//! against every act on a destination inside and outside its list, a
//! decision recorded under the token's holder, quality split by reviewer,
//! and the audit trail (API, CLI, export) holding every acknowledged act
//! once, across a kill -9 in the middle of decisions. Run on both backends
//! (`tests/cluster_suite.rs` includes this file).

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::{cli_with_token, destination, eventually, problem, Downstream, Extra, Tidegate};

const ROOT: &str = "root-token-0123456789abcdef";
/// (name, token, role line, destinations line)
const PEOPLE: [(&str, &str, &str); 4] = [
    ("vera", "vera-token-0123456789abcdef", "role = \"viewer\""),
    (
        "rita",
        "rita-token-0123456789abcdef",
        "role = \"reviewer\"\ndestinations = [\"a\"]",
    ),
    ("otto", "otto-token-0123456789abcdef", "role = \"operator\""),
    (
        "olga",
        "olga-token-0123456789abcdef",
        "role = \"operator\"\ndestinations = [\"a\"]",
    ),
];

fn admin_section() -> String {
    let mut s = "token_env = \"ROOT_TOKEN\"\n".to_string();
    for (name, _, role) in PEOPLE {
        s.push_str(&format!(
            "[[admin.user]]\nname = \"{name}\"\ntoken_env = \"{}_TOKEN\"\n{role}\n",
            name.to_uppercase()
        ));
    }
    s
}

fn env() -> Vec<(String, String)> {
    let mut e = vec![("ROOT_TOKEN".to_string(), ROOT.to_string())];
    for (name, token, _) in PEOPLE {
        e.push((format!("{}_TOKEN", name.to_uppercase()), token.to_string()));
    }
    e
}

fn token_of(who: &str) -> &'static str {
    if who == "admin" {
        return ROOT;
    }
    PEOPLE.iter().find(|p| p.0 == who).map(|p| p.1).unwrap()
}

/// Two destinations, `a` and `b`, each holding what is marked `hold`, by
/// category `kind`.
async fn start(ds: &Downstream) -> Tidegate {
    let reviewed = "[destination.handoff]\ncategory = \".kind\"\n[destination.review]\nhold_when = \".hold == true\"";
    let dests = format!(
        "{}{}",
        destination("a", &ds.url(), reviewed),
        destination("b", &ds.url(), reviewed)
    );
    let env = env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let admin = admin_section();
    Tidegate::start_with(
        &dests,
        Extra {
            admin: &admin,
            env: &env,
            ..Extra::default()
        },
    )
    .await
}

/// The CLI run with `who`'s token: its standard output, asserting success.
fn cli_as(tg: &Tidegate, who: &str, args: &[&str]) -> String {
    let (ok, stdout, stderr) = cli_with_token(tg, Some(token_of(who)), args);
    assert!(ok, "{args:?} as {who}: {stdout} {stderr}");
    stdout
}

async fn call(tg: &Tidegate, who: Option<&str>, method: &str, path: &str, body: Value) -> reqwest::Response {
    let mut r = match method {
        "GET" => tg.client.get(tg.admin_url(path)),
        "DELETE" => tg.client.delete(tg.admin_url(path)),
        _ => tg.client.post(tg.admin_url(path)).body(body.to_string()),
    };
    if let Some(w) = who {
        r = r.bearer_auth(token_of(w));
    }
    r.send().await.expect("admin request")
}

async fn held(tg: &Tidegate, dest: &str) -> String {
    let r = tg
        .post(&format!("/{dest}/x"), r#"{"hold": true, "kind": "lead", "name": "n"}"#)
        .await;
    assert_eq!(r.status(), 202);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["status"], "held", "{v}");
    v["id"].as_str().unwrap().to_string()
}

async fn delivered(tg: &Tidegate, dest: &str) -> String {
    let id = tg
        .send(&format!("/{dest}/x"), r#"{"hold": false, "kind": "lead", "name": "n"}"#)
        .await;
    eventually(Duration::from_secs(20), "delivered", || async {
        state_of(tg, &id).await == "delivered"
    })
    .await;
    id
}

/// A message's state, asked with the admin token (the test helpers ask
/// without one).
async fn state_of(tg: &Tidegate, id: &str) -> String {
    let v: Value = call(tg, Some("admin"), "GET", &format!("/v1/messages/{id}"), json!(null))
        .await
        .json()
        .await
        .unwrap();
    v["state"].as_str().unwrap_or("").to_string()
}

/// One act of the table: what it sends, as whom; the acknowledged ones
/// are what the audit trail must hold.
async fn act(tg: &Tidegate, who: &str, action: &str, dest: &str) -> (u16, String, Option<(String, String)>) {
    let (method, path, body, target) = match action {
        "read" => ("GET", format!("/v1/destinations/{dest}"), json!(null), None),
        "pause" => ("POST", format!("/v1/destinations/{dest}/pause"), json!(null), None),
        "resume" => {
            let r = call(
                tg,
                Some("admin"),
                "POST",
                &format!("/v1/destinations/{dest}/pause"),
                json!(null),
            )
            .await;
            assert_eq!(r.status(), 200);
            ("POST", format!("/v1/destinations/{dest}/resume"), json!(null), None)
        }
        "replay" => (
            "POST",
            format!("/v1/destinations/{dest}/dead-letters/replay"),
            json!({}),
            None,
        ),
        "purge" => (
            "DELETE",
            format!("/v1/destinations/{dest}/dead-letters"),
            json!(null),
            None,
        ),
        "approve" => {
            let id = held(tg, dest).await;
            let body = if who == "admin" {
                json!({"reviewer": "root-reviewer"})
            } else {
                json!({})
            };
            ("POST", format!("/v1/reviews/{id}/approve"), body, Some(id))
        }
        "feedback" => {
            let id = delivered(tg, dest).await;
            let body = json!({"verdict": "overridden", "reviewer": if who == "admin" { "root-reviewer" } else { who }});
            ("POST", format!("/v1/messages/{id}/feedback"), body, Some(id))
        }
        "reload" => ("POST", "/v1/reload".to_string(), json!(null), None),
        other => panic!("no act {other}"),
    };
    let r = call(tg, Some(who), method, &path, body).await;
    let status = r.status().as_u16();
    let v: Value = r.json().await.unwrap_or(Value::Null);
    let code = v["code"].as_str().unwrap_or("").to_string();
    if status == 200 && target.is_some() {
        let reviewer = if who == "admin" { "root-reviewer" } else { who };
        assert_eq!(
            v["reviewer"], reviewer,
            "{who}'s decision recorded under {reviewer}: {v}"
        );
    }
    if matches!(action, "pause" | "resume") {
        // Running again for the next act, whoever was refused.
        let r = call(
            tg,
            Some("admin"),
            "POST",
            &format!("/v1/destinations/{dest}/resume"),
            json!(null),
        )
        .await;
        assert_eq!(r.status(), 200);
    }
    let acked = (status == 200 && action != "read").then(|| (action.to_string(), target.unwrap_or_default()));
    (status, code, acked)
}

/// What SPEC §18 says each role may do: `ok`, or the refusal's code.
fn expected(who: &str, action: &str, dest: &str) -> &'static str {
    let scoped_out = matches!(who, "rita" | "olga") && dest == "b";
    match (who, action) {
        (_, "read") => "ok",
        ("vera", _) => "forbidden_role",
        ("rita", "approve" | "feedback") if scoped_out => "forbidden_destination",
        ("rita", "approve" | "feedback") => "ok",
        ("rita", _) => "forbidden_role",
        ("olga", "reload") => "forbidden_destination",
        ("olga", _) if scoped_out => "forbidden_destination",
        _ => "ok",
    }
}

#[tokio::test]
async fn each_role_may_do_what_it_may_on_its_destinations_and_every_act_is_on_record_once() {
    let ds = Downstream::start().await;
    let tg = start(&ds).await;

    // No token, or one that names nobody: 401.
    problem(
        call(&tg, None, "GET", "/v1/destinations", json!(null)).await,
        401,
        "unauthorized",
    )
    .await;
    let r = tg
        .client
        .get(tg.admin_url("/v1/destinations"))
        .bearer_auth("nobody-0123456789")
        .send()
        .await
        .unwrap();
    problem(r, 401, "unauthorized").await;

    let actions = [
        "read", "pause", "resume", "replay", "purge", "approve", "feedback", "reload",
    ];
    let people = ["admin", "vera", "rita", "otto", "olga"];
    let mut table = String::from("| role | action | a | b |\n|---|---|---|---|\n");
    let mut acked: Vec<(String, String, String, String)> = Vec::new();
    for who in people {
        for action in actions {
            let mut cells = Vec::new();
            for dest in ["a", "b"] {
                let (status, code, done) = act(&tg, who, action, dest).await;
                let want = expected(who, action, dest);
                let got = if status == 200 { "ok".to_string() } else { code.clone() };
                assert_eq!(got, want, "{who} {action} on {dest}: {status} {code}");
                assert_eq!(status, if want == "ok" { 200 } else { 403 }, "{who} {action} {dest}");
                cells.push(if status == 200 {
                    "200".to_string()
                } else {
                    format!("{status} {code}")
                });
                if let Some((action, target)) = done {
                    let dest = if action == "reload" {
                        String::new()
                    } else {
                        dest.to_string()
                    };
                    acked.push((who.to_string(), action, dest, target));
                }
                if action == "reload" {
                    break; // one reload, not per destination
                }
            }
            let role = match who {
                "admin" => "admin token (operator)",
                "vera" => "vera: viewer",
                "rita" => "rita: reviewer of a",
                "otto" => "otto: operator",
                _ => "olga: operator of a",
            };
            table.push_str(&format!(
                "| {role} | {action} | {} | {} |\n",
                cells[0],
                cells.get(1).map_or("(all)", String::as_str)
            ));
        }
    }
    println!("{table}");

    // A person's decision is theirs: naming someone else is refused.
    let id = held(&tg, "a").await;
    let r = call(
        &tg,
        Some("rita"),
        "POST",
        &format!("/v1/reviews/{id}/approve"),
        json!({"reviewer": "otto"}),
    )
    .await;
    problem(r, 400, "reviewer_mismatch").await;
    let id2 = delivered(&tg, "a").await;
    let r = call(
        &tg,
        Some("rita"),
        "POST",
        &format!("/v1/messages/{id2}/feedback"),
        json!({"verdict": "correct", "reviewer": "otto"}),
    )
    .await;
    problem(r, 400, "reviewer_mismatch").await;
    // The CLI needs no --reviewer with a person's token.
    let stdout = cli_as(&tg, "rita", &["reviews", "approve", &id, "--json"]);
    assert_eq!(
        serde_json::from_str::<Value>(&stdout).unwrap()["reviewer"],
        "rita",
        "{stdout}"
    );
    acked.push(("rita".into(), "approve".into(), "a".into(), id.clone()));
    // A resume's `by` is the person too.
    call(&tg, Some("otto"), "POST", "/v1/destinations/a/pause", json!(null)).await;
    acked.push(("otto".into(), "pause".into(), "a".into(), String::new()));
    let r = call(
        &tg,
        Some("otto"),
        "POST",
        "/v1/destinations/a/resume?by=vera",
        json!(null),
    )
    .await;
    problem(r, 400, "reviewer_mismatch").await;
    let r = call(
        &tg,
        Some("otto"),
        "POST",
        "/v1/destinations/a/resume?reason=checked",
        json!(null),
    )
    .await;
    assert_eq!(r.status(), 200);
    acked.push(("otto".into(), "resume".into(), "a".into(), String::new()));

    // The trail: every acknowledged act once, by its actor, refused ones
    // never. The pauses the table's resumes needed were the admin's.
    let v = call(&tg, Some("vera"), "GET", "/v1/audit?limit=1000", json!(null)).await;
    assert_eq!(v.status(), 200);
    let v: Value = v.json().await.unwrap();
    let items = v["items"].as_array().unwrap().clone();
    let mut on_record: HashMap<(String, String, String, String), usize> = HashMap::new();
    for i in &items {
        let key = (
            i["actor"].as_str().unwrap().to_string(),
            i["action"].as_str().unwrap().to_string(),
            i["destination"].as_str().unwrap_or("").to_string(),
            i["target"].as_str().unwrap_or("").to_string(),
        );
        *on_record.entry(key).or_default() += 1;
    }
    for (who, action, dest, target) in &acked {
        let key = (who.clone(), action.clone(), dest.clone(), target.clone());
        assert!(on_record.contains_key(&key), "{key:?} not on record: {items:#?}");
        if !target.is_empty() {
            assert_eq!(on_record[&key], 1, "{key:?} on record once");
        }
    }
    assert!(
        !items
            .iter()
            .any(|i| i["actor"] == "vera" || (i["actor"] == "rita" && i["destination"] == "b")),
        "a refused act is not on record"
    );
    let resume = items
        .iter()
        .rev()
        .find(|i| i["actor"] == "otto" && i["action"] == "resume")
        .unwrap();
    assert_eq!(resume["detail"]["by"], "otto");
    assert_eq!(resume["detail"]["reason"], "checked");
    // Filters.
    let v: Value = call(
        &tg,
        Some("vera"),
        "GET",
        "/v1/audit?actor=rita&action=approve",
        json!(null),
    )
    .await
    .json()
    .await
    .unwrap();
    let rita: Vec<&Value> = v["items"].as_array().unwrap().iter().collect();
    assert_eq!(rita.len(), 2, "the table's and the CLI's: {v}");
    assert!(
        rita.iter()
            .all(|i| i["destination"] == "a" && i["detail"]["reviewer"] == "rita"),
        "{v}"
    );
    let r = call(&tg, Some("vera"), "GET", "/v1/audit?since=yesterday-ish", json!(null)).await;
    problem(r, 400, "invalid_request").await;
    // The export: one JSON object per line, as many as the page.
    let r = call(&tg, Some("vera"), "GET", "/v1/audit?format=jsonl", json!(null)).await;
    assert_eq!(r.headers()["content-type"], "application/jsonl");
    let text = r.text().await.unwrap();
    assert_eq!(text.lines().count(), items.len());
    for l in text.lines() {
        serde_json::from_str::<Value>(l).expect("a JSON line");
    }
    // And the CLI.
    let stdout = cli_as(&tg, "vera", &["audit", "--actor", "otto", "--action", "pause"]);
    assert!(
        stdout.starts_with("WHEN") && stdout.contains("otto") && stdout.contains("pause"),
        "{stdout}"
    );
    assert!(!stdout.contains("rita"), "{stdout}");

    // Quality by reviewer: each person who decided on `a` has a row, and
    // every pair of them an agreement.
    let v: Value = call(
        &tg,
        Some("vera"),
        "GET",
        "/v1/quality?by=reviewer&destination=a",
        json!(null),
    )
    .await
    .json()
    .await
    .unwrap();
    let rows = v["reviewers"].as_array().unwrap();
    let mut names: Vec<&str> = rows.iter().map(|r| r["reviewer"].as_str().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["olga", "otto", "rita", "root-reviewer"], "{v}");
    assert_eq!(v["agreement"].as_array().unwrap().len(), 6, "{v}");
    let stdout = cli_as(&tg, "rita", &["report", "--by", "reviewer", "--destination", "a"]);
    assert!(stdout.contains("REVIEWER") && stdout.contains("agreement"), "{stdout}");
}

/// Decisions by two people at once while tidegate is killed with -9: once
/// it is back, every decision that was acknowledged is on the trail,
/// exactly once, under the person who made it.
#[tokio::test]
async fn the_audit_trail_holds_every_acknowledged_decision_once_across_a_kill_9() {
    let ds = Downstream::start().await;
    let mut tg = start(&ds).await;
    let mut ids = Vec::new();
    // Enough that the kill comes before the last of them.
    for _ in 0..200 {
        ids.push(held(&tg, "a").await);
    }
    let tg_admin = tg.admin_url("");
    let client = reqwest::Client::new();
    let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(String, String)>::new()));
    let mut deciders = Vec::new();
    for (who, mine) in [("rita", 0), ("otto", 1)] {
        let (client, base, acked) = (client.clone(), tg_admin.clone(), acked.clone());
        let ids: Vec<String> = ids.iter().skip(mine).step_by(2).cloned().collect();
        deciders.push(tokio::spawn(async move {
            for id in ids {
                let r = client
                    .post(format!("{base}/v1/reviews/{id}/approve"))
                    .bearer_auth(token_of(who))
                    .body("{}")
                    .timeout(Duration::from_secs(5))
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status() == 200 => acked.lock().unwrap().push((who.to_string(), id)),
                    _ => return,
                }
            }
        }));
    }
    eventually(Duration::from_secs(30), "some decisions acknowledged", || async {
        acked.lock().unwrap().len() >= 10
    })
    .await;
    tg.kill9();
    for d in deciders {
        d.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() < ids.len(),
        "the kill came after every decision: nothing was tested"
    );
    tg.spawn(&env().iter().map(|(k, v)| (k.as_str(), v.as_str())).collect::<Vec<_>>())
        .await;
    let v: Value = call(
        &tg,
        Some("admin"),
        "GET",
        "/v1/audit?action=approve&limit=1000",
        json!(null),
    )
    .await
    .json()
    .await
    .unwrap();
    let mut on_record: HashMap<String, Vec<String>> = HashMap::new();
    for i in v["items"].as_array().unwrap() {
        on_record
            .entry(i["target"].as_str().unwrap().to_string())
            .or_default()
            .push(i["actor"].as_str().unwrap().to_string());
    }
    for (who, id) in &acked {
        assert_eq!(
            on_record.get(id),
            Some(&vec![who.clone()]),
            "{id}, decided by {who}, on record once"
        );
    }
    // Nothing decided twice: each on-record decision is the item's one.
    for (id, actors) in &on_record {
        assert_eq!(actors.len(), 1, "{id} on record {actors:?}");
        let s = state_of(&tg, id).await;
        assert_ne!(s, "held", "{id} is on record as decided but still held");
    }
    println!(
        "kill -9 during decisions: {} acknowledged, {} on record after the restart",
        acked.len(),
        on_record.len()
    );
}

/// A reload adds, removes and re-roles people: the removed one's token
/// names nobody any more (401), the added one acts at once, and the reload
/// itself is on the trail under who asked for it. No token is ever in the
/// log.
#[tokio::test]
async fn a_reload_adds_removes_and_re_roles_people() {
    let ds = Downstream::start().await;
    let tg = start(&ds).await;
    let ok = |r: reqwest::Response| async move {
        let s = r.status();
        assert_eq!(s, 200, "{}", r.text().await.unwrap_or_default());
    };
    ok(call(&tg, Some("vera"), "GET", "/v1/destinations", json!(null)).await).await;
    problem(
        call(&tg, Some("vera"), "POST", "/v1/destinations/a/pause", json!(null)).await,
        403,
        "forbidden_role",
    )
    .await;

    // vera becomes an operator; rita goes.
    let text = std::fs::read_to_string(&tg.config_path).unwrap();
    let next = text
        .replace(
            "name = \"vera\"\ntoken_env = \"VERA_TOKEN\"\nrole = \"viewer\"",
            "name = \"vera\"\ntoken_env = \"VERA_TOKEN\"\nrole = \"operator\"",
        )
        .replace(
            "[[admin.user]]\nname = \"rita\"\ntoken_env = \"RITA_TOKEN\"\nrole = \"reviewer\"\ndestinations = [\"a\"]\n",
            "",
        );
    assert_ne!(text, next);
    assert!(!next.contains("rita"), "{next}");
    std::fs::write(&tg.config_path, next).unwrap();
    ok(call(&tg, Some("otto"), "POST", "/v1/reload", json!(null)).await).await;

    ok(call(&tg, Some("vera"), "POST", "/v1/destinations/a/pause", json!(null)).await).await;
    problem(
        call(&tg, Some("rita"), "GET", "/v1/destinations", json!(null)).await,
        401,
        "unauthorized",
    )
    .await;
    let v: Value = call(&tg, Some("otto"), "GET", "/v1/audit", json!(null))
        .await
        .json()
        .await
        .unwrap();
    let acts: Vec<(String, String)> = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["actor"].as_str().unwrap().into(),
                i["action"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        acts,
        [
            ("otto".to_string(), "reload".to_string()),
            ("vera".into(), "pause".into())
        ],
        "{v}"
    );
    let log = tg.log();
    for (_, token, _) in PEOPLE {
        assert!(!log.contains(token), "a token in the log");
    }
    assert!(!log.contains(ROOT));
}
