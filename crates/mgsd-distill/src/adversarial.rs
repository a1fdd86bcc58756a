//! Adversarial terms with the style discriminator `D` (MGSD-SPEC §3 step 5, §6).
//!
//! Two losses, kept apart so the trainer steps two optimisers over disjoint variable sets:
//! - generator: `bce_logits(D(out_m), 0)` — the student's missing-path output should look like
//!   a full-path one. `D` is frozen: it is evaluated with detached copies of its weights
//!   (same storage, no autograd), so gradients flow through `D` into `out_m` and the student,
//!   and `D`'s variables receive none.
//! - discriminator: `bce_logits(D(out_f.detach()), 0) + bce_logits(D(out_m.detach()), 1)` — only
//!   `D`'s variables receive gradients.
//!
//! `D` lives in its own [`VarMap`] (checkpoint keys `0.*, 2.*, 4.*, 6.*` as the reference's
//! `nn.Sequential`), never in the student's.

use std::collections::HashMap;

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::{VarBuilder, VarMap};

use crate::losses::bce_with_logits;

/// Label of the full path ("source").
pub const SOURCE_LABEL: f64 = 0.0;
/// Label of the missing path ("target").
pub const TARGET_LABEL: f64 = 1.0;

/// A discriminator with its variables and a frozen twin over the same storage.
pub struct Adversary<D> {
    vars: VarMap,
    trainable: D,
    frozen: D,
}

impl<D: Module> Adversary<D> {
    /// Builds the trainable network over `vars` with `build` (creating missing variables), and
    /// its frozen twin over detached views of the same variables.
    pub fn new(
        vars: VarMap,
        device: &Device,
        build: impl Fn(VarBuilder<'_>) -> Result<D>,
    ) -> Result<Self> {
        let trainable = build(VarBuilder::from_varmap(&vars, DType::F32, device))?;
        let frozen = build(VarBuilder::from_tensors(detached(&vars)?, DType::F32, device))?;
        Ok(Self { vars, trainable, frozen })
    }

    /// `D`'s variables, for its own optimiser.
    pub fn vars(&self) -> &VarMap {
        &self.vars
    }

    /// The trainable network.
    pub fn network(&self) -> &D {
        &self.trainable
    }

    /// Generator term `bce_logits(D(out_m), 0)` through the frozen `D`.
    pub fn generator_loss(&self, out_m: &Tensor) -> Result<Tensor> {
        bce_with_logits(&self.frozen.forward(out_m)?, SOURCE_LABEL)
    }

    /// Discriminator loss `bce(D(out_f.detach()), 0) + bce(D(out_m.detach()), 1)`.
    ///
    /// Both inputs go through `D` as one batch: `D` has no layer that couples batch items, and
    /// one wider pass is faster than two (larger matrix products, half the op calls).
    pub fn discriminator_loss(&self, out_f: &Tensor, out_m: &Tensor) -> Result<Tensor> {
        if out_f.dims() != out_m.dims() {
            candle_core::bail!(
                "discriminator_loss: out_f {:?} and out_m {:?} differ in shape",
                out_f.dims(),
                out_m.dims()
            )
        }
        let n = out_f.dim(0)?;
        let both = Tensor::cat(&[&out_f.detach(), &out_m.detach()], 0)?;
        let logits = self.trainable.forward(&both)?;
        let f = bce_with_logits(&logits.narrow(0, 0, n)?, SOURCE_LABEL)?;
        let m = bce_with_logits(&logits.narrow(0, n, n)?, TARGET_LABEL)?;
        f + m
    }
}

impl<D: std::fmt::Debug> std::fmt::Debug for Adversary<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Adversary")
            .field("variables", &self.vars.all_vars().len())
            .field("network", &self.trainable)
            .finish_non_exhaustive()
    }
}

/// Detached views (shared storage) of every variable: in-place optimiser updates show through,
/// autograd does not.
fn detached(vars: &VarMap) -> Result<HashMap<String, Tensor>> {
    let data = vars
        .data()
        .lock()
        .map_err(|_| candle_core::Error::Msg("discriminator VarMap lock poisoned".into()))?;
    Ok(data.iter().map(|(k, v)| (k.clone(), v.as_tensor().detach())).collect())
}
