//! LeakyReLU as a custom op with its own backward (`torch.nn.LeakyReLU`), used by the style
//! discriminator (MGSD-SPEC §6, slope 0.2). One pass forward, one pass backward; candle-nn's
//! `leaky_relu` builds three temporaries.

use candle_core::{CpuStorage, CustomOp1, Layout, Module, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::cpu_f32;

/// Elements per parallel task.
const TASK: usize = 1 << 16;

/// `torch.nn.LeakyReLU(negative_slope)`.
///
/// # Shapes
/// Any shape → the same shape.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LeakyRelu {
    /// Slope for negative inputs.
    pub negative_slope: f32,
}

impl LeakyRelu {
    /// A LeakyReLU with the given slope (the discriminator uses 0.2).
    pub fn new(negative_slope: f32) -> Self {
        Self { negative_slope }
    }
}

impl Module for LeakyRelu {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        leaky_relu(xs, self.negative_slope)
    }
}

/// `x` where `x > 0`, else `slope·x`, for an f32 tensor of any shape. Differentiable (the
/// gradient at 0 is `slope`, as in PyTorch).
pub fn leaky_relu(xs: &Tensor, negative_slope: f32) -> Result<Tensor> {
    if xs.dtype() != candle_core::DType::F32 {
        candle_core::bail!(
            "leaky_relu: expected f32, got {:?} of shape {:?}",
            xs.dtype(),
            xs.shape()
        );
    }
    #[cfg(feature = "cuda")]
    if xs.device().is_cuda() {
        return mgsd_kernels::candle_ops::resample::leaky_relu(xs, negative_slope);
    }
    if !xs.device().is_cpu() {
        return crate::composite::leaky_relu(xs, negative_slope);
    }
    xs.contiguous()?.apply_op1(LeakyReluOp(negative_slope))
}

/// The custom op.
struct LeakyReluOp(f32);

impl CustomOp1 for LeakyReluOp {
    fn name(&self) -> &'static str {
        "leaky-relu"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = cpu_f32::slice(storage, layout, self.name())?;
        let s = self.0;
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(TASK).zip(x.par_chunks(TASK)).for_each(|(yc, xc)| {
            for (o, &v) in yc.iter_mut().zip(xc) {
                *o = if v > 0.0 { v } else { v * s };
            }
        });
        Ok((CpuStorage::F32(y), layout.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let s = self.0;
        let dx = cpu_f32::with_tensor(arg, self.name(), |x| {
            cpu_f32::with_tensor(grad, self.name(), |dy| {
                let mut dx = vec![0f32; x.len()];
                dx.par_chunks_mut(TASK).zip(x.par_chunks(TASK).zip(dy.par_chunks(TASK))).for_each(
                    |(o, (xc, dc))| {
                        for ((o, &v), &g) in o.iter_mut().zip(xc).zip(dc) {
                            *o = if v > 0.0 { g } else { g * s };
                        }
                    },
                );
                Ok(dx)
            })
        })?;
        Ok(Some(Tensor::from_vec(dx, arg.shape(), arg.device())?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu_f32::testing::{check_op, values};

    #[test]
    fn matches_reference() {
        let x = values(300, 13);
        check_op(
            &[(&x, &[3, 100])],
            &|t| leaky_relu(&t[0], 0.2),
            &|x| x.iter().map(|&v| if v > 0.0 { v } else { 0.2 * v }).collect(),
            1e-5,
        );
    }
}
