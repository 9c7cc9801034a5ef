//! The chain map as SVG, for the console: four columns (producers,
//! tidegate, destinations, what they feed), one box per node, one line per
//! edge, the edge facts beside each destination. Every state is written in
//! words as well as coloured. Text is XML-escaped; nothing from the config
//! reaches the markup unescaped.

use super::map::{edge_facts, node_facts};
use super::Chain;

const COL: [f64; 4] = [20.0, 200.0, 420.0, 860.0];
const WIDTH: [f64; 4] = [140.0, 160.0, 250.0, 160.0];
const LINE: f64 = 15.0;
const GAP: f64 = 18.0;

fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// The state's colour class; the state is always also written.
fn state_class(state: Option<&str>) -> &'static str {
    match state {
        Some("running") => "ok",
        Some("paused") | Some("degraded") => "warn",
        Some("halted") => "bad",
        _ => "plain",
    }
}

struct Node {
    x: f64,
    y: f64,
    w: f64,
    h: f64,
}

impl Node {
    fn left(&self) -> (f64, f64) {
        (self.x, self.y + self.h / 2.0)
    }
    fn right(&self) -> (f64, f64) {
        (self.x + self.w, self.y + self.h / 2.0)
    }
}

fn boxed(out: &mut String, n: &Node, class: &str, lines: &[String], id: &str) {
    out.push_str(&format!(
        "<g class=\"node {class}\" id=\"{}\"><title>{}</title><rect x=\"{:.0}\" y=\"{:.0}\" width=\"{:.0}\" height=\"{:.0}\" rx=\"6\"/>",
        esc(id),
        esc(&lines.join(" — ")),
        n.x,
        n.y,
        n.w,
        n.h
    ));
    // One line sits in the middle of its box; more start at the top.
    let top = if lines.len() == 1 {
        n.y + n.h / 2.0 + 4.0
    } else {
        n.y + 16.0
    };
    for (i, l) in lines.iter().enumerate() {
        let weight = if i == 0 { " font-weight=\"600\"" } else { "" };
        out.push_str(&format!(
            "<text x=\"{:.0}\" y=\"{:.0}\"{weight}>{}</text>",
            n.x + 8.0,
            top + i as f64 * LINE,
            esc(l)
        ));
    }
    out.push_str("</g>");
}

fn line(out: &mut String, from: (f64, f64), to: (f64, f64), class: &str) {
    let mid = (from.0 + to.0) / 2.0;
    out.push_str(&format!(
        "<path class=\"edge {class}\" d=\"M{:.0},{:.0} C{mid:.0},{:.0} {mid:.0},{:.0} {:.0},{:.0}\" marker-end=\"url(#arrow)\"/>",
        from.0, from.1, from.1, to.1, to.0, to.1
    ));
}

pub fn svg(chain: &Chain) -> String {
    let mut body = String::new();
    let mut y: f64 = 20.0;
    let mut dests = Vec::new();
    let mut feeds: Vec<(String, Node)> = Vec::new();
    let mut feed_y: f64 = 20.0;
    for l in &chain.links {
        // With live figures, the state in words is the second line.
        let mut lines = node_facts(l);
        lines.extend(edge_facts(l).into_iter().map(|f| format!("  {f}")));
        let h = 10.0 + lines.len() as f64 * LINE;
        let node = Node {
            x: COL[2],
            y,
            w: WIDTH[2],
            h,
        };
        y += h + GAP;
        for f in &l.feeds {
            if !feeds.iter().any(|(n, _)| n == f) {
                let node = Node {
                    x: COL[3],
                    y: feed_y.max(node.y),
                    w: WIDTH[3],
                    h: 26.0,
                };
                feed_y = node.y + 26.0 + 8.0;
                feeds.push((f.clone(), node));
            }
        }
        dests.push((l, node, lines));
    }
    let height = y.max(feed_y).max(120.0) + 10.0;
    let tg = Node {
        x: COL[1],
        y: height / 2.0 - 20.0,
        w: WIDTH[1],
        h: 40.0,
    };
    let producers: Vec<String> = if chain.producers.is_empty() {
        vec!["producers".into()]
    } else {
        chain.producers.iter().map(|p| format!("producer {p}")).collect()
    };
    let step = height / (producers.len() as f64 + 1.0);
    for (i, p) in producers.iter().enumerate() {
        let n = Node {
            x: COL[0],
            y: step * (i as f64 + 1.0) - 13.0,
            w: WIDTH[0],
            h: 26.0,
        };
        line(&mut body, n.right(), tg.left(), "in");
        boxed(
            &mut body,
            &n,
            "producer",
            std::slice::from_ref(p),
            &format!("producer-{i}"),
        );
    }
    for (l, n, _) in &dests {
        line(&mut body, tg.right(), n.left(), "out");
        for f in &l.feeds {
            if let Some((_, fnode)) = feeds.iter().find(|(name, _)| name == f) {
                line(&mut body, n.right(), fnode.left(), "feed");
            }
        }
        for to in &l.routes_to {
            if let Some((_, target, _)) = dests.iter().find(|(t, _, _)| &t.destination == to) {
                let from = (n.x + 20.0, n.y + n.h);
                let to = (target.x + 20.0, target.y);
                line(&mut body, from, to, "route");
            }
        }
    }
    boxed(&mut body, &tg, "tidegate", &["tidegate".into()], "tidegate");
    for (l, n, lines) in &dests {
        let class = state_class(l.live.as_ref().map(|x| x.state.as_str()));
        boxed(
            &mut body,
            n,
            &format!("destination {class}"),
            lines,
            &format!("destination-{}", l.destination),
        );
    }
    for (i, (f, n)) in feeds.iter().enumerate() {
        boxed(&mut body, n, "feed", std::slice::from_ref(f), &format!("feed-{i}"));
    }
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"chain\" viewBox=\"0 0 {:.0} {height:.0}\" role=\"img\" aria-label=\"The chain: producers, tidegate, {} destinations and what they feed\">\
<defs><marker id=\"arrow\" viewBox=\"0 0 10 10\" refX=\"9\" refY=\"5\" markerWidth=\"7\" markerHeight=\"7\" orient=\"auto-start-reverse\"><path d=\"M0,0 L10,5 L0,10 z\"/></marker></defs>{body}</svg>",
        COL[3] + WIDTH[3] + 20.0,
        chain.links.len()
    )
}

#[cfg(test)]
mod tests {
    use super::super::{Link, Live};
    use super::*;

    #[test]
    fn one_node_per_destination_state_in_words_and_text_escaped() {
        let link = |name: &str, state: &str| Link {
            destination: name.into(),
            owner: "<script>alert(1)</script>".into(),
            url: "https://x/".into(),
            format: "json".into(),
            expected_volume: None,
            rate: Some(10.0),
            latency_objective_seconds: None,
            on_failure: "retry".into(),
            review: String::new(),
            routes_to: vec![],
            feeds: vec!["ledger & co".into()],
            max_messages: 1,
            max_bytes: 1,
            max_in_flight: 8,
            batch_size: 1,
            live: Some(Live {
                state: state.into(),
                ..Live::default()
            }),
        };
        let s = svg(&Chain {
            producers: vec![],
            links: vec![link("crm", "running"), link("erp", "halted")],
        });
        assert_eq!(s.matches("class=\"node destination").count(), 2);
        assert!(s.contains("id=\"destination-crm\"") && s.contains("id=\"destination-erp\""));
        assert!(s.contains("class=\"node destination bad\""));
        assert!(s.contains(">halted · depth 0</text>"), "the state in words");
        assert!(!s.contains("<script>") && s.contains("&lt;script&gt;"));
        assert_eq!(s.matches("ledger &amp; co</text>").count(), 1, "a feed drawn once");
    }
}
