//! `mgsd-io`: NIfTI I/O, BraTS case discovery, preprocessing and synthetic BraTS-like cases.
//!
//! This crate is deliberately free of any deep-learning dependency so that other tools can
//! reuse it. Everything works on plain `Vec<f32>`/`Vec<u8>` volumes.
//!
//! * [`nifti`] — read/write `.nii`/`.nii.gz`, NIfTI-1 and NIfTI-2, nibabel-compatible scaling
//!   and affine choice.
//! * [`Volume`] — a 3-D image with its grid (axis order documented in [`volume`]).
//! * [`Modality`], [`ModalitySet`], [`LabelScheme`], [`Region`] — the typed vocabulary.
//! * [`discover`] — finds the cases of BraTS 2018–2023 and MSD Task01 datasets;
//!   [`discover_batch`] — the patients of a folder to segment (case folders or loose files).
//! * [`preprocess`] — normalisation, crops that remember how to undo themselves, flips.
//! * [`Grid`], [`resample`] — voxel grids in world space; resampling between them through the
//!   NIfTI affines (exact for axis permutations and flips, trilinear or nearest otherwise).
//! * [`SignalStats`] — NaN/infinite voxel counts and whether an image carries any signal.
//! * [`synth`] — seeded synthetic BraTS-like cases for tests, demos and benchmarks.
#![warn(missing_docs)]

pub mod batch;
mod buffer;
pub mod case;
pub mod discover;
pub mod error;
pub mod grid;
pub mod labels;
pub mod modality;
pub mod nifti;
pub mod preprocess;
pub mod resample;
pub mod signal;
pub mod synth;
pub mod volume;

pub use batch::{discover_batch, Batch};
pub use case::{Case, CaseFiles, ImageSource};
pub use discover::{discover, discover_case, Dataset, DatasetLayout};
pub use error::{Error, Result};
pub use grid::Grid;
pub use labels::{LabelScheme, Region};
pub use modality::{Modality, ModalitySet, ACN_CHANNEL_ORDER, MSD_CHANNEL_ORDER};
pub use nifti::{
    read_channels, read_header, read_volume, write_channels, write_labels, write_volume, NiftiInfo,
    OutputType,
};
pub use preprocess::{Channels, CropRecord, Pipeline, Protocol, Sample};
pub use resample::{resample, resample_labels, Interpolation};
pub use signal::SignalStats;
pub use synth::{SynthConfig, Synthesizer};
pub use volume::{Affine, SourceHeader, Volume};
