//! [`Nvfp4Tensor`]: an NVFP4 matrix held as two `u8` tch tensors on any
//! device, validated once when built so every consumer can trust the shapes.

use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};
use crate::format::BLOCK_SIZE;
use crate::host::{check_global_scale, check_pair_shapes, Nvfp4Host, Nvfp4HostRef};

/// An NVFP4 matrix `[rows, cols]` as tch tensors on one device.
///
/// * `qdata`: `u8 [rows, cols/2]`, two E2M1 codes a byte (element `2j` low nibble);
/// * `scale`: `u8 [rows, cols/16]`, E4M3FN bytes (raw, not a float8 tensor);
/// * `global_scale`: optional per-tensor f32 multiplier (two-level mode).
#[derive(Debug)]
pub struct Nvfp4Tensor {
    qdata: Tensor,
    scale: Tensor,
    global_scale: Option<f32>,
    rows: usize,
    cols: usize,
}

/// Shape of a tensor as `usize`s (tch sizes are never negative).
fn dims(t: &Tensor) -> Vec<usize> {
    t.size().iter().map(|&d| d as usize).collect()
}

impl Nvfp4Tensor {
    /// Wraps `qdata` / `scale` tensors after checking kinds (`Uint8`), shapes
    /// (`[rows, cols/2]` / `[rows, cols/16]`), devices and the global scale.
    pub fn new(qdata: Tensor, scale: Tensor, global_scale: Option<f32>) -> Result<Self> {
        Self::new_named("nvfp4", qdata, scale, global_scale)
    }

    /// Like [`Nvfp4Tensor::new`], naming the tensor (e.g. its weight key) in errors.
    pub fn new_named(
        name: &str,
        qdata: Tensor,
        scale: Tensor,
        global_scale: Option<f32>,
    ) -> Result<Self> {
        for (what, t) in [("qdata", &qdata), ("scale", &scale)] {
            let kind = t.f_kind()?;
            if kind != Kind::Uint8 {
                return Err(Error::WrongKind {
                    name: name.to_string(),
                    what,
                    expected: "Uint8",
                    got: kind,
                });
            }
        }
        let (rows, cols) = check_pair_shapes(name, &dims(&qdata), &dims(&scale))?;
        if scale.device() != qdata.device() {
            return Err(Error::DeviceMismatch {
                name: name.to_string(),
                what: "scale",
                expected: qdata.device(),
                got: scale.device(),
            });
        }
        check_global_scale(name, global_scale)?;
        // Kernels and index_select paths assume dense row-major storage.
        let qdata = qdata.f_contiguous()?;
        let scale = scale.f_contiguous()?;
        Ok(Self {
            qdata,
            scale,
            global_scale,
            rows,
            cols,
        })
    }

    /// Uploads host NVFP4 data to `device`, copying each buffer exactly once
    /// (host memory -> device tensor) and keeping no host temporary (FR-09).
    pub fn from_host(q: &Nvfp4HostRef<'_>, device: Device) -> Result<Self> {
        // Re-validate: the fields of a ref are public and may be hand-built.
        let q = Nvfp4HostRef::new(q.qdata, q.scale, q.rows, q.cols, q.global_scale)?;
        let qdata = upload(q.qdata, &[q.rows, q.cols / 2], device)?;
        let scale = upload(q.scale, &[q.rows, q.cols / BLOCK_SIZE], device)?;
        Ok(Self {
            qdata,
            scale,
            global_scale: q.global_scale,
            rows: q.rows,
            cols: q.cols,
        })
    }

    /// Copies the tensors back to host memory.
    pub fn to_host(&self) -> Nvfp4Host {
        Nvfp4Host {
            qdata: download(&self.qdata),
            scale: download(&self.scale),
            rows: self.rows,
            cols: self.cols,
            global_scale: self.global_scale,
        }
    }

    /// Packed codes, `u8 [rows, cols/2]`.
    pub fn qdata(&self) -> &Tensor {
        &self.qdata
    }

    /// E4M3FN scale bytes, `u8 [rows, cols/16]`.
    pub fn scale(&self) -> &Tensor {
        &self.scale
    }

    /// The per-tensor scale of two-level mode (`None` = 1).
    pub fn global_scale(&self) -> Option<f32> {
        self.global_scale
    }

    /// Logical rows (`out`).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Logical columns (`in`).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Device holding both tensors.
    pub fn device(&self) -> Device {
        self.qdata.device()
    }

    /// A copy on `device` (shares storage when already there).
    pub fn to_device(&self, device: Device) -> Nvfp4Tensor {
        Nvfp4Tensor {
            qdata: self.qdata.to_device(device),
            scale: self.scale.to_device(device),
            global_scale: self.global_scale,
            rows: self.rows,
            cols: self.cols,
        }
    }

    /// Bytes of packed codes plus scale bytes.
    pub fn nbytes(&self) -> usize {
        self.qdata.numel() + self.scale.numel()
    }

    /// A handle sharing the same storage (no copy).
    pub fn shallow_clone(&self) -> Nvfp4Tensor {
        Nvfp4Tensor {
            qdata: self.qdata.shallow_clone(),
            scale: self.scale.shallow_clone(),
            global_scale: self.global_scale,
            rows: self.rows,
            cols: self.cols,
        }
    }
}

/// One copy of `bytes` into a fresh `u8` tensor of `shape` on `device`.
fn upload(bytes: &[u8], shape: &[usize], device: Device) -> Result<Tensor> {
    let size: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
    if device == Device::Cpu {
        // One memcpy into a tensor that owns its storage.
        return Ok(Tensor::f_from_data_size(bytes, &size, Kind::Uint8)?);
    }
    // SAFETY: `bytes` is a live, initialised slice of exactly numel(size)
    // bytes for the whole call; the wrapping tensor is only read by the
    // blocking copy below (non_blocking = false for pageable memory) and is
    // dropped before this function returns, so it never outlives `bytes`.
    let view =
        unsafe { Tensor::f_from_blob(bytes.as_ptr(), &size, &[], Kind::Uint8, Device::Cpu)? };
    Ok(view.f_to_device(device)?)
}

/// Device tensor -> `Vec<u8>` (row-major).
fn download(t: &Tensor) -> Vec<u8> {
    let n = t.numel();
    let mut out = vec![0u8; n];
    t.copy_data(&mut out, n);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_rejects_wrong_kind() {
        let q = Tensor::zeros([4, 8], (Kind::Int8, Device::Cpu));
        let s = Tensor::zeros([4, 1], (Kind::Uint8, Device::Cpu));
        let err = Nvfp4Tensor::new(q, s, None).unwrap_err();
        assert!(
            matches!(
                err,
                Error::WrongKind {
                    what: "qdata",
                    got: Kind::Int8,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn new_rejects_scale_shape_with_expected_and_got() {
        let q = Tensor::zeros([4, 16], (Kind::Uint8, Device::Cpu));
        let s = Tensor::zeros([4, 1], (Kind::Uint8, Device::Cpu));
        let err = Nvfp4Tensor::new_named("w", q, s, None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "w: scale has shape [4, 1], expected [4, 2]"
        );
    }

    #[test]
    fn host_round_trip_on_cpu_preserves_bytes() {
        let qd: Vec<u8> = (0..3 * 16).map(|i| (i * 37 % 256) as u8).collect();
        let sc: Vec<u8> = (0..3 * 2).map(|i| (i * 11 + 1) as u8).collect();
        let r = Nvfp4HostRef::new(&qd, &sc, 3, 32, Some(0.25)).unwrap();
        let t = Nvfp4Tensor::from_host(&r, Device::Cpu).unwrap();
        assert_eq!((t.rows(), t.cols(), t.nbytes()), (3, 32, 54));
        assert_eq!(t.qdata().size(), vec![3, 16]);
        assert_eq!(t.scale().size(), vec![3, 2]);
        assert_eq!(t.to_host(), r.to_owned_host());
    }

    #[test]
    fn from_host_on_cpu_owns_its_storage() {
        let mut qd = vec![7u8; 8];
        let sc = vec![0x38u8; 1];
        let t = {
            let r = Nvfp4HostRef::new(&qd, &sc, 1, 16, None).unwrap();
            Nvfp4Tensor::from_host(&r, Device::Cpu).unwrap()
        };
        qd.fill(0); // must not be visible through the tensor
        assert_eq!(t.to_host().qdata, vec![7u8; 8]);
    }
}
