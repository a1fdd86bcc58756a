//! The paired Wilcoxon test and Holm's adjustment against scipy on the fixtures of
//! `fixtures/gen_stats.py`.

use mgsd_metrics::stats::{holm, wilcoxon};
use serde_json::Value;

fn fixture() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/stats.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
}

#[test]
fn wilcoxon_matches_scipy() {
    let fx = fixture();
    let cases = fx["cases"].as_array().unwrap();
    assert!(cases.len() >= 19);
    let mut ps = Vec::new();
    for c in cases {
        let got = wilcoxon(&floats(&c["x"]), &floats(&c["y"])).unwrap();
        let want = c["p"].as_f64().unwrap();
        assert!((got - want).abs() <= 1e-12 + 1e-9 * want, "{}: {got} vs scipy {want}", c["name"]);
        ps.push(got);
    }
    for (got, want) in holm(&ps).iter().zip(floats(&fx["holm"])) {
        assert!((got - want).abs() <= 1e-9, "holm {got} vs {want}");
    }
}

#[test]
fn bad_samples_are_errors_not_panics() {
    assert!(wilcoxon(&[1.0], &[1.0, 2.0]).is_err());
    assert!(wilcoxon(&[], &[]).is_err());
    assert!(wilcoxon(&[f64::NAN], &[1.0]).is_err());
    assert!(wilcoxon(&[1.0, 2.0], &[1.0, 2.0]).unwrap().is_nan());
}
