//! The brain mask (union of non-zero voxels over the modalities) and its bounding box.
//!
//! BraTS images are skull-stripped with the background set to exactly 0, so "non-zero in any
//! modality" is the brain. Both literature protocols use it: RFNet normalises inside it and
//! crops to its bounding box.

use super::channels::voxels;
use super::crop::CropRecord;
use crate::buffer::zeroed;
use crate::error::{Error, Result};
use rayon::prelude::*;

/// Voxels per parallel work item (a few hundred kB of f32: large enough to amortise rayon,
/// small enough to balance).
const CHUNK: usize = 1 << 16;

/// The union over `channels` of their non-zero voxels: `mask[v]` is true when some channel is
/// non-zero (or NaN) at `v`. All channels must have `nx * ny * nz` voxels.
///
/// # Errors
/// If there are no channels or a channel has the wrong length.
pub fn nonzero_mask(channels: &[&[f32]], shape: [usize; 3]) -> Result<Vec<bool>> {
    let n = voxels(shape);
    check_lengths(channels, n, "nonzero_mask")?;
    let mut mask = zeroed::<bool>(n);
    mask.par_chunks_mut(CHUNK).enumerate().for_each(|(ci, out)| {
        let start = ci * CHUNK;
        for ch in channels {
            let src = &ch[start..start + out.len()];
            for (m, &v) in out.iter_mut().zip(src) {
                *m |= v != 0.0;
            }
        }
    });
    Ok(mask)
}

pub(crate) fn check_lengths(channels: &[&[f32]], n: usize, context: &str) -> Result<()> {
    if channels.is_empty() {
        return Err(Error::InvalidArgument(format!("{context}: no channels")));
    }
    for ch in channels {
        if ch.len() != n {
            return Err(Error::Shape {
                context: context.into(),
                expected: vec![n],
                actual: vec![ch.len()],
            });
        }
    }
    Ok(())
}

/// An axis-aligned box of voxels, `start` inclusive, `end` exclusive, on a grid of some shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BoundingBox {
    /// First voxel index on each axis.
    pub start: [usize; 3],
    /// One past the last voxel index on each axis.
    pub end: [usize; 3],
}

impl BoundingBox {
    /// The smallest box holding every `true` voxel of `mask` over `shape`; `None` when the mask
    /// is empty.
    ///
    /// # Errors
    /// If `mask.len()` is not the product of `shape`.
    pub fn of_mask(mask: &[bool], shape: [usize; 3]) -> Result<Option<Self>> {
        if mask.len() != voxels(shape) || voxels(shape) == 0 {
            return Err(Error::Shape {
                context: "BoundingBox::of_mask".into(),
                expected: shape.to_vec(),
                actual: vec![mask.len()],
            });
        }
        let [_, ny, nz] = shape;
        let slab = ny * nz;
        let found = mask
            .par_chunks(slab)
            .enumerate()
            .filter_map(|(i, s)| {
                let mut b: Option<([usize; 3], [usize; 3])> = None;
                for (j, row) in s.chunks_exact(nz).enumerate() {
                    let Some(k0) = row.iter().position(|&m| m) else {
                        continue;
                    };
                    let k1 = nz - row.iter().rev().position(|&m| m).unwrap_or(0);
                    b = Some(match b {
                        None => ([i, j, k0], [i + 1, j + 1, k1]),
                        Some((lo, hi)) => {
                            ([i, lo[1], lo[2].min(k0)], [i + 1, j + 1, hi[2].max(k1)])
                        }
                    });
                }
                b
            })
            .reduce_with(|(alo, ahi), (blo, bhi)| {
                (
                    [alo[0].min(blo[0]), alo[1].min(blo[1]), alo[2].min(blo[2])],
                    [ahi[0].max(bhi[0]), ahi[1].max(bhi[1]), ahi[2].max(bhi[2])],
                )
            });
        Ok(found.map(|(start, end)| BoundingBox { start, end }))
    }

    /// The box's size on each axis.
    pub fn shape(&self) -> [usize; 3] {
        [0, 1, 2].map(|a| self.end[a] - self.start[a])
    }

    /// The box grown by `margin` voxels on both sides of each axis, clipped to a grid of
    /// `shape`.
    #[must_use]
    pub fn with_margin(&self, margin: [usize; 3], shape: [usize; 3]) -> Self {
        BoundingBox {
            start: [0, 1, 2].map(|a| self.start[a].saturating_sub(margin[a])),
            end: [0, 1, 2].map(|a| (self.end[a] + margin[a]).min(shape[a])),
        }
    }

    /// The crop of a grid of `shape` to this box.
    ///
    /// # Errors
    /// If the box is empty or does not fit in `shape`.
    pub fn record(&self, shape: [usize; 3]) -> Result<CropRecord> {
        let out = self.shape();
        if (0..3).any(|a| self.end[a] > shape[a] || self.start[a] >= self.end[a]) {
            return Err(Error::InvalidArgument(format!(
                "bounding box {:?}..{:?} does not fit in a grid of {shape:?}",
                self.start, self.end
            )));
        }
        CropRecord::new(shape, self.start.map(|s| s as isize), out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_is_union_and_bbox_is_tight() {
        let shape = [4, 5, 6];
        let n = voxels(shape);
        let mut a = vec![0.0f32; n];
        let mut b = vec![0.0f32; n];
        a[(5 + 2) * 6 + 3] = 1.0;
        b[(2 * 5 + 4) * 6 + 1] = -2.0;
        let mask = nonzero_mask(&[&a, &b], shape).unwrap();
        assert_eq!(mask.iter().filter(|&&m| m).count(), 2);
        let bb = BoundingBox::of_mask(&mask, shape).unwrap().unwrap();
        assert_eq!(bb, BoundingBox { start: [1, 2, 1], end: [3, 5, 4] });
        assert_eq!(
            bb.with_margin([1, 1, 1], shape),
            BoundingBox { start: [0, 1, 0], end: [4, 5, 5] }
        );
        assert!(BoundingBox::of_mask(&vec![false; n], shape).unwrap().is_none());
        assert!(nonzero_mask(&[&a[..5]], shape).is_err());
    }
}
