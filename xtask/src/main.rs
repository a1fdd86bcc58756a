//! `cargo xtask` command line: parses arguments and calls the library.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use xtask::download::NetOptions;
use xtask::gpu_bundle::{self, GpuBundleOptions};
use xtask::{fetch, splits, FetchOptions, FetchSource, Manifest, Outcome, Year};

/// Project chores for mgsd.
#[derive(Debug, Parser)]
#[command(name = "cargo xtask", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Download the MSD Task01_BrainTumour set, or import a BraTS archive/folder, verify every
    /// case and write data/<name>/manifest.json.
    ///
    /// Without --from this downloads the Medical Segmentation Decathlon Task01_BrainTumour
    /// archive (BraTS 2016/2017 cases, CC-BY-SA 4.0; 7.6 GB) from MONAI's mirror. BraTS
    /// 2018-2023 need registration: obtain them, then pass --from PATH (and --year).
    /// Re-running is fast when nothing changed.
    FetchBrats {
        /// Folder that receives the dataset folder.
        #[arg(long, default_value = "data")]
        dest: PathBuf,
        /// Download from this URL instead (a mirror; the MSD checksum applies unless --md5).
        #[arg(long, conflicts_with = "from")]
        url: Option<String>,
        /// Expected MD5 of the archive (downloaded, or given with --from), checked before unpacking.
        #[arg(long)]
        md5: Option<String>,
        /// Import a local .zip/.tar/.tar.gz or an unpacked folder (BraTS 2018/2019/2020/2021/2023 or MSD).
        #[arg(long)]
        from: Option<PathBuf>,
        /// With --from FOLDER: use the folder where it is (manifest records its path) instead of copying.
        #[arg(long, requires = "from")]
        link: bool,
        /// The BraTS year of the data (2018, 2019, 2020, 2021, 2023): checked against the
        /// layout and names the folder brats<year>.
        #[arg(long)]
        year: Option<Year>,
        /// Name of the dataset folder under --dest.
        #[arg(long)]
        name: Option<String>,
        /// Keep the downloaded archive in <dest>/.downloads/.
        #[arg(long)]
        keep_archive: bool,
        /// Import again even when an unchanged copy exists.
        #[arg(long)]
        force: bool,
        /// Seconds allowed for resolving and connecting.
        #[arg(long, default_value_t = 5)]
        connect_timeout: u64,
        /// No progress bars.
        #[arg(long)]
        quiet: bool,
    },
    /// Write train/val/test splits of a dataset as JSON: seeded k-fold or a fixed list.
    Splits {
        /// The dataset's manifest.json.
        #[arg(long)]
        manifest: PathBuf,
        /// Output JSON (e.g. data/splits/Task01_BrainTumour-5fold.json).
        #[arg(long)]
        out: PathBuf,
        /// Number of folds.
        #[arg(long, default_value_t = 5, conflicts_with = "list")]
        k: usize,
        /// Seed of the fold assignment.
        #[arg(long, default_value_t = 0, conflicts_with = "list")]
        seed: u64,
        /// k-fold: fraction of each fold's non-test cases held out for validation (checkpoint
        /// selection); the held-out fold itself is the test set.
        #[arg(long, default_value_t = 0.2, conflicts_with = "list")]
        val_fraction: f64,
        /// A fixed list instead of k-fold: brats2018-rfnet:1|2|3, brats2020-rfnet, brats2021-m2ftrans.
        #[arg(long)]
        list: Option<String>,
        /// With --list: leave out ids the manifest lacks instead of failing.
        #[arg(long, requires = "list")]
        allow_missing: bool,
        /// Replace an existing output file.
        #[arg(long)]
        force: bool,
    },
    /// Build the CUDA-enabled binaries (mgsd-train, the step benchmark, the GPU parity tests)
    /// here, with stub CUDA libraries, and pack them with run.sh for a GPU machine without
    /// Rust. See crates/mgsd-kernels/README.md for the toolchain.
    GpuBundle {
        /// CUDA toolkit root holding bin/nvcc, include/, nvvm/ and lib/libcudart.so.* (e.g.
        /// pip's site-packages/nvidia/cu13). Default: $CUDA_HOME.
        #[arg(long, env = "CUDA_HOME")]
        cuda_home: PathBuf,
        /// Compute capability to compile for (90: H100/H200).
        #[arg(long, env = "CUDA_COMPUTE_CAP", default_value = "90")]
        compute_cap: String,
        /// Cargo target directory of the CUDA build (kept apart from the CPU build's).
        #[arg(long, default_value = "target-cuda")]
        target_dir: PathBuf,
        /// Output folder for bin.tar.xz and run.sh.
        #[arg(long, default_value = "target-cuda/gpu-bundle")]
        out: PathBuf,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
    match run(Cli::parse().command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // The chain, without a backtrace: these are messages for users, not bug reports.
            eprintln!("error: {error}");
            for cause in error.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> Result<()> {
    match command {
        Command::FetchBrats {
            dest,
            url,
            md5,
            from,
            link,
            year,
            name,
            keep_archive,
            force,
            connect_timeout,
            quiet,
        } => {
            let source = match (from, url) {
                (Some(path), _) => FetchSource::Local { path, md5, link },
                (None, url) => {
                    if let Some(year) = year {
                        bail!("{}", year.registration_message());
                    }
                    FetchSource::Url {
                        url: url.unwrap_or_else(|| fetch::MSD_URL.to_string()),
                        md5: md5.unwrap_or_else(|| fetch::MSD_MD5.to_string()),
                    }
                }
            };
            let net = NetOptions {
                connect_timeout: Duration::from_secs(connect_timeout.max(1)),
                progress: !quiet,
                ..NetOptions::default()
            };
            let report =
                fetch::fetch(&FetchOptions { dest, source, year, name, keep_archive, force, net })?;
            let what = match report.outcome {
                Outcome::UpToDate => "up to date",
                Outcome::Installed => "installed and verified",
            };
            println!("{} ({} cases): {what}", report.manifest.display(), report.cases);
        }
        Command::GpuBundle { cuda_home, compute_cap, target_dir, out } => {
            let workspace = std::env::current_dir()?;
            let target_dir = workspace.join(target_dir);
            let opts = GpuBundleOptions { cuda_home, compute_cap, target_dir, out };
            gpu_bundle::gpu_bundle(&workspace, &opts)?;
        }
        Command::Splits { manifest, out, k, seed, val_fraction, list, allow_missing, force } => {
            let m = Manifest::load(&manifest)?;
            let owned =
                |ids: Vec<&str>| ids.into_iter().map(str::to_string).collect::<Vec<String>>();
            let result = match &list {
                Some(spec) => {
                    splits::fixed_list(&m.name, spec, &owned(m.case_ids()), allow_missing)
                }
                None => {
                    // Unlabelled cases (MSD imagesTs, validation sets) cannot be trained or scored.
                    let labelled = owned(m.labelled_case_ids());
                    if labelled.len() < m.cases.len() {
                        tracing::info!(
                            unlabelled = m.cases.len() - labelled.len(),
                            "leaving unlabelled cases out of the folds"
                        );
                    }
                    splits::kfold(&m.name, &labelled, k, seed, val_fraction)
                }
            }
            .with_context(|| format!("making splits for {}", manifest.display()))?;
            splits::write(&result, &out, force)?;
            let sizes: Vec<String> = result
                .folds
                .iter()
                .map(|f| format!("{}/{}/{}", f.train.len(), f.val.len(), f.test.len()))
                .collect();
            println!(
                "{}: {} fold(s), train/val/test {}",
                out.display(),
                result.folds.len(),
                sizes.join(", ")
            );
        }
    }
    Ok(())
}
