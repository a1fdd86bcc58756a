//! CPU kernels of the 3-D convolution: tiled im2col + gemm, forward and both backward passes.
//!
//! Everything works on C-contiguous f32 slices in `(N, C, D, H, W)` order; the weight is the
//! `(Cout, kcols)` matrix of [`super::ConvGeom`] (the PyTorch weight flattened to
//! `(Cout, Cin·kd·kh·kw)`, optionally followed by a bias column).
//!
//! - forward: for a slab of `P` consecutive output positions, gather the `(K, P)` column
//!   matrix (K = Cin·kd·kh·kw) and write `W · col` straight into the output, which already
//!   holds the bias and the optional residual (`read_dst`).
//! - forward, unit stride along W (the U-Net's 3×3×3 convolutions): the column matrix only
//!   has rows `(ci, kd, kh)` over whole padded input rows, and the `kw` taps are offset views
//!   of it (one gemm per tap, accumulated), so the gather moves `kw` times less data; the
//!   result goes through a small tile buffer that drops the padding columns.
//! - grad-weight: `dW += dY_tile · col_tileᵀ`, one accumulator per worker, summed at the end
//!   (same two layouts).
//! - grad-input with unit stride and `p ≤ d·(k − 1)`: the forward kernel applied to `dY` with
//!   the flipped, transposed weight. Otherwise the transposed convolution written as a
//!   *gather* (no scatter, so no races): input positions are split into the `s_d·s_h·s_w`
//!   residue classes of the stride; inside a class only a fixed subset of kernel taps touches
//!   each position, so the column matrix of `dY` holds no structural zeros and stride 2 costs
//!   no more than it should.
//! - 1×1×1 with unit stride and no padding: plain gemms on the tensors, no gather.
//!
//! Tiles run in parallel on rayon; each gemm call is single-threaded.
//!
//! On AVX-512F CPUs, [`forward`], [`backward_weight`] and [`backward_input`] first hand the
//! convolutions with output (input, for the strided input gradient) channels in blocks of 16
//! to [`super::direct`].

use std::ops::Range;

use rayon::prelude::*;

use super::{avx512, strided_rows, transposed_rows, ConvGeom};
use crate::cpu_f32;

/// Bytes of column matrix per tile: fits next to the gemm's packed blocks in a 1 MiB L2.
pub(super) const COL_TILE_BYTES: usize = 384 * 1024;

/// Output positions per tile for a column matrix of `k_rows` rows.
fn tile_len(k_rows: usize, total: usize) -> usize {
    let p = (COL_TILE_BYTES / 4 / k_rows.max(1)).clamp(48, 8192);
    // Multiples of 16 keep the gemm micro-kernels full; never more than what exists.
    let p = (p / 16).max(1) * 16;
    p.min(total.max(1))
}

/// A raw pointer that tiles share; every tile writes a disjoint region.
#[derive(Clone, Copy)]
pub(super) struct SharedMut(pub(super) *mut f32);
// SAFETY: the pointer is only used to write regions that no other task touches, while the
// owning Vec outlives the parallel section.
unsafe impl Send for SharedMut {}
unsafe impl Sync for SharedMut {}

impl SharedMut {
    pub(super) fn get(self) -> *mut f32 {
        self.0
    }
}

/// A pointwise (1×1×1, stride 1) convolution as one matrix product per batch item, tiled over
/// the voxels and run in parallel: `dst[b] (m × s) = A · src[b] (k × s)`, added to what `dst`
/// holds when `read_dst`. `A` (m × k) is read from `a.0` with row stride `a.1` and column
/// stride `a.2`, so the same routine serves the weight (forward) and its transpose (backward).
#[allow(clippy::too_many_arguments)]
fn pointwise_gemm(
    batch: usize,
    s: usize,
    m: usize,
    k: usize,
    dst: &mut [f32],
    read_dst: bool,
    a: (&[f32], usize, usize),
    src: &[f32],
) {
    let (a, a_rs, a_cs) = a;
    let pl = tile_len(4 * k, s);
    let tiles = s.div_ceil(pl);
    let dstp = SharedMut(dst.as_mut_ptr());
    (0..batch * tiles).into_par_iter().for_each(|t| {
        let (b, p0) = (t / tiles, (t % tiles) * pl);
        let len = pl.min(s - p0);
        // SAFETY: columns p0..p0+len of batch item b's (m × s) block of `dst` belong to this
        // task only; `a` and `src` cover the strided matrices read.
        unsafe {
            sgemm(
                m,
                len,
                k,
                dstp.get().add(b * m * s + p0),
                s,
                1,
                read_dst,
                a.as_ptr(),
                a_rs,
                a_cs,
                src.as_ptr().add(b * k * s + p0),
                s,
                1,
            )
        }
    });
}

/// `dst := (read_dst ? dst : 0) + lhs · rhs`, single-threaded, with row/column strides.
///
/// # Safety
/// All pointers must address the full strided matrices (m×k, k×n, m×n) and `dst` must not be
/// written concurrently by anyone else.
#[allow(clippy::too_many_arguments)]
unsafe fn sgemm(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: usize,
    dst_cs: usize,
    read_dst: bool,
    lhs: *const f32,
    lhs_rs: usize,
    lhs_cs: usize,
    rhs: *const f32,
    rhs_rs: usize,
    rhs_cs: usize,
) {
    if m == 0 || n == 0 {
        return;
    }
    // SAFETY: forwarded from the caller.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            dst_cs as isize,
            dst_rs as isize,
            read_dst,
            lhs,
            lhs_cs as isize,
            lhs_rs as isize,
            rhs,
            rhs_cs as isize,
            rhs_rs as isize,
            1.0f32,
            1.0f32,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

/// Signed index `o·s + k·d − p` inside `[0, len)`, else `None`.
#[inline]
fn in_range(o: usize, s: usize, k: usize, d: usize, p: usize, len: usize) -> Option<usize> {
    let i = (o * s + k * d) as isize - p as isize;
    (i >= 0 && (i as usize) < len).then_some(i as usize)
}

/// Gathers the `(K, P)` column matrix of output positions `p0..p0+pl` of one sample `xs`
/// (`(Cin, D, H, W)`), row stride `pl`.
fn im2col(g: &ConvGeom, xs: &[f32], p0: usize, pl: usize, col: &mut [f32]) {
    let [_, oh, ow] = g.output;
    let [id, ih, iw] = g.input;
    let [k0, k1, k2] = g.kernel;
    let [s0, s1, s2] = g.stride;
    let [d0, d1, d2] = g.dilation;
    let [q0, q1, q2] = g.padding;
    let plane = ih * iw;
    let mut row = 0;
    for ci in 0..g.cin {
        let xc = &xs[ci * id * plane..(ci + 1) * id * plane];
        for kd in 0..k0 {
            for kh in 0..k1 {
                for kw in 0..k2 {
                    let dst = &mut col[row * pl..(row + 1) * pl];
                    row += 1;
                    let mut p = p0;
                    while p < p0 + pl {
                        let w0 = p % ow;
                        let t = p / ow;
                        let (h, d) = (t % oh, t / oh);
                        let run = (ow - w0).min(p0 + pl - p);
                        let seg = &mut dst[p - p0..p - p0 + run];
                        p += run;
                        let (Some(xd), Some(xh)) =
                            (in_range(d, s0, kd, d0, q0, id), in_range(h, s1, kh, d1, q1, ih))
                        else {
                            seg.fill(0.0);
                            continue;
                        };
                        let xrow = &xc[xd * plane + xh * iw..xd * plane + xh * iw + iw];
                        if s2 == 1 {
                            // iw index = w + off, off = kw·d − p; valid w in [lo, hi).
                            let off = (kw * d2) as isize - q2 as isize;
                            let lo = (-off).clamp(w0 as isize, (w0 + run) as isize) as usize;
                            let hi = (iw as isize - off).clamp(lo as isize, (w0 + run) as isize)
                                as usize;
                            seg[..lo - w0].fill(0.0);
                            if hi > lo {
                                let src = (lo as isize + off) as usize;
                                seg[lo - w0..hi - w0].copy_from_slice(&xrow[src..src + hi - lo]);
                            }
                            seg[hi - w0..].fill(0.0);
                        } else {
                            // Valid w: 0 ≤ w·s + off < iw, i.e. w in [⌈−off/s⌉, ⌈(iw − off)/s⌉).
                            let off = (kw * d2) as isize - q2 as isize;
                            let lo = if off >= 0 { 0 } else { (off.unsigned_abs()).div_ceil(s2) };
                            let hi =
                                if off >= iw as isize { 0 } else { (iw as isize - off) as usize }
                                    .div_ceil(s2);
                            let lo = lo.clamp(w0, w0 + run);
                            let hi = hi.clamp(lo, w0 + run);
                            seg[..lo - w0].fill(0.0);
                            for (w, v) in (lo..hi).zip(&mut seg[lo - w0..hi - w0]) {
                                *v = xrow[(w as isize * s2 as isize + off) as usize];
                            }
                            seg[hi - w0..].fill(0.0);
                        }
                    }
                }
            }
        }
    }
}

/// Whether the row-wise kernel applies: unit stride along W and a kernel wider than 1 there.
fn use_rows(g: &ConvGeom) -> bool {
    g.stride[2] == 1 && g.kernel[2] > 1
}

/// Output rows per tile of a row-wise layout with `row_floats` column-matrix floats and `wp`
/// positions per output row: what fits [`COL_TILE_BYTES`], but at least `min_ext` positions.
pub(super) fn tile_rows(row_floats: usize, wp: usize, min_ext: usize) -> usize {
    (COL_TILE_BYTES / 4 / row_floats.max(1)).max(min_ext.div_ceil(wp.max(1))).max(1)
}

/// Layout of the row-wise column matrix for a tile of `nr` output rows `(od, oh)`.
///
/// Rows of the matrix are `(ci, kd, kh)` only; its columns are the *extended* positions
/// `e = i·Wp + w` (`Wp = W + 2·pw`, the padded input row) of the tile's rows, plus a tail of
/// zeros. The W taps are then offset views `col + kw·dw` of the same matrix, so the gather is
/// `kw` times smaller than a full im2col; outputs at `w ≥ Wo` are junk and skipped.
#[derive(Clone, Copy)]
struct RowTile {
    /// Padded input row length.
    wp: usize,
    /// Rows of the column matrix, `Cin·kd·kh`.
    k3: usize,
    /// Output rows per tile.
    rows: usize,
}

impl RowTile {
    /// The layout with tiles of at least `min_ext` positions (see [`tile_rows`]).
    fn new(g: &ConvGeom, min_ext: usize) -> Self {
        let wp = g.input[2] + 2 * g.padding[2];
        let k3 = g.cin * g.kernel[0] * g.kernel[1];
        let rows = tile_rows(k3 * wp, wp, min_ext).min(g.output[0] * g.output[1]);
        Self { wp, k3, rows }
    }

    /// Column-matrix row stride for a tile of `nr` rows.
    fn ld(&self, g: &ConvGeom, nr: usize) -> usize {
        nr * self.wp + (g.kernel[2] - 1) * g.dilation[2]
    }

    /// The gather of this layout: whole padded input rows.
    fn map(&self, g: &ConvGeom) -> RowMap {
        RowMap { step: 1, phases: 1, first: -(g.padding[2] as isize), wp: self.wp }
    }
}

/// How the positions of a row-wise column matrix map to input columns: position `j` of a row
/// of phase `φ` holds input column `first + φ + j·step`, or zero outside the input. The
/// unit-stride layout is `step = 1`, one phase, `first = −pw`; [`super::strided_rows`] has
/// `step = phases = s`.
#[derive(Clone, Copy)]
pub(super) struct RowMap {
    pub step: usize,
    pub phases: usize,
    pub first: isize,
    /// Positions per output row.
    pub wp: usize,
}

impl RowMap {
    /// Positions `lo..hi` of a row of phase `phase` that fall inside the input row.
    fn inside(&self, phase: usize, iw: usize) -> (usize, usize) {
        let (s, first) = (self.step as isize, self.first + phase as isize);
        let lo = if first >= 0 { 0 } else { (-first + s - 1) / s };
        let hi = if first >= iw as isize { 0 } else { (iw as isize - first + s - 1) / s };
        let hi = (hi as usize).min(self.wp);
        ((lo as usize).min(hi), hi)
    }
}

/// Gathers the rows `(ci, kd, kh, φ)` of output rows `r0..r0+nr` of one sample `xs`
/// (`(Cin, D, H, W)`) into `col`, row stride `ld`.
///
/// `zero_padding` writes the zeros outside the input and the tail of every row. They are the
/// same for every tile of the same `nr` and nothing else writes them, so a caller that reuses
/// `col` with an unchanged `nr` passes `false` (the per-row fills were a tenth of the gather).
pub(super) fn gather_rows(
    g: &ConvGeom,
    map: RowMap,
    xs: &[f32],
    (r0, nr, ld): (usize, usize, usize),
    zero_padding: bool,
    col: &mut [f32],
) {
    let [_, oh, _] = g.output;
    let [id, ih, iw] = g.input;
    let [k0, k1, _] = g.kernel;
    let [s0, s1, _] = g.stride;
    let [d0, d1, _] = g.dilation;
    let [q0, q1, _] = g.padding;
    let plane = ih * iw;
    let ranges: Vec<(usize, usize)> = (0..map.phases).map(|p| map.inside(p, iw)).collect();
    let mut row = 0;
    for ci in 0..g.cin {
        let xc = &xs[ci * id * plane..(ci + 1) * id * plane];
        for kd in 0..k0 {
            for kh in 0..k1 {
                for (phase, &(lo, hi)) in ranges.iter().enumerate() {
                    let dst = &mut col[row * ld..(row + 1) * ld];
                    row += 1;
                    let start = map.first + (phase + lo * map.step) as isize;
                    for i in 0..nr {
                        let r = r0 + i;
                        let seg = &mut dst[i * map.wp..(i + 1) * map.wp];
                        match (
                            in_range(r / oh, s0, kd, d0, q0, id),
                            in_range(r % oh, s1, kh, d1, q1, ih),
                        ) {
                            (Some(xd), Some(xh)) if lo < hi => {
                                let src = &xc[xd * plane + xh * iw..][..iw][start as usize..];
                                if zero_padding {
                                    seg[..lo].fill(0.0);
                                    seg[hi..].fill(0.0);
                                }
                                if map.step == 1 {
                                    seg[lo..hi].copy_from_slice(&src[..hi - lo]);
                                } else {
                                    let from = src.iter().step_by(map.step);
                                    seg[lo..hi].iter_mut().zip(from).for_each(|(v, x)| *v = *x);
                                }
                            }
                            _ => seg.fill(0.0),
                        }
                    }
                    if zero_padding {
                        dst[nr * map.wp..].fill(0.0);
                    }
                }
            }
        }
    }
}

/// Output rows `r0..r0+nr` of sample `n`, as one tile of a row layout with `wp` positions per
/// row (the first `Wo` of them real).
#[derive(Clone, Copy)]
pub(super) struct RowTileAt {
    pub n: usize,
    pub r0: usize,
    pub nr: usize,
    pub wp: usize,
}

impl RowTileAt {
    /// Adds a tile result `tmp` (`cout` rows of stride `tld`) into the output `(N, Cout, Do,
    /// Ho, Wo)` at `out`.
    ///
    /// # Safety
    /// `out` must address the whole output, and no other task may write these rows meanwhile.
    pub(super) unsafe fn add_into_output(
        self,
        g: &ConvGeom,
        tmp: &[f32],
        tld: usize,
        out: SharedMut,
    ) {
        let (so, ow) = (g.out_spatial(), g.output[2]);
        for co in 0..g.cout {
            for i in 0..self.nr {
                let src = &tmp[co * tld + i * self.wp..][..ow];
                let at = (self.n * g.cout + co) * so + (self.r0 + i) * ow;
                // SAFETY: by the caller's contract.
                let dst = unsafe { std::slice::from_raw_parts_mut(out.get().add(at), ow) };
                dst.iter_mut().zip(src).for_each(|(d, s)| *d += s);
            }
        }
    }

    /// Copies these rows of `dY` into the row layout `dyx` (`cout` rows of stride `dld`), zero
    /// at the junk positions and past the tile; adds each channel's sum to `bias` if given.
    pub(super) fn dy_into_rows(
        self,
        g: &ConvGeom,
        dy: &[f32],
        dyx: &mut [f32],
        dld: usize,
        mut bias: Option<&mut [f32]>,
    ) {
        let (so, ow) = (g.out_spatial(), g.output[2]);
        let ext = self.nr * self.wp;
        for co in 0..g.cout {
            let src = &dy[(self.n * g.cout + co) * so + self.r0 * ow..][..self.nr * ow];
            let dst = &mut dyx[co * dld..(co + 1) * dld];
            for i in 0..self.nr {
                let row = &mut dst[i * self.wp..(i + 1) * self.wp];
                row[..ow].copy_from_slice(&src[i * ow..(i + 1) * ow]);
                row[ow..].fill(0.0);
            }
            dst[ext..].fill(0.0);
            if let Some(b) = bias.as_deref_mut() {
                b[co] += src.iter().sum::<f32>();
            }
        }
    }
}

/// Forward with the row-wise kernel; `out` already holds bias and residual (or zeros).
fn forward_rows(g: &ConvGeom, x: &[f32], wb: &[f32], out: &mut [f32]) {
    let t = RowTile::new(g, avx512::FORWARD_MIN_EXT);
    let [od, oh, _] = g.output;
    let si = g.in_spatial();
    let total_rows = od * oh;
    let tiles = total_rows.div_ceil(t.rows);
    let outp = SharedMut(out.as_mut_ptr());
    let packed =
        avx512::available().then(|| avx512::pack_weight(wb, g.kcols(), g.cout, t.k3, g.kernel[2]));
    // Row stride of the per-tile result: the AVX-512 kernel writes whole 48-position blocks.
    let tmp_ld = |ext: usize| match packed {
        Some(_) => ext.next_multiple_of(avx512::E_BLOCK),
        None => ext,
    };
    let col_len = t.k3 * t.ld(g, t.rows) + avx512::SLACK;
    (0..g.n * tiles).into_par_iter().for_each_init(
        || (vec![0f32; col_len], vec![0f32; g.cout * tmp_ld(t.rows * t.wp)], 0),
        |(col, tmp, col_nr), item| {
            let (n, r0) = (item / tiles, (item % tiles) * t.rows);
            let nr = t.rows.min(total_rows - r0);
            let ext = nr * t.wp;
            let tld = tmp_ld(ext);
            let xs = &x[n * g.cin * si..(n + 1) * g.cin * si];
            let fresh = std::mem::replace(col_nr, nr) != nr;
            gather_rows(g, t.map(g), xs, (r0, nr, t.ld(g, nr)), fresh, col);
            match &packed {
                #[cfg(target_arch = "x86_64")]
                Some(p) => rows_forward_avx512(g, &t, nr, col, p, tmp, tld),
                _ => rows_forward_gemm(g, &t, nr, col, wb, tmp),
            }
            // SAFETY: output rows r0..r0+nr of sample n belong to this task.
            unsafe { RowTileAt { n, r0, nr, wp: t.wp }.add_into_output(g, tmp, tld, outp) };
        },
    );
}

/// `tmp (cout, ext) = Σ_kw W[:, :, kw] · col[:, kw·dw ..]` with one gemm per W tap.
fn rows_forward_gemm(
    g: &ConvGeom,
    t: &RowTile,
    nr: usize,
    col: &[f32],
    wb: &[f32],
    tmp: &mut [f32],
) {
    let ld = t.ld(g, nr);
    let ext = nr * t.wp;
    for kw in 0..g.kernel[2] {
        // SAFETY: tmp is (cout, ext) owned here; the weight read with column stride k2 from
        // offset kw is (cout, k3); col from offset kw·dw is (k3, ext) with row stride
        // ld ≥ ext + kw·dw.
        unsafe {
            sgemm(
                g.cout,
                ext,
                t.k3,
                tmp.as_mut_ptr(),
                ext,
                1,
                kw > 0,
                wb.as_ptr().add(kw),
                g.kcols(),
                g.kernel[2],
                col.as_ptr().add(kw * g.dilation[2]),
                ld,
                1,
            )
        }
    }
}

/// The same product as [`rows_forward_gemm`] with the AVX-512 kernel, rows of stride `tld`.
#[cfg(target_arch = "x86_64")]
fn rows_forward_avx512(
    g: &ConvGeom,
    t: &RowTile,
    nr: usize,
    col: &[f32],
    packed: &[f32],
    tmp: &mut [f32],
    tld: usize,
) {
    debug_assert!(col.len() >= t.k3 * t.ld(g, nr) + avx512::SLACK && tmp.len() >= g.cout * tld);
    // SAFETY: `packed` exists only when AVX-512F was detected; col carries SLACK floats past
    // its k3 rows of stride ld, which covers the rounded-up last block; tmp is (cout, tld).
    unsafe {
        avx512::rows_forward(
            col.as_ptr(),
            t.ld(g, nr),
            t.k3,
            g.kernel[2],
            g.dilation[2],
            packed,
            g.cout,
            nr * t.wp,
            tmp.as_mut_ptr(),
            tld,
        )
    }
}

/// Gradient of the weight matrix with the row-wise kernel.
fn backward_weight_rows(g: &ConvGeom, x: &[f32], dy: &[f32]) -> Vec<f32> {
    // The AVX-512 kernel handles the W-kernel width 3 (every 3×3×3 convolution).
    let vector = g.kernel[2] == 3 && avx512::available();
    // The kernel reduces each of its accumulators once per tile, so tiles need enough
    // positions to amortise that; the column matrix only streams through (one new cache line
    // per 24 FMAs), so it may outgrow L2.
    let min_ext = if vector { avx512::GRAD_WEIGHT_MIN_EXT } else { avx512::FORWARD_MIN_EXT };
    let t = RowTile::new(g, min_ext);
    let [od, oh, _] = g.output;
    let si = g.in_spatial();
    let kc = g.kcols();
    let k = g.k_rows();
    let total_rows = od * oh;
    let tiles = total_rows.div_ceil(t.rows);
    let items = g.n * tiles;
    // Row stride of dY in the extended layout: whole 16-lane vectors, zero past `ext`.
    let dyx_ld = |ext: usize| if vector { ext.next_multiple_of(16) } else { ext };
    sum_over_ranges(items, g.cout * kc, |range| {
        let mut acc = vec![0f32; g.cout * kc];
        let mut bias = vec![0f32; g.cout];
        let mut col = vec![0f32; t.k3 * t.ld(g, t.rows) + avx512::SLACK];
        let mut dyx = vec![0f32; g.cout * dyx_ld(t.rows * t.wp)];
        let mut col_nr = 0;
        for item in range {
            let (n, r0) = (item / tiles, (item % tiles) * t.rows);
            let nr = t.rows.min(total_rows - r0);
            let ext = nr * t.wp;
            let dld = dyx_ld(ext);
            let xs = &x[n * g.cin * si..(n + 1) * g.cin * si];
            let fresh = std::mem::replace(&mut col_nr, nr) != nr;
            gather_rows(g, t.map(g), xs, (r0, nr, t.ld(g, nr)), fresh, &mut col);
            let tile = RowTileAt { n, r0, nr, wp: t.wp };
            tile.dy_into_rows(g, dy, &mut dyx, dld, g.has_bias.then_some(&mut bias[..]));
            if vector {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: AVX-512F was detected; col carries SLACK floats past its k3 rows
                // of stride ld (≥ the 16-rounded ext + 2·dw reach); dyx is (cout, dld)
                // with zeros past ext; acc is (cout, kc) with kc ≥ 3·k3.
                unsafe {
                    avx512::rows_grad_weight(
                        col.as_ptr(),
                        t.ld(g, nr),
                        t.k3,
                        g.dilation[2],
                        dyx.as_ptr(),
                        dld,
                        g.cout,
                        ext,
                        &mut acc,
                        kc,
                    )
                }
            } else {
                grad_weight_rows_gemm(g, &t, nr, &col, &dyx, &mut acc);
            }
        }
        if g.has_bias {
            (0..g.cout).for_each(|co| acc[co * kc + k] = bias[co]);
        }
        acc
    })
}

/// `acc[:, kw::k2] += dY · col[:, kw·dw ..]ᵀ`, one gemm per W tap; `dyx` is `(cout, ext)`.
fn grad_weight_rows_gemm(
    g: &ConvGeom,
    t: &RowTile,
    nr: usize,
    col: &[f32],
    dyx: &[f32],
    acc: &mut [f32],
) {
    let ld = t.ld(g, nr);
    let ext = nr * t.wp;
    for kw in 0..g.kernel[2] {
        // SAFETY: acc columns kw, kw+k2, … of (cout, kc) are owned here; dyx is (cout, ext);
        // col from offset kw·dw read transposed is (ext, k3).
        unsafe {
            sgemm(
                g.cout,
                t.k3,
                ext,
                acc.as_mut_ptr().add(kw),
                g.kcols(),
                g.kernel[2],
                true,
                dyx.as_ptr(),
                ext,
                1,
                col.as_ptr().add(kw * g.dilation[2]),
                1,
                ld,
            )
        }
    }
}

/// Splits `0..items` into a few more contiguous ranges than threads (that balances the load),
/// runs `work` on each range in parallel and sums the `len`-float accumulators it returns: one
/// accumulator per range, not per item.
pub(super) fn sum_over_ranges(
    items: usize,
    len: usize,
    work: impl Fn(Range<usize>) -> Vec<f32> + Sync + Send,
) -> Vec<f32> {
    let chunks = (rayon::current_num_threads() * 2).min(items).max(1);
    let partial: Vec<Vec<f32>> = (0..chunks)
        .into_par_iter()
        .map(|c| work(c * items / chunks..(c + 1) * items / chunks))
        .collect();
    let mut iter = partial.into_iter();
    let mut total = iter.next().unwrap_or_else(|| vec![0f32; len]);
    for p in iter {
        total.iter_mut().zip(p).for_each(|(a, b)| *a += b);
    }
    total
}

/// With unit strides and `p ≤ d·(k − 1)` on every axis, the input gradient is the forward
/// convolution of `dY` with the flipped, transposed kernel and padding `d·(k − 1) − p`.
fn backward_input_as_conv(g: &ConvGeom, dy: &[f32], wb: &[f32]) -> Option<Vec<f32>> {
    if g.stride != [1; 3] {
        return None;
    }
    let mut padding = [0; 3];
    for (a, p) in padding.iter_mut().enumerate() {
        *p = (g.dilation[a] * (g.kernel[a] - 1)).checked_sub(g.padding[a])?;
    }
    let gt = ConvGeom {
        n: g.n,
        cin: g.cout,
        cout: g.cin,
        input: g.output,
        kernel: g.kernel,
        stride: [1; 3],
        padding,
        dilation: g.dilation,
        output: g.input,
        has_bias: false,
    };
    let kvol: usize = g.kernel.iter().product();
    let kc = g.kcols();
    // W'[ci, co, k'] = W[co, ci, kvol − 1 − k'] (all three axes flipped).
    let mut wt = vec![0f32; g.cin * g.cout * kvol];
    for co in 0..g.cout {
        for ci in 0..g.cin {
            for k in 0..kvol {
                wt[(ci * g.cout + co) * kvol + k] = wb[co * kc + ci * kvol + kvol - 1 - k];
            }
        }
    }
    Some(forward(&gt, dy, &wt, None))
}

/// Forward: `(N, Cout, Do, Ho, Wo)` = conv(x, W) + bias + residual.
pub(crate) fn forward(g: &ConvGeom, x: &[f32], wb: &[f32], residual: Option<&[f32]>) -> Vec<f32> {
    let so = g.out_spatial();
    let si = g.in_spatial();
    let k = g.k_rows();
    let kc = g.kcols();
    // `out` starts as bias + residual, written (not updated) once; the kernels add into it.
    let mut out = cpu_f32::par_init(g.n * g.cout * so, so, |i, dst| {
        let b = if g.has_bias { wb[(i % g.cout) * kc + k] } else { 0.0 };
        match residual {
            Some(r) => dst.iter_mut().zip(&r[i * so..]).for_each(|(d, r)| {
                d.write(r + b);
            }),
            None => dst.iter_mut().for_each(|d| {
                d.write(b);
            }),
        }
    });
    let read_dst = residual.is_some() || g.has_bias;
    if g.is_pointwise() {
        pointwise_gemm(g.n, so, g.cout, g.cin, &mut out, read_dst, (wb, kc, 1), x);
        return out;
    }
    #[cfg(target_arch = "x86_64")]
    if super::direct::applies(g) {
        super::direct::forward(g, x, wb, &mut out);
        return out;
    }
    let outp = SharedMut(out.as_mut_ptr());
    if use_rows(g) {
        forward_rows(g, x, wb, &mut out);
        return out;
    }
    if strided_rows::applies(g) {
        strided_rows::forward(g, x, wb, &mut out);
        return out;
    }
    let pl = tile_len(k, so);
    let tiles = so.div_ceil(pl);
    (0..g.n * tiles).into_par_iter().for_each_init(
        || vec![0f32; k * pl],
        |col, t| {
            let (n, p0) = (t / tiles, (t % tiles) * pl);
            let len = pl.min(so - p0);
            im2col(g, &x[n * g.cin * si..(n + 1) * g.cin * si], p0, len, col);
            // SAFETY: as above; `col` holds a (k, len) matrix with row stride len.
            unsafe {
                sgemm(
                    g.cout,
                    len,
                    k,
                    outp.get().add(n * g.cout * so + p0),
                    so,
                    1,
                    read_dst,
                    wb.as_ptr(),
                    kc,
                    1,
                    col.as_ptr(),
                    len,
                    1,
                )
            }
        },
    );
    out
}

/// Gradient of the `(Cout, kcols)` weight matrix (bias column included when present).
pub(crate) fn backward_weight(g: &ConvGeom, x: &[f32], dy: &[f32]) -> Vec<f32> {
    #[cfg(target_arch = "x86_64")]
    if super::direct::applies_weight_grad(g) {
        return super::direct::backward_weight(g, x, dy);
    }
    if use_rows(g) {
        return backward_weight_rows(g, x, dy);
    }
    if strided_rows::applies(g) {
        if let Some(dw) = strided_rows::backward_weight(g, x, dy) {
            return dw;
        }
    }
    let so = g.out_spatial();
    let si = g.in_spatial();
    let k = g.k_rows();
    let kc = g.kcols();
    let pointwise = g.is_pointwise();
    let pl = if pointwise { tile_len(4 * g.cin, so) } else { tile_len(k, so) };
    let tiles = so.div_ceil(pl);
    let items = g.n * tiles;
    sum_over_ranges(items, g.cout * kc, |range| {
        let mut acc = vec![0f32; g.cout * kc];
        let mut col = if pointwise { Vec::new() } else { vec![0f32; k * pl] };
        for t in range {
            let (n, p0) = (t / tiles, (t % tiles) * pl);
            let len = pl.min(so - p0);
            let dyt = &dy[n * g.cout * so + p0..];
            let (rhs, rhs_cs) = if pointwise {
                (x[n * g.cin * si + p0..].as_ptr(), si)
            } else {
                im2col(g, &x[n * g.cin * si..(n + 1) * g.cin * si], p0, len, &mut col);
                (col.as_ptr(), len)
            };
            // SAFETY: acc is (cout, kc) owned here; dyt covers (cout, len) with row
            // stride so; rhs covers (len, k) read as the transpose of a (k, len) matrix.
            unsafe {
                sgemm(
                    g.cout,
                    k,
                    len,
                    acc.as_mut_ptr(),
                    kc,
                    1,
                    true,
                    dyt.as_ptr(),
                    so,
                    1,
                    rhs,
                    1,
                    rhs_cs,
                )
            }
            if g.has_bias {
                for co in 0..g.cout {
                    acc[co * kc + k] += dyt[co * so..co * so + len].iter().sum::<f32>();
                }
            }
        }
        acc
    })
}

/// Kernel taps of one axis that reach input positions `r, r+s, r+2s, …`, with the output
/// offset `q` such that output index = class index + q.
fn taps(r: usize, k: usize, s: usize, d: usize, p: usize) -> Vec<(usize, isize)> {
    (0..k)
        .filter_map(|t| {
            let num = r as isize + p as isize - (t * d) as isize;
            (num.rem_euclid(s as isize) == 0).then(|| (t, num.div_euclid(s as isize)))
        })
        .collect()
}

/// One residue class of the input grid under the stride (`x = s·a + r` per axis), reached by
/// at least one tap on every axis.
pub(super) struct Residue {
    /// First input index per axis.
    pub r: [usize; 3],
    /// Number of positions per axis.
    pub cnt: [usize; 3],
    /// `(tap, q)` per axis: the taps that reach the class, output index = class index + q.
    pub taps: [Vec<(usize, isize)>; 3],
}

/// The residue classes of the input grid that some tap reaches, in row-major residue order.
/// The others receive no gradient.
pub(super) fn residues(g: &ConvGeom) -> Vec<Residue> {
    let [n0, n1, n2] = std::array::from_fn(|a| g.stride[a].min(g.input[a]));
    (0..n0 * n1 * n2)
        .filter_map(|i| {
            let r = [i / (n1 * n2), (i / n2) % n1, i % n2];
            let taps: [Vec<(usize, isize)>; 3] = std::array::from_fn(|a| {
                taps(r[a], g.kernel[a], g.stride[a], g.dilation[a], g.padding[a])
            });
            if taps.iter().any(Vec::is_empty) {
                return None;
            }
            let cnt = std::array::from_fn(|a| (g.input[a] - r[a]).div_ceil(g.stride[a]));
            Some(Residue { r, cnt, taps })
        })
        .collect()
}

/// A residue class with its `(Cin, Kc)` weight matrix for these taps, `Kc = Cout·|taps|`.
struct Class {
    res: Residue,
    w: Vec<f32>,
}

impl Class {
    fn kc(&self, cout: usize) -> usize {
        cout * self.res.taps.iter().map(Vec::len).product::<usize>()
    }
}

/// Every [`residues`] class with its weight matrix (built in parallel: for the
/// discriminator's 128 → 256 layer that is 2 M scattered reads per call).
fn classes(g: &ConvGeom, wb: &[f32]) -> Vec<Class> {
    let kcols = g.kcols();
    let [k0, k1, k2] = g.kernel;
    residues(g)
        .into_par_iter()
        .map(|res| {
            let [td, th, tw] = &res.taps;
            let mut w = Vec::with_capacity(g.cin * g.cout * td.len() * th.len() * tw.len());
            for ci in 0..g.cin {
                for co in 0..g.cout {
                    for &(a, _) in td {
                        for &(b, _) in th {
                            for &(c, _) in tw {
                                w.push(wb[co * kcols + ((ci * k0 + a) * k1 + b) * k2 + c]);
                            }
                        }
                    }
                }
            }
            Class { res, w }
        })
        .collect()
}

/// Gathers the `(Kc, P)` matrix of `dY` values for class positions `p0..p0+pl` of one sample.
fn dy2col(g: &ConvGeom, c: &Residue, dys: &[f32], p0: usize, pl: usize, col: &mut [f32]) {
    let [od, oh, ow] = g.output;
    let [_, n1, n2] = c.cnt;
    let plane = oh * ow;
    let mut row = 0;
    for co in 0..g.cout {
        let dyc = &dys[co * od * plane..(co + 1) * od * plane];
        for &(_, qd) in &c.taps[0] {
            for &(_, qh) in &c.taps[1] {
                for &(_, qw) in &c.taps[2] {
                    let dst = &mut col[row * pl..(row + 1) * pl];
                    row += 1;
                    let mut p = p0;
                    while p < p0 + pl {
                        let j2 = p % n2;
                        let t = p / n2;
                        let (j1, j0) = (t % n1, t / n1);
                        let run = (n2 - j2).min(p0 + pl - p);
                        let seg = &mut dst[p - p0..p - p0 + run];
                        p += run;
                        let o0 = j0 as isize + qd;
                        let o1 = j1 as isize + qh;
                        if o0 < 0 || o0 >= od as isize || o1 < 0 || o1 >= oh as isize {
                            seg.fill(0.0);
                            continue;
                        }
                        let yrow = &dyc[o0 as usize * plane + o1 as usize * ow..][..ow];
                        // Output index along W = j2 + qw, contiguous in j2.
                        let lo = (-qw).clamp(j2 as isize, (j2 + run) as isize) as usize;
                        let hi =
                            (ow as isize - qw).clamp(lo as isize, (j2 + run) as isize) as usize;
                        seg[..lo - j2].fill(0.0);
                        if hi > lo {
                            let src = (lo as isize + qw) as usize;
                            seg[lo - j2..hi - j2].copy_from_slice(&yrow[src..src + hi - lo]);
                        }
                        seg[hi - j2..].fill(0.0);
                    }
                }
            }
        }
    }
}

/// Gradient of the input, `(N, Cin, D, H, W)`.
pub(crate) fn backward_input(g: &ConvGeom, dy: &[f32], wb: &[f32]) -> Vec<f32> {
    let so = g.out_spatial();
    let si = g.in_spatial();
    let kc = g.kcols();
    if !g.is_pointwise() {
        if let Some(dx) = backward_input_as_conv(g, dy, wb) {
            return dx;
        }
    }
    #[cfg(target_arch = "x86_64")]
    if super::direct::applies_input_grad(g) {
        return super::direct::backward_input(g, dy, wb);
    }
    if transposed_rows::applies(g) {
        return transposed_rows::backward_input(g, dy, wb);
    }
    let mut dx = vec![0f32; g.n * g.cin * si];
    if g.is_pointwise() {
        // The weight read transposed is (cin, cout) with strides (1, kc).
        pointwise_gemm(g.n, si, g.cin, g.cout, &mut dx, false, (wb, 1, kc), dy);
        return dx;
    }
    let dxp = SharedMut(dx.as_mut_ptr());
    let classes = classes(g, wb);
    let unit_stride = g.stride == [1, 1, 1];
    // Work items: (sample, class, tile).
    let mut items = Vec::new();
    for n in 0..g.n {
        for (ci, c) in classes.iter().enumerate() {
            let total: usize = c.res.cnt.iter().product();
            let pl = tile_len(c.kc(g.cout), total);
            for p0 in (0..total).step_by(pl) {
                items.push((n, ci, p0, pl.min(total - p0)));
            }
        }
    }
    let max_col =
        items.iter().map(|&(_, ci, _, len)| classes[ci].kc(g.cout) * len).max().unwrap_or(0);
    let max_tmp = items.iter().map(|&(_, _, _, len)| len).max().unwrap_or(0) * g.cin;
    items.into_par_iter().for_each_init(
        || (vec![0f32; max_col], vec![0f32; if unit_stride { 0 } else { max_tmp }]),
        |(col, tmp), (n, ci, p0, len)| {
            let c = &classes[ci];
            let kcl = c.kc(g.cout);
            dy2col(g, &c.res, &dy[n * g.cout * so..(n + 1) * g.cout * so], p0, len, col);
            let (dst, dst_rs) = if unit_stride {
                // SAFETY: with unit stride the class is the whole grid in input order.
                (unsafe { dxp.get().add(n * g.cin * si + p0) }, si)
            } else {
                (tmp.as_mut_ptr(), len)
            };
            // SAFETY: dst covers (cin, len) owned by this task; c.w is (cin, kcl); col is
            // (kcl, len).
            unsafe {
                sgemm(
                    g.cin,
                    len,
                    kcl,
                    dst,
                    dst_rs,
                    1,
                    false,
                    c.w.as_ptr(),
                    kcl,
                    1,
                    col.as_ptr(),
                    len,
                    1,
                )
            }
            if !unit_stride {
                let Residue { r, cnt: [_, n1, n2], .. } = &c.res;
                let [ih, iw] = [g.input[1], g.input[2]];
                for q in 0..len {
                    let p = p0 + q;
                    let j2 = p % n2;
                    let (j1, j0) = ((p / n2) % n1, p / n2 / n1);
                    let pos = ((r[0] + j0 * g.stride[0]) * ih + r[1] + j1 * g.stride[1]) * iw
                        + r[2]
                        + j2 * g.stride[2];
                    for ch in 0..g.cin {
                        // SAFETY: each input position belongs to exactly one class and tile.
                        unsafe { *dxp.get().add((n * g.cin + ch) * si + pos) = tmp[ch * len + q] };
                    }
                }
            }
        },
    );
    dx
}
