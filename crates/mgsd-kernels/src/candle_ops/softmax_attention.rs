//! The softmax attention kernels as a differentiable candle op on CUDA tensors (`cuda`
//! feature): `out = softmax((q kᵀ)·scale) v` for `(B, H, N, dh)` f32 or bf16 tensors, dh 32 or
//! 64 (f32 accumulation; in bf16 `dk`, `dv` accumulate in f32 and are rounded at the end).
//!
//! Forward: [`Op::SoftmaxForward`] (keys and values staged through shared memory, online
//! softmax), which also writes the logsumexp of every query row; the op keeps it for the
//! backward. Backward, as `gpu/check_attention.py` runs it on the GPU: [`Op::SoftmaxBackwardPre`]
//! (`dsum = Σ dout∘out` per row), then [`Op::SoftmaxBackwardDq`] and
//! [`Op::SoftmaxBackwardDkDv`] (which accumulates into zeroed `dk`, `dv` with atomics); the
//! three gradients come out of one op as one flat buffer. The CPU twin is
//! `mgsd_nn::attention::cross_attention` with `AttentionVariant::Softmax`.

use std::sync::{Arc, OnceLock};

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{CudaFunction, CudaSlice, PushKernelArg};
use candle_core::cuda_backend::{CudaDevice, WrapErr};
use candle_core::{bail, CpuStorage, CudaStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};

use super::attention::{by_dtype, check_operands, heads, Elem};
use super::{config, cuda_only, launch_err, num_sms, to_i32, view_as};
use crate::launch::{self, Op};

/// Name under which candle caches the PTX module per device (the same module as the
/// no-softmax op: one PTX file).
const MODULE: &str = "mgsd_attention";
const TWIN: &str = "mgsd_nn::cross_attention (softmax)";

/// `softmax((q kᵀ)·scale) v` on CUDA with the fused kernels. Differentiable in `q`, `k`, `v`.
///
/// # Shapes
/// `q`: `(B, H, Nq, dh)`, `k`, `v`: `(B, H, Nk, dh)` → `(B, H, Nq, dh)`; f32 or bf16 (all three
/// the same), dh ∈ {32, 64}.
pub fn softmax_attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f32) -> Result<Tensor> {
    check_operands("softmax_attention", q, k, v)?;
    let op = Forward { scale, lse: Arc::default() };
    q.contiguous()?.apply_op3(&k.contiguous()?, &v.contiguous()?, op)
}

/// The forward op; fills `lse` (natural-log logsumexp, `(B·H·Nq)` f32) for the backward.
struct Forward {
    scale: f32,
    lse: Arc<OnceLock<CudaSlice<f32>>>,
}

/// `(q, stack(k, v), stack(out, dout))` → `[dq…, dk…, dv…]`, flat.
struct Backward {
    scale: f32,
    lse: Arc<OnceLock<CudaSlice<f32>>>,
}

fn func<T: Elem>(dev: &CudaDevice, op: Op, dh: usize) -> Result<CudaFunction> {
    let name = launch::kernel_name(op, T::DTYPE, dh).map_err(launch_err)?;
    Ok(dev.get_or_load_custom_func(&name, MODULE, crate::ATTENTION_PTX)?.into_cuda_function())
}

impl CustomOp3 for Forward {
    fn name(&self) -> &'static str {
        "mgsd-softmax-attention"
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
        sq: &CudaStorage,
        lq: &Layout,
        sk: &CudaStorage,
        lk: &Layout,
        sv: &CudaStorage,
        lv: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        by_dtype!(sq, self.name(), T => self.forward::<T>((sq, lq), (sk, lk), (sv, lv)))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        out: &Tensor,
        dout: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (b, h, nq, dh) = q.dims4()?;
        let nk = k.dim(2)?;
        let kv = Tensor::stack(&[k, v], 0)?;
        let od = Tensor::stack(&[out, &dout.contiguous()?], 0)?;
        let op = Backward { scale: self.scale, lse: self.lse.clone() };
        let flat = q.apply_op3_no_bwd(&kv, &od, &op)?;
        let (nq_len, nk_len) = (b * h * nq * dh, b * h * nk * dh);
        let dq = flat.narrow(0, 0, nq_len)?.reshape((b, h, nq, dh))?;
        let dk = flat.narrow(0, nq_len, nk_len)?.reshape((b, h, nk, dh))?;
        let dv = flat.narrow(0, nq_len + nk_len, nk_len)?.reshape((b, h, nk, dh))?;
        Ok((Some(dq), Some(dk), Some(dv)))
    }
}

impl Forward {
    fn forward<T: Elem>(
        &self,
        (sq, lq): (&CudaStorage, &Layout),
        (sk, lk): (&CudaStorage, &Layout),
        (sv, lv): (&CudaStorage, &Layout),
    ) -> Result<(CudaStorage, Shape)> {
        let dev = sq.device.clone();
        let (bh, nq, dh) = heads(lq)?;
        let (_, nk, _) = heads(lk)?;
        let (q, k, v) = (view_as::<T>(sq, lq)?, view_as::<T>(sk, lk)?, view_as::<T>(sv, lv)?);
        // SAFETY: the forward kernel writes every element of `out` and `lse`.
        let mut out = unsafe { dev.alloc::<T>(bh * nq * dh) }?;
        let mut lse = unsafe { dev.alloc::<f32>(bh * nq) }?;
        let l = launch::query_parallel(bh, nq, dh).map_err(launch_err)?;
        let f = func::<T>(&dev, Op::SoftmaxForward, dh)?;
        let (nq_i, nk_i) = (to_i32(nq)?, to_i32(nk)?);
        let stream = dev.cuda_stream();
        let mut b = stream.launch_builder(&f);
        b.arg(&q).arg(&k).arg(&v).arg(&mut out).arg(&mut lse);
        b.arg(&nq_i).arg(&nk_i).arg(&self.scale);
        // SAFETY: argument list and geometry as `launch.rs` documents for SoftmaxForward.
        unsafe { b.launch(config(l)) }.w()?;
        if self.lse.set(lse).is_err() {
            bail!("mgsd-softmax-attention: an op instance runs its forward once")
        }
        Ok((CudaStorage::wrap_cuda_slice(out, dev), lq.shape().clone()))
    }
}

impl CustomOp3 for Backward {
    fn name(&self) -> &'static str {
        "mgsd-softmax-attention-bwd"
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
        sq: &CudaStorage,
        lq: &Layout,
        skv: &CudaStorage,
        lkv: &Layout,
        sod: &CudaStorage,
        lod: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let (bh, nq, dh) = heads(lq)?;
        let (two, b, h, _, _) = lkv.shape().dims5()?;
        if two != 2 || b * h != bh || lod.shape().dims5()? != (2, b, h, nq, dh) {
            bail!(
                "{}: stacked k/v {:?} or out/dout {:?} do not fit q {:?}",
                self.name(),
                lkv.shape(),
                lod.shape(),
                lq.shape()
            )
        }
        by_dtype!(sq, self.name(), T => self.backward::<T>((sq, lq), (skv, lkv), (sod, lod)))
    }
}

impl Backward {
    fn backward<T: Elem>(
        &self,
        (sq, lq): (&CudaStorage, &Layout),
        (skv, lkv): (&CudaStorage, &Layout),
        (sod, lod): (&CudaStorage, &Layout),
    ) -> Result<(CudaStorage, Shape)> {
        let name = "mgsd-softmax-attention-bwd";
        let Some(lse) = self.lse.get() else { bail!("{name}: the forward has not run") };
        let dev = sq.device.clone();
        let (bh, nq, dh) = heads(lq)?;
        let nk = lkv.shape().dims5()?.3;
        let q = view_as::<T>(sq, lq)?;
        let (kv, od) = (view_as::<T>(skv, lkv)?, view_as::<T>(sod, lod)?);
        let (q_len, k_len) = (bh * nq * dh, bh * nk * dh);
        let (k, v) = (kv.slice(..k_len), kv.slice(k_len..));
        let (out, dout) = (od.slice(..q_len), od.slice(q_len..));
        let (nq_i, nk_i, rows) = (to_i32(nq)?, to_i32(nk)?, to_i32(bh * nq)?);
        let stream = dev.cuda_stream();

        // dsum = Σ dout∘out per query row.
        // SAFETY: the pre kernel writes every row.
        let mut dsum = unsafe { dev.alloc::<f32>(bh * nq) }?;
        let f = func::<T>(&dev, Op::SoftmaxBackwardPre, dh)?;
        let mut bld = stream.launch_builder(&f);
        bld.arg(&out).arg(&dout).arg(&mut dsum).arg(&rows);
        let l = launch::softmax_backward_pre(bh * nq, dh).map_err(launch_err)?;
        // SAFETY: argument list and geometry as `launch.rs` documents for SoftmaxBackwardPre.
        unsafe { bld.launch(config(l)) }.w()?;

        // [dq, dk, dv] in T; dk and dv accumulate with atomics into zeroed f32 buffers first.
        // SAFETY: the dq kernel writes all of dq, `from_accumulators` all of dk and dv.
        let mut grads = unsafe { dev.alloc::<T>(q_len + 2 * k_len) }?;
        let mut acc = dev.alloc_zeros::<f32>(2 * k_len)?;
        {
            let (mut dq, dkdv) = grads.split_at_mut(q_len);
            let (mut dk, mut dv) = acc.split_at_mut(k_len);

            let f = func::<T>(&dev, Op::SoftmaxBackwardDq, dh)?;
            let mut bld = stream.launch_builder(&f);
            bld.arg(&q).arg(&k).arg(&v).arg(&dout).arg(lse).arg(&dsum).arg(&mut dq);
            bld.arg(&nq_i).arg(&nk_i).arg(&self.scale);
            let l = launch::query_parallel(bh, nq, dh).map_err(launch_err)?;
            // SAFETY: argument list and geometry as `launch.rs` documents for SoftmaxBackwardDq.
            unsafe { bld.launch(config(l)) }.w()?;

            let (l, q_per_block) =
                launch::softmax_backward_dkdv(bh, nq, nk, dh, num_sms(&dev)).map_err(launch_err)?;
            let q_per_block = q_per_block as i32;
            let f = func::<T>(&dev, Op::SoftmaxBackwardDkDv, dh)?;
            let mut bld = stream.launch_builder(&f);
            bld.arg(&q).arg(&k).arg(&v).arg(&dout).arg(lse).arg(&dsum).arg(&mut dk).arg(&mut dv);
            bld.arg(&nq_i).arg(&nk_i).arg(&self.scale).arg(&q_per_block);
            // SAFETY: argument list and geometry as `launch.rs` documents for SoftmaxBackwardDkDv;
            // `dk`, `dv` are zeroed.
            unsafe { bld.launch(config(l)) }.w()?;
            T::from_accumulators(&dev, &acc, dkdv)?;
        }

        let len = grads.len();
        Ok((CudaStorage::wrap_cuda_slice(grads, dev), Shape::from(len)))
    }
}
