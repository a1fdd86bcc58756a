//! The ACN-style 3-D U-Net backbone of MGSD (Multi-Granularity Self Distillation for Brain
//! Tumor Segmentation with Missing Modalities), MGSD-SPEC §2.
//!
//! Reproduces the reference network layer for layer, with the reference's attribute names as
//! parameter paths (`conv1a.weight`, `conv1b.gn1.weight`, `ds1.bias`, `convc.weight`, …), so a
//! PyTorch `state_dict` saved with safetensors loads as is. Differences in *how*, not *what*:
//! GroupNorm + ReLU are one op, residual and skip additions happen inside the convolution and
//! upsampling ops, and the concatenations before `convc` and `convco` are never materialised:
//! their 1×1×1 weights are split along the input channels into a sum of 1×1×1 convolutions.

use candle_core::{bail, Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::basic_block::BasicBlock;
use crate::conv3d::{conv3d, conv3d_forward, Conv3d, Conv3dConfig};
use crate::dropout::Dropout;
use crate::pool3d::max_pool3d_2x;
use crate::upsample::upsample2x_add;

/// Hyper-parameters of [`UNet3D`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UNet3DConfig {
    /// Input modalities (4: T1, T2, FLAIR, T1ce).
    pub in_channels: usize,
    /// Output sigmoid channels (3: ED, NCR/NET, ET).
    pub out_channels: usize,
    /// Base width `c` (16 in the reference); stages have c, 2c, 4c, 8c channels.
    pub width: usize,
    /// Dropout probability after `convco`, applied in training only (0.2).
    pub dropout: f32,
    /// GroupNorm groups in every block (8).
    pub groups: usize,
    /// Train the residual blocks through [`crate::gn_relu_conv3d`], which rebuilds their
    /// GroupNorm outputs in the backward instead of keeping them (`true`): the same numbers,
    /// about a fifth less peak memory for an MGSD step, one more GroupNorm pass per norm.
    pub recompute_norm: bool,
}

impl Default for UNet3DConfig {
    fn default() -> Self {
        Self {
            in_channels: 4,
            out_channels: 3,
            width: 16,
            dropout: 0.2,
            groups: 8,
            recompute_norm: true,
        }
    }
}

/// What the U-Net returns: the segmentation and the features MGSD distils.
#[derive(Debug, Clone)]
pub struct UNet3DOutput {
    /// Sigmoid probabilities, `(N, out_channels, D, H, W)`.
    pub out: Tensor,
    /// The style map (`convc` output), `(N, 8c, D/8, H/8, W/8)`.
    pub style: Tensor,
    /// Decoder feature at full resolution, `(N, c, D, H, W)`.
    pub u2: Tensor,
    /// Decoder feature at 1/2, `(N, 2c, D/2, H/2, W/2)`.
    pub u3: Tensor,
    /// Decoder feature at 1/4, `(N, 4c, D/4, H/4, W/4)`.
    pub u4: Tensor,
}

impl UNet3DOutput {
    /// Batch items `[start, start + len)` of every output (views, no copy).
    pub fn narrow_batch(&self, start: usize, len: usize) -> Result<Self> {
        let n = |t: &Tensor| t.narrow(0, start, len);
        Ok(Self {
            out: n(&self.out)?,
            style: n(&self.style)?,
            u2: n(&self.u2)?,
            u3: n(&self.u3)?,
            u4: n(&self.u4)?,
        })
    }

    /// `(out, style, u2, u3, u4)`, the reference's return order.
    pub fn into_tuple(self) -> (Tensor, Tensor, Tensor, Tensor, Tensor) {
        (self.out, self.style, self.u2, self.u3, self.u4)
    }
}

/// The 3-D U-Net of MGSD-SPEC §2.
///
/// # Shapes
/// `(N, in_channels, D, H, W)` with D, H, W divisible by 8 → [`UNet3DOutput`].
#[derive(Debug, Clone)]
pub struct UNet3D {
    cfg: UNet3DConfig,
    conv1a: Conv3d,
    conv1b: BasicBlock,
    ds1: Conv3d,
    conv2: [BasicBlock; 2],
    ds2: Conv3d,
    conv3: [BasicBlock; 2],
    ds3: Conv3d,
    conv4: [BasicBlock; 4],
    convc: Conv3d,
    convco: Conv3d,
    dropout: Dropout,
    up4conva: Conv3d,
    up4convb: BasicBlock,
    up3conva: Conv3d,
    up3convb: BasicBlock,
    up2conva: Conv3d,
    up2convb: BasicBlock,
    up1conv: Conv3d,
}

/// `Σ_i conv1x1(x_i, W[:, range_i]) + b`: a 1×1×1 convolution of the channel concatenation of
/// `xs`, without materialising the concatenation.
fn conv1x1_of_concat(conv: &Conv3d, xs: &[&Tensor]) -> Result<Tensor> {
    let w = conv.weight();
    let total: usize = xs.iter().map(|x| x.dim(1)).sum::<Result<usize>>()?;
    if w.dim(1)? != total {
        bail!(
            "conv1x1 of a concatenation: weight {:?} does not take the {total} channels of the inputs",
            w.dims()
        )
    }
    let cfg = Conv3dConfig::cube(1);
    let mut acc: Option<Tensor> = None;
    let mut start = 0;
    for x in xs {
        let c = x.dim(1)?;
        // (Cout, total, 1, 1, 1) -> (Cout, c, 1, 1, 1): the input channels of this part
        let wi = w.narrow(1, start, c)?;
        start += c;
        let bias = if acc.is_none() { conv.bias() } else { None };
        let cfg = cfg.bias(bias.is_some());
        acc = Some(conv3d_forward(x, &wi, bias, acc.as_ref(), &cfg)?);
    }
    match acc {
        Some(a) => Ok(a),
        None => bail!("conv1x1 of a concatenation: no inputs"),
    }
}

impl UNet3D {
    /// Creates or loads the network (parameter paths as in the reference `state_dict`).
    pub fn new(cfg: UNet3DConfig, vb: VarBuilder<'_>) -> Result<Self> {
        let c = cfg.width;
        if c == 0 || cfg.groups == 0 || !c.is_multiple_of(cfg.groups) {
            bail!(
                "UNet3D: width {c} must be a positive multiple of the {} GroupNorm groups",
                cfg.groups
            )
        }
        let k3 = Conv3dConfig::cube(3).padding(1);
        let down = k3.stride(2);
        let k1 = Conv3dConfig::cube(1);
        let g = cfg.groups;
        let block = |n: usize, name: &str| {
            Ok::<_, candle_core::Error>(
                BasicBlock::new(n, g, vb.pp(name))?.with_recompute(cfg.recompute_norm),
            )
        };
        Ok(Self {
            cfg,
            conv1a: conv3d(cfg.in_channels, c, k3, vb.pp("conv1a"))?,
            conv1b: block(c, "conv1b")?,
            ds1: conv3d(c, 2 * c, down, vb.pp("ds1"))?,
            conv2: [block(2 * c, "conv2a")?, block(2 * c, "conv2b")?],
            ds2: conv3d(2 * c, 4 * c, down, vb.pp("ds2"))?,
            conv3: [block(4 * c, "conv3a")?, block(4 * c, "conv3b")?],
            ds3: conv3d(4 * c, 8 * c, down, vb.pp("ds3"))?,
            conv4: [
                block(8 * c, "conv4a")?,
                block(8 * c, "conv4b")?,
                block(8 * c, "conv4c")?,
                block(8 * c, "conv4d")?,
            ],
            convc: conv3d(20 * c, 8 * c, k1, vb.pp("convc"))?,
            convco: conv3d(16 * c, 8 * c, k1, vb.pp("convco"))?,
            dropout: Dropout::new(cfg.dropout)?,
            up4conva: conv3d(8 * c, 4 * c, k1, vb.pp("up4conva"))?,
            up4convb: block(4 * c, "up4convb")?,
            up3conva: conv3d(4 * c, 2 * c, k1, vb.pp("up3conva"))?,
            up3convb: block(2 * c, "up3convb")?,
            up2conva: conv3d(2 * c, c, k1, vb.pp("up2conva"))?,
            up2convb: block(c, "up2convb")?,
            up1conv: conv3d(c, cfg.out_channels, k1, vb.pp("up1conv"))?,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &UNet3DConfig {
        &self.cfg
    }

    /// Evaluation forward (no dropout).
    pub fn forward(&self, x: &Tensor) -> Result<UNet3DOutput> {
        self.forward_t(x, None)
    }

    /// Forward; `dropout_seed = Some(seed)` means training (dropout drawn from `seed`).
    pub fn forward_t(&self, x: &Tensor, dropout_seed: Option<u64>) -> Result<UNet3DOutput> {
        let dims = x.dims();
        let &[_, cin, d, h, w] = dims else {
            bail!("UNet3D: expected input (N, C, D, H, W), got {dims:?}")
        };
        if cin != self.cfg.in_channels {
            bail!(
                "UNet3D: input {dims:?} has {cin} channels, the network takes {}",
                self.cfg.in_channels
            )
        }
        if [d, h, w].iter().any(|s| *s == 0 || s % 8 != 0) {
            bail!("UNet3D: spatial size {:?} of input {dims:?} must be divisible by 8 (three 2× downsamplings)", [d, h, w])
        }
        // Encoder. Nested calls and explicit drops free every tensor once it is no longer
        // needed, which is what bounds the memory of inference (no graph holds them).
        let c1 = self.conv1b.forward(&self.conv1a.forward(x)?)?;
        let c2 = self.conv2[1].forward(&self.conv2[0].forward(&self.ds1.forward(&c1)?)?)?;
        let c2d = self.ds2.forward(&c2)?;
        let c2d_p = max_pool3d_2x(&c2d)?;
        let c3 = self.conv3[1].forward(&self.conv3[0].forward(&c2d)?)?;
        drop(c2d);
        let c3d = self.ds3.forward(&c3)?;
        let mut c4d = c3d.clone();
        for b in &self.conv4 {
            c4d = b.forward(&c4d)?;
        }
        // Bottleneck: convc(cat(c2d_p, c3d, c4d)), convco(cat(style, c4d)), split weights.
        let style = conv1x1_of_concat(&self.convc, &[&c2d_p, &c3d, &c4d])?;
        drop((c2d_p, c3d));
        let bottom = {
            let b = conv1x1_of_concat(&self.convco, &[&style, &c4d])?;
            match dropout_seed {
                Some(seed) => self.dropout.forward_t(&b, true, seed)?,
                None => b,
            }
        };
        drop(c4d);
        // Decoder: 1×1 conv, nearest ×2 fused with the skip addition, BasicBlock.
        let u4 = self.up4convb.forward(&upsample2x_add(&self.up4conva.forward(&bottom)?, &c3)?)?;
        drop((bottom, c3));
        let u3 = self.up3convb.forward(&upsample2x_add(&self.up3conva.forward(&u4)?, &c2)?)?;
        drop(c2);
        let u2 = {
            let s = upsample2x_add(&self.up2conva.forward(&u3)?, &c1)?;
            drop(c1);
            self.up2convb.forward(&s)?
        };
        let out = candle_nn::ops::sigmoid(&self.up1conv.forward(&u2)?)?;
        Ok(UNet3DOutput { out, style, u2, u3, u4 })
    }
}
