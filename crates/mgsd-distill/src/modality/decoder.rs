//! The one-layer "transformer decoder" of MGSD's modality level (MGSD-SPEC §5) and the token
//! layouts around it.
//!
//! The reference's decoder layer applies only its cross-attention (`layers.0.0`: 32 → 16 heads
//! × 32, scale `32^-0.5`, no softmax; [`mgsd_nn::CrossAttention`]). It also constructs a
//! PreNorm feed-forward `layers.0.1` (LayerNorm(32), Linear 32→128, GELU, Linear 128→32) that it
//! never calls; its parameters are created here so a reference `state_dict` loads and saves
//! back unchanged, and they never receive a gradient.
//!
//! Token layouts — reproduced exactly, because they change results (not weights):
//! - a volume `(B, 32, s0, s1, s2)` becomes query tokens by a permute, `b c h w a → b (h w a) c`
//!   ([`volume_to_tokens`]), and back by its inverse ([`tokens_to_volume`]);
//! - a modality's tokens `(B, 32, G)` become memory tokens by a **raw row-major reshape** to
//!   `(B, |G|, 32)` ([`raw_tokens`], the reference's `.view([1, -1, 32])`), NOT a transpose: row
//!   `j` of the memory holds 32 consecutive elements of the channel-major buffer.

use candle_core::{bail, Result, Tensor};
use candle_nn::{Init, VarBuilder};
use mgsd_nn::{CrossAttention, CrossAttentionConfig};

/// Token width of the modality level.
pub const TOKEN_DIM: usize = 32;

/// Hidden width of the unused feed-forward.
const MLP_DIM: usize = 128;

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

/// `transformer_decoder` with one layer: `layers.0.0` applied, `layers.0.1` only stored.
#[derive(Clone, Debug)]
pub struct TokenDecoder {
    attn: CrossAttention,
    unused_feed_forward: Vec<Tensor>,
}

impl TokenDecoder {
    /// Creates or loads `transformer_decoder.layers.0.{0,1}.*` under `vb`.
    pub fn new(vb: VarBuilder<'_>) -> Result<Self> {
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
        let unused_feed_forward = vec![
            ff.pp("norm").get_with_hints(TOKEN_DIM, "weight", Init::Const(1.0))?,
            ff.pp("norm").get_with_hints(TOKEN_DIM, "bias", Init::Const(0.0))?,
            w0,
            b0,
            w3,
            b3,
        ];
        Ok(Self { attn, unused_feed_forward })
    }

    /// The parameters of the never-applied feed-forward `layers.0.1`.
    pub fn unused_parameters(&self) -> &[Tensor] {
        &self.unused_feed_forward
    }

    /// `A(x, m)`: `(B, Nq, 32)` queries, `(B, Nk, 32)` memory → `(B, Nq, 32)`. Attention only:
    /// no residual, no norm, no feed-forward, as the reference.
    pub fn forward(&self, x: &Tensor, memory: &Tensor) -> Result<Tensor> {
        self.attn.forward(x, memory)
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
    fn permute_round_trip() -> Result<()> {
        let t = Tensor::randn(0f32, 1.0, (2, 32, 3, 2, 4), &Device::Cpu)?;
        let back = tokens_to_volume(&volume_to_tokens(&t)?, [3, 2, 4])?;
        assert_eq!(back.flatten_all()?.to_vec1::<f32>()?, t.flatten_all()?.to_vec1::<f32>()?);
        Ok(())
    }
}
