//! The no-softmax attention kernels as a differentiable candle op on CUDA tensors (`cuda`
//! feature): `out = q (kᵀv)·scale` for `(B, H, N, dh)` f32 or bf16 tensors, dh 32 or 64 (bf16:
//! tensor-core kernels, f32 accumulation, `M` kept in f32).
//!
//! Forward: `M = kᵀv` (one [`Op::Outer`] over the keys), then `out = scale·q·M` ([`Op::Apply`]).
//! Backward: `dq = scale·dout·Mᵀ` (M recomputed, one cheap pass over the keys), and
//! `dM = scale·qᵀ·dout` (an Outer over the queries) shared by `dk = v·dMᵀ` and `dv = k·dM`,
//! computed by one op that returns `dk` and `dv` stacked. The CPU twin is
//! `mgsd_nn::attention::cross_attention` (two matmuls), which the GPU tests compare against.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{
    CudaSlice, CudaView, CudaViewMut, DeviceRepr, PushKernelArg,
};
use candle_core::cuda_backend::{CudaDType, CudaDevice, WrapErr};
use candle_core::{bail, CpuStorage, CudaStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};
use half::bf16;

use super::{config, cuda_only, launch_err, num_sms, to_i32, view_as};
use crate::launch::{self, Dtype, Op};

/// The storage types of the attention kernels: f32, or bf16 with f32 accumulation.
pub(super) trait Elem: CudaDType + DeviceRepr + 'static {
    /// The kernels' name suffix.
    const DTYPE: Dtype;

    /// Writes f32 accumulators into `out` in this type (a copy, or a rounding to bf16).
    fn from_accumulators(
        dev: &CudaDevice,
        acc: &CudaSlice<f32>,
        out: CudaViewMut<'_, Self>,
    ) -> Result<()>;
}

impl Elem for f32 {
    const DTYPE: Dtype = Dtype::F32;

    fn from_accumulators(
        dev: &CudaDevice,
        acc: &CudaSlice<f32>,
        mut out: CudaViewMut<'_, f32>,
    ) -> Result<()> {
        dev.cuda_stream().memcpy_dtod(acc, &mut out).w()
    }
}

impl Elem for bf16 {
    const DTYPE: Dtype = Dtype::Bf16;

    fn from_accumulators(
        dev: &CudaDevice,
        acc: &CudaSlice<f32>,
        mut out: CudaViewMut<'_, bf16>,
    ) -> Result<()> {
        let l = launch::cast(acc.len()).map_err(launch_err)?;
        let f = dev.get_or_load_custom_func(launch::CAST_F32_BF16, MODULE, crate::ATTENTION_PTX)?;
        let n = to_i32(acc.len())?;
        let mut b = f.builder();
        b.arg(acc).arg(&mut out).arg(&n);
        // SAFETY: argument list and geometry as `launch.rs` documents for the cast.
        unsafe { b.launch(config(l)) }.w()?;
        Ok(())
    }
}

/// Runs `$body` with `$t` the element type of the storage `$s` (f32 or bf16).
macro_rules! by_dtype {
    ($s:expr, $op:expr, $t:ident => $body:expr) => {
        match $s.dtype() {
            DType::F32 => {
                type $t = f32;
                $body
            }
            DType::BF16 => {
                type $t = half::bf16;
                $body
            }
            other => candle_core::bail!("{}: f32 or bf16 only, got {other:?}", $op),
        }
    };
}
pub(super) use by_dtype;

/// Name under which candle caches the PTX module per device.
const MODULE: &str = "mgsd_attention";

/// `q (kᵀv)·scale` on CUDA with the fused kernels. Differentiable in `q`, `k` and `v`.
///
/// # Shapes
/// `q`: `(B, H, Nq, dh)`, `k`, `v`: `(B, H, Nk, dh)` → `(B, H, Nq, dh)`; f32 or bf16 (all three
/// the same), dh ∈ {32, 64}.
pub fn no_softmax_attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f32) -> Result<Tensor> {
    check_operands("no_softmax_attention", q, k, v)?;
    q.contiguous()?.apply_op3(&k.contiguous()?, &v.contiguous()?, Forward { scale })
}

/// What both attention ops take: `q` `(B, H, Nq, dh)`, `k` and `v` `(B, H, Nk, dh)`, all f32
/// or all bf16, dh one of [`launch::HEAD_DIMS`]. `op` names the caller in the error.
pub(super) fn check_operands(op: &str, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<()> {
    let (b, h, _, dh) = q.dims4()?;
    let (kb, kh, _, kd) = k.dims4()?;
    if (kb, kh, kd) != (b, h, dh) || v.dims() != k.dims() {
        bail!(
            "{op}: q {:?}, k {:?}, v {:?} must be (B, H, Nq, dh), (B, H, Nk, dh) twice",
            q.shape(),
            k.shape(),
            v.shape()
        )
    }
    let dt = q.dtype();
    if !matches!(dt, DType::F32 | DType::BF16) || k.dtype() != dt || v.dtype() != dt {
        bail!(
            "{op}: q, k and v must all be f32 or all bf16, got {:?}, {:?}, {:?}",
            dt,
            k.dtype(),
            v.dtype()
        )
    }
    if !launch::HEAD_DIMS.contains(&dh) {
        bail!("{op}: head dim {dh} is not one of {:?}", launch::HEAD_DIMS)
    }
    Ok(())
}

/// Whether [`no_softmax_attention`] takes these shapes (the caller falls back otherwise).
pub fn supports_head_dim(head_dim: usize) -> bool {
    launch::HEAD_DIMS.contains(&head_dim)
}

struct Forward {
    scale: f32,
}

/// `dq` from `(dout, k, v)`.
struct GradQ {
    scale: f32,
}

/// `dk` and `dv`, stacked as `(2, B, H, Nk, dh)`, from `(q, dout, stack(k, v))`.
struct GradKv {
    scale: f32,
}

/// `m[bh] = alpha·aᵀb` over `n` rows per head; `m` is a fresh zeroed f32 `(bh, dh, dh)`.
fn outer<T: Elem>(
    dev: &CudaDevice,
    a: &CudaView<'_, T>,
    b: &CudaView<'_, T>,
    (bh, n, dh): (usize, usize, usize),
    alpha: f32,
) -> Result<CudaSlice<f32>> {
    let mut m = dev.alloc_zeros::<f32>(bh * dh * dh)?;
    let (l, rows) = launch::outer(bh, n, dh, num_sms(dev)).map_err(launch_err)?;
    let name = launch::kernel_name(Op::Outer, T::DTYPE, dh).map_err(launch_err)?;
    let func = dev.get_or_load_custom_func(&name, MODULE, crate::ATTENTION_PTX)?;
    let (n, rows) = (to_i32(n)?, rows as i32);
    let mut builder = func.builder();
    builder.arg(a).arg(b).arg(&mut m).arg(&n).arg(&rows).arg(&alpha);
    // SAFETY: argument list and geometry as `launch.rs` documents for Outer.
    unsafe { builder.launch(config(l)) }.w()?;
    Ok(m)
}

/// `out = alpha·x·M` (or `Mᵀ` when `transpose`) over `n` rows per head, into `out`.
fn apply<T: Elem>(
    dev: &CudaDevice,
    x: &CudaView<'_, T>,
    m: &CudaSlice<f32>,
    out: &mut CudaViewMut<'_, T>,
    (bh, n, dh): (usize, usize, usize),
    (alpha, transpose): (f32, bool),
) -> Result<()> {
    let l = launch::apply(bh, n, dh, T::DTYPE, num_sms(dev)).map_err(launch_err)?;
    let name = launch::kernel_name(Op::Apply, T::DTYPE, dh).map_err(launch_err)?;
    let func = dev.get_or_load_custom_func(&name, MODULE, crate::ATTENTION_PTX)?;
    let (n, t) = (to_i32(n)?, i32::from(transpose));
    let mut builder = func.builder();
    builder.arg(x).arg(m).arg(out).arg(&n).arg(&alpha).arg(&t);
    // SAFETY: argument list and geometry as `launch.rs` documents for Apply.
    unsafe { builder.launch(config(l)) }.w()?;
    Ok(())
}

/// `alpha·x·M`, or `alpha·x·Mᵀ` when `transpose`, with `M = kᵀv` formed here: the forward
/// (`x = q`) and `dq` (`x = dout`, transposed) are the same two launches.
fn times_kv<T: Elem>(
    (sx, lx): (&CudaStorage, &Layout),
    (sk, lk): (&CudaStorage, &Layout),
    (sv, lv): (&CudaStorage, &Layout),
    (alpha, transpose): (f32, bool),
) -> Result<(CudaStorage, Shape)> {
    let dev = sx.device.clone();
    let (bh, n, dh) = heads(lx)?;
    let (_, nk, _) = heads(lk)?;
    let m = outer::<T>(&dev, &view_as(sk, lk)?, &view_as(sv, lv)?, (bh, nk, dh), 1.0)?;
    // SAFETY: Apply writes every element of `out`.
    let mut out = unsafe { dev.alloc::<T>(bh * n * dh) }?;
    let x = view_as::<T>(sx, lx)?;
    apply(&dev, &x, &m, &mut out.slice_mut(..), (bh, n, dh), (alpha, transpose))?;
    Ok((CudaStorage::wrap_cuda_slice(out, dev), lx.shape().clone()))
}

/// `(B·H, N, dh)` of a `(B, H, N, dh)` layout.
pub(super) fn heads(l: &Layout) -> Result<(usize, usize, usize)> {
    let (b, h, n, dh) = l.shape().dims4()?;
    Ok((b * h, n, dh))
}

impl CustomOp3 for Forward {
    fn name(&self) -> &'static str {
        "mgsd-no-softmax-attention"
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
        cuda_only(self.name(), "mgsd_nn::cross_attention")
    }

    fn cuda_fwd(
        &self,
        sq: &CudaStorage,
        lq: &Layout,
        sk: &CudaStorage,
        lk: &Layout,
        sv: &CudaStorage,
        lv: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        by_dtype!(sq, self.name(), T => times_kv::<T>((sq, lq), (sk, lk), (sv, lv), (self.scale, false)))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let scale = self.scale;
        let dq =
            if q.track_op() { Some(grad.apply_op3_no_bwd(k, v, &GradQ { scale })?) } else { None };
        let (dk, dv) = if k.track_op() || v.track_op() {
            let kv = Tensor::stack(&[k, v], 0)?;
            let both = q.apply_op3_no_bwd(&grad, &kv, &GradKv { scale })?;
            (Some(both.get(0)?), Some(both.get(1)?))
        } else {
            (None, None)
        };
        Ok((dq, dk, dv))
    }
}

impl CustomOp3 for GradQ {
    fn name(&self) -> &'static str {
        "mgsd-no-softmax-attention-dq"
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
        cuda_only(self.name(), "mgsd_nn::cross_attention")
    }

    fn cuda_fwd(
        &self,
        sg: &CudaStorage,
        lg: &Layout,
        sk: &CudaStorage,
        lk: &Layout,
        sv: &CudaStorage,
        lv: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        by_dtype!(sg, self.name(), T => times_kv::<T>((sg, lg), (sk, lk), (sv, lv), (self.scale, true)))
    }
}

impl CustomOp3 for GradKv {
    fn name(&self) -> &'static str {
        "mgsd-no-softmax-attention-dkdv"
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
        cuda_only(self.name(), "mgsd_nn::cross_attention")
    }

    fn cuda_fwd(
        &self,
        sq: &CudaStorage,
        lq: &Layout,
        sg: &CudaStorage,
        lg: &Layout,
        skv: &CudaStorage,
        lkv: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let (two, b, h, _, _) = lkv.shape().dims5()?;
        if two != 2 || b * h != heads(lq)?.0 {
            bail!("no_softmax_attention backward: stacked k/v {:?} does not fit q", lkv.shape())
        }
        by_dtype!(sq, self.name(), T => grad_kv::<T>((sq, lq), (sg, lg), (skv, lkv), self.scale))
    }
}

/// `[dk, dv]` stacked: `dM = scale·qᵀ·dout`, `dk = v·dMᵀ`, `dv = k·dM`.
fn grad_kv<T: Elem>(
    (sq, lq): (&CudaStorage, &Layout),
    (sg, lg): (&CudaStorage, &Layout),
    (skv, lkv): (&CudaStorage, &Layout),
    scale: f32,
) -> Result<(CudaStorage, Shape)> {
    let dev = sq.device.clone();
    let (bh, nq, dh) = heads(lq)?;
    let nk = lkv.shape().dims5()?.3;
    let dm = outer::<T>(&dev, &view_as(sq, lq)?, &view_as(sg, lg)?, (bh, nq, dh), scale)?;
    let kv = view_as::<T>(skv, lkv)?;
    let half = bh * nk * dh;
    let (k, v) = (kv.slice(..half), kv.slice(half..));
    // SAFETY: the two Applies write every element of `out`.
    let mut out = unsafe { dev.alloc::<T>(2 * half) }?;
    apply(&dev, &v, &dm, &mut out.slice_mut(..half), (bh, nk, dh), (1.0, true))?;
    apply(&dev, &k, &dm, &mut out.slice_mut(half..), (bh, nk, dh), (1.0, false))?;
    Ok((CudaStorage::wrap_cuda_slice(out, dev), lkv.shape().clone()))
}
