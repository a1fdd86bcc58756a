//! `mgsd-train compare A/eval.json B/eval.json`: is B better than A, subset by subset?
//!
//! For every modality subset and region (15 × 3 = 45 tests) over the cases both evaluations
//! share: the mean difference B − A of the per-case metric (Dice or HD95), its 95 % percentile
//! bootstrap confidence interval (10 000 resamples, seeded), the two-sided paired Wilcoxon
//! signed-rank p-value exactly as `scipy.stats.wilcoxon` computes it by default, and the
//! Holm-adjusted p-value across all tests. Written as Markdown, CSV and a heatmap PNG.

use crate::heatmap::{heatmap, sort_by_modalities, HeatRow, Scale};
use anyhow::{bail, Context, Result};
use mgsd_metrics::stats::{bootstrap_ci, holm, wilcoxon};
use mgsd_metrics::RegionScore;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

/// Bootstrap resamples per test.
pub const RESAMPLES: usize = 10_000;
/// Seed of the first test's bootstrap (test `i` uses `SEED + i`).
pub const SEED: u64 = 2024;

/// The per-case metric compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CompareMetric {
    /// Dice (higher is better).
    Dice,
    /// HD95 in mm (lower is better).
    Hd95,
}

/// The parts of an `eval.json` that `compare` reads.
#[derive(Debug, Deserialize)]
struct EvalFile {
    rows: Vec<EvalRow>,
    per_case: Vec<EvalCase>,
}

#[derive(Debug, Deserialize)]
struct EvalRow {
    subset: String,
}

#[derive(Debug, Deserialize)]
struct EvalCase {
    case: String,
    subset: String,
    scores: [RegionScore; 3],
}

/// One subset × region test.
#[derive(Debug, Clone, PartialEq)]
pub struct Test {
    /// Subset name.
    pub subset: String,
    /// `WT`, `TC` or `ET`.
    pub region: &'static str,
    /// Shared cases.
    pub n: usize,
    /// Mean of A.
    pub mean_a: f64,
    /// Mean of B.
    pub mean_b: f64,
    /// Mean of B − A.
    pub diff: f64,
    /// 95 % bootstrap interval of the mean difference.
    pub ci: (f64, f64),
    /// Two-sided paired Wilcoxon p-value (NaN when every difference is 0).
    pub p: f64,
    /// Holm-adjusted p-value across the tests.
    pub p_holm: f64,
}

/// The comparison.
#[derive(Debug, Clone)]
pub struct Comparison {
    /// The metric compared.
    pub metric: CompareMetric,
    /// The tests, subset-major in A's row order, regions WT, TC, ET.
    pub tests: Vec<Test>,
}

fn read(path: &Path) -> Result<EvalFile> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| {
        format!("{} is not an eval.json written by `mgsd-train eval`", path.display())
    })
}

/// Compares the evaluations in `a` and `b` (paths of `eval.json` files).
///
/// # Errors
/// Unreadable files; no case and subset in common.
pub fn compare(a: &Path, b: &Path, metric: CompareMetric) -> Result<Comparison> {
    let (ea, eb) = (read(a)?, read(b)?);
    let index = |e: &EvalFile| -> BTreeMap<(String, String), [RegionScore; 3]> {
        e.per_case.iter().map(|c| ((c.subset.clone(), c.case.clone()), c.scores)).collect()
    };
    let (ia, ib) = (index(&ea), index(&eb));
    let value = |s: &RegionScore| match metric {
        CompareMetric::Dice => s.dice,
        CompareMetric::Hd95 => s.hd95,
    };
    let mut tests = Vec::new();
    for row in &ea.rows {
        let shared: Vec<(&[RegionScore; 3], &[RegionScore; 3])> = ia
            .range((row.subset.clone(), String::new())..)
            .take_while(|((s, _), _)| *s == row.subset)
            .filter_map(|(k, va)| ib.get(k).map(|vb| (va, vb)))
            .collect();
        if shared.is_empty() {
            continue;
        }
        for (r, region) in ["WT", "TC", "ET"].into_iter().enumerate() {
            let xa: Vec<f64> = shared.iter().map(|(va, _)| value(&va[r])).collect();
            let xb: Vec<f64> = shared.iter().map(|(_, vb)| value(&vb[r])).collect();
            let d: Vec<f64> = xb.iter().zip(&xa).map(|(b, a)| b - a).collect();
            let n = d.len();
            let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
            let seed = SEED + tests.len() as u64;
            tests.push(Test {
                subset: row.subset.clone(),
                region,
                n,
                mean_a: mean(&xa),
                mean_b: mean(&xb),
                diff: mean(&d),
                ci: bootstrap_ci(&d, RESAMPLES, 0.95, seed)?,
                p: wilcoxon(&xb, &xa)?,
                p_holm: f64::NAN,
            });
        }
    }
    if tests.is_empty() {
        bail!("{} and {} share no case and subset", a.display(), b.display());
    }
    let adjusted = holm(&tests.iter().map(|t| t.p).collect::<Vec<_>>());
    for (t, p) in tests.iter_mut().zip(adjusted) {
        t.p_holm = p;
    }
    Ok(Comparison { metric, tests })
}

impl Comparison {
    fn unit(&self) -> (&'static str, f64) {
        match self.metric {
            CompareMetric::Dice => ("Dice (%)", 100.0),
            CompareMetric::Hd95 => ("HD95 (mm)", 1.0),
        }
    }

    /// The table as CSV (raw values: Dice in [0, 1], HD95 in mm).
    pub fn csv(&self) -> String {
        let mut s =
            String::from("subset,region,n,mean_a,mean_b,diff,ci_low,ci_high,p_wilcoxon,p_holm\n");
        for t in &self.tests {
            let _ = writeln!(
                s,
                "{},{},{},{},{},{},{},{},{},{}",
                t.subset, t.region, t.n, t.mean_a, t.mean_b, t.diff, t.ci.0, t.ci.1, t.p, t.p_holm
            );
        }
        s
    }

    /// The table as Markdown; `*` marks Holm-adjusted p < 0.05.
    pub fn markdown(&self) -> String {
        let (name, k) = self.unit();
        let mut s = String::new();
        let _ = writeln!(s, "{name}: B − A over shared cases, 95 % bootstrap CI ({RESAMPLES} resamples), paired Wilcoxon, Holm over {} tests\n", self.tests.len());
        let _ = writeln!(s, "| Modalities | Region | n | A | B | B − A | 95 % CI | p | p (Holm) |");
        let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---|---:|---:|");
        for t in &self.tests {
            let star = if t.p_holm < 0.05 { " *" } else { "" };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {:.2} | {:.2} | {:+.2}{star} | [{:+.2}, {:+.2}] | {:.3e} | {:.3e} |",
                t.subset, t.region, t.n, k * t.mean_a, k * t.mean_b, k * t.diff, k * t.ci.0, k * t.ci.1, t.p, t.p_holm
            );
        }
        s
    }

    /// The mean differences as a heatmap; `*` marks Holm-adjusted p < 0.05.
    pub fn heatmap(&self) -> crate::plot::Canvas {
        let (name, k) = self.unit();
        let mut rows: Vec<HeatRow> = Vec::new();
        for t in &self.tests {
            let r = ["WT", "TC", "ET"].iter().position(|x| *x == t.region).unwrap_or(0);
            if rows.last().is_none_or(|x| x.label != t.subset) {
                rows.push(HeatRow {
                    label: t.subset.clone(),
                    values: [f64::NAN; 3],
                    text: Default::default(),
                });
            }
            if let Some(row) = rows.last_mut() {
                row.values[r] = k * t.diff;
                let star = if t.p_holm < 0.05 { "*" } else { "" };
                row.text[r] = format!("{:+.2}{star}", k * t.diff);
            }
        }
        sort_by_modalities(&mut rows);
        let limit = rows
            .iter()
            .flat_map(|r| r.values)
            .filter(|v| v.is_finite())
            .fold(0.0f64, |m, v| m.max(v.abs()));
        heatmap(&format!("B - A: {name}  (* HOLM P<0.05)"), &rows, Scale::Diverging { limit })
    }

    /// Writes `compare.md`, `compare.csv` and `compare.png` into `dir`.
    ///
    /// # Errors
    /// I/O errors naming the file.
    pub fn write(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        for (name, text) in [("compare.md", self.markdown()), ("compare.csv", self.csv())] {
            let p = dir.join(name);
            std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))?;
        }
        self.heatmap().save_png(&dir.join("compare.png"))
    }
}
