//! The NCCL backend of [`Collective`] (feature `nccl`): one rank per CUDA device, NCCL's
//! all-reduce and broadcast on the tensors' own CUDA stream, through cudarc (candle's CUDA
//! stack). Rank 0 creates NCCL's unique id and the TCP rendezvous hands it to the others.

use super::collective::Collective;
use super::env::DistEnv;
use super::rendezvous::{rendezvous, Rendezvous};
use anyhow::{bail, Context, Result};
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CudaStorage, CustomOp1, DType, Device, Layout, Shape, Tensor};
use cudarc::nccl::{Comm, Id, ReduceOp};
use std::sync::Mutex;

/// A NCCL communicator over the ranks of a job.
pub struct Nccl {
    comm: Mutex<Comm>,
    rank: usize,
    world: usize,
}

// SAFETY: `Comm` holds NCCL's raw communicator handle, which NCCL allows any one thread at a
// time to use; every use goes through the mutex.
unsafe impl Send for Nccl {}
// SAFETY: as above: shared references reach the communicator only through the mutex.
unsafe impl Sync for Nccl {}

impl std::fmt::Debug for Nccl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Nccl(rank {} of {})", self.rank, self.world)
    }
}

impl Nccl {
    /// Joins the job of `env` on `device` (a CUDA device): the rendezvous at
    /// `MASTER_ADDR:MASTER_PORT`, then `ncclCommInitRank`. Returns the greetings of all ranks.
    ///
    /// # Errors
    /// A CPU device, rendezvous errors, NCCL errors (e.g. libnccl not found).
    pub fn connect(env: &DistEnv, device: &Device, greeting: &str) -> Result<(Nccl, Vec<String>)> {
        let Device::Cuda(cuda) = device else {
            bail!("NCCL needs a CUDA device (rank {} was given {device:?})", env.rank)
        };
        let Rendezvous { payload, greetings } = rendezvous(env, greeting, || {
            let id = Id::new().map_err(|e| anyhow::anyhow!("ncclGetUniqueId: {e:?}"))?;
            Ok(id.internal().iter().map(|&c| c as u8).collect())
        })?;
        let internal: [std::ffi::c_char; 128] =
            payload.iter().map(|&b| b as std::ffi::c_char).collect::<Vec<_>>().try_into().map_err(
                |_| anyhow::anyhow!("rank 0 sent a NCCL id of {} bytes, not 128", payload.len()),
            )?;
        let comm = Comm::from_rank(
            cuda.cuda_stream(),
            env.rank,
            env.world_size,
            Id::uninit(internal),
        )
        .map_err(|e| {
            anyhow::anyhow!("ncclCommInitRank (rank {} of {}): {e:?}", env.rank, env.world_size)
        })
        .context(
            "is libnccl.so.2 on the library path (NVIDIA's nccl wheel or the CUDA toolkit)?",
        )?;
        Ok((Nccl { comm: Mutex::new(comm), rank: env.rank, world: env.world_size }, greetings))
    }

    fn run(&self, t: &Tensor, what: Op) -> Result<Tensor> {
        let t = t.contiguous()?;
        let op = NcclOp { nccl: self, what };
        Ok(t.apply_op1_no_bwd(&op)?)
    }
}

impl Collective for Nccl {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world_size(&self) -> usize {
        self.world
    }
    fn all_reduce_sum(&self, t: &Tensor) -> Result<Tensor> {
        self.run(t, Op::Sum)
    }
    fn broadcast(&self, t: &Tensor, root: usize) -> Result<Tensor> {
        self.run(t, Op::Broadcast(root))
    }
    fn abort(&self, error: &str) {
        // The other processes are stopped by the launcher when this one exits with the error;
        // NCCL's own abort happens when the communicator is dropped.
        tracing::error!("rank {} failed: {error}", self.rank);
    }
}

#[derive(Clone, Copy)]
enum Op {
    Sum,
    Broadcast(usize),
}

/// One collective as a candle op on the tensor's CUDA storage.
struct NcclOp<'a> {
    nccl: &'a Nccl,
    what: Op,
}

impl CustomOp1 for NcclOp<'_> {
    fn name(&self) -> &'static str {
        "nccl"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("NCCL collectives need CUDA tensors")
    }

    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        let Some((start, end)) = l.contiguous_offsets() else {
            candle_core::bail!("NCCL collectives need contiguous tensors")
        };
        let comm = self
            .nccl
            .comm
            .lock()
            .map_err(|_| candle_core::Error::Msg("NCCL lock poisoned".into()))?;
        let dev = s.device.clone();
        macro_rules! collective {
            ($t:ty) => {{
                let src = s.as_cuda_slice::<$t>()?.slice(start..end);
                let mut dst = dev.alloc_zeros::<$t>(end - start)?;
                let status = match self.what {
                    Op::Sum => comm.all_reduce(&src, &mut dst, &ReduceOp::Sum),
                    Op::Broadcast(root) => comm.broadcast(Some(&src), &mut dst, root as i32),
                };
                status.map_err(|e| candle_core::Error::Msg(format!("NCCL: {e:?}")))?;
                CudaStorage::wrap_cuda_slice(dst, dev)
            }};
        }
        let out = match s.dtype() {
            DType::F32 => collective!(f32),
            DType::F64 => collective!(f64),
            other => candle_core::bail!("NCCL collectives: unsupported dtype {other:?}"),
        };
        Ok((out, l.shape().clone()))
    }
}
