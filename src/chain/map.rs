//! The chain map in three notations: Mermaid (renders in GitHub's
//! Markdown), Graphviz DOT, and JSON (the [`Chain`] itself). Every edge from
//! tidegate to a destination carries its format, expected volume, rate,
//! latency objective, failure behaviour and owner; with live figures, each
//! destination also shows its state, depth, oldest age, rates and override
//! rate. Names come from the config (destinations are `[a-z0-9_-]`, feeds
//! and owners are free text), so every label is escaped for its notation.

use super::plan::{human, per};
use super::{Chain, Link};

/// The label of the edge tidegate → destination: one fact per line.
pub fn edge_facts(l: &Link) -> Vec<String> {
    let mut facts = vec![l.format.clone()];
    facts.push(match l.expected_volume {
        Some(v) => format!("peak {}", per(v)),
        None => "peak not declared".into(),
    });
    facts.push(match (l.rate, l.batch_size) {
        (Some(r), 0 | 1) => format!("rate {}", per(r)),
        // The rate counts requests; what flows is items.
        (Some(r), b) => format!("rate {} × batch {b} = {} items", per(r), per(r * f64::from(b))),
        (None, 0 | 1) => "rate unlimited".into(),
        (None, b) => format!("rate unlimited, batch {b}"),
    });
    if let Some(o) = l.latency_objective_seconds {
        facts.push(format!("objective {}", human(o)));
    }
    facts.push(format!("on failure: {}", l.on_failure));
    if !l.review.is_empty() {
        facts.push(format!("review: {}", l.review));
    }
    facts.push(format!("owner {}", l.owner));
    facts
}

/// What a destination's node says: its name, and live figures when known.
pub fn node_facts(l: &Link) -> Vec<String> {
    let mut facts = vec![l.destination.clone()];
    if let Some(live) = &l.live {
        facts.push(format!("{} · depth {}", live.state, live.depth));
        let mut age = format!("oldest {}", human(live.oldest_age_seconds));
        if let Some(o) = l.latency_objective_seconds {
            age.push_str(&format!(" / {}", human(o)));
        }
        facts.push(age);
        let mut rates = Vec::new();
        if let Some(d) = live.delivered_rate {
            rates.push(format!("delivered {}", per(d)));
        }
        if let Some(e) = live.effective_rate {
            rates.push(format!("limit {}", per(e)));
        }
        if !rates.is_empty() {
            facts.push(rates.join(" · "));
        }
        if let Some(o) = live.override_rate {
            facts.push(format!("override {:.0}%", o * 100.0));
        }
    }
    facts
}

/// Mermaid node ids: letters, digits and `_` only, unique per kind.
fn mermaid_id(kind: &str, name: &str, index: usize) -> String {
    let clean: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("{kind}{index}_{clean}")
}

/// A Mermaid label: quoted, with the characters that end or break one
/// written as entity codes.
fn mermaid_text(lines: &[String]) -> String {
    let escaped: Vec<String> = lines
        .iter()
        .map(|l| {
            l.chars()
                .map(|c| match c {
                    '"' => "#quot;".to_string(),
                    '<' => "#lt;".to_string(),
                    '>' => "#gt;".to_string(),
                    '#' => "#35;".to_string(),
                    '|' => "#124;".to_string(),
                    '\n' | '\r' => " ".to_string(),
                    c => c.to_string(),
                })
                .collect()
        })
        .collect();
    format!("\"{}\"", escaped.join("<br/>"))
}

pub fn mermaid(chain: &Chain) -> String {
    let mut out = String::from("flowchart LR\n");
    let producers = if chain.producers.is_empty() {
        vec!["producers".to_string()]
    } else {
        chain.producers.iter().map(|p| format!("producer {p}")).collect()
    };
    out.push_str(&format!("  tidegate{{{{{}}}}}\n", mermaid_text(&["tidegate".into()])));
    for (i, p) in producers.iter().enumerate() {
        let id = mermaid_id("p", p, i);
        out.push_str(&format!(
            "  {id}([{}]) --> tidegate\n",
            mermaid_text(std::slice::from_ref(p))
        ));
    }
    let dest_id = |name: &str| {
        chain
            .links
            .iter()
            .position(|l| l.destination == name)
            .map(|i| mermaid_id("d", name, i))
    };
    let mut feed_ids: Vec<String> = Vec::new();
    for (i, l) in chain.links.iter().enumerate() {
        let id = mermaid_id("d", &l.destination, i);
        out.push_str(&format!("  {id}[{}]\n", mermaid_text(&node_facts(l))));
        out.push_str(&format!("  tidegate -->|{}| {id}\n", mermaid_text(&edge_facts(l))));
        for to in &l.routes_to {
            let target = if to == crate::handoff::REVIEW {
                "review".to_string()
            } else {
                match dest_id(to) {
                    Some(t) => t,
                    None => continue,
                }
            };
            if target == "review" {
                out.push_str(&format!("  review[/{}/]\n", mermaid_text(&["human review".into()])));
            }
            out.push_str(&format!("  {id} -.->|\"route\"| {target}\n"));
        }
        for f in &l.feeds {
            let fi = match feed_ids.iter().position(|x| x == f) {
                Some(n) => n,
                None => {
                    feed_ids.push(f.clone());
                    feed_ids.len() - 1
                }
            };
            let fid = mermaid_id("f", f, fi);
            out.push_str(&format!(
                "  {id} --> {fid}[({})]\n",
                mermaid_text(std::slice::from_ref(f))
            ));
        }
    }
    out
}

/// A DOT string literal.
fn dot_text(lines: &[String]) -> String {
    let escaped: Vec<String> = lines
        .iter()
        .map(|l| {
            l.chars()
                .map(|c| match c {
                    '"' => "\\\"".to_string(),
                    '\\' => "\\\\".to_string(),
                    '\n' | '\r' => " ".to_string(),
                    c => c.to_string(),
                })
                .collect()
        })
        .collect();
    format!("\"{}\"", escaped.join("\\n"))
}

pub fn dot(chain: &Chain) -> String {
    let mut out = String::from(
        "digraph tidegate {\n  rankdir=LR;\n  node [shape=box, style=rounded, fontname=\"Helvetica\", fontsize=11];\n  edge [fontname=\"Helvetica\", fontsize=9];\n",
    );
    out.push_str("  \"tidegate\" [shape=hexagon, style=bold];\n");
    let producers = if chain.producers.is_empty() {
        vec!["producers".to_string()]
    } else {
        chain.producers.iter().map(|p| format!("producer {p}")).collect()
    };
    for p in &producers {
        let id = dot_text(&[format!("producer:{p}")]);
        out.push_str(&format!(
            "  {id} [label={}, shape=ellipse];\n",
            dot_text(std::slice::from_ref(p))
        ));
        out.push_str(&format!("  {id} -> \"tidegate\";\n"));
    }
    for l in &chain.links {
        let id = dot_text(&[format!("destination:{}", l.destination)]);
        let colour = match l.live.as_ref().map(|x| x.state.as_str()) {
            Some("halted") => ", color=red",
            Some("degraded") | Some("paused") => ", color=orange",
            _ => "",
        };
        out.push_str(&format!("  {id} [label={}{colour}];\n", dot_text(&node_facts(l))));
        out.push_str(&format!(
            "  \"tidegate\" -> {id} [label={}];\n",
            dot_text(&edge_facts(l))
        ));
        for to in &l.routes_to {
            let target = if to == crate::handoff::REVIEW {
                out.push_str("  \"review\" [label=\"human review\", shape=parallelogram];\n");
                "\"review\"".to_string()
            } else {
                dot_text(&[format!("destination:{to}")])
            };
            out.push_str(&format!("  {id} -> {target} [label=\"route\", style=dashed];\n"));
        }
        for f in &l.feeds {
            let fid = dot_text(&[format!("feed:{f}")]);
            out.push_str(&format!(
                "  {fid} [label={}, shape=cylinder];\n",
                dot_text(std::slice::from_ref(f))
            ));
            out.push_str(&format!("  {id} -> {fid};\n"));
        }
    }
    out.push_str("}\n");
    out
}

pub fn json(chain: &Chain) -> String {
    serde_json::to_string_pretty(chain).unwrap_or_default() + "\n"
}

#[cfg(test)]
mod tests {
    use super::super::Live;
    use super::*;

    fn link(name: &str) -> Link {
        Link {
            destination: name.into(),
            owner: "ops@example.com".into(),
            url: "https://x.example/".into(),
            format: "json".into(),
            expected_volume: Some(500.0),
            rate: Some(100.0),
            latency_objective_seconds: Some(900.0),
            on_failure: "buffer".into(),
            review: String::new(),
            routes_to: vec![],
            feeds: vec!["WMS \"east\" <|> #1".into()],
            max_messages: 1,
            max_bytes: 1,
            max_in_flight: 8,
            batch_size: 1,
            live: None,
        }
    }

    #[test]
    fn labels_escape_what_would_break_each_notation() {
        let chain = Chain {
            producers: vec![],
            links: vec![link("wh")],
        };
        let m = mermaid(&chain);
        assert!(m.contains("WMS #quot;east#quot; #lt;#124;#gt; #35;1"), "{m}");
        assert!(!m.contains("\"east\""));
        let d = dot(&chain);
        assert!(d.contains(r#"WMS \"east\" <|> #1"#), "{d}");
    }

    #[test]
    fn edges_carry_every_fact_and_live_nodes_their_figures() {
        let mut l = link("wh");
        let facts = edge_facts(&l).join(" | ");
        assert_eq!(
            facts,
            "json | peak 500.0/s | rate 100.0/s | objective 15m | on failure: buffer | owner ops@example.com"
        );
        l.live = Some(Live {
            state: "degraded".into(),
            depth: 12,
            bytes: 0,
            oldest_age_seconds: 1200.0,
            effective_rate: Some(50.0),
            delivered_rate: Some(48.5),
            override_rate: Some(0.18),
        });
        assert_eq!(
            node_facts(&l),
            vec![
                "wh",
                "degraded · depth 12",
                "oldest 20m / 15m",
                "delivered 48.5/s · limit 50.0/s",
                "override 18%"
            ]
        );
    }

    #[test]
    fn a_batching_destination_counts_items_as_requests_times_the_batch() {
        let mut l = link("crm");
        l.rate = Some(10.0);
        l.batch_size = 100;
        let facts = edge_facts(&l).join(" | ");
        assert!(facts.contains("rate 10.0/s × batch 100 = 1000.0/s items"), "{facts}");
        // The plan's capacity is in messages, and the live effective rate
        // (requests) is scaled the same way.
        assert_eq!(l.plan_inputs().rate, Some(1000.0));
        l.live = Some(Live {
            effective_rate: Some(5.0),
            ..Live::default()
        });
        assert_eq!(l.plan_inputs().rate, Some(500.0));
        let p = super::super::plan::plan(&l.plan_inputs());
        assert_eq!(
            p.verdict,
            super::super::plan::Verdict::Meets,
            "500/s of capacity for a 500/s peak"
        );
    }
}
