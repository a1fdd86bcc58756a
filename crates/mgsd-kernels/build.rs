//! Compiles each `src/kernels/<name>.cu` to `$OUT_DIR/<name>.ptx` with nvcc, only when the
//! `cuda` feature is on; without it nothing is compiled and no nvcc is needed.
//!
//! Environment: `CUDA_COMPUTE_CAP` (default `90`, H100/H200; `90a` and the like accepted),
//! `NVCC` (the compiler; else `$CUDA_HOME/bin/nvcc`, `$CUDA_PATH/bin/nvcc`, then `nvcc` on the
//! `PATH`). The PTX ISA version follows the nvcc release (13.0 writes 9.0, 13.2 writes 9.2) and
//! the driver must know it: use an nvcc no newer than the GPU machine's driver (see README).

use std::env;
use std::path::PathBuf;
use std::process::Command;

/// Kernel sources under `src/kernels/`, one PTX each.
const KERNELS: &[&str] = &["attention", "conv_bf16", "conv_epilogue", "group_norm", "resample"];

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    for k in KERNELS {
        println!("cargo::rerun-if-changed=src/kernels/{k}.cu");
    }
    for var in ["CUDA_COMPUTE_CAP", "NVCC", "CUDA_HOME", "CUDA_PATH"] {
        println!("cargo::rerun-if-env-changed={var}");
    }
    if env::var_os("CARGO_FEATURE_CUDA").is_none() {
        // The no-feature path: nothing to compile; the tests check that nvcc was not used.
        println!("cargo::rustc-env=MGSD_KERNELS_NVCC=none");
        return;
    }

    let cap = env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "90".to_owned());
    let digits = cap.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    if digits.is_empty()
        || !digits.chars().all(|c| c.is_ascii_digit())
        || cap.len() - digits.len() > 1
    {
        panic!(
            "mgsd-kernels: CUDA_COMPUTE_CAP={cap:?} is not a compute capability such as 90 or 90a"
        );
    }
    let nvcc = find_nvcc();
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let src_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"))
            .join("src/kernels");
    for k in KERNELS {
        let src = src_dir.join(format!("{k}.cu"));
        let ptx = out_dir.join(format!("{k}.ptx"));
        let output = Command::new(&nvcc)
            .arg("-ptx")
            .arg(format!("-arch=sm_{cap}"))
            .args(["-O3", "-std=c++17"])
            .arg("-o")
            .arg(&ptx)
            .arg(&src)
            .output()
            .unwrap_or_else(|e| {
                panic!(
                    "mgsd-kernels: cannot run nvcc ({}) for {}: {e}; install it (README: Building) \
                     or set NVCC",
                    nvcc.display(),
                    src.display()
                )
            });
        if !output.status.success() {
            panic!(
                "mgsd-kernels: nvcc failed on {} ({}):\n{}{}",
                src.display(),
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }
    println!("cargo::rustc-env=MGSD_KERNELS_NVCC={}", nvcc.display());
    println!("cargo::rustc-env=MGSD_KERNELS_COMPUTE_CAP={cap}");
}

fn find_nvcc() -> PathBuf {
    if let Some(p) = env::var_os("NVCC") {
        return PathBuf::from(p);
    }
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(root) = env::var_os(var) {
            let p = PathBuf::from(root).join("bin/nvcc");
            if p.exists() {
                return p;
            }
        }
    }
    PathBuf::from("nvcc")
}
