//! Feature-level distillation: multi-view consistency of the decoder stages (MGSD-SPEC §4).
//!
//! For a decoder feature `f` of shape `(B, C, d, h, w)` (u2, u3 or u4 at its own resolution),
//! `P(f)` is:
//! 1. three axis profiles by adaptive average pooling to `(d,1,1)`, `(1,h,1)`, `(1,1,w)`
//!    (axial, coronal, sagittal views), each laid out `(B, length, C)` and concatenated along
//!    the length → `(B, d+h+w, C)`;
//! 2. the multi-axis norm, γ = 0.7: `g = ‖v‖₂` over the length axis `(B,1,C)`,
//!    `n = g / (mean_C(g) + 1e-6)`, `γ·(v·n) + (1−γ)·v`;
//! 3. `cat_conv`: Conv1d `C → 4C`, kernel 3, no padding, with bias (PyTorch's `nn.Conv1d`
//!    default), over the length axis → `(B, 4C, d+h+w−2)`. Parameters
//!    `Mutiaxis_fuse{2,3,4}.cat_conv.net.{weight,bias}` (the reference's spelling).
//!
//! The loss is `Σ_{s∈{2,3,4}} mse(P_s(f_s), P_s(m_s))` between the full and missing paths.
//! The reference works at B = 1; for B > 1 every sample gets its own norm (batch kept apart).

use candle_core::{bail, Module, Result, Tensor};
use candle_nn::VarBuilder;
use mgsd_nn::conv1d::{conv1d, Conv1d, Conv1dConfig};

use crate::losses::mse;

/// γ of the multi-axis norm.
pub const MULTI_AXIS_GAMMA: f64 = 0.7;

/// Three axis profiles of `f`, concatenated: `(B, C, d, h, w)` → `(B, d+h+w, C)`.
pub fn multi_view_profile(f: &Tensor) -> Result<Tensor> {
    let (b, c, d, h, w) = f.dims5()?;
    let pool = |out: [usize; 3], len: usize| -> Result<Tensor> {
        // (B, C, d', h', w') with two unit axes → (B, C, len)
        mgsd_nn::adaptive_avg_pool3d(f, out)?.reshape((b, c, len))
    };
    let axial = pool([d, 1, 1], d)?;
    let coronal = pool([1, h, 1], h)?;
    let sagittal = pool([1, 1, w], w)?;
    // (B, C, d+h+w) → (B, d+h+w, C)
    Tensor::cat(&[axial, coronal, sagittal], 2)?.transpose(1, 2)
}

/// Multi-axis norm of `(B, L, C)` profiles: `γ·(v·n) + (1−γ)·v`, `n = g/(mean_C g + 1e-6)`,
/// `g` the L2 norm over `L`.
pub fn multi_axis_norm(v: &Tensor, gamma: f64) -> Result<Tensor> {
    // (B, L, C) → (B, 1, C)
    let g = v.sqr()?.sum_keepdim(1)?.sqrt()?;
    // (B, 1, C) → (B, 1, 1)
    let mean = (g.mean_keepdim(2)? + 1e-6)?;
    let n = g.broadcast_div(&mean)?;
    // γ·v·n + (1−γ)·v = v · (γ·n + 1 − γ)
    v.broadcast_mul(&n.affine(gamma, 1.0 - gamma)?)
}

/// `cat_conv`: `Conv1d(C, 4C, k=3)` without padding, with bias, PyTorch parameter names under
/// `net` ([`mgsd_nn::Conv1d`], a view over the fast 3-D convolution op).
///
/// # Shapes
/// `(B, C, L)` → `(B, 4C, L−2)`; `net.weight`: `(4C, C, 3)`, `net.bias`: `(4C,)`.
#[derive(Clone, Debug)]
pub struct CatConv {
    net: Conv1d,
}

/// Kernel size of `cat_conv`.
const KERNEL: usize = 3;

impl CatConv {
    /// Creates or loads `net.weight` and `net.bias` under `vb` for `c` input channels.
    pub fn new(c: usize, vb: VarBuilder<'_>) -> Result<Self> {
        Ok(Self { net: conv1d(c, 4 * c, Conv1dConfig::new(KERNEL), vb.pp("net"))? })
    }

    /// Applies the convolution.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (_, c, l) = x.dims3()?;
        let (_, ci, _) = self.net.weight().dims3()?;
        if c != ci || l < KERNEL {
            bail!(
                "cat_conv: input {:?} does not fit weight {:?}",
                x.shape(),
                self.net.weight().shape()
            );
        }
        self.net.forward(x)
    }
}

/// One `Mutiaxis_fuse{s}` head: `P_s` of MGSD-SPEC §4.
#[derive(Clone, Debug)]
pub struct MultiAxisFuse {
    cat_conv: CatConv,
    gamma: f64,
}

impl MultiAxisFuse {
    /// The head for a stage with `c` channels; parameters under `vb.pp("cat_conv")`.
    pub fn new(c: usize, gamma: f64, vb: VarBuilder<'_>) -> Result<Self> {
        Ok(Self { cat_conv: CatConv::new(c, vb.pp("cat_conv"))?, gamma })
    }

    /// `P(f)`: `(B, C, d, h, w)` → `(B, 4C, d+h+w−2)`.
    pub fn project(&self, f: &Tensor) -> Result<Tensor> {
        let v = multi_axis_norm(&multi_view_profile(f)?, self.gamma)?;
        // (B, L, C) → (B, C, L)
        self.cat_conv.forward(&v.transpose(1, 2)?.contiguous()?)
    }

    /// `mse(P(f), P(m))`.
    pub fn consistency(&self, f: &Tensor, m: &Tensor) -> Result<Tensor> {
        if f.shape() != m.shape() {
            bail!(
                "Mutiaxis_fuse: full {:?} and missing {:?} features differ",
                f.shape(),
                m.shape()
            );
        }
        mse(&self.project(f)?, &self.project(m)?)
    }
}

/// The three heads `Mutiaxis_fuse2` (u2, c channels), `Mutiaxis_fuse3` (u3, 2c),
/// `Mutiaxis_fuse4` (u4, 4c) and the feature-level loss.
#[derive(Clone, Debug)]
pub struct FeatureDistillation {
    heads: [MultiAxisFuse; 3],
}

impl FeatureDistillation {
    /// Creates or loads the heads for U-Net width `c`, under `Mutiaxis_fuse{2,3,4}` of `vb`.
    pub fn new(c: usize, gamma: f64, vb: &VarBuilder<'_>) -> Result<Self> {
        Ok(Self {
            heads: [
                MultiAxisFuse::new(c, gamma, vb.pp("Mutiaxis_fuse2"))?,
                MultiAxisFuse::new(2 * c, gamma, vb.pp("Mutiaxis_fuse3"))?,
                MultiAxisFuse::new(4 * c, gamma, vb.pp("Mutiaxis_fuse4"))?,
            ],
        })
    }

    /// The heads, stages 2, 3, 4.
    pub fn heads(&self) -> &[MultiAxisFuse; 3] {
        &self.heads
    }

    /// `Σ_s mse(P_s(f_s), P_s(m_s))` for `full = [u2, u3, u4]` of `unet(x)` and `miss` of
    /// `unet(x·r)`.
    pub fn loss(&self, full: [&Tensor; 3], miss: [&Tensor; 3]) -> Result<Tensor> {
        let mut total: Option<Tensor> = None;
        for ((head, f), m) in self.heads.iter().zip(full).zip(miss) {
            let l = head.consistency(f, m)?;
            total = Some(match total {
                None => l,
                Some(t) => (t + l)?,
            });
        }
        total.ok_or_else(|| candle_core::Error::Msg("no heads".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, IndexOp};
    use std::collections::HashMap;

    #[test]
    fn profile_layout_and_values() -> Result<()> {
        let dev = Device::Cpu;
        let f = Tensor::arange(0f32, 24.0, &dev)?.reshape((1, 1, 2, 3, 4))?;
        let f = Tensor::cat(&[&f, &(&f * 2.0)?], 1)?; // (1, 2, 2, 3, 4)
        let p = multi_view_profile(&f)?;
        assert_eq!(p.dims(), [1, 9, 2]);
        let ch0 = p.i((0, .., 0))?.to_vec1::<f32>()?;
        // means over (h, w) per d: 5.5, 17.5; over (d, w) per h: 7.5, 11.5, 15.5; over (d, h) per w.
        assert_eq!(ch0[..5], [5.5, 17.5, 7.5, 11.5, 15.5]);
        assert_eq!(ch0[5..], [10.0, 11.0, 12.0, 13.0]);
        assert_eq!(
            p.i((0, .., 1))?.to_vec1::<f32>()?,
            ch0.iter().map(|v| v * 2.0).collect::<Vec<_>>()
        );
        Ok(())
    }

    #[test]
    fn norm_by_hand() -> Result<()> {
        let v = Tensor::new(&[[[3f32, 0.0], [4.0, 1.0]]], &Device::Cpu)?; // (1, L=2, C=2)
                                                                          // g = (5, 1), mean 3 → n = (5/3, 1/3)
        let out = multi_axis_norm(&v, 0.7)?.flatten_all()?.to_vec1::<f32>()?;
        let n = [5.0 / (3.0 + 1e-6), 1.0 / (3.0 + 1e-6)];
        let want =
            [3.0 * (0.7 * n[0] + 0.3), 0.0, 4.0 * (0.7 * n[0] + 0.3), 1.0 * (0.7 * n[1] + 0.3)];
        for (a, b) in out.iter().zip(want) {
            assert!((*a as f64 - b).abs() < 1e-5, "{out:?} vs {want:?}");
        }
        Ok(())
    }

    #[test]
    fn cat_conv_matches_direct_convolution() -> Result<()> {
        let dev = Device::Cpu;
        let (c, l) = (3, 7);
        let w = Tensor::randn(0f32, 1.0, (4 * c, c, 3), &dev)?;
        let bias = Tensor::randn(0f32, 1.0, 4 * c, &dev)?;
        let x = Tensor::randn(0f32, 1.0, (2, c, l), &dev)?;
        let map = HashMap::from([
            ("net.weight".to_string(), w.clone()),
            ("net.bias".to_string(), bias.clone()),
        ]);
        let conv = CatConv::new(c, VarBuilder::from_tensors(map, DType::F32, &dev))?;
        let got = conv.forward(&x)?;
        let want = x.conv1d(&w, 0, 1, 1, 1)?.broadcast_add(&bias.reshape((1, 4 * c, 1))?)?;
        let diff = (got - want)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-5, "{diff}");
        Ok(())
    }
}
