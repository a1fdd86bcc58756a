//! The candle pitfall of STYLE.md: a fast path that is not differentiable silently cuts the
//! gradient. One training step of UNet3D must give EVERY trainable variable a non-zero
//! gradient, and the optimiser must then change every variable.

mod common;

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarBuilder, VarMap};
use common::det_tensor;
use mgsd_nn::{UNet3D, UNet3DConfig};

#[test]
fn one_step_reaches_every_variable() -> Result<()> {
    let dev = Device::Cpu;
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
    let cfg = UNet3DConfig { width: 8, ..UNet3DConfig::default() };
    let net = UNet3D::new(cfg, vb)?;
    let x = ((det_tensor("train.x", &[1, 4, 16, 16, 16])? * 0.5)? + 0.5)?;
    let target = det_tensor("train.y", &[1, 3, 16, 16, 16])?.ge(0.0)?.to_dtype(DType::F32)?;
    // Training mode (dropout on); the loss uses only `out`, so every parameter must be
    // reached through the whole network.
    let o = net.forward_t(&x, Some(7))?;
    let loss = (&o.out - &target)?.sqr()?.mean_all()?;
    let grads = loss.backward()?;
    let vars = varmap.data().lock().expect("lock").clone();
    assert!(vars.len() > 100, "only {} variables", vars.len());
    let mut names: Vec<_> = vars.keys().cloned().collect();
    names.sort();
    for name in &names {
        let g = grads.get(&vars[name]).unwrap_or_else(|| panic!("{name}: no gradient"));
        let max = g.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(max > 0.0 && max.is_finite(), "{name}: gradient max |g| = {max}");
    }
    let before: Vec<Tensor> =
        names.iter().map(|n| vars[n].as_tensor().copy()).collect::<Result<_>>()?;
    let mut opt = AdamW::new(varmap.all_vars(), ParamsAdamW { lr: 1e-3, ..Default::default() })?;
    opt.step(&grads)?;
    for (name, b) in names.iter().zip(before) {
        let diff = (vars[name].as_tensor() - b)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff > 0.0, "{name}: unchanged by the optimiser step");
    }
    Ok(())
}
