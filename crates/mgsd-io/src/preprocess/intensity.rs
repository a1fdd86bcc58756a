//! Random intensity scale and shift per channel (`x * scale + shift`), drawn
//! ([`IntensityAugment::draw`]) separately from applied ([`IntensityParams::apply`]), as in
//! Myronenko (2018) and the nnU-Net family.

use super::channels::Channels;
use crate::error::{Error, Result};
use rand::{Rng, RngExt};
use rayon::prelude::*;

/// Ranges to draw from, the same for every channel.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct IntensityAugment {
    /// Multiplicative factor range `[lo, hi]`.
    pub scale: (f32, f32),
    /// Additive shift range `[lo, hi]` (in normalised units).
    pub shift: (f32, f32),
}

impl Default for IntensityAugment {
    /// Scale in `[0.9, 1.1]`, shift in `[-0.1, 0.1]`.
    fn default() -> Self {
        IntensityAugment { scale: (0.9, 1.1), shift: (-0.1, 0.1) }
    }
}

/// One drawn augmentation: a scale and a shift per channel.
#[derive(Debug, Clone, PartialEq)]
pub struct IntensityParams {
    /// Factor per channel.
    pub scale: Vec<f32>,
    /// Shift per channel.
    pub shift: Vec<f32>,
}

fn draw_in<R: Rng + ?Sized>(rng: &mut R, (lo, hi): (f32, f32)) -> f32 {
    if lo == hi {
        lo
    } else {
        rng.random_range(lo..=hi)
    }
}

impl IntensityAugment {
    /// Draws a scale then a shift for each of `channels` channels, in channel order.
    ///
    /// # Errors
    /// If a range is empty (`lo > hi`) or not finite.
    pub fn draw<R: Rng + ?Sized>(&self, rng: &mut R, channels: usize) -> Result<IntensityParams> {
        for (name, (lo, hi)) in [("scale", self.scale), ("shift", self.shift)] {
            if !(lo.is_finite() && hi.is_finite() && lo <= hi) {
                return Err(Error::InvalidArgument(format!(
                    "intensity {name} range [{lo}, {hi}] is not valid"
                )));
            }
        }
        let mut scale = Vec::with_capacity(channels);
        let mut shift = Vec::with_capacity(channels);
        for _ in 0..channels {
            scale.push(draw_in(rng, self.scale));
            shift.push(draw_in(rng, self.shift));
        }
        Ok(IntensityParams { scale, shift })
    }
}

impl IntensityParams {
    /// Applies `x * scale + shift` to each channel of `x`. With `only_nonzero`, voxels that
    /// are exactly 0 (the background after either normalisation, and absent modalities) stay 0.
    ///
    /// # Errors
    /// If the number of channels differs from the drawn parameters.
    pub fn apply(&self, x: &mut Channels, only_nonzero: bool) -> Result<()> {
        if self.scale.len() != x.channels || self.shift.len() != x.channels {
            return Err(Error::Shape {
                context: "IntensityParams::apply".into(),
                expected: vec![self.scale.len()],
                actual: vec![x.channels],
            });
        }
        let n = x.voxels();
        x.data.par_chunks_mut(n).enumerate().for_each(|(c, ch)| {
            let (a, b) = (self.scale[c], self.shift[c]);
            ch.par_chunks_mut(1 << 16).for_each(|ch| {
                for v in ch {
                    if !only_nonzero || *v != 0.0 {
                        *v = *v * a + b;
                    }
                }
            });
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn draw_and_apply() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let p =
            IntensityAugment { scale: (2.0, 2.0), shift: (1.0, 1.0) }.draw(&mut rng, 2).unwrap();
        let mut x = Channels::new(vec![0.0, 1.0, 2.0, 0.0], 2, [1, 1, 2]).unwrap();
        p.apply(&mut x, true).unwrap();
        assert_eq!(x.data, vec![0.0, 3.0, 5.0, 0.0]);
        assert!(IntensityAugment { scale: (2.0, 1.0), shift: (0.0, 0.0) }
            .draw(&mut rng, 1)
            .is_err());
        assert!(IntensityAugment { scale: (f32::NAN, 1.0), shift: (0.0, 0.0) }
            .draw(&mut rng, 1)
            .is_err());
    }
}
