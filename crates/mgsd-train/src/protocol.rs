//! The inference protocol of `eval`, `predict` and validation: which preprocessing, which
//! window, how windows are blended, whether to mirror — resolved from a checkpoint's stored
//! configuration and the command line, and stated in every result.
//!
//! | window | preprocessing | network |
//! |---|---|---|
//! | `centre` | the protocol's normalisation, then a centre crop/pad to exactly the patch | one pass |
//! | `sliding` | the protocol's normalisation, crop to the non-zero (brain) bounding box, pad axes smaller than the patch | overlapping windows ([`crate::infer`]) |
//!
//! The centre window is the ACN literature's evaluation (ACN, SMU-Net, MGSD: 160 × 192 × 128):
//! it drops whatever brain lies outside the window, so every use of it counts those voxels
//! ([`brain_outside_window`]) and says so. `predict` covers the whole brain by default.

use crate::checkpoint::Checkpoint;
use crate::config::{Blend, Config, Normalisation, Protocol, ProtocolConfig};
use crate::infer::{Inference, Window};
use anyhow::{bail, Context, Result};
use mgsd_io::preprocess::{
    nonzero_mask, CaseView, CropRecord, EvalWindow, Normalization, Pipeline,
};
use mgsd_io::CaseFiles;

/// Where the network looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum WindowKind {
    /// One window of the patch at the centre of the grid (the ACN literature's evaluation).
    Centre,
    /// Overlapping windows over the whole brain bounding box.
    Sliding,
}

/// Command-line overrides of a checkpoint's protocol (`eval`, `predict`). With them, a
/// PyTorch `state_dict` without our metadata can be run under any protocol.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ProtocolArgs {
    /// Protocol family: acn (min-max, centre window) or rfnet (z-score in the brain, sliding
    /// windows, "ET < 500 voxels → 0"). Default: the checkpoint's, else acn.
    #[arg(long, value_enum)]
    pub protocol: Option<Protocol>,
    /// Window size D,H,W (or one number for a cube), each a multiple of 8. Default: the
    /// checkpoint's training patch, else 160,192,128.
    #[arg(long, value_parser = parse_patch)]
    pub patch: Option<[usize; 3]>,
    /// centre (one window of the patch at the grid centre; drops brain outside it) or sliding
    /// (overlapping windows over the whole brain).
    #[arg(long, value_enum)]
    pub window: Option<WindowKind>,
    /// Overlap of sliding windows, in [0, 1). Default: the checkpoint's, else 0.5.
    #[arg(long)]
    pub overlap: Option<f64>,
    /// How sliding windows are combined: gaussian (nnU-Net) or constant (plain average).
    #[arg(long, value_enum)]
    pub blend: Option<Blend>,
    /// Mirror test-time augmentation: average the 8 axis-flip combinations (8× the time).
    #[arg(long)]
    pub tta: bool,
}

/// Parses `D,H,W` or `N` (a cube).
///
/// # Errors
/// Anything else, or a side that is zero or not a multiple of 8.
pub fn parse_patch(s: &str) -> std::result::Result<[usize; 3], String> {
    let parts: Vec<&str> = s.split([',', 'x', '×']).map(str::trim).collect();
    let nums = parts
        .iter()
        .map(|p| p.parse::<usize>().map_err(|_| format!("'{p}' in '{s}' is not a number")))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let patch = match nums.as_slice() {
        [n] => [*n; 3],
        [a, b, c] => [*a, *b, *c],
        _ => return Err(format!("'{s}': expected D,H,W or one number")),
    };
    if patch.iter().any(|&n| n == 0 || !n.is_multiple_of(8)) {
        return Err(format!("patch {patch:?}: every side must be a positive multiple of 8"));
    }
    Ok(patch)
}

impl ProtocolArgs {
    /// `base` with these overrides; `default_window` applies when neither the flags nor the
    /// base choose (`predict`: sliding; `eval`: the protocol's own).
    ///
    /// # Errors
    /// An overlap outside [0, 1).
    pub fn apply(
        &self,
        base: &ProtocolConfig,
        default_window: Option<WindowKind>,
    ) -> Result<ProtocolConfig> {
        let mut p = base.clone();
        if let Some(name) = self.protocol {
            if name != p.name {
                // The derived choices follow the new family.
                p.normalisation = None;
                p.sliding_window = None;
                p.min_et_voxels = None;
            }
            p.name = name;
        }
        if let Some(patch) = self.patch {
            p.patch = patch;
        }
        match (self.window, default_window) {
            (Some(w), _) | (None, Some(w)) => p.sliding_window = Some(w == WindowKind::Sliding),
            (None, None) => {}
        }
        if let Some(o) = self.overlap {
            if !(0.0..1.0).contains(&o) {
                bail!("--overlap {o} must lie in [0, 1)");
            }
            p.overlap = o;
        }
        if let Some(b) = self.blend {
            p.blend = b;
        }
        p.tta |= self.tta;
        Ok(p)
    }
}

/// The protocol a checkpoint was trained with (from its stored configuration), or the default
/// (ACN, 160 × 192 × 128) for a weights-only file such as a PyTorch `state_dict`.
///
/// # Errors
/// A stored configuration that does not parse, naming the checkpoint.
pub fn of_checkpoint(ckpt: &Checkpoint) -> Result<ProtocolConfig> {
    Ok(match &ckpt.meta {
        Some(m) => {
            Config::from_toml(
                &m.config,
                &format!("configuration stored in {}", ckpt.path.display()),
            )?
            .protocol
        }
        None => ProtocolConfig::default(),
    })
}

/// Fraction of a sliding-window image that is padding, when the region carried (`valid_box`,
/// the brain box) is smaller than the patch on some axis.
pub fn padding_fraction(valid_box: ([usize; 3], [usize; 3]), patch: [usize; 3]) -> f64 {
    let (lo, hi) = valid_box;
    let kept: f64 = (0..3).map(|a| hi[a].saturating_sub(lo[a]) as f64).product();
    let padded: f64 = (0..3).map(|a| hi[a].saturating_sub(lo[a]).max(patch[a]) as f64).product();
    if padded > 0.0 {
        1.0 - kept / padded
    } else {
        0.0
    }
}

/// Warns when more than half of what the network sees is padding (a patch far larger than the
/// brain: slower, and unlike anything seen in training).
pub fn warn_if_mostly_padding(id: &str, valid_box: ([usize; 3], [usize; 3]), patch: [usize; 3]) {
    let f = padding_fraction(valid_box, patch);
    if f > 0.5 {
        let (lo, hi) = valid_box;
        let size = [0, 1, 2].map(|a| hi[a].saturating_sub(lo[a]));
        tracing::warn!(
            "{id}: the patch {patch:?} is larger than the brain box {size:?}: {:.0}% of each window is padding; a smaller `--patch` is faster",
            100.0 * f
        );
    }
}

/// Checks a training patch against the training volumes (their headers): a patch larger than
/// every volume on some axis is an error naming the axis and the largest volume; volumes that
/// the patch would pad by more than half are a warning.
///
/// # Errors
/// The patch does not fit, or a header cannot be read (naming the file).
pub fn check_patch_fits(patch: [usize; 3], cases: &[CaseFiles]) -> Result<()> {
    let mut largest: Option<(String, [usize; 3])> = None;
    let mut max = [0usize; 3];
    let mut mostly_padding: Vec<(String, [usize; 3], f64)> = Vec::new();
    for case in cases {
        let Some(path) = case.files().first().map(|p| p.to_path_buf()) else { continue };
        let info = mgsd_io::read_header(&path).with_context(|| {
            format!("case {}: reading the header of {}", case.id, path.display())
        })?;
        let shape = match info.shape.as_slice() {
            [x, y, z, ..] => [*x, *y, *z],
            other => bail!("case {}: {} is not 3-D (shape {other:?})", case.id, path.display()),
        };
        for a in 0..3 {
            max[a] = max[a].max(shape[a]);
        }
        if largest
            .as_ref()
            .is_none_or(|(_, s)| s.iter().product::<usize>() < shape.iter().product())
        {
            largest = Some((case.id.clone(), shape));
        }
        let f = padding_fraction(([0; 3], shape), patch);
        if f > 0.5 {
            mostly_padding.push((case.id.clone(), shape, f));
        }
    }
    for (a, axis) in ["0 (x)", "1 (y)", "2 (z)"].iter().enumerate() {
        if largest.is_some() && patch[a] > max[a] {
            let (id, shape) = largest.clone().unwrap_or_default();
            bail!(
                "[protocol] patch {patch:?} is larger than every training volume along axis {axis}: {} voxels against at most {} (the largest volume is {id}, {shape:?}); choose a patch of at most {max:?}",
                patch[a],
                max[a]
            );
        }
    }
    if let Some((id, shape, f)) = mostly_padding.iter().max_by(|a, b| a.2.total_cmp(&b.2)).cloned()
    {
        tracing::warn!(
            "[protocol] patch {patch:?} pads {} of {} training volumes by more than half (worst: {id}, {shape:?}, {:.0}% padding): slower steps spent on zeros",
            mostly_padding.len(),
            cases.len(),
            100.0 * f
        );
    }
    Ok(())
}

/// The training preprocessing of a protocol configuration (random crops from the whole grid).
pub fn train_pipeline(p: &ProtocolConfig) -> Pipeline {
    let mut pl = Pipeline::new(
        match p.name {
            Protocol::Acn => mgsd_io::Protocol::Acn,
            Protocol::Rfnet => mgsd_io::Protocol::Rfnet,
        },
        p.patch,
    );
    pl.normalization = match p.normalisation() {
        Normalisation::MinMax => Normalization::MinMax,
        Normalisation::ZScore => Normalization::ZScoreInMask,
    };
    if !p.flips {
        pl.flip_probability = 0.0;
    }
    pl.foreground_fraction = p.foreground_fraction;
    pl
}

/// The evaluation preprocessing: centre window, or the brain bounding box padded to at least
/// the patch for sliding windows. Min-max statistics are measured on the whole volume either
/// way, so the crop does not change intensities.
pub fn eval_pipeline(p: &ProtocolConfig) -> Pipeline {
    let mut pl = train_pipeline(p);
    pl.foreground_fraction = 0.0;
    if p.sliding_window() {
        pl.crop_to_brain = Some(pl.crop_to_brain.unwrap_or([0; 3]));
        pl.eval_window = EvalWindow::PadToPatch;
    } else {
        pl.eval_window = EvalWindow::CentreCrop;
    }
    pl
}

/// How the network runs over an evaluation image of `p`.
pub fn inference(p: &ProtocolConfig) -> Inference {
    Inference {
        window: if p.sliding_window() {
            Window::Sliding { patch: p.patch, overlap: p.overlap, blend: p.blend }
        } else {
            Window::Whole
        },
        tta: p.tta,
    }
}

/// One line stating the protocol, for table headers and logs.
pub fn describe(p: &ProtocolConfig) -> String {
    let [a, b, c] = p.patch;
    let name = match p.name {
        Protocol::Acn => "ACN",
        Protocol::Rfnet => "RFNet",
    };
    let norm = match p.normalisation() {
        Normalisation::MinMax => "min-max",
        Normalisation::ZScore => "z-score in the brain",
    };
    let window = if p.sliding_window() {
        let blend = match p.blend {
            Blend::Gaussian => "Gaussian",
            Blend::Constant => "uniform",
        };
        format!(
            "sliding {a}×{b}×{c} windows over the brain box, overlap {}, {blend} blending",
            p.overlap
        )
    } else {
        format!("one centre window {a}×{b}×{c} (brain outside it is not segmented)")
    };
    let tta = if p.tta { ", mirror TTA (8 flips)" } else { "" };
    let post = p.min_et().map_or(String::new(), |n| format!(", ET < {n} voxels → 0"));
    format!("{name} protocol: {norm}, {window}{tta}{post}")
}

/// Brain voxels (non-zero in some present channel) of `view` that the window `record` leaves
/// out, and the brain's size: `(outside, brain)`.
///
/// # Errors
/// A view whose channels disagree in size.
pub fn brain_outside_window(view: &CaseView<'_>, record: &CropRecord) -> Result<(usize, usize)> {
    let present: Vec<&[f32]> = view.images.iter().flatten().copied().collect();
    let mask = nonzero_mask(&present, view.shape)?;
    let (lo, hi) = record.valid_box();
    let [_, ny, nz] = view.shape;
    let (mut outside, mut brain) = (0usize, 0usize);
    for (v, _) in mask.iter().enumerate().filter(|(_, &m)| m) {
        brain += 1;
        let idx = [v / (ny * nz), (v / nz) % ny, v % nz];
        if (0..3).any(|a| idx[a] < lo[a] || idx[a] >= hi[a]) {
            outside += 1;
        }
    }
    Ok((outside, brain))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patches_parse() {
        assert_eq!(parse_patch("160,192,128"), Ok([160, 192, 128]));
        assert_eq!(parse_patch("128"), Ok([128; 3]));
        assert_eq!(parse_patch("64x64x32"), Ok([64, 64, 32]));
        assert!(parse_patch("100").is_err());
        assert!(parse_patch("8,8").is_err());
        assert!(parse_patch("a").is_err());
    }

    #[test]
    fn flags_override_the_checkpoint() {
        let base = ProtocolConfig::default(); // ACN, centre, 160×192×128
        let none = ProtocolArgs::default();
        assert!(!none.apply(&base, None).unwrap().sliding_window());
        assert!(none.apply(&base, Some(WindowKind::Sliding)).unwrap().sliding_window());
        let centre = ProtocolArgs { window: Some(WindowKind::Centre), ..Default::default() };
        assert!(!centre.apply(&base, Some(WindowKind::Sliding)).unwrap().sliding_window());
        let rfnet = ProtocolArgs {
            protocol: Some(Protocol::Rfnet),
            patch: Some([128; 3]),
            tta: true,
            ..Default::default()
        };
        let p = rfnet.apply(&base, None).unwrap();
        assert_eq!(p.normalisation(), Normalisation::ZScore);
        assert!(p.sliding_window());
        assert_eq!(p.patch, [128; 3]);
        assert!(p.tta);
        assert_eq!(p.min_et(), Some(500));
        let bad = ProtocolArgs { overlap: Some(1.0), ..Default::default() };
        assert!(bad.apply(&base, None).is_err());
    }

    #[test]
    fn padding_fraction_of_the_issue_example() {
        // A 128³ patch on a 64×64×41 brain: 92 % padding.
        let f = padding_fraction(([0; 3], [64, 64, 41]), [128; 3]);
        assert!((f - (1.0 - 64.0 * 64.0 * 41.0 / 128f64.powi(3))).abs() < 1e-12);
        assert!(f > 0.9);
        assert_eq!(padding_fraction(([2, 2, 2], [200, 200, 150]), [128; 3]), 0.0);
    }

    #[test]
    fn brain_outside_a_centre_window_is_counted() {
        // A 4×4×4 grid, brain everywhere; a centre window of 2×4×4 keeps half of it.
        let img = vec![1f32; 64];
        let view = CaseView::new(vec![Some(&img[..]), None, None, None], [4, 4, 4], None).unwrap();
        let rec = mgsd_io::preprocess::centre_crop([4, 4, 4], [2, 4, 4]).unwrap();
        assert_eq!(brain_outside_window(&view, &rec).unwrap(), (32, 64));
    }
}
