//! The staging folder where an import is assembled, and the moves that install it: a dataset
//! folder appears under `data/` only by rename, complete, or not at all.

use anyhow::{Context, Result};
use std::fs;
use std::path::{Path, PathBuf};

/// A working folder inside `dest` that is deleted when dropped unless it was moved away.
pub(crate) struct Staging {
    pub(crate) path: PathBuf,
}

impl Staging {
    pub(crate) fn new(dest: &Path, label: &str) -> Result<Self> {
        let path = dest.join(format!(".staging-{}-{label}", std::process::id()));
        if path.exists() {
            fs::remove_dir_all(&path).with_context(|| format!("removing {}", path.display()))?;
        }
        fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Staging { path })
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if self.path.exists() {
            if let Err(e) = fs::remove_dir_all(&self.path) {
                tracing::warn!(path = %self.path.display(), error = %e, "could not remove the staging folder");
            }
        }
    }
}

/// Removes `.staging-<pid>-*` and `.old-<pid>-*` folders of processes that no longer run
/// (only where `/proc` tells).
pub(crate) fn remove_stale_work(dest: &Path) {
    if !Path::new("/proc/self").exists() {
        return;
    }
    let Ok(entries) = fs::read_dir(dest) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(".staging-").or_else(|| name.strip_prefix(".old-"))
        else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !Path::new("/proc").join(pid.to_string()).exists() {
            tracing::info!(path = %entry.path().display(), "removing the leftovers of an interrupted run");
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

/// Moves `ready` to `target`; an existing `target` (ours: checked by the caller) is moved
/// aside first and deleted after.
pub(crate) fn replace_dir(ready: &Path, target: &Path, dest: &Path) -> Result<()> {
    let old = if target.exists() {
        let name = target
            .file_name()
            .map_or_else(|| "dataset".into(), |n| n.to_string_lossy().into_owned());
        let aside = dest.join(format!(".old-{}-{name}", std::process::id()));
        fs::rename(target, &aside).with_context(|| format!("moving {} aside", target.display()))?;
        Some(aside)
    } else {
        None
    };
    if let Err(e) = fs::rename(ready, target) {
        if let Some(aside) = &old {
            let _ = fs::rename(aside, target);
        }
        return Err(e)
            .with_context(|| format!("moving {} to {}", ready.display(), target.display()));
    }
    if let Some(aside) = old {
        fs::remove_dir_all(&aside)
            .with_context(|| format!("removing the previous copy {}", aside.display()))?;
    }
    Ok(())
}

/// Copies a folder tree (files and folders; symbolic links to files are copied as files,
/// links to folders are skipped with a warning).
pub(crate) fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    let mut entries: Vec<_> = fs::read_dir(from)
        .with_context(|| format!("listing {}", from.display()))?
        .collect::<std::io::Result<_>>()
        .with_context(|| format!("listing {}", from.display()))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let src = entry.path();
        let dst = to.join(entry.file_name());
        let kind = entry.file_type().with_context(|| format!("reading {}", src.display()))?;
        if kind.is_dir() {
            copy_tree(&src, &dst)?;
        } else if kind.is_symlink() && src.is_dir() {
            tracing::warn!(path = %src.display(), "skipping a symbolic link to a folder");
        } else {
            fs::copy(&src, &dst)
                .with_context(|| format!("copying {} to {}", src.display(), dst.display()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leftovers_of_dead_runs_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        // No process has an id above the kernel's pid_max (at most 2^22).
        let dead = dir.path().join(".staging-999999999-x");
        let dead_old = dir.path().join(".old-999999999-x");
        let alive = dir.path().join(format!(".staging-{}-x", std::process::id()));
        let other = dir.path().join(".staging-notapid");
        for d in [&dead, &dead_old, &alive, &other] {
            fs::create_dir_all(d.join("sub")).unwrap();
        }
        remove_stale_work(dir.path());
        if Path::new("/proc/self").exists() {
            assert!(!dead.exists() && !dead_old.exists());
        }
        assert!(alive.exists() && other.exists());
    }
}
