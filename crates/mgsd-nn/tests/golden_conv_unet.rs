//! Golden tests against PyTorch (fixtures written by `fixtures/gen_conv_unet.py`): Conv3d and
//! Conv1d forward and gradients, the whole UNet3D forward and backward, the style
//! discriminator, and loading a state_dict by name.
//!
//! Tolerances: forward 1e-4 relative to the tensor's largest magnitude (plus 1e-6 absolute),
//! gradients 1e-3 (PyTorch's oneDNN and our gemm sum in different orders; the U-Net chains
//! 30 convolutions and 26 GroupNorms).

mod common;

use std::collections::HashMap;

use candle_core::{DType, Device, Module, Result, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use common::{assert_close, det_state_dict, det_tensor, fixture, fixture_params};
use mgsd_nn::{
    conv1d, conv3d_forward, load_safetensors, read_safetensors, Conv1dConfig, Conv3dConfig,
    StyleDiscriminator, UNet3D, UNet3DConfig,
};

const FWD: f64 = 1e-4;
const GRAD: f64 = 1e-3;

fn load(name: &str) -> Result<HashMap<String, Tensor>> {
    read_safetensors(&fixture(name), &Device::Cpu)
}

fn get<'a>(t: &'a HashMap<String, Tensor>, k: &str) -> &'a Tensor {
    t.get(k).unwrap_or_else(|| panic!("fixture has no tensor {k}"))
}

#[test]
fn conv3d_matches_pytorch() -> Result<()> {
    let t = load("conv3d.safetensors")?;
    let cases: [(&str, Conv3dConfig); 6] = [
        ("k3p1", Conv3dConfig::cube(3).padding(1)),
        ("k3s2p1", Conv3dConfig::cube(3).stride(2).padding(1)),
        ("k3d2p2_nobias", Conv3dConfig::cube(3).padding(2).dilation(2).bias(false)),
        ("k4s2p1", Conv3dConfig::cube(4).stride(2).padding(1)),
        ("k232", Conv3dConfig { kernel: [2, 3, 2], ..Conv3dConfig::cube(1) }),
        ("k1", Conv3dConfig::cube(1)),
    ];
    for (name, cfg) in cases {
        let k = |s: &str| format!("{name}.{s}");
        let x = Var::from_tensor(get(&t, &k("x")))?;
        let w = Var::from_tensor(get(&t, &k("w")))?;
        let b = match cfg.bias {
            true => Some(Var::from_tensor(get(&t, &k("b")))?),
            false => None,
        };
        let y = conv3d_forward(&x, &w, b.as_ref().map(|b| b.as_tensor()), None, &cfg)?;
        assert_close(&k("y"), &y, get(&t, &k("y")), FWD, 1e-6);
        let grads = (&y * get(&t, &k("gy")))?.sum_all()?.backward()?;
        let grad = |v: &Var| grads.get(v).cloned().expect("gradient");
        assert_close(&k("dx"), &grad(&x), get(&t, &k("dx")), GRAD, 1e-6);
        assert_close(&k("dw"), &grad(&w), get(&t, &k("dw")), GRAD, 1e-6);
        if let Some(b) = &b {
            assert_close(&k("db"), &grad(b), get(&t, &k("db")), GRAD, 1e-6);
        }
    }
    Ok(())
}

#[test]
fn conv1d_matches_pytorch() -> Result<()> {
    let t = load("conv1d.safetensors")?;
    let mut varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let conv = conv1d(6, 24, Conv1dConfig::new(3), vb)?;
    varmap.set_one("weight", get(&t, "w"))?;
    varmap.set_one("bias", get(&t, "b"))?;
    let x = Var::from_tensor(get(&t, "x"))?;
    let y = conv.forward(&x)?;
    assert_close("conv1d y", &y, get(&t, "y"), FWD, 1e-6);
    let grads = (&y * get(&t, "gy"))?.sum_all()?.backward()?;
    let vars = varmap.data().lock().expect("lock").clone();
    let g = |v: &Var| grads.get(v).cloned().expect("gradient");
    assert_close("conv1d dx", &g(&x), get(&t, "dx"), GRAD, 1e-6);
    assert_close("conv1d dw", &g(&vars["weight"]), get(&t, "dw"), GRAD, 1e-6);
    assert_close("conv1d db", &g(&vars["bias"]), get(&t, "db"), GRAD, 1e-6);
    Ok(())
}

/// A trainable UNet3D (c = 8) holding the fixture's deterministic parameters.
fn fixture_unet() -> Result<(UNet3D, VarMap)> {
    let mut varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let cfg = UNet3DConfig { width: 8, ..UNet3DConfig::default() };
    let net = UNet3D::new(cfg, vb)?;
    // Exactly the reference's parameter paths and shapes, no more, no fewer.
    let ours: Vec<(String, Vec<usize>)> = {
        let data = varmap.data().lock().expect("lock");
        let mut v: Vec<_> = data.iter().map(|(k, v)| (k.clone(), v.dims().to_vec())).collect();
        v.sort();
        v
    };
    assert_eq!(ours, fixture_params("unet3d.safetensors"));
    for (k, v) in det_state_dict("unet3d.safetensors")? {
        varmap.set_one(&k, &v)?;
    }
    Ok((net, varmap))
}

#[test]
fn unet3d_forward_and_backward_match_pytorch() -> Result<()> {
    let t = load("unet3d.safetensors")?;
    let (net, varmap) = fixture_unet()?;
    let x = Var::from_tensor(get(&t, "x"))?;
    let o = net.forward(&x)?;
    let named = [("out", &o.out), ("style", &o.style), ("u2", &o.u2), ("u3", &o.u3), ("u4", &o.u4)];
    let mut loss = Tensor::zeros((), DType::F32, &Device::Cpu)?;
    for (name, got) in named {
        assert_close(name, got, get(&t, name), FWD, 1e-6);
        let r = det_tensor(&format!("R.{name}"), got.dims())?;
        loss = (loss + (got * r)?.sum_all()?)?;
    }
    let grads = loss.backward()?;
    let dx = grads.get(&x).cloned().expect("input gradient");
    assert_close("dx", &dx, get(&t, "dx"), GRAD, 1e-6);
    let vars = varmap.data().lock().expect("lock").clone();
    let mut checked = 0;
    for (k, want) in &t {
        let Some(p) = k.strip_prefix("grad.") else {
            continue;
        };
        let g = grads.get(&vars[p]).cloned().expect("parameter gradient");
        assert_close(k, &g, want, GRAD, 1e-6);
        checked += 1;
    }
    assert!(checked >= 20, "only {checked} parameter gradients in the fixture");
    Ok(())
}

#[test]
fn unet3d_loads_a_pytorch_state_dict_by_name() -> Result<()> {
    let dir = tempfile::tempdir().map_err(candle_core::Error::wrap)?;
    let path = dir.path().join("unet.safetensors");
    let sd = det_state_dict("unet3d.safetensors")?;
    candle_core::safetensors::save(&sd, &path)?;
    let cfg = UNet3DConfig { width: 8, ..UNet3DConfig::default() };
    let net = UNet3D::new(cfg, load_safetensors(&path, &Device::Cpu)?)?;
    let t = load("unet3d.safetensors")?;
    let o = net.forward(get(&t, "x"))?;
    assert_close("out (loaded)", &o.out, get(&t, "out"), FWD, 1e-6);

    // A missing tensor and a mis-shaped one are errors that name the tensor.
    let mut missing = sd.clone();
    missing.remove("conv3b.gn2.bias");
    candle_core::safetensors::save(&missing, &path)?;
    let err = UNet3D::new(cfg, load_safetensors(&path, &Device::Cpu)?)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("conv3b.gn2.bias"), "{err}");
    let mut bad = sd.clone();
    bad.insert("ds2.weight".into(), Tensor::zeros((32, 16, 3, 3, 2), DType::F32, &Device::Cpu)?);
    candle_core::safetensors::save(&bad, &path)?;
    let err = UNet3D::new(cfg, load_safetensors(&path, &Device::Cpu)?)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("ds2.weight"), "{err}");

    // The training path (VarMap) reports the same way.
    let varmap = VarMap::new();
    UNet3D::new(cfg, VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu))?;
    let err =
        mgsd_nn::load_into_varmap(&varmap, &path).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err.contains("ds2.weight") || err.contains("conv3b.gn2.bias"), "{err}");
    candle_core::safetensors::save(&sd, &path)?;
    mgsd_nn::load_into_varmap(&varmap, &path)?;
    Ok(())
}

#[test]
fn unet3d_rejects_sizes_not_divisible_by_8() -> Result<()> {
    let (net, _) = fixture_unet()?;
    let x = Tensor::zeros((1, 4, 16, 12, 16), DType::F32, &Device::Cpu)?;
    let err = net.forward(&x).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err.contains("divisible by 8") && err.contains("12"), "{err}");
    let x = Tensor::zeros((1, 3, 16, 16, 16), DType::F32, &Device::Cpu)?;
    let err = net.forward(&x).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err.contains("channels"), "{err}");
    Ok(())
}

#[test]
fn discriminator_matches_pytorch() -> Result<()> {
    let t = load("discriminator.safetensors")?;
    let mut varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let d = StyleDiscriminator::new(3, vb)?;
    for (k, v) in det_state_dict("discriminator.safetensors")? {
        varmap.set_one(&k, &v)?;
    }
    assert_eq!(varmap.all_vars().len(), 8);
    let x = Var::from_tensor(get(&t, "x"))?;
    let y = d.forward(&x)?;
    assert_close("logits", &y, get(&t, "logits"), FWD, 1e-6);
    let r = det_tensor("R.logits", y.dims())?;
    let grads = (&y * r)?.sum_all()?.backward()?;
    assert_close("dx", &grads.get(&x).cloned().expect("dx"), get(&t, "dx"), GRAD, 1e-6);
    let vars = varmap.data().lock().expect("lock").clone();
    for (k, want) in &t {
        if let Some(p) = k.strip_prefix("grad.") {
            let g = grads.get(&vars[p]).cloned().expect("parameter gradient");
            assert_close(k, &g, want, GRAD, 1e-6);
        }
    }
    Ok(())
}
