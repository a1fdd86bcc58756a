//! 1-D convolution (PyTorch `nn.Conv1d`, groups = 1) as a thin view over the 3-D convolution
//! op: `(N, C, L)` is `(N, C, L, 1, 1)`, so it shares the fast kernel and its backward. Used by
//! the multi-view distillation heads (MGSD-SPEC §4: `cat_conv`, C → 4C, kernel 3, no padding).

use candle_core::{bail, Module, Result, Tensor};
use candle_nn::{Init, VarBuilder};

use crate::conv3d::{conv3d_forward, Conv3dConfig};

/// Configuration of a [`Conv1d`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv1dConfig {
    /// Kernel size.
    pub kernel: usize,
    /// Stride.
    pub stride: usize,
    /// Zero padding on both sides.
    pub padding: usize,
    /// Dilation.
    pub dilation: usize,
    /// Whether the layer has a bias.
    pub bias: bool,
}

impl Conv1dConfig {
    /// Kernel `k`, stride 1, no padding, no dilation, with bias.
    pub fn new(kernel: usize) -> Self {
        Self { kernel, stride: 1, padding: 0, dilation: 1, bias: true }
    }

    fn as_3d(&self) -> Conv3dConfig {
        Conv3dConfig {
            kernel: [self.kernel, 1, 1],
            stride: [self.stride, 1, 1],
            padding: [self.padding, 0, 0],
            dilation: [self.dilation, 1, 1],
            bias: self.bias,
        }
    }
}

/// A 1-D convolution layer with PyTorch's parameter names (`weight`, `bias`).
///
/// # Shapes
/// `(N, Cin, L)` → `(N, Cout, Lo)`, `Lo = (L + 2p − d·(k − 1) − 1) / s + 1`;
/// weight `(Cout, Cin, k)`, bias `(Cout,)`.
#[derive(Debug, Clone)]
pub struct Conv1d {
    weight: Tensor,
    bias: Option<Tensor>,
    cfg: Conv1dConfig,
}

impl Conv1d {
    /// Builds the layer from existing tensors (`bias` decides whether there is one).
    pub fn new(weight: Tensor, bias: Option<Tensor>, cfg: Conv1dConfig) -> Result<Self> {
        let dims = weight.dims();
        if dims.len() != 3 || dims[2] != cfg.kernel {
            bail!("conv1d: weight {dims:?} is not (Cout, Cin, {})", cfg.kernel)
        }
        let cfg = Conv1dConfig { bias: bias.is_some(), ..cfg };
        Ok(Self { weight, bias, cfg })
    }

    /// The weight, `(Cout, Cin, k)`.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The bias, `(Cout,)`.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }
}

impl Module for Conv1d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let &[n, c, l] = x.dims() else {
            bail!("conv1d: expected input (N, C, L), got {:?}", x.dims())
        };
        let (co, ci, k) = self.weight.dims3()?;
        // (N, C, L) -> (N, C, L, 1, 1); (Cout, Cin, k) -> (Cout, Cin, k, 1, 1)
        let x5 = x.reshape((n, c, l, 1, 1))?;
        let w5 = self.weight.reshape((co, ci, k, 1, 1))?;
        let y = conv3d_forward(&x5, &w5, self.bias.as_ref(), None, &self.cfg.as_3d())?;
        // (N, Cout, Lo, 1, 1) -> (N, Cout, Lo)
        let lo = y.dim(2)?;
        y.reshape((n, co, lo))
    }
}

/// Creates or loads a [`Conv1d`] at the current `vb` path, initialised like PyTorch
/// (uniform in ±1/√fan_in) when the builder creates it.
pub fn conv1d(
    in_channels: usize,
    out_channels: usize,
    cfg: Conv1dConfig,
    vb: VarBuilder<'_>,
) -> Result<Conv1d> {
    let bound = 1.0 / ((in_channels * cfg.kernel).max(1) as f64).sqrt();
    let init = Init::Uniform { lo: -bound, up: bound };
    let weight = vb.get_with_hints((out_channels, in_channels, cfg.kernel), "weight", init)?;
    let bias = if cfg.bias { Some(vb.get_with_hints(out_channels, "bias", init)?) } else { None };
    Conv1d::new(weight, bias, cfg)
}
