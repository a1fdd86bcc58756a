//! Our writer read back by our reader: voxels, geometry and source header survive, and the
//! header choices match what nibabel does when it saves (see `nifti::write`).
//!
//! Whether nibabel reads our files too is checked by hand with
//! `scripts/nibabel_fixtures.py --check-written DIR` (not in CI: it needs Python).

use std::path::Path;

use mgsd_io::nifti::{
    read_channels, read_header, read_volume, write_channels, write_labels, write_volume, OutputType,
};
use mgsd_io::Volume;

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/nibabel").join(name)
}

fn bits(d: &[f32]) -> Vec<u32> {
    d.iter().map(|x| x.to_bits()).collect()
}

/// An oblique, anisotropic volume made in memory (no source header).
fn oblique(shape: [usize; 3]) -> Volume {
    let n = shape.iter().product::<usize>();
    let data = (0..n).map(|i| ((i * 7919) % 1000) as f32 * 0.37 - 100.0).collect();
    let mut v = Volume::new(data, shape).unwrap();
    let (c, s) = (0.2f64.cos(), 0.2f64.sin());
    v.affine = [
        [-1.2 * c, -0.9 * s, 0.0, 91.5],
        [-1.2 * s, 0.9 * c, 0.0, -126.0],
        [0.0, 0.0, 2.5, -72.25],
        [0.0, 0.0, 0.0, 1.0],
    ];
    v.spacing = [1.2, 0.9, 2.5];
    v
}

#[test]
fn fixtures_survive_a_float32_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    for name in [
        "anatomical.nii",
        "reoriented_anat_moved.nii",
        "resampled_anat_moved.nii",
        "standard.nii.gz",
        "nib_qform_only.nii",
        "nib_no_xform.nii",
        "nib_nifti2_be_f64_ext.nii",
        "nib_int32_be_scaled.nii",
    ] {
        let src = read_volume(&fixture(name)).unwrap();
        let src_info = read_header(&fixture(name)).unwrap();
        for ext in ["nii", "nii.gz"] {
            let out = dir.path().join(format!("{name}.out.{ext}"));
            write_volume(&out, &src, OutputType::Float32).unwrap();
            let back = read_volume(&out).unwrap();
            let info = read_header(&out).unwrap();
            assert_eq!(bits(&back.data), bits(&src.data), "{name} {ext}");
            assert_eq!(back.shape, src.shape, "{name}");
            assert_eq!(back.spacing, src.spacing, "{name}");
            assert_eq!(back.affine, src.affine, "{name}: affine must be kept exactly");
            assert_eq!(back.source, src.source, "{name}: source header must be kept");
            assert_eq!(
                (info.qform_code, info.sform_code),
                (src_info.qform_code, src_info.sform_code)
            );
            assert_eq!(info.version, src_info.version, "{name}");
            assert_eq!(info.datatype, "float32");
            assert_eq!((info.scl_slope, info.scl_inter), (1.0, 0.0));
        }
    }
}

#[test]
fn new_volume_is_saved_as_nibabel_saves_a_new_image() {
    // nibabel: Nifti1Image(data, affine) saves sform_code 2 (aligned), qform_code 0 (unknown)
    // with the qform parameters filled in, zooms from the affine, xyzt_units 0.
    let dir = tempfile::tempdir().unwrap();
    let v = oblique([7, 6, 5]);
    let out = dir.path().join("new.nii.gz");
    write_volume(&out, &v, OutputType::Float32).unwrap();
    let info = read_header(&out).unwrap();
    assert_eq!((info.version, info.qform_code, info.sform_code), (1, 0, 2));
    assert_eq!(info.pixdim[0], -1.0, "x-flipped affine has qfac -1");
    for (z, want) in info.pixdim[1..4].iter().zip([1.2, 0.9, 2.5]) {
        assert!((z - want).abs() < 1e-6, "{:?}", info.pixdim);
    }
    let back = read_volume(&out).unwrap();
    assert_eq!(bits(&back.data), bits(&v.data));
    for (a, b) in back.affine.iter().flatten().zip(v.affine.iter().flatten()) {
        assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0), "{:?} vs {:?}", back.affine, v.affine);
    }
    // The qform, although code 0, describes the same grid.
    let q = mgsd_io::nifti::affine::qform_affine(1, info.quatern, info.qoffset, &info.pixdim);
    for (a, b) in q.iter().flatten().zip(v.affine.iter().flatten()) {
        assert!((a - b).abs() <= 1e-4, "{q:?}");
    }
}

#[test]
fn changed_affine_goes_to_the_sform_with_code_2() {
    let dir = tempfile::tempdir().unwrap();
    let mut v = read_volume(&fixture("anatomical.nii")).unwrap(); // qform 2, sform 2
    v.affine[0][3] += 10.0; // as after a crop
    let out = dir.path().join("moved.nii");
    write_volume(&out, &v, OutputType::Float32).unwrap();
    let info = read_header(&out).unwrap();
    assert_eq!((info.qform_code, info.sform_code), (0, 2));
    assert_eq!(read_volume(&out).unwrap().affine, v.affine);
}

#[test]
fn integer_outputs_round_half_to_even_and_saturate() {
    let dir = tempfile::tempdir().unwrap();
    let data =
        vec![-40000.0, -1.5, -0.5, 0.5, 1.5, 2.5, 254.6, 300.0, f32::NAN, 40000.0, 7.0, 3.49];
    let v = Volume::new(data, [2, 3, 2]).unwrap();
    let out = dir.path().join("i16.nii");
    write_volume(&out, &v, OutputType::Int16).unwrap();
    let back = read_volume(&out).unwrap();
    assert_eq!(read_header(&out).unwrap().datatype, "int16");
    let want16 = [-32768.0, -2.0, -0.0, 0.0, 2.0, 2.0, 255.0, 300.0, 0.0, 32767.0, 7.0, 3.0];
    assert_eq!(back.data, want16);
    let out = dir.path().join("u8.nii.gz");
    write_volume(&out, &v, OutputType::Uint8).unwrap();
    let back = read_volume(&out).unwrap();
    assert_eq!(read_header(&out).unwrap().datatype, "uint8");
    assert_eq!(back.data, [0.0, 0.0, 0.0, 0.0, 2.0, 2.0, 255.0, 255.0, 0.0, 255.0, 7.0, 3.0]);
}

#[test]
fn labels_are_written_as_uint8_on_the_grid() {
    let dir = tempfile::tempdir().unwrap();
    let grid = read_volume(&fixture("anatomical.nii")).unwrap();
    let labels: Vec<u8> = (0..grid.len()).map(|i| [0u8, 1, 2, 4][i % 4]).collect();
    let out = dir.path().join("seg.nii.gz");
    write_labels(&out, &labels, &grid).unwrap();
    let info = read_header(&out).unwrap();
    assert_eq!((info.datatype, info.scl_slope, info.scl_inter), ("uint8", 1.0, 0.0));
    let back = read_volume(&out).unwrap();
    assert!(back.data.iter().zip(&labels).all(|(a, &b)| *a == f32::from(b)));
    assert_eq!(back.affine, grid.affine);
    assert_eq!((info.qform_code, info.sform_code), (2, 2));
    assert!(write_labels(&out, &labels[1..], &grid).is_err(), "wrong length is an error");
}

#[test]
fn channels_round_trip_as_one_4d_file() {
    let dir = tempfile::tempdir().unwrap();
    let a = oblique([5, 4, 3]);
    let b = a.with_data(a.data.iter().map(|x| -x).collect()).unwrap();
    let c = a.with_data(a.data.iter().map(|x| x * 0.5).collect()).unwrap();
    let out = dir.path().join("msd.nii.gz");
    write_channels(&out, &[&a, &b, &c], OutputType::Float32).unwrap();
    assert_eq!(read_header(&out).unwrap().shape, vec![5, 4, 3, 3]);
    let back = read_channels(&out).unwrap();
    assert_eq!(back.len(), 3);
    for (got, want) in back.iter().zip([&a, &b, &c]) {
        assert_eq!(bits(&got.data), bits(&want.data));
        assert!(got.same_grid(want));
    }
    assert!(read_volume(&out).is_err(), "read_volume refuses several volumes");
    assert!(write_channels(&out, &[], OutputType::Float32).is_err());
    let other = oblique([5, 4, 2]);
    assert!(write_channels(&out, &[&a, &other], OutputType::Float32).is_err());
}

#[test]
fn inconsistent_volumes_are_refused_not_panicked_on() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("bad.nii");
    let mut v = oblique([3, 3, 3]);
    v.data.pop();
    assert!(write_volume(&out, &v, OutputType::Float32).is_err());
    let mut v = oblique([3, 3, 3]);
    v.shape = [0, 3, 9];
    assert!(write_volume(&out, &v, OutputType::Int16).is_err());
    assert!(write_labels(&out, &[], &v).is_err());
    assert!(!out.exists());
}

#[test]
fn wide_volumes_are_written_as_nifti2() {
    let dir = tempfile::tempdir().unwrap();
    let v = Volume::new((0..40_000).map(|i| i as f32).collect(), [40_000, 1, 1]).unwrap();
    let out = dir.path().join("wide.nii");
    write_volume(&out, &v, OutputType::Float32).unwrap();
    assert_eq!(read_header(&out).unwrap().version, 2);
    assert_eq!(read_volume(&out).unwrap().data, v.data);
}

#[test]
fn failed_write_names_the_file_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("no/such/dir/x.nii.gz");
    let err = write_volume(&out, &oblique([2, 2, 2]), OutputType::Float32).unwrap_err();
    assert!(err.to_string().contains("x.nii.gz"), "{err}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

/// Run by hand to let nibabel judge our writer:
/// `MGSD_NIFTI_OUT=/tmp/ours cargo test -p mgsd-io --test nibabel_roundtrip -- --ignored`
/// then `python scripts/nibabel_fixtures.py --check-written /tmp/ours`, which compares what
/// nibabel reads from each file with `expected.json` for the fixture of the same name.
#[test]
#[ignore = "writes files for scripts/nibabel_fixtures.py --check-written"]
fn write_files_for_nibabel() {
    let Some(dir) = std::env::var_os("MGSD_NIFTI_OUT") else {
        return;
    };
    let dir = Path::new(&dir);
    std::fs::create_dir_all(dir).unwrap();
    let text = std::fs::read_to_string(fixture("expected.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    for name in json["files"].as_object().unwrap().keys() {
        for (i, v) in mgsd_io::nifti::read_channels(&fixture(name)).unwrap().iter().enumerate() {
            let out = dir.join(format!("{i}_{name}"));
            write_volume(&out, v, OutputType::Float32).unwrap();
        }
    }
    write_volume(&dir.join("new_oblique.nii.gz"), &oblique([7, 6, 5]), OutputType::Int16).unwrap();
}
