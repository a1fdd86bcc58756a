//! The softmax attention kernels as a differentiable candle op on CUDA tensors (`cuda`
//! feature): `out = softmax((q kᵀ)·scale) v` for `(B, H, N, dh)` f32 tensors, dh 32 or 64.
//!
//! Forward: [`Op::SoftmaxForward`] (keys and values staged through shared memory, online
//! softmax), which also writes the logsumexp of every query row; the op keeps it for the
//! backward. Backward, as `gpu/check_attention.py` runs it on the GPU: [`Op::SoftmaxBackwardPre`]
//! (`dsum = Σ dout∘out` per row), then [`Op::SoftmaxBackwardDq`] and
//! [`Op::SoftmaxBackwardDkDv`] (which accumulates into zeroed `dk`, `dv` with atomics); the
//! three gradients come out of one op as one flat buffer. The CPU twin is
//! `mgsd_nn::attention::cross_attention` with `AttentionVariant::Softmax`.

use std::sync::{Arc, OnceLock};

use candle_core::cuda_backend::cudarc::driver::{CudaFunction, CudaSlice, PushKernelArg};
use candle_core::cuda_backend::{CudaDevice, WrapErr};
use candle_core::{bail, CpuStorage, CudaStorage, CustomOp3, Layout, Result, Shape, Tensor};

use super::attention::{check_operands, heads};
use super::{config, cuda_only, launch_err, num_sms, to_i32, view};
use crate::launch::{self, Dtype, Op};

/// Name under which candle caches the PTX module per device (the same module as the
/// no-softmax op: one PTX file).
const MODULE: &str = "mgsd_attention";
const TWIN: &str = "mgsd_nn::cross_attention (softmax)";

/// `softmax((q kᵀ)·scale) v` on CUDA with the fused kernels. Differentiable in `q`, `k`, `v`.
///
/// # Shapes
/// `q`: `(B, H, Nq, dh)`, `k`, `v`: `(B, H, Nk, dh)` → `(B, H, Nq, dh)`; f32, dh ∈ {32, 64}.
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

fn func(dev: &CudaDevice, op: Op, dh: usize) -> Result<CudaFunction> {
    let name = launch::kernel_name(op, Dtype::F32, dh).map_err(launch_err)?;
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
        let dev = sq.device.clone();
        let (bh, nq, dh) = heads(lq)?;
        let (_, nk, _) = heads(lk)?;
        let (q, k, v) = (view(sq, lq)?, view(sk, lk)?, view(sv, lv)?);
        // SAFETY: the forward kernel writes every element of `out` and `lse`.
        let mut out = unsafe { dev.alloc::<f32>(bh * nq * dh) }?;
        let mut lse = unsafe { dev.alloc::<f32>(bh * nq) }?;
        let l = launch::query_parallel(bh, nq, dh).map_err(launch_err)?;
        let f = func(&dev, Op::SoftmaxForward, dh)?;
        let (nq_i, nk_i) = (to_i32(nq)?, to_i32(nk)?);
        let stream = dev.cuda_stream();
        let mut b = stream.launch_builder(&f);
        b.arg(&q).arg(&k).arg(&v).arg(&mut out).arg(&mut lse);
        b.arg(&nq_i).arg(&nk_i).arg(&self.scale);
        // SAFETY: argument list and geometry as `launch.rs` documents for SoftmaxForward.
        unsafe { b.launch(config(l)) }.w()?;
        if self.lse.set(lse).is_err() {
            bail!("{}: an op instance runs its forward once", self.name())
        }
        Ok((CudaStorage::wrap_cuda_slice(out, dev), lq.shape().clone()))
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
        let Some(lse) = self.lse.get() else { bail!("{}: the forward has not run", self.name()) };
        let dev = sq.device.clone();
        let (bh, nq, dh) = heads(lq)?;
        let (two, b, h, nk, _) = lkv.shape().dims5()?;
        if two != 2 || b * h != bh || lod.shape().dims5()? != (2, b, h, nq, dh) {
            bail!(
                "{}: stacked k/v {:?} or out/dout {:?} do not fit q {:?}",
                self.name(),
                lkv.shape(),
                lod.shape(),
                lq.shape()
            )
        }
        let q = view(sq, lq)?;
        let (kv, od) = (view(skv, lkv)?, view(sod, lod)?);
        let (q_len, k_len) = (bh * nq * dh, bh * nk * dh);
        let (k, v) = (kv.slice(..k_len), kv.slice(k_len..));
        let (out, dout) = (od.slice(..q_len), od.slice(q_len..));
        let (nq_i, nk_i, rows) = (to_i32(nq)?, to_i32(nk)?, to_i32(bh * nq)?);
        let stream = dev.cuda_stream();

        // dsum = Σ dout∘out per query row.
        // SAFETY: the pre kernel writes every row.
        let mut dsum = unsafe { dev.alloc::<f32>(bh * nq) }?;
        let f = func(&dev, Op::SoftmaxBackwardPre, dh)?;
        let mut bld = stream.launch_builder(&f);
        bld.arg(&out).arg(&dout).arg(&mut dsum).arg(&rows);
        let l = launch::softmax_backward_pre(bh * nq, dh).map_err(launch_err)?;
        // SAFETY: argument list and geometry as `launch.rs` documents for SoftmaxBackwardPre.
        unsafe { bld.launch(config(l)) }.w()?;

        // [dq, dk, dv]; dk and dv accumulate with atomics, so the buffer starts zeroed.
        let mut grads = dev.alloc_zeros::<f32>(q_len + 2 * k_len)?;
        {
            let (mut dq, mut dkdv) = grads.split_at_mut(q_len);
            let (mut dk, mut dv) = dkdv.split_at_mut(k_len);

            let f = func(&dev, Op::SoftmaxBackwardDq, dh)?;
            let mut bld = stream.launch_builder(&f);
            bld.arg(&q).arg(&k).arg(&v).arg(&dout).arg(lse).arg(&dsum).arg(&mut dq);
            bld.arg(&nq_i).arg(&nk_i).arg(&self.scale);
            let l = launch::query_parallel(bh, nq, dh).map_err(launch_err)?;
            // SAFETY: argument list and geometry as `launch.rs` documents for SoftmaxBackwardDq.
            unsafe { bld.launch(config(l)) }.w()?;

            let (l, q_per_block) =
                launch::softmax_backward_dkdv(bh, nq, nk, dh, num_sms(&dev)).map_err(launch_err)?;
            let q_per_block = q_per_block as i32;
            let f = func(&dev, Op::SoftmaxBackwardDkDv, dh)?;
            let mut bld = stream.launch_builder(&f);
            bld.arg(&q).arg(&k).arg(&v).arg(&dout).arg(lse).arg(&dsum).arg(&mut dk).arg(&mut dv);
            bld.arg(&nq_i).arg(&nk_i).arg(&self.scale).arg(&q_per_block);
            // SAFETY: argument list and geometry as `launch.rs` documents for SoftmaxBackwardDkDv;
            // `dk`, `dv` are zeroed.
            unsafe { bld.launch(config(l)) }.w()?;
        }

        let len = grads.len();
        Ok((CudaStorage::wrap_cuda_slice(grads, dev), Shape::from(len)))
    }
}
