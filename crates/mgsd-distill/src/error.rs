//! The crate's error type: invalid masks, unreadable or incomplete checkpoints and batches.
//! Tensor maths inside the objective returns [`candle_core::Result`] instead.

use std::path::PathBuf;

/// Everything that can go wrong outside the tensor maths.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A modality mask that the objective cannot use (all zero, or entries other than 0/1).
    #[error("invalid modality mask {mask:?}: {reason}")]
    InvalidMask {
        /// The offending mask, ACN order (T1, T2, FLAIR, T1ce).
        mask: [f32; 4],
        /// Why it is rejected.
        reason: &'static str,
    },
    /// A file could not be read or parsed as safetensors.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: PathBuf,
        /// What failed.
        message: String,
    },
    /// A tensor the model or the batch needs is absent from a file.
    #[error("{path}: tensor `{name}` is missing")]
    MissingTensor {
        /// The file.
        path: PathBuf,
        /// The missing key.
        name: String,
    },
    /// A tensor has the wrong shape.
    #[error("{path}: tensor `{name}` has shape {got:?}, expected {expected}")]
    BadShape {
        /// The file.
        path: PathBuf,
        /// The key.
        name: String,
        /// Its shape in the file.
        got: Vec<usize>,
        /// What was expected, in words.
        expected: String,
    },
    /// A configuration that cannot describe an MGSD model.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// An error of the tensor library.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// `Result` with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
