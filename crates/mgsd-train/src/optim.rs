//! Adam with L2 weight decay exactly as PyTorch's `torch.optim.Adam` defines it, with its state
//! (moments and step) saveable, and the poly learning-rate schedule.
//!
//! Candle's optimisers cannot save their state and only offer AdamW (decoupled decay); the
//! reference trains with `Adam(lr=1e-4, weight_decay=1e-5)`, i.e. the decay is added to the
//! gradient *before* the moments (MGSD-SPEC §3.6). Per parameter `p` with gradient `g`, at step
//! `t` (1-based), PyTorch's single-tensor path computes:
//!
//! ```text
//! g  = g + wd·p
//! m  = β1·m + (1 − β1)·g
//! v  = β2·v + (1 − β2)·g²
//! p  = p − (lr / (1 − β1^t)) · m / (sqrt(v) / sqrt(1 − β2^t) + ε)
//! ```
//!
//! Checked against PyTorch on the fixture of `fixtures/gen_optim.py`.

use candle_core::{backprop::GradStore, DType, Result, Tensor, Var};
use std::collections::HashMap;

/// Adam hyper-parameters (PyTorch names and defaults, except the weight decay).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AdamConfig {
    /// Learning rate (overwritten each epoch by the schedule).
    pub lr: f64,
    /// `(β1, β2)`.
    pub betas: (f64, f64),
    /// ε added to the denominator.
    pub eps: f64,
    /// L2 weight decay added to the gradient (PyTorch `weight_decay`).
    pub weight_decay: f64,
}

impl Default for AdamConfig {
    fn default() -> Self {
        AdamConfig { lr: 1e-3, betas: (0.9, 0.999), eps: 1e-8, weight_decay: 0.0 }
    }
}

#[derive(Debug)]
struct Slot {
    name: String,
    var: Var,
    m: Tensor,
    v: Tensor,
}

/// PyTorch-compatible Adam over a set of named variables.
#[derive(Debug)]
pub struct Adam {
    cfg: AdamConfig,
    slots: Vec<Slot>,
    step: u64,
}

impl Adam {
    /// An optimiser over `vars` (name → variable); moments start at zero, step at 0.
    /// Variables are kept in name order so that the state is deterministic.
    ///
    /// # Errors
    /// If a zero tensor cannot be allocated on the variable's device.
    pub fn new(vars: impl IntoIterator<Item = (String, Var)>, cfg: AdamConfig) -> Result<Self> {
        let mut slots = Vec::new();
        for (name, var) in vars {
            let m = var.zeros_like()?;
            let v = var.zeros_like()?;
            slots.push(Slot { name, var, m, v });
        }
        slots.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Adam { cfg, slots, step: 0 })
    }

    /// The hyper-parameters.
    pub fn config(&self) -> AdamConfig {
        self.cfg
    }

    /// Sets the learning rate used by the next steps.
    pub fn set_lr(&mut self, lr: f64) {
        self.cfg.lr = lr;
    }

    /// Number of steps taken.
    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// Names of the optimised variables, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.slots.iter().map(|s| s.name.as_str())
    }

    /// The optimised variables, in the optimiser's (name) order: the order of the gradient
    /// lists [`Adam::step_with`] takes.
    pub fn vars(&self) -> Vec<Var> {
        self.slots.iter().map(|s| s.var.clone()).collect()
    }

    /// The gradients of [`Adam::vars`] in `grads`, in the same order (`None`: no gradient).
    pub fn gradients(&self, grads: &GradStore) -> Vec<Option<Tensor>> {
        self.slots.iter().map(|s| grads.get(s.var.as_tensor()).cloned()).collect()
    }

    /// One Adam step from the gradients in `grads`. Variables without a gradient are left
    /// untouched (PyTorch skips parameters whose `.grad` is `None`), but the step counter is
    /// shared, as PyTorch's per-parameter counters are when every parameter gets a gradient.
    ///
    /// # Errors
    /// Tensor errors (shape or device mismatch between a gradient and its variable).
    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        let grads = self.gradients(grads);
        self.step_with(&grads)
    }

    /// [`Adam::step`] with the gradients as a list in [`Adam::vars`] order (accumulated over
    /// micro-batches, or averaged over ranks).
    ///
    /// # Errors
    /// A list of the wrong length; tensor errors.
    pub fn step_with(&mut self, grads: &[Option<Tensor>]) -> Result<()> {
        if grads.len() != self.slots.len() {
            candle_core::bail!(
                "Adam::step_with: {} gradients for {} variables",
                grads.len(),
                self.slots.len()
            )
        }
        self.step += 1;
        let t = self.step as i32;
        let (b1, b2) = self.cfg.betas;
        let bc1 = 1.0 - b1.powi(t);
        let bc2_sqrt = (1.0 - b2.powi(t)).sqrt();
        let step_size = self.cfg.lr / bc1;
        for (slot, g) in self.slots.iter_mut().zip(grads) {
            let Some(g) = g else { continue };
            // Detached: an expression on the variable itself would be recorded for autograd, and
            // the moments would then chain every previous step's tensors (a memory leak).
            let p = slot.var.as_tensor().detach();
            let g = g.detach();
            let g = if self.cfg.weight_decay != 0.0 {
                (g + p.affine(self.cfg.weight_decay, 0.0)?)?
            } else {
                g
            };
            // exp_avg.lerp_(grad, 1 - β1) == m + (1 − β1)(g − m)
            let m = (&slot.m + ((&g - &slot.m)? * (1.0 - b1))?)?;
            let v = ((&slot.v * b2)? + (g.sqr()? * (1.0 - b2))?)?;
            let denom = ((v.sqrt()? / bc2_sqrt)? + self.cfg.eps)?;
            let update = ((&m / &denom)? * step_size)?;
            slot.var.set(&(&p - update)?)?;
            slot.m = m;
            slot.v = v;
        }
        Ok(())
    }

    /// The state as named tensors: `optim.<param>.m`, `optim.<param>.v` under `prefix`
    /// (e.g. `optim.` or `optim_d.`). The step is returned separately (metadata).
    pub fn state_tensors(&self, prefix: &str) -> Vec<(String, Tensor)> {
        let mut out = Vec::with_capacity(2 * self.slots.len());
        for s in &self.slots {
            out.push((format!("{prefix}{}.m", s.name), s.m.clone()));
            out.push((format!("{prefix}{}.v", s.name), s.v.clone()));
        }
        out
    }

    /// Restores moments and step from tensors written by [`Adam::state_tensors`].
    ///
    /// # Errors
    /// A missing or mis-shaped moment tensor, naming it.
    pub fn load_state(
        &mut self,
        prefix: &str,
        tensors: &HashMap<String, Tensor>,
        step: u64,
    ) -> Result<()> {
        for s in &mut self.slots {
            for (which, dst) in [("m", &mut s.m), ("v", &mut s.v)] {
                let key = format!("{prefix}{}.{which}", s.name);
                let Some(t) = tensors.get(&key) else {
                    candle_core::bail!("optimiser state tensor '{key}' is missing")
                };
                if t.dims() != s.var.dims() {
                    candle_core::bail!(
                        "optimiser state tensor '{key}' has shape {:?}, the parameter has {:?}",
                        t.dims(),
                        s.var.dims()
                    )
                }
                *dst = t.to_dtype(DType::F32)?.to_device(s.var.device())?;
            }
        }
        self.step = step;
        Ok(())
    }
}

/// The poly schedule of the ACN/RFNet code: `base · (1 − epoch / max_epochs)^power`
/// (power 0.9), evaluated at the start of each epoch (0-based).
pub fn poly_lr(base: f64, epoch: usize, max_epochs: usize, power: f64) -> f64 {
    if max_epochs == 0 {
        return base;
    }
    let frac = (epoch as f64 / max_epochs as f64).min(1.0);
    base * (1.0 - frac).powf(power)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poly_schedule() {
        assert_eq!(poly_lr(1e-4, 0, 300, 0.9), 1e-4);
        assert!((poly_lr(1e-4, 150, 300, 0.9) - 1e-4 * 0.5f64.powf(0.9)).abs() < 1e-18);
        assert_eq!(poly_lr(1e-4, 300, 300, 0.9), 0.0);
    }
}
