//! Data: where the cases come from (manifest, folder, synthetic), how they split, how they are
//! loaded (with an in-memory or on-disk cache of decoded cases) and the background loader that
//! preprocesses and augments training samples.
//!
//! # Determinism
//! Sample `i` of epoch `e` is the case `order_e[i mod n]` (a seeded shuffle of the training
//! cases per epoch) augmented with an RNG seeded by `(seed, e, i)`. Worker `w` of `W` prepares
//! the samples `i ≡ w (mod W)` and sends them into its own bounded channel; the trainer reads
//! the channels round-robin, so the sequence is identical whatever the thread timing, and a run
//! resumed at sample `i` sees exactly what the uninterrupted run saw.
//!
//! # Cache
//! Decoding `.nii.gz` costs far more than preprocessing (gzip inflate of four 240 × 240 × 155
//! volumes). Small datasets are kept decoded in memory; larger ones, when `[data] cache` is set,
//! are written once as raw little-endian f32/u8 files (`<id>.mgsdcache`: one JSON header line,
//! then the voxels), invalidated when a source file's size or modification time changes.

use anyhow::{bail, Context, Result};
use mgsd_io::preprocess::{CaseView, Pipeline};
use mgsd_io::{Case, CaseFiles, ImageSource, LabelScheme, Modality, Volume};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// SplitMix64 finaliser: mixes `b` into `a`. Used to derive every seed of a run from the master
/// seed, so no RNG state has to be saved.
pub fn mix(a: u64, b: u64) -> u64 {
    let mut z = a ^ b.wrapping_mul(0x9e37_79b9_7f4a_7c15).wrapping_add(0x6a09_e667_f3bc_c909);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Seed streams (the second argument of [`mix`]) used by the trainer.
pub mod stream {
    /// Per-epoch shuffle of the training cases.
    pub const SHUFFLE: u64 = 1;
    /// Per-sample augmentation.
    pub const AUGMENT: u64 = 2;
    /// Per-step modality mask.
    pub const MASK: u64 = 3;
    /// Dropout seeds.
    pub const DROPOUT: u64 = 4;
    /// Train/validation split when no split file is given.
    pub const SPLIT: u64 = 5;
}

/// Fisher–Yates shuffle driven by `rng` (stable across `rand` versions' `shuffle` changes).
pub fn shuffle<T>(v: &mut [T], rng: &mut ChaCha8Rng) {
    for i in (1..v.len()).rev() {
        let j = rng.random_range(0..=i as u64) as usize;
        v.swap(i, j);
    }
}

/// The cases of a run, split.
#[derive(Debug, Clone, Default)]
pub struct Splits {
    /// Training cases.
    pub train: Vec<CaseFiles>,
    /// Validation cases (every `val_every` epochs, best checkpoint).
    pub val: Vec<CaseFiles>,
    /// Held-out test cases (the final table); never used for training or checkpoint
    /// selection, and empty when the split has no test part (then nothing is reported as a
    /// test result).
    pub test: Vec<CaseFiles>,
}

impl Splits {
    /// The cases of `part` (`train`, `val` or `test`).
    ///
    /// # Errors
    /// An unknown part name, or a part with no case (`origin` names the split in the message).
    pub fn part(&self, part: &str, origin: &str) -> Result<&[CaseFiles]> {
        let cases = match part {
            "train" => &self.train,
            "val" => &self.val,
            "test" => &self.test,
            other => bail!("--part {other}: expected test, val or train"),
        };
        if cases.is_empty() {
            bail!(
                "{origin} has no {part} case{}",
                if part == "test" {
                    "; split files written before folds had a held-out test part list none — \
                     rewrite it with `cargo xtask splits` (k-fold now holds out a test fold), or \
                     evaluate `--part val` knowingly (those cases chose best.safetensors)"
                } else {
                    ""
                }
            );
        }
        Ok(cases)
    }
}

/// Minimal mirror of the manifest `cargo xtask fetch-brats` writes (`xtask/src/manifest.rs`,
/// format version 1); unknown fields are ignored.
#[derive(Debug, serde::Deserialize)]
struct Manifest {
    format_version: u32,
    label_scheme: LabelScheme,
    #[serde(default)]
    root: Option<PathBuf>,
    cases: Vec<ManifestCase>,
}

#[derive(Debug, serde::Deserialize)]
struct ManifestCase {
    id: String,
    images: ManifestImages,
    label: Option<FileRecord>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
enum ManifestImages {
    PerModality(BTreeMap<Modality, FileRecord>),
    Stacked { file: FileRecord, order: Vec<Modality> },
}

#[derive(Debug, serde::Deserialize)]
struct FileRecord {
    path: String,
}

/// Reads a dataset manifest into case files.
///
/// # Errors
/// Unreadable or invalid JSON, an unsupported format version — naming the file.
pub fn read_manifest(path: &Path) -> Result<Vec<CaseFiles>> {
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "reading dataset manifest {} (run `cargo xtask fetch-brats` first?)",
            path.display()
        )
    })?;
    let m: Manifest = serde_json::from_str(&text)
        .with_context(|| format!("{}: not a valid dataset manifest", path.display()))?;
    if m.format_version != 1 {
        bail!(
            "{}: manifest format version {} is not supported (expected 1)",
            path.display(),
            m.format_version
        );
    }
    let root = m
        .root
        .clone()
        .unwrap_or_else(|| path.parent().map_or_else(|| PathBuf::from("."), Path::to_path_buf));
    let mut cases: Vec<CaseFiles> = m
        .cases
        .into_iter()
        .map(|c| CaseFiles {
            id: c.id,
            images: match c.images {
                ManifestImages::PerModality(files) => ImageSource::PerModality(
                    files.into_iter().map(|(k, f)| (k, root.join(f.path))).collect(),
                ),
                ManifestImages::Stacked { file, order } => {
                    ImageSource::Stacked { path: root.join(file.path), order }
                }
            },
            label: c.label.map(|f| root.join(f.path)),
            scheme: m.label_scheme,
        })
        .collect();
    cases.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(cases)
}

/// A split file written by `cargo xtask splits` (format version 1): `folds[k].train/val/test`.
#[derive(Debug, serde::Deserialize)]
struct SplitFile {
    format_version: u32,
    folds: Vec<Fold>,
}

#[derive(Debug, serde::Deserialize)]
struct Fold {
    train: Vec<String>,
    #[serde(default)]
    val: Vec<String>,
    #[serde(default)]
    test: Vec<String>,
}

/// Splits `cases` with a split file (JSON from `cargo xtask splits`, fold `fold`). Ids are
/// matched exactly, or without an RFNet `HG_`/`LG_` grade prefix.
///
/// # Errors
/// Unreadable file, unknown fold, ids not in the dataset (listing a few) — naming the file.
pub fn split_with_file(cases: &[CaseFiles], path: &Path, fold: usize) -> Result<Splits> {
    let text = std::fs::read_to_string(path).with_context(|| {
        format!("reading split file {} (write it with `cargo xtask splits`)", path.display())
    })?;
    let s: SplitFile = serde_json::from_str(&text)
        .with_context(|| format!("{}: not a valid split file", path.display()))?;
    if s.format_version != 1 {
        bail!(
            "{}: split format version {} is not supported (expected 1)",
            path.display(),
            s.format_version
        );
    }
    let Some(f) = s.folds.get(fold) else {
        bail!(
            "{}: fold {fold} does not exist (the file has {} folds)",
            path.display(),
            s.folds.len()
        );
    };
    let by_id: HashMap<&str, &CaseFiles> = cases.iter().map(|c| (c.id.as_str(), c)).collect();
    let pick = |ids: &[String], role: &str| -> Result<Vec<CaseFiles>> {
        let mut out = Vec::new();
        let mut missing = Vec::new();
        for id in ids {
            let bare = id.strip_prefix("HG_").or_else(|| id.strip_prefix("LG_")).unwrap_or(id);
            match by_id.get(id.as_str()).or_else(|| by_id.get(bare)) {
                Some(c) => out.push((*c).clone()),
                None => missing.push(id.as_str()),
            }
        }
        if !missing.is_empty() {
            bail!(
                "{}: {} {role} case(s) of fold {fold} are not in the dataset (e.g. {}); is this the split of another dataset?",
                path.display(),
                missing.len(),
                missing.iter().take(3).copied().collect::<Vec<_>>().join(", ")
            );
        }
        Ok(out)
    };
    let train = pick(&f.train, "train")?;
    let val = pick(&f.val, "val")?;
    let test = pick(&f.test, "test")?;
    if train.is_empty() {
        bail!("{}: fold {fold} has no training case", path.display());
    }
    Ok(Splits { train, val, test })
}

/// Splits sorted `cases` without a split file: a seeded shuffle; `test_fraction` of the cases
/// are held out for testing, `val_fraction` for validation, the rest train (at least one).
pub fn split_random(
    cases: &[CaseFiles],
    val_fraction: f64,
    test_fraction: f64,
    seed: u64,
) -> Splits {
    let mut idx: Vec<usize> = (0..cases.len()).collect();
    shuffle(&mut idx, &mut ChaCha8Rng::seed_from_u64(mix(seed, stream::SPLIT)));
    let n = cases.len();
    let count = |f: f64| (n as f64 * f).round() as usize;
    let n_test = count(test_fraction).min(n.saturating_sub(1));
    let n_val = count(val_fraction).min(n.saturating_sub(1 + n_test));
    let part = |r: std::ops::Range<usize>| {
        let mut v: Vec<CaseFiles> = idx[r].iter().map(|&i| cases[i].clone()).collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    };
    Splits {
        test: part(0..n_test),
        val: part(n_test..n_test + n_val),
        train: part(n_test + n_val..n),
    }
}

/// Loads cases, through an in-memory store and/or an on-disk cache of decoded volumes.
#[derive(Debug)]
pub struct CaseStore {
    memory: Option<Mutex<HashMap<String, Arc<Case>>>>,
    disk: Option<PathBuf>,
}

/// Version of the `.mgsdcache` header.
const CACHE_VERSION: u32 = 1;

#[derive(Debug, serde::Serialize, serde::Deserialize, PartialEq)]
struct CacheHeader {
    version: u32,
    id: String,
    shape: [usize; 3],
    spacing: [f32; 3],
    affine: [[f64; 4]; 4],
    modalities: Vec<Modality>,
    has_label: bool,
    sources: Vec<(PathBuf, u64, u128)>,
}

impl CaseStore {
    /// A store keeping decoded cases in memory when `in_memory`, and caching them under
    /// `disk` when given.
    pub fn new(in_memory: bool, disk: Option<PathBuf>) -> Self {
        CaseStore { memory: in_memory.then(|| Mutex::new(HashMap::new())), disk }
    }

    /// The decoded case (from memory, the disk cache, or the files).
    ///
    /// # Errors
    /// Unreadable or invalid files, naming the case and file.
    pub fn load(&self, files: &CaseFiles) -> Result<Arc<Case>> {
        if let Some(mem) = &self.memory {
            if let Some(c) =
                mem.lock().map_err(|_| anyhow::anyhow!("case store lock poisoned"))?.get(&files.id)
            {
                return Ok(c.clone());
            }
        }
        let case = Arc::new(self.load_uncached(files)?);
        if let Some(mem) = &self.memory {
            mem.lock()
                .map_err(|_| anyhow::anyhow!("case store lock poisoned"))?
                .insert(files.id.clone(), case.clone());
        }
        Ok(case)
    }

    fn load_uncached(&self, files: &CaseFiles) -> Result<Case> {
        let Some(dir) = &self.disk else {
            return files.load().with_context(|| format!("loading case {}", files.id));
        };
        let sources = source_stamps(files)?;
        let path = dir.join(format!("{}.mgsdcache", sanitise(&files.id)));
        if let Ok(c) = read_cache(&path, &files.id, &sources) {
            return Ok(c);
        }
        let case = files.load().with_context(|| format!("loading case {}", files.id))?;
        if let Err(e) = write_cache(&path, &case, sources) {
            tracing::warn!("could not write the case cache {}: {e:#}", path.display());
        }
        Ok(case)
    }
}

fn sanitise(id: &str) -> String {
    id.chars()
        .map(
            |c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' { c } else { '_' },
        )
        .collect()
}

fn source_stamps(files: &CaseFiles) -> Result<Vec<(PathBuf, u64, u128)>> {
    files
        .files()
        .into_iter()
        .map(|p| {
            let md = std::fs::metadata(p)
                .with_context(|| format!("case {}: {} is missing", files.id, p.display()))?;
            let mtime = md
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos());
            Ok((p.to_path_buf(), md.len(), mtime))
        })
        .collect()
}

fn write_cache(path: &Path, case: &Case, sources: Vec<(PathBuf, u64, u128)>) -> Result<()> {
    let grid = case.grid().context("case without images")?;
    let header = CacheHeader {
        version: CACHE_VERSION,
        id: case.id.clone(),
        shape: grid.shape,
        spacing: grid.spacing,
        affine: grid.affine,
        modalities: case.images.keys().copied().collect(),
        has_label: case.label.is_some(),
        sources,
    };
    let mut bytes = serde_json::to_vec(&header)?;
    bytes.push(b'\n');
    for v in case.images.values() {
        for x in &v.data {
            bytes.extend_from_slice(&x.to_le_bytes());
        }
    }
    if let Some(l) = &case.label {
        bytes.extend_from_slice(l);
    }
    crate::checkpoint::write_atomically(path, &bytes)
}

fn read_cache(path: &Path, id: &str, sources: &[(PathBuf, u64, u128)]) -> Result<Case> {
    let f = std::fs::File::open(path)?;
    let mut r = BufReader::new(f);
    let mut line = String::new();
    r.read_line(&mut line)?;
    let h: CacheHeader = serde_json::from_str(&line)?;
    if h.version != CACHE_VERSION || h.id != id || h.sources != sources {
        bail!("stale cache entry");
    }
    let n: usize = h.shape.iter().product();
    let mut images = BTreeMap::new();
    let mut buf = vec![0u8; n * 4];
    for m in &h.modalities {
        r.read_exact(&mut buf)?;
        let data: Vec<f32> =
            buf.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        images.insert(
            *m,
            Volume { data, shape: h.shape, spacing: h.spacing, affine: h.affine, source: None },
        );
    }
    let label = if h.has_label {
        let mut l = vec![0u8; n];
        r.read_exact(&mut l)?;
        Some(l)
    } else {
        None
    };
    Ok(Case { id: h.id, images, label })
}

/// One preprocessed, augmented training sample.
#[derive(Debug, Clone)]
pub struct TrainSample {
    /// Case id.
    pub id: String,
    /// `(4, D, H, W)` in ACN channel order.
    pub image: Vec<f32>,
    /// Canonical labels `(D, H, W)`.
    pub labels: Vec<u8>,
}

/// Everything needed to prepare training samples.
#[derive(Debug)]
pub struct SampleSource {
    /// Case loader.
    pub store: Arc<CaseStore>,
    /// Training cases.
    pub cases: Vec<CaseFiles>,
    /// Preprocessing recipe.
    pub pipeline: Pipeline,
    /// Master seed.
    pub seed: u64,
}

impl SampleSource {
    /// Prepares sample `index` of `epoch`: the case `order[index % n]`, augmented with the RNG
    /// of `(seed, epoch, index)`. Pure: the same arguments give the same sample.
    ///
    /// # Errors
    /// Loading or preprocessing errors, naming the case.
    pub fn prepare(&self, epoch: usize, index: usize) -> Result<TrainSample> {
        let order = epoch_order(self.cases.len(), self.seed, epoch);
        let files = &self.cases[order[index % self.cases.len()]];
        let case = self.store.load(files)?;
        if case.label.is_none() {
            bail!("case {} has no label file; training cases need one", files.id);
        }
        let view = CaseView::from_case(&case, &self.pipeline.order)
            .with_context(|| format!("case {}", files.id))?;
        let mut rng = ChaCha8Rng::seed_from_u64(mix(
            mix(mix(self.seed, stream::AUGMENT), epoch as u64),
            index as u64,
        ));
        let s = self
            .pipeline
            .train(&view, &mut rng)
            .with_context(|| format!("preprocessing case {}", files.id))?;
        let labels = s
            .labels
            .with_context(|| format!("case {} lost its labels in preprocessing", files.id))?;
        Ok(TrainSample { id: files.id.clone(), image: s.image.data, labels })
    }
}

/// The order in which epoch `epoch` visits `n` cases.
pub fn epoch_order(n: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    shuffle(
        &mut order,
        &mut ChaCha8Rng::seed_from_u64(mix(mix(seed, stream::SHUFFLE), epoch as u64)),
    );
    order
}

/// Background loader of some of one epoch's samples, in a given order.
#[derive(Debug)]
pub struct Loader {
    receivers: Vec<Receiver<Result<TrainSample>>>,
    handles: Vec<JoinHandle<()>>,
    next: usize,
    end: usize,
    waited: Duration,
}

impl Loader {
    /// Starts `workers` threads preparing samples `start..end` of `epoch` from `source`, each
    /// with a bounded queue of `queue` samples.
    pub fn start(
        source: Arc<SampleSource>,
        epoch: usize,
        (start, end): (usize, usize),
        workers: usize,
        queue: usize,
    ) -> Self {
        Self::start_indices(source, epoch, (start..end).collect(), workers, queue)
    }

    /// Starts `workers` threads preparing the samples `indices` of `epoch` (delivered in that
    /// order) from `source`, each with a bounded queue of `queue` samples. A rank of a
    /// data-parallel run loads only its own share of the epoch this way.
    pub fn start_indices(
        source: Arc<SampleSource>,
        epoch: usize,
        indices: Vec<usize>,
        workers: usize,
        queue: usize,
    ) -> Self {
        let workers = workers.max(1);
        let indices = Arc::new(indices);
        let mut receivers = Vec::with_capacity(workers);
        let mut handles = Vec::with_capacity(workers);
        for w in 0..workers {
            let (tx, rx) = sync_channel(queue.max(1));
            let source = source.clone();
            let indices = indices.clone();
            handles.push(std::thread::spawn(move || {
                for &i in indices.iter().skip(w).step_by(workers) {
                    if tx.send(source.prepare(epoch, i)).is_err() {
                        return; // the trainer stopped listening
                    }
                }
            }));
            receivers.push(rx);
        }
        Loader { receivers, handles, next: 0, end: indices.len(), waited: Duration::ZERO }
    }

    /// The next sample, in order; `None` after the last. Time spent blocked is accumulated.
    ///
    /// # Errors
    /// A preparation error, or a worker that died.
    pub fn next_sample(&mut self) -> Option<Result<TrainSample>> {
        if self.next >= self.end {
            return None;
        }
        let rx = &self.receivers[self.next % self.receivers.len()];
        self.next += 1;
        let t = Instant::now();
        let r = rx.recv();
        self.waited += t.elapsed();
        Some(r.unwrap_or_else(|_| Err(anyhow::anyhow!("a data-loading thread died"))))
    }

    /// Total time the trainer waited for data so far.
    pub fn waited(&self) -> Duration {
        self.waited
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        // Closing the receivers unblocks the workers; then join them.
        self.receivers.clear();
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

/// Writes `bytes` of a text report (helper for small files in the run directory).
///
/// # Errors
/// I/O errors naming the file.
pub fn write_text(path: &Path, text: &str) -> Result<()> {
    let mut f =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    f.write_all(text.as_bytes()).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use mgsd_io::synth::{write_dataset, SynthConfig};

    #[test]
    fn loader_is_deterministic_and_cache_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let written =
            write_dataset(&dir.path().join("d"), 3, &SynthConfig::new(5, [24, 24, 24])).unwrap();
        let ds = mgsd_io::discover(&written.root).unwrap();
        let collect =
            |store: CaseStore, workers: usize, range: (usize, usize)| -> Vec<TrainSample> {
                let source = SampleSource {
                    store: Arc::new(store),
                    cases: ds.cases.clone(),
                    pipeline: Pipeline::new(mgsd_io::Protocol::Acn, [16, 16, 16]),
                    seed: 9,
                };
                let mut l = Loader::start(Arc::new(source), 1, range, workers, 2);
                let mut out = Vec::new();
                while let Some(s) = l.next_sample() {
                    out.push(s.unwrap());
                }
                out
            };
        let a = collect(CaseStore::new(false, None), 1, (0, 7));
        let b = collect(CaseStore::new(true, Some(dir.path().join("cache"))), 3, (0, 7));
        let c = collect(CaseStore::new(false, Some(dir.path().join("cache"))), 2, (3, 7));
        assert_eq!(a.len(), 7);
        for (x, y) in a.iter().zip(&b) {
            assert_eq!((&x.id, &x.image, &x.labels), (&y.id, &y.image, &y.labels));
        }
        for (x, y) in a[3..].iter().zip(&c) {
            assert_eq!((&x.id, &x.image, &x.labels), (&y.id, &y.image, &y.labels));
        }
        assert!(dir.path().join("cache").read_dir().unwrap().count() == 3);
    }

    #[test]
    fn foreground_patches_hold_tumour_replay_and_resume_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let written =
            write_dataset(&dir.path().join("d"), 3, &SynthConfig::new(8, [40, 40, 40])).unwrap();
        let ds = mgsd_io::discover(&written.root).unwrap();
        let source = |fraction: f64| {
            let protocol = crate::config::ProtocolConfig {
                patch: [16, 16, 16],
                foreground_fraction: fraction,
                ..Default::default()
            };
            Arc::new(SampleSource {
                store: Arc::new(CaseStore::new(true, None)),
                cases: ds.cases.clone(),
                pipeline: crate::protocol::train_pipeline(&protocol),
                seed: 4,
            })
        };
        let collect = |src: Arc<SampleSource>, workers: usize, range: (usize, usize)| {
            let mut l = Loader::start(src, 2, range, workers, 2);
            let mut out = Vec::new();
            while let Some(s) = l.next_sample() {
                out.push(s.unwrap());
            }
            out
        };
        // Every patch centred on tumour holds tumour; a run resumed at sample 5 sees what the
        // uninterrupted run saw, whatever the number of workers.
        let all = collect(source(1.0), 1, (0, 12));
        assert!(all.iter().all(|s| s.labels.iter().any(|&l| l != 0)));
        let resumed = collect(source(1.0), 2, (5, 12));
        for (x, y) in all[5..].iter().zip(&resumed) {
            assert_eq!((&x.id, &x.image, &x.labels), (&y.id, &y.image, &y.labels));
        }
        // A third of the patches: pure in (seed, epoch, sample), and not the uniform windows.
        let third = source(1.0 / 3.0);
        let a: Vec<TrainSample> = (0..12).map(|i| third.prepare(2, i).unwrap()).collect();
        for (i, x) in a.iter().enumerate() {
            assert_eq!(x.image, third.prepare(2, i).unwrap().image);
        }
        let uniform = source(0.0);
        assert!((0..12).any(|i| uniform.prepare(2, i).unwrap().image != a[i].image));
    }

    #[test]
    fn augmented_labels_stay_aligned_with_the_images() {
        let dir = tempfile::tempdir().unwrap();
        let written =
            write_dataset(&dir.path().join("d"), 2, &SynthConfig::new(3, [40, 40, 40])).unwrap();
        let ds = mgsd_io::discover(&written.root).unwrap();
        let source = SampleSource {
            store: Arc::new(CaseStore::new(true, None)),
            cases: ds.cases,
            pipeline: Pipeline::new(mgsd_io::Protocol::Acn, [32, 32, 32]),
            seed: 1,
        };
        for i in 0..6 {
            let s = source.prepare(0, i).unwrap();
            let n = s.labels.len();
            // ACN order: T1, T2, FLAIR, T1ce. ET (4) is bright on T1ce, the tumour on FLAIR.
            let mean = |c: usize, f: &dyn Fn(u8) -> bool| {
                let v: Vec<f32> = (0..n)
                    .filter(|&k| f(s.labels[k]) && s.image[2 * n + k] > 0.0)
                    .map(|k| s.image[c * n + k])
                    .collect();
                (v.iter().sum::<f32>() / v.len().max(1) as f32, v.len())
            };
            let (et, n_et) = mean(3, &|l| l == 4);
            let (healthy, _) = mean(3, &|l| l == 0);
            let (flair_tumour, n_t) = mean(2, &|l| l != 0);
            let (flair_healthy, _) = mean(2, &|l| l == 0);
            if n_et > 0 {
                assert!(et > healthy * 1.3, "sample {i}: T1ce in ET {et} vs healthy {healthy}");
            }
            if n_t > 0 {
                assert!(
                    flair_tumour > flair_healthy * 1.2,
                    "sample {i}: FLAIR tumour {flair_tumour} vs {flair_healthy}"
                );
            }
        }
    }

    #[test]
    fn random_split_is_disjoint_and_complete() {
        let cases: Vec<CaseFiles> = (0..10)
            .map(|i| CaseFiles {
                id: format!("c{i}"),
                images: ImageSource::PerModality(BTreeMap::new()),
                label: None,
                scheme: LabelScheme::Brats2018,
            })
            .collect();
        let s = split_random(&cases, 0.3, 0.2, 1);
        assert_eq!(s.test.len(), 2);
        assert_eq!(s.val.len(), 3);
        assert_eq!(s.train.len(), 5);
        let mut ids: Vec<_> =
            s.train.iter().chain(&s.val).chain(&s.test).map(|c| c.id.clone()).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 10);
    }
}
