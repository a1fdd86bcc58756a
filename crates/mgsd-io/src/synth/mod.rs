//! Seeded synthetic BraTS-like cases for tests, demos and benchmarks.
//!
//! A case is healthy anatomy ([`Anatomy::Atlas`]: the SRI24 template resampled to any grid,
//! or [`Anatomy::Procedural`]: a drawn head at any size), painted tumours (oedema, enhancing
//! rim, necrotic core; [`TumourConfig`]) and four modalities with realistic relative
//! contrasts ([`INTENSITY`]: enhancing tumour visible only on T1ce, oedema bright on T2 and
//! FLAIR, …), a smooth bias field and Rician noise, rounded to int16-like positive values
//! with the background exactly 0. The same [`SynthConfig`] gives the same voxels, bit for bit.
//!
//! * [`Synthesizer`], [`generate`] — cases in memory, as [`crate::Case`].
//! * [`write_dataset`], [`write_dataset_as`], [`write_case`] and the per-layout writers —
//!   folders in the BraTS 2018, 2020, 2021, 2023 and MSD Task01 layouts.
//! * [`oblique_copy`] — an image re-acquired on a coarser, oblique grid (for cases whose
//!   modalities do not share a grid).

mod anatomy;
mod atlas;
mod config;
mod contrast;
mod generator;
mod oblique;
mod rng;
mod tumour;
mod writer;

pub use atlas::{load_atlas_volume, resample, SRI24_T1_PATH};
pub use config::{Anatomy, Grade, SynthConfig, TumourConfig, BRATS_FOV_MM, BRATS_SHAPE};
pub use contrast::INTENSITY;
pub use generator::{brats_affine, generate, Synthesizer};
pub use oblique::oblique_copy;
pub use writer::{
    case_grade, case_id, case_seed, write_brats2018_case, write_brats2020_case,
    write_brats2023_case, write_case, write_dataset, write_dataset_as, write_msd_case,
    write_msd_dataset_json, WrittenDataset,
};
