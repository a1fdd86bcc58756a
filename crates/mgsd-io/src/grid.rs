//! [`Grid`]: a voxel grid placed in world space (shape + voxel-to-world affine), and the
//! geometry between two grids: the voxel-to-voxel map, the largest displacement of their
//! corners, an isotropic grid covering the same field of view.
//!
//! Voxel indices follow [`crate::volume`]'s axis order: `(i, j, k)` is nibabel's
//! `arr[i, j, k]`, and the affine maps `(i, j, k, 1)` to world millimetres (RAS+), as
//! nibabel's `img.affine`.

use crate::error::{Error, Result};
use crate::volume::{Affine, Volume};
use std::fmt::Write as _;

/// A voxel grid in world space.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Grid {
    /// `[nx, ny, nz]`.
    pub shape: [usize; 3],
    /// Voxel-to-world matrix (mm).
    pub affine: Affine,
}

impl Grid {
    /// The grid `vol` lies on.
    pub fn of(vol: &Volume) -> Self {
        Grid { shape: vol.shape, affine: vol.affine }
    }

    /// Voxel size along each voxel axis: the norms of the affine's first three columns (mm).
    pub fn spacing(&self) -> [f64; 3] {
        [0, 1, 2].map(|c| (0..3).map(|r| self.affine[r][c].powi(2)).sum::<f64>().sqrt())
    }

    /// Volume of one voxel in ml (|det| of the affine's 3 × 3 part, mm³ / 1000).
    pub fn voxel_ml(&self) -> f64 {
        det3(&self.affine).abs() / 1000.0
    }

    /// World position (mm) of voxel coordinate `ijk`.
    pub fn world(&self, ijk: [f64; 3]) -> [f64; 3] {
        apply(&self.affine, ijk)
    }

    /// The map from this grid's voxel coordinates to `other`'s: `other.affine⁻¹ · self.affine`
    /// (what `scipy.ndimage.affine_transform` takes to resample `other`'s data onto `self`).
    ///
    /// # Errors
    /// If `other`'s affine is singular.
    pub fn voxel_map_to(&self, other: &Grid) -> Result<Affine> {
        let inv = invert(&other.affine).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "the affine {} is singular: its voxels have no place in space",
                format_affine(&other.affine)
            ))
        })?;
        Ok(matmul(&inv, &self.affine))
    }

    /// The largest distance (mm) between corresponding corners of the two grids: corner
    /// voxel centres `(0 or n − 1)` per axis, each placed by its own grid's affine. Zero for the
    /// same grid; a pure origin shift of 7 mm gives 7.
    pub fn max_corner_displacement(&self, other: &Grid) -> f64 {
        let mut worst: f64 = 0.0;
        for corner in 0..8 {
            let pick = |g: &Grid, axis: usize| {
                if corner >> axis & 1 == 1 {
                    g.shape[axis].saturating_sub(1) as f64
                } else {
                    0.0
                }
            };
            let a = self.world([0, 1, 2].map(|ax| pick(self, ax)));
            let b = other.world([0, 1, 2].map(|ax| pick(other, ax)));
            let d = (0..3).map(|r| (a[r] - b[r]).powi(2)).sum::<f64>().sqrt();
            worst = worst.max(d);
        }
        worst
    }

    /// A grid with voxels of `mm` along every axis, the same axis directions, and the same
    /// field of view: `n' = max(1, round(n · s / mm))` voxels per axis (`s` the current
    /// spacing), centred on the same point as this grid.
    ///
    /// # Errors
    /// If `mm` is not a positive finite number or an axis of this grid has zero length.
    pub fn isotropic(&self, mm: f64) -> Result<Grid> {
        if !(mm.is_finite() && mm > 0.0) {
            return Err(Error::InvalidArgument(format!(
                "isotropic spacing must be a positive number of mm, got {mm}"
            )));
        }
        let spacing = self.spacing();
        if spacing.iter().any(|&s| s <= 0.0 || !s.is_finite()) {
            return Err(Error::InvalidArgument(format!(
                "the affine {} has an axis of zero length",
                format_affine(&self.affine)
            )));
        }
        let shape =
            [0, 1, 2].map(|a| ((self.shape[a] as f64 * spacing[a] / mm).round() as usize).max(1));
        let centre = self.world(self.shape.map(|n| (n as f64 - 1.0) / 2.0));
        let mut affine = self.affine;
        for c in 0..3 {
            for row in affine.iter_mut().take(3) {
                row[c] = row[c] / spacing[c] * mm;
            }
        }
        for (r, row) in affine.iter_mut().take(3).enumerate() {
            row[3] =
                centre[r] - (0..3).map(|c| row[c] * (shape[c] as f64 - 1.0) / 2.0).sum::<f64>();
        }
        Ok(Grid { shape, affine })
    }

    /// The same grid turned by `degrees` about world axis `axis` (0 = x, 1 = y, 2 = z) around
    /// its centre: what a scan acquired at an oblique angle looks like.
    ///
    /// # Errors
    /// If `axis` is not 0, 1 or 2 or `degrees` is not finite.
    pub fn rotated(&self, axis: usize, degrees: f64) -> Result<Grid> {
        if axis > 2 || !degrees.is_finite() {
            return Err(Error::InvalidArgument(format!(
                "rotation by {degrees} degrees about axis {axis}: expected a finite angle and axis 0, 1 or 2"
            )));
        }
        let (s, c) = degrees.to_radians().sin_cos();
        let (u, v) = ((axis + 1) % 3, (axis + 2) % 3);
        let mut rot = crate::volume::IDENTITY_AFFINE;
        rot[u][u] = c;
        rot[u][v] = -s;
        rot[v][u] = s;
        rot[v][v] = c;
        let centre = self.world(self.shape.map(|n| (n as f64 - 1.0) / 2.0));
        // Rotate about the centre: T(centre) · R · T(−centre) · affine.
        let mut about = rot;
        let turned = apply(&rot, centre);
        for r in 0..3 {
            about[r][3] = centre[r] - turned[r];
        }
        Ok(Grid { shape: self.shape, affine: matmul(&about, &self.affine) })
    }

    /// An empty (zero-filled) volume on this grid, spacing from [`Grid::spacing`], no source
    /// header.
    pub fn zeros(&self) -> Volume {
        Volume {
            data: vec![0.0; self.shape.iter().product()],
            shape: self.shape,
            spacing: self.spacing().map(|s| s as f32),
            affine: self.affine,
            source: None,
        }
    }
}

/// `m · (x, y, z, 1)`, the first three coordinates.
pub fn apply(m: &Affine, p: [f64; 3]) -> [f64; 3] {
    [0, 1, 2].map(|r| m[r][0] * p[0] + m[r][1] * p[1] + m[r][2] * p[2] + m[r][3])
}

/// `a · b`.
pub fn matmul(a: &Affine, b: &Affine) -> Affine {
    let mut out = [[0.0; 4]; 4];
    for (r, row) in out.iter_mut().enumerate() {
        for (c, v) in row.iter_mut().enumerate() {
            *v = (0..4).map(|k| a[r][k] * b[k][c]).sum();
        }
    }
    out
}

fn det3(m: &Affine) -> f64 {
    m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1])
        - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
        + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0])
}

/// The inverse of an affine (3 × 3 part inverted by cofactors, translation solved), or `None`
/// when its 3 × 3 part is singular.
pub fn invert(m: &Affine) -> Option<Affine> {
    let det = det3(m);
    let scale = (0..3).flat_map(|r| (0..3).map(move |c| (r, c))).map(|(r, c)| m[r][c].abs());
    let scale = scale.fold(0.0, f64::max);
    if !det.is_finite() || det.abs() <= 1e-12 * scale.powi(3) || scale == 0.0 {
        return None;
    }
    let cof = |r: usize, c: usize| {
        let (r1, r2) = ((r + 1) % 3, (r + 2) % 3);
        let (c1, c2) = ((c + 1) % 3, (c + 2) % 3);
        m[r1][c1] * m[r2][c2] - m[r1][c2] * m[r2][c1]
    };
    let mut out = [[0.0; 4]; 4];
    for (r, row) in out.iter_mut().take(3).enumerate() {
        for (c, v) in row.iter_mut().take(3).enumerate() {
            // inverse = adjugate / det = cofactorᵀ / det.
            *v = cof(c, r) / det;
        }
    }
    for row in out.iter_mut().take(3) {
        row[3] = -(0..3).map(|c| row[c] * m[c][3]).sum::<f64>();
    }
    out[3][3] = 1.0;
    Some(out)
}

/// An affine as three rows, e.g. `[[-1, 0, 0, 0], [0, -1, 0, 239], [0, 0, 1, 0]]`
/// (values rounded to 4 decimals).
pub fn format_affine(m: &Affine) -> String {
    let mut s = String::from("[");
    for (r, row) in m.iter().take(3).enumerate() {
        if r > 0 {
            s.push_str(", ");
        }
        s.push('[');
        for (c, v) in row.iter().enumerate() {
            if c > 0 {
                s.push_str(", ");
            }
            let v = (v * 1e4).round() / 1e4;
            let v = if v == 0.0 { 0.0 } else { v }; // no "-0"
            let _ = write!(s, "{v}");
        }
        s.push(']');
    }
    s.push(']');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rotated(angle_deg: f64, spacing: f64, origin: [f64; 3]) -> Affine {
        let (s, c) = angle_deg.to_radians().sin_cos();
        [
            [c * spacing, -s * spacing, 0.0, origin[0]],
            [s * spacing, c * spacing, 0.0, origin[1]],
            [0.0, 0.0, spacing, origin[2]],
            [0.0, 0.0, 0.0, 1.0],
        ]
    }

    #[test]
    fn invert_round_trips() {
        let a = rotated(20.0, 2.0, [3.0, -4.0, 5.0]);
        let inv = invert(&a).unwrap();
        let id = matmul(&a, &inv);
        for (r, row) in id.iter().enumerate() {
            for (c, v) in row.iter().enumerate() {
                assert!((v - f64::from(r == c)).abs() < 1e-12, "{id:?}");
            }
        }
        let mut singular = a;
        singular[2][2] = 0.0;
        assert!(invert(&singular).is_none());
    }

    #[test]
    fn corner_displacement_of_a_shift() {
        let a = Grid { shape: [10, 12, 8], affine: rotated(0.0, 1.0, [0.0; 3]) };
        let b = Grid { shape: [10, 12, 8], affine: rotated(0.0, 1.0, [0.0, 7.0, 0.0]) };
        assert!((a.max_corner_displacement(&b) - 7.0).abs() < 1e-12);
        assert_eq!(a.max_corner_displacement(&a), 0.0);
    }

    #[test]
    fn isotropic_keeps_directions_and_centre() {
        let g = Grid { shape: [20, 10, 5], affine: rotated(30.0, 2.0, [1.0, 2.0, 3.0]) };
        let iso = g.isotropic(1.0).unwrap();
        assert_eq!(iso.shape, [40, 20, 10]);
        assert!(iso.spacing().iter().all(|s| (s - 1.0).abs() < 1e-12));
        let c0 = g.world([9.5, 4.5, 2.0]);
        let c1 = iso.world([19.5, 9.5, 4.5]);
        assert!((0..3).all(|r| (c0[r] - c1[r]).abs() < 1e-9), "{c0:?} {c1:?}");
        assert!(g.isotropic(0.0).is_err());
        assert!(g.isotropic(f64::NAN).is_err());
    }

    #[test]
    fn rotation_keeps_the_centre_and_spacing() {
        let g = Grid { shape: [20, 10, 5], affine: rotated(0.0, 2.0, [1.0, 2.0, 3.0]) };
        let r = g.rotated(2, 20.0).unwrap();
        let c = [9.5, 4.5, 2.0];
        let (a, b) = (g.world(c), r.world(c));
        assert!((0..3).all(|i| (a[i] - b[i]).abs() < 1e-9));
        assert!(r.spacing().iter().all(|s| (s - 2.0).abs() < 1e-12));
        let want = rotated(20.0, 2.0, [0.0; 3]);
        assert!((r.affine[1][0] - want[1][0]).abs() < 1e-12);
        assert!(g.rotated(3, 1.0).is_err());
    }

    #[test]
    fn voxel_ml_and_format() {
        let g = Grid { shape: [1, 1, 1], affine: rotated(20.0, 2.0, [0.0; 3]) };
        assert!((g.voxel_ml() - 0.008).abs() < 1e-12);
        assert_eq!(
            format_affine(&rotated(0.0, 1.0, [0.0, -0.0, 239.0])),
            "[[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 239]]"
        );
    }
}
