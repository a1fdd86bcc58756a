//! [`Channels`]: a multi-channel image `(C, nx, ny, nz)`, the unit every preprocessing step
//! reads and writes.
//!
//! # Layout
//! `data` is one C-contiguous buffer, channel-major: channel `c`, voxel `(i, j, k)` lives at
//! `data[((c * nx + i) * ny + j) * nz + k]`. Each channel is laid out exactly like a
//! [`Volume`] (z fastest, see [`crate::volume`]), so `channel(c)` is a volume's `data` and the
//! whole buffer is the `(C, D, H, W)` tensor the network takes (`D = x`, `H = y`, `W = z`),
//! without a copy. Label maps that go with a `Channels` are plain `Vec<u8>` of one channel on
//! the same grid.

use crate::buffer::zeroed;
use crate::error::{Error, Result};
use crate::modality::Modality;
use crate::volume::Volume;
use rayon::prelude::*;

/// A multi-channel 3-D image, channel-major `(C, nx, ny, nz)` (see the module docs).
#[derive(Debug, Clone, PartialEq)]
pub struct Channels {
    /// Voxels, `channels * nx * ny * nz` values, channel-major.
    pub data: Vec<f32>,
    /// Number of channels `C`.
    pub channels: usize,
    /// Spatial shape `[nx, ny, nz]`.
    pub shape: [usize; 3],
}

impl Channels {
    /// Wraps `data` as `channels` channels over `shape`.
    ///
    /// # Errors
    /// If `data.len() != channels * nx * ny * nz` or any size is zero.
    pub fn new(data: Vec<f32>, channels: usize, shape: [usize; 3]) -> Result<Self> {
        let n = channels * voxels(shape);
        if n == 0 || data.len() != n {
            return Err(Error::Shape {
                context: "Channels::new".into(),
                expected: vec![channels, shape[0], shape[1], shape[2]],
                actual: vec![data.len()],
            });
        }
        Ok(Channels { data, channels, shape })
    }

    /// `channels` zero-filled channels over `shape`.
    pub fn zeros(channels: usize, shape: [usize; 3]) -> Self {
        Channels { data: zeroed(channels * voxels(shape)), channels, shape }
    }

    /// Stacks volumes as channels; `None` (a missing modality) becomes a zero channel, the way
    /// the missing-modality literature feeds absent sequences.
    ///
    /// # Errors
    /// If every entry is `None`, or the volumes' shapes differ.
    pub fn from_volumes(volumes: &[Option<&Volume>]) -> Result<Self> {
        let Some(first) = volumes.iter().flatten().next() else {
            return Err(Error::InvalidArgument(
                "Channels::from_volumes needs at least one volume".into(),
            ));
        };
        let shape = first.shape;
        let n = voxels(shape);
        if let Some(v) = volumes.iter().flatten().find(|v| v.shape != shape) {
            return Err(Error::Shape {
                context: "Channels::from_volumes".into(),
                expected: shape.to_vec(),
                actual: v.shape.to_vec(),
            });
        }
        let mut data = zeroed::<f32>(volumes.len() * n);
        data.par_chunks_mut(n).zip(volumes).for_each(|(dst, v)| {
            if let Some(v) = v {
                dst.copy_from_slice(&v.data);
            }
        });
        Ok(Channels { data, channels: volumes.len(), shape })
    }

    /// Voxels per channel (`nx * ny * nz`).
    pub fn voxels(&self) -> usize {
        voxels(self.shape)
    }

    /// Channel `c` (a volume-shaped slice).
    ///
    /// # Panics
    /// If `c >= self.channels` (a programming error, not user input).
    pub fn channel(&self, c: usize) -> &[f32] {
        let n = self.voxels();
        &self.data[c * n..(c + 1) * n]
    }

    /// Channel `c`, mutable.
    ///
    /// # Panics
    /// If `c >= self.channels`.
    pub fn channel_mut(&mut self, c: usize) -> &mut [f32] {
        let n = self.voxels();
        &mut self.data[c * n..(c + 1) * n]
    }

    /// Channel `c` as a [`Volume`] on `grid`'s spacing and affine (copies the voxels).
    ///
    /// # Errors
    /// If `c` is out of range or `grid` has a different shape.
    pub fn to_volume(&self, c: usize, grid: &Volume) -> Result<Volume> {
        if c >= self.channels {
            return Err(Error::InvalidArgument(format!("channel {c} of {}", self.channels)));
        }
        if grid.shape != self.shape {
            return Err(Error::Shape {
                context: "Channels::to_volume".into(),
                expected: self.shape.to_vec(),
                actual: grid.shape.to_vec(),
            });
        }
        grid.with_data(self.channel(c).to_vec())
    }

    /// Shape as `[C, nx, ny, nz]`, the tensor shape.
    pub fn dims(&self) -> [usize; 4] {
        [self.channels, self.shape[0], self.shape[1], self.shape[2]]
    }
}

/// Product of a shape.
#[inline]
pub(crate) fn voxels(shape: [usize; 3]) -> usize {
    shape[0] * shape[1] * shape[2]
}

/// The channels of `images` in `order`, borrowed; absent modalities are `None`.
pub fn select<'a>(
    images: &'a std::collections::BTreeMap<Modality, Volume>,
    order: &[Modality],
) -> Vec<Option<&'a Volume>> {
    order.iter().map(|m| images.get(m)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_channel_major() {
        let a = Volume::new(vec![1.0; 8], [2, 2, 2]).unwrap();
        let b = Volume::new(vec![2.0; 8], [2, 2, 2]).unwrap();
        let ch = Channels::from_volumes(&[Some(&a), None, Some(&b)]).unwrap();
        assert_eq!(ch.dims(), [3, 2, 2, 2]);
        assert!(ch.channel(0).iter().all(|&v| v == 1.0));
        assert!(ch.channel(1).iter().all(|&v| v == 0.0));
        assert!(ch.channel(2).iter().all(|&v| v == 2.0));
    }

    #[test]
    fn rejects_bad_input() {
        assert!(Channels::from_volumes(&[None, None]).is_err());
        let a = Volume::new(vec![1.0; 8], [2, 2, 2]).unwrap();
        let b = Volume::new(vec![1.0; 4], [2, 2, 1]).unwrap();
        assert!(Channels::from_volumes(&[Some(&a), Some(&b)]).is_err());
        assert!(Channels::new(vec![0.0; 7], 1, [2, 2, 2]).is_err());
        assert!(Channels::new(vec![], 0, [2, 2, 2]).is_err());
    }
}
