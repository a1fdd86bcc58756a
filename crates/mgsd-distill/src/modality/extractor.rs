//! The per-modality token extractor `MMD.extra_fea` (MGSD-SPEC §5).
//!
//! Applied to one modality channel `(N, 1, D, H, W)`: `conv1` (Conv3d 1→4, k3 p1), `gn1`
//! (GroupNorm(4, 4)) + ReLU, adaptive average pooling to the token grid `G` → `res`; `conv2`
//! (4→4, k1); `conv3` (4→4, k3 p1); `gn3` of `(that + res)` + ReLU; `conv4` (4→32, k1) →
//! `(N, 32, G)`. The reference also builds `gn2` and never uses it: its parameters are created
//! here too, so a reference `state_dict` loads and saves back unchanged.
//!
//! The token grid is `G = patch / 32` per axis, derived from the input, never hard-coded
//! (5 × 6 × 4 for the reference's 160 × 192 × 128). When an axis is not a multiple of 32 the
//! grid is `⌊len/32⌋` (at least 1) and the adaptive pooling uses PyTorch's overlapping bins
//! `[⌊i·len/G⌋, ⌈(i+1)·len/G⌉)`, e.g. an 80-voxel axis gives 2 tokens of 40 voxels each.

use candle_core::{bail, Module, Result, Tensor};
use candle_nn::VarBuilder;
use mgsd_nn::adaptive_pool::adaptive_avg_pool3d;
use mgsd_nn::conv3d::{conv3d, Conv3d, Conv3dConfig};
use mgsd_nn::group_norm::GroupNorm;

use super::decoder::TOKEN_DIM;

/// Width of the extractor's hidden layers (the reference's `in_channels · 4`).
const MID: usize = 4;

/// The token grid for a volume of spatial size `dhw`: `max(1, ⌊len/32⌋)` per axis.
pub fn token_grid(dhw: [usize; 3]) -> [usize; 3] {
    dhw.map(|n| (n / 32).max(1))
}

/// `MMD.extra_fea`.
#[derive(Clone, Debug)]
pub struct TokenExtractor {
    conv1: Conv3d,
    gn1: GroupNorm,
    conv2: Conv3d,
    /// Created for state_dict compatibility; the reference never applies it.
    gn2: GroupNorm,
    conv3: Conv3d,
    gn3: GroupNorm,
    conv4: Conv3d,
}

impl TokenExtractor {
    /// Creates or loads the layers under `vb` (`conv1`, `gn1`, `conv2`, `gn2`, `conv3`, `gn3`,
    /// `conv4`).
    pub fn new(vb: VarBuilder<'_>) -> Result<Self> {
        let k3 = Conv3dConfig::cube(3).padding(1);
        let k1 = Conv3dConfig::cube(1);
        Ok(Self {
            conv1: conv3d(1, MID, k3, vb.pp("conv1"))?,
            gn1: GroupNorm::new(MID, MID, vb.pp("gn1"))?,
            conv2: conv3d(MID, MID, k1, vb.pp("conv2"))?,
            gn2: GroupNorm::new(MID, MID, vb.pp("gn2"))?,
            conv3: conv3d(MID, MID, k3, vb.pp("conv3"))?,
            gn3: GroupNorm::new(MID, MID, vb.pp("gn3"))?,
            conv4: conv3d(MID, TOKEN_DIM, k1, vb.pp("conv4"))?,
        })
    }

    /// The unused `gn2` (kept so checkpoints round-trip).
    pub fn unused_gn2(&self) -> &GroupNorm {
        &self.gn2
    }

    /// Tokens of single-modality volumes.
    ///
    /// # Shapes
    /// `(N, 1, D, H, W)` → `(N, 32, g0, g1, g2)` with `[g0, g1, g2] = token_grid([D, H, W])`.
    pub fn forward(&self, xm: &Tensor) -> Result<Tensor> {
        let (_, c, d, h, w) = xm.dims5()?;
        if c != 1 {
            bail!("extra_fea: expects one modality (N, 1, D, H, W), got {:?}", xm.shape());
        }
        let grid = token_grid([d, h, w]);
        let a = self.gn1.forward_relu(&self.conv1.forward(xm)?)?;
        let res = adaptive_avg_pool3d(&a, grid)?;
        // conv3(conv2(res)) + res, the addition fused into the convolution.
        let y = self.conv3.forward_add(&self.conv2.forward(&res)?, &res)?;
        self.conv4.forward(&self.gn3.forward_relu(&y)?)
    }

    /// Tokens of each of the four modalities of `x`, the modalities batched together.
    ///
    /// # Shapes
    /// `(B, 4, D, H, W)` → 4 × `(B, 32, g0, g1, g2)`.
    pub fn forward_modalities(&self, x: &Tensor) -> Result<Vec<Tensor>> {
        let (b, m, d, h, w) = x.dims5()?;
        // (B, 4, D, H, W) → (B·4, 1, D, H, W): a free reshape, each modality its own sample.
        let t = self.forward(&x.reshape((b * m, 1, d, h, w))?)?;
        let (_, k, g0, g1, g2) = t.dims5()?;
        // (B·4, 32, G) → (B, 4, 32, G) → 4 × (B, 32, G)
        let t = t.reshape((b, m, k, g0, g1 * g2))?;
        (0..m).map(|i| t.narrow(1, i, 1)?.reshape((b, k, g0, g1, g2))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_follows_the_patch() {
        assert_eq!(token_grid([160, 192, 128]), [5, 6, 4]);
        assert_eq!(token_grid([64, 64, 32]), [2, 2, 1]);
        assert_eq!(token_grid([80, 80, 80]), [2, 2, 2]);
        assert_eq!(token_grid([16, 24, 8]), [1, 1, 1]);
    }
}
