//! Missing-modality masks (MGSD-SPEC §3 step 1).
//!
//! A mask `r ∈ {0,1}^4` in ACN channel order ([`MODALITY_NAMES`]: T1, T2, FLAIR, T1ce) says which
//! modalities the student's missing path sees: `x_miss = x · r`, zeroed at the input. The
//! reference draws each bit Bernoulli(0.5) and redraws while all four are 0 or all four are 1,
//! i.e. uniformly over the 14 partial subsets ([`MaskSampling::Reference`]). Also offered: uniform
//! over all 15 non-empty subsets (the full set included) and a fixed subset. An all-zero mask is
//! never drawn and is rejected wherever one is passed in: with no modality the input is all zero.
//!
//! The random number generator is explicit and seeded (ChaCha8), so a run replays exactly.

use candle_core::{Device, Tensor};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Number of MRI modalities.
pub const NUM_MODALITIES: usize = 4;

/// Channel order of the input (the ACN order of MGSD-SPEC §1).
pub const MODALITY_NAMES: [&str; NUM_MODALITIES] = ["T1", "T2", "FLAIR", "T1ce"];

/// A validated modality mask: entries 0 or 1, at least one 1. ACN order.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "[f32; 4]", into = "[f32; 4]")]
pub struct ModalityMask([f32; NUM_MODALITIES]);

impl ModalityMask {
    /// All four modalities present.
    pub const FULL: Self = Self([1.0; NUM_MODALITIES]);

    /// Validates `mask`: every entry 0 or 1, not all 0.
    pub fn new(mask: [f32; NUM_MODALITIES]) -> Result<Self> {
        if mask.iter().any(|&v| v != 0.0 && v != 1.0) {
            return Err(Error::InvalidMask {
                mask,
                reason: "entries must be 0 (missing) or 1 (present)",
            });
        }
        if mask.iter().all(|&v| v == 0.0) {
            return Err(Error::InvalidMask {
                mask,
                reason: "at least one modality must be present",
            });
        }
        Ok(Self(mask))
    }

    /// From presence flags.
    pub fn from_present(present: [bool; NUM_MODALITIES]) -> Result<Self> {
        Self::new(present.map(|p| if p { 1.0 } else { 0.0 }))
    }

    /// Subset number `1..=15`, bit `i` = modality `i` present.
    pub fn from_bits(bits: u8) -> Result<Self> {
        if bits > 15 {
            return Err(Error::InvalidMask {
                mask: [f32::NAN; NUM_MODALITIES],
                reason: "subset numbers go from 1 to 15",
            });
        }
        Self::from_present(std::array::from_fn(|i| bits >> i & 1 == 1))
    }

    /// Reads a mask from a tensor of 4 elements (any shape, e.g. `(4,)` or `(1,4,1,1,1)`).
    pub fn from_tensor(r: &Tensor) -> Result<Self> {
        let v = r.flatten_all()?.to_dtype(candle_core::DType::F32)?.to_vec1::<f32>()?;
        let mask: [f32; NUM_MODALITIES] =
            v.try_into().map_err(|v: Vec<f32>| Error::InvalidMask {
                mask: [f32::NAN; NUM_MODALITIES],
                reason: if v.len() < NUM_MODALITIES {
                    "fewer than 4 entries"
                } else {
                    "more than 4 entries"
                },
            })?;
        Self::new(mask)
    }

    /// The entries, ACN order.
    pub fn values(&self) -> [f32; NUM_MODALITIES] {
        self.0
    }

    /// Whether modality `i` is present.
    pub fn is_present(&self, i: usize) -> bool {
        self.0.get(i).is_some_and(|&v| v == 1.0)
    }

    /// Number of present modalities (1..=4).
    pub fn count_present(&self) -> usize {
        self.0.iter().filter(|&&v| v == 1.0).count()
    }

    /// Whether every modality is present.
    pub fn is_full(&self) -> bool {
        self.count_present() == NUM_MODALITIES
    }

    /// The subset number, bit `i` = modality `i` present.
    pub fn bits(&self) -> u8 {
        (0..NUM_MODALITIES).filter(|&i| self.is_present(i)).map(|i| 1u8 << i).sum()
    }

    /// The mask as a `(1, 4, 1, 1, 1)` f32 tensor, ready to broadcast over `(B, 4, D, H, W)`.
    pub fn to_tensor(&self, device: &Device) -> candle_core::Result<Tensor> {
        Tensor::from_slice(&self.0, (1, NUM_MODALITIES, 1, 1, 1), device)
    }

    /// `x · r`: zeroes the missing modalities of a `(B, 4, D, H, W)` input.
    pub fn apply(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        if x.rank() != 5 || x.dim(1)? != NUM_MODALITIES {
            candle_core::bail!("ModalityMask::apply: x {:?} is not (B, 4, D, H, W)", x.shape());
        }
        if self.is_full() {
            return Ok(x.clone());
        }
        x.broadcast_mul(&self.to_tensor(x.device())?.to_dtype(x.dtype())?)
    }
}

impl TryFrom<[f32; NUM_MODALITIES]> for ModalityMask {
    type Error = Error;

    fn try_from(mask: [f32; NUM_MODALITIES]) -> Result<Self> {
        Self::new(mask)
    }
}

impl From<ModalityMask> for [f32; NUM_MODALITIES] {
    fn from(m: ModalityMask) -> Self {
        m.0
    }
}

/// How masks are drawn.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum MaskSampling {
    /// The reference: Bernoulli(0.5) per modality, redrawn while all 0 or all 1 (14 subsets).
    #[default]
    Reference,
    /// Uniform over the 15 non-empty subsets, the full set included.
    UniformSubsets,
    /// Always the same subset.
    Fixed {
        /// The subset.
        mask: ModalityMask,
    },
}

/// A seeded mask sampler.
#[derive(Clone, Debug)]
pub struct MaskSampler {
    mode: MaskSampling,
    rng: ChaCha8Rng,
}

impl MaskSampler {
    /// A sampler drawing with `mode` from a ChaCha8 stream seeded with `seed`.
    pub fn new(mode: MaskSampling, seed: u64) -> Self {
        Self { mode, rng: ChaCha8Rng::seed_from_u64(seed) }
    }

    /// The sampling mode.
    pub fn mode(&self) -> MaskSampling {
        self.mode
    }

    /// Draws the next mask.
    pub fn draw(&mut self) -> ModalityMask {
        match self.mode {
            MaskSampling::Reference => loop {
                let present: [bool; NUM_MODALITIES] =
                    std::array::from_fn(|_| self.rng.random_bool(0.5));
                let n = present.iter().filter(|&&p| p).count();
                if n != 0 && n != NUM_MODALITIES {
                    return ModalityMask(present.map(|p| if p { 1.0 } else { 0.0 }));
                }
            },
            MaskSampling::UniformSubsets => {
                let bits: u8 = self.rng.random_range(1..=15);
                ModalityMask(std::array::from_fn(|i| if bits >> i & 1 == 1 { 1.0 } else { 0.0 }))
            }
            MaskSampling::Fixed { mask } => mask,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn histogram(mode: MaskSampling, n: usize) -> [usize; 16] {
        let mut s = MaskSampler::new(mode, 7);
        let mut h = [0usize; 16];
        for _ in 0..n {
            h[s.draw().bits() as usize] += 1;
        }
        h
    }

    #[test]
    fn reference_draws_only_the_14_partial_subsets_evenly() {
        let n = 28_000;
        let h = histogram(MaskSampling::Reference, n);
        assert_eq!(h[0], 0, "all missing drawn");
        assert_eq!(h[15], 0, "full set drawn by the reference sampler");
        for (bits, &c) in h.iter().enumerate().take(15).skip(1) {
            assert!((1700..2300).contains(&c), "subset {bits}: {c} of {n}");
        }
    }

    #[test]
    fn uniform_draws_all_15_non_empty_subsets() {
        let h = histogram(MaskSampling::UniformSubsets, 30_000);
        assert_eq!(h[0], 0);
        for (bits, &c) in h.iter().enumerate().skip(1) {
            assert!((1700..2300).contains(&c), "subset {bits}: {c}");
        }
    }

    #[test]
    fn same_seed_same_masks() {
        let mut a = MaskSampler::new(MaskSampling::Reference, 3);
        let mut b = MaskSampler::new(MaskSampling::Reference, 3);
        for _ in 0..100 {
            assert_eq!(a.draw(), b.draw());
        }
    }

    #[test]
    fn fixed_is_fixed() {
        let m = ModalityMask::new([0.0, 1.0, 0.0, 0.0]).unwrap();
        let mut s = MaskSampler::new(MaskSampling::Fixed { mask: m }, 0);
        assert!((0..10).all(|_| s.draw() == m));
    }

    #[test]
    fn degenerate_masks_are_rejected() {
        assert!(ModalityMask::new([0.0; 4]).is_err());
        assert!(ModalityMask::new([0.5, 1.0, 0.0, 0.0]).is_err());
        assert!(ModalityMask::new([f32::NAN, 1.0, 0.0, 0.0]).is_err());
        assert!(ModalityMask::from_bits(0).is_err());
        assert!(ModalityMask::from_bits(16).is_err());
        assert!(serde_json::from_str::<ModalityMask>("[0,0,0,0]").is_err());
        assert!(
            serde_json::from_str::<MaskSampling>(r#"{"kind":"fixed","mask":[0,0,0,0]}"#).is_err()
        );
        let t = Tensor::zeros((1, 4, 1, 1, 1), candle_core::DType::F32, &Device::Cpu).unwrap();
        assert!(ModalityMask::from_tensor(&t).is_err());
        let t = Tensor::ones(3, candle_core::DType::F32, &Device::Cpu).unwrap();
        assert!(ModalityMask::from_tensor(&t).is_err());
    }

    #[test]
    fn apply_zeroes_exactly_the_missing_channels() {
        let x = Tensor::rand(0.5f32, 1.0, (2, 4, 3, 2, 2), &Device::Cpu).unwrap();
        let m = ModalityMask::new([1.0, 0.0, 0.0, 1.0]).unwrap();
        let y = m.apply(&x).unwrap();
        for i in 0..4 {
            let xi = x.narrow(1, i, 1).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let yi = y.narrow(1, i, 1).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            if m.is_present(i) {
                assert_eq!(xi, yi);
            } else {
                assert!(yi.iter().all(|&v| v == 0.0));
            }
        }
    }
}
