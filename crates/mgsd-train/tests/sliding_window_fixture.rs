//! Sliding-window inference against MONAI's `sliding_window_inference` on the PyTorch
//! reference U-Net (fixture from `fixtures/gen_sliding_window.py`): Gaussian blending
//! (σ = patch / 8), constant blending, and mirror test-time augmentation, each with a modality
//! mask. Same weights on both sides (deterministic, derived from the parameter names).

#[path = "../../mgsd-nn/tests/common/mod.rs"]
mod common;

use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use common::{det_state_dict, det_values, fixture};
use mgsd_io::preprocess::Channels;
use mgsd_nn::{UNet3D, UNet3DConfig};
use mgsd_train::config::Blend;
use mgsd_train::infer::{probabilities, Inference, Window};

const SHAPE: [usize; 3] = [24, 20, 20];
const FIXTURE: &str = "sliding_window.safetensors";

#[test]
fn sliding_windows_match_monai() -> anyhow::Result<()> {
    let device = Device::Cpu;
    let unet = UNet3D::new(
        UNet3DConfig { width: 8, ..UNet3DConfig::default() },
        VarBuilder::from_tensors(det_state_dict(FIXTURE)?, DType::F32, &device),
    )?;
    let n: usize = SHAPE.iter().product();
    let x: Vec<f32> =
        det_values("sw.x", 4 * n).into_iter().map(|v| (v * 0.5 + 0.5) as f32).collect();
    let image = Channels::new(x, 4, SHAPE)?;
    let expected = candle_core::safetensors::load(fixture(FIXTURE), &device)?;
    for (name, blend, tta, mask) in [
        ("gaussian", Blend::Gaussian, false, [1.0, 1.0, 1.0, 1.0]),
        ("gaussian_tta", Blend::Gaussian, true, [0.0, 1.0, 1.0, 0.0]),
        ("constant", Blend::Constant, false, [1.0, 0.0, 1.0, 1.0]),
    ] {
        let inference =
            Inference { window: Window::Sliding { patch: [16; 3], overlap: 0.5, blend }, tta };
        let got = probabilities(&unet, &image, mask, inference, &device)?;
        let want: Vec<f32> = expected[&format!("out.{name}")].flatten_all()?.to_vec1()?;
        assert_eq!(got.len(), want.len(), "{name}: size");
        let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(worst <= 1e-4, "{name}: max |ours − MONAI| = {worst}");
    }
    Ok(())
}
