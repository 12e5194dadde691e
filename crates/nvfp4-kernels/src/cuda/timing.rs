//! GPU-side timing for benchmarks: [`time_gpu`] measures how long a batch of
//! enqueued work takes on the GPU alone, excluding the CPU's launch overhead,
//! which for kernels of a few microseconds can exceed the kernel itself.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use cudarc::driver::{sys as cu, LaunchConfig};
use tch::Device;

use super::compile::KernelModule;
use super::runtime::{runtime, KernelArg};
use crate::error::{Error, Result};

/// Spin length in nanoseconds, grown whenever the CPU could not enqueue a
/// batch before the spin ended.
static SPIN_NS: AtomicU64 = AtomicU64::new(2_000_000);
const SPIN_NS_MAX: u64 = 500_000_000;

/// Runs `work(i)` for `i in 0..iters` on `device`'s default stream and
/// returns the GPU time from the first to the last piece of work, in seconds.
///
/// How: a spin kernel first keeps the GPU busy while the CPU enqueues the
/// whole batch; CUDA events recorded after the spin and after the batch then
/// time back-to-back execution. If enqueueing outlasted the spin (the GPU may
/// have idled), the spin is doubled and the batch repeated. `work` must only
/// enqueue (no host synchronisation), or the timing includes the CPU.
pub fn time_gpu(
    device: Device,
    iters: usize,
    mut work: impl FnMut(usize) -> Result<()>,
) -> Result<f64> {
    let rt = runtime(device)?;
    loop {
        let spin_ns = SPIN_NS.load(Ordering::Relaxed);
        let cfg = LaunchConfig {
            grid_dim: (1, 1, 1),
            block_dim: (1, 1, 1),
            shared_mem_bytes: 0,
        };
        rt.launch(
            KernelModule::Timing,
            "nvfp4_spin",
            cfg,
            &[KernelArg::U64(spin_ns)],
        )?;
        let enqueue = Instant::now();
        let start = rt.record_event()?;
        for i in 0..iters {
            work(i)?;
        }
        let end = rt.record_event()?;
        let enqueue_ns = enqueue.elapsed().as_nanos() as u64;
        let ms = start.elapsed_ms(&end).map_err(|e| Error::Cuda {
            op: "cuEventElapsedTime".into(),
            message: format!("{e:?}"),
        })?;
        // Margin for the time between the spin's launch and its start.
        if enqueue_ns * 10 < spin_ns * 8 || spin_ns >= SPIN_NS_MAX {
            return Ok(ms as f64 * 1e-3);
        }
        SPIN_NS.store((spin_ns * 2).min(SPIN_NS_MAX), Ordering::Relaxed);
    }
}

impl super::runtime::DeviceRuntime {
    /// Records a timing event on the default stream.
    pub(crate) fn record_event(&self) -> Result<cudarc::driver::CudaEvent> {
        self.stream()
            .record_event(Some(cu::CUevent_flags::CU_EVENT_DEFAULT))
            .map_err(|e| Error::Cuda {
                op: "cuEventRecord".into(),
                message: format!("{e:?}"),
            })
    }
}
