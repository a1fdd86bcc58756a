//! [`Outputs`]: every file a command will write, checked before any work and written under
//! temporary names that are renamed into place only once everything succeeded — a failure
//! (or Ctrl-C) leaves no half-written result behind.
//!
//! ```text
//! let mut out = Outputs::plan(&[seg, preview], &inputs)?;   // folders created, writability checked
//! … long work …
//! write(out.staging(&seg)?)?;                               // `.seg.mgsd-partial-<pid>.nii.gz`
//! out.commit()?;                                            // renamed to `seg.nii.gz`
//! ```
//! Temporary files are hidden (leading `.`), keep the extension (the NIfTI writer compresses
//! by name) and are removed when the plan is dropped without a commit.

use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The files a command will write (see the module docs).
#[derive(Debug)]
pub struct Outputs {
    /// Final path → temporary path, for the files planned.
    staged: BTreeMap<PathBuf, PathBuf>,
    committed: bool,
}

/// `seg.nii.gz` → `.seg.mgsd-partial-<pid>.nii.gz` in the same folder.
fn staging_name(path: &Path) -> Result<PathBuf> {
    let name = path
        .file_name()
        .with_context(|| format!("output {} has no file name", path.display()))?
        .to_string_lossy();
    let (stem, ext) = match name.find('.') {
        Some(0) | None => (name.as_ref(), ""),
        Some(i) => name.split_at(i),
    };
    Ok(path.with_file_name(format!(".{stem}.mgsd-partial-{}{ext}", std::process::id())))
}

impl Outputs {
    /// Plans `files`: creates their folders, checks that each folder takes a new file, that no
    /// file is planned twice, is a folder, or is one of `inputs`.
    ///
    /// # Errors
    /// A folder that cannot be created or written, an output that is a folder, twice planned
    /// or an input — naming it.
    pub fn plan(files: &[PathBuf], inputs: &[PathBuf]) -> Result<Self> {
        let mut staged = BTreeMap::new();
        let canonical_inputs: Vec<PathBuf> =
            inputs.iter().filter_map(|p| std::fs::canonicalize(p).ok()).collect();
        for file in files {
            if file.is_dir() {
                bail!("output {} is an existing folder; give a file name", file.display());
            }
            if std::fs::canonicalize(file).is_ok_and(|c| canonical_inputs.contains(&c)) {
                bail!("output {} is one of the inputs; it would be overwritten", file.display());
            }
            let dir = match file.parent() {
                Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
                _ => PathBuf::from("."),
            };
            std::fs::create_dir_all(&dir).with_context(|| {
                format!("cannot create the folder {} for {}", dir.display(), file.display())
            })?;
            let tmp = staging_name(file)?;
            if staged.insert(file.clone(), tmp.clone()).is_some() {
                bail!("output {} is given twice", file.display());
            }
            // Writability: create and remove the temporary file now, before any work.
            std::fs::write(&tmp, b"").with_context(|| {
                format!("cannot write {} (in {})", file.display(), dir.display())
            })?;
            let _ = std::fs::remove_file(&tmp);
        }
        Ok(Outputs { staged, committed: false })
    }

    /// Plans one more file (see [`Outputs::plan`]).
    ///
    /// # Errors
    /// As [`Outputs::plan`].
    pub fn add(&mut self, file: &Path) -> Result<()> {
        let mut more = Outputs::plan(&[file.to_path_buf()], &[])?;
        for (k, v) in std::mem::take(&mut more.staged) {
            if self.staged.contains_key(&k) {
                bail!("output {} is given twice", k.display());
            }
            self.staged.insert(k, v);
        }
        Ok(())
    }

    /// The temporary path to write `file` to.
    ///
    /// # Errors
    /// If `file` was not planned (a programming error, reported rather than panicked on).
    pub fn staging(&self, file: &Path) -> Result<&Path> {
        self.staged
            .get(file)
            .map(PathBuf::as_path)
            .with_context(|| format!("internal error: output {} was not planned", file.display()))
    }

    /// The final paths planned, sorted.
    pub fn files(&self) -> Vec<PathBuf> {
        self.staged.keys().cloned().collect()
    }

    /// Renames every written temporary file to its final name. Files planned but never
    /// written are an error (nothing is renamed then).
    ///
    /// # Errors
    /// A planned file that was not written, or a rename that fails (naming both paths).
    pub fn commit(mut self) -> Result<Vec<PathBuf>> {
        for (file, tmp) in &self.staged {
            if !tmp.is_file() {
                bail!("internal error: output {} was planned but not written", file.display());
            }
        }
        for (file, tmp) in &self.staged {
            std::fs::rename(tmp, file)
                .with_context(|| format!("renaming {} to {}", tmp.display(), file.display()))?;
        }
        self.committed = true;
        Ok(self.staged.keys().cloned().collect())
    }
}

impl Drop for Outputs {
    fn drop(&mut self) {
        if !self.committed {
            for tmp in self.staged.values() {
                let _ = std::fs::remove_file(tmp);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staging_keeps_the_extension_and_hides_the_file() {
        let t = staging_name(Path::new("/a/seg.nii.gz")).unwrap();
        let name = t.file_name().unwrap().to_string_lossy().to_string();
        assert!(name.starts_with(".seg.mgsd-partial-") && name.ends_with(".nii.gz"), "{name}");
        assert_eq!(t.parent(), Some(Path::new("/a")));
    }

    #[test]
    fn commit_renames_and_drop_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("sub/a.nii.gz");
        let b = dir.path().join("b.png");
        let out = Outputs::plan(&[a.clone(), b.clone()], &[]).unwrap();
        std::fs::write(out.staging(&a).unwrap(), b"a").unwrap();
        std::fs::write(out.staging(&b).unwrap(), b"b").unwrap();
        assert!(!a.exists());
        out.commit().unwrap();
        assert_eq!(std::fs::read(&a).unwrap(), b"a");

        let c = dir.path().join("c.nii.gz");
        {
            let out = Outputs::plan(std::slice::from_ref(&c), &[]).unwrap();
            std::fs::write(out.staging(&c).unwrap(), b"half").unwrap();
        } // dropped: a failure before commit
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().collect();
        assert!(!c.exists());
        assert!(left.iter().all(|e| !e.file_name().to_string_lossy().contains("partial")));
    }

    #[test]
    fn refuses_before_any_work() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("plain.txt");
        std::fs::write(&file, "x").unwrap();
        // A folder that cannot be created (a file stands in its way).
        let e = Outputs::plan(&[file.join("p.png")], &[]).unwrap_err();
        assert!(format!("{e:#}").contains("p.png"), "{e:#}");
        // An existing folder as the output file, an input, a duplicate.
        assert!(Outputs::plan(&[dir.path().to_path_buf()], &[]).is_err());
        assert!(Outputs::plan(std::slice::from_ref(&file), std::slice::from_ref(&file)).is_err());
        let d = dir.path().join("d.nii.gz");
        assert!(Outputs::plan(&[d.clone(), d], &[]).is_err());
    }
}
