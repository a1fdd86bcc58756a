//! Finds the cases of a dataset folder in every layout the literature uses.
//!
//! | layout | example |
//! |---|---|
//! | BraTS 2018/2019 | `HGG/Brats18_2013_2_1/Brats18_2013_2_1_{t1,t1ce,t2,flair,seg}.nii.gz`, `LGG/…` |
//! | BraTS 2020 | `BraTS20_Training_001/BraTS20_Training_001_{…}.nii.gz` (case 355's label is misnamed `W39_1998.09.19_Segm.nii` in the common mirror) |
//! | BraTS 2021 | `BraTS2021_00000/BraTS2021_00000_{…}.nii.gz` |
//! | BraTS 2023 | `BraTS-GLI-00000-000/BraTS-GLI-00000-000-{t1n,t1c,t2w,t2f,seg}.nii.gz`, labels 0/1/2/3 |
//! | MSD Task01 | `imagesTr/BRATS_001.nii.gz` (4-D: FLAIR, T1w, T1gd, T2w), `labelsTr/`, `dataset.json` |
//!
//! The dataset root may be the folder itself or any folder up to two levels above it (archives
//! unpack to `MICCAI_BraTS_2018_Data_Training/…`). macOS `._*` resource forks are skipped.

use crate::case::{CaseFiles, ImageSource};
use crate::error::{Error, Result};
use crate::labels::LabelScheme;
use crate::modality::{Modality, MSD_CHANNEL_ORDER};
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

/// The dataset layouts we recognise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DatasetLayout {
    /// BraTS 2018 or 2019: `HGG/` and `LGG/` folders of case folders.
    Brats2018,
    /// BraTS 2020: flat `BraTS20_Training_NNN` case folders.
    Brats2020,
    /// BraTS 2021: flat `BraTS2021_NNNNN` case folders.
    Brats2021,
    /// BraTS 2023 glioma: `BraTS-GLI-NNNNN-NNN` folders, `-t1n/-t1c/-t2w/-t2f/-seg` files.
    Brats2023,
    /// Medical Segmentation Decathlon Task01_BrainTumour.
    Msd,
    /// Case folders that follow the BraTS file naming but none of the years above.
    GenericBrats,
}

impl DatasetLayout {
    /// The label scheme of the layout's label files.
    pub fn label_scheme(self) -> LabelScheme {
        match self {
            DatasetLayout::Brats2023 => LabelScheme::Brats2023,
            DatasetLayout::Msd => LabelScheme::Msd,
            _ => LabelScheme::Brats2018,
        }
    }
}

/// The result of [`discover`]: the cases found, sorted by id, and what looked wrong.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// The folder that holds the cases (may be below the folder passed in).
    pub root: PathBuf,
    /// Which layout was recognised.
    pub layout: DatasetLayout,
    /// Cases sorted by id; a case may lack modalities or a label (see [`Dataset::problems`]).
    pub cases: Vec<CaseFiles>,
    /// Human-readable problems: folders that look like cases but are not usable, stray files.
    pub problems: Vec<String>,
}

/// Finds the cases under `root`.
///
/// # Errors
/// If `root` cannot be read or holds no recognisable dataset (the message says what was
/// looked for).
pub fn discover(root: &Path) -> Result<Dataset> {
    if !root.is_dir() {
        return Err(Error::Layout { path: root.to_path_buf(), message: "is not a folder".into() });
    }
    for dir in candidate_roots(root)? {
        if dir.join("imagesTr").is_dir() {
            return discover_msd(&dir);
        }
        let found = discover_case_folders(&dir)?;
        if !found.cases.is_empty() {
            return Ok(found);
        }
    }
    Err(Error::Layout {
        path: root.to_path_buf(),
        message: "no dataset found: expected BraTS case folders (e.g. HGG/<case>/<case>_t1.nii.gz, \
                  BraTS2021_00000/BraTS2021_00000_flair.nii.gz, BraTS-GLI-00000-000/…-t1n.nii.gz) \
                  or an MSD Task01 folder with imagesTr/ and labelsTr/, here or up to two levels below"
            .into(),
    })
}

/// Reads one case folder (for `predict`): the modality of each `.nii`/`.nii.gz` file comes from
/// its name suffix (`_t1ce`, `-t2f`, `_flair`, …); a `seg` file becomes the label.
///
/// # Errors
/// If the folder cannot be read or holds no image named after a modality.
pub fn discover_case(dir: &Path) -> Result<CaseFiles> {
    let id = file_name(dir);
    let (files, label, problems) = classify_files(dir)?;
    if files.is_empty() {
        return Err(Error::case(
            &id,
            format!(
                "{} holds no NIfTI file named after a modality (…_t1, _t1ce, _t2, _flair or -t1n, -t1c, -t2w, -t2f){}",
                dir.display(),
                if problems.is_empty() { String::new() } else { format!("; {}", problems.join("; ")) }
            ),
        ));
    }
    let scheme = if files.keys().any(|_| uses_2023_names(dir)) {
        LabelScheme::Brats2023
    } else {
        LabelScheme::Brats2018
    };
    Ok(CaseFiles { id, images: ImageSource::PerModality(files), label, scheme })
}

/// `root`, its subfolders and their subfolders, breadth first, sorted.
fn candidate_roots(root: &Path) -> Result<Vec<PathBuf>> {
    let mut out = vec![root.to_path_buf()];
    let mut level = vec![root.to_path_buf()];
    for _ in 0..2 {
        let mut next = Vec::new();
        for dir in &level {
            next.extend(subdirs(dir)?);
        }
        out.extend(next.iter().cloned());
        level = next;
    }
    Ok(out)
}

fn subdirs(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let path = entry.path();
        if path.is_dir() && !is_hidden(&path) {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

fn is_hidden(path: &Path) -> bool {
    path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.'))
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

fn nifti_stem(name: &str) -> Option<&str> {
    name.strip_suffix(".nii.gz").or_else(|| name.strip_suffix(".nii"))
}

fn uses_2023_names(dir: &Path) -> bool {
    fs::read_dir(dir)
        .map(|rd| {
            rd.flatten().any(|e| {
                let n = e.file_name().to_string_lossy().to_ascii_lowercase();
                n.ends_with("-t1n.nii.gz")
                    || n.ends_with("-t2f.nii.gz")
                    || n.ends_with("-t1n.nii")
                    || n.ends_with("-t2f.nii")
            })
        })
        .unwrap_or(false)
}

type Classified = (BTreeMap<Modality, PathBuf>, Option<PathBuf>, Vec<String>);

/// Sorts the NIfTI files of a case folder into modalities and a label.
fn classify_files(dir: &Path) -> Result<Classified> {
    let mut files = BTreeMap::new();
    let mut label = None;
    let mut unknown = Vec::new();
    let mut problems = Vec::new();
    let mut entries: Vec<PathBuf> =
        fs::read_dir(dir).map_err(|e| Error::io(dir, e))?.flatten().map(|e| e.path()).collect();
    entries.sort();
    for path in entries {
        let name = file_name(&path);
        if name.starts_with("._") || !path.is_file() {
            continue;
        }
        let Some(stem) = nifti_stem(&name) else {
            continue;
        };
        let suffix = stem.rsplit(['_', '-']).next().unwrap_or(stem).to_ascii_lowercase();
        if suffix == "seg" || suffix == "segm" {
            if let Some(previous) = label.replace(path.clone()) {
                problems.push(format!("two label files: {} and {}", file_name(&previous), name));
            }
        } else if let Ok(m) = suffix.parse::<Modality>() {
            if let Some(previous) = files.insert(m, path.clone()) {
                problems.push(format!("two {m} files: {} and {}", file_name(&previous), name));
            }
        } else {
            unknown.push(path);
        }
    }
    // BraTS 2020 case 355: its label is misnamed `W39_1998.09.19_Segm.nii` in the common
    // mirror. Any single unrecognised NIfTI whose name contains "seg" stands in for the label.
    if label.is_none() {
        let segs: Vec<&PathBuf> =
            unknown.iter().filter(|p| file_name(p).to_ascii_lowercase().contains("seg")).collect();
        if let [only] = segs.as_slice() {
            tracing::warn!(file = %only.display(), "using a misnamed label file");
            label = Some((*only).clone());
        }
    }
    Ok((files, label, problems))
}

fn layout_of(case_id: &str, parent: &str, uses_2023: bool) -> DatasetLayout {
    if uses_2023 {
        DatasetLayout::Brats2023
    } else if parent == "HGG" || parent == "LGG" {
        DatasetLayout::Brats2018
    } else if case_id.starts_with("BraTS20_") {
        DatasetLayout::Brats2020
    } else if case_id.starts_with("BraTS2021_") {
        DatasetLayout::Brats2021
    } else {
        DatasetLayout::GenericBrats
    }
}

/// Case folders directly under `dir`, or under its `HGG/` and `LGG/`.
fn discover_case_folders(dir: &Path) -> Result<Dataset> {
    let mut case_dirs = Vec::new();
    for grade in ["HGG", "LGG"] {
        if dir.join(grade).is_dir() {
            case_dirs.extend(subdirs(&dir.join(grade))?);
        }
    }
    if case_dirs.is_empty() {
        case_dirs = subdirs(dir)?;
    }
    let mut cases = Vec::new();
    let mut problems = Vec::new();
    let mut layouts = Vec::new();
    for case_dir in case_dirs {
        let (files, label, mut case_problems) = classify_files(&case_dir)?;
        if files.is_empty() {
            continue; // not a case folder
        }
        let id = file_name(&case_dir);
        let parent = case_dir.parent().map(file_name).unwrap_or_default();
        let layout = layout_of(&id, &parent, uses_2023_names(&case_dir));
        layouts.push(layout);
        if files.len() < 4 {
            let missing: Vec<String> = Modality::ALL
                .iter()
                .filter(|m| !files.contains_key(m))
                .map(|m| m.to_string())
                .collect();
            case_problems.push(format!("missing modality file(s): {}", missing.join(", ")));
        }
        if label.is_none() {
            case_problems.push("no label file".to_string());
        }
        problems.extend(
            case_problems.into_iter().map(|p| format!("case {id} ({}): {p}", case_dir.display())),
        );
        cases.push(CaseFiles {
            id,
            images: ImageSource::PerModality(files),
            label,
            scheme: layout.label_scheme(),
        });
    }
    layouts.sort_by_key(|l| *l as u8);
    layouts.dedup();
    let layout = match layouts.as_slice() {
        [one] => *one,
        [] => DatasetLayout::GenericBrats,
        several => {
            problems.push(format!("case folders follow several layouts: {several:?}"));
            if several.contains(&DatasetLayout::Brats2023) {
                return Err(Error::Layout {
                    path: dir.to_path_buf(),
                    message: "mixes BraTS 2023 cases (labels 0/1/2/3) with older ones (0/1/2/4); split them".into(),
                });
            }
            several[0]
        }
    };
    cases.sort_by(|a, b| a.id.cmp(&b.id));
    check_unique_ids(dir, &cases)?;
    Ok(Dataset { root: dir.to_path_buf(), layout, cases, problems })
}

fn check_unique_ids(dir: &Path, cases: &[CaseFiles]) -> Result<()> {
    for pair in cases.windows(2) {
        if pair[0].id == pair[1].id {
            return Err(Error::Layout {
                path: dir.to_path_buf(),
                message: format!("case id {} appears twice (in HGG/ and LGG/?)", pair[0].id),
            });
        }
    }
    Ok(())
}

/// MSD Task01: 4-D images in `imagesTr/` (and `imagesTs/`, unlabelled), labels in `labelsTr/`.
fn discover_msd(dir: &Path) -> Result<Dataset> {
    let mut problems = Vec::new();
    if !dir.join("dataset.json").is_file() {
        problems.push(format!(
            "{}: no dataset.json (channel order assumed FLAIR, T1w, T1gd, T2w)",
            dir.display()
        ));
    }
    let mut cases = Vec::new();
    for (images, labels) in [("imagesTr", Some("labelsTr")), ("imagesTs", None)] {
        let image_dir = dir.join(images);
        if !image_dir.is_dir() {
            continue;
        }
        let mut entries: Vec<PathBuf> = fs::read_dir(&image_dir)
            .map_err(|e| Error::io(&image_dir, e))?
            .flatten()
            .map(|e| e.path())
            .collect();
        entries.sort();
        for path in entries {
            let name = file_name(&path);
            if name.starts_with("._") || name.starts_with('.') {
                continue;
            }
            let Some(stem) = nifti_stem(&name) else {
                continue;
            };
            let label = labels.map(|l| dir.join(l).join(&name));
            let label = match label {
                Some(l) if l.is_file() => Some(l),
                Some(l) => {
                    problems.push(format!("case {stem}: label file {} is missing", l.display()));
                    None
                }
                None => None,
            };
            cases.push(CaseFiles {
                id: stem.to_string(),
                images: ImageSource::Stacked {
                    path: path.clone(),
                    order: MSD_CHANNEL_ORDER.to_vec(),
                },
                label,
                scheme: LabelScheme::Msd,
            });
        }
    }
    cases.sort_by(|a, b| a.id.cmp(&b.id));
    check_unique_ids(dir, &cases)?;
    Ok(Dataset { root: dir.to_path_buf(), layout: DatasetLayout::Msd, cases, problems })
}
