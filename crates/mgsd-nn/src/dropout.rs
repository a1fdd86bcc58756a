//! Dropout with an explicit seed (`torch.nn.Dropout` semantics: zero with probability `p`,
//! scale the rest by `1/(1−p)`; identity outside training). The mask comes from a SplitMix64
//! stream seeded by the caller, so a training step can be replayed; no thread-local RNG.
//! The op is `x · mask` with candle's differentiable multiply, so gradients flow.

use candle_core::{bail, Result, Tensor};

/// Dropout with probability `p` (the U-Net uses 0.2 after `convco`).
///
/// # Shapes
/// Any shape → the same shape.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Dropout {
    p: f32,
}

impl Dropout {
    /// Dropout with probability `p ∈ [0, 1)`.
    pub fn new(p: f32) -> Result<Self> {
        if !(0.0..1.0).contains(&p) {
            bail!("Dropout: probability {p} is not in [0, 1)");
        }
        Ok(Self { p })
    }

    /// The drop probability.
    pub fn p(&self) -> f32 {
        self.p
    }

    /// Applies dropout when `train` (mask drawn from `seed`), the identity otherwise.
    pub fn forward_t(&self, xs: &Tensor, train: bool, seed: u64) -> Result<Tensor> {
        if train {
            dropout(xs, self.p, seed)
        } else {
            Ok(xs.clone())
        }
    }
}

/// Zeroes each element with probability `p` and scales the others by `1/(1−p)`; the mask is a
/// deterministic function of `seed` and the element count. Differentiable.
pub fn dropout(xs: &Tensor, p: f32, seed: u64) -> Result<Tensor> {
    if !(0.0..1.0).contains(&p) {
        bail!("dropout: probability {p} is not in [0, 1) (input {:?})", xs.shape());
    }
    if p == 0.0 {
        return Ok(xs.clone());
    }
    let keep = 1.0 / (1.0 - p);
    let mut state = seed;
    let mask: Vec<f32> =
        (0..xs.elem_count()).map(|_| if uniform(&mut state) < p { 0.0 } else { keep }).collect();
    let mask = Tensor::from_vec(mask, xs.shape(), xs.device())?.to_dtype(xs.dtype())?;
    xs.mul(&mask)
}

/// Next uniform `[0, 1)` draw of a SplitMix64 stream.
fn uniform(state: &mut u64) -> f32 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 40) as f32 / (1u64 << 24) as f32
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn drops_about_p_scales_the_rest_and_keeps_gradients() {
        let v = Var::ones((100, 100), candle_core::DType::F32, &Device::Cpu).unwrap();
        let y = dropout(v.as_tensor(), 0.2, 42).unwrap();
        let yv = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let dropped = yv.iter().filter(|&&a| a == 0.0).count();
        assert!((1800..2200).contains(&dropped), "{dropped} of 10000 dropped");
        assert!(yv.iter().all(|&a| a == 0.0 || (a - 1.25).abs() < 1e-6));
        let g = y.sum_all().unwrap().backward().unwrap();
        let gv = g.get(&v).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(gv, yv, "gradient is the mask");
        // Same seed, same mask; evaluation is the identity.
        assert_eq!(
            dropout(v.as_tensor(), 0.2, 42)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap(),
            yv
        );
        let d = Dropout::new(0.2).unwrap();
        let e = d.forward_t(v.as_tensor(), false, 1).unwrap();
        assert_eq!(e.sum_all().unwrap().to_scalar::<f32>().unwrap(), 10000.0);
        assert!(Dropout::new(1.0).is_err());
    }
}
