//! Loading PyTorch `state_dict`s saved with safetensors, by parameter path.
//!
//! Parameter paths of every network in this crate equal the reference's `state_dict` keys, so
//! no renaming happens here. A missing or mis-shaped tensor is an error that names the tensor
//! (and the file), never a silent default.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{bail, DType, Device, Error, Result, Tensor};
use candle_nn::{VarBuilder, VarMap};

/// Reads every tensor of a safetensors file, as f32 on `device`.
pub fn read_safetensors(path: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    let tensors = candle_core::safetensors::load(path, device)
        .map_err(|e| Error::Msg(format!("reading safetensors {}: {e}", path.display())))?;
    tensors.into_iter().map(|(k, t)| Ok((k, t.to_dtype(DType::F32)?))).collect()
}

/// A read-only [`VarBuilder`] over a safetensors file, for inference: building a network from
/// it fails with "cannot find tensor `path`" or "shape mismatch for `path`" when the file does
/// not hold the network's parameters.
pub fn load_safetensors(path: &Path, device: &Device) -> Result<VarBuilder<'static>> {
    let tensors = read_safetensors(path, device)?;
    Ok(VarBuilder::from_tensors(tensors, DType::F32, device))
}

/// Overwrites every variable of `varmap` (a network built for training) with the tensor of the
/// same name in the safetensors file at `path`. Extra tensors in the file are ignored (a file
/// may hold several networks); a missing or mis-shaped one is an error naming it.
pub fn load_into_varmap(varmap: &VarMap, path: &Path) -> Result<()> {
    let device = match varmap.all_vars().first() {
        Some(v) => v.device().clone(),
        None => return Ok(()),
    };
    let tensors = read_safetensors(path, &device)?;
    let data = varmap
        .data()
        .lock()
        .map_err(|_| Error::Msg("load_into_varmap: the VarMap lock is poisoned".into()))?;
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    for name in names {
        let var = &data[name];
        let Some(t) = tensors.get(name.as_str()) else {
            bail!("{}: missing tensor `{name}` (expected shape {:?})", path.display(), var.dims())
        };
        if t.dims() != var.dims() {
            bail!(
                "{}: tensor `{name}` has shape {:?}, the network expects {:?}",
                path.display(),
                t.dims(),
                var.dims()
            )
        }
        var.set(t)?;
    }
    Ok(())
}
