//! The fast op against a slow, obviously-correct nested-loop convolution and its hand-written
//! gradients (f64 accumulation), forward and every gradient.

use super::*;
use candle_core::{Device, Var};
use proptest::prelude::*;

/// Deterministic pseudo-random values in [-1, 1).
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

#[derive(Debug, Clone, Copy)]
struct Case {
    n: usize,
    cin: usize,
    cout: usize,
    input: [usize; 3],
    cfg: Conv3dConfig,
    residual: bool,
}

/// Output size per axis, `None` if the kernel does not fit.
fn out_size(c: &Case) -> Option<[usize; 3]> {
    let mut o = [0; 3];
    for (a, o) in o.iter_mut().enumerate() {
        let span = c.cfg.dilation[a] * (c.cfg.kernel[a] - 1) + 1;
        let padded = c.input[a] + 2 * c.cfg.padding[a];
        if padded < span {
            return None;
        }
        *o = (padded - span) / c.cfg.stride[a] + 1;
    }
    Some(o)
}

/// For output index `o` and tap `k` along axis `a`, the input index if inside.
fn tap(c: &Case, a: usize, o: usize, k: usize) -> Option<usize> {
    let i = (o * c.cfg.stride[a] + k * c.cfg.dilation[a]) as isize - c.cfg.padding[a] as isize;
    (i >= 0 && (i as usize) < c.input[a]).then_some(i as usize)
}

/// Calls `f(x_index, w_index, y_index)` for every multiply of the convolution.
fn for_each_mac(c: &Case, mut f: impl FnMut(usize, usize, usize)) {
    let o = out_size(c).unwrap_or([0; 3]);
    let [id, ih, iw] = c.input;
    let [k0, k1, k2] = c.cfg.kernel;
    for n in 0..c.n {
        for co in 0..c.cout {
            for od in 0..o[0] {
                for oh in 0..o[1] {
                    for ow in 0..o[2] {
                        let yi = (((n * c.cout + co) * o[0] + od) * o[1] + oh) * o[2] + ow;
                        for ci in 0..c.cin {
                            for kd in 0..k0 {
                                for kh in 0..k1 {
                                    for kw in 0..k2 {
                                        let (Some(d), Some(h), Some(w)) = (
                                            tap(c, 0, od, kd),
                                            tap(c, 1, oh, kh),
                                            tap(c, 2, ow, kw),
                                        ) else {
                                            continue;
                                        };
                                        let xi = (((n * c.cin + ci) * id + d) * ih + h) * iw + w;
                                        let wi =
                                            (((co * c.cin + ci) * k0 + kd) * k1 + kh) * k2 + kw;
                                        f(xi, wi, yi);
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

struct Reference {
    y: Vec<f64>,
    dx: Vec<f64>,
    dw: Vec<f64>,
    db: Vec<f64>,
}

/// Forward `y = conv(x, w) + b + r` and the gradients of `sum(y · gy)`.
fn reference(c: &Case, x: &[f32], w: &[f32], b: &[f32], r: &[f32], gy: &[f32]) -> Reference {
    let mut y: Vec<f64> = r.iter().map(|&v| v as f64).collect();
    let so: usize = out_size(c).map(|o| o.iter().product()).unwrap_or(0);
    let mut db = vec![0f64; c.cout];
    for (i, yv) in y.iter_mut().enumerate() {
        let co = (i / so) % c.cout;
        if c.cfg.bias {
            *yv += b[co] as f64;
            db[co] += gy[i] as f64;
        }
    }
    let mut dx = vec![0f64; x.len()];
    let mut dw = vec![0f64; w.len()];
    for_each_mac(c, |xi, wi, yi| {
        y[yi] += x[xi] as f64 * w[wi] as f64;
        dx[xi] += w[wi] as f64 * gy[yi] as f64;
        dw[wi] += x[xi] as f64 * gy[yi] as f64;
    });
    Reference { y, dx, dw, db }
}

fn assert_close(what: &str, got: &Tensor, want: &[f64], c: &Case) {
    let got: Vec<f32> = got.flatten_all().and_then(|t| t.to_vec1()).unwrap_or_default();
    assert_eq!(got.len(), want.len(), "{what}: length, case {c:?}");
    let scale = want.iter().fold(1f64, |m, v| m.max(v.abs()));
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let err = (*g as f64 - w).abs();
        assert!(
            err <= 2e-5 * scale + 1e-5,
            "{what}[{i}]: got {g}, want {w} (scale {scale}), case {c:?}"
        );
    }
}

fn check(c: Case) -> Result<()> {
    let Some(o) = out_size(&c) else {
        return Ok(());
    };
    let dev = Device::Cpu;
    let [d, h, w] = c.input;
    let [k0, k1, k2] = c.cfg.kernel;
    let xs = values(c.n * c.cin * d * h * w, 1);
    let ws = values(c.cout * c.cin * k0 * k1 * k2, 2);
    let bs = values(c.cout, 3);
    let ny = c.n * c.cout * o.iter().product::<usize>();
    let rs = if c.residual { values(ny, 4) } else { vec![0.0; ny] };
    let gys = values(ny, 5);
    let want = reference(&c, &xs, &ws, &bs, &rs, &gys);

    let yshape = (c.n, c.cout, o[0], o[1], o[2]);
    let x = Var::from_vec(xs, (c.n, c.cin, d, h, w), &dev)?;
    let wt = Var::from_vec(ws, (c.cout, c.cin, k0, k1, k2), &dev)?;
    let b = Var::from_vec(bs, c.cout, &dev)?;
    let r = Var::from_vec(rs, yshape, &dev)?;
    let gy = Tensor::from_vec(gys.clone(), yshape, &dev)?;
    let y = conv3d_forward(
        x.as_tensor(),
        wt.as_tensor(),
        c.cfg.bias.then_some(b.as_tensor()),
        c.residual.then_some(r.as_tensor()),
        &c.cfg,
    )?;
    assert_close("forward", &y, &want.y, &c);
    let grads = (&y * &gy)?.sum_all()?.backward()?;
    let get = |v: &Var, what: &str| match grads.get(v) {
        Some(g) => Ok(g.clone()),
        None => Err(candle_core::Error::Msg(format!("no gradient for {what}"))),
    };
    assert_close("grad input", &get(&x, "input")?, &want.dx, &c);
    assert_close("grad weight", &get(&wt, "weight")?, &want.dw, &c);
    if c.cfg.bias {
        assert_close("grad bias", &get(&b, "bias")?, &want.db, &c);
    }
    if c.residual {
        let gy64: Vec<f64> = gys.iter().map(|&v| v as f64).collect();
        assert_close("grad residual", &get(&r, "residual")?, &gy64, &c);
    }
    Ok(())
}

fn case(n: usize, cin: usize, cout: usize, input: [usize; 3], cfg: Conv3dConfig) -> Case {
    Case { n, cin, cout, input, cfg, residual: false }
}

#[test]
fn unet_shapes_match_reference() -> Result<()> {
    // k3 p1 (BasicBlock), k3 s2 p1 with mixed parity (ds), 1×1 (convc, up1conv).
    check(case(1, 4, 5, [6, 7, 5], Conv3dConfig::cube(3).padding(1)))?;
    check(case(2, 3, 4, [7, 6, 9], Conv3dConfig::cube(3).padding(1).stride(2)))?;
    check(case(1, 6, 3, [4, 5, 3], Conv3dConfig::cube(1)))?;
    check(Case { residual: true, ..case(1, 3, 3, [5, 4, 6], Conv3dConfig::cube(3).padding(1)) })?;
    check(Case { residual: true, ..case(1, 4, 2, [3, 4, 2], Conv3dConfig::cube(1).bias(false)) })
}

#[test]
fn discriminator_and_conv1d_shapes_match_reference() -> Result<()> {
    check(case(1, 3, 4, [8, 10, 6], Conv3dConfig::cube(4).stride(2).padding(1)))?;
    let mut c = Conv3dConfig::cube(1);
    c.kernel = [2, 3, 2];
    check(case(1, 4, 1, [2, 3, 2], c))?;
    let mut c = Conv3dConfig::cube(1);
    c.kernel = [3, 1, 1];
    check(case(2, 5, 7, [11, 1, 1], c))
}

#[test]
fn many_tiles_and_classes_match_reference() -> Result<()> {
    // Enough positions and rows that forward and backward run several tiles per sample.
    check(case(1, 16, 8, [12, 13, 11], Conv3dConfig::cube(3).padding(1)))?;
    check(case(1, 40, 6, [9, 10, 11], Conv3dConfig::cube(3).padding(1).stride(2)))?;
    check(case(2, 7, 5, [13, 9, 10], Conv3dConfig::cube(3).padding(2).dilation(2)))?;
    check(case(1, 3, 4, [40, 41, 39], Conv3dConfig::cube(1)))
}

/// Cases for the row-wise kernels: several channel blocks (cout 8, 9, 17 with a partial last
/// block), many tiles, a bias, a residual, dilation along W.
fn row_kernel_cases() -> Vec<Case> {
    let k3 = Conv3dConfig::cube(3).padding(1);
    vec![
        case(1, 16, 16, [10, 12, 33], k3),
        Case { residual: true, ..case(2, 5, 9, [7, 6, 50], k3) },
        case(1, 3, 17, [5, 9, 18], k3.bias(false)),
        case(1, 4, 3, [6, 5, 20], Conv3dConfig::cube(3).padding(2).dilation(2)),
        case(1, 40, 6, [9, 10, 11], k3),
        // Strided along W: phase rows (span 2 for k3 s2 p1, 3 for k4 s2 p1, 3 for k3 s3 d2).
        case(1, 16, 32, [9, 12, 33], k3.stride(2)),
        Case {
            residual: true,
            ..case(2, 3, 9, [8, 10, 6], Conv3dConfig::cube(4).stride(2).padding(1))
        },
        case(1, 5, 4, [7, 7, 40], Conv3dConfig::cube(3).stride(3).dilation(2).padding(2)),
    ]
}

/// Checks `cases` on the path this CPU takes and on the forced portable one: which path runs
/// depends on the CPU (AVX-512F or not), so both are checked on AVX-512 machines.
fn check_on_both_paths(cases: Vec<Case>) -> Result<()> {
    for portable in [false, true] {
        super::avx512::FORCE_PORTABLE.with(|f| f.set(portable));
        let result = cases.iter().copied().try_for_each(check);
        super::avx512::FORCE_PORTABLE.with(|f| f.set(false));
        result?;
    }
    Ok(())
}

#[test]
fn row_kernels_match_reference_on_both_paths() -> Result<()> {
    check_on_both_paths(row_kernel_cases())
}

/// Cases for the channel-vectorised direct kernels (`direct.rs`, output channels in blocks of
/// 16): one, two, three and four blocks; W from 1 to 25 (one to three output chunks); the
/// D/H padding skipped at every border; strides along each axis; W kernels of 1, 3 and 4;
/// input gradients through the forward kernel (input channels in blocks of 16 too).
fn direct_kernel_cases() -> Vec<Case> {
    let k3 = Conv3dConfig::cube(3).padding(1);
    let mut aniso = k3;
    aniso.kernel = [3, 3, 1];
    aniso.padding = [1, 1, 0];
    let mut strided_dh = k3;
    strided_dh.stride = [2, 2, 1];
    vec![
        Case { residual: true, ..case(2, 20, 32, [5, 6, 4], k3) },
        case(1, 8, 64, [4, 5, 13], k3),
        case(1, 3, 48, [8, 10, 6], Conv3dConfig::cube(4).stride(2).padding(1)),
        case(1, 6, 16, [5, 3, 25], k3.bias(false)),
        case(1, 5, 16, [3, 4, 1], k3),
        case(2, 7, 32, [7, 9, 11], k3.stride(2)),
        case(1, 4, 16, [5, 5, 5], Conv3dConfig::cube(3)),
        case(1, 5, 16, [6, 7, 8], Conv3dConfig::cube(3).padding(2)),
        case(1, 4, 16, [4, 5, 6], aniso),
        case(1, 3, 16, [7, 6, 5], strided_dh),
        Case { residual: true, ..case(1, 32, 16, [4, 6, 5], k3) },
        case(1, 16, 80, [3, 4, 7], k3),
        // Strided input gradients by residue class (input channels in blocks of 16).
        case(1, 16, 16, [7, 9, 11], k3.stride(2)),
        Case {
            residual: true,
            ..case(2, 32, 16, [8, 10, 6], Conv3dConfig::cube(4).stride(2).padding(1))
        },
        case(1, 16, 3, [5, 7, 9], strided_dh),
        case(1, 16, 5, [4, 5, 10], Conv3dConfig::cube(3).stride(3).padding(1)),
        case(1, 16, 4, [5, 6, 7], Conv3dConfig::cube(2).stride(2)),
        case(1, 16, 4, [5, 6, 7], Conv3dConfig::cube(1).stride(2)),
        case(1, 48, 16, [6, 5, 7], Conv3dConfig::cube(3).stride(2).padding(2)),
    ]
}

#[test]
fn direct_kernels_match_reference_on_both_paths() -> Result<()> {
    check_on_both_paths(direct_kernel_cases())
}

#[test]
fn bad_shapes_are_errors_naming_them() -> Result<()> {
    let dev = Device::Cpu;
    let x = Tensor::zeros((1, 3, 4, 4, 4), DType::F32, &dev)?;
    let w = Tensor::zeros((2, 4, 3, 3, 3), DType::F32, &dev)?;
    let cfg = Conv3dConfig::cube(3);
    let msg = format!("{:?}", conv3d_forward(&x, &w, None, None, &cfg).err());
    assert!(msg.contains("[1, 3, 4, 4, 4]") && msg.contains("[2, 4, 3, 3, 3]"), "{msg}");
    let x2 = Tensor::zeros((1, 4, 2, 2, 2), DType::F32, &dev)?;
    let msg = format!("{:?}", conv3d_forward(&x2, &w, None, None, &cfg).err());
    assert!(msg.contains("smaller than the dilated kernel"), "{msg}");
    let x0 = Tensor::zeros((1, 4, 0, 5, 5), DType::F32, &dev)?;
    let msg = format!("{:?}", conv3d_forward(&x0, &w, None, None, &cfg).err());
    assert!(msg.contains("empty"), "{msg}");
    let x64 = Tensor::zeros((1, 4, 4, 4, 4), DType::F64, &dev)?;
    let msg = format!("{:?}", conv3d_forward(&x64, &w, None, None, &cfg).err());
    assert!(msg.contains("f32"), "{msg}");
    Ok(())
}

fn arb_case() -> impl Strategy<Value = Case> {
    (
        (1usize..=2, 1usize..=3, 1usize..=3),
        prop::array::uniform3(1usize..=7),
        prop::array::uniform3(1usize..=3),
        prop::array::uniform3(1usize..=3),
        prop::array::uniform3(0usize..=2),
        prop::array::uniform3(1usize..=2),
        (any::<bool>(), any::<bool>()),
    )
        .prop_map(|((n, cin, cout), input, kernel, stride, padding, dilation, (bias, residual))| {
            Case {
                n,
                cin,
                cout,
                input,
                cfg: Conv3dConfig { kernel, stride, padding, dilation, bias },
                residual,
            }
        })
        .prop_filter("kernel must fit", |c| out_size(c).is_some())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]
    #[test]
    fn random_configs_match_reference(c in arb_case()) {
        check(c).map_err(|e| TestCaseError::fail(e.to_string()))?;
    }
}
