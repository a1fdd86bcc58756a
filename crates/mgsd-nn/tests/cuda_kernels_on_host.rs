//! The CUDA source of the pooling, upsampling and LeakyReLU kernels
//! (`mgsd-kernels/src/kernels/resample.cu`), compiled as plain C++ with
//! `mgsd-kernels/host/cuda_host.h` and run on the CPU, must compute bit for bit what this
//! crate's CPU ops compute, forward and backward (adaptive average pooling included); the cuDNN
//! Conv3d's epilogue (`conv_epilogue.cu`) must add bias and residual exactly as
//! `y + (b[c] + r)`, and its bf16 copies (`conv_bf16.cu`) must round to nearest even into
//! channels-last order and widen back with the same epilogue. Those kernels
//! use no shared memory, synchronisation or atomics, so running their threads one after
//! another is exact; this is how CPU CI checks GPU code that it cannot launch.
//!
//! Needs a C++17 compiler (`$CXX`, else `c++`). Without one the test is skipped with a message,
//! except under `CI`, where it fails.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use candle_core::{Device, Tensor, Var};

/// Compiles `kernels_host` once per test binary; `None` when no compiler is available.
fn driver() -> Option<&'static Path> {
    static DRIVER: OnceLock<Option<PathBuf>> = OnceLock::new();
    DRIVER
        .get_or_init(|| {
            let host = Path::new(env!("CARGO_MANIFEST_DIR")).join("../mgsd-kernels/host");
            let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("kernels_host");
            let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".to_owned());
            let status = Command::new(&cxx)
                .args(["-std=c++17", "-O1", "-Wall", "-Werror", "-o"])
                .arg(&out)
                .arg(host.join("kernels_host.cpp"))
                .status();
            match status {
                Ok(s) if s.success() => Some(out),
                Ok(s) => {
                    panic!("{cxx} failed ({s}) on {}", host.join("kernels_host.cpp").display())
                }
                Err(e) if std::env::var_os("CI").is_none() => {
                    eprintln!("skipped: no C++ compiler ({cxx}: {e}); set CXX to run this test");
                    None
                }
                Err(e) => panic!("CI needs a C++ compiler for this test ({cxx}: {e})"),
            }
        })
        .as_deref()
}

/// Runs one kernel of the driver on `inputs` (raw bytes) and returns its outputs.
fn run(
    kernel: &str,
    dims: [usize; 4],
    slope: f32,
    inputs: &[Vec<u8>],
    outputs: usize,
) -> Vec<Vec<u8>> {
    run_with(kernel, dims, &[slope.to_string()], inputs, outputs)
}

/// [`run`] with the arguments that follow the sizes given as they are (the slope, and for the
/// adaptive pooling the output grid).
fn run_with(
    kernel: &str,
    dims: [usize; 4],
    extra: &[String],
    inputs: &[Vec<u8>],
    outputs: usize,
) -> Vec<Vec<u8>> {
    let exe = driver().expect("checked by the caller");
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(exe);
    cmd.arg(kernel);
    cmd.args(dims.map(|d| d.to_string())).args(extra);
    for (i, bytes) in inputs.iter().enumerate() {
        let p = dir.path().join(format!("in{i}"));
        std::fs::write(&p, bytes).unwrap();
        cmd.arg(p);
    }
    let outs: Vec<PathBuf> = (0..outputs).map(|i| dir.path().join(format!("out{i}"))).collect();
    cmd.args(&outs);
    let o = cmd.output().unwrap();
    assert!(o.status.success(), "{kernel}: {}", String::from_utf8_lossy(&o.stderr));
    outs.iter().map(|p| std::fs::read(p).unwrap()).collect()
}

fn bytes(t: &Tensor) -> Vec<u8> {
    t.flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect()
}

fn floats(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
}

/// Bit equality, so that NaNs compare equal to NaNs and a sign of zero counts.
fn assert_same(what: &str, ours: &Tensor, host: &[u8]) {
    let ours = ours.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let host = floats(host);
    assert_eq!(ours.len(), host.len(), "{what}: length");
    for (i, (a, b)) in ours.iter().zip(&host).enumerate() {
        assert!(a.to_bits() == b.to_bits(), "{what}: element {i}: CPU op {a}, CUDA source {b}");
    }
}

/// Deterministic values: half are small integers (ties in pooling windows, zeros, both
/// signs), half carry a random fraction (so that a different summation order changes bits).
fn values(n: usize, seed: u64, nan_at: Option<usize>) -> Vec<f32> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let mut v: Vec<f32> = (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let fraction = ((s >> 11) & 0xfffff) as f32 / 1_048_576.0 * 0.3;
            ((s >> 33) % 9) as f32 - 4.0 + if (s >> 8) & 1 == 1 { fraction } else { 0.0 }
        })
        .collect();
    if let Some(i) = nan_at {
        v[i] = f32::NAN;
    }
    v
}

fn tensor(v: Vec<f32>, shape: &[usize]) -> Tensor {
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

const SHAPES: [[usize; 5]; 4] =
    [[1, 2, 4, 6, 8], [2, 3, 5, 7, 3], [1, 1, 2, 2, 2], [1, 2, 3, 2, 5]];

#[test]
fn max_pool_matches_the_cpu_op() {
    if driver().is_none() {
        return;
    }
    for (t, shape @ [n, c, d, h, w]) in SHAPES.into_iter().enumerate() {
        let len = shape.iter().product();
        let x = Var::from_tensor(&tensor(values(len, t as u64, Some(len / 3)), &shape)).unwrap();
        let y = mgsd_nn::max_pool3d_2x(x.as_tensor()).unwrap();
        let dy = tensor(values(y.elem_count(), 100 + t as u64, None), y.dims());
        let dx = (&y * &dy).unwrap().sum_all().unwrap().backward().unwrap();
        let dims = [n * c, d, h, w];
        let fwd = run("maxpool_fwd", dims, 0.0, &[bytes(x.as_tensor())], 2);
        assert_same("max pool forward", &y, &fwd[0]);
        let bwd = run("maxpool_bwd", dims, 0.0, &[bytes(&dy), fwd[1].clone()], 1);
        assert_same("max pool backward", dx.get(&x).unwrap(), &bwd[0]);
    }
}

#[test]
fn upsample_matches_the_cpu_op() {
    if driver().is_none() {
        return;
    }
    for (t, shape @ [n, c, d, h, w]) in SHAPES.into_iter().enumerate() {
        let x = Var::from_tensor(&tensor(values(shape.iter().product(), t as u64, None), &shape))
            .unwrap();
        let up = [n, c, 2 * d, 2 * h, 2 * w];
        let skip = tensor(values(up.iter().product(), 50 + t as u64, None), &up);
        let dy = tensor(values(up.iter().product(), 100 + t as u64, None), &up);
        let dims = [n * c, d, h, w];

        let y = mgsd_nn::upsample2x(x.as_tensor()).unwrap();
        assert_same(
            "upsample forward",
            &y,
            &run("upsample_fwd", dims, 0.0, &[bytes(x.as_tensor())], 1)[0],
        );
        let y_add = mgsd_nn::upsample2x_add(x.as_tensor(), &skip).unwrap();
        let host = run("upsample_add", dims, 0.0, &[bytes(x.as_tensor()), bytes(&skip)], 1);
        assert_same("upsample + skip forward", &y_add, &host[0]);

        let dx = (&y * &dy).unwrap().sum_all().unwrap().backward().unwrap();
        let host = run("upsample_bwd", dims, 0.0, &[bytes(&dy)], 1);
        assert_same("upsample backward", dx.get(&x).unwrap(), &host[0]);
    }
}

#[test]
fn leaky_relu_matches_the_cpu_op() {
    if driver().is_none() {
        return;
    }
    let shape = [2, 3, 5, 7, 3];
    let len = shape.iter().product();
    let x = Var::from_tensor(&tensor(values(len, 7, Some(11)), &shape)).unwrap();
    let dy = tensor(values(len, 8, None), &shape);
    let y = mgsd_nn::leaky_relu(x.as_tensor(), 0.2).unwrap();
    let dx = (&y * &dy).unwrap().sum_all().unwrap().backward().unwrap();
    let dims = [shape[0] * shape[1], shape[2], shape[3], shape[4]];
    assert_same("leaky forward", &y, &run("leaky_fwd", dims, 0.2, &[bytes(x.as_tensor())], 1)[0]);
    let host = run("leaky_bwd", dims, 0.2, &[bytes(x.as_tensor()), bytes(&dy)], 1);
    assert_same("leaky backward", dx.get(&x).unwrap(), &host[0]);
}

#[test]
fn adaptive_pool_matches_the_cpu_op() {
    if driver().is_none() {
        return;
    }
    let shape @ [n, c, d, h, w] = [2, 2, 5, 7, 6];
    let len = shape.iter().product();
    let dims = [n * c, d, h, w];
    // The token grid, the multi-view profiles, a grid larger than the input, overlapping bins.
    for (t, out) in [[1, 1, 1], [5, 7, 6], [2, 3, 4], [5, 1, 1], [1, 7, 1], [1, 1, 6], [7, 9, 4]]
        .into_iter()
        .enumerate()
    {
        let x = Var::from_tensor(&tensor(values(len, 30 + t as u64, None), &shape)).unwrap();
        let y = mgsd_nn::adaptive_avg_pool3d(x.as_tensor(), out).unwrap();
        let dy = tensor(values(y.elem_count(), 60 + t as u64, None), y.dims());
        let dx = (&y * &dy).unwrap().sum_all().unwrap().backward().unwrap();
        // The slope (unused), then the grid.
        let extra: Vec<String> =
            ["0".to_owned()].into_iter().chain(out.map(|o| o.to_string())).collect();
        let host = run_with("apool_fwd", dims, &extra, &[bytes(x.as_tensor())], 1);
        assert_same(&format!("adaptive pool to {out:?}, forward"), &y, &host[0]);
        let host = run_with("apool_bwd", dims, &extra, &[bytes(&dy)], 1);
        assert_same(&format!("adaptive pool to {out:?}, backward"), dx.get(&x).unwrap(), &host[0]);
    }
}

/// Raw little-endian f32 bytes, the driver's file format.
fn raw(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// The conv epilogue on element `i` of an `(N, C, S)` result: `v + (b[c] + r[i])`, either term
/// optional, the two summed first, as `conv_epilogue.cu` and `conv_bf16.cu` compute it.
fn epilogue(v: f32, i: usize, (s, c): (usize, usize), b: Option<&[f32]>, r: Option<&[f32]>) -> f32 {
    match (b, r) {
        (Some(b), Some(r)) => v + (b[(i / s) % c] + r[i]),
        (Some(b), None) => v + b[(i / s) % c],
        (None, Some(r)) => v + r[i],
        (None, None) => v,
    }
}

/// The driver's input files of an epilogue kernel: the result, then the bias and the residual
/// when present.
fn epilogue_inputs(result: Vec<u8>, b: Option<&[f32]>, r: Option<&[f32]>) -> Vec<Vec<u8>> {
    std::iter::once(result).chain(b.map(raw)).chain(r.map(raw)).collect()
}

#[test]
fn conv_epilogue_adds_bias_and_residual_per_channel() {
    if driver().is_none() {
        return;
    }
    let (n, c, s) = (2, 5, 37);
    let total = n * c * s;
    let y = values(total, 21, None);
    let b = values(c, 22, None);
    let r = values(total, 23, None);
    let dims = [n, c, s, 1];
    for (kernel, bias, res) in [
        ("conv_bias_add", true, false),
        ("conv_bias_residual_add", true, true),
        ("conv_residual_add", false, true),
    ] {
        let (b, r) = (bias.then_some(&b[..]), res.then_some(&r[..]));
        let want: Vec<f32> = (0..total).map(|i| epilogue(y[i], i, (s, c), b, r)).collect();
        let host = run(kernel, dims, 0.0, &epilogue_inputs(raw(&y), b, r), 1);
        assert_same(kernel, &tensor(want, &[total]), &host[0]);
    }
}

/// The bf16 copies of the bf16 cuDNN Conv3d (`conv_bf16.cu`): round to nearest even (as
/// `half`) into channels-last `(N, S, C)` order, and back to f32 `(N, C, S)` with the
/// epilogue's bias and residual, for sizes that leave partial 32-position tiles and channel
/// counts that do not fill a block.
#[test]
fn bf16_copies_round_to_nearest_even_channels_last() {
    if driver().is_none() {
        return;
    }
    use half::bf16;
    let raw16 = |v: &[u16]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    for (n, c, s) in [(2, 5, 37), (1, 3, 70), (1, 16, 32), (3, 1, 5)] {
        let total = n * c * s;
        let mut x = values(total, 31 + s as u64, None);
        // Ties to even (down, then up), an infinity, a signed zero, a subnormal, and a value
        // that rounds up to infinity.
        let special =
            [0x3f80_8000u32, 0x3f81_8000, 0x7f80_0000, 0x8000_0000, 0x0000_1234, 0x7f7f_ffff];
        for (slot, bits) in x.iter_mut().zip(special) {
            *slot = f32::from_bits(bits);
        }
        // Index of NCS element (b, ch, pos) in the NSC copy.
        let copy_index = |i: usize| {
            let (b, ch, pos) = (i / (c * s), (i / s) % c, i % s);
            (b * s + pos) * c + ch
        };
        let mut want = vec![0u16; total];
        for (i, v) in x.iter().enumerate() {
            want[copy_index(i)] = bf16::from_f32(*v).to_bits();
        }
        let dims = [n, c, s, 1];
        let host = run("f32_to_bf16", dims, 0.0, &[raw(&x)], 1);
        let got: Vec<u16> =
            host[0].chunks_exact(2).map(|b| u16::from_le_bytes([b[0], b[1]])).collect();
        assert_eq!(got, want, "f32 → bf16, (N, C, S) = {:?}", (n, c, s));

        let b = values(c, 41, None);
        let r = values(total, 43, None);
        for (kernel, bias, res) in [
            ("bf16_to_f32", false, false),
            ("bf16_to_f32_bias", true, false),
            ("bf16_to_f32_bias_residual", true, true),
            ("bf16_to_f32_residual", false, true),
        ] {
            let (b, r) = (bias.then_some(&b[..]), res.then_some(&r[..]));
            let expect: Vec<f32> = (0..total)
                .map(|i| epilogue(bf16::from_bits(want[copy_index(i)]).to_f32(), i, (s, c), b, r))
                .collect();
            let host = run(kernel, dims, 0.0, &epilogue_inputs(raw16(&want), b, r), 1);
            let what = format!("{kernel}, (N, C, S) = {:?}", (n, c, s));
            assert_same(&what, &tensor(expect, &[total]), &host[0]);
        }
    }
}
