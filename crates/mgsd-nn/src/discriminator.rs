//! The style discriminator of MGSD (MGSD-SPEC §6): a small 3-D PatchGAN on the 3-channel
//! sigmoid output of the U-Net, giving a map of logits.
//!
//! Layers and parameter paths follow the reference's `nn.Sequential`: `0` Conv3d 3→64 k4 s2 p1,
//! `1` LeakyReLU 0.2, `2` Conv3d 64→128 k4 s2 p1, `3` LeakyReLU, `4` Conv3d 128→256 k4 s2 p1,
//! `5` LeakyReLU, `6` Conv3d 256→1 kernel (2, 3, 2) s1 p0.

use candle_core::{bail, Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::activation::leaky_relu;
use crate::conv3d::{conv3d, Conv3d, Conv3dConfig};

/// Negative slope of the LeakyReLUs.
const SLOPE: f32 = 0.2;

/// The style discriminator `D`.
///
/// # Shapes
/// `(N, 3, D, H, W)` → `(N, 1, D/8 − 1, H/8 − 2, W/8 − 1)` logits (for sizes divisible by 8;
/// in general each k4 s2 p1 stage maps `s` to `⌊s/2⌋`).
#[derive(Debug, Clone)]
pub struct StyleDiscriminator {
    convs: [Conv3d; 3],
    head: Conv3d,
}

impl StyleDiscriminator {
    /// Creates or loads the discriminator for `in_channels` inputs (3 in MGSD).
    pub fn new(in_channels: usize, vb: VarBuilder<'_>) -> Result<Self> {
        let down = Conv3dConfig::cube(4).stride(2).padding(1);
        let head = Conv3dConfig { kernel: [2, 3, 2], ..Conv3dConfig::cube(1) };
        Ok(Self {
            convs: [
                conv3d(in_channels, 64, down, vb.pp("0"))?,
                conv3d(64, 128, down, vb.pp("2"))?,
                conv3d(128, 256, down, vb.pp("4"))?,
            ],
            head: conv3d(256, 1, head, vb.pp("6"))?,
        })
    }
}

impl Module for StyleDiscriminator {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims();
        if dims.len() != 5 || dims[2] < 16 || dims[3] < 24 || dims[4] < 16 {
            bail!("StyleDiscriminator: input {dims:?} must be (N, C, D ≥ 16, H ≥ 24, W ≥ 16) for the (2, 3, 2) head after three halvings")
        }
        let mut h = x.clone();
        for conv in &self.convs {
            h = leaky_relu(&conv.forward(&h)?, SLOPE)?;
        }
        self.head.forward(&h)
    }
}
