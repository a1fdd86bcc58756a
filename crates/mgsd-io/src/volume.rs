//! [`Volume`]: one 3-D image (data, shape, spacing, affine) and the header it came from.
//!
//! # Axis order (documented once, used everywhere)
//! `data` is C-contiguous over `shape = [nx, ny, nz]`: voxel `(i, j, k)` — the same index as
//! nibabel's `img.get_fdata()[i, j, k]` — lives at `data[(i * ny + j) * nz + k]`, so `k` (the
//! NIfTI z axis) is fastest. NIfTI files store x fastest, so the reader transposes once on load
//! and the writer once on save. With this order a `(C, D, H, W)` tensor built from volumes has
//! `D = x`, `H = y`, `W = z`, exactly as the PyTorch reference code (ACN/RFNet/MGSD) sees a
//! BraTS case: 240 × 240 × 155, cropped to the 160 × 192 × 128 patch.

use crate::error::{Error, Result};

/// A 4 × 4 voxel-to-world (RAS+, mm) matrix, row-major, as nibabel's `img.affine`.
pub type Affine = [[f64; 4]; 4];

/// The identity affine.
pub const IDENTITY_AFFINE: Affine =
    [[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]];

/// The header fields of the file a volume was read from that are needed to write a result
/// back "in the same space": a segmentation saved with this header overlays the scan in
/// ITK-SNAP or 3D Slicer. Datatype and scaling are not kept: the writer chooses those.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceHeader {
    /// NIfTI version of the source file: 1 or 2.
    pub version: u8,
    /// `pixdim[0..8]` (qfac in `pixdim[0]`).
    pub pixdim: [f64; 8],
    /// `xyzt_units`.
    pub xyzt_units: i32,
    /// `qform_code`.
    pub qform_code: i32,
    /// `sform_code`.
    pub sform_code: i32,
    /// `quatern_b`, `quatern_c`, `quatern_d`.
    pub quatern: [f64; 3],
    /// `qoffset_x`, `qoffset_y`, `qoffset_z`.
    pub qoffset: [f64; 3],
    /// `srow_x`, `srow_y`, `srow_z`.
    pub srow: [[f64; 4]; 3],
    /// `descrip`, without trailing NULs.
    pub descrip: String,
    /// `intent_code`.
    pub intent_code: i32,
    /// `intent_name`, without trailing NULs.
    pub intent_name: String,
    /// `slice_code`, `slice_start`, `slice_end`, `slice_duration`, `dim_info`.
    pub slice_info: (i32, i64, i64, f64, u8),
}

/// One 3-D image: f32 voxels (scaling already applied), its grid and where it sits in space.
#[derive(Debug, Clone, PartialEq)]
pub struct Volume {
    /// Voxels, C-contiguous over `shape` (see the module docs for the axis order).
    pub data: Vec<f32>,
    /// `[nx, ny, nz]`.
    pub shape: [usize; 3],
    /// Voxel size in mm along x, y, z (`pixdim[1..4]`).
    pub spacing: [f32; 3],
    /// Voxel-to-world matrix chosen as nibabel does (sform, else qform, else base affine).
    pub affine: Affine,
    /// The header this volume was read from; `None` for volumes made in memory.
    pub source: Option<Box<SourceHeader>>,
}

impl Volume {
    /// A volume over `shape` with the given voxels, unit spacing and the identity affine.
    ///
    /// # Errors
    /// If `data.len()` is not the product of `shape` or a dimension is zero.
    pub fn new(data: Vec<f32>, shape: [usize; 3]) -> Result<Self> {
        let n: usize = shape.iter().product();
        if n == 0 || data.len() != n {
            return Err(Error::Shape {
                context: "Volume::new".into(),
                expected: shape.to_vec(),
                actual: vec![data.len()],
            });
        }
        Ok(Volume { data, shape, spacing: [1.0; 3], affine: IDENTITY_AFFINE, source: None })
    }

    /// A zero-filled volume on the same grid (shape, spacing, affine, header) as `self`.
    pub fn zeros_like(&self) -> Self {
        Volume { data: vec![0.0; self.data.len()], ..self.clone_meta() }
    }

    /// Same grid as `self`, with new voxels.
    ///
    /// # Errors
    /// If `data` does not have one value per voxel.
    pub fn with_data(&self, data: Vec<f32>) -> Result<Self> {
        if data.len() != self.len() {
            return Err(Error::Shape {
                context: "Volume::with_data".into(),
                expected: self.shape.to_vec(),
                actual: vec![data.len()],
            });
        }
        Ok(Volume { data, ..self.clone_meta() })
    }

    fn clone_meta(&self) -> Self {
        Volume {
            data: Vec::new(),
            shape: self.shape,
            spacing: self.spacing,
            affine: self.affine,
            source: self.source.clone(),
        }
    }

    /// Number of voxels.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// True when the volume holds no voxels (never true for a constructed volume).
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Linear index of voxel `(i, j, k)`.
    #[inline]
    pub fn index(&self, i: usize, j: usize, k: usize) -> usize {
        (i * self.shape[1] + j) * self.shape[2] + k
    }

    /// Value at voxel `(i, j, k)`.
    #[inline]
    pub fn at(&self, i: usize, j: usize, k: usize) -> f32 {
        self.data[self.index(i, j, k)]
    }

    /// True when `other` lies on the same voxel grid: equal shape, and spacing and affine equal
    /// within 1e-4 (mm). Modalities of one case must share a grid.
    pub fn same_grid(&self, other: &Volume) -> bool {
        self.shape == other.shape
            && self.spacing.iter().zip(other.spacing).all(|(a, b)| (a - b).abs() <= 1e-4)
            && self
                .affine
                .iter()
                .flatten()
                .zip(other.affine.iter().flatten())
                .all(|(a, b)| (a - b).abs() <= 1e-4)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_is_z_fastest() {
        let v = Volume::new((0..24).map(|x| x as f32).collect(), [2, 3, 4]).unwrap();
        assert_eq!(v.at(0, 0, 1), 1.0);
        assert_eq!(v.at(0, 1, 0), 4.0);
        assert_eq!(v.at(1, 0, 0), 12.0);
    }

    #[test]
    fn new_rejects_wrong_length() {
        assert!(Volume::new(vec![0.0; 5], [2, 3, 1]).is_err());
        assert!(Volume::new(vec![], [0, 3, 1]).is_err());
    }
}
