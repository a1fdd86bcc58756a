//! Adaptive average pooling in 3-D (`torch.nn.functional.adaptive_avg_pool3d`) to any output
//! grid, for any input size, with PyTorch's bin boundaries: output cell `i` of an axis of input
//! length `In` and output length `Out` averages `[⌊i·In/Out⌋, ⌈(i+1)·In/Out⌉)`, so bins overlap
//! when `Out` does not divide `In`.
//!
//! MGSD uses it for the token grid `patch/32` of the modality extractor (MGSD-SPEC §5) and for
//! the three axis profiles `(d,1,1)`, `(1,h,1)`, `(1,1,w)` of the multi-view projection (§4).
//! Both passes are separable (W, then H, then D), so every pass reads memory contiguously.

use candle_core::{bail, CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::cpu_f32;

/// Adaptive average pooling of a `(N, C, D, H, W)` f32 tensor to `(N, C, od, oh, ow)`.
/// Differentiable.
///
/// # Shapes
/// `(N, C, D, H, W)` → `(N, C, out[0], out[1], out[2])`.
pub fn adaptive_avg_pool3d(xs: &Tensor, out: [usize; 3]) -> Result<Tensor> {
    let [_, _, d, h, w] = cpu_f32::dims5(xs, "adaptive_avg_pool3d")?;
    if out.contains(&0) || d == 0 || h == 0 || w == 0 {
        bail!("adaptive_avg_pool3d: cannot pool input {:?} to {out:?}", xs.shape());
    }
    #[cfg(feature = "cuda")]
    if xs.device().is_cuda() && xs.dtype() == candle_core::DType::F32 {
        return mgsd_kernels::candle_ops::resample::adaptive_avg_pool3d(xs, out);
    }
    if !xs.device().is_cpu() {
        return crate::composite::adaptive_avg_pool3d(xs, out);
    }
    xs.contiguous()?.apply_op1(AdaptiveAvgPool { out })
}

/// The custom op.
struct AdaptiveAvgPool {
    out: [usize; 3],
}

/// PyTorch's bins `[start, end)` of an axis.
fn bins(inp: usize, out: usize) -> Vec<(usize, usize)> {
    (0..out).map(|i| (i * inp / out, ((i + 1) * inp).div_ceil(out))).collect()
}

/// Bins of the three axes.
struct Grid {
    inp: [usize; 3],
    out: [usize; 3],
    b: [Vec<(usize, usize)>; 3],
}

impl Grid {
    fn new(inp: [usize; 3], out: [usize; 3]) -> Self {
        let b = [bins(inp[0], out[0]), bins(inp[1], out[1]), bins(inp[2], out[2])];
        Self { inp, out, b }
    }

    /// Average of one `(D, H, W)` plane into `y` (`od·oh·ow`).
    fn pool_plane(&self, x: &[f32], y: &mut [f32]) {
        let [d, h, w] = self.inp;
        let [od, oh, ow] = self.out;
        // W: (d, h, w) → (d, h, ow).
        let mut t1 = vec![0f32; d * h * ow];
        for (xr, tr) in x.chunks_exact(w).zip(t1.chunks_exact_mut(ow)) {
            for (t, &(s, e)) in tr.iter_mut().zip(&self.b[2]) {
                *t = xr[s..e].iter().sum();
            }
        }
        // H: (d, h, ow) → (d, oh, ow).
        let mut t2 = vec![0f32; d * oh * ow];
        for (src, dst) in t1.chunks_exact(h * ow).zip(t2.chunks_exact_mut(oh * ow)) {
            for (dr, &(s, e)) in dst.chunks_exact_mut(ow).zip(&self.b[1]) {
                for r in s..e {
                    add_into(dr, &src[r * ow..(r + 1) * ow]);
                }
            }
        }
        // D: (d, oh, ow) → (od, oh, ow), then divide by the bin volumes.
        let plane = oh * ow;
        for (i, &(s, e)) in self.b[0].iter().enumerate() {
            let dst = &mut y[i * plane..(i + 1) * plane];
            for r in s..e {
                add_into(dst, &t2[r * plane..(r + 1) * plane]);
            }
            for (j, &(hs, he)) in self.b[1].iter().enumerate() {
                for (k, &(ws, we)) in self.b[2].iter().enumerate() {
                    dst[j * ow + k] /= ((e - s) * (he - hs) * (we - ws)) as f32;
                }
            }
        }
        debug_assert_eq!(y.len(), od * plane);
    }

    /// Gradient of one plane: spreads `dy / volume` back over every bin (D, then H, then W).
    fn unpool_plane(&self, dy: &[f32], dx: &mut [f32]) {
        let [d, h, w] = self.inp;
        let [_, oh, ow] = self.out;
        let plane = oh * ow;
        let mut g = dy.to_vec();
        for (i, &(s, e)) in self.b[0].iter().enumerate() {
            for (j, &(hs, he)) in self.b[1].iter().enumerate() {
                for (k, &(ws, we)) in self.b[2].iter().enumerate() {
                    g[i * plane + j * ow + k] /= ((e - s) * (he - hs) * (we - ws)) as f32;
                }
            }
        }
        // D: (od, oh, ow) → (d, oh, ow).
        let mut t2 = vec![0f32; d * plane];
        for (i, &(s, e)) in self.b[0].iter().enumerate() {
            for r in s..e {
                add_into(&mut t2[r * plane..(r + 1) * plane], &g[i * plane..(i + 1) * plane]);
            }
        }
        // H: (d, oh, ow) → (d, h, ow).
        let mut t1 = vec![0f32; d * h * ow];
        for (src, dst) in t2.chunks_exact(plane).zip(t1.chunks_exact_mut(h * ow)) {
            for (sr, &(s, e)) in src.chunks_exact(ow).zip(&self.b[1]) {
                for r in s..e {
                    add_into(&mut dst[r * ow..(r + 1) * ow], sr);
                }
            }
        }
        // W: (d, h, ow) → (d, h, w).
        for (tr, xr) in t1.chunks_exact(ow).zip(dx.chunks_exact_mut(w)) {
            for (&t, &(s, e)) in tr.iter().zip(&self.b[2]) {
                for v in &mut xr[s..e] {
                    *v += t;
                }
            }
        }
    }
}

/// `dst += src`, element-wise.
fn add_into(dst: &mut [f32], src: &[f32]) {
    for (a, &b) in dst.iter_mut().zip(src) {
        *a += b;
    }
}

fn spatial(shape: &Shape) -> (usize, [usize; 3]) {
    let s = shape.dims();
    (s[0] * s[1], [s[2], s[3], s[4]])
}

impl CustomOp1 for AdaptiveAvgPool {
    fn name(&self) -> &'static str {
        "adaptive-avg-pool3d"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = cpu_f32::slice(storage, layout, self.name())?;
        let (planes, inp) = spatial(layout.shape());
        let grid = Grid::new(inp, self.out);
        let (ps, os) = (inp.iter().product::<usize>(), self.out.iter().product::<usize>());
        let mut y = vec![0f32; planes * os];
        y.par_chunks_mut(os)
            .enumerate()
            .for_each(|(p, yp)| grid.pool_plane(&x[p * ps..(p + 1) * ps], yp));
        let dims = layout.dims();
        let [od, oh, ow] = self.out;
        Ok((CpuStorage::F32(y), Shape::from((dims[0], dims[1], od, oh, ow))))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let (planes, inp) = spatial(arg.shape());
        let grid = Grid::new(inp, self.out);
        let (ps, os) = (inp.iter().product::<usize>(), self.out.iter().product::<usize>());
        let dx = cpu_f32::with_tensor(grad, self.name(), |dy| {
            let mut dx = vec![0f32; planes * ps];
            dx.par_chunks_mut(ps)
                .enumerate()
                .for_each(|(p, dxp)| grid.unpool_plane(&dy[p * os..(p + 1) * os], dxp));
            Ok(dx)
        })?;
        Ok(Some(Tensor::from_vec(dx, arg.shape(), arg.device())?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu_f32::testing::{check_op, values};

    /// Slow reference: the direct average over each (overlapping) box.
    fn reference(x: &[f64], [n, c, d, h, w]: [usize; 5], [od, oh, ow]: [usize; 3]) -> Vec<f64> {
        let bin = |i: usize, inp: usize, out: usize| {
            (
                ((i * inp) as f64 / out as f64).floor() as usize,
                (((i + 1) * inp) as f64 / out as f64).ceil() as usize,
            )
        };
        let mut y = Vec::new();
        for p in 0..n * c {
            for i in 0..od {
                for j in 0..oh {
                    for k in 0..ow {
                        let ((a0, a1), (b0, b1), (c0, c1)) =
                            (bin(i, d, od), bin(j, h, oh), bin(k, w, ow));
                        let mut s = 0.0;
                        for a in a0..a1 {
                            for b in b0..b1 {
                                for e in c0..c1 {
                                    s += x[p * d * h * w + a * h * w + b * w + e];
                                }
                            }
                        }
                        y.push(s / ((a1 - a0) * (b1 - b0) * (c1 - c0)) as f64);
                    }
                }
            }
        }
        y
    }

    #[test]
    fn matches_reference_for_several_grids() {
        let shape = [2, 2, 5, 7, 6];
        let x = values(shape.iter().product(), 11);
        for out in [[1, 1, 1], [5, 7, 6], [2, 3, 4], [5, 1, 1], [1, 7, 1], [1, 1, 6], [7, 9, 4]] {
            check_op(
                &[(&x, &shape)],
                &|t| adaptive_avg_pool3d(&t[0], out),
                &|x| reference(x, shape, out),
                1e-5,
            );
        }
    }

    #[test]
    fn empty_grid_is_an_error() {
        let x = Tensor::zeros((1, 1, 4, 4, 4), candle_core::DType::F32, &candle_core::Device::Cpu)
            .unwrap();
        assert!(adaptive_avg_pool3d(&x, [0, 1, 1]).is_err());
    }
}
