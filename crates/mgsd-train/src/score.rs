//! `mgsd-train score`: the official BraTS 2023+ metrics and the legacy BraTS 2018–2021 metrics
//! of any folder of predictions (ours, nnU-Net's, …) against a folder of references.
//!
//! Cases are paired the way `brats-evaluate` pairs them: every reference label map
//! (`<ID>-seg.nii.gz` of BraTS 2023, `<ID>_seg.nii.gz` of 2018–2021, either inside case
//! folders, or any `.nii.gz` of a flat folder such as MSD's `labelsTr`) is paired with the
//! prediction named `<ID>.nii.gz`, else the prediction whose name ends with `<ID>.nii.gz`,
//! else — as the official tool — whose name ends with the case's number (`00001-000.nii.gz`).
//! A reference without prediction scores the official parser's penalty row (and, for the
//! legacy metrics, an empty prediction); a prediction without reference is listed.
//!
//! The CSV has one row per reference, named by its file as the official parser does, with the
//! columns of `brats-parse-metrics seg` for WT, TC and ET (and/or the legacy `dice_wt`, …),
//! then `mean`, `std` and `median` rows computed as pandas does.

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use mgsd_io::{read_volume, LabelScheme};
use mgsd_metrics::lesionwise::{self, LesionwiseScore, OFFICIAL_STEMS};
use mgsd_metrics::stats::Summary;
use mgsd_metrics::{legacy_scores, LegacyScore, PostProcess};
use rayon::prelude::*;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Which metrics to compute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MetricSet {
    /// The official BraTS 2023+ lesion-wise metrics (`brats-evaluation`, `gli`).
    Brats2023,
    /// The BraTS 2018–2021 metrics: Dice, HD95, sensitivity, specificity.
    Legacy,
    /// Both.
    All,
}

impl MetricSet {
    fn official(self) -> bool {
        self != MetricSet::Legacy
    }
    fn legacy(self) -> bool {
        self != MetricSet::Brats2023
    }
}

/// How label maps number their classes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LabelsArg {
    /// From the reference names: `-seg` BraTS 2023, `_seg` BraTS 2018–2021, otherwise MSD.
    Auto,
    /// BraTS 2023: 1 NETC, 2 SNFH, 3 ET.
    Brats2023,
    /// BraTS 2018–2021: 1 NCR/NET, 2 ED, 4 ET.
    Brats2018,
    /// MSD Task01: 1 oedema, 2 non-enhancing, 3 enhancing.
    Msd,
}

/// What to score.
#[derive(Debug, Clone)]
pub struct ScoreOptions {
    /// Folder of predictions.
    pub pred: PathBuf,
    /// Folder of references (flat or case folders).
    pub truth: PathBuf,
    /// Label scheme of both.
    pub labels: LabelsArg,
    /// Metrics to compute.
    pub metrics: MetricSet,
    /// Show a progress bar.
    pub progress: bool,
}

/// One reference and what it scored.
#[derive(Debug, Clone)]
pub struct CaseRow {
    /// The reference's file name (the official `subject_id`).
    pub subject: String,
    /// The case id.
    pub id: String,
    /// The prediction scored, if one was found.
    pub prediction: Option<PathBuf>,
    /// Official metrics of WT, TC, ET (`None` without prediction: the penalty row).
    pub official: Option<[LesionwiseScore; 3]>,
    /// Legacy metrics of WT, TC, ET.
    pub legacy: Option<[LegacyScore; 3]>,
}

/// Every case of a `score` run.
#[derive(Debug, Clone)]
pub struct ScoreReport {
    /// Metrics computed.
    pub metrics: MetricSet,
    /// One row per reference, sorted by file name.
    pub rows: Vec<CaseRow>,
    /// Predictions that no reference claimed.
    pub unmatched_predictions: Vec<PathBuf>,
}

/// A reference label map.
#[derive(Debug, Clone)]
struct Reference {
    path: PathBuf,
    id: String,
    scheme: LabelScheme,
}

fn name_of(p: &Path) -> String {
    p.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned())
}

fn is_nifti(name: &str) -> bool {
    name.ends_with(".nii.gz") || name.ends_with(".nii")
}

fn strip_nifti(name: &str) -> &str {
    name.strip_suffix(".nii.gz").or_else(|| name.strip_suffix(".nii")).unwrap_or(name)
}

/// Id and label scheme of a reference file name, from its suffix.
fn reference_id(name: &str) -> (String, LabelScheme) {
    let stem = strip_nifti(name);
    if let Some(id) = stem.strip_suffix("-seg") {
        (id.to_string(), LabelScheme::Brats2023)
    } else if let Some(id) = stem.strip_suffix("_seg") {
        (id.to_string(), LabelScheme::Brats2018)
    } else {
        (stem.to_string(), LabelScheme::Msd)
    }
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading folder {}", dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()
        .with_context(|| format!("reading folder {}", dir.display()))?;
    v.sort();
    Ok(v)
}

/// The references of `truth`: segmentation files of a flat folder or of case folders.
fn references(truth: &Path, labels: LabelsArg) -> Result<Vec<Reference>> {
    let mut files = Vec::new();
    for e in sorted_entries(truth)? {
        if e.is_dir() {
            for f in sorted_entries(&e)? {
                let n = name_of(&f);
                if is_nifti(&n) && strip_nifti(&n).ends_with("seg") {
                    files.push(f);
                }
            }
        } else if is_nifti(&name_of(&e)) {
            files.push(e);
        }
    }
    let refs: Vec<Reference> = files
        .into_iter()
        .map(|path| {
            let (id, auto) = reference_id(&name_of(&path));
            let scheme = match labels {
                LabelsArg::Auto => auto,
                LabelsArg::Brats2023 => LabelScheme::Brats2023,
                LabelsArg::Brats2018 => LabelScheme::Brats2018,
                LabelsArg::Msd => LabelScheme::Msd,
            };
            Reference { path, id, scheme }
        })
        .collect();
    if refs.is_empty() {
        bail!("no reference label map (*.nii.gz) in {} or its case folders", truth.display());
    }
    Ok(refs)
}

/// The case number the official tool extracts from a reference name: the first match of
/// `\d{5}(?:-\d{3})?|\d{4}-\d{1,3}`.
pub fn official_number(name: &str) -> Option<&str> {
    let b = name.as_bytes();
    let digits = |from: usize, n: usize| -> bool {
        from + n <= b.len() && b[from..from + n].iter().all(u8::is_ascii_digit)
    };
    for i in 0..b.len() {
        if digits(i, 5) {
            let end = if b.get(i + 5) == Some(&b'-') && digits(i + 6, 3) { i + 9 } else { i + 5 };
            return Some(&name[i..end]);
        }
        if digits(i, 4) && b.get(i + 4) == Some(&b'-') && digits(i + 5, 1) {
            let mut end = i + 6;
            while end < i + 8 && digits(end, 1) {
                end += 1;
            }
            return Some(&name[i..end]);
        }
    }
    None
}

/// The prediction of `r` among `preds` (file names): exact, then by suffix, then by number.
fn find_prediction<'a>(r: &Reference, preds: &'a [(String, PathBuf)]) -> Option<&'a PathBuf> {
    let exact = [format!("{}.nii.gz", r.id), format!("{}.nii", r.id)];
    let by = |suffix: &str| preds.iter().find(|(n, _)| n.ends_with(suffix)).map(|(_, p)| p);
    preds
        .iter()
        .find(|(n, _)| exact.contains(n))
        .map(|(_, p)| p)
        .or_else(|| by(&exact[0]))
        .or_else(|| by(&exact[1]))
        .or_else(|| official_number(&name_of(&r.path)).and_then(|num| by(&format!("{num}.nii.gz"))))
}

/// Reads a label map as canonical labels, with its grid.
fn load_labels(path: &Path, scheme: LabelScheme) -> Result<(Vec<u8>, [usize; 3], [f64; 3])> {
    let v = read_volume(path).with_context(|| format!("reading {}", path.display()))?;
    let labels = scheme.to_canonical(&v.data, &path.display().to_string())?;
    Ok((labels, v.shape, v.spacing.map(f64::from)))
}

fn score_one(r: &Reference, pred: Option<&PathBuf>, metrics: MetricSet) -> Result<CaseRow> {
    let (truth, shape, spacing) = load_labels(&r.path, r.scheme)?;
    let pred_labels = match pred {
        Some(p) => {
            let (labels, pshape, pspacing) = load_labels(p, r.scheme)?;
            let same_spacing = spacing.iter().zip(&pspacing).all(|(a, b)| (a - b).abs() <= 1e-4);
            if pshape != shape || !same_spacing {
                bail!(
                    "grid mismatch: prediction {} is {pshape:?} at {pspacing:?} mm, reference {} \
                     is {shape:?} at {spacing:?} mm",
                    p.display(),
                    r.path.display()
                );
            }
            Some(labels)
        }
        None => None,
    };
    let official = match (&pred_labels, metrics.official()) {
        (Some(p), true) => Some(lesionwise::score_case(p, &truth, shape, spacing)?),
        _ => None,
    };
    let legacy = metrics.legacy().then(|| {
        let empty;
        let p = match &pred_labels {
            Some(p) => p,
            None => {
                empty = vec![0u8; truth.len()];
                &empty
            }
        };
        legacy_scores(p, &truth, shape, spacing, PostProcess::NONE)
    });
    Ok(CaseRow {
        subject: name_of(&r.path),
        id: r.id.clone(),
        prediction: pred.cloned(),
        official,
        legacy,
    })
}

/// Scores every reference of `opts.truth` against its prediction in `opts.pred`, in parallel.
///
/// # Errors
/// Unreadable folders or files, unknown label values, and grid mismatches, naming the files.
pub fn score(opts: &ScoreOptions) -> Result<ScoreReport> {
    let refs = references(&opts.truth, opts.labels)?;
    let preds: Vec<(String, PathBuf)> = sorted_entries(&opts.pred)?
        .into_iter()
        .filter(|p| p.is_file() && is_nifti(&name_of(p)))
        .map(|p| (name_of(&p), p))
        .collect();
    let pairs: Vec<(&Reference, Option<&PathBuf>)> =
        refs.iter().map(|r| (r, find_prediction(r, &preds))).collect();
    let claimed: Vec<&PathBuf> = pairs.iter().filter_map(|(_, p)| *p).collect();
    let unmatched_predictions =
        preds.iter().filter(|(_, p)| !claimed.contains(&p)).map(|(_, p)| p.clone()).collect();

    let bar =
        if opts.progress { ProgressBar::new(refs.len() as u64) } else { ProgressBar::hidden() };
    bar.set_style(
        ProgressStyle::with_template(
            "{prefix:>10} [{bar:30}] {pos}/{len} cases {elapsed_precise} ETA {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_prefix("score");
    let rows = pairs
        .par_iter()
        .map(|&(r, p)| {
            let row = score_one(r, p, opts.metrics);
            bar.inc(1);
            row
        })
        .collect::<Result<Vec<_>>>()?;
    bar.finish_and_clear();
    Ok(ScoreReport { metrics: opts.metrics, rows, unmatched_predictions })
}

/// A number as pandas writes it to CSV: NaN empty, `inf`, `1.0` for whole numbers.
pub fn csv_number(v: f64) -> String {
    if v.is_nan() {
        String::new()
    } else if v.is_infinite() {
        if v > 0.0 { "inf" } else { "-inf" }.to_string()
    } else if v.fract() == 0.0 && v.abs() < 1e16 {
        format!("{v:.1}")
    } else {
        format!("{v}")
    }
}

const LEGACY_STEMS: [&str; 4] = ["dice", "hd95", "sens", "spec"];
/// Region suffixes in the official CSV's relative order.
const OFFICIAL_REGIONS: [(usize, &str); 3] = [(2, "et"), (1, "tc"), (0, "wt")];
const LEGACY_REGIONS: [(usize, &str); 3] = [(0, "wt"), (1, "tc"), (2, "et")];

impl ScoreReport {
    /// Column names (without `subject_id`).
    pub fn columns(&self) -> Vec<String> {
        let mut c = Vec::new();
        if self.metrics.official() {
            for (_, r) in OFFICIAL_REGIONS {
                c.extend(OFFICIAL_STEMS.iter().map(|s| format!("{s}_{r}")));
            }
        }
        if self.metrics.legacy() {
            for s in LEGACY_STEMS {
                c.extend(LEGACY_REGIONS.iter().map(|(_, r)| format!("{s}_{r}")));
            }
        }
        c
    }

    /// The values of one row, in [`ScoreReport::columns`] order.
    pub fn values(&self, row: &CaseRow) -> Vec<f64> {
        let mut v = Vec::new();
        if self.metrics.official() {
            for (i, _) in OFFICIAL_REGIONS {
                match &row.official {
                    Some(s) => v.extend(lesionwise::official_columns(&s[i])),
                    None => v.extend(lesionwise::missing_columns()),
                }
            }
        }
        if self.metrics.legacy() {
            let l = row.legacy.unwrap_or(
                [LegacyScore {
                    dice: f64::NAN,
                    hd95: f64::NAN,
                    sensitivity: f64::NAN,
                    specificity: f64::NAN,
                }; 3],
            );
            for f in [
                |s: &LegacyScore| s.dice,
                |s: &LegacyScore| s.hd95,
                |s: &LegacyScore| s.sensitivity,
                |s: &LegacyScore| s.specificity,
            ] {
                v.extend(LEGACY_REGIONS.iter().map(|&(i, _)| f(&l[i])));
            }
        }
        v
    }

    /// Column summaries (pandas' mean, std, median).
    pub fn summaries(&self) -> Vec<Summary> {
        let values: Vec<Vec<f64>> = self.rows.iter().map(|r| self.values(r)).collect();
        (0..self.columns().len())
            .map(|c| Summary::of(&values.iter().map(|v| v[c]).collect::<Vec<_>>()))
            .collect()
    }

    /// The CSV: one row per case, then `mean`, `std` and `median`.
    pub fn csv(&self) -> String {
        let mut s = String::from("subject_id");
        for c in self.columns() {
            s.push(',');
            s.push_str(&c);
        }
        s.push('\n');
        let mut line = |name: &str, vals: &[f64]| {
            s.push_str(name);
            for &v in vals {
                s.push(',');
                s.push_str(&csv_number(v));
            }
            s.push('\n');
        };
        for r in &self.rows {
            line(&r.subject, &self.values(r));
        }
        let sums = self.summaries();
        line("mean", &sums.iter().map(|x| x.mean).collect::<Vec<_>>());
        line("std", &sums.iter().map(|x| x.std).collect::<Vec<_>>());
        line("median", &sums.iter().map(|x| x.median).collect::<Vec<_>>());
        s
    }

    /// A Markdown summary: means per region, then the unpaired files.
    pub fn markdown(&self) -> String {
        let cols = self.columns();
        let sums = self.summaries();
        let mean =
            |name: &str| cols.iter().position(|c| c == name).map_or(f64::NAN, |i| sums[i].mean);
        let mut s = String::new();
        let scored = self.rows.iter().filter(|r| r.prediction.is_some()).count();
        let _ = writeln!(s, "{scored} of {} references scored\n", self.rows.len());
        if self.metrics.official() {
            let _ = writeln!(s, "BraTS 2023+ lesion-wise metrics (mean over cases; HD95 in mm):\n");
            let _ = writeln!(s, "| Region | Lesion-wise Dice | Lesion-wise HD95 | Lesion-wise NSD | Global Dice | Global HD95 | TP | FP | FN |");
            let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|---:|");
            for r in ["wt", "tc", "et"] {
                let total = |stem: &str| mean(&format!("{stem}_{r}")) * self.rows.len() as f64;
                let _ = writeln!(
                    s,
                    "| {} | {:.4} | {:.2} | {:.4} | {:.4} | {:.2} | {:.0} | {:.0} | {:.0} |",
                    r.to_uppercase(),
                    mean(&format!("lesionwise_dsc_mean_{r}")),
                    mean(&format!("lesionwise_hd95_mean_{r}")),
                    mean(&format!("lesionwise_nsd_mean_{r}")),
                    mean(&format!("global_dsc_{r}")),
                    mean(&format!("global_hd95_{r}")),
                    total("all_instance_tp"),
                    total("all_instance_fp"),
                    total("all_instance_fn"),
                );
            }
            s.push('\n');
        }
        if self.metrics.legacy() {
            let _ = writeln!(s, "BraTS 2018–2021 metrics (mean over cases; HD95 in mm):\n");
            let _ = writeln!(s, "| Region | Dice | HD95 | Sensitivity | Specificity |");
            let _ = writeln!(s, "|---|---:|---:|---:|---:|");
            for r in ["wt", "tc", "et"] {
                let _ = writeln!(
                    s,
                    "| {} | {:.4} | {:.2} | {:.4} | {:.4} |",
                    r.to_uppercase(),
                    mean(&format!("dice_{r}")),
                    mean(&format!("hd95_{r}")),
                    mean(&format!("sens_{r}")),
                    mean(&format!("spec_{r}")),
                );
            }
            s.push('\n');
        }
        let missing: Vec<&str> = self
            .rows
            .iter()
            .filter(|r| r.prediction.is_none())
            .map(|r| r.subject.as_str())
            .collect();
        if !missing.is_empty() {
            let _ = writeln!(
                s,
                "Missing predictions (penalised as the official parser does): {}",
                missing.join(", ")
            );
        }
        if !self.unmatched_predictions.is_empty() {
            let names: Vec<String> =
                self.unmatched_predictions.iter().map(|p| name_of(p)).collect();
            let _ = writeln!(s, "Predictions without reference (ignored): {}", names.join(", "));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn official_case_numbers() {
        assert_eq!(official_number("BraTS-GLI-00001-000-seg.nii.gz"), Some("00001-000"));
        assert_eq!(official_number("BraTS-MET-00001-seg.nii.gz"), Some("00001"));
        assert_eq!(official_number("case_1234-56.nii.gz"), Some("1234-56"));
        assert_eq!(official_number("Brats18_CBICA_AAB_1_seg.nii.gz"), None);
    }

    #[test]
    fn reference_names() {
        assert_eq!(reference_id("BraTS-GLI-00001-000-seg.nii.gz").0, "BraTS-GLI-00001-000");
        assert_eq!(reference_id("Brats18_X_1_seg.nii.gz").1, LabelScheme::Brats2018);
        assert_eq!(reference_id("BRATS_001.nii.gz"), ("BRATS_001".into(), LabelScheme::Msd));
    }

    #[test]
    fn numbers_as_pandas_writes_them() {
        assert_eq!(csv_number(1.0), "1.0");
        assert_eq!(csv_number(0.75), "0.75");
        assert_eq!(csv_number(f64::NAN), "");
        assert_eq!(csv_number(f64::INFINITY), "inf");
    }
}
