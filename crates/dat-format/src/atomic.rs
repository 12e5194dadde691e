//! Atomic file replacement: write a temporary file in the destination's
//! directory, fsync it, rename it over the final name, fsync the directory.
//! A crash at any point leaves either the old file or the complete new one
//! under the final name, never a half-written one.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use tempfile::NamedTempFile;

use crate::error::{Error, Result};

/// A file being written under a temporary name; deleted if dropped uncommitted.
#[derive(Debug)]
pub struct AtomicFile {
    final_path: PathBuf,
    tmp: NamedTempFile,
}

impl AtomicFile {
    /// Creates the temporary file next to `final_path` (same directory, hence
    /// same file system, so the final rename is atomic).
    pub fn create(final_path: &Path) -> Result<Self> {
        let dir = parent_dir(final_path);
        let name = final_path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let prefix = format!(".{name}.");
        let mut builder = tempfile::Builder::new();
        builder.prefix(&prefix).suffix(".tmp");
        #[cfg(unix)]
        {
            // NamedTempFile defaults to 0600; a model file is an ordinary file.
            use std::os::unix::fs::PermissionsExt;
            builder.permissions(std::fs::Permissions::from_mode(0o644));
        }
        let tmp = builder
            .tempfile_in(dir)
            .map_err(Error::io(final_path, "create a temporary file beside"))?;
        Ok(Self {
            final_path: final_path.to_path_buf(),
            tmp,
        })
    }

    /// The temporary path (for writers that write the file by name).
    pub fn tmp_path(&self) -> &Path {
        self.tmp.path()
    }

    /// Flushes, fsyncs, renames over the final path and fsyncs the directory.
    pub fn commit(mut self) -> Result<()> {
        let path = self.final_path.clone();
        self.tmp.flush().map_err(Error::io(&path, "flush"))?;
        self.tmp
            .as_file()
            .sync_all()
            .map_err(Error::io(&path, "fsync"))?;
        self.tmp.persist(&path).map_err(|e| Error::Io {
            path: path.clone(),
            op: "rename onto",
            error: e.error,
        })?;
        sync_dir(parent_dir(&path))
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.tmp.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.tmp.flush()
    }
}

/// Writes `bytes` to `path` atomically.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut file = AtomicFile::create(path)?;
    file.write_all(bytes).map_err(Error::io(path, "write"))?;
    file.commit()
}

/// Makes a rename in `dir` durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    // Directories can be opened read-only and fsynced on Unix; elsewhere the
    // rename itself is the best available guarantee.
    #[cfg(unix)]
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(Error::io(dir, "fsync directory"))?;
    let _ = dir;
    Ok(())
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uncommitted_file_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("model.dat");
        {
            let mut f = AtomicFile::create(&target).unwrap();
            f.write_all(b"partial").unwrap();
        }
        assert!(!target.exists());
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "temporary file not removed"
        );
    }

    #[test]
    fn commit_replaces_an_existing_file_whole() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("model.dat");
        std::fs::write(&target, b"old contents").unwrap();
        let mut f = AtomicFile::create(&target).unwrap();
        f.write_all(b"new").unwrap();
        // Until commit, readers still see the old file.
        assert_eq!(std::fs::read(&target).unwrap(), b"old contents");
        f.commit().unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"new");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
