//! `predict` on scans as they come: a folder of patients where one file is corrupt, one T2 is
//! on a 2 mm grid turned 20°, one FLAIR is all NaN; outputs checked before any work; absent
//! modalities; grid mismatches that say why; logs without colour codes when not on a terminal.
//! Hermetic: a tiny checkpoint is trained once and cases are generated in temporary folders.

mod support;

use candle_core::Device;
use mgsd_io::nifti::{write_volume, OutputType};
use mgsd_io::synth::oblique_copy;
use mgsd_io::{read_volume, Case, Modality, SynthConfig, Synthesizer, Volume};
use mgsd_train::predict::{predict, PredictOptions};
use mgsd_train::protocol::ProtocolArgs;
use mgsd_train::scans::GridOptions;
use mgsd_train::train::{files, train, RunOptions};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

const BIN: &str = env!("CARGO_BIN_EXE_mgsd-train");
const SHAPE: [usize; 3] = [30, 26, 25];

/// A tiny trained checkpoint (24³ patches), made once per test run.
fn checkpoint() -> &'static Path {
    static CKPT: OnceLock<PathBuf> = OnceLock::new();
    CKPT.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("real_scans_ckpt");
        let _ = std::fs::remove_dir_all(&dir);
        let cfg = support::synthetic_config(&dir.join("run"), [24; 3]);
        train(&cfg, &RunOptions::default()).unwrap();
        dir.join("run").join(files::LAST)
    })
}

/// A synthetic case on a 1 mm grid (the generator keeps the BraTS field of view, so a tiny
/// case has 8 mm voxels; scanners' 1 mm is what a 2 mm oblique T2 is coarser than).
fn synthetic(seed: u64, id: &str) -> Case {
    let mut case = Synthesizer::new(SynthConfig::new(seed, SHAPE)).unwrap().generate(id).unwrap();
    for v in case.images.values_mut() {
        v.spacing = [1.0; 3];
        v.affine = mgsd_io::synth::brats_affine(SHAPE, [1.0; 3]);
    }
    case
}

/// Writes the images of `case` as `<dir>/<id>_<modality>.nii.gz`, except `skip`.
fn write_case(dir: &Path, case: &Case, skip: &[Modality]) {
    std::fs::create_dir_all(dir).unwrap();
    for (m, v) in &case.images {
        if !skip.contains(m) {
            let path = dir.join(format!("{}_{}.nii.gz", case.id, m.name()));
            write_volume(&path, v, OutputType::Float32).unwrap();
        }
    }
}

fn opts(input: Vec<PathBuf>, output: PathBuf) -> PredictOptions {
    PredictOptions {
        checkpoint: checkpoint().to_path_buf(),
        inputs: input,
        modalities: None,
        output,
        probabilities: None,
        preview: None,
        protocol: ProtocolArgs::default(),
        grid: GridOptions::default(),
    }
}

/// Every file under `dir`, recursively.
fn all_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(all_files(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn csv_rows(path: &Path) -> Vec<Vec<String>> {
    // Fields here never hold quoted commas except the warnings column, which is last but two.
    let text = std::fs::read_to_string(path).unwrap();
    let mut rows = Vec::new();
    for line in text.lines().skip(1) {
        let mut fields = Vec::new();
        let (mut cur, mut quoted) = (String::new(), false);
        for ch in line.chars() {
            match ch {
                '"' => quoted = !quoted,
                ',' if !quoted => fields.push(std::mem::take(&mut cur)),
                c => cur.push(c),
            }
        }
        fields.push(cur);
        rows.push(fields);
    }
    rows
}

#[test]
fn a_folder_of_five_patients_with_a_corrupt_an_oblique_and_an_empty_case() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("patients");
    // P1: a plain case folder.
    write_case(&input.join("P1"), &synthetic(1, "P1"), &[]);
    // P2: its T1 is not a NIfTI file any more (a failed transfer).
    write_case(&input.join("P2"), &synthetic(2, "P2"), &[]);
    std::fs::write(input.join("P2/P2_t1.nii.gz"), b"\x1f\x8b truncated").unwrap();
    // P3: T2 acquired on a 2 mm grid turned 20 degrees.
    let p3 = synthetic(3, "P3");
    write_case(&input.join("P3"), &p3, &[Modality::T2]);
    let oblique = oblique_copy(&p3.images[&Modality::T2], 2.0, 20.0).unwrap();
    write_volume(&input.join("P3/P3_t2.nii.gz"), &oblique, OutputType::Float32).unwrap();
    // P4: loose files in the input folder, FLAIR all NaN.
    let mut p4 = synthetic(4, "P4");
    p4.images.get_mut(&Modality::Flair).unwrap().data.fill(f32::NAN);
    write_case(&input, &p4, &[]);
    // P5: two modalities only.
    write_case(&input.join("P5"), &synthetic(5, "P5"), &[Modality::T1, Modality::T2]);
    let ckpt = checkpoint();

    let out = dir.path().join("out");
    let run = Command::new(BIN)
        .args(["--quiet", "predict", "--resample", "--checkpoint"])
        .arg(ckpt)
        .arg("--input")
        .arg(&input)
        .arg("--output")
        .arg(&out)
        .arg("--preview")
        .arg(dir.path().join("previews"))
        .output()
        .unwrap();
    let (stdout, stderr) =
        (String::from_utf8_lossy(&run.stdout), String::from_utf8_lossy(&run.stderr));
    assert!(!run.status.success(), "a failed case must fail the run\n{stdout}\n{stderr}");
    assert!(stdout.contains("4 of 5 cases segmented"), "{stdout}");
    assert!(stdout.contains("1 failed:") && stdout.contains("  P2:"), "{stdout}");
    assert!(stdout.contains("P2_t1.nii.gz"), "the failure names the file: {stdout}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!stderr.contains('\u{1b}'), "colour codes in a non-terminal stderr: {stderr:?}");
    assert!(!stderr.contains(" INFO "), "--quiet leaves warnings and errors only: {stderr}");
    assert!(stderr.contains("WARN"), "the NaN FLAIR is a warning even with --quiet: {stderr}");

    let rows = csv_rows(&out.join("summary.csv"));
    let ids: Vec<&str> = rows.iter().map(|r| r[0].as_str()).collect();
    assert_eq!(ids, ["P1", "P2", "P3", "P4", "P5"]);
    for r in &rows {
        assert_eq!(r.len(), 8, "{r:?}");
        let failed = r[0] == "P2";
        assert_eq!(r[7].is_empty(), !failed, "{r:?}");
        if !failed {
            let wt: f64 = r[2].parse().unwrap();
            let tc: f64 = r[3].parse().unwrap();
            let et: f64 = r[4].parse().unwrap();
            assert!(wt >= tc && tc >= et && et >= 0.0, "{r:?}");
            assert!(r[6].parse::<f64>().unwrap() > 0.0, "{r:?}");
        }
    }
    assert_eq!(rows[0][1], "FLAIR+T1ce+T1+T2");
    assert!(rows[2][5].contains("T2 resampled"), "{:?}", rows[2]);
    assert_eq!(rows[3][1], "T1ce+T1+T2", "the all-NaN FLAIR is treated as missing");
    assert!(
        rows[3][5].contains("FLAIR") && rows[3][5].contains("every voxel is NaN"),
        "{:?}",
        rows[3]
    );
    assert_eq!(rows[4][1], "FLAIR+T1ce");

    // Output grids: each label map lies on its case's reference grid (T1ce: smallest voxels).
    for id in ["P1", "P3", "P4", "P5"] {
        let seg = read_volume(&out.join(format!("{id}.nii.gz"))).unwrap();
        let t1ce = if id == "P4" {
            read_volume(&input.join("P4_t1ce.nii.gz")).unwrap()
        } else {
            read_volume(&input.join(format!("{id}/{id}_t1ce.nii.gz"))).unwrap()
        };
        assert!(seg.same_grid(&t1ce), "{id}: {:?} vs {:?}", seg.affine, t1ce.affine);
        assert!(seg.data.iter().all(|v| [0.0, 1.0, 2.0, 4.0].contains(v)), "{id}");
        assert!(dir.path().join(format!("previews/{id}.png")).is_file(), "{id}");
    }
    // Nothing of the failed case, and no temporary file anywhere.
    assert!(!out.join("P2.nii.gz").exists());
    assert!(!dir.path().join("previews/P2.png").exists());
    for f in all_files(dir.path()) {
        assert!(!f.to_string_lossy().contains("partial"), "left behind: {}", f.display());
    }

    // Without --resample the oblique T2 is refused with its cause and the way out.
    let out2 = dir.path().join("out2");
    let run = Command::new(BIN)
        .args(["predict", "--checkpoint"])
        .arg(ckpt)
        .arg("--input")
        .arg(&input)
        .arg("--output")
        .arg(&out2)
        .output()
        .unwrap();
    let (stdout, stderr) =
        (String::from_utf8_lossy(&run.stdout), String::from_utf8_lossy(&run.stderr));
    assert!(!run.status.success());
    assert!(stdout.contains("2 failed:") && stdout.contains("  P3:"), "{stdout}");
    assert!(stdout.contains("--resample") && stdout.contains("mm apart"), "{stdout}");
    assert!(!out2.join("P3.nii.gz").exists() && out2.join("P1.nii.gz").exists());
    // Start-up lines state facts: the kernels, chosen how, and the threads.
    assert!(stderr.contains("CPU device:") && stderr.contains("threads ("), "{stderr}");
    assert!(
        stderr.contains("auto-detected") || stderr.contains("MGSD_CPU_KERNELS=portable"),
        "{stderr}"
    );
    assert!(!stderr.contains('\u{1b}'), "{stderr:?}");
}

#[test]
fn outputs_are_checked_before_any_work_and_never_left_half_written() {
    let dir = tempfile::tempdir().unwrap();
    let case = dir.path().join("C1");
    write_case(&case, &synthetic(7, "C1"), &[]);
    let blocker = dir.path().join("not_a_folder");
    std::fs::write(&blocker, "x").unwrap();
    let mut o = opts(vec![case.clone()], dir.path().join("a/seg.nii.gz"));
    o.preview = Some(blocker.join("p.png"));
    o.probabilities = Some(dir.path().join("a/prob"));
    // The checkpoint does not exist either: the output check must come first.
    o.checkpoint = dir.path().join("missing.safetensors");
    let e = format!("{:#}", predict(&o, &Device::Cpu).unwrap_err());
    assert!(e.contains("p.png"), "{e}");
    assert!(!dir.path().join("a/seg.nii.gz").exists());
    assert!(!dir.path().join("a/prob/prob_ed.nii.gz").exists());

    // A preview folder that exists: everything is written, nothing temporary remains.
    o.checkpoint = checkpoint().to_path_buf();
    o.preview = Some(dir.path().join("a/p.png"));
    let s = predict(&o, &Device::Cpu).unwrap();
    assert_eq!(s.written.len(), 5, "{:?}", s.written);
    for f in all_files(dir.path()) {
        assert!(!f.to_string_lossy().contains("partial"), "left behind: {}", f.display());
    }
    let [wt, tc, et] = s.volumes_ml;
    assert!(wt >= tc && tc >= et && et >= 0.0);
}

#[test]
fn an_absent_requested_modality_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let case = dir.path().join("C2");
    write_case(&case, &synthetic(8, "C2"), &[Modality::T1ce]);
    let mut o = opts(vec![case], dir.path().join("seg.nii.gz"));
    o.modalities = Some(vec![Modality::T1ce, Modality::Flair]);
    let e = format!("{:#}", predict(&o, &Device::Cpu).unwrap_err());
    assert!(e.contains("T1ce") && e.contains("not found"), "{e}");
    assert!(!dir.path().join("seg.nii.gz").exists());
}

#[test]
fn nan_voxels_are_reported_and_an_empty_modality_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let case = dir.path().join("C3");
    let mut c = synthetic(9, "C3");
    c.images.get_mut(&Modality::Flair).unwrap().data.fill(f32::NAN);
    let t2 = c.images.get_mut(&Modality::T2).unwrap();
    t2.data[..10].fill(f32::NAN);
    write_case(&case, &c, &[]);
    let s = predict(&opts(vec![case], dir.path().join("seg.nii.gz")), &Device::Cpu).unwrap();
    assert!(!s.modalities.contains(Modality::Flair), "{}", s.modalities);
    assert!(s.warnings.iter().any(|w| w.contains("FLAIR") && w.contains("no signal")));
    assert!(
        s.warnings.iter().any(|w| w.contains("C3_t2.nii.gz") && w.contains("10 of")),
        "{:?}",
        s.warnings
    );
}

#[test]
fn a_grid_mismatch_names_both_affines_and_suggests_resample() {
    let dir = tempfile::tempdir().unwrap();
    let case = dir.path().join("C4");
    let mut c = synthetic(10, "C4");
    c.images.get_mut(&Modality::T2).unwrap().affine[1][3] += 7.0;
    write_case(&case, &c, &[]);
    let e = format!(
        "{:#}",
        predict(&opts(vec![case.clone()], dir.path().join("seg.nii.gz")), &Device::Cpu)
            .unwrap_err()
    );
    for needle in
        ["C4_t1ce.nii.gz", "C4_t2.nii.gz", "7.00 mm apart", "--resample", "[[-1, 0, 0, 0]"]
    {
        assert!(e.contains(needle), "{e:?} should mention {needle:?}");
    }
    // With --resample and --spacing 2 the case is segmented on its T1ce grid.
    let mut o = opts(vec![case.clone()], dir.path().join("seg.nii.gz"));
    o.grid = GridOptions { resample: true, reference: None, spacing: Some(2.0) };
    let s = predict(&o, &Device::Cpu).unwrap();
    let seg: Volume = read_volume(&dir.path().join("seg.nii.gz")).unwrap();
    let t1ce = read_volume(&case.join("C4_t1ce.nii.gz")).unwrap();
    assert!(seg.same_grid(&t1ce));
    assert_eq!(s.shape, SHAPE);
}
