//! 3-D max pooling with kernel 2 and stride 2 (`torch.nn.MaxPool3d(2)`), the only pooling the
//! MGSD U-Net uses (MGSD-SPEC §2, `c2d → c2d_p`).
//!
//! The forward stores, per output voxel, the position (0‥7, window order d, h, w) of the
//! maximum as one byte; the backward scatters the output gradient there. That reads 1/32 of
//! the bytes that recomputing the argmax from the input would. Ties go to the first maximum in
//! window order and a NaN wins, as in PyTorch. Odd sizes are floored: the last plane, row or
//! column of an odd axis is never selected and gets a zero gradient.

use std::sync::OnceLock;

use candle_core::{CpuStorage, CustomOp1, Layout, Module, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::cpu_f32;

/// `torch.nn.MaxPool3d(kernel_size=2, stride=2)`.
///
/// # Shapes
/// `(N, C, D, H, W)` → `(N, C, ⌊D/2⌋, ⌊H/2⌋, ⌊W/2⌋)`.
#[derive(Clone, Copy, Debug, Default)]
pub struct MaxPool3d;

impl Module for MaxPool3d {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        max_pool3d_2x(xs)
    }
}

/// Max pooling with kernel 2, stride 2 over the three spatial axes of a `(N, C, D, H, W)` f32
/// tensor. Differentiable.
pub fn max_pool3d_2x(xs: &Tensor) -> Result<Tensor> {
    let [_, _, d, h, w] = cpu_f32::dims5(xs, "max_pool3d_2x")?;
    if d < 2 || h < 2 || w < 2 {
        candle_core::bail!("max_pool3d_2x: every spatial size must be ≥ 2, input {:?}", xs.shape());
    }
    #[cfg(feature = "cuda")]
    if xs.device().is_cuda() && xs.dtype() == candle_core::DType::F32 {
        return mgsd_kernels::candle_ops::resample::max_pool3d_2x(xs);
    }
    if !xs.device().is_cpu() {
        return crate::composite::max_pool3d_2x(xs);
    }
    xs.contiguous()?.apply_op1(MaxPoolOp { argmax: OnceLock::new() })
}

/// The custom op; keeps the forward's window positions for the backward.
struct MaxPoolOp {
    argmax: OnceLock<Vec<u8>>,
}

/// Input `[d, h, w]` and output `[od, oh, ow]` sizes of one plane, and `N·C`.
fn sizes(shape: &Shape) -> (usize, [usize; 3], [usize; 3]) {
    let s = shape.dims();
    let inp = [s[2], s[3], s[4]];
    (s[0] * s[1], inp, [inp[0] / 2, inp[1] / 2, inp[2] / 2])
}

/// Pools one `(D, H, W)` plane into `y` and the window positions into `arg`.
fn pool_plane(
    x: &[f32],
    [_, h, w]: [usize; 3],
    y: &mut [f32],
    arg: &mut [u8],
    [od, oh, ow]: [usize; 3],
) {
    for i in 0..od {
        for j in 0..oh {
            let base = 2 * i * h * w + 2 * j * w;
            let rows = [base, base + w, base + h * w, base + h * w + w];
            let o = (i * oh + j) * ow;
            let (yr, ar) = (&mut y[o..o + ow], &mut arg[o..o + ow]);
            let r: [&[f32]; 4] = rows.map(|b| &x[b..b + 2 * ow]);
            for k in 0..ow {
                let mut best = r[0][2 * k];
                let mut pos = 0u8;
                for (p, row) in r.iter().enumerate() {
                    for q in 0..2 {
                        let v = row[2 * k + q];
                        // PyTorch: `if ((val > maxval) || isnan(val))`, scanning d, h, w.
                        if v > best || v.is_nan() {
                            best = v;
                            pos = (2 * p + q) as u8;
                        }
                    }
                }
                yr[k] = best;
                ar[k] = pos;
            }
        }
    }
}

impl MaxPoolOp {
    fn argmax_for(&self, x: &[f32], shape: &Shape) -> &[u8] {
        self.argmax.get_or_init(|| forward(x, shape).1)
    }
}

/// Pooled values and window positions of a contiguous input.
fn forward(x: &[f32], shape: &Shape) -> (Vec<f32>, Vec<u8>) {
    let (planes, inp, out) = sizes(shape);
    let (ps, os) = (inp.iter().product::<usize>(), out.iter().product::<usize>());
    let mut y = vec![0f32; planes * os];
    let mut arg = vec![0u8; planes * os];
    y.par_chunks_mut(os)
        .zip(arg.par_chunks_mut(os))
        .enumerate()
        .for_each(|(p, (yp, ap))| pool_plane(&x[p * ps..(p + 1) * ps], inp, yp, ap, out));
    (y, arg)
}

impl CustomOp1 for MaxPoolOp {
    fn name(&self) -> &'static str {
        "max-pool3d-2x"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = cpu_f32::slice(storage, layout, self.name())?;
        let (y, arg) = forward(x, layout.shape());
        // Only the first forward of this op instance runs here; ignore a (impossible) refill.
        let _ = self.argmax.set(arg);
        let (n, c) = (layout.dims()[0], layout.dims()[1]);
        let (_, _, [od, oh, ow]) = sizes(layout.shape());
        Ok((CpuStorage::F32(y), Shape::from((n, c, od, oh, ow))))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let shape = arg.shape().clone();
        let (planes, inp @ [_, h, w], out @ [_, oh, ow]) = sizes(&shape);
        let (ps, os) = (inp.iter().product::<usize>(), out.iter().product::<usize>());
        let dx = cpu_f32::with_tensor(arg, self.name(), |x| {
            let pos = self.argmax_for(x, &shape);
            cpu_f32::with_tensor(grad, self.name(), |dy| {
                let mut dx = vec![0f32; planes * ps];
                dx.par_chunks_mut(ps).enumerate().for_each(|(p, dxp)| {
                    let (dyp, pp) = (&dy[p * os..(p + 1) * os], &pos[p * os..(p + 1) * os]);
                    for i in 0..out[0] {
                        for j in 0..oh {
                            let o = (i * oh + j) * ow;
                            let base = 2 * i * h * w + 2 * j * w;
                            for (k, (&g, &q)) in
                                dyp[o..o + ow].iter().zip(&pp[o..o + ow]).enumerate()
                            {
                                let q = q as usize;
                                let off = (q >> 2) * h * w + ((q >> 1) & 1) * w + (q & 1);
                                dxp[base + 2 * k + off] = g;
                            }
                        }
                    }
                });
                Ok(dx)
            })
        })?;
        Ok(Some(Tensor::from_vec(dx, shape, arg.device())?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu_f32::testing::{check_op, values};

    /// Slow reference: direct loops over every window, first maximum wins.
    fn reference(x: &[f64], [n, c, d, h, w]: [usize; 5]) -> Vec<f64> {
        let (od, oh, ow) = (d / 2, h / 2, w / 2);
        let mut y = Vec::new();
        for p in 0..n * c {
            for i in 0..od {
                for j in 0..oh {
                    for k in 0..ow {
                        let mut best = f64::NEG_INFINITY;
                        for (a, b, e) in (0..8).map(|q| (q >> 2, (q >> 1) & 1, q & 1)) {
                            let v = x
                                [p * d * h * w + (2 * i + a) * h * w + (2 * j + b) * w + 2 * k + e];
                            if v > best {
                                best = v;
                            }
                        }
                        y.push(best);
                    }
                }
            }
        }
        y
    }

    #[test]
    fn matches_reference_even_and_odd() {
        for shape in [[1, 2, 4, 6, 8], [2, 3, 5, 7, 3]] {
            let x = values(shape.iter().product(), 5);
            check_op(&[(&x, &shape)], &|t| max_pool3d_2x(&t[0]), &|x| reference(x, shape), 1e-5);
        }
    }

    #[test]
    fn ties_go_to_the_first_maximum() {
        let x = Tensor::ones((1, 1, 2, 2, 2), candle_core::DType::F32, &candle_core::Device::Cpu)
            .unwrap();
        let v = Var::from_tensor(&x).unwrap();
        let g = max_pool3d_2x(v.as_tensor()).unwrap().sum_all().unwrap().backward().unwrap();
        let d = g.get(&v).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(d, [1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
    }

    #[test]
    fn too_small_is_an_error() {
        let x = Tensor::zeros((1, 1, 1, 4, 4), candle_core::DType::F32, &candle_core::Device::Cpu)
            .unwrap();
        assert!(max_pool3d_2x(&x).is_err());
    }

    use candle_core::Var;
}
