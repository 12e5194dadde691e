//! Atomic directory publication: fill a temp directory beside the final
//! one, fsync every file and the directory, rename it into place, fsync
//! the parent. A kill at any moment leaves either the old state or the new
//! one under the final name, never a half-written directory.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::{IoContext, Result};

/// A directory being filled under a temporary name in the final parent
/// (same filesystem, so the closing rename is atomic).
///
/// Dropped without [`commit`](Self::commit) (an error part-way), it removes
/// itself; a real kill leaves it behind, and the owner's next save sweeps
/// leftovers by their prefix.
#[derive(Debug)]
pub(crate) struct StagingDir {
    path: Option<PathBuf>,
}

impl StagingDir {
    /// Creates `<parent>/<prefix><pid>-<nanos>-<n>`.
    pub(crate) fn create(parent: &Path, prefix: &str) -> Result<Self> {
        let path = parent.join(unique_name(prefix));
        fs::create_dir(&path).io_ctx("create directory", &path)?;
        Ok(Self { path: Some(path) })
    }

    /// Creates `<parent>/<name>` (a name every rank of a collective save
    /// knows); it must not exist.
    pub(crate) fn create_named(parent: &Path, name: &str) -> Result<Self> {
        let path = parent.join(name);
        fs::create_dir(&path).io_ctx("create directory", &path)?;
        Ok(Self { path: Some(path) })
    }

    /// Where to write the files.
    pub(crate) fn path(&self) -> &Path {
        self.path
            .as_deref()
            .expect("path is only taken by commit/abandon")
    }

    /// Publishes the directory as `final_path`, which must not exist.
    /// Every file inside must already be fsynced (the writers do it).
    pub(crate) fn commit(mut self, final_path: &Path) -> Result<()> {
        let path = self.path.take().expect("not yet committed");
        let parent = final_path.parent().unwrap_or(Path::new("."));
        // The directory's own entries must be durable before it is renamed,
        // or a crash could publish a directory whose file names are lost.
        fsync_dir(&path)?;
        if let Err(e) = fs::rename(&path, final_path) {
            self.path = Some(path); // let Drop remove it
            return Err(e).io_ctx("rename into place", final_path);
        }
        fsync_dir(parent)
    }

    /// Publishes the directory as `final_path`, replacing whatever is there.
    ///
    /// On Linux the two directories are swapped in one atomic
    /// `renameat2(RENAME_EXCHANGE)`, so `final_path` always names a complete
    /// directory, old or new; the old one, now under the temp name, is then
    /// removed (or swept later by its prefix). Where the platform or
    /// filesystem cannot swap, the old directory is first moved aside to
    /// `<trash_prefix>...`, leaving a short window without `final_path`.
    pub(crate) fn commit_replacing(mut self, final_path: &Path, trash_prefix: &str) -> Result<()> {
        if !final_path.exists() {
            return self.commit(final_path);
        }
        let path = self.path.take().expect("not yet committed");
        fsync_dir(&path)?;
        match exchange(&path, final_path) {
            Ok(()) => {
                fsync_dir(final_path.parent().unwrap_or(Path::new(".")))?;
                // `path` now holds the replaced directory.
                if let Err(e) = fs::remove_dir_all(&path) {
                    tracing::warn!("could not remove replaced {}: {e}", path.display());
                }
                Ok(())
            }
            Err(e) if exchange_unsupported(&e) => {
                self.path = Some(path);
                remove_dir_atomically(final_path, trash_prefix)?;
                self.commit(final_path)
            }
            Err(e) => {
                self.path = Some(path); // let Drop remove it
                Err(e).io_ctx("swap into place", final_path)
            }
        }
    }

    /// Test hook: stop as a kill would, leaving the files where they are.
    #[cfg(test)]
    pub(crate) fn abandon(mut self) -> PathBuf {
        self.path.take().expect("not yet committed")
    }
}

impl Drop for StagingDir {
    fn drop(&mut self) {
        if let Some(path) = self.path.take() {
            // Best effort: an error is already being returned to the caller.
            if let Err(e) = fs::remove_dir_all(&path) {
                tracing::warn!("could not remove temp directory {}: {e}", path.display());
            }
        }
    }
}

/// Atomically swaps two paths (Linux `renameat2` with `RENAME_EXCHANGE`).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let a = CString::new(a.as_os_str().as_bytes())?;
    let b = CString::new(b.as_os_str().as_bytes())?;
    // SAFETY: both arguments are valid NUL-terminated strings that outlive
    // the call; AT_FDCWD resolves relative paths as std::fs does.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn exchange(_a: &Path, _b: &Path) -> std::io::Result<()> {
    Err(std::io::ErrorKind::Unsupported.into())
}

/// Errors meaning "this kernel or filesystem cannot swap": fall back.
fn exchange_unsupported(e: &std::io::Error) -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if matches!(
        e.raw_os_error(),
        Some(libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP)
    ) {
        return true;
    }
    e.kind() == std::io::ErrorKind::Unsupported
}

/// fsyncs a directory, making renames and new entries in it durable.
pub(crate) fn fsync_dir(path: &Path) -> Result<()> {
    File::open(path)
        .and_then(|dir| dir.sync_all())
        .io_ctx("fsync directory", path)
}

/// Removes a directory so that no reader ever sees it half deleted: it is
/// first renamed (atomically) to `<parent>/<trash_prefix>...`, then removed.
pub(crate) fn remove_dir_atomically(path: &Path, trash_prefix: &str) -> Result<()> {
    let parent = path.parent().unwrap_or(Path::new("."));
    let trash = parent.join(unique_name(trash_prefix));
    fs::rename(path, &trash).io_ctx("rename for deletion", path)?;
    fsync_dir(parent)?;
    fs::remove_dir_all(&trash).io_ctx("remove directory", &trash)
}

/// Removes every directory in `parent` whose name starts with one of
/// `prefixes`: what a kill during a save or a deletion left behind.
/// Returns how many were removed.
pub(crate) fn sweep_leftovers(parent: &Path, prefixes: &[&str]) -> Result<usize> {
    let mut removed = 0;
    for entry in fs::read_dir(parent).io_ctx("list directory", parent)? {
        let entry = entry.io_ctx("list directory", parent)?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if !prefixes.iter().any(|p| name.starts_with(p)) {
            continue;
        }
        let path = entry.path();
        if path.is_dir() {
            fs::remove_dir_all(&path).io_ctx("remove leftover directory", &path)?;
        } else {
            fs::remove_file(&path).io_ctx("remove leftover file", &path)?;
        }
        tracing::info!("removed leftover {}", path.display());
        removed += 1;
    }
    Ok(removed)
}

/// `<prefix><pid>-<nanos>-<counter>`: unique across processes and calls.
fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{}-{nanos}-{n}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn should_publish_files_only_on_commit() {
        let root = tempfile::tempdir().unwrap();
        let staging = StagingDir::create(root.path(), ".tmp-x-").unwrap();
        fs::write(staging.path().join("a"), b"hello").unwrap();
        let final_path = root.path().join("x");
        assert!(!final_path.exists());
        staging.commit(&final_path).unwrap();
        assert_eq!(fs::read(final_path.join("a")).unwrap(), b"hello");
        assert_eq!(
            fs::read_dir(root.path()).unwrap().count(),
            1,
            "no temp dir left"
        );
    }

    #[test]
    fn should_remove_itself_when_dropped_uncommitted() {
        let root = tempfile::tempdir().unwrap();
        let staging = StagingDir::create(root.path(), ".tmp-x-").unwrap();
        let path = staging.path().to_path_buf();
        fs::write(path.join("a"), b"partial").unwrap();
        drop(staging);
        assert!(!path.exists());
    }

    #[test]
    fn should_refuse_to_commit_over_an_existing_non_empty_directory() {
        let root = tempfile::tempdir().unwrap();
        let final_path = root.path().join("x");
        fs::create_dir(&final_path).unwrap();
        fs::write(final_path.join("old"), b"old").unwrap();
        let staging = StagingDir::create(root.path(), ".tmp-x-").unwrap();
        fs::write(staging.path().join("new"), b"new").unwrap();
        assert!(staging.commit(&final_path).is_err());
        assert_eq!(fs::read(final_path.join("old")).unwrap(), b"old");
        assert_eq!(
            fs::read_dir(root.path()).unwrap().count(),
            1,
            "temp dir removed"
        );
    }

    #[test]
    fn should_swap_out_an_existing_directory() {
        let root = tempfile::tempdir().unwrap();
        let final_path = root.path().join("x");
        fs::create_dir(&final_path).unwrap();
        fs::write(final_path.join("old"), b"old").unwrap();
        let staging = StagingDir::create(root.path(), ".tmp-x-").unwrap();
        fs::write(staging.path().join("new"), b"new").unwrap();
        staging.commit_replacing(&final_path, ".trash-").unwrap();
        assert_eq!(fs::read(final_path.join("new")).unwrap(), b"new");
        assert!(!final_path.join("old").exists());
        assert_eq!(
            fs::read_dir(root.path()).unwrap().count(),
            1,
            "replaced dir removed"
        );
    }

    #[test]
    fn should_sweep_only_prefixed_leftovers() {
        let root = tempfile::tempdir().unwrap();
        fs::create_dir(root.path().join(".tmp-step-1-2-3")).unwrap();
        fs::write(root.path().join(".tmp-step-1-2-3/f"), b"x").unwrap();
        fs::create_dir(root.path().join(".trash-9")).unwrap();
        fs::create_dir(root.path().join("step-000001")).unwrap();
        let removed = sweep_leftovers(root.path(), &[".tmp-", ".trash-"]).unwrap();
        assert_eq!(removed, 2);
        let left: Vec<_> = fs::read_dir(root.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(left, vec!["step-000001".to_string()]);
    }

    #[test]
    fn should_delete_a_directory_through_a_trash_name() {
        let root = tempfile::tempdir().unwrap();
        let victim = root.path().join("step-000001");
        fs::create_dir(&victim).unwrap();
        fs::write(victim.join("f"), b"x").unwrap();
        remove_dir_atomically(&victim, ".trash-").unwrap();
        assert!(!victim.exists());
        assert_eq!(fs::read_dir(root.path()).unwrap().count(), 0);
    }
}
