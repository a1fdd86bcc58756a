//! `mgsd-train`: train MGSD, evaluate the 15-subset table, segment new patients.
//!
//! Without arguments it runs the embedded default (`configs/demo.toml`): synthetic BraTS-like
//! cases, a bounded training budget (at most 8 min on 2 CPU cores with `--release`), and the
//! Dice table of all 15 modality subsets on held-out test cases.

use anyhow::{bail, Context, Result};
use candle_core::Device;
use clap::{Parser, Subcommand};
use mgsd_io::{Modality, ModalitySet};
use mgsd_nn::ConvPrecision;
use mgsd_train::batch::{is_batch_output, predict_batch, BatchOptions};
use mgsd_train::checkpoint;
use mgsd_train::config::{open_device, parse_device, set_precision, Config};
use mgsd_train::data::{read_manifest, split_with_file, CaseStore};
use mgsd_train::demo_summary::DemoSummary;
use mgsd_train::distributed::evaluate::evaluate_across_ranks;
use mgsd_train::distributed::{self, Collective, DistEnv, SingleProcess};
use mgsd_train::eval::{evaluate, EvalSettings, Provenance};
use mgsd_train::launch::{launch, LaunchOptions};
use mgsd_train::model::unet_from_checkpoint;
use mgsd_train::predict::{predict, PredictOptions};
use mgsd_train::protocol::{self, ProtocolArgs};
use mgsd_train::scans::GridOptions;
use mgsd_train::score::{score, LabelsArg, MetricSet, ScoreOptions};
use mgsd_train::train::{files, train, train_with, RunOptions, StopReason};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

#[derive(Parser, Debug)]
#[command(
    name = "mgsd-train",
    version,
    about = "MGSD brain-tumour segmentation with missing MRI modalities: train, evaluate, predict.\n\nWithout a subcommand: the embedded demo (synthetic cases, at most 8 minutes of training on 2 CPU cores)."
)]
struct Cli {
    /// cpu, cuda or cuda:N (CUDA needs a build with `--features cuda`).
    #[arg(long, global = true)]
    device: Option<String>,
    /// Convolution arithmetic on CUDA: f32 (default; TF32 tensor cores) or bf16 mixed
    /// precision. Overrides `[run] precision` of a training config.
    #[arg(long, global = true)]
    precision: Option<ConvPrecision>,
    /// Only warnings and errors on stderr (no progress bars, no information lines).
    #[arg(long, global = true)]
    quiet: bool,
    /// Run directory of the embedded demo (default: runs/demo/<timestamp>).
    #[arg(long)]
    run_dir: Option<PathBuf>,
    /// Run the demo workflow (train, then the 15-subset table) with this configuration instead
    /// of the embedded configs/demo.toml.
    #[arg(long)]
    demo_config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Train from a TOML configuration (see configs/), or continue a run.
    ///
    /// Under `mgsd-train launch`, torchrun or srun (RANK, WORLD_SIZE, … set) it is one rank of a
    /// data-parallel run on `cuda:LOCAL_RANK` (build with `--features nccl`).
    Train {
        /// Configuration file (default with --resume: the run's own config.toml).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Continue the run in this directory from its last.safetensors.
        #[arg(long)]
        resume: Option<PathBuf>,
        /// Average the gradients of N micro-batches before each optimiser step (overrides
        /// `[train] accumulate`): one process computes what N ranks compute.
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        accumulate: Option<u32>,
    },
    /// Start the ranks of a data-parallel job on this node, as torchrun does: N copies of this
    /// program with RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT set, e.g.
    /// `mgsd-train launch --nproc-per-node 4 -- train --config configs/mgsd-brats2018.toml`.
    /// Signals are forwarded; if a rank fails, the others are stopped.
    Launch {
        /// Ranks (GPUs) on this node.
        #[arg(long)]
        nproc_per_node: usize,
        /// Nodes in the job (one launcher per node).
        #[arg(long, default_value_t = 1)]
        nnodes: usize,
        /// This node's index.
        #[arg(long, default_value_t = 0)]
        node_rank: usize,
        /// Address of node 0, where rank 0 waits for the others.
        #[arg(long, default_value = "127.0.0.1")]
        master_addr: String,
        /// Port of rank 0's rendezvous.
        #[arg(long, default_value_t = mgsd_train::distributed::env::DEFAULT_MASTER_PORT)]
        master_port: u16,
        /// Seconds the other ranks get to exit after SIGTERM when one failed, before SIGKILL.
        #[arg(long, default_value_t = 15.0)]
        grace: f64,
        /// The command every rank runs (after `--`).
        #[arg(last = true, required = true)]
        command: Vec<std::ffi::OsString>,
    },
    /// Check a data-parallel set-up without training: every rank meets rank 0 (the
    /// rendezvous) and rank 0 lists them; with `--device cuda` (a `--features nccl` build) also
    /// one NCCL all-reduce. Run it under `launch`, torchrun or srun.
    CheckRanks {
        /// Make this rank fail at once (to see that the launcher stops the others).
        #[arg(long)]
        fail_rank: Option<usize>,
        /// Stay alive this many seconds after the check (to try signal forwarding).
        #[arg(long, default_value_t = 0.0)]
        hold: f64,
    },
    /// The 15 × 3 Dice / HD95 table of a checkpoint on labelled cases.
    Eval {
        /// Checkpoint (.safetensors).
        #[arg(long)]
        checkpoint: PathBuf,
        /// Dataset: a folder in a BraTS/MSD layout, or a manifest.json from `cargo xtask fetch-brats`.
        #[arg(long)]
        data: PathBuf,
        /// Split file (`cargo xtask splits`); without it every case is evaluated.
        #[arg(long)]
        split: Option<PathBuf>,
        /// Fold of the split file.
        #[arg(long, default_value_t = 0)]
        fold: usize,
        /// Which part of the split: test (held out), val (chose best.safetensors) or train. A
        /// part the split file does not have is an error.
        #[arg(long, default_value = "test")]
        part: String,
        /// Output folder for eval.md/.csv/.json and eval-cases.csv (default: next to the checkpoint).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Only these subsets (e.g. `flair+t1ce`; repeatable). Default: all 15.
        #[arg(long)]
        subset: Vec<String>,
        /// Protocol overrides (default: the checkpoint's protocol, whose window it keeps).
        #[command(flatten)]
        protocol: ProtocolArgs,
        /// Metrics: legacy (Dice/HD95), or also the official BraTS 2023+ ones (brats2023, all).
        #[arg(long, value_enum, default_value = "legacy")]
        metrics: MetricSet,
    },
    /// Segment one patient, or a folder of patients, with whatever modalities they have.
    Predict {
        /// Checkpoint (.safetensors; ours or a PyTorch state_dict).
        #[arg(long)]
        checkpoint: PathBuf,
        /// A case folder, or one NIfTI file per modality (repeat --input); with an output
        /// folder, a folder of patients (case folders, or loose <id>_<modality>.nii.gz files).
        #[arg(long, required = true, num_args = 1..)]
        input: Vec<PathBuf>,
        /// Output label map (BraTS labels 0/1/2/4, `.nii.gz`) on the input's (reference) grid;
        /// a folder (no `.nii`/`.nii.gz` name) segments every patient of the --input folder
        /// into <id>.nii.gz files and a summary.csv.
        #[arg(long)]
        output: PathBuf,
        /// Bring modalities on different grids onto the reference grid (exact for axis
        /// permutations and flips, trilinear otherwise); labels are written on that grid.
        #[arg(long)]
        resample: bool,
        /// Reference modality for --resample (t1ce, flair, t1 or t2). Default: the present
        /// modality with the smallest voxels.
        #[arg(long)]
        reference: Option<String>,
        /// Run the network on isotropic voxels of this size in mm (e.g. 1) and map the labels
        /// back to the reference grid.
        #[arg(long)]
        spacing: Option<f64>,
        /// Modality of each input file, in order (e.g. `t1ce,flair`); default: from the file names.
        #[arg(long, value_delimiter = ',')]
        modalities: Option<Vec<String>>,
        /// Write probability maps (ED, NCR/NET, ET) into this folder (for a folder of
        /// patients: into <folder>/<id>/).
        #[arg(long)]
        probabilities: Option<PathBuf>,
        /// Write a PNG preview (three planes through the tumour, at physical aspect, with a
        /// legend); for a folder of patients, a folder for <id>.png files.
        #[arg(long)]
        preview: Option<PathBuf>,
        /// Protocol overrides (default: the checkpoint's normalisation and patch, sliding
        /// windows over the whole brain).
        #[command(flatten)]
        protocol: ProtocolArgs,
    },
    /// Score a folder of predictions against references: the official BraTS 2023+ lesion-wise
    /// metrics and/or the BraTS 2018–2021 ones (CSV with the official column names).
    Score {
        /// Folder of predictions (`<ID>.nii.gz`, or any name ending with the id).
        #[arg(long)]
        pred: PathBuf,
        /// Folder of references (`<ID>-seg.nii.gz`, `<ID>_seg.nii.gz`, or case folders).
        #[arg(long)]
        truth: PathBuf,
        /// Label scheme of references and predictions.
        #[arg(long, value_enum, default_value = "auto")]
        labels: LabelsArg,
        /// Which metrics.
        #[arg(long, value_enum, default_value = "brats2023")]
        metrics: MetricSet,
        /// Output CSV (one row per case, then mean, std, median).
        #[arg(long)]
        out: PathBuf,
    },
    /// Compare two evaluations (eval.json of A and B): mean difference, bootstrap CI, paired
    /// Wilcoxon and Holm over the 15 subsets × 3 regions.
    Compare {
        /// eval.json of method A.
        a: PathBuf,
        /// eval.json of method B.
        b: PathBuf,
        /// Per-case metric compared.
        #[arg(long, value_enum, default_value = "dice")]
        metric: mgsd_train::compare::CompareMetric,
        /// Output folder for compare.md, compare.csv and compare.png.
        #[arg(long, default_value = "compare")]
        out: PathBuf,
    },
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

#[cfg(unix)]
mod sigint {
    use super::INTERRUPTED;
    use std::sync::atomic::Ordering;

    extern "C" fn on_stop(sig: libc::c_int) {
        // Async-signal-safe: an atomic swap, or _exit on the second signal.
        if INTERRUPTED.swap(true, Ordering::SeqCst) {
            // SAFETY: `_exit` is async-signal-safe and never returns.
            unsafe { libc::_exit(128 + sig) }
        }
    }

    /// First Ctrl-C or SIGTERM (a launcher, SLURM's pre-emption): set the flag (the trainer
    /// saves and stops at the next step); second: exit at once.
    pub fn install() {
        for sig in [libc::SIGINT, libc::SIGTERM] {
            // SAFETY: installing a handler that only touches an atomic (or calls `_exit`).
            unsafe {
                libc::signal(sig, on_stop as extern "C" fn(libc::c_int) as libc::sighandler_t);
            }
        }
    }
}

#[cfg(not(unix))]
mod sigint {
    pub fn install() {}
}

fn main() {
    let cli = Cli::parse();
    // In a data-parallel job only rank 0 logs information; the others warnings and errors.
    let other_rank =
        std::env::var("RANK").ok().and_then(|r| r.parse::<usize>().ok()).is_some_and(|r| r > 0);
    mgsd_train::logging::init(cli.quiet || other_rank);
    if mgsd_nn::keep_freed_memory() {
        tracing::debug!("malloc keeps freed memory for reuse (mgsd_nn::malloc_policy)");
    }
    if let Err(e) = run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    let progress = !cli.quiet;
    match cli.command {
        None => demo(cli.demo_config.as_deref(), cli.device, cli.precision, cli.run_dir, progress),
        Some(Command::Train { config, resume, accumulate }) => {
            let path = match (&config, &resume) {
                (Some(c), _) => c.clone(),
                (None, Some(r)) => r.join(files::CONFIG),
                (None, None) => {
                    bail!("train needs --config FILE (see configs/) or --resume RUN_DIR")
                }
            };
            let mut cfg = Config::load(&path)?;
            if let Some(d) = cli.device {
                parse_device(&d)?;
                cfg.run.device = d;
            }
            if let Some(p) = cli.precision {
                cfg.run.precision = p;
            }
            if let Some(a) = accumulate {
                cfg.train.accumulate = a as usize;
            }
            // The trainer opens the rank's device itself, from `cfg.run.device`.
            let (comm, root, _) = join_job(&mut cfg.run.device)?;
            sigint::install();
            let opts = RunOptions {
                resume,
                stop: stop_flag(),
                progress: progress && root,
                ..RunOptions::default()
            };
            let out = train_with(&cfg, &opts, comm)?;
            if !root {
                return Ok(());
            }
            println!(
                "{} after {} steps ({:.1} min); run directory: {}",
                describe(out.reason),
                out.steps,
                out.seconds / 60.0,
                out.run_dir.display()
            );
            if let Some(b) = out.best_score {
                println!(
                    "best validation mean Dice: {:.4} ({})",
                    b,
                    out.run_dir.join(files::BEST).display()
                );
            }
            Ok(())
        }
        Some(Command::Launch {
            nproc_per_node,
            nnodes,
            node_rank,
            master_addr,
            master_port,
            grace,
            command,
        }) => launch(&LaunchOptions {
            program: std::env::current_exe().context("locating the mgsd-train executable")?,
            args: command,
            nproc_per_node,
            nnodes,
            node_rank,
            master_addr,
            master_port,
            grace: std::time::Duration::from_secs_f64(grace.max(0.0)),
        }),
        Some(Command::CheckRanks { fail_rank, hold }) => check_ranks(cli.device, fail_rank, hold),
        Some(Command::Eval {
            checkpoint,
            data,
            split,
            fold,
            part,
            out,
            subset,
            protocol,
            metrics,
        }) => {
            // Under a launcher the cases are split over the ranks; rank 0 writes the tables.
            let mut device_name = cli.device.clone().unwrap_or_else(|| "cpu".into());
            let (comm, root, joined) = join_job(&mut device_name)?;
            let device = match joined {
                Some(d) => d,
                None => open_device(parse_device(&device_name)?)?,
            };
            set_precision(cli.precision.unwrap_or_default(), &device)?;
            let ckpt = checkpoint::load(&checkpoint, &device)?;
            let unet = unet_from_checkpoint(&ckpt, &device)?;
            let chosen = protocol.apply(&protocol::of_checkpoint(&ckpt)?, None)?;
            let all = if data.is_file() {
                read_manifest(&data)?
            } else {
                mgsd_io::discover(&data)
                    .with_context(|| format!("looking for cases in {}", data.display()))?
                    .cases
            };
            let (cases, provenance) = match &split {
                Some(s) => {
                    let sp = split_with_file(&all, s, fold)?;
                    let origin = format!("{} (fold {fold})", s.display());
                    let cases = sp.part(&part, &origin)?.to_vec();
                    let provenance = Provenance {
                        checkpoint: checkpoint.display().to_string(),
                        split_file: Some(s.display().to_string()),
                        split_sha256: Some(sha256_of(s)?),
                        fold: Some(fold),
                        part: part.clone(),
                    };
                    (cases, provenance)
                }
                None => {
                    let cases: Vec<_> = all.into_iter().filter(|c| c.label.is_some()).collect();
                    let provenance = Provenance {
                        checkpoint: checkpoint.display().to_string(),
                        part: "all labelled".into(),
                        ..Provenance::default()
                    };
                    (cases, provenance)
                }
            };
            if cases.is_empty() {
                bail!("no labelled case to evaluate in {}", data.display());
            }
            let mut settings = EvalSettings::for_protocol(&chosen, progress);
            if !subset.is_empty() {
                settings.subsets = subset
                    .iter()
                    .map(|s| s.parse::<ModalitySet>().map_err(anyhow::Error::msg))
                    .collect::<Result<_>>()?;
            }
            settings.official = metrics != MetricSet::Legacy;
            let t = Instant::now();
            let store = CaseStore::new(false, None);
            let mut report =
                evaluate_across_ranks(comm.as_ref(), &unet, &cases, &store, &settings, &device)?;
            if !root {
                return Ok(());
            }
            report.provenance = Some(provenance);
            let out = out.unwrap_or_else(|| {
                let stem = checkpoint
                    .file_stem()
                    .map_or("eval".into(), |s| s.to_string_lossy().to_string());
                checkpoint.parent().unwrap_or(Path::new(".")).join(format!("eval-{stem}"))
            });
            report.write(&out, "eval")?;
            println!("{}", report.markdown());
            println!(
                "{} cases × {} subsets in {:.1}s; written to {}",
                cases.len(),
                settings.subsets.len(),
                t.elapsed().as_secs_f64(),
                out.display()
            );
            Ok(())
        }
        Some(Command::Predict {
            checkpoint,
            input,
            output,
            resample,
            reference,
            spacing,
            modalities,
            probabilities,
            preview,
            protocol,
        }) => {
            let device = open_device(parse_device(cli.device.as_deref().unwrap_or("cpu"))?)?;
            set_precision(cli.precision.unwrap_or_default(), &device)?;
            let modalities = modalities
                .map(|v| {
                    v.iter()
                        .map(|s| s.parse::<Modality>().map_err(anyhow::Error::msg))
                        .collect::<Result<Vec<_>>>()
                })
                .transpose()?;
            let reference = reference
                .map(|s| s.parse::<Modality>().map_err(anyhow::Error::msg))
                .transpose()
                .context("--reference")?;
            let grid = GridOptions { resample, reference, spacing };
            if is_batch_output(&output) {
                let [input] = input.as_slice() else {
                    bail!(
                        "--output {} is a folder, so --input must be one folder of patients (got {} inputs); \
                         to segment one patient, give --output a .nii.gz name",
                        output.display(),
                        input.len()
                    );
                };
                if !input.is_dir() {
                    bail!(
                        "--output {} is a folder, so --input must be a folder of patients, but {} is not a folder",
                        output.display(),
                        input.display()
                    );
                }
                let opts = BatchOptions {
                    checkpoint,
                    input: input.clone(),
                    output,
                    modalities,
                    probabilities,
                    previews: preview,
                    protocol,
                    grid,
                    progress,
                };
                let report = predict_batch(&opts, &device)?;
                let failures = report.failures();
                println!(
                    "{} of {} cases segmented; summary: {}",
                    report.rows.len() - failures.len(),
                    report.rows.len(),
                    report.summary.display()
                );
                if !failures.is_empty() {
                    println!("{} failed:", failures.len());
                    for f in &failures {
                        println!("  {}: {}", f.case, f.error.as_deref().unwrap_or("?"));
                    }
                    bail!(
                        "{} of {} cases failed (listed above and in {})",
                        failures.len(),
                        report.rows.len(),
                        report.summary.display()
                    );
                }
                return Ok(());
            }
            let opts = PredictOptions {
                checkpoint,
                inputs: input,
                modalities,
                output,
                probabilities,
                preview,
                protocol,
                grid,
            };
            let s = predict(&opts, &device)?;
            println!(
                "segmented with {} on a {:?} grid: ED {} / NCR-NET {} / ET {} voxels",
                s.modalities,
                s.shape,
                s.counts.get(&2).unwrap_or(&0),
                s.counts.get(&1).unwrap_or(&0),
                s.counts.get(&4).unwrap_or(&0)
            );
            let [wt, tc, et] = s.volumes_ml;
            println!("tumour volumes: whole tumour {wt:.2} ml, tumour core {tc:.2} ml, enhancing tumour {et:.2} ml");
            println!("{}", s.protocol);
            if let Some((outside, brain)) = s.outside_window.filter(|(o, _)| *o > 0) {
                println!(
                    "warning: the centre window left {outside} of {brain} brain voxels unsegmented"
                );
            }
            for w in &s.warnings {
                println!("warning: {w}");
            }
            for w in &s.written {
                println!("wrote {}", w.display());
            }
            Ok(())
        }
        Some(Command::Score { pred, truth, labels, metrics, out }) => {
            let t = Instant::now();
            let report = score(&ScoreOptions { pred, truth, labels, metrics, progress })?;
            std::fs::write(&out, report.csv())
                .with_context(|| format!("writing {}", out.display()))?;
            println!("{}", report.markdown());
            println!(
                "{} cases in {:.1}s; written to {}",
                report.rows.len(),
                t.elapsed().as_secs_f64(),
                out.display()
            );
            Ok(())
        }
        Some(Command::Compare { a, b, metric, out }) => {
            let c = mgsd_train::compare::compare(&a, &b, metric)?;
            c.write(&out)?;
            println!("{}", c.markdown());
            println!("written to {}", out.display());
            Ok(())
        }
    }
}

/// This process's place in a data-parallel job (from RANK, WORLD_SIZE, …; none: a plain run):
/// its collective, whether it is rank 0, and the device it opened to join the job (none for a
/// plain run). `device` (the configured one) becomes the rank's own (`cuda:LOCAL_RANK`).
fn join_job(device: &mut String) -> Result<(Arc<dyn Collective>, bool, Option<Device>)> {
    let Some(env) = DistEnv::from_env()? else {
        return Ok((Arc::new(SingleProcess), true, None));
    };
    let spec = distributed::rank_device(&env, parse_device(device)?)?;
    *device = match spec {
        mgsd_train::config::DeviceSpec::Cpu => "cpu".into(),
        mgsd_train::config::DeviceSpec::Cuda(n) => format!("cuda:{n}"),
    };
    let opened = open_device(spec)?;
    let comm = distributed::connect(&env, &opened)?;
    Ok((comm, env.rank == 0, Some(opened)))
}

/// `check-ranks`: the rendezvous (and with a CUDA device, one NCCL all-reduce) of every rank.
fn check_ranks(device: Option<String>, fail_rank: Option<usize>, hold: f64) -> Result<()> {
    let env = DistEnv::from_env()?.context(
        "check-ranks runs as one rank of a job: start it with `mgsd-train launch --nproc-per-node N -- check-ranks`, torchrun or srun (WORLD_SIZE is not set)",
    )?;
    if fail_rank == Some(env.rank) {
        bail!("rank {} fails on purpose (--fail-rank)", env.rank);
    }
    let spec = parse_device(device.as_deref().unwrap_or("cpu"))?;
    let t = Instant::now();
    let (greetings, reduced) = match spec {
        mgsd_train::config::DeviceSpec::Cpu => {
            let device = candle_core::Device::Cpu;
            let token = format!("{:x}", std::process::id());
            let r = distributed::rendezvous::rendezvous(
                &env,
                &distributed::greeting(&env, &device),
                || Ok(token.into_bytes()),
            )?;
            (r.greetings, None)
        }
        cuda => {
            let device = open_device(distributed::rank_device(&env, cuda)?)?;
            let comm = distributed::connect(&env, &device)?;
            let ones = candle_core::Tensor::ones(4, candle_core::DType::F32, &device)?;
            let sum = comm.all_reduce_sum(&ones)?.to_vec1::<f32>()?;
            if sum.iter().any(|&v| v != env.world_size as f32) {
                bail!("NCCL all-reduce of ones gave {sum:?}, expected {}", env.world_size);
            }
            (vec![distributed::greeting(&env, &device)], Some(sum[0]))
        }
    };
    if env.rank == 0 {
        println!(
            "rendezvous at {}: {} rank(s) in {:.2} s",
            env.master(),
            env.world_size,
            t.elapsed().as_secs_f64()
        );
        for g in &greetings {
            println!("  {g}");
        }
        if let Some(v) = reduced {
            println!("NCCL all-reduce of ones: {v} on every rank (= WORLD_SIZE)");
        }
    }
    if hold > 0.0 {
        std::thread::sleep(std::time::Duration::from_secs_f64(hold));
    }
    Ok(())
}

fn stop_flag() -> Arc<AtomicBool> {
    // Mirror the signal flag into the trainer's flag from a watcher thread.
    let flag = Arc::new(AtomicBool::new(false));
    let f = flag.clone();
    std::thread::spawn(move || loop {
        if INTERRUPTED.load(Ordering::SeqCst) {
            f.store(true, Ordering::SeqCst);
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    });
    flag
}

fn describe(r: StopReason) -> &'static str {
    match r {
        StopReason::Finished => "finished",
        StopReason::Interrupted => "interrupted (saved; continue with --resume)",
        StopReason::TimeBudget => "stopped at the time budget (saved)",
        StopReason::Killed => "killed",
    }
}

/// `Brats18_SYN_0020_1 … Brats18_SYN_0025_1`-style summary of sorted ids.
fn compact_ids(ids: &[String]) -> String {
    match ids {
        [] => "none".into(),
        [one] => one.clone(),
        [first, .., last] if ids.len() > 3 => format!("{first} … {last}"),
        _ => ids.join(", "),
    }
}

/// SHA-256 of a file's bytes, as lowercase hex.
fn sha256_of(path: &Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect())
}

/// `YYYYMMDD-HHMMSS` (UTC) for run directory names.
fn timestamp() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}{m:02}{d:02}-{:02}{:02}{:02}", rem / 3600, rem % 3600 / 60, rem % 60)
}

fn demo(
    config: Option<&Path>,
    device: Option<String>,
    precision: Option<ConvPrecision>,
    run_dir: Option<PathBuf>,
    progress: bool,
) -> Result<()> {
    let t0 = Instant::now();
    let mut cfg = match config {
        Some(path) => Config::load(path)?,
        None => Config::demo()?,
    };
    if let Some(d) = device {
        parse_device(&d)?;
        cfg.run.device = d;
    }
    if let Some(p) = precision {
        cfg.run.precision = p;
    }
    cfg.run.dir = run_dir.unwrap_or_else(|| cfg.run.dir.join(timestamp()));
    println!(
        "MGSD embedded demo: synthetic BraTS-like cases, run directory {}",
        cfg.run.dir.display()
    );
    sigint::install();
    let opts = RunOptions { stop: stop_flag(), progress, ..RunOptions::default() };
    let out = train(&cfg, &opts)?;
    println!(
        "training {} after {} steps in {:.1} min (the trainer waited {:.1}s for data)",
        describe(out.reason),
        out.steps,
        out.seconds / 60.0,
        out.data_wait
    );
    let device = open_device(parse_device(&cfg.run.device)?)?;
    let ckpt = checkpoint::load(&out.run_dir.join(files::LAST), &device)?;
    let unet = unet_from_checkpoint(&ckpt, &device)?;
    let store = CaseStore::new(true, None);
    let mut report = evaluate(
        &unet,
        &out.splits.test,
        &store,
        &EvalSettings::for_protocol(&cfg.protocol, progress),
        &device,
    )?;
    report.provenance = Some(Provenance {
        checkpoint: out.run_dir.join(files::LAST).display().to_string(),
        part: "test".into(),
        ..Provenance::default()
    });
    report.write(&out.run_dir, "eval")?;
    println!(
        "\nDice (%) on {} held-out synthetic test cases ({}), never used for training or validation ({} validation cases), all 15 modality subsets; {}:\n",
        report.cases.len(),
        compact_ids(&report.cases),
        out.splits.val.len(),
        report.protocol
    );
    println!("{}", report.dice_table());
    for line in DemoSummary::of(&report)?.lines() {
        println!("{line}");
    }
    println!("full table with HD95: {}", out.run_dir.join("eval.md").display());
    println!(
        "run directory: {} (total {:.1} min)",
        out.run_dir.display(),
        t0.elapsed().as_secs_f64() / 60.0
    );
    Ok(())
}
