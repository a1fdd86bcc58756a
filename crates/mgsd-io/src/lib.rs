//! `mgsd-io`: NIfTI I/O, BraTS case discovery, preprocessing and synthetic BraTS-like cases.
//!
//! This crate is deliberately free of any deep-learning dependency so that other tools can
//! reuse it. Everything works on plain `Vec<f32>`/`Vec<u8>` volumes.
//!
//! * [`nifti`] — read/write `.nii`/`.nii.gz`, NIfTI-1 and NIfTI-2, nibabel-compatible scaling
//!   and affine choice.
//! * [`Volume`] — a 3-D image with its grid (axis order documented in [`volume`]).
//! * [`Modality`], [`ModalitySet`], [`LabelScheme`], [`Region`] — the typed vocabulary.
//! * [`discover`] — finds the cases of BraTS 2018–2023 and MSD Task01 datasets.
//! * [`preprocess`] — normalisation, crops that remember how to undo themselves, flips.
//! * [`synth`] — seeded synthetic BraTS-like cases for tests, demos and benchmarks.
#![warn(missing_docs)]

mod buffer;
pub mod case;
pub mod discover;
pub mod error;
pub mod labels;
pub mod modality;
pub mod nifti;
pub mod preprocess;
pub mod synth;
pub mod volume;

pub use case::{Case, CaseFiles, ImageSource};
pub use discover::{discover, discover_case, Dataset, DatasetLayout};
pub use error::{Error, Result};
pub use labels::{LabelScheme, Region};
pub use modality::{Modality, ModalitySet, ACN_CHANNEL_ORDER, MSD_CHANNEL_ORDER};
pub use nifti::{
    read_channels, read_header, read_volume, write_channels, write_labels, write_volume, NiftiInfo,
    OutputType,
};
pub use preprocess::{Channels, CropRecord, Pipeline, Protocol, Sample};
pub use synth::{SynthConfig, Synthesizer};
pub use volume::{Affine, SourceHeader, Volume};
