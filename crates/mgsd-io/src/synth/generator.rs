//! [`Synthesizer`]: turns a [`SynthConfig`] into [`Case`]s (four modalities + labels).

use super::anatomy::{procedural, TissueMaps};
use super::atlas::{load_atlas, SRI24_T1_PATH};
use super::config::{Anatomy, Grade, SynthConfig, BRATS_FOV_MM};
use super::contrast::render;
use super::tumour::paint;
use crate::case::Case;
use crate::error::Result;
use crate::modality::Modality;
use crate::volume::{Affine, Volume};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

/// Generates synthetic cases from one configuration; atlas anatomy is read once and shared.
#[derive(Debug, Clone)]
pub struct Synthesizer {
    config: SynthConfig,
    atlas: Option<Arc<TissueMaps>>,
}

/// The BraTS-style affine of a grid: x and y mirrored (LPS storage as BraTS files have),
/// `[[-sx, 0, 0, 0], [0, -sy, 0, (ny - 1) sy], [0, 0, sz, 0], [0, 0, 0, 1]]`.
pub fn brats_affine(shape: [usize; 3], spacing: [f32; 3]) -> Affine {
    let s = spacing.map(f64::from);
    [
        [-s[0], 0.0, 0.0, 0.0],
        [0.0, -s[1], 0.0, (shape[1] as f64 - 1.0) * s[1]],
        [0.0, 0.0, s[2], 0.0],
        [0.0, 0.0, 0.0, 1.0],
    ]
}

impl Synthesizer {
    /// Checks the configuration and loads the atlas if it uses one.
    ///
    /// # Errors
    /// An invalid configuration, or an unreadable atlas file.
    pub fn new(config: SynthConfig) -> Result<Self> {
        config.validate()?;
        let atlas = match &config.anatomy {
            Anatomy::Procedural => None,
            Anatomy::Atlas => Some(Arc::new(load_atlas(Path::new(SRI24_T1_PATH), config.shape)?)),
            Anatomy::AtlasFile(p) => Some(Arc::new(load_atlas(p, config.shape)?)),
        };
        Ok(Synthesizer { config, atlas })
    }

    /// The configuration.
    pub fn config(&self) -> &SynthConfig {
        &self.config
    }

    /// The case of the configured seed, named `id`.
    ///
    /// # Errors
    /// None at present (kept for future anatomy sources).
    pub fn generate(&self, id: &str) -> Result<Case> {
        self.generate_with(id, self.config.seed, self.config.tumour.grade)
    }

    /// The case with another `seed` and `grade` (everything else from the configuration).
    ///
    /// # Errors
    /// None at present (kept for future anatomy sources).
    pub fn generate_with(&self, id: &str, seed: u64, grade: Grade) -> Result<Case> {
        let tissue_owned;
        let tissue: &TissueMaps = match &self.atlas {
            Some(a) => a,
            None => {
                tissue_owned = procedural(seed, self.config.shape, BRATS_FOV_MM);
                &tissue_owned
            }
        };
        let mut tumour_cfg = self.config.tumour;
        tumour_cfg.grade = grade;
        let tumour = paint(seed, &tumour_cfg, tissue);
        let affine = brats_affine(tissue.shape, tissue.spacing);
        let images: BTreeMap<Modality, Volume> = Modality::ALL
            .iter()
            .map(|&m| {
                let data = render(m, &self.config, seed, tissue, &tumour);
                let vol = Volume {
                    data,
                    shape: tissue.shape,
                    spacing: tissue.spacing,
                    affine,
                    source: None,
                };
                (m, vol)
            })
            .collect();
        Ok(Case { id: id.to_string(), images, label: Some(tumour.labels) })
    }
}

/// One synthetic case from `config`, named `id` (a shortcut for [`Synthesizer`]).
///
/// # Errors
/// An invalid configuration or an unreadable atlas.
pub fn generate(config: &SynthConfig, id: &str) -> Result<Case> {
    Synthesizer::new(config.clone())?.generate(id)
}
