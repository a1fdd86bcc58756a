//! The CUDA path against the CPU path (`cuda` feature, a GPU machine): every layer family the
//! networks use and a whole `UNet3D`, forward and backward, on the same values.
//!
//! Tolerances are relative to the largest magnitude of the CPU result (at least 1). With cuDNN in full f32
//! (`set_cudnn_tf32(false)`) they are 1e-4 for single layers and 1e-3 for the network; with
//! TF32 tensor cores (the default, as in PyTorch) a convolution is checked at 5e-3. In bf16
//! mixed precision a convolution is checked against the CPU convolution of the bf16-rounded
//! operands at 1e-2 (a bf16 rounding of the result is 4e-3), and the network against the f32
//! CPU network at a tolerance that catches a wrong layout, not rounding.
//!
//! Run on the GPU machine: `cargo xtask gpu-bundle` builds this test; its `run.sh` runs it.
#![cfg(feature = "cuda")]

use std::sync::Mutex;

use candle_core::{DType, Device, Result, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use mgsd_nn::conv3d::{set_cudnn_benchmark, set_cudnn_tf32};
use mgsd_nn::{
    adaptive_avg_pool3d, conv3d_forward, cross_attention, group_norm, leaky_relu, max_pool3d_2x,
    set_conv_precision, upsample2x, upsample2x_add, AttentionVariant, Conv3dConfig, ConvPrecision,
    UNet3D, UNet3DConfig,
};

/// Serialises the tests that depend on the global convolution settings (TF32, precision).
static SETTINGS: Mutex<()> = Mutex::new(());

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
    check_twins(name, shapes, tol, &f, &f);
}

/// [`check`] with a CPU twin `cpu_f` of the GPU computation `gpu_f`.
fn check_twins(
    name: &str,
    shapes: &[&[usize]],
    tol: f32,
    cpu_f: &dyn Fn(&[Tensor]) -> Result<Tensor>,
    gpu_f: &dyn Fn(&[Tensor]) -> Result<Tensor>,
) {
    let gpu = cuda();
    let cpu_vars: Vec<Var> = shapes
        .iter()
        .map(|s| Var::from_tensor(&Tensor::randn(0f32, 1.0, *s, &Device::Cpu).unwrap()).unwrap())
        .collect();
    let gpu_vars: Vec<Var> =
        cpu_vars.iter().map(|v| Var::from_tensor(&v.to_device(&gpu).unwrap()).unwrap()).collect();
    let run = |vars: &[Var], probe: Option<&Tensor>, f: &dyn Fn(&[Tensor]) -> Result<Tensor>| {
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
    let (out_c, probe, g_c) = run(&cpu_vars, None, cpu_f);
    let (out_g, _, g_g) = run(&gpu_vars, Some(&probe), gpu_f);
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

/// (input, cout, config): the U-Net's 3×3×3, its strided downsampling, 1×1×1 heads, the
/// discriminator's 4×4×4 stride 2, a dilated and an anisotropic case.
fn conv_cases() -> Vec<([usize; 5], usize, Conv3dConfig)> {
    let cube = Conv3dConfig::cube;
    vec![
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
    ]
}

#[test]
fn conv3d_matches_the_cpu_in_every_geometry() {
    let _lock = SETTINGS.lock().unwrap_or_else(|e| e.into_inner());
    for (tf32, tol) in [(false, 1e-4), (true, 5e-3)] {
        set_cudnn_tf32(tf32);
        for (x, cout, cfg) in &conv_cases() {
            let [k0, k1, k2] = cfg.kernel;
            let w = [*cout, x[1], k0, k1, k2];
            let with_bias = |t: &[Tensor]| {
                let b = t.get(2); // the bias operand is there when `cfg.bias`
                conv3d_forward(&t[0], &t[1], b, None, cfg)
            };
            let name = format!("conv3d {x:?} -> {cout} {cfg:?} tf32={tf32}");
            let b = [*cout];
            let shapes: &[&[usize]] = if cfg.bias { &[x, &w, &b] } else { &[x, &w] };
            check(&name, shapes, tol, with_bias);
        }
        // The residual variant.
        let cfg = Conv3dConfig::cube(3).padding(1);
        check(
            &format!("conv3d + residual tf32={tf32}"),
            &[&[1, 4, 6, 6, 6], &[4, 4, 3, 3, 3], &[4], &[1, 4, 6, 6, 6]],
            tol,
            |t| conv3d_forward(&t[0], &t[1], Some(&t[2]), Some(&t[3]), &cfg),
        );
    }
    set_cudnn_tf32(true);
}

/// The CPU twin of a bf16 mixed-precision convolution: the f32 convolution of the
/// bf16-rounded operands, its result rounded to bf16, then the bias and residual in f32.
fn conv_on_bf16_operands(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    r: Option<&Tensor>,
    cfg: &Conv3dConfig,
) -> Result<Tensor> {
    let bf = |t: &Tensor| t.to_dtype(DType::BF16)?.to_dtype(DType::F32);
    let y = bf(&conv3d_forward(&bf(x)?, &bf(w)?, None, None, cfg)?)?;
    let add = match (b, r) {
        (Some(b), Some(r)) => Some(r.broadcast_add(&b.reshape((1, b.dim(0)?, 1, 1, 1))?)?),
        (Some(b), None) => Some(b.reshape((1, b.dim(0)?, 1, 1, 1))?),
        (None, r) => r.cloned(),
    };
    match add {
        Some(a) => y.broadcast_add(&a),
        None => Ok(y),
    }
}

/// bf16 mixed precision in every geometry: the GPU result and gradients against the CPU
/// convolution of the bf16-rounded operands; and the result measurably different from the f32
/// convolution, so a precision switch that did nothing would fail.
#[test]
fn bf16_conv3d_matches_the_cpu_on_rounded_operands() {
    let _lock = SETTINGS.lock().unwrap_or_else(|e| e.into_inner());
    set_conv_precision(ConvPrecision::Bf16);
    for (x, cout, cfg) in &conv_cases() {
        let [k0, k1, k2] = cfg.kernel;
        let w = [*cout, x[1], k0, k1, k2];
        let name = format!("conv3d bf16 {x:?} -> {cout} {cfg:?}");
        let b = [*cout];
        let shapes: &[&[usize]] = if cfg.bias { &[x, &w, &b] } else { &[x, &w] };
        check_twins(
            &name,
            shapes,
            1e-2,
            &|t| conv_on_bf16_operands(&t[0], &t[1], t.get(2), None, cfg),
            &|t| conv3d_forward(&t[0], &t[1], t.get(2), None, cfg),
        );
        // Not the f32 result: the rounding is there.
        let xs = Tensor::randn(0f32, 1.0, x, &Device::Cpu).unwrap();
        let ws = Tensor::randn(0f32, 1.0, &w[..], &Device::Cpu).unwrap();
        let f32_cpu = conv3d_forward(&xs, &ws, None, None, cfg).unwrap();
        let gpu = cuda();
        let (xg, wg) = (xs.to_device(&gpu).unwrap(), ws.to_device(&gpu).unwrap());
        let bf16_gpu = conv3d_forward(&xg, &wg, None, None, cfg).unwrap();
        let e = max_rel_diff(&f32_cpu, &bf16_gpu);
        assert!(e > 1e-4, "{name}: within {e:.1e} of the f32 result; was bf16 used?");
    }
    let cfg = Conv3dConfig::cube(3).padding(1);
    check_twins(
        "conv3d bf16 + residual",
        &[&[1, 4, 6, 6, 6], &[4, 4, 3, 3, 3], &[4], &[1, 4, 6, 6, 6]],
        1e-2,
        &|t| conv_on_bf16_operands(&t[0], &t[1], Some(&t[2]), Some(&t[3]), &cfg),
        &|t| conv3d_forward(&t[0], &t[1], Some(&t[2]), Some(&t[3]), &cfg),
    );
    set_conv_precision(ConvPrecision::F32);
}

/// With cuDNN's benchmark mode every convolution runs the algorithm measured fastest, which
/// may differ from the heuristics' (and tries every other one on the way): the same results
/// in full f32 and in bf16.
#[test]
fn benchmarked_algorithms_give_the_same_results() {
    let _lock = SETTINGS.lock().unwrap_or_else(|e| e.into_inner());
    set_cudnn_benchmark(true);
    set_cudnn_tf32(false);
    for (x, cout, cfg) in &conv_cases() {
        let [k0, k1, k2] = cfg.kernel;
        let w = [*cout, x[1], k0, k1, k2];
        let b = [*cout];
        let shapes: &[&[usize]] = if cfg.bias { &[x, &w, &b] } else { &[x, &w] };
        let name = format!("conv3d benchmarked {x:?} -> {cout} {cfg:?}");
        check(&name, shapes, 1e-4, |t| conv3d_forward(&t[0], &t[1], t.get(2), None, cfg));
        set_conv_precision(ConvPrecision::Bf16);
        check_twins(
            &format!("{name} bf16"),
            shapes,
            1e-2,
            &|t| conv_on_bf16_operands(&t[0], &t[1], t.get(2), None, cfg),
            &|t| conv3d_forward(&t[0], &t[1], t.get(2), None, cfg),
        );
        set_conv_precision(ConvPrecision::F32);
    }
    set_cudnn_tf32(true);
    set_cudnn_benchmark(false);
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

/// The bf16 attention ops (tensor-core no-softmax, CUDA-core softmax) against the CPU twin on
/// the same bf16-rounded operands, computed in f32 and rounded; dh 48 takes the candle
/// composition in bf16. Gradients flow back to the f32 variables through the casts.
#[test]
fn bf16_attention_matches_the_cpu_on_rounded_operands() {
    let bf = |t: &Tensor| t.to_dtype(DType::BF16);
    for (b, h, nq, nk, dh) in
        [(1, 16, 512, 8, 32), (2, 3, 1000, 77, 64), (1, 2, 33, 1, 32), (1, 2, 40, 9, 48)]
    {
        for variant in [AttentionVariant::NoSoftmax, AttentionVariant::Softmax] {
            let scale = 1.0 / (dh as f64).sqrt();
            let f = |t: &[Tensor]| {
                cross_attention(&bf(&t[0])?, &bf(&t[1])?, &bf(&t[2])?, scale, variant)?
                    .to_dtype(DType::F32)
            };
            check(
                &format!("bf16 attention {variant:?} b{b} h{h} nq{nq} nk{nk} dh{dh}"),
                &[&[b, h, nq, dh], &[b, h, nk, dh], &[b, h, nk, dh]],
                2e-2,
                f,
            );
        }
    }
}

#[test]
fn unet3d_forward_and_backward_match_the_cpu() {
    let _lock = SETTINGS.lock().unwrap_or_else(|e| e.into_inner());
    set_cudnn_tf32(false);
    let grads = unet_parity("f32", 1e-3);
    set_cudnn_tf32(true);
    let (e, name) = grads
        .iter()
        .map(|(name, c, g)| (max_rel_diff(c, g), name))
        .fold((0f32, None), |w, (e, n)| if e > w.0 { (e, Some(n)) } else { w });
    assert!(e < 1e-3, "UNet3D gradient of {name:?} differs by {e:.2e}");
}

/// The whole network with bf16 convolutions against the f32 CPU network: a check of the
/// wiring, not of rounding (each convolution's rounding is checked above). Eighteen rounded
/// convolutions in a row drift by a few bf16 roundings; a wrong layout, index or gradient gives
/// errors of order 1. Gradients are compared by norm, over all parameters together and per
/// parameter against `max(‖g‖, 1)`. The biases and GroupNorm parameters, whose gradients are
/// sums over every voxel with heavy cancellation, move most: on the H200 all gradients
/// together by 8.8 %, the first convolution's bias by 27 %, the output by 0.5 %. The
/// tolerances leave about twice that; the worst parameters are printed.
#[test]
fn unet3d_in_bf16_stays_near_the_f32_cpu() {
    let _lock = SETTINGS.lock().unwrap_or_else(|e| e.into_inner());
    set_conv_precision(ConvPrecision::Bf16);
    let grads = unet_parity("bf16", 5e-2);
    set_conv_precision(ConvPrecision::F32);
    let norm = |t: &Tensor| t.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap().sqrt();
    let mut rows: Vec<(f32, f32, f32, &str)> = grads
        .iter()
        .map(|(name, c, g)| {
            let d = norm(&(g.to_device(&Device::Cpu).unwrap() - c).unwrap());
            let n = norm(c);
            (d / n.max(1.0), d, n, name.as_str())
        })
        .collect();
    rows.sort_by(|a, b| b.0.total_cmp(&a.0));
    for (e, d, n, name) in rows.iter().take(8) {
        eprintln!("UNet3D (bf16): {name}: ‖g‖ {n:.3e}, ‖Δ‖ {d:.3e}, ‖Δ‖/max(‖g‖, 1) {e:.2e}");
    }
    let total_d = rows.iter().map(|r| r.1 * r.1).sum::<f32>().sqrt();
    let total_n = rows.iter().map(|r| r.2 * r.2).sum::<f32>().sqrt();
    eprintln!("UNet3D (bf16): all gradients ‖Δ‖/‖g‖ {:.2e}", total_d / total_n);
    assert!(
        total_d / total_n < 0.2,
        "UNet3D (bf16): gradients differ by {:.2e}",
        total_d / total_n
    );
    let (e, _, _, name) = rows[0];
    assert!(e < 0.5, "UNet3D (bf16): gradient of {name} differs by {e:.2e}");
}

/// UNet3D (width 8, 32³) on the CPU and on the GPU with the same parameters: asserts the
/// outputs within `tol_out` ([`max_rel_diff`]) and returns every parameter's gradient of a
/// probe loss, `(name, CPU, GPU)`.
fn unet_parity(what: &str, tol_out: f32) -> Vec<(String, Tensor, Tensor)> {
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
    for (part, a, b) in [("out", &out_c.out, &out_g.out), ("style", &out_c.style, &out_g.style)] {
        let e = max_rel_diff(a, b);
        eprintln!("UNet3D ({what}): {part} differs by {e:.2e}");
        assert!(e < tol_out, "UNet3D ({what}) {part} differs by {e:.2e}");
    }
    let g_c = loss(&out_c.out, &out_c.style).backward().unwrap();
    let g_g = loss(&out_g.out, &out_g.style).backward().unwrap();
    let src = vm_c.data().lock().unwrap();
    let dst = vm_g.data().lock().unwrap();
    let mut grads = Vec::new();
    for (name, v) in src.iter() {
        match (g_c.get(v), g_g.get(&dst[name])) {
            (Some(a), Some(b)) => grads.push((name.clone(), a.clone(), b.clone())),
            (None, None) => {}
            (a, b) => panic!("{name}: gradient on CPU {}, on GPU {}", a.is_some(), b.is_some()),
        }
    }
    grads
}
