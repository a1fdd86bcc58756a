//! Inference: the segmenter on a preprocessed image with a modality mask, whole or by
//! overlapping sliding windows, to per-channel probabilities and labels.
//!
//! Inference is `unet(x · r).out` (MGSD-SPEC §3.7): no teacher, no heads.

use anyhow::{bail, Result};
use candle_core::{Device, Tensor};
use mgsd_io::preprocess::Channels;
use mgsd_nn::UNet3D;

/// How to cover the image.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Window {
    /// One forward pass over the whole image (each side a multiple of 8).
    Whole,
    /// Windows of `patch` with fractional `overlap`, probabilities averaged (uniform weights, as
    /// RFNet). The image must be at least the patch on every axis (pad first).
    Sliding {
        /// Window size.
        patch: [usize; 3],
        /// Overlap in [0, 1).
        overlap: f64,
    },
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

/// Probabilities `(3, D, H, W)` (ED, NCR/NET, ET) for `image` `(4, D, H, W)` seen through the
/// channel mask `mask` (1 = present).
///
/// # Errors
/// Sizes the U-Net cannot take, tensor errors.
pub fn probabilities(
    unet: &UNet3D,
    image: &Channels,
    mask: [f32; 4],
    window: Window,
    device: &Device,
) -> Result<Vec<f32>> {
    let [c, d, h, w] = image.dims();
    if c != 4 {
        bail!("inference needs 4 input channels, got {c}");
    }
    let n = d * h * w;
    let r = Tensor::from_vec(mask.to_vec(), (1, 4, 1, 1, 1), device)?;
    match window {
        Window::Whole => {
            if [d, h, w].iter().any(|s| s % 8 != 0) {
                bail!(
                    "the image {:?} is not a multiple of 8 on every axis; use sliding windows",
                    [d, h, w]
                );
            }
            let x = Tensor::from_slice(&image.data, (1, 4, d, h, w), device)?.broadcast_mul(&r)?;
            let out = unet.forward(&x)?.out;
            Ok(out.flatten_all()?.to_vec1::<f32>()?)
        }
        Window::Sliding { patch, overlap } => {
            let [pd, ph, pw] = patch;
            if d < pd || h < ph || w < pw {
                bail!(
                    "sliding windows of {patch:?} need an image at least that large, got {:?}",
                    [d, h, w]
                );
            }
            let stride = patch.map(|p| ((p as f64 * (1.0 - overlap)).floor() as usize).max(1));
            let mut acc = vec![0f32; 3 * n];
            let mut count = vec![0u32; n];
            let mut win = vec![0f32; 4 * pd * ph * pw];
            for &z0 in &window_starts(d, pd, stride[0]) {
                for &y0 in &window_starts(h, ph, stride[1]) {
                    for &x0 in &window_starts(w, pw, stride[2]) {
                        for ch in 0..4 {
                            let src = image.channel(ch);
                            for a in 0..pd {
                                for b in 0..ph {
                                    let s = ((z0 + a) * h + y0 + b) * w + x0;
                                    let t = ((ch * pd + a) * ph + b) * pw;
                                    win[t..t + pw].copy_from_slice(&src[s..s + pw]);
                                }
                            }
                        }
                        let x = Tensor::from_slice(&win, (1, 4, pd, ph, pw), device)?
                            .broadcast_mul(&r)?;
                        let out: Vec<f32> = unet.forward(&x)?.out.flatten_all()?.to_vec1()?;
                        for ch in 0..3 {
                            for a in 0..pd {
                                for b in 0..ph {
                                    let t = ((z0 + a) * h + y0 + b) * w + x0;
                                    let s = ((ch * pd + a) * ph + b) * pw;
                                    for k in 0..pw {
                                        acc[ch * n + t + k] += out[s + k];
                                    }
                                    if ch == 0 {
                                        for cnt in &mut count[t..t + pw] {
                                            *cnt += 1;
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            for ch in 0..3 {
                for (a, &cnt) in acc[ch * n..(ch + 1) * n].iter_mut().zip(&count) {
                    *a /= cnt.max(1) as f32;
                }
            }
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
}
