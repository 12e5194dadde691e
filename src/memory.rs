//! Memory in use, the quantity the stress run watches for leaks.
//!
//! - CUDA: device memory in use (`total - free` from the driver's
//!   `cuMemGetInfo`, through cudarc). It counts what torch's caching allocator
//!   keeps reserved after tensors are dropped, so a leak check must compare
//!   against a baseline taken after a warm-up run, not before the first load.
//! - CPU: resident set size of this process (`/proc/self/statm`), after
//!   `malloc_trim` so freed heap pages are handed back before reading it.

use std::sync::Arc;

use anyhow::{bail, Context, Result};
use tch::Device;

/// Reads the memory in use for one device; cheap enough to call per iteration.
pub struct MemoryProbe {
    device: Device,
    cuda: Option<Arc<cudarc::driver::CudaContext>>,
}

impl MemoryProbe {
    /// A probe for `device` (for CUDA this retains the device's primary context,
    /// the same one torch uses).
    pub fn new(device: Device) -> Result<Self> {
        let cuda = match device {
            Device::Cuda(i) => Some(cudarc::driver::CudaContext::new(i).with_context(|| {
                format!("cuda:{i}: cannot open the CUDA driver to read memory")
            })?),
            _ => None,
        };
        Ok(Self { device, cuda })
    }

    /// What [`MemoryProbe::bytes_in_use`] measures, in words.
    pub fn what(&self) -> &'static str {
        if self.cuda.is_some() {
            "device memory in use (cuMemGetInfo)"
        } else {
            "process RSS (/proc/self/statm)"
        }
    }

    /// Bytes in use now. On CUDA the device is synchronized first so that
    /// frees queued on the stream have happened.
    pub fn bytes_in_use(&self) -> Result<u64> {
        match (&self.cuda, self.device) {
            (Some(ctx), Device::Cuda(i)) => {
                tch::Cuda::synchronize(i as i64);
                let (free, total) = ctx
                    .mem_get_info()
                    .with_context(|| format!("cuda:{i}: cuMemGetInfo failed"))?;
                Ok((total - free) as u64)
            }
            _ => process_rss(),
        }
    }
}

/// Resident set size of this process in bytes.
pub fn process_rss() -> Result<u64> {
    trim_heap();
    let statm = std::fs::read_to_string("/proc/self/statm")
        .context("/proc/self/statm: cannot read (Linux only)")?;
    let resident: u64 = match statm.split_whitespace().nth(1).map(str::parse) {
        Some(Ok(pages)) => pages,
        _ => bail!("/proc/self/statm: unexpected content {statm:?}"),
    };
    Ok(resident * page_size())
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions; _SC_PAGESIZE is always valid on Linux.
    let size = unsafe { sysconf(SC_PAGESIZE) };
    if size > 0 {
        size as u64
    } else {
        4096
    }
}

const SC_PAGESIZE: i32 = 30; // _SC_PAGESIZE in glibc and musl on Linux.

extern "C" {
    fn sysconf(name: i32) -> i64;
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim_heap() {
    extern "C" {
        fn malloc_trim(pad: usize) -> i32;
    }
    // SAFETY: malloc_trim only returns free heap pages to the OS; it is
    // thread-safe and has no preconditions.
    unsafe {
        malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim_heap() {}

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
