//! Inference: the segmenter on a preprocessed image with a modality mask, in one window or by
//! overlapping sliding windows, optionally with mirror test-time augmentation, to per-channel
//! probabilities.
//!
//! Inference is `unet(x · r).out` (MGSD-SPEC §3.7): no teacher, no heads.
//!
//! # Sliding windows (nnU-Net, MONAI `sliding_window_inference`)
//! Windows of the patch start at `0, s, 2s, …` on every axis, with `s = ⌊patch · (1 −
//! overlap)⌋`, and the last one is moved back to end at the image border, so every voxel is
//! covered. Each window's probabilities are weighted by an importance map — Gaussian with
//! σ = patch / 8 per axis ([`Blend::Gaussian`]) or uniform ([`Blend::Constant`]) — and every
//! voxel gets `Σ w·p / Σ w`. The Gaussian map is MONAI's `compute_importance_map(mode=
//! "gaussian", sigma_scale=0.125)`: separable, centred between the middle voxels, peak 1,
//! floored at `max(min, 1e-3)`. Checked against MONAI on the PyTorch U-Net by
//! `fixtures/gen_sliding_window.py`.
//!
//! # Test-time augmentation
//! With `tta`, every window is also predicted mirrored along each of the 7 non-empty axis
//! subsets; each prediction is mirrored back and the 8 are averaged before the window is
//! blended in (nnU-Net's mirroring, done per window).

use crate::config::Blend;
use anyhow::{bail, Result};
use candle_core::{Device, Tensor};
use mgsd_io::preprocess::{Channels, Flips};
use mgsd_nn::UNet3D;
use rayon::prelude::*;

/// How to cover the image.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Window {
    /// One forward pass over the whole image (each side a multiple of 8); with a centre-cropped
    /// image this is the ACN literature's evaluation.
    Whole,
    /// Overlapping windows of `patch`, blended. The image must be at least the patch on every
    /// axis (pad first).
    Sliding {
        /// Window size.
        patch: [usize; 3],
        /// Overlap in [0, 1).
        overlap: f64,
        /// Importance weighting of each window.
        blend: Blend,
    },
}

/// How to run the network over an image.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Inference {
    /// Window layout.
    pub window: Window,
    /// Average over the 8 axis mirrorings of every window.
    pub tta: bool,
}

/// Window start positions along an axis of `n` voxels for windows of `p` with `stride`:
/// `0, s, 2s, …` and always `n − p` last, so the axis is covered.
pub fn window_starts(n: usize, p: usize, stride: usize) -> Vec<usize> {
    if n <= p {
        return vec![0];
    }
    let mut v: Vec<usize> = (0..=(n - p)).step_by(stride.max(1)).collect();
    if *v.last().unwrap_or(&0) != n - p {
        v.push(n - p);
    }
    v
}

/// The stride of windows of `patch` with fractional `overlap` (at least 1 voxel).
pub fn window_stride(patch: [usize; 3], overlap: f64) -> [usize; 3] {
    patch.map(|p| ((p as f64 * (1.0 - overlap)).floor() as usize).max(1))
}

/// Every window origin of a sliding-window pass over `shape`.
pub fn window_origins(shape: [usize; 3], patch: [usize; 3], overlap: f64) -> Vec<[usize; 3]> {
    let stride = window_stride(patch, overlap);
    let starts: Vec<Vec<usize>> =
        (0..3).map(|a| window_starts(shape[a], patch[a], stride[a])).collect();
    let mut out = Vec::with_capacity(starts.iter().map(Vec::len).product());
    for &a in &starts[0] {
        for &b in &starts[1] {
            for &c in &starts[2] {
                out.push([a, b, c]);
            }
        }
    }
    out
}

/// The importance map of one window, `patch` voxels in C order.
pub fn importance_map(patch: [usize; 3], blend: Blend) -> Vec<f32> {
    let n: usize = patch.iter().product();
    match blend {
        Blend::Constant => vec![1.0; n],
        Blend::Gaussian => {
            let axis = |p: usize| -> Vec<f64> {
                let sigma = p as f64 * 0.125;
                (0..p)
                    .map(|k| {
                        let x = k as f64 - (p as f64 - 1.0) / 2.0;
                        (-(x * x) / (2.0 * sigma * sigma)).exp()
                    })
                    .collect()
            };
            let [gx, gy, gz] = [axis(patch[0]), axis(patch[1]), axis(patch[2])];
            let mut map = Vec::with_capacity(n);
            for a in &gx {
                for b in &gy {
                    for c in &gz {
                        map.push((a * b * c) as f32);
                    }
                }
            }
            let floor = map.iter().copied().fold(f32::INFINITY, f32::min).max(1e-3);
            for w in &mut map {
                *w = w.max(floor);
            }
            map
        }
    }
}

/// The 8 mirrorings of test-time augmentation (the identity first), or the identity alone.
fn mirrorings(tta: bool) -> Vec<Flips> {
    if !tta {
        return vec![Flips::NONE];
    }
    (0..8u8).map(|m| Flips { axes: [m & 1 != 0, m & 2 != 0, m & 4 != 0] }).collect()
}

/// `unet(x · r).out` for one window `(4, patch)` (flattened), averaged over `flips`.
fn predict_window(
    unet: &UNet3D,
    window: &[f32],
    shape: [usize; 3],
    r: &Tensor,
    flips: &[Flips],
    device: &Device,
) -> Result<Vec<f32>> {
    let [d, h, w] = shape;
    let mut mean: Vec<f32> = Vec::new();
    let mut mirrored = Vec::new();
    for f in flips {
        let input = if *f == Flips::NONE {
            window
        } else {
            mirrored.clear();
            mirrored.extend_from_slice(window);
            f.apply(&mut mirrored, 4, shape)?;
            &mirrored
        };
        let x = Tensor::from_slice(input, (1, 4, d, h, w), device)?.broadcast_mul(r)?;
        let mut out: Vec<f32> = unet.forward(&x)?.out.flatten_all()?.to_vec1()?;
        f.apply(&mut out, 3, shape)?;
        if mean.is_empty() {
            mean = out;
        } else {
            mean.par_iter_mut().zip(&out).for_each(|(m, o)| *m += o);
        }
    }
    if flips.len() > 1 {
        let k = 1.0 / flips.len() as f32;
        mean.par_iter_mut().for_each(|m| *m *= k);
    }
    Ok(mean)
}

/// Probabilities `(3, D, H, W)` (ED, NCR/NET, ET) for `image` `(4, D, H, W)` seen through the
/// channel mask `mask` (1 = present).
///
/// # Errors
/// Sizes the U-Net cannot take, an image smaller than the sliding window, tensor errors.
pub fn probabilities(
    unet: &UNet3D,
    image: &Channels,
    mask: [f32; 4],
    inference: Inference,
    device: &Device,
) -> Result<Vec<f32>> {
    let [c, d, h, w] = image.dims();
    if c != 4 {
        bail!("inference needs 4 input channels, got {c}");
    }
    let r = Tensor::from_vec(mask.to_vec(), (1, 4, 1, 1, 1), device)?;
    let flips = mirrorings(inference.tta);
    match inference.window {
        Window::Whole => {
            if [d, h, w].iter().any(|s| s % 8 != 0) {
                bail!(
                    "the image {:?} is not a multiple of 8 on every axis; use sliding windows",
                    [d, h, w]
                );
            }
            predict_window(unet, &image.data, [d, h, w], &r, &flips, device)
        }
        Window::Sliding { patch, overlap, blend } => {
            let [pd, ph, pw] = patch;
            if d < pd || h < ph || w < pw {
                bail!(
                    "sliding windows of {patch:?} need an image at least that large, got {:?}",
                    [d, h, w]
                );
            }
            let n = d * h * w;
            let weights = importance_map(patch, blend);
            let mut acc = vec![0f32; 3 * n];
            let mut wsum = vec![0f32; n];
            let mut win = vec![0f32; 4 * pd * ph * pw];
            for [z0, y0, x0] in window_origins([d, h, w], patch, overlap) {
                // Gather the window: one contiguous row of `pw` voxels at a time.
                win.par_chunks_mut(pd * ph * pw).enumerate().for_each(|(ch, dst)| {
                    let src = image.channel(ch);
                    for a in 0..pd {
                        for b in 0..ph {
                            let s = ((z0 + a) * h + y0 + b) * w + x0;
                            let t = (a * ph + b) * pw;
                            dst[t..t + pw].copy_from_slice(&src[s..s + pw]);
                        }
                    }
                });
                let out = predict_window(unet, &win, patch, &r, &flips, device)?;
                // Scatter `w · p` and `w`; each z-slab of the image belongs to one task.
                let slab = h * w;
                let (acc_ed, rest) = acc.split_at_mut(n);
                let (acc_ncr, acc_et) = rest.split_at_mut(n);
                let slabs = acc_ed[z0 * slab..(z0 + pd) * slab]
                    .par_chunks_mut(slab)
                    .zip(acc_ncr[z0 * slab..(z0 + pd) * slab].par_chunks_mut(slab))
                    .zip(acc_et[z0 * slab..(z0 + pd) * slab].par_chunks_mut(slab))
                    .zip(wsum[z0 * slab..(z0 + pd) * slab].par_chunks_mut(slab));
                let m = pd * ph * pw;
                slabs.enumerate().for_each(|(a, (((ed, ncr), et), ws))| {
                    for b in 0..ph {
                        let t = (y0 + b) * w + x0;
                        let s = (a * ph + b) * pw;
                        let wr = &weights[s..s + pw];
                        for (k, &wt) in wr.iter().enumerate() {
                            ed[t + k] += wt * out[s + k];
                            ncr[t + k] += wt * out[m + s + k];
                            et[t + k] += wt * out[2 * m + s + k];
                            ws[t + k] += wt;
                        }
                    }
                });
            }
            acc.par_chunks_mut(n).for_each(|ch| {
                for (a, &s) in ch.iter_mut().zip(&wsum) {
                    *a /= s;
                }
            });
            Ok(acc)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_cover_the_axis() {
        assert_eq!(window_starts(48, 32, 16), vec![0, 16]);
        assert_eq!(window_starts(50, 32, 16), vec![0, 16, 18]);
        assert_eq!(window_starts(32, 32, 16), vec![0]);
        assert_eq!(window_starts(200, 128, 64), vec![0, 64, 72]);
    }

    #[test]
    fn gaussian_map_is_monai_shaped() {
        let m = importance_map([8, 8, 8], Blend::Gaussian);
        // Symmetric, peak between the middle voxels, floored.
        let at = |i: usize, j: usize, k: usize| m[(i * 8 + j) * 8 + k];
        assert_eq!(at(3, 3, 3), at(4, 4, 4));
        assert_eq!(at(0, 2, 5), at(7, 5, 2));
        let x: f64 = 0.5;
        let peak = (-(x * x) / (2.0 * 1.0f64 * 1.0)).exp().powi(3);
        assert!((f64::from(at(3, 3, 3)) - peak).abs() < 1e-6);
        assert!(m.iter().all(|&w| w >= 1e-3));
        assert!(importance_map([4, 8, 16], Blend::Constant).iter().all(|&w| w == 1.0));
    }

    #[test]
    fn tta_mirrorings_are_the_eight_axis_subsets() {
        let m = mirrorings(true);
        assert_eq!(m.len(), 8);
        assert_eq!(m[0], Flips::NONE);
        let mut all: Vec<[bool; 3]> = m.iter().map(|f| f.axes).collect();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 8);
        assert_eq!(mirrorings(false), vec![Flips::NONE]);
    }
}
