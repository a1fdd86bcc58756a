//! Conv3d on CUDA through cuDNN's N-d convolution (`cuda` feature): forward, data gradient and
//! filter gradient as three candle custom ops, like PyTorch's `cudnn_convolution` and its two
//! backward kernels. candle's own CUDA conv backward is a naive kernel; it is not used.
//!
//! The bias and the residual are added in place on the convolution's output by a small kernel
//! of `mgsd-kernels` (`conv_epilogue`), so they cost no extra tensor in the autograd graph;
//! as on the CPU path, weight and bias travel as one flat operand `[w…, b…]` and candle's
//! autograd splits the gradient back. Algorithms come from
//! cuDNN's heuristics (`cudnnGetConvolution*Algorithm_v7`), which is what PyTorch does with
//! `torch.backends.cudnn.benchmark = False`, its default; [`set_cudnn_benchmark`] measures
//! them instead (`algo.rs`). TF32 tensor-core math is allowed by
//! default, as in PyTorch (`torch.backends.cudnn.allow_tf32 = True`); [`set_cudnn_tf32`] turns
//! it off for full-f32 FMA math.
//!
//! In bf16 mixed precision ([`ConvPrecision`]) each op rounds its f32 operands into
//! channels-last (NDHWC) bf16 scratch copies (`mgsd_kernels::candle_ops::conv_bf16`), runs
//! cuDNN on them with f32 accumulation (`PSEUDO_BFLOAT16_CONFIG`), and widens the bf16 result
//! back to f32, adding bias and residual on the way. The copies live only for the call: what
//! the autograd graph keeps is the same as in f32.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use candle_core::cuda_backend::cudarc::cudnn::safe::{
    ConvBackwardData, ConvBackwardFilter, ConvDescriptor, ConvForward, Cudnn, CudnnDataType,
    FilterDescriptor, TensorDescriptor,
};
use candle_core::cuda_backend::cudarc::cudnn::sys;
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut};
use candle_core::cuda_backend::{CudaDevice, DeviceId};
use candle_core::{
    bail, CpuStorage, CudaStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor,
};
use half::bf16;
use mgsd_kernels::candle_ops::{conv_bf16, conv_epilogue, view};

use super::precision::{conv_precision, ConvPrecision};
use super::ConvGeom;

mod algo;
pub use algo::set_cudnn_benchmark;

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

/// How one convolution computes: fixed when its forward runs, and used by its backward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Math {
    /// f32 operands; TF32 tensor cores when `tf32`.
    F32 { tf32: bool },
    /// NDHWC bf16 copies of the operands.
    Bf16,
}

impl Math {
    /// The process-wide settings now.
    fn current() -> Math {
        match conv_precision() {
            ConvPrecision::F32 => Math::F32 { tf32: ALLOW_TF32.load(Ordering::Relaxed) },
            ConvPrecision::Bf16 => Math::Bf16,
        }
    }
}

/// One convolution: its geometry and its arithmetic.
#[derive(Debug, Clone, Copy)]
struct Conv {
    g: ConvGeom,
    math: Math,
}

/// The element types cuDNN runs on here, with the `(alpha, beta) = (1, 0)` of an overwrite.
trait Elem: CudnnDataType + Sized {
    const OVERWRITE: (Self, Self);
}

impl Elem for f32 {
    const OVERWRITE: (Self, Self) = (1.0, 0.0);
}

impl Elem for bf16 {
    const OVERWRITE: (Self, Self) = (bf16::ONE, bf16::ZERO);
}

/// The four descriptors of one geometry, for operands of type `T`.
struct Descs<T: CudnnDataType> {
    conv: ConvDescriptor<f32>,
    x: TensorDescriptor<T>,
    w: FilterDescriptor<T>,
    y: TensorDescriptor<T>,
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

/// Dims `(N, C, D, H, W)` and the packed strides of a 5-D tensor: NCDHW, or NDHWC when
/// `channels_last`.
fn nd(dims: [usize; 5], channels_last: bool, what: &str) -> Result<([i32; 5], [i32; 5])> {
    // The axes from the fastest-varying to the slowest.
    let order: [usize; 5] = if channels_last { [1, 4, 3, 2, 0] } else { [4, 3, 2, 1, 0] };
    let mut strides = [0usize; 5];
    let mut step = 1;
    for a in order {
        strides[a] = step;
        step *= dims[a];
    }
    if dims.iter().product::<usize>() > i32::MAX as usize {
        bail!("conv3d (cuDNN): {what} {dims:?} has more than 2^31 elements")
    }
    Ok((i32s(dims, what)?, i32s(strides, what)?))
}

fn descs<T: CudnnDataType>(cudnn: &Arc<Cudnn>, c: &Conv) -> Result<Descs<T>> {
    let g = &c.g;
    let mut conv = cudnn.create_convnd::<f32>(
        &i32s(g.padding, "padding")?,
        &i32s(g.stride, "stride")?,
        &i32s(g.dilation, "dilation")?,
        sys::cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION,
    )?;
    let (math, channels_last) = match c.math {
        Math::F32 { tf32: true } => (sys::cudnnMathType_t::CUDNN_DEFAULT_MATH, false),
        Math::F32 { tf32: false } => (sys::cudnnMathType_t::CUDNN_FMA_MATH, false),
        Math::Bf16 => (sys::cudnnMathType_t::CUDNN_TENSOR_OP_MATH, true),
    };
    conv.set_math_type(math)?;
    let [d, h, w] = g.input;
    let (xd, xs) = nd([g.n, g.cin, d, h, w], channels_last, "input")?;
    let x = cudnn.create_nd_tensor::<T>(&xd, &xs)?;
    let [od, oh, ow] = g.output;
    let (yd, ys) = nd([g.n, g.cout, od, oh, ow], channels_last, "output")?;
    let y = cudnn.create_nd_tensor::<T>(&yd, &ys)?;
    let [k0, k1, k2] = g.kernel;
    let wd = i32s([g.cout, g.cin, k0, k1, k2], "weight")?;
    let format = if channels_last {
        sys::cudnnTensorFormat_t::CUDNN_TENSOR_NHWC
    } else {
        sys::cudnnTensorFormat_t::CUDNN_TENSOR_NCHW
    };
    let w = cudnn.create_nd_filter::<T>(format, &wd)?;
    Ok(Descs { conv, x, w, y })
}

fn workspace(dev: &CudaDevice, bytes: usize) -> Result<Option<CudaSlice<u8>>> {
    // SAFETY: cuDNN only writes the workspace before reading it.
    (bytes > 0).then(|| unsafe { dev.alloc::<u8>(bytes) }).transpose()
}

fn cuda_only<T>(name: &str) -> Result<T> {
    mgsd_kernels::candle_ops::cuda_only(name, "mgsd-nn's CPU conv3d")
}

/// A buffer cuDNN overwrites completely (beta = 0).
fn output<T: candle_core::cuda_backend::cudarc::driver::DeviceRepr>(
    dev: &CudaDevice,
    len: usize,
) -> Result<CudaSlice<T>> {
    // SAFETY: every caller hands the buffer to cuDNN with beta = 0, which writes all of it.
    unsafe { dev.alloc::<T>(len) }
}

/// Runs one cuDNN call of `c` with the algorithm `algo::choose` picks: `heuristic` is cuDNN's
/// first choice, `workspace_size` and `launch` the call's own (`launch` gets the algorithm and
/// a workspace of the size asked for).
fn run_chosen<A: Copy + Eq + std::hash::Hash + 'static>(
    dev: &CudaDevice,
    c: &Conv,
    (cache, candidates): (&'static algo::CacheKey<A>, &[A]),
    heuristic: impl FnOnce() -> Result<A>,
    workspace_size: impl Fn(A) -> Result<usize>,
    mut launch: impl FnMut(A, Option<&mut CudaSlice<u8>>) -> Result<()>,
) -> Result<()> {
    let mut run = |algo, benchmarking: bool| -> Result<()> {
        let bytes = workspace_size(algo)?;
        if benchmarking {
            algo::check_benchmark_workspace(bytes)?;
        }
        let mut ws = workspace(dev, bytes)?;
        launch(algo, ws.as_mut())
    };
    let key = (dev.id(), c.g, c.math);
    let algo = algo::choose(cache, key, dev, candidates, heuristic, |a| run(a, true))?;
    run(algo, false)
}

// SAFETY (the three launches below): the operands match the descriptors: packed `T` of the
// geometry's shapes, in the descriptors' layout.

/// `y = conv(x, w)`.
fn launch_forward<T: Elem>(
    dev: &CudaDevice,
    c: &Conv,
    d: &Descs<T>,
    x: &impl DevicePtr<T>,
    w: &impl DevicePtr<T>,
    y: &mut impl DevicePtrMut<T>,
) -> Result<()> {
    let op = ConvForward { conv: &d.conv, x: &d.x, w: &d.w, y: &d.y };
    run_chosen(
        dev,
        c,
        (&algo::FORWARD, &algo::FORWARD_ALGOS),
        || Ok(op.pick_algorithm()?),
        |a| Ok(op.get_workspace_size(a)?),
        |a, ws| Ok(unsafe { op.launch(a, ws, T::OVERWRITE, x, w, &mut *y) }?),
    )
}

/// `dx` from `dy` and `w`.
fn launch_backward_data<T: Elem>(
    dev: &CudaDevice,
    c: &Conv,
    d: &Descs<T>,
    dx: &mut impl DevicePtrMut<T>,
    w: &impl DevicePtr<T>,
    dy: &impl DevicePtr<T>,
) -> Result<()> {
    let op = ConvBackwardData { conv: &d.conv, dx: &d.x, w: &d.w, dy: &d.y };
    run_chosen(
        dev,
        c,
        (&algo::DATA, &algo::DATA_ALGOS),
        || Ok(op.pick_algorithm()?),
        |a| Ok(op.get_workspace_size(a)?),
        |a, ws| Ok(unsafe { op.launch(a, ws, T::OVERWRITE, &mut *dx, w, dy) }?),
    )
}

/// `dw` from `dy` and `x`.
fn launch_backward_filter<T: Elem>(
    dev: &CudaDevice,
    c: &Conv,
    d: &Descs<T>,
    x: &impl DevicePtr<T>,
    dw: &mut impl DevicePtrMut<T>,
    dy: &impl DevicePtr<T>,
) -> Result<()> {
    let op = ConvBackwardFilter { conv: &d.conv, x: &d.x, dw: &d.w, dy: &d.y };
    run_chosen(
        dev,
        c,
        (&algo::FILTER, &algo::FILTER_ALGOS),
        || Ok(op.pick_algorithm()?),
        |a| Ok(op.get_workspace_size(a)?),
        |a, ws| Ok(unsafe { op.launch(a, ws, T::OVERWRITE, x, &mut *dw, dy) }?),
    )
}

/// `(N, Cin, S)` of the input, `(N, Cout, S')` of the output and `(Cout, Cin, R)` of the
/// filter: the shapes of the bf16 copies.
fn input_ncs(g: &ConvGeom) -> (usize, usize, usize) {
    (g.n, g.cin, g.in_spatial())
}

fn output_ncs(g: &ConvGeom) -> (usize, usize, usize) {
    (g.n, g.cout, g.out_spatial())
}

fn filter_ncs(g: &ConvGeom) -> (usize, usize, usize) {
    (g.cout, g.cin, g.kernel.iter().product())
}

/// `y = conv(x, w) + b`; operands `x` `(N, Cin, D, H, W)` and the flat `[w…, b…]`.
struct CudnnForward(Conv);

/// `y = conv(x, w) + b + r`; operands `x`, the flat `[w…, b…]` and the residual `r`.
struct CudnnForwardAdd(Conv);

/// `dx` from `dy` and the flat `[w…, b…]`.
struct CudnnBackwardData(Conv);

/// `dw` (flat, without the bias) from `dy` and `x`.
struct CudnnBackwardFilter(Conv);

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

/// The convolution, then the epilogue (bias, residual): in place on the f32 output, or on
/// the way back from the bf16 one.
fn forward_into(
    c: &Conv,
    (sx, lx): (&CudaStorage, &Layout),
    (swb, lwb): (&CudaStorage, &Layout),
    residual: Option<(&CudaStorage, &Layout)>,
) -> Result<(CudaStorage, Shape)> {
    let g = &c.g;
    let dev = sx.device.clone();
    let cudnn = handle(&dev)?;
    let x = view(sx, lx)?;
    let wb = view(swb, lwb)?;
    let w = wb.slice(..weight_len(g));
    let bias = g.has_bias.then(|| wb.slice(weight_len(g)..));
    let r = residual.map(|(s, l)| view(s, l)).transpose()?;
    let out_shape = g.out_shape();
    let y = match c.math {
        Math::F32 { .. } => {
            let mut y = output::<f32>(&dev, out_shape.elem_count())?;
            launch_forward(&dev, c, &descs::<f32>(&cudnn, c)?, &x, &w, &mut y)?;
            let (s, cout) = (g.out_spatial(), g.cout);
            conv_epilogue::bias_residual_add(&dev, &mut y, bias.as_ref(), r.as_ref(), (s, cout))?;
            y
        }
        Math::Bf16 => {
            let xh = conv_bf16::to_bf16(&dev, &x, input_ncs(g))?;
            let wh = conv_bf16::to_bf16(&dev, &w, filter_ncs(g))?;
            let mut yh = output::<bf16>(&dev, out_shape.elem_count())?;
            launch_forward(&dev, c, &descs::<bf16>(&cudnn, c)?, &xh, &wh, &mut yh)?;
            conv_bf16::to_f32(&dev, &yh, bias.as_ref(), r.as_ref(), output_ncs(g))?
        }
    };
    Ok((CudaStorage::wrap_cuda_slice(y, dev), out_shape))
}

/// Gradients of `x` and of the flat `[w…, b…]`.
fn backward(
    c: Conv,
    x: &Tensor,
    wb: &Tensor,
    grad: &Tensor,
) -> Result<(Option<Tensor>, Option<Tensor>)> {
    let (dx, dw) = super::conv_bwd(x, wb, grad, &CudnnBackwardData(c), &CudnnBackwardFilter(c))?;
    let dwb = match dw {
        Some(dw) if c.g.has_bias => Some(Tensor::cat(&[&dw, &grad.sum((0, 2, 3, 4))?], 0)?),
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
    let c = Conv { g, math: Math::current() };
    let dx = dy.apply_op2_no_bwd(&flat_weight(weight, bias)?, &CudnnBackwardData(c))?;
    let dw = dy.apply_op2_no_bwd(x, &CudnnBackwardFilter(c))?.reshape(weight.shape())?;
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
        let c = &self.0;
        let g = &c.g;
        let dev = s1.device.clone();
        let cudnn = handle(&dev)?;
        let dy = view(s1, l1)?;
        let wb = view(s2, l2)?;
        let w = wb.slice(..weight_len(g));
        let [id, ih, iw] = g.input;
        let shape = Shape::from((g.n, g.cin, id, ih, iw));
        let dx = match c.math {
            Math::F32 { .. } => {
                let mut dx = output::<f32>(&dev, shape.elem_count())?;
                launch_backward_data(&dev, c, &descs::<f32>(&cudnn, c)?, &mut dx, &w, &dy)?;
                dx
            }
            Math::Bf16 => {
                let dyh = conv_bf16::to_bf16(&dev, &dy, output_ncs(g))?;
                let wh = conv_bf16::to_bf16(&dev, &w, filter_ncs(g))?;
                let mut dxh = output::<bf16>(&dev, shape.elem_count())?;
                launch_backward_data(&dev, c, &descs::<bf16>(&cudnn, c)?, &mut dxh, &wh, &dyh)?;
                conv_bf16::to_f32(&dev, &dxh, None, None, input_ncs(g))?
            }
        };
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
        let c = &self.0;
        let g = &c.g;
        let dev = s1.device.clone();
        let cudnn = handle(&dev)?;
        let dy = view(s1, l1)?;
        let x = view(s2, l2)?;
        let shape = Shape::from(weight_len(g));
        let dw = match c.math {
            Math::F32 { .. } => {
                let mut dw = output::<f32>(&dev, shape.elem_count())?;
                launch_backward_filter(&dev, c, &descs::<f32>(&cudnn, c)?, &x, &mut dw, &dy)?;
                dw
            }
            Math::Bf16 => {
                let dyh = conv_bf16::to_bf16(&dev, &dy, output_ncs(g))?;
                let xh = conv_bf16::to_bf16(&dev, &x, input_ncs(g))?;
                let mut dwh = output::<bf16>(&dev, shape.elem_count())?;
                launch_backward_filter(&dev, c, &descs::<bf16>(&cudnn, c)?, &xh, &mut dwh, &dyh)?;
                conv_bf16::to_f32(&dev, &dwh, None, None, filter_ncs(g))?
            }
        };
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
    let c = Conv { g, math: Math::current() };
    let wb = flat_weight(weight, bias)?;
    let x = x.contiguous()?;
    match residual {
        Some(r) => x.apply_op3(&wb, &r.contiguous()?, CudnnForwardAdd(c)),
        None => x.apply_op2(&wb, CudnnForward(c)),
    }
}
