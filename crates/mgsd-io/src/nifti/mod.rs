//! NIfTI-1 / NIfTI-2 reading and writing (`.nii`, `.nii.gz`), nibabel-compatible.
//!
//! * [`read_volume`] — one 3-D volume (a 3-D file, or 4-D … 7-D with trailing singleton dims).
//! * [`read_channels`] — one volume per index of the 4th dimension (MSD Task01 4-D files).
//! * [`read_header`] — the header only, as [`NiftiInfo`], for tools (`examples/nifti-info.rs`).
//! * [`write_volume`] / [`write_labels`] — f32/int16/uint8 images and uint8 label maps, keeping
//!   the source header so that the result overlays the scan.
//! * [`write_channels`] — several volumes of one grid as one 4-D file (MSD layout).
//!
//! # What "as nibabel does" means here
//! Checked against nibabel 5.4 on its own test files (`tests/nibabel_reader.rs`):
//! * values: stored type → `f32`, times `scl_slope` plus `scl_inter` computed in `f64`, unless
//!   the slope is 0 or not finite (then neither is applied); a valid slope with a non-finite
//!   intercept is an error, as in nibabel;
//! * affine: sform if `sform_code != 0`, else qform if `qform_code != 0`, else the base
//!   affine (grid centred on the origin, x flipped) — see [`affine`];
//! * header fixes on load: qfac not ±1 → 1, spatial `pixdim` negative → absolute, zero → 1.
//!
//! # Supported, and not
//! NIfTI-1 (`n+1`) and NIfTI-2 (`n+2`) single files, either byte order (detected from
//! `sizeof_hdr`), plain or gzip (detected from the gzip magic, not the name). Header
//! extensions are skipped via `vox_offset` (and counted). Datatypes `uint8`, `int8`,
//! `int16`, `uint16`, `int32`, `uint32`, `int64`, `uint64`, `float32`, `float64`. Not
//! supported, with a clear error: `.hdr/.img` pairs (`ni1`/`ni2`), RGB/RGBA, complex, float128,
//! and a `vox_offset` inside the header (nibabel would read header bytes as voxels).
//!
//! # Speed and memory
//! gzip is inflated by `zlib-rs` (flate2 feature) as a stream, in slabs of z-slices; while
//! one slab is converted and transposed in parallel (rayon), the next is inflated. Peak memory
//! is the `f32` output plus two slabs (~2 × 2 MiB), i.e. about 1.1 × the decoded data. A
//! header that claims more data than the file can hold fails before the output is allocated.
//!
//! # Use of the `nifti` crate
//! Its [`nifti::NiftiType`] names the datatype codes and gives element sizes; its NIfTI-1
//! header parser is the independent check on the headers we write (unit tests in
//! [`write`]). The headers themselves are parsed and written here: the crate reads NIfTI-1
//! only, keeps `dim` unsigned (a negative dimension turns into a huge one), and its writer and
//! affine code need `ndarray`/`nalgebra`, which this crate does not take on.

pub mod affine;
mod datatype;
pub mod header;
mod read;
pub(crate) mod write;

pub use datatype::datatype_name;
pub use header::{Endianness, NiftiInfo};
pub use read::{read_channels, read_header, read_volume};
pub use write::{write_channels, write_labels, write_volume, OutputType};
