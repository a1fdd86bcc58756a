//! The official BraTS 2023+ metrics, as the `brats-evaluation` package computes them with its
//! `gli` configuration (panoptica's `Panoptica_Evaluator`), then parses them with
//! `brats-parse-metrics seg`.
//!
//! Per region (WT, TC, ET):
//! 1. Instances are the 26-connected components of the reference and of the prediction
//!    ([`crate::components`]).
//! 2. Instances are matched one-to-one by maximum-weight bipartite matching on their Dice
//!    (`linear_sum_assignment` on `1 − Dice`; pairs with Dice below 1e-6 cost `1 + 1e-6`);
//!    an assigned pair is a match when its Dice is above 0. Matches are true positives (TP),
//!    unmatched predicted instances false positives (FP), unmatched reference instances false
//!    negatives (FN); precision `TP / #pred`, recall `TP / #ref`, F1
//!    `TP / (TP + (FP + FN) / 2)`.
//! 3. Lesion-wise Dice, HD95 and NSD are computed on each matched pair alone, in mm with the
//!    voxel spacing (HD95 pools the border distances of both directions; NSD's tolerance is the
//!    smallest voxel spacing); their mean and population standard deviation are over the TPs
//!    only.
//! 4. Global Dice, HD95 and NSD compare the whole region masks.
//!
//! Edge cases, all as the official tool:
//! * no instance in either mask: every metric is NaN except TP/FP/FN (0);
//! * no TP otherwise: lesion-wise Dice and NSD 0, HD95 infinite, standard deviations NaN;
//! * no overlap at all between the region masks: global Dice and NSD 0, global HD95 infinite;
//! * precision with no predicted instance and recall with no reference instance: NaN.
//!
//! The parser's rule — an infinite global HD95 becomes [`HD95_PENALTY_MM`] — and its row for a
//! missing prediction are [`official_columns`] and [`missing_columns`].
//!
//! **Anisotropic grids.** Distances here are in mm along the right axes. The official tool
//! differs in two ways, both invisible on BraTS's own 1 mm grid:
//! * it reads the image with SimpleITK (array axes z, y, x) but takes the spacing from the
//!   NIfTI header (x, y, z), so its lesion-wise HD95 and NSD apply the spacing to the wrong
//!   axes (reversing the spacing reproduces its numbers: `tests/brats2023_fixture.rs`);
//! * it computes the global metrics without any spacing: its global HD95 is in voxels and its
//!   global NSD's tolerance is 0.5 voxel. Here the global NSD's tolerance is half the smallest
//!   spacing, so on any isotropic grid the global NSD equals the official one and the global
//!   HD95 equals it times the spacing.

use crate::components::{connected_components, Components, Connectivity};
use crate::matching::linear_sum_assignment;
use crate::surface::{hd95_of, nsd_of, surface_distances};
use crate::{Error, Result};
use mgsd_io::Region;
use rayon::prelude::*;
use std::collections::HashMap;

/// The parser's HD95 (mm) for an infinite global HD95 and for missing predictions: "diameter of
/// the cube in SRI space".
pub const HD95_PENALTY_MM: f64 = 373.0;

/// Instances with Dice below this are never matched (the `gli` configuration's threshold).
pub const MATCHING_THRESHOLD: f64 = 1e-6;

/// The official metrics of one region of one case, before the parser's penalty.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LesionwiseScore {
    /// Reference instances.
    pub n_ref: usize,
    /// Predicted instances.
    pub n_pred: usize,
    /// Matched instances.
    pub tp: usize,
    /// Unmatched predicted instances.
    pub fp: usize,
    /// Unmatched reference instances.
    pub fn_: usize,
    /// `TP / #pred` (NaN without predicted instances).
    pub precision: f64,
    /// `TP / #ref` (NaN without reference instances).
    pub recall: f64,
    /// Recognition quality `TP / (TP + (FP + FN) / 2)`.
    pub f1: f64,
    /// Dice of the region masks.
    pub global_dsc: f64,
    /// NSD of the region masks (tolerance half the smallest spacing).
    pub global_nsd: f64,
    /// HD95 (mm) of the region masks; infinite without overlap.
    pub global_hd95: f64,
    /// Mean Dice of the matched pairs.
    pub lesion_dsc_mean: f64,
    /// Population standard deviation of the matched pairs' Dice.
    pub lesion_dsc_std: f64,
    /// Mean NSD of the matched pairs (tolerance the smallest spacing).
    pub lesion_nsd_mean: f64,
    /// Population standard deviation of the matched pairs' NSD.
    pub lesion_nsd_std: f64,
    /// Mean HD95 (mm) of the matched pairs.
    pub lesion_hd95_mean: f64,
    /// Population standard deviation of the matched pairs' HD95.
    pub lesion_hd95_std: f64,
}

/// The official metrics of WT, TC and ET from canonical label maps (0/1/2/4) on a grid of
/// `shape` with `spacing` (mm). The regions are scored in parallel.
///
/// # Errors
/// [`Error::Shape`] if a label map does not have one value per voxel of `shape`.
pub fn score_case(
    pred: &[u8],
    truth: &[u8],
    shape: [usize; 3],
    spacing: [f64; 3],
) -> Result<[LesionwiseScore; 3]> {
    let n: usize = shape.iter().product();
    for (what, l) in [("prediction", pred), ("reference", truth)] {
        if l.len() != n {
            return Err(Error::Shape { what, shape, actual: l.len() });
        }
    }
    // Every region lies inside the bounding box of the tumour (label > 0) of either map, and
    // voxels outside it are background: scoring the box alone gives the same numbers.
    let (lo, hi) = tumour_box(pred, truth, shape);
    let sub = [0, 1, 2].map(|a| hi[a] - lo[a]);
    let crop = |l: &[u8]| -> Vec<u8> {
        let mut out = Vec::with_capacity(sub.iter().product());
        for i in lo[0]..hi[0] {
            for j in lo[1]..hi[1] {
                let row = (i * shape[1] + j) * shape[2];
                out.extend_from_slice(&l[row + lo[2]..row + hi[2]]);
            }
        }
        out
    };
    let (p, t) = (crop(pred), crop(truth));
    let v: Vec<LesionwiseScore> = Region::ALL
        .par_iter()
        .map(|&r| score_region(&r.mask(&p), &r.mask(&t), sub, spacing))
        .collect();
    Ok([v[0], v[1], v[2]])
}

/// `[lo, hi)` box of every non-zero label of `a` and `b`; the voxel at the origin if none.
fn tumour_box(a: &[u8], b: &[u8], shape: [usize; 3]) -> Box3 {
    let (mut lo, mut hi) = (shape, [0usize; 3]);
    for i in 0..shape[0] {
        for j in 0..shape[1] {
            let row = (i * shape[1] + j) * shape[2];
            let (ra, rb) = (&a[row..row + shape[2]], &b[row..row + shape[2]]);
            let first = ra.iter().zip(rb).position(|(&x, &y)| x | y != 0);
            if let Some(k0) = first {
                let k1 =
                    shape[2] - ra.iter().zip(rb).rev().position(|(&x, &y)| x | y != 0).unwrap_or(0);
                lo = [lo[0].min(i), lo[1].min(j), lo[2].min(k0)];
                hi = [hi[0].max(i + 1), hi[1].max(j + 1), hi[2].max(k1)];
            }
        }
    }
    if hi[0] == 0 {
        return ([0; 3], shape.map(|d| d.min(1)));
    }
    (lo, hi)
}

/// The official metrics of one binary region (see the module docs).
///
/// # Panics
/// If a mask's length is not the product of `shape` ([`score_case`] checks it).
pub fn score_region(
    pred: &[bool],
    truth: &[bool],
    shape: [usize; 3],
    spacing: [f64; 3],
) -> LesionwiseScore {
    let (pc, rc) = rayon::join(
        || connected_components(pred, shape, Connectivity::TwentySix),
        || connected_components(truth, shape, Connectivity::TwentySix),
    );
    let (n_pred, n_ref) = (pc.count(), rc.count());
    let nan = f64::NAN;

    // Overlap of every (reference, prediction) instance pair.
    let mut overlap: HashMap<(u32, u32), usize> = HashMap::new();
    for (&r, &p) in rc.labels.iter().zip(&pc.labels) {
        if r != 0 && p != 0 {
            *overlap.entry((r, p)).or_insert(0) += 1;
        }
    }
    let pair_dice = |r: u32, p: u32, ov: usize| {
        2.0 * ov as f64 / (rc.sizes[r as usize - 1] + pc.sizes[p as usize - 1]) as f64
    };
    let mut cost = vec![1.0 + 1e-6; n_ref * n_pred];
    for (&(r, p), &ov) in &overlap {
        let d = pair_dice(r, p, ov);
        if d >= MATCHING_THRESHOLD {
            cost[(r as usize - 1) * n_pred + (p as usize - 1)] = 1.0 - d;
        }
    }
    let matches: Vec<(u32, u32)> = linear_sum_assignment(&cost, n_ref, n_pred)
        .into_iter()
        .filter(|&(r, p)| cost[r * n_pred + p] < 1.0)
        .map(|(r, p)| (r as u32 + 1, p as u32 + 1))
        .collect();

    let tau = spacing.iter().copied().fold(f64::INFINITY, f64::min);
    let boxes_r = boxes(&rc, shape);
    let boxes_p = boxes(&pc, shape);
    let per_pair: Vec<[f64; 3]> = matches
        .par_iter()
        .map(|&(r, p)| {
            let (lo, hi) = union_box(boxes_r[r as usize - 1], boxes_p[p as usize - 1]);
            let sub = [hi[0] - lo[0], hi[1] - lo[1], hi[2] - lo[2]];
            let (mut a, mut b) = (Vec::new(), Vec::new());
            for i in lo[0]..hi[0] {
                for j in lo[1]..hi[1] {
                    let row = (i * shape[1] + j) * shape[2];
                    for k in lo[2]..hi[2] {
                        a.push(pc.labels[row + k] == p);
                        b.push(rc.labels[row + k] == r);
                    }
                }
            }
            let ov = overlap.get(&(r, p)).copied().unwrap_or(0);
            let dsc = pair_dice(r, p, ov);
            // Both instances are non-empty, so distances exist.
            let (ab, ba) = surface_distances(&a, &b, sub, spacing).unwrap_or_default();
            [dsc, hd95_of(&ab, &ba), nsd_of(&ba, &ab, tau)]
        })
        .collect();
    let tp = matches.len();
    let (fp, fn_) = (n_pred - tp, n_ref - tp);
    let no_instances = n_pred + n_ref == 0;
    let mean_std = |m: usize, zero_tp: f64| -> (f64, f64) {
        if tp == 0 {
            (if no_instances { nan } else { zero_tp }, nan)
        } else {
            let v: Vec<f64> = per_pair.iter().map(|x| x[m]).collect();
            let mean = v.iter().sum::<f64>() / tp as f64;
            let var = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / tp as f64;
            (mean, var.sqrt())
        }
    };
    let (lesion_dsc_mean, lesion_dsc_std) = mean_std(0, 0.0);
    let (lesion_hd95_mean, lesion_hd95_std) = mean_std(1, f64::INFINITY);
    let (lesion_nsd_mean, lesion_nsd_std) = mean_std(2, 0.0);

    // Global metrics on the region masks.
    let inter = overlap.values().sum::<usize>();
    let (global_dsc, global_hd95, global_nsd) = if inter == 0 {
        if no_instances {
            (nan, nan, nan)
        } else {
            (0.0, f64::INFINITY, 0.0)
        }
    } else {
        let ps: usize = pc.sizes.iter().sum();
        let rs: usize = rc.sizes.iter().sum();
        let (ab, ba) = surface_distances(pred, truth, shape, spacing).unwrap_or_default();
        (2.0 * inter as f64 / (ps + rs) as f64, hd95_of(&ab, &ba), nsd_of(&ba, &ab, 0.5 * tau))
    };
    let ratio = |a: usize, b: usize| if b == 0 { nan } else { a as f64 / b as f64 };
    let f1 = if tp == 0 {
        if no_instances {
            nan
        } else {
            0.0
        }
    } else {
        tp as f64 / (tp as f64 + 0.5 * fp as f64 + 0.5 * fn_ as f64)
    };
    LesionwiseScore {
        n_ref,
        n_pred,
        tp,
        fp,
        fn_,
        precision: ratio(tp, n_pred),
        recall: ratio(tp, n_ref),
        f1,
        global_dsc,
        global_nsd,
        global_hd95,
        lesion_dsc_mean,
        lesion_dsc_std,
        lesion_nsd_mean,
        lesion_nsd_std,
        lesion_hd95_mean,
        lesion_hd95_std,
    }
}

type Box3 = ([usize; 3], [usize; 3]);

/// `[lo, hi)` bounding box of every component.
fn boxes(c: &Components, shape: [usize; 3]) -> Vec<Box3> {
    let mut b = vec![(shape, [0usize; 3]); c.count()];
    for i in 0..shape[0] {
        for j in 0..shape[1] {
            let row = (i * shape[1] + j) * shape[2];
            for k in 0..shape[2] {
                let l = c.labels[row + k];
                if l != 0 {
                    let (lo, hi) = &mut b[l as usize - 1];
                    for (ax, v) in [i, j, k].into_iter().enumerate() {
                        lo[ax] = lo[ax].min(v);
                        hi[ax] = hi[ax].max(v + 1);
                    }
                }
            }
        }
    }
    b
}

fn union_box(a: Box3, b: Box3) -> Box3 {
    ([0, 1, 2].map(|ax| a.0[ax].min(b.0[ax])), [0, 1, 2].map(|ax| a.1[ax].max(b.1[ax])))
}

/// The column stems of `brats-parse-metrics seg`, in its order; the full name is
/// `<stem>_<region>` with region `wt`, `tc` or `et`.
pub const OFFICIAL_STEMS: [&str; 15] = [
    "all_instance_tp",
    "all_instance_fp",
    "all_instance_fn",
    "all_instance_prec",
    "all_instance_rec",
    "all_instance_f1",
    "global_dsc",
    "global_nsd",
    "global_hd95",
    "lesionwise_dsc_mean",
    "lesionwise_dsc_std",
    "lesionwise_nsd_mean",
    "lesionwise_nsd_std",
    "lesionwise_hd95_mean",
    "lesionwise_hd95_std",
];

/// The values of [`OFFICIAL_STEMS`] for one region, as `brats-parse-metrics seg` writes them:
/// an infinite global HD95 becomes [`HD95_PENALTY_MM`] (an infinite lesion-wise HD95 stays
/// infinite, as there).
pub fn official_columns(s: &LesionwiseScore) -> [f64; 15] {
    let global_hd95 = if s.global_hd95.is_infinite() { HD95_PENALTY_MM } else { s.global_hd95 };
    [
        s.tp as f64,
        s.fp as f64,
        s.fn_ as f64,
        s.precision,
        s.recall,
        s.f1,
        s.global_dsc,
        s.global_nsd,
        global_hd95,
        s.lesion_dsc_mean,
        s.lesion_dsc_std,
        s.lesion_nsd_mean,
        s.lesion_nsd_std,
        s.lesion_hd95_mean,
        s.lesion_hd95_std,
    ]
}

/// The parser's row for a case without prediction: [`HD95_PENALTY_MM`] for the global and mean
/// HD95, 0 for everything else.
pub fn missing_columns() -> [f64; 15] {
    OFFICIAL_STEMS
        .map(|s| if s.contains("hd95") && !s.contains("std") { HD95_PENALTY_MM } else { 0.0 })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cube(shape: [usize; 3], lo: [usize; 3], hi: [usize; 3], m: &mut [bool]) {
        for i in lo[0]..hi[0] {
            for j in lo[1]..hi[1] {
                for k in lo[2]..hi[2] {
                    m[(i * shape[1] + j) * shape[2] + k] = true;
                }
            }
        }
    }

    #[test]
    fn edge_cases() {
        let shape = [8, 8, 8];
        let empty = vec![false; 512];
        let s = score_region(&empty, &empty, shape, [1.0; 3]);
        assert_eq!((s.tp, s.fp, s.fn_), (0, 0, 0));
        assert!(s.global_dsc.is_nan() && s.lesion_hd95_mean.is_nan() && s.f1.is_nan());
        let mut one = empty.clone();
        cube(shape, [1, 1, 1], [3, 3, 3], &mut one);
        let s = score_region(&empty, &one, shape, [1.0; 3]);
        assert_eq!((s.tp, s.fp, s.fn_), (0, 0, 1));
        assert_eq!((s.global_dsc, s.lesion_dsc_mean, s.f1), (0.0, 0.0, 0.0));
        assert!(s.global_hd95.is_infinite() && s.lesion_hd95_mean.is_infinite());
        assert!(s.precision.is_nan() && s.recall == 0.0 && s.lesion_dsc_std.is_nan());
        assert_eq!(official_columns(&s)[8], HD95_PENALTY_MM);
        let s = score_region(&one, &one, shape, [1.0; 3]);
        assert_eq!((s.tp, s.global_dsc, s.lesion_dsc_mean, s.lesion_hd95_mean), (1, 1.0, 1.0, 0.0));
        assert_eq!((s.lesion_nsd_mean, s.global_nsd, s.lesion_dsc_std), (1.0, 1.0, 0.0));
    }

    #[test]
    fn speck_is_a_false_positive() {
        let shape = [10, 10, 10];
        let mut truth = vec![false; 1000];
        cube(shape, [1, 1, 1], [5, 5, 5], &mut truth);
        let mut pred = truth.clone();
        pred[(8 * 10 + 8) * 10 + 8] = true;
        let s = score_region(&pred, &truth, shape, [1.0; 3]);
        assert_eq!((s.tp, s.fp, s.fn_), (1, 1, 0));
        assert_eq!(s.lesion_dsc_mean, 1.0);
        assert!((s.f1 - 1.0 / 1.5).abs() < 1e-15);
        assert!(s.global_dsc < 1.0);
    }

    #[test]
    fn shape_mismatch_is_an_error() {
        assert!(score_case(&[0; 7], &[0; 8], [2, 2, 2], [1.0; 3]).is_err());
    }
}
