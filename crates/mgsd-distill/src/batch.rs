//! A training batch as a file: `x`, `y` and the mask `r` in one safetensors file, the format the
//! `loss-terms` example reads (and the PyTorch fixture generator writes).

use std::path::Path;

use candle_core::{DType, Device, Tensor};

use crate::error::{Error, Result};
use crate::objective::OUT_CHANNELS;
use crate::sampler::{ModalityMask, NUM_MODALITIES};

/// Input, target and mask of one step.
#[derive(Clone, Debug)]
pub struct Batch {
    /// `(B, 4, D, H, W)` input, ACN order.
    pub x: Tensor,
    /// `(B, 3, D, H, W)` target (ED, NCR/NET, ET).
    pub y: Tensor,
    /// The modality mask.
    pub r: ModalityMask,
}

impl Batch {
    /// Reads `x`, `y` and `r` (4 elements, any shape) from a safetensors file; any float or
    /// integer dtype is converted to f32. Errors name the file and the tensor.
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        let file = |message: String| Error::File { path: path.to_path_buf(), message };
        let mut map =
            candle_core::safetensors::load(path, device).map_err(|e| file(e.to_string()))?;
        let mut take = |name: &str| -> Result<Tensor> {
            let t = map.remove(name).ok_or_else(|| Error::MissingTensor {
                path: path.to_path_buf(),
                name: name.into(),
            })?;
            Ok(t.to_dtype(DType::F32)?)
        };
        let (x, y, r) = (take("x")?, take("y")?, take("r")?);
        let bad = |name: &str, t: &Tensor, expected: String| Error::BadShape {
            path: path.to_path_buf(),
            name: name.into(),
            got: t.dims().to_vec(),
            expected,
        };
        let &[b, m, d, h, w] = x.dims() else {
            return Err(bad("x", &x, "(B, 4, D, H, W)".into()));
        };
        if m != NUM_MODALITIES || [d, h, w].iter().any(|&s| s == 0 || s % 8 != 0) {
            return Err(bad(
                "x",
                &x,
                "(B, 4, D, H, W) with D, H, W positive multiples of 8".into(),
            ));
        }
        if y.dims() != [b, OUT_CHANNELS, d, h, w] {
            return Err(bad("y", &y, format!("({b}, {OUT_CHANNELS}, {d}, {h}, {w}) to match x")));
        }
        if r.elem_count() != NUM_MODALITIES {
            return Err(bad("r", &r, "4 elements (T1, T2, FLAIR, T1ce)".into()));
        }
        let r = ModalityMask::from_tensor(&r).map_err(|e| file(format!("tensor `r`: {e}")))?;
        Ok(Self { x, y, r })
    }
}
