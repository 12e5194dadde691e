//! Command-line spellings of devices and dtypes, shared by every example.

use anyhow::{bail, Context, Result};
use tch::{Device, Kind};

/// Parses `cpu`, `cuda` (device 0) or `cuda:N` into a [`Device`], checking that
/// the CUDA device exists so that a typo fails here, not deep inside a load.
pub fn parse_device(text: &str) -> Result<Device> {
    let device =
        match text.trim() {
            "cpu" => return Ok(Device::Cpu),
            "cuda" => Device::Cuda(0),
            other => match other.strip_prefix("cuda:") {
                Some(n) => Device::Cuda(n.parse::<usize>().with_context(|| {
                    format!("device {text:?}: {n:?} is not a CUDA device index")
                })?),
                None => bail!("device {text:?}: expected \"cpu\", \"cuda\" or \"cuda:N\""),
            },
        };
    let Device::Cuda(index) = device else {
        unreachable!("only CUDA reaches here")
    };
    if !tch::Cuda::is_available() {
        bail!("device {text:?}: CUDA is not available in this build or on this machine (hint: --device cpu)");
    }
    let count = tch::Cuda::device_count() as usize;
    if index >= count {
        bail!("device {text:?}: only {count} CUDA device(s) visible (indices 0..{count})");
    }
    Ok(device)
}

/// The device of a run: `requested` if given, else CUDA device 0 when
/// available, else the CPU. The choice is logged (stderr), with the reason,
/// so a user always knows where the work runs.
pub fn pick_device(requested: Option<Device>) -> Device {
    let (device, why) = match requested {
        Some(d) => (d, "as requested"),
        None if tch::Cuda::is_available() => (Device::Cuda(0), "CUDA is available"),
        None => (Device::Cpu, "no CUDA device available"),
    };
    eprintln!("device: {} ({why})", device_name(device));
    device
}

/// Parses the activation/compute dtype: `f32`, `bf16` or `f16`
/// (also the long names `float32`, `bfloat16`, `float16`).
pub fn parse_dtype(text: &str) -> Result<Kind> {
    match text.trim() {
        "f32" | "float32" | "float" => Ok(Kind::Float),
        "bf16" | "bfloat16" => Ok(Kind::BFloat16),
        "f16" | "float16" | "half" => Ok(Kind::Half),
        _ => bail!("dtype {text:?}: expected \"f32\", \"bf16\" or \"f16\""),
    }
}

/// The short name [`parse_dtype`] accepts for `kind` (for logs and tables).
pub fn dtype_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Float => "f32",
        Kind::BFloat16 => "bf16",
        Kind::Half => "f16",
        _ => "other",
    }
}

/// `cpu` or `cuda:N`, the inverse of [`parse_device`].
pub fn device_name(device: Device) -> String {
    match device {
        Device::Cuda(i) => format!("cuda:{i}"),
        _ => "cpu".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_and_dtypes_parse() {
        assert_eq!(parse_device("cpu").unwrap(), Device::Cpu);
        assert_eq!(parse_dtype("bf16").unwrap(), Kind::BFloat16);
        assert_eq!(parse_dtype("f16").unwrap(), Kind::Half);
        assert_eq!(parse_dtype("float32").unwrap(), Kind::Float);
        for kind in [Kind::Float, Kind::BFloat16, Kind::Half] {
            assert_eq!(parse_dtype(dtype_name(kind)).unwrap(), kind);
        }
    }

    #[test]
    fn bad_spellings_name_the_input_and_the_choices() {
        let err = parse_device("gpu").unwrap_err().to_string();
        assert!(err.contains("\"gpu\"") && err.contains("cuda:N"), "{err}");
        let err = parse_device("cuda:x").unwrap_err().to_string();
        assert!(err.contains("not a CUDA device index"), "{err}");
        let err = parse_dtype("fp8").unwrap_err().to_string();
        assert!(err.contains("\"fp8\"") && err.contains("bf16"), "{err}");
    }

    #[test]
    fn cuda_device_is_checked_against_the_machine() {
        let result = parse_device("cuda:99");
        assert!(result.is_err(), "no machine has 100 GPUs: {result:?}");
        if !tch::Cuda::is_available() {
            let err = parse_device("cuda").unwrap_err().to_string();
            assert!(err.contains("not available"), "{err}");
        }
    }
}
