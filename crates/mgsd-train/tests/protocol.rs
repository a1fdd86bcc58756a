//! The protocol around the arithmetic: held-out test parts, validation at the end, explicit
//! inference protocols, whole-brain prediction, patch checks — and the README's
//! train → eval → predict sequence, run as written through the binary.

mod support;

use candle_core::Device;
use mgsd_io::{read_volume, SynthConfig};
use mgsd_train::config::Config;
use mgsd_train::predict::{predict, PredictOptions};
use mgsd_train::protocol::{ProtocolArgs, WindowKind};
use mgsd_train::scans::GridOptions;
use mgsd_train::train::{files, train, RunOptions};
use std::path::{Path, PathBuf};
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_mgsd-train");

/// Writes `n` synthetic cases of `shape` (BraTS 2018 layout) and returns their case folders.
fn cases(root: &Path, n: usize, shape: [usize; 3]) -> Vec<PathBuf> {
    let ds = mgsd_io::synth::write_dataset(root, n, &SynthConfig::new(3, shape)).unwrap();
    let found = mgsd_io::discover(root).unwrap();
    assert_eq!(found.cases.len(), ds.case_ids.len());
    found.cases.iter().map(|c| c.files()[0].parent().unwrap().to_path_buf()).collect::<Vec<_>>()
}

fn run(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A tiny training configuration over `data` (a folder) with a split file.
fn write_config(path: &Path, data: &Path, split: &Path, run_dir: &Path) {
    std::fs::write(
        path,
        format!(
            r#"
[data]
root = "{}"
split = "{}"

[protocol]
patch = [24, 24, 24]

[model]
channels = 8

[train]
epochs = 1
steps_per_epoch = 2
lr = 1e-3
val_every = 0

[run]
dir = "{}"
workers = 1
"#,
            data.display(),
            split.display(),
            run_dir.display()
        ),
    )
    .unwrap();
}

#[test]
fn readme_train_eval_predict_runs_as_written() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let case_dirs = cases(&data, 6, [30, 26, 25]);
    let ids: Vec<String> =
        mgsd_io::discover(&data).unwrap().cases.into_iter().map(|c| c.id).collect();
    // A split as `cargo xtask splits --k …` writes it: the held-out fold is the test part.
    let split = dir.path().join("split.json");
    std::fs::write(
        &split,
        serde_json::json!({
            "format_version": 1,
            "dataset": "synthetic",
            "method": { "kfold": { "k": 6, "seed": 0, "val_fraction": 0.2 } },
            "folds": [{ "train": ids[..4], "val": [ids[4]], "test": [ids[5]] }]
        })
        .to_string(),
    )
    .unwrap();
    let run_dir = dir.path().join("runs/tiny");
    let config = dir.path().join("tiny.toml");
    write_config(&config, &data, &split, &run_dir);

    // train (val_every = 0: validated once, at the end → best.safetensors)
    let (ok, stdout, stderr) = run(&["--quiet", "train", "--config", s(&config)]);
    assert!(ok, "train failed: {stderr}");
    assert!(stdout.contains("best validation mean Dice"), "{stdout}");
    let best = run_dir.join(files::BEST);
    assert!(best.exists(), "val_every = 0 must still write best.safetensors");
    let run_json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run_dir.join(files::RUN)).unwrap()).unwrap();
    assert_eq!(run_json["test_cases"], serde_json::json!([ids[5]]));
    assert_eq!(run_json["val_cases"], serde_json::json!([ids[4]]));

    // eval: the test part by default, and the table says what it scored.
    let out = dir.path().join("eval");
    let (ok, stdout, stderr) = run(&[
        "--quiet",
        "eval",
        "--checkpoint",
        s(&best),
        "--data",
        s(&data),
        "--split",
        s(&split),
        "--out",
        s(&out),
    ]);
    assert!(ok, "eval failed: {stderr}");
    assert!(stdout.contains("1 test cases") && stdout.contains("SHA-256"), "{stdout}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("eval.json")).unwrap()).unwrap();
    assert_eq!(report["cases"], serde_json::json!([ids[5]]));
    assert_eq!(report["provenance"]["part"], "test");
    assert_eq!(report["provenance"]["split_sha256"].as_str().unwrap().len(), 64);
    assert!(report["protocol"].as_str().unwrap().contains("ACN protocol"));
    // The checkpoint's ACN protocol keeps the literature's centre window and counts what it drops.
    assert!(report["outside_window"].is_object(), "{}", report["outside_window"]);

    // predict, with the README's flags.
    let seg = dir.path().join("patient_seg.nii.gz");
    let png = dir.path().join("patient_seg.png");
    let (ok, stdout, stderr) = run(&[
        "--quiet",
        "predict",
        "--checkpoint",
        s(&best),
        "--input",
        s(&case_dirs[5]),
        "--output",
        s(&seg),
        "--preview",
        s(&png),
    ]);
    assert!(ok, "predict failed: {stderr}");
    assert!(stdout.contains("sliding"), "predict covers the whole brain by default: {stdout}");
    assert!(seg.exists() && png.exists());

    // predict over a folder of patients, the README's second form.
    let segs = dir.path().join("segmentations");
    let (ok, stdout, stderr) = run(&[
        "--quiet",
        "predict",
        "--checkpoint",
        s(&best),
        "--input",
        s(&data),
        "--output",
        s(&segs),
        "--resample",
    ]);
    assert!(ok, "batch predict failed: {stdout}\n{stderr}");
    assert!(stdout.contains("6 of 6 cases segmented"), "{stdout}");
    let summary = std::fs::read_to_string(segs.join("summary.csv")).unwrap();
    assert_eq!(summary.lines().count(), 7, "{summary}");
    assert!(ids.iter().all(|id| segs.join(format!("{id}.nii.gz")).is_file()));

    // A split file without a test part (as k-fold files used to be) is refused, not replaced
    // by the validation cases.
    let old = dir.path().join("old-split.json");
    std::fs::write(
        &old,
        serde_json::json!({
            "format_version": 1, "dataset": "synthetic",
            "method": { "kfold": { "k": 5, "seed": 0 } },
            "folds": [{ "train": ids[..5], "val": [ids[5]], "test": [] }]
        })
        .to_string(),
    )
    .unwrap();
    let (ok, _, stderr) =
        run(&["--quiet", "eval", "--checkpoint", s(&best), "--data", s(&data), "--split", s(&old)]);
    assert!(
        !ok && stderr.contains("no test case") && stderr.contains("old-split.json"),
        "{stderr}"
    );
    let (ok, _, stderr) = run(&[
        "--quiet",
        "eval",
        "--checkpoint",
        s(&best),
        "--data",
        s(&data),
        "--split",
        s(&old),
        "--part",
        "val",
        "--out",
        s(&dir.path().join("eval-val")),
    ]);
    assert!(ok, "--part val knowingly: {stderr}");
}

/// A trained tiny checkpoint (24³ patches) and the case folder of a wide case (70 × 30 × 26).
fn tiny_checkpoint_and_wide_case(dir: &Path) -> (PathBuf, PathBuf) {
    train(&support::synthetic_config(&dir.join("run"), [24; 3]), &RunOptions::default()).unwrap();
    let wide = cases(&dir.join("wide"), 1, [70, 30, 26]);
    (dir.join("run").join(files::LAST), wide[0].clone())
}

#[test]
fn predict_covers_the_whole_brain_and_a_centre_window_says_what_it_drops() {
    let dir = tempfile::tempdir().unwrap();
    let (ckpt, case) = tiny_checkpoint_and_wide_case(dir.path());
    let flair = std::fs::read_dir(&case)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().contains("flair"))
        .unwrap();
    let brain = read_volume(&flair).unwrap();
    let [nx, ny, nz] = brain.shape;
    let opts = |name: &str, protocol: ProtocolArgs| PredictOptions {
        checkpoint: ckpt.clone(),
        inputs: vec![case.clone()],
        modalities: None,
        output: dir.path().join(format!("{name}/seg.nii.gz")),
        probabilities: Some(dir.path().join(name)),
        preview: None,
        protocol,
        grid: GridOptions::default(),
    };
    // x-slices outside a centred 24-voxel window.
    let outside = |i: usize| i < (nx - 24) / 2 || i >= (nx - 24) / 2 + 24;

    // Default: sliding windows over the brain box; every brain voxel gets a probability.
    let whole = predict(&opts("whole", ProtocolArgs::default()), &Device::Cpu).unwrap();
    assert!(whole.outside_window.is_none());
    assert!(whole.protocol.contains("sliding"), "{}", whole.protocol);
    let p = read_volume(&dir.path().join("whole/prob_ed.nii.gz")).unwrap();
    let mut brain_outside = 0;
    for (v, (&b, &q)) in brain.data.iter().zip(&p.data).enumerate() {
        if b != 0.0 {
            assert!(q > 0.0, "brain voxel {v} got no prediction");
            if outside(v / (ny * nz)) {
                brain_outside += 1;
            }
        }
    }
    assert!(brain_outside > 0, "the case must have brain outside a centre window");

    // `--window centre`: the literature's window; what it leaves out is counted and left 0.
    let centre = ProtocolArgs { window: Some(WindowKind::Centre), ..ProtocolArgs::default() };
    let c = predict(&opts("centre", centre), &Device::Cpu).unwrap();
    assert_eq!(c.outside_window.map(|(o, _)| o), Some(brain_outside));
    let p = read_volume(&dir.path().join("centre/prob_ed.nii.gz")).unwrap();
    for (v, &q) in p.data.iter().enumerate() {
        if outside(v / (ny * nz)) {
            assert_eq!(q, 0.0, "voxel {v} lies outside the centre window");
        }
    }

    // Flags alone choose any protocol: RFNet, a 16³ patch, uniform blending, mirror TTA.
    let rfnet = ProtocolArgs {
        protocol: Some(mgsd_train::config::Protocol::Rfnet),
        patch: Some([16; 3]),
        blend: Some(mgsd_train::config::Blend::Constant),
        tta: true,
        ..ProtocolArgs::default()
    };
    let r = predict(&opts("rfnet", rfnet), &Device::Cpu).unwrap();
    assert!(r.protocol.contains("RFNet") && r.protocol.contains("TTA"), "{}", r.protocol);
    assert_eq!(read_volume(&dir.path().join("rfnet/seg.nii.gz")).unwrap().shape, [nx, ny, nz]);
}

#[test]
fn a_patch_larger_than_every_training_volume_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = support::synthetic_config(&dir.path().join("run"), [24, 32, 24]);
    let e = format!("{:#}", train(&cfg, &RunOptions::default()).unwrap_err());
    assert!(e.contains("axis 1 (y)") && e.contains("Brats18_SYN_"), "{e}");
    assert!(!dir.path().join("run").join(files::LAST).exists());
}

#[test]
fn synthetic_validation_and_test_cases_are_disjoint_and_named_apart() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = Config::demo().unwrap();
    let s = cfg.data.synthetic.clone().unwrap();
    let mut small = cfg.clone();
    small.data.synthetic = Some(mgsd_train::config::SyntheticConfig { shape: [20, 20, 20], ..s });
    let splits = mgsd_train::train::resolve_data(&small, dir.path()).unwrap();
    let ids = |v: &[mgsd_io::CaseFiles]| v.iter().map(|c| c.id.clone()).collect::<Vec<_>>();
    let (train_ids, val, test) = (ids(&splits.train), ids(&splits.val), ids(&splits.test));
    assert_eq!((train_ids.len(), val.len(), test.len()), (16, 4, 6));
    let mut all: Vec<&String> = train_ids.iter().chain(&val).chain(&test).collect();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 26, "every case id is distinct across the three parts");
}
