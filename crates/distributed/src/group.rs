//! A c10d process group: TCPStore rendezvous at the master, then Gloo (CPU
//! tensors) or NCCL (CUDA tensors). Every rank must issue the same collectives
//! in the same order; a peer that dies or stalls surfaces as an error within the
//! timeout instead of a hang.
use std::ffi::CString;
use std::os::raw::{c_char, c_int};
use std::sync::Arc;
use std::time::Duration;

use tch::{Device, Tensor};

use crate::error::{DistError, Result};
use crate::ffi;
use crate::launch::LaunchEnv;

/// Default for how long a rank waits for its peers (rendezvous and collectives).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

/// The collective engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// CPU tensors over TCP (CI, debugging).
    Gloo,
    /// CUDA tensors over NVLink / InfiniBand / sockets.
    Nccl,
}

impl Backend {
    /// NCCL for CUDA devices, Gloo otherwise.
    pub fn for_device(device: Device) -> Self {
        if device.is_cuda() {
            Backend::Nccl
        } else {
            Backend::Gloo
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Backend::Gloo => "gloo",
            Backend::Nccl => "nccl",
        }
    }

    fn raw(self) -> c_int {
        match self {
            Backend::Gloo => ffi::BACKEND_GLOO,
            Backend::Nccl => ffi::BACKEND_NCCL,
        }
    }
}

/// How values combine across ranks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReduceOp {
    Sum,
    /// Sum, then divided by the world size on every rank (Gloo has no native
    /// average; doing it the same way on both backends keeps them comparable).
    Avg,
    Max,
    Min,
}

impl ReduceOp {
    fn raw(self) -> c_int {
        match self {
            ReduceOp::Sum | ReduceOp::Avg => ffi::OP_SUM,
            ReduceOp::Max => ffi::OP_MAX,
            ReduceOp::Min => ffi::OP_MIN,
        }
    }
}

/// Everything needed to join a group.
#[derive(Debug, Clone)]
pub struct GroupOptions {
    pub master_addr: String,
    pub master_port: u16,
    pub rank: usize,
    pub world_size: usize,
    pub backend: Backend,
    pub timeout: Duration,
}

impl GroupOptions {
    pub fn from_launch(env: &LaunchEnv, backend: Backend, timeout: Duration) -> Self {
        GroupOptions {
            master_addr: env.master_addr.clone(),
            master_port: env.master_port,
            rank: env.rank,
            world_size: env.world_size,
            backend,
            timeout,
        }
    }
}

/// One process's membership of the group.
pub struct ProcessGroup {
    raw: Arc<RawGroup>,
    rank: usize,
    world_size: usize,
    backend: Backend,
}

/// Owner of the C++ group, shared with the work items in flight so that it
/// outlives them.
struct RawGroup(*mut ffi::RawGroup);

// SAFETY: c10d process groups are thread-safe objects (PyTorch calls them from
// any thread); ranks must still issue collectives in one agreed order.
unsafe impl Send for RawGroup {}
unsafe impl Sync for RawGroup {}

impl std::fmt::Debug for ProcessGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessGroup")
            .field("rank", &self.rank)
            .field("world_size", &self.world_size)
            .field("backend", &self.backend)
            .finish()
    }
}

/// A collective in flight; [`Work::wait`] finishes it. Dropping it waits too,
/// so a tensor is never freed while the backend still writes into it.
#[must_use = "a collective is complete only after wait()"]
pub struct Work {
    /// Keeps the C++ group alive while this is in flight.
    _group: Arc<RawGroup>,
    rank: usize,
    world_size: usize,
    raw: *mut ffi::RawWork,
    op: &'static str,
    /// The output, kept alive until done; divided by the world size for `ReduceOp::Avg`.
    tensor: Tensor,
    /// The input when it differs from the output, kept alive until done.
    _input: Option<Tensor>,
    average: bool,
}

impl ProcessGroup {
    /// Rendezvous with the other ranks and build the backend. Blocks until all
    /// `world_size` ranks have joined or `timeout` passes.
    pub fn new(options: &GroupOptions) -> Result<Self> {
        let init_err = |message: String| DistError::Init {
            rank: options.rank,
            world_size: options.world_size,
            backend: options.backend.name(),
            master: format!("{}:{}", options.master_addr, options.master_port),
            message,
        };
        if options.world_size == 0 || options.rank >= options.world_size {
            return Err(init_err(format!(
                "rank must be below the world size {}",
                options.world_size
            )));
        }
        let host = CString::new(options.master_addr.as_str())
            .map_err(|_| init_err("master address contains a NUL byte".to_owned()))?;
        let mut message: *mut c_char = std::ptr::null_mut();
        // SAFETY: the shim copies `host` and reports C++ exceptions through `message`.
        let raw = unsafe {
            ffi::dist_pg_new(
                options.backend.raw(),
                host.as_ptr(),
                options.master_port,
                options.rank as c_int,
                options.world_size as c_int,
                options.timeout.as_millis().min(i64::MAX as u128) as i64,
                &mut message,
            )
        };
        if raw.is_null() {
            return Err(init_err(ffi::take_message(message)));
        }
        tracing::debug!(
            rank = options.rank,
            world_size = options.world_size,
            backend = options.backend.name(),
            "process group ready"
        );
        Ok(ProcessGroup {
            raw: Arc::new(RawGroup(raw)),
            rank: options.rank,
            world_size: options.world_size,
            backend: options.backend,
        })
    }

    pub fn rank(&self) -> usize {
        self.rank
    }

    pub fn world_size(&self) -> usize {
        self.world_size
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Reduces `tensor` in place across ranks; every rank ends with the result.
    pub fn all_reduce(&self, tensor: &mut Tensor, op: ReduceOp) -> Result<()> {
        self.all_reduce_async(tensor, op)?.wait()
    }

    /// Starts an in-place all-reduce; the tensor must not be touched until `wait`.
    pub fn all_reduce_async(&self, tensor: &mut Tensor, op: ReduceOp) -> Result<Work> {
        const OP: &str = "all_reduce";
        self.check(OP, tensor)?;
        let mut message = std::ptr::null_mut();
        // SAFETY: the tensor is valid and kept alive by the returned Work.
        let raw =
            unsafe { ffi::dist_all_reduce(self.raw.0, ffi::raw(tensor), op.raw(), &mut message) };
        self.work(OP, raw, message, tensor, op == ReduceOp::Avg)
    }

    /// Copies `tensor` of rank `root` into `tensor` of every rank.
    pub fn broadcast(&self, tensor: &mut Tensor, root: usize) -> Result<()> {
        self.broadcast_async(tensor, root)?.wait()
    }

    /// Starts a broadcast (see [`ProcessGroup::broadcast`]); the tensor must
    /// not be touched until `wait`.
    pub fn broadcast_async(&self, tensor: &mut Tensor, root: usize) -> Result<Work> {
        const OP: &str = "broadcast";
        self.check(OP, tensor)?;
        self.check_root(OP, root)?;
        let mut message = std::ptr::null_mut();
        // SAFETY: as in all_reduce_async.
        let raw = unsafe {
            ffi::dist_broadcast(self.raw.0, ffi::raw(tensor), root as c_int, &mut message)
        };
        self.work(OP, raw, message, tensor, false)
    }

    /// Reduces every rank's `tensor` into `tensor` of rank `root`; the other
    /// ranks' tensors hold unspecified values afterwards (the backends may
    /// use them as scratch). With whole tensors owned by one rank each, this
    /// is the reduce-scatter of ZeRO-1. `ReduceOp::Avg` divides on every rank
    /// (only the root's result is meaningful).
    pub fn reduce(&self, tensor: &mut Tensor, root: usize, op: ReduceOp) -> Result<()> {
        self.reduce_async(tensor, root, op)?.wait()
    }

    /// Starts a reduce (see [`ProcessGroup::reduce`]).
    pub fn reduce_async(&self, tensor: &mut Tensor, root: usize, op: ReduceOp) -> Result<Work> {
        const OP: &str = "reduce";
        self.check(OP, tensor)?;
        self.check_root(OP, root)?;
        let mut message = std::ptr::null_mut();
        // SAFETY: as in all_reduce_async.
        let raw = unsafe {
            ffi::dist_reduce(
                self.raw.0,
                ffi::raw(tensor),
                root as c_int,
                op.raw(),
                &mut message,
            )
        };
        self.work(OP, raw, message, tensor, op == ReduceOp::Avg)
    }

    /// Concatenates every rank's `input` (same shape everywhere) along a new
    /// leading order of ranks into `output`, which holds `world_size` times as
    /// many elements.
    pub fn all_gather(&self, output: &mut Tensor, input: &Tensor) -> Result<()> {
        self.all_gather_async(output, input)?.wait()
    }

    /// Starts an all-gather (see [`ProcessGroup::all_gather`]).
    pub fn all_gather_async(&self, output: &mut Tensor, input: &Tensor) -> Result<Work> {
        const OP: &str = "all_gather";
        self.check(OP, output)?;
        self.check(OP, input)?;
        self.check_sizes(OP, output.numel(), input.numel())?;
        let mut message = std::ptr::null_mut();
        // SAFETY: both tensors are valid and kept alive by the returned Work.
        let raw = unsafe {
            ffi::dist_all_gather(self.raw.0, ffi::raw(output), ffi::raw(input), &mut message)
        };
        let mut work = self.work(OP, raw, message, output, false)?;
        work._input = Some(input.shallow_clone());
        Ok(work)
    }

    /// Reduces every rank's `input` and leaves block `rank` of the result (of
    /// `input.numel() / world_size` elements) in `output`.
    pub fn reduce_scatter(&self, output: &mut Tensor, input: &Tensor, op: ReduceOp) -> Result<()> {
        const OP: &str = "reduce_scatter";
        self.check(OP, output)?;
        self.check(OP, input)?;
        self.check_sizes(OP, input.numel(), output.numel())?;
        let mut message = std::ptr::null_mut();
        // SAFETY: both tensors are valid for the duration (we wait below).
        let raw = unsafe {
            ffi::dist_reduce_scatter(
                self.raw.0,
                ffi::raw(output),
                ffi::raw(input),
                op.raw(),
                &mut message,
            )
        };
        self.work(OP, raw, message, output, op == ReduceOp::Avg)?
            .wait()
    }

    /// Returns once every rank has reached it.
    pub fn barrier(&self) -> Result<()> {
        let mut message = std::ptr::null_mut();
        // SAFETY: no tensors involved.
        let raw = unsafe { ffi::dist_barrier(self.raw.0, &mut message) };
        let marker = Tensor::zeros([1], (tch::Kind::Float, Device::Cpu));
        self.work("barrier", raw, message, &marker, false)?.wait()
    }

    fn check(&self, op: &'static str, tensor: &Tensor) -> Result<()> {
        let device = tensor.device();
        let expected_cuda = self.backend == Backend::Nccl;
        if device.is_cuda() != expected_cuda {
            return Err(DistError::BadTensor {
                op,
                reason: format!(
                    "a tensor on {device:?} cannot go through the {} backend",
                    self.backend.name()
                ),
            });
        }
        if !tensor.is_contiguous() {
            return Err(DistError::BadTensor {
                op,
                reason: format!("tensor of shape {:?} is not contiguous", tensor.size()),
            });
        }
        Ok(())
    }

    fn check_root(&self, op: &'static str, root: usize) -> Result<()> {
        if root >= self.world_size {
            return Err(DistError::BadTensor {
                op,
                reason: format!(
                    "root {root} is not below the world size {}",
                    self.world_size
                ),
            });
        }
        Ok(())
    }

    fn check_sizes(&self, op: &'static str, whole: usize, part: usize) -> Result<()> {
        if whole != part * self.world_size {
            return Err(DistError::BadTensor {
                op,
                reason: format!(
                    "{whole} elements is not {} ranks x {part} elements",
                    self.world_size
                ),
            });
        }
        Ok(())
    }

    fn work(
        &self,
        op: &'static str,
        raw: *mut ffi::RawWork,
        message: *mut c_char,
        tensor: &Tensor,
        average: bool,
    ) -> Result<Work> {
        if raw.is_null() {
            return Err(self.collective_err(op, ffi::take_message(message)));
        }
        Ok(Work {
            _group: Arc::clone(&self.raw),
            rank: self.rank,
            world_size: self.world_size,
            raw,
            op,
            tensor: tensor.shallow_clone(),
            _input: None,
            average,
        })
    }

    fn collective_err(&self, op: &'static str, message: String) -> DistError {
        DistError::Collective {
            op,
            rank: self.rank,
            world_size: self.world_size,
            message,
        }
    }
}

impl Drop for RawGroup {
    fn drop(&mut self) {
        // SAFETY: created by dist_pg_new, freed once, after every Work that shared it.
        unsafe { ffi::dist_pg_free(self.0) };
    }
}

// SAFETY: a work item is finished from whichever thread owns it; see RawGroup.
unsafe impl Send for Work {}

impl Work {
    /// Blocks until the collective is done (or failed, or timed out).
    pub fn wait(mut self) -> Result<()> {
        self.finish()
    }

    fn finish(&mut self) -> Result<()> {
        if self.raw.is_null() {
            return Ok(());
        }
        let mut message = std::ptr::null_mut();
        // SAFETY: raw is a live work item; freed right after, once.
        let done = unsafe { ffi::dist_work_wait(self.raw, &mut message) };
        unsafe { ffi::dist_work_free(self.raw) };
        self.raw = std::ptr::null_mut();
        if !done {
            return Err(DistError::Collective {
                op: self.op,
                rank: self.rank,
                world_size: self.world_size,
                message: ffi::take_message(message),
            });
        }
        if self.average {
            let _ = self.tensor.g_div_scalar_(self.world_size as f64);
        }
        Ok(())
    }
}

impl Drop for Work {
    fn drop(&mut self) {
        if let Err(err) = self.finish() {
            tracing::warn!("collective dropped without wait failed: {err}");
        }
    }
}
