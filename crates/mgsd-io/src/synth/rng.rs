//! Deterministic randomness for the generator: independent ChaCha streams per stage, normal
//! deviates and smooth random fields.
//!
//! Every stage (anatomy, tumour, each modality, each slab of noise) gets its own stream
//! derived from the case seed, so the output does not depend on thread scheduling.

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// SplitMix64 finaliser of `a` combined with `b`: well-mixed derived seeds.
pub(crate) fn mix(a: u64, b: u64) -> u64 {
    let mut z = a ^ b.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(17);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Stage numbers for [`stream`].
pub(crate) mod stage {
    pub const ANATOMY: u64 = 1;
    pub const TUMOUR: u64 = 2;
    /// Which parts of each lesion's rim enhance (only with patchy enhancement).
    pub const ENHANCEMENT: u64 = 3;
    /// Modality `m` uses `MODALITY + m`.
    pub const MODALITY: u64 = 16;
    /// Noise of modality `m`, x-slab `i` uses `mix(NOISE + m, i)`.
    pub const NOISE: u64 = 32;
}

/// The RNG of stage `k` of the case with seed `seed`.
pub(crate) fn stream(seed: u64, k: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(mix(seed, k))
}

/// Two independent standard normal deviates (Box–Muller).
#[inline]
pub(crate) fn normal_pair(rng: &mut ChaCha8Rng) -> (f32, f32) {
    let u1: f32 = 1.0 - rng.random::<f32>(); // (0, 1]: ln is finite
    let u2: f32 = rng.random::<f32>();
    let r = (-2.0 * u1.ln()).sqrt();
    let t = std::f32::consts::TAU * u2;
    (r * t.cos(), r * t.sin())
}

/// Uniform in `[lo, hi)` (or `lo` when the range is empty).
#[inline]
pub(crate) fn uniform(rng: &mut ChaCha8Rng, lo: f32, hi: f32) -> f32 {
    if hi > lo {
        lo + (hi - lo) * rng.random::<f32>()
    } else {
        lo
    }
}

/// A smooth random field in millimetre space: a sum of plane waves with random directions,
/// wavelengths and phases, scaled to unit standard deviation.
#[derive(Debug, Clone)]
pub(crate) struct WaveField {
    waves: Vec<([f32; 3], f32)>,
    amp: f32,
}

impl WaveField {
    /// `k` waves with wavelengths in `[min_mm, max_mm]`.
    pub(crate) fn new(rng: &mut ChaCha8Rng, k: usize, min_mm: f32, max_mm: f32) -> Self {
        let waves = (0..k)
            .map(|_| {
                let (a, b) = normal_pair(rng);
                let (c, _) = normal_pair(rng);
                let norm = (a * a + b * b + c * c).sqrt().max(1e-6);
                let lambda = uniform(rng, min_mm, max_mm).max(1e-3);
                let w = std::f32::consts::TAU / lambda / norm;
                ([a * w, b * w, c * w], uniform(rng, 0.0, std::f32::consts::TAU))
            })
            .collect();
        WaveField { waves, amp: (2.0 / k.max(1) as f32).sqrt() }
    }

    /// Field value at `p` (mm); mean 0, standard deviation about 1.
    #[inline]
    pub(crate) fn at(&self, p: [f32; 3]) -> f32 {
        self.amp
            * self
                .waves
                .iter()
                .map(|(w, ph)| (w[0] * p[0] + w[1] * p[1] + w[2] * p[2] + ph).sin())
                .sum::<f32>()
    }
}

/// `0` below `-w/2`, `1` above `w/2`, linear between: a partial-volume edge of width `w`.
#[inline]
pub(crate) fn ramp(x: f32, w: f32) -> f32 {
    (x / w.max(1e-6) + 0.5).clamp(0.0, 1.0)
}
