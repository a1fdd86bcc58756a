//! The one-layer "transformer decoder" of MGSD's modality level (MGSD-SPEC §5) and the token
//! layouts around it.
//!
//! Two forms of the layer ([`ModalityAttention`]), with the same parameters, so a checkpoint
//! loads into either:
//! - `Reference` (the default): the reference's decoder layer applies only its cross-attention
//!   (`layers.0.0`: 32 → 16 heads × 32, scale `32^-0.5`, no softmax; [`mgsd_nn::CrossAttention`]).
//!   It also constructs a PreNorm feed-forward `layers.0.1` (LayerNorm(32), Linear 32→128, GELU,
//!   Linear 128→32) that it never calls; its parameters are created here so a reference
//!   `state_dict` loads and saves back unchanged, and they never receive a gradient.
//! - `Prenorm`: the standard pre-norm decoder layer that constructor suggests,
//!   `h = x + A(LN(x), LN(m))`, `out = h + FF(h)` with `FF = layers.0.1` (its own affine
//!   LayerNorm, Linear, exact GELU, Linear). The LayerNorms before the attention have no
//!   parameters (the reference has none to give them); normalising the memory as well as the
//!   queries bounds the scale of the softmax-free attention, which is cubic in its inputs.
//!   The residuals keep the signal alive: at initialisation the layer is close to the identity
//!   instead of a product of three small numbers.
//!
//! Every LayerNorm is composed from differentiable candle ops ([`layer_norm`]): candle-nn's
//! fused LayerNorm has no backward on contiguous input.
//!
//! Token layouts — reproduced exactly, because they change results (not weights):
//! - a volume `(B, 32, s0, s1, s2)` becomes query tokens by a permute, `b c h w a → b (h w a) c`
//!   ([`volume_to_tokens`]), and back by its inverse ([`tokens_to_volume`]);
//! - a modality's tokens `(B, 32, G)` become memory tokens by a **raw row-major reshape** to
//!   `(B, |G|, 32)` ([`raw_tokens`], the reference's `.view([1, -1, 32])`), NOT a transpose: row
//!   `j` of the memory holds 32 consecutive elements of the channel-major buffer.

use candle_core::{bail, Result, Tensor, D};
use candle_nn::{Init, VarBuilder};
use mgsd_nn::{CrossAttention, CrossAttentionConfig};
use serde::{Deserialize, Serialize};

/// Token width of the modality level.
pub const TOKEN_DIM: usize = 32;

/// Hidden width of the feed-forward `layers.0.1`.
const MLP_DIM: usize = 128;

/// ε of every LayerNorm (PyTorch's default).
pub const LAYER_NORM_EPS: f64 = 1e-5;

/// Which decoder layer the modality level applies (`[model] modality_attention`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModalityAttention {
    /// The reference: the softmax-free cross-attention alone.
    #[default]
    Reference,
    /// Pre-norm attention with residual, then the feed-forward `layers.0.1` with residual.
    Prenorm,
}

impl ModalityAttention {
    /// The configuration name (`reference`, `prenorm`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Reference => "reference",
            Self::Prenorm => "prenorm",
        }
    }
}

/// LayerNorm over the last axis, `(x − mean) / √(var + ε)` (biased variance, as PyTorch), then
/// `· weight + bias` when given; composed from differentiable ops.
///
/// # Shapes
/// `(…, C)` → `(…, C)`; `weight`, `bias`: `(C)`.
pub fn layer_norm(x: &Tensor, affine: Option<(&Tensor, &Tensor)>) -> Result<Tensor> {
    let mean = x.mean_keepdim(D::Minus1)?;
    let centred = x.broadcast_sub(&mean)?;
    let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
    let normed = centred.broadcast_div(&(var + LAYER_NORM_EPS)?.sqrt()?)?;
    match affine {
        Some((w, b)) => normed.broadcast_mul(w)?.broadcast_add(b),
        None => Ok(normed),
    }
}

/// `layers.0.1`: `PreNorm(LayerNorm(32), Linear 32→128, GELU, Linear 128→32)`.
#[derive(Clone, Debug)]
struct FeedForward {
    norm: [Tensor; 2],
    lin0: [Tensor; 2],
    lin3: [Tensor; 2],
}

impl FeedForward {
    /// `net.3(gelu(net.0(norm(x))))`, `(B, N, 32)` → `(B, N, 32)`.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let n = layer_norm(x, Some((&self.norm[0], &self.norm[1])))?;
        let lin = |x: &Tensor, [w, b]: &[Tensor; 2]| x.broadcast_matmul(&w.t()?)?.broadcast_add(b);
        lin(&lin(&n, &self.lin0)?.gelu_erf()?, &self.lin3)
    }

    fn parameters(&self) -> [&Tensor; 6] {
        let [a, b] = &self.norm;
        let [c, d] = &self.lin0;
        let [e, f] = &self.lin3;
        [a, b, c, d, e, f]
    }
}

/// Query tokens of a volume: `(B, C, s0, s1, s2)` → `(B, s0·s1·s2, C)` (a permute).
pub fn volume_to_tokens(v: &Tensor) -> Result<Tensor> {
    let (b, c, s0, s1, s2) = v.dims5()?;
    // (B, C, S) → (B, S, C)
    v.reshape((b, c, s0 * s1 * s2))?.transpose(1, 2)?.contiguous()
}

/// Inverse of [`volume_to_tokens`]: `(B, S, C)` → `(B, C, s0, s1, s2)`.
pub fn tokens_to_volume(t: &Tensor, spatial: [usize; 3]) -> Result<Tensor> {
    let (b, s, c) = t.dims3()?;
    if s != spatial.iter().product::<usize>() {
        bail!("tokens_to_volume: {:?} tokens do not fill {spatial:?}", t.shape());
    }
    // (B, S, C) → (B, C, S) → (B, C, s0, s1, s2)
    t.transpose(1, 2)?.contiguous()?.reshape((b, c, spatial[0], spatial[1], spatial[2]))
}

/// Memory tokens by the reference's raw reshape: `(B, 32, g0, g1, g2)` reinterpreted row-major as
/// `(B, g0·g1·g2, 32)`. Deliberately not a transpose (MGSD-SPEC §5).
pub fn raw_tokens(t: &Tensor) -> Result<Tensor> {
    let b = t.dim(0)?;
    let n = t.elem_count() / b.max(1);
    if t.dim(1)? != TOKEN_DIM || !n.is_multiple_of(TOKEN_DIM) {
        bail!("raw_tokens: {:?} is not (B, {TOKEN_DIM}, G)", t.shape());
    }
    // (B, 32, G) → (B, |G|, 32), same buffer.
    t.contiguous()?.reshape((b, n / TOKEN_DIM, TOKEN_DIM))
}

/// `transformer_decoder` with one layer: `layers.0.0` (the attention) and `layers.0.1` (the
/// feed-forward, applied only by [`ModalityAttention::Prenorm`]).
#[derive(Clone, Debug)]
pub struct TokenDecoder {
    attn: CrossAttention,
    feed_forward: FeedForward,
    variant: ModalityAttention,
}

impl TokenDecoder {
    /// Creates or loads `transformer_decoder.layers.0.{0,1}.*` under `vb`; the same parameters
    /// for both variants.
    pub fn new(variant: ModalityAttention, vb: VarBuilder<'_>) -> Result<Self> {
        let layer = vb.pp("transformer_decoder").pp("layers").pp("0");
        let attn = CrossAttention::new(CrossAttentionConfig::mgsd(), layer.pp("0"))?;
        let ff = layer.pp("1");
        let lin = |vb: &VarBuilder<'_>, i: usize, o: usize| -> Result<[Tensor; 2]> {
            let bound = 1.0 / (i as f64).sqrt();
            let init = Init::Uniform { lo: -bound, up: bound };
            Ok([vb.get_with_hints((o, i), "weight", init)?, vb.get_with_hints(o, "bias", init)?])
        };
        let net = ff.pp("fn").pp("net");
        let [w0, b0] = lin(&net.pp("0"), TOKEN_DIM, MLP_DIM)?;
        let [w3, b3] = lin(&net.pp("3"), MLP_DIM, TOKEN_DIM)?;
        let feed_forward = FeedForward {
            norm: [
                ff.pp("norm").get_with_hints(TOKEN_DIM, "weight", Init::Const(1.0))?,
                ff.pp("norm").get_with_hints(TOKEN_DIM, "bias", Init::Const(0.0))?,
            ],
            lin0: [w0, b0],
            lin3: [w3, b3],
        };
        Ok(Self { attn, feed_forward, variant })
    }

    /// Which layer [`Self::forward`] computes.
    pub fn variant(&self) -> ModalityAttention {
        self.variant
    }

    /// The parameters of the feed-forward `layers.0.1` (never applied by the reference).
    pub fn feed_forward_parameters(&self) -> [&Tensor; 6] {
        self.feed_forward.parameters()
    }

    /// The decoder layer on `(B, Nq, 32)` queries and `(B, Nk, 32)` memory → `(B, Nq, 32)`.
    /// `Reference`: `A(x, m)` only — no residual, no norm, no feed-forward. `Prenorm`:
    /// `h = x + A(LN(x), LN(m))`, `h + FF(h)`.
    pub fn forward(&self, x: &Tensor, memory: &Tensor) -> Result<Tensor> {
        match self.variant {
            ModalityAttention::Reference => self.attn.forward(x, memory),
            ModalityAttention::Prenorm => {
                let a = self.attn.forward(&layer_norm(x, None)?, &layer_norm(memory, None)?)?;
                let h = (x + a)?;
                &h + self.feed_forward.forward(&h)?
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn raw_reshape_is_not_a_transpose() -> Result<()> {
        // (1, 32, 2, 1, 1): channel k holds 10k, 10k+1 at the two grid cells.
        let v: Vec<f32> = (0..32).flat_map(|k| [10.0 * k as f32, 10.0 * k as f32 + 1.0]).collect();
        let t = Tensor::from_vec(v, (1, 32, 2, 1, 1), &Device::Cpu)?;
        let raw = raw_tokens(&t)?;
        assert_eq!(raw.dims(), [1, 2, 32]);
        let row0 = raw.get(0)?.get(0)?.to_vec1::<f32>()?;
        // Row 0 = the first 32 buffer elements: channels 0..16, both cells interleaved.
        assert_eq!(row0[..4], [0.0, 1.0, 10.0, 11.0]);
        let tr = volume_to_tokens(&t)?;
        assert_eq!(tr.get(0)?.get(0)?.to_vec1::<f32>()?[..3], [0.0, 10.0, 20.0]);
        Ok(())
    }

    #[test]
    fn layer_norm_matches_the_definition() -> Result<()> {
        let x = Tensor::new(&[[1f32, 2.0, 3.0, 6.0]], &Device::Cpu)?;
        let w = Tensor::new(&[2f32, 2.0, 2.0, 2.0], &Device::Cpu)?;
        let b = Tensor::new(&[1f32, 1.0, 1.0, 1.0], &Device::Cpu)?;
        let got = layer_norm(&x, Some((&w, &b)))?.flatten_all()?.to_vec1::<f32>()?;
        // mean 3, biased variance 3.5
        let s = (3.5f64 + LAYER_NORM_EPS).sqrt();
        for (g, v) in got.iter().zip([1.0, 2.0, 3.0, 6.0]) {
            assert!((*g as f64 - (2.0 * (v - 3.0) / s + 1.0)).abs() < 1e-6);
        }
        Ok(())
    }

    #[test]
    fn prenorm_is_differentiable_everywhere() -> Result<()> {
        let vm = candle_nn::VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, candle_core::DType::F32, &Device::Cpu);
        let dec = TokenDecoder::new(ModalityAttention::Prenorm, vb)?;
        let x =
            candle_core::Var::from_tensor(&Tensor::randn(0f32, 1.0, (1, 6, 32), &Device::Cpu)?)?;
        let m =
            candle_core::Var::from_tensor(&Tensor::randn(0f32, 1.0, (1, 3, 32), &Device::Cpu)?)?;
        let out = dec.forward(&x, &m)?;
        let loss = (out.sqr()?.sum_all()? + out.sum_all()?)?;
        let g = loss.backward()?;
        let mut all: Vec<Tensor> = vm.all_vars().iter().map(|v| v.as_tensor().clone()).collect();
        all.extend([x.as_tensor().clone(), m.as_tensor().clone()]);
        assert_eq!(all.len(), 5 + 6 + 2);
        for t in &all {
            let n = g.get(t).map(|g| g.abs()?.sum_all()?.to_scalar::<f32>()).transpose()?;
            assert!(n.is_some_and(|n| n > 0.0), "no gradient for a {:?} tensor", t.shape());
        }
        Ok(())
    }

    #[test]
    fn permute_round_trip() -> Result<()> {
        let t = Tensor::randn(0f32, 1.0, (2, 32, 3, 2, 4), &Device::Cpu)?;
        let back = tokens_to_volume(&volume_to_tokens(&t)?, [3, 2, 4])?;
        assert_eq!(back.flatten_all()?.to_vec1::<f32>()?, t.flatten_all()?.to_vec1::<f32>()?);
        Ok(())
    }
}
