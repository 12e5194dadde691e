//! The header parser: one pass over the headers, payloads skipped, every
//! field checked against the bytes that remain before anything is allocated
//! from it (so a hostile file can neither panic the reader nor make it
//! allocate more than the file's own size).

use std::collections::HashMap;
use std::ops::Range;

use crate::elem::ElemType;
use crate::error::{EntryRef, Error, Result};
use crate::pairs::{find_pairs, Nvfp4Pair};
use crate::varint::{self, VarintError};

/// Most dimensions an entry may have. Weight tensors have 1 or 2; 16 leaves
/// room for anything a model stores while rejecting garbage ndim values early.
pub const MAX_NDIM: usize = 16;

/// Largest single dimension accepted (2^40, about 10^12). Real weight
/// dimensions are below 2^32; a bound far below `i64::MAX` keeps every shape
/// representable by tch and catches corrupt varints with a precise message
/// instead of a confusing size error later.
pub const MAX_DIM: u64 = 1 << 40;

/// One tensor of a `.dat` file: its header, and where its payload lies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorEntry {
    /// The key (for example `model.layers.0.self_attn.q_proj.weight.qdata`).
    pub key: String,
    /// Element type of the payload.
    pub elem: ElemType,
    /// Shape, row-major (`[out, in/2]` for NVFP4 qdata).
    pub shape: Vec<usize>,
    /// Offset of the entry's first header byte (its key length).
    pub header_offset: u64,
    /// Offset of the payload's first byte.
    pub data_offset: u64,
    /// Payload length: `numel * elem.size()`.
    pub nbytes: u64,
}

impl TensorEntry {
    /// Number of elements (1 for a 0-d tensor).
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// The payload's byte range within the file.
    pub fn byte_range(&self) -> Range<usize> {
        // Both ends were checked against the file length when parsing.
        self.data_offset as usize..(self.data_offset + self.nbytes) as usize
    }

    /// Shape as tch wants it. Dimensions are at most [`MAX_DIM`], so they fit.
    pub(crate) fn shape_i64(&self) -> Vec<i64> {
        self.shape.iter().map(|&d| d as i64).collect()
    }

    pub(crate) fn entry_ref(&self, index: usize) -> EntryRef {
        EntryRef::named(index, &self.key)
    }
}

/// A parsed, validated header index: entries in file order, a key map and
/// the NVFP4 pairs. Built once per file (FR-10).
#[derive(Debug)]
pub(crate) struct Index {
    pub(crate) entries: Vec<TensorEntry>,
    pub(crate) by_key: HashMap<String, usize>,
    pub(crate) pairs: Vec<Nvfp4Pair>,
}

/// Parses the headers of a whole `.dat` file held in memory and returns its
/// entries in file order, after checking every entry's payload lies inside
/// `bytes`, keys are unique UTF-8, no byte follows the last entry, and every
/// NVFP4 `.qdata` has a well-shaped `.scale`.
pub fn parse_index(bytes: &[u8]) -> Result<Vec<TensorEntry>> {
    Ok(build_index(bytes)?.entries)
}

pub(crate) fn build_index(bytes: &[u8]) -> Result<Index> {
    let mut cur = Cursor { bytes, pos: 0 };
    let count = cur.varint(&EntryRef::file_header(), "entry count")?;
    // Every entry has at least 3 header bytes (key length, elem, ndim), so a
    // count beyond that is reported as truncation below, not allocated here.
    let capacity = (count as usize).min(cur.remaining() / 3);
    let mut entries = Vec::with_capacity(capacity);
    let mut by_key = HashMap::with_capacity(capacity);
    for index in 0..count {
        let index = index as usize;
        let entry = parse_entry(&mut cur, index)?;
        if let Some(&first) = by_key.get(&entry.key) {
            return Err(Error::DuplicateKey {
                entry: entry.entry_ref(index),
                offset: entry.header_offset,
                first,
            });
        }
        by_key.insert(entry.key.clone(), index);
        entries.push(entry);
    }
    if cur.remaining() > 0 {
        return Err(Error::TrailingBytes {
            offset: cur.pos as u64,
            extra: cur.remaining() as u64,
            count,
        });
    }
    let pairs = find_pairs(&entries, &by_key)?;
    Ok(Index {
        entries,
        by_key,
        pairs,
    })
}

/// Reads one entry's header and skips its payload.
fn parse_entry(cur: &mut Cursor<'_>, index: usize) -> Result<TensorEntry> {
    let header_offset = cur.pos as u64;
    let key = read_key(cur, index)?;
    let at = EntryRef::named(index, &key);

    let elem_offset = cur.pos as u64;
    let code = cur.varint(&at, "elem type")?;
    let elem = ElemType::from_code(code).ok_or_else(|| Error::UnknownElemType {
        entry: at.clone(),
        offset: elem_offset,
        code,
    })?;

    let shape = read_shape(cur, &at)?;
    let size_overflow = || Error::SizeOverflow {
        entry: at.clone(),
        offset: header_offset,
        shape: shape.iter().map(|&d| d as u64).collect(),
        elem,
    };
    let numel = if shape.contains(&0) {
        0
    } else {
        shape
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64))
            .ok_or_else(size_overflow)?
    };
    let nbytes = numel
        .checked_mul(elem.size() as u64)
        .ok_or_else(size_overflow)?;

    let data_offset = cur.pos as u64;
    let available = cur.remaining() as u64;
    if nbytes > available {
        return Err(Error::TruncatedPayload {
            entry: at,
            offset: data_offset,
            needed: nbytes,
            available,
        });
    }
    cur.pos += nbytes as usize; // fits: nbytes <= remaining
    Ok(TensorEntry {
        key,
        elem,
        shape,
        header_offset,
        data_offset,
        nbytes,
    })
}

fn read_key(cur: &mut Cursor<'_>, index: usize) -> Result<String> {
    let at = EntryRef::at(index);
    let key_len = cur.varint(&at, "key length")?;
    let key_offset = cur.pos as u64;
    let raw = cur.take(key_len, &at, "key bytes")?;
    match std::str::from_utf8(raw) {
        Ok(key) => Ok(key.to_owned()),
        Err(e) => Err(Error::NonUtf8Key {
            entry: at,
            offset: key_offset,
            valid_up_to: e.valid_up_to(),
            lossy: String::from_utf8_lossy(raw).into_owned(),
        }),
    }
}

fn read_shape(cur: &mut Cursor<'_>, at: &EntryRef) -> Result<Vec<usize>> {
    const DIM_FIELDS: [&str; MAX_NDIM] = [
        "dim 0", "dim 1", "dim 2", "dim 3", "dim 4", "dim 5", "dim 6", "dim 7", "dim 8", "dim 9",
        "dim 10", "dim 11", "dim 12", "dim 13", "dim 14", "dim 15",
    ];
    let ndim_offset = cur.pos as u64;
    let ndim = cur.varint(at, "ndim")?;
    if ndim > MAX_NDIM as u64 {
        return Err(Error::TooManyDims {
            entry: at.clone(),
            offset: ndim_offset,
            ndim,
            max: MAX_NDIM,
        });
    }
    let mut shape = Vec::with_capacity(ndim as usize);
    for (axis, field) in DIM_FIELDS.iter().enumerate().take(ndim as usize) {
        let offset = cur.pos as u64;
        let dim = cur.varint(at, field)?;
        if dim > MAX_DIM {
            return Err(Error::AbsurdDim {
                entry: at.clone(),
                offset,
                axis,
                dim,
                max: MAX_DIM,
            });
        }
        shape.push(dim as usize);
    }
    Ok(shape)
}

/// A read position over the file bytes.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn varint(&mut self, entry: &EntryRef, field: &'static str) -> Result<u64> {
        match varint::decode(&self.bytes[self.pos..]) {
            Ok((value, len)) => {
                self.pos += len;
                Ok(value)
            }
            Err(VarintError::Truncated) => Err(Error::TruncatedHeader {
                entry: entry.clone(),
                field,
                offset: self.pos as u64,
                needed: self.remaining() as u64 + 1, // every byte left had the continue bit
                file_len: self.bytes.len() as u64,
            }),
            Err(VarintError::Overflow) => Err(Error::VarintOverflow {
                entry: entry.clone(),
                field,
                offset: self.pos as u64,
            }),
        }
    }

    fn take(&mut self, len: u64, entry: &EntryRef, field: &'static str) -> Result<&'a [u8]> {
        if len > self.remaining() as u64 {
            return Err(Error::TruncatedHeader {
                entry: entry.clone(),
                field,
                offset: self.pos as u64,
                needed: len,
                file_len: self.bytes.len() as u64,
            });
        }
        let start = self.pos;
        self.pos += len as usize;
        Ok(&self.bytes[start..self.pos])
    }
}
