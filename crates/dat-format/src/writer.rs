//! [`DatWriter`]: streams entries into a new `.dat` file, atomically.
//!
//! Entries are written in call order with the element types given (the
//! original broke its kernels once by writing scales as f16: docs/Formats.md,
//! "Defects of the original"),
//! headers use minimal LEB128 varints as the original tools did, so reading
//! a file and writing its entries back reproduces it byte for byte.

use std::collections::HashMap;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use nvfp4_kernels::Nvfp4HostRef;
use tch::Tensor;

use crate::atomic::AtomicFile;
use crate::elem::ElemType;
use crate::error::{Error, Result};
use crate::index::{TensorEntry, MAX_DIM, MAX_NDIM};
use crate::load::with_tensor_bytes;
use crate::pairs::{find_pairs, GLOBAL_SCALE_SUFFIX, QDATA_SUFFIX, SCALE_SUFFIX};
use crate::varint;

/// Buffer between the writer and the file: large enough to batch headers and
/// small payloads, while big payloads go straight through.
const BUFFER_BYTES: usize = 1 << 20;

/// Writes a `.dat` file entry by entry to a temporary file in the target's
/// directory; [`DatWriter::finish`] fsyncs it and renames it over the target.
/// Dropping the writer without finishing deletes the temporary file.
#[derive(Debug)]
pub struct DatWriter {
    path: PathBuf,
    out: BufWriter<AtomicFile>,
    declared: usize,
    entries: Vec<TensorEntry>,
    by_key: HashMap<String, usize>,
    offset: u64,
    failed: bool,
}

impl DatWriter {
    /// Starts a file at `path` that will hold exactly `count` entries.
    pub fn create(path: impl AsRef<Path>, count: usize) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = AtomicFile::create(&path)?;
        let mut writer = Self {
            out: BufWriter::with_capacity(BUFFER_BYTES, file),
            path,
            declared: count,
            entries: Vec::with_capacity(count.min(1 << 16)),
            by_key: HashMap::new(),
            offset: 0,
            failed: false,
        };
        let mut header = Vec::new();
        varint::encode(count as u64, &mut header);
        writer.emit(&header)?;
        Ok(writer)
    }

    /// Entries written so far.
    pub fn written(&self) -> usize {
        self.entries.len()
    }

    /// Writes one entry: `bytes` are the raw little-endian row-major payload of
    /// `shape` elements of `elem`.
    pub fn write_raw(
        &mut self,
        key: &str,
        elem: ElemType,
        shape: &[usize],
        bytes: &[u8],
    ) -> Result<()> {
        let nbytes = self.check_entry(key, elem, shape, bytes.len())?;
        let mut header = Vec::with_capacity(key.len() + 8 * (shape.len() + 3));
        varint::encode(key.len() as u64, &mut header);
        header.extend_from_slice(key.as_bytes());
        varint::encode(elem.code(), &mut header);
        varint::encode(shape.len() as u64, &mut header);
        shape
            .iter()
            .for_each(|&d| varint::encode(d as u64, &mut header));
        let header_offset = self.offset;
        self.emit(&header)?;
        let data_offset = self.offset;
        self.emit(bytes)?;
        self.by_key.insert(key.to_owned(), self.entries.len());
        self.entries.push(TensorEntry {
            key: key.to_owned(),
            elem,
            shape: shape.to_vec(),
            header_offset,
            data_offset,
            nbytes,
        });
        Ok(())
    }

    /// Writes tensor `t` (any device, any layout) as `elem`, converting its
    /// kind when needed. The NVFP4 storage types take `Uint8` tensors of
    /// their raw bytes only (`Float8e4m3fn` too, for [`ElemType::F8E4M3`]).
    pub fn write_tensor(&mut self, key: &str, elem: ElemType, t: &Tensor) -> Result<()> {
        let kind = t
            .f_kind()
            .map_err(Error::torch(format!("writing {key:?}")))?;
        let converted = match elem {
            ElemType::F4E2M1x2 | ElemType::F8E4M3 => {
                let raw_ok = kind == tch::Kind::Uint8
                    || (elem == ElemType::F8E4M3 && kind == tch::Kind::Float8e4m3fn);
                if !raw_ok {
                    return Err(Error::KindMismatch {
                        key: key.to_owned(),
                        elem,
                        requested: format!("a {kind:?} tensor (store raw Uint8 codes instead)"),
                    });
                }
                t.shallow_clone()
            }
            _ if kind == elem.kind() => t.shallow_clone(),
            _ => t
                .f_to_kind(elem.kind())
                .map_err(Error::torch(format!("converting {key:?} to {elem}")))?,
        };
        let shape: Vec<usize> = converted.size().iter().map(|&d| d as usize).collect();
        with_tensor_bytes(key, &converted, |bytes| {
            self.write_raw(key, elem, &shape, bytes)
        })?
    }

    /// Writes an NVFP4 matrix as `{base_key}.qdata` (u8 `[rows, cols/2]`) and
    /// `{base_key}.scale` (E4M3 `[rows, cols/16]`), plus
    /// `{base_key}.global_scale` (f32 `[1]`) when it has a global scale:
    /// two entries towards `count`, three with a global scale.
    pub fn write_nvfp4(&mut self, base_key: &str, q: &Nvfp4HostRef<'_>) -> Result<()> {
        // Re-check the borrowed buffers: the fields are public.
        let q = Nvfp4HostRef::new_named(base_key, q.qdata, q.scale, q.rows, q.cols, q.global_scale)
            .map_err(Error::nvfp4(base_key))?;
        let block = nvfp4_kernels::BLOCK_SIZE;
        self.write_raw(
            &format!("{base_key}{QDATA_SUFFIX}"),
            ElemType::U8,
            &[q.rows, q.cols / 2],
            q.qdata,
        )?;
        self.write_raw(
            &format!("{base_key}{SCALE_SUFFIX}"),
            ElemType::F8E4M3,
            &[q.rows, q.cols / block],
            q.scale,
        )?;
        if let Some(g) = q.global_scale {
            self.write_raw(
                &format!("{base_key}{GLOBAL_SCALE_SUFFIX}"),
                ElemType::F32,
                &[1],
                &g.to_le_bytes(),
            )?;
        }
        Ok(())
    }

    /// Checks the entry count and NVFP4 pairs, then fsyncs the file, renames
    /// it to the final path and fsyncs the directory.
    pub fn finish(mut self) -> Result<()> {
        if self.entries.len() != self.declared {
            return Err(Error::CountMismatch {
                path: self.path,
                declared: self.declared,
                written: self.entries.len(),
            });
        }
        if self.failed {
            let error = std::io::Error::other("an earlier write to this file failed");
            return Err(Error::Io {
                path: self.path,
                op: "finish",
                error,
            });
        }
        // Refuse to publish a file our own reader would reject.
        find_pairs(&self.entries, &self.by_key)?;
        self.out.flush().map_err(Error::io(&self.path, "write"))?;
        let file = self.out.into_inner().map_err(|e| Error::Io {
            path: self.path.clone(),
            op: "write",
            error: std::io::Error::new(e.error().kind(), e.error().to_string()),
        })?;
        file.commit()
    }

    /// Validates one entry before anything is written; returns its byte size.
    fn check_entry(&self, key: &str, elem: ElemType, shape: &[usize], got: usize) -> Result<u64> {
        if self.entries.len() >= self.declared {
            return Err(Error::CountMismatch {
                path: self.path.clone(),
                declared: self.declared,
                written: self.entries.len() + 1,
            });
        }
        if let Some(&first) = self.by_key.get(key) {
            return Err(Error::DuplicateWrite {
                key: key.to_owned(),
                first,
            });
        }
        let bad_shape = |reason| Error::BadShape {
            key: key.to_owned(),
            shape: shape.to_vec(),
            reason,
        };
        if shape.len() > MAX_NDIM {
            return Err(bad_shape("more than 16 dimensions"));
        }
        if shape.iter().any(|&d| d as u64 > MAX_DIM) {
            return Err(bad_shape("a dimension exceeds 2^40"));
        }
        // Same arithmetic as the parser: a zero dimension makes any shape empty.
        let expected = if shape.contains(&0) {
            0
        } else {
            shape
                .iter()
                .try_fold(elem.size() as u64, |acc, &d| acc.checked_mul(d as u64))
                .ok_or_else(|| bad_shape("its byte size overflows 64 bits"))?
        };
        if expected != got as u64 {
            return Err(Error::PayloadSize {
                key: key.to_owned(),
                elem,
                shape: shape.to_vec(),
                expected,
                got: got as u64,
            });
        }
        Ok(expected)
    }

    fn emit(&mut self, bytes: &[u8]) -> Result<()> {
        if let Err(error) = self.out.write_all(bytes) {
            self.failed = true;
            return Err(Error::Io {
                path: self.path.clone(),
                op: "write",
                error,
            });
        }
        self.offset += bytes.len() as u64;
        Ok(())
    }
}
