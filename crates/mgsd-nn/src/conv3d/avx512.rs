//! AVX-512 micro-kernels for the row-wise layouts: [`super::cpu`]'s unit-stride rows, the phase
//! rows of [`super::strided_rows`] and the residue-class rows of [`super::transposed_rows`]
//! (the last two pass `dw = 1` and dense offsets).
//!
//! The row-wise column matrix `col` has rows `r = (ci, kd, kh)` and the W taps are offset
//! views `col[r, e + kw·dw]`, so a 3×3×3 convolution is three matrix products over the same
//! data. A general gemm has to repack `col` for each of them; these kernels read it in place:
//!
//! - [`rows_forward`]: `tmp[co, e] = Σ_r Σ_kw W[co, r, kw] · col[r, e + kw·dw]` with an 8-cout ×
//!   48-position register tile (24 accumulators), weights broadcast from a packed copy.
//! - [`rows_grad_weight`]: `dW[co, r, kw] += Σ_e dY[co, e] · col[r, e + kw·dw]` for `kw < 3`, an
//!   8-cout × 3-tap register tile reduced over 16 positions per step.
//!
//! Both are used only when the CPU reports AVX-512F at run time ([`available`]); otherwise
//! `cpu.rs` keeps its gemm path. Tests compare both paths with the slow reference.

use rayon::prelude::*;

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::{
    __m512, _mm512_fmadd_ps, _mm512_loadu_ps, _mm512_reduce_add_ps, _mm512_set1_ps,
    _mm512_setzero_ps, _mm512_storeu_ps,
};

/// Output channels per register tile.
pub(super) const CO_BLOCK: usize = 8;
/// Positions per register tile of the forward kernel (three 16-lane vectors).
pub(super) const E_BLOCK: usize = 48;
/// Positions per tile below which [`rows_grad_weight`]'s final reductions cost too much.
pub(super) const GRAD_WEIGHT_MIN_EXT: usize = 1024;
/// Positions per tile below which [`rows_forward`]'s rounding up to [`E_BLOCK`] wastes too much
/// (at most a twelfth here).
pub(super) const FORWARD_MIN_EXT: usize = 4 * E_BLOCK;
/// Floats the kernels may read past the last position of a buffer (rounded-up tiles).
pub(super) const SLACK: usize = E_BLOCK + 16;

#[cfg(test)]
thread_local! {
    /// Tests set this to exercise the portable path on AVX-512 machines.
    pub(super) static FORCE_PORTABLE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether the AVX-512 kernels may run on this CPU (checked once; `MGSD_CPU_KERNELS=portable`
/// turns them off, e.g. to compare paths).
pub(super) fn available() -> bool {
    #[cfg(test)]
    if FORCE_PORTABLE.with(|f| f.get()) {
        return false;
    }
    static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        let wanted = std::env::var("MGSD_CPU_KERNELS").map_or(true, |v| v != "portable");
        #[cfg(target_arch = "x86_64")]
        let has = std::arch::is_x86_feature_detected!("avx512f");
        #[cfg(not(target_arch = "x86_64"))]
        let has = false;
        wanted && has
    })
}

/// How [`cpu_kernels`] was decided, for logs: `"MGSD_CPU_KERNELS=portable"` when the
/// environment chose, else `"auto-detected: the CPU has AVX-512F"` (or `"lacks"`).
pub fn cpu_kernels_reason() -> &'static str {
    if std::env::var("MGSD_CPU_KERNELS").is_ok_and(|v| v == "portable") {
        return "MGSD_CPU_KERNELS=portable";
    }
    #[cfg(target_arch = "x86_64")]
    let has = std::arch::is_x86_feature_detected!("avx512f");
    #[cfg(not(target_arch = "x86_64"))]
    let has = false;
    if has {
        "auto-detected: the CPU has AVX-512F"
    } else {
        "auto-detected: the CPU lacks AVX-512F"
    }
}

/// Which CPU convolution kernels this process uses, for logs: `"AVX-512"` or
/// `"portable (gemm)"`.
pub fn cpu_kernels() -> &'static str {
    if available() {
        "AVX-512"
    } else {
        "portable (gemm)"
    }
}

/// The `(Cout, kcols)` weight matrix (column `r·k2 + kw`) repacked as
/// `[cout block][r][kw][8]`, zero-filled past `cout`, for [`rows_forward`].
pub(super) fn pack_weight(wb: &[f32], kc: usize, cout: usize, k3: usize, k2: usize) -> Vec<f32> {
    let blocks = cout.div_ceil(CO_BLOCK);
    let mut packed = vec![0f32; blocks * k3 * k2 * CO_BLOCK];
    // One block per task: a 128 → 128 weight is 1.7 MB, repacked at every call.
    packed.par_chunks_mut(k3 * k2 * CO_BLOCK).enumerate().for_each(|(b, blk)| {
        for j in 0..CO_BLOCK.min(cout - b * CO_BLOCK) {
            let w = &wb[(b * CO_BLOCK + j) * kc..][..k3 * k2];
            for (i, v) in w.iter().enumerate() {
                blk[i * CO_BLOCK + j] = *v;
            }
        }
    });
    packed
}

/// `tmp[co, e] = Σ_r Σ_kw W[co, r, kw] · col[r, e + kw·dw]` for `co < cout` and `e < ext`
/// rounded up to [`E_BLOCK`] (the positions past `ext` are junk).
///
/// # Safety
/// AVX-512F must be available. `col` must be readable for `(k3 − 1)·ld + ⌈ext⌉ + (k2 − 1)·dw`
/// floats (⌈ext⌉ = `ext` rounded up to [`E_BLOCK`]); `packed` must come from [`pack_weight`]
/// with the same `cout`, `k3`, `k2`; `tmp` must be writable for `cout` rows of stride
/// `tmp_ld ≥ ⌈ext⌉`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn rows_forward(
    col: *const f32,
    ld: usize,
    k3: usize,
    k2: usize,
    dw: usize,
    packed: &[f32],
    cout: usize,
    ext: usize,
    tmp: *mut f32,
    tmp_ld: usize,
) {
    let blocks = cout.div_ceil(CO_BLOCK);
    debug_assert!(packed.len() >= blocks * k3 * k2 * CO_BLOCK);
    for b in 0..blocks {
        let wblk = packed[b * k3 * k2 * CO_BLOCK..].as_ptr();
        let live = (cout - b * CO_BLOCK).min(CO_BLOCK);
        let mut e0 = 0;
        while e0 < ext {
            let mut acc = [[_mm512_setzero_ps(); 3]; CO_BLOCK];
            for r in 0..k3 {
                // SAFETY: in bounds by the function's contract.
                let row = unsafe { col.add(r * ld + e0) };
                let wr = unsafe { wblk.add(r * k2 * CO_BLOCK) };
                for kw in 0..k2 {
                    let x = unsafe {
                        let p = row.add(kw * dw);
                        [_mm512_loadu_ps(p), _mm512_loadu_ps(p.add(16)), _mm512_loadu_ps(p.add(32))]
                    };
                    let wk = unsafe { wr.add(kw * CO_BLOCK) };
                    for (j, a) in acc.iter_mut().enumerate() {
                        let wj = _mm512_set1_ps(unsafe { *wk.add(j) });
                        a[0] = _mm512_fmadd_ps(wj, x[0], a[0]);
                        a[1] = _mm512_fmadd_ps(wj, x[1], a[1]);
                        a[2] = _mm512_fmadd_ps(wj, x[2], a[2]);
                    }
                }
            }
            for (j, a) in acc.iter().enumerate().take(live) {
                // SAFETY: row b·8 + j < cout of tmp, positions e0..e0+48 ≤ ⌈ext⌉ ≤ tmp_ld.
                unsafe {
                    let dst = tmp.add((b * CO_BLOCK + j) * tmp_ld + e0);
                    _mm512_storeu_ps(dst, a[0]);
                    _mm512_storeu_ps(dst.add(16), a[1]);
                    _mm512_storeu_ps(dst.add(32), a[2]);
                }
            }
            e0 += E_BLOCK;
        }
    }
}

/// `dw[co·kc + r·3 + kw] += Σ_{e < ⌈ext⌉₁₆} dy[co·dy_ld + e] · col[r·ld + e + kw·dw]` for the
/// W-kernel width 3 (`⌈ext⌉₁₆` = `ext` rounded up to 16; `dy` must be zero past `ext`).
///
/// # Safety
/// AVX-512F must be available. `dy` must be readable for `cout` rows of stride
/// `dy_ld ≥ ⌈ext⌉₁₆`; `col` for `(k3 − 1)·ld + ⌈ext⌉₁₆ + 2·dw` floats; `dw_acc` must hold
/// `cout` rows of stride `kc ≥ 3·k3`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn rows_grad_weight(
    col: *const f32,
    ld: usize,
    k3: usize,
    dw: usize,
    dy: *const f32,
    dy_ld: usize,
    cout: usize,
    ext: usize,
    dw_acc: &mut [f32],
    kc: usize,
) {
    let steps = ext.div_ceil(16);
    for b in 0..cout.div_ceil(CO_BLOCK) {
        let live = (cout - b * CO_BLOCK).min(CO_BLOCK);
        // Missing couts of the last block read row 0 again and are discarded.
        let rows: [*const f32; CO_BLOCK] = std::array::from_fn(|j| {
            let co = if j < live { b * CO_BLOCK + j } else { b * CO_BLOCK };
            // SAFETY: co < cout.
            unsafe { dy.add(co * dy_ld) }
        });
        for r in 0..k3 {
            // SAFETY: in bounds by the function's contract.
            let crow = unsafe { col.add(r * ld) };
            let mut acc: [[__m512; 3]; CO_BLOCK] = [[_mm512_setzero_ps(); 3]; CO_BLOCK];
            for s in 0..steps {
                let e = s * 16;
                let x = unsafe {
                    let p = crow.add(e);
                    [_mm512_loadu_ps(p), _mm512_loadu_ps(p.add(dw)), _mm512_loadu_ps(p.add(2 * dw))]
                };
                for (a, row) in acc.iter_mut().zip(&rows) {
                    let g = unsafe { _mm512_loadu_ps(row.add(e)) };
                    a[0] = _mm512_fmadd_ps(g, x[0], a[0]);
                    a[1] = _mm512_fmadd_ps(g, x[1], a[1]);
                    a[2] = _mm512_fmadd_ps(g, x[2], a[2]);
                }
            }
            for (j, a) in acc.iter().enumerate().take(live) {
                let at = (b * CO_BLOCK + j) * kc + r * 3;
                for (kw, v) in a.iter().enumerate() {
                    dw_acc[at + kw] += _mm512_reduce_add_ps(*v);
                }
            }
        }
    }
}
