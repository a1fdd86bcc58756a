//! The MGSD training objective (MGSD-SPEC §3): one step's losses, named and weighted.
//!
//! ```text
//! out_t              = ema(x)                       (no gradient)
//! out_f, style_f, f* = unet(x)
//! out_m, style_m, m* = unet(x · r)
//! sup_full = Dice(out_f, y)        sup_miss = Dice(out_m, y)
//! image    = mse(out_f, out_t) + mse(out_m, out_t)
//! feature  = Σ_s mse(P_s(f_s), P_s(m_s))                  (Mutiaxis_fuse2..4)
//! modality = L_mod(style_f, style_m, x, r)                (MMD)
//! adv_gen  = bce_logits(D_frozen(out_m), 0)               (when a discriminator is attached)
//! total    = 1·sup_full + 1·sup_miss + 10·image + 150·modality + 50·feature + 1·adv_gen
//! ```
//! The reference's own `loss_total` is the same sum without `adv_gen` (it back-propagates the
//! adversarial term separately into the same gradients, which is the same thing). The weights
//! are a [`LossWeights`] config.
//!
//! Variables: the student's in one [`VarMap`] (`unet.*`, `MMD.*`, `Mutiaxis_fuse{2,3,4}.*`) for
//! the segmenter's optimiser; the discriminator's in another (`0.*` … `6.*`) for its own
//! optimiser; the teacher's (`ema_model.*`) are plain tensors updated only by
//! [`MgsdObjective::update_teacher`].
//!
//! Training mode applies dropout in the two student passes and, as the reference does (its EMA
//! network is a sub-module of the training-mode model), in the teacher pass. Every training
//! step draws [`DROPOUT_SEEDS_PER_STEP`] seeds from a counter, so a resumed run can restart the
//! counter from its step number.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use mgsd_nn::discriminator::StyleDiscriminator;
use mgsd_nn::unet3d::{UNet3D, UNet3DConfig};
use serde::{Deserialize, Serialize};

use crate::adversarial::Adversary;
use crate::ema::{Ema, EmaConfig};
use crate::error::{Error, Result};
use crate::feature::{FeatureDistillation, MULTI_AXIS_GAMMA};
use crate::losses::{image_level, soft_dice};
use crate::modality::{ModalityAttention, ModalityDistillation, PRESENT_WEIGHT};
use crate::sampler::ModalityMask;

/// Checkpoint prefix of the student U-Net.
pub const UNET_PREFIX: &str = "unet";
/// Checkpoint prefix of the teacher U-Net.
pub const EMA_PREFIX: &str = "ema_model";
/// Output channels of the segmenter (ED, NCR/NET, ET).
pub const OUT_CHANNELS: usize = 3;
/// Dropout seeds one training step draws: the teacher pass and the batched student passes.
pub const DROPOUT_SEEDS_PER_STEP: u64 = 2;

/// Weights of the terms in `total` (MGSD-SPEC §3 step 4; adversarial weight 1 as the reference's
/// separate backward).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LossWeights {
    /// Dice of the full path.
    pub sup_full: f64,
    /// Dice of the missing path.
    pub sup_miss: f64,
    /// Image level (teacher to student).
    pub image: f64,
    /// Modality level.
    pub modality: f64,
    /// Feature level.
    pub feature: f64,
    /// Generator term of the style discriminator.
    pub adversarial: f64,
}

impl Default for LossWeights {
    fn default() -> Self {
        Self {
            sup_full: 1.0,
            sup_miss: 1.0,
            image: 10.0,
            modality: 150.0,
            feature: 50.0,
            adversarial: 1.0,
        }
    }
}

/// Everything that shapes the objective.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MgsdConfig {
    /// U-Net base width `c` (16 in the reference; a multiple of 8 for GroupNorm(8, ·)).
    pub width: usize,
    /// Dropout after `convco` in training mode (0.2).
    pub dropout: f32,
    /// γ of the multi-axis norm (0.7).
    pub gamma: f64,
    /// Weight α of the present-modality group of `L_mod` (0.6; missing gets 1 − α).
    pub present_weight: f64,
    /// The modality level's decoder layer: the reference's bare attention or the pre-norm
    /// layer with residuals and feed-forward (same parameters).
    pub modality_attention: ModalityAttention,
    /// Whether the teacher pass also uses dropout in training mode (the reference: yes).
    pub teacher_dropout: bool,
    /// Loss weights.
    pub weights: LossWeights,
    /// Teacher decay schedule.
    pub ema: EmaConfig,
    /// First dropout seed; each training-mode pass takes the next one.
    pub seed: u64,
    /// Rebuild the U-Net blocks' GroupNorm outputs in the backward instead of keeping them
    /// (`UNet3DConfig::recompute_norm`; same numbers, less memory).
    pub recompute_norm: bool,
}

impl Default for MgsdConfig {
    fn default() -> Self {
        Self {
            width: 16,
            dropout: 0.2,
            gamma: MULTI_AXIS_GAMMA,
            present_weight: PRESENT_WEIGHT,
            modality_attention: ModalityAttention::Reference,
            teacher_dropout: true,
            weights: LossWeights::default(),
            ema: EmaConfig::default(),
            seed: 0,
            recompute_norm: true,
        }
    }
}

impl MgsdConfig {
    /// The backbone's configuration.
    pub fn unet(&self) -> UNet3DConfig {
        UNet3DConfig {
            width: self.width,
            dropout: self.dropout,
            recompute_norm: self.recompute_norm,
            ..UNet3DConfig::default()
        }
    }

    /// Checks the numbers.
    pub fn validate(&self) -> Result<()> {
        if self.width == 0 || !self.width.is_multiple_of(8) {
            return Err(Error::Config(format!(
                "width {} must be a positive multiple of 8",
                self.width
            )));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(Error::Config(format!("dropout {} must be in [0, 1)", self.dropout)));
        }
        if !(0.0..=1.0).contains(&self.ema.decay_max) {
            return Err(Error::Config(format!(
                "ema.decay_max {} must be in [0, 1]",
                self.ema.decay_max
            )));
        }
        Ok(())
    }
}

/// The student side of MGSD: the segmenter and the distillation heads.
#[derive(Clone, Debug)]
pub struct MgsdModel {
    /// The segmenter, `unet.*`.
    pub unet: UNet3D,
    /// Modality level, `MMD.*`.
    pub mmd: ModalityDistillation,
    /// Feature level, `Mutiaxis_fuse{2,3,4}.*`.
    pub features: FeatureDistillation,
}

impl MgsdModel {
    /// Creates or loads the modules under their reference paths below `vb`.
    pub fn new(cfg: &MgsdConfig, vb: &VarBuilder<'_>) -> candle_core::Result<Self> {
        Ok(Self {
            unet: UNet3D::new(cfg.unet(), vb.pp(UNET_PREFIX))?,
            mmd: ModalityDistillation::new(
                cfg.width,
                cfg.present_weight,
                cfg.modality_attention,
                vb.pp("MMD"),
            )?,
            features: FeatureDistillation::new(cfg.width, cfg.gamma, vb)?,
        })
    }
}

/// One step's terms, each a scalar tensor in the autograd graph (except `adv_gen` when no
/// discriminator is attached), plus the two outputs the discriminator step needs.
#[derive(Clone, Debug)]
pub struct Terms {
    /// Soft Dice of `unet(x)`.
    pub sup_full: Tensor,
    /// Soft Dice of `unet(x·r)`.
    pub sup_miss: Tensor,
    /// Image level.
    pub image: Tensor,
    /// Feature level.
    pub feature: Tensor,
    /// Modality level.
    pub modality: Tensor,
    /// Generator term, when a discriminator is attached.
    pub adv_gen: Option<Tensor>,
    /// The weighted sum.
    pub total: Tensor,
    /// `unet(x).out`.
    pub out_f: Tensor,
    /// `unet(x·r).out`.
    pub out_m: Tensor,
}

impl Terms {
    /// The terms as numbers, by name (`sup_full`, `sup_miss`, `image`, `feature`, `modality`,
    /// `adv_gen` when present, `total`), for logs and JSON.
    pub fn values(&self) -> candle_core::Result<BTreeMap<&'static str, f64>> {
        let mut m = BTreeMap::new();
        let v =
            |t: &Tensor| -> candle_core::Result<f64> { t.to_dtype(DType::F64)?.to_scalar::<f64>() };
        m.insert("sup_full", v(&self.sup_full)?);
        m.insert("sup_miss", v(&self.sup_miss)?);
        m.insert("image", v(&self.image)?);
        m.insert("feature", v(&self.feature)?);
        m.insert("modality", v(&self.modality)?);
        if let Some(a) = &self.adv_gen {
            m.insert("adv_gen", v(a)?);
        }
        m.insert("total", v(&self.total)?);
        Ok(m)
    }
}

/// The objective: student, teacher, optional discriminator and the weights.
pub struct MgsdObjective {
    cfg: MgsdConfig,
    device: Device,
    vars: VarMap,
    model: MgsdModel,
    ema: Ema,
    teacher: UNet3D,
    adversary: Option<Adversary<StyleDiscriminator>>,
    next_seed: AtomicU64,
}

impl MgsdObjective {
    /// A freshly initialised objective (teacher = student), with a discriminator when
    /// `with_discriminator`.
    pub fn new(cfg: MgsdConfig, device: &Device, with_discriminator: bool) -> Result<Self> {
        cfg.validate()?;
        let vars = VarMap::new();
        let model = MgsdModel::new(&cfg, &VarBuilder::from_varmap(&vars, DType::F32, device))?;
        let ema = Ema::from_student(&vars, UNET_PREFIX, cfg.ema)?;
        let teacher = UNet3D::new(cfg.unet(), ema.var_builder(device))?;
        let adversary = if with_discriminator {
            Some(Adversary::new(VarMap::new(), device, |vb| {
                StyleDiscriminator::new(OUT_CHANNELS, vb)
            })?)
        } else {
            None
        };
        Ok(Self {
            next_seed: AtomicU64::new(cfg.seed),
            cfg,
            device: device.clone(),
            vars,
            model,
            ema,
            teacher,
            adversary,
        })
    }

    /// An objective with every tensor taken from `state` (reference key names: `unet.*`,
    /// `ema_model.*`, `MMD.*`, `Mutiaxis_fuse{2,3,4}.*`) and, if given, the discriminator's
    /// from `disc` (`0.*` … `6.*`). `source` names the origin in error messages. Extra tensors
    /// are ignored; a missing or mis-shaped one is an error naming it.
    pub fn from_state(
        cfg: MgsdConfig,
        state: &HashMap<String, Tensor>,
        disc: Option<&HashMap<String, Tensor>>,
        source: &Path,
        device: &Device,
    ) -> Result<Self> {
        let mut obj = Self::new(cfg, device, disc.is_some())?;
        set_vars(&obj.vars, state, "", source)?;
        // The teacher: every student `unet.<k>` must have an `ema_model.<k>` of the same shape.
        let mut teacher = Vec::new();
        for (k, t) in obj.ema.tensors() {
            let name = format!("{EMA_PREFIX}.{k}");
            let v = lookup(state, &name, t.dims(), source)?;
            teacher.push((k.clone(), v.to_dtype(DType::F32)?.to_device(device)?.copy()?));
        }
        obj.ema = Ema::from_tensors(UNET_PREFIX, teacher, cfg.ema);
        obj.teacher = UNet3D::new(cfg.unet(), obj.ema.var_builder(device))?;
        if let (Some(adv), Some(d)) = (&obj.adversary, disc) {
            set_vars(adv.vars(), d, "", source)?;
        }
        Ok(obj)
    }

    /// Loads a full MGSD state from a safetensors file (the U-Net width is read from
    /// `unet.conv1a.weight`; the rest of `cfg` is kept), and the discriminator from `disc`.
    pub fn load(
        cfg: MgsdConfig,
        weights: &Path,
        disc: Option<&Path>,
        device: &Device,
    ) -> Result<Self> {
        let state = read_file(weights, device)?;
        let conv1a = format!("{UNET_PREFIX}.conv1a.weight");
        let Some(w) = state.get(&conv1a) else {
            return Err(Error::MissingTensor { path: weights.to_path_buf(), name: conv1a });
        };
        let width = match w.dims() {
            &[c, 4, 3, 3, 3] => c,
            d => {
                return Err(Error::BadShape {
                    path: weights.to_path_buf(),
                    name: conv1a,
                    got: d.to_vec(),
                    expected: "(c, 4, 3, 3, 3)".into(),
                })
            }
        };
        let d = disc.map(|p| read_file(p, device)).transpose()?;
        let cfg = MgsdConfig { width, ..cfg };
        let obj = Self::from_state(cfg, &state, None, weights, device)?;
        match (d, disc) {
            (Some(d), Some(p)) => {
                let mut obj = obj;
                let adv = Adversary::new(VarMap::new(), device, |vb| {
                    StyleDiscriminator::new(OUT_CHANNELS, vb)
                })?;
                set_vars(adv.vars(), &d, "", p)?;
                obj.adversary = Some(adv);
                Ok(obj)
            }
            _ => Ok(obj),
        }
    }

    /// Writes the student and the teacher (`ema_model.*`) to one safetensors file.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut all: Vec<(String, Tensor)> = self.ema.checkpoint_tensors(EMA_PREFIX);
        {
            let data = self
                .vars
                .data()
                .lock()
                .map_err(|_| Error::Config("student VarMap lock poisoned".into()))?;
            all.extend(data.iter().map(|(k, v)| (k.clone(), v.as_tensor().clone())));
        }
        safetensors::serialize_to_file(all.iter().map(|(k, v)| (k.as_str(), v)), None, path)
            .map_err(|e| Error::File {
                path: path.to_path_buf(),
                message: format!("writing safetensors: {e}"),
            })
    }

    /// The configuration.
    pub fn config(&self) -> &MgsdConfig {
        &self.cfg
    }

    /// The student's variables (`unet.*`, `MMD.*`, `Mutiaxis_fuse*.*`), for the segmenter's
    /// optimiser.
    pub fn student_vars(&self) -> &VarMap {
        &self.vars
    }

    /// The discriminator's variables, for its own optimiser.
    pub fn discriminator_vars(&self) -> Option<&VarMap> {
        self.adversary.as_ref().map(|a| a.vars())
    }

    /// The student modules.
    pub fn model(&self) -> &MgsdModel {
        &self.model
    }

    /// The teacher network (built over the EMA tensors).
    pub fn teacher(&self) -> &UNet3D {
        &self.teacher
    }

    /// The teacher's tensors.
    pub fn ema(&self) -> &Ema {
        &self.ema
    }

    /// After the segmenter's optimiser step `step` (0-based): `teacher ← α·teacher + (1−α)·student`.
    /// Returns α.
    pub fn update_teacher(&mut self, step: u64) -> candle_core::Result<f64> {
        let a = self.ema.update(&self.vars, step)?;
        self.teacher = UNet3D::new(self.cfg.unet(), self.ema.var_builder(&self.device))?;
        Ok(a)
    }

    /// Makes the next training step draw the dropout seeds of micro-batch `index`:
    /// `seed + DROPOUT_SEEDS_PER_STEP · index` onwards. A trainer that runs several
    /// micro-batches per optimiser step (gradient accumulation, or one per rank) numbers them
    /// `step · M + m`, so that every micro-batch gets the seeds it would get as its own step,
    /// whichever process computes it; with one micro-batch per step this is the counter's own
    /// position.
    pub fn seek_dropout_seeds(&self, index: u64) {
        self.next_seed
            .store(self.cfg.seed.wrapping_add(DROPOUT_SEEDS_PER_STEP * index), Ordering::Relaxed);
    }

    /// Replaces the loss weights used from the next [`MgsdObjective::step_losses`] on (a
    /// schedule such as a warm-up of the distillation terms sets them every step). Weights are
    /// no state: a resumed run sets them again from its step.
    pub fn set_weights(&mut self, weights: LossWeights) {
        self.cfg.weights = weights;
    }

    /// The next dropout seed in training mode (see [`DROPOUT_SEEDS_PER_STEP`]).
    fn seed(&self, train: bool) -> Option<u64> {
        train.then(|| self.next_seed.fetch_add(1, Ordering::Relaxed))
    }

    /// All terms of one step for input `x` `(B, 4, D, H, W)` (D, H, W divisible by 8), target
    /// `y` `(B, 3, D, H, W)` and mask `r`. `train` turns dropout on.
    pub fn step_losses(
        &self,
        x: &Tensor,
        y: &Tensor,
        r: &ModalityMask,
        train: bool,
    ) -> candle_core::Result<Terms> {
        let (b, _, d, h, w) = x.dims5()?;
        if y.dims() != [b, OUT_CHANNELS, d, h, w] {
            candle_core::bail!(
                "step_losses: target {:?} does not match input {:?} (B, 3, D, H, W)",
                y.shape(),
                x.shape()
            );
        }
        let x_miss = r.apply(x)?;
        // Drawn even without teacher dropout, so that every step takes the same number of seeds.
        let teacher_seed = self.seed(train).filter(|_| self.cfg.teacher_dropout);
        let out_t = self.teacher.forward_t(x, teacher_seed)?.out.detach();
        // Both student passes as one batch of 2B: the U-Net couples no batch items (GroupNorm
        // is per sample), and one wider pass is faster than two. Dropout draws one mask over
        // the batch, so each half still gets its own.
        let both = self.model.unet.forward_t(&Tensor::cat(&[x, &x_miss], 0)?, self.seed(train))?;
        let full = both.narrow_batch(0, b)?;
        let miss = both.narrow_batch(b, b)?;

        let sup_full = soft_dice(&full.out, y)?;
        let sup_miss = soft_dice(&miss.out, y)?;
        let image = image_level(&full.out, &miss.out, &out_t)?;
        let feature = self
            .model
            .features
            .loss([&full.u2, &full.u3, &full.u4], [&miss.u2, &miss.u3, &miss.u4])?;
        let modality = self.model.mmd.loss(&full.style, &miss.style, x, r)?;
        let adv_gen = self.adversary.as_ref().map(|a| a.generator_loss(&miss.out)).transpose()?;

        let wt = &self.cfg.weights;
        let mut total = ((&sup_full * wt.sup_full)? + (&sup_miss * wt.sup_miss)?)?;
        total = (total + (&image * wt.image)?)?;
        total = (total + (&modality * wt.modality)?)?;
        total = (total + (&feature * wt.feature)?)?;
        if let Some(a) = &adv_gen {
            total = (total + (a * wt.adversarial)?)?;
        }
        Ok(Terms {
            sup_full,
            sup_miss,
            image,
            feature,
            modality,
            adv_gen,
            total,
            out_f: full.out,
            out_m: miss.out,
        })
    }

    /// The discriminator's loss for this step's outputs (`None` without a discriminator):
    /// `bce(D(out_f.detach()), 0) + bce(D(out_m.detach()), 1)`; its gradients reach only the
    /// discriminator's variables.
    pub fn discriminator_loss(&self, terms: &Terms) -> candle_core::Result<Option<Tensor>> {
        self.adversary
            .as_ref()
            .map(|a| a.discriminator_loss(&terms.out_f, &terms.out_m))
            .transpose()
    }
}

impl std::fmt::Debug for MgsdObjective {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MgsdObjective")
            .field("cfg", &self.cfg)
            .field("student_variables", &self.vars.all_vars().len())
            .field("teacher_tensors", &self.ema.tensors().len())
            .field("adversary", &self.adversary)
            .finish_non_exhaustive()
    }
}

/// Reads a safetensors file as f32 tensors.
fn read_file(path: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    mgsd_nn::read_safetensors(path, device)
        .map_err(|e| Error::File { path: path.to_path_buf(), message: e.to_string() })
}

/// `state[name]`, checked against `dims`.
fn lookup<'a>(
    state: &'a HashMap<String, Tensor>,
    name: &str,
    dims: &[usize],
    source: &Path,
) -> Result<&'a Tensor> {
    let Some(t) = state.get(name) else {
        return Err(Error::MissingTensor { path: source.to_path_buf(), name: name.to_string() });
    };
    if t.dims() != dims {
        return Err(Error::BadShape {
            path: source.to_path_buf(),
            name: name.to_string(),
            got: t.dims().to_vec(),
            expected: format!("{dims:?}"),
        });
    }
    Ok(t)
}

/// Sets every variable of `vars` from `state[prefix + name]`, in sorted order.
fn set_vars(
    vars: &VarMap,
    state: &HashMap<String, Tensor>,
    prefix: &str,
    source: &Path,
) -> Result<()> {
    let data = vars.data().lock().map_err(|_| Error::Config("VarMap lock poisoned".into()))?;
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    for name in names {
        let var = &data[name];
        let t = lookup(state, &format!("{prefix}{name}"), var.dims(), source)?;
        var.set(&t.to_dtype(DType::F32)?.to_device(var.device())?)?;
    }
    Ok(())
}
