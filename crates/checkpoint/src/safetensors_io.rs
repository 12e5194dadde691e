//! Named tch tensors to and from safetensors files.
//!
//! Writing is streamed (one tensor's bytes in memory at a time, whatever the
//! total) and hashed on the way out; reading maps the file, so a checkpoint
//! larger than RAM still loads one tensor at a time. The bytes of every
//! tensor are copied verbatim in both directions: dtype and bits are kept.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use memmap2::Mmap;
use safetensors::tensor::{TensorInfo, TensorView};
use safetensors::SafeTensors;
use tch::{Device, Tensor};

use crate::digest::HashingWriter;
use crate::dtype::{dtype_name, dtype_of_kind, kind_of_dtype};
use crate::error::{Error, IoContext, Result, TorchContext};

/// Length and checksum of a file as written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct WrittenFile {
    /// Bytes in the file.
    pub bytes: u64,
    /// Hex SHA-256 of those bytes.
    pub sha256: String,
}

/// Name, dtype and shape of one tensor to write.
#[derive(Clone, Debug)]
pub(crate) struct TensorSpec {
    pub name: String,
    pub dtype: safetensors::Dtype,
    pub shape: Vec<usize>,
}

impl TensorSpec {
    /// The spec of an existing tensor (errors on kinds without a dtype).
    pub(crate) fn of(name: &str, t: &Tensor) -> Result<Self> {
        let (dtype, shape) = dtype_and_shape(name, t)?;
        Ok(Self {
            name: name.to_string(),
            dtype,
            shape,
        })
    }

    fn nbytes(&self) -> Result<usize> {
        self.shape
            .iter()
            .try_fold(self.dtype.size(), |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| Error::InvalidTensorName {
                name: self.name.clone(),
                reason: "its byte size overflows usize",
            })
    }
}

/// Writes `tensors` (in any order, names unique) to a new safetensors file
/// at `path`, fsyncs it and returns its length and SHA-256.
pub(crate) fn write_safetensors(
    path: &Path,
    tensors: &[(&str, &Tensor)],
    metadata: Option<&BTreeMap<String, String>>,
) -> Result<WrittenFile> {
    let specs = tensors
        .iter()
        .map(|(name, t)| TensorSpec::of(name, t))
        .collect::<Result<Vec<_>>>()?;
    write_safetensors_with(path, &specs, metadata, |i| {
        let (name, t) = tensors[i];
        tensor_bytes(name, t)
    })
}

/// Like [`write_safetensors`], with each tensor's bytes made on demand by
/// `produce(index)`: only one tensor is ever materialized, so an export can
/// dequantize a whole model without holding a dense copy of it.
pub(crate) fn write_safetensors_with(
    path: &Path,
    specs: &[TensorSpec],
    metadata: Option<&BTreeMap<String, String>>,
    mut produce: impl FnMut(usize) -> Result<Vec<u8>>,
) -> Result<WrittenFile> {
    let (header, sizes) = header_bytes(specs, metadata)?;
    let file = File::create(path).io_ctx("create", path)?;
    // 8 MiB: large sequential writes without holding a big tensor twice.
    let mut out = HashingWriter::new(BufWriter::with_capacity(8 << 20, file));
    out.write_all(&(header.len() as u64).to_le_bytes())
        .and_then(|()| out.write_all(&header))
        .io_ctx("write", path)?;
    for (i, spec) in specs.iter().enumerate() {
        let bytes = produce(i)?;
        if bytes.len() != sizes[i] {
            return Err(Error::TensorMismatch {
                path: path.to_path_buf(),
                name: spec.name.clone(),
                expected: format!("{} bytes", sizes[i]),
                got: format!("{} bytes", bytes.len()),
            });
        }
        out.write_all(&bytes).io_ctx("write", path)?;
    }
    out.flush().io_ctx("write", path)?;
    let written = out.written();
    let (buffered, sha256) = out.finish();
    let file = buffered
        .into_inner()
        .map_err(|e| e.into_error())
        .io_ctx("write", path)?;
    file.sync_all().io_ctx("fsync", path)?;
    Ok(WrittenFile {
        bytes: written,
        sha256,
    })
}

/// The JSON header, padded with spaces to a multiple of 8 bytes as the
/// reference implementation does (keeps tensor data 8-byte aligned in a
/// mapped file), and the byte size of each tensor.
fn header_bytes(
    specs: &[TensorSpec],
    metadata: Option<&BTreeMap<String, String>>,
) -> Result<(Vec<u8>, Vec<usize>)> {
    let mut header = serde_json::Map::new();
    if let Some(meta) = metadata {
        header.insert("__metadata__".into(), serde_json::json!(meta));
    }
    let mut offset = 0usize;
    let mut sizes = Vec::with_capacity(specs.len());
    for spec in specs {
        check_name(&spec.name)?;
        let nbytes = spec.nbytes()?;
        let info = TensorInfo {
            dtype: spec.dtype,
            shape: spec.shape.clone(),
            data_offsets: (offset, offset + nbytes),
        };
        offset += nbytes;
        sizes.push(nbytes);
        let value = serde_json::to_value(&info).expect("TensorInfo serializes");
        if header.insert(spec.name.clone(), value).is_some() {
            return Err(Error::DuplicateTensorName {
                name: spec.name.clone(),
            });
        }
    }
    let mut bytes = serde_json::to_vec(&header).expect("a JSON map serializes");
    bytes.resize(bytes.len().next_multiple_of(8), b' ');
    Ok((bytes, sizes))
}

/// Rejects names a safetensors header cannot hold unambiguously.
fn check_name(name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        "it is empty"
    } else if name == "__metadata__" {
        "safetensors reserves it for the file's metadata"
    } else {
        return Ok(());
    };
    Err(Error::InvalidTensorName {
        name: name.to_string(),
        reason,
    })
}

/// The safetensors dtype and the shape of `t`.
pub(crate) fn dtype_and_shape(name: &str, t: &Tensor) -> Result<(safetensors::Dtype, Vec<usize>)> {
    let kind = t
        .f_kind()
        .torch_ctx(|| format!("reading the kind of tensor {name:?}"))?;
    let dtype = dtype_of_kind(kind).ok_or_else(|| Error::UnsupportedKind {
        name: name.to_string(),
        kind: format!("{kind:?}"),
    })?;
    // Sizes from libtorch are never negative.
    let shape = t.size().iter().map(|&d| d as usize).collect();
    Ok((dtype, shape))
}

/// The row-major little-endian bytes of `t`, copied to host memory.
pub(crate) fn tensor_bytes(name: &str, t: &Tensor) -> Result<Vec<u8>> {
    let numel = t.numel();
    let mut bytes = vec![0u8; numel * t.kind().elt_size_in_bytes()];
    // at_copy_data moves the tensor to the CPU and makes it contiguous itself.
    t.detach()
        .f_copy_data_u8(&mut bytes, numel)
        .torch_ctx(|| format!("copying tensor {name:?} to host memory"))?;
    Ok(bytes)
}

/// Maps a file read-only.
pub(crate) fn map_file(path: &Path) -> Result<Mmap> {
    let file = File::open(path).io_ctx("open", path)?;
    // SAFETY: checkpoint and export files are written once into a fresh
    // directory and never modified in place, so the mapping cannot change
    // under us unless another program rewrites the file, which the
    // checksum check at load would then report.
    unsafe { Mmap::map(&file) }.io_ctx("mmap", path)
}

/// Parses a safetensors file already in memory.
pub(crate) fn parse<'a>(path: &Path, bytes: &'a [u8]) -> Result<SafeTensors<'a>> {
    SafeTensors::deserialize(bytes).map_err(|source| Error::Safetensors {
        path: path.to_path_buf(),
        source,
    })
}

/// The view of tensor `name`, or [`Error::TensorMissing`].
pub(crate) fn view<'a>(path: &Path, st: &SafeTensors<'a>, name: &str) -> Result<TensorView<'a>> {
    st.tensor(name).map_err(|_| Error::TensorMissing {
        path: path.to_path_buf(),
        name: name.to_string(),
    })
}

/// Copies a tensor out of a safetensors view onto `device`, bit-exactly.
pub(crate) fn tensor_from_view(
    path: &Path,
    name: &str,
    view: &TensorView<'_>,
    device: Device,
) -> Result<Tensor> {
    let kind = kind_of_dtype(view.dtype()).ok_or_else(|| Error::UnsupportedKind {
        name: name.to_string(),
        kind: format!(
            "safetensors {} in {}",
            dtype_name(view.dtype()),
            path.display()
        ),
    })?;
    let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
    let context = || format!("loading tensor {name:?} from {}", path.display());
    Tensor::f_from_data_size(view.data(), &shape, kind)
        .torch_ctx(context)?
        .f_to_device(device)
        .torch_ctx(context)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    #[test]
    fn should_write_files_the_reference_reader_accepts_bit_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.safetensors");
        let seed = test_support::seed_i64();
        tch::manual_seed(seed);
        let a = Tensor::randn([3, 5], (Kind::BFloat16, Device::Cpu));
        let b = Tensor::randint(255, [7], (Kind::Uint8, Device::Cpu));
        let scalar = Tensor::from(3.25f64);
        let empty = Tensor::zeros([0, 4], (Kind::Float, Device::Cpu));
        let named = [("a", &a), ("b", &b), ("scalar", &scalar), ("empty", &empty)];
        let meta = BTreeMap::from([("format".to_string(), "pt".to_string())]);
        let written = write_safetensors(&path, &named, Some(&meta)).unwrap();

        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(written.bytes, bytes.len() as u64);
        assert_eq!(written.sha256, crate::digest::sha256_hex(&bytes));
        let st = parse(&path, &bytes).unwrap();
        for (name, t) in named {
            let back = tensor_from_view(&path, name, &view(&path, &st, name).unwrap(), Device::Cpu)
                .unwrap();
            assert_eq!(back.kind(), t.kind(), "{name}");
            assert_eq!(back.size(), t.size(), "{name}");
            assert!(back.equal(t), "{name} differs after the round trip");
        }
        assert!(matches!(
            view(&path, &st, "nope"),
            Err(Error::TensorMissing { .. })
        ));
    }

    #[test]
    fn should_reject_duplicate_and_reserved_names() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.safetensors");
        let t = Tensor::from_slice(&[1.0f32, 2.0]);
        let err = write_safetensors(&path, &[("x", &t), ("x", &t)], None).unwrap_err();
        assert!(
            matches!(err, Error::DuplicateTensorName { ref name } if name == "x"),
            "{err}"
        );
        let err = write_safetensors(&path, &[("__metadata__", &t)], None).unwrap_err();
        assert!(matches!(err, Error::InvalidTensorName { .. }), "{err}");
        let err = write_safetensors(&path, &[("", &t)], None).unwrap_err();
        assert!(matches!(err, Error::InvalidTensorName { .. }), "{err}");
    }

    #[test]
    fn should_refuse_complex_tensors_with_their_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.safetensors");
        let t = Tensor::zeros([2], (Kind::ComplexFloat, Device::Cpu));
        let err = write_safetensors(&path, &[("z", &t)], None).unwrap_err();
        assert!(
            matches!(err, Error::UnsupportedKind { ref name, .. } if name == "z"),
            "{err}"
        );
    }
}
