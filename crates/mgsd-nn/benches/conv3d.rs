//! Criterion benchmarks of the Conv3d op (forward, and forward + backward) at the shapes of
//! the U-Net's first stage and its downsampling. Prints GFLOP/s through criterion's
//! throughput (elements = multiply-adds × 2).

use candle_core::{DType, Device, Tensor, Var};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use mgsd_nn::{conv3d_forward, Conv3dConfig};

fn bench(c: &mut Criterion) {
    let dev = Device::Cpu;
    let cases = [
        ("k3p1 16->16 32^3", 16, 16, 32, Conv3dConfig::cube(3).padding(1)),
        ("k3s2p1 16->32 32^3", 16, 32, 32, Conv3dConfig::cube(3).padding(1).stride(2)),
        ("k3p1 64->64 16^3", 64, 64, 16, Conv3dConfig::cube(3).padding(1)),
        // The discriminator's second layer.
        ("k4s2p1 64->128 32^3", 64, 128, 32, Conv3dConfig::cube(4).padding(1).stride(2)),
    ];
    let mut group = c.benchmark_group("conv3d");
    group.sample_size(10);
    for (name, cin, cout, s, cfg) in cases {
        let k = cfg.kernel[0];
        let x =
            Var::from_tensor(&Tensor::rand(-1f32, 1f32, (1, cin, s, s, s), &dev).expect("input"))
                .expect("var");
        let w = Var::from_tensor(
            &Tensor::rand(-0.1f32, 0.1f32, (cout, cin, k, k, k), &dev).expect("weight"),
        )
        .expect("var");
        let b = Var::zeros(cout, DType::F32, &dev).expect("bias");
        let so = (s / cfg.stride[0]).pow(3);
        let flops = 2 * cout * cin * k.pow(3) * so;
        group.throughput(Throughput::Elements(flops as u64));
        group.bench_function(format!("fwd {name}"), |bch| {
            bch.iter(|| conv3d_forward(&x, &w, Some(&b), None, &cfg).expect("conv"))
        });
        group.throughput(Throughput::Elements(3 * flops as u64));
        group.bench_function(format!("fwd+bwd {name}"), |bch| {
            bch.iter(|| {
                let y = conv3d_forward(&x, &w, Some(&b), None, &cfg).expect("conv");
                y.sum_all().and_then(|l| l.backward()).expect("backward")
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
