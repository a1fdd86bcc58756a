//! Data-parallel training and evaluation over several processes (one per GPU), launched like
//! torchrun.
//!
//! - [`env`]: the `RANK`, `LOCAL_RANK`, `WORLD_SIZE`, `MASTER_ADDR`, `MASTER_PORT` variables;
//! - [`rendezvous`]: rank 0 hands NCCL's unique id to the others over TCP;
//! - [`collective`]: the [`Collective`] trait (sum, broadcast, abort) and what is built on it;
//!   [`SingleProcess`] is world size 1;
//! - `nccl` (feature `nccl`): the NCCL backend on CUDA devices;
//! - [`shard`]: which samples, masks and dropout seeds each micro-batch takes;
//! - [`gradients`]: micro-batch gradients summed, averaged over ranks in buckets;
//! - [`evaluate`]: validation and `eval` split over ranks, tables gathered.
//!
//! The trainer (`crate::train`) uses only the trait, so CPU tests run the multi-rank logic with
//! an in-memory implementation (`tests/support/in_memory_collective.rs`).

pub mod collective;
pub mod env;
pub mod evaluate;
pub mod gradients;
#[cfg(feature = "nccl")]
pub mod nccl;
pub mod rendezvous;
pub mod shard;

pub use collective::{Collective, SingleProcess};
pub use env::DistEnv;
pub use shard::Sharding;

use crate::config::DeviceSpec;
use anyhow::{bail, Result};
use candle_core::Device;
use std::sync::Arc;

/// The device of rank `env` when the configuration asks for `configured`: `cuda:LOCAL_RANK`
/// for CUDA (one GPU per rank, as torchrun's recipes use), the CPU for a world of one.
///
/// # Errors
/// A CPU configuration with more than one rank: there is no CPU backend.
pub fn rank_device(env: &DistEnv, configured: DeviceSpec) -> Result<DeviceSpec> {
    match configured {
        DeviceSpec::Cuda(_) => Ok(DeviceSpec::Cuda(env.local_rank)),
        DeviceSpec::Cpu if env.world_size == 1 => Ok(DeviceSpec::Cpu),
        DeviceSpec::Cpu => bail!(
            "WORLD_SIZE={} asks for data-parallel training, which runs on CUDA devices through NCCL (`[run] device = \"cuda\"`, built with `--features nccl`); on CPU, `--accumulate {}` gives one process the same effective batch",
            env.world_size,
            env.world_size
        ),
    }
}

/// This rank's line for the others' logs: host, pid, device.
pub fn greeting(env: &DistEnv, device: &Device) -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown-host".into());
    let device = match device {
        Device::Cpu => "cpu".to_string(),
        _ => format!("cuda:{}", env.local_rank),
    };
    format!(
        "rank {} (local {}) on {host}, pid {}, {device}",
        env.rank,
        env.local_rank,
        std::process::id()
    )
}

/// Joins the job of `env` on `device`. A world of one on the CPU needs no communication
/// ([`SingleProcess`]); otherwise NCCL (feature `nccl`, CUDA devices).
///
/// # Errors
/// No NCCL in this build, a CPU device with several ranks, rendezvous and NCCL errors.
pub fn connect(env: &DistEnv, device: &Device) -> Result<Arc<dyn Collective>> {
    if env.world_size == 1 && device.is_cpu() {
        return Ok(Arc::new(SingleProcess));
    }
    #[cfg(feature = "nccl")]
    {
        let (nccl, greetings) = nccl::Nccl::connect(env, device, &greeting(env, device))?;
        if env.rank == 0 {
            for g in &greetings {
                tracing::info!("joined: {g}");
            }
        }
        Ok(Arc::new(nccl))
    }
    #[cfg(not(feature = "nccl"))]
    {
        bail!(
            "WORLD_SIZE={} (rank {}) needs the NCCL backend, which this binary was built without: build with `--features nccl` (or use `cargo xtask gpu-bundle`)",
            env.world_size,
            env.rank
        )
    }
}
