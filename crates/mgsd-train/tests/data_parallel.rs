//! Data-parallel training on CPU: `W` ranks as threads of this process, talking through the
//! in-memory test double of the `Collective` trait.
//!
//! What must hold (issue: several GPUs): `W` ranks × batch 1 compute exactly what one process
//! computes when it averages the gradients of the same `W` samples before each step (`[train]
//! accumulate = W`); every rank ends with the same student, teacher, discriminator and
//! optimiser state; validation split over ranks gives the single-process table; a killed
//! data-parallel run resumes exactly; a rank that fails stops the others with its error; a
//! resume with another world size continues from the start of the interrupted epoch.

#[path = "support/in_memory_collective.rs"]
mod in_memory_collective;

use candle_core::{DType, Device};
use mgsd_train::checkpoint;
use mgsd_train::config::Config;
use mgsd_train::distributed::collective::check_agreement;
use mgsd_train::distributed::Collective;
use mgsd_train::train::{files, train, train_with, RunOptions, TrainOutcome};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

/// 8 training cases (8 single-process steps per epoch), 2 validation cases, c = 8, 24³ patches,
/// dropout on, every MGSD term and the discriminator active, validation every epoch.
fn config(run_dir: &Path, epochs: usize, accumulate: usize) -> Config {
    let text = format!(
        r#"
[data.synthetic]
train_cases = 8
val_cases = 2
test_cases = 1
shape = [30, 26, 25]
seed = 11

[protocol]
patch = [24, 24, 24]

[model]
channels = 8
dropout = 0.2

[train]
epochs = {epochs}
lr = 1e-3
val_every = 1
seed = 5
accumulate = {accumulate}

[run]
dir = "{}"
workers = 1
queue = 2
checksum_every = 1
"#,
        run_dir.display()
    );
    Config::from_toml(&text, "data-parallel test config").unwrap()
}

/// Runs `world` ranks (threads) with per-rank options; the outcomes by rank.
fn run_ranks(
    cfg: &Config,
    world: usize,
    opts: impl Fn(usize) -> RunOptions,
) -> Vec<anyhow::Result<TrainOutcome>> {
    let comms = in_memory_collective::group(world);
    std::thread::scope(|s| {
        let handles: Vec<_> = comms
            .into_iter()
            .enumerate()
            .map(|(rank, comm)| {
                let o = opts(rank);
                s.spawn(move || train_with(cfg, &o, comm))
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("a rank panicked")).collect()
    })
}

fn ok(results: Vec<anyhow::Result<TrainOutcome>>) -> Vec<TrainOutcome> {
    results.into_iter().map(|r| r.unwrap_or_else(|e| panic!("{e:#}"))).collect()
}

/// Every tensor of a checkpoint, as f64 vectors by name.
fn tensors(path: &Path) -> BTreeMap<String, Vec<f64>> {
    let ckpt = checkpoint::load(path, &Device::Cpu).unwrap();
    ckpt.tensors
        .iter()
        .map(|(k, t)| {
            let v =
                t.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
            (k.clone(), v)
        })
        .collect()
}

/// Largest relative difference between two checkpoints (same names).
fn max_relative_difference(a: &Path, b: &Path) -> f64 {
    let (a, b) = (tensors(a), tensors(b));
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    let mut worst = 0f64;
    for (k, x) in &a {
        let y = &b[k];
        let scale = x.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-12);
        for (p, q) in x.iter().zip(y) {
            worst = worst.max((p - q).abs() / scale);
        }
    }
    worst
}

fn losses(o: &TrainOutcome) -> Vec<(u64, BTreeMap<String, f64>)> {
    o.losses.clone()
}

#[test]
fn ranks_compute_what_one_process_accumulating_their_samples_computes() {
    for world in [2usize, 4] {
        let dir = tempfile::tempdir().unwrap();
        let single = config(&dir.path().join("accumulate"), 2, world);
        let reference = train(&single, &RunOptions::default()).unwrap();
        let ranked = config(&dir.path().join("ranks"), 2, 1);
        let outcomes = ok(run_ranks(&ranked, world, |_| RunOptions::default()));

        // 8 cases, `world` micro-batches per step: 8 / world steps per epoch, 2 epochs.
        assert_eq!(reference.steps, 2 * 8 / world as u64);
        for o in &outcomes {
            assert_eq!(o.steps, reference.steps);
            // The same model on every rank, and the same as the accumulating process's.
            assert_eq!(o.checksums, reference.checksums, "world {world}");
            assert_eq!(o.best_score, reference.best_score, "validation split over ranks");
        }
        assert_eq!(losses(&outcomes[0]), losses(&reference), "world {world}: per-step terms");
        let d = max_relative_difference(
            &reference.run_dir.join(files::LAST),
            &outcomes[0].run_dir.join(files::LAST),
        );
        assert!(d <= 1e-6, "world {world}: parameters differ by {d:e} (relative)");
        // One row per optimiser step, naming the mask of every micro-batch of the step.
        let metrics = std::fs::read_to_string(outcomes[0].run_dir.join(files::METRICS)).unwrap();
        let masks: Vec<&str> = metrics
            .lines()
            .filter(|l| l.starts_with("train,"))
            .map(|l| l.split(',').nth(4).unwrap())
            .collect();
        assert_eq!(masks.len() as u64, reference.steps);
        assert!(masks.iter().all(|m| m.split(' ').count() == world), "{masks:?}");
    }
}

#[test]
fn a_killed_data_parallel_run_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let whole = config(&dir.path().join("whole"), 2, 1);
    let uninterrupted = ok(run_ranks(&whole, 2, |_| RunOptions::default()));
    let split = config(&dir.path().join("split"), 2, 1);
    // 4 steps per epoch; killed one step into epoch 2, after the checkpoint of epoch 1.
    let first =
        ok(run_ranks(&split, 2, |_| RunOptions { kill_after: Some(5), ..RunOptions::default() }));
    assert_eq!(first[0].steps, 5);
    let resumed = ok(run_ranks(&split, 2, |_| RunOptions {
        resume: Some(split.run.dir.clone()),
        ..RunOptions::default()
    }));
    assert_eq!(resumed[0].steps, 8);
    assert_eq!(resumed[0].checksums, uninterrupted[0].checksums);
    assert_eq!(resumed[1].checksums, uninterrupted[1].checksums);
    let tail: Vec<_> = losses(&uninterrupted[0]).into_iter().filter(|(s, _)| *s > 4).collect();
    assert_eq!(losses(&resumed[0]), tail, "steps 5–8 after the resume");
}

#[test]
fn a_failing_rank_stops_the_others_with_its_error() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&dir.path().join("run"), 1, 1);
    let results = run_ranks(&cfg, 3, |rank| RunOptions {
        fail_at: (rank == 1).then_some(2),
        ..RunOptions::default()
    });
    for (rank, r) in results.iter().enumerate() {
        let e = format!("{:#}", r.as_ref().err().unwrap_or_else(|| panic!("rank {rank} finished")));
        assert!(e.contains("injected failure at step 2"), "rank {rank}: {e}");
        if rank != 1 {
            assert!(e.contains("rank 1:"), "rank {rank} must name the failed rank: {e}");
        }
    }
}

#[test]
fn a_resume_with_another_world_size_restarts_the_interrupted_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&dir.path().join("run"), 2, 1);
    // Two ranks: 4 steps per epoch; killed one step into epoch 2 (checkpoint: end of epoch 1).
    ok(run_ranks(&cfg, 2, |_| RunOptions { kill_after: Some(5), ..RunOptions::default() }));
    // One process without accumulation: 8 steps per epoch, so epoch 2 starts at step 8.
    let resumed =
        train(&cfg, &RunOptions { resume: Some(cfg.run.dir.clone()), ..RunOptions::default() })
            .unwrap();
    assert_eq!(resumed.steps, 16);
    assert_eq!(resumed.losses.first().map(|l| l.0), Some(9));
}

#[test]
fn diverging_ranks_are_detected() {
    let comms = in_memory_collective::group(2);
    let results: Vec<anyhow::Result<()>> = std::thread::scope(|s| {
        let handles: Vec<_> = comms
            .iter()
            .enumerate()
            .map(|(rank, comm)| {
                let comm: &Arc<dyn Collective> = comm;
                s.spawn(move || {
                    let teacher = if rank == 0 { 1.0 } else { 1.0 + 1e-12 };
                    check_agreement(
                        comm.as_ref(),
                        &[("student", 3.0), ("teacher", teacher)],
                        "step 7",
                        &Device::Cpu,
                    )
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for r in results {
        let e = r.unwrap_err().to_string();
        assert!(e.contains("step 7") && e.contains("teacher checksum differs"), "{e}");
    }
}
