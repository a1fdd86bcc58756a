//! `mgsd-metrics`: brain-tumour segmentation metrics on plain label maps, with no deep-learning
//! dependency, so that any tool can score predictions the way the BraTS literature and the
//! official BraTS 2023+ evaluation do.
//!
//! * [`legacy`] — the BraTS 2018–2021 metrics: Dice, HD95 (medpy's), sensitivity, specificity,
//!   the empty-mask conventions and the RFNet "ET < 500 → 0" post-processing. Re-exported at
//!   the crate root.
//! * [`lesionwise`] — the official BraTS 2023+ lesion-wise metrics, as the `brats-evaluation`
//!   package computes them with its `gli` configuration.
//! * [`components`] — connected components (26-connectivity, as the official tool).
//! * [`matching`] — optimal one-to-one assignment (Hungarian method).
//! * [`surface`] — borders, exact anisotropic distance transform, HD95 and NSD reductions.
//! * [`stats`] — paired Wilcoxon (scipy's), Holm, bootstrap confidence intervals, summaries.
//!
//! Label maps are canonical (0/1/2/4, see [`mgsd_io::LabelScheme`]), C-contiguous over a
//! `[usize; 3]` shape in mgsd-io's axis order, with the voxel spacing in mm.
#![warn(missing_docs)]

pub mod components;
pub mod error;
pub mod legacy;
pub mod lesionwise;
pub mod matching;
pub mod stats;
pub mod surface;

pub use error::{Error, Result};
pub use legacy::{
    dice, hd95, legacy_scores, medpy_hd95, score_case, sensitivity_specificity, CaseScores,
    LegacyScore, PostProcess, RegionScore, EMPTY_HD95_MM, RFNET_MIN_ET_VOXELS,
};
pub use lesionwise::LesionwiseScore;
