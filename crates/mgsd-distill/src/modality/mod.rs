//! Modality-level distillation: mutual-aware attention (`MMD` of the reference, MGSD-SPEC §5).

pub mod decoder;
pub mod extractor;
pub mod mmd;

pub use decoder::{
    layer_norm, raw_tokens, tokens_to_volume, volume_to_tokens, ModalityAttention, TokenDecoder,
    TOKEN_DIM,
};
pub use extractor::{token_grid, TokenExtractor};
pub use mmd::{ModalityDistillation, PRESENT_WEIGHT};
