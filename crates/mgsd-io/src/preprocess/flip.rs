//! Random flips on each axis, drawn ([`Flips::draw`]) separately from applied
//! ([`Flips::apply`]). A flip is its own inverse, so applying the same [`Flips`] twice
//! restores the input (test-time flipping can undo itself).

use super::channels::{voxels, Channels};
use crate::error::{Error, Result};
use rand::{Rng, RngExt};
use rayon::prelude::*;

/// Which axes (x, y, z) to mirror.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Flips {
    /// `axes[a]`: mirror axis `a`.
    pub axes: [bool; 3],
}

impl Flips {
    /// No flip.
    pub const NONE: Flips = Flips { axes: [false; 3] };

    /// Draws each axis independently with probability `p` (the reference uses 0.5), in the
    /// order x, y, z.
    ///
    /// # Errors
    /// If `p` is not in `[0, 1]`.
    pub fn draw<R: Rng + ?Sized>(rng: &mut R, p: f64) -> Result<Flips> {
        if !(0.0..=1.0).contains(&p) {
            return Err(Error::InvalidArgument(format!("flip probability {p} is not in [0, 1]")));
        }
        Ok(Flips { axes: [rng.random_bool(p), rng.random_bool(p), rng.random_bool(p)] })
    }

    /// Mirrors `data` (`channels` channels over `shape`, channel-major) in place.
    ///
    /// # Errors
    /// If `data.len()` is not `channels * nx * ny * nz`.
    pub fn apply<T: Copy + Send>(
        &self,
        data: &mut [T],
        channels: usize,
        shape: [usize; 3],
    ) -> Result<()> {
        let n = voxels(shape);
        if n == 0 || data.len() != channels * n {
            return Err(Error::Shape {
                context: "Flips::apply".into(),
                expected: vec![channels, shape[0], shape[1], shape[2]],
                actual: vec![data.len()],
            });
        }
        if self.axes == [false; 3] {
            return Ok(());
        }
        let [nx, ny, nz] = shape;
        let slab = ny * nz;
        // One work item per x-slab pair (x flip) or per slab, over every channel.
        data.par_chunks_mut(n).for_each(|ch| {
            if self.axes[0] {
                for i in 0..nx / 2 {
                    let (a, b) = ch.split_at_mut((nx - 1 - i) * slab);
                    a[i * slab..(i + 1) * slab].swap_with_slice(&mut b[..slab]);
                }
            }
        });
        if self.axes[1] || self.axes[2] {
            data.par_chunks_mut(slab).for_each(|s| {
                if self.axes[1] {
                    for j in 0..ny / 2 {
                        let (a, b) = s.split_at_mut((ny - 1 - j) * nz);
                        a[j * nz..(j + 1) * nz].swap_with_slice(&mut b[..nz]);
                    }
                }
                if self.axes[2] {
                    s.chunks_exact_mut(nz).for_each(<[T]>::reverse);
                }
            });
        }
        Ok(())
    }

    /// Mirrors every channel of `x` in place.
    ///
    /// # Errors
    /// If `x.data` does not match its shape.
    pub fn apply_channels(&self, x: &mut Channels) -> Result<()> {
        let (c, shape) = (x.channels, x.shape);
        self.apply(&mut x.data, c, shape)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flips_mirror_the_right_axis() {
        let data: Vec<u8> = (0..24).collect();
        let shape = [2, 3, 4];
        let idx = |i: usize, j: usize, k: usize| (i * 3 + j) * 4 + k;
        for a in 0..3 {
            let mut f = Flips::NONE;
            f.axes[a] = true;
            let mut d = data.clone();
            f.apply(&mut d, 1, shape).unwrap();
            for i in 0..2 {
                for j in 0..3 {
                    for k in 0..4 {
                        let (si, sj, sk) = match a {
                            0 => (1 - i, j, k),
                            1 => (i, 2 - j, k),
                            _ => (i, j, 3 - k),
                        };
                        assert_eq!(d[idx(i, j, k)], data[idx(si, sj, sk)]);
                    }
                }
            }
        }
        assert!(Flips::NONE.apply(&mut [0u8; 5], 1, shape).is_err());
    }
}
