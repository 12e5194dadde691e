//! CUDA graphs of our kernel launches.
//!
//! A batch-1 decode step is a few hundred small kernels; launched one by one
//! from the host, the launch cost (tens of microseconds on a busy VM) is the
//! whole step time. Recorded once into a graph, the step replays with one
//! `cuGraphLaunch`. Only launches made through a [`KernelStream`] can be
//! recorded: libtorch ops run on the legacy default stream, which cannot
//! capture, so a recorded step must consist of our kernels alone.
//!
//! Replays go to the legacy default stream, so they are ordered with the
//! libtorch work before and after them exactly like eager launches.

use std::sync::Arc;

use cudarc::driver::{result as cu_result, sys as cu, CudaGraph, CudaStream};
use tch::Device;

use super::runtime::{runtime, DeviceRuntime};
use crate::error::{Error, Result};

/// Where kernel wrappers that take a stream launch: libtorch's default stream
/// (eager) or a stream that is recording a graph.
pub struct KernelStream {
    pub(crate) rt: Arc<DeviceRuntime>,
    pub(crate) stream: Arc<CudaStream>,
}

impl KernelStream {
    /// Eager launches on `device`'s legacy default stream.
    pub fn eager(device: Device) -> Result<KernelStream> {
        let rt = runtime(device)?;
        let stream = rt.stream().clone();
        Ok(KernelStream { rt, stream })
    }

    /// The runtime of the stream's device.
    pub fn runtime(&self) -> &DeviceRuntime {
        &self.rt
    }
}

/// A recorded sequence of kernel launches, replayable any number of times.
/// The launches keep the device addresses and scalars they were recorded
/// with: the buffers they use must stay alive (and in place) while the graph
/// exists, and per-replay inputs must be written into those buffers.
pub struct KernelGraph {
    graph: CudaGraph,
    rt: Arc<DeviceRuntime>,
    launches: usize,
}

impl std::fmt::Debug for KernelGraph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelGraph")
            .field("device", &self.rt.name)
            .field("nodes", &self.launches)
            .finish()
    }
}

fn cuda_err(op: &str) -> impl Fn(cudarc::driver::DriverError) -> Error + '_ {
    move |e| Error::Cuda {
        op: op.to_string(),
        message: format!("{e:?}"),
    }
}

/// Records every launch `record` makes on the given stream into a graph
/// (nothing runs while recording). Modules must already be loaded (run the
/// same launches eagerly once first): loading a module is not allowed while
/// a stream captures. An error inside `record` ends the capture and is
/// returned as is (any error type that this crate's errors convert into).
pub fn capture_graph<E: From<Error>>(
    device: Device,
    record: impl FnOnce(&KernelStream) -> std::result::Result<(), E>,
) -> std::result::Result<KernelGraph, E> {
    let rt = runtime(device)?;
    let stream = rt
        .context()
        .new_stream()
        .map_err(cuda_err("cuStreamCreate"))?;
    // Thread-local mode: libtorch work that other threads issue meanwhile
    // is not an error for this capture.
    stream
        .begin_capture(cu::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
        .map_err(cuda_err("cuStreamBeginCapture"))?;
    let ks = KernelStream {
        rt: rt.clone(),
        stream: stream.clone(),
    };
    let recorded = record(&ks);
    let ended = stream.end_capture(cu::CUgraphInstantiate_flags(0));
    recorded?;
    let graph = ended
        .map_err(cuda_err("cuStreamEndCapture / cuGraphInstantiate"))?
        .ok_or_else(|| Error::Cuda {
            op: "cuStreamEndCapture".into(),
            message: "the capture recorded no launches".into(),
        })?;
    let launches = graph_nodes(&graph)?;
    Ok(KernelGraph {
        graph,
        rt,
        launches,
    })
}

fn graph_nodes(graph: &CudaGraph) -> Result<usize> {
    let mut n: usize = 0;
    // SAFETY: a null node array asks only for the count; the graph is live.
    let status =
        unsafe { cu::cuGraphGetNodes(graph.cu_graph(), std::ptr::null_mut(), &mut n as *mut _) };
    status.result().map_err(cuda_err("cuGraphGetNodes"))?;
    Ok(n)
}

impl KernelGraph {
    /// Launches the graph on the legacy default stream (asynchronous).
    pub fn replay(&self) -> Result<()> {
        let ctx = self.rt.context();
        ctx.bind_to_thread().map_err(cuda_err("cuCtxSetCurrent"))?;
        // SAFETY: the executable graph is live (owned by self); the null
        // stream is the legacy default stream of the current context.
        unsafe { cu_result::graph::launch(self.graph.cu_graph_exec(), std::ptr::null_mut()) }
            .map_err(cuda_err("cuGraphLaunch"))?;
        ctx.check_err().map_err(cuda_err("cuGraphLaunch"))
    }

    /// Kernel launches (graph nodes) recorded.
    pub fn nodes(&self) -> usize {
        self.launches
    }
}
