//! Allocations whose size the user picks (KV caches: batch x capacity, grown
//! by `--max-tokens`) fail with an error naming the bytes, never a panic or a
//! killed process; and [`guard_libtorch`] turns any other libtorch failure
//! inside a user-facing call (a forward, a training step) into an error.
//!
//! On CUDA, libtorch's `f_zeros` reports out-of-memory as an error. On the
//! CPU that is not enough: Linux over-commits, so a request larger than the
//! memory left succeeds and the process is killed while the zeros are
//! written. The size is therefore checked against `MemAvailable` first.

use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};

/// Bytes of `kind` elements in `shape`, or an error when that overflows.
pub(crate) fn bytes_of(what: &str, shape: &[usize], kind: Kind) -> Result<u64> {
    shape
        .iter()
        .try_fold(kind.elt_size_in_bytes() as u64, |n, &d| {
            n.checked_mul(d as u64)
        })
        .ok_or_else(|| Error::OutOfMemory {
            what: what.to_string(),
            bytes: u64::MAX,
            device: "any".into(),
            reason: format!("{shape:?} {kind:?} overflows 64-bit byte counts"),
        })
}

/// Refuses `bytes` more on `device` when the host cannot hold them (CPU
/// only: a CUDA allocation reports its own failure).
pub(crate) fn ensure_fits(what: &str, bytes: u64, device: Device) -> Result<()> {
    if device != Device::Cpu {
        return Ok(());
    }
    match host_available_bytes() {
        Some(available) if bytes > available => Err(Error::OutOfMemory {
            what: what.to_string(),
            bytes,
            device: "cpu".into(),
            reason: format!(
                "only {available} bytes ({:.2} GiB) of host memory are available",
                gib(available)
            ),
        }),
        _ => Ok(()),
    }
}

/// Zeros of `shape`, or an error naming `what` and its bytes.
pub(crate) fn zeros(what: &str, shape: &[usize], kind: Kind, device: Device) -> Result<Tensor> {
    let bytes = bytes_of(what, shape, kind)?;
    let dims: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
    Tensor::f_zeros(&dims, (kind, device)).map_err(|e| Error::OutOfMemory {
        what: what.to_string(),
        bytes,
        device: format!("{device:?}"),
        reason: e.to_string(),
    })
}

/// Runs `f`, turning a libtorch failure raised as a panic inside it (tch's
/// infallible ops unwrap; a CUDA out-of-memory in a matmul arrives that
/// way, with libtorch's message naming the bytes) into [`Error::Libtorch`].
/// The panic hook still reports it on stderr first. Generic over the error
/// type so that a caller's own errors pass through unchanged.
pub fn guard_libtorch<T, E: From<Error>>(
    during: &str,
    f: impl FnOnce() -> std::result::Result<T, E>,
) -> std::result::Result<T, E> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(result) => result,
        Err(panic) => {
            let reason = match (panic.downcast_ref::<&str>(), panic.downcast_ref::<String>()) {
                (Some(s), _) => s.to_string(),
                (_, Some(s)) => s.clone(),
                _ => "(non-text panic payload)".to_string(),
            };
            Err(Error::Libtorch {
                during: during.to_string(),
                reason,
            }
            .into())
        }
    }
}

pub(crate) fn gib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 30) as f64
}

/// `MemAvailable` from `/proc/meminfo` (None where there is none).
fn host_available_bytes() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn more_than_the_host_has_is_refused_with_the_sizes() {
        let available = host_available_bytes().expect("Linux has /proc/meminfo");
        let err = ensure_fits("test buffer", available + (1 << 30), Device::Cpu).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("test buffer") && msg.contains("available"),
            "{msg}"
        );
        ensure_fits("small", 1 << 20, Device::Cpu).unwrap();
    }

    #[test]
    fn a_libtorch_failure_inside_the_guard_is_an_error() {
        let err = guard_libtorch::<_, Error>("a bad matmul", || {
            Ok(Tensor::ones([2, 3], (Kind::Float, Device::Cpu))
                .matmul(&Tensor::ones([4, 5], (Kind::Float, Device::Cpu))))
        })
        .unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, Error::Libtorch { .. }), "{msg}");
        assert!(msg.contains("a bad matmul") && msg.contains("2x3"), "{msg}");
        let ok = guard_libtorch::<_, Error>("a good one", || Ok(3)).unwrap();
        assert_eq!(ok, 3);
    }

    #[test]
    fn overflowing_shapes_are_errors() {
        let err = bytes_of("huge", &[1 << 40, 1 << 40], Kind::Float).unwrap_err();
        assert!(err.to_string().contains("overflows"), "{err}");
        assert_eq!(bytes_of("x", &[3, 5], Kind::BFloat16).unwrap(), 30);
    }
}
