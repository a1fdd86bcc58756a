//! [`CropRecord`]: a crop and/or pad of a grid that remembers how to undo itself.
//!
//! A record maps an *original* grid to an *output* grid: output voxel `p` shows original voxel
//! `p + offset`. Offsets may be negative and the output may stick out of the original on any
//! side: those voxels are padding (zero). The record also keeps the *valid box* — the original
//! voxels whose values the output really carries. For one crop that is the overlap of the
//! window with the original grid; after [`CropRecord::then`] it is the overlap of both steps,
//! so a composed record reproduces the two steps exactly, padding included.
//!
//! [`CropRecord::uncrop`] puts a prediction made on the output grid (labels or probabilities,
//! any number of channels) back on the original grid: values at the valid box, zeros
//! elsewhere. `uncrop(crop(x))` equals `x` on the valid box.

use super::channels::{voxels, Channels};
use crate::buffer::zeroed;
use crate::error::{Error, Result};
use rayon::prelude::*;

/// How to cut an output grid out of an original grid, and how to put it back (module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CropRecord {
    original: [usize; 3],
    offset: [isize; 3],
    shape: [usize; 3],
    valid_start: [usize; 3],
    valid_end: [usize; 3],
}

impl CropRecord {
    /// The crop/pad of a grid of `original` shape to a window of `shape` voxels whose first
    /// voxel is original voxel `offset` (negative = padding before).
    ///
    /// # Errors
    /// If a size is zero, or a size or offset exceeds 2⁴⁰ voxels (absurd, and kept out so
    /// that no arithmetic on records can overflow).
    pub fn new(original: [usize; 3], offset: [isize; 3], shape: [usize; 3]) -> Result<Self> {
        const LIMIT: usize = 1 << 40;
        let huge = |v: usize| v > LIMIT;
        if original.into_iter().chain(shape).any(huge)
            || offset.iter().any(|o| huge(o.unsigned_abs()))
        {
            return Err(Error::InvalidArgument(format!(
                "crop of a {original:?} grid to {shape:?} at {offset:?}: sizes and offsets must be below 2^40"
            )));
        }
        let count = |s: [usize; 3]| s.iter().try_fold(1usize, |a, &b| a.checked_mul(b));
        if matches!(count(original), None | Some(0)) || matches!(count(shape), None | Some(0)) {
            return Err(Error::InvalidArgument(format!(
                "crop of a {original:?} grid to {shape:?}: sizes must be non-zero, voxel counts must fit in usize"
            )));
        }
        let mut valid_start = [0; 3];
        let mut valid_end = [0; 3];
        for a in 0..3 {
            let lo = offset[a].max(0);
            let hi = offset[a].saturating_add(shape[a] as isize).min(original[a] as isize);
            valid_start[a] = lo.clamp(0, original[a] as isize) as usize;
            valid_end[a] = hi.max(lo).clamp(0, original[a] as isize) as usize;
        }
        Ok(CropRecord { original, offset, shape, valid_start, valid_end })
    }

    /// The identity record of a grid of `shape`.
    ///
    /// # Errors
    /// If a size is zero.
    pub fn identity(shape: [usize; 3]) -> Result<Self> {
        CropRecord::new(shape, [0; 3], shape)
    }

    /// Shape of the original grid.
    pub fn original_shape(&self) -> [usize; 3] {
        self.original
    }

    /// Shape of the output grid.
    pub fn shape(&self) -> [usize; 3] {
        self.shape
    }

    /// Original voxel shown by output voxel 0 on each axis (negative = padding before).
    pub fn offset(&self) -> [isize; 3] {
        self.offset
    }

    /// The original voxels the output carries: `(start, end)`, end exclusive, per axis. Empty
    /// on some axis when the window misses the original grid.
    pub fn valid_box(&self) -> ([usize; 3], [usize; 3]) {
        (self.valid_start, self.valid_end)
    }

    /// This record followed by `next` (which must crop this record's output grid): one record
    /// from this record's original grid to `next`'s output grid, equal to applying both.
    ///
    /// # Errors
    /// If `next` does not start from this record's output shape.
    pub fn then(&self, next: &CropRecord) -> Result<CropRecord> {
        if next.original != self.shape {
            return Err(Error::Shape {
                context: "CropRecord::then".into(),
                expected: self.shape.to_vec(),
                actual: next.original.to_vec(),
            });
        }
        let mut out = CropRecord::new(
            self.original,
            [0, 1, 2].map(|a| self.offset[a].saturating_add(next.offset[a])),
            next.shape,
        )?;
        for a in 0..3 {
            // Valid in both steps: this record's valid box and the next valid box mapped back.
            let lo = (self.valid_start[a] as isize)
                .max((next.valid_start[a] as isize).saturating_add(self.offset[a]));
            let hi = (self.valid_end[a] as isize)
                .min((next.valid_end[a] as isize).saturating_add(self.offset[a]));
            out.valid_start[a] = lo.max(0) as usize;
            out.valid_end[a] = hi.max(lo).max(0) as usize;
        }
        Ok(out)
    }

    /// The record that maps the output grid back to the original grid (the valid box is kept).
    pub fn inverse(&self) -> CropRecord {
        let mut valid_start = [0; 3];
        let mut valid_end = [0; 3];
        for a in 0..3 {
            valid_start[a] = (self.valid_start[a] as isize - self.offset[a]).max(0) as usize;
            valid_end[a] =
                (self.valid_end[a] as isize - self.offset[a]).max(valid_start[a] as isize) as usize;
        }
        CropRecord {
            original: self.shape,
            offset: self.offset.map(|o| -o),
            shape: self.original,
            valid_start,
            valid_end,
        }
    }

    /// Crops/pads `src` (`channels` channels on the original grid, channel-major) to the output
    /// grid; padding is `T::default()` (zero).
    ///
    /// # Errors
    /// If `src.len()` is not `channels` times the original voxel count.
    pub fn crop<T: Copy + Default + Send + Sync>(
        &self,
        src: &[T],
        channels: usize,
    ) -> Result<Vec<T>> {
        self.check_len(src.len(), channels, self.original, "CropRecord::crop")?;
        let n_in = voxels(self.original);
        let mut dst = zeroed::<T>(channels * voxels(self.shape));
        self.for_each_run(&mut dst, |c, s, run| {
            run.copy_from_slice(&src[c * n_in + s..c * n_in + s + run.len()])
        });
        Ok(dst)
    }

    /// Crops/pads every channel of `x`.
    ///
    /// # Errors
    /// If `x` is not on the original grid.
    pub fn crop_channels(&self, x: &Channels) -> Result<Channels> {
        if x.shape != self.original {
            return Err(Error::Shape {
                context: "CropRecord::crop_channels".into(),
                expected: self.original.to_vec(),
                actual: x.shape.to_vec(),
            });
        }
        Ok(Channels {
            data: self.crop(&x.data, x.channels)?,
            channels: x.channels,
            shape: self.shape,
        })
    }

    /// Puts `pred` (`channels` channels on the output grid, channel-major: labels,
    /// probabilities, …) back on the original grid, zeros outside the valid box.
    ///
    /// # Errors
    /// If `pred.len()` is not `channels` times the output voxel count.
    pub fn uncrop<T: Copy + Default + Send + Sync>(
        &self,
        pred: &[T],
        channels: usize,
    ) -> Result<Vec<T>> {
        self.check_len(pred.len(), channels, self.shape, "CropRecord::uncrop")?;
        self.inverse().crop(pred, channels)
    }

    /// [`CropRecord::uncrop`] for a [`Channels`].
    ///
    /// # Errors
    /// If `x` is not on the output grid.
    pub fn uncrop_channels(&self, x: &Channels) -> Result<Channels> {
        self.inverse().crop_channels(x)
    }

    fn check_len(
        &self,
        len: usize,
        channels: usize,
        shape: [usize; 3],
        context: &str,
    ) -> Result<()> {
        if channels == 0 || len != channels * voxels(shape) {
            return Err(Error::Shape {
                context: context.into(),
                expected: vec![channels, shape[0], shape[1], shape[2]],
                actual: vec![len],
            });
        }
        Ok(())
    }

    /// Calls `f(channel, original linear index, output run)` for every contiguous z-run of
    /// output voxels that carry original data, in parallel over output x-slabs of every
    /// channel. `dst` holds whole channels of the output grid; voxels outside every run are
    /// left untouched.
    pub(crate) fn for_each_run<T, F>(&self, dst: &mut [T], f: F)
    where
        T: Send,
        F: Fn(usize, usize, &mut [T]) + Sync,
    {
        let [nx, ny, nz] = self.shape;
        let [_, oy, oz] = self.original;
        let range = |a: usize| -> (usize, usize) {
            let lo = self.valid_start[a] as isize - self.offset[a];
            let hi = self.valid_end[a] as isize - self.offset[a];
            (lo.max(0) as usize, hi.max(lo).max(0) as usize)
        };
        let (x0, x1) = range(0);
        let (y0, y1) = range(1);
        let (z0, z1) = range(2);
        if x0 >= x1 || y0 >= y1 || z0 >= z1 {
            return;
        }
        dst.par_chunks_mut(ny * nz).enumerate().for_each(|(slab, out)| {
            let (c, i) = (slab / nx, slab % nx);
            if i < x0 || i >= x1 {
                return;
            }
            let si = (i as isize + self.offset[0]) as usize;
            for j in y0..y1 {
                let sj = (j as isize + self.offset[1]) as usize;
                let sk = (z0 as isize + self.offset[2]) as usize;
                let src = (si * oy + sj) * oz + sk;
                f(c, src, &mut out[j * nz + z0..j * nz + z1]);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pad_and_crop_values() {
        // 1-D along z: original [1, 2, 3], window offset -1 of length 5 → [0, 1, 2, 3, 0].
        let r = CropRecord::new([1, 1, 3], [0, 0, -1], [1, 1, 5]).unwrap();
        assert_eq!(r.crop(&[1u8, 2, 3], 1).unwrap(), vec![0, 1, 2, 3, 0]);
        assert_eq!(r.uncrop(&[9u8, 1, 2, 3, 9], 1).unwrap(), vec![1, 2, 3]);
        let r = CropRecord::new([1, 1, 3], [0, 0, 1], [1, 1, 1]).unwrap();
        assert_eq!(r.crop(&[1u8, 2, 3], 1).unwrap(), vec![2]);
        assert_eq!(r.uncrop(&[7u8], 1).unwrap(), vec![0, 7, 0]);
    }

    #[test]
    fn window_outside_is_all_padding() {
        let r = CropRecord::new([2, 2, 2], [5, 0, 0], [1, 2, 2]).unwrap();
        assert_eq!(r.crop(&[1.0f32; 8], 1).unwrap(), vec![0.0; 4]);
        assert_eq!(r.uncrop(&[1.0f32; 4], 1).unwrap(), vec![0.0; 8]);
    }

    #[test]
    fn composition_keeps_padding_of_the_first_step() {
        // Crop [1,2,3,4] to [2,3], then pad back to 4 with offset -1: [0,2,3,0], not [1,2,3,4].
        let a = CropRecord::new([1, 1, 4], [0, 0, 1], [1, 1, 2]).unwrap();
        let b = CropRecord::new([1, 1, 2], [0, 0, -1], [1, 1, 4]).unwrap();
        let ab = a.then(&b).unwrap();
        let x = [1u8, 2, 3, 4];
        assert_eq!(ab.crop(&x, 1).unwrap(), vec![0, 2, 3, 0]);
        assert_eq!(ab.uncrop(&[5u8, 6, 7, 8], 1).unwrap(), vec![0, 6, 7, 0]);
        assert!(b.then(&b).is_err());
    }

    #[test]
    fn rejects_bad_lengths() {
        let r = CropRecord::identity([2, 2, 2]).unwrap();
        assert!(r.crop(&[0u8; 7], 1).is_err());
        assert!(r.uncrop(&[0u8; 8], 2).is_err());
        assert!(CropRecord::new([0, 2, 2], [0; 3], [1, 1, 1]).is_err());
    }
}
