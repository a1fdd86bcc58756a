//! Healthy anatomy as tissue fractions: [`TissueMaps`] holds, per voxel, how much CSF, grey
//! matter and white matter it contains (partial volumes at edges) and the brain mask.
//! [`procedural`] draws a head; the atlas route is in [`super::atlas`].

use super::rng::{ramp, stage, stream, uniform, WaveField};
use rayon::prelude::*;

/// Tissue classes of healthy brain, the index into [`TissueMaps::fractions`].
pub(crate) const CSF: usize = 0;
/// Grey matter.
pub(crate) const GM: usize = 1;
/// White matter.
pub(crate) const WM: usize = 2;

/// Healthy anatomy on a grid.
#[derive(Debug, Clone)]
pub(crate) struct TissueMaps {
    /// `[nx, ny, nz]`.
    pub shape: [usize; 3],
    /// Voxel size in mm.
    pub spacing: [f32; 3],
    /// Brain (non-zero in the images).
    pub brain: Vec<bool>,
    /// CSF, GM, WM fractions per voxel, summing to 1 inside the brain.
    pub fractions: [Vec<f32>; 3],
}

impl TissueMaps {
    /// Centre of voxel `(i, j, k)` in mm.
    #[inline]
    pub fn mm(&self, i: usize, j: usize, k: usize) -> [f32; 3] {
        [
            (i as f32 + 0.5) * self.spacing[0],
            (j as f32 + 0.5) * self.spacing[1],
            (k as f32 + 0.5) * self.spacing[2],
        ]
    }
}

fn ellipsoid_radius(p: [f32; 3], c: [f32; 3], a: [f32; 3]) -> f32 {
    let u = [0, 1, 2].map(|d| (p[d] - c[d]) / a[d]);
    (u[0] * u[0] + u[1] * u[1] + u[2] * u[2]).sqrt()
}

/// A procedural skull-stripped head spanning `fov` mm on `shape`: an ellipsoidal brain with a
/// wavy surface, a folded cortical ribbon with sulci, lateral ventricles and deep grey nuclei.
/// Random proportions come from `seed`.
pub(crate) fn procedural(seed: u64, shape: [usize; 3], fov: [f32; 3]) -> TissueMaps {
    let mut rng = stream(seed, stage::ANATOMY);
    let spacing = [0, 1, 2].map(|a| fov[a] / shape[a] as f32);
    let w = spacing.iter().fold(0.0f32, |m, &s| m.max(s)); // partial-volume edge width
    let centre = [0, 1, 2].map(|a| fov[a] * 0.5 + uniform(&mut rng, -3.0, 3.0));
    // Brain semi-axes in mm: left-right, anterior-posterior, inferior-superior.
    let axes = [68.0, 84.0, 58.0].map(|a: f32| a * uniform(&mut rng, 0.94, 1.06));
    let surface = WaveField::new(&mut rng, 6, 40.0, 90.0);
    let gyri = WaveField::new(&mut rng, 12, 14.0, 28.0);
    let shift = uniform(&mut rng, 8.0, 12.0);
    let ventricles: Vec<([f32; 3], [f32; 3])> = [-1.0f32, 1.0]
        .iter()
        .map(|&side| {
            let c = [centre[0] + side * shift, centre[1] - 4.0, centre[2] + 8.0];
            (c, [6.5, 22.0, 11.0].map(|a: f32| a * uniform(&mut rng, 0.85, 1.15)))
        })
        .collect();
    let deep: Vec<([f32; 3], [f32; 3])> = [-1.0f32, 1.0]
        .iter()
        .map(|&side| {
            ([centre[0] + side * 20.0, centre[1] + 2.0, centre[2] - 4.0], [9.0, 14.0, 9.0])
        })
        .collect();
    let min_axis = axes.iter().fold(f32::INFINITY, |m, &a| m.min(a));

    let [nx, ny, nz] = shape;
    let n = nx * ny * nz;
    let mut brain = vec![false; n];
    let mut fr = [vec![0.0f32; n], vec![0.0f32; n], vec![0.0f32; n]];
    let [csf, gm, wm] = &mut fr;
    brain
        .par_chunks_mut(ny * nz)
        .zip(csf.par_chunks_mut(ny * nz))
        .zip(gm.par_chunks_mut(ny * nz))
        .zip(wm.par_chunks_mut(ny * nz))
        .enumerate()
        .for_each(|(i, (((b, c), g), wmat))| {
            for j in 0..ny {
                for k in 0..nz {
                    let p = [
                        (i as f32 + 0.5) * spacing[0],
                        (j as f32 + 0.5) * spacing[1],
                        (k as f32 + 0.5) * spacing[2],
                    ];
                    let r = ellipsoid_radius(p, centre, axes);
                    let rb = 1.0 + 0.035 * surface.at(p);
                    // Approximate depth below the brain surface, in mm.
                    let depth = (rb - r) * min_axis;
                    if depth <= 0.0 {
                        continue;
                    }
                    let v = j * nz + k;
                    b[v] = true;
                    let fold = gyri.at(p);
                    let surface_csf = ramp(1.2 - depth, w);
                    // Sulci: thin bands along an iso-surface of the folding field, reaching
                    // ~12 mm deep; the cortex follows them inwards (gyri).
                    let sulci = ramp(0.12 - (fold - 0.6).abs(), 0.08) * ramp(12.0 - depth, w);
                    let vent = ventricles
                        .iter()
                        .map(|(c, a)| ramp((1.0 - ellipsoid_radius(p, *c, *a)) * a[0], w))
                        .fold(0.0f32, f32::max);
                    let ribbon = ramp(3.0 + 9.0 * ramp(fold - 0.3, 0.6) - depth, w);
                    let nuclei = deep
                        .iter()
                        .map(|(c, a)| ramp((1.0 - ellipsoid_radius(p, *c, *a)) * a[0], w))
                        .fold(0.0f32, f32::max);
                    let f_csf = surface_csf.max(sulci).max(vent);
                    let f_gm = ribbon.max(nuclei) * (1.0 - f_csf);
                    c[v] = f_csf;
                    g[v] = f_gm;
                    wmat[v] = (1.0 - f_csf - f_gm).max(0.0);
                }
            }
        });
    TissueMaps { shape, spacing, brain, fractions: fr }
}

/// Tissue fractions from a skull-stripped T1 image by intensity (CSF dark, GM mid, WM
/// bright), with linear partial volumes between the class peaks `csf_gm` and `gm_wm`
/// (intensity ranges).
pub(crate) fn from_t1(
    t1: &[f32],
    shape: [usize; 3],
    spacing: [f32; 3],
    csf_gm: (f32, f32),
    gm_wm: (f32, f32),
) -> TissueMaps {
    let n = t1.len();
    let mut brain = vec![false; n];
    let mut fr = [vec![0.0f32; n], vec![0.0f32; n], vec![0.0f32; n]];
    let [csf, gm, wm] = &mut fr;
    brain
        .par_iter_mut()
        .zip(csf.par_iter_mut())
        .zip(gm.par_iter_mut())
        .zip(wm.par_iter_mut())
        .zip(t1.par_iter())
        .for_each(|((((b, c), g), w), &t)| {
            if t > 0.0 {
                *b = true;
                *c = ((csf_gm.1 - t) / (csf_gm.1 - csf_gm.0)).clamp(0.0, 1.0);
                *w = ((t - gm_wm.0) / (gm_wm.1 - gm_wm.0)).clamp(0.0, 1.0);
                *g = (1.0 - *c - *w).max(0.0);
            }
        });
    TissueMaps { shape, spacing, brain, fractions: fr }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn procedural_head_has_all_tissues() {
        let t = procedural(7, [40, 40, 28], [240.0, 240.0, 155.0]);
        let brain = t.brain.iter().filter(|&&b| b).count();
        assert!(brain > 40 * 40 * 28 / 8, "brain too small: {brain}");
        assert!(!t.brain[0], "corner must be background");
        for c in [CSF, GM, WM] {
            let s: f32 = t.fractions[c].iter().sum();
            assert!(s > brain as f32 * 0.05, "class {c} too rare: {s} of {brain}");
        }
    }
}
