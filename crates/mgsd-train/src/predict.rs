//! Segmenting a patient: any subset of the four modalities → preprocessing → `unet(x · r)` →
//! labels → un-cropped to the ORIGINAL grid → a BraTS-label NIfTI with the source header and
//! affine (so it overlays the scan in ITK-SNAP / 3D Slicer), optional probability maps and a PNG
//! preview.
//!
//! By default the whole brain is segmented: sliding windows of the checkpoint's patch over the
//! non-zero bounding box, Gaussian-blended ([`crate::protocol`]). `--window centre` asks for the
//! ACN literature's single centre window instead, and then the brain voxels it leaves out are
//! counted and reported.

use crate::checkpoint;
use crate::infer::probabilities;
use crate::metrics::PostProcess;
use crate::model::unet_from_checkpoint;
use crate::plot::{Canvas, BLACK, WHITE};
use crate::protocol::{self, ProtocolArgs, WindowKind};
use anyhow::{bail, Context, Result};
use candle_core::Device;
use mgsd_io::labels::{labels_from_channels, EDEMA, ENHANCING, NCR_NET};
use mgsd_io::preprocess::CaseView;
use mgsd_io::{
    Case, CaseFiles, ImageSource, LabelScheme, Modality, ModalitySet, OutputType, Volume,
    ACN_CHANNEL_ORDER,
};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// What to segment and where to write it.
#[derive(Debug, Clone)]
pub struct PredictOptions {
    /// Checkpoint (ours, or a PyTorch `state_dict` in safetensors).
    pub checkpoint: PathBuf,
    /// A case folder, or one NIfTI file per modality.
    pub inputs: Vec<PathBuf>,
    /// The modality of each input file, in order (default: from the file names).
    pub modalities: Option<Vec<Modality>>,
    /// Output label map (`.nii.gz`).
    pub output: PathBuf,
    /// Folder for the probability maps (`prob_ed`, `prob_ncr_net`, `prob_et`), if wanted.
    pub probabilities: Option<PathBuf>,
    /// PNG preview, if wanted.
    pub preview: Option<PathBuf>,
    /// Overrides of the checkpoint's protocol (window, patch, blending, TTA, …).
    pub protocol: ProtocolArgs,
}

/// What `predict` did.
#[derive(Debug, Clone)]
pub struct PredictSummary {
    /// Modalities used.
    pub modalities: ModalitySet,
    /// Original grid.
    pub shape: [usize; 3],
    /// Voxels per canonical label (0, 1, 2, 4).
    pub counts: BTreeMap<u8, usize>,
    /// Files written.
    pub written: Vec<PathBuf>,
    /// The protocol used, in one line.
    pub protocol: String,
    /// With a centre window: brain voxels left out, and the brain's size.
    pub outside_window: Option<(usize, usize)>,
}

/// The modality a file name names: the last `_`/`-`/`.`-separated token of its stem
/// (`Brats18_x_t1ce.nii.gz` → T1ce, `BraTS-GLI-00000-000-t2f.nii.gz` → FLAIR).
pub fn modality_from_name(path: &Path) -> Option<Modality> {
    let name = path.file_name()?.to_string_lossy().to_string();
    let stem = name.strip_suffix(".gz").unwrap_or(&name);
    let stem = stem.strip_suffix(".nii").unwrap_or(stem);
    stem.rsplit(['_', '-', '.']).next()?.parse().ok()
}

fn case_files(opts: &PredictOptions) -> Result<CaseFiles> {
    if opts.inputs.is_empty() {
        bail!("predict needs --input (a case folder or NIfTI files)");
    }
    if opts.inputs.len() == 1 && opts.inputs[0].is_dir() {
        let dir = &opts.inputs[0];
        let mut cf = mgsd_io::discover_case(dir)
            .with_context(|| format!("reading case folder {}", dir.display()))?;
        cf.label = None;
        if let Some(wanted) = &opts.modalities {
            let ImageSource::PerModality(files) = &mut cf.images else {
                bail!("{}: unexpected stacked image", dir.display())
            };
            let wanted = ModalitySet::of(wanted);
            files.retain(|m, _| wanted.contains(*m));
            if files.is_empty() {
                bail!(
                    "{}: none of the requested modalities ({wanted}) is in the folder",
                    dir.display()
                );
            }
        }
        return Ok(cf);
    }
    let mut files = BTreeMap::new();
    for (i, p) in opts.inputs.iter().enumerate() {
        if !p.is_file() {
            bail!("input {} does not exist or is not a file", p.display());
        }
        let m = match &opts.modalities {
            Some(ms) => *ms.get(i).with_context(|| {
                format!("{} input files but only {} --modalities; give one modality per file, in order", opts.inputs.len(), ms.len())
            })?,
            None => modality_from_name(p).with_context(|| {
                format!(
                    "cannot tell the modality of {} from its name (expected a suffix like _t1, _t1ce, _t2, _flair, -t1n, -t1c, -t2w, -t2f); pass --modalities",
                    p.display()
                )
            })?,
        };
        if files.insert(m, p.clone()).is_some() {
            bail!("two inputs are {m} (the second is {})", p.display());
        }
    }
    if let Some(ms) = &opts.modalities {
        if ms.len() != opts.inputs.len() {
            bail!("{} input files but {} --modalities", opts.inputs.len(), ms.len());
        }
    }
    let id = opts.inputs[0].file_name().map_or("case".into(), |n| n.to_string_lossy().to_string());
    Ok(CaseFiles {
        id,
        images: ImageSource::PerModality(files),
        label: None,
        scheme: LabelScheme::Brats2018,
    })
}

/// Segments one patient (see the module docs).
///
/// # Errors
/// Unreadable inputs or checkpoint, grids that differ between modalities — naming the file.
pub fn predict(opts: &PredictOptions, device: &Device) -> Result<PredictSummary> {
    let ckpt = checkpoint::load(&opts.checkpoint, device)?;
    let unet = unet_from_checkpoint(&ckpt, device)?;
    let proto = opts.protocol.apply(&protocol::of_checkpoint(&ckpt)?, Some(WindowKind::Sliding))?;
    let files = case_files(opts)?;
    let case = files.load().with_context(|| format!("loading {}", files.id))?;
    let modalities = case.modalities();
    let grid = case.grid().context("the case has no image")?.clone();

    let pl = protocol::eval_pipeline(&proto);
    let view = CaseView::from_case(&case, &pl.order)?;
    let sample = pl.eval(&view).with_context(|| format!("preprocessing {}", files.id))?;
    let outside_window = if proto.sliding_window() {
        protocol::warn_if_mostly_padding(&files.id, sample.record.valid_box(), proto.patch);
        None
    } else {
        let (outside, brain) = protocol::brain_outside_window(&view, &sample.record)?;
        if outside > 0 {
            tracing::warn!(
                "{}: the centre window {:?} leaves {outside} of {brain} brain voxels ({:.1}%) unsegmented (label 0); drop `--window centre` to segment the whole brain",
                files.id,
                proto.patch,
                100.0 * outside as f64 / brain.max(1) as f64
            );
        }
        Some((outside, brain))
    };
    let mask = modalities.channel_mask(&ACN_CHANNEL_ORDER);
    let description = protocol::describe(&proto);
    tracing::info!(
        "segmenting {} ({modalities}; grid {:?}) with {}; {description}",
        files.id,
        grid.shape,
        opts.checkpoint.display()
    );
    let probs = probabilities(&unet, &sample.image, mask, protocol::inference(&proto), device)?;
    let labels = labels_from_channels(&probs)?;
    let mut full = sample.record.uncrop(&labels, 1)?;
    PostProcess { min_et: proto.min_et() }.apply(&mut full);

    let mut written = Vec::new();
    if let Some(dir) = opts.output.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    mgsd_io::write_labels(&opts.output, &full, &grid)
        .with_context(|| format!("writing {}", opts.output.display()))?;
    written.push(opts.output.clone());
    if let Some(dir) = &opts.probabilities {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let n = sample.record.shape().iter().product::<usize>();
        for (c, name) in ["prob_ed", "prob_ncr_net", "prob_et"].iter().enumerate() {
            let p = sample.record.uncrop(&probs[c * n..(c + 1) * n], 1)?;
            let path = dir.join(format!("{name}.nii.gz"));
            mgsd_io::write_volume(&path, &grid.with_data(p)?, OutputType::Float32)
                .with_context(|| format!("writing {}", path.display()))?;
            written.push(path);
        }
    }
    if let Some(path) = &opts.preview {
        preview(&case, &full).save_png(path)?;
        written.push(path.clone());
    }
    let mut counts = BTreeMap::new();
    for &l in &full {
        *counts.entry(l).or_insert(0) += 1;
    }
    Ok(PredictSummary {
        modalities,
        shape: grid.shape,
        counts,
        written,
        protocol: description,
        outside_window,
    })
}

/// Overlay colour of a canonical label.
fn label_colour(l: u8) -> Option<[u8; 3]> {
    match l {
        EDEMA => Some([40, 200, 40]),
        NCR_NET => Some([230, 40, 40]),
        ENHANCING => Some([255, 220, 0]),
        _ => None,
    }
}

/// Axial, coronal and sagittal slices through the tumour's centre (the volume's centre if
/// there is none), grey levels from FLAIR (else T1ce, T2, T1), the segmentation overlaid
/// (oedema green, necrotic/non-enhancing core red, enhancing tumour yellow).
pub fn preview(case: &Case, labels: &[u8]) -> Canvas {
    let Some(vol) = [Modality::Flair, Modality::T1ce, Modality::T2, Modality::T1]
        .iter()
        .find_map(|m| case.images.get(m))
    else {
        return Canvas::new(8, 8, BLACK);
    };
    let [nx, ny, nz] = vol.shape;
    // Tumour centre.
    let (mut c, mut n) = ([0f64; 3], 0usize);
    for i in 0..nx {
        for j in 0..ny {
            for k in 0..nz {
                if labels[(i * ny + j) * nz + k] != 0 {
                    c[0] += i as f64;
                    c[1] += j as f64;
                    c[2] += k as f64;
                    n += 1;
                }
            }
        }
    }
    let centre =
        if n > 0 { c.map(|v| (v / n as f64).round() as usize) } else { [nx / 2, ny / 2, nz / 2] };
    let (lo, hi) = intensity_window(vol);
    // Each view: (width axis, height axis, fixed axis).
    let views = [("AXIAL", 0usize, 1usize, 2usize), ("CORONAL", 0, 2, 1), ("SAGITTAL", 1, 2, 0)];
    let scale = (256 / nx.max(ny).max(nz)).max(1);
    let tile = |a: usize| vol.shape[a] * scale;
    let width: usize = views.iter().map(|v| tile(v.1) + 8).sum::<usize>() + 8;
    let height = views.iter().map(|v| tile(v.2)).max().unwrap_or(0) + 40;
    let mut cv = Canvas::new(width, height, BLACK);
    let mut x0 = 8usize;
    for (name, wa, ha, fa) in views {
        cv.text(x0 as i64, 6, name, 2, WHITE);
        for v in 0..vol.shape[ha] {
            for u in 0..vol.shape[wa] {
                let mut idx = [0usize; 3];
                idx[wa] = u;
                idx[ha] = vol.shape[ha] - 1 - v; // superior / anterior up
                idx[fa] = centre[fa];
                let lin = (idx[0] * ny + idx[1]) * nz + idx[2];
                let g =
                    (((vol.data[lin] - lo) / (hi - lo).max(1e-6)).clamp(0.0, 1.0) * 255.0) as u8;
                for dy in 0..scale {
                    for dx in 0..scale {
                        let (px, py) = (x0 + u * scale + dx, 30 + v * scale + dy);
                        cv.set(px as i64, py as i64, [g, g, g]);
                        if let Some(col) = label_colour(labels[lin]) {
                            cv.blend(px, py, col, 0.45);
                        }
                    }
                }
            }
        }
        x0 += tile(wa) + 8;
    }
    cv
}

/// 1st and 99th percentile of the non-zero voxels.
fn intensity_window(vol: &Volume) -> (f32, f32) {
    let mut v: Vec<f32> = vol.data.iter().copied().filter(|x| *x != 0.0 && x.is_finite()).collect();
    if v.is_empty() {
        return (0.0, 1.0);
    }
    v.sort_unstable_by(f32::total_cmp);
    (v[v.len() / 100], v[(v.len() * 99) / 100])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modality_names() {
        assert_eq!(
            modality_from_name(Path::new("/a/Brats18_x_1_t1ce.nii.gz")),
            Some(Modality::T1ce)
        );
        assert_eq!(
            modality_from_name(Path::new("BraTS-GLI-00000-000-t2f.nii.gz")),
            Some(Modality::Flair)
        );
        assert_eq!(modality_from_name(Path::new("x_flair.nii")), Some(Modality::Flair));
        assert_eq!(modality_from_name(Path::new("scan.nii.gz")), None);
    }
}
