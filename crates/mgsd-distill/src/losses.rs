//! The elementary losses of MGSD-SPEC §3–§6: soft Dice per channel, mean squared error, binary
//! cross-entropy on logits, and the image-level (teacher-to-student) term. All differentiable
//! compositions of candle ops, f32.

use candle_core::{bail, Result, Tensor};

/// Smoothing term of the soft Dice denominator (the reference's `1e-7`).
pub const DICE_EPS: f64 = 1e-7;

/// Soft Dice loss summed over channels: `Σ_c 1 − 2Σpg / (Σp² + Σg² + 1e-7)`, the sums running over
/// the batch and all voxels of channel `c` (MGSD-SPEC §3, supervised term; three channels
/// ED, NCR/NET, ET).
///
/// # Shapes
/// `p`, `g`: `(B, C, D, H, W)` → scalar.
pub fn soft_dice(p: &Tensor, g: &Tensor) -> Result<Tensor> {
    if p.shape() != g.shape() || p.rank() != 5 {
        bail!(
            "soft_dice: prediction {:?} and target {:?} must be equal (B, C, D, H, W)",
            p.shape(),
            g.shape()
        );
    }
    let c = p.dim(1)?;
    // Per-channel sums over (B, D, H, W) → (C,).
    let pg = (p * g)?.sum((0, 2, 3, 4))?;
    let pp = p.sqr()?.sum((0, 2, 3, 4))?;
    let gg = g.sqr()?.sum((0, 2, 3, 4))?;
    let ratio = ((pg * 2.0)? / ((pp + gg)? + DICE_EPS)?)?;
    // Σ_c (1 − ratio_c) = C − Σ_c ratio_c
    ratio.sum_all()?.neg()? + c as f64
}

/// Mean squared error over all elements (`F.mse_loss`, reduction mean).
pub fn mse(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if a.shape() != b.shape() {
        bail!("mse: shapes {:?} and {:?} differ", a.shape(), b.shape());
    }
    (a - b)?.sqr()?.mean_all()
}

/// `BCEWithLogitsLoss` against a constant target `t`, mean over all elements, in the stable form
/// `max(z,0) − z·t + log(1 + e^{−|z|})`.
pub fn bce_with_logits(z: &Tensor, target: f64) -> Result<Tensor> {
    let softplus = (z.abs()?.neg()?.exp()? + 1.0)?.log()?;
    (z.relu()? - (z * target)?)?.add(&softplus)?.mean_all()
}

/// Image-level distillation (MGSD-SPEC §3): `mse(out_f, out_t) + mse(out_m, out_t)`; the
/// teacher output is detached here whatever the caller passes.
pub fn image_level(out_f: &Tensor, out_m: &Tensor, out_t: &Tensor) -> Result<Tensor> {
    let t = out_t.detach();
    mse(out_f, &t)? + mse(out_m, &t)?
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn t(v: &[f32], shape: &[usize]) -> Tensor {
        Tensor::from_slice(v, shape, &Device::Cpu).unwrap()
    }

    fn scalar(x: &Tensor) -> f32 {
        x.to_scalar::<f32>().unwrap()
    }

    #[test]
    fn dice_by_hand() {
        // two channels, 2 voxels each.
        let p = t(&[0.5, 1.0, 0.0, 0.25], &[1, 2, 1, 1, 2]);
        let g = t(&[1.0, 1.0, 0.0, 1.0], &[1, 2, 1, 1, 2]);
        let c0 = 1.0 - 2.0 * 1.5 / (1.25 + 2.0 + 1e-7);
        let c1 = 1.0 - 2.0 * 0.25 / (0.0625 + 1.0 + 1e-7);
        assert!((scalar(&soft_dice(&p, &g).unwrap()) as f64 - (c0 + c1)).abs() < 1e-6);
        // perfect prediction → 0; both empty → 1 per channel.
        let z = t(&[0.0; 4], &[1, 2, 1, 1, 2]);
        assert!(scalar(&soft_dice(&g, &g).unwrap()).abs() < 1e-6);
        assert!((scalar(&soft_dice(&z, &z).unwrap()) - 2.0).abs() < 1e-6);
        assert!(soft_dice(&z, &t(&[0.0; 2], &[1, 1, 1, 1, 2])).is_err());
    }

    #[test]
    fn bce_is_stable_and_correct() {
        let z = t(&[-200.0, -1.0, 0.0, 3.0, 200.0], &[5]);
        let want: f64 = [-200.0f64, -1.0, 0.0, 3.0, 200.0]
            .iter()
            .map(|&z| z.max(0.0) - z + (1.0 + (-z.abs()).exp()).ln())
            .sum::<f64>()
            / 5.0;
        let got = scalar(&bce_with_logits(&z, 1.0).unwrap()) as f64;
        assert!((got - want).abs() < 1e-4, "{got} vs {want}");
        let got0 = scalar(&bce_with_logits(&z, 0.0).unwrap());
        assert!(
            got0.is_finite()
                && (got0 - (200.0 + 3.0486 + std::f32::consts::LN_2 + 0.3133) / 5.0).abs() < 1e-3
        );
        // gradient: (σ(z) − t)/n
        let v = Var::from_tensor(&t(&[0.3, -2.0], &[2])).unwrap();
        let g = bce_with_logits(v.as_tensor(), 1.0).unwrap().backward().unwrap();
        let g = g.get(v.as_tensor()).unwrap().to_vec1::<f32>().unwrap();
        let sig = |x: f32| 1.0 / (1.0 + (-x).exp());
        assert!((g[0] - (sig(0.3) - 1.0) / 2.0).abs() < 1e-6);
        assert!((g[1] - (sig(-2.0) - 1.0) / 2.0).abs() < 1e-6);
    }

    #[test]
    fn image_level_does_not_reach_the_teacher() {
        let a = Var::from_tensor(&t(&[1.0, 2.0], &[2])).unwrap();
        let tt = Var::from_tensor(&t(&[0.0, 0.0], &[2])).unwrap();
        let l = image_level(a.as_tensor(), a.as_tensor(), tt.as_tensor()).unwrap();
        assert!((scalar(&l) - 5.0).abs() < 1e-6);
        let g = l.backward().unwrap();
        assert!(g.get(tt.as_tensor()).is_none());
        assert!(g.get(a.as_tensor()).is_some());
    }
}
