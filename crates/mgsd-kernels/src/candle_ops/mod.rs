//! The CUDA kernels as candle custom ops (`cuda` feature): each op's `cuda_fwd` launches the
//! embedded PTX on the tensors' device and stream, and its `bwd` builds the backward from
//! more such ops, so candle's autograd drives them like its own ops. CPU tensors are refused:
//! the CPU twins live in `mgsd-nn`, which picks the op by device.

pub mod attention;
pub mod conv_bf16;
pub mod conv_epilogue;
pub mod group_norm;
pub mod resample;
pub mod softmax_attention;

use candle_core::cuda_backend::cudarc::driver::sys::CUdevice_attribute;
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView, LaunchConfig};
use candle_core::cuda_backend::{CudaDType, CudaDevice};
use candle_core::{bail, CudaStorage, Layout, Result};

use crate::launch::{self, Launch};

/// The error of an op's `cpu_fwd`: these ops run on CUDA tensors only. `mgsd-nn`'s cuDNN
/// ops use it too.
pub fn cuda_only<T>(name: &str, twin: &str) -> Result<T> {
    bail!("{name}: runs on CUDA tensors only (the CPU twin is {twin})")
}

/// The contiguous f32 data of an operand as a device view (an error for a strided layout).
/// `mgsd-nn`'s cuDNN ops use it too.
pub fn view<'a>(s: &'a CudaStorage, l: &Layout) -> Result<CudaView<'a, f32>> {
    view_as::<f32>(s, l)
}

/// [`view`] for data of type `T` (an error when the storage holds another type).
pub fn view_as<'a, T: CudaDType>(s: &'a CudaStorage, l: &Layout) -> Result<CudaView<'a, T>> {
    if !l.is_contiguous() {
        bail!("mgsd-kernels: operands must be contiguous, got a layout of {:?}", l.shape())
    }
    let slice: &CudaSlice<T> = s.as_cuda_slice::<T>()?;
    let start = l.start_offset();
    Ok(slice.slice(start..start + l.shape().elem_count()))
}

fn config(l: Launch) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (l.grid[0], l.grid[1], l.grid[2]),
        block_dim: (l.block[0], l.block[1], l.block[2]),
        shared_mem_bytes: l.shared_mem_bytes,
    }
}

/// Threads per block of the grid-stride kernels.
const GRID_STRIDE_THREADS: usize = 256;

/// The launch of a grid-stride kernel over `total` elements: blocks of
/// [`GRID_STRIDE_THREADS`], at most 32 per multiprocessor.
fn grid_stride(dev: &CudaDevice, total: usize) -> Launch {
    let blocks = total.div_ceil(GRID_STRIDE_THREADS).clamp(1, 32 * num_sms(dev));
    Launch {
        grid: [blocks as u32, 1, 1],
        block: [GRID_STRIDE_THREADS as u32, 1, 1],
        shared_mem_bytes: 0,
    }
}

/// Launches the grid-stride kernel `$name` of the PTX module `($module, $ptx)` over `$total`
/// elements on `$dev`'s stream, after `$push` has pushed its arguments onto the builder `$b`.
/// For kernels whose argument lists `tests/build_paths.rs` checks against the PTX.
macro_rules! launch_grid_stride {
    ($dev:expr, ($module:expr, $ptx:expr), $name:expr, $total:expr, |$b:ident| $push:block) => {{
        let f = $dev.get_or_load_custom_func($name, $module, $ptx)?.into_cuda_function();
        let stream = $dev.cuda_stream();
        let mut $b = stream.launch_builder(&f);
        $push
        let l = $crate::candle_ops::grid_stride($dev, $total);
        // SAFETY: every caller pushes the kernel's own argument list, in its order
        // (tests/build_paths.rs checks each list against the PTX); the kernels are grid-stride
        // loops, so any grid covers `$total`.
        let r = unsafe { $b.launch($crate::candle_ops::config(l)) };
        candle_core::cuda_backend::WrapErr::w(r)?;
    }};
}
use launch_grid_stride;

/// Multiprocessors of the device (132 on an H100/H200 if the query fails).
fn num_sms(dev: &CudaDevice) -> usize {
    dev.cuda_stream()
        .context()
        .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
        .map_or(132, |n| n.max(1) as usize)
}

fn to_i32(v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| candle_core::Error::Msg(format!("mgsd-kernels: {v} exceeds i32")))
}

fn launch_err(e: launch::LaunchError) -> candle_core::Error {
    candle_core::Error::Msg(e.to_string())
}
