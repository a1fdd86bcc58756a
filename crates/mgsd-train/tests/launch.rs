//! `mgsd-train launch` with ranks as local processes: environment, rendezvous, a failing rank,
//! signal forwarding, and the errors of a data-parallel run that cannot work.

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_mgsd-train"));
    c.env_remove("RANK").env_remove("WORLD_SIZE").env("NO_COLOR", "1");
    c
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn launch(ranks: usize, extra: &[&str], command: &[&str]) -> (Output, Duration) {
    let port = free_port().to_string();
    let n = ranks.to_string();
    let mut args = vec!["launch", "--nproc-per-node", &n, "--master-port", &port];
    args.extend(extra);
    args.push("--");
    args.extend(command);
    let t = Instant::now();
    let out = bin().args(&args).env("MGSD_RENDEZVOUS_TIMEOUT", "120").output().unwrap();
    (out, t.elapsed())
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn ranks_meet_at_the_rendezvous() {
    let (out, _) = launch(3, &[], &["check-ranks"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("3 rank(s)"), "{stdout}");
    for r in 0..3 {
        assert!(stdout.contains(&format!("rank {r} (local {r})")), "{stdout}");
    }
}

#[test]
fn a_failing_rank_stops_the_others() {
    // Without the launcher's intervention rank 0 would wait 120 s for rank 1.
    let (out, took) = launch(3, &["--grace", "2"], &["check-ranks", "--fail-rank", "1"]);
    let (stdout, stderr) = text(&out);
    assert!(!out.status.success(), "{stdout}\n{stderr}");
    assert!(stderr.contains("rank 1 fails on purpose"), "{stderr}");
    assert!(stderr.contains("rank 1 (local 1) failed"), "{stderr}");
    assert!(took < Duration::from_secs(60), "took {took:?}");
}

#[cfg(unix)]
#[test]
fn signals_reach_every_rank() {
    let port = free_port().to_string();
    let mut child = bin()
        .args([
            "launch",
            "--nproc-per-node",
            "2",
            "--master-port",
            &port,
            "--",
            "check-ranks",
            "--hold",
            "120",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Rank 0 lists every rank (with its pid) once the rendezvous is done.
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut pids = Vec::new();
    while pids.len() < 2 {
        let line = lines.next().expect("the launcher ended early").unwrap();
        if let Some(rest) = line.split(", pid ").nth(1) {
            pids.push(rest.split(',').next().unwrap().trim().parse::<i32>().unwrap());
        }
    }
    let t = Instant::now();
    // SAFETY: kill(2) on the launcher we started.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let status = child.wait().unwrap();
    assert!(!status.success());
    assert!(t.elapsed() < Duration::from_secs(30), "took {:?}", t.elapsed());
    for pid in pids {
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists(), "rank pid {pid} survived");
    }
}

#[test]
fn several_cpu_ranks_are_refused_with_the_alternative() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("tiny.toml");
    std::fs::write(
        &cfg,
        format!(
            "[data.synthetic]\ntrain_cases = 2\ntest_cases = 1\nshape = [30, 26, 25]\n[protocol]\npatch = [24, 24, 24]\n[model]\nchannels = 8\n[train]\nepochs = 1\n[run]\ndir = \"{}\"\n",
            dir.path().join("run").display()
        ),
    )
    .unwrap();
    let (out, _) = launch(2, &["--grace", "2"], &["train", "--config", cfg.to_str().unwrap()]);
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(stderr.contains("WORLD_SIZE=2") && stderr.contains("--accumulate 2"), "{stderr}");
}

#[test]
fn check_ranks_outside_a_job_says_how_to_start_one() {
    let out = bin().arg("check-ranks").output().unwrap();
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(stderr.contains("mgsd-train launch --nproc-per-node"), "{stderr}");
}
