//! Dice and HD95 against medpy/scipy on the fixtures of `fixtures/gen_metrics.py`.

use mgsd_metrics::{medpy_hd95, score_case, PostProcess};
use serde_json::Value;

fn fixture() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/metrics.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn arr3<T: Copy>(v: &Value, f: impl Fn(&Value) -> T) -> [T; 3] {
    let a = v.as_array().unwrap();
    [f(&a[0]), f(&a[1]), f(&a[2])]
}

fn digits(v: &Value) -> Vec<u8> {
    v.as_str().unwrap().bytes().map(|b| b - b'0').collect()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * b.abs().max(1.0)
}

#[test]
fn label_cases_match_medpy_and_brats_conventions() {
    let fx = fixture();
    let min_et = fx["min_et"].as_u64().unwrap() as usize;
    let cases = fx["label_cases"].as_array().unwrap();
    assert_eq!(cases.len(), 6);
    for (i, c) in cases.iter().enumerate() {
        let shape = arr3(&c["shape"], |x| x.as_u64().unwrap() as usize);
        let spacing = arr3(&c["spacing"], |x| x.as_f64().unwrap());
        let (truth, pred) = (digits(&c["truth"]), digits(&c["pred"]));
        for (key, post) in
            [("scores", PostProcess::NONE), ("scores_et_min", PostProcess { min_et: Some(min_et) })]
        {
            let got = score_case(&pred, &truth, shape, spacing, post);
            for (r, name) in ["WT", "TC", "ET"].iter().enumerate() {
                let want = &c[key][name];
                let (wd, wh) = (want["dice"].as_f64().unwrap(), want["hd95"].as_f64().unwrap());
                assert!(
                    close(got[r].dice, wd),
                    "case {i} {key} {name}: dice {} vs {wd}",
                    got[r].dice
                );
                assert!(
                    close(got[r].hd95, wh),
                    "case {i} {key} {name}: hd95 {} vs {wh}",
                    got[r].hd95
                );
            }
        }
    }
}

#[test]
fn mask_cases_match_medpy_hd95() {
    let fx = fixture();
    for (i, c) in fx["mask_cases"].as_array().unwrap().iter().enumerate() {
        let shape = arr3(&c["shape"], |x| x.as_u64().unwrap() as usize);
        let spacing = arr3(&c["spacing"], |x| x.as_f64().unwrap());
        let a: Vec<bool> = digits(&c["a"]).into_iter().map(|v| v == 1).collect();
        let b: Vec<bool> = digits(&c["b"]).into_iter().map(|v| v == 1).collect();
        let got = medpy_hd95(&a, &b, shape, spacing).unwrap();
        let want = c["hd95"].as_f64().unwrap();
        assert!(close(got, want), "mask case {i}: {got} vs {want}");
        let d = mgsd_metrics::dice(&a, &b);
        assert!(close(d, c["dice"].as_f64().unwrap()));
    }
}
