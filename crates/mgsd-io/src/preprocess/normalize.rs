//! Intensity normalisation of one channel: min-max to `[0, 1]` (ACN / MGSD protocol) or
//! z-score inside the brain mask (RFNet protocol).
//!
//! Statistics ([`NormParams`]) are computed separately from their application so that the
//! protocol pipeline can measure them on the whole volume and apply them while it crops, in
//! one pass. Non-finite voxels (NaN, ±∞) are ignored by the statistics and become 0.

use super::mask::BoundingBox;
use crate::error::{Error, Result};
use rayon::prelude::*;

const CHUNK: usize = 1 << 16;

/// Which normalisation a protocol uses.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Normalization {
    /// Leave intensities as read.
    None,
    /// Per volume `(x - min) / (max - min)` over all voxels (ACN, SMU-Net, MGSD). With the
    /// zero background of BraTS this keeps the background at 0 and maps the brightest voxel to 1.
    #[default]
    MinMax,
    /// `(x - mean) / std` with mean and (population) standard deviation over the brain mask;
    /// voxels outside the mask become 0 (RFNet, mmFormer).
    ZScoreInMask,
}

/// `y = (x - offset) * scale`, optionally only inside a mask (0 outside).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NormParams {
    /// Subtracted first.
    pub offset: f32,
    /// Multiplied second; 0 for a constant channel (which then becomes all 0).
    pub scale: f32,
    /// Whether voxels outside the brain mask are set to 0.
    pub masked: bool,
}

impl NormParams {
    /// Leaves values unchanged.
    pub const IDENTITY: NormParams = NormParams { offset: 0.0, scale: 1.0, masked: false };

    /// The normalised value of `x` (inside the mask when `masked`); 0 for a non-finite `x`.
    #[inline]
    pub fn map(&self, x: f32) -> f32 {
        // A select, not a branch, so that loops over voxels vectorise.
        let y = (x - self.offset) * self.scale;
        if x.is_finite() {
            y
        } else {
            0.0
        }
    }

    /// Normalises `src` into `dst` (same length); with `mask` and `masked`, voxels outside
    /// the mask become 0.
    #[inline]
    pub(crate) fn map_into(&self, src: &[f32], dst: &mut [f32], mask: Option<&[bool]>) {
        match mask {
            Some(m) if self.masked => {
                for ((o, &x), &m) in dst.iter_mut().zip(src).zip(m) {
                    let y = self.map(x);
                    *o = if m { y } else { 0.0 };
                }
            }
            _ => dst.iter_mut().zip(src).for_each(|(o, &x)| *o = self.map(x)),
        }
    }

    /// Normalises `x` in place; `mask` (required when `masked`) marks the brain.
    ///
    /// # Errors
    /// If `masked` and `mask` is missing or of another length.
    pub fn apply(&self, x: &mut [f32], mask: Option<&[bool]>) -> Result<()> {
        match (self.masked, mask) {
            (false, _) => {
                x.par_chunks_mut(CHUNK).for_each(|c| c.iter_mut().for_each(|v| *v = self.map(*v)))
            }
            (true, Some(m)) if m.len() == x.len() => {
                x.par_chunks_mut(CHUNK).zip(m.par_chunks(CHUNK)).for_each(|(c, m)| {
                    c.iter_mut().zip(m).for_each(|(v, &m)| *v = if m { self.map(*v) } else { 0.0 })
                })
            }
            (true, m) => {
                return Err(Error::Shape {
                    context: "NormParams::apply (brain mask)".into(),
                    expected: vec![x.len()],
                    actual: vec![m.map_or(0, <[bool]>::len)],
                })
            }
        }
        Ok(())
    }
}

/// Parameters of `norm` for one channel; `mask` is needed for [`Normalization::ZScoreInMask`].
///
/// # Errors
/// If the z-score is asked for without a mask of the channel's length.
pub fn params(norm: Normalization, x: &[f32], mask: Option<&[bool]>) -> Result<NormParams> {
    match norm {
        Normalization::None => Ok(NormParams::IDENTITY),
        Normalization::MinMax => Ok(min_max_params(x)),
        Normalization::ZScoreInMask => match mask {
            Some(m) if m.len() == x.len() => Ok(z_score_params(x, m)),
            m => Err(Error::Shape {
                context: "z-score normalisation (brain mask)".into(),
                expected: vec![x.len()],
                actual: vec![m.map_or(0, <[bool]>::len)],
            }),
        },
    }
}

/// Min-max parameters over every finite voxel of `x`. An empty or constant channel (a missing
/// modality is all 0) gets `scale = 0` and becomes all 0.
pub fn min_max_params(x: &[f32]) -> NormParams {
    let (lo, hi) = x
        .par_chunks(CHUNK)
        .map(min_max_finite)
        .reduce(|| (f32::INFINITY, f32::NEG_INFINITY), |a, b| (a.0.min(b.0), a.1.max(b.1)));
    if lo < hi {
        NormParams {
            offset: lo,
            scale: (1.0 / (f64::from(hi) - f64::from(lo))) as f32,
            masked: false,
        }
    } else {
        NormParams { offset: 0.0, scale: 0.0, masked: false }
    }
}

/// Lanes of the reductions below: independent accumulators let the compiler vectorise
/// without reassociating floating-point sums.
const LANES: usize = 8;

/// Minimum and maximum of the finite values of `c` (`(inf, -inf)` if there are none).
fn min_max_finite(c: &[f32]) -> (f32, f32) {
    let mut lo = [f32::INFINITY; LANES];
    let mut hi = [f32::NEG_INFINITY; LANES];
    let mut blocks = c.chunks_exact(LANES);
    for b in &mut blocks {
        for l in 0..LANES {
            let (x, f) = (b[l], b[l].is_finite());
            lo[l] = if f && x < lo[l] { x } else { lo[l] };
            hi[l] = if f && x > hi[l] { x } else { hi[l] };
        }
    }
    let mut out = (f32::INFINITY, f32::NEG_INFINITY);
    for &x in blocks.remainder().iter().filter(|x| x.is_finite()) {
        out = (out.0.min(x), out.1.max(x));
    }
    (lo.iter().fold(out.0, |a, &b| a.min(b)), hi.iter().fold(out.1, |a, &b| a.max(b)))
}

/// Count and sum of the finite values of `c` where `m` is true (f64 lanes).
fn masked_count_sum(c: &[f32], m: &[bool]) -> (f64, f64) {
    let mut n = [0.0f64; LANES];
    let mut s = [0.0f64; LANES];
    let (cb, mb) = (c.chunks_exact(LANES), m.chunks_exact(LANES));
    let (cr, mr) = (cb.remainder(), mb.remainder());
    for (x, k) in cb.zip(mb) {
        for l in 0..LANES {
            let take = k[l] && x[l].is_finite();
            n[l] += if take { 1.0 } else { 0.0 };
            s[l] += if take { f64::from(x[l]) } else { 0.0 };
        }
    }
    for (&x, &k) in cr.iter().zip(mr) {
        let take = k && x.is_finite();
        n[0] += if take { 1.0 } else { 0.0 };
        s[0] += if take { f64::from(x) } else { 0.0 };
    }
    (n.iter().sum(), s.iter().sum())
}

/// Sum of squared deviations from `mean` of the finite values of `c` where `m` is true.
fn masked_sq_dev(c: &[f32], m: &[bool], mean: f64) -> f64 {
    let mut s = [0.0f64; LANES];
    let (cb, mb) = (c.chunks_exact(LANES), m.chunks_exact(LANES));
    let (cr, mr) = (cb.remainder(), mb.remainder());
    for (x, k) in cb.zip(mb) {
        for l in 0..LANES {
            let d = f64::from(x[l]) - mean;
            s[l] += if k[l] && x[l].is_finite() { d * d } else { 0.0 };
        }
    }
    for (&x, &k) in cr.iter().zip(mr) {
        let d = f64::from(x) - mean;
        s[0] += if k && x.is_finite() { d * d } else { 0.0 };
    }
    s.iter().sum()
}

/// Running moments of a set of values: count, mean, sum of squared deviations (Chan et al.'s
/// parallel update, stable for large counts).
#[derive(Clone, Copy)]
struct Moments {
    n: f64,
    mean: f64,
    m2: f64,
}

impl Moments {
    const EMPTY: Moments = Moments { n: 0.0, mean: 0.0, m2: 0.0 };

    /// Moments of the finite values of `c` where `m` is true (two passes over a chunk that is
    /// still in cache).
    fn of(c: &[f32], m: &[bool]) -> Moments {
        let (n, sum) = masked_count_sum(c, m);
        if n == 0.0 {
            return Moments::EMPTY;
        }
        let mean = sum / n;
        let m2 = masked_sq_dev(c, m, mean);
        Moments { n, mean, m2 }
    }

    fn z_score(self) -> NormParams {
        let std = if self.n > 0.0 { (self.m2 / self.n).sqrt() } else { 0.0 };
        let scale = if std > 0.0 { (1.0 / std) as f32 } else { 0.0 };
        NormParams { offset: self.mean as f32, scale, masked: true }
    }

    fn merge(a: Moments, b: Moments) -> Moments {
        if a.n == 0.0 {
            return b;
        }
        if b.n == 0.0 {
            return a;
        }
        let n = a.n + b.n;
        let d = b.mean - a.mean;
        Moments { n, mean: a.mean + d * b.n / n, m2: a.m2 + b.m2 + d * d * a.n * b.n / n }
    }
}

/// Z-score parameters from the finite voxels of `x` inside `mask` (population standard
/// deviation, as `numpy.std`). An empty mask or a constant brain gets `scale = 0`.
///
/// # Panics
/// Never; a `mask` shorter than `x` only sees its own length.
pub fn z_score_params(x: &[f32], mask: &[bool]) -> NormParams {
    let m = x
        .par_chunks(CHUNK)
        .zip(mask.par_chunks(CHUNK))
        .map(|(c, m)| Moments::of(c, m))
        .reduce(|| Moments::EMPTY, Moments::merge);
    m.z_score()
}

/// [`z_score_params`] for a volume of `shape` whose `mask` lies inside `bbox`: only the
/// box's rows are read (a third of a BraTS volume), with the same result.
///
/// # Errors
/// If `x` or `mask` does not have `shape`'s voxel count, or the box does not fit in `shape`.
pub fn z_score_params_in_box(
    x: &[f32],
    mask: &[bool],
    shape: [usize; 3],
    bbox: &BoundingBox,
) -> Result<NormParams> {
    let n = shape.iter().product::<usize>();
    if x.len() != n
        || mask.len() != n
        || (0..3).any(|a| bbox.end[a] > shape[a] || bbox.start[a] > bbox.end[a])
    {
        return Err(Error::Shape {
            context: format!("z-score in the box {:?}..{:?}", bbox.start, bbox.end),
            expected: shape.to_vec(),
            actual: vec![x.len(), mask.len()],
        });
    }
    let [_, ny, nz] = shape;
    let (z0, z1) = (bbox.start[2], bbox.end[2]);
    let m = (bbox.start[0]..bbox.end[0])
        .into_par_iter()
        .map(|i| {
            (bbox.start[1]..bbox.end[1])
                .map(|j| {
                    let r = (i * ny + j) * nz;
                    Moments::of(&x[r + z0..r + z1], &mask[r + z0..r + z1])
                })
                .fold(Moments::EMPTY, Moments::merge)
        })
        .reduce(|| Moments::EMPTY, Moments::merge);
    Ok(m.z_score())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn min_max_of_ramp() {
        let mut x: Vec<f32> = (0..11).map(|v| v as f32 * 3.0 + 2.0).collect();
        let p = min_max_params(&x);
        p.apply(&mut x, None).unwrap();
        assert!((x[0]).abs() < 1e-7 && (x[10] - 1.0).abs() < 1e-6);
    }

    #[test]
    fn constant_and_missing_channels_become_zero() {
        let mut x = vec![0.0f32; 10];
        min_max_params(&x).apply(&mut x, None).unwrap();
        assert!(x.iter().all(|&v| v == 0.0));
        let mut y = vec![5.0f32, 5.0, f32::NAN];
        let p = z_score_params(&y, &[true, true, true]);
        p.apply(&mut y, Some(&[true, true, true])).unwrap();
        assert_eq!(y, vec![0.0, 0.0, 0.0]);
    }

    #[test]
    fn z_score_matches_numpy() {
        // numpy: x = [1, 2, 3, 10]; m = [1,1,1,0]; x[m].mean() = 2, x[m].std() = 0.8164966
        let mut x = vec![1.0f32, 2.0, 3.0, 10.0];
        let mask = [true, true, true, false];
        let p = z_score_params(&x, &mask);
        assert!((p.offset - 2.0).abs() < 1e-6 && (1.0 / p.scale - 0.816_496_6).abs() < 1e-6);
        p.apply(&mut x, Some(&mask)).unwrap();
        assert_eq!(x[3], 0.0);
        assert!(p.apply(&mut x, None).is_err());
        assert!(params(Normalization::ZScoreInMask, &x, None).is_err());
    }
}
