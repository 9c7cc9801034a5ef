//! The shipped dashboard and alert rules against a real Prometheus scraping
//! a real tidegate: every PromQL expression parses, every dashboard
//! expression returns series, and the halted alert fires.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::support::{destination, eventually, Downstream, Tidegate};

struct Prometheus {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn repo(path: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

async fn start_prometheus(target: std::net::SocketAddr) -> Option<Prometheus> {
    let bin = ["/usr/bin/prometheus", "/usr/local/bin/prometheus"]
        .into_iter()
        .find(|p| Path::new(p).exists());
    let Some(bin) = bin else {
        assert!(
            std::env::var_os("CI").is_none(),
            "prometheus is not installed; .ci/run installs it"
        );
        eprintln!("SKIPPED: no prometheus binary");
        return None;
    };
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("prometheus.yml");
    std::fs::write(
        &cfg,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: tidegate\n    static_configs:\n      - targets: [\"{target}\"]\n",
            repo("deploy/prometheus/alerts.yml").display()
        ),
    )
    .unwrap();
    let port = free_port();
    let child = Command::new(bin)
        .arg(format!("--config.file={}", cfg.display()))
        .arg(format!("--storage.tsdb.path={}", dir.path().join("tsdb").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let p = Prometheus {
        child,
        url: format!("http://127.0.0.1:{port}"),
        _dir: dir,
    };
    let client = reqwest::Client::new();
    eventually(Duration::from_secs(30), "prometheus to be ready", || async {
        client
            .get(format!("{}/-/ready", p.url))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    Some(p)
}

async fn query(p: &Prometheus, expr: &str) -> serde_json::Value {
    reqwest::Client::new()
        .get(format!("{}/api/v1/query", p.url))
        .query(&[("query", expr)])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Whether Prometheus has `alert` for `destination` in one of `states`.
async fn alert_active(p: &Prometheus, alert: &str, destination: &str, states: &[&str]) -> bool {
    let v: serde_json::Value = reqwest::Client::new()
        .get(format!("{}/api/v1/alerts", p.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["data"]["alerts"].as_array().into_iter().flatten().any(|a| {
        a["labels"]["alertname"] == alert
            && a["labels"]["destination"] == destination
            && states.iter().any(|s| a["state"] == *s)
    })
}

fn dashboard_exprs() -> Vec<String> {
    let dash: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(repo("deploy/grafana/tidegate.json")).unwrap()).unwrap();
    dash["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().iter())
        .map(|t| {
            t["expr"]
                .as_str()
                .unwrap()
                .replace("$destination", "crm|erp|bulk")
                .replace("$job", "tidegate")
                .replace("$__rate_interval", "20s")
        })
        .collect()
}

fn rule_exprs() -> Vec<String> {
    std::fs::read_to_string(repo("deploy/prometheus/alerts.yml"))
        .unwrap()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("expr: "))
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn dashboard_and_alert_expressions_work_against_a_live_tidegate() {
    let ds = Downstream::start().await;
    ds.refuse_under("/bad", 400);
    let u = ds.url();
    // crm routes what asks for triage to a destination of its own, so the
    // routed series exists.
    let route = "[destination.handoff]\ncategory = \".kind\"\n[[destination.handoff.route]]\nwhen = \".triage == true\"\nto = \"triage\"\n[destination.review]\nhold_when = \".hold == true\"";
    let tg = Tidegate::start(&format!(
        "{}{}{}{}",
        destination(
            "crm",
            &format!("{u}/ok"),
            &format!("latency_objective = \"15m\"\n{route}")
        ),
        destination("triage", &format!("{u}/ok"), ""),
        destination("erp", &format!("{u}/bad"), "on_failure = \"halt\""),
        // Batches, for the batch panel.
        destination(
            "bulk",
            &format!("{u}/ok"),
            "[destination.batch]\nmax_messages = 5\nmax_wait = \"50ms\""
        )
    ))
    .await;
    let Some(prom) = start_prometheus(tg.admin).await else {
        return;
    };
    tg.send("/erp/x", "{}").await;
    tg.wait_state("erp", "halted").await;
    tg.send("/crm/t", r#"{"triage": true}"#).await;
    // One held message, decided, and one left waiting: the review series.
    let held = tg.send("/crm/h", r#"{"hold": true, "kind": "lead"}"#).await;
    tg.send("/crm/h", r#"{"hold": true, "kind": "lead"}"#).await;
    let r = tg
        .admin_post(
            &format!("/v1/reviews/{held}/edit"),
            r#"{"reviewer": "r", "body": {"kind": "lead"}}"#,
        )
        .await;
    assert_eq!(r.status(), 200);
    // Traffic over a few scrapes, so rates and histograms have data.
    for i in 0..30 {
        tg.send(&format!("/bulk/{i}"), "{}").await;
        let id = tg.send(&format!("/crm/{i}"), "{}").await;
        if i % 10 == 9 {
            tg.wait_message_state(&id, "delivered").await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await; // pacing the load, not synchronising
    }
    let rules = rule_exprs();
    assert_eq!(rules.len(), 14, "every rule in alerts.yml has a one-line expr");
    for expr in &rules {
        let v = query(&prom, expr).await;
        assert_eq!(
            v["status"], "success",
            "alert expression does not evaluate: {expr}\n{v}"
        );
    }
    let raw = std::fs::read_to_string(repo("deploy/grafana/tidegate.json")).unwrap();
    assert!(
        !raw.contains(r#"job=\"tidegate\""#),
        "the dashboard takes the scrape job from its $job variable"
    );
    let exprs = dashboard_exprs();
    assert!(exprs.len() >= 20);
    for expr in &exprs {
        let e = expr.clone();
        eventually(Duration::from_secs(30), &format!("series for {expr}"), || {
            let e = e.clone();
            let prom = &prom;
            async move {
                let v = query(prom, &e).await;
                assert_eq!(
                    v["status"], "success",
                    "dashboard expression does not evaluate: {e}\n{v}"
                );
                v["data"]["result"].as_array().is_some_and(|r| !r.is_empty())
            }
        })
        .await;
    }
    eventually(
        Duration::from_secs(30),
        "TidegateDestinationHalted to fire for erp",
        || alert_active(&prom, "TidegateDestinationHalted", "erp", &["firing"]),
    )
    .await;
}

/// A destination paused past its latency objective: the gauge, the API's
/// `objective.met` and the shipped alert rule all say so.
#[tokio::test]
async fn a_destination_past_its_latency_objective_turns_the_gauge_the_api_and_the_alert() {
    let ds = Downstream::start().await;
    let tg = Tidegate::start(&destination("orders", &ds.url(), "latency_objective = \"2s\"")).await;
    let Some(prom) = start_prometheus(tg.admin).await else {
        return;
    };
    let d = tg.destination("orders").await;
    assert_eq!(d["objective"], serde_json::json!({"latency_seconds": 2.0, "met": true}));
    let metrics = tg.metrics_text().await;
    assert!(
        metrics.contains("tidegate_latency_objective_seconds{destination=\"orders\"} 2"),
        "{metrics}"
    );
    assert_eq!(tg.admin_post("/v1/destinations/orders/pause", "").await.status(), 200);
    tg.send("/orders/x", "{}").await;
    eventually(Duration::from_secs(20), "objective.met to turn false", || async {
        tg.destination("orders").await["objective"]["met"] == false
    })
    .await;
    eventually(
        Duration::from_secs(40),
        "TidegateLatencyObjectiveBreached for orders",
        || {
            alert_active(
                &prom,
                "TidegateLatencyObjectiveBreached",
                "orders",
                &["pending", "firing"],
            )
        },
    )
    .await;
    assert!(tg
        .metrics_text()
        .await
        .contains("tidegate_alerts_total{event=\"latency_objective\"} 1"));
    // Delivered, it is met again.
    assert_eq!(tg.admin_post("/v1/destinations/orders/resume", "").await.status(), 200);
    eventually(Duration::from_secs(20), "objective met again", || async {
        tg.destination("orders").await["objective"]["met"] == true
    })
    .await;
}
