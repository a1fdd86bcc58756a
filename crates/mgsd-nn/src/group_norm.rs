//! GroupNorm for 5-D input, optionally fused with the ReLU that follows it.
//!
//! The pre-activation residual blocks of MGSD-SPEC §2 apply GroupNorm → ReLU before every
//! convolution, so the pair is one custom op with one backward: the forward makes one pass
//! for the statistics (8-lane `f32` partials, `f64` totals, shifted by the group's first value)
//! and one pass that writes `max(x·a_c + b_c, 0)`; the backward makes one pass for the
//! per-channel sums and one that writes `dx`, recomputing the ReLU mask from `x` instead of
//! reading the output. candle-nn's GroupNorm (a composition of reductions) was measured at
//! 7–9× PyTorch's time, which is why this op exists.
//!
//! Numerics follow `torch.nn.GroupNorm`: biased variance, `eps` inside the square root,
//! per-channel affine `weight` (γ) and `bias` (β).

use std::sync::OnceLock;

use candle_core::{bail, CpuStorage, CustomOp3, Layout, Module, Result, Shape, Tensor};
use candle_nn::{Init, VarBuilder};
use rayon::prelude::*;

use crate::cpu_f32;

/// Default `eps` of `torch.nn.GroupNorm`.
pub const GROUP_NORM_EPS: f64 = 1e-5;

/// GroupNorm layer with PyTorch parameter names `weight` and `bias`.
///
/// # Shapes
/// `(N, C, D, H, W)` → `(N, C, D, H, W)`; `weight`, `bias`: `(C,)`.
#[derive(Clone, Debug)]
pub struct GroupNorm {
    weight: Tensor,
    bias: Tensor,
    num_groups: usize,
    eps: f64,
}

impl GroupNorm {
    /// Loads `weight` and `bias` of shape `(num_channels,)` from `vb` (initialised to ones and
    /// zeros like PyTorch when the builder creates variables).
    pub fn new(num_groups: usize, num_channels: usize, vb: VarBuilder<'_>) -> Result<Self> {
        let weight = vb.get_with_hints(num_channels, "weight", Init::Const(1.0))?;
        let bias = vb.get_with_hints(num_channels, "bias", Init::Const(0.0))?;
        Self::from_tensors(weight, bias, num_groups, GROUP_NORM_EPS)
    }

    /// Builds the layer from existing parameters.
    pub fn from_tensors(weight: Tensor, bias: Tensor, num_groups: usize, eps: f64) -> Result<Self> {
        let c = weight.elem_count();
        if num_groups == 0
            || !c.is_multiple_of(num_groups)
            || bias.elem_count() != c
            || weight.rank() != 1
        {
            bail!(
                "GroupNorm: {num_groups} groups do not fit weight {:?} / bias {:?}",
                weight.shape(),
                bias.shape()
            );
        }
        Ok(Self { weight, bias, num_groups, eps })
    }

    /// GroupNorm followed by ReLU, as one op.
    pub fn forward_relu(&self, xs: &Tensor) -> Result<Tensor> {
        group_norm(xs, &self.weight, &self.bias, self.num_groups, self.eps, true)
    }

    /// The ε inside the square root.
    pub fn eps(&self) -> f64 {
        self.eps
    }

    /// The scale γ, shape `(C,)`.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The shift β, shape `(C,)`.
    pub fn bias(&self) -> &Tensor {
        &self.bias
    }

    /// Number of groups.
    pub fn num_groups(&self) -> usize {
        self.num_groups
    }
}

impl Module for GroupNorm {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        group_norm(xs, &self.weight, &self.bias, self.num_groups, self.eps, false)
    }
}

/// Functional GroupNorm of a `(N, C, D, H, W)` f32 tensor, followed by ReLU when `relu`.
/// Differentiable with respect to `xs`, `weight` and `bias`.
pub fn group_norm(
    xs: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    num_groups: usize,
    eps: f64,
    relu: bool,
) -> Result<Tensor> {
    let [_, c, _, _, _] = cpu_f32::dims5(xs, "group_norm")?;
    if xs.elem_count() == 0 {
        bail!("group_norm: empty input {:?}", xs.shape());
    }
    if num_groups == 0 || !c.is_multiple_of(num_groups) {
        bail!(
            "group_norm: {c} channels (input {:?}) not divisible into {num_groups} groups",
            xs.shape()
        );
    }
    if weight.dims() != [c] || bias.dims() != [c] {
        bail!(
            "group_norm: input {:?} needs weight and bias of shape ({c},), got {:?} and {:?}",
            xs.shape(),
            weight.shape(),
            bias.shape()
        );
    }
    #[cfg(feature = "cuda")]
    if xs.device().is_cuda() {
        use mgsd_kernels::candle_ops::group_norm as cuda;
        return cuda::group_norm(xs, weight, bias, num_groups, eps, relu);
    }
    if !xs.device().is_cpu() {
        return crate::composite::group_norm(xs, weight, bias, num_groups, eps, relu);
    }
    let op = GroupNormOp { num_groups, eps, relu, stats: OnceLock::new() };
    xs.contiguous()?.apply_op3(&weight.contiguous()?, &bias.contiguous()?, op)
}

/// Gradients of [`group_norm`] with respect to `xs`, `weight` and `bias`, from the output
/// gradient `dy`, computed now rather than by autograd (the statistics are recomputed from
/// `xs`). For ops that rebuild a GroupNorm output in their backward instead of keeping it
/// (`gn_conv`). Returns `(dx, dweight, dbias)`.
pub(crate) fn group_norm_backward(
    xs: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    dy: &Tensor,
    num_groups: usize,
    eps: f64,
    relu: bool,
) -> Result<(Tensor, Tensor, Tensor)> {
    #[cfg(feature = "cuda")]
    if xs.device().is_cuda() {
        use mgsd_kernels::candle_ops::group_norm as cuda;
        return cuda::group_norm_backward(xs, weight, bias, dy, num_groups, eps, relu);
    }
    if !xs.device().is_cpu() {
        bail!("group_norm_backward: CPU and CUDA only, got {:?}", xs.device())
    }
    let op = GroupNormOp { num_groups, eps, relu, stats: OnceLock::new() };
    let xs = xs.contiguous()?;
    match op.bwd(&xs, weight, bias, &xs, &dy.contiguous()?)? {
        (Some(dx), Some(dw), Some(db)) => Ok((dx, dw, db)),
        _ => bail!("group_norm_backward: the op returned no gradient"),
    }
}

/// The custom op; keeps the forward's `(mean, rstd)` per `(n, group)` for the backward.
struct GroupNormOp {
    num_groups: usize,
    eps: f64,
    relu: bool,
    stats: OnceLock<Vec<(f32, f32)>>,
}

/// `(N, C, spatial)` of a rank-5 shape.
fn ncs(shape: &Shape) -> (usize, usize, usize) {
    let d = shape.dims();
    (d[0], d[1], d[2..].iter().product())
}

/// Per `(n, group)` mean and reciprocal standard deviation, one pass over `x`.
fn stats(x: &[f32], n: usize, c: usize, s: usize, groups: usize, eps: f64) -> Vec<(f32, f32)> {
    let cg = c / groups;
    // Per-channel shifted sums in parallel, then combined per group.
    let sums: Vec<(f64, f64)> = (0..n * c)
        .into_par_iter()
        .map(|nc| {
            let shift = x[(nc / cg) * cg * s];
            cpu_f32::sum_sq_shifted(&x[nc * s..(nc + 1) * s], shift)
        })
        .collect();
    let m = (cg * s) as f64;
    (0..n * groups)
        .map(|ng| {
            let shift = x[ng * cg * s] as f64;
            let (sum, sq) = sums[ng * cg..(ng + 1) * cg]
                .iter()
                .fold((0.0, 0.0), |(a, b), &(p, q)| (a + p, b + q));
            let mean_shifted = sum / m;
            let var = (sq / m - mean_shifted * mean_shifted).max(0.0);
            ((mean_shifted + shift) as f32, (1.0 / (var + eps).sqrt()) as f32)
        })
        .collect()
}

/// Per-channel affine `(a, b)` with `y = x·a + b`; shared by forward and backward so the
/// recomputed ReLU mask is bit-identical to the forward's.
fn affine(mean: f32, rstd: f32, gamma: f32, beta: f32) -> (f32, f32) {
    let a = rstd * gamma;
    (a, beta - mean * a)
}

impl GroupNormOp {
    fn stats_for(&self, x: &[f32], n: usize, c: usize, s: usize) -> &[(f32, f32)] {
        self.stats.get_or_init(|| stats(x, n, c, s, self.num_groups, self.eps))
    }
}

impl CustomOp3 for GroupNormOp {
    fn name(&self) -> &'static str {
        if self.relu {
            "group-norm-relu"
        } else {
            "group-norm"
        }
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = cpu_f32::slice(s1, l1, self.name())?;
        let gamma = cpu_f32::slice(s2, l2, self.name())?;
        let beta = cpu_f32::slice(s3, l3, self.name())?;
        let (n, c, s) = ncs(l1.shape());
        let cg = c / self.num_groups;
        let st = self.stats_for(x, n, c, s);
        let mut y = vec![0f32; x.len()];
        let relu = self.relu;
        y.par_chunks_mut(s.max(1)).enumerate().for_each(|(nc, yc)| {
            let ch = nc % c;
            let (mean, rstd) = st[nc / cg];
            let (a, b) = affine(mean, rstd, gamma[ch], beta[ch]);
            let xc = &x[nc * s..(nc + 1) * s];
            if relu {
                for (o, &v) in yc.iter_mut().zip(xc) {
                    *o = (v * a + b).max(0.0);
                }
            } else {
                for (o, &v) in yc.iter_mut().zip(xc) {
                    *o = v * a + b;
                }
            }
        });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        xs: &Tensor,
        weight: &Tensor,
        bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let name = self.name();
        let (n, c, s) = ncs(xs.shape());
        let cg = c / self.num_groups;
        let gamma = weight.to_vec1::<f32>()?;
        let beta = bias.to_vec1::<f32>()?;
        let (dx, dgamma, dbeta) = cpu_f32::with_tensor(xs, name, |x| {
            cpu_f32::with_tensor(grad, name, |dy| {
                let st = self.stats_for(x, n, c, s);
                let ab: Vec<(f32, f32)> = (0..n * c)
                    .map(|nc| {
                        let (mean, rstd) = st[nc / cg];
                        affine(mean, rstd, gamma[nc % c], beta[nc % c])
                    })
                    .collect();
                let relu = self.relu;
                // Pass 1: Σ g and Σ g·x per (n, c), g the (ReLU-masked) output gradient.
                let sums: Vec<(f64, f64)> = (0..n * c)
                    .into_par_iter()
                    .map(|nc| {
                        let r = nc * s..(nc + 1) * s;
                        cpu_f32::sum_grad_dot(&dy[r.clone()], &x[r], relu.then_some(ab[nc]))
                    })
                    .collect();
                // Per-channel Σ g·x̂ and the per-channel dx coefficients.
                let mut dgamma = vec![0f64; c];
                let mut dbeta = vec![0f64; c];
                let m = (cg * s) as f64;
                let mut coef = vec![(0f32, 0f32, 0f32); n * c];
                for (ng, (&(mean, rstd), group_sums)) in
                    st.iter().zip(sums.chunks_exact(cg)).enumerate()
                {
                    let (mean, rstd) = (mean as f64, rstd as f64);
                    let (mut ga, mut gb) = (0f64, 0f64);
                    for (i, &(sg, sgx)) in group_sums.iter().enumerate() {
                        let ch = (ng * cg + i) % c;
                        let sgxhat = rstd * (sgx - mean * sg);
                        dbeta[ch] += sg;
                        dgamma[ch] += sgxhat;
                        ga += gamma[ch] as f64 * sg;
                        gb += gamma[ch] as f64 * sgxhat;
                    }
                    let (ga, gb) = (ga / m, gb / m);
                    // dx = rstd·γ·g − rstd·A − rstd²·B·(x − mean) = k·g + u·x + w.
                    let u = -rstd * rstd * gb;
                    let w = -rstd * ga + rstd * rstd * gb * mean;
                    for (i, co) in coef[ng * cg..(ng + 1) * cg].iter_mut().enumerate() {
                        let ch = (ng * cg + i) % c;
                        *co = ((rstd * gamma[ch] as f64) as f32, u as f32, w as f32);
                    }
                }
                // Pass 2: dx.
                let mut dx = vec![0f32; x.len()];
                dx.par_chunks_mut(s.max(1)).enumerate().for_each(|(nc, dxc)| {
                    let (k, u, w) = coef[nc];
                    let r = nc * s..(nc + 1) * s;
                    let (xc, dc) = (&x[r.clone()], &dy[r]);
                    if relu {
                        let (a, b) = ab[nc];
                        for ((o, &xv), &d) in dxc.iter_mut().zip(xc).zip(dc) {
                            let g = if xv * a + b > 0.0 { d } else { 0.0 };
                            *o = k * g + u * xv + w;
                        }
                    } else {
                        for ((o, &xv), &d) in dxc.iter_mut().zip(xc).zip(dc) {
                            *o = k * d + u * xv + w;
                        }
                    }
                });
                let to32 = |v: Vec<f64>| v.into_iter().map(|t| t as f32).collect::<Vec<f32>>();
                Ok((dx, to32(dgamma), to32(dbeta)))
            })
        })?;
        let dev = xs.device();
        Ok((
            Some(Tensor::from_vec(dx, xs.shape(), dev)?),
            Some(Tensor::from_vec(dgamma, c, dev)?),
            Some(Tensor::from_vec(dbeta, c, dev)?),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu_f32::testing::{check_op, values};

    /// Slow reference: `[x, γ, β]` flattened → GroupNorm (+ ReLU) in f64.
    fn reference(all: &[f64], [n, c, s]: [usize; 3], groups: usize, relu: bool) -> Vec<f64> {
        let (x, rest) = all.split_at(n * c * s);
        let (gamma, beta) = rest.split_at(c);
        let cg = c / groups;
        let mut y = vec![0.0; x.len()];
        for ng in 0..n * groups {
            let r = ng * cg * s..(ng + 1) * cg * s;
            let m = r.len() as f64;
            let mean = x[r.clone()].iter().sum::<f64>() / m;
            let var = x[r.clone()].iter().map(|v| (v - mean).powi(2)).sum::<f64>() / m;
            for i in r {
                let ch = (i / s) % c;
                let v = (x[i] - mean) / (var + 1e-5).sqrt() * gamma[ch] + beta[ch];
                y[i] = if relu { v.max(0.0) } else { v };
            }
        }
        y
    }

    fn run(shape: [usize; 5], groups: usize, relu: bool, offset: f32) {
        let [n, c, d, h, w] = shape;
        let s = d * h * w;
        let x: Vec<f32> = values(n * c * s, 1).iter().map(|v| 2.0 * v + offset).collect();
        let g: Vec<f32> = values(c, 2).iter().map(|v| 1.0 + 0.5 * v).collect();
        let b = values(c, 3);
        check_op(
            &[(&x, &shape), (&g, &[c]), (&b, &[c])],
            &|t| group_norm(&t[0], &t[1], &t[2], groups, GROUP_NORM_EPS, relu),
            &|all| reference(all, [n, c, s], groups, relu),
            2e-4,
        );
    }

    #[test]
    fn matches_reference_with_relu() {
        run([2, 8, 3, 4, 5], 4, true, 0.0);
    }

    #[test]
    fn matches_reference_without_relu_and_offset() {
        // A large offset breaks a naive E[x²] − E[x]² variance in f32.
        run([1, 6, 3, 3, 3], 3, false, 100.0);
        run([1, 4, 2, 3, 5], 4, true, -1.0);
    }

    #[test]
    fn bad_shapes_are_errors() {
        let dev = candle_core::Device::Cpu;
        let x = Tensor::zeros((1, 6, 2, 2, 2), candle_core::DType::F32, &dev).unwrap();
        let w = Tensor::ones(6, candle_core::DType::F32, &dev).unwrap();
        assert!(group_norm(&x, &w, &w, 4, 1e-5, true).is_err());
        assert!(group_norm(&x, &w.narrow(0, 0, 5).unwrap(), &w, 3, 1e-5, true).is_err());
        let x4 = Tensor::zeros((1, 6, 2, 2), candle_core::DType::F32, &dev).unwrap();
        assert!(group_norm(&x4, &w, &w, 3, 1e-5, true).is_err());
    }
}
