//! Criterion benchmarks of the layer ops at U-Net sizes (1×32×64³): GroupNorm (+ ReLU),
//! max pooling, upsampling with skip addition, adaptive pooling; forward, and forward +
//! backward of `sum(y · r)` (which includes candle's gradient bookkeeping). The CPU ops are
//! synchronous, so the clock is read after the result exists.

use candle_core::{DType, Device, Result, Tensor, Var};
use criterion::{criterion_group, criterion_main, Criterion};
use mgsd_nn::{adaptive_avg_pool3d, group_norm, max_pool3d_2x, upsample2x_add};

type Op = Box<dyn Fn(&[Tensor]) -> Result<Tensor>>;

fn var(shape: &[usize]) -> Var {
    Tensor::rand(-1f32, 1f32, shape, &Device::Cpu)
        .and_then(|t| Var::from_tensor(&t))
        .expect("random input")
}

fn bench(c: &mut Criterion) {
    let x = var(&[1, 32, 64, 64, 64]);
    let gamma = Var::ones(32, DType::F32, &Device::Cpu).expect("gamma");
    let beta = Var::zeros(32, DType::F32, &Device::Cpu).expect("beta");
    let small = var(&[1, 32, 32, 32, 32]);
    let cases: Vec<(&str, Vec<Var>, Op)> = vec![
        (
            "group_norm_relu 1x32x64^3",
            vec![x.clone(), gamma, beta],
            Box::new(|t| group_norm(&t[0], &t[1], &t[2], 8, 1e-5, true)),
        ),
        ("max_pool3d 1x32x64^3", vec![x.clone()], Box::new(|t| max_pool3d_2x(&t[0]))),
        (
            "upsample2x_add 1x32x32^3 + 64^3",
            vec![small, x.clone()],
            Box::new(|t| upsample2x_add(&t[0], &t[1])),
        ),
        (
            "adaptive_avg_pool3d 1x32x64^3 -> 2^3",
            vec![x],
            Box::new(|t| adaptive_avg_pool3d(&t[0], [2, 2, 2])),
        ),
    ];
    let mut group = c.benchmark_group("layers");
    group.sample_size(10);
    for (name, vars, op) in cases {
        let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let y = op(&ts).expect("forward");
        let r = Tensor::rand(-1f32, 1f32, y.shape(), &Device::Cpu).expect("r");
        group.bench_function(format!("{name} fwd"), |b| b.iter(|| op(&ts).expect("forward")));
        group.bench_function(format!("{name} fwd+bwd"), |b| {
            b.iter(|| {
                let y = op(&ts).expect("forward");
                (y * &r).and_then(|l| l.sum_all()).and_then(|l| l.backward()).expect("backward")
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
