//! The training configuration: a TOML file (`train --config FILE`), fully resolved before use and
//! written into the run directory.
//!
//! Every section and key is optional except what the data source needs; unknown keys are errors
//! (`deny_unknown_fields`) whose message names the file, the line and the key. The embedded
//! default (`mgsd-train` without arguments) is `configs/demo.toml`, compiled in.
//!
//! Presets: `configs/mgsd-brats2018.toml` (MGSD/ACN protocol), `configs/rfnet-brats2018.toml`
//! (RFNet protocol and split lists), `configs/demo.toml` (synthetic cases, at most 8 min of training on 2 cores).

use anyhow::{bail, Context, Result};
use mgsd_distill::ModalityAttention;
use mgsd_io::ModalitySet;
use mgsd_nn::ConvPrecision;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The embedded default configuration (`configs/demo.toml`).
pub const DEMO_TOML: &str = include_str!("../../../configs/demo.toml");

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where the cases come from and how they are split.
    pub data: DataConfig,
    /// Preprocessing / evaluation protocol.
    #[serde(default)]
    pub protocol: ProtocolConfig,
    /// The network.
    #[serde(default)]
    pub model: ModelConfig,
    /// Optimisation.
    #[serde(default)]
    pub train: TrainConfig,
    /// Loss weights of the MGSD objective.
    #[serde(default)]
    pub loss: LossWeights,
    /// Where and how to run.
    #[serde(default)]
    pub run: RunConfig,
}

/// Data source. Exactly one of `manifest`, `root` and `synthetic` must be given.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// A dataset manifest written by `cargo xtask fetch-brats` (`data/<name>/manifest.json`).
    pub manifest: Option<PathBuf>,
    /// A dataset folder in any layout `mgsd_io::discover` recognises.
    pub root: Option<PathBuf>,
    /// Generate synthetic BraTS-like cases (the embedded default).
    pub synthetic: Option<SyntheticConfig>,
    /// A split file written by `cargo xtask splits` (JSON with `folds[].train/val/test`).
    pub split: Option<PathBuf>,
    /// Which fold of `split` to use.
    #[serde(default)]
    pub fold: usize,
    /// Without a split file: fraction of the (sorted, seeded-shuffled) cases held out for
    /// validation (checkpoint selection).
    #[serde(default = "default_val_fraction")]
    pub val_fraction: f64,
    /// Without a split file: fraction held out as the test set, never seen in training or
    /// checkpoint selection.
    #[serde(default = "default_val_fraction")]
    pub test_fraction: f64,
    /// Directory of the preprocessed-case cache (`None`: no cache). Relative paths are relative
    /// to the run directory.
    pub cache: Option<PathBuf>,
}

fn default_val_fraction() -> f64 {
    0.2
}

/// Synthetic data (mgsd-io's generator).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyntheticConfig {
    /// Training cases.
    pub train_cases: usize,
    /// Validation cases (checkpoint selection; 0: no validation, no `best.safetensors`).
    #[serde(default)]
    pub val_cases: usize,
    /// Held-out test cases (the final table), disjoint from the validation cases.
    pub test_cases: usize,
    /// Grid of each generated case `[nx, ny, nz]`.
    pub shape: [usize; 3],
    /// Generator seed.
    #[serde(default)]
    pub seed: u64,
    /// Where the cases are written (relative to the run directory when relative).
    #[serde(default = "default_synth_dir")]
    pub dir: PathBuf,
    /// Oedema (whole-tumour) radius range in mm (generator default: 22–34 mm). Larger tumours
    /// give the enhancing rim more voxels at coarse demo resolutions.
    pub tumour_radius_mm: Option<[f32; 2]>,
    /// Patchy enhancement of the rim (mgsd-io's `TumourConfig::patchy_enhancement`; default
    /// none: the whole rim enhances). `s` in `[0, 4]`: only the parts of the rim where a smooth
    /// random field exceeds a per-lesion threshold drawn in `[-s, s]` enhance; the rest is
    /// non-enhancing core that looks like oedema on every sequence, so the enhancing tumour's
    /// extent is visible only on T1ce instead of following from the necrosis that T2 shows.
    /// A harder task, not an easier one: the lesions' geometry, WT and TC are unchanged.
    pub patchy_enhancement: Option<f32>,
}

fn default_synth_dir() -> PathBuf {
    PathBuf::from("synthetic")
}

/// Which literature protocol to follow (MGSD-SPEC §1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// ACN / SMU-Net / MGSD: min-max per volume, random crop to the patch, centre crop for
    /// evaluation, no post-processing.
    #[default]
    Acn,
    /// RFNet family: z-score inside the brain mask, crop to the brain bounding box, sliding-window
    /// evaluation, "ET < 500 voxels → 0".
    Rfnet,
}

/// Intensity normalisation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Normalisation {
    /// Per-volume min-max to [0, 1].
    MinMax,
    /// Zero mean, unit variance inside the brain mask.
    ZScore,
}

/// How overlapping sliding windows are combined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Blend {
    /// Gaussian importance weights, σ = 1/8 of the patch per axis (nnU-Net, MONAI
    /// `mode="gaussian", sigma_scale=0.125`): window borders, where the network sees least
    /// context, count least.
    #[default]
    Gaussian,
    /// Every window counts equally (RFNet, MONAI `mode="constant"`).
    Constant,
}

/// Preprocessing and evaluation protocol.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProtocolConfig {
    /// `acn` or `rfnet`; sets the defaults of the other keys.
    #[serde(default)]
    pub name: Protocol,
    /// Training patch `[D, H, W]`, each divisible by 8.
    #[serde(default = "default_patch")]
    pub patch: [usize; 3],
    /// Normalisation (default: min-max for `acn`, z-score for `rfnet`).
    pub normalisation: Option<Normalisation>,
    /// Evaluate with overlapping sliding windows over the brain box (default: `rfnet`).
    pub sliding_window: Option<bool>,
    /// Window overlap for sliding-window inference, in [0, 1).
    #[serde(default = "default_overlap")]
    pub overlap: f64,
    /// How overlapping sliding windows are combined: `gaussian` (nnU-Net's importance
    /// weighting, σ = patch / 8) or `constant` (plain average, RFNet).
    #[serde(default)]
    pub blend: Blend,
    /// Mirror test-time augmentation: average over the 8 axis-flip combinations (8× the time).
    #[serde(default)]
    pub tta: bool,
    /// Score with "ET < N voxels → 0" (default: 500 for `rfnet`, none for `acn`).
    pub min_et_voxels: Option<usize>,
    /// Random flips on each axis during training (p = 0.5).
    #[serde(default = "default_true")]
    pub flips: bool,
    /// Fraction of training patches centred on a tumour voxel, as nnU-Net oversamples
    /// foreground (0.33 there): a label drawn uniformly among those the case has (so the
    /// enhancing tumour is picked as often as the oedema), a voxel of it, the patch centred
    /// there and kept inside the volume; the other patches are uniform over the volume.
    /// Drawn from the sample's own seed `(seed, epoch, sample)`, so runs stay reproducible and
    /// resume exactly. 0 (the default, the literature's uniform crops) is not written into
    /// `config.toml`, so the configuration hash of earlier runs is unchanged.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub foreground_fraction: f64,
}

fn is_zero(x: &f64) -> bool {
    *x == 0.0
}

fn default_patch() -> [usize; 3] {
    [160, 192, 128]
}
fn default_overlap() -> f64 {
    0.5
}
fn default_true() -> bool {
    true
}

impl Default for ProtocolConfig {
    fn default() -> Self {
        ProtocolConfig {
            name: Protocol::Acn,
            patch: default_patch(),
            normalisation: None,
            sliding_window: None,
            overlap: default_overlap(),
            blend: Blend::default(),
            tta: false,
            min_et_voxels: None,
            flips: true,
            foreground_fraction: 0.0,
        }
    }
}

impl ProtocolConfig {
    /// The normalisation in effect.
    pub fn normalisation(&self) -> Normalisation {
        self.normalisation.unwrap_or(match self.name {
            Protocol::Acn => Normalisation::MinMax,
            Protocol::Rfnet => Normalisation::ZScore,
        })
    }

    /// Whether evaluation uses sliding windows.
    pub fn sliding_window(&self) -> bool {
        self.sliding_window.unwrap_or(self.name == Protocol::Rfnet)
    }

    /// The "ET < N → 0" threshold in effect.
    pub fn min_et(&self) -> Option<usize> {
        match (self.min_et_voxels, self.name) {
            (Some(0), _) => None,
            (Some(n), _) => Some(n),
            (None, Protocol::Rfnet) => Some(crate::metrics::RFNET_MIN_ET_VOXELS),
            (None, Protocol::Acn) => None,
        }
    }
}

/// The network.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Base width `c` of the U-Net (reference: 16).
    #[serde(default = "default_width")]
    pub channels: usize,
    /// Dropout after `convco` (reference: 0.2).
    #[serde(default = "default_dropout")]
    pub dropout: f32,
    /// Initial bias of the three sigmoid output channels (`up1conv.bias`). `None` (the
    /// reference) draws it like every other bias. A negative prior such as -3 (p ≈ 0.05, the
    /// "prior probability" initialisation of focal-loss detectors) makes a short run start from
    /// "no tumour" instead of p = 0.5 everywhere, which soft Dice is slow to leave for rare
    /// classes such as ET. Used by the short embedded demo.
    #[serde(default)]
    pub output_bias: Option<f32>,
    /// Rebuild the residual blocks' GroupNorm outputs in the backward instead of keeping them
    /// (default `true`): the same numbers, about a fifth less peak memory for a training step
    /// at the paper's patch, one more GroupNorm pass per norm. `false` keeps them.
    #[serde(default = "default_recompute_norm")]
    pub recompute_norm: bool,
    /// The modality level's decoder layer: `"reference"` (default; the bare softmax-free
    /// attention, whose term vanishes at standard initialisation) or `"prenorm"` (LayerNorm,
    /// attention and the reference's unused feed-forward, each with a residual). Both have the
    /// same parameters, so checkpoints load either way. Not written when `reference`, so the
    /// configuration hash of earlier runs is unchanged.
    #[serde(default, skip_serializing_if = "is_reference_attention")]
    pub modality_attention: ModalityAttention,
}

fn is_reference_attention(a: &ModalityAttention) -> bool {
    *a == ModalityAttention::Reference
}

fn default_recompute_norm() -> bool {
    true
}

fn default_width() -> usize {
    16
}
fn default_dropout() -> f32 {
    0.2
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            channels: default_width(),
            dropout: default_dropout(),
            output_bias: None,
            recompute_norm: default_recompute_norm(),
            modality_attention: ModalityAttention::Reference,
        }
    }
}

/// How training masks are drawn (mgsd-distill's sampler).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Sampler {
    /// Bernoulli(0.5) per modality, excluding none and all (the reference).
    #[default]
    Reference,
    /// Uniform over the 15 non-empty subsets.
    Uniform,
    /// Always this subset.
    Fixed(ModalitySet),
}

impl Serialize for Sampler {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            Sampler::Reference => s.serialize_str("reference"),
            Sampler::Uniform => s.serialize_str("uniform"),
            Sampler::Fixed(m) => s.serialize_str(&format!("fixed:{m}")),
        }
    }
}

impl<'de> Deserialize<'de> for Sampler {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        match s.as_str() {
            "reference" => Ok(Sampler::Reference),
            "uniform" => Ok(Sampler::Uniform),
            other => match other.strip_prefix("fixed:") {
                Some(set) => set.parse().map(Sampler::Fixed).map_err(serde::de::Error::custom),
                None => Err(serde::de::Error::custom(format!(
                    "unknown sampler '{other}' (expected \"reference\", \"uniform\" or \"fixed:<modalities>\", e.g. \"fixed:flair+t1ce\")"
                ))),
            },
        }
    }
}

/// Optimisation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Epochs (the poly schedule decays over these).
    #[serde(default = "default_epochs")]
    pub epochs: usize,
    /// Optimiser steps per epoch (default: one pass over the training cases).
    pub steps_per_epoch: Option<usize>,
    /// Cases per step (reference: 1).
    #[serde(default = "default_batch")]
    pub batch: usize,
    /// Adam learning rate of the segmenter and heads.
    #[serde(default = "default_lr")]
    pub lr: f64,
    /// L2 weight decay (PyTorch Adam semantics).
    #[serde(default = "default_wd")]
    pub weight_decay: f64,
    /// Adam betas of the segmenter.
    #[serde(default = "default_betas")]
    pub betas: (f64, f64),
    /// Power of the poly schedule.
    #[serde(default = "default_power")]
    pub lr_power: f64,
    /// Discriminator learning rate.
    #[serde(default = "default_lr")]
    pub d_lr: f64,
    /// Discriminator betas (reference: 0.9, 0.99).
    #[serde(default = "default_d_betas")]
    pub d_betas: (f64, f64),
    /// Upper bound of the EMA decay (α = min(1 − 1/(step+1), ema_decay)).
    #[serde(default = "default_ema")]
    pub ema_decay: f64,
    /// Modality-mask sampler: `reference`, `uniform` or `fixed:<modalities>`.
    #[serde(default)]
    pub sampler: Sampler,
    /// Validate (all 15 subsets) every N epochs and after the last; 0 = once, at the end.
    /// Validation keeps the best-scoring weights as `best.safetensors`.
    #[serde(default = "default_val_every")]
    pub val_every: usize,
    /// Master seed.
    #[serde(default)]
    pub seed: u64,
    /// Stop after this many minutes of training (checkpointing first); `None` = no limit.
    pub max_minutes: Option<f64>,
    /// Micro-batches of `batch` cases whose gradients are averaged before each optimiser step
    /// (gradient accumulation; `mgsd-train train --accumulate N`). Each rank of a data-parallel
    /// run accumulates this many, so the effective batch is `batch × world size × accumulate`.
    /// Like the world size it may change on resume (the run says what changes), so it is not
    /// part of the training hash.
    #[serde(default = "default_accumulate", skip_serializing_if = "is_one")]
    pub accumulate: usize,
    /// How the learning rate follows the effective batch `B = batch × world × accumulate`
    /// relative to `batch`: `none` (default: `lr` as written), `linear` (`lr · B / batch`,
    /// Goyal et al. 2017) or `sqrt` (`lr · √(B / batch)`).
    #[serde(default, skip_serializing_if = "LrScaling::is_none")]
    pub lr_scaling: LrScaling,
}

/// How the learning rate follows the effective batch (`[train] lr_scaling`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LrScaling {
    /// The configured learning rate, whatever the effective batch.
    #[default]
    None,
    /// Proportional to the effective batch.
    Linear,
    /// Proportional to the square root of the effective batch.
    Sqrt,
}

impl LrScaling {
    fn is_none(&self) -> bool {
        *self == LrScaling::None
    }

    /// The factor applied to `[train] lr` when `micro_batches` micro-batches (ranks ×
    /// accumulation) make one optimiser step.
    pub fn factor(self, micro_batches: usize) -> f64 {
        let m = micro_batches.max(1) as f64;
        match self {
            LrScaling::None => 1.0,
            LrScaling::Linear => m,
            LrScaling::Sqrt => m.sqrt(),
        }
    }
}

fn default_accumulate() -> usize {
    1
}
fn is_one(n: &usize) -> bool {
    *n == 1
}

fn default_epochs() -> usize {
    300
}
fn default_batch() -> usize {
    1
}
fn default_lr() -> f64 {
    1e-4
}
fn default_wd() -> f64 {
    1e-5
}
fn default_betas() -> (f64, f64) {
    (0.9, 0.999)
}
fn default_d_betas() -> (f64, f64) {
    (0.9, 0.99)
}
fn default_power() -> f64 {
    0.9
}
fn default_ema() -> f64 {
    0.99
}
fn default_val_every() -> usize {
    10
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            epochs: default_epochs(),
            steps_per_epoch: None,
            batch: default_batch(),
            lr: default_lr(),
            weight_decay: default_wd(),
            betas: default_betas(),
            lr_power: default_power(),
            d_lr: default_lr(),
            d_betas: default_d_betas(),
            ema_decay: default_ema(),
            sampler: Sampler::Reference,
            val_every: default_val_every(),
            seed: 0,
            max_minutes: None,
            accumulate: default_accumulate(),
            lr_scaling: LrScaling::None,
        }
    }
}

/// Weights of the loss terms (MGSD-SPEC §3.4).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LossWeights {
    /// Supervised Dice of the full path.
    #[serde(default = "one")]
    pub full: f64,
    /// Supervised Dice of the missing path.
    #[serde(default = "one")]
    pub miss: f64,
    /// Image level (teacher MSE).
    #[serde(default = "ten")]
    pub image: f64,
    /// Modality level.
    #[serde(default = "w150")]
    pub modality: f64,
    /// Feature level.
    #[serde(default = "w50")]
    pub feature: f64,
    /// Adversarial term of the student (`bce(D(out_m), 0)`).
    #[serde(default = "one")]
    pub adversarial: f64,
    /// Warm-up of the distillation: over the first N optimiser steps the weights of the image,
    /// feature, modality and adversarial terms rise linearly from 0 (step 0: Dice terms only)
    /// to the values above, so the student learns to segment before it is asked to agree with
    /// an EMA teacher that is still untrained and before the feature term, 5× the Dice terms'
    /// pull at the first step (docs/FINDINGS.md §1), dominates. A function of the step alone,
    /// so resumed runs continue exactly. 0 (the default, the reference): no warm-up; not
    /// written into `config.toml`, so earlier runs' configuration hash is unchanged.
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub warmup_steps: u64,
}

fn is_zero_u64(x: &u64) -> bool {
    *x == 0
}

fn one() -> f64 {
    1.0
}
fn ten() -> f64 {
    10.0
}
fn w150() -> f64 {
    150.0
}
fn w50() -> f64 {
    50.0
}

impl Default for LossWeights {
    fn default() -> Self {
        LossWeights {
            full: 1.0,
            miss: 1.0,
            image: 10.0,
            modality: 150.0,
            feature: 50.0,
            adversarial: 1.0,
            warmup_steps: 0,
        }
    }
}

/// Where and how to run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// Run directory (created; a timestamped sub-folder is NOT added).
    #[serde(default = "default_run_dir")]
    pub dir: PathBuf,
    /// `cpu`, `cuda` or `cuda:N`.
    #[serde(default = "default_device")]
    pub device: String,
    /// Arithmetic of the convolutions on CUDA: `f32` (TF32 tensor cores, PyTorch's default) or
    /// `bf16` mixed precision (PyTorch's bf16 autocast for convolutions). The CPU computes in
    /// f32 only. At MGSD's width 16 bf16 is slower than f32 on an H200 (docs/BENCHMARKS.md).
    #[serde(default, with = "precision_name")]
    pub precision: ConvPrecision,
    /// Background data-loading threads.
    #[serde(default = "default_workers")]
    pub workers: usize,
    /// Bounded queue length between loaders and the trainer.
    #[serde(default = "default_queue")]
    pub queue: usize,
    /// In a data-parallel run, compare a checksum of every rank's parameters (student,
    /// teacher, discriminator) every this many steps and stop with an error if they differ;
    /// 0 = never. Single-process runs never check.
    #[serde(default = "default_checksum_every")]
    pub checksum_every: u64,
}

fn default_run_dir() -> PathBuf {
    PathBuf::from("runs/mgsd")
}
fn default_device() -> String {
    "cpu".to_string()
}
fn default_workers() -> usize {
    2
}
fn default_queue() -> usize {
    4
}
fn default_checksum_every() -> u64 {
    100
}

impl Default for RunConfig {
    fn default() -> Self {
        RunConfig {
            dir: default_run_dir(),
            device: default_device(),
            precision: ConvPrecision::default(),
            workers: default_workers(),
            queue: default_queue(),
            checksum_every: default_checksum_every(),
        }
    }
}

impl Config {
    /// Parses a TOML text; `origin` names it in errors.
    ///
    /// # Errors
    /// Syntax errors, unknown keys, wrong types (with line and key) and invalid values.
    pub fn from_toml(text: &str, origin: &str) -> Result<Self> {
        let cfg: Config = toml::from_str(text).map_err(|e| anyhow::anyhow!("{origin}: {e}"))?;
        cfg.validate().with_context(|| format!("{origin}: invalid configuration"))?;
        Ok(cfg)
    }

    /// Reads and parses a TOML file; relative data paths are resolved against the current
    /// directory (as typed on the command line), not the file's folder.
    ///
    /// # Errors
    /// See [`Config::from_toml`]; an unreadable file is named.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config {}", path.display()))?;
        Self::from_toml(&text, &path.display().to_string())
    }

    /// The embedded default (`configs/demo.toml`).
    ///
    /// # Errors
    /// Never for the shipped file (a test checks it).
    pub fn demo() -> Result<Self> {
        Self::from_toml(DEMO_TOML, "embedded configs/demo.toml")
    }

    /// Checks values that the types cannot.
    ///
    /// # Errors
    /// The first invalid value, naming its key.
    pub fn validate(&self) -> Result<()> {
        let d = &self.data;
        let sources = [d.manifest.is_some(), d.root.is_some(), d.synthetic.is_some()]
            .iter()
            .filter(|&&b| b)
            .count();
        if sources != 1 {
            bail!(
                "[data] needs exactly one of `manifest`, `root` or `synthetic` (found {sources})"
            );
        }
        if !(0.0..1.0).contains(&d.val_fraction) {
            bail!("[data] val_fraction = {} must lie in [0, 1)", d.val_fraction);
        }
        if !(0.0..1.0).contains(&d.test_fraction) || d.val_fraction + d.test_fraction >= 1.0 {
            bail!(
                "[data] test_fraction = {} must lie in [0, 1) and leave training cases (val_fraction + test_fraction < 1)",
                d.test_fraction
            );
        }
        if let Some(s) = &d.synthetic {
            if s.train_cases == 0 || s.test_cases == 0 {
                bail!("[data.synthetic] needs train_cases > 0 and test_cases > 0");
            }
            if s.shape.iter().any(|&n| n < 16) {
                bail!("[data.synthetic] shape {:?}: every side must be at least 16", s.shape);
            }
            if let Some(p) = s.patchy_enhancement {
                if !(p.is_finite() && (0.0..=4.0).contains(&p)) {
                    bail!("[data.synthetic] patchy_enhancement = {p} must lie in [0, 4]");
                }
            }
        }
        let p = &self.protocol;
        if p.patch.iter().any(|&n| n == 0 || !n.is_multiple_of(8)) {
            bail!("[protocol] patch {:?}: every side must be a positive multiple of 8 (the U-Net downsamples 3 times)", p.patch);
        }
        if !(0.0..=1.0).contains(&p.foreground_fraction) {
            bail!("[protocol] foreground_fraction = {} must lie in [0, 1]", p.foreground_fraction);
        }
        if !(0.0..1.0).contains(&p.overlap) {
            bail!("[protocol] overlap = {} must lie in [0, 1)", p.overlap);
        }
        let m = &self.model;
        if m.channels == 0 || !m.channels.is_multiple_of(8) {
            bail!(
                "[model] channels = {}: must be a positive multiple of 8 (GroupNorm uses 8 groups)",
                m.channels
            );
        }
        if !(0.0..1.0).contains(&m.dropout) {
            bail!("[model] dropout = {} must lie in [0, 1)", m.dropout);
        }
        let t = &self.train;
        if t.epochs == 0 {
            bail!("[train] epochs must be at least 1");
        }
        if t.accumulate == 0 {
            bail!("[train] accumulate must be at least 1");
        }
        if t.batch == 0 {
            bail!("[train] batch must be at least 1");
        }
        if t.steps_per_epoch == Some(0) {
            bail!("[train] steps_per_epoch must be at least 1");
        }
        for (k, v) in [("lr", t.lr), ("d_lr", t.d_lr)] {
            if !(v.is_finite() && v > 0.0) {
                bail!("[train] {k} = {v} must be a positive number");
            }
        }
        if !(t.weight_decay.is_finite() && t.weight_decay >= 0.0) {
            bail!("[train] weight_decay = {} must be ≥ 0", t.weight_decay);
        }
        for (k, (b1, b2)) in [("betas", t.betas), ("d_betas", t.d_betas)] {
            if !((0.0..1.0).contains(&b1) && (0.0..1.0).contains(&b2)) {
                bail!("[train] {k} = ({b1}, {b2}): both must lie in [0, 1)");
            }
        }
        if !(0.0..1.0).contains(&t.ema_decay) {
            bail!("[train] ema_decay = {} must lie in [0, 1)", t.ema_decay);
        }
        let l = &self.loss;
        for (k, v) in [
            ("full", l.full),
            ("miss", l.miss),
            ("image", l.image),
            ("modality", l.modality),
            ("feature", l.feature),
            ("adversarial", l.adversarial),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                bail!("[loss] {k} = {v} must be a finite number ≥ 0");
            }
        }
        parse_device(&self.run.device).context("[run] device")?;
        if self.run.workers == 0 || self.run.queue == 0 {
            bail!("[run] workers and queue must be at least 1");
        }
        Ok(())
    }

    /// The resolved configuration as TOML (what the run directory stores).
    ///
    /// # Errors
    /// Never in practice (every field serialises).
    pub fn to_toml(&self) -> Result<String> {
        toml::to_string_pretty(self).context("serialising the configuration")
    }

    /// A stable hash (FNV-1a 64, hex) of everything that changes the training trajectory — the
    /// configuration minus `run` (directory, device, workers) and `train.max_minutes`. A resume
    /// refuses a checkpoint whose hash differs.
    ///
    /// # Errors
    /// Never in practice.
    pub fn training_hash(&self) -> Result<String> {
        let mut c = self.clone();
        c.run = RunConfig::default();
        c.train.max_minutes = None;
        // Like the world size, the accumulation may change on resume (checkpoint metadata).
        c.train.accumulate = 1;
        c.data.cache = None;
        // How held-out cases are inferred does not change training.
        c.protocol.blend = Blend::default();
        c.protocol.tta = false;
        let text = c.to_toml()?;
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in text.bytes() {
            h ^= b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        Ok(format!("{h:016x}"))
    }
}

/// A device name: `cpu`, `cuda`, `cuda:N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSpec {
    /// The CPU.
    Cpu,
    /// CUDA device `N`.
    Cuda(usize),
}

/// Parses `cpu`, `cuda`, `cuda:N`.
///
/// # Errors
/// Anything else.
pub fn parse_device(s: &str) -> Result<DeviceSpec> {
    match s {
        "cpu" => Ok(DeviceSpec::Cpu),
        "cuda" | "gpu" => Ok(DeviceSpec::Cuda(0)),
        other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(n)) => Ok(DeviceSpec::Cuda(n)),
            _ => bail!("unknown device '{other}' (expected cpu, cuda or cuda:N)"),
        },
    }
}

/// `ConvPrecision` in TOML as its name (`"f32"`, `"bf16"`).
mod precision_name {
    use mgsd_nn::ConvPrecision;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(p: &ConvPrecision, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&p.to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<ConvPrecision, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// Sets the convolutions' arithmetic for `device`: bf16 needs a CUDA device. On CUDA it also
/// sets how cuDNN's algorithms are chosen: `MGSD_CUDNN_BENCHMARK=1` measures them on the first
/// step (PyTorch's `torch.backends.cudnn.benchmark`), `=0` takes cuDNN's heuristics; unset,
/// bf16 measures (on an H200 the heuristics' 3-D bf16 choices made the MGSD step 0.62–0.95 s,
/// measured ones 0.39 s) and f32 takes the heuristics (PyTorch's default; 0.37–0.39 s).
///
/// # Errors
/// A bf16 precision on the CPU, or an `MGSD_CUDNN_BENCHMARK` other than 0 or 1.
pub fn set_precision(precision: ConvPrecision, device: &candle_core::Device) -> Result<()> {
    if precision.is_bf16() && !device.is_cuda() {
        bail!(
            "precision {precision} needs a CUDA device (--device cuda); the CPU computes in f32 \
             (set `precision = \"f32\"` in [run] or leave out --precision)"
        )
    }
    let benchmark = match std::env::var("MGSD_CUDNN_BENCHMARK").as_deref() {
        Err(_) => precision.is_bf16(),
        Ok("1") => true,
        Ok("0") => false,
        Ok(other) => bail!("MGSD_CUDNN_BENCHMARK={other:?}: expected 0 or 1"),
    };
    mgsd_nn::set_conv_precision(precision);
    #[cfg(feature = "cuda")]
    if device.is_cuda() {
        mgsd_nn::conv3d::set_cudnn_benchmark(benchmark);
    }
    if device.is_cuda() {
        tracing::info!(
            %precision,
            cudnn_benchmark = benchmark,
            "convolution arithmetic (MGSD_CUDNN_BENCHMARK=0/1 to choose cuDNN's algorithms by \
             heuristics/measurement)"
        );
    }
    Ok(())
}

/// The facts of the CPU device, for the start-up log: which convolution kernels run and why,
/// how many threads and why, e.g. `CPU device: AVX-512 convolution kernels (auto-detected: the
/// CPU has AVX-512F), 2 threads (one per core)`.
pub fn cpu_startup_line() -> String {
    let threads = rayon::current_num_threads();
    let why_threads = match std::env::var("RAYON_NUM_THREADS") {
        Ok(v) if !v.is_empty() => format!("RAYON_NUM_THREADS={v}"),
        _ => "one per core".to_string(),
    };
    format!(
        "CPU device: {} convolution kernels ({}), {threads} threads ({why_threads})",
        mgsd_nn::cpu_kernels(),
        mgsd_nn::cpu_kernels_reason()
    )
}

/// Opens a device. CUDA needs the `cuda` feature; without it the error says how to get it.
///
/// # Errors
/// CUDA requested in a CPU-only build, or the device cannot be opened.
pub fn open_device(spec: DeviceSpec) -> Result<candle_core::Device> {
    match spec {
        DeviceSpec::Cpu => {
            tracing::info!("{}", cpu_startup_line());
            Ok(candle_core::Device::Cpu)
        }
        #[cfg(feature = "cuda")]
        DeviceSpec::Cuda(n) => {
            let dev = candle_core::Device::new_cuda(n)
                .with_context(|| format!("opening CUDA device {n}"))?;
            // PyTorch's default is TF32 in cuDNN convolutions; MGSD_CUDNN_TF32=0 asks for full f32.
            let tf32 = std::env::var("MGSD_CUDNN_TF32").as_deref() != Ok("0");
            mgsd_nn::conv3d::set_cudnn_tf32(tf32);
            tracing::info!(
                ordinal = n,
                cudnn_tf32 = tf32,
                "CUDA device (env MGSD_CUDNN_TF32=0 for full-f32 convolutions)"
            );
            Ok(dev)
        }
        #[cfg(not(feature = "cuda"))]
        DeviceSpec::Cuda(n) => bail!(
            "device cuda:{n} requested, but this mgsd-train was built without CUDA; rebuild with `cargo build --release -p mgsd-train --features cuda`"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_parse() {
        Config::demo().unwrap();
        for name in ["mgsd-brats2018.toml", "rfnet-brats2018.toml", "demo.toml"] {
            let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs").join(name);
            let c = Config::load(&path).unwrap_or_else(|e| panic!("{name}: {e:#}"));
            assert_eq!(Config::from_toml(&c.to_toml().unwrap(), "round trip").unwrap(), c);
        }
    }

    #[test]
    fn unknown_key_names_file_and_key() {
        let err =
            Config::from_toml("[data]\nroot = \"x\"\n[train]\nepoch = 3\n", "my.toml").unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("my.toml") && msg.contains("epoch"), "{msg}");
        let err = Config::from_toml(
            "[data]\nroot = \"x\"\n[protocol]\npatch = [100, 96, 96]\n",
            "p.toml",
        )
        .unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("p.toml") && msg.contains("patch"), "{msg}");
        let err = Config::from_toml("[data]\n", "e.toml").unwrap_err();
        assert!(format!("{err:#}").contains("exactly one"));
        let err =
            Config::from_toml("[data]\nroot = \"x\"\n[train]\nsampler = \"bogus\"\n", "s.toml")
                .unwrap_err();
        assert!(format!("{err:#}").contains("bogus"));
    }

    #[test]
    fn precision_parses_round_trips_and_needs_cuda_for_bf16() {
        let c = Config::from_toml("[data]\nroot = \"x\"\n[run]\nprecision = \"bf16\"\n", "b.toml")
            .unwrap();
        assert_eq!(c.run.precision, ConvPrecision::Bf16);
        assert_eq!(Config::from_toml(&c.to_toml().unwrap(), "round trip").unwrap(), c);
        let d = Config::from_toml("[data]\nroot = \"x\"\n", "d.toml").unwrap();
        assert_eq!(d.run.precision, ConvPrecision::F32);
        let err = Config::from_toml("[data]\nroot = \"x\"\n[run]\nprecision = \"fp8\"\n", "p.toml")
            .unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("p.toml") && msg.contains("fp8") && msg.contains("bf16"), "{msg}");
        let err = set_precision(ConvPrecision::Bf16, &candle_core::Device::Cpu).unwrap_err();
        assert!(format!("{err:#}").contains("needs a CUDA device"), "{err:#}");
        set_precision(ConvPrecision::F32, &candle_core::Device::Cpu).unwrap();
    }

    #[test]
    fn accumulation_and_lr_scaling() {
        let base = Config::from_toml("[data]\nroot = \"x\"\n", "a").unwrap();
        assert_eq!((base.train.accumulate, base.train.lr_scaling), (1, LrScaling::None));
        // Defaults are not written, so configurations from before these options keep their hash.
        let toml = base.to_toml().unwrap();
        assert!(!toml.contains("accumulate") && !toml.contains("lr_scaling"), "{toml}");
        let c = Config::from_toml(
            "[data]\nroot = \"x\"\n[train]\naccumulate = 4\nlr_scaling = \"sqrt\"\n",
            "b",
        )
        .unwrap();
        assert_eq!(c.train.lr_scaling.factor(4), 2.0);
        assert_eq!(LrScaling::Linear.factor(8), 8.0);
        assert_eq!(LrScaling::None.factor(8), 1.0);
        // The accumulation may change on resume; the learning-rate rule may not.
        let mut same = c.clone();
        same.train.accumulate = 1;
        assert_eq!(same.training_hash().unwrap(), c.training_hash().unwrap());
        same.train.lr_scaling = LrScaling::Linear;
        assert_ne!(same.training_hash().unwrap(), c.training_hash().unwrap());
        let bad = Config::from_toml("[data]\nroot = \"x\"\n[train]\naccumulate = 0\n", "c");
        assert!(format!("{:#}", bad.unwrap_err()).contains("accumulate"));
    }

    #[test]
    fn sampler_round_trips() {
        let c = Config::from_toml(
            "[data]\nroot = \"x\"\n[train]\nsampler = \"fixed:flair+t1ce\"\n",
            "s",
        )
        .unwrap();
        assert_eq!(c.train.sampler.to_string_for_test(), "fixed:FLAIR+T1ce");
    }

    impl Sampler {
        fn to_string_for_test(self) -> String {
            serde_json::to_value(self).unwrap().as_str().unwrap().to_string()
        }
    }

    #[test]
    fn hash_ignores_run_section() {
        let mut a = Config::demo().unwrap();
        let h = a.training_hash().unwrap();
        a.run.dir = "elsewhere".into();
        a.run.workers = 7;
        assert_eq!(a.training_hash().unwrap(), h);
        a.train.lr *= 2.0;
        assert_ne!(a.training_hash().unwrap(), h);
    }

    #[test]
    fn new_options_change_the_hash_only_when_set() {
        let base = Config::demo().unwrap();
        let mut a = base.clone();
        a.protocol.foreground_fraction = 0.0;
        if let Some(s) = a.data.synthetic.as_mut() {
            s.patchy_enhancement = None;
        }
        let text = a.to_toml().unwrap();
        assert!(!text.contains("foreground_fraction") && !text.contains("patchy_enhancement"));
        let h = a.training_hash().unwrap();
        let mut b = a.clone();
        b.protocol.foreground_fraction = 0.33;
        assert_ne!(b.training_hash().unwrap(), h);
        let mut c = a.clone();
        if let Some(s) = c.data.synthetic.as_mut() {
            s.patchy_enhancement = Some(1.0);
        }
        assert_ne!(c.training_hash().unwrap(), h);
        for bad in ["foreground_fraction = 1.5", "foreground_fraction = -0.1"] {
            let t = text.replace("[protocol]\n", &format!("[protocol]\n{bad}\n"));
            assert!(Config::from_toml(&t, "test").is_err(), "{bad}");
        }
        let t = text.replace("[data.synthetic]\n", "[data.synthetic]\npatchy_enhancement = 9.0\n");
        assert!(Config::from_toml(&t, "test").is_err());
    }

    #[test]
    fn devices() {
        assert_eq!(parse_device("cuda:1").unwrap(), DeviceSpec::Cuda(1));
        assert!(parse_device("tpu").is_err());
        #[cfg(not(feature = "cuda"))]
        assert!(open_device(DeviceSpec::Cuda(0))
            .unwrap_err()
            .to_string()
            .contains("--features cuda"));
    }
}
