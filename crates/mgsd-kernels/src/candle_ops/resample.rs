//! Max pooling 2×2×2, nearest ×2 upsampling (alone or fused with the skip addition),
//! LeakyReLU and adaptive average pooling on CUDA tensors, with the kernels of
//! `kernels/resample.cu`, as differentiable candle ops: the CUDA twins of mgsd-nn's CPU ops of
//! the same names.
//!
//! What they save against the candle compositions they replace, per call at the size of the
//! layer's output `Y`:
//! - max pooling kept two intermediate maxima (½ and ¼ of the input) and its backward built
//!   full-size masks; now one byte per output voxel (the window position) is kept;
//! - upsampling materialised the broadcast copy (8 × the input) and then the sum with the
//!   skip; now only the sum exists;
//! - LeakyReLU kept an f32 mask and two products (three × `Y`); now nothing but its input;
//! - adaptive average pooling kept a transposed copy of its input per pooled axis; now only its
//!   input (the two separable-pass temporaries live inside the op).

use std::sync::{Arc, OnceLock};

use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView, PushKernelArg};
use candle_core::cuda_backend::CudaDevice;
use candle_core::{
    bail, CpuStorage, CudaStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor,
};

use super::{cuda_only, launch_grid_stride, to_i32, view};

/// Name under which candle caches the PTX module per device.
const MODULE: &str = "mgsd_resample";

/// [`launch_grid_stride`] for a kernel of `kernels/resample.cu`.
macro_rules! launch {
    ($dev:expr, $name:expr, $total:expr, |$b:ident| $push:block) => {
        launch_grid_stride!($dev, (MODULE, crate::RESAMPLE_PTX), $name, $total, |$b| $push)
    };
}

fn f32_5d(x: &Tensor, what: &str) -> Result<[usize; 5]> {
    if x.dtype() != DType::F32 || !x.device().is_cuda() {
        bail!("{what} (CUDA): f32 CUDA tensors only, got {:?} on {:?}", x.dtype(), x.device())
    }
    let (n, c, d, h, w) = x.dims5()?;
    Ok([n, c, d, h, w])
}

/// `(P = N·C, d, h, w)` of a 5-d shape, the spatial sizes as the kernels' `int`s.
fn planes(shape: &Shape) -> Result<(usize, [i32; 3])> {
    let (n, c, d, h, w) = shape.dims5()?;
    Ok((n * c, [to_i32(d)?, to_i32(h)?, to_i32(w)?]))
}

// ---------------------------------------------------------------------------------------------
// Max pooling

/// `torch.nn.MaxPool3d(2)` of a `(N, C, D, H, W)` f32 CUDA tensor (every spatial size ≥ 2).
/// Differentiable; the backward sends each window's gradient to its first maximum, as PyTorch.
pub fn max_pool3d_2x(x: &Tensor) -> Result<Tensor> {
    let [_, _, d, h, w] = f32_5d(x, "max_pool3d_2x")?;
    if d < 2 || h < 2 || w < 2 {
        bail!("max_pool3d_2x (CUDA): every spatial size must be ≥ 2, input {:?}", x.shape())
    }
    x.contiguous()?.apply_op1(MaxPool { argmax: Arc::default() })
}

/// The forward op; fills `argmax` (one byte per output voxel) for the backward.
struct MaxPool {
    argmax: Arc<OnceLock<CudaSlice<u8>>>,
}

/// `dy` → `dx` of the input shape `input`, from the forward's window positions.
struct MaxPoolBackward {
    argmax: Arc<OnceLock<CudaSlice<u8>>>,
    input: Shape,
}

impl CustomOp1 for MaxPool {
    fn name(&self) -> &'static str {
        "mgsd-max-pool3d-2x"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        cuda_only(self.name(), "mgsd_nn::max_pool3d_2x")
    }

    fn cuda_fwd(&self, sx: &CudaStorage, lx: &Layout) -> Result<(CudaStorage, Shape)> {
        let dev = sx.device.clone();
        let (_, [d, h, w]) = planes(lx.shape())?;
        let (n, c, ..) = lx.shape().dims5()?;
        let out = Shape::from((n, c, (d / 2) as usize, (h / 2) as usize, (w / 2) as usize));
        let total = out.elem_count();
        let x = view(sx, lx)?;
        // SAFETY: the kernel writes every element of both.
        let mut y = unsafe { dev.alloc::<f32>(total) }?;
        let mut arg = unsafe { dev.alloc::<u8>(total) }?;
        let len = total as i64;
        launch!(&dev, "mgsd_maxpool2x_fwd", total, |b| {
            b.arg(&x).arg(&mut y).arg(&mut arg).arg(&len).arg(&d).arg(&h).arg(&w);
        });
        if self.argmax.set(arg).is_err() {
            bail!("{}: an op instance runs its forward once", self.name())
        }
        Ok((CudaStorage::wrap_cuda_slice(y, dev), out))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        let op = MaxPoolBackward { argmax: self.argmax.clone(), input: x.shape().clone() };
        Ok(Some(dy.contiguous()?.apply_op1_no_bwd(&op)?))
    }
}

impl CustomOp1 for MaxPoolBackward {
    fn name(&self) -> &'static str {
        "mgsd-max-pool3d-2x-bwd"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        cuda_only(self.name(), "mgsd_nn::max_pool3d_2x")
    }

    fn cuda_fwd(&self, sdy: &CudaStorage, ldy: &Layout) -> Result<(CudaStorage, Shape)> {
        let Some(arg) = self.argmax.get() else {
            bail!("{}: the forward has not run", self.name())
        };
        let dev = sdy.device.clone();
        let (_, [d, h, w]) = planes(&self.input)?;
        let total = self.input.elem_count();
        let dy = view(sdy, ldy)?;
        // SAFETY: the kernel writes every element.
        let mut dx = unsafe { dev.alloc::<f32>(total) }?;
        let len = total as i64;
        launch!(&dev, "mgsd_maxpool2x_bwd", total, |b| {
            b.arg(&dy).arg(arg).arg(&mut dx).arg(&len).arg(&d).arg(&h).arg(&w);
        });
        Ok((CudaStorage::wrap_cuda_slice(dx, dev), self.input.clone()))
    }
}

// ---------------------------------------------------------------------------------------------
// Upsampling

/// Nearest ×2 upsampling of a `(N, C, D, H, W)` f32 CUDA tensor. Differentiable.
pub fn upsample2x(x: &Tensor) -> Result<Tensor> {
    f32_5d(x, "upsample2x")?;
    x.contiguous()?.apply_op1(Upsample)
}

/// `upsample2x(x) + skip` as one op, `skip` of shape `(N, C, 2D, 2H, 2W)`. Differentiable in
/// both.
pub fn upsample2x_add(x: &Tensor, skip: &Tensor) -> Result<Tensor> {
    let [n, c, d, h, w] = f32_5d(x, "upsample2x_add")?;
    if f32_5d(skip, "upsample2x_add")? != [n, c, 2 * d, 2 * h, 2 * w] {
        bail!(
            "upsample2x_add (CUDA): skip {:?} must be x {:?} with doubled spatial sizes",
            skip.shape(),
            x.shape()
        )
    }
    x.contiguous()?.apply_op2(&skip.contiguous()?, Upsample)
}

/// The forward op (one struct for both arities).
struct Upsample;

/// `dy` → `dx`, the sum of each 2×2×2 block, for an input of shape `.0`.
struct UpsampleBackward(Shape);

fn upsample_forward(
    sx: &CudaStorage,
    lx: &Layout,
    skip: Option<(&CudaStorage, &Layout)>,
) -> Result<(CudaStorage, Shape)> {
    let dev = sx.device.clone();
    let (_, [d, h, w]) = planes(lx.shape())?;
    let (n, c, ..) = lx.shape().dims5()?;
    let out = Shape::from((n, c, 2 * d as usize, 2 * h as usize, 2 * w as usize));
    let total = out.elem_count();
    let x = view(sx, lx)?;
    let skip = skip.map(|(s, l)| view(s, l)).transpose()?;
    // SAFETY: the kernel writes every element.
    let mut y = unsafe { dev.alloc::<f32>(total) }?;
    let (len, null) = (total as i64, 0u64);
    launch!(&dev, "mgsd_upsample2x_fwd", total, |b| {
        b.arg(&x);
        // A null `skip` (plain upsampling) is allowed.
        match &skip {
            Some(s) => b.arg(s),
            None => b.arg(&null),
        };
        b.arg(&mut y).arg(&len).arg(&d).arg(&h).arg(&w);
    });
    Ok((CudaStorage::wrap_cuda_slice(y, dev), out))
}

fn upsample_backward(x: &Tensor, dy: &Tensor) -> Result<Tensor> {
    dy.contiguous()?.apply_op1_no_bwd(&UpsampleBackward(x.shape().clone()))
}

impl CustomOp1 for Upsample {
    fn name(&self) -> &'static str {
        "mgsd-upsample-nearest-2x"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        cuda_only(CustomOp1::name(self), "mgsd_nn::upsample2x")
    }

    fn cuda_fwd(&self, sx: &CudaStorage, lx: &Layout) -> Result<(CudaStorage, Shape)> {
        upsample_forward(sx, lx, None)
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(upsample_backward(x, dy)?))
    }
}

impl CustomOp2 for Upsample {
    fn name(&self) -> &'static str {
        "mgsd-upsample-nearest-2x-add"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        cuda_only(CustomOp2::name(self), "mgsd_nn::upsample2x_add")
    }

    fn cuda_fwd(
        &self,
        sx: &CudaStorage,
        lx: &Layout,
        ss: &CudaStorage,
        ls: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        upsample_forward(sx, lx, Some((ss, ls)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        _skip: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(upsample_backward(x, dy)?), Some(dy.clone())))
    }
}

impl CustomOp1 for UpsampleBackward {
    fn name(&self) -> &'static str {
        "mgsd-upsample-nearest-2x-bwd"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        cuda_only(self.name(), "mgsd_nn::upsample2x")
    }

    fn cuda_fwd(&self, sdy: &CudaStorage, ldy: &Layout) -> Result<(CudaStorage, Shape)> {
        let dev = sdy.device.clone();
        let (_, [d, h, w]) = planes(&self.0)?;
        let total = self.0.elem_count();
        let dy = view(sdy, ldy)?;
        // SAFETY: the kernel writes every element.
        let mut dx = unsafe { dev.alloc::<f32>(total) }?;
        let len = total as i64;
        launch!(&dev, "mgsd_upsample2x_bwd", total, |b| {
            b.arg(&dy).arg(&mut dx).arg(&len).arg(&d).arg(&h).arg(&w);
        });
        Ok((CudaStorage::wrap_cuda_slice(dx, dev), self.0.clone()))
    }
}

// ---------------------------------------------------------------------------------------------
// LeakyReLU

/// `x > 0 ? x : slope·x` of an f32 CUDA tensor of any shape. Differentiable (gradient `slope`
/// at 0, as PyTorch).
pub fn leaky_relu(x: &Tensor, slope: f32) -> Result<Tensor> {
    if x.dtype() != DType::F32 || !x.device().is_cuda() {
        bail!("leaky_relu (CUDA): f32 CUDA tensors only, got {:?} on {:?}", x.dtype(), x.device())
    }
    x.contiguous()?.apply_op1(LeakyRelu(slope))
}

/// The forward op.
struct LeakyRelu(f32);

/// `(x, dy)` → `dx`.
struct LeakyReluBackward(f32);

impl CustomOp1 for LeakyRelu {
    fn name(&self) -> &'static str {
        "mgsd-leaky-relu"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        cuda_only(self.name(), "mgsd_nn::leaky_relu")
    }

    fn cuda_fwd(&self, sx: &CudaStorage, lx: &Layout) -> Result<(CudaStorage, Shape)> {
        let dev = sx.device.clone();
        let total = lx.shape().elem_count();
        let x = view(sx, lx)?;
        // SAFETY: the kernel writes every element.
        let mut y = unsafe { dev.alloc::<f32>(total) }?;
        let len = total as i64;
        launch!(&dev, "mgsd_leaky_relu_fwd", total, |b| {
            b.arg(&x).arg(&mut y).arg(&len).arg(&self.0);
        });
        Ok((CudaStorage::wrap_cuda_slice(y, dev), lx.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(x.apply_op2_no_bwd(&dy.contiguous()?, &LeakyReluBackward(self.0))?))
    }
}

impl CustomOp2 for LeakyReluBackward {
    fn name(&self) -> &'static str {
        "mgsd-leaky-relu-bwd"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        cuda_only(self.name(), "mgsd_nn::leaky_relu")
    }

    fn cuda_fwd(
        &self,
        sx: &CudaStorage,
        lx: &Layout,
        sdy: &CudaStorage,
        ldy: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let dev = sx.device.clone();
        let total = lx.shape().elem_count();
        let (x, dy) = (view(sx, lx)?, view(sdy, ldy)?);
        // SAFETY: the kernel writes every element.
        let mut dx = unsafe { dev.alloc::<f32>(total) }?;
        let len = total as i64;
        launch!(&dev, "mgsd_leaky_relu_bwd", total, |b| {
            b.arg(&x).arg(&dy).arg(&mut dx).arg(&len).arg(&self.0);
        });
        Ok((CudaStorage::wrap_cuda_slice(dx, dev), lx.shape().clone()))
    }
}

// ---------------------------------------------------------------------------------------------
// Adaptive average pooling

/// `F.adaptive_avg_pool3d(x, out)` of a `(N, C, D, H, W)` f32 CUDA tensor (PyTorch's bins).
/// Differentiable; bit-identical to the CPU op (same summation order).
pub fn adaptive_avg_pool3d(x: &Tensor, out: [usize; 3]) -> Result<Tensor> {
    let [_, _, d, h, w] = f32_5d(x, "adaptive_avg_pool3d")?;
    if out.contains(&0) || d == 0 || h == 0 || w == 0 {
        bail!("adaptive_avg_pool3d (CUDA): cannot pool input {:?} to {out:?}", x.shape())
    }
    x.contiguous()?.apply_op1(AdaptivePool { out })
}

/// The forward op.
struct AdaptivePool {
    out: [usize; 3],
}

/// `dy` → `dx` for an input of shape `input`.
struct AdaptivePoolBackward {
    input: Shape,
    out: [usize; 3],
}

/// Launches `name` over `total` outputs with `args` after the two pointers.
fn launch_pass(
    dev: &CudaDevice,
    name: &str,
    (src, dst): (&CudaView<'_, f32>, &mut CudaSlice<f32>),
    total: usize,
    ints: &[i32],
) -> Result<()> {
    let len = total as i64;
    // Every `mgsd_apool_*` kernel takes (src, dst, total, ints…), the ints as `resample.cu`
    // lists them.
    launch!(dev, name, total, |b| {
        b.arg(src).arg(dst).arg(&len);
        for v in ints {
            b.arg(v);
        }
    });
    Ok(())
}

/// `(P, [d, h, w], [od, oh, ow])` as the kernels' ints.
fn pool_sizes(input: &Shape, out: [usize; 3]) -> Result<(usize, [i32; 3], [i32; 3])> {
    let (p, dhw) = planes(input)?;
    Ok((p, dhw, [to_i32(out[0])?, to_i32(out[1])?, to_i32(out[2])?]))
}

impl CustomOp1 for AdaptivePool {
    fn name(&self) -> &'static str {
        "mgsd-adaptive-avg-pool3d"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        cuda_only(self.name(), "mgsd_nn::adaptive_avg_pool3d")
    }

    fn cuda_fwd(&self, sx: &CudaStorage, lx: &Layout) -> Result<(CudaStorage, Shape)> {
        let dev = sx.device.clone();
        let (p, [d, h, w], [od, oh, ow]) = pool_sizes(lx.shape(), self.out)?;
        let (du, hu) = (d as usize, h as usize);
        let [odu, ohu, owu] = self.out;
        let x = view(sx, lx)?;
        let (n1, n2, n3) = (p * du * hu * owu, p * du * ohu * owu, p * odu * ohu * owu);
        // SAFETY: each pass writes every element of its output.
        let mut t1 = unsafe { dev.alloc::<f32>(n1) }?;
        let mut t2 = unsafe { dev.alloc::<f32>(n2) }?;
        let mut y = unsafe { dev.alloc::<f32>(n3) }?;
        launch_pass(&dev, "mgsd_apool_w", (&x, &mut t1), n1, &[w, ow])?;
        launch_pass(&dev, "mgsd_apool_h", (&t1.slice(..), &mut t2), n2, &[h, oh, ow])?;
        launch_pass(&dev, "mgsd_apool_d", (&t2.slice(..), &mut y), n3, &[d, h, w, od, oh, ow])?;
        let (n, c, ..) = lx.shape().dims5()?;
        Ok((CudaStorage::wrap_cuda_slice(y, dev), Shape::from((n, c, odu, ohu, owu))))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        let op = AdaptivePoolBackward { input: x.shape().clone(), out: self.out };
        Ok(Some(dy.contiguous()?.apply_op1_no_bwd(&op)?))
    }
}

impl CustomOp1 for AdaptivePoolBackward {
    fn name(&self) -> &'static str {
        "mgsd-adaptive-avg-pool3d-bwd"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        cuda_only(self.name(), "mgsd_nn::adaptive_avg_pool3d")
    }

    fn cuda_fwd(&self, sdy: &CudaStorage, ldy: &Layout) -> Result<(CudaStorage, Shape)> {
        let dev = sdy.device.clone();
        let (p, [d, h, w], [od, oh, ow]) = pool_sizes(&self.input, self.out)?;
        let (du, hu, wu) = (d as usize, h as usize, w as usize);
        let (ohu, owu) = (self.out[1], self.out[2]);
        let dy = view(sdy, ldy)?;
        let (n2, n1, n0) = (p * du * ohu * owu, p * du * hu * owu, p * du * hu * wu);
        // SAFETY: each pass writes every element of its output.
        let mut t2 = unsafe { dev.alloc::<f32>(n2) }?;
        let mut t1 = unsafe { dev.alloc::<f32>(n1) }?;
        let mut dx = unsafe { dev.alloc::<f32>(n0) }?;
        launch_pass(&dev, "mgsd_apool_bwd_d", (&dy, &mut t2), n2, &[d, h, w, od, oh, ow])?;
        launch_pass(&dev, "mgsd_apool_bwd_h", (&t2.slice(..), &mut t1), n1, &[h, oh, ow])?;
        launch_pass(&dev, "mgsd_apool_bwd_w", (&t1.slice(..), &mut dx), n0, &[w, ow])?;
        Ok((CudaStorage::wrap_cuda_slice(dx, dev), self.input.clone()))
    }
}
