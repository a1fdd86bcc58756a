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
//! # Faults
//! A non-finite loss stops the run before the step is applied, with a message naming the step
//! and the terms; the last checkpoint on disk (from the end of the previous epoch) is kept.
//! An interrupt (Ctrl-C sets [`RunOptions::stop`]) or the time budget saves `last.safetensors`
//! at the current step and returns.

use crate::checkpoint::{self, Meta};
use crate::config::{open_device, parse_device, set_precision, Config};
use crate::data::{
    mix, read_manifest, split_random, split_with_file, stream, CaseStore, Loader, SampleSource,
    Splits,
};
use crate::eval::{evaluate, EvalSettings};
use crate::model::{
    mgsd_config, named_vars, objective_from_checkpoint, weight_tensors, DISCRIMINATOR_PREFIX,
    DROPOUT_SEEDS_PER_STEP, OPTIM_D_PREFIX, OPTIM_PREFIX,
};
use crate::optim::{poly_lr, Adam, AdamConfig};
use crate::plot::{curves, Series};
use crate::protocol::train_pipeline;
use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use indicatif::{ProgressBar, ProgressStyle};
use mgsd_distill::objective::{MgsdObjective, EMA_PREFIX, UNET_PREFIX};
use mgsd_distill::{MaskSampler, MaskSampling, ModalityMask};
use mgsd_io::labels::target_channels;
use mgsd_io::ModalitySet;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

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

/// Columns of `metrics.csv`.
pub const METRICS_HEADER: &str = "kind,step,epoch,lr,mask,sup_full,sup_miss,image,feature,modality,adv_gen,total,d_loss,subset,dice_wt,dice_tc,dice_et,hd95_wt,hd95_tc,hd95_et,seconds,wait_s";

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
}

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

/// Parameters get PyTorch's default initialisation `U(−1/√fan_in, 1/√fan_in)` (the one the
/// layers ask candle for), but drawn from a ChaCha8 stream of the run seed: candle cannot seed
/// its CPU generator, and a run must be reproducible from its seed. Constant initialisations
/// (GroupNorm 1/0) are kept.
fn seeded_init(vars: &[(String, Tensor)], seed: u64) -> Result<HashMap<String, Tensor>> {
    let dims: HashMap<&str, Vec<usize>> =
        vars.iter().map(|(k, t)| (k.as_str(), t.dims().to_vec())).collect();
    let mut out = HashMap::new();
    for (i, (name, t)) in vars.iter().enumerate() {
        let v: Vec<f32> = t.flatten_all()?.to_vec1()?;
        // Constant initialisations (GroupNorm 1/0) have more than one element; a 1-element
        // bias (the discriminator's last layer) is random.
        if v.len() > 1 && v.iter().all(|&x| x == v[0]) {
            out.insert(name.clone(), t.clone());
            continue;
        }
        let weight_dims = match name.strip_suffix(".bias") {
            Some(stem) => dims.get(format!("{stem}.weight").as_str()).cloned(),
            None => Some(t.dims().to_vec()),
        };
        let bound = match weight_dims {
            Some(d) if d.len() >= 2 => {
                1.0 / (d[1..].iter().product::<usize>().max(1) as f64).sqrt()
            }
            _ => v.iter().fold(0f32, |m, x| m.max(x.abs())) as f64,
        };
        let mut rng = ChaCha8Rng::seed_from_u64(mix(seed, i as u64));
        let data: Vec<f32> = (0..v.len()).map(|_| rng.random_range(-bound..bound) as f32).collect();
        out.insert(name.clone(), Tensor::from_vec(data, t.dims(), t.device())?);
    }
    Ok(out)
}

/// A fresh objective with seeded weights; the teacher equals the student.
fn fresh_objective(cfg: &Config, device: &Device, dropout_seed: u64) -> Result<MgsdObjective> {
    let mcfg = mgsd_config(cfg, dropout_seed);
    let with_d = cfg.loss.adversarial > 0.0;
    let random = MgsdObjective::new(mcfg, device, with_d).context("building the MGSD model")?;
    let mut all: Vec<(String, Tensor)> = named_vars(random.student_vars())?
        .into_iter()
        .map(|(k, v)| (k, v.as_tensor().clone()))
        .collect();
    if let Some(d) = random.discriminator_vars() {
        all.extend(
            named_vars(d)?
                .into_iter()
                .map(|(k, v)| (format!("{DISCRIMINATOR_PREFIX}{k}"), v.as_tensor().clone())),
        );
    }
    let mut state = seeded_init(&all, mix(cfg.train.seed, 0x1417))?;
    if let Some(bias) = cfg.model.output_bias {
        let key = format!("{UNET_PREFIX}.up1conv.bias");
        let Some(current) = state.get(&key) else {
            bail!("[model] output_bias: the model has no parameter {key}");
        };
        let prior = Tensor::full(bias, current.dims(), current.device())?;
        state.insert(key, prior);
    }
    let unet: Vec<(String, Tensor)> = state
        .iter()
        .filter_map(|(k, v)| {
            k.strip_prefix(&format!("{UNET_PREFIX}."))
                .map(|r| (format!("{EMA_PREFIX}.{r}"), v.clone()))
        })
        .collect();
    state.extend(unet);
    let disc: HashMap<String, Tensor> = state
        .iter()
        .filter_map(|(k, v)| {
            k.strip_prefix(DISCRIMINATOR_PREFIX).map(|r| (r.to_string(), v.clone()))
        })
        .collect();
    MgsdObjective::from_state(
        mcfg,
        &state,
        with_d.then_some(&disc),
        Path::new("<seeded initialisation>"),
        device,
    )
    .context("initialising the MGSD model")
}

fn sampler_mode(cfg: &Config) -> Result<MaskSampling> {
    Ok(match cfg.train.sampler {
        crate::config::Sampler::Reference => MaskSampling::Reference,
        crate::config::Sampler::Uniform => MaskSampling::UniformSubsets,
        crate::config::Sampler::Fixed(set) => MaskSampling::Fixed {
            mask: ModalityMask::new(set.channel_mask(&mgsd_io::ACN_CHANNEL_ORDER))
                .context("[train] sampler")?,
        },
    })
}

/// Everything the loop mutates.
struct State {
    obj: MgsdObjective,
    opt: Adam,
    opt_d: Option<Adam>,
    step: u64,
    best: Option<f64>,
}

fn save(path: &Path, st: &State, cfg: &Config, spe: u64) -> Result<()> {
    let mut tensors = weight_tensors(&st.obj)?;
    tensors.extend(st.opt.state_tensors(OPTIM_PREFIX));
    if let Some(d) = &st.opt_d {
        tensors.extend(d.state_tensors(OPTIM_D_PREFIX));
    }
    let mut extra = BTreeMap::new();
    extra.insert("git_commit".to_string(), git_commit());
    let meta = Meta {
        step: st.step,
        epoch: (st.step / spe) as usize,
        optim_step: st.opt.step_count(),
        optim_d_step: st.opt_d.as_ref().map_or(0, Adam::step_count),
        seed: cfg.train.seed,
        config_hash: cfg.training_hash()?,
        config: cfg.to_toml()?,
        best_score: st.best,
        extra,
    };
    checkpoint::save(path, &tensors, &meta)
}

fn discriminator_named(obj: &MgsdObjective) -> Result<Option<Vec<(String, candle_core::Var)>>> {
    obj.discriminator_vars()
        .map(|d| {
            Ok(named_vars(d)?
                .into_iter()
                .map(|(k, v)| (format!("{DISCRIMINATOR_PREFIX}{k}"), v))
                .collect())
        })
        .transpose()
}

/// Steps per epoch of a configuration with `n_train` training cases.
pub fn steps_per_epoch(cfg: &Config, n_train: usize) -> u64 {
    cfg.train.steps_per_epoch.unwrap_or_else(|| n_train.div_ceil(cfg.train.batch).max(1)) as u64
}

/// Keeps the rows of `metrics.csv` up to `step` (a resumed run redoes the later ones).
fn truncate_metrics(path: &Path, step: u64) -> Result<()> {
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

fn csv_row(w: &mut impl Write, fields: &[String]) -> Result<()> {
    writeln!(w, "{}", fields.join(",")).context("writing metrics.csv")
}

/// Trains according to `cfg` (or resumes `opts.resume`).
///
/// # Errors
/// Bad data, a mismatched checkpoint or configuration, a non-finite loss (after which the last
/// checkpoint on disk is the previous good one), I/O errors — each naming the file or step.
pub fn train(cfg: &Config, opts: &RunOptions) -> Result<TrainOutcome> {
    let t_start = Instant::now();
    let run_dir = opts.resume.clone().unwrap_or_else(|| cfg.run.dir.clone());
    let last_path = run_dir.join(files::LAST);
    if opts.resume.is_none() && last_path.exists() {
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
    let seed = cfg.train.seed;

    // Data.
    let splits = resolve_data(cfg, &run_dir)?;
    crate::protocol::check_patch_fits(cfg.protocol.patch, &splits.train)?;
    let cache =
        cfg.data.cache.as_ref().map(|c| if c.is_absolute() { c.clone() } else { run_dir.join(c) });
    // Small datasets stay decoded in memory; large ones go through the disk cache, if any.
    let in_memory = splits.train.len() + splits.val.len() <= 64;
    let store = Arc::new(CaseStore::new(in_memory, cache));
    let source = Arc::new(SampleSource {
        store: store.clone(),
        cases: splits.train.clone(),
        pipeline: train_pipeline(&cfg.protocol),
        seed,
    });
    let spe = steps_per_epoch(cfg, splits.train.len());
    let batch = cfg.train.batch;
    let total_steps = spe * cfg.train.epochs as u64;
    let dropout_base = mix(seed, stream::DROPOUT);

    // Model, optimisers: fresh or from the checkpoint.
    let adam = AdamConfig {
        lr: cfg.train.lr,
        betas: cfg.train.betas,
        eps: 1e-8,
        weight_decay: cfg.train.weight_decay,
    };
    let adam_d =
        AdamConfig { lr: cfg.train.d_lr, betas: cfg.train.d_betas, eps: 1e-8, weight_decay: 0.0 };
    let mut st = if opts.resume.is_some() {
        let ckpt = checkpoint::load(&last_path, &device)
            .with_context(|| format!("resuming {}: no usable checkpoint", run_dir.display()))?;
        let meta = ckpt.meta()?.clone();
        let hash = cfg.training_hash()?;
        if meta.config_hash != hash {
            bail!(
                "{}: the checkpoint was made with another configuration (hash {} vs {hash}); resume with the run's own {} (`--config {}`)",
                last_path.display(),
                meta.config_hash,
                files::CONFIG,
                run_dir.join(files::CONFIG).display()
            );
        }
        let obj = objective_from_checkpoint(
            &ckpt,
            mgsd_config(cfg, dropout_base.wrapping_add(DROPOUT_SEEDS_PER_STEP * meta.step)),
            &device,
        )?;
        let mut opt = Adam::new(named_vars(obj.student_vars())?, adam)?;
        opt.load_state(OPTIM_PREFIX, &ckpt.tensors, meta.optim_step)
            .with_context(|| format!("{}: optimiser state", last_path.display()))?;
        let opt_d = match discriminator_named(&obj)? {
            Some(vars) => {
                let mut o = Adam::new(vars, adam_d)?;
                o.load_state(OPTIM_D_PREFIX, &ckpt.tensors, meta.optim_d_step).with_context(
                    || format!("{}: discriminator optimiser state", last_path.display()),
                )?;
                Some(o)
            }
            None => None,
        };
        truncate_metrics(&run_dir.join(files::METRICS), meta.step)?;
        tracing::info!(
            "resuming {} at step {} (epoch {})",
            run_dir.display(),
            meta.step,
            meta.epoch
        );
        State { obj, opt, opt_d, step: meta.step, best: meta.best_score }
    } else {
        let obj = fresh_objective(cfg, &device, dropout_base)?;
        let opt = Adam::new(named_vars(obj.student_vars())?, adam)?;
        let opt_d = discriminator_named(&obj)?.map(|v| Adam::new(v, adam_d)).transpose()?;
        std::fs::write(run_dir.join(files::CONFIG), cfg.to_toml()?)
            .with_context(|| format!("writing {}", run_dir.join(files::CONFIG).display()))?;
        let run = serde_json::json!({
            "seed": seed,
            "git_commit": git_commit(),
            "mgsd_train_version": env!("CARGO_PKG_VERSION"),
            "config_hash": cfg.training_hash()?,
            "device": cfg.run.device,
            "train_cases": splits.train.iter().map(|c| c.id.clone()).collect::<Vec<_>>(),
            "val_cases": splits.val.iter().map(|c| c.id.clone()).collect::<Vec<_>>(),
            "test_cases": splits.test.iter().map(|c| c.id.clone()).collect::<Vec<_>>(),
        });
        std::fs::write(run_dir.join(files::RUN), serde_json::to_string_pretty(&run)?)
            .with_context(|| format!("writing {}", run_dir.join(files::RUN).display()))?;
        std::fs::write(run_dir.join(files::METRICS), format!("{METRICS_HEADER}\n"))
            .with_context(|| format!("writing {}", run_dir.join(files::METRICS).display()))?;
        State { obj, opt, opt_d, step: 0, best: None }
    };
    let n_params: usize =
        named_vars(st.obj.student_vars())?.iter().map(|(_, v)| v.elem_count()).sum();
    tracing::info!(
        "{} training / {} validation / {} test cases; {spe} steps per epoch × {} epochs; {n_params} trainable parameters",
        splits.train.len(),
        splits.val.len(),
        splits.test.len(),
        cfg.train.epochs
    );

    let metrics_path = run_dir.join(files::METRICS);
    let mut metrics = std::io::BufWriter::new(
        std::fs::OpenOptions::new()
            .append(true)
            .open(&metrics_path)
            .with_context(|| format!("opening {}", metrics_path.display()))?,
    );
    let mode = sampler_mode(cfg)?;
    let [pd, ph, pw] = cfg.protocol.patch;
    let mut losses = Vec::new();
    let mut wait_total = 0.0;
    let deadline =
        cfg.train.max_minutes.map(|m| t_start + std::time::Duration::from_secs_f64(m * 60.0));
    let mut reason = StopReason::Finished;
    let bar = if opts.progress { ProgressBar::new(total_steps) } else { ProgressBar::hidden() };
    bar.set_style(
        ProgressStyle::with_template(
            "{prefix:>10} [{bar:30}] {pos}/{len} steps {elapsed_precise} ETA {eta} {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_prefix("train");
    bar.set_position(st.step);

    'epochs: while st.step < total_steps {
        let epoch = (st.step / spe) as usize;
        let j0 = st.step % spe;
        let lr = poly_lr(cfg.train.lr, epoch, cfg.train.epochs, cfg.train.lr_power);
        st.opt.set_lr(lr);
        let t_epoch = Instant::now();
        let mut loader = Loader::start(
            source.clone(),
            epoch,
            ((j0 as usize) * batch, (spe as usize) * batch),
            cfg.run.workers,
            cfg.run.queue,
        );
        for _ in j0..spe {
            if opts.stop.load(Ordering::SeqCst) {
                save(&last_path, &st, cfg, spe)?;
                reason = StopReason::Interrupted;
                tracing::warn!("interrupted: saved {} at step {}", last_path.display(), st.step);
                break 'epochs;
            }
            let t_step = Instant::now();
            let mut xs = Vec::with_capacity(batch * 4 * pd * ph * pw);
            let mut ys = Vec::with_capacity(batch * 3 * pd * ph * pw);
            for _ in 0..batch {
                let s = loader.next_sample().context("the data loader ended early")??;
                xs.extend_from_slice(&s.image);
                ys.extend(target_channels(&s.labels));
            }
            let x = Tensor::from_vec(xs, (batch, 4, pd, ph, pw), &device)?;
            let y = Tensor::from_vec(ys, (batch, 3, pd, ph, pw), &device)?;
            let mask = MaskSampler::new(mode, mix(mix(seed, stream::MASK), st.step)).draw();
            let terms = st.obj.step_losses(&x, &y, &mask, true)?;
            let mut vals: BTreeMap<String, f64> =
                terms.values()?.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
            if opts.inject_nan_at == Some(st.step + 1) {
                vals.insert("total".into(), f64::NAN);
            }
            if vals.values().any(|v| !v.is_finite()) {
                let _ = metrics.flush();
                let terms_text: Vec<String> =
                    vals.iter().map(|(k, v)| format!("{k} = {v}")).collect();
                let kept = if last_path.exists() {
                    format!("the last good checkpoint is {} (not overwritten)", last_path.display())
                } else {
                    "no checkpoint had been written yet".to_string()
                };
                bail!(
                    "the loss is not finite at step {} (epoch {epoch}): {}; training stopped before applying this step; {kept}. \
                     Try a lower [train] lr.",
                    st.step + 1,
                    terms_text.join(", ")
                );
            }
            let grads = terms.total.backward()?;
            st.opt.step(&grads)?;
            st.obj.update_teacher(st.step)?;
            let mut d_loss = None;
            if let (Some(opt_d), Some(l)) = (st.opt_d.as_mut(), st.obj.discriminator_loss(&terms)?)
            {
                let v = l.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
                if v.is_finite() {
                    let g = l.backward()?;
                    opt_d.step(&g)?;
                }
                d_loss = Some(v);
            }
            st.step += 1;
            if let Some(v) = d_loss {
                vals.insert("d_loss".into(), v);
            }
            let get = |k: &str| vals.get(k).map_or(String::new(), |v| v.to_string());
            csv_row(
                &mut metrics,
                &[
                    "train".into(),
                    st.step.to_string(),
                    epoch.to_string(),
                    lr.to_string(),
                    format!(
                        "{}",
                        ModalitySet::from_channel_mask(&mask.values(), &mgsd_io::ACN_CHANNEL_ORDER)
                    ),
                    get("sup_full"),
                    get("sup_miss"),
                    get("image"),
                    get("feature"),
                    get("modality"),
                    get("adv_gen"),
                    get("total"),
                    get("d_loss"),
                    String::new(),
                    String::new(),
                    String::new(),
                    String::new(),
                    String::new(),
                    String::new(),
                    String::new(),
                    format!("{:.4}", t_step.elapsed().as_secs_f64()),
                    String::new(),
                ],
            )?;
            bar.set_position(st.step);
            bar.set_message(format!("loss {:.4}", vals.get("total").copied().unwrap_or(f64::NAN)));
            losses.push((st.step, vals));
            if opts.interrupt_after == Some(st.step) {
                opts.stop.store(true, Ordering::SeqCst);
            }
            if opts.kill_after == Some(st.step) {
                let _ = metrics.flush();
                reason = StopReason::Killed;
                break 'epochs;
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                // The budget ends training: validate once more (with `val_every = 0` this is
                // the only validation), then save.
                validate_and_keep_best(cfg, &mut st, &splits, &store, &device, opts, &mut metrics)?;
                save(&last_path, &st, cfg, spe)?;
                reason = StopReason::TimeBudget;
                tracing::info!(
                    "time budget of {:?} min reached at step {}: saved {}",
                    cfg.train.max_minutes,
                    st.step,
                    last_path.display()
                );
                wait_total += loader.waited().as_secs_f64();
                break 'epochs;
            }
        }
        // End of an epoch.
        let wait = loader.waited().as_secs_f64();
        wait_total += wait;
        drop(loader);
        let secs = t_epoch.elapsed().as_secs_f64();
        tracing::info!(
            "epoch {}/{}: {} steps in {secs:.1}s, lr {lr:.2e}, waited {wait:.2}s for data ({:.1}%)",
            epoch + 1,
            cfg.train.epochs,
            spe - j0,
            100.0 * wait / secs.max(1e-9)
        );
        let mut row = vec![String::new(); METRICS_HEADER.split(',').count()];
        row[0] = "epoch".into();
        row[1] = st.step.to_string();
        row[2] = epoch.to_string();
        row[3] = lr.to_string();
        row[20] = format!("{secs:.3}");
        row[21] = format!("{wait:.3}");
        csv_row(&mut metrics, &row)?;
        let last_epoch = epoch + 1 == cfg.train.epochs;
        let v = cfg.train.val_every;
        if (v > 0 && (epoch + 1).is_multiple_of(v)) || last_epoch {
            validate_and_keep_best(cfg, &mut st, &splits, &store, &device, opts, &mut metrics)?;
        }
        save(&last_path, &st, cfg, spe)?;
        metrics.flush().context("writing metrics.csv")?;
        if let Err(e) = draw_curves(&run_dir) {
            tracing::warn!("could not draw the curves: {e:#}");
        }
    }
    bar.finish_and_clear();
    metrics.flush().context("writing metrics.csv")?;
    if reason != StopReason::Killed {
        if let Err(e) = draw_curves(&run_dir) {
            tracing::warn!("could not draw the curves: {e:#}");
        }
    }
    Ok(TrainOutcome {
        run_dir,
        steps: st.step,
        reason,
        losses,
        best_score: st.best,
        seconds: t_start.elapsed().as_secs_f64(),
        data_wait: wait_total,
        splits,
    })
}

/// Validates on all 15 subsets (if there are validation cases), logs the table to
/// `metrics.csv` and keeps the best-scoring weights as `best.safetensors`.
fn validate_and_keep_best(
    cfg: &Config,
    st: &mut State,
    splits: &Splits,
    store: &CaseStore,
    device: &Device,
    opts: &RunOptions,
    metrics: &mut impl Write,
) -> Result<()> {
    if splits.val.is_empty() {
        return Ok(());
    }
    let run_dir = opts.resume.clone().unwrap_or_else(|| cfg.run.dir.clone());
    let spe = steps_per_epoch(cfg, splits.train.len());
    let epoch = (st.step.saturating_sub(1) / spe) as usize;
    let settings = EvalSettings::for_protocol(&cfg.protocol, opts.progress);
    let report = evaluate(&st.obj.model().unet, &splits.val, store, &settings, device)?;
    for r in &report.rows {
        let mut row = vec![String::new(); METRICS_HEADER.split(',').count()];
        row[0] = "val".into();
        row[1] = st.step.to_string();
        row[2] = epoch.to_string();
        row[13] = r.subset.clone();
        for k in 0..3 {
            row[14 + k] = r.dice[k].to_string();
            row[17 + k] = r.hd95[k].to_string();
        }
        csv_row(metrics, &row)?;
    }
    let score = report.score();
    tracing::info!(
        "validation at step {} (epoch {}): mean Dice {:.4} (WT/TC/ET {:.3}/{:.3}/{:.3}) on {} cases",
        st.step,
        epoch + 1,
        score,
        report.mean.dice[0],
        report.mean.dice[1],
        report.mean.dice[2],
        splits.val.len()
    );
    if st.best.is_none_or(|b| score > b) {
        st.best = Some(score);
        save(&run_dir.join(files::BEST), st, cfg, spe)?;
    }
    Ok(())
}
