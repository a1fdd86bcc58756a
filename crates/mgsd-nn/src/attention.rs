//! Multi-head cross-attention of MGSD's mutual-aware modality distillation (MGSD-SPEC §5),
//! built for "many queries, few keys": the queries are the voxels of a style map (`patch/8`,
//! 7 680 for the reference patch, up to ~10⁵), the keys a modality's token grid (≤ 1 024).
//!
//! [`cross_attention`] is the single entry point; behind the `cuda` feature, CUDA tensors with
//! head dim 32 or 64 go to `mgsd-kernels`' fused ops (both variants), and this CPU version is
//! their twin in the tests. The no-softmax variant is a composition of differentiable candle
//! matmuls. The softmax variant is, on the CPU, a fused custom op with its own backward
//! (`softmax_attention.rs`, never stores the `Nq × Nk` probabilities); on other devices and
//! head dims, a composition with [`candle_nn::ops::softmax`] (not `softmax_last_dim`, which
//! has no backward). Tests assert that gradients reach `q`, `k` and `v` in every path.
//!
//! The reference attention has no softmax: `attn = (q kᵀ)·scale`, `out = attn v`. Here it is
//! computed as `q (kᵀ v)·scale`, mathematically equal and linear in the number of queries
//! (the `Nq × Nk` matrix is never formed).

use candle_core::{bail, DType, Module, Result, Tensor};
use candle_nn::{linear, linear_no_bias, Linear, VarBuilder};

/// Which attention the module computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttentionVariant {
    /// `(q kᵀ)·scale · v` without normalisation, as in the MGSD reference.
    NoSoftmax,
    /// `softmax((q kᵀ)·scale) · v`, the softmax over the keys.
    Softmax,
}

/// Multi-head attention of `q` over `k`/`v`, heads already split.
///
/// # Shapes
/// `q`: `(B, heads, Nq, dh)`, `k`, `v`: `(B, heads, Nk, dh)` → `(B, heads, Nq, dh)`.
pub fn cross_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    variant: AttentionVariant,
) -> Result<Tensor> {
    let (b, h, _nq, dh) = q.dims4()?;
    let (kb, kh, nk, kd) = k.dims4()?;
    if (kb, kh, kd) != (b, h, dh) || v.dims() != k.dims() {
        bail!(
            "cross_attention: q {:?}, k {:?}, v {:?} must be (B, heads, Nq, dh), (B, heads, Nk, dh) twice",
            q.shape(),
            k.shape(),
            v.shape()
        );
    }
    let dt = q.dtype();
    if nk == 0 || !matches!(dt, DType::F32 | DType::BF16) || k.dtype() != dt || v.dtype() != dt {
        bail!(
            "cross_attention: needs f32 or bf16 (q, k and v alike) and at least one key, got k \
             {:?} and {:?}, {:?}, {:?}",
            k.shape(),
            dt,
            k.dtype(),
            v.dtype()
        );
    }
    if dt == DType::BF16 && !q.device().is_cuda() {
        // The CPU ops are f32: compute in f32 and round the result, as the bf16 CUDA kernels
        // accumulate in f32 and round their stores.
        let up = |t: &Tensor| t.to_dtype(DType::F32);
        return cross_attention(&up(q)?, &up(k)?, &up(v)?, scale, variant)?.to_dtype(DType::BF16);
    }
    let q = q.contiguous()?;
    let k = k.contiguous()?;
    let v = v.contiguous()?;
    match variant {
        #[cfg(feature = "cuda")]
        AttentionVariant::NoSoftmax
            if q.device().is_cuda()
                && mgsd_kernels::candle_ops::attention::supports_head_dim(dh) =>
        {
            mgsd_kernels::candle_ops::attention::no_softmax_attention(&q, &k, &v, scale as f32)
        }
        AttentionVariant::NoSoftmax => {
            // (B, h, dh, Nk) · (B, h, Nk, dh) → (B, h, dh, dh)
            let kv = (k.t()?.matmul(&v)? * scale)?;
            // (B, h, Nq, dh) · (B, h, dh, dh) → (B, h, Nq, dh)
            q.matmul(&kv)
        }
        #[cfg(feature = "cuda")]
        AttentionVariant::Softmax
            if q.device().is_cuda()
                && mgsd_kernels::candle_ops::attention::supports_head_dim(dh) =>
        {
            mgsd_kernels::candle_ops::softmax_attention::softmax_attention(&q, &k, &v, scale as f32)
        }
        AttentionVariant::Softmax if q.device().is_cpu() => {
            crate::softmax_attention::softmax_attention(&q, &k, &v, scale)
        }
        AttentionVariant::Softmax => softmax_composed(&q, &k, &v, scale),
    }
}

/// Softmax attention from differentiable candle ops (the non-CPU path).
fn softmax_composed(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
    // (B, h, Nq, dh) · (B, h, dh, Nk) → (B, h, Nq, Nk)
    let scores = (q.matmul(&k.t()?)? * scale)?;
    let p = candle_nn::ops::softmax(&scores, candle_core::D::Minus1)?;
    // (B, h, Nq, Nk) · (B, h, Nk, dh) → (B, h, Nq, dh)
    p.matmul(v)
}

/// Configuration of [`CrossAttention`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CrossAttentionConfig {
    /// Token width of queries, keys and output (`dim`).
    pub dim: usize,
    /// Number of heads.
    pub heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// Factor applied to `q kᵀ`.
    pub scale: f64,
    /// With or without softmax.
    pub variant: AttentionVariant,
}

impl CrossAttentionConfig {
    /// MGSD's decoder attention: dim 32, 16 heads × 32, scale `32^-0.5` (the model dim, not the
    /// head dim), no softmax.
    pub fn mgsd() -> Self {
        Self {
            dim: 32,
            heads: 16,
            head_dim: 32,
            scale: 1.0 / (32f64).sqrt(),
            variant: AttentionVariant::NoSoftmax,
        }
    }
}

/// Cross-attention layer with the reference's parameter names: `to_q.weight`, `to_k.weight`,
/// `to_v.weight` (bias-free, `dim → heads·head_dim`), `to_out.0.weight`, `to_out.0.bias`
/// (`heads·head_dim → dim`). No residual, no norm, no feed-forward (MGSD-SPEC §5).
///
/// # Shapes
/// `x`: `(B, Nq, dim)`, `memory`: `(B, Nk, dim)` → `(B, Nq, dim)`.
#[derive(Clone, Debug)]
pub struct CrossAttention {
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    cfg: CrossAttentionConfig,
}

impl CrossAttention {
    /// Loads (or creates) the four linear layers under `vb`.
    pub fn new(cfg: CrossAttentionConfig, vb: VarBuilder<'_>) -> Result<Self> {
        let inner = cfg.heads * cfg.head_dim;
        if inner == 0 || cfg.dim == 0 {
            bail!("CrossAttention: empty configuration {cfg:?}");
        }
        Ok(Self {
            to_q: linear_no_bias(cfg.dim, inner, vb.pp("to_q"))?,
            to_k: linear_no_bias(cfg.dim, inner, vb.pp("to_k"))?,
            to_v: linear_no_bias(cfg.dim, inner, vb.pp("to_v"))?,
            to_out: linear(inner, cfg.dim, vb.pp("to_out.0"))?,
            cfg,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &CrossAttentionConfig {
        &self.cfg
    }

    /// Attends from the query tokens `x` to the memory tokens `memory`.
    pub fn forward(&self, x: &Tensor, memory: &Tensor) -> Result<Tensor> {
        let (b, nq, dim) = x.dims3()?;
        let (mb, nk, mdim) = memory.dims3()?;
        if dim != self.cfg.dim || mdim != dim || mb != b {
            bail!(
                "CrossAttention(dim {}): x {:?} and memory {:?} must be (B, N, dim)",
                self.cfg.dim,
                x.shape(),
                memory.shape()
            );
        }
        let (h, dh) = (self.cfg.heads, self.cfg.head_dim);
        // (B, N, h·dh) → (B, N, h, dh) → (B, h, N, dh), as einops 'b n (h d) -> b h n d'.
        let split = |t: Tensor, n: usize| t.reshape((b, n, h, dh))?.transpose(1, 2)?.contiguous();
        let q = split(self.to_q.forward(x)?, nq)?;
        let k = split(self.to_k.forward(memory)?, nk)?;
        let v = split(self.to_v.forward(memory)?, nk)?;
        let o = cross_attention(&q, &k, &v, self.cfg.scale, self.cfg.variant)?;
        // (B, h, Nq, dh) → (B, Nq, h, dh) → (B, Nq, h·dh), as 'b h n d -> b n (h d)'.
        let o = o.transpose(1, 2)?.reshape((b, nq, h * dh))?;
        self.to_out.forward(&o)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu_f32::testing::{check_op, values};

    /// Slow reference: explicit `(q kᵀ)·scale` (optionally softmaxed) times `v`.
    fn reference(
        all: &[f64],
        [b, h, nq, nk, dh]: [usize; 5],
        scale: f64,
        softmax: bool,
    ) -> Vec<f64> {
        let (q, kv) = all.split_at(b * h * nq * dh);
        let (k, v) = kv.split_at(b * h * nk * dh);
        let mut out = vec![0.0; q.len()];
        for bh in 0..b * h {
            for i in 0..nq {
                let qi = &q[(bh * nq + i) * dh..(bh * nq + i + 1) * dh];
                let mut s: Vec<f64> = (0..nk)
                    .map(|j| {
                        let kj = &k[(bh * nk + j) * dh..(bh * nk + j + 1) * dh];
                        qi.iter().zip(kj).map(|(a, b)| a * b).sum::<f64>() * scale
                    })
                    .collect();
                if softmax {
                    let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let z: f64 = s.iter().map(|v| (v - m).exp()).sum();
                    s.iter_mut().for_each(|v| *v = (*v - m).exp() / z);
                }
                for (j, p) in s.iter().enumerate() {
                    for e in 0..dh {
                        out[(bh * nq + i) * dh + e] += p * v[(bh * nk + j) * dh + e];
                    }
                }
            }
        }
        out
    }

    #[test]
    fn both_variants_match_reference_with_gradients() {
        let (b, h, nq, nk, dh) = (2, 3, 11, 5, 4);
        let q = values(b * h * nq * dh, 21);
        let k = values(b * h * nk * dh, 22);
        let v = values(b * h * nk * dh, 23);
        for (variant, softmax) in
            [(AttentionVariant::NoSoftmax, false), (AttentionVariant::Softmax, true)]
        {
            check_op(
                &[(&q, &[b, h, nq, dh]), (&k, &[b, h, nk, dh]), (&v, &[b, h, nk, dh])],
                &|t| cross_attention(&t[0], &t[1], &t[2], 0.5, variant),
                &|a| reference(a, [b, h, nq, nk, dh], 0.5, softmax),
                1e-4,
            );
        }
    }

    #[test]
    fn composed_softmax_path_matches_reference_with_gradients() {
        let (b, h, nq, nk, dh) = (1, 2, 300, 6, 3);
        let q = values(b * h * nq * dh, 31);
        let k = values(b * h * nk * dh, 32);
        let v = values(b * h * nk * dh, 33);
        check_op(
            &[(&q, &[b, h, nq, dh]), (&k, &[b, h, nk, dh]), (&v, &[b, h, nk, dh])],
            &|t| softmax_composed(&t[0], &t[1], &t[2], 0.7),
            &|a| reference(a, [b, h, nq, nk, dh], 0.7, true),
            1e-4,
        );
        // The fused CPU op, with more queries than one block.
        check_op(
            &[(&q, &[b, h, nq, dh]), (&k, &[b, h, nk, dh]), (&v, &[b, h, nk, dh])],
            &|t| cross_attention(&t[0], &t[1], &t[2], 0.7, AttentionVariant::Softmax),
            &|a| reference(a, [b, h, nq, nk, dh], 0.7, true),
            1e-4,
        );
    }

    #[test]
    fn mismatched_shapes_are_errors() {
        let dev = candle_core::Device::Cpu;
        let q = Tensor::zeros((1, 2, 5, 4), DType::F32, &dev).unwrap();
        let k = Tensor::zeros((1, 2, 3, 8), DType::F32, &dev).unwrap();
        assert!(cross_attention(&q, &k, &k, 1.0, AttentionVariant::Softmax).is_err());
        // Mixed dtypes, and dtypes other than f32 and bf16.
        let kb = Tensor::zeros((1, 2, 3, 4), DType::BF16, &dev).unwrap();
        let e = cross_attention(&q, &kb, &kb, 1.0, AttentionVariant::NoSoftmax).unwrap_err();
        assert!(e.to_string().contains("alike"), "{e}");
        let q64 = q.to_dtype(DType::F64).unwrap();
        let k64 = kb.to_dtype(DType::F64).unwrap();
        assert!(cross_attention(&q64, &k64, &k64, 1.0, AttentionVariant::NoSoftmax).is_err());
    }

    /// bf16 on the CPU: the f32 result of the same (bf16) values, rounded to bf16, in both
    /// variants, with gradients back to bf16 variables.
    #[test]
    fn bf16_runs_through_f32_and_rounds() {
        let dev = candle_core::Device::Cpu;
        let (b, h, nq, nk, dh) = (1, 2, 7, 3, 4);
        let mk = |n: usize| {
            Tensor::randn(0f32, 1.0, (b, h, n, dh), &dev).unwrap().to_dtype(DType::BF16).unwrap()
        };
        let (q, k, v) = (mk(nq), mk(nk), mk(nk));
        let up = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
        for variant in [AttentionVariant::NoSoftmax, AttentionVariant::Softmax] {
            let got = cross_attention(&q, &k, &v, 0.5, variant).unwrap();
            assert_eq!(got.dtype(), DType::BF16);
            let want = cross_attention(&up(&q), &up(&k), &up(&v), 0.5, variant)
                .unwrap()
                .to_dtype(DType::BF16)
                .unwrap();
            let (g, w) = (up(&got).flatten_all().unwrap(), up(&want).flatten_all().unwrap());
            assert_eq!(g.to_vec1::<f32>().unwrap(), w.to_vec1::<f32>().unwrap(), "{variant:?}");
            let qv = candle_core::Var::from_tensor(&q).unwrap();
            let grads = cross_attention(qv.as_tensor(), &k, &v, 0.5, variant)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            assert_eq!(grads.get(&qv).unwrap().dtype(), DType::BF16, "{variant:?}");
        }
    }
}
