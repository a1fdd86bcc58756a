//! Writing synthetic cases in every dataset layout that [`crate::discover`] reads.
//!
//! | layout | case id (`index` from 0) | files |
//! |---|---|---|
//! | BraTS 2018 | `Brats18_SYN_0000_1` | `HGG/<id>/<id>_{t1,t1ce,t2,flair,seg}.nii.gz` (or `LGG/`) |
//! | BraTS 2020 | `BraTS20_Training_001` | `<id>/<id>_{t1,t1ce,t2,flair,seg}.nii.gz`; case 355's label is `W39_1998.09.19_Segm.nii`, as in the common mirror |
//! | BraTS 2021 | `BraTS2021_00000` | `<id>/<id>_{…}.nii.gz` |
//! | BraTS 2023 | `BraTS-GLI-00000-000` | `<id>/<id>-{t1n,t1c,t2w,t2f,seg}.nii.gz`, labels 0/1/2/3 |
//! | MSD Task01 | `BRATS_001` | `imagesTr/<id>.nii.gz` (4-D int16: FLAIR, T1w, T1gd, T2w), `labelsTr/<id>.nii.gz` (MSD labels), `dataset.json` |
//!
//! Images are int16, labels uint8, all on the case's grid and affine.

use super::config::{Grade, SynthConfig};
use super::generator::Synthesizer;
use super::rng::mix;
use crate::case::Case;
use crate::discover::DatasetLayout;
use crate::error::{Error, Result};
use crate::labels::LabelScheme;
use crate::modality::{Modality, MSD_CHANNEL_ORDER};
use crate::nifti::{write_channels, write_labels, write_volume, OutputType};
use crate::volume::Volume;
use std::fs;
use std::path::{Path, PathBuf};

fn mkdir(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))
}

fn image(case: &Case, m: Modality) -> Result<&Volume> {
    case.images.get(&m).ok_or_else(|| Error::case(&case.id, format!("has no {m} image to write")))
}

fn labels(case: &Case) -> Result<&[u8]> {
    case.label.as_deref().ok_or_else(|| Error::case(&case.id, "has no label map to write"))
}

fn check_id(id: &str) -> Result<()> {
    if id.is_empty() || id.contains(['/', '\\']) || id == "." || id == ".." {
        return Err(Error::InvalidArgument(format!("case id '{id}' cannot be a folder name")));
    }
    Ok(())
}

/// Writes the four images (`<dir>/<id><sep><suffix>.nii.gz`) and the label map in `scheme`
/// under `label_name`.
fn write_per_modality(
    dir: &Path,
    case: &Case,
    id: &str,
    suffix: impl Fn(Modality) -> String,
    label_name: &str,
    scheme: LabelScheme,
) -> Result<Vec<PathBuf>> {
    check_id(id)?;
    mkdir(dir)?;
    let mut written = Vec::with_capacity(5);
    for m in Modality::ALL {
        let path = dir.join(format!("{id}{}.nii.gz", suffix(m)));
        write_volume(&path, image(case, m)?, OutputType::Int16)?;
        written.push(path);
    }
    let path = dir.join(label_name);
    let raw = scheme.from_canonical(labels(case)?, &path.display().to_string())?;
    write_labels(&path, &raw, image(case, Modality::T1)?)?;
    written.push(path);
    Ok(written)
}

/// Writes `case` as `root/<grade>/<id>/<id>_{t1,t1ce,t2,flair,seg}.nii.gz` (BraTS 2018/2019).
/// Returns the files written.
///
/// # Errors
/// A case without all four images or labels, an id that is not a folder name, I/O errors.
pub fn write_brats2018_case(
    root: &Path,
    case_id: &str,
    grade: Grade,
    case: &Case,
) -> Result<Vec<PathBuf>> {
    let dir = root.join(grade.folder()).join(case_id);
    write_per_modality(
        &dir,
        case,
        case_id,
        |m| format!("_{}", m.name()),
        &format!("{case_id}_seg.nii.gz"),
        LabelScheme::Brats2018,
    )
}

/// Writes `case` as `root/<id>/<id>_{t1,t1ce,t2,flair,seg}.nii.gz` (BraTS 2020 and 2021). The
/// label of a case whose id ends in `_355` is named `W39_1998.09.19_Segm.nii`, as in the
/// widely used BraTS 2020 mirror.
///
/// # Errors
/// As [`write_brats2018_case`].
pub fn write_brats2020_case(root: &Path, case_id: &str, case: &Case) -> Result<Vec<PathBuf>> {
    let label = if case_id.ends_with("_355") {
        "W39_1998.09.19_Segm.nii".to_string()
    } else {
        format!("{case_id}_seg.nii.gz")
    };
    write_per_modality(
        &root.join(case_id),
        case,
        case_id,
        |m| format!("_{}", m.name()),
        &label,
        LabelScheme::Brats2018,
    )
}

/// Writes `case` as `root/<id>/<id>-{t1n,t1c,t2w,t2f,seg}.nii.gz` with BraTS 2023 labels
/// (0/1/2/3).
///
/// # Errors
/// As [`write_brats2018_case`].
pub fn write_brats2023_case(root: &Path, case_id: &str, case: &Case) -> Result<Vec<PathBuf>> {
    write_per_modality(
        &root.join(case_id),
        case,
        case_id,
        |m| format!("-{}", m.brats2023_suffix()),
        &format!("{case_id}-seg.nii.gz"),
        LabelScheme::Brats2023,
    )
}

/// Writes `case` as MSD Task01: `root/imagesTr/<id>.nii.gz` (4-D, FLAIR, T1w, T1gd, T2w) and
/// `root/labelsTr/<id>.nii.gz` (MSD labels). Call [`write_msd_dataset_json`] once all cases
/// are written.
///
/// # Errors
/// As [`write_brats2018_case`].
pub fn write_msd_case(root: &Path, case_id: &str, case: &Case) -> Result<Vec<PathBuf>> {
    check_id(case_id)?;
    let (images_dir, labels_dir) = (root.join("imagesTr"), root.join("labelsTr"));
    mkdir(&images_dir)?;
    mkdir(&labels_dir)?;
    let vols = MSD_CHANNEL_ORDER.iter().map(|&m| image(case, m)).collect::<Result<Vec<_>>>()?;
    let image_path = images_dir.join(format!("{case_id}.nii.gz"));
    write_channels(&image_path, &vols, OutputType::Int16)?;
    let label_path = labels_dir.join(format!("{case_id}.nii.gz"));
    let raw = LabelScheme::Msd.from_canonical(labels(case)?, &label_path.display().to_string())?;
    write_labels(&label_path, &raw, vols[0])?;
    Ok(vec![image_path, label_path])
}

/// Writes the MSD `dataset.json` listing `case_ids` as training cases.
///
/// # Errors
/// If the file cannot be written.
pub fn write_msd_dataset_json(root: &Path, case_ids: &[String]) -> Result<PathBuf> {
    let training: Vec<_> = case_ids
        .iter()
        .map(|id| serde_json::json!({"image": format!("./imagesTr/{id}.nii.gz"), "label": format!("./labelsTr/{id}.nii.gz")}))
        .collect();
    let json = serde_json::json!({
        "name": "BRATS",
        "description": "Synthetic BraTS-like cases written by mgsd-io in the MSD Task01 layout",
        "reference": "mgsd-io synthetic generator",
        "licence": "CC-BY-SA 4.0",
        "tensorImageSize": "4D",
        "modality": {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"},
        "labels": {"0": "background", "1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"},
        "numTraining": case_ids.len(),
        "numTest": 0,
        "training": training,
        "test": [],
    });
    mkdir(root)?;
    let path = root.join("dataset.json");
    let text =
        serde_json::to_string_pretty(&json).map_err(|e| Error::InvalidArgument(e.to_string()))?;
    fs::write(&path, text).map_err(|e| Error::io(&path, e))?;
    Ok(path)
}

/// The id of case number `index` (from 0) in `layout` (table in the module docs).
///
/// # Errors
/// For [`DatasetLayout::GenericBrats`], which has no naming of its own.
pub fn case_id(layout: DatasetLayout, index: usize) -> Result<String> {
    Ok(match layout {
        DatasetLayout::Brats2018 => format!("Brats18_SYN_{index:04}_1"),
        DatasetLayout::Brats2020 => format!("BraTS20_Training_{:03}", index + 1),
        DatasetLayout::Brats2021 => format!("BraTS2021_{index:05}"),
        DatasetLayout::Brats2023 => format!("BraTS-GLI-{index:05}-000"),
        DatasetLayout::Msd => format!("BRATS_{:03}", index + 1),
        DatasetLayout::GenericBrats => {
            return Err(Error::InvalidArgument(
                "the generic BraTS layout has no case naming to write".into(),
            ))
        }
    })
}

/// Writes one case in `layout` (the grade only matters for BraTS 2018's folders).
///
/// # Errors
/// As the per-layout writers.
pub fn write_case(
    root: &Path,
    layout: DatasetLayout,
    case_id: &str,
    grade: Grade,
    case: &Case,
) -> Result<Vec<PathBuf>> {
    match layout {
        DatasetLayout::Brats2018 => write_brats2018_case(root, case_id, grade, case),
        DatasetLayout::Brats2020 | DatasetLayout::Brats2021 => {
            write_brats2020_case(root, case_id, case)
        }
        DatasetLayout::Brats2023 => write_brats2023_case(root, case_id, case),
        DatasetLayout::Msd => write_msd_case(root, case_id, case),
        DatasetLayout::GenericBrats => case_id_error(),
    }
}

fn case_id_error() -> Result<Vec<PathBuf>> {
    Err(Error::InvalidArgument("the generic BraTS layout has no file naming to write".into()))
}

/// What [`write_dataset_as`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrittenDataset {
    /// The dataset root.
    pub root: PathBuf,
    /// Case ids in order.
    pub case_ids: Vec<String>,
    /// Every file written.
    pub files: Vec<PathBuf>,
}

/// The seed of case `index` of a dataset with base seed `seed`.
pub fn case_seed(seed: u64, index: usize) -> u64 {
    mix(seed, 0x5eed_0000 + index as u64)
}

/// The grade of case `index`: every fourth case is LGG (BraTS 2018 has 210 HGG, 75 LGG).
pub fn case_grade(index: usize) -> Grade {
    if index % 4 == 3 {
        Grade::Lgg
    } else {
        Grade::Hgg
    }
}

/// Writes `n_cases` synthetic cases in the BraTS 2018 layout (`HGG/`, `LGG/`) under `root`.
///
/// # Errors
/// As [`write_dataset_as`].
pub fn write_dataset(root: &Path, n_cases: usize, config: &SynthConfig) -> Result<WrittenDataset> {
    write_dataset_as(root, n_cases, config, DatasetLayout::Brats2018)
}

/// Writes `n_cases` synthetic cases in `layout` under `root`: case `i` has id
/// [`case_id`]`(layout, i)`, seed [`case_seed`]`(config.seed, i)` and grade [`case_grade`]`(i)`.
///
/// # Errors
/// An invalid configuration, an unreadable atlas, [`DatasetLayout::GenericBrats`], I/O errors.
pub fn write_dataset_as(
    root: &Path,
    n_cases: usize,
    config: &SynthConfig,
    layout: DatasetLayout,
) -> Result<WrittenDataset> {
    let synth = Synthesizer::new(config.clone())?;
    let mut case_ids = Vec::with_capacity(n_cases);
    let mut files = Vec::new();
    for i in 0..n_cases {
        let id = case_id(layout, i)?;
        let grade = case_grade(i);
        let case = synth.generate_with(&id, case_seed(config.seed, i), grade)?;
        files.extend(write_case(root, layout, &id, grade, &case)?);
        case_ids.push(id);
    }
    if layout == DatasetLayout::Msd {
        files.push(write_msd_dataset_json(root, &case_ids)?);
    }
    Ok(WrittenDataset { root: root.to_path_buf(), case_ids, files })
}
