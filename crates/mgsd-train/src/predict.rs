//! Segmenting a patient: any subset of the four modalities → preprocessing → `unet(x · r)` →
//! labels → un-cropped to the ORIGINAL grid → a BraTS-label NIfTI with the source header and
//! affine (so it overlays the scan in ITK-SNAP / 3D Slicer), optional probability maps and a PNG
//! preview.
//!
//! By default the whole brain is segmented: sliding windows of the checkpoint's patch over the
//! non-zero bounding box, Gaussian-blended ([`crate::protocol`]). `--window centre` asks for the
//! ACN literature's single centre window instead, and then the brain voxels it leaves out are
//! counted and reported.
//!
//! Real scans: the inputs are checked first ([`crate::scans`]: requested modalities present,
//! NaN voxels counted, images without signal treated as missing, grids compared or resampled
//! with `--resample` / `--spacing`), every output location is checked before the network runs,
//! and results are written under temporary names renamed at the end ([`crate::outputs`]), so a
//! failure leaves no partial result. [`segment`] and [`write_segmentation`] are the per-case
//! steps that `predict` and the batch mode ([`crate::batch`]) share.

use crate::checkpoint;
use crate::config::ProtocolConfig;
use crate::infer::probabilities;
use crate::metrics::PostProcess;
use crate::model::unet_from_checkpoint;
use crate::outputs::Outputs;
use crate::preview::preview;
use crate::protocol::{self, ProtocolArgs, WindowKind};
use crate::scans::{isotropic_case, load_scans, GridOptions};
use anyhow::{bail, Context, Result};
use candle_core::Device;
use mgsd_io::labels::{labels_from_channels, EDEMA, ENHANCING, NCR_NET};
use mgsd_io::preprocess::CaseView;
use mgsd_io::resample::{resample, resample_labels, Interpolation};
use mgsd_io::{
    CaseFiles, Grid, ImageSource, LabelScheme, Modality, ModalitySet, OutputType, Volume,
    ACN_CHANNEL_ORDER,
};
use mgsd_nn::UNet3D;
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
    /// Modalities on different grids: resample, reference, isotropic spacing.
    pub grid: GridOptions,
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
    /// Whole tumour, tumour core, enhancing tumour (ml).
    pub volumes_ml: [f64; 3],
    /// Warnings about the inputs (also logged).
    pub warnings: Vec<String>,
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
        // The requested modalities are checked (each must be present) by `load_scans`.
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

/// The network and its protocol, loaded once (for many cases in a batch).
pub struct Segmenter {
    /// The segmenter.
    pub unet: UNet3D,
    /// The protocol (checkpoint + overrides).
    pub proto: ProtocolConfig,
    /// The checkpoint it came from.
    pub checkpoint: PathBuf,
    /// The protocol in one line.
    pub description: String,
}

impl std::fmt::Debug for Segmenter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Segmenter")
            .field("checkpoint", &self.checkpoint)
            .field("description", &self.description)
            .finish_non_exhaustive()
    }
}

impl Segmenter {
    /// Loads `checkpoint` and resolves its protocol with `args` (sliding windows by default).
    ///
    /// # Errors
    /// An unreadable checkpoint, invalid overrides.
    pub fn load(checkpoint: &Path, args: &ProtocolArgs, device: &Device) -> Result<Self> {
        let ckpt = checkpoint::load(checkpoint, device)?;
        let unet = unet_from_checkpoint(&ckpt, device)?;
        let proto = args.apply(&protocol::of_checkpoint(&ckpt)?, Some(WindowKind::Sliding))?;
        let description = protocol::describe(&proto);
        Ok(Segmenter { unet, proto, checkpoint: checkpoint.to_path_buf(), description })
    }
}

/// One case segmented, on its reference grid.
#[derive(Debug, Clone)]
pub struct Segmentation {
    /// Case id.
    pub id: String,
    /// Modalities used.
    pub modalities: ModalitySet,
    /// The reference image: grid, affine and header of every result.
    pub reference: Volume,
    /// The image the preview is drawn from (FLAIR, else T1ce, T2, T1), on the reference grid.
    pub grey: Volume,
    /// Canonical labels (0/1/2/4) on the reference grid.
    pub labels: Vec<u8>,
    /// Probabilities of ED, NCR/NET and ET on the reference grid, when asked for.
    pub probabilities: Option<[Vec<f32>; 3]>,
    /// Warnings about the inputs.
    pub warnings: Vec<String>,
    /// With a centre window: brain voxels left out, and the brain's size.
    pub outside_window: Option<(usize, usize)>,
}

impl Segmentation {
    /// Voxels per canonical label.
    pub fn counts(&self) -> BTreeMap<u8, usize> {
        let mut counts = BTreeMap::new();
        for &l in &self.labels {
            *counts.entry(l).or_insert(0) += 1;
        }
        counts
    }

    /// Whole tumour (1, 2, 4), tumour core (1, 4) and enhancing tumour (4) in ml.
    pub fn volumes_ml(&self) -> [f64; 3] {
        let c = self.counts();
        let n = |l: u8| *c.get(&l).unwrap_or(&0) as f64;
        let ml = Grid::of(&self.reference).voxel_ml();
        [
            (n(NCR_NET) + n(EDEMA) + n(ENHANCING)) * ml,
            (n(NCR_NET) + n(ENHANCING)) * ml,
            n(ENHANCING) * ml,
        ]
    }
}

/// Names of the probability maps, in channel order (ED, NCR/NET, ET).
pub const PROBABILITY_FILES: [&str; 3] = ["prob_ed", "prob_ncr_net", "prob_et"];

/// Where one case's results go.
#[derive(Debug, Clone)]
pub struct OutputPaths {
    /// The label map.
    pub labels: PathBuf,
    /// Folder of the probability maps.
    pub probabilities: Option<PathBuf>,
    /// The PNG preview.
    pub preview: Option<PathBuf>,
}

impl OutputPaths {
    /// Every file these outputs are (probability maps one by one).
    pub fn files(&self) -> Vec<PathBuf> {
        let mut out = vec![self.labels.clone()];
        if let Some(dir) = &self.probabilities {
            out.extend(PROBABILITY_FILES.iter().map(|n| dir.join(format!("{n}.nii.gz"))));
        }
        out.extend(self.preview.clone());
        out
    }
}

/// Segments one case: loads and checks its scans, brings them onto one grid (and onto
/// isotropic voxels with `--spacing`), runs the network, and maps labels (and probabilities)
/// onto the reference grid.
///
/// # Errors
/// Anything [`load_scans`] refuses; preprocessing or network errors, naming the case.
pub fn segment(
    seg: &Segmenter,
    files: &CaseFiles,
    wanted: Option<&[Modality]>,
    grid: &GridOptions,
    with_probabilities: bool,
    device: &Device,
) -> Result<Segmentation> {
    let id = files.id.clone();
    let scans = load_scans(files, wanted, grid)?;
    let modalities = scans.case.modalities();
    let (net_case, iso) = match grid.spacing {
        Some(mm) => {
            let (c, g) = isotropic_case(&scans.case, &scans.reference, mm)?;
            tracing::info!("{id}: segmenting on {mm} mm isotropic voxels, grid {:?}", g.shape);
            (c, Some(g))
        }
        None => (scans.case.clone(), None),
    };
    let proto = &seg.proto;
    let pl = protocol::eval_pipeline(proto);
    let view = CaseView::from_case(&net_case, &pl.order)?;
    let sample = pl.eval(&view).with_context(|| format!("preprocessing {id}"))?;
    let outside_window = if proto.sliding_window() {
        protocol::warn_if_mostly_padding(&id, sample.record.valid_box(), proto.patch);
        None
    } else {
        let (outside, brain) = protocol::brain_outside_window(&view, &sample.record)?;
        if outside > 0 {
            tracing::warn!(
                "{id}: the centre window {:?} leaves {outside} of {brain} brain voxels ({:.1}%) unsegmented (label 0); drop `--window centre` to segment the whole brain",
                proto.patch,
                100.0 * outside as f64 / brain.max(1) as f64
            );
        }
        Some((outside, brain))
    };
    let mask = modalities.channel_mask(&ACN_CHANNEL_ORDER);
    tracing::info!(
        "segmenting {id} ({modalities}; grid {:?}) with {}; {}",
        scans.reference.shape,
        seg.checkpoint.display(),
        seg.description
    );
    let probs = probabilities(&seg.unet, &sample.image, mask, protocol::inference(proto), device)?;
    let labels = labels_from_channels(&probs)?;
    let mut full = sample.record.uncrop(&labels, 1)?;
    PostProcess { min_et: proto.min_et() }.apply(&mut full);
    let reference_grid = Grid::of(&scans.reference);
    let labels = match &iso {
        Some(g) => resample_labels(&full, g, &reference_grid)?,
        None => full,
    };
    let probabilities = if with_probabilities {
        let n = sample.record.shape().iter().product::<usize>();
        let mut maps: [Vec<f32>; 3] = Default::default();
        for (c, map) in maps.iter_mut().enumerate() {
            let p = sample.record.uncrop(&probs[c * n..(c + 1) * n], 1)?;
            *map = match &iso {
                Some(g) => {
                    let on_iso = Volume { data: p, ..g.zeros() };
                    resample(&on_iso, &reference_grid, Interpolation::Linear)?.0.data
                }
                None => p,
            };
        }
        Some(maps)
    } else {
        None
    };
    let grey = [Modality::Flair, Modality::T1ce, Modality::T2, Modality::T1]
        .iter()
        .find_map(|m| scans.case.images.get(m))
        .unwrap_or(&scans.reference)
        .clone();
    Ok(Segmentation {
        id,
        modalities,
        reference: scans.reference,
        grey,
        labels,
        probabilities,
        warnings: scans.warnings,
        outside_window,
    })
}

/// Writes `s` to the temporary names of `paths` in `outputs` (commit them afterwards).
///
/// # Errors
/// Write errors naming the file.
pub fn write_segmentation(s: &Segmentation, paths: &OutputPaths, outputs: &Outputs) -> Result<()> {
    let tmp = outputs.staging(&paths.labels)?;
    mgsd_io::write_labels(tmp, &s.labels, &s.reference)
        .with_context(|| format!("writing {}", paths.labels.display()))?;
    if let (Some(dir), Some(maps)) = (&paths.probabilities, &s.probabilities) {
        for (name, map) in PROBABILITY_FILES.iter().zip(maps) {
            let path = dir.join(format!("{name}.nii.gz"));
            mgsd_io::write_volume(
                outputs.staging(&path)?,
                &s.reference.with_data(map.clone())?,
                OutputType::Float32,
            )
            .with_context(|| format!("writing {}", path.display()))?;
        }
    }
    if let Some(path) = &paths.preview {
        preview(&s.grey, &s.labels)?.canvas.save_png(outputs.staging(path)?)?;
    }
    Ok(())
}

/// Segments one patient (see the module docs).
///
/// # Errors
/// An output location that cannot be written (before any work), unreadable inputs or
/// checkpoint, a requested modality that is absent, grids that differ without `--resample`
/// — naming the file.
pub fn predict(opts: &PredictOptions, device: &Device) -> Result<PredictSummary> {
    let paths = OutputPaths {
        labels: opts.output.clone(),
        probabilities: opts.probabilities.clone(),
        preview: opts.preview.clone(),
    };
    let outputs = Outputs::plan(&paths.files(), &opts.inputs)?;
    let seg = Segmenter::load(&opts.checkpoint, &opts.protocol, device)?;
    let files = case_files(opts)?;
    let s = segment(
        &seg,
        &files,
        opts.modalities.as_deref(),
        &opts.grid,
        paths.probabilities.is_some(),
        device,
    )?;
    write_segmentation(&s, &paths, &outputs)?;
    let written = outputs.commit()?;
    let written = paths.files().into_iter().filter(|p| written.contains(p)).collect();
    Ok(PredictSummary {
        modalities: s.modalities,
        shape: s.reference.shape,
        counts: s.counts(),
        written,
        protocol: seg.description.clone(),
        outside_window: s.outside_window,
        volumes_ml: s.volumes_ml(),
        warnings: s.warnings.clone(),
    })
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
