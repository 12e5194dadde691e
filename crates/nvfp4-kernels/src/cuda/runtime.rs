//! Per-device kernel runtime: the CUDA primary context (the one libtorch
//! uses), the legacy default stream (libtorch's default stream, so kernels
//! and torch ops are ordered without extra synchronisation), lazily compiled
//! modules and a launch helper that checks every result.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::driver::{
    sys as cu, CudaContext, CudaFunction, CudaModule, CudaStream, LaunchConfig, PushKernelArg,
};
use cudarc::nvrtc::Ptx;
use tch::{Device, Tensor};

use super::compile::{self, Compiled, KernelModule, Target};
use crate::error::{Error, Result};

/// Lowest compute capability the kernels support (`mma.sync` bf16,
/// `cvt.rn.bf16`, `fma.rn.bf16x2`).
pub const MIN_COMPUTE_CAPABILITY: (i32, i32) = (8, 0);

/// Whether the CUDA driver library and NVRTC can be opened, checked before any
/// cudarc call (cudarc panics on a missing library otherwise).
pub fn libraries_present() -> std::result::Result<(), String> {
    // SAFETY: only tries to dlopen the libraries by their usual names.
    if !unsafe { cu::is_culib_present() } {
        return Err("the CUDA driver library (libcuda.so) cannot be loaded".into());
    }
    // SAFETY: as above, for libnvrtc.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Err(
            "NVRTC (libnvrtc.so) cannot be loaded: add the CUDA runtime compiler's lib folder to \
                    LD_LIBRARY_PATH"
                .into(),
        );
    }
    Ok(())
}

/// Ordinal of a CUDA device, or the reason the kernels cannot run on `device`.
pub fn cuda_ordinal(device: Device) -> std::result::Result<usize, String> {
    match device {
        Device::Cuda(i) => Ok(i),
        other => Err(format!("{other:?} is not a CUDA device")),
    }
}

/// Outcome of loading one module on one device (kept for `diagnose`).
#[derive(Clone, Debug)]
pub struct ModuleStatus {
    /// Module name.
    pub module: &'static str,
    /// Ok(compile milliseconds, from cache) or the error text.
    pub result: std::result::Result<(f64, bool), String>,
}

struct LoadedModule {
    module: Arc<CudaModule>,
    functions: Mutex<HashMap<&'static str, CudaFunction>>,
}

/// Everything the kernels need on one device.
pub struct DeviceRuntime {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    /// Compute capability.
    pub cc: (i32, i32),
    /// Streaming multiprocessors.
    pub sm_count: u32,
    /// Device name.
    pub name: String,
    /// NVRTC target.
    pub target: Target,
    modules: Mutex<HashMap<KernelModule, std::result::Result<Arc<LoadedModule>, String>>>,
    statuses: Mutex<Vec<ModuleStatus>>,
}

/// Per device ordinal: the runtime, or why the kernels cannot run there.
type Registry = Mutex<HashMap<usize, std::result::Result<Arc<DeviceRuntime>, String>>>;

fn registry() -> &'static Registry {
    static REG: OnceLock<Registry> = OnceLock::new();
    REG.get_or_init(|| Mutex::new(HashMap::new()))
}

/// The runtime of `device`, created on first use; Err explains why kernels
/// cannot run there (not CUDA, libraries missing, compute capability too old).
pub fn runtime(device: Device) -> Result<Arc<DeviceRuntime>> {
    let unavailable = |reason: String| Error::KernelUnavailable {
        device: format!("{device:?}"),
        reason,
    };
    let ordinal = cuda_ordinal(device).map_err(unavailable)?;
    let mut reg = registry().lock().unwrap_or_else(|p| p.into_inner());
    let entry = reg
        .entry(ordinal)
        .or_insert_with(|| DeviceRuntime::create(ordinal).map(Arc::new));
    entry.clone().map_err(unavailable)
}

fn drv(op: &'static str) -> impl Fn(cudarc::driver::DriverError) -> String {
    move |e| format!("{op}: {e:?}")
}

impl DeviceRuntime {
    fn create(ordinal: usize) -> std::result::Result<DeviceRuntime, String> {
        libraries_present()?;
        let count = CudaContext::device_count().map_err(drv("cuDeviceGetCount"))?;
        if ordinal as i32 >= count {
            return Err(format!(
                "CUDA device {ordinal} does not exist ({count} visible)"
            ));
        }
        let ctx = CudaContext::new(ordinal).map_err(drv("cuDevicePrimaryCtxRetain"))?;
        let cc = ctx
            .compute_capability()
            .map_err(drv("cuDeviceGetAttribute"))?;
        let name = ctx.name().map_err(drv("cuDeviceGetName"))?;
        if cc < MIN_COMPUTE_CAPABILITY {
            return Err(format!(
                "{name} has compute capability {}.{}; the NVFP4 kernels need {}.{} or newer (bf16 mma.sync)",
                cc.0, cc.1, MIN_COMPUTE_CAPABILITY.0, MIN_COMPUTE_CAPABILITY.1
            ));
        }
        let sm_count = ctx
            .attribute(cu::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(drv("cuDeviceGetAttribute"))? as u32;
        let supported = compile::supported_archs().map_err(|e| e.to_string())?;
        let target = Target::for_device(cc.0, cc.1, &supported);
        // The legacy NULL stream: what libtorch launches on unless told otherwise.
        let stream = ctx.default_stream();
        Ok(DeviceRuntime {
            ctx,
            stream,
            cc,
            sm_count,
            name,
            target,
            modules: Mutex::new(HashMap::new()),
            statuses: Mutex::new(Vec::new()),
        })
    }

    /// Loads (compiling if needed) `module`; the outcome is remembered, so a
    /// failing module fails fast afterwards with the same message.
    fn module(&self, module: KernelModule) -> Result<Arc<LoadedModule>> {
        let mut mods = self.modules.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(m) = mods.get(&module) {
            return m.clone().map_err(|reason| self.unavailable(reason));
        }
        let loaded = self.load(module);
        let status = ModuleStatus {
            module: module.name(),
            result: loaded
                .as_ref()
                .map(|(_, c)| (c.compile_ms, c.cached))
                .map_err(|e| e.to_string()),
        };
        self.statuses
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(status);
        let entry = loaded.map(|(m, _)| Arc::new(m)).map_err(|e| e.to_string());
        mods.insert(module, entry.clone());
        entry.map_err(|reason| self.unavailable(reason))
    }

    fn load(&self, module: KernelModule) -> Result<(LoadedModule, Compiled)> {
        let compiled = compile::compile(module, &self.target)?;
        let ptx = if compiled.cubin {
            Ptx::from_binary(compiled.image.clone())
        } else {
            Ptx::from_src(String::from_utf8_lossy(&compiled.image).into_owned())
        };
        let m = self.ctx.load_module(ptx).map_err(|e| Error::Cuda {
            op: format!("cuModuleLoadData({})", module.name()),
            message: format!("{e:?}"),
        })?;
        if !compiled.log.trim().is_empty() {
            tracing::debug!(
                "nvfp4 kernels: NVRTC log for {}:\n{}",
                module.name(),
                compiled.log
            );
        }
        Ok((
            LoadedModule {
                module: m,
                functions: Mutex::new(HashMap::new()),
            },
            compiled,
        ))
    }

    fn unavailable(&self, reason: String) -> Error {
        Error::KernelUnavailable {
            device: format!("cuda:{} ({})", self.ctx.ordinal(), self.name),
            reason,
        }
    }

    /// Compiles and loads every module now (for `diagnose` and for fail-fast
    /// backend resolution); returns the first error.
    pub fn load_all(&self) -> Result<()> {
        for m in KernelModule::ALL {
            self.module(m)?;
        }
        Ok(())
    }

    /// The legacy default stream of this device.
    pub(crate) fn stream(&self) -> &std::sync::Arc<CudaStream> {
        &self.stream
    }

    /// The CUDA context (the device's primary context, shared with libtorch).
    pub(crate) fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// What happened to each module loaded so far.
    pub fn module_statuses(&self) -> Vec<ModuleStatus> {
        self.statuses
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn function(&self, module: KernelModule, name: &'static str) -> Result<CudaFunction> {
        let m = self.module(module)?;
        let mut fns = m.functions.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = fns.get(name) {
            return Ok(f.clone());
        }
        let f = m.module.load_function(name).map_err(|e| Error::Cuda {
            op: format!("cuModuleGetFunction({name})"),
            message: format!("{e:?}"),
        })?;
        fns.insert(name, f.clone());
        Ok(f)
    }

    /// Launches `name` from `module` on the default stream with `args`
    /// (device pointers as `u64`, scalars by value) and checks the result.
    /// With `NVFP4_SYNC_CHECK=1` it also waits for the kernel and reports any
    /// asynchronous fault under the kernel's name.
    pub fn launch(
        &self,
        module: KernelModule,
        name: &'static str,
        cfg: LaunchConfig,
        args: &[KernelArg],
    ) -> Result<()> {
        self.launch_on(&self.stream, module, name, cfg, args)
    }

    /// [`DeviceRuntime::launch`] on `stream` (a capture stream while a CUDA
    /// graph is recorded; see `graph.rs`). The `NVFP4_SYNC_CHECK` wait is
    /// skipped while `stream` captures (a capturing stream cannot be waited on).
    pub(crate) fn launch_on(
        &self,
        stream: &Arc<CudaStream>,
        module: KernelModule,
        name: &'static str,
        cfg: LaunchConfig,
        args: &[KernelArg],
    ) -> Result<()> {
        let f = self.function(module, name)?;
        let mut builder = stream.launch_builder(&f);
        for a in args {
            match a {
                KernelArg::Ptr(p) => builder.arg(p),
                KernelArg::U64(v) => builder.arg(v),
                KernelArg::I32(v) => builder.arg(v),
                KernelArg::F32(v) => builder.arg(v),
            };
        }
        let launch_err = |e: cudarc::driver::DriverError| Error::Cuda {
            op: format!(
                "launch {name} grid {:?} block {:?}",
                cfg.grid_dim, cfg.block_dim
            ),
            message: format!("{e:?}"),
        };
        // SAFETY: every caller passes exactly the parameters of the kernel's C
        // signature in order (device pointers of live, contiguous tensors of
        // the sizes the kernel indexes, checked by the caller); the launch is
        // asynchronous on the stream that also orders libtorch's work on them.
        unsafe { builder.launch(cfg) }.map_err(launch_err)?;
        self.ctx.check_err().map_err(launch_err)?;
        if sync_check() && Arc::ptr_eq(stream, &self.stream) {
            stream.synchronize().map_err(launch_err)?;
        }
        Ok(())
    }
}

/// One kernel parameter.
#[derive(Clone, Copy, Debug)]
pub enum KernelArg {
    /// A device pointer (0 for a null pointer).
    Ptr(u64),
    /// A 64-bit count.
    U64(u64),
    /// A 32-bit int.
    I32(i32),
    /// A 32-bit float.
    F32(f32),
}

fn sync_check() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var("NVFP4_SYNC_CHECK").is_ok_and(|v| v == "1"))
}

/// The device address of `t`'s first element (`t` must be contiguous and on
/// the GPU; its storage must outlive the kernels that use the address, which
/// the default-stream ordering plus libtorch's caching allocator guarantee
/// while the caller holds `t`).
pub fn dev_ptr(t: &Tensor) -> u64 {
    t.data_ptr() as u64
}

/// A fresh contiguous copy of `t` (new storage from libtorch's allocator,
/// hence aligned for vector loads).
pub fn fresh_copy(t: &Tensor) -> Result<Tensor> {
    let out = t.f_empty_like()?;
    let mut dst = out.shallow_clone();
    dst.f_copy_(t)?;
    Ok(out)
}

/// A 1-D launch of `threads`-wide blocks, enough to cover `work` items with a
/// grid-stride loop, capped at `waves` blocks per SM.
pub fn grid_1d(work: u64, threads: u32, sm_count: u32, waves: u32) -> LaunchConfig {
    let blocks = work
        .div_ceil(threads as u64)
        .clamp(1, (sm_count * waves) as u64) as u32;
    LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_device_is_refused_with_a_reason() {
        let err = runtime(Device::Cpu).err().expect("CPU must be refused");
        assert!(err.to_string().contains("not a CUDA device"), "{err}");
    }

    #[test]
    fn grid_covers_small_work_and_caps_large_work() {
        assert_eq!(grid_1d(10, 256, 132, 8).grid_dim.0, 1);
        assert_eq!(grid_1d(1 << 30, 256, 132, 8).grid_dim.0, 132 * 8);
        assert_eq!(grid_1d(0, 256, 132, 8).grid_dim.0, 1);
    }
}
