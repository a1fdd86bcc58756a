//! Preprocessing for both literature protocols (MGSD-SPEC §1): brain mask, normalisation,
//! crops that remember how to undo themselves, flips and intensity augmentation.
//!
//! * [`Channels`] — the multi-channel `(C, x, y, z)` image every step works on.
//! * [`nonzero_mask`], [`BoundingBox`] — the brain and its box.
//! * [`Normalization`], [`NormParams`] — min-max (ACN) or z-score in the mask (RFNet).
//! * [`CropRecord`] — crop/pad with exact [`CropRecord::uncrop`] and composition
//!   ([`CropRecord::then`]); [`centre_crop`], [`pad_to_patch`], [`random_crop`] choose one.
//! * [`Flips`], [`IntensityAugment`] — augmentations, drawn from an explicit RNG separately
//!   from their application.
//! * [`Pipeline`] — the whole recipe of [`Protocol::Acn`] or [`Protocol::Rfnet`] in one call.

mod channels;
mod crop;
mod flip;
mod intensity;
mod mask;
mod normalize;
mod patch;
mod protocol;

pub use crate::buffer::zeroed;
pub use channels::{select, Channels};
pub use crop::CropRecord;
pub use flip::Flips;
pub use intensity::{IntensityAugment, IntensityParams};
pub use mask::{nonzero_mask, BoundingBox};
pub use normalize::{
    min_max_params, params as norm_params, z_score_params, z_score_params_in_box, NormParams,
    Normalization,
};
pub use patch::{centre_crop, foreground_crop, pad_to_patch, random_crop};
pub use protocol::{Analysis, Augmentation, CaseView, EvalWindow, Pipeline, Protocol, Sample};
