//! Times one full MGSD training step on the CPU or a CUDA GPU: teacher pass, two student passes, the
//! distillation heads, backward, the segmenter's and the discriminator's optimiser steps and
//! the EMA update. The PyTorch twin is `bench/mgsd_step_vs_pytorch.py`; run both with
//! `bench/mgsd_step_vs_pytorch.sh`.
//!
//! ```text
//! RAYON_NUM_THREADS=2 cargo run --release -p mgsd-distill --example step-bench -- \
//!     [--width 8] [--patch 64,64,32] [--warmup 1] [--steps 3] [--device cpu|cuda] \
//!     [--recompute-norm true|false] [--precision f32|bf16] [--cudnn-benchmark true|false]
//! ```
//! `--device cuda` needs a build with `--features mgsd-distill/cuda`; each step then ends with
//! a device synchronisation so the time covers the GPU's work. `--precision bf16` (CUDA only)
//! runs the convolutions in bf16 mixed precision (`mgsd_nn::ConvPrecision`);
//! `--cudnn-benchmark true` (CUDA only) measures cuDNN's algorithms in the warm-up steps and
//! keeps the fastest (PyTorch's `torch.backends.cudnn.benchmark = True`).
//! Prints one JSON object: `{"median_s": …, "steps_s": […], …}`.

use std::process::ExitCode;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use mgsd_distill::{MgsdConfig, MgsdObjective, ModalityMask};
use mgsd_nn::ConvPrecision;

struct Args {
    width: usize,
    patch: [usize; 3],
    warmup: usize,
    steps: usize,
    cuda: bool,
    recompute_norm: bool,
    precision: ConvPrecision,
    cudnn_benchmark: bool,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        width: 8,
        patch: [64, 64, 32],
        warmup: 1,
        steps: 3,
        cuda: false,
        recompute_norm: true,
        precision: ConvPrecision::F32,
        cudnn_benchmark: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let v = it.next().ok_or_else(|| format!("{k} needs a value"))?;
        let num = |s: &str| s.parse::<usize>().map_err(|e| format!("{k} {s}: {e}"));
        match k.as_str() {
            "--width" => a.width = num(&v)?,
            "--warmup" => a.warmup = num(&v)?,
            "--steps" => a.steps = num(&v)?.max(1),
            "--device" => {
                a.cuda = match v.as_str() {
                    "cpu" => false,
                    "cuda" => true,
                    _ => return Err(format!("--device {v}: want cpu or cuda")),
                }
            }
            "--recompute-norm" => {
                a.recompute_norm =
                    v.parse().map_err(|e| format!("--recompute-norm {v}: {e} (true or false)"))?
            }
            "--precision" => a.precision = v.parse().map_err(|e| format!("--precision: {e}"))?,
            "--cudnn-benchmark" => {
                a.cudnn_benchmark =
                    v.parse().map_err(|e| format!("--cudnn-benchmark {v}: {e} (true or false)"))?
            }
            "--patch" => {
                let p: Vec<usize> = v.split(',').map(num).collect::<Result<_, _>>()?;
                a.patch = p.try_into().map_err(|_| format!("--patch {v}: want D,H,W"))?;
            }
            _ => return Err(format!("unknown argument {k}")),
        }
    }
    if a.precision.is_bf16() && !a.cuda {
        return Err(format!("--precision {}: bf16 convolutions need --device cuda", a.precision));
    }
    if a.cudnn_benchmark && !a.cuda {
        return Err("--cudnn-benchmark true needs --device cuda".to_owned());
    }
    Ok(a)
}

fn run(a: &Args) -> Result<String, Box<dyn std::error::Error>> {
    let dev = if a.cuda { Device::new_cuda(0)? } else { Device::Cpu };
    mgsd_nn::set_conv_precision(a.precision);
    #[cfg(feature = "cuda")]
    mgsd_nn::conv3d::set_cudnn_benchmark(a.cudnn_benchmark);
    let cfg =
        MgsdConfig { width: a.width, recompute_norm: a.recompute_norm, ..MgsdConfig::default() };
    let mut obj = MgsdObjective::new(cfg, &dev, true)?;
    let [d, h, w] = a.patch;
    let x = Tensor::rand(0f32, 1.0, (1, 4, d, h, w), &dev)?;
    let y = Tensor::rand(0f32, 1.0, (1, 3, d, h, w), &dev)?.ge(0.8)?.to_dtype(DType::F32)?;
    let r = ModalityMask::new([1.0, 0.0, 1.0, 0.0])?;
    let mut opt = AdamW::new(
        obj.student_vars().all_vars(),
        ParamsAdamW { lr: 1e-4, weight_decay: 1e-5, ..Default::default() },
    )?;
    let d_vars = obj.discriminator_vars().map(|v| v.all_vars()).unwrap_or_default();
    let mut opt_d = AdamW::new(
        d_vars,
        ParamsAdamW { lr: 1e-4, beta2: 0.99, weight_decay: 0.0, ..Default::default() },
    )?;
    let mut times = Vec::new();
    for step in 0..a.warmup + a.steps {
        let t0 = Instant::now();
        let terms = obj.step_losses(&x, &y, &r, true)?;
        let grads = terms.total.backward()?;
        opt.step(&grads)?;
        drop(grads);
        obj.update_teacher(step as u64)?;
        if let Some(dl) = obj.discriminator_loss(&terms)? {
            opt_d.step(&dl.backward()?)?;
        }
        dev.synchronize()?;
        let dt = t0.elapsed().as_secs_f64();
        if step >= a.warmup {
            times.push(dt);
        }
    }
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    Ok(format!(
        "{{\"impl\": \"candle\", \"device\": \"{}\", \"width\": {}, \"patch\": {:?}, \"recompute_norm\": {}, \"precision\": \"{}\", \"cudnn_benchmark\": {}, \"median_s\": {median:.4}, \"steps_s\": {times:?}}}",
        if a.cuda { "cuda" } else { "cpu" },
        a.width,
        a.patch,
        a.recompute_norm,
        a.precision,
        a.cudnn_benchmark
    ))
}

fn main() -> ExitCode {
    // As mgsd-train does: malloc keeps freed memory for reuse.
    mgsd_nn::keep_freed_memory();
    match parse().map_err(Into::into).and_then(|a| run(&a)) {
        Ok(s) => {
            println!("{s}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
