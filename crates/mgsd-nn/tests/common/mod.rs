//! Helpers shared by the integration tests: the deterministic parameter values of the golden
//! fixtures (the twin of `det_values`/`det_param` in `fixtures/gen_conv_unet.py`) and
//! tolerance checks.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{Device, Result, Tensor};

/// Path of a fixture file.
pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests").join("fixtures").join(name)
}

fn fnv1a(name: &str) -> u64 {
    name.bytes().fold(0xcbf29ce484222325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100000001b3))
}

/// `n` values in [-1, 1): SplitMix64 of `fnv1a(name) + i`, top 24 bits.
pub fn det_values(name: &str, n: usize) -> Vec<f64> {
    let h = fnv1a(name);
    (0..n as u64)
        .map(|i| {
            let mut z = h.wrapping_add(i).wrapping_add(0x9E3779B97F4A7C15);
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
            z ^= z >> 31;
            (z >> 40) as f64 / (1u64 << 24) as f64 * 2.0 - 1.0
        })
        .collect()
}

/// A deterministic tensor of values in [-1, 1).
pub fn det_tensor(name: &str, shape: &[usize]) -> Result<Tensor> {
    let v: Vec<f32> =
        det_values(name, shape.iter().product()).into_iter().map(|v| v as f32).collect();
    Tensor::from_vec(v, shape, &Device::Cpu)
}

/// The parameter value the generator gives `name`.
pub fn det_param(name: &str, shape: &[usize]) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let v = det_values(name, n);
    let v: Vec<f32> = if shape.len() >= 2 {
        let fan_in: usize = shape[1..].iter().product();
        let s = 1.0 / (fan_in as f64).sqrt();
        v.into_iter().map(|v| (v * s) as f32).collect()
    } else if name.contains(".gn") && name.ends_with(".weight") {
        v.into_iter().map(|v| (1.0 + 0.2 * v) as f32).collect()
    } else {
        v.into_iter().map(|v| (0.1 * v) as f32).collect()
    };
    Tensor::from_vec(v, shape, &Device::Cpu)
}

/// The `params` metadata of a fixture: every `state_dict` key with its shape.
pub fn fixture_params(name: &str) -> Vec<(String, Vec<usize>)> {
    let bytes = std::fs::read(fixture(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    let (_, meta) =
        safetensors::SafeTensors::read_metadata(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
    let json = meta
        .metadata()
        .as_ref()
        .and_then(|m| m.get("params").cloned())
        .unwrap_or_else(|| panic!("{name}: no params metadata"));
    let map: HashMap<String, Vec<usize>> = parse_params(&json);
    let mut v: Vec<_> = map.into_iter().collect();
    v.sort();
    v
}

/// Parses `{"name": [d0, d1, ...], ...}` (the only JSON the generator writes).
fn parse_params(json: &str) -> HashMap<String, Vec<usize>> {
    let mut out = HashMap::new();
    let body = json.trim().trim_start_matches('{').trim_end_matches('}');
    for entry in body.split(']').filter(|s| !s.trim().is_empty()) {
        let entry = entry.trim().trim_start_matches(',').trim();
        let (key, dims) =
            entry.split_once(':').unwrap_or_else(|| panic!("bad params entry {entry}"));
        let key = key.trim().trim_matches('"').to_string();
        let dims = dims.trim().trim_start_matches('[');
        let dims = dims
            .split(',')
            .filter(|s| !s.trim().is_empty())
            .map(|s| s.trim().parse().unwrap_or_else(|e| panic!("{s}: {e}")))
            .collect();
        out.insert(key, dims);
    }
    out
}

/// Every parameter of a fixture, with its deterministic value.
pub fn det_state_dict(fixture_name: &str) -> Result<HashMap<String, Tensor>> {
    fixture_params(fixture_name)
        .into_iter()
        .map(|(k, s)| Ok((k.clone(), det_param(&k, &s)?)))
        .collect()
}

/// Asserts `|got − want| ≤ rel · max|want| + abs` elementwise, naming the tensor.
pub fn assert_close(what: &str, got: &Tensor, want: &Tensor, rel: f64, abs: f64) {
    assert_eq!(got.dims(), want.dims(), "{what}: shape");
    let g: Vec<f32> = got.flatten_all().and_then(|t| t.to_vec1()).expect("to_vec1");
    let w: Vec<f32> = want.flatten_all().and_then(|t| t.to_vec1()).expect("to_vec1");
    let scale = w.iter().fold(0f64, |m, v| m.max(v.abs() as f64));
    let mut worst = (0usize, 0f64);
    for (i, (a, b)) in g.iter().zip(&w).enumerate() {
        let e = (*a as f64 - *b as f64).abs();
        if e > worst.1 {
            worst = (i, e);
        }
    }
    let tol = rel * scale + abs;
    assert!(
        worst.1 <= tol,
        "{what}: max error {} at {} (got {}, want {}), tolerance {tol} (scale {scale})",
        worst.1,
        worst.0,
        g[worst.0],
        w[worst.0]
    );
}
