//! [`SignalStats`]: what an image holds, before anything uses it — how many voxels are NaN or
//! infinite, and whether the finite ones carry any signal at all (a constant image, or one
//! with no finite voxel, says nothing about the patient).
//!
//! The preprocessing ignores non-finite voxels in its statistics and sets them to 0; callers
//! that segment real scans use these numbers to report them instead of passing over them.

use rayon::prelude::*;

/// Voxel counts and the finite range of one image.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SignalStats {
    /// Number of voxels.
    pub voxels: usize,
    /// NaN voxels.
    pub nan: usize,
    /// +∞ or −∞ voxels.
    pub infinite: usize,
    /// Smallest finite value (`+∞` when there is none).
    pub min: f32,
    /// Largest finite value (`−∞` when there is none).
    pub max: f32,
}

impl SignalStats {
    /// Counts the NaN and infinite voxels of `data` and the range of the others.
    pub fn of(data: &[f32]) -> Self {
        let empty = SignalStats {
            voxels: 0,
            nan: 0,
            infinite: 0,
            min: f32::INFINITY,
            max: f32::NEG_INFINITY,
        };
        data.par_chunks(1 << 16)
            .map(|chunk| {
                let mut s = empty;
                s.voxels = chunk.len();
                for &v in chunk {
                    if v.is_nan() {
                        s.nan += 1;
                    } else if v.is_infinite() {
                        s.infinite += 1;
                    } else {
                        s.min = s.min.min(v);
                        s.max = s.max.max(v);
                    }
                }
                s
            })
            .reduce(
                || empty,
                |a, b| SignalStats {
                    voxels: a.voxels + b.voxels,
                    nan: a.nan + b.nan,
                    infinite: a.infinite + b.infinite,
                    min: a.min.min(b.min),
                    max: a.max.max(b.max),
                },
            )
    }

    /// NaN plus infinite voxels.
    pub fn non_finite(&self) -> usize {
        self.nan + self.infinite
    }

    /// Finite voxels.
    pub fn finite(&self) -> usize {
        self.voxels - self.non_finite()
    }

    /// True when the finite voxels are not all equal (and there are some): the image can
    /// show anything at all.
    pub fn has_signal(&self) -> bool {
        self.finite() > 0 && self.max > self.min
    }

    /// Why the image carries no signal (`None` when it does), e.g. `"every voxel is NaN"`,
    /// `"every voxel is 0"`, `"every finite voxel is 3 (12 NaN)"`.
    pub fn why_empty(&self) -> Option<String> {
        if self.has_signal() {
            return None;
        }
        Some(if self.finite() == 0 {
            match (self.nan, self.infinite) {
                (_, 0) => "every voxel is NaN".to_string(),
                (0, _) => "every voxel is infinite".to_string(),
                (n, i) => format!("no finite voxel ({n} NaN, {i} infinite)"),
            }
        } else if self.non_finite() == 0 {
            format!("every voxel is {}", self.min)
        } else {
            format!("every finite voxel is {} ({})", self.min, self.describe_non_finite())
        })
    }

    /// `"12 NaN, 3 infinite"`, `"12 NaN"`, … (empty when every voxel is finite).
    pub fn describe_non_finite(&self) -> String {
        match (self.nan, self.infinite) {
            (0, 0) => String::new(),
            (n, 0) => format!("{n} NaN"),
            (0, i) => format!("{i} infinite"),
            (n, i) => format!("{n} NaN, {i} infinite"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_verdicts() {
        let s = SignalStats::of(&[1.0, f32::NAN, f32::INFINITY, 3.0, f32::NEG_INFINITY]);
        assert_eq!((s.voxels, s.nan, s.infinite, s.min, s.max), (5, 1, 2, 1.0, 3.0));
        assert!(s.has_signal());
        assert_eq!(s.why_empty(), None);
        assert_eq!(s.describe_non_finite(), "1 NaN, 2 infinite");

        let nan = SignalStats::of(&vec![f32::NAN; 100_000]);
        assert_eq!(nan.nan, 100_000);
        assert_eq!(nan.why_empty().as_deref(), Some("every voxel is NaN"));
        let constant = SignalStats::of(&[0.0; 10]);
        assert_eq!(constant.why_empty().as_deref(), Some("every voxel is 0"));
        let mixed = SignalStats::of(&[2.0, f32::NAN, 2.0]);
        assert_eq!(mixed.why_empty().as_deref(), Some("every finite voxel is 2 (1 NaN)"));
    }
}
