//! Surface distances: the borders of two masks and the distances between them, from which
//! HD95 and the normalised surface Dice (NSD) are reductions.
//!
//! * The border of a mask is the mask minus its erosion by the 6-connected structure, voxels
//!   outside the image counting as background (`scipy.ndimage.binary_erosion` with
//!   `border_value=0`, as medpy and panoptica use it).
//! * Distances come from an exact Euclidean distance transform (Felzenszwalb–Huttenlocher,
//!   separable, anisotropic spacing) in f64, computed on the bounding box of the two borders
//!   only (exact: the nearest border voxel always lies inside it).
//! * [`percentile`] is numpy's `percentile` with linear interpolation.
//!
//! Masks are C-contiguous over `shape` (mgsd-io's axis order); `spacing` is in mm per axis.

use rayon::prelude::*;

/// For every border voxel of `a`, the distance (mm) to the nearest border voxel of `b`, and
/// the same from `b` to `a`; `None` if either mask is empty.
///
/// # Panics
/// If a mask's length is not the product of `shape` (a programming error).
pub fn surface_distances(
    a: &[bool],
    b: &[bool],
    shape: [usize; 3],
    spacing: [f64; 3],
) -> Option<(Vec<f64>, Vec<f64>)> {
    let n: usize = shape.iter().product();
    assert!(a.len() == n && b.len() == n, "surface_distances: masks do not match {shape:?}");
    let (bord_a, bord_b) = rayon::join(|| border(a, shape), || border(b, shape));
    // Restrict to the bounding box of both borders: every query and every feature lies inside.
    let (lo, hi) = bounding_box(&bord_a, &bord_b, shape)?;
    let sub = [hi[0] - lo[0], hi[1] - lo[1], hi[2] - lo[2]];
    let crop = |m: &[bool]| -> Vec<bool> {
        let mut out = Vec::with_capacity(sub.iter().product());
        for i in lo[0]..hi[0] {
            for j in lo[1]..hi[1] {
                let row = (i * shape[1] + j) * shape[2];
                out.extend_from_slice(&m[row + lo[2]..row + hi[2]]);
            }
        }
        out
    };
    let (ca, cb) = (crop(&bord_a), crop(&bord_b));
    let (a_to_b, b_to_a) = rayon::join(
        || squared_edt_at(&cb, &ca, sub, spacing),
        || squared_edt_at(&ca, &cb, sub, spacing),
    );
    let root = |v: Vec<f64>| -> Vec<f64> { v.into_iter().map(f64::sqrt).collect() };
    Some((root(a_to_b), root(b_to_a)))
}

/// The 95th percentile of the pooled distances of both directions (medpy's and panoptica's
/// HD95).
pub fn hd95_of(a_to_b: &[f64], b_to_a: &[f64]) -> f64 {
    let mut d: Vec<f64> = a_to_b.iter().chain(b_to_a).copied().collect();
    percentile(&mut d, 95.0)
}

/// Normalised surface Dice at tolerance `tau` (mm), with panoptica's formula:
/// `(tp_a + tp_b) / (tp_a + tp_b + fp + fn + f64::MIN_POSITIVE)` where `tp_a` is the fraction
/// of `a`'s border within `tau` of `b`'s, `fp` the fraction beyond, and so on for `b`.
pub fn nsd_of(a_to_b: &[f64], b_to_a: &[f64], tau: f64) -> f64 {
    let (na, nb) = (a_to_b.len() as f64, b_to_a.len() as f64);
    let within = |d: &[f64]| d.iter().filter(|&&x| x <= tau).count() as f64;
    let (wa, wb) = (within(a_to_b), within(b_to_a));
    let tp_a = wa / na;
    let tp_b = wb / nb;
    let fp = (na - wa) / na;
    let fn_ = (nb - wb) / nb;
    (tp_a + tp_b) / (tp_a + tp_b + fp + fn_ + f64::MIN_POSITIVE)
}

/// numpy's `percentile(x, q)` with linear interpolation. `x` is reordered.
///
/// # Panics
/// If `x` is empty.
pub fn percentile(x: &mut [f64], q: f64) -> f64 {
    x.sort_unstable_by(f64::total_cmp);
    let pos = q / 100.0 * (x.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = (lo + 1).min(x.len() - 1);
    let frac = pos - lo as f64;
    // numpy's `_lerp`: a + (b - a) * t, switched to b - (b - a) * (1 - t) for t >= 0.5.
    let (a, b) = (x[lo], x[hi]);
    if frac >= 0.5 {
        b - (b - a) * (1.0 - frac)
    } else {
        a + (b - a) * frac
    }
}

/// `[lo, hi)` box holding every true voxel of `a` and `b`; `None` if either is empty.
fn bounding_box(a: &[bool], b: &[bool], shape: [usize; 3]) -> Option<([usize; 3], [usize; 3])> {
    if !a.iter().any(|&v| v) || !b.iter().any(|&v| v) {
        return None;
    }
    let mut lo = shape;
    let mut hi = [0usize; 3];
    for i in 0..shape[0] {
        for j in 0..shape[1] {
            let row = (i * shape[1] + j) * shape[2];
            for k in 0..shape[2] {
                if a[row + k] || b[row + k] {
                    for (ax, v) in [i, j, k].into_iter().enumerate() {
                        lo[ax] = lo[ax].min(v);
                        hi[ax] = hi[ax].max(v + 1);
                    }
                }
            }
        }
    }
    Some((lo, hi))
}

/// The border of a mask: the mask minus its erosion by the 6-connected structure, with voxels
/// outside the image counted as background (scipy's `binary_erosion(border_value=0)`).
pub fn border(mask: &[bool], shape: [usize; 3]) -> Vec<bool> {
    let [n0, n1, n2] = shape;
    let mut out = vec![false; mask.len()];
    out.par_chunks_mut(n1 * n2).enumerate().for_each(|(i, plane)| {
        for j in 0..n1 {
            for k in 0..n2 {
                let idx = (i * n1 + j) * n2 + k;
                if !mask[idx] {
                    continue;
                }
                let interior = i > 0
                    && i + 1 < n0
                    && j > 0
                    && j + 1 < n1
                    && k > 0
                    && k + 1 < n2
                    && mask[idx - n1 * n2]
                    && mask[idx + n1 * n2]
                    && mask[idx - n2]
                    && mask[idx + n2]
                    && mask[idx - 1]
                    && mask[idx + 1];
                plane[j * n2 + k] = !interior;
            }
        }
    });
    out
}

/// Exact squared Euclidean distance (mm²) from every voxel to the nearest `true` voxel, with
/// voxel `spacing` per axis; `f64::INFINITY` everywhere if there is none.
/// Felzenszwalb & Huttenlocher (2012), "Distance transforms of sampled functions": one 1-D
/// lower-envelope pass per axis.
pub fn squared_edt(feature: &[bool], shape: [usize; 3], spacing: [f64; 3]) -> Vec<f64> {
    let [n0, n1, n2] = shape;
    let mut d: Vec<f64> = feature.iter().map(|&f| if f { 0.0 } else { f64::INFINITY }).collect();
    if d.is_empty() {
        return d;
    }
    // Axis 2 (contiguous lines).
    d.par_chunks_mut(n2).for_each_init(
        || Scratch::new(n2),
        |s, line| {
            s.f[..n2].copy_from_slice(line);
            dt_1d(&s.f[..n2], spacing[2], line, &mut s.v, &mut s.z);
        },
    );
    // Axis 1: lines of stride n2 within each axis-0 plane.
    d.par_chunks_mut(n1 * n2).for_each_init(
        || Scratch::new(n1),
        |s, plane| {
            for k in 0..n2 {
                for j in 0..n1 {
                    s.f[j] = plane[j * n2 + k];
                }
                dt_1d(&s.f[..n1], spacing[1], &mut s.out[..n1], &mut s.v, &mut s.z);
                for j in 0..n1 {
                    plane[j * n2 + k] = s.out[j];
                }
            }
        },
    );
    // Axis 0: transpose to (n1·n2, n0) lines, transform, transpose back.
    let plane = n1 * n2;
    let mut t = vec![0.0f64; d.len()];
    t.par_chunks_mut(n0).enumerate().for_each_init(
        || Scratch::new(n0),
        |s, (jk, line)| {
            for i in 0..n0 {
                s.f[i] = d[i * plane + jk];
            }
            dt_1d(&s.f[..n0], spacing[0], line, &mut s.v, &mut s.z);
        },
    );
    d.par_chunks_mut(plane).enumerate().for_each(|(i, out)| {
        for (jk, o) in out.iter_mut().enumerate() {
            *o = t[jk * n0 + i];
        }
    });
    d
}

/// [`squared_edt`] read only at the `query` voxels (in memory order): the same values, but the
/// second and third passes run only on the lines that lead to a query voxel, which is what
/// surface distances need (a few borders in a large box).
///
/// # Panics
/// If `feature` or `query` does not have one value per voxel of `shape`.
pub fn squared_edt_at(
    feature: &[bool],
    query: &[bool],
    shape: [usize; 3],
    spacing: [f64; 3],
) -> Vec<f64> {
    let [n0, n1, n2] = shape;
    let plane = n1 * n2;
    assert!(feature.len() == n0 * plane && query.len() == feature.len(), "squared_edt_at: shape");
    let mut d: Vec<f64> = feature.iter().map(|&f| if f { 0.0 } else { f64::INFINITY }).collect();
    if d.is_empty() {
        return Vec::new();
    }
    // Which (j, k) lines along axis 0 and which k columns hold a query voxel.
    let mut line_needed = vec![false; plane];
    for (idx, _) in query.iter().enumerate().filter(|(_, &q)| q) {
        line_needed[idx % plane] = true;
    }
    let mut col_needed = vec![false; n2];
    for (jk, _) in line_needed.iter().enumerate().filter(|(_, &x)| x) {
        col_needed[jk % n2] = true;
    }
    let cols: Vec<usize> = (0..n2).filter(|&k| col_needed[k]).collect();
    // Axis 2: lines with a feature only (the others stay infinite).
    d.par_chunks_mut(n2).zip(feature.par_chunks(n2)).for_each_init(
        || Scratch::new(n2),
        |s, (line, f)| {
            if f.iter().any(|&x| x) {
                s.f[..n2].copy_from_slice(line);
                dt_1d(&s.f[..n2], spacing[2], line, &mut s.v, &mut s.z);
            }
        },
    );
    // Axis 1: planes with a feature, columns with a query.
    d.par_chunks_mut(plane).zip(feature.par_chunks(plane)).for_each_init(
        || Scratch::new(n1),
        |s, (pl, f)| {
            if !f.iter().any(|&x| x) {
                return;
            }
            for &k in &cols {
                for j in 0..n1 {
                    s.f[j] = pl[j * n2 + k];
                }
                dt_1d(&s.f[..n1], spacing[1], &mut s.out[..n1], &mut s.v, &mut s.z);
                for j in 0..n1 {
                    pl[j * n2 + k] = s.out[j];
                }
            }
        },
    );
    // Axis 0: lines with a query; the results at their query voxels.
    let lines: Vec<usize> = (0..plane).filter(|&jk| line_needed[jk]).collect();
    let mut at: Vec<(usize, f64)> = lines
        .par_iter()
        .fold(
            || (Scratch::new(n0), Vec::new()),
            |(mut s, mut acc), &jk| {
                for i in 0..n0 {
                    s.f[i] = d[i * plane + jk];
                }
                dt_1d(&s.f[..n0], spacing[0], &mut s.out[..n0], &mut s.v, &mut s.z);
                for i in 0..n0 {
                    if query[i * plane + jk] {
                        acc.push((i * plane + jk, s.out[i]));
                    }
                }
                (s, acc)
            },
        )
        .map(|(_, acc)| acc)
        .reduce(Vec::new, |mut a, mut b| {
            a.append(&mut b);
            a
        });
    at.sort_unstable_by_key(|&(idx, _)| idx);
    at.into_iter().map(|(_, v)| v).collect()
}

struct Scratch {
    f: Vec<f64>,
    out: Vec<f64>,
    v: Vec<usize>,
    z: Vec<f64>,
}

impl Scratch {
    fn new(n: usize) -> Self {
        Scratch { f: vec![0.0; n], out: vec![0.0; n], v: vec![0; n], z: vec![0.0; n + 1] }
    }
}

/// 1-D squared distance transform of `f` (squared distances, `INFINITY` = no feature) with
/// sample spacing `w`: `d[p] = min_q w²(p − q)² + f[q]`.
fn dt_1d(f: &[f64], w: f64, d: &mut [f64], v: &mut [usize], z: &mut [f64]) {
    let n = f.len();
    let w2 = w * w;
    let Some(first) = f.iter().position(|x| x.is_finite()) else {
        d.fill(f64::INFINITY);
        return;
    };
    let mut k = 0usize;
    v[0] = first;
    z[0] = f64::NEG_INFINITY;
    z[1] = f64::INFINITY;
    for q in first + 1..n {
        if !f[q].is_finite() {
            continue;
        }
        let fq = f[q] + w2 * (q * q) as f64;
        // z[0] = -inf, so the loop stops at k = 0 at the latest.
        let mut s;
        loop {
            let vk = v[k];
            s = (fq - (f[vk] + w2 * (vk * vk) as f64)) / (2.0 * w2 * (q - vk) as f64);
            if s > z[k] {
                break;
            }
            k -= 1;
        }
        k += 1;
        v[k] = q;
        z[k] = s;
        z[k + 1] = f64::INFINITY;
    }
    let mut k = 0usize;
    for (p, dp) in d.iter_mut().enumerate().take(n) {
        while z[k + 1] < p as f64 {
            k += 1;
        }
        let diff = p as f64 - v[k] as f64;
        *dp = w2 * diff * diff + f[v[k]];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Brute force: min over all feature voxels.
    fn brute_edt(feature: &[bool], shape: [usize; 3], sp: [f64; 3]) -> Vec<f64> {
        let pts: Vec<[usize; 3]> = (0..feature.len())
            .filter(|&i| feature[i])
            .map(|i| [i / (shape[1] * shape[2]), (i / shape[2]) % shape[1], i % shape[2]])
            .collect();
        (0..feature.len())
            .map(|i| {
                let p = [i / (shape[1] * shape[2]), (i / shape[2]) % shape[1], i % shape[2]];
                pts.iter()
                    .map(|q| {
                        (0..3).map(|a| ((p[a] as f64 - q[a] as f64) * sp[a]).powi(2)).sum::<f64>()
                    })
                    .fold(f64::INFINITY, f64::min)
            })
            .collect()
    }

    #[test]
    fn edt_matches_brute_force() {
        let shape = [7, 9, 5];
        let sp = [1.3, 0.7, 2.9];
        let mut state = 12345u64;
        for density in [1u64, 5, 30] {
            let feature: Vec<bool> = (0..shape.iter().product::<usize>())
                .map(|_| {
                    state =
                        state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    (state >> 33) % 100 < density
                })
                .collect();
            let fast = squared_edt(&feature, shape, sp);
            let slow = brute_edt(&feature, shape, sp);
            for (a, b) in fast.iter().zip(&slow) {
                assert!((a - b).abs() <= 1e-9 * b.max(1.0) || (a.is_infinite() && b.is_infinite()));
            }
        }
    }

    #[test]
    fn edt_at_queries_equals_the_full_transform() {
        let shape = [9, 7, 11];
        let sp = [0.9, 1.0, 2.0];
        let mut state = 5u64;
        let mut draw = |pct: u64| -> Vec<bool> {
            (0..shape.iter().product::<usize>())
                .map(|_| {
                    state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
                    (state >> 33) % 100 < pct
                })
                .collect()
        };
        for (fp, qp) in [(1, 10), (10, 3), (40, 40), (0, 5)] {
            let (f, q) = (draw(fp), draw(qp));
            let full = squared_edt(&f, shape, sp);
            let want: Vec<f64> = full.iter().zip(&q).filter(|(_, &q)| q).map(|(&d, _)| d).collect();
            let got = squared_edt_at(&f, &q, shape, sp);
            assert_eq!(got.len(), want.len());
            for (a, b) in got.iter().zip(&want) {
                assert!(a == b || (a - b).abs() <= 1e-12 * b.max(1.0), "{a} vs {b}");
            }
        }
    }

    #[test]
    fn percentile_matches_numpy() {
        // numpy.percentile([1, 2, 3, 4, 10], 95) == 8.8
        let mut x = vec![10.0, 2.0, 1.0, 4.0, 3.0];
        assert!((percentile(&mut x, 95.0) - 8.8).abs() < 1e-12);
        let mut x = vec![5.0];
        assert_eq!(percentile(&mut x, 95.0), 5.0);
    }

    #[test]
    fn nsd_of_identical_surfaces_is_one() {
        assert!((nsd_of(&[0.0, 0.0], &[0.0], 1.0) - 1.0).abs() < 1e-15);
        assert_eq!(nsd_of(&[5.0], &[5.0], 1.0), 0.0);
    }
}
