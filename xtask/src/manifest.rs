//! The dataset manifest, `data/<name>/manifest.json`: what `fetch-brats` verified and what the
//! trainer reads.
//!
//! A manifest exists only next to a dataset that passed verification: `fetch-brats` writes it
//! last, inside the staging folder, and moves the folder into place in one rename. Its
//! presence therefore means "complete and checked".
//!
//! # Schema (format version 1)
//! ```json
//! {
//!   "format_version": 1,
//!   "name": "Task01_BrainTumour",
//!   "layout": "msd",                       // mgsd_io::DatasetLayout, kebab-case
//!   "label_scheme": "msd",                 // mgsd_io::LabelScheme, kebab-case
//!   "root": null,                          // null: the folder holding manifest.json;
//!                                          // else an absolute path (`--from DIR --link`)
//!   "source": { "kind": "url", "location": "https://…/Task01_BrainTumour.tar",
//!               "md5": "240a…", "size": 7608266240, "mtime_ns": null },
//!   "created_by": "cargo xtask fetch-brats (xtask 0.1.0)",
//!   "warnings": [],                        // discovery remarks, e.g. cases without labels
//!   "cases": [ {
//!     "id": "BRATS_001",
//!     "modalities": ["t1", "t1ce", "t2", "flair"],
//!     "shape": [240, 240, 155], "spacing": [1.0, 1.0, 1.0],
//!     "images": { "stacked": { "file": FILE, "order": ["flair", "t1", "t1ce", "t2"] } },
//!          // or { "per_modality": { "t1": FILE, "t1ce": FILE, "t2": FILE, "flair": FILE } }
//!     "label": FILE                        // or null (no label, e.g. MSD imagesTs)
//!   } ]
//! }
//! FILE = { "path": "imagesTr/BRATS_001.nii.gz",   // relative to the dataset root, '/'-separated
//!          "size": 123, "md5": "…", "mtime_ns": 1700000000000000000 }
//! ```
//! `mtime_ns` only lets a re-run skip re-hashing unchanged files; it is refreshed when a file's
//! time changed but its checksum did not (e.g. after a copy).

use anyhow::{bail, Context, Result};
use md5::{Digest, Md5};
use mgsd_io::{CaseFiles, DatasetLayout, ImageSource, LabelScheme, Modality};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};
use std::time::UNIX_EPOCH;

/// File name of the manifest inside a dataset folder.
pub const MANIFEST_FILE: &str = "manifest.json";

/// The manifest format this code writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// A verified dataset: its layout, where it came from, and every case with its files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Always [`FORMAT_VERSION`] when written by this code.
    pub format_version: u32,
    /// The dataset's name, also the name of its folder under `data/` (`Task01_BrainTumour`,
    /// `brats2018`, …).
    pub name: String,
    /// The layout `mgsd_io::discover` recognised.
    pub layout: DatasetLayout,
    /// How the label files number the classes (converted to canonical labels on load).
    pub label_scheme: LabelScheme,
    /// Absolute path of the dataset root when the files stay where the user keeps them
    /// (`--link`); `None` when they live next to this manifest.
    #[serde(default)]
    pub root: Option<PathBuf>,
    /// Where the data came from.
    pub source: Source,
    /// The tool that wrote the manifest.
    pub created_by: String,
    /// Remarks from discovery that did not stop the import (cases without labels, stray files).
    #[serde(default)]
    pub warnings: Vec<String>,
    /// Every case, sorted by id.
    pub cases: Vec<ManifestCase>,
}

/// Where a dataset came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Source {
    /// What `location` is.
    pub kind: SourceKind,
    /// URL, or absolute path of the archive or folder imported.
    pub location: String,
    /// MD5 of the archive, when it was checked.
    #[serde(default)]
    pub md5: Option<String>,
    /// Size of the archive in bytes, when known.
    #[serde(default)]
    pub size: Option<u64>,
    /// Modification time of an imported archive (ns since the Unix epoch).
    #[serde(default)]
    pub mtime_ns: Option<i64>,
}

/// The kinds of [`Source`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    /// Downloaded over HTTP(S).
    Url,
    /// Imported from a local `.tar`, `.tar.gz` or `.zip`.
    Archive,
    /// Imported (copied or linked) from a local folder.
    Folder,
}

/// One verified case.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManifestCase {
    /// Case id, e.g. `BRATS_001`, `Brats18_2013_2_1`.
    pub id: String,
    /// Modalities present (always all four after `fetch-brats`), in `Modality::ALL` order.
    pub modalities: Vec<Modality>,
    /// Voxel grid `[nx, ny, nz]` shared by every image and the label.
    pub shape: [usize; 3],
    /// Voxel size in mm.
    pub spacing: [f32; 3],
    /// Image files.
    pub images: ManifestImages,
    /// Label file; `None` for unlabelled cases.
    pub label: Option<FileRecord>,
}

/// Where a case's images are, mirroring [`mgsd_io::ImageSource`] with relative paths.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ManifestImages {
    /// One 3-D file per modality (BraTS layouts).
    PerModality(BTreeMap<Modality, FileRecord>),
    /// One 4-D file whose 4th axis holds `order` (MSD).
    Stacked {
        /// The 4-D file.
        file: FileRecord,
        /// Modality at each index of the 4th axis.
        order: Vec<Modality>,
    },
}

/// A file of the dataset, with what is needed to notice a change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    /// Path relative to the dataset root, with `/` separators.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// MD5 of the content, lowercase hex.
    pub md5: String,
    /// Modification time, ns since the Unix epoch (0 when the platform has none).
    pub mtime_ns: i64,
}

impl FileRecord {
    /// Stats and hashes `root/rel`.
    ///
    /// # Errors
    /// If the file cannot be read.
    pub fn from_file(root: &Path, rel: &str) -> Result<Self> {
        let path = root.join(rel);
        let (size, mtime_ns) = stat(&path)?;
        let md5 = md5_file(&path)?;
        Ok(FileRecord { path: rel.to_string(), size, md5, mtime_ns })
    }
}

/// What [`Manifest::refresh`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Freshness {
    /// Every file has its recorded size and time: nothing was read.
    Unchanged,
    /// Some files had new times but their recorded checksums; the manifest was updated in
    /// memory (the number of files re-hashed is given).
    Retimed(usize),
    /// Files are missing or their content changed (the first few are named).
    Changed(Vec<String>),
}

impl Manifest {
    /// Reads and parses a manifest.
    ///
    /// # Errors
    /// If the file cannot be read, is not JSON of this schema, or has another format version.
    pub fn load(path: &Path) -> Result<Self> {
        let text =
            fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let manifest: Manifest =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        if manifest.format_version != FORMAT_VERSION {
            bail!(
                "{}: manifest format version {} is not supported (this xtask reads version {FORMAT_VERSION}); \
                 re-run `cargo xtask fetch-brats`",
                path.display(),
                manifest.format_version
            );
        }
        Ok(manifest)
    }

    /// Writes the manifest as pretty JSON, atomically (temporary file, then rename).
    ///
    /// # Errors
    /// If the folder is not writable.
    pub fn save(&self, path: &Path) -> Result<()> {
        let json = serde_json::to_string_pretty(self).context("serialising the manifest")?;
        write_atomically(path, format!("{json}\n").as_bytes())
    }

    /// The folder the case files are relative to, for a manifest read from `manifest_path`.
    pub fn dataset_root(&self, manifest_path: &Path) -> PathBuf {
        match &self.root {
            Some(root) => root.clone(),
            None => manifest_path.parent().map_or_else(|| PathBuf::from("."), Path::to_path_buf),
        }
    }

    /// The sorted case ids.
    pub fn case_ids(&self) -> Vec<&str> {
        let mut ids: Vec<&str> = self.cases.iter().map(|c| c.id.as_str()).collect();
        ids.sort_unstable();
        ids
    }

    /// The sorted ids of the cases that have a label (what training and k-fold use).
    pub fn labelled_case_ids(&self) -> Vec<&str> {
        let mut ids: Vec<&str> =
            self.cases.iter().filter(|c| c.label.is_some()).map(|c| c.id.as_str()).collect();
        ids.sort_unstable();
        ids
    }

    /// Every case as `mgsd_io::CaseFiles` with paths under `root` (see [`Self::dataset_root`]),
    /// ready for `CaseFiles::load`.
    pub fn case_files(&self, root: &Path) -> Vec<CaseFiles> {
        self.cases.iter().map(|c| c.case_files(root, self.label_scheme)).collect()
    }

    /// Every file record of the dataset.
    pub fn files(&self) -> impl Iterator<Item = &FileRecord> {
        self.cases.iter().flat_map(ManifestCase::files)
    }

    /// Checks the files under `root` against the records: size and modification time first;
    /// only a file whose time changed (same size) is re-hashed. Updates the recorded times of
    /// files whose content is unchanged.
    ///
    /// # Errors
    /// Only for I/O errors other than a missing file (a missing file is [`Freshness::Changed`]).
    pub fn refresh(&mut self, root: &Path) -> Result<Freshness> {
        let mut changed = Vec::new();
        let mut rehashed = 0;
        for case in &mut self.cases {
            for record in case.files_mut() {
                let path = root.join(&record.path);
                let Ok((size, mtime_ns)) = stat(&path) else {
                    changed.push(format!("{} is missing", record.path));
                    continue;
                };
                if size != record.size {
                    changed.push(format!(
                        "{} has {size} bytes, {} expected",
                        record.path, record.size
                    ));
                } else if mtime_ns != record.mtime_ns {
                    rehashed += 1;
                    if md5_file(&path)? == record.md5 {
                        record.mtime_ns = mtime_ns;
                    } else {
                        changed.push(format!("{}: content changed (MD5 differs)", record.path));
                    }
                }
            }
        }
        Ok(if !changed.is_empty() {
            Freshness::Changed(changed)
        } else if rehashed > 0 {
            Freshness::Retimed(rehashed)
        } else {
            Freshness::Unchanged
        })
    }
}

impl ManifestCase {
    /// Image files then label.
    pub fn files(&self) -> Vec<&FileRecord> {
        let mut out: Vec<&FileRecord> = match &self.images {
            ManifestImages::PerModality(files) => files.values().collect(),
            ManifestImages::Stacked { file, .. } => vec![file],
        };
        out.extend(self.label.as_ref());
        out
    }

    fn files_mut(&mut self) -> Vec<&mut FileRecord> {
        let mut out: Vec<&mut FileRecord> = match &mut self.images {
            ManifestImages::PerModality(files) => files.values_mut().collect(),
            ManifestImages::Stacked { file, .. } => vec![file],
        };
        out.extend(self.label.as_mut());
        out
    }

    /// The case as `mgsd_io::CaseFiles` with paths under `root`.
    pub fn case_files(&self, root: &Path, scheme: LabelScheme) -> CaseFiles {
        let images = match &self.images {
            ManifestImages::PerModality(files) => ImageSource::PerModality(
                files.iter().map(|(m, f)| (*m, root.join(&f.path))).collect(),
            ),
            ManifestImages::Stacked { file, order } => {
                ImageSource::Stacked { path: root.join(&file.path), order: order.clone() }
            }
        };
        CaseFiles {
            id: self.id.clone(),
            images,
            label: self.label.as_ref().map(|l| root.join(&l.path)),
            scheme,
        }
    }
}

/// `path` relative to `root` with `/` separators.
///
/// # Errors
/// If `path` is not below `root` or is not valid UTF-8.
pub fn relative_path(root: &Path, path: &Path) -> Result<String> {
    let rel = path.strip_prefix(root).with_context(|| {
        format!("{} is not inside the dataset folder {}", path.display(), root.display())
    })?;
    let mut parts = Vec::new();
    for component in rel.components() {
        match component {
            Component::Normal(part) => parts.push(
                part.to_str()
                    .with_context(|| {
                        format!("{}: file names must be UTF-8 for the manifest", path.display())
                    })?
                    .to_string(),
            ),
            Component::CurDir => {}
            _ => bail!("{}: unexpected path component in {}", path.display(), rel.display()),
        }
    }
    Ok(parts.join("/"))
}

/// Size and modification time (ns since the Unix epoch) of a file.
///
/// # Errors
/// If the file cannot be stat'ed.
pub fn stat(path: &Path) -> Result<(u64, i64)> {
    let meta =
        fs::metadata(path).with_context(|| format!("reading metadata of {}", path.display()))?;
    let mtime_ns = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
    Ok((meta.len(), mtime_ns))
}

/// MD5 of a file's content, lowercase hex.
///
/// # Errors
/// If the file cannot be read.
pub fn md5_file(path: &Path) -> Result<String> {
    let mut file = fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = Md5::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

/// Lowercase hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Writes `bytes` to `path` through a temporary file in the same folder and a rename, so
/// readers see the old content or the new, never half of it.
///
/// # Errors
/// If the folder is not writable.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp-{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let result = (|| {
        let mut file =
            fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        file.write_all(bytes).with_context(|| format!("writing {}", tmp.display()))?;
        file.sync_all().with_context(|| format!("syncing {}", tmp.display()))?;
        fs::rename(&tmp, path)
            .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(path: &str) -> FileRecord {
        FileRecord { path: path.into(), size: 1, md5: "00".into(), mtime_ns: 5 }
    }

    fn sample() -> Manifest {
        let mut per = BTreeMap::new();
        for m in Modality::ALL {
            per.insert(m, record(&format!("HGG/A/A_{}.nii.gz", m.name())));
        }
        Manifest {
            format_version: FORMAT_VERSION,
            name: "brats2018".into(),
            layout: DatasetLayout::Brats2018,
            label_scheme: LabelScheme::Brats2018,
            root: None,
            source: Source {
                kind: SourceKind::Archive,
                location: "/x.zip".into(),
                md5: None,
                size: Some(3),
                mtime_ns: Some(4),
            },
            created_by: "test".into(),
            warnings: vec![],
            cases: vec![
                ManifestCase {
                    id: "A".into(),
                    modalities: Modality::ALL.to_vec(),
                    shape: [2, 3, 4],
                    spacing: [1.0, 1.0, 1.5],
                    images: ManifestImages::PerModality(per),
                    label: Some(record("HGG/A/A_seg.nii.gz")),
                },
                ManifestCase {
                    id: "BRATS_001".into(),
                    modalities: Modality::ALL.to_vec(),
                    shape: [2, 3, 4],
                    spacing: [1.0; 3],
                    images: ManifestImages::Stacked {
                        file: record("imagesTr/BRATS_001.nii.gz"),
                        order: mgsd_io::MSD_CHANNEL_ORDER.to_vec(),
                    },
                    label: None,
                },
            ],
        }
    }

    #[test]
    fn json_round_trip_and_names() {
        let m = sample();
        let json = serde_json::to_string_pretty(&m).unwrap();
        assert!(
            json.contains("\"per_modality\"")
                && json.contains("\"stacked\"")
                && json.contains("\"t1ce\""),
            "{json}"
        );
        assert!(
            json.contains("\"layout\": \"brats2018\"") && json.contains("\"kind\": \"archive\""),
            "{json}"
        );
        let back: Manifest = serde_json::from_str(&json).unwrap();
        assert_eq!(back, m);
    }

    #[test]
    fn case_files_resolve_under_root() {
        let m = sample();
        let files = m.case_files(Path::new("/data/x"));
        assert_eq!(files[0].label.as_deref(), Some(Path::new("/data/x/HGG/A/A_seg.nii.gz")));
        assert_eq!(files[1].modalities(), mgsd_io::ModalitySet::FULL);
        assert_eq!(m.files().count(), 6);
        assert_eq!(m.case_ids(), ["A", "BRATS_001"]);
        assert_eq!(m.labelled_case_ids(), ["A"]);
    }

    #[test]
    fn relative_paths_use_slashes_and_stay_inside() {
        let root = Path::new("/a/b");
        assert_eq!(relative_path(root, Path::new("/a/b/c/d.nii")).unwrap(), "c/d.nii");
        assert!(relative_path(root, Path::new("/a/c/d.nii")).is_err());
    }

    #[test]
    fn refresh_notices_changes_without_rehashing_unchanged_files() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("f"), b"hello").unwrap();
        let rec = FileRecord::from_file(dir.path(), "f").unwrap();
        assert_eq!(rec.md5, "5d41402abc4b2a76b9719d911017c592");
        let mut m = sample();
        m.cases.truncate(1);
        m.cases[0].images =
            ManifestImages::Stacked { file: rec.clone(), order: vec![Modality::T1] };
        m.cases[0].label = None;
        assert_eq!(m.refresh(dir.path()).unwrap(), Freshness::Unchanged);
        // Same content, new time: re-hashed once, then unchanged.
        m.cases[0].images = ManifestImages::Stacked {
            file: FileRecord { mtime_ns: rec.mtime_ns - 1, ..rec.clone() },
            order: vec![Modality::T1],
        };
        assert_eq!(m.refresh(dir.path()).unwrap(), Freshness::Retimed(1));
        assert_eq!(m.refresh(dir.path()).unwrap(), Freshness::Unchanged);
        fs::write(dir.path().join("f"), b"hellO").unwrap();
        m.cases[0].images = ManifestImages::Stacked {
            file: FileRecord { mtime_ns: 0, ..rec.clone() },
            order: vec![Modality::T1],
        };
        assert!(matches!(m.refresh(dir.path()).unwrap(), Freshness::Changed(_)));
        fs::remove_file(dir.path().join("f")).unwrap();
        assert!(
            matches!(m.refresh(dir.path()).unwrap(), Freshness::Changed(v) if v[0].contains("missing"))
        );
    }
}
