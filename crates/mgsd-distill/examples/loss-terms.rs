//! Runs the MGSD objective once, in evaluation mode (dropout off), on a state and a batch saved
//! from PyTorch, and prints the loss terms as one JSON object — the way to check this port
//! against the reference code you have.
//!
//! ```text
//! cargo run --release -p mgsd-distill --example loss-terms -- \
//!     --weights W.safetensors --batch B.safetensors [--disc D.safetensors]
//! ```
//! `W`: the reference `state_dict` (`unet.*`, `ema_model.*`, `MMD.*`, `Mutiaxis_fuse{2,3,4}.*`;
//! the U-Net width is read from `unet.conv1a.weight`). `B`: `x` `(B, 4, D, H, W)`, `y`
//! `(B, 3, D, H, W)`, `r` (4 entries, ACN order T1, T2, FLAIR, T1ce). Output keys: `sup_full`,
//! `sup_miss`, `image`, `feature`, `modality`, `total` (the reference's `loss_total`); with
//! `--disc` (the style discriminator's `state_dict`, keys `0.*`…`6.*`) also `adv_gen`, and
//! `total` then includes it with weight 1.

use std::path::PathBuf;
use std::process::ExitCode;

use candle_core::Device;
use mgsd_distill::{Batch, MgsdConfig, MgsdObjective};

struct Args {
    weights: PathBuf,
    batch: PathBuf,
    disc: Option<PathBuf>,
}

const USAGE: &str =
    "usage: loss-terms --weights W.safetensors --batch B.safetensors [--disc D.safetensors]";

fn parse() -> Result<Args, String> {
    let (mut weights, mut batch, mut disc) = (None, None, None);
    let mut it = std::env::args_os().skip(1);
    while let Some(a) = it.next() {
        let slot = match a.to_str() {
            Some("--weights") => &mut weights,
            Some("--batch") => &mut batch,
            Some("--disc") => &mut disc,
            Some("-h" | "--help") => return Err(USAGE.into()),
            _ => return Err(format!("unknown argument {a:?}\n{USAGE}")),
        };
        let v = it.next().ok_or_else(|| format!("{a:?} needs a value\n{USAGE}"))?;
        *slot = Some(PathBuf::from(v));
    }
    Ok(Args {
        weights: weights.ok_or_else(|| format!("--weights is required\n{USAGE}"))?,
        batch: batch.ok_or_else(|| format!("--batch is required\n{USAGE}"))?,
        disc,
    })
}

fn run(args: &Args) -> Result<String, String> {
    let dev = Device::Cpu;
    let obj = MgsdObjective::load(MgsdConfig::default(), &args.weights, args.disc.as_deref(), &dev)
        .map_err(|e| e.to_string())?;
    let b = Batch::load(&args.batch, &dev).map_err(|e| e.to_string())?;
    let terms = obj
        .step_losses(&b.x, &b.y, &b.r, false)
        .and_then(|t| t.values())
        .map_err(|e| format!("{}: {e}", args.batch.display()))?;
    serde_json::to_string(&terms).map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    match parse().and_then(|a| run(&a)) {
        Ok(json) => {
            println!("{json}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
