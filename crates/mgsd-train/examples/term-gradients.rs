//! Trains MGSD as `mgsd-train train` does and, every `--every` steps, back-propagates each loss
//! term on its own and records its value and the L2 norm of its gradient per parameter group
//! (U-Net, the modality level's extractor / conv_down / attention / feed-forward, the feature
//! level's Mutiaxis heads, the discriminator) — `mgsd_distill::term_gradients`. One JSON object
//! per measured step goes to `--out` (JSON Lines), with the L2 norm of each parameter group's
//! weights; a summary per term goes to stdout. `bench/term_gradients_table.py` makes tables.
//!
//! ```text
//! cargo run --release -p mgsd-train --example term-gradients -- \
//!     [--config configs/demo.toml] [--steps 480] [--every 20] [--out terms.jsonl] \
//!     [--run-dir runs/term-gradients] [--lr 1e-4] [--channels 16] [--patch 64,64,64] \
//!     [--modality-attention prenorm] [--seed 0]
//! ```
//! The loop is the trainer's (same data pipeline, masks, Adam with poly decay, EMA teacher,
//! discriminator step, the trainer's seeded initialisation); the measurement is taken on the
//! step's own batch before the update and does not change the training. Not done: checkpoints
//! and validation.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use mgsd_distill::{
    param_group, term_gradients, MaskSampler, MaskSampling, ModalityAttention, ModalityMask,
};
use mgsd_io::ModalitySet;
use mgsd_train::config::{Config, Sampler};
use mgsd_train::data::{mix, stream, CaseStore, Loader, SampleSource};
use mgsd_train::model::named_vars;
use mgsd_train::optim::{poly_lr, Adam, AdamConfig};
use mgsd_train::protocol::train_pipeline;
use mgsd_train::train::{fresh_objective, next_batch, resolve_data, steps_per_epoch};

const USAGE: &str = "usage: term-gradients [--config FILE] [--steps N] [--every K] [--out FILE] \
[--run-dir DIR] [--lr LR] [--channels C] [--patch D,H,W] [--modality-attention reference|prenorm] \
[--seed S]";

struct Args {
    config: Option<PathBuf>,
    steps: Option<u64>,
    every: u64,
    out: PathBuf,
    run_dir: PathBuf,
    lr: Option<f64>,
    channels: Option<usize>,
    patch: Option<[usize; 3]>,
    attention: Option<ModalityAttention>,
    seed: Option<u64>,
}

fn parse() -> Result<Args> {
    let mut a = Args {
        config: None,
        steps: None,
        every: 20,
        out: PathBuf::from("term-gradients.jsonl"),
        run_dir: PathBuf::from("runs/term-gradients"),
        lr: None,
        channels: None,
        patch: None,
        attention: None,
        seed: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "-h" || flag == "--help" {
            bail!("{USAGE}");
        }
        let v = it.next().with_context(|| format!("{flag} needs a value\n{USAGE}"))?;
        let bad = || format!("{flag} {v}: not a valid value\n{USAGE}");
        match flag.as_str() {
            "--config" => a.config = Some(PathBuf::from(&v)),
            "--steps" => a.steps = Some(v.parse().with_context(bad)?),
            "--every" => a.every = v.parse::<u64>().with_context(bad)?.max(1),
            "--out" => a.out = PathBuf::from(&v),
            "--run-dir" => a.run_dir = PathBuf::from(&v),
            "--lr" => a.lr = Some(v.parse().with_context(bad)?),
            "--channels" => a.channels = Some(v.parse().with_context(bad)?),
            "--seed" => a.seed = Some(v.parse().with_context(bad)?),
            "--patch" => {
                let p: Vec<usize> = v
                    .split(',')
                    .map(|s| s.trim().parse())
                    .collect::<Result<_, _>>()
                    .with_context(bad)?;
                let Ok(p) = <[usize; 3]>::try_from(p) else { bail!("{}", bad()) };
                a.patch = Some(p);
            }
            "--modality-attention" => {
                a.attention = Some(match v.as_str() {
                    "reference" => ModalityAttention::Reference,
                    "prenorm" => ModalityAttention::Prenorm,
                    _ => bail!("{}", bad()),
                })
            }
            _ => bail!("unknown argument {flag}\n{USAGE}"),
        }
    }
    Ok(a)
}

fn scalar(t: &Tensor) -> Result<f64> {
    Ok(t.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?)
}

fn main() -> Result<()> {
    let args = parse()?;
    let mut cfg = match &args.config {
        Some(p) => Config::load(p)?,
        None => Config::demo()?,
    };
    if let Some(lr) = args.lr {
        cfg.train.lr = lr;
    }
    if let Some(c) = args.channels {
        cfg.model.channels = c;
    }
    if let Some(p) = args.patch {
        cfg.protocol.patch = p;
    }
    if let Some(m) = args.attention {
        cfg.model.modality_attention = m;
    }
    if let Some(s) = args.seed {
        cfg.train.seed = s;
    }
    cfg.validate()?;
    let device = Device::Cpu;
    std::fs::create_dir_all(&args.run_dir)
        .with_context(|| format!("creating {}", args.run_dir.display()))?;
    let splits = resolve_data(&cfg, &args.run_dir)?;
    let seed = cfg.train.seed;
    let source = Arc::new(SampleSource {
        store: Arc::new(CaseStore::new(true, None)),
        cases: splits.train.clone(),
        pipeline: train_pipeline(&cfg.protocol),
        seed,
    });
    let spe = steps_per_epoch(&cfg, splits.train.len());
    let total = args.steps.unwrap_or(spe * cfg.train.epochs as u64);

    // The trainer's own initialisation: the reference's modality term has degree 32 in the
    // attention weights' scale, so only the run `mgsd-train train` makes is worth measuring
    // (candle's default initialisation would make the term ~10¹² times larger).
    let mut obj = fresh_objective(&cfg, &device, mix(seed, stream::DROPOUT))?;
    let adam = AdamConfig {
        lr: cfg.train.lr,
        betas: cfg.train.betas,
        eps: 1e-8,
        weight_decay: cfg.train.weight_decay,
    };
    let adam_d =
        AdamConfig { lr: cfg.train.d_lr, betas: cfg.train.d_betas, eps: 1e-8, weight_decay: 0.0 };
    let mut opt = Adam::new(named_vars(obj.student_vars())?, adam)?;
    let mut opt_d = obj
        .discriminator_vars()
        .map(named_vars)
        .transpose()?
        .map(|v| Adam::new(v, adam_d))
        .transpose()?;
    let mode = match cfg.train.sampler {
        Sampler::Reference => MaskSampling::Reference,
        Sampler::Uniform => MaskSampling::UniformSubsets,
        Sampler::Fixed(set) => MaskSampling::Fixed {
            mask: ModalityMask::new(set.channel_mask(&mgsd_io::ACN_CHANNEL_ORDER))?,
        },
    };

    let mut out = std::io::BufWriter::new(
        std::fs::File::create(&args.out)
            .with_context(|| format!("creating {}", args.out.display()))?,
    );
    let batch = cfg.train.batch;
    // term → (max value, max |grad| on the U-Net, max |grad| on any MMD group) over the run.
    let mut summary: BTreeMap<String, [f64; 3]> = BTreeMap::new();
    let t0 = Instant::now();
    let mut step = 0u64;
    while step < total {
        let epoch = (step / spe) as usize;
        let lr = poly_lr(cfg.train.lr, epoch, cfg.train.epochs, cfg.train.lr_power);
        opt.set_lr(lr);
        let first = step % spe;
        let mut loader = Loader::start(
            source.clone(),
            epoch,
            ((first as usize) * batch, (spe as usize) * batch),
            1,
            4,
        );
        for _ in first..spe {
            if step >= total {
                break;
            }
            let (x, y) = next_batch(&mut loader, batch, cfg.protocol.patch, &device)?;
            let mask = MaskSampler::new(mode, mix(mix(seed, stream::MASK), step)).draw();
            if cfg.loss.warmup_steps > 0 {
                obj.set_weights(mgsd_train::model::loss_weights_at(&cfg, step));
            }
            let terms = obj.step_losses(&x, &y, &mask, true)?;
            if step.is_multiple_of(args.every) || step + 1 == total {
                let tg = term_gradients(&obj, &terms)?;
                for (term, norms) in &tg.norms {
                    let e = summary.entry(term.clone()).or_insert([0.0; 3]);
                    e[0] = e[0].max(tg.values[term].abs());
                    e[1] = e[1].max(norms["unet"]);
                    let mmd = norms
                        .iter()
                        .filter(|(g, _)| g.starts_with("mmd_"))
                        .fold(0f64, |m, (_, v)| m.max(*v));
                    e[2] = e[2].max(mmd);
                }
                // L2 norm of each parameter group's weights: does the optimiser shrink a head?
                let mut param_sq: BTreeMap<&str, f64> = BTreeMap::new();
                for (k, v) in named_vars(obj.student_vars())? {
                    let sq = v.as_tensor().sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
                    *param_sq.entry(param_group(&k)).or_default() += sq;
                }
                let param_norms: BTreeMap<&str, f64> =
                    param_sq.into_iter().map(|(k, s)| (k, s.sqrt())).collect();
                let subset =
                    ModalitySet::from_channel_mask(&mask.values(), &mgsd_io::ACN_CHANNEL_ORDER);
                let line = serde_json::json!({
                    "step": step,
                    "epoch": epoch,
                    "lr": lr,
                    "subset": subset.to_string(),
                    "values": tg.values,
                    "weights": tg.weights,
                    "grad_norms": tg.norms,
                    "param_norms": param_norms,
                });
                writeln!(out, "{line}").context("writing the measurements")?;
                out.flush().context("writing the measurements")?;
                eprintln!(
                    "step {step:>5} ({:.0}s): modality {:.3e}, |∇unet| modality {:.3e} vs sup_miss {:.3e}",
                    t0.elapsed().as_secs_f64(),
                    tg.values["modality"],
                    tg.norms["modality"]["unet"],
                    tg.norms["sup_miss"]["unet"]
                );
            }
            let total_loss = scalar(&terms.total)?;
            if !total_loss.is_finite() {
                bail!("the loss is not finite at step {}", step + 1);
            }
            let grads = terms.total.backward()?;
            opt.step(&grads)?;
            obj.update_teacher(step)?;
            if let (Some(o), Some(l)) = (opt_d.as_mut(), obj.discriminator_loss(&terms)?) {
                if scalar(&l)?.is_finite() {
                    o.step(&l.backward()?)?;
                }
            }
            step += 1;
        }
    }
    println!(
        "{step} steps in {:.1} min; measurements in {}",
        t0.elapsed().as_secs_f64() / 60.0,
        args.out.display()
    );
    println!("{:<10} {:>12} {:>14} {:>14}", "term", "max |value|", "max |∇ U-Net|", "max |∇ MMD|");
    for (term, [v, u, m]) in &summary {
        println!("{term:<10} {v:>12.3e} {u:>14.3e} {m:>14.3e}");
    }
    Ok(())
}
