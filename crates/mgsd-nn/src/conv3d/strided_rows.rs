//! Convolutions strided along W (the U-Net's `ds` layers, the discriminator) in the row-wise
//! layout, so that they run on the AVX-512 kernels of [`super::avx512`] instead of im2col.
//!
//! With stride `s` along W, output `o` and tap `kw` read input `w = s·o + kw·d − p`. Writing
//! `kw·d − p = s·q + φ` (`0 ≤ φ < s`) gives `w = s·(o + q) + φ`: the taps of one phase `φ`
//! are offset views of the *phase row* `P_φ[j] = x[s·j + φ]`. So the column matrix gets rows
//! `(ci, kd, kh, φ)` over phase rows shifted by `q_min` (offsets `t = q − q_min ≥ 0`), and
//! the convolution is the unit-stride row product with `span = q_max − q_min + 1` dense
//! offsets per row, the weights of absent taps being zero. For stride 2, kernel 3, padding 1
//! that is 4 multiply-adds per 3 taps; im2col + gemm ran at a third of the kernel's speed.
//!
//! Forward and weight gradient only; the input gradient keeps `cpu.rs`'s gather.

use rayon::prelude::*;

use super::avx512;
use super::cpu::{gather_rows, sum_over_ranges, tile_rows, RowMap, RowTileAt, SharedMut};
use super::ConvGeom;

/// Where one W tap lives in the phase layout.
#[derive(Clone, Copy)]
struct Tap {
    /// Phase `φ`.
    phase: usize,
    /// Dense offset `t = q − q_min` inside the phase row.
    offset: usize,
}

/// The phase layout of one convolution and its tiling over output rows `(od, oh)`.
struct PhaseRows {
    /// Stride along W.
    s: usize,
    /// `q_min`: phase rows start at input column `s·q_min + φ`.
    qmin: isize,
    /// Dense offsets per phase row.
    span: usize,
    /// Phase row length per output row: `Wo + span − 1`.
    wp: usize,
    /// Rows of the column matrix: `Cin·kd·kh·s`.
    k3: usize,
    /// Output rows per tile.
    rows: usize,
    /// Taps by `kw`.
    taps: Vec<Tap>,
}

impl PhaseRows {
    fn new(g: &ConvGeom, min_ext: usize) -> Self {
        let s = g.stride[2];
        let split = |kw: usize| {
            let v = (kw * g.dilation[2]) as isize - g.padding[2] as isize;
            (v.rem_euclid(s as isize) as usize, v.div_euclid(s as isize))
        };
        let qs: Vec<isize> = (0..g.kernel[2]).map(|kw| split(kw).1).collect();
        let qmin = qs.iter().copied().min().unwrap_or(0);
        let qmax = qs.iter().copied().max().unwrap_or(0);
        let span = (qmax - qmin) as usize + 1;
        let taps = (0..g.kernel[2])
            .map(|kw| {
                let (phase, q) = split(kw);
                Tap { phase, offset: (q - qmin) as usize }
            })
            .collect();
        let wp = g.output[2] + span - 1;
        let k3 = g.cin * g.kernel[0] * g.kernel[1] * s;
        let rows = tile_rows(k3 * wp, wp, min_ext).min(g.output[0] * g.output[1]);
        Self { s, qmin, span, wp, k3, rows, taps }
    }

    /// Column-matrix row stride for a tile of `nr` output rows.
    fn ld(&self, nr: usize) -> usize {
        nr * self.wp + self.span - 1
    }

    /// Column-matrix length, with the kernels' read-past slack.
    fn col_len(&self) -> usize {
        self.k3 * self.ld(self.rows) + avx512::SLACK
    }

    /// The gather of this layout: phase rows.
    fn map(&self) -> RowMap {
        RowMap { step: self.s, phases: self.s, first: self.qmin * self.s as isize, wp: self.wp }
    }
}

/// Input channels up to which the phase rows beat im2col + gemm. Measured on one Zen 4 core
/// (GFLOP/s, forward + backward, phase rows vs gemm): k3 s2 16→32 20.5 vs 19.4; 32→64 28.6 vs
/// 34.2; 64→128 25.6 vs 46; k4 s2 3→64 25 vs 18.7; 64→128 44 vs 59. With many input channels
/// the gather of im2col is amortised over many outputs and gemm's blocking wins.
pub(super) const MAX_CIN: usize = 16;

/// Whether this module handles the convolution: strided along W, few input channels, on an
/// AVX-512 CPU.
pub(super) fn applies(g: &ConvGeom) -> bool {
    g.stride[2] > 1 && g.cin <= MAX_CIN && avx512::available()
}

/// Forward; `out` already holds bias and residual.
pub(super) fn forward(g: &ConvGeom, x: &[f32], wb: &[f32], out: &mut [f32]) {
    let t = PhaseRows::new(g, avx512::FORWARD_MIN_EXT);
    let [od, oh, _] = g.output;
    let si = g.in_spatial();
    let kc = g.kcols();
    let kvol_w = g.kernel[2];
    let krows = g.cin * g.kernel[0] * g.kernel[1];
    // Dense weight matrix (cout, k3·span) of the phase rows, zero where no tap lands.
    let mut dense = vec![0f32; g.cout * t.k3 * t.span];
    for co in 0..g.cout {
        for r in 0..krows {
            for (kw, tap) in t.taps.iter().enumerate() {
                let row = r * t.s + tap.phase;
                dense[(co * t.k3 + row) * t.span + tap.offset] = wb[co * kc + r * kvol_w + kw];
            }
        }
    }
    let packed = avx512::pack_weight(&dense, t.k3 * t.span, g.cout, t.k3, t.span);
    let total_rows = od * oh;
    let tiles = total_rows.div_ceil(t.rows);
    let tmp_len = g.cout * (t.rows * t.wp).next_multiple_of(avx512::E_BLOCK);
    let outp = SharedMut(out.as_mut_ptr());
    (0..g.n * tiles).into_par_iter().for_each_init(
        || (vec![0f32; t.col_len()], vec![0f32; tmp_len], 0),
        |(col, tmp, col_nr), item| {
            let (n, r0) = (item / tiles, (item % tiles) * t.rows);
            let nr = t.rows.min(total_rows - r0);
            let ext = nr * t.wp;
            let tld = ext.next_multiple_of(avx512::E_BLOCK);
            let xs = &x[n * g.cin * si..(n + 1) * g.cin * si];
            let fresh = std::mem::replace(col_nr, nr) != nr;
            gather_rows(g, t.map(), xs, (r0, nr, t.ld(nr)), fresh, col);
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `applies` checked AVX-512F; col has SLACK floats past its k3 rows of
            // stride ld = ext + span − 1; tmp is (cout, tld) with tld the 48-rounded ext.
            unsafe {
                avx512::rows_forward(
                    col.as_ptr(),
                    t.ld(nr),
                    t.k3,
                    t.span,
                    1,
                    &packed,
                    g.cout,
                    ext,
                    tmp.as_mut_ptr(),
                    tld,
                )
            }
            // SAFETY: output rows r0..r0+nr of sample n belong to this task.
            unsafe { RowTileAt { n, r0, nr, wp: t.wp }.add_into_output(g, tmp, tld, outp) };
        },
    );
}

/// Gradient of the `(Cout, kcols)` weight matrix (bias column included when present).
///
/// The kernel reduces three dense offsets per phase row; layouts with `span > 3` return
/// `None` and keep the im2col path.
pub(super) fn backward_weight(g: &ConvGeom, x: &[f32], dy: &[f32]) -> Option<Vec<f32>> {
    let t = PhaseRows::new(g, avx512::GRAD_WEIGHT_MIN_EXT);
    if t.span > 3 {
        return None;
    }
    let [od, oh, _] = g.output;
    let si = g.in_spatial();
    let kc = g.kcols();
    let k = g.k_rows();
    let total_rows = od * oh;
    let tiles = total_rows.div_ceil(t.rows);
    let items = g.n * tiles;
    // Per phase row, three dense offsets: (cout, k3·3).
    let gk = t.k3 * 3;
    let dense = sum_over_ranges(items, g.cout * gk + g.cout, |range| {
        let mut acc = vec![0f32; g.cout * gk];
        let mut bias = vec![0f32; g.cout];
        let mut col = vec![0f32; t.col_len()];
        let mut dyx = vec![0f32; g.cout * (t.rows * t.wp).next_multiple_of(16)];
        let mut col_nr = 0;
        for item in range {
            let (n, r0) = (item / tiles, (item % tiles) * t.rows);
            let nr = t.rows.min(total_rows - r0);
            let ext = nr * t.wp;
            let dld = ext.next_multiple_of(16);
            let xs = &x[n * g.cin * si..(n + 1) * g.cin * si];
            let fresh = std::mem::replace(&mut col_nr, nr) != nr;
            gather_rows(g, t.map(), xs, (r0, nr, t.ld(nr)), fresh, &mut col);
            let tile = RowTileAt { n, r0, nr, wp: t.wp };
            tile.dy_into_rows(g, dy, &mut dyx, dld, Some(&mut bias));
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `applies` checked AVX-512F; col has SLACK floats past its k3 rows
            // (≥ the 16-rounded ext + 2); dyx is (cout, dld), zero past ext; acc is
            // (cout, 3·k3).
            unsafe {
                avx512::rows_grad_weight(
                    col.as_ptr(),
                    t.ld(nr),
                    t.k3,
                    1,
                    dyx.as_ptr(),
                    dld,
                    g.cout,
                    ext,
                    &mut acc,
                    gk,
                )
            }
        }
        acc.extend_from_slice(&bias);
        acc
    });
    let krows = g.cin * g.kernel[0] * g.kernel[1];
    let mut dw = vec![0f32; g.cout * kc];
    for co in 0..g.cout {
        for r in 0..krows {
            for (kw, tap) in t.taps.iter().enumerate() {
                let row = r * t.s + tap.phase;
                dw[co * kc + r * g.kernel[2] + kw] = dense[co * gk + row * 3 + tap.offset];
            }
        }
        if g.has_bias {
            dw[co * kc + k] = dense[g.cout * gk + co];
        }
    }
    Some(dw)
}
