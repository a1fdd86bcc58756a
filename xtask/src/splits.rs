//! Train/validation/test splits: seeded k-fold over sorted case ids, or the literature's
//! fixed lists, written once to JSON and reused.
//!
//! # JSON (format version 1)
//! ```json
//! {
//!   "format_version": 1,
//!   "dataset": "brats2018",
//!   "method": { "kfold": { "k": 5, "seed": 0, "val_fraction": 0.2 } },
//!         // or { "list": { "name": "brats2018-rfnet", "split": 1, "provenance": "…" } }
//!   "folds": [ { "train": ["…"], "val": ["…"], "test": ["…"] } ]
//! }
//! ```
//! k-fold: fold `i` holds out part `i` as its **test** set; its validation set (which picks
//! `best.safetensors`) is carved from the other parts, `val_fraction` of them drawn by a seeded
//! shuffle, and the rest train. So no fold is ever scored on the cases that chose its
//! checkpoint, and every case is tested exactly once over the k folds. Ids inside each list
//! are sorted. The shuffle is a Fisher–Yates driven by ChaCha8 words through a
//! multiply-shift (not `rand`'s `shuffle`, whose output may change between `rand` versions),
//! so a seed gives the same split on every platform and version.

use anyhow::{bail, Context, Result};
use rand_chacha::rand_core::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The split file format this code writes.
pub const FORMAT_VERSION: u32 = 1;

/// Provenance of the embedded lists (also in `data/splits/PROVENANCE.md`).
pub const LIST_PROVENANCE: &str =
    "the RFNet data archive, as republished in the M2FTrans and DeMoSeg repositories";

/// A split file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Splits {
    /// Always [`FORMAT_VERSION`] when written by this code.
    pub format_version: u32,
    /// The manifest's dataset name.
    pub dataset: String,
    /// How the folds were made.
    pub method: Method,
    /// One entry per fold (one for a fixed list).
    pub folds: Vec<Fold>,
}

/// How a split was made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// Seeded k-fold over the sorted case ids.
    Kfold {
        /// Number of folds.
        k: usize,
        /// ChaCha8 seed.
        seed: u64,
        /// Fraction of each fold's non-test cases held out for validation (absent in files
        /// written before folds had a test part: 0).
        #[serde(default)]
        val_fraction: f64,
    },
    /// A fixed list from the literature.
    List {
        /// `brats2018-rfnet`, `brats2020-rfnet` or `brats2021-m2ftrans`.
        name: String,
        /// Split number (1–3 for `brats2018-rfnet`, else 1).
        split: u32,
        /// Where the list comes from.
        provenance: String,
    },
}

/// One fold: disjoint sorted lists of case ids.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fold {
    /// Training cases.
    pub train: Vec<String>,
    /// Validation cases (checkpoint selection).
    pub val: Vec<String>,
    /// Held-out test cases (the reported table).
    pub test: Vec<String>,
}

/// A fixed list shipped with the project: `(name, split, train, val, test)`.
type Embedded = (&'static str, u32, &'static str, &'static str, &'static str);

const LISTS: [Embedded; 5] = [
    (
        "brats2018-rfnet",
        1,
        include_str!("../../data/splits/brats2018-rfnet/train1.txt"),
        include_str!("../../data/splits/brats2018-rfnet/val1.txt"),
        include_str!("../../data/splits/brats2018-rfnet/test1.txt"),
    ),
    (
        "brats2018-rfnet",
        2,
        include_str!("../../data/splits/brats2018-rfnet/train2.txt"),
        include_str!("../../data/splits/brats2018-rfnet/val2.txt"),
        include_str!("../../data/splits/brats2018-rfnet/test2.txt"),
    ),
    (
        "brats2018-rfnet",
        3,
        include_str!("../../data/splits/brats2018-rfnet/train3.txt"),
        include_str!("../../data/splits/brats2018-rfnet/val3.txt"),
        include_str!("../../data/splits/brats2018-rfnet/test3.txt"),
    ),
    (
        "brats2020-rfnet",
        1,
        include_str!("../../data/splits/brats2020-rfnet/train.txt"),
        include_str!("../../data/splits/brats2020-rfnet/val.txt"),
        include_str!("../../data/splits/brats2020-rfnet/test.txt"),
    ),
    (
        "brats2021-m2ftrans",
        1,
        include_str!("../../data/splits/brats2021-m2ftrans/train.txt"),
        include_str!("../../data/splits/brats2021-m2ftrans/val.txt"),
        include_str!("../../data/splits/brats2021-m2ftrans/test.txt"),
    ),
];

/// The names accepted by `--list`, for help and error messages.
pub fn list_names() -> Vec<String> {
    LISTS.iter().map(|(name, split, ..)| format!("{name}:{split}")).collect()
}

/// Seeded k-fold over `ids` (sorted first, duplicates removed): fold `i` tests on part `i`
/// and validates on `val_fraction` of the remaining cases (module docs).
///
/// # Errors
/// If `k < 2`, there are fewer distinct ids than folds, `val_fraction` is outside `[0, 1)`, or
/// a fold would be left without a training case.
pub fn kfold(
    dataset: &str,
    ids: &[String],
    k: usize,
    seed: u64,
    val_fraction: f64,
) -> Result<Splits> {
    let sorted: Vec<String> = ids.iter().cloned().collect::<BTreeSet<_>>().into_iter().collect();
    if k < 2 {
        bail!("--k must be at least 2 (got {k})");
    }
    if sorted.len() < k {
        bail!("cannot make {k} folds from {} cases", sorted.len());
    }
    if !(0.0..1.0).contains(&val_fraction) {
        bail!("--val-fraction must lie in [0, 1) (got {val_fraction})");
    }
    let order = shuffled_indices(sorted.len(), seed);
    let mut parts: Vec<Vec<String>> = vec![Vec::new(); k];
    for (position, &index) in order.iter().enumerate() {
        parts[position % k].push(sorted[index].clone());
    }
    for part in &mut parts {
        part.sort();
    }
    let folds = (0..k)
        .map(|i| {
            let rest: Vec<String> = parts
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .flat_map(|(_, p)| p.iter().cloned())
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            let n_val = (rest.len() as f64 * val_fraction).round() as usize;
            if n_val >= rest.len() {
                bail!(
                    "fold {i}: {} non-test cases leave none to train on with --val-fraction {val_fraction}",
                    rest.len()
                );
            }
            // Each fold draws its own validation cases, from a seed derived from (seed, fold).
            let pick = shuffled_indices(rest.len(), fold_seed(seed, i));
            let val_idx: BTreeSet<usize> = pick[..n_val].iter().copied().collect();
            let (mut val, mut train) = (Vec::new(), Vec::new());
            for (j, id) in rest.into_iter().enumerate() {
                if val_idx.contains(&j) {
                    val.push(id);
                } else {
                    train.push(id);
                }
            }
            train.sort();
            val.sort();
            Ok(Fold { train, val, test: parts[i].clone() })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Splits {
        format_version: FORMAT_VERSION,
        dataset: dataset.to_string(),
        method: Method::Kfold { k, seed, val_fraction },
        folds,
    })
}

/// The seed of fold `fold`'s validation draw (SplitMix64 of the two; never equal to `seed`).
fn fold_seed(seed: u64, fold: usize) -> u64 {
    let mut z = seed ^ (fold as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// `0..n` shuffled by Fisher–Yates with ChaCha8(`seed`); stable across versions.
fn shuffled_indices(n: usize, seed: u64) -> Vec<usize> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        // Multiply-shift maps a 64-bit word onto 0..=i (bias < 2^-40 for any dataset size).
        let j = ((u128::from(rng.next_u64()) * (i as u128 + 1)) >> 64) as usize;
        order.swap(i, j);
    }
    order
}

/// A fixed list by `name[:split]` (e.g. `brats2018-rfnet:1`, `brats2020-rfnet`), with its ids
/// matched against `manifest_ids`.
///
/// List ids are matched exactly, or after dropping the `HG_`/`LG_` grade prefix the RFNet
/// BraTS 2020 list uses (`HG_BraTS20_Training_002` → `BraTS20_Training_002`); the JSON holds
/// the manifest's ids. Ids not in the manifest are an error that lists them, unless
/// `allow_missing`, which drops them with a warning.
///
/// # Errors
/// Unknown list name, ids missing from the manifest, or a list that repeats an id.
pub fn fixed_list(
    dataset: &str,
    spec: &str,
    manifest_ids: &[String],
    allow_missing: bool,
) -> Result<Splits> {
    let (name, split) = match spec.split_once(':') {
        Some((n, s)) => (
            n,
            s.parse::<u32>()
                .with_context(|| format!("'{s}' in --list {spec} is not a split number"))?,
        ),
        None => (spec, 1),
    };
    let Some(&(name, split, train, val, test)) =
        LISTS.iter().find(|(n, s, ..)| *n == name && *s == split)
    else {
        bail!("unknown list '{spec}'; known lists: {}", list_names().join(", "));
    };
    let known: BTreeSet<&str> = manifest_ids.iter().map(String::as_str).collect();
    let mut missing = Vec::new();
    let mut seen = BTreeMap::new();
    let mut resolve = |part: &str, text: &str| -> Result<Vec<String>> {
        let mut out = Vec::new();
        for id in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let stripped = id.strip_prefix("HG_").or_else(|| id.strip_prefix("LG_"));
            let found =
                if known.contains(id) { Some(id) } else { stripped.filter(|s| known.contains(s)) };
            match found {
                Some(found) => {
                    if let Some(previous) = seen.insert(found.to_string(), part.to_string()) {
                        bail!(
                            "list {name}:{split} names case {found} twice ({previous} and {part})"
                        );
                    }
                    out.push(found.to_string());
                }
                None => missing.push(format!("{id} ({part})")),
            }
        }
        out.sort();
        Ok(out)
    };
    let fold = Fold {
        train: resolve("train", train)?,
        val: resolve("val", val)?,
        test: resolve("test", test)?,
    };
    if !missing.is_empty() {
        let shown: Vec<&str> = missing.iter().take(20).map(String::as_str).collect();
        let more = if missing.len() > 20 {
            format!(", … and {} more", missing.len() - 20)
        } else {
            String::new()
        };
        let message = format!(
            "{} of the ids in list {name}:{split} are not in the manifest of '{dataset}': {}{more}",
            missing.len(),
            shown.join(", ")
        );
        if !allow_missing {
            bail!("{message}\n(is this the right dataset? pass --allow-missing to write the split without them)");
        }
        tracing::warn!("{message}; they are left out");
    }
    Ok(Splits {
        format_version: FORMAT_VERSION,
        dataset: dataset.to_string(),
        method: Method::List {
            name: name.to_string(),
            split,
            provenance: LIST_PROVENANCE.to_string(),
        },
        folds: vec![fold],
    })
}

/// Writes `splits` to `out` as pretty JSON; refuses to replace an existing file unless `force`.
///
/// # Errors
/// If `out` exists and `force` is false, or it cannot be written.
pub fn write(splits: &Splits, out: &Path, force: bool) -> Result<()> {
    if out.exists() && !force {
        bail!(
            "{} exists; splits are written once and reused. Pass --force to replace it.",
            out.display()
        );
    }
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let json = serde_json::to_string_pretty(splits).context("serialising the splits")?;
    crate::manifest::write_atomically(out, format!("{json}\n").as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("case_{i:03}")).collect()
    }

    proptest! {
        #[test]
        fn kfold_is_disjoint_complete_and_deterministic(n in 2usize..120, k in 2usize..8, seed in any::<u64>()) {
            prop_assume!(k <= n);
            let all = ids(n);
            let a = kfold("d", &all, k, seed, 0.2).unwrap();
            let b = kfold("d", &all.iter().rev().cloned().collect::<Vec<_>>(), k, seed, 0.2).unwrap();
            prop_assert_eq!(serde_json::to_string(&a).unwrap(), serde_json::to_string(&b).unwrap());
            prop_assert_eq!(a.folds.len(), k);
            let mut tests: Vec<String> = a.folds.iter().flat_map(|f| f.test.iter().cloned()).collect();
            tests.sort();
            prop_assert_eq!(&tests, &all); // every case tested exactly once
            for fold in &a.folds {
                let train: BTreeSet<&String> = fold.train.iter().collect();
                let val: BTreeSet<&String> = fold.val.iter().collect();
                prop_assert!(fold.test.iter().all(|t| !train.contains(t) && !val.contains(t)));
                prop_assert!(fold.val.iter().all(|v| !train.contains(v)));
                prop_assert_eq!(fold.train.len() + fold.val.len() + fold.test.len(), n);
                prop_assert!(fold.test.len() == n / k || fold.test.len() == n / k + 1);
                let rest = n - fold.test.len();
                prop_assert_eq!(fold.val.len(), (rest as f64 * 0.2).round() as usize);
                prop_assert!(!fold.train.is_empty());
            }
        }
    }

    #[test]
    fn kfold_is_value_stable() {
        // Guards the published splits: a change here changes every k-fold JSON ever written.
        let s = kfold("d", &ids(10), 3, 0, 0.2).unwrap();
        let tests: Vec<Vec<&str>> =
            s.folds.iter().map(|f| f.test.iter().map(String::as_str).collect()).collect();
        assert_eq!(
            tests,
            [
                vec!["case_000", "case_003", "case_006", "case_007"],
                vec!["case_001", "case_002", "case_005"],
                vec!["case_004", "case_008", "case_009"],
            ]
        );
    }

    #[test]
    fn different_seeds_differ() {
        let all = ids(50);
        assert_ne!(kfold("d", &all, 5, 0, 0.2).unwrap(), kfold("d", &all, 5, 1, 0.2).unwrap());
    }

    #[test]
    fn kfold_rejects_bad_k() {
        assert!(kfold("d", &ids(3), 1, 0, 0.2).is_err());
        assert!(kfold("d", &ids(3), 4, 0, 0.2).is_err());
        assert!(kfold("d", &ids(10), 2, 0, 1.0).is_err());
        assert!(kfold("d", &ids(10), 2, 0, -0.1).is_err());
    }

    #[test]
    fn embedded_lists_have_the_published_sizes_and_are_disjoint() {
        for (name, split, train, val, test, sizes) in [
            ("brats2018-rfnet", 1, LISTS[0].2, LISTS[0].3, LISTS[0].4, (199, 29, 57)),
            ("brats2018-rfnet", 2, LISTS[1].2, LISTS[1].3, LISTS[1].4, (199, 29, 57)),
            ("brats2018-rfnet", 3, LISTS[2].2, LISTS[2].3, LISTS[2].4, (199, 29, 57)),
            ("brats2020-rfnet", 1, LISTS[3].2, LISTS[3].3, LISTS[3].4, (219, 50, 100)),
            ("brats2021-m2ftrans", 1, LISTS[4].2, LISTS[4].3, LISTS[4].4, (876, 125, 250)),
        ] {
            let count = |t: &str| t.lines().filter(|l| !l.trim().is_empty()).count();
            assert_eq!((count(train), count(val), count(test)), sizes, "{name}:{split}");
            let all: Vec<String> = [train, val, test]
                .iter()
                .flat_map(|t| t.lines().map(str::trim).filter(|l| !l.is_empty()))
                .map(|id| id.trim_start_matches("HG_").trim_start_matches("LG_").to_string())
                .collect();
            let manifest_ids = all.clone();
            let spec = format!("{name}:{split}");
            let splits = fixed_list("d", &spec, &manifest_ids, false).unwrap();
            let fold = &splits.folds[0];
            assert_eq!((fold.train.len(), fold.val.len(), fold.test.len()), sizes, "{spec}");
        }
    }

    #[test]
    fn list_reports_missing_ids() {
        let err = fixed_list("msd", "brats2020-rfnet", &ids(10), false).unwrap_err().to_string();
        assert!(
            err.contains("369 of the ids") && err.contains("HG_BraTS20_Training_002 (train)"),
            "{err}"
        );
        let partial =
            fixed_list("msd", "brats2020-rfnet", &["BraTS20_Training_002".to_string()], true)
                .unwrap();
        assert_eq!(partial.folds[0].train, vec!["BraTS20_Training_002".to_string()]);
        assert!(fixed_list("d", "brats2018-rfnet:7", &ids(3), true).is_err());
        assert!(fixed_list("d", "nope", &ids(3), true).is_err());
        assert!(fixed_list("d", "brats2018-rfnet:x", &ids(3), true).is_err());
    }

    #[test]
    fn write_refuses_to_overwrite_without_force() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("sub/s.json");
        let s = kfold("d", &ids(10), 2, 0, 0.2).unwrap();
        write(&s, &out, false).unwrap();
        let err = write(&s, &out, false).unwrap_err().to_string();
        assert!(err.contains("--force"), "{err}");
        write(&s, &out, true).unwrap();
        let back: Splits = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
        assert_eq!(back, s);
    }
}
