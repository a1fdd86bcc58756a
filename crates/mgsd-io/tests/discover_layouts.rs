//! Discovery on generated folder layouts of every supported year. Files are empty: discovery
//! only looks at names (loading is tested with real volumes elsewhere).

use mgsd_io::{discover, discover_case, DatasetLayout, ImageSource, LabelScheme, Modality};
use std::fs;
use std::path::Path;

fn touch(path: &Path) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, b"").unwrap();
}

fn brats_case(dir: &Path, id: &str, sep: &str, names: &[&str]) {
    for n in names {
        touch(&dir.join(id).join(format!("{id}{sep}{n}.nii.gz")));
    }
}

const OLD: [&str; 5] = ["t1", "t1ce", "t2", "flair", "seg"];

#[test]
fn brats2018_hgg_lgg_below_an_archive_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("MICCAI_BraTS_2018_Data_Training");
    brats_case(&root.join("HGG"), "Brats18_2013_2_1", "_", &OLD);
    brats_case(&root.join("LGG"), "Brats18_2013_0_1", "_", &OLD);
    touch(&root.join("survival_data.csv"));
    let ds = discover(tmp.path()).unwrap();
    assert_eq!(ds.layout, DatasetLayout::Brats2018);
    assert_eq!(ds.root, root);
    let ids: Vec<&str> = ds.cases.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids, ["Brats18_2013_0_1", "Brats18_2013_2_1"]);
    assert!(ds.problems.is_empty(), "{:?}", ds.problems);
    assert_eq!(ds.cases[0].modalities().len(), 4);
    assert!(ds.cases[0].label.is_some());
    assert_eq!(ds.cases[0].scheme, LabelScheme::Brats2018);
}

#[test]
fn brats2020_with_misnamed_case_355_label() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("MICCAI_BraTS2020_TrainingData");
    brats_case(&root, "BraTS20_Training_001", "_", &OLD);
    brats_case(&root, "BraTS20_Training_355", "_", &OLD[..4]);
    touch(&root.join("BraTS20_Training_355").join("W39_1998.09.19_Segm.nii"));
    touch(&root.join("name_mapping.csv"));
    let ds = discover(tmp.path()).unwrap();
    assert_eq!(ds.layout, DatasetLayout::Brats2020);
    let c355 = ds.cases.iter().find(|c| c.id == "BraTS20_Training_355").unwrap();
    assert!(c355.label.as_ref().unwrap().ends_with("W39_1998.09.19_Segm.nii"));
    assert!(ds.problems.is_empty(), "{:?}", ds.problems);
}

#[test]
fn brats2021_flat() {
    let tmp = tempfile::tempdir().unwrap();
    brats_case(tmp.path(), "BraTS2021_00000", "_", &OLD);
    brats_case(tmp.path(), "BraTS2021_00002", "_", &OLD);
    let ds = discover(tmp.path()).unwrap();
    assert_eq!(ds.layout, DatasetLayout::Brats2021);
    assert_eq!(ds.cases.len(), 2);
}

#[test]
fn brats2023_names_and_labels() {
    let tmp = tempfile::tempdir().unwrap();
    brats_case(tmp.path(), "BraTS-GLI-00000-000", "-", &["t1n", "t1c", "t2w", "t2f", "seg"]);
    let ds = discover(tmp.path()).unwrap();
    assert_eq!(ds.layout, DatasetLayout::Brats2023);
    let case = &ds.cases[0];
    assert_eq!(case.scheme, LabelScheme::Brats2023);
    let ImageSource::PerModality(files) = &case.images else {
        panic!("expected per-modality files")
    };
    assert!(files[&Modality::T1ce].ends_with("BraTS-GLI-00000-000-t1c.nii.gz"));
    assert!(files[&Modality::Flair].ends_with("BraTS-GLI-00000-000-t2f.nii.gz"));
}

#[test]
fn msd_task01_skips_resource_forks() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("Task01_BrainTumour");
    touch(&root.join("dataset.json"));
    for id in ["BRATS_001", "BRATS_002"] {
        touch(&root.join("imagesTr").join(format!("{id}.nii.gz")));
        touch(&root.join("labelsTr").join(format!("{id}.nii.gz")));
        touch(&root.join("imagesTr").join(format!("._{id}.nii.gz")));
    }
    touch(&root.join("imagesTs").join("BRATS_485.nii.gz"));
    let ds = discover(tmp.path()).unwrap();
    assert_eq!(ds.layout, DatasetLayout::Msd);
    assert_eq!(ds.cases.len(), 3);
    assert!(ds.cases[0].label.is_some());
    assert!(ds.cases[2].label.is_none(), "imagesTs cases are unlabelled");
    let ImageSource::Stacked { order, .. } = &ds.cases[0].images else {
        panic!("expected a 4-D file")
    };
    assert_eq!(order, &[Modality::Flair, Modality::T1, Modality::T1ce, Modality::T2]);
}

#[test]
fn incomplete_cases_are_reported() {
    let tmp = tempfile::tempdir().unwrap();
    brats_case(tmp.path(), "BraTS2021_00000", "_", &["t1", "flair"]);
    let ds = discover(tmp.path()).unwrap();
    assert_eq!(ds.cases.len(), 1);
    let text = ds.problems.join("\n");
    assert!(
        text.contains("BraTS2021_00000") && text.contains("T1ce") && text.contains("no label file"),
        "{text}"
    );
}

#[test]
fn empty_or_missing_folders_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let err = discover(tmp.path()).unwrap_err().to_string();
    assert!(err.contains("no dataset found"), "{err}");
    let err = discover(&tmp.path().join("nope")).unwrap_err().to_string();
    assert!(err.contains("nope") && err.contains("not a folder"), "{err}");
}

#[test]
fn single_case_folder_for_prediction() {
    let tmp = tempfile::tempdir().unwrap();
    brats_case(tmp.path(), "patient", "_", &["t1ce", "flair"]);
    let case = discover_case(&tmp.path().join("patient")).unwrap();
    assert_eq!(case.modalities().len(), 2);
    assert!(case.label.is_none());
    let err = discover_case(tmp.path()).unwrap_err().to_string();
    assert!(err.contains("no NIfTI file named after a modality"), "{err}");
}
