//! The arithmetic of the CUDA convolutions: f32 (TF32 tensor cores allowed, PyTorch's
//! default) or bf16 mixed precision, PyTorch's `autocast(dtype=torch.bfloat16)` for
//! convolutions. A process-wide setting, like PyTorch's `torch.backends.cudnn` flags; the CPU
//! path always computes in f32.

use std::str::FromStr;
use std::sync::atomic::{AtomicU8, Ordering};

/// How `conv3d_forward` and its gradients compute on a CUDA device.
///
/// In the bf16 modes the operands are rounded to bf16 scratch copies, cuDNN multiplies them on
/// tensor cores with f32 accumulation, and each result (the output, `dx`, `dw`) is rounded to
/// bf16 and widened back, the bias and the residual added in f32. Activations, parameters and
/// gradients stay f32 tensors, so every other layer, the losses and the optimiser are
/// unchanged, and so is the memory the autograd graph holds. The gradient of every
/// convolution is that of a bf16 convolution, as under PyTorch's autocast.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConvPrecision {
    /// f32 operands and results; cuDNN may use TF32 tensor cores (`set_cudnn_tf32`).
    #[default]
    F32,
    /// bf16 mixed precision with channels-last (NDHWC) bf16 copies, cuDNN's native tensor-core
    /// layout: the layout change is folded into the rounding pass.
    Bf16,
}

impl ConvPrecision {
    /// The names [`FromStr`] accepts, in the order of the variants.
    pub const NAMES: [&'static str; 2] = ["f32", "bf16"];

    /// Whether the convolutions round their operands to bf16.
    pub fn is_bf16(self) -> bool {
        self != ConvPrecision::F32
    }

    fn index(self) -> u8 {
        self as u8
    }
}

impl FromStr for ConvPrecision {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "f32" => Ok(ConvPrecision::F32),
            "bf16" => Ok(ConvPrecision::Bf16),
            other => Err(format!(
                "unknown convolution precision {other:?}; expected one of {}",
                ConvPrecision::NAMES.join(", ")
            )),
        }
    }
}

impl std::fmt::Display for ConvPrecision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(ConvPrecision::NAMES[usize::from(self.index())])
    }
}

static PRECISION: AtomicU8 = AtomicU8::new(0);

/// Sets the precision of every CUDA convolution from now on (default [`ConvPrecision::F32`]).
/// A convolution's backward uses the precision its forward used.
pub fn set_conv_precision(p: ConvPrecision) {
    PRECISION.store(p.index(), Ordering::Relaxed);
}

/// The precision [`set_conv_precision`] set.
pub fn conv_precision() -> ConvPrecision {
    match PRECISION.load(Ordering::Relaxed) {
        1 => ConvPrecision::Bf16,
        _ => ConvPrecision::F32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_are_refused() {
        for name in ConvPrecision::NAMES {
            let p: ConvPrecision = name.parse().unwrap();
            assert_eq!(p.to_string(), name);
        }
        let e = "fp16".parse::<ConvPrecision>().unwrap_err();
        assert!(e.contains("fp16") && e.contains("bf16"), "{e}");
        assert!(!ConvPrecision::F32.is_bf16() && ConvPrecision::Bf16.is_bf16());
    }
}
