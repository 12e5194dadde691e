//! Which code computes `x @ W^T` for an NVFP4 weight: the policy a user asks
//! for ([`ComputePath`]) and the resolved choice for one device
//! ([`Nvfp4Backend`]). Resolution happens once, when a model is built, so a
//! missing kernel is an error at start-up (NFR-02), never a quiet fallback in
//! the middle of a forward pass.

use std::fmt;
use std::str::FromStr;

use tch::{Device, Kind, Tensor};

use crate::cuda;
use crate::error::{Error, Result};
use crate::format::ScaleMode;
use crate::tensor::Nvfp4Tensor;
use crate::torch_ops::{f_dequantize, f_fake_quantize};

/// The compute path a user asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Hash)]
pub enum ComputePath {
    /// Every projection must run through an NVFP4 kernel; error if none is usable (FR-01).
    KernelOnly,
    /// Use a kernel where one is usable, else dequantize-then-matmul; the choice is logged.
    #[default]
    Auto,
    /// Always dequantize to the activation dtype and call the dense matmul.
    DequantMatmulOnly,
}

impl fmt::Display for ComputePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ComputePath::KernelOnly => "kernel-only",
            ComputePath::Auto => "auto",
            ComputePath::DequantMatmulOnly => "dequant-matmul",
        })
    }
}

impl FromStr for ComputePath {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "kernel-only" => Ok(ComputePath::KernelOnly),
            "auto" => Ok(ComputePath::Auto),
            "dequant-matmul" => Ok(ComputePath::DequantMatmulOnly),
            other => Err(Error::UnknownComputePath {
                got: other.to_string(),
            }),
        }
    }
}

/// A resolved way of computing NVFP4 projections. The kernel backend adds its
/// variant here; every variant is chosen by [`Nvfp4Backend::resolve`] only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
enum ResolvedPath {
    /// Dequantize the weight to the activation kind, then a dense matmul.
    DequantMatmul,
    /// The CUDA kernels of [`crate::cuda`]: fused W4A16 for few rows,
    /// kernel dequantize + dense GEMM for many.
    Kernels,
}

/// The compute path resolved for one device.
#[derive(Clone, Debug)]
pub struct Nvfp4Backend {
    requested: ComputePath,
    device: Device,
    path: ResolvedPath,
    quantize_activations: bool,
}

/// Why no NVFP4 kernel can run on `device`, or None when the kernels compile
/// and load there.
fn kernel_unavailable_reason(device: Device) -> Option<String> {
    match device {
        Device::Cuda(_) => cuda::check_available(device).err(),
        other => Some(format!(
            "no NVFP4 kernel for {} (the kernels need a CUDA device)",
            device_name(other)
        )),
    }
}

fn device_name(device: Device) -> String {
    match device {
        Device::Cpu => "cpu".to_string(),
        Device::Cuda(i) => format!("cuda:{i}"),
        other => format!("{other:?}"),
    }
}

impl Nvfp4Backend {
    /// Resolves `path` for `device`. `KernelOnly` on a device without a usable
    /// kernel is an error naming the reason (NFR-02); `Auto` logs (tracing
    /// info) which path it chose and why.
    pub fn resolve(path: ComputePath, device: Device) -> Result<Self> {
        let resolved = match path {
            ComputePath::KernelOnly => match kernel_unavailable_reason(device) {
                None => ResolvedPath::Kernels,
                Some(reason) => {
                    return Err(Error::KernelUnavailable {
                        device: device_name(device),
                        reason,
                    })
                }
            },
            ComputePath::DequantMatmulOnly => ResolvedPath::DequantMatmul,
            ComputePath::Auto => match kernel_unavailable_reason(device) {
                None => {
                    tracing::info!(device = %device_name(device), "nvfp4 compute path: auto chose the CUDA kernels");
                    ResolvedPath::Kernels
                }
                Some(reason) => {
                    tracing::info!(
                        device = %device_name(device),
                        reason = %reason,
                        "nvfp4 compute path: auto chose dequant-matmul"
                    );
                    ResolvedPath::DequantMatmul
                }
            },
        };
        Ok(Self {
            requested: path,
            device,
            path: resolved,
            quantize_activations: false,
        })
    }

    /// Also quantize the activations to NVFP4 (16 along `cols`, single scale)
    /// and dequantize them before each matmul: W4A4 emulation, as the
    /// original's Blackwell kernel computed. Off by default.
    pub fn with_activation_quantization(mut self, on: bool) -> Self {
        self.quantize_activations = on;
        self
    }

    /// Whether activations are fake-quantized before each matmul.
    pub fn quantizes_activations(&self) -> bool {
        self.quantize_activations
    }

    /// True when projections run through an NVFP4 kernel.
    pub fn uses_kernels(&self) -> bool {
        match self.path {
            ResolvedPath::DequantMatmul => false,
            ResolvedPath::Kernels => true,
        }
    }

    /// The device this backend was resolved for.
    pub fn device(&self) -> Device {
        self.device
    }

    /// The path that was asked for.
    pub fn requested(&self) -> ComputePath {
        self.requested
    }

    /// One line for logs: requested path, resolved path, device.
    pub fn describe(&self) -> String {
        let resolved = match self.path {
            ResolvedPath::DequantMatmul => "dequantize-then-matmul (libtorch dense GEMM)",
            ResolvedPath::Kernels => {
                "NVFP4 CUDA kernels (fused W4A16 for <= 16 bf16 rows, kernel dequantize + cuBLAS above)"
            }
        };
        let act = if self.quantize_activations {
            ", activations fake-quantized to NVFP4 (W4A4)"
        } else {
            ""
        };
        format!(
            "nvfp4 backend on {}: requested {}, using {resolved}{act}",
            device_name(self.device),
            self.requested
        )
    }

    /// `y = x @ W^T`. `x`: `[..., cols]` f32/bf16/f16 on the weight's device;
    /// returns `[..., rows]` in `x.kind()`.
    pub fn linear(&self, x: &Tensor, w: &Nvfp4Tensor) -> Result<Tensor> {
        let kind = x.f_kind()?;
        if !matches!(kind, Kind::Float | Kind::BFloat16 | Kind::Half) {
            return Err(Error::WrongKind {
                name: "linear".into(),
                what: "x",
                expected: "Float, BFloat16 or Half",
                got: kind,
            });
        }
        let size: Vec<usize> = x.size().iter().map(|&d| d as usize).collect();
        if size.last() != Some(&w.cols()) {
            let mut expected = size.clone();
            match expected.last_mut() {
                Some(last) => *last = w.cols(),
                None => expected.push(w.cols()),
            }
            return Err(Error::ShapeMismatch {
                name: "linear".into(),
                what: "x",
                expected,
                got: size,
            });
        }
        if x.device() != w.device() {
            return Err(Error::DeviceMismatch {
                name: "linear".into(),
                what: "x",
                expected: w.device(),
                got: x.device(),
            });
        }
        match self.path {
            ResolvedPath::DequantMatmul => {
                let x = if self.quantize_activations {
                    f_fake_quantize(x, ScaleMode::Single)?
                } else {
                    x.shallow_clone()
                };
                let wd = f_dequantize(w, kind)?; // [rows, cols]
                Ok(x.f_matmul(&wd.f_tr()?)?)
            }
            ResolvedPath::Kernels => {
                let opts = cuda::LinearOptions {
                    quantize_activations: self.quantize_activations,
                    ..Default::default()
                };
                cuda::linear(x, w, &opts)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compute_path_parses_the_three_spellings() {
        for p in [
            ComputePath::KernelOnly,
            ComputePath::Auto,
            ComputePath::DequantMatmulOnly,
        ] {
            assert_eq!(p.to_string().parse::<ComputePath>().unwrap(), p);
        }
        let err = "fast".parse::<ComputePath>().unwrap_err();
        assert!(err.to_string().contains("\"fast\""), "{err}");
    }

    #[test]
    fn kernel_only_fails_with_reason_on_cpu() {
        let err = Nvfp4Backend::resolve(ComputePath::KernelOnly, Device::Cpu).unwrap_err();
        assert!(err.to_string().contains("no NVFP4 kernel for cpu"), "{err}");
    }

    #[test]
    fn auto_and_dequant_resolve_to_dequant_matmul() {
        for p in [ComputePath::Auto, ComputePath::DequantMatmulOnly] {
            let b = Nvfp4Backend::resolve(p, Device::Cpu).unwrap();
            assert!(!b.uses_kernels());
            assert!(
                b.describe().contains("dequantize-then-matmul"),
                "{}",
                b.describe()
            );
        }
    }
}
