//! The pre-activation residual block of the ACN-style U-Net (MGSD-SPEC §2):
//! GroupNorm → ReLU → Conv3d(3, pad 1) → GroupNorm → ReLU → Conv3d(3, pad 1), plus the input.
//!
//! Each GroupNorm + ReLU pair is one fused op, and the residual is added inside the second
//! convolution, so the block materialises four tensors instead of seven.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::conv3d::{conv3d, Conv3d, Conv3dConfig};
use crate::group_norm::GroupNorm;

/// `BasicBlock(n)` with the reference's attribute names `gn1`, `conv1`, `gn2`, `conv2`.
///
/// # Shapes
/// `(N, n, D, H, W)` → `(N, n, D, H, W)`.
#[derive(Debug, Clone)]
pub struct BasicBlock {
    gn1: GroupNorm,
    conv1: Conv3d,
    gn2: GroupNorm,
    conv2: Conv3d,
}

impl BasicBlock {
    /// Creates or loads the block for `channels` channels, GroupNorm with `groups` groups.
    pub fn new(channels: usize, groups: usize, vb: VarBuilder<'_>) -> Result<Self> {
        let cfg = Conv3dConfig::cube(3).padding(1);
        Ok(Self {
            gn1: GroupNorm::new(groups, channels, vb.pp("gn1"))?,
            conv1: conv3d(channels, channels, cfg, vb.pp("conv1"))?,
            gn2: GroupNorm::new(groups, channels, vb.pp("gn2"))?,
            conv2: conv3d(channels, channels, cfg, vb.pp("conv2"))?,
        })
    }
}

impl Module for BasicBlock {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // Scoped so each intermediate is freed as soon as the next one exists (without a
        // graph, inference holds at most three block-sized tensors).
        let g2 = {
            let h = self.conv1.forward(&self.gn1.forward_relu(x)?)?;
            self.gn2.forward_relu(&h)?
        };
        self.conv2.forward_add(&g2, x)
    }
}
