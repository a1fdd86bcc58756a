//! The variables torchrun, `mgsd-train launch` and SLURM wrappers set for each rank.

use anyhow::{bail, ensure, Context, Result};
use std::time::Duration;

/// Default rendezvous port (torchrun's).
pub const DEFAULT_MASTER_PORT: u16 = 29500;
/// How long the rendezvous waits for all ranks by default; `MGSD_RENDEZVOUS_TIMEOUT` (seconds)
/// overrides it.
pub const DEFAULT_RENDEZVOUS_TIMEOUT: Duration = Duration::from_secs(300);

/// One rank's place in a data-parallel job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DistEnv {
    /// Global rank (`RANK`).
    pub rank: usize,
    /// Rank on this node (`LOCAL_RANK`): the CUDA device it uses.
    pub local_rank: usize,
    /// Number of ranks (`WORLD_SIZE`).
    pub world_size: usize,
    /// Host of rank 0's rendezvous (`MASTER_ADDR`).
    pub master_addr: String,
    /// Port of rank 0's rendezvous (`MASTER_PORT`).
    pub master_port: u16,
    /// How long the rendezvous waits (`MGSD_RENDEZVOUS_TIMEOUT`, seconds).
    pub timeout: Duration,
}

impl DistEnv {
    /// The job this process belongs to, from the environment; `None` when `WORLD_SIZE` is not
    /// set (a plain single-process run).
    ///
    /// # Errors
    /// Variables that are set but malformed or inconsistent, naming them.
    pub fn from_env() -> Result<Option<DistEnv>> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// [`DistEnv::from_env`] over any variable lookup (for tests).
    ///
    /// # Errors
    /// As [`DistEnv::from_env`].
    pub fn from_lookup(var: impl Fn(&str) -> Option<String>) -> Result<Option<DistEnv>> {
        let Some(world) = var("WORLD_SIZE") else { return Ok(None) };
        let number = |name: &str, text: &str| -> Result<usize> {
            text.trim().parse::<usize>().with_context(|| {
                format!("{name}={text:?} is not a non-negative integer (set by your launcher)")
            })
        };
        let world_size = number("WORLD_SIZE", &world)?;
        ensure!(world_size >= 1, "WORLD_SIZE=0: a job needs at least one rank");
        let Some(rank) = var("RANK") else {
            bail!("WORLD_SIZE is set but RANK is not: start ranks with `mgsd-train launch`, torchrun or srun, which set both")
        };
        let rank = number("RANK", &rank)?;
        ensure!(rank < world_size, "RANK={rank} is not below WORLD_SIZE={world_size}");
        let local_rank = match var("LOCAL_RANK") {
            Some(l) => number("LOCAL_RANK", &l)?,
            None => rank,
        };
        let master_addr = var("MASTER_ADDR").unwrap_or_else(|| "127.0.0.1".into());
        let master_port = match var("MASTER_PORT") {
            Some(p) => p
                .trim()
                .parse::<u16>()
                .with_context(|| format!("MASTER_PORT={p:?} is not a port number (1–65535)"))?,
            None => DEFAULT_MASTER_PORT,
        };
        let timeout = match var("MGSD_RENDEZVOUS_TIMEOUT") {
            Some(t) => Duration::from_secs_f64(
                t.trim().parse::<f64>().ok().filter(|s| *s > 0.0).with_context(|| {
                    format!("MGSD_RENDEZVOUS_TIMEOUT={t:?} is not a positive number of seconds")
                })?,
            ),
            None => DEFAULT_RENDEZVOUS_TIMEOUT,
        };
        Ok(Some(DistEnv { rank, local_rank, world_size, master_addr, master_port, timeout }))
    }

    /// `MASTER_ADDR:MASTER_PORT`.
    pub fn master(&self) -> String {
        if self.master_addr.contains(':') && !self.master_addr.starts_with('[') {
            format!("[{}]:{}", self.master_addr, self.master_port)
        } else {
            format!("{}:{}", self.master_addr, self.master_port)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> Result<Option<DistEnv>> {
        let m: HashMap<String, String> =
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        DistEnv::from_lookup(|k| m.get(k).cloned())
    }

    #[test]
    fn reads_torchrun_variables() {
        assert_eq!(env(&[]).unwrap(), None);
        let e = env(&[
            ("WORLD_SIZE", "8"),
            ("RANK", "5"),
            ("LOCAL_RANK", "1"),
            ("MASTER_ADDR", "node0"),
            ("MASTER_PORT", "1234"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!((e.rank, e.local_rank, e.world_size), (5, 1, 8));
        assert_eq!(e.master(), "node0:1234");
        let d = env(&[("WORLD_SIZE", "2"), ("RANK", "0")]).unwrap().unwrap();
        assert_eq!(
            (d.local_rank, d.master_port, d.timeout),
            (0, 29500, DEFAULT_RENDEZVOUS_TIMEOUT)
        );
    }

    #[test]
    fn bad_variables_are_named() {
        let e = |p: &[(&str, &str)]| env(p).unwrap_err().to_string();
        assert!(e(&[("WORLD_SIZE", "two")]).contains("WORLD_SIZE"));
        assert!(e(&[("WORLD_SIZE", "2")]).contains("RANK is not"));
        assert!(e(&[("WORLD_SIZE", "2"), ("RANK", "2")]).contains("not below"));
        assert!(e(&[("WORLD_SIZE", "2"), ("RANK", "0"), ("MASTER_PORT", "99999")])
            .contains("MASTER_PORT"));
        assert!(e(&[("WORLD_SIZE", "2"), ("RANK", "0"), ("MGSD_RENDEZVOUS_TIMEOUT", "-1")])
            .contains("MGSD_RENDEZVOUS_TIMEOUT"));
    }
}
