//! Safe unpacking of `.tar`, `.tar.gz`/`.tgz` and `.zip` archives.
//!
//! The format is recognised from the first bytes, not the file name. Every entry is checked
//! before anything is written:
//! * its path must be relative, without `..` (absolute paths and drive prefixes are refused);
//! * a symbolic link's target must be relative and without `..`, so it cannot point outside
//!   the destination (a target that only descends stays inside by induction);
//! * a hard link must name an earlier entry inside the archive;
//! * devices and FIFOs are refused.
//!
//! A tar archive must end with its end-of-archive marker: a tar cut at a block boundary would
//! otherwise look complete to the `tar` crate. Zip entries are CRC-checked by the `zip` crate.

use anyhow::{bail, Context, Result};
use std::cell::Cell;
use std::fs::{self, File};
use std::io::{self, BufReader, Read};
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;

/// Archive formats we unpack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArchiveFormat {
    /// POSIX/GNU tar.
    Tar,
    /// gzip-compressed tar.
    TarGz,
    /// Zip (stored or deflated entries).
    Zip,
}

/// What an extraction wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExtractStats {
    /// Regular files written.
    pub files: usize,
    /// Bytes of regular files written.
    pub bytes: u64,
}

/// Recognises the archive format from the magic bytes of `path`.
///
/// # Errors
/// If the file cannot be read or is none of the supported formats.
pub fn detect_format(path: &Path) -> Result<ArchiveFormat> {
    let mut head = [0u8; 512];
    let mut file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut n = 0;
    while n < head.len() {
        let got =
            file.read(&mut head[n..]).with_context(|| format!("reading {}", path.display()))?;
        if got == 0 {
            break;
        }
        n += got;
    }
    if n >= 2 && head[..2] == [0x1f, 0x8b] {
        Ok(ArchiveFormat::TarGz)
    } else if n >= 4 && (head[..4] == *b"PK\x03\x04" || head[..4] == *b"PK\x05\x06") {
        Ok(ArchiveFormat::Zip)
    } else if n == 512 && (&head[257..262] == b"ustar" || tar_checksum_ok(&head)) {
        Ok(ArchiveFormat::Tar) // POSIX/GNU tar, or pre-POSIX (v7) tar with a valid checksum
    } else {
        bail!("{}: not a .tar, .tar.gz or .zip archive (unrecognised first bytes)", path.display())
    }
}

fn tar_checksum_ok(block: &[u8; 512]) -> bool {
    let field = &block[148..156];
    let text: String =
        field.iter().take_while(|&&b| b != 0 && b != b' ').map(|&b| b as char).collect();
    let Ok(recorded) = u32::from_str_radix(text.trim(), 8) else {
        return false;
    };
    let sum: u32 = block
        .iter()
        .enumerate()
        .map(|(i, &b)| if (148..156).contains(&i) { 32 } else { u32::from(b) })
        .sum();
    sum == recorded && block.iter().any(|&b| b != 0)
}

/// Unpacks `archive` into the existing folder `into`.
///
/// # Errors
/// An unsafe entry (named, with the reason), a truncated or corrupt archive, or an I/O error.
/// What was written before the error stays in `into`; the caller owns cleaning it up.
pub fn extract(archive: &Path, into: &Path) -> Result<ExtractStats> {
    let format = detect_format(archive)?;
    tracing::info!(archive = %archive.display(), ?format, "unpacking");
    let open = || -> Result<BufReader<File>> {
        Ok(BufReader::with_capacity(
            1 << 20,
            File::open(archive).with_context(|| format!("opening {}", archive.display()))?,
        ))
    };
    let stats = match format {
        ArchiveFormat::Tar => extract_tar(open()?, into),
        ArchiveFormat::TarGz => extract_tar(flate2::bufread::MultiGzDecoder::new(open()?), into),
        ArchiveFormat::Zip => extract_zip(archive, into),
    };
    stats.with_context(|| format!("unpacking {}", archive.display()))
}

/// Checks an archive entry name and returns it as a relative path.
///
/// # Errors
/// For absolute paths, drive prefixes, `..` components, or an empty path.
pub fn safe_relative_path(name: &Path) -> Result<PathBuf> {
    let mut out = PathBuf::new();
    for component in name.components() {
        match component {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            Component::ParentDir => bail!("entry '{}' contains '..'; refused", name.display()),
            Component::RootDir | Component::Prefix(_) => {
                bail!("entry '{}' is an absolute path; refused", name.display())
            }
        }
    }
    if out.as_os_str().is_empty() {
        bail!("entry '{}' has an empty path; refused", name.display());
    }
    Ok(out)
}

/// Whether `name` names the destination itself (`./`, `.`): tools such as `tar -C dir .`
/// write such a directory entry first; it is skipped.
fn is_root_entry(name: &Path) -> bool {
    name.components().all(|c| c == Component::CurDir)
}

/// Checks the target of a symbolic link entry `name`.
fn check_symlink_target(name: &Path, target: &Path) -> Result<()> {
    for component in target.components() {
        match component {
            Component::Normal(_) | Component::CurDir => {}
            Component::ParentDir => bail!(
                "symbolic link '{}' -> '{}' may point outside the destination ('..'); refused",
                name.display(),
                target.display()
            ),
            Component::RootDir | Component::Prefix(_) => bail!(
                "symbolic link '{}' -> '{}' points to an absolute path; refused",
                name.display(),
                target.display()
            ),
        }
    }
    if target.as_os_str().is_empty() {
        bail!("symbolic link '{}' has an empty target; refused", name.display());
    }
    Ok(())
}

/// Records whether the reader it wraps ever reported end of file.
struct EofWatch<R> {
    inner: R,
    hit_eof: Rc<Cell<bool>>,
}

impl<R: Read> Read for EofWatch<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && !buf.is_empty() {
            self.hit_eof.set(true);
        }
        Ok(n)
    }
}

fn extract_tar<R: Read>(reader: R, into: &Path) -> Result<ExtractStats> {
    let hit_eof = Rc::new(Cell::new(false));
    let mut archive = tar::Archive::new(EofWatch { inner: reader, hit_eof: Rc::clone(&hit_eof) });
    archive.set_preserve_permissions(false);
    archive.set_unpack_xattrs(false);
    archive.set_overwrite(true);
    let mut stats = ExtractStats::default();
    for entry in archive.entries().context("reading the tar index")? {
        let mut entry =
            entry.context("reading a tar entry header (truncated or corrupt archive?)")?;
        let raw = entry.path().context("reading a tar entry name")?.into_owned();
        let kind = entry.header().entry_type();
        if matches!(
            kind,
            tar::EntryType::XGlobalHeader
                | tar::EntryType::XHeader
                | tar::EntryType::GNULongName
                | tar::EntryType::GNULongLink
        ) {
            continue;
        }
        if kind == tar::EntryType::Directory && is_root_entry(&raw) {
            continue;
        }
        let rel = safe_relative_path(&raw)?;
        match kind {
            tar::EntryType::Regular
            | tar::EntryType::Continuous
            | tar::EntryType::GNUSparse
            | tar::EntryType::Directory => {}
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name()
                    .with_context(|| format!("reading the target of '{}'", raw.display()))?
                    .with_context(|| format!("symbolic link '{}' has no target", raw.display()))?;
                check_symlink_target(&raw, &target)?;
            }
            tar::EntryType::Link => {
                let target = entry
                    .link_name()
                    .with_context(|| format!("reading the target of '{}'", raw.display()))?
                    .with_context(|| format!("hard link '{}' has no target", raw.display()))?;
                let target_rel = safe_relative_path(&target).with_context(|| {
                    format!("hard link '{}' -> '{}'", raw.display(), target.display())
                })?;
                if !into.join(&target_rel).is_file() {
                    bail!(
                        "hard link '{}' -> '{}' does not name an earlier file of the archive; refused",
                        raw.display(),
                        target.display()
                    );
                }
            }
            other => bail!(
                "entry '{}' has unsupported type {other:?} (device, FIFO, …); refused",
                raw.display()
            ),
        }
        let is_file = kind.is_file() || kind == tar::EntryType::GNUSparse;
        let size = entry.header().size().unwrap_or(0);
        if let Some(parent) = into.join(&rel).parent() {
            fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        let unpacked = entry
            .unpack_in(into)
            .with_context(|| format!("writing '{}' (truncated archive?)", raw.display()))?;
        if !unpacked {
            bail!("entry '{}' would be written outside the destination; refused", raw.display());
        }
        if is_file {
            stats.files += 1;
            stats.bytes += size;
        }
    }
    if hit_eof.get() {
        bail!("the tar archive ends without its end-of-archive marker: it is truncated (incomplete download or copy?)");
    }
    Ok(stats)
}

fn extract_zip(path: &Path, into: &Path) -> Result<ExtractStats> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut archive = zip::ZipArchive::new(BufReader::new(file))
        .context("reading the zip directory (truncated or corrupt archive?)")?;
    let mut stats = ExtractStats::default();
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i).with_context(|| format!("reading zip entry {i}"))?;
        let name = entry
            .name()
            .with_context(|| format!("reading the name of zip entry {i}"))?
            .into_owned();
        let raw = PathBuf::from(&name);
        if entry.is_dir() && is_root_entry(&raw) {
            continue;
        }
        let rel = safe_relative_path(&raw)?;
        let dest = into.join(&rel);
        if entry.is_dir() {
            fs::create_dir_all(&dest).with_context(|| format!("creating {}", dest.display()))?;
            continue;
        }
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        if entry.is_symlink() {
            let mut target = String::new();
            entry
                .read_to_string(&mut target)
                .with_context(|| format!("reading the target of '{name}'"))?;
            check_symlink_target(&raw, Path::new(&target))?;
            make_symlink(Path::new(&target), &dest)?;
            continue;
        }
        let mut out =
            File::create(&dest).with_context(|| format!("creating {}", dest.display()))?;
        let n = io::copy(&mut entry, &mut out)
            .with_context(|| format!("unpacking '{name}' (corrupt archive?)"))?;
        stats.files += 1;
        stats.bytes += n;
    }
    Ok(stats)
}

#[cfg(unix)]
fn make_symlink(target: &Path, link: &Path) -> Result<()> {
    std::os::unix::fs::symlink(target, link).with_context(|| {
        format!("creating symbolic link {} -> {}", link.display(), target.display())
    })
}

#[cfg(not(unix))]
fn make_symlink(target: &Path, link: &Path) -> Result<()> {
    bail!(
        "symbolic link {} -> {} in a zip archive is not supported on this platform",
        link.display(),
        target.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_paths_are_checked() {
        assert_eq!(safe_relative_path(Path::new("./a/b.nii")).unwrap(), PathBuf::from("a/b.nii"));
        for bad in ["/etc/passwd", "a/../../b", "..", "", "./"] {
            assert!(safe_relative_path(Path::new(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn root_entries_are_recognised() {
        assert!(
            is_root_entry(Path::new("./"))
                && is_root_entry(Path::new("."))
                && is_root_entry(Path::new(""))
        );
        assert!(!is_root_entry(Path::new("./a")));
    }

    #[test]
    fn symlink_targets_are_checked() {
        let n = Path::new("x");
        assert!(check_symlink_target(n, Path::new("sub/file")).is_ok());
        for bad in ["../x", "/etc", "a/../b", ""] {
            assert!(check_symlink_target(n, Path::new(bad)).is_err(), "{bad}");
        }
    }
}
