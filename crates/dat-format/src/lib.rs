//! Reader and writer of the original project's `.dat` weight file
//! (docs/Formats.md, "The `.dat` weight file"): the codec only. This crate
//! knows no Hugging Face layout and no Qwen3 key; conversion to and from
//! Hugging Face directories lives with the weight schema in `qwen3-model`.
//!
//! The format has no magic, version or alignment: a LEB128 entry count, then
//! per entry a key, an element type code, a shape and the raw payload. This
//! crate reads files written by the original tools and writes files they can
//! read, byte for byte.
//!
//! - [`DatFile`] memory-maps a file and indexes every header in one pass
//!   (FR-10), validating it against hostile input; tensors are then zero-copy
//!   byte views ([`DatFile::bytes`]), typed slices, tch tensors loaded with one
//!   copy (FR-09), or NVFP4 pairs ([`DatFile::nvfp4`]).
//! - [`DatWriter`] streams entries to a temporary file and atomically renames
//!   it into place on [`DatWriter::finish`].
//! - [`parse_index`] is the parser on a byte slice (what the fuzz tests drive).
//! - [`AtomicFile`] / [`write_atomic`] are the atomic file replacement the
//!   writer uses, for other files written beside a model.
//!
//! ```no_run
//! use dat_format::{DatFile, DatWriter};
//! use tch::Device;
//!
//! # fn main() -> dat_format::Result<()> {
//! let dat = DatFile::open("qwen3-4b-nvfp4.dat")?;
//! let embed = dat.tensor("model.embed_tokens.weight", Device::Cpu)?;
//! let q_proj = dat.nvfp4("model.layers.0.self_attn.q_proj")?.expect("quantized");
//! println!("embed {:?}, q_proj {}x{}", embed.size(), q_proj.rows, q_proj.cols);
//!
//! // Copy the file entry by entry: the result is byte-identical.
//! let mut out = DatWriter::create("copy.dat", dat.entries().len())?;
//! for e in dat.entries() {
//!     out.write_raw(&e.key, e.elem, &e.shape, dat.bytes(e))?;
//! }
//! out.finish()?;
//! # Ok(())
//! # }
//! ```

#![deny(missing_docs)]

mod atomic;
mod elem;
mod error;
mod index;
mod load;
mod pairs;
mod reader;
mod scalar;
mod varint;
mod writer;

pub use crate::{
    atomic::{write_atomic, AtomicFile},
    elem::ElemType,
    error::{EntryRef, Error, Result},
    index::{parse_index, TensorEntry, MAX_DIM, MAX_NDIM},
    pairs::{Nvfp4Pair, GLOBAL_SCALE_SUFFIX, QDATA_SUFFIX, SCALE_SUFFIX},
    reader::DatFile,
    scalar::DatScalar,
    writer::DatWriter,
};
