//! Real scans before the network sees them: the modalities asked for are present, NaN and
//! infinite voxels are counted and reported with their file, an image without any signal
//! (all NaN, or constant) is treated as missing, and modalities on different grids are either
//! refused with the cause (both affines, how far apart) or resampled onto one reference grid
//! (`--resample`), optionally onto isotropic voxels (`--spacing`).

use anyhow::{bail, Context, Result};
use mgsd_io::resample::{resample, Interpolation, Method};
use mgsd_io::{Case, CaseFiles, Grid, Modality, ModalitySet, SignalStats, Volume};
use std::collections::BTreeMap;

/// How to bring the modalities of a case onto one grid.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GridOptions {
    /// Resample every modality onto the reference grid when the grids differ.
    pub resample: bool,
    /// The reference modality (default: the present modality with the smallest voxels).
    pub reference: Option<Modality>,
    /// Run the network on isotropic voxels of this size (mm) and map the labels back.
    pub spacing: Option<f64>,
}

/// A case ready for the network: its usable images on one grid, the reference image whose
/// grid and header the results are written with, and what was noticed on the way.
#[derive(Debug, Clone)]
pub struct Scans {
    /// The usable images, all on the reference grid.
    pub case: Case,
    /// The reference image (grid, affine and header of the results).
    pub reference: Volume,
    /// Its modality.
    pub reference_modality: Modality,
    /// Warnings, in the order they arose (also logged).
    pub warnings: Vec<String>,
}

/// Order in which a reference is chosen among modalities with equally small voxels.
const REFERENCE_PREFERENCE: [Modality; 4] =
    [Modality::T1ce, Modality::Flair, Modality::T1, Modality::T2];

fn warn(warnings: &mut Vec<String>, id: &str, message: String) {
    tracing::warn!("{id}: {message}");
    warnings.push(message);
}

/// Loads the images of `files` (all modalities it has, or exactly `wanted`), checks them and
/// brings them onto one grid (see the module docs).
///
/// # Errors
/// A requested modality without a file, unreadable files, no modality with any signal,
/// different grids without `--resample`, a `--reference` modality that is not usable.
pub fn load_scans(
    files: &CaseFiles,
    wanted: Option<&[Modality]>,
    grid: &GridOptions,
) -> Result<Scans> {
    let id = files.id.as_str();
    let present = files.modalities();
    if let Some(wanted) = wanted {
        let missing: Vec<String> =
            wanted.iter().filter(|m| !present.contains(**m)).map(|m| m.to_string()).collect();
        if !missing.is_empty() {
            bail!(
                "case {id}: {} requested with --modalities but not found (the case has {present}: {})",
                missing.join(", "),
                files.files().iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
            );
        }
    }
    let mut images = files.load_images().with_context(|| format!("loading case {id}"))?;
    if let Some(wanted) = wanted {
        let wanted = ModalitySet::of(wanted);
        images.retain(|m, _| wanted.contains(*m));
    }
    let mut warnings = Vec::new();
    let mut usable = BTreeMap::new();
    for (m, mut vol) in images {
        let file = files.file_of(m).display().to_string();
        let stats = SignalStats::of(&vol.data);
        if let Some(why) = stats.why_empty() {
            warn(
                &mut warnings,
                id,
                format!("{m} ({file}) has no signal ({why}); segmenting as if {m} were missing"),
            );
            continue;
        }
        if stats.non_finite() > 0 {
            warn(
                &mut warnings,
                id,
                format!(
                    "{m} ({file}): {} of {} voxels are not finite ({}); they are set to 0",
                    stats.non_finite(),
                    stats.voxels,
                    stats.describe_non_finite()
                ),
            );
            // Before any resampling, so that they do not spread to their neighbours.
            vol.data.iter_mut().filter(|v| !v.is_finite()).for_each(|v| *v = 0.0);
        }
        usable.insert(m, vol);
    }
    if usable.is_empty() {
        bail!("case {id}: no modality with any signal to segment ({})", warnings.join("; "));
    }
    let reference_modality = match grid.reference {
        Some(r) if usable.contains_key(&r) => r,
        Some(r) => bail!(
            "case {id}: --reference {r}, but the case has no usable {r} image (usable: {})",
            ModalitySet::of(&usable.keys().copied().collect::<Vec<_>>())
        ),
        None => smallest_voxels(&usable),
    };
    let reference = usable[&reference_modality].clone();
    let target = Grid::of(&reference);
    let mut on_grid = BTreeMap::new();
    for (m, vol) in usable {
        if vol.same_grid(&reference) {
            on_grid.insert(m, vol);
            continue;
        }
        let ga = Grid::of(&reference);
        let gb = Grid::of(&vol);
        if !grid.resample {
            bail!(
                "case {id}: {reference_modality} ({}) and {m} ({}) lie on different grids: shape {:?} vs {:?}, \
                 affine {} vs {}; their corners are up to {:.2} mm apart. Rerun with --resample to bring \
                 every modality onto the {reference_modality} grid (--reference chooses another)",
                files.file_of(reference_modality).display(),
                files.file_of(m).display(),
                reference.shape,
                vol.shape,
                mgsd_io::grid::format_affine(&ga.affine),
                mgsd_io::grid::format_affine(&gb.affine),
                ga.max_corner_displacement(&gb)
            );
        }
        let (moved, method) = resample(&vol, &target, Interpolation::Linear)
            .with_context(|| format!("resampling {m} of case {id}"))?;
        tracing::info!(
            "{id}: {m} resampled onto the {reference_modality} grid {:?} ({method})",
            target.shape
        );
        if method != Method::Exact {
            warnings.push(format!("{m} resampled onto the {reference_modality} grid (trilinear)"));
        }
        on_grid.insert(m, reference.with_data(moved.data)?);
    }
    let case = Case { id: id.to_string(), images: on_grid, label: None };
    Ok(Scans { case, reference, reference_modality, warnings })
}

/// The modality whose voxels are smallest (ties: T1ce, FLAIR, T1, T2).
fn smallest_voxels(images: &BTreeMap<Modality, Volume>) -> Modality {
    let ml = |m: &Modality| images.get(m).map_or(f64::INFINITY, |v| Grid::of(v).voxel_ml());
    let mut best = None;
    for m in REFERENCE_PREFERENCE.iter().filter(|m| images.contains_key(m)) {
        match best {
            Some(b) if ml(m) >= ml(&b) * (1.0 - 1e-6) => {}
            _ => best = Some(*m),
        }
    }
    best.unwrap_or(Modality::T1)
}

/// `case` resampled onto isotropic voxels of `mm` (same directions and field of view).
///
/// # Errors
/// A spacing that is not a positive number.
pub fn isotropic_case(case: &Case, reference: &Volume, mm: f64) -> Result<(Case, Grid)> {
    let iso = Grid::of(reference)
        .isotropic(mm)
        .with_context(|| format!("--spacing {mm} for case {}", case.id))?;
    let mut images = BTreeMap::new();
    for (m, vol) in &case.images {
        let (v, _) = resample(vol, &iso, Interpolation::Linear)
            .with_context(|| format!("resampling {m} of case {} to {mm} mm", case.id))?;
        images.insert(*m, v);
    }
    Ok((Case { id: case.id.clone(), images, label: None }, iso))
}
