//! `predict --input DIR --output OUT_DIR`: every patient of a folder (case folders in any
//! supported layout, or loose `<id>_<modality>.nii.gz` files grouped by id), one progress bar,
//! one `summary.csv`, and a bad case never stops the others — it is listed at the end.
//!
//! Per case `<id>`: `OUT_DIR/<id>.nii.gz` (labels on the case's reference grid), with
//! `--preview DIR` a `DIR/<id>.png`, with `--probabilities DIR` a `DIR/<id>/prob_*.nii.gz`.
//! Each case's files are written under temporary names and renamed only when the whole case
//! succeeded, so a failed case leaves nothing behind.

use crate::outputs::Outputs;
use crate::predict::{segment, write_segmentation, OutputPaths, Segmenter};
use crate::protocol::ProtocolArgs;
use crate::scans::GridOptions;
use anyhow::{Context, Result};
use candle_core::Device;
use indicatif::{ProgressBar, ProgressStyle};
use mgsd_io::Modality;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// File name of the table written into the output folder.
pub const SUMMARY: &str = "summary.csv";

/// What to segment and where.
#[derive(Debug, Clone)]
pub struct BatchOptions {
    /// Checkpoint.
    pub checkpoint: PathBuf,
    /// Folder of patients.
    pub input: PathBuf,
    /// Output folder (created).
    pub output: PathBuf,
    /// Modalities to use; each must be present in every case.
    pub modalities: Option<Vec<Modality>>,
    /// Folder for per-case probability maps.
    pub probabilities: Option<PathBuf>,
    /// Folder for per-case previews.
    pub previews: Option<PathBuf>,
    /// Protocol overrides.
    pub protocol: ProtocolArgs,
    /// Grids: resampling, reference, isotropic spacing.
    pub grid: GridOptions,
    /// Show a progress bar.
    pub progress: bool,
}

/// One line of `summary.csv`.
#[derive(Debug, Clone, PartialEq)]
pub struct CaseRow {
    /// Case id.
    pub case: String,
    /// Modalities used (e.g. `FLAIR+T1ce`), empty when the case failed before loading.
    pub modalities: String,
    /// Whole tumour, tumour core, enhancing tumour (ml); `None` for a failed case.
    pub volumes_ml: Option<[f64; 3]>,
    /// Warnings.
    pub warnings: Vec<String>,
    /// Wall-clock seconds spent on the case.
    pub seconds: f64,
    /// Why the case failed.
    pub error: Option<String>,
}

/// What a batch did.
#[derive(Debug, Clone)]
pub struct BatchReport {
    /// One row per case, sorted by id.
    pub rows: Vec<CaseRow>,
    /// The summary table written.
    pub summary: PathBuf,
    /// Files of the input folder that were skipped, and why.
    pub skipped: Vec<String>,
}

impl BatchReport {
    /// The rows of the cases that failed.
    pub fn failures(&self) -> Vec<&CaseRow> {
        self.rows.iter().filter(|r| r.error.is_some()).collect()
    }
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// `summary.csv`'s text: `case,modalities,wt_ml,tc_ml,et_ml,warnings,seconds,error`.
pub fn summary_csv(rows: &[CaseRow]) -> String {
    let mut out = String::from("case,modalities,wt_ml,tc_ml,et_ml,warnings,seconds,error\n");
    for r in rows {
        let vols = match r.volumes_ml {
            Some(v) => v.map(|x| format!("{x:.3}")),
            None => [String::new(), String::new(), String::new()],
        };
        let _ = writeln!(
            out,
            "{},{},{},{},{},{},{:.2},{}",
            csv_field(&r.case),
            csv_field(&r.modalities),
            vols[0],
            vols[1],
            vols[2],
            csv_field(&r.warnings.join(" | ")),
            r.seconds,
            csv_field(r.error.as_deref().unwrap_or(""))
        );
    }
    out
}

/// The outputs of case `id`.
fn case_paths(opts: &BatchOptions, id: &str) -> OutputPaths {
    OutputPaths {
        labels: opts.output.join(format!("{id}.nii.gz")),
        probabilities: opts.probabilities.as_ref().map(|d| d.join(id)),
        preview: opts.previews.as_ref().map(|d| d.join(format!("{id}.png"))),
    }
}

/// Segments every case under `opts.input` (see the module docs). Returns the report whether
/// or not cases failed; the caller decides the exit code.
///
/// # Errors
/// Only what stops the whole batch: an unreadable input folder or one without cases, an output
/// folder that cannot be written, an unreadable checkpoint.
pub fn predict_batch(opts: &BatchOptions, device: &Device) -> Result<BatchReport> {
    let found = mgsd_io::discover_batch(&opts.input)
        .with_context(|| format!("looking for cases in {}", opts.input.display()))?;
    for p in &found.problems {
        tracing::warn!("{p}");
    }
    // Every output folder is created and checked before any work.
    let summary = opts.output.join(SUMMARY);
    let summary_out = Outputs::plan(std::slice::from_ref(&summary), &[])?;
    for dir in [&opts.previews, &opts.probabilities].into_iter().flatten() {
        Outputs::plan(&[dir.join("write-check")], &[])?;
    }
    let segmenter = Segmenter::load(&opts.checkpoint, &opts.protocol, device)?;
    tracing::info!(
        "{} cases in {}; {}",
        found.cases.len(),
        opts.input.display(),
        segmenter.description
    );
    let bar = if opts.progress {
        ProgressBar::new(found.cases.len() as u64)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} cases {msg} [{elapsed} < {eta}]")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut rows = Vec::with_capacity(found.cases.len());
    for files in &found.cases {
        bar.set_message(files.id.clone());
        let t = Instant::now();
        let paths = case_paths(opts, &files.id);
        let result = (|| -> Result<_> {
            let outputs = Outputs::plan(&paths.files(), &[])?;
            let s = segment(
                &segmenter,
                files,
                opts.modalities.as_deref(),
                &opts.grid,
                paths.probabilities.is_some(),
                device,
            )?;
            write_segmentation(&s, &paths, &outputs)?;
            outputs.commit()?;
            Ok(s)
        })();
        let seconds = t.elapsed().as_secs_f64();
        let row = match result {
            Ok(s) => CaseRow {
                case: files.id.clone(),
                modalities: s.modalities.to_string(),
                volumes_ml: Some(s.volumes_ml()),
                warnings: s.warnings.clone(),
                seconds,
                error: None,
            },
            Err(e) => {
                let message = format!("{e:#}");
                bar.suspend(|| tracing::error!("case {} failed: {message}", files.id));
                CaseRow {
                    case: files.id.clone(),
                    modalities: String::new(),
                    volumes_ml: None,
                    warnings: Vec::new(),
                    seconds,
                    error: Some(message),
                }
            }
        };
        rows.push(row);
        bar.inc(1);
    }
    bar.finish_and_clear();
    std::fs::write(summary_out.staging(&summary)?, summary_csv(&rows))
        .with_context(|| format!("writing {}", summary.display()))?;
    summary_out.commit()?;
    Ok(BatchReport { rows, summary, skipped: found.problems })
}

/// True when `output` names a folder for a batch rather than one label file: it exists as a
/// folder, or its name does not end in `.nii` / `.nii.gz`.
pub fn is_batch_output(output: &Path) -> bool {
    let name = output.file_name().map(|n| n.to_string_lossy().to_lowercase()).unwrap_or_default();
    output.is_dir() || !(name.ends_with(".nii") || name.ends_with(".nii.gz"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_what_needs_quoting() {
        let rows = [CaseRow {
            case: "P1".into(),
            modalities: "FLAIR+T1".into(),
            volumes_ml: Some([1.0, 0.5, 0.25]),
            warnings: vec!["a, b".into(), "c".into()],
            seconds: 1.234,
            error: None,
        }];
        assert_eq!(
            summary_csv(&rows),
            "case,modalities,wt_ml,tc_ml,et_ml,warnings,seconds,error\n\
             P1,FLAIR+T1,1.000,0.500,0.250,\"a, b | c\",1.23,\n"
        );
    }

    #[test]
    fn batch_or_single_from_the_output_name() {
        assert!(!is_batch_output(Path::new("out/seg.nii.gz")));
        assert!(!is_batch_output(Path::new("seg.NII")));
        assert!(is_batch_output(Path::new("out/segmentations")));
    }
}
