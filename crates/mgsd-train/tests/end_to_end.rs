//! End-to-end on tiny synthetic cases: train → checkpoint → evaluate → predict, exact resume,
//! fault handling. Hermetic: the cases are generated in a temporary folder.

use candle_core::Device;
use mgsd_train::checkpoint;
use mgsd_train::config::Config;
use mgsd_train::data::CaseStore;
use mgsd_train::eval::{evaluate, EvalSettings};
use mgsd_train::model::unet_from_checkpoint;
use mgsd_train::predict::{predict, PredictOptions};
use mgsd_train::protocol::{ProtocolArgs, WindowKind};
use mgsd_train::scans::GridOptions;
use mgsd_train::train::{files, train, RunOptions, StopReason};
use std::collections::BTreeMap;
use std::path::Path;

/// A tiny configuration: 3 training, 1 validation and 1 test case of 30 × 26 × 25 voxels (not
/// multiples of 8: evaluation pads, prediction un-pads), 24³ patches, c = 8.
fn tiny(run_dir: &Path, epochs: usize, val_every: usize) -> Config {
    let text = format!(
        r#"
[data.synthetic]
train_cases = 3
val_cases = 1
test_cases = 1
shape = [30, 26, 25]
seed = 11

[protocol]
patch = [24, 24, 24]

[model]
channels = 8
dropout = 0.2

[train]
epochs = {epochs}
steps_per_epoch = 2
lr = 1e-3
val_every = {val_every}
seed = 5

[run]
dir = "{}"
workers = 2
queue = 2
"#,
        run_dir.display()
    );
    Config::from_toml(&text, "tiny test config").unwrap()
}

fn losses(v: &[(u64, BTreeMap<String, f64>)]) -> BTreeMap<u64, BTreeMap<String, u64>> {
    // Bit patterns: the comparison must be exact.
    v.iter().map(|(s, m)| (*s, m.iter().map(|(k, x)| (k.clone(), x.to_bits())).collect())).collect()
}

#[test]
fn train_checkpoint_evaluate_predict() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let cfg = tiny(&run, 2, 1);
    let out = train(&cfg, &RunOptions::default()).unwrap();
    assert_eq!(out.reason, StopReason::Finished);
    assert_eq!(out.steps, 4);
    for f in [files::CONFIG, files::RUN, files::METRICS, files::CURVES, files::LAST, files::BEST] {
        assert!(run.join(f).exists(), "{f} missing");
    }
    let metrics = std::fs::read_to_string(run.join(files::METRICS)).unwrap();
    assert_eq!(metrics.lines().filter(|l| l.starts_with("train,")).count(), 4);
    assert_eq!(
        metrics.lines().filter(|l| l.starts_with("val,")).count(),
        30,
        "15 subsets × 2 validations"
    );
    let run_json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join(files::RUN)).unwrap()).unwrap();
    assert_eq!(run_json["seed"], 5);
    assert!(run_json["git_commit"].is_string());

    // The checkpoint: reference names and training state.
    let ck = checkpoint::load(&run.join(files::LAST), &Device::Cpu).unwrap();
    for name in [
        "unet.conv1a.weight",
        "ema_model.conv1a.weight",
        "MMD.conv_down.weight",
        "Mutiaxis_fuse2.cat_conv.net.weight",
        "discriminator.0.weight",
        "optim.unet.conv1a.weight.m",
        "optim_d.discriminator.6.weight.v",
    ] {
        assert!(ck.tensors.contains_key(name), "{name} missing from the checkpoint");
    }
    assert_eq!(ck.meta().unwrap().step, 4);

    // Evaluate: 15 subsets × 3 regions.
    let unet = unet_from_checkpoint(&ck, &Device::Cpu).unwrap();
    let report = evaluate(
        &unet,
        &out.splits.test,
        &CaseStore::new(false, None),
        &EvalSettings::for_protocol(&cfg.protocol, false),
        &Device::Cpu,
    )
    .unwrap();
    assert_eq!(report.rows.len(), 15);
    assert_eq!(report.per_case.len(), 15);
    for r in &report.rows {
        assert!(r.dice.iter().all(|d| (0.0..=1.0).contains(d)));
        assert!(r.hd95.iter().all(|h| h.is_finite() && *h >= 0.0));
    }
    report.write(&run, "eval").unwrap();
    for f in ["eval.md", "eval.csv", "eval.json", "eval-cases.csv"] {
        assert!(run.join(f).exists());
    }

    // Predict on the held-out case folder: same grid and affine as the input.
    let case_dir = match &out.splits.test[0].images {
        mgsd_io::ImageSource::PerModality(m) => {
            m.values().next().unwrap().parent().unwrap().to_path_buf()
        }
        _ => unreachable!(),
    };
    let seg = dir.path().join("pred/seg.nii.gz");
    let opts = PredictOptions {
        checkpoint: run.join(files::LAST),
        inputs: vec![case_dir.clone()],
        modalities: None,
        output: seg.clone(),
        probabilities: Some(dir.path().join("pred/prob")),
        preview: Some(dir.path().join("pred/preview.png")),
        protocol: ProtocolArgs { window: Some(WindowKind::Centre), ..ProtocolArgs::default() },
        grid: GridOptions::default(),
    };
    let s = predict(&opts, &Device::Cpu).unwrap();
    assert_eq!(s.modalities.len(), 4);
    let input = mgsd_io::read_volume(
        &std::fs::read_dir(&case_dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.to_string_lossy().contains("flair"))
            .unwrap(),
    )
    .unwrap();
    let out_vol = mgsd_io::read_volume(&seg).unwrap();
    assert_eq!(out_vol.shape, input.shape);
    assert_eq!(out_vol.affine, input.affine);
    assert!(out_vol.data.iter().all(|&v| [0.0, 1.0, 2.0, 4.0].contains(&v)));
    assert!(dir.path().join("pred/prob/prob_et.nii.gz").exists());
    assert!(dir.path().join("pred/preview.png").exists());

    // Two modality files named explicitly, sliding windows.
    let files_in: Vec<_> =
        std::fs::read_dir(&case_dir).unwrap().map(|e| e.unwrap().path()).collect();
    let pick = |m: &str| {
        files_in
            .iter()
            .find(|p| p.to_string_lossy().ends_with(&format!("_{m}.nii.gz")))
            .unwrap()
            .clone()
    };
    let opts2 = PredictOptions {
        inputs: vec![pick("t1ce"), pick("flair")],
        modalities: Some(vec![mgsd_io::Modality::T1ce, mgsd_io::Modality::Flair]),
        output: dir.path().join("pred/seg2.nii"),
        probabilities: None,
        preview: None,
        protocol: ProtocolArgs::default(),
        ..opts
    };
    let s2 = predict(&opts2, &Device::Cpu).unwrap();
    assert_eq!(s2.modalities.to_string(), "FLAIR+T1ce");
    assert_eq!(mgsd_io::read_volume(&opts2.output).unwrap().shape, input.shape);
}

#[test]
fn resume_is_exact_after_kill_and_after_interrupt() {
    let dir = tempfile::tempdir().unwrap();
    // Uninterrupted: 3 epochs × 2 steps.
    let a = train(&tiny(&dir.path().join("a"), 3, 0), &RunOptions::default()).unwrap();
    assert_eq!(a.steps, 6);
    let la = losses(&a.losses);

    // Killed after step 3 (mid-epoch 2, nothing saved since step 2); a stray temporary file as
    // if the process died while writing a checkpoint.
    let b_dir = dir.path().join("b");
    let cfg_b = tiny(&b_dir, 3, 0);
    let b1 = train(&cfg_b, &RunOptions { kill_after: Some(3), ..RunOptions::default() }).unwrap();
    assert_eq!(b1.reason, StopReason::Killed);
    let lb1 = losses(&b1.losses);
    for s in 1..=3 {
        assert_eq!(lb1[&s], la[&s], "step {s} differs between two fresh runs with the same seed");
    }
    std::fs::write(b_dir.join(".last.safetensors.tmp-4242"), b"torn checkpoint").unwrap();
    let b2 = train(&cfg_b, &RunOptions { resume: Some(b_dir.clone()), ..RunOptions::default() })
        .unwrap();
    assert_eq!(b2.steps, 6);
    let lb = losses(&b2.losses);
    assert_eq!(
        lb.keys().copied().collect::<Vec<_>>(),
        vec![3, 4, 5, 6],
        "resumed from the step-2 checkpoint"
    );
    for s in 3..=6 {
        assert_eq!(lb[&s], la[&s], "step {s} differs after resume");
    }
    assert!(
        !b_dir.join(".last.safetensors.tmp-4242").exists(),
        "stray temporary cleaned by the next save"
    );
    let metrics = std::fs::read_to_string(b_dir.join(files::METRICS)).unwrap();
    assert_eq!(
        metrics.lines().filter(|l| l.starts_with("train,")).count(),
        6,
        "no duplicated rows after resume"
    );

    // Interrupted (Ctrl-C) after step 3: saved mid-epoch, resumes at step 4.
    let c_dir = dir.path().join("c");
    let cfg_c = tiny(&c_dir, 3, 0);
    let c1 =
        train(&cfg_c, &RunOptions { interrupt_after: Some(3), ..RunOptions::default() }).unwrap();
    assert_eq!((c1.reason, c1.steps), (StopReason::Interrupted, 3));
    let c2 = train(&cfg_c, &RunOptions { resume: Some(c_dir.clone()), ..RunOptions::default() })
        .unwrap();
    let lc = losses(&c2.losses);
    assert_eq!(lc.keys().copied().collect::<Vec<_>>(), vec![4, 5, 6]);
    for s in 4..=6 {
        assert_eq!(lc[&s], la[&s], "step {s} differs after an interrupt");
    }
    // Final weights identical, bit for bit.
    let wa = checkpoint::load(&dir.path().join("a").join(files::LAST), &Device::Cpu).unwrap();
    let wc = checkpoint::load(&c_dir.join(files::LAST), &Device::Cpu).unwrap();
    for name in [
        "unet.up1conv.weight",
        "ema_model.conv1a.weight",
        "optim.unet.ds1.weight.v",
        "discriminator.0.weight",
    ] {
        let x: Vec<f32> = wa.get(name).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let y: Vec<f32> = wc.get(name).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        assert!(x.iter().zip(&y).all(|(p, q)| p.to_bits() == q.to_bits()), "{name} differs");
    }
}

#[test]
fn nan_loss_stops_cleanly_and_keeps_the_last_good_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let cfg = tiny(&run, 3, 0);
    let err =
        train(&cfg, &RunOptions { inject_nan_at: Some(3), ..RunOptions::default() }).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("not finite at step 3") && msg.contains("last good checkpoint"), "{msg}");
    let ck = checkpoint::load(&run.join(files::LAST), &Device::Cpu).unwrap();
    assert_eq!(ck.meta().unwrap().step, 2);
    // And the run can continue from it.
    let out =
        train(&cfg, &RunOptions { resume: Some(run.clone()), ..RunOptions::default() }).unwrap();
    assert_eq!(out.steps, 6);
}

#[test]
fn errors_name_the_file_and_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let cfg = tiny(&run, 1, 0);
    train(&cfg, &RunOptions::default()).unwrap();

    // A second run into the same directory.
    let e = format!("{:#}", train(&cfg, &RunOptions::default()).unwrap_err());
    assert!(e.contains("already holds a run") && e.contains("--resume"), "{e}");

    // Resume with a configuration that changes the trajectory.
    let mut other = cfg.clone();
    other.train.lr = 0.5;
    let e = format!(
        "{:#}",
        train(&other, &RunOptions { resume: Some(run.clone()), ..RunOptions::default() })
            .unwrap_err()
    );
    assert!(e.contains("last.safetensors") && e.contains("another configuration"), "{e}");

    // A checkpoint made for another width.
    let ck = checkpoint::load(&run.join(files::LAST), &Device::Cpu).unwrap();
    let mut tensors: Vec<(String, candle_core::Tensor)> = ck.tensors.clone().into_iter().collect();
    for (k, t) in tensors.iter_mut() {
        if k == "unet.conv1b.conv1.weight" {
            *t =
                candle_core::Tensor::zeros((16, 8, 3, 3, 3), candle_core::DType::F32, &Device::Cpu)
                    .unwrap();
        }
    }
    let bad = dir.path().join("bad.safetensors");
    checkpoint::save(&bad, &tensors, ck.meta().unwrap()).unwrap();
    let e = format!(
        "{:#}",
        unet_from_checkpoint(&checkpoint::load(&bad, &Device::Cpu).unwrap(), &Device::Cpu)
            .unwrap_err()
    );
    assert!(e.contains("bad.safetensors") && e.contains("unet.conv1b.conv1.weight"), "{e}");

    // A file that is not a checkpoint.
    let junk = dir.path().join("junk.safetensors");
    std::fs::write(&junk, b"not a safetensors file").unwrap();
    let e = format!("{:#}", checkpoint::load(&junk, &Device::Cpu).unwrap_err());
    assert!(e.contains("junk.safetensors"), "{e}");

    // Missing data.
    let mut missing = cfg.clone();
    missing.data.synthetic = None;
    missing.data.root = Some(dir.path().join("no-such-dataset"));
    missing.run.dir = dir.path().join("run2");
    let e = format!("{:#}", train(&missing, &RunOptions::default()).unwrap_err());
    assert!(e.contains("no-such-dataset"), "{e}");

    // bf16 on the CPU: a clear error before anything is written.
    let mut bf16 = cfg.clone();
    bf16.run.precision = mgsd_nn::ConvPrecision::Bf16;
    bf16.run.dir = dir.path().join("run-bf16");
    let e = format!("{:#}", train(&bf16, &RunOptions::default()).unwrap_err());
    assert!(e.contains("needs a CUDA device"), "{e}");
    assert!(!bf16.run.dir.exists(), "a refused run left {} behind", bf16.run.dir.display());

    // Predict with an input that does not exist.
    let opts = PredictOptions {
        checkpoint: run.join(files::LAST),
        inputs: vec![dir.path().join("nowhere_t1.nii.gz")],
        modalities: None,
        output: dir.path().join("x.nii.gz"),
        probabilities: None,
        preview: None,
        protocol: ProtocolArgs::default(),
        grid: GridOptions::default(),
    };
    let e = format!("{:#}", predict(&opts, &Device::Cpu).unwrap_err());
    assert!(e.contains("nowhere_t1.nii.gz"), "{e}");
}

#[test]
fn cli_reports_errors_without_panicking() {
    let dir = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_mgsd-train");
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[data]\nroot = \"x\"\n[train]\nlearning_rate = 1\n").unwrap();
    let out =
        std::process::Command::new(bin).args(["train", "--config"]).arg(&bad).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("bad.toml") && err.contains("learning_rate") && !err.contains("panicked"),
        "{err}"
    );

    let out = std::process::Command::new(bin)
        .args(["eval", "--checkpoint"])
        .arg(dir.path().join("none.safetensors"))
        .arg("--data")
        .arg(dir.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("none.safetensors") && !err.contains("panicked"),
        "{err}"
    );

    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        format!(
            "[data]\nroot = \"{}\"\n[run]\ndir = \"{}\"\n",
            dir.path().display(),
            dir.path().join("r").display()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(bin)
        .args(["--device", "cuda:0", "train", "--config"])
        .arg(&good)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    #[cfg(not(feature = "cuda"))]
    assert!(!out.status.success() && err.contains("--features cuda"), "{err}");
    // A CUDA build trains, or says why the device did not open; it never panics.
    #[cfg(feature = "cuda")]
    assert!(!err.contains("panicked"), "{err}");
}
