//! The one interface data-parallel training needs from a communication library, and the
//! helpers built on it.
//!
//! [`Collective`] has four operations: an element-wise sum over ranks, a broadcast from one
//! rank, an abort, and the rank and world size. Everything else a data-parallel run exchanges
//! (gathered tables, checksums, stop decisions, barriers) is built from the sum in this file,
//! so a backend implements only those. The backends: [`SingleProcess`] (world size 1: every
//! operation is the identity) and, with the `nccl` feature, NCCL on CUDA devices
//! (`super::nccl`). CPU tests drive the multi-rank logic through an in-memory implementation
//! of the trait that lives with the tests.

use anyhow::{ensure, Result};
use candle_core::{DType, Device, Tensor};

/// A group of ranks that compute together (one process per GPU).
pub trait Collective: Send + Sync {
    /// This process's rank, `0..world_size()`.
    fn rank(&self) -> usize;

    /// Number of ranks.
    fn world_size(&self) -> usize;

    /// The element-wise sum of `t` over all ranks, on every rank. Every rank passes a tensor of
    /// the same shape and dtype (f32 or f64) on its own device, and calls the collectives in
    /// the same order.
    ///
    /// # Errors
    /// A failed or aborted rank (naming it), a communication error, an unsupported dtype.
    fn all_reduce_sum(&self, t: &Tensor) -> Result<Tensor>;

    /// Rank `root`'s `t` on every rank (the others' `t` only gives the shape and dtype).
    ///
    /// # Errors
    /// As [`Collective::all_reduce_sum`].
    fn broadcast(&self, t: &Tensor, root: usize) -> Result<Tensor>;

    /// Tells the group that this rank failed with `error`: the other ranks' pending and later
    /// operations fail with it where the backend can deliver it (across processes, the
    /// launcher stops the other ranks when one exits with an error).
    fn abort(&self, error: &str);

    /// Whether this is rank 0, the rank that writes checkpoints, metrics and tables.
    fn is_root(&self) -> bool {
        self.rank() == 0
    }
}

/// The world of one process: every collective is the identity. Training through it is exactly
/// a plain single-process run.
#[derive(Debug, Clone, Copy, Default)]
pub struct SingleProcess;

impl Collective for SingleProcess {
    fn rank(&self) -> usize {
        0
    }
    fn world_size(&self) -> usize {
        1
    }
    fn all_reduce_sum(&self, t: &Tensor) -> Result<Tensor> {
        Ok(t.clone())
    }
    fn broadcast(&self, t: &Tensor, _root: usize) -> Result<Tensor> {
        Ok(t.clone())
    }
    fn abort(&self, _error: &str) {}
}

/// Every rank's `values` (the same length on every rank), by rank. Exact: each rank's values
/// occupy their own row of a zero matrix that is summed over ranks.
///
/// # Errors
/// As [`Collective::all_reduce_sum`].
pub fn all_gather_f64(
    comm: &dyn Collective,
    values: &[f64],
    device: &Device,
) -> Result<Vec<Vec<f64>>> {
    let (w, k) = (comm.world_size(), values.len());
    if w == 1 {
        return Ok(vec![values.to_vec()]);
    }
    let mut rows = vec![0f64; w * k];
    rows[comm.rank() * k..(comm.rank() + 1) * k].copy_from_slice(values);
    let sum = comm.all_reduce_sum(&Tensor::from_vec(rows, (w, k), device)?)?;
    Ok(sum.to_dtype(DType::F64)?.to_vec2::<f64>()?)
}

/// Every rank's bytes (any length), by rank: the lengths first, then the bytes as exact small
/// integers in f32 rows. For small messages (evaluation tables, host names).
///
/// # Errors
/// As [`Collective::all_reduce_sum`].
pub fn all_gather_bytes(
    comm: &dyn Collective,
    bytes: &[u8],
    device: &Device,
) -> Result<Vec<Vec<u8>>> {
    let w = comm.world_size();
    if w == 1 {
        return Ok(vec![bytes.to_vec()]);
    }
    let lengths = all_gather_f64(comm, &[bytes.len() as f64], device)?;
    let lengths: Vec<usize> = lengths.iter().map(|l| l[0] as usize).collect();
    let longest = lengths.iter().copied().max().unwrap_or(0).max(1);
    let mut rows = vec![0f32; w * longest];
    for (dst, &b) in rows[comm.rank() * longest..].iter_mut().zip(bytes) {
        *dst = f32::from(b);
    }
    let sum = comm.all_reduce_sum(&Tensor::from_vec(rows, (w, longest), device)?)?;
    let rows = sum.to_dtype(DType::F32)?.to_vec2::<f32>()?;
    Ok(rows
        .into_iter()
        .zip(lengths)
        .map(|(row, n)| row[..n].iter().map(|&v| v as u8).collect())
        .collect())
}

/// Whether `flag` is set on any rank (the same answer on every rank): stop requests and time
/// budgets must end a data-parallel run at the same step everywhere.
///
/// # Errors
/// As [`Collective::all_reduce_sum`].
pub fn any_rank(comm: &dyn Collective, flag: bool, device: &Device) -> Result<bool> {
    if comm.world_size() == 1 {
        return Ok(flag);
    }
    let t = Tensor::from_vec(vec![f32::from(u8::from(flag))], 1, device)?;
    Ok(comm.all_reduce_sum(&t)?.to_dtype(DType::F32)?.to_vec1::<f32>()?[0] > 0.0)
}

/// Returns when every rank has called it.
///
/// # Errors
/// As [`Collective::all_reduce_sum`].
pub fn barrier(comm: &dyn Collective, device: &Device) -> Result<()> {
    any_rank(comm, false, device).map(|_| ())
}

/// Checks that `checksums` (named values that must agree, e.g. parameter sums) are identical
/// on every rank; the error names the first that differs and every rank's value.
///
/// # Errors
/// Differing values; communication errors.
pub fn check_agreement(
    comm: &dyn Collective,
    checksums: &[(&str, f64)],
    what: &str,
    device: &Device,
) -> Result<()> {
    let values: Vec<f64> = checksums.iter().map(|(_, v)| *v).collect();
    let all = all_gather_f64(comm, &values, device)?;
    for (i, (name, _)) in checksums.iter().enumerate() {
        let first = all[0][i];
        let agree = all.iter().all(|r| r[i].to_bits() == first.to_bits());
        let listed: Vec<String> =
            all.iter().enumerate().map(|(r, v)| format!("rank {r}: {:e}", v[i])).collect();
        ensure!(
            agree,
            "{what}: the {name} checksum differs between ranks ({}); the ranks no longer train the same model",
            listed.join(", ")
        );
    }
    Ok(())
}
