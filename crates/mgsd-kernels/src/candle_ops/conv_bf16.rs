//! The bf16 copies of `mgsd-nn`'s bf16 cuDNN Conv3d (`kernels/conv_bf16.cu`): an f32
//! `(N, C, S)` tensor (or a `(K, C, R)` filter) rounded to a channels-last bf16 scratch copy
//! `(N, S, C)`, and a bf16 result in that layout widened back to f32 `(N, C, S)` with the bias
//! and the residual added. Launch helpers for the cuDNN ops' `cuda_fwd`, not ops themselves.

use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView, PushKernelArg};
use candle_core::cuda_backend::CudaDevice;
use candle_core::Result;
use half::bf16;

use super::{launch_grid_stride, to_i32};

const MODULE: &str = "mgsd_conv_bf16";

/// The iterations of one conversion, as the kernel counts them (each 32-position tile of each
/// channel padded).
fn iterations((n, c, s): (usize, usize, usize)) -> usize {
    n * s.div_ceil(32) * c * 32
}

/// `bf16(x)` in `(N, S, C)` order for `x` `(N, C, S)` f32, `dims` = `(N, C, S)`.
pub fn to_bf16(
    dev: &CudaDevice,
    x: &CudaView<'_, f32>,
    dims: (usize, usize, usize),
) -> Result<CudaSlice<bf16>> {
    let (n, c, s) = dims;
    let total = n * c * s;
    if x.len() != total {
        candle_core::bail!("f32 → bf16: {} elements for (N, C, S) = {dims:?}", x.len())
    }
    // SAFETY: the kernel writes every element of `y` (each NCS element has one copy slot).
    let mut y = unsafe { dev.alloc::<bf16>(total) }?;
    let (n64, s64, c32) = (n as i64, s as i64, to_i32(c)?);
    launch_grid_stride!(
        dev,
        (MODULE, crate::CONV_BF16_PTX),
        "mgsd_f32_to_bf16",
        iterations(dims),
        |b| {
            b.arg(x).arg(&mut y).arg(&n64).arg(&s64).arg(&c32);
        }
    );
    Ok(y)
}

/// `f32(y) + bias[c] + residual` as a new `(N, C, S)` f32 tensor, `y` a bf16 result in the
/// `(N, S, C)` order of [`to_bf16`]; bias and residual optional.
pub fn to_f32(
    dev: &CudaDevice,
    y: &CudaSlice<bf16>,
    bias: Option<&CudaView<'_, f32>>,
    residual: Option<&CudaView<'_, f32>>,
    dims: (usize, usize, usize),
) -> Result<CudaSlice<f32>> {
    let (n, c, s) = dims;
    let total = n * c * s;
    if y.len() != total || residual.is_some_and(|r| r.len() != total) {
        candle_core::bail!("bf16 → f32: operands do not match (N, C, S) = {dims:?}")
    }
    // SAFETY: the kernel writes every element of `out`.
    let mut out = unsafe { dev.alloc::<f32>(total) }?;
    // An absent bias or residual is a null pointer, which the kernel skips.
    let null = 0u64;
    let (n64, s64, c32) = (n as i64, s as i64, to_i32(c)?);
    launch_grid_stride!(
        dev,
        (MODULE, crate::CONV_BF16_PTX),
        "mgsd_bf16_to_f32",
        iterations(dims),
        |b| {
            b.arg(y);
            match bias {
                Some(v) => b.arg(v),
                None => b.arg(&null),
            };
            match residual {
                Some(v) => b.arg(v),
                None => b.arg(&null),
            };
            b.arg(&mut out).arg(&n64).arg(&s64).arg(&c32);
        }
    );
    Ok(out)
}
