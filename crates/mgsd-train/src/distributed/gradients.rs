//! Gradients summed over the micro-batches of one optimiser step and averaged over ranks.
//!
//! One optimiser step of a run with world size `W` and `A` micro-batches per rank averages
//! `M = W·A` micro-batch gradients. Each rank sums its own `A` in micro-batch order; the ranks'
//! sums are then summed over ranks ([`Collective::all_reduce_sum`]) in flat buckets, as
//! PyTorch's DDP does, and scaled by `1/M`. A variable gets a gradient when any micro-batch on
//! any rank gave it one (the others count as zero); one that none gave one is skipped by the
//! optimiser, as in a single-process step.

use super::collective::Collective;
use anyhow::{ensure, Result};
use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};

/// Elements per all-reduce bucket: 25 MiB of f32, PyTorch DDP's default `bucket_cap_mb`.
pub const BUCKET_ELEMENTS: usize = 25 * 1024 * 1024 / 4;

/// The running sum of one optimiser's gradients over a step's micro-batches.
#[derive(Debug)]
pub struct GradientSum {
    vars: Vec<Var>,
    sums: Vec<Option<Tensor>>,
}

impl GradientSum {
    /// An empty sum over `vars` (in the optimiser's order, [`crate::optim::Adam::vars`]).
    pub fn new(vars: Vec<Var>) -> Self {
        let n = vars.len();
        GradientSum { vars, sums: vec![None; n] }
    }

    /// Adds one micro-batch's gradients.
    ///
    /// # Errors
    /// Tensor errors.
    pub fn add(&mut self, grads: &GradStore) -> Result<()> {
        for (var, sum) in self.vars.iter().zip(&mut self.sums) {
            let Some(g) = grads.get(var.as_tensor()) else { continue };
            let g = g.detach();
            *sum = Some(match sum.take() {
                None => g,
                Some(s) => (s + g)?,
            });
        }
        Ok(())
    }

    /// The average over `micro_batches` micro-batches of all ranks, in the optimiser's order.
    /// Every rank must call this at the same point of the same step.
    ///
    /// # Errors
    /// Communication and tensor errors.
    pub fn average(
        self,
        comm: &dyn Collective,
        micro_batches: usize,
    ) -> Result<Vec<Option<Tensor>>> {
        let scale = |t: Tensor| -> Result<Tensor> {
            Ok(if micro_batches > 1 { t.affine(1.0 / micro_batches as f64, 0.0)? } else { t })
        };
        if comm.world_size() == 1 {
            return self.sums.into_iter().map(|s| s.map(scale).transpose()).collect();
        }
        let Some(first) = self.vars.first() else { return Ok(Vec::new()) };
        let device = first.device().clone();
        // Which variables have a gradient on some rank.
        let mine: Vec<f32> = self.sums.iter().map(|s| f32::from(u8::from(s.is_some()))).collect();
        let present = comm
            .all_reduce_sum(&Tensor::from_vec(mine, self.sums.len(), &device)?)?
            .to_dtype(DType::F32)?
            .to_vec1::<f32>()?;
        let wanted: Vec<usize> = (0..self.vars.len()).filter(|&i| present[i] > 0.0).collect();
        let mut out: Vec<Option<Tensor>> = vec![None; self.vars.len()];
        for bucket in buckets(&wanted, |i| self.vars[i].elem_count()) {
            let flat: Vec<Tensor> = bucket
                .iter()
                .map(|&i| match &self.sums[i] {
                    Some(s) => s.flatten_all(),
                    None => self.vars[i].as_tensor().zeros_like()?.flatten_all(),
                })
                .collect::<candle_core::Result<_>>()?;
            let summed = comm.all_reduce_sum(&Tensor::cat(&flat, 0)?)?;
            let mut offset = 0;
            for &i in &bucket {
                let n = self.vars[i].elem_count();
                let g = summed.narrow(0, offset, n)?.reshape(self.vars[i].dims())?;
                out[i] = Some(scale(g)?);
                offset += n;
            }
            ensure!(offset == summed.elem_count(), "gradient bucket size mismatch");
        }
        Ok(out)
    }
}

/// Consecutive groups of `items` whose sizes add up to at most [`BUCKET_ELEMENTS`] (an item
/// larger than that is a bucket of its own).
fn buckets(items: &[usize], size: impl Fn(usize) -> usize) -> Vec<Vec<usize>> {
    let mut out: Vec<Vec<usize>> = Vec::new();
    let mut current = Vec::new();
    let mut filled = 0;
    for &i in items {
        let n = size(i);
        if !current.is_empty() && filled + n > BUCKET_ELEMENTS {
            out.push(std::mem::take(&mut current));
            filled = 0;
        }
        current.push(i);
        filled += n;
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_respect_the_cap_and_keep_order() {
        let sizes = [10, BUCKET_ELEMENTS - 5, 3, BUCKET_ELEMENTS + 1, 1];
        let b = buckets(&[0, 1, 2, 3, 4], |i| sizes[i]);
        assert_eq!(b, vec![vec![0], vec![1, 2], vec![3], vec![4]]);
        assert!(buckets(&[], |_| 1).is_empty());
    }
}
