//! [`discover_batch`]: the cases of a folder of patients to segment, whatever its shape —
//! case folders in any layout [`crate::discover`] knows (BraTS 2018–2023, MSD Task01, any
//! folder of `<id>_<modality>.nii.gz` files), and loose NIfTI files lying directly in the
//! folder, grouped into cases by the id before their modality suffix:
//!
//! ```text
//! patients/
//!   P001/P001_t1ce.nii.gz, P001/P001_flair.nii.gz     → case P001 (a case folder)
//!   P002_t1.nii.gz, P002_t2.nii.gz, P002-t2f.nii.gz   → case P002 (loose files)
//! ```

use crate::case::{CaseFiles, ImageSource};
use crate::discover::discover;
use crate::error::{Error, Result};
use crate::labels::LabelScheme;
use crate::modality::Modality;
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

/// The cases found by [`discover_batch`], sorted by id, and what looked wrong.
#[derive(Debug, Clone)]
pub struct Batch {
    /// Cases sorted by id (labels, if any, are found but need not be used).
    pub cases: Vec<CaseFiles>,
    /// Files and folders that were skipped, and why.
    pub problems: Vec<String>,
}

/// The cases under `dir`: case folders (see [`crate::discover`]) and loose NIfTI files grouped
/// by id (see the module docs).
///
/// # Errors
/// `dir` is not a readable folder, holds no case, or two cases share an id (naming both).
pub fn discover_batch(dir: &Path) -> Result<Batch> {
    if !dir.is_dir() {
        return Err(Error::Layout { path: dir.to_path_buf(), message: "is not a folder".into() });
    }
    let (loose, mut problems) = group_loose_files(dir)?;
    let has_subdirs = fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .flatten()
        .any(|e| e.path().is_dir() && !e.file_name().to_string_lossy().starts_with('.'));
    let mut cases = loose;
    if has_subdirs || cases.is_empty() {
        match discover(dir) {
            Ok(found) => {
                problems
                    .extend(found.problems.into_iter().filter(|p| !p.ends_with("no label file")));
                cases.extend(found.cases);
            }
            Err(e) if cases.is_empty() => {
                return Err(Error::Layout {
                    path: dir.to_path_buf(),
                    message: format!(
                    "no case to segment: no NIfTI file named <id>_<modality>.nii.gz here, and {e}"
                ),
                })
            }
            Err(_) => {}
        }
    }
    cases.sort_by(|a, b| a.id.cmp(&b.id));
    for pair in cases.windows(2) {
        if pair[0].id == pair[1].id {
            return Err(Error::Layout {
                path: dir.to_path_buf(),
                message: format!(
                    "case id {} appears twice: {} and {}",
                    pair[0].id,
                    pair[0].files().first().map_or("?".into(), |p| p.display().to_string()),
                    pair[1].files().first().map_or("?".into(), |p| p.display().to_string()),
                ),
            });
        }
    }
    Ok(Batch { cases, problems })
}

/// Splits a NIfTI file name into `(id, suffix)` at its last `_`, `-` or `.` before the
/// extension: `P002_t1ce.nii.gz` → `("P002", "t1ce")`; `None` for other files.
pub fn split_case_file_name(name: &str) -> Option<(&str, &str)> {
    let stem = name.strip_suffix(".nii.gz").or_else(|| name.strip_suffix(".nii"))?;
    let cut = stem.rfind(['_', '-', '.'])?;
    let (id, suffix) = (&stem[..cut], &stem[cut + 1..]);
    (!id.is_empty() && !suffix.is_empty()).then_some((id, suffix))
}

type Grouped = (Vec<CaseFiles>, Vec<String>);

/// NIfTI files directly in `dir`, grouped into cases by the id before the modality suffix.
fn group_loose_files(dir: &Path) -> Result<Grouped> {
    let mut entries: Vec<PathBuf> =
        fs::read_dir(dir).map_err(|e| Error::io(dir, e))?.flatten().map(|e| e.path()).collect();
    entries.sort();
    let mut images: BTreeMap<String, BTreeMap<Modality, PathBuf>> = BTreeMap::new();
    let mut labels: BTreeMap<String, PathBuf> = BTreeMap::new();
    let mut uses_2023: BTreeMap<String, bool> = BTreeMap::new();
    let mut problems = Vec::new();
    for path in entries.into_iter().filter(|p| p.is_file()) {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if name.starts_with('.') || !(name.ends_with(".nii") || name.ends_with(".nii.gz")) {
            continue;
        }
        let Some((id, suffix)) = split_case_file_name(&name) else {
            problems.push(format!("{}: not named <id>_<modality>.nii.gz; skipped", path.display()));
            continue;
        };
        let suffix = suffix.to_ascii_lowercase();
        if suffix == "seg" {
            labels.insert(id.to_string(), path);
            continue;
        }
        let Ok(m) = suffix.parse::<Modality>() else {
            problems.push(format!(
                "{}: '{suffix}' is not a modality (t1, t1ce, t2, flair, t1n, t1c, t2w, t2f); skipped",
                path.display()
            ));
            continue;
        };
        *uses_2023.entry(id.to_string()).or_default() |= suffix == m.brats2023_suffix();
        let files = images.entry(id.to_string()).or_default();
        if let Some(previous) = files.get(&m) {
            problems.push(format!(
                "case {id}: two {m} files, {} and {}; using the first",
                previous.display(),
                path.display()
            ));
        } else {
            files.insert(m, path);
        }
    }
    let cases = images
        .into_iter()
        .map(|(id, files)| CaseFiles {
            label: labels.remove(&id),
            scheme: if uses_2023.get(&id).copied().unwrap_or(false) {
                LabelScheme::Brats2023
            } else {
                LabelScheme::Brats2018
            },
            images: ImageSource::PerModality(files),
            id,
        })
        .collect();
    Ok((cases, problems))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_names() {
        assert_eq!(split_case_file_name("P002_t1ce.nii.gz"), Some(("P002", "t1ce")));
        assert_eq!(
            split_case_file_name("BraTS-GLI-00000-000-t2f.nii"),
            Some(("BraTS-GLI-00000-000", "t2f"))
        );
        assert_eq!(split_case_file_name("scan.nii.gz"), None);
        assert_eq!(split_case_file_name("_t1.nii.gz"), None);
        assert_eq!(split_case_file_name("a_t1.txt"), None);
    }
}
