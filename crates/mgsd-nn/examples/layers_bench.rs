//! Times the layer ops of this crate, forward and forward + backward of `sum(y · r)`, and
//! prints one `name<TAB>milliseconds` line per case (median of the repetitions). Run by
//! `bench/layers_vs_pytorch.py`, which times the same cases in PyTorch and prints ratios.
//!
//! `cargo run --release -p mgsd-nn --example layers_bench [-- REPS [ONLY]]`: `ONLY` is a
//! comma-separated list of substrings of the case names to run (default: all).

use std::time::Instant;

use candle_core::{DType, Device, Result, Tensor, Var};
use mgsd_nn::{
    adaptive_avg_pool3d, conv3d_forward, cross_attention, group_norm, leaky_relu, max_pool3d_2x,
    upsample2x_add, AttentionVariant, Conv3dConfig,
};

type ConvCase = (&'static str, usize, usize, usize, usize, usize, [usize; 3]);

/// The convolutions of one MGSD step at c = 16 on a 64×64×32 patch, batch 2 (the two student
/// passes; the discriminator's two inputs): `(name, cin, cout, kernel, stride, padding, input
/// D, H, W)`. `bench/layers_vs_pytorch.py` lists the same cases.
const CONVS: [ConvCase; 10] = [
    ("conv_k3_4to16_64x64x32", 4, 16, 3, 1, 1, [64, 64, 32]),
    ("conv_k3_16to16_64x64x32", 16, 16, 3, 1, 1, [64, 64, 32]),
    ("conv_k3s2_16to32_64x64x32", 16, 32, 3, 2, 1, [64, 64, 32]),
    ("conv_k3_32to32_32x32x16", 32, 32, 3, 1, 1, [32, 32, 16]),
    ("conv_k3_64to64_16x16x8", 64, 64, 3, 1, 1, [16, 16, 8]),
    ("conv_k3_128to128_8x8x4", 128, 128, 3, 1, 1, [8, 8, 4]),
    ("conv_k1_16to3_64x64x32", 16, 3, 1, 1, 0, [64, 64, 32]),
    ("conv_k4s2_3to64_64x64x32", 3, 64, 4, 2, 1, [64, 64, 32]),
    ("conv_k4s2_64to128_32x32x16", 64, 128, 4, 2, 1, [32, 32, 16]),
    ("conv_k4s2_128to256_16x16x8", 128, 256, 4, 2, 1, [16, 16, 8]),
];

/// Median wall time of `reps` runs of `f` (after one warm-up), in milliseconds.
fn time(reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    let mut t = Vec::with_capacity(reps);
    for _ in 0..reps {
        let s = Instant::now();
        f()?;
        t.push(s.elapsed().as_secs_f64() * 1e3);
    }
    t.sort_by(|a, b| a.total_cmp(b));
    Ok(t[t.len() / 2])
}

fn rand(shape: &[usize]) -> Result<Var> {
    Var::from_tensor(&Tensor::rand(-1f32, 1f32, shape, &Device::Cpu)?)
}

/// The command line: repetitions and the case filter.
struct Run {
    reps: usize,
    only: Vec<String>,
}

impl Run {
    fn from_args() -> Self {
        let mut args = std::env::args().skip(1);
        let reps = args.next().and_then(|a| a.parse().ok()).unwrap_or(10);
        let only = args.next().unwrap_or_default();
        Self { reps, only: only.split(',').filter(|s| !s.is_empty()).map(String::from).collect() }
    }

    fn wants(&self, name: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|o| name.contains(o.as_str()))
    }
}

/// Prints forward and forward + backward timings of `op` on the variables `inputs`.
fn case(
    name: &str,
    run: &Run,
    inputs: &[Var],
    op: impl Fn(&[Tensor]) -> Result<Tensor>,
) -> Result<()> {
    if !run.wants(name) {
        return Ok(());
    }
    let reps = run.reps;
    let ts: Vec<Tensor> = inputs.iter().map(|v| v.as_tensor().clone()).collect();
    let y = op(&ts)?;
    let r = Tensor::rand(-1f32, 1f32, y.shape(), &Device::Cpu)?;
    let fwd = time(reps, || op(&ts).map(|_| ()))?;
    let bwd = time(reps, || {
        let g = (op(&ts)? * &r)?.sum_all()?.backward()?;
        for v in inputs {
            if g.get(v).is_none() {
                candle_core::bail!("{name}: no gradient");
            }
        }
        Ok(())
    })?;
    println!("{name}.fwd\t{fwd:.3}");
    println!("{name}.fwdbwd\t{bwd:.3}");
    Ok(())
}

fn main() -> Result<()> {
    // As mgsd-train does: malloc keeps freed memory for reuse.
    mgsd_nn::keep_freed_memory();
    let run = &Run::from_args();
    let x = rand(&[1, 32, 64, 64, 64])?;
    let gamma = Var::ones(32, DType::F32, &Device::Cpu)?;
    let beta = Var::zeros(32, DType::F32, &Device::Cpu)?;
    // The bookkeeping of `sum(y · r)` alone: subtract it from the fwd+bwd of the other cases.
    case("baseline_identity", run, std::slice::from_ref(&x), |t| Ok(t[0].clone()))?;
    let gn_in = [x.clone(), gamma, beta];
    case("group_norm_relu", run, &gn_in, |t| group_norm(&t[0], &t[1], &t[2], 8, 1e-5, true))?;
    case("group_norm", run, &gn_in, |t| group_norm(&t[0], &t[1], &t[2], 8, 1e-5, false))?;
    case("max_pool3d", run, std::slice::from_ref(&x), |t| max_pool3d_2x(&t[0]))?;
    let small = rand(&[1, 32, 32, 32, 32])?;
    case("upsample2x_add", run, &[small, x.clone()], |t| upsample2x_add(&t[0], &t[1]))?;
    case("adaptive_pool_2x2x2", run, std::slice::from_ref(&x), |t| {
        adaptive_avg_pool3d(&t[0], [2, 2, 2])
    })?;
    case("adaptive_pool_1x1xW", run, std::slice::from_ref(&x), |t| {
        adaptive_avg_pool3d(&t[0], [1, 1, 64])
    })?;
    case("leaky_relu", run, &[x], |t| leaky_relu(&t[0], 0.2))?;
    for (name, cin, cout, k, stride, padding, [d, h, w]) in CONVS {
        let cfg = Conv3dConfig::cube(k).stride(stride).padding(padding);
        let inputs = [rand(&[2, cin, d, h, w])?, rand(&[cout, cin, k, k, k])?, rand(&[cout])?];
        case(name, run, &inputs, |t| conv3d_forward(&t[0], &t[1], Some(&t[2]), None, &cfg))?;
    }
    // MGSD's attention: 16 heads × 32, queries = 20·24·16 style voxels, keys = 5·6·4 tokens.
    let q = rand(&[1, 16, 7680, 32])?;
    let k = rand(&[1, 16, 120, 32])?;
    let v = rand(&[1, 16, 120, 32])?;
    let s = 1.0 / 32f64.sqrt();
    let qkv = [q, k, v];
    case("attention_nosoftmax", run, &qkv, |t| {
        cross_attention(&t[0], &t[1], &t[2], s, AttentionVariant::NoSoftmax)
    })?;
    case("attention_softmax", run, &qkv, |t| {
        cross_attention(&t[0], &t[1], &t[2], s, AttentionVariant::Softmax)
    })?;
    Ok(())
}
