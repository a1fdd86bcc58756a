//! [`SynthConfig`]: everything that determines a synthetic case, with BraTS-like defaults.

use crate::error::{Error, Result};
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// BraTS' physical field of view in mm (240 × 240 × 155 voxels of 1 mm). Procedural heads
/// always span it, whatever the shape, so sizes in mm mean the same at 32³ and at 240³.
pub const BRATS_FOV_MM: [f32; 3] = [240.0, 240.0, 155.0];

/// The BraTS grid: 240 × 240 × 155.
pub const BRATS_SHAPE: [usize; 3] = [240, 240, 155];

/// Where the healthy anatomy comes from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Anatomy {
    /// The SRI24 T1 atlas shipped with this crate ([`super::SRI24_T1_PATH`]), resampled to the
    /// requested shape.
    Atlas,
    /// An SRI24-like T1 atlas (skull-stripped, background 0) read from this file.
    AtlasFile(PathBuf),
    /// A procedural head: ellipsoidal brain, folded cortex, sulci, ventricles, deep grey
    /// matter. Fast at any size; the default.
    #[default]
    Procedural,
}

impl FromStr for Anatomy {
    type Err = String;

    /// `atlas` or `procedural`.
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "atlas" | "sri24" => Ok(Anatomy::Atlas),
            "procedural" => Ok(Anatomy::Procedural),
            other => Err(format!("unknown anatomy '{other}' (expected atlas or procedural)")),
        }
    }
}

/// Tumour grade, which decides the tumour's parts and the BraTS 2018 folder (`HGG/`, `LGG/`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Grade {
    /// High grade: oedema, enhancing rim, necrotic core.
    #[default]
    Hgg,
    /// Low grade: oedema and a non-enhancing core, no enhancing tumour.
    Lgg,
}

impl Grade {
    /// `HGG` or `LGG`.
    pub fn folder(self) -> &'static str {
        match self {
            Grade::Hgg => "HGG",
            Grade::Lgg => "LGG",
        }
    }
}

impl fmt::Display for Grade {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.folder())
    }
}

impl FromStr for Grade {
    type Err = String;

    /// `HGG`/`LGG`, case-insensitive.
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s.to_ascii_uppercase().as_str() {
            "HGG" => Ok(Grade::Hgg),
            "LGG" => Ok(Grade::Lgg),
            other => Err(format!("unknown grade '{other}' (expected HGG or LGG)")),
        }
    }
}

/// Tumour geometry, in millimetres so it does not depend on the grid.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TumourConfig {
    /// Number of lesions, drawn uniformly in `[min, max]`; `(0, 0)` paints none.
    pub count: (usize, usize),
    /// Radius of the oedema (the whole tumour) in mm.
    pub edema_radius_mm: (f32, f32),
    /// Radius of the core as a fraction of the oedema radius.
    pub core_fraction: (f32, f32),
    /// Radius of the necrosis as a fraction of the core radius (HGG only).
    pub necrosis_fraction: (f32, f32),
    /// Boundary irregularity: relative amplitude of the radius perturbation.
    pub irregularity: f32,
    /// Tumour grade.
    pub grade: Grade,
    /// Patchy enhancement of the HGG core's rim. `None` (the default): the whole rim between
    /// the necrosis and the core's outer surface enhances, so its geometry follows from the
    /// necrosis that T2 shows. `Some(s)`: as in real gliomas, only parts of the rim enhance: a
    /// smooth random field (unit standard deviation, wavelengths 15–40 mm, its own random
    /// stream, so the lesions' geometry is unchanged) decides where, against a threshold drawn
    /// per lesion uniformly in `[-s, s]`, so how much of the rim enhances varies from case to
    /// case (`s = 1`: roughly 16 % to 84 %). The rest of the rim is non-enhancing tumour core
    /// (label 1) that looks like oedema on every sequence, T1ce included, so where and how much
    /// of the tumour enhances can only be seen on T1ce. Within `0..=4`.
    pub patchy_enhancement: Option<f32>,
}

impl Default for TumourConfig {
    fn default() -> Self {
        TumourConfig {
            count: (1, 1),
            edema_radius_mm: (22.0, 34.0),
            core_fraction: (0.45, 0.65),
            necrosis_fraction: (0.45, 0.7),
            irregularity: 0.25,
            grade: Grade::Hgg,
            patchy_enhancement: None,
        }
    }
}

/// Everything that determines a synthetic case. Same config → identical volumes, bit for bit.
#[derive(Debug, Clone, PartialEq)]
pub struct SynthConfig {
    /// Seed of every random choice.
    pub seed: u64,
    /// Grid `[nx, ny, nz]`; the head spans the BraTS field of view at any shape.
    pub shape: [usize; 3],
    /// Healthy anatomy.
    pub anatomy: Anatomy,
    /// Tumour geometry and grade.
    pub tumour: TumourConfig,
    /// Rician noise level as a fraction of white-matter intensity (0 = none).
    pub noise: f32,
    /// Bias field strength: log-amplitude of a smooth multiplicative field (0 = none).
    pub bias_field: f32,
    /// Random per-modality gain range (scanner-to-scanner intensity scale).
    pub gain: (f32, f32),
}

impl SynthConfig {
    /// A procedural head of `shape` with BraTS-like defaults (noise 3 %, bias 0.15, gain
    /// 0.8–1.25, one HGG tumour).
    pub fn new(seed: u64, shape: [usize; 3]) -> Self {
        SynthConfig {
            seed,
            shape,
            anatomy: Anatomy::Procedural,
            tumour: TumourConfig::default(),
            noise: 0.03,
            bias_field: 0.15,
            gain: (0.8, 1.25),
        }
    }

    /// A BraTS-size (240 × 240 × 155) case on the SRI24 atlas.
    pub fn brats(seed: u64) -> Self {
        SynthConfig { anatomy: Anatomy::Atlas, ..SynthConfig::new(seed, BRATS_SHAPE) }
    }

    /// Checks sizes and ranges.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] naming the offending field.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidArgument(format!("synthetic case: {m}")));
        if self.shape.iter().any(|&s| !(4..=1024).contains(&s)) {
            return bad(format!("shape {:?}: each size must be within 4..=1024", self.shape));
        }
        let t = &self.tumour;
        let ranges = [
            ("edema_radius_mm", t.edema_radius_mm, 0.0, 200.0),
            ("core_fraction", t.core_fraction, 0.0, 1.0),
            ("necrosis_fraction", t.necrosis_fraction, 0.0, 1.0),
            ("gain", self.gain, 1e-3, 1e3),
        ];
        for (name, (lo, hi), min, max) in ranges {
            if !(lo.is_finite() && hi.is_finite() && min <= lo && lo <= hi && hi <= max) {
                return bad(format!(
                    "{name} range ({lo}, {hi}) must satisfy {min} <= lo <= hi <= {max}"
                ));
            }
        }
        if let Some(s) = t.patchy_enhancement {
            if !(s.is_finite() && (0.0..=4.0).contains(&s)) {
                return bad(format!("patchy_enhancement = {s} must be within [0, 4]"));
            }
        }
        if t.count.0 > t.count.1 || t.count.1 > 16 {
            return bad(format!("tumour count range {:?} must satisfy min <= max <= 16", t.count));
        }
        for (name, v) in [
            ("noise", self.noise),
            ("bias_field", self.bias_field),
            ("irregularity", t.irregularity),
        ] {
            if !(v.is_finite() && (0.0..=1.0).contains(&v)) {
                return bad(format!("{name} = {v} must be within [0, 1]"));
            }
        }
        Ok(())
    }
}
