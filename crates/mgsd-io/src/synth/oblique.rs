//! Re-acquiring a synthetic image on another grid, as a scanner would: coarser voxels and an
//! oblique slice angle. Tests use it to make cases whose modalities do not share a grid.

use crate::error::Result;
use crate::grid::Grid;
use crate::resample::{resample, Interpolation};
use crate::volume::Volume;

/// `vol` resampled (trilinear) onto a grid with voxels of `spacing_mm`, covering the same
/// field of view, turned by `degrees` about the world z axis around its centre. Corners of
/// the new grid that fall outside `vol` are 0.
///
/// # Errors
/// A spacing that is not a positive number, a non-finite angle, a singular affine.
pub fn oblique_copy(vol: &Volume, spacing_mm: f64, degrees: f64) -> Result<Volume> {
    let grid = Grid::of(vol).isotropic(spacing_mm)?.rotated(2, degrees)?;
    Ok(resample(vol, &grid, Interpolation::Linear)?.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coarser_rotated_copy_of_a_constant_is_constant_inside() {
        let vol = Volume::new(vec![5.0; 16 * 16 * 8], [16, 16, 8]).unwrap();
        let o = oblique_copy(&vol, 2.0, 20.0).unwrap();
        assert_eq!(o.shape, [8, 8, 4]);
        assert!((o.spacing[0] - 2.0).abs() < 1e-6);
        // The centre is inside; values are 5 or 0 (outside corners).
        assert!(o.data.iter().all(|&v| (v - 5.0).abs() < 1e-5 || v == 0.0));
        assert!((o.at(4, 4, 2) - 5.0).abs() < 1e-5);
    }
}
