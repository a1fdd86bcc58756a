//! The input gradient of strided convolutions on the AVX-512 row kernel of [`super::avx512`].
//!
//! `dX` is the transposed convolution of `dY`. Split the input grid into the residue classes
//! of the stride (`x = s·a + r` per axis): inside a class only a fixed subset of taps reaches
//! each position, tap `k` landing on output `a + q(k)` (`cpu.rs`'s `taps`). Along D and H the
//! class's taps become rows of a column matrix `(co, kd, kh)` over whole `dY` rows; along W
//! they are offset views of those rows (`t = q − q_min`). So each class is one unit-stride row
//! product `dX_class (Cin, positions) = W_class · col`, with zero weights where a W offset has
//! no tap, and no structural zeros anywhere else. The gather-and-gemm path of `cpu.rs`
//! remains for CPUs without AVX-512.

use rayon::prelude::*;

use super::avx512;
use super::cpu::{residues, tile_rows, Residue, SharedMut};
use super::ConvGeom;

/// Whether this module computes the input gradient: a strided convolution with few input
/// channels (the same measured bound as the forward, [`super::strided_rows::MAX_CIN`]) on an
/// AVX-512 CPU.
pub(super) fn applies(g: &ConvGeom) -> bool {
    g.stride != [1; 3] && g.cin <= super::strided_rows::MAX_CIN && avx512::available()
}

/// One residue class of the input grid and its row-product layout.
struct RowClass {
    /// The class: first index, positions and taps per axis.
    res: Residue,
    /// `q_min` of the W taps: row position `j` holds `dY` column `j + q_min`.
    qw_min: isize,
    /// Dense W offsets per row.
    span: usize,
    /// Row length per class row: `cnt_w + span − 1`.
    wp: usize,
    /// Rows of the column matrix, `Cout·|taps_d|·|taps_h|`.
    k3: usize,
    /// Class rows `(a_d, a_h)` per tile.
    rows: usize,
    /// The class weight `(Cin, k3·span)`, packed for [`avx512::rows_forward`].
    packed: Vec<f32>,
}

impl RowClass {
    fn new(g: &ConvGeom, wb: &[f32], res: Residue) -> Self {
        let [k0, k1, k2] = g.kernel;
        let [taps_d, taps_h, taps_w] = &res.taps;
        let qw_min = taps_w.iter().map(|t| t.1).min().unwrap_or(0);
        let qw_max = taps_w.iter().map(|t| t.1).max().unwrap_or(0);
        let span = (qw_max - qw_min) as usize + 1;
        let wp = res.cnt[2] + span - 1;
        let k3 = g.cout * taps_d.len() * taps_h.len();
        let kcols = g.kcols();
        let mut dense = vec![0f32; g.cin * k3 * span];
        for ci in 0..g.cin {
            for co in 0..g.cout {
                for (id, &(kd, _)) in taps_d.iter().enumerate() {
                    for (ih, &(kh, _)) in taps_h.iter().enumerate() {
                        let row = (co * taps_d.len() + id) * taps_h.len() + ih;
                        for &(kw, q) in taps_w {
                            let t = (q - qw_min) as usize;
                            dense[(ci * k3 + row) * span + t] =
                                wb[co * kcols + ((ci * k0 + kd) * k1 + kh) * k2 + kw];
                        }
                    }
                }
            }
        }
        let packed = avx512::pack_weight(&dense, k3 * span, g.cin, k3, span);
        let class_rows = res.cnt[0] * res.cnt[1];
        let rows = tile_rows(k3 * wp, wp, avx512::FORWARD_MIN_EXT).min(class_rows);
        Self { res, qw_min, span, wp, k3, rows, packed }
    }

    fn class_rows(&self) -> usize {
        self.res.cnt[0] * self.res.cnt[1]
    }

    fn ld(&self, nr: usize) -> usize {
        nr * self.wp + self.span - 1
    }

    fn col_len(&self) -> usize {
        self.k3 * self.ld(self.rows) + avx512::SLACK
    }

    fn tmp_len(&self, cin: usize) -> usize {
        cin * (self.rows * self.wp).next_multiple_of(avx512::E_BLOCK)
    }

    /// Gathers the column matrix of class rows `i0..i0+nr` from one sample's `dY`.
    fn gather(&self, g: &ConvGeom, dys: &[f32], i0: usize, nr: usize, col: &mut [f32]) {
        let [od, oh, ow] = g.output;
        let ld = self.ld(nr);
        // Row positions j with dY column j + q_min inside [0, Wo).
        let lo = (-self.qw_min).clamp(0, self.wp as isize) as usize;
        let hi = (ow as isize - self.qw_min).clamp(lo as isize, self.wp as isize) as usize;
        let mut row = 0;
        for co in 0..g.cout {
            let dyc = &dys[co * od * oh * ow..(co + 1) * od * oh * ow];
            for &(_, qd) in &self.res.taps[0] {
                for &(_, qh) in &self.res.taps[1] {
                    let dst = &mut col[row * ld..(row + 1) * ld];
                    row += 1;
                    for i in 0..nr {
                        let rho = i0 + i;
                        let d = (rho / self.res.cnt[1]) as isize + qd;
                        let h = (rho % self.res.cnt[1]) as isize + qh;
                        let seg = &mut dst[i * self.wp..(i + 1) * self.wp];
                        if (0..od as isize).contains(&d) && (0..oh as isize).contains(&h) {
                            let at = (d as usize * oh + h as usize) * ow;
                            let first = (lo as isize + self.qw_min) as usize;
                            seg[..lo].fill(0.0);
                            seg[lo..hi].copy_from_slice(&dyc[at + first..at + first + hi - lo]);
                            seg[hi..].fill(0.0);
                        } else {
                            seg.fill(0.0);
                        }
                    }
                    dst[nr * self.wp..].fill(0.0);
                }
            }
        }
    }
}

/// Gradient of the input, `(N, Cin, D, H, W)`.
pub(super) fn backward_input(g: &ConvGeom, dy: &[f32], wb: &[f32]) -> Vec<f32> {
    let si = g.in_spatial();
    let so = g.out_spatial();
    let [_, ih, iw] = g.input;
    let classes: Vec<RowClass> =
        residues(g).into_par_iter().map(|res| RowClass::new(g, wb, res)).collect();
    let items: Vec<(usize, usize, usize)> = (0..g.n)
        .flat_map(|n| {
            classes.iter().enumerate().flat_map(move |(c, cl)| {
                (0..cl.class_rows()).step_by(cl.rows).map(move |i0| (n, c, i0))
            })
        })
        .collect();
    let col_len = classes.iter().map(RowClass::col_len).max().unwrap_or(0);
    let tmp_len = classes.iter().map(|c| c.tmp_len(g.cin)).max().unwrap_or(0);
    // Positions of classes without taps stay zero; every other one is written exactly once.
    let mut dx = vec![0f32; g.n * g.cin * si];
    let dxp = SharedMut(dx.as_mut_ptr());
    items.into_par_iter().for_each_init(
        || (vec![0f32; col_len], vec![0f32; tmp_len]),
        |(col, tmp), (n, c, i0)| {
            let cl = &classes[c];
            let nr = cl.rows.min(cl.class_rows() - i0);
            let ext = nr * cl.wp;
            let tld = ext.next_multiple_of(avx512::E_BLOCK);
            cl.gather(g, &dy[n * g.cout * so..(n + 1) * g.cout * so], i0, nr, col);
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `applies` checked AVX-512F; col holds k3 rows of stride ld plus SLACK
            // floats; tmp is (cin, tld) with tld the 48-rounded ext.
            unsafe {
                avx512::rows_forward(
                    col.as_ptr(),
                    cl.ld(nr),
                    cl.k3,
                    cl.span,
                    1,
                    &cl.packed,
                    g.cin,
                    ext,
                    tmp.as_mut_ptr(),
                    tld,
                )
            }
            let [s0, s1, s2] = g.stride;
            for ci in 0..g.cin {
                let base = (n * g.cin + ci) * si;
                for i in 0..nr {
                    let rho = i0 + i;
                    let Residue { r, cnt, .. } = &cl.res;
                    let z = s0 * (rho / cnt[1]) + r[0];
                    let y = s1 * (rho % cnt[1]) + r[1];
                    let src = &tmp[ci * tld + i * cl.wp..][..cnt[2]];
                    let row = base + (z * ih + y) * iw + r[2];
                    for (j, v) in src.iter().enumerate() {
                        // SAFETY: residue classes partition the input grid, so this position
                        // (n, ci, z, y, s2·j + r2) is written by this task only.
                        unsafe { *dxp.get().add(row + s2 * j) = *v };
                    }
                }
            }
        },
    );
    dx
}
