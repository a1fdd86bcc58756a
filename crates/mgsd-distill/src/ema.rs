//! The momentum teacher (MGSD-SPEC §3 step 2): an exponential moving average of the student
//! U-Net's weights, `t ← α·t + (1−α)·s` after each optimiser step.
//!
//! The reference omits the decay; we use the mean-teacher schedule `α = min(1 − 1/(step+1),
//! decay_max)`, `decay_max = 0.99` by default (configurable). The teacher's tensors are plain,
//! untracked tensors with their own storage: never `Var`s, never handed to an optimiser, so
//! neither a backward pass nor an optimiser step can change them — only [`Ema::update`] does.
//! In checkpoints they live under `ema_model.*` with the same sub-paths as the student's
//! `unet.*`.

use std::collections::{BTreeMap, HashMap};

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use serde::{Deserialize, Serialize};

/// The decay schedule.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EmaConfig {
    /// Upper bound of the decay α (0.99).
    pub decay_max: f64,
}

impl Default for EmaConfig {
    fn default() -> Self {
        Self { decay_max: 0.99 }
    }
}

impl EmaConfig {
    /// `α = min(1 − 1/(step+1), decay_max)` for optimiser step `step` (0-based): the first update
    /// copies the student, later ones average over a window of up to `1/(1−decay_max)` steps.
    pub fn alpha(&self, step: u64) -> f64 {
        (1.0 - 1.0 / (step as f64 + 1.0)).min(self.decay_max)
    }
}

/// The EMA copy of a student network.
#[derive(Clone, Debug)]
pub struct Ema {
    prefix: String,
    tensors: BTreeMap<String, Tensor>,
    cfg: EmaConfig,
}

/// Snapshot of the student's variables under `prefix.` (prefix stripped), as fresh storage.
fn snapshot(student: &VarMap, prefix: &str) -> candle_core::Result<BTreeMap<String, Tensor>> {
    let data = student
        .data()
        .lock()
        .map_err(|_| candle_core::Error::Msg("student VarMap lock poisoned".into()))?;
    let dotted = format!("{prefix}.");
    let mut out = BTreeMap::new();
    for (name, var) in data.iter() {
        if let Some(rest) = name.strip_prefix(&dotted) {
            // `detach` then `copy`: own storage, no autograd history.
            out.insert(rest.to_string(), var.as_tensor().detach().copy()?);
        }
    }
    Ok(out)
}

impl Ema {
    /// A teacher equal to the student's variables under `prefix` (e.g. `"unet"`).
    pub fn from_student(
        student: &VarMap,
        prefix: &str,
        cfg: EmaConfig,
    ) -> candle_core::Result<Self> {
        let tensors = snapshot(student, prefix)?;
        if tensors.is_empty() {
            candle_core::bail!("Ema: the student has no variable under `{prefix}.`");
        }
        Ok(Self { prefix: prefix.to_string(), tensors, cfg })
    }

    /// A teacher from given tensors (keys relative to the network, e.g. `conv1a.weight`), as
    /// loaded from a checkpoint's `ema_model.*`. They are detached.
    pub fn from_tensors(
        prefix: &str,
        tensors: impl IntoIterator<Item = (String, Tensor)>,
        cfg: EmaConfig,
    ) -> Self {
        let tensors = tensors.into_iter().map(|(k, t)| (k, t.detach())).collect();
        Self { prefix: prefix.to_string(), tensors, cfg }
    }

    /// The schedule.
    pub fn config(&self) -> &EmaConfig {
        &self.cfg
    }

    /// The teacher's tensors, keyed relative to the network.
    pub fn tensors(&self) -> &BTreeMap<String, Tensor> {
        &self.tensors
    }

    /// `t ← α·t + (1−α)·s` for every tensor, with `α = cfg.alpha(step)`; returns α.
    /// Errors if the student lacks a teacher tensor or shapes differ.
    pub fn update(&mut self, student: &VarMap, step: u64) -> candle_core::Result<f64> {
        let alpha = self.cfg.alpha(step);
        let s = snapshot_refs(student, &self.prefix)?;
        for (name, t) in self.tensors.iter_mut() {
            let Some(sv) = s.get(name) else {
                candle_core::bail!("Ema::update: the student has no `{}.{name}`", self.prefix);
            };
            if sv.shape() != t.shape() {
                candle_core::bail!(
                    "Ema::update: `{}.{name}` is {:?} in the student, {:?} in the teacher",
                    self.prefix,
                    sv.shape(),
                    t.shape()
                );
            }
            *t = ((&*t * alpha)? + (sv.detach() * (1.0 - alpha))?)?;
        }
        Ok(alpha)
    }

    /// A `VarBuilder` over the teacher's (untracked) tensors, to build the teacher network.
    pub fn var_builder(&self, device: &Device) -> VarBuilder<'static> {
        let map: HashMap<String, Tensor> =
            self.tensors.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        VarBuilder::from_tensors(map, DType::F32, device)
    }

    /// The tensors under their checkpoint names, `ema_model.<path>`.
    pub fn checkpoint_tensors(&self, ema_prefix: &str) -> Vec<(String, Tensor)> {
        self.tensors.iter().map(|(k, v)| (format!("{ema_prefix}.{k}"), v.clone())).collect()
    }
}

/// The student's current tensors under `prefix.` (prefix stripped), shared storage.
fn snapshot_refs(student: &VarMap, prefix: &str) -> candle_core::Result<HashMap<String, Tensor>> {
    let data = student
        .data()
        .lock()
        .map_err(|_| candle_core::Error::Msg("student VarMap lock poisoned".into()))?;
    let dotted = format!("{prefix}.");
    Ok(data
        .iter()
        .filter_map(|(n, v)| {
            n.strip_prefix(&dotted).map(|r| (r.to_string(), v.as_tensor().clone()))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_nn::Init;

    #[test]
    fn alpha_schedule() {
        let c = EmaConfig::default();
        assert_eq!(c.alpha(0), 0.0);
        assert_eq!(c.alpha(1), 0.5);
        assert!((c.alpha(9) - 0.9).abs() < 1e-12);
        assert_eq!(c.alpha(1000), 0.99);
        assert_eq!(EmaConfig { decay_max: 0.9 }.alpha(1000), 0.9);
    }

    #[test]
    fn update_averages_and_owns_its_storage() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        let vm = VarMap::new();
        vm.get((2, 3), "unet.w", Init::Const(1.0), DType::F32, &dev)?;
        vm.get(2, "other.b", Init::Const(5.0), DType::F32, &dev)?;
        let mut ema = Ema::from_student(&vm, "unet", EmaConfig::default())?;
        assert_eq!(ema.tensors().keys().collect::<Vec<_>>(), ["w"]);
        // Changing the student in place does not touch the teacher.
        let mut vm2 = vm.clone();
        vm2.set_one("unet.w", Tensor::full(3f32, (2, 3), &dev)?)?;
        assert_eq!(ema.tensors()["w"].flatten_all()?.to_vec1::<f32>()?, vec![1.0; 6]);
        // step 1: α = 0.5 → 0.5·1 + 0.5·3 = 2.
        let a = ema.update(&vm, 1)?;
        assert_eq!(a, 0.5);
        assert_eq!(ema.tensors()["w"].flatten_all()?.to_vec1::<f32>()?, vec![2.0; 6]);
        assert!(!ema.tensors()["w"].is_variable());
        Ok(())
    }
}
