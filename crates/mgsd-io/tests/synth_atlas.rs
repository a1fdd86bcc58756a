//! Synthetic cases on the shipped SRI24 atlas: at BraTS size and resampled.

use mgsd_io::labels::ENHANCING;
use mgsd_io::synth::{
    load_atlas_volume, Anatomy, SynthConfig, Synthesizer, BRATS_SHAPE, SRI24_T1_PATH,
};
use mgsd_io::Modality;
use std::path::Path;

#[test]
fn brats_size_case_on_the_atlas() {
    let case = Synthesizer::new(SynthConfig::brats(4)).unwrap().generate("atlas").unwrap();
    let t1ce = &case.images[&Modality::T1ce];
    assert_eq!(t1ce.shape, BRATS_SHAPE);
    assert_eq!(t1ce.spacing, [1.0; 3]);
    let brain = t1ce.data.iter().filter(|&&v| v != 0.0).count();
    // The SRI24 brain has 1 451 706 voxels; a few of the darkest rim voxels are dropped.
    assert!((1_400_000..=1_451_706).contains(&brain), "{brain}");
    let labels = case.label.as_ref().unwrap();
    let et: Vec<f32> =
        t1ce.data.iter().zip(labels).filter(|(_, &l)| l == ENHANCING).map(|(&v, _)| v).collect();
    let healthy: Vec<f32> = t1ce
        .data
        .iter()
        .zip(labels)
        .filter(|(&v, &l)| l == 0 && v > 0.0)
        .map(|(&v, _)| v)
        .collect();
    let mean = |x: &[f32]| x.iter().map(|&v| f64::from(v)).sum::<f64>() / x.len().max(1) as f64;
    assert!(et.len() > 1000 && mean(&et) > 1.5 * mean(&healthy), "ET {} voxels", et.len());
    assert!(
        labels.iter().zip(&t1ce.data).all(|(&l, &v)| l == 0 || v > 0.0),
        "tumour outside the brain"
    );
}

#[test]
fn atlas_resampled_keeps_the_field_of_view() {
    let v = load_atlas_volume(Path::new(SRI24_T1_PATH), [60, 60, 31]).unwrap();
    assert_eq!(v.shape, [60, 60, 31]);
    assert_eq!(v.spacing, [4.0, 4.0, 5.0]);
    let cfg = SynthConfig { anatomy: Anatomy::Atlas, ..SynthConfig::new(8, [60, 60, 31]) };
    let a = Synthesizer::new(cfg.clone()).unwrap().generate("small").unwrap();
    let b = Synthesizer::new(cfg).unwrap().generate("small").unwrap();
    assert_eq!(a, b);
    assert!(a.label.as_ref().unwrap().contains(&ENHANCING));
}

#[test]
fn a_missing_atlas_file_is_an_error_naming_it() {
    let cfg = SynthConfig {
        anatomy: Anatomy::AtlasFile("/nonexistent/atlas.nii.gz".into()),
        ..SynthConfig::new(0, [8, 8, 8])
    };
    let err = Synthesizer::new(cfg).unwrap_err().to_string();
    assert!(err.contains("/nonexistent/atlas.nii.gz"), "{err}");
}
