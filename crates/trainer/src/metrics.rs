//! Per-step metrics: the record, the JSONL log (one object per step) and
//! process memory in use.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use tch::Device;

use crate::error::{Error, Result};

/// What one optimizer step did.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StepMetrics {
    /// Optimizer step, 1-based (the count of steps done after this one).
    pub step: u64,
    /// Epoch the step's last example came from (0-based).
    pub epoch: u64,
    /// Mean cross-entropy over the step's target tokens (NaN/inf written as `null`).
    #[serde(with = "nan_as_null")]
    pub loss: f64,
    /// Learning rate used.
    pub lr: f64,
    /// Global gradient norm before clipping (NaN/inf written as `null`).
    #[serde(with = "nan_as_null")]
    pub grad_norm: f64,
    /// Input tokens processed (padding excluded).
    pub tokens: usize,
    /// Target tokens in the loss.
    pub target_tokens: usize,
    /// Input tokens per second over this step.
    pub tokens_per_s: f64,
    /// Wall time of the step, seconds.
    pub step_s: f64,
    /// True when the non-finite policy skipped this step's update.
    pub skipped: bool,
    /// Memory in use (bytes): device memory on CUDA, resident set on CPU.
    pub mem_bytes: u64,
}

/// JSON has no NaN: a non-finite value is written as `null` and read back as NaN.
mod nan_as_null {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(x: &f64, s: S) -> Result<S::Ok, S::Error> {
        if x.is_finite() {
            s.serialize_f64(*x)
        } else {
            s.serialize_none()
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
    }
}

/// Appends [`StepMetrics`] as JSON lines, flushed after every step so a
/// crash loses nothing already reported.
#[derive(Debug)]
pub struct MetricsLog {
    path: PathBuf,
    out: BufWriter<File>,
}

impl MetricsLog {
    /// Creates (or, with `append`, continues) the log at `path`.
    pub fn open(path: &Path, append: bool) -> Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .append(append)
            .truncate(!append)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        Ok(MetricsLog {
            path: path.to_path_buf(),
            out: BufWriter::new(file),
        })
    }

    /// Writes one line.
    pub fn write(&mut self, m: &StepMetrics) -> Result<()> {
        let line = serde_json::to_string(m)?;
        writeln!(self.out, "{line}")
            .and_then(|_| self.out.flush())
            .map_err(|e| Error::io(&self.path, e))
    }

    /// Keeps only the records up to `step` (a resumed run then appends each
    /// later step once, not a second time); rewrites the file atomically.
    /// A missing log is fine: there is nothing to cut.
    pub fn truncate_after(path: &Path, step: u64) -> Result<()> {
        if !path.exists() {
            return Ok(());
        }
        let kept: Vec<StepMetrics> = Self::read(path)?
            .into_iter()
            .filter(|m| m.step <= step)
            .collect();
        let mut text = String::new();
        for m in &kept {
            text.push_str(&serde_json::to_string(m)?);
            text.push('\n');
        }
        crate::fsutil::write_atomic(path, text.as_bytes())
    }

    /// Reads a log back (for plots and tests); names the line of a bad record.
    pub fn read(path: &Path) -> Result<Vec<StepMetrics>> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        text.lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| {
                serde_json::from_str(l).map_err(|e| Error::BadLine {
                    path: path.to_path_buf(),
                    line: i + 1,
                    reason: format!("not a metrics record: {e}"),
                })
            })
            .collect()
    }
}

/// Memory in use on `device`: on CUDA the device's used memory as the
/// driver reports it (total - free, all processes' allocations including
/// libtorch's cache); on CPU this process's resident set. 0 if unknown.
pub fn memory_in_use(device: Device) -> u64 {
    memory_in_use_checked(device).unwrap_or(0)
}

/// [`memory_in_use`], `None` when it cannot be read (no CUDA driver, no
/// `/proc`): the one memory probe of the workspace.
pub fn memory_in_use_checked(device: Device) -> Option<u64> {
    match device {
        Device::Cuda(ordinal) => cuda_used_bytes(ordinal),
        _ => process_rss(),
    }
}

/// Memory a new allocation can still get on `device`: free device memory
/// on CUDA (`cuMemGetInfo`), `MemAvailable` of `/proc/meminfo` on CPU; `None`
/// when unknown.
pub fn memory_available(device: Device) -> Option<u64> {
    match device {
        Device::Cuda(ordinal) => cuda_mem_info(ordinal).map(|(free, _)| free),
        _ => proc_kib("/proc/meminfo", "MemAvailable:"),
    }
}

/// This process's resident set, after returning freed heap pages to the OS
/// (so that a drop shows up at once, as the leak checks need).
pub fn process_rss() -> Option<u64> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free heap pages to the OS; it is
    // thread-safe and has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
    proc_kib("/proc/self/status", "VmRSS:")
}

/// The kB figure of the line starting with `key` in a `/proc` file, in bytes.
fn proc_kib(file: &str, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(file).ok()?;
    let line = text.lines().find(|l| l.starts_with(key))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn cuda_used_bytes(ordinal: usize) -> Option<u64> {
    cuda_mem_info(ordinal).map(|(free, total)| total.saturating_sub(free))
}

/// (free, total) bytes of CUDA device `ordinal`, from the driver.
fn cuda_mem_info(ordinal: usize) -> Option<(u64, u64)> {
    use std::sync::{Arc, OnceLock};
    static CTX: OnceLock<Option<Arc<cudarc::driver::CudaContext>>> = OnceLock::new();
    // cudarc's dynamic loader panics when libcuda is missing; libtorch has
    // already found it when the device is CUDA, but stay on the safe side.
    let ctx = CTX.get_or_init(|| {
        std::panic::catch_unwind(|| cudarc::driver::CudaContext::new(ordinal).ok())
            .ok()
            .flatten()
    });
    let (free, total) = ctx.as_ref()?.mem_get_info().ok()?;
    Some((free as u64, total as u64))
}

/// Bytes as "1.23 GiB" / "456.0 MiB".
pub fn human_bytes(b: u64) -> String {
    const GIB: f64 = (1u64 << 30) as f64;
    const MIB: f64 = (1u64 << 20) as f64;
    if b as f64 >= GIB {
        format!("{:.2} GiB", b as f64 / GIB)
    } else {
        format!("{:.1} MiB", b as f64 / MIB)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(step: u64, loss: f64) -> StepMetrics {
        StepMetrics {
            step,
            epoch: 0,
            loss,
            lr: 1e-3,
            grad_norm: 0.5,
            tokens: 100,
            target_tokens: 40,
            tokens_per_s: 1000.0,
            step_s: 0.1,
            skipped: false,
            mem_bytes: 1 << 20,
        }
    }

    #[test]
    fn log_writes_one_object_per_line_and_appends_on_resume() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.jsonl");
        let mut log = MetricsLog::open(&p, false).unwrap();
        log.write(&sample(1, 2.5)).unwrap();
        log.write(&sample(2, 2.0)).unwrap();
        drop(log);
        let mut log = MetricsLog::open(&p, true).unwrap();
        log.write(&sample(3, 1.5)).unwrap();
        drop(log);
        let back = MetricsLog::read(&p).unwrap();
        assert_eq!(back, vec![sample(1, 2.5), sample(2, 2.0), sample(3, 1.5)]);
        let text = std::fs::read_to_string(&p).unwrap();
        assert_eq!(text.lines().count(), 3);
        assert!(text.lines().all(|l| l.starts_with("{\"step\":")));
    }

    #[test]
    fn a_bad_record_is_reported_with_its_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.jsonl");
        std::fs::write(
            &p,
            format!(
                "{}\nnot json\n",
                serde_json::to_string(&sample(1, 1.0)).unwrap()
            ),
        )
        .unwrap();
        let e = MetricsLog::read(&p).unwrap_err().to_string();
        assert!(e.contains("m.jsonl:2:"), "{e}");
    }

    #[test]
    fn truncating_keeps_the_steps_up_to_the_resume_point() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.jsonl");
        let mut log = MetricsLog::open(&p, false).unwrap();
        for s in 1..=5 {
            log.write(&sample(s, 1.0 / s as f64)).unwrap();
        }
        drop(log);
        MetricsLog::truncate_after(&p, 3).unwrap();
        let steps: Vec<u64> = MetricsLog::read(&p)
            .unwrap()
            .iter()
            .map(|m| m.step)
            .collect();
        assert_eq!(steps, [1, 2, 3]);
        MetricsLog::truncate_after(&dir.path().join("none.jsonl"), 3).unwrap();
    }

    #[test]
    fn cpu_memory_is_reported() {
        let available = memory_available(Device::Cpu).unwrap();
        assert!(available > 1 << 20, "MemAvailable {available} bytes");
        let m = memory_in_use(Device::Cpu);
        assert!(m > 1 << 20, "resident set {m} bytes");
        assert_eq!(human_bytes(3 << 30), "3.00 GiB");
        assert_eq!(human_bytes(5 << 19), "2.5 MiB");
    }
}
