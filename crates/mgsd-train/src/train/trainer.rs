//! The trainer: a run directory, its data and its [`State`], driven epoch by epoch.
//!
//! [`Trainer::open`] prepares everything (device, run directory, splits, fresh or resumed
//! state); [`Trainer::run`] loops over epochs; [`Trainer::step`] is one optimiser step (and
//! the only place that touches the model's arithmetic); [`Trainer::end_epoch`] logs, validates
//! and checkpoints.

use super::metrics_log::{draw_curves, truncate_metrics, MetricsLog};
use super::sources::resolve_data;
use super::state::{sampler_mode, State};
use super::{files, git_commit, next_batch, steps_per_epoch, RunOptions, StopReason, TrainOutcome};
use crate::config::{open_device, parse_device, set_precision, Config};
use crate::data::{mix, stream, CaseStore, Loader, SampleSource, Splits};
use crate::eval::{evaluate, EvalSettings};
use crate::model::loss_weights_at;
use crate::optim::poly_lr;
use crate::protocol::{check_patch_fits, train_pipeline};
use anyhow::{bail, Context, Result};
use candle_core::Device;
use indicatif::{ProgressBar, ProgressStyle};
use mgsd_distill::{MaskSampler, MaskSampling};
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
    /// Steps per epoch.
    spe: u64,
    mode: MaskSampling,
    st: State,
    metrics: MetricsLog,
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
    pub fn open(cfg: &'a Config, opts: &'a RunOptions) -> Result<Self> {
        let started = Instant::now();
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
        std::fs::create_dir_all(&run_dir)
            .with_context(|| format!("creating run directory {}", run_dir.display()))?;

        let splits = resolve_data(cfg, &run_dir)?;
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
        let spe = steps_per_epoch(cfg, splits.train.len());

        let st = if opts.resume.is_some() {
            let st = State::resume(cfg, &last, &run_dir, &device)?;
            truncate_metrics(&run_dir.join(files::METRICS), st.step)?;
            st
        } else {
            let st = State::fresh(cfg, &device)?;
            write_run_files(cfg, &run_dir, &splits)?;
            MetricsLog::create(&run_dir)?;
            st
        };
        tracing::info!(
            "{} training / {} validation / {} test cases; {spe} steps per epoch × {} epochs; {} trainable parameters",
            splits.train.len(),
            splits.val.len(),
            splits.test.len(),
            cfg.train.epochs,
            st.parameter_count()?
        );
        let metrics = MetricsLog::append(&run_dir)?;
        Ok(Trainer {
            cfg,
            opts,
            run_dir,
            device,
            splits,
            store,
            source,
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
            let lr =
                poly_lr(self.cfg.train.lr, epoch, self.cfg.train.epochs, self.cfg.train.lr_power);
            self.st.opt.set_lr(lr);
            let t_epoch = Instant::now();
            let batch = self.cfg.train.batch;
            let mut loader = Loader::start(
                self.source.clone(),
                epoch,
                ((first as usize) * batch, (self.spe as usize) * batch),
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
        self.metrics.flush()?;
        if reason != StopReason::Killed {
            self.redraw_curves();
        }
        Ok(TrainOutcome {
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

    /// One optimiser step on the next batch: MGSD losses, student update, EMA teacher,
    /// discriminator update; then the step's row, and the checks for stop requests, simulated
    /// kills and the time budget.
    fn step(
        &mut self,
        loader: &mut Loader,
        epoch: usize,
        lr: f64,
        bar: &ProgressBar,
    ) -> Result<AfterStep> {
        let (cfg, opts) = (self.cfg, self.opts);
        let last = self.run_dir.join(files::LAST);
        if opts.stop.load(Ordering::SeqCst) {
            self.st.save(&last, cfg, self.spe)?;
            tracing::warn!("interrupted: saved {} at step {}", last.display(), self.st.step);
            return Ok(AfterStep::Stop(StopReason::Interrupted));
        }
        let t_step = Instant::now();
        let (x, y) = next_batch(loader, cfg.train.batch, cfg.protocol.patch, &self.device)?;
        let seed = cfg.train.seed;
        let mask = MaskSampler::new(self.mode, mix(mix(seed, stream::MASK), self.st.step)).draw();
        if cfg.loss.warmup_steps > 0 {
            self.st.obj.set_weights(loss_weights_at(cfg, self.st.step));
        }
        let terms = self.st.obj.step_losses(&x, &y, &mask, true)?;
        let mut vals: BTreeMap<String, f64> =
            terms.values()?.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        if opts.inject_nan_at == Some(self.st.step + 1) {
            vals.insert("total".into(), f64::NAN);
        }
        if vals.values().any(|v| !v.is_finite()) {
            let _ = self.metrics.flush();
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
        let grads = terms.total.backward()?;
        self.st.opt.step(&grads)?;
        self.st.obj.update_teacher(self.st.step)?;
        if let (Some(opt_d), Some(l)) =
            (self.st.opt_d.as_mut(), self.st.obj.discriminator_loss(&terms)?)
        {
            let v = l.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
            if v.is_finite() {
                let g = l.backward()?;
                opt_d.step(&g)?;
            }
            vals.insert("d_loss".into(), v);
        }
        self.st.step += 1;
        let step = self.st.step;
        let mask_name =
            ModalitySet::from_channel_mask(&mask.values(), &mgsd_io::ACN_CHANNEL_ORDER).to_string();
        let secs = t_step.elapsed().as_secs_f64();
        self.metrics.step(step, epoch, lr, &mask_name, &vals, secs)?;
        bar.set_position(step);
        bar.set_message(format!("loss {:.4}", vals.get("total").copied().unwrap_or(f64::NAN)));
        self.losses.push((step, vals));

        if opts.interrupt_after == Some(step) {
            opts.stop.store(true, Ordering::SeqCst);
        }
        if opts.kill_after == Some(step) {
            let _ = self.metrics.flush();
            return Ok(AfterStep::Stop(StopReason::Killed));
        }
        if self.past_deadline() {
            // The budget ends training: validate once more (with `val_every = 0` this is the
            // only validation), then save.
            self.validate_and_keep_best()?;
            self.st.save(&last, cfg, self.spe)?;
            tracing::info!(
                "time budget of {:?} min reached at step {step}: saved {}",
                cfg.train.max_minutes,
                last.display()
            );
            return Ok(AfterStep::Stop(StopReason::TimeBudget));
        }
        Ok(AfterStep::Continue)
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
        self.metrics.epoch(self.st.step, epoch, lr, secs, wait)?;
        let v = self.cfg.train.val_every;
        if (v > 0 && (epoch + 1).is_multiple_of(v)) || epoch + 1 == epochs {
            self.validate_and_keep_best()?;
        }
        self.st.save(&self.run_dir.join(files::LAST), self.cfg, self.spe)?;
        self.metrics.flush()?;
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
        let report = evaluate(unet, &self.splits.val, &self.store, &settings, &self.device)?;
        self.metrics.validation(self.st.step, epoch, &report)?;
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
            self.st.save(&self.run_dir.join(files::BEST), self.cfg, self.spe)?;
        }
        Ok(())
    }

    fn redraw_curves(&self) {
        if let Err(e) = draw_curves(&self.run_dir) {
            tracing::warn!("could not draw the curves: {e:#}");
        }
    }
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
