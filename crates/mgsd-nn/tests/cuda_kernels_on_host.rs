//! The CUDA source of the pooling, upsampling and LeakyReLU kernels
//! (`mgsd-kernels/src/kernels/resample.cu`), compiled as plain C++ with
//! `mgsd-kernels/host/cuda_host.h` and run on the CPU, must compute bit for bit what this
//! crate's CPU ops compute, forward and backward (adaptive average pooling included); the cuDNN
//! Conv3d's epilogue
//! (`conv_epilogue.cu`) must add bias and residual exactly as `y + (b[c] + r)`. Those kernels
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
    let raw = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let dims = [n, c, s, 1];
    for (kernel, bias, res) in [
        ("conv_bias_add", true, false),
        ("conv_bias_residual_add", true, true),
        ("conv_residual_add", false, true),
    ] {
        let want: Vec<f32> = (0..total)
            .map(|i| {
                let add = match (bias, res) {
                    (true, true) => b[(i / s) % c] + r[i],
                    (true, false) => b[(i / s) % c],
                    _ => r[i],
                };
                y[i] + add
            })
            .collect();
        let mut inputs = vec![raw(&y)];
        if bias {
            inputs.push(raw(&b));
        }
        if res {
            inputs.push(raw(&r));
        }
        let host = run(kernel, dims, 0.0, &inputs, 1);
        assert_same(kernel, &tensor(want, &[total]), &host[0]);
    }
}
