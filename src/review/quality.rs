//! Quality arithmetic: override rates with their 95% Wilson interval, and
//! the owner's report built from the queue's counts. Pure functions, no
//! I/O, so the maths is tested on its own.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::queue::review::Tally;

/// z for a two-sided 95% interval.
const Z95: f64 = 1.959_963_984_540_054;

/// The Wilson score interval for `k` successes in `n` trials at 95%:
/// well-behaved at 0, 1 and small `n`, where the normal approximation is
/// not. `None` when there are no trials.
pub fn wilson(k: u64, n: u64) -> Option<(f64, f64)> {
    if n == 0 {
        return None;
    }
    let (k, n) = (k.min(n) as f64, n as f64);
    let p = k / n;
    let z2 = Z95 * Z95;
    let centre = p + z2 / (2.0 * n);
    let spread = Z95 * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    let denom = 1.0 + z2 / n;
    Some((
        ((centre - spread) / denom).max(0.0),
        ((centre + spread) / denom).min(1.0),
    ))
}

/// Newcombe's interval (his method 10, from two Wilson intervals) for the
/// difference `k1/n1 − k2/n2` of two independent proportions at 95%.
/// `None` when either has no trials.
pub fn newcombe(k1: u64, n1: u64, k2: u64, n2: u64) -> Option<(f64, f64)> {
    let (l1, u1) = wilson(k1, n1)?;
    let (l2, u2) = wilson(k2, n2)?;
    let (p1, p2) = (k1.min(n1) as f64 / n1 as f64, k2.min(n2) as f64 / n2 as f64);
    let d = p1 - p2;
    Some((
        d - ((p1 - l1).powi(2) + (u2 - p2).powi(2)).sqrt(),
        d + ((u1 - p1).powi(2) + (p2 - l2).powi(2)).sqrt(),
    ))
}

/// What people's reviews of a category said (all of them, or one
/// reviewer's): the counts and the override rate with its interval.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Reviews {
    pub reviewed: u64,
    pub approved: u64,
    pub edited: u64,
    pub rejected: u64,
    /// Late feedback: `correct` plus `overridden`.
    pub feedback: u64,
    pub overridden: u64,
    /// (edited + rejected + overridden) / reviewed; `None` with no reviews.
    pub override_rate: Option<f64>,
    /// The 95% Wilson interval around `override_rate`.
    pub override_rate_ci95: Option<(f64, f64)>,
}

impl Reviews {
    pub fn of(t: &Tally) -> Reviews {
        let reviewed = t.reviewed();
        Reviews {
            reviewed,
            approved: t.approved,
            edited: t.edited,
            rejected: t.rejected,
            feedback: t.correct + t.overridden,
            overridden: t.overridden,
            override_rate: (reviewed > 0).then(|| t.overrides() as f64 / reviewed as f64),
            override_rate_ci95: wilson(t.overrides(), reviewed),
        }
    }

    fn overrides(&self) -> u64 {
        self.edited + self.rejected + self.overridden
    }
}

/// One reviewer's decisions on one destination and category over a
/// window (`GET /v1/quality?by=reviewer`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReviewerRow {
    pub destination: String,
    pub category: String,
    pub reviewer: String,
    #[serde(flatten)]
    pub reviews: Reviews,
}

/// How far two reviewers of one destination and category agree. Each item
/// is decided once, so no item carries both verdicts and Cohen's kappa
/// (which needs the same items rated twice) cannot be computed; what can
/// is whether they override their samples of the same stream at the same
/// rate: the difference of their override rates with its 95% interval
/// (`newcombe`). An interval that excludes 0 means they judge the category
/// differently: a guideline to settle, or a reviewer to calibrate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Agreement {
    pub destination: String,
    pub category: String,
    pub reviewers: (String, String),
    pub override_rates: (f64, f64),
    /// First reviewer's rate minus the second's.
    pub difference: f64,
    pub difference_ci95: (f64, f64),
    /// The interval holds 0: no evidence that they judge differently.
    pub consistent: bool,
}

/// The per-reviewer rows of `tallies` (keyed by destination, category and
/// reviewer), most reviewed first within each category, and the agreement
/// of every pair of reviewers who both decided the same category.
pub fn by_reviewer(tallies: &[(crate::queue::review::ReviewerKey, Tally)]) -> (Vec<ReviewerRow>, Vec<Agreement>) {
    let mut rows: Vec<ReviewerRow> = tallies
        .iter()
        .filter(|(_, t)| t.reviewed() > 0)
        .map(|((d, c, r), t)| ReviewerRow {
            destination: d.clone(),
            category: c.clone(),
            reviewer: r.clone(),
            reviews: Reviews::of(t),
        })
        .collect();
    rows.sort_by(|a, b| {
        (
            &a.destination,
            &a.category,
            std::cmp::Reverse(a.reviews.reviewed),
            &a.reviewer,
        )
            .cmp(&(
                &b.destination,
                &b.category,
                std::cmp::Reverse(b.reviews.reviewed),
                &b.reviewer,
            ))
    });
    let mut agreement = Vec::new();
    for (i, a) in rows.iter().enumerate() {
        for b in rows[i + 1..]
            .iter()
            .take_while(|b| b.destination == a.destination && b.category == a.category)
        {
            let (x, y) = (&a.reviews, &b.reviews);
            let Some(ci) = newcombe(x.overrides(), x.reviewed, y.overrides(), y.reviewed) else {
                continue;
            };
            let (ra, rb) = (x.override_rate.unwrap_or(0.0), y.override_rate.unwrap_or(0.0));
            agreement.push(Agreement {
                destination: a.destination.clone(),
                category: a.category.clone(),
                reviewers: (a.reviewer.clone(), b.reviewer.clone()),
                override_rates: (ra, rb),
                difference: ra - rb,
                difference_ci95: ci,
                consistent: ci.0 <= 0.0 && 0.0 <= ci.1,
            });
        }
    }
    (rows, agreement)
}

/// One destination and category over a window (`GET /v1/quality`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Row {
    pub destination: String,
    pub category: String,
    /// Messages received in the window.
    pub messages: u64,
    pub delivered: u64,
    pub dead_letters: u64,
    /// Held now (received in the window).
    pub held: u64,
    #[serde(flatten)]
    pub reviews: Reviews,
    /// Holds that timed out with nobody deciding.
    pub timed_out: u64,
    /// The owner's threshold crossed (with at least `min_reviews`).
    pub over_threshold: bool,
}

impl Row {
    fn new(destination: &str, category: &str) -> Row {
        Row {
            destination: destination.to_string(),
            category: category.to_string(),
            messages: 0,
            delivered: 0,
            dead_letters: 0,
            held: 0,
            reviews: Reviews::default(),
            timed_out: 0,
            over_threshold: false,
        }
    }
}

/// A row flattened for CSV (no nested interval).
#[derive(Serialize)]
pub struct Flat<'a> {
    pub destination: std::borrow::Cow<'a, str>,
    pub category: std::borrow::Cow<'a, str>,
    pub messages: u64,
    pub delivered: u64,
    pub dead_letters: u64,
    pub held: u64,
    pub reviewed: u64,
    pub approved: u64,
    pub edited: u64,
    pub rejected: u64,
    pub feedback: u64,
    pub overridden: u64,
    pub timed_out: u64,
    pub override_rate: Option<f64>,
    pub override_rate_low: Option<f64>,
    pub override_rate_high: Option<f64>,
    pub over_threshold: bool,
}

impl<'a> From<&'a Row> for Flat<'a> {
    fn from(r: &'a Row) -> Self {
        // For a spreadsheet: the category is AI output.
        Flat {
            destination: crate::text::csv_cell(&r.destination),
            category: crate::text::csv_cell(&r.category),
            messages: r.messages,
            delivered: r.delivered,
            dead_letters: r.dead_letters,
            held: r.held,
            reviewed: r.reviews.reviewed,
            approved: r.reviews.approved,
            edited: r.reviews.edited,
            rejected: r.reviews.rejected,
            feedback: r.reviews.feedback,
            overridden: r.reviews.overridden,
            timed_out: r.timed_out,
            override_rate: r.reviews.override_rate,
            override_rate_low: r.reviews.override_rate_ci95.map(|c| c.0),
            override_rate_high: r.reviews.override_rate_ci95.map(|c| c.1),
            over_threshold: r.over_threshold,
        }
    }
}

/// A destination's governance threshold, as `rows` applies it.
#[derive(Clone, Copy, Debug)]
pub struct Threshold {
    pub rate: f64,
    pub min_reviews: u64,
}

/// Whether a tally crosses a threshold: enough reviews, and a rate above it.
pub fn crosses(t: &Tally, threshold: Threshold) -> bool {
    let n = t.reviewed();
    n > 0 && n >= threshold.min_reviews && t.overrides() as f64 / n as f64 > threshold.rate
}

/// Joins message volumes (`(dest, category, state, n)`) and decision
/// tallies into rows: categories over their threshold first, then by
/// destination and category.
pub fn rows(
    volumes: &[(String, String, crate::queue::MessageState, u64)],
    tallies: &[((String, String), Tally)],
    threshold: impl Fn(&str) -> Option<Threshold>,
) -> Vec<Row> {
    let mut by: BTreeMap<(String, String), Row> = BTreeMap::new();
    for (dest, category, state, n) in volumes {
        let r = by
            .entry((dest.clone(), category.clone()))
            .or_insert_with(|| Row::new(dest, category));
        r.messages += n;
        match *state {
            crate::queue::MessageState::Delivered => r.delivered += n,
            crate::queue::MessageState::DeadLettered => r.dead_letters += n,
            crate::queue::MessageState::Held => r.held += n,
            _ => {}
        }
    }
    for ((dest, category), t) in tallies {
        let r = by
            .entry((dest.clone(), category.clone()))
            .or_insert_with(|| Row::new(dest, category));
        r.reviews = Reviews::of(t);
        r.timed_out = t.timed_out;
        r.over_threshold = threshold(dest).is_some_and(|th| crosses(t, th));
    }
    let mut out: Vec<Row> = by.into_values().collect();
    // Over threshold first; then the worst rates; then by name.
    out.sort_by(|a, b| {
        b.over_threshold
            .cmp(&a.over_threshold)
            .then(
                b.reviews
                    .override_rate
                    .unwrap_or(-1.0)
                    .partial_cmp(&a.reviews.override_rate.unwrap_or(-1.0))
                    .unwrap_or(std::cmp::Ordering::Equal),
            )
            .then(a.destination.cmp(&b.destination))
            .then(a.category.cmp(&b.category))
    });
    out
}

/// The owner's report as text: one line per destination and category.
pub fn table(rows: &[Row], since: &str) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "quality over the last {since}; categories over their threshold first\n"
    );
    let line = |cells: [&str; 14]| {
        let mut l = format!("{:<16} {:<16}", cells[0], cells[1]);
        for (c, w) in cells[2..13].iter().zip([8, 9, 5, 5, 8, 8, 6, 8, 10, 8, 8]) {
            let _ = write!(l, " {c:>w$}");
        }
        let _ = write!(l, "  {}", cells[13]);
        l.trim_end().to_string()
    };
    let _ = writeln!(
        s,
        "{}",
        line([
            "DESTINATION",
            "CATEGORY",
            "MESSAGES",
            "DELIVERED",
            "DEAD",
            "HELD",
            "REVIEWED",
            "APPROVED",
            "EDITED",
            "REJECTED",
            "OVERRIDDEN",
            "OVERRIDE",
            "95% CI",
            "VERDICT",
        ])
    );
    for r in rows {
        let rate = r
            .reviews
            .override_rate
            .map_or("-".to_string(), |x| format!("{:.1}%", x * 100.0));
        let ci = r.reviews.override_rate_ci95.map_or("-".to_string(), |(lo, hi)| {
            format!("{:.0}–{:.0}%", lo * 100.0, hi * 100.0)
        });
        let n = crate::text::thousands;
        let _ = writeln!(
            s,
            "{}",
            line([
                &r.destination,
                &crate::text::for_terminal(&r.category),
                &n(r.messages),
                &n(r.delivered),
                &n(r.dead_letters),
                &n(r.held),
                &n(r.reviews.reviewed),
                &n(r.reviews.approved),
                &n(r.reviews.edited),
                &n(r.reviews.rejected),
                &n(r.reviews.overridden),
                &rate,
                &ci,
                if r.over_threshold { "OVER THRESHOLD" } else { "" },
            ])
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newcombe_matches_his_published_example() {
        // Newcombe (1998), table II, example (a): 56/70 against 48/80,
        // method 10: 0.0524 to 0.3339.
        let (lo, hi) = newcombe(56, 70, 48, 80).unwrap();
        assert!((lo - 0.0524).abs() < 5e-4 && (hi - 0.3339).abs() < 5e-4, "{lo} {hi}");
        assert_eq!(newcombe(1, 2, 0, 0), None);
    }

    #[test]
    fn reviewers_of_one_category_are_compared_pairwise() {
        let t = |approved, edited| Tally {
            approved,
            edited,
            ..Tally::default()
        };
        let key = |d: &str, c: &str, r: &str| (d.to_string(), c.to_string(), r.to_string());
        let tallies = vec![
            (key("crm", "nda", "ana"), t(45, 5)),
            (key("crm", "nda", "bo"), t(20, 30)),
            (key("crm", "nda", "cy"), t(9, 1)),
            (key("crm", "invoice", "ana"), t(10, 0)),
        ];
        let (rows, agree) = by_reviewer(&tallies);
        assert_eq!(rows.len(), 4);
        assert_eq!(
            rows.iter().map(|r| r.reviewer.as_str()).collect::<Vec<_>>(),
            ["ana", "ana", "bo", "cy"],
            "by destination, category, most reviewed first"
        );
        // Three reviewers of nda: three pairs; one of invoice: none.
        assert_eq!(agree.len(), 3);
        let ana_bo = agree
            .iter()
            .find(|a| a.reviewers == ("ana".into(), "bo".into()))
            .unwrap();
        assert!((ana_bo.difference - (0.1 - 0.6)).abs() < 1e-9);
        assert!(
            !ana_bo.consistent,
            "10% against 60% of 50 each differ: {:?}",
            ana_bo.difference_ci95
        );
        let ana_cy = agree
            .iter()
            .find(|a| a.reviewers == ("ana".into(), "cy".into()))
            .unwrap();
        assert!(
            ana_cy.consistent,
            "10% of 50 and 10% of 10 agree: {:?}",
            ana_cy.difference_ci95
        );
    }

    #[test]
    fn wilson_matches_published_values_and_stays_in_bounds() {
        // 8 of 10: Wilson 95% is 0.490 to 0.943 (Newcombe 1998, method 3).
        let (lo, hi) = wilson(8, 10).unwrap();
        assert!((lo - 0.4902).abs() < 1e-3 && (hi - 0.9433).abs() < 1e-3, "{lo} {hi}");
        let (lo, hi) = wilson(0, 20).unwrap();
        assert_eq!(lo, 0.0);
        assert!((hi - 0.1611).abs() < 1e-3, "{hi}");
        let (lo, hi) = wilson(20, 20).unwrap();
        assert!((lo - 0.8389).abs() < 1e-3 && hi == 1.0, "{lo} {hi}");
        assert_eq!(wilson(0, 0), None);
    }

    #[test]
    fn a_threshold_needs_min_reviews_and_a_rate_above_it() {
        let t = |approved, edited| Tally {
            approved,
            edited,
            ..Tally::default()
        };
        let th = Threshold {
            rate: 0.2,
            min_reviews: 20,
        };
        assert!(!crosses(&t(5, 10), th), "15 reviews is below min_reviews");
        assert!(crosses(&t(10, 10), th));
        assert!(!crosses(&t(16, 4), th), "exactly at the threshold is not over it");
        assert!(!crosses(&t(0, 0), th));
    }

    #[test]
    fn rows_put_categories_over_threshold_first() {
        use crate::queue::MessageState;
        let volumes = vec![
            ("d".to_string(), "nda".to_string(), MessageState::Delivered, 90),
            ("d".to_string(), "contract".to_string(), MessageState::Delivered, 40),
            ("d".to_string(), "contract".to_string(), MessageState::DeadLettered, 3),
        ];
        let tallies = vec![
            (
                ("d".to_string(), "nda".to_string()),
                Tally {
                    approved: 19,
                    edited: 1,
                    ..Tally::default()
                },
            ),
            (
                ("d".to_string(), "contract".to_string()),
                Tally {
                    approved: 4,
                    edited: 12,
                    rejected: 4,
                    ..Tally::default()
                },
            ),
        ];
        let th = |_: &str| {
            Some(Threshold {
                rate: 0.2,
                min_reviews: 20,
            })
        };
        let r = rows(&volumes, &tallies, th);
        assert_eq!(r[0].category, "contract");
        assert!(r[0].over_threshold);
        assert_eq!((r[0].messages, r[0].delivered, r[0].dead_letters), (43, 40, 3));
        assert_eq!(r[0].reviews.override_rate, Some(0.8));
        assert!(!r[1].over_threshold);
        assert_eq!(r[1].reviews.override_rate, Some(0.05));
    }
}
