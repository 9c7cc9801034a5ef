//! The shape of the house (docs/architecture.md), kept true by `cargo test`:
//!
//! - each top-level module of `src/` imports only the modules its row of
//!   [`LAYERS`] lists, so data flows one way (ingress → handoff → queue →
//!   dispatch → delivery, with review, chain, ops and the surfaces to the
//!   side) and no module imports one above it;
//! - no import circle between modules, nor between files (a circle is an
//!   idea without a home of its own);
//! - no source file over 1,000 lines (unit-test files excepted).
//!
//! Imports are read from the text: every `crate::…` and `super::…` path
//! outside a file's trailing `#[cfg(test)]` module, `use` groups
//! (`crate::a::{b, c::d}`) expanded; paths in comments count too, which errs
//! on the side of reporting. A module file's own descendants are not an
//! import (declaring and re-exporting children is composition). Set
//! `TIDEGATE_ARCH_SRC` to check another tree (the test prints what it
//! finds there).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// What each top-level module may import. The order is the layering:
/// a module appears after everything it imports.
#[rustfmt::skip]
const LAYERS: &[(&str, &[&str])] = &[
    ("text", &[]),
    ("listener", &[]),
    ("problem", &[]),
    ("metrics", &[]),
    ("handoff", &["text"]),
    ("config", &["handoff", "text"]),
    ("auth", &["config", "problem"]),
    ("queue", &["config", "handoff"]),
    ("delivery", &["config"]),
    ("dispatch", &["config", "queue", "delivery", "handoff", "metrics"]),
    ("review", &["config", "queue", "dispatch", "handoff", "metrics", "text"]),
    ("chain", &["config", "handoff"]),
    ("reload", &["config", "queue", "dispatch"]),
    ("ops", &["auth", "config", "queue", "dispatch", "delivery", "handoff", "metrics", "problem", "reload", "review"]),
    ("ingress", &["listener", "text", "auth", "config", "queue", "dispatch", "handoff", "metrics", "problem", "review"]),
    ("admin", &["ops", "listener", "auth", "chain", "config", "queue", "dispatch", "metrics", "problem", "reload", "review"]),
    ("console", &["ops", "listener", "text", "auth", "chain", "config", "queue", "dispatch", "problem", "review"]),
    ("app", &["admin", "console", "ingress", "ops", "listener", "reload", "review", "dispatch", "delivery", "queue", "metrics", "config"]),
    ("cli", &["app", "ops", "chain", "config", "queue", "review", "handoff", "text"]),
];

const MAX_LINES: usize = 1000;

struct Tree {
    src: PathBuf,
    /// File (relative to `src`) → the text that counts.
    files: BTreeMap<String, String>,
    /// File → its line count (the whole file).
    lines: BTreeMap<String, usize>,
}

impl Tree {
    fn read(src: &Path) -> Tree {
        let mut tree = Tree {
            src: src.to_path_buf(),
            files: BTreeMap::new(),
            lines: BTreeMap::new(),
        };
        let mut dirs = vec![src.to_path_buf()];
        while let Some(dir) = dirs.pop() {
            for e in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
                let path = e.unwrap().path();
                if path.is_dir() {
                    dirs.push(path);
                } else if path.extension().is_some_and(|x| x == "rs") {
                    let rel = path.strip_prefix(src).unwrap().to_string_lossy().replace('\\', "/");
                    let text = std::fs::read_to_string(&path).unwrap();
                    tree.lines.insert(rel.clone(), text.lines().count());
                    if rel == "lib.rs" || rel == "main.rs" || is_test_file(&rel) {
                        continue;
                    }
                    let counted = match text.find("#[cfg(test)]") {
                        Some(i) => text[..i].to_string(),
                        None => text,
                    };
                    tree.files.insert(rel, counted);
                }
            }
        }
        tree
    }

    fn exists(&self, rel: &str) -> bool {
        self.src.join(rel).is_file()
    }

    /// The file a module path most likely names: its longest prefix that
    /// is a file (`a/b.rs` or `a/b/mod.rs`).
    fn file_for(&self, parts: &[String]) -> Option<String> {
        (1..=parts.len()).rev().find_map(|n| {
            let base = parts[..n].join("/");
            [format!("{base}.rs"), format!("{base}/mod.rs")]
                .into_iter()
                .find(|c| self.exists(c))
        })
    }

    /// Every import of every file: (file, module path it names).
    fn imports(&self) -> Vec<(String, Vec<String>)> {
        let mut out = Vec::new();
        for (file, text) in &self.files {
            for (prefix, path) in paths(text) {
                let mut parts: Vec<String> = path.split("::").map(str::to_string).collect();
                if prefix == "super" {
                    let mut base = module_of(file);
                    // `super::super::x`: one level per `super`.
                    let mut ups = 1;
                    while parts.first().is_some_and(|p| p == "super") {
                        parts.remove(0);
                        ups += 1;
                    }
                    for _ in 0..ups {
                        base.pop();
                    }
                    base.extend(parts);
                    parts = base;
                }
                parts.retain(|p| p != "self");
                if parts
                    .first()
                    .is_some_and(|p| p.starts_with(|c: char| c.is_ascii_lowercase() || c == '_'))
                {
                    out.push((file.clone(), parts));
                }
            }
        }
        out
    }
}

fn is_test_file(rel: &str) -> bool {
    rel.ends_with("/tests.rs") || rel == "tests.rs" || rel.split('/').any(|p| p == "tests")
}

/// The module path of a file: `a/b/c.rs` → [a, b, c]; `a/b/mod.rs` → [a, b].
fn module_of(rel: &str) -> Vec<String> {
    let mut parts: Vec<String> = rel.trim_end_matches(".rs").split('/').map(str::to_string).collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts
}

fn top_of(rel: &str) -> String {
    module_of(rel).first().cloned().unwrap_or_default()
}

/// Every `crate::…` and `super::…` path in `text`, use groups expanded,
/// as (prefix, rest).
fn paths(text: &str) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    for prefix in ["crate", "super"] {
        let needle = format!("{prefix}::");
        let mut from = 0;
        while let Some(i) = text[from..].find(&needle) {
            let at = from + i;
            from = at + needle.len();
            let before = text[..at].chars().next_back();
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                continue;
            }
            let rest = &text[from..];
            let end = span_of(rest);
            for p in expand(&rest[..end]) {
                if !p.is_empty() {
                    out.push((if prefix == "crate" { "crate" } else { "super" }, p));
                }
            }
        }
    }
    out
}

/// How far a path (with its use group, if any) runs.
fn span_of(s: &str) -> usize {
    let mut depth = 0i32;
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth > 0 => {
                depth -= 1;
                if depth == 0 {
                    return i + 1;
                }
            }
            c if c.is_alphanumeric() || c == '_' || c == ':' => {}
            c if depth > 0 && (c == ',' || c.is_whitespace()) => {}
            _ if depth > 0 => {}
            _ => return i,
        }
    }
    s.len()
}

/// `a::{b, c::{d, e}}` → [a::b, a::c::d, a::c::e]; `x as y` → x.
fn expand(s: &str) -> Vec<String> {
    let s = s.trim();
    let Some(open) = s.find('{') else {
        let p = s.split_whitespace().next().unwrap_or("").trim_end_matches("::");
        return vec![p.to_string()];
    };
    let head = s[..open].trim_end_matches("::");
    let close = s.rfind('}').unwrap_or(s.len());
    let inner = &s[open + 1..close];
    let mut items = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(&inner[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    items.push(&inner[start..]);
    items
        .into_iter()
        .filter(|i| !i.trim().is_empty())
        .flat_map(expand)
        .map(|t| if head.is_empty() { t } else { format!("{head}::{t}") })
        .collect()
}

/// The strongly connected components of more than one node (Tarjan).
fn circles(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct T<'a> {
        edges: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<String, usize>,
        low: BTreeMap<String, usize>,
        on: BTreeSet<String>,
        stack: Vec<String>,
        out: Vec<Vec<String>>,
    }
    fn strong(t: &mut T, v: &str) {
        let n = t.index.len();
        t.index.insert(v.to_string(), n);
        t.low.insert(v.to_string(), n);
        t.stack.push(v.to_string());
        t.on.insert(v.to_string());
        let next: Vec<String> = t.edges.get(v).into_iter().flatten().cloned().collect();
        for w in next {
            if !t.index.contains_key(&w) {
                strong(t, &w);
                let lw = t.low[&w];
                let lv = t.low.get_mut(v).unwrap();
                *lv = (*lv).min(lw);
            } else if t.on.contains(&w) {
                let iw = t.index[&w];
                let lv = t.low.get_mut(v).unwrap();
                *lv = (*lv).min(iw);
            }
        }
        if t.low[v] == t.index[v] {
            let mut comp = Vec::new();
            loop {
                let w = t.stack.pop().unwrap();
                t.on.remove(&w);
                let done = w == v;
                comp.push(w);
                if done {
                    break;
                }
            }
            if comp.len() > 1 {
                comp.sort();
                t.out.push(comp);
            }
        }
    }
    let mut nodes: BTreeSet<String> = edges.keys().cloned().collect();
    nodes.extend(edges.values().flatten().cloned());
    let mut t = T {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        on: BTreeSet::new(),
        stack: Vec::new(),
        out: Vec::new(),
    };
    for v in nodes {
        if !t.index.contains_key(&v) {
            strong(&mut t, &v);
        }
    }
    t.out
}

fn describe(kind: &str, circles: &[Vec<String>], edges: &BTreeMap<String, BTreeSet<String>>) -> String {
    let mut s = String::new();
    for c in circles {
        s.push_str(&format!("{kind} circle of {}: {}\n", c.len(), c.join(", ")));
        for a in c {
            for b in edges.get(a).into_iter().flatten() {
                if c.contains(b) {
                    s.push_str(&format!("  {a} -> {b}\n"));
                }
            }
        }
    }
    s
}

fn tree() -> Tree {
    let src = std::env::var_os("TIDEGATE_ARCH_SRC")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    Tree::read(&src)
}

/// Module-level and file-level graphs.
fn graphs(t: &Tree) -> (BTreeMap<String, BTreeSet<String>>, BTreeMap<String, BTreeSet<String>>) {
    let mut modules: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut files: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (file, parts) in t.imports() {
        let from_top = top_of(&file);
        let to_top = parts[0].clone();
        let top_exists = t.exists(&format!("{to_top}.rs")) || t.exists(&format!("{to_top}/mod.rs"));
        if top_exists && to_top != from_top {
            modules.entry(from_top).or_default().insert(to_top);
        }
        if let Some(target) = t.file_for(&parts) {
            let own = module_of(&file);
            let descendant = module_of(&target).starts_with(&own) && file.ends_with("mod.rs");
            if target != file && !descendant {
                files.entry(file.clone()).or_default().insert(target);
            }
        }
    }
    (modules, files)
}

#[test]
fn no_module_or_file_is_in_an_import_circle() {
    let t = tree();
    let (modules, files) = graphs(&t);
    let found = describe("module", &circles(&modules), &modules) + &describe("file", &circles(&files), &files);
    println!(
        "{} modules, {} files read; circles:\n{}",
        modules.len(),
        t.files.len(),
        if found.is_empty() { "none\n" } else { &found }
    );
    assert!(found.is_empty(), "import circles in {}:\n{found}", t.src.display());
}

#[test]
fn each_module_imports_only_the_modules_its_layer_allows() {
    let t = tree();
    let (modules, _) = graphs(&t);
    let allowed: BTreeMap<&str, &[&str]> = LAYERS.iter().copied().collect();
    let mut wrong = Vec::new();
    for (from, tos) in &modules {
        let Some(may) = allowed.get(from.as_str()) else {
            wrong.push(format!(
                "{from}: a module not in LAYERS (add its row, and to docs/architecture.md)"
            ));
            continue;
        };
        for to in tos {
            if !may.contains(&to.as_str()) {
                let files: Vec<String> = t
                    .imports()
                    .into_iter()
                    .filter(|(f, p)| top_of(f) == *from && p[0] == *to)
                    .map(|(f, _)| f)
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .collect();
                wrong.push(format!("{from} -> {to} (in {})", files.join(", ")));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports the layers do not allow:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_layers_are_an_order_with_nothing_imported_from_above() {
    for (i, (module, imports)) in LAYERS.iter().enumerate() {
        for import in *imports {
            let at = LAYERS.iter().position(|(m, _)| m == import);
            assert!(
                at.is_some_and(|a| a < i),
                "{module} may import {import}, which is not listed above it"
            );
        }
    }
}

#[test]
fn no_source_file_is_over_a_thousand_lines() {
    let t = tree();
    let long: Vec<String> = t
        .lines
        .iter()
        .filter(|(f, n)| **n > MAX_LINES && !is_test_file(f))
        .map(|(f, n)| format!("{f}: {n} lines"))
        .collect();
    assert!(long.is_empty(), "split these by concern:\n{}", long.join("\n"));
}

#[test]
fn the_reader_expands_use_groups_and_follows_super() {
    let p = paths("use crate::queue::{self, review::{Item, Tally}, Result};\nuse super::super::x::Y; // crate::cli");
    let got: Vec<String> = p.iter().map(|(k, v)| format!("{k}:{v}")).collect();
    assert_eq!(
        got,
        [
            "crate:queue::self",
            "crate:queue::review::Item",
            "crate:queue::review::Tally",
            "crate:queue::Result",
            "crate:cli",
            "super:super::x::Y"
        ]
    );
    assert_eq!(module_of("queue/sqlite/mod.rs"), ["queue", "sqlite"]);
    assert_eq!(module_of("queue/sqlite/writer.rs"), ["queue", "sqlite", "writer"]);
    let mut edges = BTreeMap::new();
    edges.insert("a".to_string(), BTreeSet::from(["b".to_string()]));
    edges.insert("b".to_string(), BTreeSet::from(["a".to_string(), "c".to_string()]));
    assert_eq!(circles(&edges), vec![vec!["a".to_string(), "b".to_string()]]);
}

#[test]
fn the_architecture_page_shows_the_layers_as_they_are() {
    let doc = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/architecture.md")).unwrap();
    // Rows of its module table: | `name` | owns | may import |
    let mut shown: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in doc.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        if cells.len() != 3 {
            continue;
        }
        let name = cells[0].trim_matches('`').to_string();
        let imports = cells[2]
            .split(',')
            .map(str::trim)
            .filter(|m| !m.is_empty() && *m != "–")
            .map(str::to_string)
            .collect();
        shown.insert(name, imports);
    }
    let layers: BTreeMap<String, BTreeSet<String>> = LAYERS
        .iter()
        .map(|(m, allowed)| (m.to_string(), allowed.iter().map(|a| a.to_string()).collect()))
        .collect();
    assert_eq!(shown, layers, "docs/architecture.md's module table vs LAYERS");
}
