//! The trainer: a run directory, its data and its [`State`], driven epoch by epoch.
//!
//! [`Trainer::open`] prepares everything (device, run directory, splits, fresh or resumed
//! state); [`Trainer::run`] loops over epochs; [`Trainer::step`] is one optimiser step (and
//! the only place that touches the model's arithmetic); [`Trainer::end_epoch`] logs, validates
//! and checkpoints.
//!
//! A data-parallel run is the same loop on every rank of a [`Collective`]: each rank loads its
//! own micro-batches ([`Sharding`]), the step averages the gradients over ranks, stop decisions
//! are taken together, validation is split over ranks, and only rank 0 writes files.

use super::metrics_log::{draw_curves, truncate_metrics, MetricsLog};
use super::sources::resolve_data;
use super::state::{sampler_mode, State};
use super::{files, git_commit, next_batch, steps_per_epoch, RunOptions, StopReason, TrainOutcome};
use crate::config::{open_device, parse_device, set_precision, Config};
use crate::data::{mix, stream, CaseStore, Loader, SampleSource, Splits};
use crate::distributed::collective::{any_rank, barrier, check_agreement};
use crate::distributed::evaluate::evaluate_across_ranks;
use crate::distributed::gradients::GradientSum;
use crate::distributed::{Collective, Sharding};
use crate::eval::EvalSettings;
use crate::model::loss_weights_at;
use crate::optim::poly_lr;
use crate::protocol::{check_patch_fits, train_pipeline};
use anyhow::{bail, Context, Result};
use candle_core::Device;
use candle_core::{DType, Tensor};
use indicatif::{ProgressBar, ProgressStyle};
use mgsd_distill::{MaskSampler, MaskSampling, ModalityMask};
use mgsd_io::ModalitySet;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A training run in progress.
pub(super) struct Trainer<'a> {
    cfg: &'a Config,
    opts: &'a RunOptions,
    run_dir: PathBuf,
    device: Device,
    splits: Splits,
    store: Arc<CaseStore>,
    source: Arc<SampleSource>,
    /// The ranks this run trains with (one process: [`crate::distributed::SingleProcess`]).
    comm: Arc<dyn Collective>,
    /// This rank's micro-batches of each step.
    shard: Sharding,
    /// Optimiser steps per epoch.
    spe: u64,
    mode: MaskSampling,
    st: State,
    /// `metrics.csv`, on rank 0 only.
    metrics: Option<MetricsLog>,
    started: Instant,
    /// Loss terms of every step this process ran.
    losses: Vec<(u64, BTreeMap<String, f64>)>,
    /// Seconds waited for data, this process.
    waited: f64,
}

/// What one step asks of the loop.
enum AfterStep {
    Continue,
    Stop(StopReason),
}

impl<'a> Trainer<'a> {
    /// Opens the device, the run directory and the data, and creates or restores the state.
    ///
    /// # Errors
    /// A run directory that already holds a run (without `resume`), a bad device or precision
    /// (before anything is written), bad data, a mismatched checkpoint.
    pub fn open(cfg: &'a Config, opts: &'a RunOptions, comm: Arc<dyn Collective>) -> Result<Self> {
        let started = Instant::now();
        let root = comm.is_root();
        let run_dir = opts.resume.clone().unwrap_or_else(|| cfg.run.dir.clone());
        let last = run_dir.join(files::LAST);
        if opts.resume.is_none() && last.exists() {
            bail!(
                "{} already holds a run ({} exists); continue it with `--resume {}` or choose another [run] dir",
                run_dir.display(),
                files::LAST,
                run_dir.display()
            );
        }
        // The device first: a bad device or precision leaves no empty run directory behind.
        let device = open_device(parse_device(&cfg.run.device)?)?;
        set_precision(cfg.run.precision, &device)?;
        // Rank 0 creates the run directory and any synthetic cases; the others then read them.
        let splits = if root {
            std::fs::create_dir_all(&run_dir)
                .with_context(|| format!("creating run directory {}", run_dir.display()))?;
            Some(resolve_data(cfg, &run_dir)?)
        } else {
            None
        };
        barrier(comm.as_ref(), &device)?;
        let splits = match splits {
            Some(s) => s,
            None => resolve_data(cfg, &run_dir)?,
        };
        check_patch_fits(cfg.protocol.patch, &splits.train)?;
        let cache =
            cfg.data
                .cache
                .as_ref()
                .map(|c| if c.is_absolute() { c.clone() } else { run_dir.join(c) });
        // Small datasets stay decoded in memory; large ones go through the disk cache, if any.
        let in_memory = splits.train.len() + splits.val.len() <= 64;
        let store = Arc::new(CaseStore::new(in_memory, cache));
        let source = Arc::new(SampleSource {
            store: store.clone(),
            cases: splits.train.clone(),
            pipeline: train_pipeline(&cfg.protocol),
            seed: cfg.train.seed,
        });
        let shard = Sharding {
            rank: comm.rank(),
            world: comm.world_size(),
            accumulate: cfg.train.accumulate,
        };
        let single_spe = steps_per_epoch(cfg, splits.train.len());
        let spe = shard.steps_per_epoch(single_spe);

        let st = if opts.resume.is_some() {
            let mut st = State::resume(cfg, &last, &run_dir, &device)?;
            if st.saved_micro_batches != shard.micro_batches() {
                st.step = rebase_step(cfg, &st, shard, single_spe);
            }
            if root {
                truncate_metrics(&run_dir.join(files::METRICS), st.step)?;
            }
            st
        } else {
            let st = State::fresh(cfg, &device)?;
            if root {
                write_run_files(cfg, &run_dir, &splits)?;
                MetricsLog::create(&run_dir)?;
            }
            st
        };
        let st = st.broadcast_from_root(comm.as_ref(), cfg, &device)?;
        let m = shard.micro_batches();
        tracing::info!(
            "{} training / {} validation / {} test cases; {spe} steps per epoch × {} epochs; {} trainable parameters",
            splits.train.len(),
            splits.val.len(),
            splits.test.len(),
            cfg.train.epochs,
            st.parameter_count()?
        );
        if m > 1 {
            tracing::info!(
                "effective batch {} = batch {} × {} rank(s) × accumulate {}; learning rate {:.3e} ([train] lr_scaling = {:?}: × {:.3})",
                cfg.train.batch * m,
                cfg.train.batch,
                shard.world,
                shard.accumulate,
                cfg.train.lr * cfg.train.lr_scaling.factor(m),
                cfg.train.lr_scaling,
                cfg.train.lr_scaling.factor(m)
            );
        }
        let metrics = if root { Some(MetricsLog::append(&run_dir)?) } else { None };
        Ok(Trainer {
            cfg,
            opts,
            run_dir,
            device,
            splits,
            store,
            source,
            comm,
            shard,
            spe,
            mode: sampler_mode(cfg)?,
            st,
            metrics,
            started,
            losses: Vec::new(),
            waited: 0.0,
        })
    }

    /// Trains until the last epoch, an interrupt, the time budget or a fault.
    ///
    /// # Errors
    /// A non-finite loss (the last checkpoint on disk is kept), I/O and tensor errors.
    pub fn run(mut self) -> Result<TrainOutcome> {
        let total_steps = self.spe * self.cfg.train.epochs as u64;
        let bar = progress_bar(self.opts.progress, total_steps);
        bar.set_position(self.st.step);
        let mut reason = StopReason::Finished;
        'epochs: while self.st.step < total_steps {
            let epoch = (self.st.step / self.spe) as usize;
            let first = self.st.step % self.spe;
            let base_lr =
                self.cfg.train.lr * self.cfg.train.lr_scaling.factor(self.shard.micro_batches());
            let lr = poly_lr(base_lr, epoch, self.cfg.train.epochs, self.cfg.train.lr_power);
            self.st.opt.set_lr(lr);
            let t_epoch = Instant::now();
            let batch = self.cfg.train.batch;
            let mut loader = Loader::start_indices(
                self.source.clone(),
                epoch,
                self.shard.sample_positions(first, self.spe, batch),
                self.cfg.run.workers,
                self.cfg.run.queue,
            );
            for _ in first..self.spe {
                let after = self.step(&mut loader, epoch, lr, &bar)?;
                if let AfterStep::Stop(r) = after {
                    self.waited += loader.waited().as_secs_f64();
                    reason = r;
                    break 'epochs;
                }
            }
            let wait = loader.waited().as_secs_f64();
            drop(loader);
            self.end_epoch(epoch, lr, first, t_epoch.elapsed().as_secs_f64(), wait)?;
        }
        bar.finish_and_clear();
        if let Some(m) = &mut self.metrics {
            m.flush()?;
        }
        if reason != StopReason::Killed {
            self.redraw_curves();
        }
        let checksums = self.st.checksums()?.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        Ok(TrainOutcome {
            checksums,
            run_dir: self.run_dir,
            steps: self.st.step,
            reason,
            losses: self.losses,
            best_score: self.st.best,
            seconds: self.started.elapsed().as_secs_f64(),
            data_wait: self.waited,
            splits: self.splits,
        })
    }

    /// One optimiser step: this rank's micro-batches (MGSD losses and gradients), the step's
    /// loss terms averaged over every micro-batch of every rank, the gradients averaged the same
    /// way, the student update, the EMA teacher, the discriminator update; then the step's row,
    /// and the checks for stop requests, simulated faults and the time budget.
    fn step(
        &mut self,
        loader: &mut Loader,
        epoch: usize,
        lr: f64,
        bar: &ProgressBar,
    ) -> Result<AfterStep> {
        let (cfg, opts) = (self.cfg, self.opts);
        let last = self.run_dir.join(files::LAST);
        if any_rank(self.comm.as_ref(), opts.stop.load(Ordering::SeqCst), &self.device)? {
            self.save(&last)?;
            tracing::warn!("interrupted: saved {} at step {}", last.display(), self.st.step);
            return Ok(AfterStep::Stop(StopReason::Interrupted));
        }
        if opts.fail_at == Some(self.st.step + 1) {
            bail!("injected failure at step {} (RunOptions::fail_at)", self.st.step + 1);
        }
        let t_step = Instant::now();
        if cfg.loss.warmup_steps > 0 {
            self.st.obj.set_weights(loss_weights_at(cfg, self.st.step));
        }
        let m = self.shard.micro_batches();
        // The masks of all `m` micro-batches of this step, this rank's and the others' (the
        // metrics row names them all), drawn once.
        let first = self.st.step * m as u64;
        let masks: Vec<ModalityMask> = (0..m as u64).map(|i| self.mask(first + i)).collect();
        let mut grads = GradientSum::new(self.st.opt.vars());
        let mut grads_d = self.st.opt_d.as_ref().map(|o| GradientSum::new(o.vars()));
        let mut sums: BTreeMap<String, f64> = BTreeMap::new();
        for a in 0..self.shard.accumulate {
            let index = self.shard.micro_index(self.st.step, a);
            let (x, y) = next_batch(loader, cfg.train.batch, cfg.protocol.patch, &self.device)?;
            self.st.obj.seek_dropout_seeds(index);
            let mask = &masks[(index - first) as usize];
            let terms = self.st.obj.step_losses(&x, &y, mask, true)?;
            for (k, v) in terms.values()? {
                *sums.entry(k.to_string()).or_default() += v;
            }
            grads.add(&terms.total.backward()?)?;
            if let (Some(g), Some(l)) = (grads_d.as_mut(), self.st.obj.discriminator_loss(&terms)?)
            {
                *sums.entry(D_LOSS.into()).or_default() +=
                    l.to_dtype(DType::F64)?.to_scalar::<f64>()?;
                g.add(&l.backward()?)?;
            }
        }
        let mut vals = self.mean_over_ranks(sums, m)?;
        let d_loss = vals.remove(D_LOSS);
        if opts.inject_nan_at == Some(self.st.step + 1) {
            vals.insert("total".into(), f64::NAN);
        }
        if vals.values().any(|v| !v.is_finite()) {
            if let Some(metrics) = &mut self.metrics {
                let _ = metrics.flush();
            }
            let terms_text: Vec<String> = vals.iter().map(|(k, v)| format!("{k} = {v}")).collect();
            let kept = if last.exists() {
                format!("the last good checkpoint is {} (not overwritten)", last.display())
            } else {
                "no checkpoint had been written yet".to_string()
            };
            bail!(
                "the loss is not finite at step {} (epoch {epoch}): {}; training stopped before applying this step; {kept}. \
                 Try a lower [train] lr.",
                self.st.step + 1,
                terms_text.join(", ")
            );
        }
        let averaged = grads.average(self.comm.as_ref(), m)?;
        self.st.opt.step_with(&averaged)?;
        self.st.obj.update_teacher(self.st.step)?;
        if let (Some(opt_d), Some(g), Some(d)) = (self.st.opt_d.as_mut(), grads_d, d_loss) {
            // Every rank sees the same averaged value, so all skip a non-finite step together.
            if d.is_finite() {
                opt_d.step_with(&g.average(self.comm.as_ref(), m)?)?;
            }
            vals.insert(D_LOSS.into(), d);
        }
        let masks: Vec<String> = masks
            .iter()
            .map(|mask| {
                ModalitySet::from_channel_mask(&mask.values(), &mgsd_io::ACN_CHANNEL_ORDER)
                    .to_string()
            })
            .collect();
        self.st.step += 1;
        let step = self.st.step;
        let secs = t_step.elapsed().as_secs_f64();
        if let Some(metrics) = &mut self.metrics {
            metrics.step(step, epoch, lr, &masks.join(" "), &vals, secs)?;
        }
        bar.set_position(step);
        bar.set_message(format!("loss {:.4}", vals.get("total").copied().unwrap_or(f64::NAN)));
        self.losses.push((step, vals));
        self.check_ranks_agree()?;

        if opts.interrupt_after == Some(step) {
            opts.stop.store(true, Ordering::SeqCst);
        }
        if opts.kill_after == Some(step) {
            if let Some(metrics) = &mut self.metrics {
                let _ = metrics.flush();
            }
            return Ok(AfterStep::Stop(StopReason::Killed));
        }
        if any_rank(self.comm.as_ref(), self.past_deadline(), &self.device)? {
            // The budget ends training: validate once more (with `val_every = 0` this is the
            // only validation), then save.
            self.validate_and_keep_best()?;
            self.save(&last)?;
            tracing::info!(
                "time budget of {:?} min reached at step {step}: saved {}",
                cfg.train.max_minutes,
                last.display()
            );
            return Ok(AfterStep::Stop(StopReason::TimeBudget));
        }
        Ok(AfterStep::Continue)
    }

    /// The modality mask of micro-batch `index` ([`Sharding::micro_index`]).
    fn mask(&self, index: u64) -> ModalityMask {
        MaskSampler::new(self.mode, mix(mix(self.cfg.train.seed, stream::MASK), index)).draw()
    }

    /// Per-term sums over this rank's micro-batches → means over all `m` micro-batches of all
    /// ranks (the same on every rank; one process: the sums over `m`).
    fn mean_over_ranks(
        &self,
        sums: BTreeMap<String, f64>,
        m: usize,
    ) -> Result<BTreeMap<String, f64>> {
        let (keys, values): (Vec<String>, Vec<f64>) = sums.into_iter().unzip();
        let values = if self.comm.world_size() > 1 {
            let t = Tensor::from_vec(values, keys.len(), &self.device)?;
            self.comm.all_reduce_sum(&t)?.to_dtype(DType::F64)?.to_vec1::<f64>()?
        } else {
            values
        };
        Ok(keys.into_iter().zip(values).map(|(k, v)| (k, v / m as f64)).collect())
    }

    /// Every `[run] checksum_every` steps of a data-parallel run: the ranks' parameters must be
    /// identical.
    fn check_ranks_agree(&self) -> Result<()> {
        let every = self.cfg.run.checksum_every;
        if self.comm.world_size() == 1 || every == 0 || !self.st.step.is_multiple_of(every) {
            return Ok(());
        }
        let sums = self.st.checksums()?;
        check_agreement(self.comm.as_ref(), &sums, &format!("step {}", self.st.step), &self.device)
    }

    /// Saves the state to `path` (rank 0 only).
    fn save(&self, path: &std::path::Path) -> Result<()> {
        if self.comm.is_root() {
            self.st.save(path, self.cfg, self.spe, self.shard)?;
        }
        Ok(())
    }

    fn past_deadline(&self) -> bool {
        self.cfg
            .train
            .max_minutes
            .is_some_and(|m| self.started.elapsed() >= Duration::from_secs_f64(m * 60.0))
    }

    /// The end of an epoch (whose steps began at `first`): its log line and row, validation
    /// when due, `last.safetensors`, the curves.
    fn end_epoch(&mut self, epoch: usize, lr: f64, first: u64, secs: f64, wait: f64) -> Result<()> {
        self.waited += wait;
        let epochs = self.cfg.train.epochs;
        tracing::info!(
            "epoch {}/{epochs}: {} steps in {secs:.1}s, lr {lr:.2e}, waited {wait:.2}s for data ({:.1}%)",
            epoch + 1,
            self.spe - first,
            100.0 * wait / secs.max(1e-9)
        );
        if let Some(metrics) = &mut self.metrics {
            metrics.epoch(self.st.step, epoch, lr, secs, wait)?;
        }
        let v = self.cfg.train.val_every;
        if (v > 0 && (epoch + 1).is_multiple_of(v)) || epoch + 1 == epochs {
            self.validate_and_keep_best()?;
        }
        self.save(&self.run_dir.join(files::LAST))?;
        if let Some(metrics) = &mut self.metrics {
            metrics.flush()?;
        }
        self.redraw_curves();
        Ok(())
    }

    /// Validates on all 15 subsets (if there are validation cases), logs the table and keeps
    /// the best-scoring weights as `best.safetensors`.
    fn validate_and_keep_best(&mut self) -> Result<()> {
        if self.splits.val.is_empty() {
            return Ok(());
        }
        let epoch = (self.st.step.saturating_sub(1) / self.spe) as usize;
        let settings = EvalSettings::for_protocol(&self.cfg.protocol, self.opts.progress);
        let unet = &self.st.obj.model().unet;
        let report = evaluate_across_ranks(
            self.comm.as_ref(),
            unet,
            &self.splits.val,
            &self.store,
            &settings,
            &self.device,
        )?;
        if let Some(metrics) = &mut self.metrics {
            metrics.validation(self.st.step, epoch, &report)?;
        }
        let score = report.score();
        tracing::info!(
            "validation at step {} (epoch {}): mean Dice {:.4} (WT/TC/ET {:.3}/{:.3}/{:.3}) on {} cases",
            self.st.step,
            epoch + 1,
            score,
            report.mean.dice[0],
            report.mean.dice[1],
            report.mean.dice[2],
            self.splits.val.len()
        );
        if self.st.best.is_none_or(|b| score > b) {
            self.st.best = Some(score);
            self.save(&self.run_dir.join(files::BEST))?;
        }
        Ok(())
    }

    fn redraw_curves(&self) {
        if !self.comm.is_root() {
            return;
        }
        if let Err(e) = draw_curves(&self.run_dir) {
            tracing::warn!("could not draw the curves: {e:#}");
        }
    }
}

/// The `metrics.csv` name of the discriminator's loss.
const D_LOSS: &str = "d_loss";

/// The step to continue from when a run resumes with another number of micro-batches per step
/// (world size × accumulation): the start of the epoch in progress (its steps taken so far are
/// taken again with the new grouping). Logs what changes.
fn rebase_step(cfg: &Config, st: &State, now: Sharding, single_spe: u64) -> u64 {
    let before = Sharding { rank: 0, world: 1, accumulate: st.saved_micro_batches.max(1) };
    let (spe_before, spe_now) =
        (before.steps_per_epoch(single_spe), now.steps_per_epoch(single_spe));
    let epoch = st.step / spe_before;
    let step = epoch * spe_now;
    let redone = st.step - epoch * spe_before;
    tracing::warn!(
        "this checkpoint was made with {} micro-batch(es) per step (effective batch {}); this run uses {} ({} rank(s) × accumulate {}, effective batch {}): {spe_before} → {spe_now} steps per epoch, learning rate × {:.3} ([train] lr_scaling = {:?}); continuing at the start of epoch {} (step {step}){}. The run is no longer step-for-step the run it would have been.",
        before.micro_batches(),
        before.micro_batches() * cfg.train.batch,
        now.micro_batches(),
        now.world,
        now.accumulate,
        now.micro_batches() * cfg.train.batch,
        cfg.train.lr_scaling.factor(now.micro_batches()),
        cfg.train.lr_scaling,
        epoch + 1,
        if redone > 0 { format!(", taking its first {redone} step(s) again") } else { String::new() }
    );
    step
}

/// `config.toml` and `run.json` of a new run.
fn write_run_files(cfg: &Config, run_dir: &std::path::Path, splits: &Splits) -> Result<()> {
    let config = run_dir.join(files::CONFIG);
    std::fs::write(&config, cfg.to_toml()?)
        .with_context(|| format!("writing {}", config.display()))?;
    let ids = |v: &[mgsd_io::CaseFiles]| v.iter().map(|c| c.id.clone()).collect::<Vec<_>>();
    let run = serde_json::json!({
        "seed": cfg.train.seed,
        "git_commit": git_commit(),
        "mgsd_train_version": env!("CARGO_PKG_VERSION"),
        "config_hash": cfg.training_hash()?,
        "device": cfg.run.device,
        "train_cases": ids(&splits.train),
        "val_cases": ids(&splits.val),
        "test_cases": ids(&splits.test),
    });
    let path = run_dir.join(files::RUN);
    std::fs::write(&path, serde_json::to_string_pretty(&run)?)
        .with_context(|| format!("writing {}", path.display()))
}

fn progress_bar(show: bool, total_steps: u64) -> ProgressBar {
    let bar = if show { ProgressBar::new(total_steps) } else { ProgressBar::hidden() };
    bar.set_style(
        ProgressStyle::with_template(
            "{prefix:>10} [{bar:30}] {pos}/{len} steps {elapsed_precise} ETA {eta} {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_prefix("train");
    bar
}
