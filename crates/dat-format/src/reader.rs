//! [`DatFile`]: a memory-mapped `.dat` file with its header index.
//!
//! Opening maps the file and parses every header once, skipping payloads
//! (FR-10); afterwards every tensor is a zero-copy byte view of the mapping,
//! and loading one copies it exactly once (FR-09).

use std::borrow::Cow;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use nvfp4_kernels::Nvfp4HostRef;
use tch::{Device, Kind, Tensor};

use crate::elem::ElemType;
use crate::error::{EntryRef, Error, Result};
use crate::index::{build_index, Index, TensorEntry};
use crate::load::payload_to_tensor;
use crate::pairs::{candidate_bases, Nvfp4Pair, QDATA_SUFFIX, SCALE_SUFFIX};
use crate::scalar::{cast_payload, DatScalar};

/// An open `.dat` file: the mapping, its entries in file order and a key index.
#[derive(Debug)]
pub struct DatFile {
    path: PathBuf,
    mmap: Mmap,
    index: Index,
}

impl DatFile {
    /// Maps `path` and indexes all its headers in one pass, validating every
    /// entry (see [`crate::parse_index`]). No payload byte is read.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(Error::io(&path, "open"))?;
        // SAFETY: the mapping is read-only and private to this value. Like every
        // mmap-based reader (safetensors, candle) we rely on nobody truncating or
        // rewriting the file while it is open; our own writer never does (it
        // writes a new file and renames it over the old one).
        let mmap = unsafe { Mmap::map(&file) }.map_err(Error::io(&path, "memory-map"))?;
        let index = build_index(&mmap)?;
        tracing::debug!(path = %path.display(), entries = index.entries.len(), pairs = index.pairs.len(), "indexed .dat");
        Ok(Self { path, mmap, index })
    }

    /// The path the file was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// All entries, in file order.
    pub fn entries(&self) -> &[TensorEntry] {
        &self.index.entries
    }

    /// The entry named `key`, if any.
    pub fn get(&self, key: &str) -> Option<&TensorEntry> {
        self.index.by_key.get(key).map(|&i| &self.index.entries[i])
    }

    /// The entry named `key`, or [`Error::KeyNotFound`].
    pub fn entry(&self, key: &str) -> Result<&TensorEntry> {
        self.get(key).ok_or_else(|| Error::KeyNotFound {
            key: key.to_owned(),
            path: self.path.clone(),
        })
    }

    /// The payload of `entry`, zero-copy.
    ///
    /// # Panics
    /// If `entry` does not come from this file and lies beyond its end.
    pub fn bytes(&self, entry: &TensorEntry) -> &[u8] {
        &self.mmap[entry.byte_range()]
    }

    /// Length of the file in bytes.
    pub fn file_len(&self) -> u64 {
        self.mmap.len() as u64
    }

    /// Sum of all payload sizes (what a full load copies).
    pub fn payload_bytes(&self) -> u64 {
        self.index.entries.iter().map(|e| e.nbytes).sum()
    }

    /// Tensor `key` in its stored kind ([`ElemType::kind`]) on `device`, one copy.
    pub fn tensor(&self, key: &str, device: Device) -> Result<Tensor> {
        self.entry_tensor(self.entry(key)?, device)
    }

    /// Like [`DatFile::tensor`] for an entry already looked up.
    pub fn entry_tensor(&self, entry: &TensorEntry, device: Device) -> Result<Tensor> {
        payload_to_tensor(
            &entry.key,
            self.bytes(entry),
            &entry.shape_i64(),
            entry.elem.kind(),
            device,
        )
    }

    /// Tensor `key` as `kind` on `device`. Float entries convert to any float
    /// kind (on the device, after the one upload, so PCIe moves the stored
    /// bytes); other entries must be asked for in their stored kind.
    pub fn tensor_as(&self, key: &str, kind: Kind, device: Device) -> Result<Tensor> {
        let entry = self.entry(key)?;
        let stored = entry.elem.kind();
        if stored == kind {
            return self.entry_tensor(entry, device);
        }
        let float_kind = ElemType::from_kind(kind).is_some_and(ElemType::is_float);
        if !(entry.elem.is_float() && float_kind) {
            return Err(Error::kind_mismatch(key, entry.elem, kind));
        }
        let loaded = self.entry_tensor(entry, device)?;
        loaded
            .f_to_kind(kind)
            .map_err(Error::torch(format!("converting {key:?} to {kind:?}")))
    }

    /// The payload of `key` as a slice of `T` (borrowed when aligned, else copied).
    pub fn typed_slice<T: DatScalar>(&self, key: &str) -> Result<Cow<'_, [T]>> {
        let entry = self.entry(key)?;
        if !T::accepts(entry.elem) {
            return Err(Error::KindMismatch {
                key: key.to_owned(),
                elem: entry.elem,
                requested: std::any::type_name::<T>().to_owned(),
            });
        }
        Ok(cast_payload(self.bytes(entry)))
    }

    /// Every NVFP4 pair of the file (validated at open), in file order of their `.qdata`.
    pub fn nvfp4_pairs(&self) -> &[Nvfp4Pair] {
        &self.index.pairs
    }

    /// The NVFP4 weight of layer `base` (`model.layers.0.self_attn.q_proj`,
    /// `lm_head`): tries `{base}.weight.qdata`/`.scale`, then
    /// `{base}.qdata`/`.scale`. `Ok(None)` if neither qdata exists; an error
    /// if only a scale exists (the reverse was rejected at open).
    pub fn nvfp4(&self, base: &str) -> Result<Option<Nvfp4HostRef<'_>>> {
        // Every `.qdata` entry got a validated pair at open, so "the qdata
        // exists" and "a pair with this base exists" are the same question.
        for candidate in candidate_bases(base) {
            if let Some(pair) = self.index.pairs.iter().find(|p| p.base == candidate) {
                return self.pair(pair).map(Some);
            }
        }
        for candidate in candidate_bases(base) {
            let scale_key = format!("{candidate}{SCALE_SUFFIX}");
            if let Some(&si) = self.index.by_key.get(&scale_key) {
                return Err(Error::MissingQdata {
                    entry: EntryRef::named(si, &scale_key),
                    qdata_key: format!("{candidate}{QDATA_SUFFIX}"),
                });
            }
        }
        Ok(None)
    }

    /// Borrows the data of `pair` (one of [`DatFile::nvfp4_pairs`]).
    pub fn pair(&self, pair: &Nvfp4Pair) -> Result<Nvfp4HostRef<'_>> {
        let q = &self.index.entries[pair.qdata];
        let s = &self.index.entries[pair.scale];
        let global = match pair.global_scale {
            Some(gi) => Some(self.global_scale_value(gi)?),
            None => None,
        };
        let (rows, cols) = nvfp4_kernels::check_pair_shapes(&q.key, &q.shape, &s.shape)
            .map_err(Error::nvfp4(&q.key))?;
        Nvfp4HostRef::new_named(&q.key, self.bytes(q), self.bytes(s), rows, cols, global)
            .map_err(Error::nvfp4(&q.key))
    }

    fn global_scale_value(&self, gi: usize) -> Result<f32> {
        let g = &self.index.entries[gi];
        let bytes: [u8; 4] = self
            .bytes(g)
            .try_into()
            .map_err(|_| Error::BadGlobalScale {
                entry: g.entry_ref(gi),
                reason: format!("{} payload bytes, expected 4", g.nbytes),
            })?;
        let value = f32::from_le_bytes(bytes);
        if !(value.is_finite() && value > 0.0) {
            return Err(Error::BadGlobalScale {
                entry: g.entry_ref(gi),
                reason: format!("value {value}"),
            });
        }
        Ok(value)
    }
}
