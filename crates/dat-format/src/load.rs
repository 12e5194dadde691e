//! Payload bytes <-> tch tensors, with exactly one copy each way.
//!
//! FR-09: a tensor loaded to a device is copied once, straight from the file
//! mapping, and no host temporary outlives the call.

use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};

/// Copies a payload (little-endian, row-major) into a new tensor of `kind`
/// and `shape` on `device`.
///
/// CPU: one memcpy from the mapping into a fresh tensor. Other devices: the
/// mapping is wrapped (no copy) as a byte tensor, copied once to the device,
/// then reinterpreted there; the wrapper is dropped before returning. Going
/// through bytes also means no libtorch kernel ever sees a misaligned typed
/// pointer (`.dat` payloads have no alignment).
pub(crate) fn payload_to_tensor(
    key: &str,
    bytes: &[u8],
    shape: &[i64],
    kind: Kind,
    device: Device,
) -> Result<Tensor> {
    let context = || format!("loading {key:?} ({kind:?} {shape:?}) to {device:?}");
    let numel: i64 = shape.iter().product();
    if numel as usize * kind.elt_size_in_bytes() != bytes.len() {
        // The parser guarantees this; checked again because the copy below trusts it.
        return Err(Error::Torch {
            context: context(),
            error: tch::TchError::Shape(format!(
                "{} payload bytes for {numel} elements",
                bytes.len()
            )),
        });
    }
    if device == Device::Cpu || bytes.is_empty() {
        if bytes.is_empty() {
            return Tensor::f_empty(shape, (kind, device)).map_err(Error::torch(context()));
        }
        return Tensor::f_from_data_size(bytes, shape, kind).map_err(Error::torch(context()));
    }
    // SAFETY: the view borrows `bytes` (valid, initialised, `bytes.len()` long)
    // only inside this function. `to_device` is a blocking copy from pageable
    // memory, so the view is no longer read once it returns, and it is dropped
    // before `bytes` can go away.
    let view = unsafe {
        Tensor::f_from_blob(
            bytes.as_ptr(),
            &[bytes.len() as i64],
            &[],
            Kind::Uint8,
            Device::Cpu,
        )
    }
    .map_err(Error::torch(context()))?;
    let on_device = view.f_to_device(device).map_err(Error::torch(context()))?;
    drop(view);
    on_device
        .f_view_dtype(kind)
        .and_then(|t| t.f_reshape(shape))
        .map_err(Error::torch(context()))
}

/// Runs `f` on the raw bytes of `t` (converted to a contiguous CPU tensor
/// first if it is not one already; no copy when it is).
pub(crate) fn with_tensor_bytes<R>(key: &str, t: &Tensor, f: impl FnOnce(&[u8]) -> R) -> Result<R> {
    let context = || format!("reading the bytes of {key:?}");
    let cpu = t
        .f_to_device(Device::Cpu)
        .and_then(|c| c.f_contiguous())
        .map_err(Error::torch(context()))?;
    let kind = cpu.f_kind().map_err(Error::torch(context()))?;
    let len = cpu.numel() * kind.elt_size_in_bytes();
    if len == 0 {
        return Ok(f(&[]));
    }
    // SAFETY: `cpu` is a contiguous CPU tensor of `numel` elements of `kind`,
    // so its data pointer addresses `len` initialised bytes; `cpu` outlives
    // the borrow, and nothing writes to it meanwhile.
    let bytes = unsafe { std::slice::from_raw_parts(cpu.data_ptr() as *const u8, len) };
    Ok(f(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_round_trips_through_a_cpu_tensor_of_every_kind() {
        let seed = test_support::seed();
        let mut state = seed | 1;
        for elem in crate::ElemType::ALL {
            let kind = elem.kind();
            let shape = [3i64, 5];
            let mut bytes: Vec<u8> = (0..15 * elem.size())
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state as u8
                })
                .collect();
            if elem == crate::ElemType::Bool {
                bytes.iter_mut().for_each(|b| *b &= 1);
            }
            // An odd offset proves unaligned payloads load correctly.
            let mut shifted = vec![0u8; 1];
            shifted.extend_from_slice(&bytes);
            let t = payload_to_tensor("t", &shifted[1..], &shape, kind, Device::Cpu).unwrap();
            assert_eq!(t.size(), shape);
            assert_eq!(t.kind(), kind);
            let back = with_tensor_bytes("t", &t, |b| b.to_vec()).unwrap();
            assert_eq!(back, bytes, "{elem}");
        }
    }

    #[test]
    fn empty_payload_gives_an_empty_tensor() {
        let t = payload_to_tensor("t", &[], &[0, 4], Kind::Float, Device::Cpu).unwrap();
        assert_eq!(t.size(), [0, 4]);
    }

    #[test]
    fn payload_of_the_wrong_length_is_an_error() {
        let err = payload_to_tensor("t", &[1, 2, 3], &[1], Kind::Float, Device::Cpu).unwrap_err();
        assert!(err.to_string().contains("\"t\""), "{err}");
    }
}
