//! `xtask`: the project's chores, as a library so tests call them directly.
//!
//! * [`fetch`](mod@fetch) — `cargo xtask fetch-brats`: download ([`download`]) or import an archive
//!   ([`extract`]) or folder, verify every case ([`verify`]), write the [`manifest`] and move
//!   the dataset into place atomically; [`year`] says where registered BraTS data come from.
//! * [`splits`] — `cargo xtask splits`: seeded k-fold or the literature's fixed lists as JSON.
#![warn(missing_docs)]

pub mod download;
pub mod extract;
pub mod fetch;
pub mod gpu_bundle;
pub mod manifest;
pub mod splits;
mod staging;
pub mod verify;
pub mod year;

pub use fetch::{fetch, FetchOptions, FetchReport, FetchSource, Outcome};
pub use manifest::{Manifest, MANIFEST_FILE};
pub use year::Year;
