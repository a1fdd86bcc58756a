//! Nearest-neighbour ×2 upsampling in 3-D (`F.interpolate(x, scale_factor=2, mode="nearest")`),
//! alone and fused with the skip addition of the U-Net decoder (MGSD-SPEC §2:
//! "×2 nearest, + c3"), so the upsampled tensor is never materialised on its own.
//!
//! Backward: the gradient of `x` sums each 2×2×2 block of the output gradient; the gradient of
//! `skip` is the output gradient itself (no copy).

use candle_core::{bail, CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::cpu_f32;

/// Nearest ×2 upsampling of a `(N, C, D, H, W)` f32 tensor. Differentiable.
///
/// # Shapes
/// `(N, C, D, H, W)` → `(N, C, 2D, 2H, 2W)`.
pub fn upsample2x(xs: &Tensor) -> Result<Tensor> {
    cpu_f32::dims5(xs, "upsample2x")?;
    #[cfg(feature = "cuda")]
    if xs.device().is_cuda() && xs.dtype() == candle_core::DType::F32 {
        return mgsd_kernels::candle_ops::resample::upsample2x(xs);
    }
    if !xs.device().is_cpu() {
        return crate::composite::upsample2x(xs);
    }
    xs.contiguous()?.apply_op1(Upsample)
}

/// `upsample2x(xs) + skip` as one op. Differentiable with respect to both inputs.
///
/// # Shapes
/// `xs`: `(N, C, D, H, W)`, `skip`: `(N, C, 2D, 2H, 2W)` → `(N, C, 2D, 2H, 2W)`.
pub fn upsample2x_add(xs: &Tensor, skip: &Tensor) -> Result<Tensor> {
    let [n, c, d, h, w] = cpu_f32::dims5(xs, "upsample2x_add")?;
    let sd = cpu_f32::dims5(skip, "upsample2x_add")?;
    if sd != [n, c, 2 * d, 2 * h, 2 * w] {
        bail!(
            "upsample2x_add: skip {:?} must be x {:?} with doubled spatial sizes",
            skip.shape(),
            xs.shape()
        );
    }
    #[cfg(feature = "cuda")]
    if xs.device().is_cuda() && xs.dtype() == candle_core::DType::F32 {
        return mgsd_kernels::candle_ops::resample::upsample2x_add(xs, skip);
    }
    if !xs.device().is_cpu() {
        return crate::composite::upsample2x(xs)? + skip;
    }
    xs.contiguous()?.apply_op2(&skip.contiguous()?, Upsample)
}

/// The custom op (one struct for both arities).
struct Upsample;

/// Planes `N·C`, input `[d, h, w]` and the upsampled shape.
fn sizes(shape: &Shape) -> (usize, [usize; 3], Shape) {
    let s = shape.dims();
    let shape2 = Shape::from((s[0], s[1], 2 * s[2], 2 * s[3], 2 * s[4]));
    (s[0] * s[1], [s[2], s[3], s[4]], shape2)
}

/// Writes the upsampled `x` plane (plus `skip` when given) into `y`.
fn up_plane(x: &[f32], skip: Option<&[f32]>, [d, h, w]: [usize; 3], y: &mut [f32]) {
    let (w2, h2) = (2 * w, 2 * h);
    for i in 0..d {
        for j in 0..h {
            let xr = &x[(i * h + j) * w..(i * h + j + 1) * w];
            for (di, dj) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
                let o = ((2 * i + di) * h2 + 2 * j + dj) * w2;
                let yr = &mut y[o..o + w2];
                match skip {
                    None => {
                        for (pair, &v) in yr.chunks_exact_mut(2).zip(xr) {
                            pair[0] = v;
                            pair[1] = v;
                        }
                    }
                    Some(s) => {
                        let sr = &s[o..o + w2];
                        for ((pair, sp), &v) in
                            yr.chunks_exact_mut(2).zip(sr.chunks_exact(2)).zip(xr)
                        {
                            pair[0] = v + sp[0];
                            pair[1] = v + sp[1];
                        }
                    }
                }
            }
        }
    }
}

fn forward(x: &[f32], skip: Option<&[f32]>, shape: &Shape) -> (Vec<f32>, Shape) {
    let (planes, inp, out_shape) = sizes(shape);
    let ps = inp.iter().product::<usize>();
    let os = 8 * ps;
    let mut y = vec![0f32; planes * os];
    if os > 0 {
        y.par_chunks_mut(os).enumerate().for_each(|(p, yp)| {
            let sp = skip.map(|s| &s[p * os..(p + 1) * os]);
            up_plane(&x[p * ps..(p + 1) * ps], sp, inp, yp)
        });
    }
    (y, out_shape)
}

/// Gradient of `x`: the sum of every 2×2×2 block of `dy`.
fn backward(xs: &Tensor, grad: &Tensor, name: &str) -> Result<Tensor> {
    let shape = xs.shape().clone();
    let (planes, inp @ [d, h, w], _) = sizes(&shape);
    let ps = inp.iter().product::<usize>();
    let os = 8 * ps;
    let dx = cpu_f32::with_tensor(grad, name, |dy| {
        let mut dx = vec![0f32; planes * ps];
        if ps > 0 {
            dx.par_chunks_mut(ps).enumerate().for_each(|(p, dxp)| {
                let dyp = &dy[p * os..(p + 1) * os];
                let (w2, h2) = (2 * w, 2 * h);
                for i in 0..d {
                    for j in 0..h {
                        let out = &mut dxp[(i * h + j) * w..(i * h + j + 1) * w];
                        for (di, dj) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
                            let o = ((2 * i + di) * h2 + 2 * j + dj) * w2;
                            for (v, pair) in out.iter_mut().zip(dyp[o..o + w2].chunks_exact(2)) {
                                *v += pair[0] + pair[1];
                            }
                        }
                    }
                }
            });
        }
        Ok(dx)
    })?;
    Tensor::from_vec(dx, shape, xs.device())
}

impl CustomOp1 for Upsample {
    fn name(&self) -> &'static str {
        "upsample-nearest-2x"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = cpu_f32::slice(storage, layout, CustomOp1::name(self))?;
        let (y, shape) = forward(x, None, layout.shape());
        Ok((CpuStorage::F32(y), shape))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(backward(arg, grad, CustomOp1::name(self))?))
    }
}

impl CustomOp2 for Upsample {
    fn name(&self) -> &'static str {
        "upsample-nearest-2x-add"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let name = CustomOp2::name(self);
        let x = cpu_f32::slice(s1, l1, name)?;
        let skip = cpu_f32::slice(s2, l2, name)?;
        let (y, shape) = forward(x, Some(skip), l1.shape());
        Ok((CpuStorage::F32(y), shape))
    }

    fn bwd(
        &self,
        arg1: &Tensor,
        _arg2: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dx = backward(arg1, grad, CustomOp2::name(self))?;
        Ok((Some(dx), Some(grad.clone())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu_f32::testing::{check_op, values};

    /// Slow reference: `y[i, j, k] = x[i/2, j/2, k/2] (+ skip)`.
    fn reference(all: &[f64], [n, c, d, h, w]: [usize; 5], with_skip: bool) -> Vec<f64> {
        let (x, skip) = all.split_at(n * c * d * h * w);
        let mut y = Vec::new();
        for p in 0..n * c {
            for i in 0..2 * d {
                for j in 0..2 * h {
                    for k in 0..2 * w {
                        let v = x[p * d * h * w + (i / 2) * h * w + (j / 2) * w + k / 2];
                        let s = if with_skip { skip[y.len()] } else { 0.0 };
                        y.push(v + s);
                    }
                }
            }
        }
        y
    }

    #[test]
    fn matches_reference() {
        let shape = [2, 3, 2, 3, 4];
        let x = values(shape.iter().product(), 7);
        check_op(&[(&x, &shape)], &|t| upsample2x(&t[0]), &|a| reference(a, shape, false), 1e-5);
        let skip = values(8 * x.len(), 8);
        let s2 = [2, 3, 4, 6, 8];
        check_op(
            &[(&x, &shape), (&skip, &s2)],
            &|t| upsample2x_add(&t[0], &t[1]),
            &|a| reference(a, shape, true),
            1e-5,
        );
    }

    #[test]
    fn mismatched_skip_is_an_error() {
        let dev = candle_core::Device::Cpu;
        let x = Tensor::zeros((1, 2, 2, 2, 2), candle_core::DType::F32, &dev).unwrap();
        let s = Tensor::zeros((1, 2, 4, 4, 5), candle_core::DType::F32, &dev).unwrap();
        assert!(upsample2x_add(&x, &s).is_err());
    }
}
