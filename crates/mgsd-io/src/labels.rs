//! Label schemes, tumour regions and the conversions between them.
//!
//! Internally every label map uses the BraTS 2018–2021 scheme ([`LabelScheme::Brats2018`]):
//! 0 background, 1 necrotic / non-enhancing core (NCR/NET), 2 peritumoural oedema (ED),
//! 4 enhancing tumour (ET). Other schemes are converted on load and back on save, explicitly;
//! a value a scheme does not define is an error, never silently mapped.

use crate::error::{Error, Result};
use std::fmt;

/// Canonical label: background.
pub const BACKGROUND: u8 = 0;
/// Canonical label: necrotic and non-enhancing tumour core.
pub const NCR_NET: u8 = 1;
/// Canonical label: peritumoural oedema.
pub const EDEMA: u8 = 2;
/// Canonical label: enhancing tumour.
pub const ENHANCING: u8 = 4;

/// How a dataset numbers its tumour classes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LabelScheme {
    /// BraTS 2018–2021: 0 background, 1 NCR/NET, 2 ED, 4 ET. The canonical scheme.
    Brats2018,
    /// BraTS 2023 (glioma): 0 background, 1 NCR, 2 ED, 3 ET.
    Brats2023,
    /// Medical Segmentation Decathlon Task01: 0 background, 1 oedema, 2 non-enhancing tumour,
    /// 3 enhancing tumour.
    Msd,
}

impl LabelScheme {
    /// `(value in this scheme, canonical value)` for every class.
    pub fn table(self) -> &'static [(u8, u8)] {
        match self {
            LabelScheme::Brats2018 => &[(0, 0), (1, NCR_NET), (2, EDEMA), (4, ENHANCING)],
            LabelScheme::Brats2023 => &[(0, 0), (1, NCR_NET), (2, EDEMA), (3, ENHANCING)],
            LabelScheme::Msd => &[(0, 0), (1, EDEMA), (2, NCR_NET), (3, ENHANCING)],
        }
    }

    /// Human-readable name used in error messages and manifests.
    pub fn name(self) -> &'static str {
        match self {
            LabelScheme::Brats2018 => "BraTS 2018-2021 labels {0,1,2,4}",
            LabelScheme::Brats2023 => "BraTS 2023 labels {0,1,2,3}",
            LabelScheme::Msd => "MSD Task01 labels {0,1,2,3}",
        }
    }

    /// Converts a label map in this scheme to canonical labels.
    ///
    /// `values` are voxel values as read from disk (f32 after scaling); each must be a whole
    /// number this scheme defines. `context` names the source in errors.
    ///
    /// # Errors
    /// [`Error::UnknownLabel`] for the first undefined value (with its voxel count).
    pub fn to_canonical(self, values: &[f32], context: &str) -> Result<Vec<u8>> {
        let mut lut = [u8::MAX; 256];
        for &(from, to) in self.table() {
            lut[from as usize] = to;
        }
        let mut out = Vec::with_capacity(values.len());
        for &v in values {
            let mapped = if (0.0..256.0).contains(&v) && v.fract() == 0.0 {
                lut[v as usize]
            } else {
                u8::MAX
            };
            if mapped == u8::MAX {
                return Err(self.unknown(values, v, context));
            }
            out.push(mapped);
        }
        Ok(out)
    }

    /// Converts canonical labels to this scheme.
    ///
    /// # Errors
    /// [`Error::UnknownLabel`] if a value is not a canonical label.
    pub fn from_canonical(self, labels: &[u8], context: &str) -> Result<Vec<u8>> {
        let mut lut = [u8::MAX; 256];
        for &(to, from) in self.table() {
            lut[from as usize] = to;
        }
        labels
            .iter()
            .map(|&l| {
                let m = lut[l as usize];
                if m == u8::MAX {
                    let count = labels.iter().filter(|&&x| x == l).count();
                    Err(Error::UnknownLabel {
                        context: context.to_string(),
                        value: l as i64,
                        count,
                        scheme: LabelScheme::Brats2018.name(),
                    })
                } else {
                    Ok(m)
                }
            })
            .collect()
    }

    fn unknown(self, values: &[f32], v: f32, context: &str) -> Error {
        let count = values.iter().filter(|&&x| x == v || (x.is_nan() && v.is_nan())).count();
        Error::UnknownLabel {
            context: context.to_string(),
            value: if v.is_finite() { v.round() as i64 } else { i64::MIN },
            count,
            scheme: self.name(),
        }
    }
}

impl fmt::Display for LabelScheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The three nested regions BraTS scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Region {
    /// Whole tumour: labels {1, 2, 4}.
    WT,
    /// Tumour core: labels {1, 4}.
    TC,
    /// Enhancing tumour: label {4}.
    ET,
}

impl Region {
    /// WT, TC, ET — the order of every table.
    pub const ALL: [Region; 3] = [Region::WT, Region::TC, Region::ET];

    /// Whether a canonical label belongs to the region.
    #[inline]
    pub fn contains(self, label: u8) -> bool {
        match self {
            Region::WT => label == NCR_NET || label == EDEMA || label == ENHANCING,
            Region::TC => label == NCR_NET || label == ENHANCING,
            Region::ET => label == ENHANCING,
        }
    }

    /// The region's binary mask of a canonical label map.
    pub fn mask(self, labels: &[u8]) -> Vec<bool> {
        labels.iter().map(|&l| self.contains(l)).collect()
    }
}

impl fmt::Display for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// The canonical labels of the three sigmoid target channels of the reference network, in
/// channel order: ED (2), NCR/NET (1), ET (4).
pub const TARGET_CHANNEL_LABELS: [u8; 3] = [EDEMA, NCR_NET, ENHANCING];

/// One-hot targets `(3, n)` channel-major (ED, NCR/NET, ET) from canonical labels.
pub fn target_channels(labels: &[u8]) -> Vec<f32> {
    let n = labels.len();
    let mut out = vec![0.0; 3 * n];
    for (i, &l) in labels.iter().enumerate() {
        for (c, &t) in TARGET_CHANNEL_LABELS.iter().enumerate() {
            if l == t {
                out[c * n + i] = 1.0;
            }
        }
    }
    out
}

/// Canonical labels from the three sigmoid channels `(3, n)` (ED, NCR/NET, ET) of the network:
/// threshold 0.5; label 4 where ET, else 1 where NCR/NET, else 2 where ED, else 0 (MGSD-SPEC §1).
///
/// # Errors
/// If `probabilities.len()` is not a multiple of 3.
pub fn labels_from_channels(probabilities: &[f32]) -> Result<Vec<u8>> {
    if !probabilities.len().is_multiple_of(3) {
        return Err(Error::InvalidArgument(format!(
            "labels_from_channels needs 3 channels, got {} values",
            probabilities.len()
        )));
    }
    let n = probabilities.len() / 3;
    let (ed, rest) = probabilities.split_at(n);
    let (ncr, et) = rest.split_at(n);
    Ok((0..n)
        .map(|i| {
            if et[i] > 0.5 {
                ENHANCING
            } else if ncr[i] > 0.5 {
                NCR_NET
            } else if ed[i] > 0.5 {
                EDEMA
            } else {
                BACKGROUND
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SCHEMES: [LabelScheme; 3] =
        [LabelScheme::Brats2018, LabelScheme::Brats2023, LabelScheme::Msd];

    proptest! {
        #[test]
        fn remap_round_trips(idx in proptest::collection::vec(0usize..4, 0..200), s in 0usize..3) {
            let scheme = SCHEMES[s];
            let raw: Vec<f32> = idx.iter().map(|&i| scheme.table()[i].0 as f32).collect();
            let canonical = scheme.to_canonical(&raw, "test").unwrap();
            let back = scheme.from_canonical(&canonical, "test").unwrap();
            prop_assert_eq!(back.iter().map(|&v| v as f32).collect::<Vec<_>>(), raw);
        }

        #[test]
        fn channels_round_trip(idx in proptest::collection::vec(0usize..4, 1..200)) {
            let labels: Vec<u8> = idx.iter().map(|&i| [0, 1, 2, 4][i]).collect();
            prop_assert_eq!(labels_from_channels(&target_channels(&labels)).unwrap(), labels);
        }
    }

    #[test]
    fn unknown_labels_are_errors() {
        let err =
            LabelScheme::Brats2018.to_canonical(&[0.0, 3.0, 3.0, 1.0], "seg.nii.gz").unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("seg.nii.gz") && msg.contains("label value 3") && msg.contains("2 voxels"),
            "{msg}"
        );
        assert!(LabelScheme::Msd.to_canonical(&[4.0], "x").is_err());
        assert!(LabelScheme::Brats2018.to_canonical(&[1.5], "x").is_err());
        assert!(LabelScheme::Brats2018.to_canonical(&[f32::NAN], "x").is_err());
    }

    #[test]
    fn msd_mapping_is_explicit() {
        let c = LabelScheme::Msd.to_canonical(&[0.0, 1.0, 2.0, 3.0], "x").unwrap();
        assert_eq!(c, vec![0, EDEMA, NCR_NET, ENHANCING]);
        let c = LabelScheme::Brats2023.to_canonical(&[3.0], "x").unwrap();
        assert_eq!(c, vec![ENHANCING]);
    }

    #[test]
    fn regions_nest() {
        for l in [0u8, 1, 2, 4] {
            assert!(!Region::ET.contains(l) || Region::TC.contains(l));
            assert!(!Region::TC.contains(l) || Region::WT.contains(l));
        }
        assert!(!Region::WT.contains(0));
    }
}
