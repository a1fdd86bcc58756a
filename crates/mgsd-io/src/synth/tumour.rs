//! Painting tumours into a brain: irregular lesions made of an oedema shell, an enhancing rim
//! and a necrotic core (HGG), or oedema around a non-enhancing core (LGG), at random positions
//! inside the brain.
//!
//! Each part is a star-shaped blob whose radius is perturbed by a smooth random field, so
//! boundaries are irregular but nested: necrosis ⊂ core ⊂ oedema. With patchy enhancement
//! ([`TumourConfig::patchy_enhancement`]) a further field decides which parts of the rim
//! between the necrosis and the core's surface enhance; the others are non-enhancing core.

use super::anatomy::TissueMaps;
use super::config::{Grade, TumourConfig};
use super::rng::{ramp, stage, stream, uniform, WaveField};
use crate::labels::{EDEMA, ENHANCING, NCR_NET};
use rand::RngExt;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

/// The painted tumour on the anatomy's grid.
#[derive(Debug, Clone)]
pub(crate) struct TumourMap {
    /// Canonical labels (0, 1, 2, 4).
    pub labels: Vec<u8>,
    /// Oedema weight (0–1): a partial-volume edge for blending oedema into healthy tissue;
    /// above 0.5 exactly where `labels` says oedema or core.
    pub edema_weight: Vec<f32>,
    /// Intensity heterogeneity inside the tumour (unit-variance field).
    pub texture: WaveField,
    /// Voxels of non-enhancing rim (label 1, but oedema-like on every sequence); all `false`
    /// without patchy enhancement.
    pub non_enhancing: Vec<bool>,
}

struct Lesion {
    centre: [f32; 3],
    edema: f32,
    core: f32,
    necrosis: f32,
    edema_field: WaveField,
    core_field: WaveField,
    /// Patchy enhancement: the rim enhances where this field exceeds the threshold.
    enhancement: Option<(WaveField, f32)>,
}

/// Picks a brain voxel at least `margin` mm inside the brain along the six axis directions.
fn pick_centre(rng: &mut ChaCha8Rng, t: &TissueMaps, margin: f32) -> Option<[f32; 3]> {
    let [nx, ny, nz] = t.shape;
    let inside = |p: [f32; 3]| -> bool {
        let idx = [0, 1, 2].map(|a| (p[a] / t.spacing[a]).floor());
        if (0..3).any(|a| idx[a] < 0.0 || idx[a] >= t.shape[a] as f32) {
            return false;
        }
        t.brain[(idx[0] as usize * ny + idx[1] as usize) * nz + idx[2] as usize]
    };
    for _ in 0..4000 {
        let (i, j, k) = (rng.random_range(0..nx), rng.random_range(0..ny), rng.random_range(0..nz));
        let c = t.mm(i, j, k);
        if !t.brain[(i * ny + j) * nz + k] {
            continue;
        }
        let ok = (0..3).all(|a| {
            [-1.0f32, 1.0].iter().all(|&s| {
                let mut q = c;
                q[a] += s * margin;
                inside(q)
            })
        });
        if ok {
            return Some(c);
        }
    }
    None
}

/// The brain's centre of mass in mm (fallback position).
fn brain_centroid(t: &TissueMaps) -> [f32; 3] {
    let [_, ny, nz] = t.shape;
    let (mut s, mut n) = ([0.0f64; 3], 0.0f64);
    for (v, _) in t.brain.iter().enumerate().filter(|(_, &b)| b) {
        let p = t.mm(v / (ny * nz), (v / nz) % ny, v % nz);
        for a in 0..3 {
            s[a] += f64::from(p[a]);
        }
        n += 1.0;
    }
    s.map(|x| (x / n.max(1.0)) as f32)
}

/// Paints the tumours of `cfg` for the case with `seed`.
pub(crate) fn paint(seed: u64, cfg: &TumourConfig, t: &TissueMaps) -> TumourMap {
    let mut rng = stream(seed, stage::TUMOUR);
    let texture = WaveField::new(&mut rng, 8, 6.0, 20.0);
    let voxel = t.spacing.iter().fold(0.0f32, |m, &s| m.max(s));
    let count = if cfg.count.1 > cfg.count.0 {
        rng.random_range(cfg.count.0..=cfg.count.1)
    } else {
        cfg.count.0
    };
    // A stream of its own, so patchy enhancement leaves every other draw (and so the lesions'
    // geometry and labels other than ET) exactly as without it.
    let mut enh_rng = stream(seed, stage::ENHANCEMENT);
    let mut lesions = Vec::with_capacity(count);
    for _ in 0..count {
        // Keep every part at least ~1.5 voxels thick so small grids still show all classes.
        let edema =
            uniform(&mut rng, cfg.edema_radius_mm.0, cfg.edema_radius_mm.1).max(3.0 * voxel);
        let core =
            (edema * uniform(&mut rng, cfg.core_fraction.0, cfg.core_fraction.1)).max(2.0 * voxel);
        let necrosis = match cfg.grade {
            Grade::Hgg => {
                let n = core * uniform(&mut rng, cfg.necrosis_fraction.0, cfg.necrosis_fraction.1);
                n.min(core - 1.5 * voxel).max(0.0)
            }
            Grade::Lgg => 0.0,
        };
        let centre = pick_centre(&mut rng, t, core).unwrap_or_else(|| brain_centroid(t));
        let edema_field = WaveField::new(&mut rng, 6, 15.0, 45.0);
        let core_field = WaveField::new(&mut rng, 6, 12.0, 35.0);
        let enhancement = match (cfg.grade, cfg.patchy_enhancement) {
            (Grade::Hgg, Some(spread)) => {
                let field = WaveField::new(&mut enh_rng, 6, 15.0, 40.0);
                Some((field, uniform(&mut enh_rng, -spread, spread)))
            }
            _ => None,
        };
        lesions.push(Lesion {
            centre,
            edema,
            core,
            necrosis,
            edema_field,
            core_field,
            enhancement,
        });
    }

    let [_, ny, nz] = t.shape;
    let n = t.brain.len();
    let mut labels = vec![0u8; n];
    let mut edema_weight = vec![0.0f32; n];
    let mut non_enhancing = vec![false; n];
    let irr = cfg.irregularity;
    labels
        .par_chunks_mut(ny * nz)
        .zip(edema_weight.par_chunks_mut(ny * nz))
        .zip(non_enhancing.par_chunks_mut(ny * nz))
        .enumerate()
        .for_each(|(i, ((lab, ew), ne))| {
            for les in &lesions {
                let reach = les.edema * (1.0 + 2.5 * irr) + voxel;
                let dx = (i as f32 + 0.5) * t.spacing[0] - les.centre[0];
                if dx.abs() > reach {
                    continue;
                }
                for j in 0..ny {
                    let dy = (j as f32 + 0.5) * t.spacing[1] - les.centre[1];
                    if dy.abs() > reach {
                        continue;
                    }
                    for k in 0..nz {
                        let v = j * nz + k;
                        if !t.brain[i * ny * nz + v] {
                            continue;
                        }
                        let p = t.mm(i, j, k);
                        let dz = p[2] - les.centre[2];
                        let d = (dx * dx + dy * dy + dz * dz).sqrt();
                        if d > reach {
                            continue;
                        }
                        let fe = les.edema_field.at(p).clamp(-2.0, 2.0);
                        let fc = les.core_field.at(p).clamp(-2.0, 2.0);
                        let r_edema = les.edema * (1.0 + irr * fe);
                        let r_core = les.core * (1.0 + 0.6 * irr * fc);
                        let r_nec = les.necrosis * (1.0 + 0.6 * irr * fc);
                        let w = ramp(r_edema - d, voxel).max(if d < r_core { 1.0 } else { 0.0 });
                        ew[v] = ew[v].max(w);
                        let mut rim_off = false;
                        let label = if d < r_nec {
                            NCR_NET
                        } else if d < r_core {
                            match (cfg.grade, &les.enhancement) {
                                (Grade::Hgg, Some((field, tau))) if field.at(p) <= *tau => {
                                    rim_off = true;
                                    NCR_NET
                                }
                                (Grade::Hgg, _) => ENHANCING,
                                (Grade::Lgg, _) => NCR_NET,
                            }
                        } else if d < r_edema {
                            EDEMA
                        } else {
                            0
                        };
                        // Core parts win over oedema; the first lesion's core wins over a later one.
                        let rank = |l: u8| match l {
                            0 => 0,
                            EDEMA => 1,
                            _ => 2,
                        };
                        if rank(label) > rank(lab[v]) {
                            lab[v] = label;
                            ne[v] = rim_off;
                        }
                    }
                }
            }
        });
    TumourMap { labels, edema_weight, texture, non_enhancing }
}
