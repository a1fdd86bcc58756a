//! The CUDA path against the CPU path (`cuda` feature, a GPU machine): every layer family the
//! networks use and a whole `UNet3D`, forward and backward, on the same values.
//!
//! Tolerances are relative to the largest magnitude of the CPU result (at least 1). With cuDNN in full f32
//! (`set_cudnn_tf32(false)`) they are 1e-4 for single layers and 1e-3 for the network; with
//! TF32 tensor cores (the default, as in PyTorch) a convolution is checked at 5e-3.
//!
//! Run on the GPU machine: `cargo xtask gpu-bundle` builds this test; its `run.sh` runs it.
#![cfg(feature = "cuda")]

use std::sync::Mutex;

use candle_core::{DType, Device, Result, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use mgsd_nn::conv3d::set_cudnn_tf32;
use mgsd_nn::{
    adaptive_avg_pool3d, conv3d_forward, cross_attention, group_norm, leaky_relu, max_pool3d_2x,
    upsample2x, upsample2x_add, AttentionVariant, Conv3dConfig, UNet3D, UNet3DConfig,
};

/// Serialises the tests that depend on the global TF32 switch.
static TF32: Mutex<()> = Mutex::new(());

fn cuda() -> Device {
    Device::new_cuda(0).expect("these tests need a CUDA device")
}

fn max_rel_diff(cpu: &Tensor, gpu: &Tensor) -> f32 {
    let a = cpu.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let b = gpu.to_device(&Device::Cpu).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(a.len(), b.len());
    // At least 1: the inputs are N(0, 1), and an exactly-zero gradient (softmax over one key)
    // must not turn rounding noise into a relative error.
    let scale = a.iter().fold(1f32, |m, v| m.max(v.abs()));
    a.iter().zip(&b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

/// Runs `f` on CPU variables and on their copies on the GPU; compares the outputs and the
/// gradients of `Σ out·probe` with respect to every operand.
fn check(name: &str, shapes: &[&[usize]], tol: f32, f: impl Fn(&[Tensor]) -> Result<Tensor>) {
    let gpu = cuda();
    let cpu_vars: Vec<Var> = shapes
        .iter()
        .map(|s| Var::from_tensor(&Tensor::randn(0f32, 1.0, *s, &Device::Cpu).unwrap()).unwrap())
        .collect();
    let gpu_vars: Vec<Var> =
        cpu_vars.iter().map(|v| Var::from_tensor(&v.to_device(&gpu).unwrap()).unwrap()).collect();
    let run = |vars: &[Var], probe: Option<&Tensor>| {
        let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let out = f(&ts).unwrap();
        let probe = match probe {
            Some(p) => p.to_device(out.device()).unwrap(),
            None => Tensor::randn(0f32, 1.0, out.shape(), &Device::Cpu).unwrap(),
        };
        let grads = (&out * &probe).unwrap().sum_all().unwrap().backward().unwrap();
        let g: Vec<Tensor> = vars.iter().map(|v| grads.get(v).unwrap().clone()).collect();
        (out, probe, g)
    };
    let (out_c, probe, g_c) = run(&cpu_vars, None);
    let (out_g, _, g_g) = run(&gpu_vars, Some(&probe));
    assert!(out_g.device().is_cuda(), "{name}: result left the GPU");
    let e = max_rel_diff(&out_c, &out_g);
    assert!(e < tol, "{name}: forward differs by {e:.2e} (tolerance {tol:.0e})");
    for (i, (a, b)) in g_c.iter().zip(&g_g).enumerate() {
        let e = max_rel_diff(a, b);
        assert!(
            e < tol,
            "{name}: gradient of operand {i} differs by {e:.2e} (tolerance {tol:.0e})"
        );
    }
}

#[test]
fn conv3d_matches_the_cpu_in_every_geometry() {
    let _lock = TF32.lock().unwrap_or_else(|e| e.into_inner());
    let cube = Conv3dConfig::cube;
    // (input, cout, config): the U-Net's 3×3×3, its strided downsampling, 1×1×1 heads, the
    // discriminator's 4×4×4 stride 2, a dilated and an anisotropic case.
    let cases: &[([usize; 5], usize, Conv3dConfig)] = &[
        ([2, 4, 8, 10, 12], 8, cube(3).padding(1)),
        ([1, 8, 9, 8, 10], 16, cube(3).padding(1).stride(2)),
        ([1, 16, 6, 6, 6], 3, cube(1)),
        ([1, 3, 16, 16, 16], 8, cube(4).padding(1).stride(2)),
        ([1, 4, 10, 10, 10], 4, cube(3).padding(2).dilation(2).bias(false)),
        (
            [1, 2, 7, 9, 11],
            5,
            Conv3dConfig {
                kernel: [1, 3, 5],
                stride: [1, 2, 1],
                padding: [0, 1, 2],
                dilation: [1; 3],
                bias: true,
            },
        ),
    ];
    for (tf32, tol) in [(false, 1e-4), (true, 5e-3)] {
        set_cudnn_tf32(tf32);
        for (x, cout, cfg) in cases {
            let [k0, k1, k2] = cfg.kernel;
            let w = [*cout, x[1], k0, k1, k2];
            let with_bias = |t: &[Tensor]| {
                let b = cfg.bias.then_some(&t[2]);
                conv3d_forward(&t[0], &t[1], b, None, cfg)
            };
            let name = format!("conv3d {x:?} -> {cout} {cfg:?} tf32={tf32}");
            let b = [*cout];
            let shapes: &[&[usize]] = if cfg.bias { &[x, &w, &b] } else { &[x, &w] };
            check(&name, shapes, tol, with_bias);
        }
        // The residual variant.
        let cfg = cube(3).padding(1);
        check(
            &format!("conv3d + residual tf32={tf32}"),
            &[&[1, 4, 6, 6, 6], &[4, 4, 3, 3, 3], &[4], &[1, 4, 6, 6, 6]],
            tol,
            |t| conv3d_forward(&t[0], &t[1], Some(&t[2]), Some(&t[3]), &cfg),
        );
    }
    set_cudnn_tf32(true);
}

/// GroupNorm, pooling, upsampling, LeakyReLU and adaptive pooling run `mgsd-kernels`' CUDA
/// ops. The 2-million-element shapes take the kernels' grid-stride loops through more than one
/// turn.
#[test]
fn gpu_layers_match_the_cpu_custom_ops() {
    for relu in [false, true] {
        check("group_norm", &[&[2, 16, 6, 5, 4], &[16], &[16]], 1e-4, |t| {
            group_norm(&t[0], &t[1], &t[2], 8, 1e-5, relu)
        });
    }
    check("max_pool3d_2x", &[&[2, 3, 6, 8, 5]], 1e-6, |t| max_pool3d_2x(&t[0]));
    check("upsample2x", &[&[1, 4, 3, 4, 5]], 1e-6, |t| upsample2x(&t[0]));
    check("upsample2x_add", &[&[1, 4, 3, 4, 5], &[1, 4, 6, 8, 10]], 1e-6, |t| {
        upsample2x_add(&t[0], &t[1])
    });
    check("leaky_relu", &[&[3, 7, 11]], 1e-6, |t| leaky_relu(&t[0], 0.2));
    check("max_pool3d_2x (large)", &[&[1, 8, 64, 64, 65]], 1e-6, |t| max_pool3d_2x(&t[0]));
    check("upsample2x_add (large)", &[&[1, 8, 32, 32, 32], &[1, 8, 64, 64, 64]], 1e-6, |t| {
        upsample2x_add(&t[0], &t[1])
    });
    check("leaky_relu (large)", &[&[1, 8, 64, 64, 64]], 1e-6, |t| leaky_relu(&t[0], 0.2));
    for out in [[5, 6, 4], [20, 1, 1], [1, 24, 1], [1, 1, 16], [7, 9, 5]] {
        check("adaptive_avg_pool3d", &[&[1, 32, 20, 24, 16]], 1e-5, |t| {
            adaptive_avg_pool3d(&t[0], out)
        });
    }
    check("adaptive_avg_pool3d (large)", &[&[4, 4, 80, 96, 64]], 1e-5, |t| {
        adaptive_avg_pool3d(&t[0], [2, 3, 2])
    });
}

#[test]
fn fused_attention_kernels_match_the_cpu_twin() {
    // (B, heads, Nq, Nk, dh): MGSD's decoder attention at a 32³ patch, odd sizes, dh 64, one
    // key. Both variants run mgsd-kernels' ops for dh 32 and 64; dh 48 takes the candle
    // composition.
    for (b, h, nq, nk, dh) in
        [(1, 16, 512, 8, 32), (2, 3, 1000, 77, 64), (1, 2, 33, 1, 32), (1, 2, 40, 9, 48)]
    {
        for variant in [AttentionVariant::NoSoftmax, AttentionVariant::Softmax] {
            let scale = 1.0 / (dh as f64).sqrt();
            check(
                &format!("attention {variant:?} b{b} h{h} nq{nq} nk{nk} dh{dh}"),
                &[&[b, h, nq, dh], &[b, h, nk, dh], &[b, h, nk, dh]],
                1e-4,
                |t| cross_attention(&t[0], &t[1], &t[2], scale, variant),
            );
        }
    }
}

#[test]
fn unet3d_forward_and_backward_match_the_cpu() {
    let _lock = TF32.lock().unwrap_or_else(|e| e.into_inner());
    set_cudnn_tf32(false);
    let gpu = cuda();
    let cfg = UNet3DConfig { width: 8, ..UNet3DConfig::default() };
    let vm_c = VarMap::new();
    let net_c = UNet3D::new(cfg, VarBuilder::from_varmap(&vm_c, DType::F32, &Device::Cpu)).unwrap();
    let vm_g = VarMap::new();
    let net_g = UNet3D::new(cfg, VarBuilder::from_varmap(&vm_g, DType::F32, &gpu)).unwrap();
    {
        let src = vm_c.data().lock().unwrap();
        let dst = vm_g.data().lock().unwrap();
        for (name, v) in src.iter() {
            dst[name].set(&v.to_device(&gpu).unwrap()).unwrap();
        }
    }
    let x = Tensor::randn(0f32, 1.0, (1, 4, 32, 32, 32), &Device::Cpu).unwrap();
    let out_c = net_c.forward(&x).unwrap();
    let out_g = net_g.forward(&x.to_device(&gpu).unwrap()).unwrap();
    let probe = Tensor::randn(0f32, 1.0, out_c.out.shape(), &Device::Cpu).unwrap();
    let loss = |o: &Tensor, s: &Tensor| {
        let p = probe.to_device(o.device()).unwrap();
        ((o * p).unwrap().sum_all().unwrap() + s.sqr().unwrap().sum_all().unwrap()).unwrap()
    };
    for (what, a, b) in [("out", &out_c.out, &out_g.out), ("style", &out_c.style, &out_g.style)] {
        let e = max_rel_diff(a, b);
        assert!(e < 1e-3, "UNet3D {what} differs by {e:.2e}");
    }
    let g_c = loss(&out_c.out, &out_c.style).backward().unwrap();
    let g_g = loss(&out_g.out, &out_g.style).backward().unwrap();
    let src = vm_c.data().lock().unwrap();
    let dst = vm_g.data().lock().unwrap();
    let mut worst = (0f32, String::new());
    for (name, v) in src.iter() {
        let e = match (g_c.get(v), g_g.get(&dst[name])) {
            (Some(a), Some(b)) => max_rel_diff(a, b),
            (None, None) => continue,
            (a, b) => panic!("{name}: gradient on CPU {}, on GPU {}", a.is_some(), b.is_some()),
        };
        if e > worst.0 {
            worst = (e, name.clone());
        }
    }
    set_cudnn_tf32(true);
    assert!(worst.0 < 1e-3, "UNet3D gradient of {} differs by {:.2e}", worst.1, worst.0);
}
