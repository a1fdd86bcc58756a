//! Patch windows: centre crop/pad (evaluation), random crop/pad and foreground-centred crops
//! (training).
//!
//! Both only *choose* a [`CropRecord`]; [`CropRecord::crop`] applies it. The random window is
//! drawn from a caller-supplied RNG, so the same seed gives the same window and a test can
//! replay it.

use super::crop::CropRecord;
use crate::error::{Error, Result};
use rand::{Rng, RngExt};

fn check(shape: [usize; 3], patch: [usize; 3], context: &str) -> Result<()> {
    if shape.contains(&0) || patch.contains(&0) {
        return Err(Error::InvalidArgument(format!(
            "{context}: grid {shape:?} and patch {patch:?} must be non-zero"
        )));
    }
    Ok(())
}

/// The window of `patch` voxels centred in a grid of `shape`: crops where the grid is larger,
/// pads (symmetrically, the extra voxel after) where it is smaller. The start is
/// `floor((shape - patch) / 2)`, as `(s - p) // 2` in the Python references.
///
/// # Errors
/// If a size is zero.
pub fn centre_crop(shape: [usize; 3], patch: [usize; 3]) -> Result<CropRecord> {
    check(shape, patch, "centre_crop")?;
    let offset = [0, 1, 2].map(|a| (shape[a] as isize - patch[a] as isize).div_euclid(2));
    CropRecord::new(shape, offset, patch)
}

/// The window of at least `patch` voxels that keeps all of a grid of `shape`: pads each axis
/// that is smaller than the patch (centred, as [`centre_crop`]) and keeps the others whole.
/// Used before sliding-window evaluation.
///
/// # Errors
/// If a size is zero.
pub fn pad_to_patch(shape: [usize; 3], patch: [usize; 3]) -> Result<CropRecord> {
    centre_crop(shape, [0, 1, 2].map(|a| shape[a].max(patch[a])))
}

/// Draws a training window of `patch` voxels in a grid of `shape`, uniformly among all
/// positions: where the grid is larger the window lies inside it, where it is smaller the grid
/// lies inside the window (random padding).
///
/// # Errors
/// If a size is zero.
pub fn random_crop<R: Rng + ?Sized>(
    rng: &mut R,
    shape: [usize; 3],
    patch: [usize; 3],
) -> Result<CropRecord> {
    check(shape, patch, "random_crop")?;
    let mut offset = [0isize; 3];
    for a in 0..3 {
        let d = shape[a] as isize - patch[a] as isize;
        // Uniform over the |d| + 1 positions (u64: `isize` is not portable to sample).
        let pos = rng.random_range(0..=d.unsigned_abs() as u64) as isize;
        offset[a] = if d >= 0 { pos } else { -pos };
    }
    CropRecord::new(shape, offset, patch)
}

/// Draws a training window of `patch` voxels centred on a tumour voxel, as nnU-Net's
/// foreground oversampling does: a class uniformly among the non-empty lists of `classes`
/// (so a rare class such as enhancing tumour is picked as often as a common one), a voxel
/// `[x, y, z]` uniformly in it, then the window centred there (start `voxel − patch / 2`),
/// moved as little as needed to stay inside the grid (or, where the grid is smaller than the
/// patch, to keep the grid inside the window, as [`random_crop`]). Falls back to
/// [`random_crop`] when every list is empty.
///
/// # Errors
/// If a size is zero, or a voxel lies outside the grid.
pub fn foreground_crop<R: Rng + ?Sized>(
    rng: &mut R,
    shape: [usize; 3],
    patch: [usize; 3],
    classes: &[Vec<[usize; 3]>],
) -> Result<CropRecord> {
    check(shape, patch, "foreground_crop")?;
    let present: Vec<&Vec<[usize; 3]>> = classes.iter().filter(|c| !c.is_empty()).collect();
    if present.is_empty() {
        return random_crop(rng, shape, patch);
    }
    let class = present[rng.random_range(0..present.len() as u64) as usize];
    let voxel = class[rng.random_range(0..class.len() as u64) as usize];
    if (0..3).any(|a| voxel[a] >= shape[a]) {
        return Err(Error::InvalidArgument(format!(
            "foreground_crop: voxel {voxel:?} lies outside the grid {shape:?}"
        )));
    }
    let mut offset = [0isize; 3];
    for a in 0..3 {
        let d = shape[a] as isize - patch[a] as isize;
        let start = voxel[a] as isize - (patch[a] / 2) as isize;
        offset[a] = start.clamp(d.min(0), d.max(0));
    }
    CropRecord::new(shape, offset, patch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn centre_crop_matches_python_floor() {
        let r = centre_crop([240, 240, 155], [160, 192, 128]).unwrap();
        assert_eq!(r.offset(), [40, 24, 13]);
        let r = centre_crop([101, 128, 4], [128, 128, 8]).unwrap();
        assert_eq!(r.offset(), [-14, 0, -2]);
        assert_eq!(pad_to_patch([100, 200, 4], [128, 128, 8]).unwrap().shape(), [128, 200, 8]);
    }

    #[test]
    fn random_crop_stays_in_range() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        for _ in 0..100 {
            let r = random_crop(&mut rng, [10, 4, 7], [6, 9, 7]).unwrap();
            let o = r.offset();
            assert!((0..=4).contains(&o[0]) && (-5..=0).contains(&o[1]) && o[2] == 0);
        }
        assert!(random_crop(&mut rng, [10, 4, 7], [0, 9, 7]).is_err());
    }

    #[test]
    fn foreground_crop_contains_the_voxel_and_stays_in_range() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let classes = vec![vec![[0, 0, 0]], vec![], vec![[9, 3, 6], [5, 2, 1]]];
        for _ in 0..200 {
            let r = foreground_crop(&mut rng, [10, 4, 7], [6, 9, 7], &classes).unwrap();
            let o = r.offset();
            assert!((0..=4).contains(&o[0]) && (-5..=0).contains(&o[1]) && o[2] == 0);
            let (lo, hi) = r.valid_box();
            let inside = |v: [usize; 3]| (0..3).all(|a| lo[a] <= v[a] && v[a] < hi[a]);
            assert!(classes.iter().flatten().any(|&v| inside(v)));
        }
        // Every list empty: a uniform random window.
        assert!(foreground_crop(&mut rng, [10, 4, 7], [6, 9, 7], &[vec![], vec![]]).is_ok());
        assert!(foreground_crop(&mut rng, [10, 4, 7], [6, 9, 7], &[vec![[10, 0, 0]]]).is_err());
    }
}
