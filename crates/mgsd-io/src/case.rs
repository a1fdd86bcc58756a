//! [`CaseFiles`] (where a case's images are on disk) and [`Case`] (the loaded case).

use crate::error::{Error, Result};
use crate::grid::{format_affine, Grid};
use crate::labels::LabelScheme;
use crate::modality::{Modality, ModalitySet};
use crate::nifti;
use crate::volume::Volume;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Where a case's image data lives.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ImageSource {
    /// One 3-D file per modality (BraTS 2018–2023).
    PerModality(BTreeMap<Modality, PathBuf>),
    /// One 4-D file whose 4th axis holds the modalities in `order` (MSD Task01).
    Stacked {
        /// The 4-D file.
        path: PathBuf,
        /// Modality of each index along the 4th axis.
        order: Vec<Modality>,
    },
}

/// A case found on disk: its id, image files, label file and label scheme. Cheap; nothing
/// is read until [`CaseFiles::load`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CaseFiles {
    /// Case identifier, e.g. `Brats18_2013_2_1` or `BRATS_001`.
    pub id: String,
    /// Image files.
    pub images: ImageSource,
    /// Label file, if the case has one.
    pub label: Option<PathBuf>,
    /// How the label file numbers the classes.
    pub scheme: LabelScheme,
}

impl CaseFiles {
    /// The modalities this case has files for.
    pub fn modalities(&self) -> ModalitySet {
        match &self.images {
            ImageSource::PerModality(files) => {
                ModalitySet::of(&files.keys().copied().collect::<Vec<_>>())
            }
            ImageSource::Stacked { order, .. } => ModalitySet::of(order),
        }
    }

    /// Every file of the case (images then label), for checksums and error messages.
    pub fn files(&self) -> Vec<&Path> {
        let mut out: Vec<&Path> = match &self.images {
            ImageSource::PerModality(files) => files.values().map(PathBuf::as_path).collect(),
            ImageSource::Stacked { path, .. } => vec![path.as_path()],
        };
        out.extend(self.label.as_deref());
        out
    }

    /// Reads every image and the label map, checks that they share one grid and that every
    /// label is defined by the scheme, and converts labels to the canonical scheme.
    /// Per-modality files are decoded in parallel.
    ///
    /// # Errors
    /// Unreadable files (naming them), grids that differ (naming both files and their shapes),
    /// unknown label values (naming the file).
    pub fn load(&self) -> Result<Case> {
        // Images and label decode concurrently: gzip inflation dominates loading.
        let (images, raw_label) = rayon::join(
            || self.load_images(),
            || self.label.as_deref().map(|path| nifti::read_volume(path).map(|v| (path, v))),
        );
        let images = images?;
        self.check_grids(&images)?;
        let label = match raw_label.transpose()? {
            None => None,
            Some((path, raw)) => {
                if let Some((m, first)) = images.iter().next() {
                    if !first.same_grid(&raw) {
                        return Err(self.grid_mismatch(
                            (&m.to_string(), self.file_of(*m), first),
                            ("label", path, &raw),
                        ));
                    }
                }
                Some(self.scheme.to_canonical(&raw.data, &path.display().to_string())?)
            }
        };
        Ok(Case { id: self.id.clone(), images, label })
    }

    /// Reads every image, without the label and without requiring one grid (for callers that
    /// resample the images onto one grid themselves; [`CaseFiles::load`] checks the grids).
    ///
    /// # Errors
    /// Unreadable files (naming them); a 4-D file with the wrong number of volumes.
    pub fn load_images(&self) -> Result<BTreeMap<Modality, Volume>> {
        match &self.images {
            ImageSource::PerModality(files) => {
                use rayon::prelude::*;
                files.par_iter().map(|(&m, p)| nifti::read_volume(p).map(|v| (m, v))).collect()
            }
            ImageSource::Stacked { path, order } => {
                let volumes = nifti::read_channels(path)?;
                if volumes.len() != order.len() {
                    return Err(Error::case(
                        &self.id,
                        format!(
                            "{} holds {} volumes along its 4th axis, expected {} ({:?})",
                            path.display(),
                            volumes.len(),
                            order.len(),
                            order
                        ),
                    ));
                }
                Ok(order.iter().copied().zip(volumes).collect())
            }
        }
    }

    /// The file holding modality `m` (for a stacked 4-D image, that file); `?` if none.
    pub fn file_of(&self, m: Modality) -> &Path {
        match &self.images {
            ImageSource::PerModality(files) => {
                files.get(&m).map_or(Path::new("?"), PathBuf::as_path)
            }
            ImageSource::Stacked { path, .. } => path,
        }
    }

    fn check_grids(&self, images: &BTreeMap<Modality, Volume>) -> Result<()> {
        let mut iter = images.iter();
        let Some((m0, v0)) = iter.next() else {
            return Err(Error::case(&self.id, "has no image files"));
        };
        for (m, v) in iter {
            if !v0.same_grid(v) {
                return Err(self.grid_mismatch(
                    (&m0.to_string(), self.file_of(*m0), v0),
                    (&m.to_string(), self.file_of(*m), v),
                ));
            }
        }
        Ok(())
    }

    fn grid_mismatch(&self, a: (&str, &Path, &Volume), b: (&str, &Path, &Volume)) -> Error {
        let (ga, gb) = (Grid::of(a.2), Grid::of(b.2));
        let max_corner_mm = ga.max_corner_displacement(&gb);
        Error::GridMismatch {
            case: self.id.clone(),
            message: format!(
                "{} ({}) and {} ({}) lie on different grids: shape {:?} vs {:?}, spacing {:?} vs {:?}, \
                 affine {} vs {}; their corners are up to {:.2} mm apart",
                a.0,
                a.1.display(),
                b.0,
                b.1.display(),
                a.2.shape,
                b.2.shape,
                a.2.spacing,
                b.2.spacing,
                format_affine(&a.2.affine),
                format_affine(&b.2.affine),
                max_corner_mm
            ),
            max_corner_mm,
        }
    }
}

/// A loaded case: the modalities it has (any non-empty subset of the four) on one voxel grid,
/// and its label map in canonical BraTS 2018 labels when known.
#[derive(Debug, Clone, PartialEq)]
pub struct Case {
    /// Case identifier.
    pub id: String,
    /// The images present, all on the same grid.
    pub images: BTreeMap<Modality, Volume>,
    /// Canonical labels (0/1/2/4), C-contiguous on the images' grid.
    pub label: Option<Vec<u8>>,
}

impl Case {
    /// The modalities present.
    pub fn modalities(&self) -> ModalitySet {
        ModalitySet::of(&self.images.keys().copied().collect::<Vec<_>>())
    }

    /// The grid shared by the images (shape, spacing, affine, source header), or `None` for a
    /// case without images.
    pub fn grid(&self) -> Option<&Volume> {
        self.images.values().next()
    }
}
