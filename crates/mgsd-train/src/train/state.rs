//! What the loop mutates — the MGSD objective (student, teacher, heads, discriminator), both
//! optimisers, the step and the best score — and how it is created fresh (seeded weights),
//! restored from `last.safetensors` and saved.

use super::{files, git_commit};
use crate::checkpoint::{self, Meta};
use crate::config::Config;
use crate::data::{mix, stream};
use crate::model::{
    mgsd_config, named_vars, objective_from_checkpoint, weight_tensors, DISCRIMINATOR_PREFIX,
    DROPOUT_SEEDS_PER_STEP, OPTIM_D_PREFIX, OPTIM_PREFIX,
};
use crate::optim::{Adam, AdamConfig};
use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use mgsd_distill::objective::{MgsdObjective, EMA_PREFIX, UNET_PREFIX};
use mgsd_distill::{MaskSampling, ModalityMask};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

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
/// The objective a new run starts from: seeded weights (see [`seeded_init`]), `[model]
/// output_bias` applied, the teacher equal to the student, the first dropout seed
/// `dropout_seed`. Tools that must measure exactly the run `mgsd-train train` makes (the
/// `term-gradients` example) start from it too.
///
/// # Errors
/// A model that cannot be built for `cfg`.
pub fn fresh_objective(cfg: &Config, device: &Device, dropout_seed: u64) -> Result<MgsdObjective> {
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

pub(super) fn sampler_mode(cfg: &Config) -> Result<MaskSampling> {
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
pub(super) struct State {
    pub obj: MgsdObjective,
    pub opt: Adam,
    pub opt_d: Option<Adam>,
    pub step: u64,
    pub best: Option<f64>,
}

/// The two optimisers' hyper-parameters.
fn adam_configs(cfg: &Config) -> (AdamConfig, AdamConfig) {
    let t = &cfg.train;
    let adam = AdamConfig { lr: t.lr, betas: t.betas, eps: 1e-8, weight_decay: t.weight_decay };
    let adam_d = AdamConfig { lr: t.d_lr, betas: t.d_betas, eps: 1e-8, weight_decay: 0.0 };
    (adam, adam_d)
}

impl State {
    /// Seeded weights, the teacher equal to the student, fresh optimisers.
    pub fn fresh(cfg: &Config, device: &Device) -> Result<State> {
        let (adam, adam_d) = adam_configs(cfg);
        let obj = fresh_objective(cfg, device, mix(cfg.train.seed, stream::DROPOUT))?;
        let opt = Adam::new(named_vars(obj.student_vars())?, adam)?;
        let opt_d = discriminator_named(&obj)?.map(|v| Adam::new(v, adam_d)).transpose()?;
        Ok(State { obj, opt, opt_d, step: 0, best: None })
    }

    /// The state saved in `last` (a run's `last.safetensors`), refusing a checkpoint made with
    /// another training configuration.
    pub fn resume(cfg: &Config, last: &Path, run_dir: &Path, device: &Device) -> Result<State> {
        let (adam, adam_d) = adam_configs(cfg);
        let ckpt = checkpoint::load(last, device)
            .with_context(|| format!("resuming {}: no usable checkpoint", run_dir.display()))?;
        let meta = ckpt.meta()?.clone();
        let hash = cfg.training_hash()?;
        if meta.config_hash != hash {
            bail!(
                "{}: the checkpoint was made with another configuration (hash {} vs {hash}); resume with the run's own {} (`--config {}`)",
                last.display(),
                meta.config_hash,
                files::CONFIG,
                run_dir.join(files::CONFIG).display()
            );
        }
        let dropout_base = mix(cfg.train.seed, stream::DROPOUT);
        let obj = objective_from_checkpoint(
            &ckpt,
            mgsd_config(cfg, dropout_base.wrapping_add(DROPOUT_SEEDS_PER_STEP * meta.step)),
            device,
        )?;
        let mut opt = Adam::new(named_vars(obj.student_vars())?, adam)?;
        opt.load_state(OPTIM_PREFIX, &ckpt.tensors, meta.optim_step)
            .with_context(|| format!("{}: optimiser state", last.display()))?;
        let opt_d = match discriminator_named(&obj)? {
            Some(vars) => {
                let mut o = Adam::new(vars, adam_d)?;
                o.load_state(OPTIM_D_PREFIX, &ckpt.tensors, meta.optim_d_step).with_context(
                    || format!("{}: discriminator optimiser state", last.display()),
                )?;
                Some(o)
            }
            None => None,
        };
        tracing::info!(
            "resuming {} at step {} (epoch {})",
            run_dir.display(),
            meta.step,
            meta.epoch
        );
        Ok(State { obj, opt, opt_d, step: meta.step, best: meta.best_score })
    }

    /// Writes the whole state to `path` (atomically); `spe` steps per epoch give its epoch.
    pub fn save(&self, path: &Path, cfg: &Config, spe: u64) -> Result<()> {
        let mut tensors = weight_tensors(&self.obj)?;
        tensors.extend(self.opt.state_tensors(OPTIM_PREFIX));
        if let Some(d) = &self.opt_d {
            tensors.extend(d.state_tensors(OPTIM_D_PREFIX));
        }
        let mut extra = BTreeMap::new();
        extra.insert("git_commit".to_string(), git_commit());
        let meta = Meta {
            step: self.step,
            epoch: (self.step / spe) as usize,
            optim_step: self.opt.step_count(),
            optim_d_step: self.opt_d.as_ref().map_or(0, Adam::step_count),
            seed: cfg.train.seed,
            config_hash: cfg.training_hash()?,
            config: cfg.to_toml()?,
            best_score: self.best,
            extra,
        };
        checkpoint::save(path, &tensors, &meta)
    }

    /// Trainable parameters of the segmenter and heads.
    pub fn parameter_count(&self) -> Result<usize> {
        Ok(named_vars(self.obj.student_vars())?.iter().map(|(_, v)| v.elem_count()).sum())
    }
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
