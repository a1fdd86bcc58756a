//! The embedded demo's reading of its own table: three statements a 15-subset table of a
//! missing-modality segmenter should support, each checked on the numbers and printed in one
//! line with them, "met" or "not met" as it comes out.
//!
//! 1. **The full set is the best input**, or within [`FULL_SET_TOLERANCE`] Dice points of the
//!    best subset, for each region (WT, TC, ET).
//! 2. **WT improves with every added sequence on average**: the mean WT Dice over the subsets
//!    of 1, 2, 3 and 4 sequences increases strictly.
//! 3. **ET collapses without T1ce** (the enhancing tumour is visible only on T1ce): the mean ET
//!    Dice over the 7 subsets without T1ce is below [`ET_COLLAPSE_RATIO`] times the mean over
//!    the 8 subsets with it.
//!
//! The thresholds are fixed here, not fitted to any run.

use crate::eval::EvalReport;
use anyhow::{bail, Result};
use mgsd_io::{Modality, ModalitySet};

/// How far (Dice points) the full set may trail the best subset and still count as "the best".
pub const FULL_SET_TOLERANCE: f64 = 1.0;

/// "Collapses": the mean ET Dice without T1ce is below this fraction of the mean with it.
pub const ET_COLLAPSE_RATIO: f64 = 0.5;

const REGIONS: [&str; 3] = ["WT", "TC", "ET"];

/// The three checks of a report, in Dice points (0–100).
#[derive(Debug, Clone, PartialEq)]
pub struct DemoSummary {
    /// Per region: the full set's Dice, the best subset's Dice and its name.
    pub full_vs_best: [(f64, f64, String); 3],
    /// Mean WT Dice over the subsets of 1, 2, 3 and 4 sequences.
    pub wt_by_count: [f64; 4],
    /// Mean ET Dice over the subsets with T1ce and over those without.
    pub et_with_without: (f64, f64),
}

impl DemoSummary {
    /// Reads the checks off a report's 15 rows.
    ///
    /// # Errors
    /// A report without all 15 subsets, or with a row whose subset does not parse.
    pub fn of(report: &EvalReport) -> Result<Self> {
        let mut rows = Vec::with_capacity(report.rows.len());
        for r in &report.rows {
            let set: ModalitySet = r
                .subset
                .parse()
                .map_err(|e| anyhow::anyhow!("subset '{}' of the report: {e}", r.subset))?;
            rows.push((set, r.subset.clone(), r.dice.map(|d| 100.0 * d)));
        }
        let mut seen: Vec<u8> = rows.iter().map(|(s, ..)| s.bits()).collect();
        seen.sort_unstable();
        seen.dedup();
        if seen.len() != 15 || rows.iter().any(|(s, ..)| s.is_empty()) {
            bail!(
                "the demo's summary needs the 15 non-empty subsets once each; the report has {} rows over {} subsets",
                rows.len(),
                seen.len()
            );
        }
        let Some(full) = rows.iter().find(|(s, ..)| *s == ModalitySet::FULL).map(|r| r.2) else {
            bail!("the report has no row for the full modality set");
        };
        let full_vs_best = [0, 1, 2].map(|k| {
            let best = rows
                .iter()
                .max_by(|a, b| a.2[k].total_cmp(&b.2[k]))
                .map(|(_, name, d)| (d[k], name.clone()))
                .unwrap_or_default();
            (full[k], best.0, best.1)
        });
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
        let wt_by_count = [1, 2, 3, 4].map(|n| {
            let v: Vec<f64> = rows.iter().filter(|(s, ..)| s.len() == n).map(|r| r.2[0]).collect();
            mean(&v)
        });
        let et = |with: bool| {
            let v: Vec<f64> = rows
                .iter()
                .filter(|(s, ..)| s.contains(Modality::T1ce) == with)
                .map(|r| r.2[2])
                .collect();
            mean(&v)
        };
        Ok(DemoSummary { full_vs_best, wt_by_count, et_with_without: (et(true), et(false)) })
    }

    /// Whether the full set is within [`FULL_SET_TOLERANCE`] of the best, per region.
    pub fn full_set_best(&self) -> [bool; 3] {
        self.full_vs_best.clone().map(|(full, best, _)| full >= best - FULL_SET_TOLERANCE)
    }

    /// Whether the mean WT increases strictly from 1 to 4 sequences.
    pub fn wt_increases(&self) -> bool {
        self.wt_by_count.windows(2).all(|w| w[1] > w[0])
    }

    /// Whether ET without T1ce is below [`ET_COLLAPSE_RATIO`] of ET with it.
    pub fn et_collapses(&self) -> bool {
        let (with, without) = self.et_with_without;
        without < ET_COLLAPSE_RATIO * with
    }

    /// The three lines the demo prints.
    pub fn lines(&self) -> [String; 3] {
        let met = |ok: bool| if ok { "met" } else { "not met" };
        let ok = self.full_set_best();
        let parts: Vec<String> = (0..3)
            .map(|k| {
                let (full, best, name) = &self.full_vs_best[k];
                // A tie with another subset still makes the full set the best.
                if full >= best {
                    format!("{} {full:.1} (the best)", REGIONS[k])
                } else {
                    format!("{} {full:.1} vs {best:.1} ({name})", REGIONS[k])
                }
            })
            .collect();
        let failing: Vec<&str> = (0..3).filter(|&k| !ok[k]).map(|k| REGIONS[k]).collect();
        let full_line = format!(
            "Full set best or within {FULL_SET_TOLERANCE:.0} point of the best subset: {}: {}",
            parts.join(", "),
            if failing.is_empty() {
                "met".to_string()
            } else {
                format!("not met ({})", failing.join(", "))
            }
        );
        let [a, b, c, d] = self.wt_by_count;
        let wt_line = format!(
            "WT with 1 / 2 / 3 / 4 sequences (mean over subsets): {a:.1} / {b:.1} / {c:.1} / {d:.1}: improves with every added sequence: {}",
            met(self.wt_increases())
        );
        let (with, without) = self.et_with_without;
        let et_line = format!(
            "ET Dice with T1ce {with:.1} vs without {without:.1} (the enhancing tumour is visible only on T1ce): collapses without T1ce (below {:.0} % of with): {}",
            100.0 * ET_COLLAPSE_RATIO,
            met(self.et_collapses())
        );
        [full_line, wt_line, et_line]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::SubsetRow;

    fn row(subset: String, dice: [f64; 3]) -> SubsetRow {
        SubsetRow { subset, cases: 6, dice, hd95: [0.0; 3], et_post: [0.0; 2] }
    }

    fn report(dice: impl Fn(ModalitySet) -> [f64; 3]) -> EvalReport {
        let rows: Vec<SubsetRow> =
            ModalitySet::all_nonempty().into_iter().map(|s| row(s.to_string(), dice(s))).collect();
        EvalReport {
            protocol: String::new(),
            provenance: None,
            cases: Vec::new(),
            outside_window: None,
            rows,
            mean: row("mean".into(), [0.0; 3]),
            min_et: None,
            per_case: Vec::new(),
        }
    }

    #[test]
    fn a_table_that_teaches_meets_all_three() {
        let r = report(|s| {
            let n = s.len() as f64;
            let et = if s.contains(Modality::T1ce) { 0.8 } else { 0.2 };
            [0.6 + 0.05 * n, 0.5 + 0.05 * n, et]
        });
        let sum = DemoSummary::of(&r).unwrap();
        assert_eq!(sum.full_set_best(), [true; 3]);
        assert!(sum.wt_increases() && sum.et_collapses());
        let lines = sum.lines();
        assert!(lines[0].ends_with(": met"), "{}", lines[0]);
        assert!(lines[0].contains("WT 80.0 (the best)"), "{}", lines[0]);
        assert!(lines[1].contains("65.0 / 70.0 / 75.0 / 80.0") && lines[1].ends_with(": met"));
        assert!(lines[2].contains("with T1ce 80.0 vs without 20.0") && lines[2].ends_with(": met"));
    }

    #[test]
    fn failures_are_named_with_their_numbers() {
        let flair_t2: ModalitySet = "FLAIR+T2".parse().unwrap();
        let r = report(|s| {
            let wt = if s == flair_t2 { 0.9 } else { 0.7 };
            let et = if s.contains(Modality::T1ce) { 0.5 } else { 0.4 };
            [wt, 0.7, et]
        });
        let sum = DemoSummary::of(&r).unwrap();
        assert_eq!(sum.full_set_best(), [false, true, true]);
        assert!(!sum.wt_increases() && !sum.et_collapses());
        let lines = sum.lines();
        assert!(lines[0].contains("WT 70.0 vs 90.0 (FLAIR+T2)"), "{}", lines[0]);
        assert!(lines[0].ends_with("not met (WT)"), "{}", lines[0]);
        assert!(lines[1].ends_with("not met") && lines[2].ends_with("not met"));
    }

    #[test]
    fn an_incomplete_table_is_an_error() {
        let mut r = report(|_| [0.5; 3]);
        r.rows.pop();
        assert!(DemoSummary::of(&r).is_err());
    }
}
