//! What real scans do to a case: modalities on different grids (the error says where and by
//! how much), NaN voxels (counted), folders of patients (case folders and loose files).

use mgsd_io::nifti::{write_volume, OutputType};
use mgsd_io::{discover_batch, discover_case, Error, Grid, Modality, SignalStats, Volume};
use std::path::Path;

fn volume(shape: [usize; 3], origin_y: f64) -> Volume {
    let n = shape.iter().product();
    let mut v = Volume::new((0..n).map(|i| (i % 97) as f32).collect(), shape).unwrap();
    v.affine = [
        [-1.0, 0.0, 0.0, 0.0],
        [0.0, -1.0, 0.0, 239.0 + origin_y],
        [0.0, 0.0, 1.0, 0.0],
        [0.0, 0.0, 0.0, 1.0],
    ];
    v
}

fn write(dir: &Path, name: &str, v: &Volume) {
    write_volume(&dir.join(name), v, OutputType::Float32).unwrap();
}

#[test]
fn grid_mismatch_names_both_affines_and_the_displacement() {
    let dir = tempfile::tempdir().unwrap();
    let case = dir.path().join("P1");
    std::fs::create_dir(&case).unwrap();
    write(&case, "P1_t1.nii.gz", &volume([6, 5, 4], 0.0));
    write(&case, "P1_flair.nii.gz", &volume([6, 5, 4], 7.0));
    let err = discover_case(&case).unwrap().load().unwrap_err();
    let msg = err.to_string();
    match &err {
        Error::GridMismatch { max_corner_mm, .. } => assert!((max_corner_mm - 7.0).abs() < 1e-9),
        other => panic!("expected GridMismatch, got {other:?}"),
    }
    for needle in [
        "P1_t1.nii.gz",
        "P1_flair.nii.gz",
        "[[-1, 0, 0, 0], [0, -1, 0, 239], [0, 0, 1, 0]]",
        "[[-1, 0, 0, 0], [0, -1, 0, 246], [0, 0, 1, 0]]",
        "7.00 mm",
    ] {
        assert!(msg.contains(needle), "{msg:?} should mention {needle:?}");
    }
}

#[test]
fn images_on_different_grids_load_for_resampling() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "P1_t1.nii.gz", &volume([6, 5, 4], 0.0));
    write(dir.path(), "P1_t2.nii.gz", &volume([3, 3, 2], 0.0));
    let files = discover_case(dir.path()).unwrap();
    let images = files.load_images().unwrap();
    assert_eq!(images[&Modality::T2].shape, [3, 3, 2]);
    assert!(files.file_of(Modality::T2).ends_with("P1_t2.nii.gz"));
}

#[test]
fn nan_voxels_survive_reading_and_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let mut v = volume([4, 4, 4], 0.0);
    v.data[3] = f32::NAN;
    v.data[7] = f32::INFINITY;
    write(dir.path(), "x_flair.nii", &v);
    let back = mgsd_io::read_volume(&dir.path().join("x_flair.nii")).unwrap();
    let s = SignalStats::of(&back.data);
    assert_eq!((s.nan, s.infinite), (1, 1));
    assert!(s.has_signal());
    let all_nan = SignalStats::of(&vec![f32::NAN; 64]);
    assert_eq!(all_nan.why_empty().as_deref(), Some("every voxel is NaN"));
}

#[test]
fn a_batch_mixes_case_folders_and_loose_files() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let v = volume([4, 4, 4], 0.0);
    std::fs::create_dir(root.join("A1")).unwrap();
    write(&root.join("A1"), "A1_t1ce.nii.gz", &v);
    write(&root.join("A1"), "A1_flair.nii.gz", &v);
    write(root, "B2_t1.nii.gz", &v);
    write(root, "B2-t2f.nii.gz", &v);
    write(root, "C3_t2.nii", &v);
    write(root, "notes_x.nii.gz", &v); // not a modality: reported, skipped
    std::fs::write(root.join("README.txt"), "not an image").unwrap();
    let batch = discover_batch(root).unwrap();
    let ids: Vec<&str> = batch.cases.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids, ["A1", "B2", "C3"]);
    assert_eq!(batch.cases[1].modalities().to_string(), "FLAIR+T1");
    assert!(batch.problems.iter().any(|p| p.contains("notes_x.nii.gz")), "{:?}", batch.problems);

    // Two cases with one id are an error naming both.
    write(root, "A1_t2.nii.gz", &v);
    let err = discover_batch(root).unwrap_err().to_string();
    assert!(err.contains("A1") && err.contains("appears twice"), "{err}");

    // A folder with nothing to segment says what it looked for.
    let empty = tempfile::tempdir().unwrap();
    let err = discover_batch(empty.path()).unwrap_err().to_string();
    assert!(err.contains("no case to segment"), "{err}");
    assert!(discover_batch(&root.join("missing")).is_err());
}

#[test]
fn voxel_volume_in_ml() {
    let mut v = volume([2, 2, 2], 0.0);
    v.affine[2][2] = 2.5;
    assert!((Grid::of(&v).voxel_ml() - 0.0025).abs() < 1e-12);
}
