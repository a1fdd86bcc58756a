//! The BraTS 2018–2021 metrics per region (WT/TC/ET): Dice, HD95, sensitivity, specificity
//! (MGSD-SPEC §7).
//!
//! * Dice = 2|P∩T| / (|P| + |T|).
//! * HD95 reproduces medpy's `metric.binary.hd95` (connectivity 1): the pooled border-to-border
//!   distances of both directions, in mm, and their 95th percentile (see [`crate::surface`]).
//! * Both masks empty → Dice 1, HD95 0; exactly one empty → Dice 0, HD95 [`EMPTY_HD95_MM`].
//! * Sensitivity = |P∩T| / |T| (1 when the truth is empty: nothing was missed); specificity =
//!   |¬P∩¬T| / |¬T| (1 when the whole image is tumour).
//! * The RFNet family's "ET < 500 voxels → 0" post-processing is [`PostProcess::min_et`]: a
//!   prediction with fewer ET voxels scores an empty ET region (WT and TC unchanged).

use crate::surface::{hd95_of, surface_distances};
use mgsd_io::Region;
use rayon::prelude::*;

/// HD95 (mm) when exactly one of prediction and truth is empty: the BraTS 2018–2021 value
/// (the diagonal of a 240 × 240 × 155 mm volume).
pub const EMPTY_HD95_MM: f64 = 373.12866;

/// The literature's ET threshold for the RFNet-family post-processing.
pub const RFNET_MIN_ET_VOXELS: usize = 500;

/// Dice and HD95 of one region of one case.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RegionScore {
    /// Dice in [0, 1].
    pub dice: f64,
    /// 95th-percentile Hausdorff distance in mm.
    pub hd95: f64,
}

/// Scores of the three regions, in [`Region::ALL`] order (WT, TC, ET).
pub type CaseScores = [RegionScore; 3];

/// The legacy metrics of one region: Dice, HD95, sensitivity and specificity.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LegacyScore {
    /// Dice in [0, 1] (both empty → 1).
    pub dice: f64,
    /// HD95 in mm (both empty → 0, one empty → [`EMPTY_HD95_MM`]).
    pub hd95: f64,
    /// |P∩T| / |T| (empty truth → 1).
    pub sensitivity: f64,
    /// |¬P∩¬T| / |¬T| (no background in the truth → 1).
    pub specificity: f64,
}

/// Post-processing applied to a predicted label map before scoring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct PostProcess {
    /// If set, a prediction with fewer ET voxels than this scores an empty ET region
    /// (RFNet/mmFormer: 500).
    pub min_et: Option<usize>,
}

impl PostProcess {
    /// No post-processing (the MGSD/ACN protocol).
    pub const NONE: PostProcess = PostProcess { min_et: None };
    /// The RFNet family's "ET < 500 voxels → 0".
    pub const RFNET: PostProcess = PostProcess { min_et: Some(RFNET_MIN_ET_VOXELS) };

    /// Applies the post-processing to a canonical label map: with too few ET voxels, label 4
    /// becomes 1 (the voxels stay in the tumour core, as the regions are nested), which is what
    /// [`score_case`] scores.
    pub fn apply(self, labels: &mut [u8]) {
        if let Some(min) = self.min_et {
            let et = labels.iter().filter(|&&l| Region::ET.contains(l)).count();
            if et < min {
                for l in labels.iter_mut().filter(|l| Region::ET.contains(**l)) {
                    *l = mgsd_io::labels::NCR_NET;
                }
            }
        }
    }
}

/// Dice of two masks with the BraTS convention (both empty → 1).
///
/// # Panics
/// If the masks differ in length (a programming error, not user input).
pub fn dice(pred: &[bool], truth: &[bool]) -> f64 {
    assert_eq!(pred.len(), truth.len(), "dice: masks differ in length");
    let (mut p, mut t, mut both) = (0usize, 0usize, 0usize);
    for (&a, &b) in pred.iter().zip(truth) {
        p += a as usize;
        t += b as usize;
        both += (a && b) as usize;
    }
    if p + t == 0 {
        1.0
    } else {
        2.0 * both as f64 / (p + t) as f64
    }
}

/// HD95 with the BraTS conventions: both empty → 0, exactly one empty → [`EMPTY_HD95_MM`],
/// else [`medpy_hd95`].
pub fn hd95(pred: &[bool], truth: &[bool], shape: [usize; 3], spacing: [f64; 3]) -> f64 {
    let p = pred.iter().any(|&v| v);
    let t = truth.iter().any(|&v| v);
    match (p, t) {
        (false, false) => 0.0,
        (true, false) | (false, true) => EMPTY_HD95_MM,
        (true, true) => medpy_hd95(pred, truth, shape, spacing).unwrap_or(EMPTY_HD95_MM),
    }
}

/// medpy's `hd95(result, reference, voxelspacing, connectivity=1)`; `None` if either mask is
/// empty (medpy raises).
///
/// # Panics
/// If a mask's length is not the product of `shape`.
pub fn medpy_hd95(a: &[bool], b: &[bool], shape: [usize; 3], spacing: [f64; 3]) -> Option<f64> {
    surface_distances(a, b, shape, spacing).map(|(ab, ba)| hd95_of(&ab, &ba))
}

/// Sensitivity and specificity of two masks (see the module docs for the empty cases).
///
/// # Panics
/// If the masks differ in length.
pub fn sensitivity_specificity(pred: &[bool], truth: &[bool]) -> (f64, f64) {
    assert_eq!(pred.len(), truth.len(), "sensitivity_specificity: masks differ in length");
    let (mut tp, mut t, mut tn, mut neg) = (0usize, 0usize, 0usize, 0usize);
    for (&p, &g) in pred.iter().zip(truth) {
        t += g as usize;
        tp += (p && g) as usize;
        neg += (!g) as usize;
        tn += (!p && !g) as usize;
    }
    let ratio = |a: usize, b: usize| if b == 0 { 1.0 } else { a as f64 / b as f64 };
    (ratio(tp, t), ratio(tn, neg))
}

/// Dice and HD95 of WT, TC and ET for one case, from canonical label maps (0/1/2/4) on a grid
/// of `shape` with `spacing` (mm), after `post` is applied to the prediction. The three regions
/// are scored in parallel.
///
/// # Panics
/// If the label maps do not both have one value per voxel of `shape`.
pub fn score_case(
    pred: &[u8],
    truth: &[u8],
    shape: [usize; 3],
    spacing: [f64; 3],
    post: PostProcess,
) -> CaseScores {
    let s = legacy_scores(pred, truth, shape, spacing, post);
    s.map(|r| RegionScore { dice: r.dice, hd95: r.hd95 })
}

/// [`score_case`] with sensitivity and specificity as well.
///
/// # Panics
/// If the label maps do not both have one value per voxel of `shape`.
pub fn legacy_scores(
    pred: &[u8],
    truth: &[u8],
    shape: [usize; 3],
    spacing: [f64; 3],
    post: PostProcess,
) -> [LegacyScore; 3] {
    let n: usize = shape.iter().product();
    assert!(pred.len() == n && truth.len() == n, "score_case: label maps do not match {shape:?}");
    let et_count = pred.iter().filter(|&&l| Region::ET.contains(l)).count();
    let drop_et = post.min_et.is_some_and(|m| et_count < m);
    let scores: Vec<LegacyScore> = Region::ALL
        .par_iter()
        .map(|&r| {
            let p: Vec<bool> =
                if r == Region::ET && drop_et { vec![false; n] } else { r.mask(pred) };
            let t = r.mask(truth);
            let (sensitivity, specificity) = sensitivity_specificity(&p, &t);
            LegacyScore {
                dice: dice(&p, &t),
                hd95: hd95(&p, &t, shape, spacing),
                sensitivity,
                specificity,
            }
        })
        .collect();
    [scores[0], scores[1], scores[2]]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conventions() {
        let shape = [4, 4, 4];
        let none = vec![0u8; 64];
        let s = score_case(&none, &none, shape, [1.0; 3], PostProcess::NONE);
        assert!(s.iter().all(|r| r.dice == 1.0 && r.hd95 == 0.0));
        let mut one = none.clone();
        one[21] = 4;
        let s = score_case(&one, &none, shape, [1.0; 3], PostProcess::NONE);
        assert!(s.iter().all(|r| r.dice == 0.0 && r.hd95 == EMPTY_HD95_MM));
        let s = score_case(&one, &one, shape, [1.0; 3], PostProcess::NONE);
        assert!(s.iter().all(|r| r.dice == 1.0 && r.hd95 == 0.0));
        // Post-processing drops the single ET voxel but keeps it in WT/TC.
        let s = score_case(&one, &one, shape, [1.0; 3], PostProcess { min_et: Some(2) });
        assert_eq!(s[2], RegionScore { dice: 0.0, hd95: EMPTY_HD95_MM });
        assert_eq!(s[0].dice, 1.0);
        let mut l = one.clone();
        PostProcess { min_et: Some(2) }.apply(&mut l);
        assert_eq!(l[21], 1);
    }

    #[test]
    fn sensitivity_and_specificity() {
        let t = [true, true, false, false];
        let p = [true, false, true, false];
        assert_eq!(sensitivity_specificity(&p, &t), (0.5, 0.5));
        assert_eq!(sensitivity_specificity(&[false; 2], &[false; 2]), (1.0, 1.0));
        assert_eq!(sensitivity_specificity(&[true; 2], &[true; 2]), (1.0, 1.0));
    }
}
