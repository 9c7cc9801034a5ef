//! `docs/reference.md` against the code: every config key the parser
//! accepts, every problem code tidegate can answer, every metric it exports
//! and every subcommand it has must be named there.

use std::path::Path;

use tidegate::config::{Config, ConfigError};

fn repo(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path)).unwrap()
}

/// The keys the parser accepts in a table, read from its own refusal of an
/// unknown one ("unknown field `zz`, expected one of `a`, `b`"): the list
/// comes from the code, not from a copy of it.
fn accepted_keys(table_header: &str) -> Vec<String> {
    let text = format!("{table_header}\nzz_not_a_key = 1\n");
    let reason = match Config::parse(Path::new("t.toml"), &text) {
        Err(ConfigError::Invalid { reason, .. }) => reason,
        other => panic!("{table_header}: expected an unknown-field error, got {other:?}"),
    };
    let list = reason
        .split_once("expected one of ")
        .or_else(|| reason.split_once("expected "))
        .unwrap_or_else(|| panic!("{table_header}: {reason}"))
        .1;
    list.split('`').skip(1).step_by(2).map(str::to_string).collect()
}

/// The part of the reference under `### `[table]`...`, up to the next heading.
fn section<'a>(doc: &'a str, table: &str) -> &'a str {
    let start = doc
        .find(&format!("### `[{table}]"))
        .or_else(|| doc.find(&format!("### `[[{table}]]")))
        .unwrap_or_else(|| panic!("docs/reference.md has no section for [{table}]"));
    let rest = &doc[start + 4..];
    &rest[..rest.find("\n#").unwrap_or(rest.len())]
}

#[test]
fn every_config_key_is_in_the_reference() {
    let doc = repo("docs/reference.md");
    let tables = [
        ("[ingress]", "ingress"),
        ("[[ingress.producer]]", "ingress.producer"),
        ("[admin]", "admin"),
        ("[[admin.user]]", "admin.user"),
        ("[storage]", "storage"),
        (
            "[storage]\nbackend = \"jetstream\"\n[storage.jetstream]",
            "storage.jetstream",
        ),
        ("[log]", "log"),
        ("[server]", "server"),
        ("[[destination]]", "destination"),
        ("[[destination]]\n[destination.rate_limit]", "destination.rate_limit"),
        ("[[destination]]\n[destination.retry]", "destination.retry"),
        ("[[destination]]\n[destination.queue]", "destination.queue"),
        ("[[destination]]\n[destination.batch]", "destination.batch"),
        ("[[destination]]\n[destination.handoff]", "destination.handoff"),
        (
            "[[destination]]\n[[destination.handoff.route]]",
            "destination.handoff.route",
        ),
        ("[[destination]]\n[destination.review]", "destination.review"),
        ("[[destination]]\n[destination.governance]", "destination.governance"),
        ("[review]", "review"),
        ("[alerts]", "alerts"),
    ];
    let mut checked = 0;
    for (header, table) in tables {
        let keys = accepted_keys(header);
        assert!(!keys.is_empty(), "{table}");
        let part = section(&doc, table);
        for key in keys {
            // Sub-tables have their own sections.
            if tables.iter().any(|(_, t)| *t == format!("{table}.{key}")) {
                continue;
            }
            assert!(
                part.contains(&format!("| `{key}` |")),
                "[{table}] {key} is not in docs/reference.md"
            );
            checked += 1;
        }
    }
    // And the top level holds nothing but these tables.
    for key in accepted_keys("") {
        assert!(
            tables.iter().any(|(_, t)| *t == key),
            "top-level table {key} has no section"
        );
    }
    assert!(checked > 30, "{checked}");
}

/// Every problem code the source can answer with.
pub fn problem_codes() -> std::collections::BTreeSet<String> {
    // Every code the source can answer with: Problem's constructors and the
    // listener's pre-built answer, both of which name the code in a
    // `problems/<code>` type or right after a status.
    let mut codes = std::collections::BTreeSet::new();
    for file in walk(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/src"))) {
        let text = std::fs::read_to_string(&file).unwrap();
        for (i, _) in text.match_indices("problems/") {
            let code: String = text[i + 9..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            if !code.is_empty() {
                codes.insert(code);
            }
        }
        for (i, _) in text.match_indices("StatusCode::") {
            let after = &text[i..];
            let Some(comma) = after.find(',') else { continue };
            let next = after[comma + 1..].trim_start();
            if let Some(rest) = next.strip_prefix('"') {
                let code: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                    .collect();
                if !code.is_empty() && rest[code.len()..].starts_with('"') {
                    codes.insert(code);
                }
            }
        }
    }
    codes
}

#[test]
fn every_problem_code_is_in_the_reference() {
    let doc = repo("docs/reference.md");
    let codes = problem_codes();
    assert!(codes.len() >= 15, "{codes:?}");
    for code in codes {
        assert!(
            doc.contains(&format!("| `{code}` |")),
            "problem code {code} is not in docs/reference.md"
        );
    }
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
    out
}

#[test]
fn every_metric_is_in_the_reference() {
    let doc = repo("docs/reference.md");
    let m = tidegate::metrics::Metrics::new();
    m.register_destination("d");
    m.received.with_label_values(&["d", "p"]);
    let text = m.render();
    let names: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE tidegate_"))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(names.len() >= 20, "{names:?}");
    for name in names {
        assert!(
            doc.contains(&format!("| `{name}` |")),
            "metric tidegate_{name} is not in docs/reference.md"
        );
    }
}

#[test]
fn every_subcommand_is_in_the_reference() {
    let doc = repo("docs/reference.md");
    let help = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tidegate"))
            .args(args)
            .arg("--help")
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // clap lists subcommands under "Commands:", two spaces in.
    let commands = |text: &str| -> Vec<String> {
        text.split("Commands:")
            .nth(1)
            .unwrap_or("")
            .split("\n\n")
            .next()
            .unwrap_or("")
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|c| *c != "help")
            .map(str::to_string)
            .collect()
    };
    let top = commands(&help(&[]));
    assert!(top.len() >= 10, "{top:?}");
    for c in top {
        let subs = commands(&help(&[c.as_str()]));
        if subs.is_empty() {
            assert!(
                doc.contains(&format!("`tidegate {c}")),
                "tidegate {c} is not in docs/reference.md"
            );
        }
        for s in subs {
            assert!(
                doc.contains(&format!("`tidegate {c} {s}")),
                "tidegate {c} {s} is not in docs/reference.md"
            );
        }
    }
}

/// Every config the project ships (the README's, the container's, the
/// compose and Kubernetes examples) passes `tidegate check` with the
/// environment it documents, so none of them is a startup error.
#[test]
fn every_shipped_config_passes_check() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut configs: Vec<(String, String)> = [
        "config/tidegate.toml",
        "deploy/tidegate.container.toml",
        "deploy/compose/tidegate.toml",
        "deploy/compose/tidegate-cluster.toml",
        "examples/handoff/tidegate.toml",
    ]
    .iter()
    .map(|p| (p.to_string(), repo(p)))
    .collect();
    // The Kubernetes ones are embedded in ConfigMaps: the indented block
    // under `tidegate.toml: |`.
    for p in [
        "deploy/kubernetes/configmap.yaml",
        "deploy/kubernetes/sidecar.yaml",
        "deploy/kubernetes/cluster-configmap.yaml",
    ] {
        let text = repo(p);
        let start = text
            .find("tidegate.toml: |\n")
            .unwrap_or_else(|| panic!("{p}: no tidegate.toml"))
            + 17;
        let block: Vec<&str> = text[start..]
            .lines()
            .take_while(|l| l.is_empty() || l.starts_with("    "))
            .map(|l| l.strip_prefix("    ").unwrap_or(l))
            .collect();
        configs.push((p.to_string(), block.join("\n")));
    }
    // The README's local cluster recipe writes its config with a heredoc.
    let readme = repo("README.md");
    let start = readme
        .find("cat > /tmp/cluster.toml <<'EOF'\n")
        .expect("README: the local cluster recipe")
        + 32;
    let end = start + readme[start..].find("\nEOF\n").expect("README: the recipe's EOF");
    configs.push(("README.md (cluster recipe)".into(), readme[start..end].to_string()));
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in configs {
        // Every variable a config names gets a value, as its deployment
        // documents (a Secret, the compose environment).
        let mut env: Vec<(String, String)> = Vec::new();
        for (i, _) in text.match_indices("_env = \"") {
            let var: String = text[i + 8..].chars().take_while(|c| *c != '"').collect();
            env.push((var, "a-test-value".into()));
        }
        for (i, _) in text.match_indices("${") {
            let var: String = text[i + 2..].chars().take_while(|c| *c != '}').collect();
            env.push((var, "a-test-value".into()));
        }
        let path = dir.path().join("tidegate.toml");
        // The README's config is checked in place: its relative paths are
        // relative to it.
        let path = if name == "config/tidegate.toml" || name.starts_with("examples/") {
            root.join(&name)
        } else {
            std::fs::write(&path, &text).unwrap();
            path
        };
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tidegate"))
            .args(["check", "--config"])
            .arg(&path)
            .envs(env)
            .output()
            .unwrap();
        assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

/// `docs/security.md` names a test for every claim; each named test must
/// exist, or the claim has lost its proof.
#[test]
fn every_test_the_threat_model_names_exists() {
    let doc = repo("docs/security.md");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let code: String = walk(&root.join("src"))
        .into_iter()
        .chain(walk(&root.join("tests")))
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    let named: Vec<&str> = doc
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|s| s.contains("::") && !s.contains(' '))
        .collect();
    assert!(named.len() >= 25, "the threat model names its tests: {named:?}");
    let missing: Vec<&&str> = named
        .iter()
        .filter(|path| {
            let name = path.rsplit("::").next().unwrap_or(path);
            !code.contains(&format!("fn {name}("))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "docs/security.md names tests that do not exist: {missing:?}"
    );
}
