//! Times the layer ops of this crate, forward and forward + backward of `sum(y · r)`, and
//! prints one `name<TAB>milliseconds` line per case (median of the repetitions). Run by
//! `bench/layers_vs_pytorch.py`, which times the same cases in PyTorch and prints ratios.
//!
//! `cargo run --release -p mgsd-nn --example layers_bench [-- REPS]`

use std::time::Instant;

use candle_core::{DType, Device, Result, Tensor, Var};
use mgsd_nn::{
    adaptive_avg_pool3d, cross_attention, group_norm, leaky_relu, max_pool3d_2x, upsample2x_add,
    AttentionVariant,
};

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

/// Prints forward and forward + backward timings of `op` on the variables `inputs`.
fn case(
    name: &str,
    reps: usize,
    inputs: &[Var],
    op: impl Fn(&[Tensor]) -> Result<Tensor>,
) -> Result<()> {
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
    let reps = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(10);
    let x = rand(&[1, 32, 64, 64, 64])?;
    let gamma = Var::ones(32, DType::F32, &Device::Cpu)?;
    let beta = Var::zeros(32, DType::F32, &Device::Cpu)?;
    // The bookkeeping of `sum(y · r)` alone: subtract it from the fwd+bwd of the other cases.
    case("baseline_identity", reps, std::slice::from_ref(&x), |t| Ok(t[0].clone()))?;
    let gn_in = [x.clone(), gamma, beta];
    case("group_norm_relu", reps, &gn_in, |t| group_norm(&t[0], &t[1], &t[2], 8, 1e-5, true))?;
    case("group_norm", reps, &gn_in, |t| group_norm(&t[0], &t[1], &t[2], 8, 1e-5, false))?;
    case("max_pool3d", reps, std::slice::from_ref(&x), |t| max_pool3d_2x(&t[0]))?;
    let small = rand(&[1, 32, 32, 32, 32])?;
    case("upsample2x_add", reps, &[small, x.clone()], |t| upsample2x_add(&t[0], &t[1]))?;
    case("adaptive_pool_2x2x2", reps, std::slice::from_ref(&x), |t| {
        adaptive_avg_pool3d(&t[0], [2, 2, 2])
    })?;
    case("adaptive_pool_1x1xW", reps, std::slice::from_ref(&x), |t| {
        adaptive_avg_pool3d(&t[0], [1, 1, 64])
    })?;
    case("leaky_relu", reps, &[x], |t| leaky_relu(&t[0], 0.2))?;
    // MGSD's attention: 16 heads × 32, queries = 20·24·16 style voxels, keys = 5·6·4 tokens.
    let q = rand(&[1, 16, 7680, 32])?;
    let k = rand(&[1, 16, 120, 32])?;
    let v = rand(&[1, 16, 120, 32])?;
    let s = 1.0 / 32f64.sqrt();
    let qkv = [q, k, v];
    case("attention_nosoftmax", reps, &qkv, |t| {
        cross_attention(&t[0], &t[1], &t[2], s, AttentionVariant::NoSoftmax)
    })?;
    case("attention_softmax", reps, &qkv, |t| {
        cross_attention(&t[0], &t[1], &t[2], s, AttentionVariant::Softmax)
    })?;
    Ok(())
}
