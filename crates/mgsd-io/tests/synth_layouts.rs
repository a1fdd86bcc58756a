//! Synthetic datasets in every layout: written, discovered and loaded back unchanged.

use mgsd_io::synth::{
    case_grade, case_seed, write_brats2020_case, write_dataset, write_dataset_as, Grade,
    SynthConfig, Synthesizer,
};
use mgsd_io::{discover, DatasetLayout, Modality};

const SHAPE: [usize; 3] = [24, 20, 16];

#[test]
fn every_layout_round_trips_through_discovery() {
    let cfg = SynthConfig::new(5, SHAPE);
    let synth = Synthesizer::new(cfg.clone()).unwrap();
    for layout in [
        DatasetLayout::Brats2018,
        DatasetLayout::Brats2020,
        DatasetLayout::Brats2021,
        DatasetLayout::Brats2023,
        DatasetLayout::Msd,
    ] {
        let dir = tempfile::tempdir().unwrap();
        let written = write_dataset_as(dir.path(), 4, &cfg, layout).unwrap();
        assert_eq!(written.case_ids.len(), 4);
        assert!(written.files.iter().all(|f| f.is_file()), "{layout:?}");
        let found = discover(dir.path()).unwrap();
        assert_eq!(found.layout, layout, "{:?}", found.problems);
        let ids: Vec<&str> = found.cases.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(
            ids,
            written.case_ids.iter().map(String::as_str).collect::<Vec<_>>(),
            "{layout:?}"
        );
        for (i, files) in found.cases.iter().enumerate() {
            let loaded = files.load().unwrap();
            let expected =
                synth.generate_with(&files.id, case_seed(cfg.seed, i), case_grade(i)).unwrap();
            assert_eq!(loaded.label, expected.label, "{layout:?} {}", files.id);
            for m in Modality::ALL {
                assert_eq!(
                    loaded.images[&m].data, expected.images[&m].data,
                    "{layout:?} {} {m}",
                    files.id
                );
                assert_eq!(loaded.images[&m].shape, SHAPE);
            }
        }
    }
}

#[test]
fn brats2018_grades_go_to_their_folders() {
    let dir = tempfile::tempdir().unwrap();
    let w = write_dataset(dir.path(), 4, &SynthConfig::new(1, [12, 12, 10])).unwrap();
    assert_eq!(case_grade(3), Grade::Lgg);
    let id = &w.case_ids[3];
    assert!(dir.path().join("LGG").join(id).join(format!("{id}_t1ce.nii.gz")).is_file());
    let id = &w.case_ids[0];
    assert!(dir.path().join("HGG").join(id).join(format!("{id}_seg.nii.gz")).is_file());
}

#[test]
fn brats2020_case_355_has_the_misnamed_label() {
    let dir = tempfile::tempdir().unwrap();
    let case = Synthesizer::new(SynthConfig::new(3, [12, 12, 10])).unwrap().generate("x").unwrap();
    let id = "BraTS20_Training_355";
    let files = write_brats2020_case(dir.path(), id, &case).unwrap();
    assert!(files.iter().any(|f| f.ends_with(format!("{id}/W39_1998.09.19_Segm.nii"))));
    let found = discover(dir.path()).unwrap();
    let loaded = found.cases[0].load().unwrap();
    assert_eq!(loaded.label, case.label);
}

#[test]
fn bad_ids_and_missing_parts_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let mut case = Synthesizer::new(SynthConfig::new(3, [8, 8, 8])).unwrap().generate("x").unwrap();
    assert!(write_brats2020_case(dir.path(), "../escape", &case).is_err());
    assert!(write_brats2020_case(dir.path(), "", &case).is_err());
    case.images.remove(&Modality::T2);
    assert!(write_brats2020_case(dir.path(), "BraTS20_Training_001", &case).is_err());
    assert!(write_dataset_as(
        dir.path(),
        1,
        &SynthConfig::new(0, [8, 8, 8]),
        DatasetLayout::GenericBrats
    )
    .is_err());
}

#[test]
fn same_seed_writes_identical_bytes() {
    let cfg = SynthConfig::new(21, [16, 16, 12]);
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let wa = write_dataset_as(a.path(), 2, &cfg, DatasetLayout::Msd).unwrap();
    let wb = write_dataset_as(b.path(), 2, &cfg, DatasetLayout::Msd).unwrap();
    for (fa, fb) in wa.files.iter().zip(&wb.files) {
        assert_eq!(std::fs::read(fa).unwrap(), std::fs::read(fb).unwrap(), "{}", fa.display());
    }
    let c = tempfile::tempdir().unwrap();
    let wc = write_dataset_as(c.path(), 2, &SynthConfig::new(22, [16, 16, 12]), DatasetLayout::Msd)
        .unwrap();
    assert_ne!(std::fs::read(&wa.files[0]).unwrap(), std::fs::read(&wc.files[0]).unwrap());
}
