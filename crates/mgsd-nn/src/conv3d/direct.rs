//! AVX-512 direct convolution vectorised over *output channels*, for convolutions whose output
//! channels come in blocks of 16 (every U-Net convolution but the last, the discriminator, and
//! the input gradients of the unit-stride ones).
//!
//! The row kernels of [`super::avx512`] vectorise over output positions along W. On the deep
//! stages that wastes most of the work: rows are padded to `W + 2` (half again at W = 4) and the
//! zero rows of the D/H padding are multiplied too (30% of the taps at 8×8×4). Here:
//!
//! - **forward**: a register tile of `CB` blocks of 16 output channels × `NC` consecutive
//!   outputs of one output row. For every input channel and every tap `(kd, kh)` that lands
//!   inside the input (the D/H padding is skipped exactly) the 16-channel weight vectors are
//!   loaded and each input value is broadcast. The input is read from a copy whose rows carry
//!   the W padding as zeros, so every W tap is a plain offset.
//! - **weight gradient**: a register tile of `CB` blocks of 16 output channels × `NCI` input
//!   channels × the `KW` W taps of one `(kd, kh)`, reduced over the output positions of a
//!   block of output rows. `dY` is transposed per block to position-major order so that the 16
//!   channels of one position are one load; each worker owns one accumulator in that
//!   (channel-last) order, transposed back at the end.
//! - **input gradient**: with unit stride `cpu.rs` runs the forward on `dY` with the flipped
//!   kernel; with any stride [`backward_input`] runs one forward-shaped problem per residue
//!   class of the input grid (input channels in blocks of 16).
//!
//! x86-64 only. [`applies`], [`applies_weight_grad`] and [`applies_input_grad`] say when
//! `cpu.rs` takes this path. Tests compare it with the slow reference and with the portable
//! path (`conv3d/tests.rs`).

use std::borrow::Cow;
use std::mem::MaybeUninit;

use rayon::prelude::*;

use std::arch::x86_64::{
    _mm512_fmadd_ps, _mm512_loadu_ps, _mm512_set1_ps, _mm512_setzero_ps, _mm512_storeu_ps,
};

use super::cpu::{residues, sum_over_ranges, Residue, SharedMut};
use super::{avx512, ConvGeom};
use crate::cpu_f32;

/// Output channels per vector.
const LANES: usize = 16;
/// Most outputs per forward tile (with two channel blocks: 24 accumulators of 32 registers).
const MAX_NC: usize = 12;
/// Bytes of packed weight per pass of the forward tiles over a band of rows: the reduction
/// over input channels is split so that this slice stays in L2 while every tile of the band
/// reads it (a 64 → 128 discriminator layer's weight is 2 MiB).
const WEIGHT_SLICE_BYTES: usize = 128 * 1024;
/// Output rows per forward work item (the tiles of a band share each weight slice).
const BAND_ROWS: usize = 8;
/// Floats of transposed `dY` per weight-gradient block (128 KiB: it stays in L2 while every
/// `(input channels, kd, kh)` tile of the block reads it).
const DY_BLOCK_FLOATS: usize = 32 * 1024;

/// Whether the forward kernel takes this convolution: AVX-512F, output channels in blocks of
/// 16, no dilation, stride 1 or 2 along W, not a plain 1×1×1 product.
pub(super) fn applies(g: &ConvGeom) -> bool {
    avx512::available()
        && g.cout.is_multiple_of(LANES)
        && g.dilation == [1; 3]
        && g.stride[2] <= 2
        && !g.is_pointwise()
}

/// Whether the weight-gradient kernel takes it: as [`applies`], with 3 or 4 W taps.
pub(super) fn applies_weight_grad(g: &ConvGeom) -> bool {
    applies(g) && matches!(g.kernel[2], 3 | 4)
}

/// The input with `pw` zeros at both ends of every W row, `(N, Cin, D, H, W + 2·pw)` (the input
/// itself when `pw = 0`): every W tap of every output then reads inside its own row.
fn pad_w<'a>(g: &ConvGeom, x: &'a [f32]) -> Cow<'a, [f32]> {
    let [d, h, w] = g.input;
    let pw = g.padding[2];
    pad_rows(x, g.n * g.cin * d, h, w, (pw, pw))
}

/// `planes` planes of `h` rows of `w` values, every row extended by `left` and `right` zeros.
fn pad_rows(
    x: &[f32],
    planes: usize,
    h: usize,
    w: usize,
    (left, right): (usize, usize),
) -> Cow<'_, [f32]> {
    if left == 0 && right == 0 {
        return Cow::Borrowed(x);
    }
    let wp = left + w + right;
    let zero = MaybeUninit::new(0.0);
    Cow::Owned(cpu_f32::par_init(planes * h * wp, h * wp, |plane, dst| {
        let src = &x[plane * h * w..(plane + 1) * h * w];
        for (row, s) in dst.chunks_exact_mut(wp).zip(src.chunks_exact(w)) {
            row[..left].fill(zero);
            row[left..left + w].iter_mut().zip(s).for_each(|(d, v)| {
                d.write(*v);
            });
            row[left + w..].fill(zero);
        }
    }))
}

/// Valid taps `k_lo..k_hi` of one axis whose reads `start + k` fall inside `0..len`.
fn tap_range(start: isize, k: usize, len: usize) -> (usize, usize) {
    let lo = (-start).clamp(0, k as isize) as usize;
    let hi = (len as isize - start).clamp(lo as isize, k as isize) as usize;
    (lo, hi)
}

/// Splits `len` outputs into chunks of at most `max` of near-equal size: `(start, size)`.
fn chunks(len: usize, max: usize) -> impl Iterator<Item = (usize, usize)> {
    let n = len.div_ceil(max).max(1);
    (0..n).map(move |i| (i * len / n, (i + 1) * len / n - i * len / n))
}

/// Groups of channel blocks `(first block, blocks)` with at most `most` blocks each (1, 2 or
/// 4, as the kernels are instantiated).
fn block_groups(blocks: usize, most: usize) -> Vec<(usize, usize)> {
    let mut groups = Vec::new();
    let mut b = 0;
    while b < blocks {
        let take = [4, 2, 1].into_iter().find(|&c| c <= most && c <= blocks - b).unwrap_or(1);
        groups.push((b, take));
        b += take;
    }
    groups
}

/// The `(Cout, kcols)` weight matrix repacked as `[co block][ci][kd][kh][kw][16]`.
fn pack_weight(g: &ConvGeom, wb: &[f32]) -> Vec<f32> {
    let kvol: usize = g.kernel.iter().product();
    let kc = g.kcols();
    let per_block = g.cin * kvol * LANES;
    cpu_f32::par_init(g.cout * g.cin * kvol, per_block, |b, dst| {
        for (i, d) in dst.iter_mut().enumerate() {
            let (col, lane) = (i / LANES, i % LANES);
            d.write(wb[(b * LANES + lane) * kc + col]);
        }
    })
}

/// Loop strides of a forward tile, in floats.
#[derive(Clone, Copy)]
struct FwdStrides {
    /// Next input channel in the padded input: `D·H·Wp`.
    ci_x: usize,
    /// Next input plane: `H·Wp`.
    kd_x: usize,
    /// Next input row: `Wp`.
    kh_x: usize,
    /// Next 16-channel block of the packed weight: `Cin·kvol·16`.
    cb_w: usize,
    /// Next input channel in the packed weight: `kvol·16`.
    ci_w: usize,
    /// Next `kd` in the packed weight: `KH·KW·16`.
    kd_w: usize,
    /// Next `kh` in the packed weight: `KW·16`.
    kh_w: usize,
    /// W taps.
    kw: usize,
}

/// One forward tile: `out[c·NC + j][l] += Σ W[(cb0 + c)·16 + l, ci, kd, kh, kw] ·
/// x[ci, id0 + a, ih0 + b, (ow0 + j)·SW + kw]` over `ci < cin`, `a < nkd`, `b < nkh`, all `kw`.
///
/// # Safety
/// AVX-512F must be available; `x` points at `(ci 0, id0, ih0, ow0·SW)` of the padded input and
/// `w` at `(block cb0, ci 0, kd_lo, kh_lo, kw 0)` of the packed weight, with every read of the
/// loops in bounds; `out` holds `CB·NC` vectors.
#[target_feature(enable = "avx512f")]
unsafe fn fwd_tile<const CB: usize, const NC: usize, const SW: usize>(
    x: *const f32,
    w: *const f32,
    cin: usize,
    (nkd, nkh): (usize, usize),
    s: &FwdStrides,
    out: &mut [[f32; LANES]],
) {
    let mut acc = [[_mm512_setzero_ps(); NC]; CB];
    for (c, a) in acc.iter_mut().enumerate() {
        for (j, v) in a.iter_mut().enumerate() {
            // SAFETY: out holds CB·NC vectors.
            *v = unsafe { _mm512_loadu_ps(out[c * NC + j].as_ptr()) };
        }
    }
    for ci in 0..cin {
        for a in 0..nkd {
            for b in 0..nkh {
                // SAFETY (all reads below): in bounds by the function's contract.
                let xr = unsafe { x.add(ci * s.ci_x + a * s.kd_x + b * s.kh_x) };
                let wr = unsafe { w.add(ci * s.ci_w + a * s.kd_w + b * s.kh_w) };
                for kw in 0..s.kw {
                    let mut wv = [_mm512_setzero_ps(); CB];
                    for (c, v) in wv.iter_mut().enumerate() {
                        *v = unsafe { _mm512_loadu_ps(wr.add(c * s.cb_w + kw * LANES)) };
                    }
                    for j in 0..NC {
                        let xv = _mm512_set1_ps(unsafe { *xr.add(j * SW + kw) });
                        for (a, v) in acc.iter_mut().zip(&wv) {
                            a[j] = _mm512_fmadd_ps(*v, xv, a[j]);
                        }
                    }
                }
            }
        }
    }
    for (c, a) in acc.iter().enumerate() {
        for (j, v) in a.iter().enumerate() {
            // SAFETY: out holds CB·NC vectors.
            unsafe { _mm512_storeu_ps(out[c * NC + j].as_mut_ptr(), *v) };
        }
    }
}

type FwdTile =
    unsafe fn(*const f32, *const f32, usize, (usize, usize), &FwdStrides, &mut [[f32; LANES]]);

/// The forward tile for `cb` channel blocks (1, 2 or 4), `nc` outputs (≤ 12, ≤ 6 with 4
/// blocks) and W stride `sw` (1 or 2).
fn fwd_tile_for(cb: usize, nc: usize, sw: usize) -> FwdTile {
    macro_rules! by_nc {
        ($cb:literal, $sw:literal, $($nc:literal)*) => {
            match nc {
                $($nc => fwd_tile::<$cb, $nc, $sw> as FwdTile,)*
                _ => unreachable!("forward tile of {nc} outputs"),
            }
        };
    }
    match (cb, sw) {
        (1, 1) => by_nc!(1, 1, 1 2 3 4 5 6 7 8 9 10 11 12),
        (1, _) => by_nc!(1, 2, 1 2 3 4 5 6 7 8 9 10 11 12),
        (2, 1) => by_nc!(2, 1, 1 2 3 4 5 6 7 8 9 10 11 12),
        (2, _) => by_nc!(2, 2, 1 2 3 4 5 6 7 8 9 10 11 12),
        (_, 1) => by_nc!(4, 1, 1 2 3 4 5 6),
        (_, _) => by_nc!(4, 2, 1 2 3 4 5 6),
    }
}

/// A forward-shaped problem for [`fwd_tile`]: `out[n, co, o] += Σ_c Σ_k W[co, c, k] ·
/// x[n, c, first + o·stride + k]` per axis, skipping the D/H taps that read outside `x`.
struct TileProblem<'a> {
    /// `(N, C, D, H, Wp)`: rows already carry whatever W padding the reads need.
    x: &'a [f32],
    /// `D, H, Wp` of `x`.
    dims: [usize; 3],
    /// Channels of `x`, reduced over.
    c: usize,
    /// Packed weight `[out block][c][kd][kh][kw][16]`.
    w: &'a [f32],
    kernel: [usize; 3],
    stride: [usize; 3],
    /// Index of `x` read by tap 0 of output 0, per axis (along W inside the padded row, ≥ 0).
    first: [isize; 3],
    /// Blocks of 16 output channels.
    blocks: usize,
    /// Batch and output grid.
    n: usize,
    out: [usize; 3],
    /// Where output `(n, co, od, oh, ow)` lives: strides of each index, plus an offset.
    layout: [usize; 5],
    offset: usize,
}

impl TileProblem<'_> {
    /// Adds the problem's result into `dst` (disjoint rows per task, run in parallel).
    fn run(&self, dst: SharedMut) {
        let [d, h, wp] = self.dims;
        let [kd_n, kh_n, kw_n] = self.kernel;
        let [od_n, oh_n, ow_n] = self.out;
        let kvol = kd_n * kh_n * kw_n;
        let s = FwdStrides {
            ci_x: d * h * wp,
            kd_x: h * wp,
            kh_x: wp,
            cb_w: self.c * kvol * LANES,
            ci_w: kvol * LANES,
            kd_w: kh_n * kw_n * LANES,
            kh_w: kw_n * LANES,
            kw: kw_n,
        };
        let groups = block_groups(self.blocks, 4);
        let bands = oh_n.div_ceil(BAND_ROWS);
        let per_n = groups.len() * od_n * bands;
        let [ln, lc, ld, lh, lw] = self.layout;
        (0..self.n * per_n).into_par_iter().for_each(|item| {
            let (n, rest) = (item / per_n, item % per_n);
            let ((b0, cb), rest) = (groups[rest / (od_n * bands)], rest % (od_n * bands));
            let (od, oh0) = (rest / bands, (rest % bands) * BAND_ROWS);
            let band = BAND_ROWS.min(oh_n - oh0);
            let start_d = self.first[0] + (od * self.stride[0]) as isize;
            let (d_lo, d_hi) = tap_range(start_d, kd_n, d);
            if d_lo == d_hi {
                return; // every tap reads padding: nothing to add
            }
            // Per row: the first input row and the H taps inside the input.
            let rows: Vec<(usize, usize, usize)> = (oh0..oh0 + band)
                .map(|oh| {
                    let start_h = self.first[1] + (oh * self.stride[1]) as isize;
                    let (h_lo, h_hi) = tap_range(start_h, kh_n, h);
                    ((start_h + h_lo as isize).max(0) as usize, h_lo, h_hi)
                })
                .collect();
            let id0 = (start_d + d_lo as isize) as usize;
            let max_nc = if cb == 4 { MAX_NC / 2 } else { MAX_NC };
            // Accumulators of the band, [row][channel block][ow][16].
            let mut acc = vec![[0f32; LANES]; band * cb * ow_n];
            let step = (WEIGHT_SLICE_BYTES / (cb * LANES * kvol * 4)).clamp(1, self.c);
            for c0 in (0..self.c).step_by(step) {
                let cc = step.min(self.c - c0);
                for (r, &(ih0, h_lo, h_hi)) in rows.iter().enumerate() {
                    if h_lo == h_hi {
                        continue;
                    }
                    let x_row =
                        ((n * self.c + c0) * d + id0) * h * wp + ih0 * wp + self.first[2] as usize;
                    let w_at = ((b0 * self.c + c0) * kvol + (d_lo * kh_n + h_lo) * kw_n) * LANES;
                    for (ow0, nc) in chunks(ow_n, max_nc) {
                        let kernel = fwd_tile_for(cb, nc, self.stride[2]);
                        let tile = &mut acc[(r * ow_n + ow0) * cb..][..cb * nc];
                        // SAFETY: AVX-512F was checked by the caller (`applies…`); the tile
                        // reads channels c0..c0+cc of sample n, planes id0.. and rows ih0..
                        // inside x (the tap ranges above), and padded columns first_w + ow·sw
                        // + kw < Wp (the caller padded the rows for that); the weight block
                        // group b0..b0+cb exists; `tile` holds cb·nc vectors.
                        unsafe {
                            kernel(
                                self.x.as_ptr().add(x_row + ow0 * self.stride[2]),
                                self.w.as_ptr().add(w_at),
                                cc,
                                (d_hi - d_lo, h_hi - h_lo),
                                &s,
                                tile,
                            )
                        };
                    }
                }
            }
            for (r, &(_, h_lo, h_hi)) in rows.iter().enumerate() {
                if h_lo == h_hi {
                    continue;
                }
                for (ow0, nc) in chunks(ow_n, max_nc) {
                    let tile = &acc[(r * ow_n + ow0) * cb..][..cb * nc];
                    for c in 0..cb {
                        for lane in 0..LANES {
                            let co = (b0 + c) * LANES + lane;
                            let at = self.offset
                                + n * ln
                                + co * lc
                                + od * ld
                                + (oh0 + r) * lh
                                + ow0 * lw;
                            for (j, v) in tile[c * nc..(c + 1) * nc].iter().enumerate() {
                                // SAFETY: output rows (n, co, od, oh0..oh0+band) belong to
                                // this item only.
                                unsafe { *dst.get().add(at + j * lw) += v[lane] };
                            }
                        }
                    }
                }
            }
        });
    }
}

/// Forward: adds `conv(x, W)` into `out` `(N, Cout, Do, Ho, Wo)`, which already holds the bias
/// and residual.
pub(super) fn forward(g: &ConvGeom, x: &[f32], wb: &[f32], out: &mut [f32]) {
    let [d, h, w] = g.input;
    let [od, oh, ow] = g.output;
    let xp = pad_w(g, x);
    let packed = pack_weight(g, wb);
    TileProblem {
        x: &xp,
        dims: [d, h, w + 2 * g.padding[2]],
        c: g.cin,
        w: &packed,
        kernel: g.kernel,
        stride: g.stride,
        first: [-(g.padding[0] as isize), -(g.padding[1] as isize), 0],
        blocks: g.cout / LANES,
        n: g.n,
        out: g.output,
        layout: [g.cout * od * oh * ow, od * oh * ow, oh * ow, ow, 1],
        offset: 0,
    }
    .run(SharedMut(out.as_mut_ptr()));
}

/// Whether the strided input gradient takes this convolution: AVX-512F, input channels in
/// blocks of 16, no dilation, not a plain 1×1×1 product.
pub(super) fn applies_input_grad(g: &ConvGeom) -> bool {
    avx512::available() && g.cin.is_multiple_of(LANES) && g.dilation == [1; 3] && !g.is_pointwise()
}

/// Input gradient of a convolution (any stride) as one forward-shaped problem per residue class
/// of the input grid ([`residues`]): inside a class only the taps `k ≡ r + p (mod s)` reach a
/// position, and with unit dilation they read consecutive outputs, so each class is a
/// unit-stride convolution of `dY` with those taps (transposed weight, 16 input channels per
/// vector) whose outputs land every `s` positions of `dX`. Classes no tap reaches keep zeros.
pub(super) fn backward_input(g: &ConvGeom, dy: &[f32], wb: &[f32]) -> Vec<f32> {
    let [d, h, w] = g.input;
    let [od, oh, ow] = g.output;
    let [_, kh_n, kw_n] = g.kernel;
    let kvol: usize = g.kernel.iter().product();
    let kc = g.kcols();
    // Each class's taps in ascending output offset q (descending tap index): q, q + 1, …
    let classes: Vec<Residue> = residues(g)
        .into_iter()
        .map(|mut c| {
            c.taps.iter_mut().for_each(|t| t.reverse());
            c
        })
        .collect();
    // W padding of dY that every class's reads fit in.
    let (mut left, mut right) = (0usize, 0usize);
    for c in &classes {
        let tw = &c.taps[2];
        let (q_first, q_last) = (tw[0].1, tw[tw.len() - 1].1);
        left = left.max((-q_first).max(0) as usize);
        let last = c.cnt[2] as isize - 1 + q_last;
        right = right.max((last - (ow as isize - 1)).max(0) as usize);
    }
    let dyp = pad_rows(dy, g.n * g.cout * od, oh, ow, (left, right));
    let mut dx = cpu_f32::par_init(g.n * g.cin * d * h * w, d * h * w, |_, dst| {
        dst.fill(MaybeUninit::new(0.0));
    });
    let dst = SharedMut(dx.as_mut_ptr());
    for c in &classes {
        let [td, th, tw] = &c.taps;
        let taps = td.len() * th.len() * tw.len();
        // [ci block][co][td][th][tw][16]
        let packed = cpu_f32::par_init(g.cin * g.cout * taps, g.cout * taps * LANES, |b, dst| {
            let mut i = 0;
            for co in 0..g.cout {
                for &(kd, _) in td {
                    for &(kh, _) in th {
                        for &(kw, _) in tw {
                            let tap = (kd * kh_n + kh) * kw_n + kw;
                            for lane in 0..LANES {
                                let ci = b * LANES + lane;
                                dst[i].write(wb[co * kc + ci * kvol + tap]);
                                i += 1;
                            }
                        }
                    }
                }
            }
        });
        TileProblem {
            x: &dyp,
            dims: [od, oh, left + ow + right],
            c: g.cout,
            w: &packed,
            kernel: [td.len(), th.len(), tw.len()],
            stride: [1; 3],
            first: [td[0].1, th[0].1, tw[0].1 + left as isize],
            blocks: g.cin / LANES,
            n: g.n,
            out: c.cnt,
            layout: [
                g.cin * d * h * w,
                d * h * w,
                g.stride[0] * h * w,
                g.stride[1] * w,
                g.stride[2],
            ],
            offset: (c.r[0] * h + c.r[1]) * w + c.r[2],
        }
        .run(dst);
    }
    dx
}

/// One weight-gradient tile: for each row `(dy offset, x offset)` and each output `ow < wo`,
/// `acc[ci0 + i, kd, kh, kw][(cb0 + c)·16 + l] += dY[pos, (cb0 + c)·16 + l] ·
/// x[ci0 + i, id, ih, ow·SW + kw]`, with the accumulator read from and written back to `acc`.
///
/// # Safety
/// AVX-512F must be available; `dyt` is the transposed block (position stride `cout`) shifted
/// to channel block cb0, `x` the padded input; every row's reads must be in bounds; `acc`
/// points at `(ci0, kd, kh, kw 0, channel cb0·16)` of a channel-last accumulator with stride
/// `acc_ci` per input channel and `cout` per W tap.
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn wgrad_tile<const CB: usize, const NCI: usize, const KW: usize, const SW: usize>(
    rows: &[(usize, usize)],
    dyt: *const f32,
    x: *const f32,
    wo: usize,
    cout: usize,
    ci_x: usize,
    acc_ptr: *mut f32,
    acc_ci: usize,
) {
    let mut acc = [[_mm512_setzero_ps(); 12]; CB];
    for (c, a) in acc.iter_mut().enumerate() {
        for i in 0..NCI {
            for kw in 0..KW {
                // SAFETY: in bounds by the function's contract.
                a[i * KW + kw] =
                    unsafe { _mm512_loadu_ps(acc_ptr.add(i * acc_ci + kw * cout + c * LANES)) };
            }
        }
    }
    for &(dy_off, x_off) in rows {
        // SAFETY (all reads below): in bounds by the function's contract.
        let (dyr, xr) = unsafe { (dyt.add(dy_off), x.add(x_off)) };
        for ow in 0..wo {
            let mut dv = [_mm512_setzero_ps(); CB];
            for (c, v) in dv.iter_mut().enumerate() {
                *v = unsafe { _mm512_loadu_ps(dyr.add(ow * cout + c * LANES)) };
            }
            let xo = unsafe { xr.add(ow * SW) };
            for i in 0..NCI {
                for kw in 0..KW {
                    let xv = _mm512_set1_ps(unsafe { *xo.add(i * ci_x + kw) });
                    for (a, v) in acc.iter_mut().zip(&dv) {
                        a[i * KW + kw] = _mm512_fmadd_ps(*v, xv, a[i * KW + kw]);
                    }
                }
            }
        }
    }
    for (c, a) in acc.iter().enumerate() {
        for i in 0..NCI {
            for kw in 0..KW {
                // SAFETY: as the loads above.
                unsafe {
                    _mm512_storeu_ps(
                        acc_ptr.add(i * acc_ci + kw * cout + c * LANES),
                        a[i * KW + kw],
                    )
                };
            }
        }
    }
}

type WgradTile =
    unsafe fn(&[(usize, usize)], *const f32, *const f32, usize, usize, usize, *mut f32, usize);

/// The weight-gradient tile for `cb` channel blocks (1 or 2), `nci` input channels (≤ 12 / `kw`),
/// `kw` W taps (3 or 4) and W stride `sw` (1 or 2).
fn wgrad_tile_for(cb: usize, nci: usize, kw: usize, sw: usize) -> WgradTile {
    macro_rules! by_nci {
        ($cb:literal, $kw:literal, $sw:literal, $($nci:literal)*) => {
            match nci {
                $($nci => wgrad_tile::<$cb, $nci, $kw, $sw> as WgradTile,)*
                _ => unreachable!("weight-gradient tile of {nci} input channels"),
            }
        };
    }
    match (cb, kw, sw) {
        (1, 3, 1) => by_nci!(1, 3, 1, 1 2 3 4),
        (1, 3, _) => by_nci!(1, 3, 2, 1 2 3 4),
        (1, _, 1) => by_nci!(1, 4, 1, 1 2 3),
        (1, _, _) => by_nci!(1, 4, 2, 1 2 3),
        (_, 3, 1) => by_nci!(2, 3, 1, 1 2 3 4),
        (_, 3, _) => by_nci!(2, 3, 2, 1 2 3 4),
        (_, _, 1) => by_nci!(2, 4, 1, 1 2 3),
        (_, _, _) => by_nci!(2, 4, 2, 1 2 3),
    }
}

/// Gradient of the `(Cout, kcols)` weight matrix (bias column included when present).
pub(super) fn backward_weight(g: &ConvGeom, x: &[f32], dy: &[f32]) -> Vec<f32> {
    let xp = pad_w(g, x);
    let [d, h, w] = g.input;
    let [kd_n, kh_n, kw_n] = g.kernel;
    let [od_n, oh_n, ow_n] = g.output;
    let wp = w + 2 * g.padding[2];
    let kvol = kd_n * kh_n * kw_n;
    let so = g.out_spatial();
    // Blocks of output rows inside one (n, od) plane.
    let rows_per_block = (DY_BLOCK_FLOATS / (ow_n * g.cout)).clamp(1, oh_n);
    let per_plane = oh_n.div_ceil(rows_per_block);
    let blocks = g.n * od_n * per_plane;
    let nci_max = 12 / kw_n;
    let groups = block_groups(g.cout / LANES, 2);
    let acc_len = g.cin * kvol * g.cout;
    let acc = sum_over_ranges(blocks, acc_len + g.cout, |range| {
        // Channel-last accumulator [ci][kd][kh][kw][co], then the bias sums.
        let mut acc = vec![0f32; acc_len + g.cout];
        let mut dyt = vec![0f32; rows_per_block * ow_n * g.cout];
        let mut rows = Vec::with_capacity(rows_per_block);
        for blk in range {
            let (plane, part) = (blk / per_plane, blk % per_plane);
            let (n, od) = (plane / od_n, plane % od_n);
            let oh0 = part * rows_per_block;
            let nr = rows_per_block.min(oh_n - oh0);
            // dY rows (n, ·, od, oh0..oh0+nr) to position-major order; bias sums.
            let npos = nr * ow_n;
            let at = (od * oh_n + oh0) * ow_n;
            if g.has_bias {
                for co in 0..g.cout {
                    let src = &dy[(n * g.cout + co) * so + at..][..npos];
                    acc[acc_len + co] += src.iter().sum::<f32>();
                }
            }
            // In 16 × 16 blocks, so each block's writes stay in a few cache lines.
            for co0 in (0..g.cout).step_by(LANES) {
                for p0 in (0..npos).step_by(LANES) {
                    let pn = LANES.min(npos - p0);
                    for co in co0..co0 + LANES {
                        let src = &dy[(n * g.cout + co) * so + at + p0..][..pn];
                        for (p, v) in src.iter().enumerate() {
                            dyt[(p0 + p) * g.cout + co] = *v;
                        }
                    }
                }
            }
            let start_d = (od * g.stride[0]) as isize - g.padding[0] as isize;
            let (d_lo, d_hi) = tap_range(start_d, kd_n, d);
            for kd in d_lo..d_hi {
                let id = (start_d + kd as isize) as usize;
                for kh in 0..kh_n {
                    rows.clear();
                    for r in 0..nr {
                        let start_h = ((oh0 + r) * g.stride[1]) as isize - g.padding[1] as isize;
                        let (h_lo, h_hi) = tap_range(start_h, kh_n, h);
                        if (h_lo..h_hi).contains(&kh) {
                            let ih = (start_h + kh as isize) as usize;
                            let x_off = ((n * g.cin * d + id) * h + ih) * wp;
                            rows.push((r * ow_n * g.cout, x_off));
                        }
                    }
                    if rows.is_empty() {
                        continue;
                    }
                    for &(b0, cb) in &groups {
                        let mut ci0 = 0;
                        while ci0 < g.cin {
                            let nci = nci_max.min(g.cin - ci0);
                            let kernel = wgrad_tile_for(cb, nci, kw_n, g.stride[2]);
                            let at = ((ci0 * kd_n + kd) * kh_n + kh) * kw_n * g.cout + b0 * LANES;
                            // SAFETY: AVX-512F was checked by `applies`; each row reads dyt
                            // positions r·Wo.. of channels b0·16..(b0+cb)·16 and padded
                            // input columns up to (Wo−1)·sw + kw − 1 < Wp of channels
                            // ci0..ci0+nci at a valid (id, ih); acc covers all of it.
                            unsafe {
                                kernel(
                                    &rows,
                                    dyt.as_ptr().add(b0 * LANES),
                                    xp.as_ptr().add(ci0 * d * h * wp),
                                    ow_n,
                                    g.cout,
                                    d * h * wp,
                                    acc.as_mut_ptr().add(at),
                                    kvol * g.cout,
                                )
                            };
                            ci0 += nci;
                        }
                    }
                }
            }
        }
        acc
    });
    // Back to the (Cout, kcols) matrix: column ci·kvol + tap, then the bias.
    let kc = g.kcols();
    let k = g.k_rows();
    cpu_f32::par_init(g.cout * kc, kc, |co, dst| {
        for (col, d) in dst.iter_mut().enumerate() {
            d.write(if col < k { acc[col * g.cout + co] } else { acc[acc_len + co] });
        }
    })
}
