//! MRI modalities, sets of them, and the channel orders used by the literature.

use std::fmt;
use std::str::FromStr;

/// One of the four BraTS MRI sequences.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Modality {
    /// Native T1-weighted (BraTS 2023: `t1n`).
    T1,
    /// Post-contrast T1-weighted, gadolinium (BraTS 2023: `t1c`; MSD: `T1gd`). The only
    /// sequence on which the enhancing tumour is visible.
    T1ce,
    /// T2-weighted (BraTS 2023: `t2w`).
    T2,
    /// T2 fluid-attenuated inversion recovery (BraTS 2023: `t2f`). Shows oedema best.
    Flair,
}

impl Modality {
    /// All four, in declaration order (also the bit order of [`ModalitySet`]).
    pub const ALL: [Modality; 4] = [Modality::T1, Modality::T1ce, Modality::T2, Modality::Flair];

    /// Short lowercase name as in BraTS 2018–2021 file names: `t1`, `t1ce`, `t2`, `flair`.
    pub fn name(self) -> &'static str {
        match self {
            Modality::T1 => "t1",
            Modality::T1ce => "t1ce",
            Modality::T2 => "t2",
            Modality::Flair => "flair",
        }
    }

    /// Suffix used by BraTS 2023 file names (`-t1n`, `-t1c`, `-t2w`, `-t2f`).
    pub fn brats2023_suffix(self) -> &'static str {
        match self {
            Modality::T1 => "t1n",
            Modality::T1ce => "t1c",
            Modality::T2 => "t2w",
            Modality::Flair => "t2f",
        }
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

impl fmt::Display for Modality {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Modality::T1 => "T1",
            Modality::T1ce => "T1ce",
            Modality::T2 => "T2",
            Modality::Flair => "FLAIR",
        })
    }
}

impl FromStr for Modality {
    type Err = String;

    /// Accepts the names used by every supported layout, case-insensitively:
    /// `t1`/`t1n`/`t1w`, `t1ce`/`t1c`/`t1gd`, `t2`/`t2w`, `flair`/`t2f`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "t1" | "t1n" | "t1w" => Ok(Modality::T1),
            "t1ce" | "t1c" | "t1gd" | "t1-ce" => Ok(Modality::T1ce),
            "t2" | "t2w" => Ok(Modality::T2),
            "flair" | "t2f" => Ok(Modality::Flair),
            other => Err(format!(
                "unknown modality '{other}' (expected t1, t1ce, t2 or flair, or the BraTS 2023 names t1n, t1c, t2w, t2f)"
            )),
        }
    }
}

/// Input channel order of the ACN / SMU-Net / MGSD reference code: T1, T2, FLAIR, T1ce.
/// A model's channel `i` always holds `ACN_CHANNEL_ORDER[i]`.
pub const ACN_CHANNEL_ORDER: [Modality; 4] =
    [Modality::T1, Modality::T2, Modality::Flair, Modality::T1ce];

/// Channel order of the MSD Task01 4-D images (`dataset.json`: FLAIR, T1w, T1gd, T2w).
pub const MSD_CHANNEL_ORDER: [Modality; 4] =
    [Modality::Flair, Modality::T1, Modality::T1ce, Modality::T2];

/// A set of modalities, e.g. the sequences a patient has. 16 values; 15 non-empty.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct ModalitySet(u8);

impl ModalitySet {
    /// The empty set.
    pub const EMPTY: ModalitySet = ModalitySet(0);
    /// All four modalities.
    pub const FULL: ModalitySet = ModalitySet(0b1111);

    /// The set holding `modalities`.
    pub fn of(modalities: &[Modality]) -> Self {
        ModalitySet(modalities.iter().fold(0, |acc, m| acc | m.bit()))
    }

    /// Whether `m` is in the set.
    pub fn contains(self, m: Modality) -> bool {
        self.0 & m.bit() != 0
    }

    /// The set with `m` added.
    #[must_use]
    pub fn with(self, m: Modality) -> Self {
        ModalitySet(self.0 | m.bit())
    }

    /// Number of modalities in the set.
    pub fn len(self) -> usize {
        self.0.count_ones() as usize
    }

    /// True for the empty set.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The members, in [`Modality::ALL`] order.
    pub fn iter(self) -> impl Iterator<Item = Modality> {
        Modality::ALL.into_iter().filter(move |m| self.contains(*m))
    }

    /// The 0/1 channel mask `r` for a model whose channels follow `order`.
    pub fn channel_mask(self, order: &[Modality; 4]) -> [f32; 4] {
        order.map(|m| if self.contains(m) { 1.0 } else { 0.0 })
    }

    /// The set described by a 0/1 channel mask in `order` (non-zero = present).
    pub fn from_channel_mask(mask: &[f32; 4], order: &[Modality; 4]) -> Self {
        ModalitySet::of(
            &order.iter().zip(mask).filter(|(_, &r)| r != 0.0).map(|(&m, _)| m).collect::<Vec<_>>(),
        )
    }

    /// The 15 non-empty subsets in the order of the literature's missing-modality tables
    /// (RFNet, mmFormer, MGSD): first the four singles, then pairs, triples and the full set,
    /// each group ordered by FLAIR, T1ce, T1, T2 priority as those tables print them.
    pub fn all_nonempty() -> [ModalitySet; 15] {
        use Modality::*;
        let s = ModalitySet::of;
        [
            s(&[Flair]),
            s(&[T1ce]),
            s(&[T1]),
            s(&[T2]),
            s(&[Flair, T1ce]),
            s(&[Flair, T1]),
            s(&[Flair, T2]),
            s(&[T1ce, T1]),
            s(&[T1ce, T2]),
            s(&[T1, T2]),
            s(&[Flair, T1ce, T1]),
            s(&[Flair, T1ce, T2]),
            s(&[Flair, T1, T2]),
            s(&[T1ce, T1, T2]),
            ModalitySet::FULL,
        ]
    }

    /// Raw bits (bit `i` = `Modality::ALL[i]`).
    pub fn bits(self) -> u8 {
        self.0
    }
}

impl fmt::Debug for ModalitySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{{{self}}}")
    }
}

impl fmt::Display for ModalitySet {
    /// `FLAIR+T1ce`, `T1`, `none` — stable names used in tables and file names.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("none");
        }
        // Print in the literature's FLAIR, T1ce, T1, T2 order.
        let order = [Modality::Flair, Modality::T1ce, Modality::T1, Modality::T2];
        let names: Vec<String> =
            order.iter().filter(|m| self.contains(**m)).map(|m| m.to_string()).collect();
        f.write_str(&names.join("+"))
    }
}

impl FromStr for ModalitySet {
    type Err = String;

    /// Parses `flair+t1ce`, `t1,t2`, `all`/`full`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("all") || s.eq_ignore_ascii_case("full") {
            return Ok(ModalitySet::FULL);
        }
        let mut set = ModalitySet::EMPTY;
        for part in s.split(['+', ',', ' ']).filter(|p| !p.is_empty()) {
            set = set.with(part.parse()?);
        }
        if set.is_empty() {
            return Err(format!("'{s}' names no modality"));
        }
        Ok(set)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifteen_distinct_nonempty_subsets() {
        let all = ModalitySet::all_nonempty();
        let mut bits: Vec<u8> = all.iter().map(|s| s.bits()).collect();
        bits.sort_unstable();
        bits.dedup();
        assert_eq!(bits.len(), 15);
        assert!(!bits.contains(&0));
    }

    #[test]
    fn display_parse_round_trip() {
        for s in ModalitySet::all_nonempty() {
            assert_eq!(s.to_string().parse::<ModalitySet>().unwrap(), s);
        }
    }

    #[test]
    fn channel_mask_round_trip() {
        for s in ModalitySet::all_nonempty() {
            let mask = s.channel_mask(&ACN_CHANNEL_ORDER);
            assert_eq!(ModalitySet::from_channel_mask(&mask, &ACN_CHANNEL_ORDER), s);
        }
        let t1ce_only = ModalitySet::of(&[Modality::T1ce]);
        assert_eq!(t1ce_only.channel_mask(&ACN_CHANNEL_ORDER), [0.0, 0.0, 0.0, 1.0]);
    }

    #[test]
    fn names_parse() {
        assert_eq!("t1n".parse::<Modality>().unwrap(), Modality::T1);
        assert_eq!("T1Gd".parse::<Modality>().unwrap(), Modality::T1ce);
        assert_eq!("t2f".parse::<Modality>().unwrap(), Modality::Flair);
        assert!("dwi".parse::<Modality>().is_err());
    }
}
