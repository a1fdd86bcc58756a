//! The literature's missing-modality table (MGSD-SPEC §7): for each of the 15 modality subsets
//! and each case, Dice and HD95 of WT, TC and ET; averaged over cases, then over subsets.
//! Written as Markdown, CSV and JSON, plus a per-case CSV.
//!
//! Every prediction is scored on the case's ORIGINAL grid (un-cropped) against its original
//! label map, with the voxel spacing of its header. The "ET < N voxels → 0" variant
//! ([`PostProcess`]) is reported beside the plain scores (columns marked `*`).
//!
//! Every report states what it is: the protocol (window, blending, TTA), and — set by the
//! caller through [`EvalReport::provenance`] — the checkpoint, the split file with its SHA-256,
//! the part and the cases. With a centre window, the brain voxels it leaves out are counted.

use crate::config::ProtocolConfig;
use crate::data::CaseStore;
use crate::infer::{probabilities, Inference, Window};
use crate::metrics::{score_case, CaseScores, PostProcess, RegionScore, EMPTY_HD95_MM};
use anyhow::{Context, Result};
use candle_core::Device;
use indicatif::{ProgressBar, ProgressStyle};
use mgsd_io::labels::labels_from_channels;
use mgsd_io::preprocess::{CaseView, Pipeline};
use mgsd_io::{CaseFiles, ModalitySet, Region, ACN_CHANNEL_ORDER};
use mgsd_nn::UNet3D;
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::path::Path;

/// How to evaluate.
#[derive(Debug, Clone)]
pub struct EvalSettings {
    /// Preprocessing (its `order` must be the ACN channel order).
    pub pipeline: Pipeline,
    /// Window layout and test-time augmentation.
    pub inference: Inference,
    /// The protocol in one line (table headers).
    pub description: String,
    /// The post-processed variant's threshold (`None`: the variant equals the plain scores).
    pub min_et: Option<usize>,
    /// Also compute the official BraTS 2023+ metrics (`eval --metrics brats2023|all`).
    pub official: bool,
    /// Subsets to evaluate (default: all 15).
    pub subsets: Vec<ModalitySet>,
    /// Show a progress bar.
    pub progress: bool,
}

impl EvalSettings {
    /// The settings of a protocol, all 15 subsets. The "ET < N → 0" variant uses the protocol's
    /// threshold, or the literature's 500 when the protocol has none.
    pub fn for_protocol(p: &ProtocolConfig, progress: bool) -> Self {
        EvalSettings {
            pipeline: crate::protocol::eval_pipeline(p),
            inference: crate::protocol::inference(p),
            description: crate::protocol::describe(p),
            min_et: p.min_et().or(Some(crate::metrics::RFNET_MIN_ET_VOXELS)),
            official: false,
            subsets: ModalitySet::all_nonempty().to_vec(),
            progress,
        }
    }
}

/// Where a table comes from: stated in `eval.json` and the Markdown header.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Provenance {
    /// The checkpoint evaluated.
    pub checkpoint: String,
    /// The split file, if any.
    pub split_file: Option<String>,
    /// SHA-256 of the split file's bytes.
    pub split_sha256: Option<String>,
    /// Fold of the split file.
    pub fold: Option<usize>,
    /// `test`, `val`, `train`, or `all` (every labelled case, no split).
    pub part: String,
}

/// Brain voxels a centre window left out, over the evaluated cases.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct WindowLoss {
    /// Cases with brain outside the window.
    pub cases: usize,
    /// Brain voxels outside the window, summed over cases.
    pub voxels: usize,
    /// The largest fraction of one case's brain outside the window.
    pub max_fraction: f64,
}

/// Scores of one case with one subset.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CaseResult {
    /// Case id.
    pub case: String,
    /// Subset name (`FLAIR+T1ce`, …).
    pub subset: String,
    /// WT, TC, ET.
    pub scores: CaseScores,
    /// ET with "ET < N → 0".
    pub et_post: RegionScore,
    /// The official BraTS 2023+ metrics of WT, TC, ET, if asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub official: Option<[mgsd_metrics::LesionwiseScore; 3]>,
}

/// Case-averaged scores of one subset.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SubsetRow {
    /// Subset name.
    pub subset: String,
    /// Cases averaged.
    pub cases: usize,
    /// Mean Dice of WT, TC, ET.
    pub dice: [f64; 3],
    /// Mean HD95 (mm) of WT, TC, ET.
    pub hd95: [f64; 3],
    /// Mean ET Dice and HD95 with post-processing.
    pub et_post: [f64; 2],
}

/// The whole table.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvalReport {
    /// The protocol in one line.
    #[serde(default)]
    pub protocol: String,
    /// Checkpoint, split and part (set by the caller).
    #[serde(default)]
    pub provenance: Option<Provenance>,
    /// The evaluated case ids, sorted.
    #[serde(default)]
    pub cases: Vec<String>,
    /// With a centre window: the brain it left out.
    #[serde(default)]
    pub outside_window: Option<WindowLoss>,
    /// One row per subset, in the literature's order.
    pub rows: Vec<SubsetRow>,
    /// Mean over subsets.
    pub mean: SubsetRow,
    /// Threshold of the post-processed variant.
    pub min_et: Option<usize>,
    /// Every case × subset.
    pub per_case: Vec<CaseResult>,
}

impl EvalReport {
    /// Builds the table from per-case results (rows in the order of `subsets`).
    pub fn from_cases(
        per_case: Vec<CaseResult>,
        subsets: &[ModalitySet],
        min_et: Option<usize>,
        protocol: String,
    ) -> Self {
        let rows: Vec<SubsetRow> = subsets
            .iter()
            .map(|s| {
                let name = s.to_string();
                let mine: Vec<&CaseResult> = per_case.iter().filter(|c| c.subset == name).collect();
                let n = mine.len().max(1) as f64;
                let mean =
                    |f: &dyn Fn(&CaseResult) -> f64| mine.iter().map(|c| f(c)).sum::<f64>() / n;
                SubsetRow {
                    subset: name,
                    cases: mine.len(),
                    dice: [0, 1, 2].map(|r| mean(&|c| c.scores[r].dice)),
                    hd95: [0, 1, 2].map(|r| mean(&|c| c.scores[r].hd95)),
                    et_post: [mean(&|c| c.et_post.dice), mean(&|c| c.et_post.hd95)],
                }
            })
            .collect();
        let k = rows.len().max(1) as f64;
        let avg = |f: &dyn Fn(&SubsetRow) -> f64| rows.iter().map(f).sum::<f64>() / k;
        let mean = SubsetRow {
            subset: "mean".into(),
            cases: rows.first().map_or(0, |r| r.cases),
            dice: [0, 1, 2].map(|r| avg(&|x| x.dice[r])),
            hd95: [0, 1, 2].map(|r| avg(&|x| x.hd95[r])),
            et_post: [avg(&|x| x.et_post[0]), avg(&|x| x.et_post[1])],
        };
        let mut cases: Vec<String> = per_case.iter().map(|c| c.case.clone()).collect();
        cases.sort();
        cases.dedup();
        EvalReport {
            protocol,
            provenance: None,
            cases,
            outside_window: None,
            rows,
            mean,
            min_et,
            per_case,
        }
    }

    /// What the table is: cases, part, checkpoint, split and protocol, one item per line.
    pub fn header(&self) -> String {
        let mut s = String::new();
        match &self.provenance {
            Some(p) => {
                let split = match (&p.split_file, &p.split_sha256) {
                    (Some(f), Some(h)) => {
                        format!(" of {f} (fold {}, SHA-256 {h})", p.fold.unwrap_or(0))
                    }
                    _ => String::new(),
                };
                let _ = writeln!(
                    s,
                    "{} {} cases{split}, checkpoint {}",
                    self.cases.len(),
                    p.part,
                    p.checkpoint
                );
            }
            None => {
                let _ = writeln!(s, "{} cases", self.cases.len());
            }
        }
        let _ = writeln!(s, "{}", self.protocol);
        if let Some(w) = &self.outside_window {
            if w.voxels > 0 {
                let _ = writeln!(
                    s,
                    "the centre window left out {} brain voxels in {} of {} cases (up to {:.1}% of a brain)",
                    w.voxels,
                    w.cases,
                    self.cases.len(),
                    100.0 * w.max_fraction
                );
            }
        }
        s
    }

    /// Mean Dice over subsets and regions: the validation score.
    pub fn score(&self) -> f64 {
        self.mean.dice.iter().sum::<f64>() / 3.0
    }

    /// The table as Markdown (Dice in %, HD95 in mm).
    pub fn markdown(&self) -> String {
        let post = self.min_et.map_or("ET*".to_string(), |n| format!("ET* (<{n}→0)"));
        let mut s = String::new();
        for line in self.header().lines() {
            let _ = writeln!(s, "{line}  ");
        }
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "| Modalities | Dice WT | Dice TC | Dice ET | {post} | HD95 WT | HD95 TC | HD95 ET | HD95 {post} |"
        );
        let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|---:|");
        for r in self.rows.iter().chain(std::iter::once(&self.mean)) {
            let name = if r.subset == "mean" { "**mean**".to_string() } else { r.subset.clone() };
            let _ = writeln!(
                s,
                "| {name} | {:.1} | {:.1} | {:.1} | {:.1} | {:.2} | {:.2} | {:.2} | {:.2} |",
                100.0 * r.dice[0],
                100.0 * r.dice[1],
                100.0 * r.dice[2],
                100.0 * r.et_post[0],
                r.hd95[0],
                r.hd95[1],
                r.hd95[2],
                r.et_post[1]
            );
        }
        s
    }

    /// A compact Dice-only table for the terminal.
    pub fn dice_table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "{:<20} {:>6} {:>6} {:>6}", "modalities", "WT", "TC", "ET");
        for r in self.rows.iter().chain(std::iter::once(&self.mean)) {
            let _ = writeln!(
                s,
                "{:<20} {:>6.1} {:>6.1} {:>6.1}",
                r.subset,
                100.0 * r.dice[0],
                100.0 * r.dice[1],
                100.0 * r.dice[2]
            );
        }
        s
    }

    /// The table as CSV.
    pub fn csv(&self) -> String {
        let mut s = String::from("subset,cases,dice_wt,dice_tc,dice_et,hd95_wt,hd95_tc,hd95_et,dice_et_post,hd95_et_post\n");
        for r in self.rows.iter().chain(std::iter::once(&self.mean)) {
            let _ = writeln!(
                s,
                "{},{},{:.6},{:.6},{:.6},{:.6},{:.6},{:.6},{:.6},{:.6}",
                r.subset,
                r.cases,
                r.dice[0],
                r.dice[1],
                r.dice[2],
                r.hd95[0],
                r.hd95[1],
                r.hd95[2],
                r.et_post[0],
                r.et_post[1]
            );
        }
        s
    }

    /// Per-case scores as CSV.
    pub fn per_case_csv(&self) -> String {
        let mut s = String::from("case,subset,dice_wt,dice_tc,dice_et,hd95_wt,hd95_tc,hd95_et,dice_et_post,hd95_et_post\n");
        for c in &self.per_case {
            let _ = writeln!(
                s,
                "{},{},{:.6},{:.6},{:.6},{:.6},{:.6},{:.6},{:.6},{:.6}",
                c.case,
                c.subset,
                c.scores[0].dice,
                c.scores[1].dice,
                c.scores[2].dice,
                c.scores[0].hd95,
                c.scores[1].hd95,
                c.scores[2].hd95,
                c.et_post.dice,
                c.et_post.hd95
            );
        }
        s
    }

    /// Writes `<stem>.md`, `<stem>.csv`, `<stem>.json`, `<stem>-cases.csv` and the Dice heatmap
    /// `<stem>.png` into `dir`, and `<stem>-brats2023.md`/`.csv` with the official metrics.
    ///
    /// # Errors
    /// I/O errors naming the file.
    pub fn write(&self, dir: &Path, stem: &str) -> Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let json = serde_json::to_string_pretty(self)?;
        for (name, text) in [
            (format!("{stem}.md"), self.markdown()),
            (format!("{stem}.csv"), self.csv()),
            (format!("{stem}.json"), json),
            (format!("{stem}-cases.csv"), self.per_case_csv()),
        ] {
            let p = dir.join(name);
            std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))?;
        }
        if let Some((md, csv)) = crate::eval_tables::official_tables(self) {
            for (p, text) in
                [(format!("{stem}-brats2023.md"), md), (format!("{stem}-brats2023.csv"), csv)]
            {
                let p = dir.join(p);
                std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))?;
            }
        }
        crate::eval_tables::dice_heatmap(self).save_png(&dir.join(format!("{stem}.png")))
    }
}

/// Evaluates `unet` on `cases` for every subset of `settings`.
///
/// # Errors
/// A case that cannot be loaded or has no label, naming it; tensor errors.
pub fn evaluate(
    unet: &UNet3D,
    cases: &[CaseFiles],
    store: &CaseStore,
    settings: &EvalSettings,
    device: &Device,
) -> Result<EvalReport> {
    let total = (cases.len() * settings.subsets.len()) as u64;
    let bar = if settings.progress { ProgressBar::new(total) } else { ProgressBar::hidden() };
    bar.set_style(
        ProgressStyle::with_template(
            "{prefix:>10} [{bar:30}] {pos}/{len} case×subset {elapsed_precise} ETA {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_prefix("evaluate");
    let mut per_case = Vec::with_capacity(total as usize);
    let centre = matches!(settings.inference.window, Window::Whole);
    let mut loss = WindowLoss::default();
    for files in cases {
        let case = store.load(files)?;
        let truth = case
            .label
            .as_ref()
            .with_context(|| format!("case {} has no label file to score against", files.id))?;
        let grid = case.grid().with_context(|| format!("case {} has no image", files.id))?;
        let spacing = grid.spacing.map(f64::from);
        let view = CaseView::from_case(&case, &settings.pipeline.order)
            .with_context(|| format!("case {}", files.id))?;
        let sample = settings
            .pipeline
            .eval(&view)
            .with_context(|| format!("preprocessing case {}", files.id))?;
        if centre {
            let (outside, brain) = crate::protocol::brain_outside_window(&view, &sample.record)?;
            if outside > 0 {
                loss.cases += 1;
                loss.voxels += outside;
                loss.max_fraction = loss.max_fraction.max(outside as f64 / brain.max(1) as f64);
            }
        }
        for subset in &settings.subsets {
            let mask = subset.channel_mask(&ACN_CHANNEL_ORDER);
            let probs = probabilities(unet, &sample.image, mask, settings.inference, device)
                .with_context(|| format!("segmenting case {} with {subset}", files.id))?;
            let labels = labels_from_channels(&probs)?;
            let full = sample.record.uncrop(&labels, 1)?;
            let scores = score_case(&full, truth, grid.shape, spacing, PostProcess::NONE);
            let et_post = match settings.min_et {
                // Below the threshold the prediction's ET is empty: score it as such.
                Some(m) if full.iter().filter(|&&l| Region::ET.contains(l)).count() < m => {
                    if truth.iter().any(|&l| Region::ET.contains(l)) {
                        RegionScore { dice: 0.0, hd95: EMPTY_HD95_MM }
                    } else {
                        RegionScore { dice: 1.0, hd95: 0.0 }
                    }
                }
                _ => scores[2],
            };
            let official = settings
                .official
                .then(|| mgsd_metrics::lesionwise::score_case(&full, truth, grid.shape, spacing))
                .transpose()?;
            per_case.push(CaseResult {
                case: files.id.clone(),
                subset: subset.to_string(),
                scores,
                et_post,
                official,
            });
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    if loss.voxels > 0 {
        tracing::warn!(
            "the centre window left out {} brain voxels in {} of {} cases (up to {:.1}% of a brain); `--window sliding` covers the whole brain",
            loss.voxels,
            loss.cases,
            cases.len(),
            100.0 * loss.max_fraction
        );
    }
    let mut report = EvalReport::from_cases(
        per_case,
        &settings.subsets,
        settings.min_et,
        settings.description.clone(),
    );
    report.outside_window = centre.then_some(loss);
    Ok(report)
}
