//! What the loop mutates — the MGSD objective (student, teacher, heads, discriminator), both
//! optimisers, the step and the best score — and how it is created fresh (seeded weights),
//! restored from `last.safetensors` and saved.

use super::{files, git_commit};
use crate::checkpoint::{self, Checkpoint, Meta};
use crate::config::Config;
use crate::data::{mix, stream};
use crate::distributed::{Collective, Sharding};
use crate::model::{
    mgsd_config, named_vars, objective_from_checkpoint, weight_tensors, DISCRIMINATOR_PREFIX,
    OPTIM_D_PREFIX, OPTIM_PREFIX,
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
    /// Micro-batches per step (world size × accumulation) of the run that saved this state
    /// (1 for a fresh state and for checkpoints that do not say).
    pub saved_micro_batches: usize,
}

/// Checkpoint metadata key of the micro-batches per step (world size × accumulation).
const MICRO_BATCHES_KEY: &str = "micro_batches_per_step";

/// The counters a state is restored with.
struct Counters {
    step: u64,
    optim_step: u64,
    optim_d_step: u64,
    best: Option<f64>,
    micro_batches: usize,
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
        Ok(State { obj, opt, opt_d, step: 0, best: None, saved_micro_batches: 1 })
    }

    /// The state saved in `last` (a run's `last.safetensors`), refusing a checkpoint made with
    /// another training configuration.
    pub fn resume(cfg: &Config, last: &Path, run_dir: &Path, device: &Device) -> Result<State> {
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
        let counters = Counters {
            step: meta.step,
            optim_step: meta.optim_step,
            optim_d_step: meta.optim_d_step,
            best: meta.best_score,
            micro_batches: meta
                .extra
                .get(MICRO_BATCHES_KEY)
                .and_then(|m| m.parse().ok())
                .unwrap_or(1),
        };
        let st = State::from_tensors(cfg, &ckpt, counters, device)?;
        tracing::info!(
            "resuming {} at step {} (epoch {})",
            run_dir.display(),
            meta.step,
            meta.epoch
        );
        Ok(st)
    }

    /// Weights, teacher, discriminator and both optimisers from `ckpt`'s tensors, with the
    /// step counters of `counters`.
    fn from_tensors(
        cfg: &Config,
        ckpt: &Checkpoint,
        counters: Counters,
        device: &Device,
    ) -> Result<State> {
        let (adam, adam_d) = adam_configs(cfg);
        // The trainer positions the dropout seeds before every micro-batch
        // (`seek_dropout_seeds`), so the objective starts from the run's base seed.
        let obj = objective_from_checkpoint(
            ckpt,
            mgsd_config(cfg, mix(cfg.train.seed, stream::DROPOUT)),
            device,
        )?;
        let origin = ckpt.path.display();
        let mut opt = Adam::new(named_vars(obj.student_vars())?, adam)?;
        opt.load_state(OPTIM_PREFIX, &ckpt.tensors, counters.optim_step)
            .with_context(|| format!("{origin}: optimiser state"))?;
        let opt_d = match discriminator_named(&obj)? {
            Some(vars) => {
                let mut o = Adam::new(vars, adam_d)?;
                o.load_state(OPTIM_D_PREFIX, &ckpt.tensors, counters.optim_d_step)
                    .with_context(|| format!("{origin}: discriminator optimiser state"))?;
                Some(o)
            }
            None => None,
        };
        Ok(State {
            obj,
            opt,
            opt_d,
            step: counters.step,
            best: counters.best,
            saved_micro_batches: counters.micro_batches,
        })
    }

    /// Every tensor of the state: weights, teacher, discriminator, optimiser moments.
    fn tensors(&self) -> Result<Vec<(String, Tensor)>> {
        let mut tensors = weight_tensors(&self.obj)?;
        tensors.extend(self.opt.state_tensors(OPTIM_PREFIX));
        if let Some(d) = &self.opt_d {
            tensors.extend(d.state_tensors(OPTIM_D_PREFIX));
        }
        Ok(tensors)
    }

    /// Rank 0's state on every rank of `comm` (at the start and on resume, so that all ranks
    /// begin identical whatever they read): every tensor and counter is broadcast from rank 0.
    /// A no-op for one process.
    ///
    /// # Errors
    /// Communication errors; a state that cannot be rebuilt.
    pub fn broadcast_from_root(
        self,
        comm: &dyn Collective,
        cfg: &Config,
        device: &Device,
    ) -> Result<State> {
        if comm.world_size() == 1 {
            return Ok(self);
        }
        let mut tensors = HashMap::new();
        for (name, t) in self.tensors()? {
            tensors.insert(name, comm.broadcast(&t, 0)?);
        }
        let c = [
            self.step as f64,
            self.opt.step_count() as f64,
            self.opt_d.as_ref().map_or(0, Adam::step_count) as f64,
            self.best.unwrap_or(f64::NAN),
            self.saved_micro_batches as f64,
        ];
        let c = comm
            .broadcast(&Tensor::new(&c, device)?, 0)?
            .to_dtype(candle_core::DType::F64)?
            .to_vec1::<f64>()?;
        let counters = Counters {
            step: c[0] as u64,
            optim_step: c[1] as u64,
            optim_d_step: c[2] as u64,
            best: Some(c[3]).filter(|b| !b.is_nan()),
            micro_batches: c[4] as usize,
        };
        let ckpt = Checkpoint { path: "<rank 0's state>".into(), tensors, meta: None };
        State::from_tensors(cfg, &ckpt, counters, device)
    }

    /// Checksums of the student, teacher, discriminator and optimiser state (sums and sums of
    /// squares in f64, in name order): what data-parallel ranks compare to prove they train
    /// the same model.
    ///
    /// # Errors
    /// Tensor errors.
    pub fn checksums(&self) -> Result<Vec<(&'static str, f64)>> {
        let mut groups: BTreeMap<&'static str, f64> = BTreeMap::new();
        let mut tensors = self.tensors()?;
        tensors.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, t) in tensors {
            let group = if name.starts_with(OPTIM_PREFIX) || name.starts_with(OPTIM_D_PREFIX) {
                "optimiser"
            } else if name.starts_with(EMA_PREFIX) {
                "teacher"
            } else if name.starts_with(DISCRIMINATOR_PREFIX) {
                "discriminator"
            } else {
                "student"
            };
            let t = t.to_dtype(candle_core::DType::F64)?;
            let v = t.sum_all()?.to_scalar::<f64>()? + t.sqr()?.sum_all()?.to_scalar::<f64>()?;
            *groups.entry(group).or_default() += v;
        }
        Ok(groups.into_iter().collect())
    }

    /// Writes the whole state to `path` (atomically); `spe` steps per epoch give its epoch,
    /// `sharding` (world size and accumulation) is recorded for a resume that changes it.
    pub fn save(&self, path: &Path, cfg: &Config, spe: u64, sharding: Sharding) -> Result<()> {
        let tensors = self.tensors()?;
        let mut extra = BTreeMap::new();
        extra.insert("git_commit".to_string(), git_commit());
        extra.insert(MICRO_BATCHES_KEY.to_string(), sharding.micro_batches().to_string());
        extra.insert("world_size".to_string(), sharding.world.to_string());
        extra.insert("accumulate".to_string(), sharding.accumulate.to_string());
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
