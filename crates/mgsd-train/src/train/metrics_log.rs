//! `metrics.csv` — one row per step with every loss term, one per validation subset, one per
//! epoch with its time and data wait — and `curves.png`, redrawn from it.

use super::files;
use crate::eval::EvalReport;
use crate::plot::{curves, Series};
use anyhow::{Context, Result};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// Columns of `metrics.csv`.
pub const METRICS_HEADER: &str = "kind,step,epoch,lr,mask,sup_full,sup_miss,image,feature,modality,adv_gen,total,d_loss,subset,dice_wt,dice_tc,dice_et,hd95_wt,hd95_tc,hd95_et,seconds,wait_s";

/// Number of columns of [`METRICS_HEADER`].
fn columns() -> usize {
    METRICS_HEADER.split(',').count()
}

/// The open `metrics.csv` of a run, appended to.
pub(super) struct MetricsLog {
    path: PathBuf,
    out: BufWriter<File>,
}

impl MetricsLog {
    /// Starts a new file with the header.
    pub fn create(run_dir: &Path) -> Result<()> {
        let path = run_dir.join(files::METRICS);
        std::fs::write(&path, format!("{METRICS_HEADER}\n"))
            .with_context(|| format!("writing {}", path.display()))
    }

    /// Opens the run's file for appending.
    pub fn append(run_dir: &Path) -> Result<MetricsLog> {
        let path = run_dir.join(files::METRICS);
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        Ok(MetricsLog { path, out: BufWriter::new(file) })
    }

    fn row(&mut self, fields: &[String]) -> Result<()> {
        writeln!(self.out, "{}", fields.join(","))
            .with_context(|| format!("writing {}", self.path.display()))
    }

    /// One training step: its loss terms (by name), mask and duration.
    pub fn step(
        &mut self,
        step: u64,
        epoch: usize,
        lr: f64,
        mask: &str,
        vals: &BTreeMap<String, f64>,
        seconds: f64,
    ) -> Result<()> {
        let get = |k: &str| vals.get(k).map_or(String::new(), |v| v.to_string());
        let mut row = vec![String::new(); columns()];
        row[0] = "train".into();
        row[1] = step.to_string();
        row[2] = epoch.to_string();
        row[3] = lr.to_string();
        row[4] = mask.to_string();
        for (i, k) in
            ["sup_full", "sup_miss", "image", "feature", "modality", "adv_gen", "total", "d_loss"]
                .iter()
                .enumerate()
        {
            row[5 + i] = get(k);
        }
        row[20] = format!("{seconds:.4}");
        self.row(&row)
    }

    /// One row per subset of a validation table.
    pub fn validation(&mut self, step: u64, epoch: usize, report: &EvalReport) -> Result<()> {
        for r in &report.rows {
            let mut row = vec![String::new(); columns()];
            row[0] = "val".into();
            row[1] = step.to_string();
            row[2] = epoch.to_string();
            row[13] = r.subset.clone();
            for k in 0..3 {
                row[14 + k] = r.dice[k].to_string();
                row[17 + k] = r.hd95[k].to_string();
            }
            self.row(&row)?;
        }
        Ok(())
    }

    /// The end of an epoch: its duration and the time spent waiting for data.
    pub fn epoch(&mut self, step: u64, epoch: usize, lr: f64, secs: f64, wait: f64) -> Result<()> {
        let mut row = vec![String::new(); columns()];
        row[0] = "epoch".into();
        row[1] = step.to_string();
        row[2] = epoch.to_string();
        row[3] = lr.to_string();
        row[20] = format!("{secs:.3}");
        row[21] = format!("{wait:.3}");
        self.row(&row)
    }

    /// Flushes to disk.
    pub fn flush(&mut self) -> Result<()> {
        self.out.flush().with_context(|| format!("writing {}", self.path.display()))
    }
}

/// Keeps the rows of `metrics.csv` up to `step` (a resumed run redoes the later ones).
pub(super) fn truncate_metrics(path: &Path, step: u64) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else { return Ok(()) };
    let mut out = String::new();
    for (i, line) in text.lines().enumerate() {
        let keep = i == 0
            || line
                .split(',')
                .nth(1)
                .and_then(|s| s.parse::<u64>().ok())
                .is_some_and(|s| s <= step);
        if keep {
            out.push_str(line);
            out.push('\n');
        }
    }
    std::fs::write(path, out).with_context(|| format!("rewriting {}", path.display()))
}

/// Redraws `curves.png` from `metrics.csv`.
///
/// # Errors
/// I/O errors naming the file.
pub fn draw_curves(run_dir: &Path) -> Result<()> {
    let path = run_dir.join(files::METRICS);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or("").split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name);
    let names = [
        "total", "sup_full", "sup_miss", "image", "feature", "modality", "adv_gen", "d_loss", "lr",
    ];
    let mut series: Vec<Series> =
        names.iter().map(|n| Series { name: n.to_string(), points: vec![] }).collect();
    let mut val = Series { name: "val mean dice".into(), points: vec![] };
    let mut val_acc: BTreeMap<u64, (f64, usize)> = BTreeMap::new();
    for line in lines {
        let f: Vec<&str> = line.split(',').collect();
        let get = |n: &str| col(n).and_then(|i| f.get(i)).and_then(|s| s.parse::<f64>().ok());
        let Some(step) = get("step") else { continue };
        match f.first() {
            Some(&"train") => {
                for (s, n) in series.iter_mut().zip(names) {
                    if let Some(v) = get(n) {
                        s.points.push((step, v));
                    }
                }
            }
            Some(&"val") => {
                if let (Some(a), Some(b), Some(c)) =
                    (get("dice_wt"), get("dice_tc"), get("dice_et"))
                {
                    let e = val_acc.entry(step as u64).or_default();
                    e.0 += (a + b + c) / 3.0;
                    e.1 += 1;
                }
            }
            _ => {}
        }
    }
    val.points = val_acc.into_iter().map(|(s, (v, n))| (s as f64, v / n as f64)).collect();
    series.retain(|s| !s.points.is_empty());
    if !val.points.is_empty() {
        series.push(val);
    }
    curves(&series).save_png(&run_dir.join(files::CURVES))
}
