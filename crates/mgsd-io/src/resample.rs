//! Resampling a volume onto another [`Grid`] through the two NIfTI affines.
//!
//! Every voxel of the target grid is placed in world space by the target's affine and looked
//! up in the source by the inverse of the source's affine — the same map
//! `nibabel.processing.resample_from_to` hands to `scipy.ndimage.affine_transform`.
//!
//! * When the map is an axis permutation with flips and a whole-voxel shift (the same scan
//!   stored RAS instead of LPS, a transposed export, a crop), voxels are copied: no
//!   interpolation, labels stay labels ([`Method::Exact`]).
//! * Otherwise intensities are interpolated trilinearly ([`Interpolation::Linear`], scipy's
//!   `order=1`) and labels by nearest neighbour ([`Interpolation::Nearest`], `order=0`).
//! * Target voxels whose source position falls outside the source grid are 0, as scipy's
//!   `mode="constant", cval=0`; positions within 1e-6 voxel of the edge count as inside. So
//!   a finer grid over the same field of view gets 0 in the half voxel beyond the source's
//!   outermost voxel centres (background, in skull-stripped scans).
//!
//! Checked against nibabel/scipy in `tests/resample_fixtures.rs` (fixtures written by
//! `scripts/resample_fixtures.py`).

use crate::error::{Error, Result};
use crate::grid::{apply, Grid};
use crate::volume::{Affine, Volume};
use rayon::prelude::*;

/// How to compute a target voxel that does not fall on a source voxel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interpolation {
    /// Trilinear (intensities).
    Linear,
    /// Nearest neighbour (labels).
    Nearest,
}

/// How a resampling was done, for logs and reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// Voxels copied: the grids differ by an axis permutation, flips and a whole-voxel shift.
    Exact,
    /// Voxels interpolated.
    Interpolated(Interpolation),
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Method::Exact => "exact (axis permutation/flip)",
            Method::Interpolated(Interpolation::Linear) => "trilinear",
            Method::Interpolated(Interpolation::Nearest) => "nearest neighbour",
        })
    }
}

/// Tolerance (in voxels) for "the position is inside the source grid".
const TOL: f64 = 1e-6;

/// Tolerance for "the map is a permutation with a whole-voxel shift": affines stored as
/// float32 (sform) are off by ~1e-5 mm between two files of one scan, which must still copy.
const EXACT_TOL: f64 = 1e-4;

/// One target axis of an exact map: the source axis it reads, the step (±1) and the offset,
/// so that target index `t` reads source index `offset + step · t` along `axis`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AxisMap {
    /// Source axis.
    pub axis: usize,
    /// +1 or −1.
    pub step: i64,
    /// Source index of target index 0.
    pub offset: i64,
}

/// The axis maps of `map` (target voxel → source voxel) if it is a signed permutation with a
/// whole-voxel translation, else `None`.
pub fn exact_axes(map: &Affine) -> Option<[AxisMap; 3]> {
    let mut out = [AxisMap { axis: 0, step: 1, offset: 0 }; 3];
    let mut used = [false; 3];
    for (t, slot) in out.iter_mut().enumerate() {
        // Column t of the map says where target axis t goes in the source.
        let mut found = None;
        for (s, row) in map.iter().take(3).enumerate() {
            let v = row[t];
            if (v.abs() - 1.0).abs() <= EXACT_TOL {
                if found.is_some() {
                    return None;
                }
                found = Some((s, if v > 0.0 { 1 } else { -1 }));
            } else if v.abs() > EXACT_TOL {
                return None;
            }
        }
        let (s, step) = found?;
        if used[s] {
            return None;
        }
        used[s] = true;
        let shift = map[s][3];
        if (shift - shift.round()).abs() > EXACT_TOL {
            return None;
        }
        *slot = AxisMap { axis: s, step, offset: shift.round() as i64 };
    }
    Some(out)
}

/// `vol` resampled onto `target` (see the module docs). The result lies on `target` with
/// spacing from [`Grid::spacing`] and no source header: to write it with a reference file's
/// header, use `reference.with_data(result.data)`.
///
/// # Errors
/// A singular affine (naming it), or `vol`'s data not filling its shape.
pub fn resample(vol: &Volume, target: &Grid, interp: Interpolation) -> Result<(Volume, Method)> {
    let (data, method) = resample_values(&vol.data, &Grid::of(vol), target, interp)?;
    let mut out = target.zeros();
    out.data = data;
    Ok((out, method))
}

/// Labels `labels` on grid `from` mapped onto grid `to` by nearest neighbour (exact copy for
/// permutations and flips); voxels outside `from` become 0 (background).
///
/// # Errors
/// As [`resample`].
pub fn resample_labels(labels: &[u8], from: &Grid, to: &Grid) -> Result<Vec<u8>> {
    let values: Vec<f32> = labels.iter().map(|&l| f32::from(l)).collect();
    let (out, _) = resample_values(&values, from, to, Interpolation::Nearest)?;
    Ok(out.into_iter().map(|v| v as u8).collect())
}

fn resample_values(
    data: &[f32],
    from: &Grid,
    to: &Grid,
    interp: Interpolation,
) -> Result<(Vec<f32>, Method)> {
    let n_src: usize = from.shape.iter().product();
    if data.len() != n_src || n_src == 0 {
        return Err(Error::Shape {
            context: "resampling: voxels for the source grid".into(),
            expected: from.shape.to_vec(),
            actual: vec![data.len()],
        });
    }
    let map = to.voxel_map_to(from)?;
    let [_, ty, tz] = to.shape;
    let mut out = vec![0f32; to.shape.iter().product()];
    if out.is_empty() {
        return Ok((out, Method::Exact));
    }
    let [sx, sy, sz] = from.shape;
    let src_index = |x: usize, y: usize, z: usize| (x * sy + y) * sz + z;
    if let Some(axes) = exact_axes(&map) {
        out.par_chunks_mut(ty * tz).enumerate().for_each(|(i, slab)| {
            for j in 0..ty {
                for k in 0..tz {
                    let t = [i as i64, j as i64, k as i64];
                    let mut s = [0i64; 3];
                    for (a, m) in axes.iter().enumerate() {
                        s[m.axis] = m.offset + m.step * t[a];
                    }
                    if (0..3).all(|a| s[a] >= 0 && (s[a] as usize) < from.shape[a]) {
                        slab[j * tz + k] =
                            data[src_index(s[0] as usize, s[1] as usize, s[2] as usize)];
                    }
                }
            }
        });
        return Ok((out, Method::Exact));
    }
    // Position along one source axis of length n: `None` outside, else the clamped coordinate.
    let inside = |c: f64, n: usize| -> Option<f64> {
        let hi = (n - 1) as f64;
        (c >= -TOL && c <= hi + TOL).then(|| c.clamp(0.0, hi))
    };
    out.par_chunks_mut(ty * tz).enumerate().for_each(|(i, slab)| {
        for j in 0..ty {
            for k in 0..tz {
                let c = apply(&map, [i as f64, j as f64, k as f64]);
                let (Some(x), Some(y), Some(z)) =
                    (inside(c[0], sx), inside(c[1], sy), inside(c[2], sz))
                else {
                    continue;
                };
                slab[j * tz + k] = match interp {
                    Interpolation::Nearest => {
                        // scipy's order 0: floor(c + 0.5).
                        let r = |v: f64, n: usize| ((v + 0.5).floor() as usize).min(n - 1);
                        data[src_index(r(x, sx), r(y, sy), r(z, sz))]
                    }
                    Interpolation::Linear => {
                        let split = |v: f64, n: usize| {
                            let v0 = (v.floor() as usize).min(n - 1);
                            let v1 = (v0 + 1).min(n - 1);
                            (v0, v1, v - v0 as f64)
                        };
                        let (x0, x1, fx) = split(x, sx);
                        let (y0, y1, fy) = split(y, sy);
                        let (z0, z1, fz) = split(z, sz);
                        let at = |a, b, c| f64::from(data[src_index(a, b, c)]);
                        let lerp = |a: f64, b: f64, f: f64| a * (1.0 - f) + b * f;
                        let c00 = lerp(at(x0, y0, z0), at(x0, y0, z1), fz);
                        let c01 = lerp(at(x0, y1, z0), at(x0, y1, z1), fz);
                        let c10 = lerp(at(x1, y0, z0), at(x1, y0, z1), fz);
                        let c11 = lerp(at(x1, y1, z0), at(x1, y1, z1), fz);
                        lerp(lerp(c00, c01, fy), lerp(c10, c11, fy), fx) as f32
                    }
                };
            }
        }
    });
    Ok((out, Method::Interpolated(interp)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume::IDENTITY_AFFINE;

    fn ramp(shape: [usize; 3]) -> Volume {
        let n = shape.iter().product();
        Volume::new((0..n).map(|v| v as f32).collect(), shape).unwrap()
    }

    #[test]
    fn same_grid_is_an_exact_copy() {
        let v = ramp([3, 4, 5]);
        let (r, m) = resample(&v, &Grid::of(&v), Interpolation::Linear).unwrap();
        assert_eq!(m, Method::Exact);
        assert_eq!(r.data, v.data);
    }

    #[test]
    fn flip_and_permutation_are_exact() {
        // Source stored LPS (x, y flipped), target RAS with x and z swapped.
        let v = {
            let mut v = ramp([3, 4, 5]);
            v.affine = [
                [-1.0, 0.0, 0.0, 2.0],
                [0.0, -1.0, 0.0, 3.0],
                [0.0, 0.0, 1.0, 0.0],
                [0.0, 0.0, 0.0, 1.0],
            ];
            v
        };
        let target = Grid {
            shape: [5, 4, 3],
            affine: [
                [0.0, 0.0, 1.0, 0.0],
                [0.0, 1.0, 0.0, 0.0],
                [1.0, 0.0, 0.0, 0.0],
                [0.0, 0.0, 0.0, 1.0],
            ],
        };
        let (r, m) = resample(&v, &target, Interpolation::Linear).unwrap();
        assert_eq!(m, Method::Exact);
        for a in 0..5 {
            for b in 0..4 {
                for c in 0..3 {
                    // Target (a, b, c) is world (c, b, a) = source (2 - c, 3 - b, a).
                    assert_eq!(r.at(a, b, c), v.at(2 - c, 3 - b, a));
                }
            }
        }
        // And back again, exactly.
        let (back, _) = resample(&r, &Grid::of(&v), Interpolation::Linear).unwrap();
        assert_eq!(back.data, v.data);
    }

    #[test]
    fn float32_rounding_of_the_affine_still_copies_exactly() {
        let v = ramp([3, 4, 5]);
        let mut target = Grid::of(&v);
        target.affine[0][3] += 3e-5; // what a float32 sform does to 239.0 × 0.9375
        target.affine[1][1] *= 1.0 + 1e-7;
        let (r, m) = resample(&v, &target, Interpolation::Linear).unwrap();
        assert_eq!(m, Method::Exact);
        assert_eq!(r.data, v.data);
    }

    #[test]
    fn half_voxel_shift_interpolates_and_pads_with_zero() {
        let v = ramp([4, 1, 1]);
        let mut target = Grid::of(&v);
        target.affine = IDENTITY_AFFINE;
        target.affine[0][3] = 0.5;
        let (r, m) = resample(&v, &target, Interpolation::Linear).unwrap();
        assert_eq!(m, Method::Interpolated(Interpolation::Linear));
        assert_eq!(r.data, vec![0.5, 1.5, 2.5, 0.0]);
        let (n, _) = resample(&v, &target, Interpolation::Nearest).unwrap();
        assert_eq!(n.data, vec![1.0, 2.0, 3.0, 0.0]);
    }

    #[test]
    fn labels_on_a_finer_grid_map_back_exactly() {
        let mut g = Grid { shape: [6, 5, 4], affine: IDENTITY_AFFINE };
        g.affine[0][0] = 2.0;
        g.affine[1][1] = 1.5;
        let labels: Vec<u8> = (0..120).map(|i| [0u8, 1, 2, 4][i % 4]).collect();
        let fine = g.isotropic(0.5).unwrap();
        // Each fine voxel takes the label of the coarse voxel that contains it, as a network
        // run on the fine grid would ideally answer.
        let map = fine.voxel_map_to(&g).unwrap();
        let [fx, fy, fz] = fine.shape;
        let mut up = Vec::with_capacity(fx * fy * fz);
        for i in 0..fx {
            for j in 0..fy {
                for k in 0..fz {
                    let c = apply(&map, [i as f64, j as f64, k as f64]);
                    let r = |v: f64, n: usize| (v.round().max(0.0) as usize).min(n - 1);
                    let (a, b, d) = (r(c[0], 6), r(c[1], 5), r(c[2], 4));
                    up.push(labels[(a * 5 + b) * 4 + d]);
                }
            }
        }
        let back = resample_labels(&up, &fine, &g).unwrap();
        assert_eq!(back, labels);
    }

    #[test]
    fn wrong_length_and_singular_affine_are_errors() {
        let g = Grid { shape: [2, 2, 2], affine: IDENTITY_AFFINE };
        assert!(resample_labels(&[0; 7], &g, &g).is_err());
        let mut flat = g;
        flat.affine[2][2] = 0.0;
        assert!(resample_labels(&[0; 8], &flat, &g).is_err());
    }
}
