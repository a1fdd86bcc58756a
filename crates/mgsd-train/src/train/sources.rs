//! Where a run's cases come from: a manifest, a dataset folder (with a split file or a seeded
//! split) or generated synthetic cases, resolved into [`Splits`].

use crate::config::Config;
use crate::data::{read_manifest, split_random, split_with_file, Splits};
use anyhow::{bail, Context, Result};
use std::path::Path;
use std::time::Instant;

/// Resolves the data source of `cfg` into splits. Synthetic cases are generated under
/// `run_dir` (once; reused on resume).
///
/// # Errors
/// Missing or invalid data, naming the file or folder.
pub fn resolve_data(cfg: &Config, run_dir: &Path) -> Result<Splits> {
    let d = &cfg.data;
    if let Some(s) = &d.synthetic {
        let base = if s.dir.is_absolute() { s.dir.clone() } else { run_dir.join(&s.dir) };
        return synthetic_splits(s, &base);
    }
    let cases = if let Some(m) = &d.manifest {
        read_manifest(m)?
    } else if let Some(root) = &d.root {
        let ds = mgsd_io::discover(root)
            .with_context(|| format!("looking for cases in {}", root.display()))?;
        for p in &ds.problems {
            tracing::warn!("{}: {p}", root.display());
        }
        ds.cases
    } else {
        bail!("no data source configured");
    };
    if cases.is_empty() {
        bail!("the dataset holds no case");
    }
    let splits = match &d.split {
        Some(path) => split_with_file(&cases, path, d.fold)?,
        None => split_random(&cases, d.val_fraction, d.test_fraction, cfg.train.seed),
    };
    if splits.train.is_empty() {
        bail!("no training case after splitting");
    }
    Ok(splits)
}

/// The synthetic cases of a run: one seeded dataset of `train + val + test` cases under
/// `base/cases` (generated once, reused on resume), split by index, so every case id is
/// distinct and the three parts never share a case.
///
/// # Errors
/// Generation or I/O failures, naming the folder.
fn synthetic_splits(s: &crate::config::SyntheticConfig, base: &Path) -> Result<Splits> {
    let total = s.train_cases + s.val_cases + s.test_cases;
    let root = base.join("cases");
    let marker = root.join(".complete");
    let complete = std::fs::read_to_string(&marker).is_ok_and(|t| t.trim() == total.to_string());
    if !complete {
        if root.exists() {
            std::fs::remove_dir_all(&root)
                .with_context(|| format!("clearing {}", root.display()))?;
        }
        let t = Instant::now();
        let mut sc = mgsd_io::SynthConfig::new(s.seed, s.shape);
        if let Some([lo, hi]) = s.tumour_radius_mm {
            sc.tumour.edema_radius_mm = (lo, hi);
        }
        sc.tumour.patchy_enhancement = s.patchy_enhancement;
        mgsd_io::synth::write_dataset(&root, total, &sc)
            .with_context(|| format!("generating synthetic cases in {}", root.display()))?;
        std::fs::write(&marker, total.to_string())
            .with_context(|| format!("writing {}", marker.display()))?;
        tracing::info!(
            "generated {total} synthetic cases {:?} in {:.1}s",
            s.shape,
            t.elapsed().as_secs_f64()
        );
    }
    let mut cases = mgsd_io::discover(&root)
        .with_context(|| format!("reading synthetic cases in {}", root.display()))?
        .cases;
    if cases.len() != total {
        bail!("{}: expected {total} synthetic cases, found {}", root.display(), cases.len());
    }
    cases.sort_by(|a, b| a.id.cmp(&b.id));
    let test = cases.split_off(s.train_cases + s.val_cases);
    let val = cases.split_off(s.train_cases);
    Ok(Splits { train: cases, val, test })
}
