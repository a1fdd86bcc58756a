//! The one error type of `mgsd-metrics`.

/// Result alias used throughout `mgsd-metrics`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong when scoring.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A label map does not have one value per voxel of the grid.
    #[error("{what} label map has {actual} voxels, the grid {shape:?} needs {}", shape.iter().product::<usize>())]
    Shape {
        /// Which label map: `prediction` or `reference`.
        what: &'static str,
        /// The grid.
        shape: [usize; 3],
        /// Its number of values.
        actual: usize,
    },
    /// Statistics on inputs that do not fit (samples of different lengths, no sample, …).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}
