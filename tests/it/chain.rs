//! `tidegate map` and `tidegate plan` (SPEC §11) on real config files and a
//! running instance: golden outputs in each notation, Graphviz accepting the
//! DOT, live figures, and the capacity arithmetic with its exit code.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::{config_file, destination, Downstream, Tidegate};

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn tidegate(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tidegate"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Compares `actual` with `tests/golden/NAME`; `UPDATE_GOLDEN=1` rewrites it.
fn golden(name: &str, actual: &str) {
    let path = repo("tests/golden").join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).unwrap();
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_GOLDEN=1 writes it)", path.display()));
    assert_eq!(actual, expected, "{name} differs from its golden output");
}

/// Graphviz renders the DOT to SVG without a complaint.
fn dot_accepts(dot: &str) {
    let Some(bin) = ["/usr/bin/dot", "/usr/local/bin/dot"]
        .into_iter()
        .find(|p| Path::new(p).exists())
    else {
        assert!(
            std::env::var_os("CI").is_none(),
            "graphviz is not installed; .ci/run installs it"
        );
        eprintln!("SKIPPED: no graphviz");
        return;
    };
    use std::io::Write;
    let mut child = Command::new(bin)
        .arg("-Tsvg")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(dot.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "dot refused it: {stderr}"
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("<svg"));
}

fn maps_of(config: &str, name: &str) {
    for (format, ext) in [("mermaid", "mmd"), ("dot", "dot"), ("json", "json")] {
        let (code, out, err) = tidegate(&["map", "--config", config, "--format", format]);
        assert_eq!(code, 0, "{err}");
        golden(&format!("{name}.{ext}"), &out);
        if format == "dot" {
            dot_accepts(&out);
        }
    }
}

const FULFILMENT: &str = r#"
[[destination]]
name = "warehouse"
url = "https://wms.example.com/api/orders"
owner = "fulfilment@example.com"
on_failure = "buffer"
expected_volume = "500/s"
latency_objective = "15m"
feeds = ["pick lists", "carrier booking"]
[destination.rate_limit]
rate = "100/s"
[destination.handoff]
format = "csv"
csv = { columns = ["sku", "qty", "site"] }

[[destination]]
name = "crm"
url = "https://crm.example.com/api"
owner = "sales-ops@example.com"
expected_volume = "20000/h"
latency_objective = "15m"
feeds = ["sales dashboards"]
[destination.rate_limit]
rate = "50/s"
[destination.review]
hold_when = ".confidence < 0.8"
sample = 0.05
[[destination.handoff.route]]
when = ".kind == \"order\""
to = "warehouse"

[[destination]]
name = "billing"
url = "https://billing.example.com/"
owner = "finance \"ops\" <finance@example.com>"
on_failure = "halt"
feeds = ["ledger"]
"#;

#[test]
fn maps_of_the_shipped_config_and_a_three_destination_chain_match_their_golden_outputs() {
    maps_of("config/tidegate.toml", "shipped");
    let (_dir, path) = config_file("[ingress]\nlisten = \"127.0.0.1:0\"\n", FULFILMENT);
    maps_of(path.to_str().unwrap(), "fulfilment");
    let (_, mermaid, _) = tidegate(&["map", "--config", path.to_str().unwrap()]);
    // Every fact on the warehouse edge.
    assert!(
        mermaid.contains("csv<br/>peak 500.0/s<br/>rate 100.0/s<br/>objective 15m<br/>on failure: buffer<br/>owner fulfilment@example.com"),
        "{mermaid}"
    );
    assert!(
        mermaid.contains("-.->|\"route\"|"),
        "the crm → warehouse route: {mermaid}"
    );
    assert!(
        mermaid.contains("finance #quot;ops#quot; #lt;finance@example.com#gt;"),
        "escaped: {mermaid}"
    );
}

#[test]
fn plan_fails_the_fulfilment_case_and_passes_a_healthy_one() {
    let (_dir, path) = config_file("[ingress]\nlisten = \"127.0.0.1:0\"\n", FULFILMENT);
    let (code, out, _) = tidegate(&["plan", "--config", path.to_str().unwrap()]);
    println!("{out}");
    assert_eq!(code, 1, "five times the rate cannot meet 15 minutes:\n{out}");
    assert!(out.contains("warehouse: CANNOT MEET its 15m objective"), "{out}");
    assert!(out.contains("the queue grows by 1440000 messages an hour"), "{out}");
    assert!(
        out.contains("passes 15m after 19m of peak; a rate of 500.0/s would meet it"),
        "{out}"
    );
    // The outage queues what the queue can hold, and says what it refuses.
    assert!(
        out.contains("queues 1000000 messages (976.6 MiB) and never drains"),
        "{out}"
    );
    assert!(out.contains("800000 more are refused (429 queue_full)"), "{out}");
    assert!(out.contains("crm: meets its 15m objective"), "{out}");
    assert!(out.contains("billing: not checked: no expected_volume"), "{out}");
    let (code, json, _) = tidegate(&["plan", "--config", path.to_str().unwrap(), "--json"]);
    assert_eq!(code, 1);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let wh = &v["destinations"][0]["plan"];
    assert_eq!(wh["verdict"], "breaches");
    assert_eq!(wh["growth_per_hour"], 1_440_000.0);
    assert!((wh["first_breach_after"].as_f64().unwrap() - 1125.0).abs() < 1e-6);
    assert_eq!(wh["rate_needed"], 500.0);
    // crm: 20000/h against 50/s; an outage's 20,000 drain at 44.4/s.
    let crm = &v["destinations"][1]["plan"];
    assert_eq!(crm["verdict"], "meets");
    assert!((crm["outage_drain"].as_f64().unwrap() - 20000.0 / (50.0 - 20000.0 / 3600.0)).abs() < 1e-6);

    // The same chain with the warehouse's rate raised to its peak: healthy.
    let healthy = FULFILMENT.replace("rate = \"100/s\"", "rate = \"500/s\"");
    let (_dir, path) = config_file("[ingress]\nlisten = \"127.0.0.1:0\"\n", &healthy);
    let (code, out, _) = tidegate(&["plan", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("every declared objective can be met"), "{out}");
    // A config that does not load is a clear error, not a plan.
    let (_dir, path) = config_file(
        "",
        "[[destination]]\nname = \"x\"\nurl = \"http://x/\"\nowner = \"o\"\nexpected_volume = \"lots\"\n",
    );
    let (code, _, err) = tidegate(&["plan", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("expected_volume") && err.contains(":7:19"), "{err}");
}

#[tokio::test]
async fn a_live_map_shows_each_destinations_state_and_depth() {
    let ds = Downstream::start().await;
    let u = ds.url();
    let tg = Tidegate::start(&format!(
        "{}{}",
        destination("crm", &u, "latency_objective = \"15m\""),
        destination("erp", &u, "feeds = [\"ledger\"]")
    ))
    .await;
    assert_eq!(tg.admin_post("/v1/destinations/crm/pause", "").await.status(), 200);
    for _ in 0..3 {
        tg.send("/crm/x", "{}").await;
    }
    let id = tg.send("/erp/x", "{}").await;
    tg.wait_message_state(&id, "delivered").await;
    let config = tg.config_path.to_str().unwrap().to_string();
    let admin = tg.admin_url("");
    let (code, out, err) = tokio::task::spawn_blocking(move || {
        tidegate(&["map", "--config", &config, "--admin", &admin, "--format", "mermaid"])
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("crm<br/>paused · depth 3<br/>oldest "), "{out}");
    assert!(out.contains("/ 15m"), "age against the objective: {out}");
    assert!(out.contains("erp<br/>running · depth 0"), "{out}");
    // A live map of an instance that is not there says so.
    let config = tg.config_path.to_str().unwrap().to_string();
    let (code, _, err) =
        tokio::task::spawn_blocking(move || tidegate(&["map", "--config", &config, "--admin", "http://127.0.0.1:9"]))
            .await
            .unwrap();
    assert_eq!(code, 1);
    assert!(err.contains("cannot reach the admin API"), "{err}");
}
