//! cuDNN's algorithm for each call: the heuristics' first choice
//! (`cudnnGetConvolution*Algorithm_v7`, PyTorch's default), or with [`set_cudnn_benchmark`]
//! the fastest of all algorithms that run, measured on the first call of each geometry and
//! arithmetic and then reused (PyTorch's `torch.backends.cudnn.benchmark = True`, which
//! nnU-Net sets). The measurement launches the real call once or twice per algorithm; the
//! choice is cached per thread, like the cuDNN handles.

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::LocalKey;
use std::time::{Duration, Instant};

use candle_core::backend::BackendDevice;
use candle_core::cuda_backend::cudarc::cudnn::sys;
use candle_core::cuda_backend::{CudaDevice, DeviceId};
use candle_core::{bail, Result};

use super::Math;
use crate::conv3d::ConvGeom;

static BENCHMARK: AtomicBool = AtomicBool::new(false);

/// Whether cuDNN's algorithms are measured and the fastest kept (default: no, cuDNN's
/// heuristics choose, as in PyTorch). Measuring costs a few launches per new geometry.
pub fn set_cudnn_benchmark(on: bool) {
    BENCHMARK.store(on, Ordering::Relaxed);
}

/// What a choice depends on: the device, the geometry and the arithmetic.
pub(super) type Key = (DeviceId, ConvGeom, Math);

type Cache<A> = RefCell<HashMap<Key, A>>;

/// A thread's cache of the chosen algorithms of one kind of call.
pub(super) type CacheKey<A> = LocalKey<Cache<A>>;

thread_local! {
    pub(super) static FORWARD: Cache<sys::cudnnConvolutionFwdAlgo_t> = RefCell::default();
    pub(super) static DATA: Cache<sys::cudnnConvolutionBwdDataAlgo_t> = RefCell::default();
    pub(super) static FILTER: Cache<sys::cudnnConvolutionBwdFilterAlgo_t> = RefCell::default();
}

/// Every forward algorithm cuDNN 9 knows.
pub(super) const FORWARD_ALGOS: [sys::cudnnConvolutionFwdAlgo_t; 8] = {
    use sys::cudnnConvolutionFwdAlgo_t::*;
    [
        CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM,
        CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM,
        CUDNN_CONVOLUTION_FWD_ALGO_GEMM,
        CUDNN_CONVOLUTION_FWD_ALGO_DIRECT,
        CUDNN_CONVOLUTION_FWD_ALGO_FFT,
        CUDNN_CONVOLUTION_FWD_ALGO_FFT_TILING,
        CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD,
        CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD_NONFUSED,
    ]
};

/// Every data-gradient algorithm.
pub(super) const DATA_ALGOS: [sys::cudnnConvolutionBwdDataAlgo_t; 6] = {
    use sys::cudnnConvolutionBwdDataAlgo_t::*;
    [
        CUDNN_CONVOLUTION_BWD_DATA_ALGO_0,
        CUDNN_CONVOLUTION_BWD_DATA_ALGO_1,
        CUDNN_CONVOLUTION_BWD_DATA_ALGO_FFT,
        CUDNN_CONVOLUTION_BWD_DATA_ALGO_FFT_TILING,
        CUDNN_CONVOLUTION_BWD_DATA_ALGO_WINOGRAD,
        CUDNN_CONVOLUTION_BWD_DATA_ALGO_WINOGRAD_NONFUSED,
    ]
};

/// Every filter-gradient algorithm.
pub(super) const FILTER_ALGOS: [sys::cudnnConvolutionBwdFilterAlgo_t; 7] = {
    use sys::cudnnConvolutionBwdFilterAlgo_t::*;
    [
        CUDNN_CONVOLUTION_BWD_FILTER_ALGO_0,
        CUDNN_CONVOLUTION_BWD_FILTER_ALGO_1,
        CUDNN_CONVOLUTION_BWD_FILTER_ALGO_FFT,
        CUDNN_CONVOLUTION_BWD_FILTER_ALGO_3,
        CUDNN_CONVOLUTION_BWD_FILTER_ALGO_WINOGRAD,
        CUDNN_CONVOLUTION_BWD_FILTER_ALGO_WINOGRAD_NONFUSED,
        CUDNN_CONVOLUTION_BWD_FILTER_ALGO_FFT_TILING,
    ]
};

/// Algorithms asking for a larger workspace are not tried while measuring (the FFT ones can
/// ask for several GiB at the paper's patch).
const MAX_BENCHMARK_WORKSPACE: usize = 1 << 30;

/// The error for an algorithm whose workspace is too large to try.
pub(super) fn check_benchmark_workspace(bytes: usize) -> Result<()> {
    if bytes > MAX_BENCHMARK_WORKSPACE {
        bail!("conv3d (cuDNN): a {bytes}-byte workspace is not tried while benchmarking")
    }
    Ok(())
}

/// The algorithm for one call. `heuristic` gives cuDNN's first choice; `run(algo)` launches
/// the call with `algo` and fails for an algorithm that does not apply (not supported, or its
/// workspace too large). Without benchmark mode this is `heuristic()`; with it, the first call
/// of a key times every candidate (best of two launches) and keeps the fastest.
pub(super) fn choose<A: Copy + Eq + Hash + 'static>(
    cache: &'static CacheKey<A>,
    key: Key,
    dev: &CudaDevice,
    candidates: &[A],
    heuristic: impl FnOnce() -> Result<A>,
    mut run: impl FnMut(A) -> Result<()>,
) -> Result<A> {
    if !BENCHMARK.load(Ordering::Relaxed) {
        return heuristic();
    }
    if let Some(a) = cache.with(|c| c.borrow().get(&key).copied()) {
        return Ok(a);
    }
    let mut best: Option<(Duration, A)> = None;
    for &a in candidates {
        let mut fastest: Option<Duration> = None;
        for _ in 0..2 {
            dev.synchronize()?;
            let t0 = Instant::now();
            if run(a).is_err() {
                break;
            }
            dev.synchronize()?;
            let t = t0.elapsed();
            fastest = Some(fastest.map_or(t, |f| f.min(t)));
        }
        if let Some(t) = fastest {
            if best.is_none_or(|(b, _)| t < b) {
                best = Some((t, a));
            }
        }
    }
    let a = match best {
        Some((_, a)) => a,
        None => heuristic()?,
    };
    cache.with(|c| c.borrow_mut().insert(key, a));
    Ok(a)
}
