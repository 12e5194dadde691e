//! [`diagnose`]: what the NVFP4 kernels can do on this machine, in words:
//! devices, driver and NVRTC versions, which kernel modules compiled (and how
//! long that took), which path each [`ComputePath`] resolves to, and every
//! refusal with its reason. Never panics, also without CUDA.

use std::fmt::Write;

use tch::Device;

use crate::cuda;
use crate::policy::{ComputePath, Nvfp4Backend};

/// A multi-line report of the NVFP4 compute paths available here.
pub fn diagnose() -> String {
    let mut out = String::from("NVFP4 diagnose\n");
    let torch_cuda = tch::Cuda::is_available();
    let count = if torch_cuda {
        tch::Cuda::device_count()
    } else {
        0
    };
    let _ = writeln!(
        out,
        "libtorch: CUDA available: {torch_cuda}, devices: {count}"
    );
    match cuda::libraries_present() {
        Ok(()) => report_libraries(&mut out),
        Err(reason) => {
            let _ = writeln!(out, "kernels refused: {reason}");
        }
    }
    if count == 0 {
        let _ = writeln!(
            out,
            "no CUDA device: the NVFP4 kernels cannot run; only dequant-matmul on the CPU"
        );
        report_policies(&mut out, Device::Cpu);
        return out;
    }
    for i in 0..count as usize {
        report_device(&mut out, i);
    }
    out
}

fn report_libraries(out: &mut String) {
    let mut driver = 0;
    // SAFETY: libcuda is loadable (checked just before); valid out-pointer.
    let driver_ok = unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut driver) };
    if driver_ok == cudarc::driver::sys::CUresult::CUDA_SUCCESS {
        let _ = writeln!(
            out,
            "CUDA driver API version: {}.{}",
            driver / 1000,
            (driver % 1000) / 10
        );
    } else {
        let _ = writeln!(out, "CUDA driver API version: unknown ({driver_ok:?})");
    }
    match (cuda::nvrtc_version(), cuda::supported_archs()) {
        (Ok((ma, mi)), Ok(archs)) => {
            let _ = writeln!(out, "NVRTC {ma}.{mi}, targets sm_{archs:?}");
        }
        (Err(e), _) | (_, Err(e)) => {
            let _ = writeln!(out, "NVRTC unusable: {e}");
        }
    }
    match cuda::cache_dir() {
        Some(d) => {
            let _ = writeln!(out, "kernel cache: {}", d.display());
        }
        None => {
            let _ = writeln!(out, "kernel cache: off");
        }
    }
}

fn report_device(out: &mut String, ordinal: usize) {
    let device = Device::Cuda(ordinal);
    match cuda::runtime(device) {
        Err(e) => {
            let _ = writeln!(out, "cuda:{ordinal}: kernels refused: {e}");
        }
        Ok(rt) => {
            let (ma, mi) = rt.cc;
            let _ = writeln!(
                out,
                "cuda:{ordinal}: {}, compute capability {ma}.{mi}, {} SMs, NVRTC target {}",
                rt.name, rt.sm_count, rt.target.arch
            );
            if ma >= 10 {
                let _ = writeln!(
                    out,
                    "  note: sm_{ma}{mi} has native FP4 tensor cores; a native NVFP4 (block-scaled MMA) path is \
                     not implemented, the Hopper-style kernels (dequantize in registers, bf16 mma.sync) run there"
                );
            }
            let load = rt.load_all();
            for s in rt.module_statuses() {
                let line = match &s.result {
                    Ok((_, true)) => "loaded from the disk cache".to_string(),
                    Ok((ms, false)) => format!("compiled in {ms:.0} ms"),
                    Err(e) => format!("FAILED: {e}"),
                };
                let _ = writeln!(out, "  kernel module {}: {line}", s.module);
            }
            if let Err(e) = load {
                let _ = writeln!(out, "  kernels refused: {e}");
            }
        }
    }
    report_policies(out, device);
}

fn report_policies(out: &mut String, device: Device) {
    for path in [
        ComputePath::KernelOnly,
        ComputePath::Auto,
        ComputePath::DequantMatmulOnly,
    ] {
        let line = match Nvfp4Backend::resolve(path, device) {
            Ok(b) => b.describe(),
            Err(e) => format!("refused: {e}"),
        };
        let _ = writeln!(out, "  policy {path} on {device:?}: {line}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diagnose_reports_policies_without_panicking() {
        let report = diagnose();
        assert!(report.contains("policy kernel-only"), "{report}");
        assert!(report.contains("policy dequant-matmul"), "{report}");
        if !tch::Cuda::is_available() {
            assert!(report.contains("no CUDA device"), "{report}");
            assert!(report.contains("refused"), "{report}");
        }
    }
}
