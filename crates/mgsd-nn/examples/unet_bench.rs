//! Times UNet3D on CPU, for `bench/unet_vs_pytorch.sh`.
//!
//! ```text
//! cargo run --release -p mgsd-nn --example unet_bench -- <fwdbwd|fwd> D H W [width] [iters]
//! ```
//! Prints one line `mode=.. size=DxHxW width=.. secs=<median seconds per iteration>
//! cpu_secs=<CPU seconds per iteration, all threads> peak_rss_mb=..`
//! after one warm-up iteration. `fwd` runs inference (parameters as plain tensors, no graph);
//! `fwdbwd` runs a training forward (dropout on) and the backward of `sum(out · R)`.
//! Threads: rayon's, set `RAYON_NUM_THREADS`.

use std::collections::HashMap;
use std::time::Instant;

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::{VarBuilder, VarMap};
use mgsd_nn::{UNet3D, UNet3DConfig};

fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_owned))
        })
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// CPU seconds (user + system, all threads) this process has used.
fn cpu_secs() -> f64 {
    // Fields 14 and 15 of /proc/self/stat, in clock ticks (100 per second on Linux).
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some((f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?) / 100.0)
        })
        .unwrap_or(f64::NAN)
}

fn main() -> Result<()> {
    // As mgsd-train does: malloc keeps freed memory for reuse.
    mgsd_nn::keep_freed_memory();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: unet_bench <fwdbwd|fwd> D H W [width] [iters]";
    if args.len() < 4 {
        candle_core::bail!("{usage}")
    }
    let num = |i: usize, default: usize| -> Result<usize> {
        match args.get(i) {
            None => Ok(default),
            Some(s) => s
                .parse()
                .map_err(|e| candle_core::Error::Msg(format!("{usage}: argument {s}: {e}"))),
        }
    };
    let mode = args[0].as_str();
    let (d, h, w) = (num(1, 0)?, num(2, 0)?, num(3, 0)?);
    let width = num(4, 16)?;
    let iters = num(5, 3)?.max(1);
    let dev = Device::Cpu;
    let cfg = UNet3DConfig { width, ..UNet3DConfig::default() };
    let varmap = VarMap::new();
    let train_net = UNet3D::new(cfg, VarBuilder::from_varmap(&varmap, DType::F32, &dev))?;
    let x = Tensor::rand(0f32, 1f32, (1, 4, d, h, w), &dev)?;
    let mut times = Vec::new();
    let mut cpu0 = 0.0;
    match mode {
        "fwdbwd" => {
            let r = Tensor::rand(-1f32, 1f32, (1, 3, d, h, w), &dev)?;
            for i in 0..=iters {
                let t = Instant::now();
                let o = train_net.forward_t(&x, Some(i as u64))?;
                let grads = (o.out * &r)?.sum_all()?.backward()?;
                drop(grads);
                if i > 0 {
                    times.push(t.elapsed().as_secs_f64());
                } else {
                    cpu0 = cpu_secs();
                }
            }
        }
        "fwd" => {
            // Plain tensors: no autograd graph is kept, like torch.no_grad().
            let params: HashMap<String, Tensor> = varmap
                .data()
                .lock()
                .map_err(|_| candle_core::Error::Msg("poisoned".into()))?
                .iter()
                .map(|(k, v)| (k.clone(), v.as_tensor().detach()))
                .collect();
            drop(train_net);
            let net = UNet3D::new(cfg, VarBuilder::from_tensors(params, DType::F32, &dev))?;
            for i in 0..=iters {
                let t = Instant::now();
                let o = net.forward(&x)?;
                drop(o);
                if i > 0 {
                    times.push(t.elapsed().as_secs_f64());
                } else {
                    cpu0 = cpu_secs();
                }
            }
        }
        other => candle_core::bail!("{usage}: unknown mode {other}"),
    }
    let cpu = (cpu_secs() - cpu0) / iters as f64;
    times.sort_by(f64::total_cmp);
    println!(
        "mode={mode} size={d}x{h}x{w} width={width} secs={:.4} cpu_secs={cpu:.4} peak_rss_mb={:.0}",
        times[times.len() / 2],
        peak_rss_mb()
    );
    Ok(())
}
