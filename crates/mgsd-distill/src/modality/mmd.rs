//! The modality-level loss `L_mod` (`MMD` of the reference, MGSD-SPEC §5).
//!
//! 1. Tokens per modality ([`TokenExtractor`]): the teacher side from the full `x`, the student
//!    side from the masked `x·r`.
//! 2. `conv_down` (Conv3d 8c → 32, k1) of the student's two style maps, `style_f = unet(x).style`
//!    and `style_m = unet(x·r).style`, `(B, 32, S)`, `S = patch/8`.
//! 3. `get_modality_tokens`: for each modality `i`, the style voxels as queries (a permute) attend
//!    to that modality's tokens (a **raw reshape**, see [`super::decoder`]) and the result is laid
//!    back out as `(B, 32, S)`: a block `B_i^full` (full style, teacher tokens) and `B_i^miss`
//!    (missing style, student tokens).
//! 4. `nonmiss_encode` / `miss_encode`, each `E(x, xq) = A(tokens(x), raw(pool(xq, G)))`; for a
//!    present modality `mse(E_n(B^full, B^miss), E_n(B^miss, B^full))`, averaged over present
//!    modalities; for a missing one the same with `E_m`, averaged over missing ones.
//! 5. `L_mod = 0.6·present + 0.4·missing`.
//!
//! Differences from the reference, both invisible on the masks it draws: an empty group (the
//! full mask, which only the uniform or fixed samplers can produce) contributes 0 instead of the
//! reference's 0/0; and a present modality's student tokens are the teacher's tokens (the inputs
//! are identical, `x_i·1 = x_i`), while all missing modalities share one extraction of a zero
//! volume — the same values and gradients as the reference's eight separate extractions.

use candle_core::{bail, Module, Result, Tensor};
use candle_nn::VarBuilder;
use mgsd_nn::adaptive_pool::adaptive_avg_pool3d;
use mgsd_nn::conv3d::{conv3d, Conv3d, Conv3dConfig};

use super::decoder::{
    raw_tokens, tokens_to_volume, volume_to_tokens, ModalityAttention, TokenDecoder, TOKEN_DIM,
};
use super::extractor::{token_grid, TokenExtractor};
use crate::losses::mse;
use crate::sampler::{ModalityMask, NUM_MODALITIES};

/// Weight of the present-modality group (the reference's `alpha`); missing gets `1 − α`.
pub const PRESENT_WEIGHT: f64 = 0.6;

/// `MMD.*`: the modules of the modality level and its loss.
#[derive(Clone, Debug)]
pub struct ModalityDistillation {
    extra_fea: TokenExtractor,
    conv_down: Conv3d,
    get_modality_tokens: TokenDecoder,
    nonmiss_encode: TokenDecoder,
    miss_encode: TokenDecoder,
    present_weight: f64,
}

impl ModalityDistillation {
    /// Creates or loads `MMD.*` (pass `vb.pp("MMD")`) for a U-Net of width `c` (style maps of
    /// `8c` channels); `present_weight` is α (0.6 in the reference); `attention` the form of
    /// the three decoder layers (same parameters either way).
    pub fn new(
        c: usize,
        present_weight: f64,
        attention: ModalityAttention,
        vb: VarBuilder<'_>,
    ) -> Result<Self> {
        let decoder = |name: &str| TokenDecoder::new(attention, vb.pp(name));
        Ok(Self {
            miss_encode: decoder("miss_encode")?,
            nonmiss_encode: decoder("nonmiss_encode")?,
            extra_fea: TokenExtractor::new(vb.pp("extra_fea"))?,
            get_modality_tokens: decoder("get_modality_tokens")?,
            conv_down: conv3d(8 * c, TOKEN_DIM, Conv3dConfig::cube(1), vb.pp("conv_down"))?,
            present_weight,
        })
    }

    /// The token extractor.
    pub fn extractor(&self) -> &TokenExtractor {
        &self.extra_fea
    }

    /// The three decoder layers (`get_modality_tokens`, `nonmiss_encode`, `miss_encode`).
    pub fn decoders(&self) -> [&TokenDecoder; 3] {
        [&self.get_modality_tokens, &self.nonmiss_encode, &self.miss_encode]
    }

    /// `get_modality_tokens`: one `(B, 32, s0, s1, s2)` block per modality from a reduced style
    /// map `(B, 32, s0, s1, s2)` and the modalities' tokens `(B, 32, G)`.
    pub fn modality_blocks(&self, style: &Tensor, tokens: &[Tensor]) -> Result<Vec<Tensor>> {
        let (_, _, s0, s1, s2) = style.dims5()?;
        let q = volume_to_tokens(style)?;
        tokens
            .iter()
            .map(|t| {
                let out = self.get_modality_tokens.forward(&q, &raw_tokens(t)?)?;
                tokens_to_volume(&out, [s0, s1, s2])
            })
            .collect()
    }

    /// `E(x, xq) = A(tokens(x), raw(pool(xq, G)))` of one of the two attention modules:
    /// `(B, 32, S)` twice → `(B, |S|, 32)`.
    pub fn mutual(
        encoder: &TokenDecoder,
        x: &Tensor,
        xq: &Tensor,
        grid: [usize; 3],
    ) -> Result<Tensor> {
        let memory = raw_tokens(&adaptive_avg_pool3d(xq, grid)?)?;
        encoder.forward(&volume_to_tokens(x)?, &memory)
    }

    /// `L_mod` for the style maps `style_f` (of `unet(x)`) and `style_m` (of `unet(x·r)`), the
    /// full input `x` and the mask `r`.
    ///
    /// # Shapes
    /// `style_*`: `(B, 8c, D/8, H/8, W/8)`, `x`: `(B, 4, D, H, W)` → scalar.
    pub fn loss(
        &self,
        style_f: &Tensor,
        style_m: &Tensor,
        x: &Tensor,
        r: &ModalityMask,
    ) -> Result<Tensor> {
        let (b, m, d, h, w) = x.dims5()?;
        if m != NUM_MODALITIES || style_f.shape() != style_m.shape() {
            bail!(
                "MMD: x {:?} must be (B, 4, D, H, W), styles {:?} / {:?} equal",
                x.shape(),
                style_f.shape(),
                style_m.shape()
            );
        }
        let grid = token_grid([d, h, w]);
        let teacher_tokens = self.extra_fea.forward_modalities(x)?;
        let student_tokens: Vec<Tensor> = if r.is_full() {
            teacher_tokens.clone()
        } else {
            let zero =
                self.extra_fea.forward(&Tensor::zeros((b, 1, d, h, w), x.dtype(), x.device())?)?;
            (0..m)
                .map(|i| if r.is_present(i) { teacher_tokens[i].clone() } else { zero.clone() })
                .collect()
        };
        let full = self.modality_blocks(&self.conv_down.forward(style_f)?, &teacher_tokens)?;
        let miss = self.modality_blocks(&self.conv_down.forward(style_m)?, &student_tokens)?;

        let (mut present, mut missing) = (Vec::new(), Vec::new());
        for i in 0..m {
            let (enc, group) = if r.is_present(i) {
                (&self.nonmiss_encode, &mut present)
            } else {
                (&self.miss_encode, &mut missing)
            };
            let t = Self::mutual(enc, &full[i], &miss[i], grid)?;
            let s = Self::mutual(enc, &miss[i], &full[i], grid)?;
            group.push(mse(&t, &s)?);
        }
        let mean = |v: Vec<Tensor>| -> Result<Option<Tensor>> {
            let n = v.len();
            if n == 0 {
                return Ok(None);
            }
            Ok(Some((Tensor::stack(&v, 0)?.sum_all()? / n as f64)?))
        };
        let a = self.present_weight;
        match (mean(present)?, mean(missing)?) {
            (Some(p), Some(q)) => (p * a)? + (q * (1.0 - a))?,
            (Some(p), None) => p * a,
            (None, Some(q)) => q * (1.0 - a),
            (None, None) => bail!("MMD: no modality"),
        }
    }
}
