//! `mgsd-train`: the MGSD workflow — train, evaluate the 15-subset table, segment new patients.
//!
//! The binary (`src/main.rs`) is a thin CLI over these modules:
//! * [`config`] — the TOML configuration and the presets in `configs/`.
//! * [`data`] — data sources, splits, the case cache and the background loader.
//! * [`model`] — building the MGSD objective, naming its variables, loading a segmenter.
//! * [`optim`] — PyTorch-compatible Adam (L2 weight decay) with saveable state; poly schedule.
//! * [`checkpoint`] — atomic safetensors checkpoints with reference names and training state.
//! * [`train`] — the training loop, run directory, exact resume, fault handling.
//! * [`distributed`] — data parallelism: the collective trait, NCCL, rendezvous, sharding.
//! * [`launch`] — `mgsd-train launch`: the ranks of one node, like torchrun.
//! * [`infer`] — whole-image and sliding-window inference (Gaussian blending, mirror TTA).
//! * [`protocol`] — the inference protocol of `eval`/`predict`/validation: checkpoint + flags.
//! * [`metrics`] — the `mgsd-metrics` crate (Dice/HD95 with the BraTS 2018–2021 conventions,
//!   the official BraTS 2023+ lesion-wise metrics, statistics), re-exported.
//! * [`eval`] — the 15 × 3 Dice/HD95 table (Markdown, CSV, JSON, per case).
//! * [`predict`] — segmenting a patient with any subset of modalities into its original space.
//! * [`plot`] — training curves as PNG (and the canvas the preview draws on).
//! * [`score`] — the official BraTS 2023+ and legacy metrics of any folder of predictions.
//! * [`compare`] — paired statistics between two evaluations.
//! * [`heatmap`] — the 15 × 3 table as a heatmap PNG.
//! * [`eval_tables`] — the Dice heatmap and the official metrics per subset of an evaluation.
//! * [`scans`] — real scans before the network: modalities present, NaN voxels, grids.
//! * [`outputs`] — outputs checked before any work, written under temporary names.
//! * [`batch`] — `predict` over a folder of patients, with `summary.csv`.
//! * [`preview`] — the segmentation preview at physical aspect, with a legend.
//! * [`logging`] — the binary's log set-up (colour on terminals only, `--quiet`).
//! * [`demo_summary`] — the embedded demo's three checks of its table, one line each.
#![warn(missing_docs)]

pub mod batch;
pub mod checkpoint;
pub mod compare;
pub mod config;
pub mod data;
pub mod demo_summary;
pub mod distributed;
pub mod eval;
pub mod eval_tables;
pub mod heatmap;
pub mod infer;
pub mod launch;
pub mod logging;
pub mod model;
pub mod optim;
pub mod outputs;
pub mod plot;
pub mod predict;
pub mod preview;
pub mod protocol;
pub mod scans;
pub mod score;
pub mod train;

pub use mgsd_metrics as metrics;
