//! The run directory: a fresh one per run by default (named by the start
//! time), and an exclusive lock on it for as long as a run writes there.
//!
//! The lock is an OS advisory lock (`flock`) on `<run-dir>/.lock`, held by an
//! open file: the kernel drops it when the process ends, however it ends, so
//! a killed run never leaves a stale lock behind.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Name of the lock file inside a run directory.
pub const LOCK_FILE: &str = ".lock";

/// An exclusive lock on a run directory; released when dropped.
#[derive(Debug)]
pub struct RunDirLock {
    _file: File,
    dir: PathBuf,
}

impl RunDirLock {
    /// Creates `dir` if needed and locks it; a directory another live run
    /// holds is refused with [`Error::RunDirBusy`] (naming that run's pid).
    pub fn acquire(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let path = dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        // SAFETY: flock on a descriptor this function owns; no memory is shared.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() != std::io::ErrorKind::WouldBlock {
                return Err(Error::io(&path, err));
            }
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            return Err(Error::RunDirBusy {
                path: dir.to_path_buf(),
                holder: holder.trim().to_string(),
            });
        }
        // The holder's pid, for the message a second writer gets.
        let pid = std::process::id().to_string();
        file.set_len(0)
            .and_then(|_| file.seek(SeekFrom::Start(0)))
            .and_then(|_| file.write_all(pid.as_bytes()))
            .map_err(|e| Error::io(&path, e))?;
        Ok(Self {
            _file: file,
            dir: dir.to_path_buf(),
        })
    }

    /// The locked directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// `<parent>/<prefix>-YYYYMMDD-HHMMSS` (UTC) for a run starting now, with
/// `-2`, `-3`, ... appended if that name is taken (two runs in one second).
pub fn timestamped_run_dir(parent: &Path, prefix: &str) -> PathBuf {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let base = format!("{prefix}-{}", utc_stamp(secs));
    let mut dir = parent.join(&base);
    let mut n = 2;
    while dir.exists() {
        dir = parent.join(format!("{base}-{n}"));
        n += 1;
    }
    dir
}

/// `YYYYMMDD-HHMMSS` for seconds since the Unix epoch, UTC (proleptic Gregorian).
fn utc_stamp(secs: u64) -> String {
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Days to civil date (Howard Hinnant's algorithm, era = 400 years).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}-{:02}{:02}{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_stamps_match_known_dates() {
        assert_eq!(utc_stamp(0), "19700101-000000");
        // 2000-02-29 12:34:56 UTC (a leap day of a century leap year).
        assert_eq!(utc_stamp(951_827_696), "20000229-123456");
        // 2026-12-31 23:59:59 UTC.
        assert_eq!(utc_stamp(1_798_761_599), "20261231-235959");
    }

    #[test]
    fn a_second_lock_on_the_same_directory_is_refused_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        let first = RunDirLock::acquire(&run).unwrap();
        let e = RunDirLock::acquire(&run).unwrap_err().to_string();
        assert!(e.contains("in use by another run"), "{e}");
        assert!(
            e.contains(&std::process::id().to_string()),
            "names the holder: {e}"
        );
        drop(first);
        RunDirLock::acquire(&run).unwrap();
    }

    #[test]
    fn timestamped_names_never_collide() {
        let dir = tempfile::tempdir().unwrap();
        let a = timestamped_run_dir(dir.path(), "train");
        std::fs::create_dir_all(&a).unwrap();
        let b = timestamped_run_dir(dir.path(), "train");
        assert_ne!(a, b);
        let name = a.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            name.starts_with("train-") && name.len() == "train-YYYYMMDD-HHMMSS".len(),
            "{name}"
        );
    }
}
