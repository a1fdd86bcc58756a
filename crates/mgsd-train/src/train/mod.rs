//! The training loop (MGSD-SPEC §3): sampler → MGSD objective → backward → Adam (segmenter and
//! heads) → EMA teacher → discriminator step with its own Adam → `metrics.csv` → validation on
//! all 15 subsets every N epochs → best / last checkpoints.
//!
//! # Run directory
//! `config.toml` (resolved), `run.json` (seed, git commit, versions), `metrics.csv` (one row per
//! step with every loss term; one per validation subset; one per epoch with the data-wait time),
//! `curves.png`, `last.safetensors`, `best.safetensors`, `log.txt` is left to the caller.
//!
//! # Exact resume
//! Every random draw of step `s` derives from `(seed, s)` (mask, dropout seeds) or from
//! `(seed, epoch, sample)` (augmentation); checkpoints hold the weights, the EMA teacher, both
//! optimisers' moments and step counters. A run resumed from a checkpoint at step `k` computes
//! the same losses at steps `k+1, …` as the uninterrupted run, bit for bit on CPU.
//!
//! # Layout
//! [`train`] opens a [`trainer::Trainer`] and runs it. The trainer's parts each do one thing:
//! `trainer.rs` (the epoch loop, one step, the end of an epoch, validation), `state.rs`
//! (weights and optimisers: fresh, resumed, saved), `metrics_log.rs` (`metrics.csv`,
//! `curves.png`), `sources.rs` (cases and splits).
//!
//! # Several processes
//! [`train_with`] runs the same loop as one rank of a [`Collective`]: the epoch's samples are
//! shared out by rank, the gradients averaged over ranks before each step (`[train]
//! accumulate` does the same over micro-batches in one process), and only rank 0 writes the run
//! directory. See [`crate::distributed`].
//!
//! # Faults
//! A non-finite loss stops the run before the step is applied, with a message naming the step
//! and the terms; the last checkpoint on disk (from the end of the previous epoch) is kept.
//! An interrupt (Ctrl-C sets [`RunOptions::stop`]) or the time budget saves `last.safetensors`
//! at the current step and returns.

mod metrics_log;
mod sources;
mod state;
mod trainer;

pub use metrics_log::{draw_curves, METRICS_HEADER};
pub use sources::resolve_data;
pub use state::fresh_objective;

use crate::config::Config;
use crate::data::{Loader, Splits};
use crate::distributed::{Collective, SingleProcess};
use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use mgsd_io::labels::target_channels;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// File names inside a run directory.
pub mod files {
    /// Resolved configuration.
    pub const CONFIG: &str = "config.toml";
    /// Seed, git commit, versions.
    pub const RUN: &str = "run.json";
    /// Per-step and validation metrics.
    pub const METRICS: &str = "metrics.csv";
    /// Training curves.
    pub const CURVES: &str = "curves.png";
    /// The latest checkpoint.
    pub const LAST: &str = "last.safetensors";
    /// The checkpoint with the best validation score.
    pub const BEST: &str = "best.safetensors";
}

/// Options that are not part of the configuration (they do not change the trajectory).
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Continue the run in this directory from its `last.safetensors`.
    pub resume: Option<PathBuf>,
    /// Set by the Ctrl-C handler: save and stop at the next step.
    pub stop: Arc<AtomicBool>,
    /// Show progress bars.
    pub progress: bool,
    /// Fault injection for tests: the loss of this step (1-based) is treated as NaN.
    pub inject_nan_at: Option<u64>,
    /// Fault injection for tests: stop after this many steps (global) WITHOUT saving, as if the
    /// process had been killed.
    pub kill_after: Option<u64>,
    /// For tests: raise [`RunOptions::stop`] after this many steps (global), as a Ctrl-C would.
    pub interrupt_after: Option<u64>,
    /// Fault injection for tests: this process's step N (1-based) fails with an error, as a
    /// crashing rank would.
    pub fail_at: Option<u64>,
}

/// Why training ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// All epochs done.
    Finished,
    /// Interrupted (Ctrl-C); saved.
    Interrupted,
    /// `max_minutes` reached; saved.
    TimeBudget,
    /// Simulated kill ([`RunOptions::kill_after`]); nothing saved.
    Killed,
}

/// What a training run did.
#[derive(Debug)]
pub struct TrainOutcome {
    /// The run directory.
    pub run_dir: PathBuf,
    /// Global steps done.
    pub steps: u64,
    /// Why it ended.
    pub reason: StopReason,
    /// Loss terms of every step run by THIS process, by step (1-based).
    pub losses: Vec<(u64, BTreeMap<String, f64>)>,
    /// Best validation score (mean Dice), if validated.
    pub best_score: Option<f64>,
    /// Seconds spent training (this process).
    pub seconds: f64,
    /// Seconds the trainer waited for data (this process).
    pub data_wait: f64,
    /// The held-out cases (for the final evaluation).
    pub splits: Splits,
    /// Checksums of the final student, teacher, discriminator and optimiser state (identical on
    /// every rank of a data-parallel run).
    pub checksums: Vec<(String, f64)>,
}

/// `git rev-parse HEAD`, or "unknown".
pub fn git_commit() -> String {
    std::process::Command::new("git")
        .args(["rev-parse", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

/// Steps per epoch of a configuration with `n_train` training cases.
pub fn steps_per_epoch(cfg: &Config, n_train: usize) -> u64 {
    cfg.train.steps_per_epoch.unwrap_or_else(|| n_train.div_ceil(cfg.train.batch).max(1)) as u64
}

/// The loader's next `batch` samples as input `(B, 4, patch)` and target `(B, 3, patch)`
/// tensors (the target channels ED, NCR/NET, ET of MGSD-SPEC §1).
///
/// # Errors
/// A loader that ended early or failed to prepare a sample; tensor errors.
pub fn next_batch(
    loader: &mut Loader,
    batch: usize,
    patch: [usize; 3],
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    let [pd, ph, pw] = patch;
    let mut xs = Vec::with_capacity(batch * 4 * pd * ph * pw);
    let mut ys = Vec::with_capacity(batch * 3 * pd * ph * pw);
    for _ in 0..batch {
        let s = loader.next_sample().context("the data loader ended early")??;
        xs.extend_from_slice(&s.image);
        ys.extend(target_channels(&s.labels));
    }
    let x = Tensor::from_vec(xs, (batch, 4, pd, ph, pw), device)?;
    let y = Tensor::from_vec(ys, (batch, 3, pd, ph, pw), device)?;
    Ok((x, y))
}

/// Trains according to `cfg` (or resumes `opts.resume`).
///
/// # Errors
/// Bad data, a mismatched checkpoint or configuration, a non-finite loss (after which the last
/// checkpoint on disk is the previous good one), I/O errors — each naming the file or step.
pub fn train(cfg: &Config, opts: &RunOptions) -> Result<TrainOutcome> {
    train_with(cfg, opts, Arc::new(SingleProcess))
}

/// [`train`] as one rank of `comm` (data parallelism: see [`crate::distributed`]). Every rank
/// calls it with the same configuration; rank 0 writes the run directory. An error on this
/// rank is passed to the others ([`Collective::abort`]) before it is returned.
///
/// # Errors
/// As [`train`], and any other rank's failure.
pub fn train_with(
    cfg: &Config,
    opts: &RunOptions,
    comm: Arc<dyn Collective>,
) -> Result<TrainOutcome> {
    let result = trainer::Trainer::open(cfg, opts, comm.clone()).and_then(trainer::Trainer::run);
    if let Err(e) = &result {
        comm.abort(&format!("rank {}: {e:#}", comm.rank()));
    }
    result
}
