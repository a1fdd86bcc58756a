//! Device-generic versions of the layers whose fast path is a CPU custom op, composed from
//! differentiable candle ops. They run on every device other than the CPU for which no fused
//! kernel exists (on CUDA every one of these layers has its own f32 kernels in `mgsd-kernels`,
//! so only other dtypes and devices come here); the public functions of each layer dispatch
//! here.
//!
//! The tests run them on the CPU against the custom ops, forward and backward, so CPU CI checks
//! the maths of the GPU path; `tests/cuda_parity.rs` checks them on a GPU.
//!
//! Known difference: max pooling's backward sends the gradient to every element that ties for
//! a window's maximum (candle's `max` backward), where PyTorch picks the first. After a ReLU
//! the common tie is an all-zero window, whose gradient the ReLU then zeroes anyway.

use candle_core::{DType, Result, Tensor};

/// GroupNorm (biased variance, `eps` inside the root, per-channel affine), then ReLU if `relu`.
pub(crate) fn group_norm(
    xs: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    num_groups: usize,
    eps: f64,
    relu: bool,
) -> Result<Tensor> {
    let (n, c, d, h, w) = xs.dims5()?;
    let x = xs.reshape((n, num_groups, (c / num_groups) * d * h * w))?;
    let mean = x.mean_keepdim(2)?;
    let xc = x.broadcast_sub(&mean)?;
    let var = xc.sqr()?.mean_keepdim(2)?;
    let xn = xc.broadcast_div(&(var + eps)?.sqrt()?)?.reshape((n, c, d, h, w))?;
    let y = xn
        .broadcast_mul(&weight.reshape((1, c, 1, 1, 1))?)?
        .broadcast_add(&bias.reshape((1, c, 1, 1, 1))?)?;
    if relu {
        y.relu()
    } else {
        Ok(y)
    }
}

/// Max pooling, kernel 2, stride 2; odd sizes floored like PyTorch.
pub(crate) fn max_pool3d_2x(xs: &Tensor) -> Result<Tensor> {
    let (n, c, d, h, w) = xs.dims5()?;
    let (d2, h2, w2) = (d / 2, h / 2, w / 2);
    let x = xs.narrow(2, 0, 2 * d2)?.narrow(3, 0, 2 * h2)?.narrow(4, 0, 2 * w2)?;
    x.reshape(vec![n, c, d2, 2, h2, 2, w2, 2])?.max(7)?.max(5)?.max(3)
}

/// Nearest ×2 upsampling.
pub(crate) fn upsample2x(xs: &Tensor) -> Result<Tensor> {
    let (n, c, d, h, w) = xs.dims5()?;
    xs.reshape(vec![n, c, d, 1, h, 1, w, 1])?.broadcast_as(vec![n, c, d, 2, h, 2, w, 2])?.reshape((
        n,
        c,
        2 * d,
        2 * h,
        2 * w,
    ))
}

/// `max(x, 0) + slope·min(x, 0)`, with PyTorch's gradient `slope` at 0.
pub(crate) fn leaky_relu(xs: &Tensor, negative_slope: f32) -> Result<Tensor> {
    let s = f64::from(negative_slope);
    // 1 where x > 0, else `slope`; a comparison carries no gradient.
    let factor = ((xs.gt(0f32)?.to_dtype(DType::F32)? * (1.0 - s))? + s)?;
    xs * factor
}

/// Adaptive average pooling with PyTorch's bins, one axis at a time (the average over a box
/// is the product of the averages along its axes): an axis kept at its size is skipped, one
/// pooled to a single cell is a mean, any other is a small matrix product. The multi-view
/// profiles `(d,1,1)`, `(1,h,1)`, `(1,1,w)` of the feature level thus never copy the volume.
pub(crate) fn adaptive_avg_pool3d(xs: &Tensor, out: [usize; 3]) -> Result<Tensor> {
    let mut x = xs.clone();
    for (axis, o) in (2..5).zip(out) {
        let inp = x.dim(axis)?;
        if inp == o {
            continue;
        }
        if o == 1 {
            x = x.mean_keepdim(axis)?;
            continue;
        }
        // (In, Out) matrix averaging each bin.
        let mut m = vec![0f32; inp * o];
        for i in 0..o {
            let (s, e) = (i * inp / o, ((i + 1) * inp).div_ceil(o));
            for r in s..e {
                m[r * o + i] = 1.0 / (e - s) as f32;
            }
        }
        let pool = Tensor::from_vec(m, (inp, o), x.device())?;
        // Move the axis last, multiply, move it back.
        let last = x.transpose(axis, 4)?.contiguous()?;
        let mut dims = last.dims().to_vec();
        let rows = last.elem_count() / inp;
        let y = last.reshape((rows, inp))?.matmul(&pool)?;
        dims[4] = o;
        x = y.reshape(dims)?.transpose(axis, 4)?;
    }
    x.contiguous()
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::*;

    fn max_rel_diff(a: &Tensor, b: &Tensor) -> f32 {
        let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let b = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(a.len(), b.len());
        let scale = a.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
        a.iter().zip(&b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
    }

    /// Compares `composed` with `custom` (the CPU op) on input `x`: outputs and the gradient
    /// of `Σ out·probe` with respect to every variable.
    fn check(
        name: &str,
        vars: &[Var],
        custom: impl Fn(&[Tensor]) -> Result<Tensor>,
        composed: impl Fn(&[Tensor]) -> Result<Tensor>,
        tol: f32,
    ) {
        let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let a = custom(&ts).unwrap();
        let b = composed(&ts).unwrap();
        assert_eq!(a.dims(), b.dims(), "{name}");
        let e = max_rel_diff(&a, &b);
        assert!(e < tol, "{name}: forward differs by {e}");
        let probe = Tensor::randn(0f32, 1.0, a.shape(), &Device::Cpu).unwrap();
        let ga = (a * &probe).unwrap().sum_all().unwrap().backward().unwrap();
        let gb = (b * &probe).unwrap().sum_all().unwrap().backward().unwrap();
        for (i, v) in vars.iter().enumerate() {
            let e = max_rel_diff(ga.get(v).unwrap(), gb.get(v).unwrap());
            assert!(e < tol, "{name}: gradient of operand {i} differs by {e}");
        }
    }

    fn var(shape: &[usize]) -> Var {
        Var::from_tensor(&Tensor::randn(0f32, 1.0, shape, &Device::Cpu).unwrap()).unwrap()
    }

    #[test]
    fn group_norm_matches_the_custom_op() {
        for relu in [false, true] {
            let vars = [var(&[2, 8, 3, 4, 5]), var(&[8]), var(&[8])];
            check(
                "group_norm",
                &vars,
                |t| crate::group_norm(&t[0], &t[1], &t[2], 4, 1e-5, relu),
                |t| group_norm(&t[0], &t[1], &t[2], 4, 1e-5, relu),
                1e-4,
            );
        }
    }

    #[test]
    fn max_pool_matches_the_custom_op() {
        for shape in [[1, 3, 4, 6, 8], [2, 2, 5, 3, 7]] {
            check(
                "max_pool3d_2x",
                &[var(&shape)],
                |t| crate::max_pool3d_2x(&t[0]),
                |t| max_pool3d_2x(&t[0]),
                1e-6,
            );
        }
    }

    #[test]
    fn upsample_matches_the_custom_op() {
        check(
            "upsample2x",
            &[var(&[2, 3, 2, 3, 4])],
            |t| crate::upsample2x(&t[0]),
            |t| upsample2x(&t[0]),
            1e-6,
        );
    }

    #[test]
    fn leaky_relu_matches_the_custom_op() {
        let x = Tensor::new(&[-1f32, 0.0, 2.0, -0.5, 0.0], &Device::Cpu).unwrap();
        let vars = [Var::from_tensor(&x).unwrap(), var(&[3, 4, 5])];
        for v in vars {
            check(
                "leaky_relu",
                &[v],
                |t| crate::leaky_relu(&t[0], 0.2),
                |t| leaky_relu(&t[0], 0.2),
                1e-6,
            );
        }
    }

    #[test]
    fn adaptive_pool_matches_the_custom_op() {
        for (shape, out) in [
            ([1, 2, 8, 8, 8], [2, 2, 2]),
            ([2, 3, 7, 5, 9], [3, 2, 4]),
            ([1, 2, 6, 4, 5], [6, 1, 1]),
            ([1, 2, 6, 4, 5], [1, 1, 5]),
        ] {
            check(
                "adaptive_avg_pool3d",
                &[var(&shape)],
                |t| crate::adaptive_avg_pool3d(&t[0], out),
                |t| adaptive_avg_pool3d(&t[0], out),
                1e-5,
            );
        }
    }
}
