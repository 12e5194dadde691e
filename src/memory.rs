//! Memory in use, the quantity the stress run watches for leaks, read with
//! the trainer's one probe (`trainer::memory_in_use_checked`):
//!
//! - CUDA: device memory in use (`total - free` from the driver's
//!   `cuMemGetInfo`). It counts what torch's caching allocator keeps
//!   reserved after tensors are dropped, so a leak check must compare
//!   against a baseline taken after a warm-up run, not before the first load.
//! - CPU: resident set size of this process, after `malloc_trim` so freed
//!   heap pages are handed back before reading it.

use anyhow::{Context, Result};
use tch::Device;

/// Reads the memory in use for one device; cheap enough to call per iteration.
pub struct MemoryProbe {
    device: Device,
}

impl MemoryProbe {
    /// A probe for `device`; an error when its memory cannot be read (no
    /// CUDA driver, no `/proc`), so a stress run never compares zeros.
    pub fn new(device: Device) -> Result<Self> {
        trainer::memory_in_use_checked(device)
            .with_context(|| format!("{device:?}: cannot read the memory in use"))?;
        Ok(Self { device })
    }

    /// What [`MemoryProbe::bytes_in_use`] measures, in words.
    pub fn what(&self) -> &'static str {
        match self.device {
            Device::Cuda(_) => "device memory in use (cuMemGetInfo)",
            _ => "process RSS (/proc/self/status)",
        }
    }

    /// Bytes in use now. On CUDA the device is synchronized first so that
    /// frees queued on the stream have happened.
    pub fn bytes_in_use(&self) -> Result<u64> {
        if let Device::Cuda(i) = self.device {
            tch::Cuda::synchronize(i as i64);
        }
        trainer::memory_in_use_checked(self.device)
            .with_context(|| format!("{:?}: cannot read the memory in use", self.device))
    }
}

/// Resident set size of this process in bytes.
pub fn process_rss() -> Result<u64> {
    trainer::process_rss().context("/proc/self/status: cannot read the resident set (Linux only)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rss_grows_with_a_touched_allocation_and_shrinks_after_drop() {
        const SIZE: usize = 64 << 20;
        let _guard = crate::heavy_test_lock();
        let before = process_rss().unwrap();
        let block = vec![1u8; SIZE]; // vec! of non-zero bytes touches every page
        let during = process_rss().unwrap();
        assert_eq!(block[SIZE - 1], 1);
        drop(block);
        let after = process_rss().unwrap();
        eprintln!("rss before {before} during {during} after {after}");
        // Tolerance: 16 MiB for whatever the test harness allocates meanwhile.
        assert!(
            during >= before + SIZE as u64 - (16 << 20),
            "RSS did not see the 64 MiB block"
        );
        assert!(
            after + (SIZE as u64) - (16 << 20) <= during,
            "RSS did not drop after free"
        );
    }
}
