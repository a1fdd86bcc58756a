//! Verification of every case of a dataset folder, producing the manifest's case records.
//!
//! A case passes when it has all four modalities, every file decodes (`CaseFiles::load`),
//! images and label share one grid, and every label value is defined by the layout's label
//! scheme. Cases without a label are accepted (MSD `imagesTs`, BraTS validation sets) and
//! recorded with `label: null`. Every case is checked before the verdict, so one run reports
//! all broken cases at once.

use crate::manifest::{relative_path, FileRecord, ManifestCase, ManifestImages};
use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use mgsd_io::{CaseFiles, Dataset, ImageSource, ModalitySet};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// How many broken cases an error message lists before "… and N more".
const MAX_LISTED: usize = 20;

/// Verifies every case of `dataset` (whose files lie under `dataset.root`) and returns the
/// manifest records, sorted by case id.
///
/// `display_root` replaces `dataset.root` in error messages (e.g. the archive name while the
/// files still lie in a staging folder that will be deleted).
///
/// # Errors
/// If the dataset holds no case, or any case fails; the message lists the failing cases.
pub fn verify_cases(
    dataset: &Dataset,
    display_root: &str,
    progress: bool,
) -> Result<Vec<ManifestCase>> {
    if dataset.cases.is_empty() {
        bail!("{}: no cases found", display_root);
    }
    let root = dataset.root.as_path();
    let bar = if progress {
        let bar = ProgressBar::new(dataset.cases.len() as u64);
        if let Ok(style) =
            ProgressStyle::with_template("verifying {pos}/{len} cases [{wide_bar}] eta {eta}")
        {
            bar.set_style(style);
        }
        bar
    } else {
        ProgressBar::hidden()
    };
    let results: Vec<Mutex<Option<Result<ManifestCase>>>> =
        dataset.cases.iter().map(|_| Mutex::new(None)).collect();
    let next = AtomicUsize::new(0);
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 4);
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(case) = dataset.cases.get(i) else {
                    break;
                };
                let result = verify_case(root, case);
                if let Ok(mut slot) = results[i].lock() {
                    *slot = Some(result);
                }
                bar.inc(1);
            });
        }
    });
    bar.finish_and_clear();

    let mut cases = Vec::with_capacity(results.len());
    let mut failures = Vec::new();
    for (slot, case) in results.into_iter().zip(&dataset.cases) {
        let result = slot
            .into_inner()
            .ok()
            .flatten()
            .unwrap_or_else(|| Err(anyhow::anyhow!("was not checked")));
        match result {
            Ok(record) => cases.push(record),
            Err(e) => {
                failures.push(format!("case {}: {}", case.id, describe(&e, root, display_root)))
            }
        }
    }
    if !failures.is_empty() {
        let total = failures.len();
        let mut listed: Vec<String> =
            failures.into_iter().take(MAX_LISTED).map(|f| format!("  - {f}")).collect();
        if total > MAX_LISTED {
            listed.push(format!("  … and {} more", total - MAX_LISTED));
        }
        bail!(
            "{total} of {} cases failed verification:\n{}",
            dataset.cases.len(),
            listed.join("\n")
        );
    }
    cases.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(cases)
}

/// The error chain as one line, with the staging root replaced by `display_root`.
fn describe(error: &anyhow::Error, root: &Path, display_root: &str) -> String {
    relabel(&format!("{error:#}"), root, display_root)
}

/// `text` with every mention of the folder `root` replaced by `label` (e.g. the archive name
/// instead of a staging folder that is about to disappear, or `.` for a path relative to the
/// dataset root).
pub fn relabel(text: &str, root: &Path, label: &str) -> String {
    let root_text = root.display().to_string();
    if root_text.is_empty() {
        return text.to_string();
    }
    let with_slash = if label == "." { String::new() } else { format!("{label}/") };
    text.replace(&format!("{root_text}/"), &with_slash).replace(&root_text, label)
}

/// Checks one case and builds its record (paths relative to `root`).
///
/// # Errors
/// Missing modalities (named), unreadable files, mismatched grids, invalid labels.
pub fn verify_case(root: &Path, case: &CaseFiles) -> Result<ManifestCase> {
    let present = case.modalities();
    if present != ModalitySet::FULL {
        let missing: Vec<String> = mgsd_io::Modality::ALL
            .iter()
            .filter(|m| !present.contains(**m))
            .map(|m| m.to_string())
            .collect();
        let folder = case
            .files()
            .first()
            .and_then(|f| f.parent())
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        bail!("missing modality {} (no such file in {folder})", missing.join(", "));
    }
    let loaded = case.load().context("loading")?;
    let grid = loaded.grid().context("no image was loaded")?;
    let (shape, spacing) = (grid.shape, grid.spacing);
    let record =
        |p: &Path| -> Result<FileRecord> { FileRecord::from_file(root, &relative_path(root, p)?) };
    let images = match &case.images {
        ImageSource::PerModality(files) => ManifestImages::PerModality(
            files.iter().map(|(m, p)| Ok((*m, record(p)?))).collect::<Result<BTreeMap<_, _>>>()?,
        ),
        ImageSource::Stacked { path, order } => {
            ManifestImages::Stacked { file: record(path)?, order: order.clone() }
        }
    };
    let label = case.label.as_deref().map(record).transpose()?;
    Ok(ManifestCase {
        id: case.id.clone(),
        modalities: present.iter().collect(),
        shape,
        spacing,
        images,
        label,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relabel_replaces_the_root() {
        let root = Path::new("/d/.staging-1-x/top");
        let text = "case A (/d/.staging-1-x/top/HGG/A): missing; /d/.staging-1-x/top is odd";
        assert_eq!(
            relabel(text, root, "a.zip:top"),
            "case A (a.zip:top/HGG/A): missing; a.zip:top is odd"
        );
        assert_eq!(relabel(text, root, "."), "case A (HGG/A): missing; . is odd");
    }
}
