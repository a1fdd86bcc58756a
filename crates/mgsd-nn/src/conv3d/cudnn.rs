//! Conv3d on CUDA through cuDNN's N-d convolution (`cuda` feature): forward, data gradient and
//! filter gradient as three candle custom ops, like PyTorch's `cudnn_convolution` and its two
//! backward kernels. candle's own CUDA conv backward is a naive kernel; it is not used.
//!
//! The bias and the residual are added in place on the convolution's output by a small kernel
//! of `mgsd-kernels` (`conv_epilogue`), so they cost no extra tensor in the autograd graph;
//! as on the CPU path, weight and bias travel as one flat operand `[w…, b…]` and candle's
//! autograd splits the gradient back. Algorithms come from
//! cuDNN's heuristics (`cudnnGetConvolution*Algorithm_v7`), which is what PyTorch does with
//! `torch.backends.cudnn.benchmark = False`, its default. TF32 tensor-core math is allowed by
//! default, as in PyTorch (`torch.backends.cudnn.allow_tf32 = True`); [`set_cudnn_tf32`] turns
//! it off for full-f32 FMA math.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use candle_core::cuda_backend::cudarc::cudnn::safe::{
    ConvBackwardData, ConvBackwardFilter, ConvDescriptor, ConvForward, Cudnn, FilterDescriptor,
    TensorDescriptor,
};
use candle_core::cuda_backend::cudarc::cudnn::sys;
use candle_core::cuda_backend::cudarc::driver::CudaSlice;
use candle_core::cuda_backend::{CudaDevice, DeviceId};
use candle_core::{
    bail, CpuStorage, CudaStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor,
};
use mgsd_kernels::candle_ops::conv_epilogue;

use mgsd_kernels::candle_ops::view;

use super::ConvGeom;

static ALLOW_TF32: AtomicBool = AtomicBool::new(true);

/// Whether cuDNN may use TF32 tensor cores for f32 convolutions (default: yes, as PyTorch).
pub fn set_cudnn_tf32(allow: bool) {
    ALLOW_TF32.store(allow, Ordering::Relaxed);
}

thread_local! {
    // cuDNN handles are neither Send nor Sync: one per thread and device, bound to the
    // device's stream (candle keeps its own for conv2d the same way).
    static HANDLES: RefCell<HashMap<DeviceId, Arc<Cudnn>>> = RefCell::new(HashMap::new());
}

fn handle(dev: &CudaDevice) -> Result<Arc<Cudnn>> {
    HANDLES.with(|h| {
        if let Some(c) = h.borrow().get(&dev.id()) {
            return Ok(c.clone());
        }
        let c = Cudnn::new(dev.cuda_stream())?;
        h.borrow_mut().insert(dev.id(), c.clone());
        Ok(c)
    })
}

/// The four descriptors of one geometry.
struct Descs {
    conv: ConvDescriptor<f32>,
    x: TensorDescriptor<f32>,
    w: FilterDescriptor<f32>,
    y: TensorDescriptor<f32>,
}

fn i32s<const N: usize>(v: [usize; N], what: &str) -> Result<[i32; N]> {
    let mut out = [0i32; N];
    for (o, x) in out.iter_mut().zip(v) {
        *o = i32::try_from(x).map_err(|_| {
            candle_core::Error::Msg(format!("conv3d (cuDNN): {what} {v:?} exceeds i32"))
        })?;
    }
    Ok(out)
}

/// Dims and packed strides of a contiguous 5-D tensor.
fn nd(dims: [usize; 5], what: &str) -> Result<([i32; 5], [i32; 5])> {
    let mut strides = [1usize; 5];
    for a in (0..4).rev() {
        strides[a] = strides[a + 1] * dims[a + 1];
    }
    if dims.iter().product::<usize>() > i32::MAX as usize {
        bail!("conv3d (cuDNN): {what} {dims:?} has more than 2^31 elements")
    }
    Ok((i32s(dims, what)?, i32s(strides, what)?))
}

fn descs(cudnn: &Arc<Cudnn>, g: &ConvGeom) -> Result<Descs> {
    let mut conv = cudnn.create_convnd::<f32>(
        &i32s(g.padding, "padding")?,
        &i32s(g.stride, "stride")?,
        &i32s(g.dilation, "dilation")?,
        sys::cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION,
    )?;
    let math = if ALLOW_TF32.load(Ordering::Relaxed) {
        sys::cudnnMathType_t::CUDNN_DEFAULT_MATH
    } else {
        sys::cudnnMathType_t::CUDNN_FMA_MATH
    };
    conv.set_math_type(math)?;
    let [d, h, w] = g.input;
    let (xd, xs) = nd([g.n, g.cin, d, h, w], "input")?;
    let x = cudnn.create_nd_tensor::<f32>(&xd, &xs)?;
    let [od, oh, ow] = g.output;
    let (yd, ys) = nd([g.n, g.cout, od, oh, ow], "output")?;
    let y = cudnn.create_nd_tensor::<f32>(&yd, &ys)?;
    let [k0, k1, k2] = g.kernel;
    let wd = i32s([g.cout, g.cin, k0, k1, k2], "weight")?;
    let w = cudnn.create_nd_filter::<f32>(sys::cudnnTensorFormat_t::CUDNN_TENSOR_NCHW, &wd)?;
    Ok(Descs { conv, x, w, y })
}

fn workspace(dev: &CudaDevice, bytes: usize) -> Result<Option<CudaSlice<u8>>> {
    // SAFETY: cuDNN only writes the workspace before reading it.
    (bytes > 0).then(|| unsafe { dev.alloc::<u8>(bytes) }).transpose()
}

fn cuda_only<T>(name: &str) -> Result<T> {
    mgsd_kernels::candle_ops::cuda_only(name, "mgsd-nn's CPU conv3d")
}

/// The device of the first operand and the descriptors of `g` on its cuDNN handle.
fn prepare(s: &CudaStorage, g: &ConvGeom) -> Result<(CudaDevice, Descs)> {
    let dev = s.device.clone();
    let d = descs(&handle(&dev)?, g)?;
    Ok((dev, d))
}

/// `y = conv(x, w) + b`; operands `x` `(N, Cin, D, H, W)` and the flat `[w…, b…]`.
struct CudnnForward(ConvGeom);

/// `y = conv(x, w) + b + r`; operands `x`, the flat `[w…, b…]` and the residual `r`.
struct CudnnForwardAdd(ConvGeom);

/// `dx` from `dy` and the flat `[w…, b…]`.
struct CudnnBackwardData(ConvGeom);

/// `dw` (flat, without the bias) from `dy` and `x`.
struct CudnnBackwardFilter(ConvGeom);

/// The cuDNN ops' weight operand: the weight flattened, then the bias, `[w…, b…]`.
fn flat_weight(weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let w = weight.flatten_all()?;
    match bias {
        Some(b) => Tensor::cat(&[&w, b], 0),
        None => w.contiguous(),
    }
}

/// Elements of the weight in the flat operand.
fn weight_len(g: &ConvGeom) -> usize {
    g.cout * g.k_rows()
}

/// The convolution, then the epilogue (bias, residual) in place.
fn forward_into(
    g: &ConvGeom,
    (sx, lx): (&CudaStorage, &Layout),
    (swb, lwb): (&CudaStorage, &Layout),
    residual: Option<(&CudaStorage, &Layout)>,
) -> Result<(CudaStorage, Shape)> {
    let (dev, d) = prepare(sx, g)?;
    let x = view(sx, lx)?;
    let wb = view(swb, lwb)?;
    let w = wb.slice(..weight_len(g));
    let op = ConvForward { conv: &d.conv, x: &d.x, w: &d.w, y: &d.y };
    let algo = op.pick_algorithm()?;
    let mut ws = workspace(&dev, op.get_workspace_size(algo)?)?;
    let out_shape = g.out_shape();
    // SAFETY: cuDNN overwrites all of `y` (beta = 0).
    let mut y = unsafe { dev.alloc::<f32>(out_shape.elem_count()) }?;
    // SAFETY: the operands match the descriptors: contiguous f32 of the geometry's shapes.
    unsafe { op.launch(algo, ws.as_mut(), (1.0, 0.0), &x, &w, &mut y) }?;
    let bias = g.has_bias.then(|| wb.slice(weight_len(g)..));
    let r = residual.map(|(s, l)| view(s, l)).transpose()?;
    conv_epilogue::bias_residual_add(
        &dev,
        &mut y,
        bias.as_ref(),
        r.as_ref(),
        (g.out_spatial(), g.cout),
    )?;
    Ok((CudaStorage::wrap_cuda_slice(y, dev), out_shape))
}

/// Gradients of `x` and of the flat `[w…, b…]`.
fn backward(
    g: ConvGeom,
    x: &Tensor,
    wb: &Tensor,
    grad: &Tensor,
) -> Result<(Option<Tensor>, Option<Tensor>)> {
    let (dx, dw) = super::conv_bwd(x, wb, grad, &CudnnBackwardData(g), &CudnnBackwardFilter(g))?;
    let dwb = match dw {
        Some(dw) if g.has_bias => Some(Tensor::cat(&[&dw, &grad.sum((0, 2, 3, 4))?], 0)?),
        dw => dw,
    };
    Ok((dx, dwb))
}

/// `(dx, dweight, dbias)` of `conv(x, weight) + bias` from `dy`, for
/// `super::conv3d_backward`: the same two cuDNN gradient ops, called directly.
pub(super) fn gradients(
    g: ConvGeom,
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    dy: &Tensor,
) -> Result<(Tensor, Tensor, Option<Tensor>)> {
    let dx = dy.apply_op2_no_bwd(&flat_weight(weight, bias)?, &CudnnBackwardData(g))?;
    let dw = dy.apply_op2_no_bwd(x, &CudnnBackwardFilter(g))?.reshape(weight.shape())?;
    let db = match bias {
        Some(_) => Some(dy.sum((0, 2, 3, 4))?),
        None => None,
    };
    Ok((dx, dw, db))
}

impl CustomOp2 for CudnnForward {
    fn name(&self) -> &'static str {
        "conv3d-cudnn"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        cuda_only(self.name())
    }

    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        forward_into(&self.0, (s1, l1), (s2, l2), None)
    }

    fn bwd(
        &self,
        x: &Tensor,
        wb: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        backward(self.0, x, wb, grad)
    }
}

impl CustomOp3 for CudnnForwardAdd {
    fn name(&self) -> &'static str {
        "conv3d-cudnn-add"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        cuda_only(self.name())
    }

    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
        s3: &CudaStorage,
        l3: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        forward_into(&self.0, (s1, l1), (s2, l2), Some((s3, l3)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        wb: &Tensor,
        r: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, dwb) = backward(self.0, x, wb, grad)?;
        Ok((dx, dwb, r.track_op().then(|| grad.clone())))
    }
}

impl CustomOp2 for CudnnBackwardData {
    fn name(&self) -> &'static str {
        "conv3d-cudnn-bwd-data"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        cuda_only(self.name())
    }

    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let g = &self.0;
        let (dev, d) = prepare(s1, g)?;
        let dy = view(s1, l1)?;
        let wb = view(s2, l2)?;
        let w = wb.slice(..weight_len(g));
        let op = ConvBackwardData { conv: &d.conv, dx: &d.x, w: &d.w, dy: &d.y };
        let algo = op.pick_algorithm()?;
        let mut ws = workspace(&dev, op.get_workspace_size(algo)?)?;
        let [id, ih, iw] = g.input;
        let shape = Shape::from((g.n, g.cin, id, ih, iw));
        // SAFETY: cuDNN overwrites all of `dx` (beta = 0).
        let mut dx = unsafe { dev.alloc::<f32>(shape.elem_count()) }?;
        // SAFETY: as in the forward.
        unsafe { op.launch(algo, ws.as_mut(), (1.0, 0.0), &mut dx, &w, &dy) }?;
        Ok((CudaStorage::wrap_cuda_slice(dx, dev), shape))
    }
}

impl CustomOp2 for CudnnBackwardFilter {
    fn name(&self) -> &'static str {
        "conv3d-cudnn-bwd-filter"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        cuda_only(self.name())
    }

    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let g = &self.0;
        let (dev, d) = prepare(s1, g)?;
        let dy = view(s1, l1)?;
        let x = view(s2, l2)?;
        let op = ConvBackwardFilter { conv: &d.conv, x: &d.x, dw: &d.w, dy: &d.y };
        let algo = op.pick_algorithm()?;
        let mut ws = workspace(&dev, op.get_workspace_size(algo)?)?;
        let shape = Shape::from(weight_len(g));
        // SAFETY: cuDNN overwrites all of `dw` (beta = 0).
        let mut dw = unsafe { dev.alloc::<f32>(shape.elem_count()) }?;
        // SAFETY: as in the forward.
        unsafe { op.launch(algo, ws.as_mut(), (1.0, 0.0), &x, &mut dw, &dy) }?;
        Ok((CudaStorage::wrap_cuda_slice(dw, dev), shape))
    }
}

/// `conv(x, weight) + bias + residual` on a CUDA device.
pub(super) fn forward(
    g: ConvGeom,
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    residual: Option<&Tensor>,
) -> Result<Tensor> {
    if x.dtype() != DType::F32 {
        bail!("conv3d (cuDNN): only f32 is supported, got {:?}", x.dtype())
    }
    let wb = flat_weight(weight, bias)?;
    let x = x.contiguous()?;
    match residual {
        Some(r) => x.apply_op3(&wb, &r.contiguous()?, CudnnForwardAdd(g)),
        None => x.apply_op2(&wb, CudnnForward(g)),
    }
}
