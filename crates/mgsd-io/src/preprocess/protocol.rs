//! The two literature protocols as one-call pipelines: [`Pipeline::eval`] and
//! [`Pipeline::train`] turn a loaded case into a normalised, cropped, possibly augmented
//! [`Sample`] whose [`CropRecord`] maps predictions back to the original grid.
//!
//! | | [`Protocol::Acn`] (ACN, SMU-Net, MGSD) | [`Protocol::Rfnet`] (RFNet, mmFormer) |
//! |---|---|---|
//! | normalisation | per-volume min-max to `[0, 1]` | z-score inside the brain mask, 0 outside |
//! | first crop | none | brain bounding box (optionally with a margin) |
//! | evaluation window | centre crop/pad to the patch (160 × 192 × 128) | pad to at least the patch, for sliding windows (80³ or 128³) |
//! | training | random crop + flips (p = 0.5 per axis) | random crop + flips + intensity scale/shift |
//!
//! The patch is always a parameter. Statistics are measured on the whole volume (as the
//! references do before cropping), then normalisation and cropping happen in one pass per
//! channel, in parallel, straight from the case's volumes into the output buffer.
//!
//! Random parameters are drawn ([`Pipeline::draw`]) separately from their application
//! ([`Pipeline::apply`]): the same RNG state gives the same [`Augmentation`].
//!
//! Training windows are uniform over the grid, or, with [`Pipeline::foreground_fraction`],
//! that fraction of them is centred on a tumour voxel (nnU-Net's foreground oversampling).

use super::channels::{voxels, Channels};
use super::crop::CropRecord;
use super::flip::Flips;
use super::intensity::{IntensityAugment, IntensityParams};
use super::mask::{nonzero_mask, BoundingBox};
use super::normalize::{params, z_score_params_in_box, NormParams, Normalization};
use super::patch::{centre_crop, foreground_crop, pad_to_patch, random_crop};
use crate::buffer::zeroed;
use crate::case::Case;
use crate::error::{Error, Result};
use crate::modality::{Modality, ACN_CHANNEL_ORDER};
use rand::{Rng, RngExt};
use rayon::prelude::*;

/// A borrowed view of a case as model channels: the voxels of each channel (`None` for an
/// absent modality, fed as zeros), the grid shape and the canonical labels if any.
#[derive(Debug, Clone)]
pub struct CaseView<'a> {
    /// One entry per model channel; each slice holds `nx * ny * nz` voxels (volume layout).
    pub images: Vec<Option<&'a [f32]>>,
    /// `[nx, ny, nz]`.
    pub shape: [usize; 3],
    /// Canonical labels on the same grid.
    pub labels: Option<&'a [u8]>,
}

impl<'a> CaseView<'a> {
    /// Checks lengths and builds the view.
    ///
    /// # Errors
    /// If no channel is present or a length does not match `shape`.
    pub fn new(
        images: Vec<Option<&'a [f32]>>,
        shape: [usize; 3],
        labels: Option<&'a [u8]>,
    ) -> Result<Self> {
        let n = voxels(shape);
        if n == 0 || images.iter().all(Option::is_none) {
            return Err(Error::InvalidArgument(format!(
                "a case view needs at least one image on a non-empty grid (got {} channels over {shape:?})",
                images.len()
            )));
        }
        for len in images.iter().flatten().map(|s| s.len()).chain(labels.map(<[u8]>::len)) {
            if len != n {
                return Err(Error::Shape {
                    context: "CaseView::new".into(),
                    expected: shape.to_vec(),
                    actual: vec![len],
                });
            }
        }
        Ok(CaseView { images, shape, labels })
    }

    /// The channels of `case` in `order` (e.g. [`ACN_CHANNEL_ORDER`]); modalities the case
    /// lacks become `None`.
    ///
    /// # Errors
    /// If the case has no image or its volumes and labels disagree in size.
    pub fn from_case(case: &'a Case, order: &[Modality]) -> Result<Self> {
        let Some(grid) = case.grid() else {
            return Err(Error::case(&case.id, "has no image to preprocess"));
        };
        let images = order.iter().map(|m| case.images.get(m).map(|v| v.data.as_slice())).collect();
        CaseView::new(images, grid.shape, case.label.as_deref())
            .map_err(|e| Error::case(&case.id, e.to_string()))
    }

    /// The view of a [`Channels`] (every channel present).
    ///
    /// # Errors
    /// If `labels` has another length than a channel.
    pub fn from_channels(x: &'a Channels, labels: Option<&'a [u8]>) -> Result<Self> {
        let n = x.voxels();
        CaseView::new(x.data.chunks_exact(n).map(Some).collect(), x.shape, labels)
    }
}

/// The protocol families of the literature (module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Protocol {
    /// ACN / SMU-Net / MGSD: min-max, centre crop for evaluation, random crop + flips.
    Acn,
    /// RFNet / mmFormer: z-score in the brain mask, crop to its bounding box, patches.
    Rfnet,
}

/// How the evaluation window is chosen from the (possibly brain-cropped) grid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EvalWindow {
    /// Centre crop/pad to exactly the patch.
    CentreCrop,
    /// Keep everything, pad axes smaller than the patch (for sliding-window inference).
    PadToPatch,
}

/// A complete preprocessing recipe. Build it with [`Pipeline::new`] and adjust fields.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Pipeline {
    /// Model channel order; channel `i` holds `order[i]`.
    pub order: Vec<Modality>,
    /// Intensity normalisation.
    pub normalization: Normalization,
    /// Crop to the brain bounding box first, grown by this margin (voxels per axis).
    pub crop_to_brain: Option<[usize; 3]>,
    /// Patch size `[x, y, z]`.
    pub patch: [usize; 3],
    /// Evaluation window.
    pub eval_window: EvalWindow,
    /// Per-axis flip probability in training (0 disables flips).
    pub flip_probability: f64,
    /// Intensity augmentation in training, applied to non-zero voxels only (so background and
    /// absent modalities stay exactly 0; RFNet applies it everywhere).
    pub intensity: Option<IntensityAugment>,
    /// Probability that a training window is centred on a tumour voxel (a class drawn
    /// uniformly among the labels the case has, then a voxel of it: [`foreground_crop`]),
    /// as nnU-Net oversamples foreground (0.33 there); otherwise the window is uniform over
    /// the grid. 0 (the default, both protocols' own recipe) draws exactly what it drew
    /// before this option existed.
    #[serde(default)]
    pub foreground_fraction: f64,
}

impl Pipeline {
    /// The recipe of `protocol` with the given patch (ACN: 160 × 192 × 128; RFNet: 80³ or
    /// 128³), channels in [`ACN_CHANNEL_ORDER`].
    pub fn new(protocol: Protocol, patch: [usize; 3]) -> Self {
        match protocol {
            Protocol::Acn => Pipeline {
                order: ACN_CHANNEL_ORDER.to_vec(),
                normalization: Normalization::MinMax,
                crop_to_brain: None,
                patch,
                eval_window: EvalWindow::CentreCrop,
                flip_probability: 0.5,
                intensity: None,
                foreground_fraction: 0.0,
            },
            Protocol::Rfnet => Pipeline {
                order: ACN_CHANNEL_ORDER.to_vec(),
                normalization: Normalization::ZScoreInMask,
                crop_to_brain: Some([0; 3]),
                patch,
                eval_window: EvalWindow::PadToPatch,
                flip_probability: 0.5,
                intensity: Some(IntensityAugment::default()),
                foreground_fraction: 0.0,
            },
        }
    }

    /// The data-dependent part, deterministic: normalisation statistics per channel and the
    /// brain crop (identity without [`Pipeline::crop_to_brain`]).
    ///
    /// # Errors
    /// If the case has fewer channels than the order, or a brain crop is asked for a case
    /// with no non-zero voxel.
    pub fn analyse(&self, case: &CaseView<'_>) -> Result<Analysis> {
        if case.images.len() != self.order.len() {
            return Err(Error::Shape {
                context: "Pipeline::analyse (channels)".into(),
                expected: vec![self.order.len()],
                actual: vec![case.images.len()],
            });
        }
        let needs_mask =
            self.crop_to_brain.is_some() || self.normalization == Normalization::ZScoreInMask;
        let mask = if needs_mask {
            let present: Vec<&[f32]> = case.images.iter().flatten().copied().collect();
            Some(nonzero_mask(&present, case.shape)?)
        } else {
            None
        };
        let bbox = match &mask {
            Some(m) => BoundingBox::of_mask(m, case.shape)?,
            None => None,
        };
        let norm = case
            .images
            .par_iter()
            .map(|img| match (img, self.normalization, &mask, &bbox) {
                (None, ..) => Ok(NormParams::IDENTITY),
                // Mask-restricted statistics only need the rows of the brain's box.
                (Some(x), Normalization::ZScoreInMask, Some(m), Some(bb)) => {
                    z_score_params_in_box(x, m, case.shape, bb)
                }
                (Some(x), norm, m, _) => params(norm, x, m.as_deref()),
            })
            .collect::<Result<Vec<_>>>()?;
        let base = match (self.crop_to_brain, bbox) {
            (Some(margin), Some(bb)) => bb.with_margin(margin, case.shape).record(case.shape)?,
            (Some(_), None) => {
                return Err(Error::InvalidArgument(
                    "the case has no non-zero voxel to crop to".into(),
                ))
            }
            (None, _) => CropRecord::identity(case.shape)?,
        };
        let foreground = match case.labels {
            Some(labels) if self.foreground_fraction > 0.0 => {
                foreground_voxels(labels, case.shape, &base)
            }
            _ => Vec::new(),
        };
        Ok(Analysis { norm, mask, base, foreground })
    }

    /// Evaluation preprocessing: normalise, brain crop (if any), evaluation window.
    ///
    /// # Errors
    /// As [`Pipeline::analyse`], or a zero patch.
    pub fn eval(&self, case: &CaseView<'_>) -> Result<Sample> {
        let analysis = self.analyse(case)?;
        let window = match self.eval_window {
            EvalWindow::CentreCrop => centre_crop(analysis.base.shape(), self.patch)?,
            EvalWindow::PadToPatch => pad_to_patch(analysis.base.shape(), self.patch)?,
        };
        let aug = Augmentation { crop: window, flips: Flips::NONE, intensity: None };
        self.apply(case, &analysis, &aug)
    }

    /// Draws a training augmentation for an analysed case, in a fixed order: the patch
    /// window (with a foreground fraction, first whether it is centred on tumour), the three
    /// flips, then the intensity parameters.
    ///
    /// # Errors
    /// A zero patch, or invalid flip probability, foreground fraction or intensity ranges.
    pub fn draw<R: Rng + ?Sized>(&self, rng: &mut R, analysis: &Analysis) -> Result<Augmentation> {
        let f = self.foreground_fraction;
        if !(0.0..=1.0).contains(&f) {
            return Err(Error::InvalidArgument(format!(
                "foreground fraction {f} must lie in [0, 1]"
            )));
        }
        // Without oversampling no extra number is drawn, so the windows are those of before.
        let centred = f > 0.0 && rng.random::<f64>() < f;
        let crop = if centred {
            foreground_crop(rng, analysis.base.shape(), self.patch, &analysis.foreground)?
        } else {
            random_crop(rng, analysis.base.shape(), self.patch)?
        };
        let flips = if self.flip_probability > 0.0 {
            Flips::draw(rng, self.flip_probability)?
        } else {
            Flips::NONE
        };
        let intensity = match &self.intensity {
            Some(aug) => Some(aug.draw(rng, self.order.len())?),
            None => None,
        };
        Ok(Augmentation { crop, flips, intensity })
    }

    /// Applies an analysis and an augmentation: one fused normalise-and-crop pass per channel,
    /// then flips and intensity changes on the patch. Deterministic.
    ///
    /// # Errors
    /// If `aug.crop` does not start from the analysed grid, or shapes disagree.
    pub fn apply(
        &self,
        case: &CaseView<'_>,
        analysis: &Analysis,
        aug: &Augmentation,
    ) -> Result<Sample> {
        if analysis.norm.len() != case.images.len() || analysis.base.original_shape() != case.shape
        {
            return Err(Error::InvalidArgument("the analysis does not belong to this case".into()));
        }
        let record = analysis.base.then(&aug.crop)?;
        let channels = case.images.len();
        let shape = record.shape();
        let mut data = zeroed::<f32>(channels * voxels(shape));
        let mask = analysis.mask.as_deref();
        record.for_each_run(&mut data, |c, s, run| {
            let Some(src) = case.images[c] else { return };
            let n = run.len();
            analysis.norm[c].map_into(&src[s..s + n], run, mask.map(|m| &m[s..s + n]));
        });
        let mut image = Channels { data, channels, shape };
        let mut labels = match case.labels {
            Some(l) => Some(record.crop(l, 1)?),
            None => None,
        };
        aug.flips.apply_channels(&mut image)?;
        if let Some(l) = labels.as_mut() {
            aug.flips.apply(l, 1, shape)?;
        }
        if let Some(p) = &aug.intensity {
            p.apply(&mut image, true)?;
        }
        Ok(Sample { image, labels, record, flips: aug.flips })
    }

    /// Training preprocessing: [`Pipeline::analyse`], [`Pipeline::draw`], [`Pipeline::apply`].
    ///
    /// # Errors
    /// As those three.
    pub fn train<R: Rng + ?Sized>(&self, case: &CaseView<'_>, rng: &mut R) -> Result<Sample> {
        let analysis = self.analyse(case)?;
        let aug = self.draw(rng, &analysis)?;
        self.apply(case, &analysis, &aug)
    }
}

/// The deterministic, data-dependent part of a pipeline run.
#[derive(Debug, Clone, PartialEq)]
pub struct Analysis {
    /// Normalisation parameters per channel (identity for absent channels).
    pub norm: Vec<NormParams>,
    /// The brain mask on the original grid, when the recipe needs it.
    pub mask: Option<Vec<bool>>,
    /// Original grid → brain crop (identity without a brain crop).
    pub base: CropRecord,
    /// Tumour voxels `[x, y, z]` on the brain crop's grid, one list per label (1, 2, 4, then
    /// any other non-zero label), for foreground-centred windows; empty when the recipe does
    /// not oversample foreground or the case has no labels.
    pub foreground: Vec<Vec<[usize; 3]>>,
}

/// The non-zero voxels of `labels` (on a grid of `shape`) that `base` keeps, on `base`'s output
/// grid, one list per label value in increasing order.
fn foreground_voxels(labels: &[u8], shape: [usize; 3], base: &CropRecord) -> Vec<Vec<[usize; 3]>> {
    let mut by_label: std::collections::BTreeMap<u8, Vec<[usize; 3]>> = Default::default();
    let [_, ny, nz] = shape;
    let (lo, hi) = base.valid_box();
    let offset = base.offset();
    for (v, &l) in labels.iter().enumerate().filter(|(_, &l)| l != 0) {
        let idx = [v / (ny * nz), (v / nz) % ny, v % nz];
        if (0..3).all(|a| lo[a] <= idx[a] && idx[a] < hi[a]) {
            let local = [0, 1, 2].map(|a| (idx[a] as isize - offset[a]) as usize);
            by_label.entry(l).or_default().push(local);
        }
    }
    by_label.into_values().collect()
}

/// The random part of a training run (or the fixed window of an evaluation run).
#[derive(Debug, Clone, PartialEq)]
pub struct Augmentation {
    /// Window on the [`Analysis::base`] output grid.
    pub crop: CropRecord,
    /// Mirrors applied to the patch.
    pub flips: Flips,
    /// Intensity change applied to the patch.
    pub intensity: Option<IntensityParams>,
}

/// A preprocessed case: model input, labels on the same grid, and how to go back.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// `(C, x, y, z)` model input.
    pub image: Channels,
    /// Canonical labels on the patch grid, if the case had labels.
    pub labels: Option<Vec<u8>>,
    /// Original grid → patch grid. Undo [`Sample::flips`] first, then
    /// [`CropRecord::uncrop`] a prediction to write it in the original space.
    pub record: CropRecord,
    /// Flips applied after cropping ([`Flips::NONE`] for evaluation).
    pub flips: Flips,
}
