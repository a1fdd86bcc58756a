//! 3-D convolution (PyTorch `nn.Conv3d`, groups = 1) as a candle custom op with its own
//! backward pass, plus a fused residual add (`conv(x) + r` written straight into the output).
//!
//! Candle 0.11 has no 3-D convolution, and composing it from `conv2d` is both slow and wrong
//! in backward (candle's CPU conv2d backward fails for stride 2 with mixed parity), so the
//! CPU path here is our own: where the CPU has AVX-512F, direct kernels vectorised over output
//! channels (`direct.rs`, Cout a multiple of 16) and row kernels for the rest (`avx512.rs`,
//! `strided_rows.rs`, `transposed_rows.rs`); tiled im2col or row layouts + gemm elsewhere
//! (`cpu.rs`); [`cpu_kernels`] says which one runs. The bias is carried as an
//! extra column of the flattened weight matrix, so one op covers weight, bias and residual and
//! candle's autograd splits the gradient back to the two parameters.
//!
//! On CUDA (the `cuda` feature) the convolution runs through cuDNN instead (`cudnn.rs`), in
//! f32 or bf16 mixed precision ([`ConvPrecision`], `precision.rs`).

mod avx512;
pub use avx512::{cpu_kernels, cpu_kernels_reason};
mod cpu;
#[cfg(feature = "cuda")]
mod cudnn;
#[cfg(target_arch = "x86_64")]
mod direct;
#[cfg(feature = "cuda")]
pub use cudnn::{set_cudnn_benchmark, set_cudnn_tf32};
mod precision;
pub use precision::{conv_precision, set_conv_precision, ConvPrecision};
mod strided_rows;
mod transposed_rows;

use candle_core::{
    bail, CpuStorage, CustomOp2, CustomOp3, DType, Layout, Module, Result, Shape, Tensor,
};
use candle_nn::{Init, VarBuilder};

/// Geometry of a 3-D convolution, derived from the config and the operand shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct ConvGeom {
    pub n: usize,
    pub cin: usize,
    pub cout: usize,
    pub input: [usize; 3],
    pub kernel: [usize; 3],
    pub stride: [usize; 3],
    pub padding: [usize; 3],
    pub dilation: [usize; 3],
    pub output: [usize; 3],
    /// The weight matrix carries a bias column.
    pub has_bias: bool,
}

impl ConvGeom {
    fn new(x: &[usize], w: &[usize], cfg: &Conv3dConfig, has_bias: bool) -> Result<Self> {
        let (&[n, cin, d, h, wd], &[cout, wcin, k0, k1, k2]) = (x, w) else {
            bail!("conv3d: expected input (N, C, D, H, W) and weight (Cout, Cin, kd, kh, kw), got input {x:?} and weight {w:?}")
        };
        if x.contains(&0) || w.contains(&0) {
            bail!("conv3d: empty input {x:?} or weight {w:?}")
        }
        if wcin != cin {
            bail!("conv3d: input {x:?} has {cin} channels but weight {w:?} expects {wcin}")
        }
        if [k0, k1, k2] != cfg.kernel {
            bail!("conv3d: weight {w:?} does not match the configured kernel {:?}", cfg.kernel)
        }
        if cfg.stride.contains(&0) || cfg.dilation.contains(&0) || cfg.kernel.contains(&0) {
            bail!("conv3d: kernel, stride and dilation must be positive, got {cfg:?}")
        }
        let input = [d, h, wd];
        let mut output = [0; 3];
        for a in 0..3 {
            let span = cfg.dilation[a] * (cfg.kernel[a] - 1) + 1;
            let padded = input[a] + 2 * cfg.padding[a];
            if padded < span {
                bail!("conv3d: input {x:?} (padding {:?}) is smaller than the dilated kernel {:?} along axis {a}", cfg.padding, cfg.kernel)
            }
            output[a] = (padded - span) / cfg.stride[a] + 1;
        }
        Ok(Self {
            n,
            cin,
            cout,
            input,
            kernel: cfg.kernel,
            stride: cfg.stride,
            padding: cfg.padding,
            dilation: cfg.dilation,
            output,
            has_bias,
        })
    }

    pub(crate) fn in_spatial(&self) -> usize {
        self.input.iter().product()
    }

    pub(crate) fn out_spatial(&self) -> usize {
        self.output.iter().product()
    }

    /// Rows of the column matrix, `Cin·kd·kh·kw`.
    pub(crate) fn k_rows(&self) -> usize {
        self.cin * self.kernel.iter().product::<usize>()
    }

    /// Columns of the weight matrix: `k_rows` plus one for the bias.
    pub(crate) fn kcols(&self) -> usize {
        self.k_rows() + usize::from(self.has_bias)
    }

    /// A 1×1×1 convolution with unit stride and no padding is a plain matrix product.
    pub(crate) fn is_pointwise(&self) -> bool {
        self.kernel == [1; 3] && self.stride == [1; 3] && self.padding == [0; 3]
    }

    fn out_shape(&self) -> Shape {
        let [d, h, w] = self.output;
        Shape::from((self.n, self.cout, d, h, w))
    }
}

/// Configuration of a [`Conv3d`] (PyTorch `nn.Conv3d` without groups).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv3dConfig {
    /// Kernel size `(kd, kh, kw)`.
    pub kernel: [usize; 3],
    /// Stride per axis.
    pub stride: [usize; 3],
    /// Zero padding on both sides, per axis.
    pub padding: [usize; 3],
    /// Dilation per axis.
    pub dilation: [usize; 3],
    /// Whether the layer has a bias (PyTorch's default: yes).
    pub bias: bool,
}

impl Default for Conv3dConfig {
    fn default() -> Self {
        Self::cube(1)
    }
}

impl Conv3dConfig {
    /// A `k×k×k` kernel, stride 1, no padding, no dilation, with bias.
    pub fn cube(k: usize) -> Self {
        Self { kernel: [k; 3], stride: [1; 3], padding: [0; 3], dilation: [1; 3], bias: true }
    }

    /// The same stride on every axis.
    pub fn stride(self, s: usize) -> Self {
        Self { stride: [s; 3], ..self }
    }

    /// The same padding on every axis.
    pub fn padding(self, p: usize) -> Self {
        Self { padding: [p; 3], ..self }
    }

    /// The same dilation on every axis.
    pub fn dilation(self, d: usize) -> Self {
        Self { dilation: [d; 3], ..self }
    }

    /// With or without bias.
    pub fn bias(self, bias: bool) -> Self {
        Self { bias, ..self }
    }
}

/// The contiguous f32 data of operand `what` of a conv3d op.
fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    crate::cpu_f32::slice(s, l, &format!("conv3d {what}"))
}

/// `conv(x, W) + b`; operands `x` and the `(Cout, kcols)` weight matrix.
struct Conv3dOp(ConvGeom);

/// `conv(x, W) + b + r`; operands `x`, the weight matrix and the residual.
struct Conv3dAddOp(ConvGeom);

/// Gradient of the input: operands `dY` and the weight matrix.
struct Conv3dBwdInput(ConvGeom);

/// Gradient of the weight matrix: operands `dY` and `x`.
struct Conv3dBwdWeight(ConvGeom);

/// Gradients of `x` and of the weights `wb` from the output gradient, with the device's two
/// gradient ops (`dx` from `(dY, wb)`, the weights' from `(dY, x)`).
fn conv_bwd(
    x: &Tensor,
    wb: &Tensor,
    grad: &Tensor,
    input_grad: &impl CustomOp2,
    weight_grad: &impl CustomOp2,
) -> Result<(Option<Tensor>, Option<Tensor>)> {
    let grad = grad.contiguous()?;
    // Inputs that carry no gradient (the network input) skip the whole grad-input pass.
    let dx = if x.track_op() { Some(grad.apply_op2_no_bwd(wb, input_grad)?) } else { None };
    let dw = if wb.track_op() { Some(grad.apply_op2_no_bwd(x, weight_grad)?) } else { None };
    Ok((dx, dw))
}

impl CustomOp2 for Conv3dOp {
    fn name(&self) -> &'static str {
        "conv3d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s1, l1, "input")?;
        let w = f32_slice(s2, l2, "weight")?;
        let out = cpu::forward(&self.0, x, w, None);
        Ok((CpuStorage::F32(out), self.0.out_shape()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        wb: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        conv_bwd(x, wb, grad, &Conv3dBwdInput(self.0), &Conv3dBwdWeight(self.0))
    }
}

impl CustomOp3 for Conv3dAddOp {
    fn name(&self) -> &'static str {
        "conv3d-add"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s1, l1, "input")?;
        let w = f32_slice(s2, l2, "weight")?;
        let r = f32_slice(s3, l3, "residual")?;
        let out = cpu::forward(&self.0, x, w, Some(r));
        Ok((CpuStorage::F32(out), self.0.out_shape()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        wb: &Tensor,
        r: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, dw) = conv_bwd(x, wb, grad, &Conv3dBwdInput(self.0), &Conv3dBwdWeight(self.0))?;
        let dr = r.track_op().then(|| grad.clone());
        Ok((dx, dw, dr))
    }
}

impl CustomOp2 for Conv3dBwdInput {
    fn name(&self) -> &'static str {
        "conv3d-bwd-input"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = &self.0;
        let dy = f32_slice(s1, l1, "output gradient")?;
        let w = f32_slice(s2, l2, "weight")?;
        let dx = cpu::backward_input(g, dy, w);
        let [d, h, wd] = g.input;
        Ok((CpuStorage::F32(dx), Shape::from((g.n, g.cin, d, h, wd))))
    }
}

impl CustomOp2 for Conv3dBwdWeight {
    fn name(&self) -> &'static str {
        "conv3d-bwd-weight"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = &self.0;
        let dy = f32_slice(s1, l1, "output gradient")?;
        let x = f32_slice(s2, l2, "input")?;
        let dw = cpu::backward_weight(g, x, dy);
        Ok((CpuStorage::F32(dw), Shape::from((g.cout, g.kcols()))))
    }
}

/// The CPU ops' weight operand: `(Cout, Cin, kd, kh, kw)` → `(Cout, K)`, `K = Cin·kd·kh·kw`,
/// with the bias `(Cout,)` appended as a last column, `(Cout, K + 1)`.
fn weight_matrix(g: &ConvGeom, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let w = weight.reshape((g.cout, g.k_rows()))?;
    match bias {
        Some(b) => Tensor::cat(&[&w, &b.reshape((g.cout, 1))?], 1),
        None => w.contiguous(),
    }
}

/// Functional 3-D convolution: `conv(x, weight) + bias + residual`, differentiable in every
/// operand.
///
/// # Shapes
/// `x`: `(N, Cin, D, H, W)`, `weight`: `(Cout, Cin, kd, kh, kw)`, `bias`: `(Cout,)`,
/// `residual` and the result: `(N, Cout, Do, Ho, Wo)` with
/// `Do = (D + 2·pd − dd·(kd − 1) − 1) / sd + 1` (and likewise for H, W).
pub fn conv3d_forward(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    residual: Option<&Tensor>,
    cfg: &Conv3dConfig,
) -> Result<Tensor> {
    if x.dtype() != DType::F32 || weight.dtype() != DType::F32 {
        bail!(
            "conv3d: only f32 is supported, got input {:?} and weight {:?}",
            x.dtype(),
            weight.dtype()
        )
    }
    let g = ConvGeom::new(x.dims(), weight.dims(), cfg, bias.is_some())?;
    if let Some(b) = bias {
        if b.dims() != [g.cout] {
            bail!("conv3d: bias {:?} does not match weight {:?}", b.dims(), weight.dims())
        }
    }
    if let Some(r) = residual {
        if r.shape() != &g.out_shape() {
            bail!(
                "conv3d: residual {:?} does not match the output {:?}",
                r.dims(),
                g.out_shape().dims()
            )
        }
    }
    match x.device() {
        candle_core::Device::Cpu => {}
        #[cfg(feature = "cuda")]
        candle_core::Device::Cuda(_) => return cudnn::forward(g, x, weight, bias, residual),
        other => bail!(
            "conv3d: no kernel for device {:?} (CUDA needs the `cuda` feature)",
            other.location()
        ),
    }
    let wb = weight_matrix(&g, weight, bias)?;
    let x = x.contiguous()?;
    match residual {
        None => x.apply_op2(&wb, Conv3dOp(g)),
        Some(r) => x.apply_op3(&wb, &r.contiguous()?, Conv3dAddOp(g)),
    }
}

/// Gradients of `conv(x, weight) + bias` with respect to `x`, `weight` and `bias`, from the
/// output gradient `dy`, computed now rather than by autograd. For ops that do not keep the
/// convolution's input and rebuild it in their backward (`gn_conv`).
///
/// # Shapes
/// As [`conv3d_forward`]; `dy` has the output's shape. Returns `(dx, dweight, dbias)`.
pub(crate) fn conv3d_backward(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    dy: &Tensor,
    cfg: &Conv3dConfig,
) -> Result<(Tensor, Tensor, Option<Tensor>)> {
    let g = ConvGeom::new(x.dims(), weight.dims(), cfg, bias.is_some())?;
    if dy.shape() != &g.out_shape() {
        bail!(
            "conv3d: output gradient {:?} does not match the output {:?}",
            dy.dims(),
            g.out_shape().dims()
        )
    }
    let (x, dy) = (x.contiguous()?, dy.contiguous()?);
    match x.device() {
        candle_core::Device::Cpu => {}
        #[cfg(feature = "cuda")]
        candle_core::Device::Cuda(_) => return cudnn::gradients(g, &x, weight, bias, &dy),
        other => bail!(
            "conv3d: no kernel for device {:?} (CUDA needs the `cuda` feature)",
            other.location()
        ),
    }
    let dx = dy.apply_op2_no_bwd(&weight_matrix(&g, weight, bias)?, &Conv3dBwdInput(g))?;
    // (Cout, K [+ 1]): the bias gradient is the last column.
    let dwb = dy.apply_op2_no_bwd(&x, &Conv3dBwdWeight(g))?;
    let dw = dwb.narrow(1, 0, g.k_rows())?.reshape(weight.shape())?;
    let db = match bias {
        Some(_) => Some(dwb.narrow(1, g.k_rows(), 1)?.flatten_all()?),
        None => None,
    };
    Ok((dx, dw, db))
}

/// A 3-D convolution layer with PyTorch's parameter names (`weight`, `bias`).
#[derive(Debug, Clone)]
pub struct Conv3d {
    weight: Tensor,
    bias: Option<Tensor>,
    cfg: Conv3dConfig,
}

impl Conv3d {
    /// Builds the layer from existing tensors (`cfg.bias` is ignored: `bias` decides).
    pub fn new(weight: Tensor, bias: Option<Tensor>, cfg: Conv3dConfig) -> Result<Self> {
        let dims = weight.dims();
        if dims.len() != 5 || dims[2..] != cfg.kernel {
            bail!("conv3d: weight {dims:?} is not (Cout, Cin, {:?})", cfg.kernel)
        }
        if let Some(b) = &bias {
            if b.dims() != [dims[0]] {
                bail!("conv3d: bias {:?} does not match weight {dims:?}", b.dims())
            }
        }
        let cfg = Conv3dConfig { bias: bias.is_some(), ..cfg };
        Ok(Self { weight, bias, cfg })
    }

    /// The weight, `(Cout, Cin, kd, kh, kw)`.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The bias, `(Cout,)`.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// The configuration.
    pub fn config(&self) -> &Conv3dConfig {
        &self.cfg
    }

    /// `conv(x) + residual`, the residual added inside the op (no extra pass, no extra tensor).
    ///
    /// # Shapes
    /// `x`: `(N, Cin, D, H, W)`, `residual` and the result: `(N, Cout, Do, Ho, Wo)`.
    pub fn forward_add(&self, x: &Tensor, residual: &Tensor) -> Result<Tensor> {
        conv3d_forward(x, &self.weight, self.bias.as_ref(), Some(residual), &self.cfg)
    }
}

impl Module for Conv3d {
    /// # Shapes
    /// `(N, Cin, D, H, W)` → `(N, Cout, Do, Ho, Wo)`.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        conv3d_forward(x, &self.weight, self.bias.as_ref(), None, &self.cfg)
    }
}

/// Creates or loads a [`Conv3d`] at the current `vb` path (`weight`, and `bias` if
/// `cfg.bias`), initialised like PyTorch (uniform in ±1/√fan_in) when the builder creates it.
///
/// # Shapes
/// weight `(out_channels, in_channels, kd, kh, kw)`, bias `(out_channels,)`.
pub fn conv3d(
    in_channels: usize,
    out_channels: usize,
    cfg: Conv3dConfig,
    vb: VarBuilder<'_>,
) -> Result<Conv3d> {
    let [k0, k1, k2] = cfg.kernel;
    let fan_in = (in_channels * k0 * k1 * k2).max(1) as f64;
    let bound = 1.0 / fan_in.sqrt();
    let init = Init::Uniform { lo: -bound, up: bound };
    let weight = vb.get_with_hints((out_channels, in_channels, k0, k1, k2), "weight", init)?;
    let bias = if cfg.bias { Some(vb.get_with_hints(out_channels, "bias", init)?) } else { None };
    Conv3d::new(weight, bias, cfg)
}

#[cfg(test)]
mod tests;
