//! Glue between the configuration, `mgsd-distill`'s objective and checkpoints: building the
//! objective, naming its variables, and loading a segmenter for inference.

use crate::checkpoint::Checkpoint;
use crate::config::Config;
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use mgsd_distill::objective::{LossWeights, MgsdConfig, MgsdObjective, EMA_PREFIX, UNET_PREFIX};
use mgsd_distill::EmaConfig;
use mgsd_nn::{UNet3D, UNet3DConfig};
use std::collections::HashMap;

/// Checkpoint prefix of the discriminator's variables (its own keys are `0.*` … `6.*`).
pub const DISCRIMINATOR_PREFIX: &str = "discriminator.";
/// Checkpoint prefix of the segmenter optimiser's moments.
pub const OPTIM_PREFIX: &str = "optim.";
/// Checkpoint prefix of the discriminator optimiser's moments.
pub const OPTIM_D_PREFIX: &str = "optim_d.";

pub use mgsd_distill::objective::DROPOUT_SEEDS_PER_STEP;

/// The objective's configuration for a run whose first dropout seed is `dropout_seed`.
pub fn mgsd_config(cfg: &Config, dropout_seed: u64) -> MgsdConfig {
    let l = &cfg.loss;
    MgsdConfig {
        width: cfg.model.channels,
        dropout: cfg.model.dropout,
        weights: LossWeights {
            sup_full: l.full,
            sup_miss: l.miss,
            image: l.image,
            modality: l.modality,
            feature: l.feature,
            adversarial: l.adversarial,
        },
        ema: EmaConfig { decay_max: cfg.train.ema_decay },
        seed: dropout_seed,
        recompute_norm: cfg.model.recompute_norm,
        modality_attention: cfg.model.modality_attention,
        ..MgsdConfig::default()
    }
}

/// The loss weights at optimiser step `step` (0-based): `[loss]`'s, with the distillation terms
/// (image, feature, modality, adversarial) scaled by `min(1, step / warmup_steps)` during the
/// warm-up (`[loss] warmup_steps`).
pub fn loss_weights_at(cfg: &Config, step: u64) -> LossWeights {
    let w = mgsd_config(cfg, 0).weights;
    let n = cfg.loss.warmup_steps;
    if n == 0 || step >= n {
        return w;
    }
    let f = step as f64 / n as f64;
    LossWeights {
        image: w.image * f,
        modality: w.modality * f,
        feature: w.feature * f,
        adversarial: w.adversarial * f,
        ..w
    }
}

/// The variables of a `VarMap`, sorted by name.
///
/// # Errors
/// A poisoned lock.
pub fn named_vars(vars: &VarMap) -> Result<Vec<(String, Var)>> {
    let data = vars.data().lock().map_err(|_| anyhow::anyhow!("VarMap lock poisoned"))?;
    let mut out: Vec<(String, Var)> = data.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// Every weight of the objective under its checkpoint name: `unet.*`, `MMD.*`,
/// `Mutiaxis_fuse*.*`, `ema_model.*`, `discriminator.*`.
///
/// # Errors
/// A poisoned lock.
pub fn weight_tensors(obj: &MgsdObjective) -> Result<Vec<(String, Tensor)>> {
    let mut out: Vec<(String, Tensor)> = named_vars(obj.student_vars())?
        .into_iter()
        .map(|(k, v)| (k, v.as_tensor().clone()))
        .collect();
    out.extend(obj.ema().checkpoint_tensors(EMA_PREFIX));
    if let Some(d) = obj.discriminator_vars() {
        out.extend(
            named_vars(d)?
                .into_iter()
                .map(|(k, v)| (format!("{DISCRIMINATOR_PREFIX}{k}"), v.as_tensor().clone())),
        );
    }
    Ok(out)
}

/// Rebuilds the objective from a checkpoint (weights, teacher, discriminator).
///
/// # Errors
/// A missing or mis-shaped tensor, naming the file and tensor.
pub fn objective_from_checkpoint(
    ckpt: &Checkpoint,
    mcfg: MgsdConfig,
    device: &Device,
) -> Result<MgsdObjective> {
    let disc = ckpt.with_prefix(DISCRIMINATOR_PREFIX);
    MgsdObjective::from_state(mcfg, &ckpt.tensors, Some(&disc), &ckpt.path, device)
        .with_context(|| format!("restoring the model from {}", ckpt.path.display()))
}

/// A segmenter for inference from a checkpoint: our own (`unet.*`) or a PyTorch `state_dict`
/// saved with safetensors (keys `unet.*`, or bare `conv1a.weight` … for a U-Net saved alone).
/// The width `c` is read from `conv1a.weight` (shape `(c, 4, 3, 3, 3)`).
///
/// # Errors
/// No U-Net in the file, or a missing / mis-shaped tensor, naming the file and tensor.
pub fn unet_from_checkpoint(ckpt: &Checkpoint, device: &Device) -> Result<UNet3D> {
    let prefix = if ckpt.tensors.contains_key(&format!("{UNET_PREFIX}.conv1a.weight")) {
        format!("{UNET_PREFIX}.")
    } else if ckpt.tensors.contains_key("conv1a.weight") {
        String::new()
    } else {
        bail!(
            "{}: no U-Net weights found (expected a tensor 'unet.conv1a.weight' or 'conv1a.weight')",
            ckpt.path.display()
        );
    };
    let conv1a = ckpt.get(&format!("{prefix}conv1a.weight"))?;
    let width = match conv1a.dims() {
        &[c, 4, 3, 3, 3] if c > 0 && c % 8 == 0 => c,
        d => bail!(
            "{}: tensor '{prefix}conv1a.weight' has shape {d:?}, expected (c, 4, 3, 3, 3) with c a multiple of 8",
            ckpt.path.display()
        ),
    };
    let map: HashMap<String, Tensor> = ckpt.with_prefix(&prefix);
    let cfg = UNet3DConfig { width, ..UNet3DConfig::default() };
    // Check every tensor the network asks for, so the error names the file and the tensor.
    let probe = VarMap::new();
    UNet3D::new(cfg, VarBuilder::from_varmap(&probe, DType::F32, &Device::Cpu))
        .context("building the U-Net to check the checkpoint")?;
    for (name, var) in named_vars(&probe)? {
        match map.get(&name) {
            None => bail!("{}: tensor '{prefix}{name}' is missing", ckpt.path.display()),
            Some(t) if t.dims() != var.dims() => bail!(
                "{}: tensor '{prefix}{name}' has shape {:?}, the U-Net (c = {width}) expects {:?}",
                ckpt.path.display(),
                t.dims(),
                var.dims()
            ),
            Some(_) => {}
        }
    }
    let map: HashMap<String, Tensor> = map
        .into_iter()
        .map(|(k, v)| Ok((k, v.to_dtype(DType::F32)?.to_device(device)?)))
        .collect::<Result<_>>()?;
    UNet3D::new(cfg, VarBuilder::from_tensors(map, DType::F32, device))
        .with_context(|| format!("{}: building the U-Net", ckpt.path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_warm_up_ramps_only_the_distillation_terms() {
        let mut cfg = Config::demo().unwrap();
        cfg.loss.warmup_steps = 0;
        let full = mgsd_config(&cfg, 0).weights;
        assert_eq!(loss_weights_at(&cfg, 0), full);
        cfg.loss.warmup_steps = 100;
        let w0 = loss_weights_at(&cfg, 0);
        assert_eq!((w0.image, w0.feature, w0.modality, w0.adversarial), (0.0, 0.0, 0.0, 0.0));
        assert_eq!((w0.sup_full, w0.sup_miss), (full.sup_full, full.sup_miss));
        let w = loss_weights_at(&cfg, 25);
        assert_eq!((w.image, w.feature), (0.25 * full.image, 0.25 * full.feature));
        assert_eq!(loss_weights_at(&cfg, 100), full);
        assert_eq!(loss_weights_at(&cfg, 1000), full);
    }
}
