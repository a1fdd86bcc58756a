//! MGSD's training objective: multi-granularity self distillation for brain-tumour segmentation
//! with missing MRI modalities ("Multi-Granularity Self Distillation for Brain Tumor
//! Segmentation with Missing Modalities"; MGSD-SPEC §3–§6).
//!
//! One 3-D U-Net (the student, `unet.*`) is trained for every subset of the four modalities. Each
//! step it sees the full input and a randomly masked copy ([`sampler`]); a momentum teacher
//! ([`ema`], `ema_model.*`) supervises both outputs (image level, [`losses`]); multi-view
//! profiles of the decoder stages must agree (feature level, [`feature`], `Mutiaxis_fuse*.*`);
//! mutual-aware attention between style tokens and per-modality tokens must agree (modality
//! level, [`modality`], `MMD.*`); a style discriminator adds an adversarial term
//! ([`adversarial`]). [`objective`] composes them with the reference's weights;
//! [`term_gradients`] measures how strongly each term pulls on each group of parameters.
//!
//! Parameter paths equal the PyTorch reference's `state_dict` keys.
#![warn(missing_docs)]

pub mod adversarial;
pub mod batch;
pub mod ema;
pub mod error;
pub mod feature;
pub mod losses;
pub mod modality;
pub mod objective;
pub mod sampler;
pub mod term_gradients;

pub use adversarial::Adversary;
pub use batch::Batch;
pub use ema::{Ema, EmaConfig};
pub use error::{Error, Result};
pub use feature::{CatConv, FeatureDistillation, MultiAxisFuse};
pub use modality::{ModalityAttention, ModalityDistillation};
pub use objective::{LossWeights, MgsdConfig, MgsdModel, MgsdObjective, Terms};
pub use sampler::{MaskSampler, MaskSampling, ModalityMask, MODALITY_NAMES, NUM_MODALITIES};
pub use term_gradients::{param_group, term_gradients, TermGradients, PARAM_GROUPS};
