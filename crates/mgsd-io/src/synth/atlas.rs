//! The SRI24 atlas as healthy anatomy: loading, resampling to any grid, tissue fractions.
//!
//! The crate ships `data/sri24/t1_skullstripped_brats_space.nii.gz` (the skull-stripped SRI24
//! T1 template on the BraTS 240 × 240 × 155, 1 mm grid; see `data/sri24/COPYRIGHT.md` beside
//! it). It is read at run time from [`SRI24_T1_PATH`], or from any path given to
//! [`load_atlas`].

use super::anatomy::{from_t1, TissueMaps};
use crate::error::{Error, Result};
use crate::nifti::read_volume;
use crate::volume::Volume;
use rayon::prelude::*;
use std::path::Path;

/// Path of the SRI24 T1 template in this crate's source tree (fixed at compile time).
pub const SRI24_T1_PATH: &str =
    concat!(env!("CARGO_MANIFEST_DIR"), "/data/sri24/t1_skullstripped_brats_space.nii.gz");

/// Reads a skull-stripped T1 template (background 0) and resamples it to `shape` (trilinear,
/// voxel centres aligned; spacing scaled so the field of view is kept).
///
/// # Errors
/// If the file cannot be read, or holds no brain.
pub fn load_atlas_volume(path: &Path, shape: [usize; 3]) -> Result<Volume> {
    let vol = read_volume(path)?;
    if !vol.data.iter().any(|&v| v > 0.0) {
        return Err(Error::nifti(path, "atlas holds no positive (brain) voxel"));
    }
    Ok(if vol.shape == shape { vol } else { resample(&vol, shape) })
}

/// Tissue maps from the template at `path` on `shape`.
pub(crate) fn load_atlas(path: &Path, shape: [usize; 3]) -> Result<TissueMaps> {
    let vol = load_atlas_volume(path, shape)?;
    // Class peaks relative to the bright end (99th percentile of the brain): in SRI24, CSF
    // ~200, GM ~500, WM ~740 for a 99th percentile of 778.
    let mut brain: Vec<f32> = vol.data.iter().copied().filter(|&v| v > 0.0).collect();
    if brain.is_empty() {
        return Err(Error::nifti(
            path,
            format!("atlas holds no brain voxel once resampled to {shape:?}"),
        ));
    }
    let idx = (brain.len() - 1) * 99 / 100;
    let (_, &mut p99, _) = brain.select_nth_unstable_by(idx, f32::total_cmp);
    let mut data = vol.data;
    let floor = 0.05 * p99;
    data.par_iter_mut().for_each(|v| {
        if *v < floor {
            *v = 0.0;
        }
    });
    let t = |f: f32| f * p99;
    Ok(from_t1(&data, shape, vol.spacing, (t(0.26), t(0.58)), (t(0.72), t(0.93))))
}

/// Trilinear resampling of `vol` to `shape`, keeping the field of view (voxel centres of the
/// new grid placed at `(i + 0.5) * n_in / n_out - 0.5` in old voxel units).
pub fn resample(vol: &Volume, shape: [usize; 3]) -> Volume {
    let [ix, iy, iz] = vol.shape;
    let [nx, ny, nz] = shape;
    let scale = [0, 1, 2].map(|a| vol.shape[a] as f32 / shape[a].max(1) as f32);
    let coord = |o: usize, a: usize, n_in: usize| -> (usize, usize, f32) {
        let x = ((o as f32 + 0.5) * scale[a] - 0.5).clamp(0.0, (n_in - 1) as f32);
        let x0 = x.floor() as usize;
        let x1 = (x0 + 1).min(n_in - 1);
        (x0, x1, x - x0 as f32)
    };
    let zs: Vec<_> = (0..nz).map(|k| coord(k, 2, iz)).collect();
    let mut data = vec![0.0f32; nx * ny * nz];
    data.par_chunks_mut(ny * nz).enumerate().for_each(|(i, slab)| {
        let (x0, x1, fx) = coord(i, 0, ix);
        for j in 0..ny {
            let (y0, y1, fy) = coord(j, 1, iy);
            for (k, &(z0, z1, fz)) in zs.iter().enumerate() {
                let at = |x: usize, y: usize, z: usize| vol.data[(x * iy + y) * iz + z];
                let c00 = at(x0, y0, z0) * (1.0 - fz) + at(x0, y0, z1) * fz;
                let c01 = at(x0, y1, z0) * (1.0 - fz) + at(x0, y1, z1) * fz;
                let c10 = at(x1, y0, z0) * (1.0 - fz) + at(x1, y0, z1) * fz;
                let c11 = at(x1, y1, z0) * (1.0 - fz) + at(x1, y1, z1) * fz;
                let c0 = c00 * (1.0 - fy) + c01 * fy;
                let c1 = c10 * (1.0 - fy) + c11 * fy;
                slab[j * nz + k] = c0 * (1.0 - fx) + c1 * fx;
            }
        }
    });
    let mut affine = vol.affine;
    // New voxel 0 sits at old voxel coordinate `0.5 * scale - 0.5` on each axis.
    for row in affine.iter_mut().take(3) {
        row[3] += (0..3).map(|a| row[a] * (0.5 * f64::from(scale[a]) - 0.5)).sum::<f64>();
    }
    for (a, &s) in scale.iter().enumerate() {
        for row in affine.iter_mut().take(3) {
            row[a] *= f64::from(s);
        }
    }
    Volume {
        data,
        shape,
        spacing: [0, 1, 2].map(|a| vol.spacing[a] * scale[a]),
        affine,
        source: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resample_identity_and_constant() {
        let v = Volume::new((0..24).map(|x| x as f32).collect(), [2, 3, 4]).unwrap();
        assert_eq!(resample(&v, [2, 3, 4]).data, v.data);
        let c = Volume::new(vec![3.0; 64], [4, 4, 4]).unwrap();
        let r = resample(&c, [3, 5, 2]);
        assert!(r.data.iter().all(|&x| (x - 3.0).abs() < 1e-6));
        assert_eq!(r.spacing, [4.0 / 3.0, 0.8, 2.0]);
    }
}
