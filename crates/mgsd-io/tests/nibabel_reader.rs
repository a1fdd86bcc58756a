//! Our reader against nibabel on real files nobody here wrote.
//!
//! `tests/fixtures/nibabel/` holds nibabel's own test data (big-endian int16/float32, NaNs,
//! real scaling, header extensions, NIfTI-2) and a few files written through nibabel for what
//! its data lacks; `expected.json` is what nibabel 5.4 reads from each (see
//! `scripts/nibabel_fixtures.py`, run by hand).
//!
//! Tolerances: nibabel returns float64, we return f32. A voxel may differ by f32 rounding,
//! `|ours - nib| <= 1e-6 |nib| + 1e-6`; sums by `1e-6 · Σ|x| + 1e-6`; the affine is computed
//! in f64 from the same header fields, `|Δ| <= 1e-9 + 1e-9 |nib|` (qform: `1e-6`, because
//! nibabel recovers the quaternion's `a` in extended precision).

use std::path::{Path, PathBuf};

use mgsd_io::nifti::{read_channels, read_header, read_volume};
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/nibabel")
}

fn expected() -> Vec<(String, Value)> {
    let text = std::fs::read_to_string(fixtures().join("expected.json")).unwrap();
    let json: Value = serde_json::from_str(&text).unwrap();
    let files = json["files"].as_object().unwrap();
    assert!(files.len() >= 15, "expected.json lists {} files", files.len());
    files.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

fn close(ours: f64, nib: f64, rel: f64, abs: f64) -> bool {
    (ours - nib).abs() <= abs + rel * nib.abs()
}

#[test]
fn headers_match_nibabel() {
    for (name, want) in expected() {
        let info = read_header(&fixtures().join(&name)).unwrap();
        let ctx = format!("{name}: {info:?}");
        assert_eq!(u64::from(info.version), want["version"].as_u64().unwrap(), "{ctx}");
        assert_eq!(serde_json::to_value(info.endianness).unwrap(), want["endianness"], "{ctx}");
        let shape: Vec<usize> = want["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(info.shape, shape, "{ctx}");
        assert_eq!(info.datatype, want["datatype"].as_str().unwrap(), "{ctx}");
        assert_eq!(i64::from(info.qform_code), want["qform_code"].as_i64().unwrap(), "{ctx}");
        assert_eq!(i64::from(info.sform_code), want["sform_code"].as_i64().unwrap(), "{ctx}");
        assert_eq!(info.vox_offset, want["vox_offset"].as_u64().unwrap(), "{ctx}");
        assert_eq!(info.extensions as u64, want["extensions"].as_u64().unwrap(), "{ctx}");
        let (slope, inter) = (f(&want["scl_slope"]), f(&want["scl_inter"]));
        assert!(info.scl_slope == slope || (slope.is_nan() && info.scl_slope.is_nan()), "{ctx}");
        assert_eq!(info.scl_inter, inter, "{ctx}");
        let tol = if info.sform_code == 0 && info.qform_code != 0 { 1e-6 } else { 1e-9 };
        for (r, row) in want["affine"].as_array().unwrap().iter().enumerate() {
            for (c, v) in row.as_array().unwrap().iter().enumerate() {
                assert!(close(info.affine[r][c], f(v), tol, tol), "{ctx}: affine[{r}][{c}] vs {v}");
            }
        }
    }
}

#[test]
fn voxels_match_nibabel() {
    let mut checked_nan = false;
    let mut checked_scaled = false;
    for (name, want) in expected() {
        let path = fixtures().join(&name);
        let vols = read_channels(&path).unwrap();
        let shape: Vec<usize> = want["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(vols.len(), shape.iter().skip(3).product::<usize>(), "{name}");
        let zooms: Vec<f64> = want["zooms"].as_array().unwrap().iter().map(f).collect();
        let (mut sum, mut abs_sum, mut nans) = (0f64, 0f64, 0u64);
        let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
        for v in &vols {
            assert_eq!(v.shape.to_vec(), shape[..3].to_vec(), "{name}");
            for (ours, nib) in v.spacing.iter().zip(&zooms) {
                assert!(
                    close(f64::from(*ours), *nib, 1e-6, 0.0),
                    "{name}: spacing {:?}",
                    v.spacing
                );
            }
            for &x in &v.data {
                if x.is_nan() {
                    nans += 1;
                    continue;
                }
                let x = f64::from(x);
                sum += x;
                abs_sum += x.abs();
                lo = lo.min(x);
                hi = hi.max(x);
            }
        }
        assert_eq!(nans, want["nan_count"].as_u64().unwrap(), "{name}: NaN count");
        let nib_sum = f(&want["sum"]);
        assert!((sum - nib_sum).abs() <= 1e-6 * abs_sum + 1e-6, "{name}: sum {sum} vs {nib_sum}");
        assert!(close(lo, f(&want["min"]), 1e-6, 1e-6), "{name}: min {lo} vs {}", want["min"]);
        assert!(close(hi, f(&want["max"]), 1e-6, 1e-6), "{name}: max {hi} vs {}", want["max"]);
        for s in want["samples"].as_array().unwrap() {
            let ix: Vec<usize> = s["index"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as usize)
                .collect();
            // Volumes follow each other along the dims beyond the third (Fortran order).
            let (mut channel, mut stride) = (0, 1);
            for (d, &i) in ix.iter().enumerate().skip(3) {
                channel += i * stride;
                stride *= shape[d];
            }
            let v = &vols[channel];
            let ours = v.at(ix[0], ix[1], ix[2]);
            match s["value"].as_f64() {
                None => assert!(ours.is_nan(), "{name}: {ix:?} should be NaN, is {ours}"),
                Some(nib) => assert!(
                    close(f64::from(ours), nib, 1e-6, 1e-6),
                    "{name}: voxel {ix:?} = {ours}, nibabel {nib}"
                ),
            }
        }
        checked_nan |= nans > 0;
        checked_scaled |= f(&want["scl_slope"]) != 1.0 || f(&want["scl_inter"]) != 0.0;
        for v in &vols {
            let affine: Vec<f64> = want["affine"]
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|r| r.as_array().unwrap().iter().map(f).collect::<Vec<_>>())
                .collect();
            let ours: Vec<f64> = v.affine.iter().flatten().copied().collect();
            assert!(ours.iter().zip(&affine).all(|(a, b)| close(*a, *b, 1e-6, 1e-6)), "{name}");
            assert!(v.source.is_some(), "{name}: source header kept");
        }
    }
    assert!(checked_nan && checked_scaled, "fixtures must cover NaNs and scaling");
}

#[test]
fn read_volume_takes_one_volume_and_refuses_several() {
    for (name, want) in expected() {
        let path = fixtures().join(&name);
        let count: u64 =
            want["shape"].as_array().unwrap().iter().skip(3).map(|v| v.as_u64().unwrap()).product();
        match read_volume(&path) {
            Ok(v) => {
                assert_eq!(count, 1, "{name}");
                let c = read_channels(&path).unwrap().remove(0);
                let bits = |d: &[f32]| d.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&v.data), bits(&c.data), "{name}");
                assert_eq!(
                    (v.shape, v.spacing, v.affine),
                    (c.shape, c.spacing, c.affine),
                    "{name}"
                );
            }
            Err(e) => {
                assert!(count > 1, "{name}: {e}");
                let msg = e.to_string();
                assert!(msg.contains(&name) && msg.contains("read_channels"), "{msg}");
            }
        }
    }
}
