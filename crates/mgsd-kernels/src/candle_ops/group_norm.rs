//! GroupNorm (+ ReLU) on CUDA tensors with the kernels of `kernels/group_norm.cu`, as one
//! differentiable candle op: the CUDA twin of mgsd-nn's CPU GroupNorm op. Forward: statistics
//! (many blocks per group, f64 partial sums), then one pass writing `y`. Backward: the
//! statistics again (one read of `x` instead of keeping them), per-channel sums of `dy'` and
//! `dy'·(x − mean)`, per-group coefficients, then one pass writing `dx`; `dγ`, `dβ` come out of
//! the same op. The composed candle version this replaces kept six full-size temporaries alive
//! for autograd and ran about fifteen kernels.

use candle_core::cuda_backend::cudarc::driver::{CudaFunction, CudaSlice, CudaView, PushKernelArg};
use candle_core::cuda_backend::{CudaDevice, WrapErr};
use candle_core::{bail, CpuStorage, CudaStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};

use super::{cuda_only, grid_stride, to_i32, view};
use crate::launch::Launch;

/// Name under which candle caches the PTX module per device.
const MODULE: &str = "mgsd_group_norm";
/// `THREADS` of the kernels.
const THREADS: usize = 256;
// The apply kernels stride by the .cu's compile-time THREADS, yet launch through the shared
// `grid_stride`: the two block sizes must stay equal.
const _: () = assert!(THREADS == super::GRID_STRIDE_THREADS);
/// Elements one block of a reduction covers (64 per thread: short f32 partial sums).
const PER_BLOCK: usize = 64 * THREADS;
const TWIN: &str = "mgsd_nn::group_norm";

/// GroupNorm of a `(N, C, D, H, W)` f32 CUDA tensor, then ReLU when `relu`. Differentiable in
/// `x`, `gamma` and `beta`.
///
/// # Shapes
/// `x`: `(N, C, D, H, W)`, `gamma`, `beta`: `(C,)` → `(N, C, D, H, W)`.
pub fn group_norm(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    groups: usize,
    eps: f64,
    relu: bool,
) -> Result<Tensor> {
    let (_, c, _, _, _) = x.dims5()?;
    if groups == 0 || !c.is_multiple_of(groups) || gamma.dims() != [c] || beta.dims() != [c] {
        bail!(
            "group_norm (CUDA): {groups} groups, x {:?}, gamma {:?}, beta {:?} do not fit",
            x.shape(),
            gamma.shape(),
            beta.shape()
        )
    }
    if [x.dtype(), gamma.dtype(), beta.dtype()] != [DType::F32; 3] {
        bail!("group_norm (CUDA): f32 only, got {:?}", x.dtype())
    }
    let op = Forward { groups, eps: eps as f32, relu };
    x.contiguous()?.apply_op3(&gamma.contiguous()?, &beta.contiguous()?, op)
}

/// Gradients of [`group_norm`] with respect to `x`, `gamma` and `beta`, from the output
/// gradient `dy`, without autograd: the same kernels as the op's backward. For callers that
/// rebuild the GroupNorm output in their own backward instead of keeping it. Returns
/// `(dx, dgamma, dbeta)`.
pub fn group_norm_backward(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    dy: &Tensor,
    groups: usize,
    eps: f64,
    relu: bool,
) -> Result<(Tensor, Tensor, Tensor)> {
    let op = Forward { groups, eps: eps as f32, relu };
    let x = x.contiguous()?;
    match op.bwd(&x, &gamma.contiguous()?, &beta.contiguous()?, &x, dy)? {
        (Some(dx), Some(dg), Some(db)) => Ok((dx, dg, db)),
        _ => bail!("group_norm_backward (CUDA): the op returned no gradient"),
    }
}

/// Sizes of one call.
#[derive(Clone, Copy, Debug)]
struct Geom {
    n: usize,
    c: usize,
    /// Voxels per channel plane.
    s: usize,
    groups: usize,
}

impl Geom {
    fn new(x: &Layout, groups: usize) -> Result<Self> {
        let (n, c, d, h, w) = x.shape().dims5()?;
        Ok(Self { n, c, s: d * h * w, groups })
    }

    fn cg(&self) -> usize {
        self.c / self.groups
    }

    fn total(&self) -> usize {
        self.n * self.c * self.s
    }

    /// Groups over the batch, `N·G`.
    fn ng(&self) -> usize {
        self.n * self.groups
    }
}

struct Forward {
    groups: usize,
    eps: f32,
    relu: bool,
}

/// `(x, [γ; β], dy)` → `[dx, dγ per (n, c), dβ per (n, c)]`, flat.
struct Backward {
    groups: usize,
    eps: f32,
    relu: bool,
}

fn func(dev: &CudaDevice, name: &str) -> Result<CudaFunction> {
    Ok(dev.get_or_load_custom_func(name, MODULE, crate::GROUP_NORM_PTX)?.into_cuda_function())
}

fn small(count: usize) -> Launch {
    Launch { grid: [count.div_ceil(128) as u32, 1, 1], block: [128, 1, 1], shared_mem_bytes: 0 }
}

/// `(mean, rstd)` of every group, f32 `(N·G, 2)`.
fn stats(dev: &CudaDevice, x: &CudaView<'_, f32>, g: &Geom, eps: f32) -> Result<CudaSlice<f32>> {
    let m = (g.cg() * g.s) as i64;
    let mut acc = dev.alloc_zeros::<f64>(2 * g.ng())?;
    let blocks = (m as usize).div_ceil(PER_BLOCK);
    let l = Launch {
        grid: [blocks as u32, to_i32(g.ng())? as u32, 1],
        block: [THREADS as u32, 1, 1],
        shared_mem_bytes: 0,
    };
    let f = func(dev, "mgsd_gn_stats")?;
    let per_block = PER_BLOCK as i64;
    let stream = dev.cuda_stream();
    let mut b = stream.launch_builder(&f);
    b.arg(x).arg(&mut acc).arg(&m).arg(&per_block);
    // SAFETY: arguments as `mgsd_gn_stats` declares; grid (chunks, N·G).
    unsafe { b.launch(super::config(l)) }.w()?;
    // SAFETY: the finalize kernel writes every element.
    let mut out = unsafe { dev.alloc::<f32>(2 * g.ng()) }?;
    let f = func(dev, "mgsd_gn_finalize")?;
    let groups = to_i32(g.ng())?;
    let stream = dev.cuda_stream();
    let mut b = stream.launch_builder(&f);
    b.arg(x).arg(&acc).arg(&mut out).arg(&groups).arg(&m).arg(&eps);
    // SAFETY: one thread per group.
    unsafe { b.launch(super::config(small(g.ng()))) }.w()?;
    Ok(out)
}

impl CustomOp3 for Forward {
    fn name(&self) -> &'static str {
        "mgsd-group-norm"
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
        cuda_only(self.name(), TWIN)
    }

    fn cuda_fwd(
        &self,
        sx: &CudaStorage,
        lx: &Layout,
        sg: &CudaStorage,
        lg: &Layout,
        sb: &CudaStorage,
        lb: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let dev = sx.device.clone();
        let g = Geom::new(lx, self.groups)?;
        let x = view(sx, lx)?;
        let st = stats(&dev, &x, &g, self.eps)?;
        // SAFETY: the apply kernel writes every element.
        let mut y = unsafe { dev.alloc::<f32>(g.total()) }?;
        let f = func(&dev, "mgsd_gn_apply")?;
        let (total, s) = (g.total() as i64, g.s as i64);
        let (c, cg, relu) = (to_i32(g.c)?, to_i32(g.cg())?, i32::from(self.relu));
        let (gamma, beta) = (view(sg, lg)?, view(sb, lb)?);
        let stream = dev.cuda_stream();
        let mut b = stream.launch_builder(&f);
        b.arg(&x).arg(&st).arg(&gamma).arg(&beta).arg(&mut y);
        b.arg(&total).arg(&s).arg(&c).arg(&cg).arg(&relu);
        // SAFETY: arguments as `mgsd_gn_apply` declares; grid-stride loop.
        unsafe { b.launch(super::config(grid_stride(&dev, g.total()))) }.w()?;
        Ok((CudaStorage::wrap_cuda_slice(y, dev), lx.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (n, c, d, h, w) = x.dims5()?;
        let gb = Tensor::cat(&[gamma, beta], 0)?;
        let op = Backward { groups: self.groups, eps: self.eps, relu: self.relu };
        let flat = x.apply_op3_no_bwd(&gb, &dy.contiguous()?, &op)?;
        let total = n * c * d * h * w;
        let dx = flat.narrow(0, 0, total)?.reshape((n, c, d, h, w))?;
        let dgamma = flat.narrow(0, total, n * c)?.reshape((n, c))?.sum(0)?;
        let dbeta = flat.narrow(0, total + n * c, n * c)?.reshape((n, c))?.sum(0)?;
        Ok((Some(dx), Some(dgamma), Some(dbeta)))
    }
}

impl CustomOp3 for Backward {
    fn name(&self) -> &'static str {
        "mgsd-group-norm-bwd"
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
        cuda_only(self.name(), TWIN)
    }

    fn cuda_fwd(
        &self,
        sx: &CudaStorage,
        lx: &Layout,
        sgb: &CudaStorage,
        lgb: &Layout,
        sdy: &CudaStorage,
        ldy: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let dev = sx.device.clone();
        let g = Geom::new(lx, self.groups)?;
        let nc = g.n * g.c;
        let x = view(sx, lx)?;
        let gb = view(sgb, lgb)?;
        let (gamma, beta) = (gb.slice(..g.c), gb.slice(g.c..));
        let dy = view(sdy, ldy)?;
        let st = stats(&dev, &x, &g, self.eps)?;
        let (s, c, cg, relu) = (g.s as i64, to_i32(g.c)?, to_i32(g.cg())?, i32::from(self.relu));

        // Per-channel sums of dy' and dy'·(x − mean).
        let mut acc = dev.alloc_zeros::<f64>(2 * nc)?;
        let per_block = PER_BLOCK as i64;
        let l = Launch {
            grid: [g.s.div_ceil(PER_BLOCK) as u32, to_i32(nc)? as u32, 1],
            block: [THREADS as u32, 1, 1],
            shared_mem_bytes: 0,
        };
        let f = func(&dev, "mgsd_gn_bwd_reduce")?;
        let stream = dev.cuda_stream();
        let mut b = stream.launch_builder(&f);
        b.arg(&x).arg(&dy).arg(&st).arg(&gamma).arg(&beta).arg(&mut acc);
        b.arg(&s).arg(&c).arg(&cg).arg(&relu).arg(&per_block);
        // SAFETY: arguments as `mgsd_gn_bwd_reduce` declares; grid (chunks, N·C).
        unsafe { b.launch(super::config(l)) }.w()?;

        // Output: dx, then dγ and dβ per (n, c).
        // SAFETY: bwd_apply writes dx, bwd_coef writes the 2·N·C tail.
        let mut out = unsafe { dev.alloc::<f32>(g.total() + 2 * nc) }?;
        // SAFETY: bwd_coef writes every coefficient.
        let mut coef = unsafe { dev.alloc::<f32>(3 * nc) }?;
        {
            let mut dgb = out.slice_mut(g.total()..);
            let f = func(&dev, "mgsd_gn_bwd_coef")?;
            let groups = to_i32(g.ng())?;
            let stream = dev.cuda_stream();
            let mut b = stream.launch_builder(&f);
            b.arg(&st).arg(&gamma).arg(&acc).arg(&mut coef).arg(&mut dgb);
            b.arg(&groups).arg(&c).arg(&cg).arg(&s);
            // SAFETY: one thread per group.
            unsafe { b.launch(super::config(small(g.ng()))) }.w()?;
        }
        {
            let mut dx = out.slice_mut(..g.total());
            let f = func(&dev, "mgsd_gn_bwd_apply")?;
            let total = g.total() as i64;
            let stream = dev.cuda_stream();
            let mut b = stream.launch_builder(&f);
            b.arg(&x).arg(&dy).arg(&st).arg(&gamma).arg(&beta).arg(&coef).arg(&mut dx);
            b.arg(&total).arg(&s).arg(&c).arg(&cg).arg(&relu);
            // SAFETY: arguments as `mgsd_gn_bwd_apply` declares; grid-stride loop.
            unsafe { b.launch(super::config(grid_stride(&dev, g.total()))) }.w()?;
        }
        Ok((CudaStorage::wrap_cuda_slice(out, dev), Shape::from(g.total() + 2 * nc)))
    }
}
