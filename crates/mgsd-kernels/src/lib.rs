//! CUDA kernels of MGSD: fused multi-head cross-attention for "many queries, few keys"
//! (MGSD-SPEC §5; issue 7).
//!
//! The queries are the voxels of a style map (7 680 for the reference patch, up to ~10⁵), the
//! keys a modality's token grid (120 for the reference patch, at most 1 024), head dim 32 or
//! 64, layout `(B, H, N, dh)` contiguous, f32 or bf16 storage with f32 accumulation. Two
//! variants, forward and backward:
//!
//! - **no softmax** (what MGSD uses): `out = (q kᵀ)·scale · v`, computed as `q (kᵀ v)·scale`,
//!   linear in the number of queries, the `Nq × Nk` matrix never formed;
//! - **softmax**: `softmax((q kᵀ)·scale) v` with keys and values staged through shared memory
//!   and an online softmax; the forward writes the logsumexp, the backward recomputes the
//!   probabilities.
//!
//! [`launch`] names every entry point, its argument list and its launch geometry. The CPU twin
//! of these ops is `mgsd_nn::attention::cross_attention`.
//!
//! # Features
//! - default: no CUDA at all. The crate exposes the kernel source ([`ATTENTION_CU`]) and the
//!   launch geometry; its build script runs no nvcc (CPU CI never compiles CUDA).
//! - `cuda`: `build.rs` compiles `src/kernels/*.cu` to PTX with nvcc for `sm_$CUDA_COMPUTE_CAP`
//!   (default 90) and embeds it as `ATTENTION_PTX`. This feature needs nvcc only, not candle's
//!   CUDA backend.
//!
//! - `cuda` also builds [`candle_ops`]: the no-softmax attention kernels, the GroupNorm
//!   kernels (`kernels/group_norm.cu`), the pooling, upsampling, LeakyReLU and adaptive
//!   pooling kernels (`kernels/resample.cu`) as differentiable candle ops, and the in-place epilogue of the
//!   cuDNN Conv3d (`kernels/conv_epilogue.cu`) with the bf16 copies of its bf16 mode
//!   (`kernels/conv_bf16.cu`); `mgsd-nn` uses them on CUDA tensors. Both
//!   attention variants are candle ops (`candle_ops::attention`,
//!   `candle_ops::softmax_attention`), f32 and bf16; the other ops are f32.
#![warn(missing_docs)]

#[cfg(feature = "cuda")]
pub mod candle_ops;
pub mod launch;

/// CUDA C++ source of the attention kernels, the file `build.rs` compiles under `cuda`.
pub const ATTENTION_CU: &str = include_str!("kernels/attention.cu");

/// Whether this build embeds PTX (the `cuda` feature).
pub const PTX_EMBEDDED: bool = cfg!(feature = "cuda");

/// The attention kernels as PTX for `sm_$CUDA_COMPUTE_CAP`, compiled by `build.rs`.
#[cfg(feature = "cuda")]
pub const ATTENTION_PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/attention.ptx"));

/// CUDA C++ source of the GroupNorm kernels.
pub const GROUP_NORM_CU: &str = include_str!("kernels/group_norm.cu");

/// The GroupNorm kernels as PTX, compiled by `build.rs`.
#[cfg(feature = "cuda")]
pub const GROUP_NORM_PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/group_norm.ptx"));

/// CUDA C++ source of the pooling, upsampling, LeakyReLU and adaptive pooling kernels.
pub const RESAMPLE_CU: &str = include_str!("kernels/resample.cu");

/// The pooling, upsampling, LeakyReLU and adaptive pooling kernels as PTX (`build.rs`).
#[cfg(feature = "cuda")]
pub const RESAMPLE_PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/resample.ptx"));

/// CUDA C++ source of the Conv3d epilogue (bias and residual added in place).
pub const CONV_EPILOGUE_CU: &str = include_str!("kernels/conv_epilogue.cu");

/// The Conv3d epilogue kernels as PTX, compiled by `build.rs`.
#[cfg(feature = "cuda")]
pub const CONV_EPILOGUE_PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/conv_epilogue.ptx"));

/// CUDA C++ source of the bf16 copies of the bf16 Conv3d (f32 → bf16, bf16 → f32 + epilogue).
pub const CONV_BF16_CU: &str = include_str!("kernels/conv_bf16.cu");

/// The bf16-copy kernels as PTX, compiled by `build.rs`.
#[cfg(feature = "cuda")]
pub const CONV_BF16_PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/conv_bf16.ptx"));

/// The nvcc that compiled `ATTENTION_PTX` (`"none"` without the `cuda` feature).
pub const BUILT_WITH_NVCC: &str = env!("MGSD_KERNELS_NVCC");
