//! `score` against the official `brats-evaluation` CSV (the fixtures of
//! `crates/mgsd-metrics/fixtures/gen_brats2023.py`), its file pairing and errors; `compare` on
//! two small evaluations.

use mgsd_io::{write_labels, Volume};
use mgsd_train::compare::{compare, CompareMetric};
use mgsd_train::score::{score, LabelsArg, MetricSet, ScoreOptions};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../mgsd-metrics/fixtures/iso")
}

fn parse_csv(text: &str) -> HashMap<String, HashMap<String, String>> {
    let mut lines = text.lines();
    let header: Vec<String> = lines.next().unwrap().split(',').map(String::from).collect();
    lines
        .map(|l| {
            let row: HashMap<String, String> =
                header.iter().cloned().zip(l.split(',').map(String::from)).collect();
            (row["subject_id"].clone(), row)
        })
        .collect()
}

fn num(s: &str) -> f64 {
    match s {
        "" => f64::NAN,
        "inf" => f64::INFINITY,
        s => s.parse().unwrap(),
    }
}

#[test]
fn score_csv_matches_the_official_csv() {
    let opts = ScoreOptions {
        pred: fixture().join("pred"),
        truth: fixture().join("ref"),
        labels: LabelsArg::Auto,
        metrics: MetricSet::All,
        progress: false,
    };
    let report = score(&opts).unwrap();
    let ours = parse_csv(&report.csv());
    let official = parse_csv(&std::fs::read_to_string(fixture().join("official.csv")).unwrap());
    assert_eq!(ours.len(), official.len());
    let mut compared = 0;
    for (subject, want) in &official {
        let got = &ours[subject];
        for (key, w) in want {
            if key == "subject_id"
                || !(key.ends_with("_wt") || key.ends_with("_tc") || key.ends_with("_et"))
            {
                continue;
            }
            let (g, w) = (num(&got[key]), num(w));
            let tol = if key.contains("hd95") { 1e-4 } else { 1e-6 };
            assert!(
                (g.is_nan() && w.is_nan()) || g == w || (g - w).abs() <= tol,
                "{subject} {key}: ours {g} official {w}"
            );
            compared += 1;
        }
    }
    assert_eq!(compared, 16 * 45);
    // Legacy columns ride along; the missing prediction is listed.
    assert!(report.csv().lines().next().unwrap().ends_with("spec_wt,spec_tc,spec_et"));
    assert!(report.markdown().contains("Missing predictions"));
    assert!(report.markdown().contains("BraTS-GLI-00013-000-seg.nii.gz"));
}

fn grid(shape: [usize; 3]) -> Volume {
    Volume::new(vec![0.0; shape.iter().product()], shape).unwrap()
}

#[test]
fn pairing_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (truth, pred) = (dir.path().join("truth"), dir.path().join("pred"));
    std::fs::create_dir_all(truth.join("Brats18_X_1")).unwrap();
    std::fs::create_dir_all(&pred).unwrap();
    let mut labels = vec![0u8; 4 * 4 * 4];
    labels[21] = 4;
    write_labels(&truth.join("Brats18_X_1/Brats18_X_1_seg.nii.gz"), &labels, &grid([4, 4, 4]))
        .unwrap();
    // A prediction named with a prefix, one without reference.
    write_labels(&pred.join("nnunet_Brats18_X_1.nii.gz"), &labels, &grid([4, 4, 4])).unwrap();
    write_labels(&pred.join("other.nii.gz"), &labels, &grid([4, 4, 4])).unwrap();
    let opts = ScoreOptions {
        pred: pred.clone(),
        truth: truth.clone(),
        labels: LabelsArg::Auto,
        metrics: MetricSet::Legacy,
        progress: false,
    };
    let report = score(&opts).unwrap();
    assert_eq!(report.rows.len(), 1);
    assert_eq!(report.rows[0].legacy.unwrap()[2].dice, 1.0);
    assert_eq!(report.unmatched_predictions.len(), 1);
    assert!(report.csv().starts_with("subject_id,dice_wt,dice_tc,dice_et,hd95_wt"));

    // A grid mismatch names both files.
    write_labels(&pred.join("nnunet_Brats18_X_1.nii.gz"), &[0; 2 * 4 * 4], &grid([2, 4, 4]))
        .unwrap();
    let msg = format!("{:#}", score(&opts).unwrap_err());
    assert!(
        msg.contains("nnunet_Brats18_X_1.nii.gz") && msg.contains("Brats18_X_1_seg.nii.gz"),
        "{msg}"
    );

    // Unknown labels are an error, not a panic.
    let mut bad = labels.clone();
    bad[0] = 7;
    write_labels(&pred.join("nnunet_Brats18_X_1.nii.gz"), &bad, &grid([4, 4, 4])).unwrap();
    assert!(score(&opts).is_err());
    // No reference at all.
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    assert!(score(&ScoreOptions { truth: empty, ..opts }).is_err());
}

/// A minimal eval.json: the fields `compare` reads.
fn eval_json(path: &Path, shift: f64) {
    let subsets: Vec<String> =
        mgsd_io::ModalitySet::all_nonempty().iter().map(|s| s.to_string()).collect();
    let mut per_case = Vec::new();
    for (k, s) in subsets.iter().enumerate() {
        for c in 0..12 {
            let d = |r: usize| {
                let base = 0.5 + 0.03 * ((c * 7 + r * 3 + k) % 11) as f64;
                let extra = if r == 2 { shift * (1.0 + c as f64 / 12.0) } else { 0.0 };
                serde_json::json!({ "dice": base + extra, "hd95": 10.0 - base })
            };
            per_case.push(serde_json::json!({
                "case": format!("case{c:02}"), "subset": s, "scores": [d(0), d(1), d(2)]
            }));
        }
    }
    let rows: Vec<_> = subsets.iter().map(|s| serde_json::json!({ "subset": s })).collect();
    let j = serde_json::json!({ "rows": rows, "per_case": per_case });
    std::fs::write(path, serde_json::to_string(&j).unwrap()).unwrap();
}

#[test]
fn compare_two_evaluations() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.json"), dir.path().join("b.json"));
    eval_json(&a, 0.0);
    eval_json(&b, 0.05);
    let c = compare(&a, &b, CompareMetric::Dice).unwrap();
    assert_eq!(c.tests.len(), 45);
    for t in &c.tests {
        assert_eq!(t.n, 12);
        assert!(t.p_holm >= t.p || t.p.is_nan());
        if t.region == "ET" {
            // Every case improves: exact p = 2 / 2^12, Holm × 15 over the non-NaN tests.
            assert!((t.p - 2.0 / 4096.0).abs() < 1e-15);
            assert!(t.diff > 0.0 && t.ci.0 > 0.0 && t.ci.0 <= t.diff && t.diff <= t.ci.1);
        } else {
            assert!(t.p.is_nan() && t.diff == 0.0);
        }
    }
    let out = dir.path().join("out");
    c.write(&out).unwrap();
    for f in ["compare.md", "compare.csv", "compare.png"] {
        assert!(out.join(f).exists(), "{f}");
    }
    assert!(c.markdown().contains(" *"));
    assert!(compare(&a, &dir.path().join("missing.json"), CompareMetric::Dice).is_err());
}
