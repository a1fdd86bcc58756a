//! The one error type of `mgsd-io`.
//!
//! Every variant names what the user has to look at: the file, the case, the modality.
//! A bare "invalid header" is not an error message.

use std::path::PathBuf;

/// Result alias used throughout `mgsd-io`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong while reading, checking or writing imaging data.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The operating system refused a read or write.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A file that should be NIfTI is not, or not one we can read (bad magic, truncated data,
    /// a header that lies about its size, an unsupported datatype, …).
    #[error("{path}: {message}")]
    Nifti {
        /// The file involved.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// A case is incomplete or inconsistent (missing modality, mismatched grids, bad labels).
    #[error("case {case}: {message}")]
    Case {
        /// The case identifier (e.g. `Brats18_CBICA_AAB_1`).
        case: String,
        /// What is wrong, naming the files and modalities involved.
        message: String,
    },
    /// The images (or the label map) of a case lie on different voxel grids.
    #[error("case {case}: {message}")]
    GridMismatch {
        /// The case identifier.
        case: String,
        /// Both files, their shapes, spacings and affines, and how far apart their corners are.
        message: String,
        /// The largest distance between corresponding corners of the two grids (mm).
        max_corner_mm: f64,
    },
    /// A label map holds a value the chosen label scheme does not define.
    #[error("{context}: label value {value} is not defined by {scheme} ({count} voxels)")]
    UnknownLabel {
        /// Where the label map came from (a file path or a case id).
        context: String,
        /// The offending value.
        value: i64,
        /// Number of voxels holding it.
        count: usize,
        /// The label scheme's name.
        scheme: &'static str,
    },
    /// Two arrays that must agree in shape do not.
    #[error("{context}: shape mismatch, expected {expected:?}, got {actual:?}")]
    Shape {
        /// What was being done.
        context: String,
        /// The shape required.
        expected: Vec<usize>,
        /// The shape found.
        actual: Vec<usize>,
    },
    /// A dataset folder has none of the layouts we know.
    #[error("{path}: {message}")]
    Layout {
        /// The dataset root.
        path: PathBuf,
        /// What was expected and what was found.
        message: String,
    },
    /// A parameter passed by the caller is invalid (a patch larger than allowed, a zero size, …).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

impl Error {
    /// Wraps an I/O error with the path it happened on.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }

    /// A NIfTI format error for `path`.
    pub fn nifti(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::Nifti { path: path.into(), message: message.into() }
    }

    /// A case-level error for `case`.
    pub fn case(case: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Case { case: case.into(), message: message.into() }
    }
}
