//! Checkpoints: one safetensors file holding the weights under the PyTorch reference's names and
//! the whole training state, written atomically.
//!
//! # Tensor names
//! | prefix | what |
//! |---|---|
//! | `unet.*` | the student U-Net (reference `state_dict` keys, e.g. `unet.conv1a.weight`) |
//! | `ema_model.*` | the EMA teacher, same keys |
//! | `MMD.*`, `Mutiaxis_fuse{2,3,4}.*` | the distillation heads (modality and feature level) |
//! | `discriminator.*` | the style discriminator; the reference keeps it as a separate module whose own keys are `0.*`, `2.*`, `4.*`, `6.*`, so `discriminator.0.weight` is its `0.weight` |
//! | `optim.<param>.m`, `optim.<param>.v` | Adam moments of the segmenter + heads (`<param>` is the full name above) |
//! | `optim_d.<param>.m`, `optim_d.<param>.v` | Adam moments of the discriminator |
//!
//! A PyTorch user loads the weights with `safetensors.torch.load_file` and filters by prefix;
//! the file's string metadata (`__metadata__`) holds the scalar state: see [`Meta`].
//!
//! # Atomic writes
//! The file is written to a temporary file in the same directory, flushed and `fsync`ed, renamed
//! over the destination and the directory `fsync`ed: a crash leaves either the old or the new
//! checkpoint, never a torn one. Stray temporary files (`.<name>.tmp-*`) from a crash are
//! ignored by [`load`] and removed by the next [`save`].

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Value of the `format` metadata key.
pub const FORMAT: &str = "mgsd-checkpoint";
/// Version of the metadata schema.
pub const FORMAT_VERSION: u32 = 1;

/// Scalar training state stored as safetensors string metadata.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Meta {
    /// Optimiser steps taken (global, over all epochs).
    pub step: u64,
    /// Epochs completed.
    pub epoch: usize,
    /// Steps of the segmenter optimiser (equals `step` unless a step was skipped).
    pub optim_step: u64,
    /// Steps of the discriminator optimiser.
    pub optim_d_step: u64,
    /// Master seed; every random draw of step `s` derives from `(seed, s)`, so `(seed, step)` is
    /// the complete RNG state.
    pub seed: u64,
    /// Hash of the resolved configuration's training-relevant part (see `config.rs`).
    pub config_hash: String,
    /// The resolved configuration as TOML.
    pub config: String,
    /// Best validation score so far (mean Dice over subsets and regions), if validated.
    pub best_score: Option<f64>,
    /// Free-form extras (e.g. git commit).
    #[serde(default)]
    pub extra: BTreeMap<String, String>,
}

impl Meta {
    fn to_map(&self) -> Result<HashMap<String, String>> {
        let mut m = HashMap::new();
        m.insert("format".to_string(), FORMAT.to_string());
        m.insert("format_version".to_string(), FORMAT_VERSION.to_string());
        m.insert(
            "state".to_string(),
            serde_json::to_string(self).context("serialising checkpoint state")?,
        );
        Ok(m)
    }

    fn from_map(path: &Path, m: Option<&HashMap<String, String>>) -> Result<Self> {
        let Some(m) = m else {
            bail!("{}: not an mgsd checkpoint (no safetensors metadata); to load bare weights use the weights-only path", path.display())
        };
        match m.get("format") {
            Some(f) if f == FORMAT => {}
            _ => bail!(
                "{}: not an mgsd checkpoint (metadata key 'format' is not '{FORMAT}')",
                path.display()
            ),
        }
        let version = m.get("format_version").map(String::as_str).unwrap_or("?");
        if version != FORMAT_VERSION.to_string() {
            bail!("{}: checkpoint format version {version} is not supported (this build reads {FORMAT_VERSION})", path.display());
        }
        let state = m
            .get("state")
            .with_context(|| format!("{}: metadata key 'state' is missing", path.display()))?;
        serde_json::from_str(state)
            .with_context(|| format!("{}: metadata key 'state' is not valid", path.display()))
    }
}

/// A loaded checkpoint: every tensor by name, and the metadata (if it is an mgsd checkpoint).
#[derive(Debug)]
pub struct Checkpoint {
    /// Where it was read from (for error messages).
    pub path: PathBuf,
    /// All tensors.
    pub tensors: HashMap<String, Tensor>,
    /// Training state; `None` for a weights-only file (e.g. exported from PyTorch).
    pub meta: Option<Meta>,
}

impl Checkpoint {
    /// The tensor called `name`.
    ///
    /// # Errors
    /// Names the file and the tensor when it is missing.
    pub fn get(&self, name: &str) -> Result<&Tensor> {
        self.tensors
            .get(name)
            .with_context(|| format!("{}: tensor '{name}' is missing", self.path.display()))
    }

    /// The tensors whose names start with `prefix`, with the prefix removed.
    pub fn with_prefix(&self, prefix: &str) -> HashMap<String, Tensor> {
        self.tensors
            .iter()
            .filter_map(|(k, v)| k.strip_prefix(prefix).map(|s| (s.to_string(), v.clone())))
            .collect()
    }

    /// The training state.
    ///
    /// # Errors
    /// When the file holds weights only.
    pub fn meta(&self) -> Result<&Meta> {
        self.meta.as_ref().with_context(|| {
            format!(
                "{}: holds weights only, no training state (cannot resume from it)",
                self.path.display()
            )
        })
    }
}

/// Writes `tensors` and `meta` to `path` atomically (see the module docs).
///
/// # Errors
/// Any I/O error, naming the file.
pub fn save(path: &Path, tensors: &[(String, Tensor)], meta: &Meta) -> Result<()> {
    let mut sorted: Vec<(&str, &Tensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    for w in sorted.windows(2) {
        if w[0].0 == w[1].0 {
            bail!("{}: two tensors are called '{}'", path.display(), w[0].0);
        }
    }
    // Contiguous CPU copies (safetensors' View needs the raw bytes).
    let cpu: Vec<(&str, Tensor)> = sorted
        .into_iter()
        .map(|(k, t)| Ok((k, t.to_device(&Device::Cpu)?.contiguous()?)))
        .collect::<candle_core::Result<_>>()
        .with_context(|| format!("{}: copying tensors to the host", path.display()))?;
    let bytes =
        safetensors::tensor::serialize(cpu.iter().map(|(k, t)| (*k, t)), Some(meta.to_map()?))
            .with_context(|| format!("{}: serialising safetensors", path.display()))?;
    write_atomically(path, &bytes)
}

/// Writes `bytes` to `path` through a temporary file in the same directory: write, fsync,
/// rename, fsync the directory. Stale temporary files of `path` are removed first.
///
/// # Errors
/// Any I/O error, naming the file.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let name = path.file_name().with_context(|| format!("{} has no file name", path.display()))?;
    let tmp_prefix = format!(".{}.tmp-", name.to_string_lossy());
    remove_stale_temporaries(&dir, &tmp_prefix);
    let tmp = dir.join(format!("{tmp_prefix}{}", std::process::id()));
    let result = (|| -> Result<()> {
        let mut f = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        f.write_all(bytes).with_context(|| format!("writing {}", tmp.display()))?;
        f.sync_all().with_context(|| format!("syncing {}", tmp.display()))?;
        drop(f);
        fs::rename(&tmp, path)
            .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
        // Make the rename durable. Opening a directory read-only and fsyncing it works on Unix;
        // on other platforms this is best effort.
        if let Ok(d) = File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn remove_stale_temporaries(dir: &Path, prefix: &str) {
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(prefix) {
                let _ = fs::remove_file(e.path());
            }
        }
    }
}

/// Reads a checkpoint (or a weights-only safetensors file) onto `device`.
///
/// # Errors
/// A missing, truncated or corrupt file, or a tensor that cannot be decoded — naming the file and
/// the tensor.
pub fn load(path: &Path, device: &Device) -> Result<Checkpoint> {
    let bytes = fs::read(path).with_context(|| format!("reading checkpoint {}", path.display()))?;
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| anyhow::anyhow!("{}: not a valid safetensors file ({e})", path.display()))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| anyhow::anyhow!("{}: not a valid safetensors file ({e})", path.display()))?;
    let meta = match header.metadata() {
        Some(m) if m.contains_key("format") => Some(Meta::from_map(path, Some(m))?),
        _ => None,
    };
    let mut tensors = HashMap::new();
    for (name, view) in st.tensors() {
        let t = candle_core::safetensors::Load::load(&view, device)
            .with_context(|| format!("{}: decoding tensor '{name}'", path.display()))?;
        tensors.insert(name, t);
    }
    Ok(Checkpoint { path: path.to_path_buf(), tensors, meta })
}

/// Copies the tensors named `names` (after `prefix`) from `src` into `dst`, checking shapes.
/// Used to fill a model's variables from a checkpoint.
///
/// # Errors
/// A missing tensor, or one whose shape differs from the variable's — naming the file, the tensor
/// and both shapes.
pub fn assign_vars(
    ckpt: &Checkpoint,
    prefix: &str,
    vars: &[(String, candle_core::Var)],
) -> Result<()> {
    for (name, var) in vars {
        let key = format!("{prefix}{name}");
        let t = ckpt.get(&key)?;
        if t.dims() != var.dims() {
            bail!(
                "{}: tensor '{key}' has shape {:?} but the model expects {:?} (was the checkpoint made with another configuration, e.g. a different width c?)",
                ckpt.path.display(),
                t.dims(),
                var.dims()
            );
        }
        let t = t.to_dtype(var.dtype())?.to_device(var.device())?;
        var.set(&t)
            .with_context(|| format!("{}: assigning tensor '{key}'", ckpt.path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> Meta {
        Meta {
            step: 3,
            epoch: 1,
            optim_step: 3,
            optim_d_step: 3,
            seed: 9,
            config_hash: "abc".into(),
            config: "x = 1".into(),
            best_score: Some(0.5),
            extra: BTreeMap::new(),
        }
    }

    #[test]
    fn round_trip_and_atomicity() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("last.safetensors");
        let t = Tensor::arange(0f32, 6.0, &Device::Cpu).unwrap().reshape((2, 3)).unwrap();
        save(&path, &[("unet.a".into(), t.clone())], &meta()).unwrap();
        // A crash mid-write leaves a stray temporary: loading ignores it, saving cleans it.
        let stray = dir.path().join(".last.safetensors.tmp-999999");
        fs::write(&stray, b"partial").unwrap();
        let ck = load(&path, &Device::Cpu).unwrap();
        assert_eq!(ck.meta.as_ref().unwrap(), &meta());
        assert_eq!(
            ck.get("unet.a").unwrap().to_vec2::<f32>().unwrap(),
            t.to_vec2::<f32>().unwrap()
        );
        let err = ck.get("unet.b").unwrap_err().to_string();
        assert!(err.contains("last.safetensors") && err.contains("unet.b"), "{err}");
        save(&path, &[("unet.a".into(), t)], &meta()).unwrap();
        assert!(!stray.exists());
    }

    #[test]
    fn truncated_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.safetensors");
        let t = Tensor::zeros((4, 4), candle_core::DType::F32, &Device::Cpu).unwrap();
        save(&path, &[("x".into(), t)], &meta()).unwrap();
        let bytes = fs::read(&path).unwrap();
        fs::write(&path, &bytes[..bytes.len() - 10]).unwrap();
        let err = format!("{:#}", load(&path, &Device::Cpu).unwrap_err());
        assert!(err.contains("c.safetensors"), "{err}");
    }
}
