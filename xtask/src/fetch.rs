//! `cargo xtask fetch-brats`: download or import a dataset, verify every case, write its
//! manifest, and move it into place in one rename.
//!
//! # Guarantees
//! * Nothing is unpacked before the archive's MD5 matched (always for downloads; for
//!   `--from ARCHIVE` when `--md5` is given).
//! * Work happens in `dest/.staging-<pid>-<name>/`, removed on every error; a staging folder
//!   left by a killed run is removed by the next run once its process is gone. A dataset
//!   folder `dest/<name>/` only appears, by rename, after every case verified and its
//!   `manifest.json` was written, so a folder with a manifest is always complete.
//! * Re-running is fast: when `dest/<name>/manifest.json` records the same source and every
//!   file still has its recorded size and time, nothing is read; files whose time changed are
//!   re-hashed, and only a real change triggers a new import (which replaces the folder).
//! * A folder at `dest/<name>/` that has no manifest is never touched.
//!
//! # Sources
//! * default: the Medical Segmentation Decathlon Task01_BrainTumour archive (484 labelled and
//!   266 unlabelled BraTS 2016/2017 cases, CC-BY-SA 4.0) from the URL and MD5 MONAI's
//!   `DecathlonDataset` uses; `--url`/`--md5` select a mirror.
//! * `--from ARCHIVE` (`.zip`, `.tar`, `.tar.gz`, recognised by content) or `--from FOLDER`:
//!   BraTS 2018–2023 data the user obtained after registering. A folder is copied, or with
//!   `--link` left where it is (the manifest then records its absolute `root`; nothing is
//!   copied, so 100 GB are not duplicated, but the data must stay there unchanged).

use crate::download::{self, NetOptions};
use crate::extract;
use crate::manifest::{
    self, Freshness, Manifest, Source, SourceKind, FORMAT_VERSION, MANIFEST_FILE,
};
use crate::staging::{copy_tree, remove_stale_work, replace_dir, Staging};
use crate::verify;
pub use crate::year::Year;
use anyhow::{bail, Context, Result};
use mgsd_io::DatasetLayout;
use std::fs;
use std::path::{Path, PathBuf};

/// The MSD Task01_BrainTumour archive, as MONAI's `DecathlonDataset` downloads it.
pub const MSD_URL: &str = "https://msd-for-monai.s3-us-west-2.amazonaws.com/Task01_BrainTumour.tar";
/// MD5 of [`MSD_URL`] (MONAI `apps/datasets.py`; 7 608 266 240 bytes).
pub const MSD_MD5: &str = "240a19d752f0d9e9101544901065d872";
/// Folder name of the MSD dataset under `data/`.
pub const MSD_NAME: &str = "Task01_BrainTumour";
/// Where the data come from.
#[derive(Debug, Clone)]
pub enum FetchSource {
    /// Download an archive and check its MD5.
    Url {
        /// HTTP(S) URL.
        url: String,
        /// Expected MD5, lowercase hex.
        md5: String,
    },
    /// A local archive or folder.
    Local {
        /// Archive file or dataset folder.
        path: PathBuf,
        /// Expected MD5 of an archive, checked before unpacking.
        md5: Option<String>,
        /// Use a folder in place instead of copying it.
        link: bool,
    },
}

impl FetchSource {
    /// The default: MSD Task01_BrainTumour from MONAI's URL.
    pub fn msd() -> Self {
        FetchSource::Url { url: MSD_URL.to_string(), md5: MSD_MD5.to_string() }
    }
}

/// Everything `fetch` needs.
#[derive(Debug, Clone)]
pub struct FetchOptions {
    /// The `data/` folder.
    pub dest: PathBuf,
    /// Where the data come from.
    pub source: FetchSource,
    /// The BraTS year the source holds (checked against the layout; names the folder).
    pub year: Option<Year>,
    /// Folder name under `dest` (default: from `year`, the URL, or the layout found).
    pub name: Option<String>,
    /// Keep the downloaded archive in `dest/.downloads/` after a successful import.
    pub keep_archive: bool,
    /// Import again even if an up-to-date copy exists.
    pub force: bool,
    /// Network settings.
    pub net: NetOptions,
}

/// What `fetch` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// An existing copy was complete and unchanged; nothing was downloaded or unpacked.
    UpToDate,
    /// The dataset was (re)imported and verified.
    Installed,
}

/// The result of [`fetch`].
#[derive(Debug, Clone)]
pub struct FetchReport {
    /// Path of the dataset's `manifest.json`.
    pub manifest: PathBuf,
    /// What happened.
    pub outcome: Outcome,
    /// Number of cases in the manifest.
    pub cases: usize,
}

/// Downloads or imports, verifies, writes the manifest and installs the dataset.
///
/// # Errors
/// Network, checksum, archive, verification or file-system errors, each naming what to look
/// at. On error no dataset folder is created or changed.
pub fn fetch(opts: &FetchOptions) -> Result<FetchReport> {
    fs::create_dir_all(&opts.dest).with_context(|| format!("creating {}", opts.dest.display()))?;
    remove_stale_work(&opts.dest);
    if let Some(name) = &opts.name {
        check_name(name)?;
    }
    let source = describe_source(&opts.source)?;
    let name_hint = opts.name.clone().or_else(|| opts.year.map(Year::dataset_name)).or_else(|| {
        match &opts.source {
            FetchSource::Url { url, .. } => Some(name_from_url(url)),
            FetchSource::Local { .. } => None,
        }
    });

    if !opts.force {
        if let Some(report) = up_to_date(&opts.dest, name_hint.as_deref(), &source)? {
            return Ok(report);
        }
    }
    if let Some(name) = &name_hint {
        check_target(&opts.dest.join(name))?;
    }

    match &opts.source {
        FetchSource::Url { url, md5 } => {
            let file_name = url_file_name(url);
            let archive = opts.dest.join(".downloads").join(&file_name);
            if let Err(e) = download::download(url, &archive, md5, &opts.net) {
                let _ = fs::remove_dir(opts.dest.join(".downloads")); // only if empty
                return Err(e);
            }
            let report = import_archive(opts, &archive, &source, name_hint)?;
            if !opts.keep_archive {
                fs::remove_file(&archive)
                    .with_context(|| format!("removing {}", archive.display()))?;
                let _ = fs::remove_dir(opts.dest.join(".downloads"));
            }
            Ok(report)
        }
        FetchSource::Local { path, md5, link } => {
            if path.is_dir() {
                if md5.is_some() {
                    bail!("--md5 checks an archive; {} is a folder", path.display());
                }
                import_folder(opts, path, &source, name_hint, *link)
            } else {
                if *link {
                    bail!(
                        "--link works with a folder; {} is an archive (unpack it, or drop --link)",
                        path.display()
                    );
                }
                if let Some(expected) = md5 {
                    let actual = manifest::md5_file(path)?;
                    if !actual.eq_ignore_ascii_case(expected) {
                        bail!(
                            "MD5 mismatch for {}: expected {expected}, got {actual}; nothing was unpacked",
                            path.display()
                        );
                    }
                }
                import_archive(opts, path, &source, name_hint)
            }
        }
    }
}

/// The `Source` record for the manifest, and a check that a local path exists.
fn describe_source(source: &FetchSource) -> Result<Source> {
    Ok(match source {
        FetchSource::Url { url, md5 } => Source {
            kind: SourceKind::Url,
            location: url.clone(),
            md5: Some(md5.to_ascii_lowercase()),
            size: None,
            mtime_ns: None,
        },
        FetchSource::Local { path, md5, .. } => {
            let absolute = fs::canonicalize(path)
                .with_context(|| format!("{} does not exist or cannot be read", path.display()))?;
            let location = absolute.display().to_string();
            if absolute.is_dir() {
                Source { kind: SourceKind::Folder, location, md5: None, size: None, mtime_ns: None }
            } else {
                let (size, mtime) = manifest::stat(&absolute)?;
                Source {
                    kind: SourceKind::Archive,
                    location,
                    md5: md5.as_ref().map(|m| m.to_ascii_lowercase()),
                    size: Some(size),
                    mtime_ns: Some(mtime),
                }
            }
        }
    })
}

/// Whether an existing manifest describes the same source.
fn same_source(recorded: &Source, wanted: &Source) -> bool {
    if recorded.kind != wanted.kind {
        return false;
    }
    match wanted.kind {
        // Mirrors differ in URL but not in content.
        SourceKind::Url => recorded.md5 == wanted.md5,
        SourceKind::Archive => {
            recorded.location == wanted.location
                && recorded.size == wanted.size
                && recorded.mtime_ns == wanted.mtime_ns
                && (wanted.md5.is_none() || recorded.md5 == wanted.md5)
        }
        SourceKind::Folder => recorded.location == wanted.location,
    }
}

/// Looks for an installed copy of `source` (in `dest/<name>` or, without a name, any
/// `dest/*/manifest.json`) whose files are unchanged.
fn up_to_date(dest: &Path, name: Option<&str>, source: &Source) -> Result<Option<FetchReport>> {
    let candidates: Vec<PathBuf> = match name {
        Some(name) => vec![dest.join(name)],
        None => {
            let mut dirs: Vec<PathBuf> = fs::read_dir(dest)
                .with_context(|| format!("listing {}", dest.display()))?
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.join(MANIFEST_FILE).is_file())
                .collect();
            dirs.sort();
            dirs
        }
    };
    for dir in candidates {
        let path = dir.join(MANIFEST_FILE);
        if !path.is_file() {
            continue;
        }
        let mut manifest = match Manifest::load(&path) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(manifest = %path.display(), error = %format!("{e:#}"), "ignoring unreadable manifest");
                continue;
            }
        };
        if !same_source(&manifest.source, source) {
            if name.is_some() {
                tracing::info!(dataset = %dir.display(), "installed copy came from another source; importing again");
            }
            continue;
        }
        let root = manifest.dataset_root(&path);
        match manifest.refresh(&root)? {
            Freshness::Unchanged => {}
            Freshness::Retimed(n) => {
                tracing::info!(
                    files = n,
                    "file times changed but contents did not; manifest updated"
                );
                manifest.save(&path)?;
            }
            Freshness::Changed(what) => {
                tracing::warn!(
                    dataset = %dir.display(),
                    "installed copy changed ({}{}); importing again",
                    what.iter().take(3).cloned().collect::<Vec<_>>().join("; "),
                    if what.len() > 3 { format!("; … {} more", what.len() - 3) } else { String::new() }
                );
                continue;
            }
        }
        tracing::info!(manifest = %path.display(), cases = manifest.cases.len(), "dataset is up to date");
        return Ok(Some(FetchReport {
            manifest: path,
            outcome: Outcome::UpToDate,
            cases: manifest.cases.len(),
        }));
    }
    Ok(None)
}

/// A folder at `target` must be absent or one we made (it has a manifest).
fn check_target(target: &Path) -> Result<()> {
    if target.exists() && !target.join(MANIFEST_FILE).is_file() {
        bail!(
            "{} exists but was not made by `cargo xtask fetch-brats` (no {MANIFEST_FILE}); \
             move it away or choose another --name",
            target.display()
        );
    }
    Ok(())
}

fn check_name(name: &str) -> Result<()> {
    if name.is_empty()
        || name.starts_with('.')
        || name.contains(['/', '\\'])
        || name.chars().any(char::is_control)
    {
        bail!("'{name}' is not a usable dataset folder name (no '/', no leading '.')");
    }
    Ok(())
}

fn url_file_name(url: &str) -> String {
    let path = url.split(['?', '#']).next().unwrap_or(url);
    let last = path.rsplit('/').next().unwrap_or("");
    if last.is_empty() || last.starts_with('.') {
        "download.archive".to_string()
    } else {
        last.to_string()
    }
}

/// `…/Task01_BrainTumour.tar` → `Task01_BrainTumour`.
fn name_from_url(url: &str) -> String {
    let file = url_file_name(url);
    let stem = [".tar.gz", ".tgz", ".tar", ".zip"]
        .iter()
        .find_map(|ext| file.strip_suffix(ext))
        .unwrap_or(&file)
        .to_string();
    if check_name(&stem).is_ok() && stem != "download.archive" {
        stem
    } else {
        MSD_NAME.to_string()
    }
}

/// The default folder name for a layout found in `root`.
fn default_name(layout: DatasetLayout, root: &Path) -> String {
    match layout {
        DatasetLayout::Msd => MSD_NAME.to_string(),
        DatasetLayout::Brats2018 => "brats2018".to_string(),
        DatasetLayout::Brats2020 => "brats2020".to_string(),
        DatasetLayout::Brats2021 => "brats2021".to_string(),
        DatasetLayout::Brats2023 => "brats2023".to_string(),
        DatasetLayout::GenericBrats => root
            .file_name()
            .and_then(|n| n.to_str())
            .filter(|n| check_name(n).is_ok())
            .unwrap_or("brats")
            .to_string(),
    }
}
fn import_archive(
    opts: &FetchOptions,
    archive: &Path,
    source: &Source,
    name_hint: Option<String>,
) -> Result<FetchReport> {
    let staging = Staging::new(&opts.dest, name_hint.as_deref().unwrap_or("import"))?;
    let stats = extract::extract(archive, &staging.path)?;
    tracing::info!(files = stats.files, bytes = stats.bytes, "unpacked");
    let label = archive
        .file_name()
        .map_or_else(|| archive.display().to_string(), |n| n.to_string_lossy().into_owned());
    install(opts, &staging, &staging.path, &label, source, name_hint, false)
}

fn import_folder(
    opts: &FetchOptions,
    folder: &Path,
    source: &Source,
    name_hint: Option<String>,
    link: bool,
) -> Result<FetchReport> {
    let staging = Staging::new(&opts.dest, name_hint.as_deref().unwrap_or("import"))?;
    if link {
        let folder =
            fs::canonicalize(folder).with_context(|| format!("resolving {}", folder.display()))?;
        return install(
            opts,
            &staging,
            &folder,
            &folder.display().to_string(),
            source,
            name_hint,
            true,
        );
    }
    // Copy only the dataset itself (discovery finds it up to two levels down).
    let found = mgsd_io::discover(folder)
        .with_context(|| format!("finding the cases in {}", folder.display()))?;
    let base = found.root.file_name().map_or_else(|| PathBuf::from("dataset"), PathBuf::from);
    let copy = staging.path.join(base);
    tracing::info!(from = %found.root.display(), "copying the dataset folder");
    copy_tree(&found.root, &copy)?;
    install(opts, &staging, &staging.path, &folder.display().to_string(), source, name_hint, false)
}

/// Discovers and verifies the dataset under `search`, writes its manifest and moves it to
/// `dest/<name>`. With `link`, the files stay in `search` and only the manifest is installed.
fn install(
    opts: &FetchOptions,
    staging: &Staging,
    search: &Path,
    label: &str,
    source: &Source,
    name_hint: Option<String>,
    link: bool,
) -> Result<FetchReport> {
    let dataset =
        mgsd_io::discover(search).with_context(|| format!("finding the cases in {label}"))?;
    if let Some(year) = opts.year {
        if dataset.layout == DatasetLayout::GenericBrats {
            tracing::warn!(year = %year, "case folder names do not follow the BraTS {year} pattern; accepting them");
        } else if dataset.layout != year.layout() {
            bail!(
                "--year {year} expects the {:?} layout, but {label} holds the {:?} layout; drop --year or pick the right one",
                year.layout(),
                dataset.layout
            );
        }
    }
    let name = name_hint.unwrap_or_else(|| default_name(dataset.layout, &dataset.root));
    check_name(&name)?;
    let target = opts.dest.join(&name);
    check_target(&target)?;
    let display_root = match dataset.root.strip_prefix(search) {
        Ok(rel) if !rel.as_os_str().is_empty() && !link => format!("{label}:{}", rel.display()),
        Ok(rel) if !rel.as_os_str().is_empty() => format!("{label}/{}", rel.display()),
        _ => label.to_string(),
    };
    for problem in &dataset.problems {
        tracing::warn!("{}", verify::relabel(problem, &dataset.root, &display_root));
    }
    tracing::info!(cases = dataset.cases.len(), layout = ?dataset.layout, "verifying every case");
    let cases = verify::verify_cases(&dataset, &display_root, opts.net.progress)?;
    let manifest = Manifest {
        format_version: FORMAT_VERSION,
        name: name.clone(),
        layout: dataset.layout,
        label_scheme: dataset.layout.label_scheme(),
        root: link.then(|| dataset.root.clone()),
        source: source.clone(),
        created_by: format!("cargo xtask fetch-brats (xtask {})", env!("CARGO_PKG_VERSION")),
        warnings: dataset.problems.iter().map(|p| verify::relabel(p, &dataset.root, ".")).collect(),
        cases,
    };
    let ready = if link { staging.path.join(&name) } else { dataset.root.clone() };
    fs::create_dir_all(&ready).with_context(|| format!("creating {}", ready.display()))?;
    manifest.save(&ready.join(MANIFEST_FILE))?;
    replace_dir(&ready, &target, &opts.dest)?;
    let report = FetchReport {
        manifest: target.join(MANIFEST_FILE),
        outcome: Outcome::Installed,
        cases: manifest.cases.len(),
    };
    tracing::info!(manifest = %report.manifest.display(), cases = report.cases, "dataset installed");
    Ok(report)
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_from_urls() {
        assert_eq!(name_from_url(MSD_URL), MSD_NAME);
        assert_eq!(name_from_url("http://h/x/brats.tar.gz?sig=1"), "brats");
        assert_eq!(name_from_url("http://h/"), MSD_NAME);
        assert_eq!(url_file_name("http://h/a/b.zip#frag"), "b.zip");
    }

    #[test]
    fn bad_names_are_refused() {
        for bad in ["", ".x", "a/b", "..", "a\\b"] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
        assert!(check_name("brats2018").is_ok());
    }

    #[test]
    fn foreign_folders_are_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("mine")).unwrap();
        assert!(check_target(&dir.path().join("mine")).is_err());
        assert!(check_target(&dir.path().join("absent")).is_ok());
        fs::write(dir.path().join("mine").join(MANIFEST_FILE), "{}").unwrap();
        assert!(check_target(&dir.path().join("mine")).is_ok());
    }
}
