//! The in-place epilogue of `mgsd-nn`'s cuDNN Conv3d (`kernels/conv_epilogue.cu`):
//! `y += bias[c] (+ residual)` on a `(N, C, S)` f32 output, launched on the device's stream.
//! A launch helper for another op's `cuda_fwd`, not an op itself.

use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView, PushKernelArg};
use candle_core::cuda_backend::CudaDevice;
use candle_core::Result;

use super::{launch_grid_stride, to_i32};

const MODULE: &str = "mgsd_conv_epilogue";

/// `y += bias[c] + residual`, either term optional; `y` is `(N, C, S)` with `s` = S and
/// `c` = C. Nothing is launched when both are absent.
pub fn bias_residual_add(
    dev: &CudaDevice,
    y: &mut CudaSlice<f32>,
    bias: Option<&CudaView<'_, f32>>,
    residual: Option<&CudaView<'_, f32>>,
    (s, c): (usize, usize),
) -> Result<()> {
    let name = match (bias, residual) {
        (None, None) => return Ok(()),
        (Some(_), None) => "mgsd_conv_bias_add",
        (Some(_), Some(_)) => "mgsd_conv_bias_residual_add",
        (None, Some(_)) => "mgsd_conv_residual_add",
    };
    let n = y.len();
    let (total, s, c) = (n as i64, s as i64, to_i32(c)?);
    launch_grid_stride!(dev, (MODULE, crate::CONV_EPILOGUE_PTX), name, n, |b| {
        b.arg(y);
        if let Some(bias) = bias {
            b.arg(bias);
        }
        if let Some(r) = residual {
            b.arg(r);
        }
        b.arg(&total);
        if bias.is_some() {
            b.arg(&s).arg(&c);
        }
    });
    Ok(())
}
