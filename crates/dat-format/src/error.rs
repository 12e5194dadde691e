//! The one error type of this crate.
//!
//! Every format error names the entry (its index, and its key once the key has
//! been read) and the byte offset where the problem is, and every message ends
//! with a hint saying what to do about it. Each failure mode of a hostile file
//! has its own variant so callers (and the negative tests) can tell them apart.

use std::path::PathBuf;

use tch::Kind;

use crate::elem::ElemType;

/// Which entry of a `.dat` file an error is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryRef {
    /// Position in file order; `None` for the leading entry count.
    pub index: Option<usize>,
    /// The entry's key, once it has been read.
    pub key: Option<String>,
}

impl EntryRef {
    /// The file's leading entry count (before any entry).
    pub(crate) fn file_header() -> Self {
        Self {
            index: None,
            key: None,
        }
    }

    /// Entry `index` whose key is not known (yet).
    pub(crate) fn at(index: usize) -> Self {
        Self {
            index: Some(index),
            key: None,
        }
    }

    /// Entry `index` with key `key`.
    pub(crate) fn named(index: usize, key: &str) -> Self {
        Self {
            index: Some(index),
            key: Some(key.to_owned()),
        }
    }
}

impl std::fmt::Display for EntryRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.index, &self.key) {
            (None, _) => write!(f, "file header (entry count)"),
            (Some(i), None) => write!(f, "entry #{i}"),
            (Some(i), Some(k)) => write!(f, "entry #{i} {k:?}"),
        }
    }
}

const CUT_SHORT: &str = "hint: the file looks cut short (interrupted copy or download?); compare its size with the original";
const CORRUPT: &str = "hint: the file is corrupt or is not a .dat weight file";

/// Everything that can go wrong reading or writing `.dat` files.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The file ends inside a header field.
    #[error("{entry}: header truncated at byte {offset}: the {field} needs at least {needed} byte(s) from there but the file ends at byte {file_len}; {CUT_SHORT}")]
    TruncatedHeader {
        /// The entry being read.
        entry: EntryRef,
        /// The header field being read (`key length`, `key bytes`, `dim 1`, ...).
        field: &'static str,
        /// Offset of the field's first byte.
        offset: u64,
        /// Bytes the field needs from `offset` (a lower bound for a varint).
        needed: u64,
        /// Length of the file.
        file_len: u64,
    },

    /// The file ends inside an entry's payload.
    #[error("{entry}: payload truncated: {needed} bytes declared at byte {offset} but only {available} remain; hint: the file is cut short (interrupted copy or download?) or this entry's shape/elem type is corrupt; compare the file size with the original")]
    TruncatedPayload {
        /// The entry whose payload is short.
        entry: EntryRef,
        /// Offset of the payload.
        offset: u64,
        /// Payload bytes the header declares.
        needed: u64,
        /// Bytes left in the file from `offset`.
        available: u64,
    },

    /// A LEB128 varint longer than 64 bits.
    #[error(
        "{entry}: the {field} at byte {offset} is a LEB128 varint longer than 64 bits; {CORRUPT}"
    )]
    VarintOverflow {
        /// The entry being read.
        entry: EntryRef,
        /// The header field being read.
        field: &'static str,
        /// Offset of the varint's first byte.
        offset: u64,
    },

    /// More dimensions than any weight tensor has.
    #[error(
        "{entry}: ndim {ndim} at byte {offset} exceeds the limit of {max} dimensions; {CORRUPT}"
    )]
    TooManyDims {
        /// The entry.
        entry: EntryRef,
        /// Offset of the ndim field.
        offset: u64,
        /// The value read.
        ndim: u64,
        /// The limit.
        max: usize,
    },

    /// A dimension larger than any real tensor could have.
    #[error("{entry}: dim {axis} = {dim} at byte {offset} exceeds the limit {max}; {CORRUPT}")]
    AbsurdDim {
        /// The entry.
        entry: EntryRef,
        /// Offset of the dim field.
        offset: u64,
        /// Which dimension (0-based).
        axis: usize,
        /// The value read.
        dim: u64,
        /// The limit.
        max: u64,
    },

    /// `numel * elem size` does not fit in 64 bits.
    #[error("{entry}: shape {shape:?} of {elem} at byte {offset} has a byte size that overflows 64 bits; {CORRUPT}")]
    SizeOverflow {
        /// The entry.
        entry: EntryRef,
        /// Offset of the entry's header.
        offset: u64,
        /// The shape read.
        shape: Vec<u64>,
        /// The element type read.
        elem: ElemType,
    },

    /// An element type code the format does not define.
    #[error("{entry}: unknown elem type code {code} at byte {offset} (known: 0-7, 11, 15, 100, 101); hint: the file comes from a newer tool or is corrupt")]
    UnknownElemType {
        /// The entry.
        entry: EntryRef,
        /// Offset of the elem type field.
        offset: u64,
        /// The code read.
        code: u64,
    },

    /// A key that is not valid UTF-8.
    #[error("{entry}: key at byte {offset} is not valid UTF-8 (first bad byte at key offset {valid_up_to}, lossy: {lossy:?}); {CORRUPT}")]
    NonUtf8Key {
        /// The entry.
        entry: EntryRef,
        /// Offset of the key bytes.
        offset: u64,
        /// Length of the valid UTF-8 prefix.
        valid_up_to: usize,
        /// The key with invalid bytes replaced, for the reader's eyes.
        lossy: String,
    },

    /// Two entries with the same key.
    #[error("{entry}: duplicate key (header at byte {offset}); entry #{first} has the same key; hint: a key must name exactly one tensor, the file was written by a faulty tool")]
    DuplicateKey {
        /// The second entry with the key.
        entry: EntryRef,
        /// Offset of its header.
        offset: u64,
        /// Index of the first entry with the key.
        first: usize,
    },

    /// Bytes after the last declared entry.
    #[error("{extra} unexpected byte(s) at byte {offset}, after the {count} entries the header declares; hint: the entry count is wrong or files were concatenated")]
    TrailingBytes {
        /// Offset of the first extra byte.
        offset: u64,
        /// How many extra bytes.
        extra: u64,
        /// The declared entry count.
        count: u64,
    },

    /// A `.qdata` entry whose `.scale` partner is missing.
    #[error("{entry}: NVFP4 qdata without its scale: no entry {scale_key:?}; hint: every *.qdata needs its *.scale (E4M3 block scales); re-export the model")]
    MissingScale {
        /// The qdata entry.
        entry: EntryRef,
        /// The key that was looked for.
        scale_key: String,
    },

    /// A `.scale` entry asked for as NVFP4 whose `.qdata` partner is missing.
    #[error("{entry}: NVFP4 scale without its qdata: no entry {qdata_key:?}; hint: the packed weights are missing; re-export the model")]
    MissingQdata {
        /// The scale entry.
        entry: EntryRef,
        /// The key that was looked for.
        qdata_key: String,
    },

    /// A `.qdata` entry that is not a 2-D `[out, in/2]` matrix.
    #[error("{entry}: NVFP4 qdata must be 2-D [out, in/2], got shape {shape:?}; hint: only matrices are quantized; the file is corrupt")]
    BadQdataShape {
        /// The qdata entry.
        entry: EntryRef,
        /// Its shape.
        shape: Vec<usize>,
    },

    /// The logical `in` of an NVFP4 pair is not a multiple of the block size.
    #[error("{entry}: NVFP4 logical in = {cols} is not a multiple of 16; hint: NVFP4 needs whole 16-element blocks along `in`; the file is corrupt")]
    ColsNotMultipleOf16 {
        /// The qdata entry.
        entry: EntryRef,
        /// The logical column count (2 * qdata columns).
        cols: usize,
    },

    /// A `.scale` entry whose shape is not `[out, in/16]`.
    #[error("{entry}: NVFP4 scale shape {got:?}, expected {expected:?} = [out, in/16]; hint: the scales do not belong to this qdata; the file is corrupt")]
    BadScaleShape {
        /// The scale entry.
        entry: EntryRef,
        /// `[out, in/16]` from the qdata shape.
        expected: Vec<usize>,
        /// The shape found.
        got: Vec<usize>,
    },

    /// An NVFP4 pair member with the wrong element type.
    #[error("{entry}: NVFP4 {role} has elem type {got}, expected {expected}; hint: scales must stay E4M3 bytes (the original once broke its kernels by writing them as f16)")]
    PairElemType {
        /// The entry.
        entry: EntryRef,
        /// `qdata`, `scale` or `global_scale`.
        role: &'static str,
        /// The accepted types, in words.
        expected: &'static str,
        /// The type found.
        got: ElemType,
    },

    /// A `.global_scale` entry that is not one positive finite f32.
    #[error("{entry}: bad NVFP4 global scale: {reason}; hint: a global scale is one positive finite f32")]
    BadGlobalScale {
        /// The entry.
        entry: EntryRef,
        /// What is wrong.
        reason: String,
    },

    /// A key that is not in the file.
    #[error("{path}: no entry {key:?}; hint: run `dat inspect {path}` to list the keys")]
    KeyNotFound {
        /// The key asked for.
        key: String,
        /// The file.
        path: PathBuf,
    },

    /// A conversion the entry's element type does not allow.
    #[error("{key:?}: stored as {elem}, cannot be read as {requested}; hint: only float entries convert between float kinds; read it with its stored kind")]
    KindMismatch {
        /// The key.
        key: String,
        /// Its stored element type.
        elem: ElemType,
        /// What was asked for, in words.
        requested: String,
    },

    /// The writer got a different number of entries than declared.
    #[error("{path}: {written} entries written, {declared} declared; hint: pass DatWriter::create the exact number of entries you write")]
    CountMismatch {
        /// The final path.
        path: PathBuf,
        /// Count given to `create`.
        declared: usize,
        /// Entries written (or attempted).
        written: usize,
    },

    /// Payload bytes that do not match the shape and element type.
    #[error("{key:?}: {got} payload bytes for shape {shape:?} of {elem}, expected {expected}; hint: pass the tensor's raw little-endian bytes, row-major")]
    PayloadSize {
        /// The key.
        key: String,
        /// The element type.
        elem: ElemType,
        /// The shape.
        shape: Vec<usize>,
        /// `numel * elem size`.
        expected: u64,
        /// Bytes given.
        got: u64,
    },

    /// The writer got the same key twice.
    #[error("{key:?}: written twice (first as entry #{first}); hint: a key must name exactly one tensor")]
    DuplicateWrite {
        /// The key.
        key: String,
        /// Index of the first entry with the key.
        first: usize,
    },

    /// A shape the writer refuses because no reader would accept it back.
    #[error("{key:?}: shape {shape:?} is not writable: {reason}; hint: .dat readers accept at most 16 dims of at most 2^40 each")]
    BadShape {
        /// The key.
        key: String,
        /// The shape.
        shape: Vec<usize>,
        /// Why.
        reason: &'static str,
    },

    /// A file system operation failed.
    #[error("{path}: cannot {op}: {error}; hint: check the path, its permissions and the free disk space")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// What was being done (`open`, `memory-map`, `write`, `rename onto`, ...).
        op: &'static str,
        /// The OS error (part of the message, so it is not also a `source()`).
        error: std::io::Error,
    },

    /// libtorch refused an operation.
    #[error("{context}: torch error: {error}; hint: check the device and the available memory")]
    Torch {
        /// What was being done, naming the tensor.
        context: String,
        /// The error (part of the message, so it is not also a `source()`).
        error: tch::TchError,
    },

    /// NVFP4 quantization or validation failed.
    #[error("{key:?}: {error}; hint: see the NVFP4 rules in docs/Formats.md")]
    Nvfp4 {
        /// The tensor.
        key: String,
        /// The error (part of the message, so it is not also a `source()`).
        error: nvfp4_kernels::Error,
    },
}

/// Result type of this crate.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// An [`Error::Io`] for `path` and `op`.
    pub(crate) fn io(
        path: impl Into<PathBuf>,
        op: &'static str,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |error| Error::Io { path, op, error }
    }

    /// An [`Error::Torch`] with a context line.
    pub(crate) fn torch(context: impl Into<String>) -> impl FnOnce(tch::TchError) -> Self {
        let context = context.into();
        move |error| Error::Torch { context, error }
    }

    /// An [`Error::Nvfp4`] for tensor `key`.
    pub(crate) fn nvfp4(key: impl Into<String>) -> impl FnOnce(nvfp4_kernels::Error) -> Self {
        let key = key.into();
        move |error| Error::Nvfp4 { key, error }
    }

    /// An [`Error::KindMismatch`] for a tch kind request.
    pub(crate) fn kind_mismatch(key: &str, elem: ElemType, requested: Kind) -> Self {
        Error::KindMismatch {
            key: key.to_owned(),
            elem,
            requested: format!("{requested:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_ref_names_index_and_key() {
        assert_eq!(
            EntryRef::file_header().to_string(),
            "file header (entry count)"
        );
        assert_eq!(EntryRef::at(3).to_string(), "entry #3");
        assert_eq!(
            EntryRef::named(3, "lm_head.weight.qdata").to_string(),
            "entry #3 \"lm_head.weight.qdata\""
        );
    }

    #[test]
    fn every_format_message_ends_with_a_hint() {
        let e = Error::TruncatedPayload {
            entry: EntryRef::named(1, "a"),
            offset: 10,
            needed: 8,
            available: 3,
        };
        let msg = e.to_string();
        assert!(
            msg.contains("entry #1 \"a\"") && msg.contains("byte 10"),
            "{msg}"
        );
        assert!(msg.contains("hint:"), "{msg}");
    }
}
