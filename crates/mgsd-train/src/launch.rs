//! `mgsd-train launch`: starts the ranks of one node, as torchrun does.
//!
//! `launch --nproc-per-node N -- train --config F` runs `N` copies of this executable with the
//! arguments after `--`, each with `RANK`, `LOCAL_RANK`, `WORLD_SIZE`, `LOCAL_WORLD_SIZE`,
//! `MASTER_ADDR` and `MASTER_PORT` set (a rank uses `cuda:LOCAL_RANK`). Several nodes run one
//! launcher each, with `--nnodes`, `--node-rank` and the same `--master-addr` (node 0's).
//!
//! The ranks run in their own process group, so a terminal's Ctrl-C reaches them once, through
//! the launcher: SIGINT and SIGTERM sent to the launcher are forwarded to every rank (training
//! saves and stops at the next step). When a rank exits with an error, the launcher sends
//! SIGTERM to the others, SIGKILL after `--grace` seconds (ranks blocked in a collective never
//! reach a save point), and fails with the first failed rank's status.

use anyhow::{bail, Context, Result};
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

/// What to start.
#[derive(Debug, Clone)]
pub struct LaunchOptions {
    /// The executable of every rank (normally this one).
    pub program: PathBuf,
    /// Its arguments (e.g. `train --config F`).
    pub args: Vec<OsString>,
    /// Ranks on this node.
    pub nproc_per_node: usize,
    /// Nodes in the job.
    pub nnodes: usize,
    /// This node's index, `0..nnodes`.
    pub node_rank: usize,
    /// Address of node 0 (rank 0's rendezvous).
    pub master_addr: String,
    /// Port of rank 0's rendezvous.
    pub master_port: u16,
    /// How long ranks get to exit after SIGTERM when another rank failed.
    pub grace: Duration,
}

/// One started rank.
struct Rank {
    rank: usize,
    local: usize,
    child: Child,
    status: Option<ExitStatus>,
}

/// Starts the ranks and waits for all of them.
///
/// # Errors
/// Bad options; a rank that could not be started; a rank that failed (the others are then
/// stopped), naming it and its exit status.
pub fn launch(opts: &LaunchOptions) -> Result<()> {
    if opts.nproc_per_node == 0 || opts.nnodes == 0 {
        bail!("--nproc-per-node and --nnodes must be at least 1");
    }
    if opts.node_rank >= opts.nnodes {
        bail!("--node-rank {} is not below --nnodes {}", opts.node_rank, opts.nnodes);
    }
    if opts.args.is_empty() {
        bail!("nothing to launch: give the command after `--`, e.g. `launch --nproc-per-node 2 -- train --config F`");
    }
    let world = opts.nproc_per_node * opts.nnodes;
    forwarding::install();
    let mut ranks: Vec<Rank> = Vec::with_capacity(opts.nproc_per_node);
    for local in 0..opts.nproc_per_node {
        let rank = opts.node_rank * opts.nproc_per_node + local;
        let mut cmd = Command::new(&opts.program);
        cmd.args(&opts.args)
            .env("RANK", rank.to_string())
            .env("LOCAL_RANK", local.to_string())
            .env("WORLD_SIZE", world.to_string())
            .env("LOCAL_WORLD_SIZE", opts.nproc_per_node.to_string())
            .env("GROUP_RANK", opts.node_rank.to_string())
            .env("MASTER_ADDR", &opts.master_addr)
            .env("MASTER_PORT", opts.master_port.to_string());
        #[cfg(unix)]
        {
            use std::os::unix::process::CommandExt;
            cmd.process_group(0);
        }
        let child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                stop_all(&mut ranks, opts.grace);
                return Err(e)
                    .with_context(|| format!("starting rank {rank} ({})", opts.program.display()));
            }
        };
        tracing::info!("started rank {rank} (local {local}, pid {})", child.id());
        ranks.push(Rank { rank, local, child, status: None });
    }
    tracing::info!(
        "{} rank(s) of {world} on this node (node {} of {}); rendezvous at {}:{}",
        opts.nproc_per_node,
        opts.node_rank,
        opts.nnodes,
        opts.master_addr,
        opts.master_port
    );
    supervise(&mut ranks, opts.grace)
}

/// Waits for every rank; forwards signals; stops the others when one fails.
fn supervise(ranks: &mut [Rank], grace: Duration) -> Result<()> {
    let mut failed: Option<(usize, usize, ExitStatus)> = None;
    let mut forwarded: Option<i32> = None;
    // When the others were asked to stop after a failure, and whether they were killed since.
    let mut stopping: Option<(Instant, bool)> = None;
    loop {
        if let Some(sig) = forwarding::take() {
            tracing::warn!("forwarding signal {sig} to {} rank(s)", running(ranks));
            forwarded = Some(sig);
            for r in ranks.iter().filter(|r| r.status.is_none()) {
                signal(&r.child, sig);
            }
        }
        for r in ranks.iter_mut().filter(|r| r.status.is_none()) {
            let Some(status) = r.child.try_wait().context("waiting for a rank")? else { continue };
            r.status = Some(status);
            if !status.success() && failed.is_none() && forwarded.is_none() {
                failed = Some((r.rank, r.local, status));
            }
        }
        if let (Some((rank, local, status)), None) = (failed, stopping) {
            tracing::error!(
                "rank {rank} (local {local}) exited with {status}; stopping the other {} rank(s)",
                running(ranks)
            );
            for r in ranks.iter().filter(|r| r.status.is_none()) {
                signal(&r.child, libc::SIGTERM);
            }
            stopping = Some((Instant::now(), false));
        }
        if ranks.iter().all(|r| r.status.is_some()) {
            break;
        }
        if let Some((since, false)) = stopping {
            if since.elapsed() >= grace {
                for r in ranks.iter_mut().filter(|r| r.status.is_none()) {
                    tracing::warn!(
                        "rank {} did not stop within {:.0} s of SIGTERM: killing it",
                        r.rank,
                        grace.as_secs_f64()
                    );
                    let _ = r.child.kill();
                }
                stopping = Some((since, true));
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    match (failed, forwarded) {
        (Some((rank, local, status)), _) => bail!(
            "rank {rank} (local {local}) failed with {status}; the job was stopped (the rank's error is above)"
        ),
        (None, Some(sig)) if ranks.iter().any(|r| r.status.is_some_and(|s| !s.success())) => {
            bail!("the job was interrupted by signal {sig}, forwarded to every rank")
        }
        _ => Ok(()),
    }
}

fn running(ranks: &[Rank]) -> usize {
    ranks.iter().filter(|r| r.status.is_none()).count()
}

/// Sends SIGTERM to every started rank, then kills those still running after `grace`.
fn stop_all(ranks: &mut [Rank], grace: Duration) {
    for r in ranks.iter() {
        signal(&r.child, libc::SIGTERM);
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline
        && ranks.iter_mut().any(|r| matches!(r.child.try_wait(), Ok(None)))
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    for r in ranks.iter_mut() {
        let _ = r.child.kill();
        let _ = r.child.wait();
    }
}

#[cfg(unix)]
fn signal(child: &Child, sig: i32) {
    let Ok(pid) = libc::pid_t::try_from(child.id()) else { return };
    // SAFETY: kill(2) with a pid of a child we started and have not yet reaped.
    unsafe {
        libc::kill(pid, sig);
    }
}

#[cfg(not(unix))]
fn signal(_child: &Child, _sig: i32) {}

/// The launcher's own SIGINT/SIGTERM handler: remembers the signal for forwarding.
#[cfg(unix)]
mod forwarding {
    use std::sync::atomic::{AtomicI32, Ordering};

    static PENDING: AtomicI32 = AtomicI32::new(0);

    extern "C" fn on_signal(sig: libc::c_int) {
        // Async-signal-safe: one atomic store.
        PENDING.store(sig, Ordering::SeqCst);
    }

    pub fn install() {
        for sig in [libc::SIGINT, libc::SIGTERM] {
            // SAFETY: the handler only stores to an atomic.
            unsafe {
                libc::signal(sig, on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t);
            }
        }
    }

    /// The signal received since the last call, if any.
    pub fn take() -> Option<i32> {
        Some(PENDING.swap(0, Ordering::SeqCst)).filter(|&s| s != 0)
    }
}

#[cfg(not(unix))]
mod forwarding {
    pub fn install() {}
    pub fn take() -> Option<i32> {
        None
    }
}
