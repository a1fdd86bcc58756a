//! Per-modality contrasts: how each tissue and tumour part looks on T1, T1ce, T2 and FLAIR,
//! and the rendering of one modality (partial volumes, tumour heterogeneity, bias field,
//! Rician noise, int16-like rounding with the background exactly 0).
//!
//! The table makes the missing-modality problem real, as in clinical scans:
//! * enhancing tumour is bright **only** on T1ce; on T1, T2 and FLAIR it looks like oedema;
//! * oedema is bright on T2 and FLAIR; CSF is bright on T2 but dark on FLAIR;
//! * necrosis is dark on T1/T1ce and bright on T2;
//! * non-enhancing parts of a patchy rim (label 1) look like oedema everywhere, T1ce included;
//! * on T1 the whole tumour is mildly hypointense.

use super::anatomy::{TissueMaps, CSF, GM, WM};
use super::config::SynthConfig;
use super::rng::{mix, normal_pair, stage, stream, uniform};
use super::tumour::TumourMap;
use crate::labels::{ENHANCING, NCR_NET};
use crate::modality::Modality;
use crate::preprocess::zeroed;
use rayon::prelude::*;

/// Index of oedema in a row of [`INTENSITY`].
const ED: usize = 3;
/// Index of necrosis / non-enhancing core.
const NCR: usize = 4;
/// Index of enhancing tumour.
const ET: usize = 5;

/// Mean intensity of CSF, GM, WM, oedema, necrosis/non-enhancing core, enhancing tumour, per
/// modality in [`Modality::ALL`] order (T1, T1ce, T2, FLAIR). Roughly the ranges of BraTS
/// int16 scans.
pub const INTENSITY: [[f32; 6]; 4] = [
    // CSF    GM     WM     ED     NCR    ET
    [250.0, 560.0, 760.0, 480.0, 300.0, 480.0], // T1: tumour mildly hypointense
    [270.0, 590.0, 790.0, 500.0, 280.0, 1400.0], // T1ce: only ET bright (rim)
    [1800.0, 950.0, 680.0, 1350.0, 1700.0, 1350.0], // T2: CSF, oedema, necrosis bright
    [160.0, 640.0, 500.0, 1150.0, 750.0, 1150.0], // FLAIR: CSF dark, oedema bright
];

/// Smooth log-bias basis in normalised coordinates `u ∈ [-1, 1]³`: linear, quadratic and
/// cross terms.
fn bias_basis(u: [f32; 3]) -> [f32; 9] {
    let [x, y, z] = u;
    let q = 1.0 / 3.0;
    [x, y, z, x * x - q, y * y - q, z * z - q, x * y, x * z, y * z]
}

/// Renders modality `m` (index `mi` in [`Modality::ALL`]) of the case.
pub(crate) fn render(
    m: Modality,
    cfg: &SynthConfig,
    seed: u64,
    t: &TissueMaps,
    tum: &TumourMap,
) -> Vec<f32> {
    let mi = Modality::ALL.iter().position(|&x| x == m).unwrap_or(0);
    let table = INTENSITY[mi];
    let mut rng = stream(seed, stage::MODALITY + mi as u64);
    let gain = uniform(&mut rng, cfg.gain.0, cfg.gain.1);
    let coef: [f32; 9] = std::array::from_fn(|_| normal_pair(&mut rng).0 * 0.5);
    let sigma = cfg.noise * table[WM] * gain;
    let [_, ny, nz] = t.shape;
    let fov = [0, 1, 2].map(|a| t.spacing[a] * t.shape[a] as f32);
    let mut out = zeroed::<f32>(t.brain.len());
    out.par_chunks_mut(ny * nz).enumerate().for_each(|(i, slab)| {
        let mut noise_rng = stream(seed, mix(stage::NOISE + mi as u64, i as u64));
        for (v, o) in slab.iter_mut().enumerate() {
            let g = i * ny * nz + v;
            if !t.brain[g] {
                continue;
            }
            let (j, k) = (v / nz, v % nz);
            let p = t.mm(i, j, k);
            let f = [t.fractions[CSF][g], t.fractions[GM][g], t.fractions[WM][g]];
            let healthy = f[0] * table[CSF] + f[1] * table[GM] + f[2] * table[WM];
            let label = tum.labels[g];
            let ew = tum.edema_weight[g];
            let value = if label == 0 && ew == 0.0 {
                healthy
            } else {
                let tex = 1.0 + 0.06 * tum.texture.at(p).clamp(-2.5, 2.5);
                match label {
                    ENHANCING => table[ET] * tex,
                    NCR_NET if !tum.non_enhancing[g] => table[NCR] * tex,
                    _ => healthy + (table[ED] * tex - healthy) * ew,
                }
            };
            let u = [0, 1, 2].map(|a| 2.0 * p[a] / fov[a] - 1.0);
            let b = bias_basis(u);
            let log_bias: f32 = coef.iter().zip(b).map(|(c, b)| c * b).sum();
            let s = value * gain * (cfg.bias_field * log_bias).exp();
            let (n1, n2) = if sigma > 0.0 { normal_pair(&mut noise_rng) } else { (0.0, 0.0) };
            let noisy = ((s + sigma * n1).powi(2) + (sigma * n2).powi(2)).sqrt();
            *o = noisy.round().clamp(1.0, 32767.0);
        }
    });
    out
}
