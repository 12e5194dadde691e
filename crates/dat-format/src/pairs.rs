//! NVFP4 pairs: a `<base>.qdata` entry (packed E2M1 codes, `[out, in/2]`)
//! and its `<base>.scale` entry (E4M3 block scales, `[out, in/16]`),
//! docs/Formats.md "NVFP4 weights in a `.dat`". `<base>` is `<name>.weight` in the
//! original's files; the bare `<name>` form was accepted too.
//!
//! A `<base>.global_scale` entry (one f32) is this workspace's extension for
//! two-level scaling; files of the original tools never have one (= 1).

use std::collections::HashMap;

use crate::elem::ElemType;
use crate::error::{Error, Result};
use crate::index::TensorEntry;

/// Suffix of the packed-codes entry of a pair.
pub const QDATA_SUFFIX: &str = ".qdata";
/// Suffix of the block-scales entry of a pair.
pub const SCALE_SUFFIX: &str = ".scale";
/// Suffix of the optional per-tensor global scale (this workspace's extension).
pub const GLOBAL_SCALE_SUFFIX: &str = ".global_scale";

/// One validated NVFP4 pair of a `.dat` file (indices are entry positions).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Nvfp4Pair {
    /// The key without `.qdata` (`model.layers.0.mlp.up_proj.weight` or `lm_head`).
    pub base: String,
    /// Entry index of `<base>.qdata`.
    pub qdata: usize,
    /// Entry index of `<base>.scale`.
    pub scale: usize,
    /// Entry index of `<base>.global_scale`, if present.
    pub global_scale: Option<usize>,
    /// Logical rows (`out`).
    pub rows: usize,
    /// Logical columns (`in`), a multiple of 16.
    pub cols: usize,
}

impl Nvfp4Pair {
    /// The Hugging Face key of the weight this pair encodes: `base` if it
    /// already ends in `.weight`, else `base.weight`.
    pub fn weight_key(&self) -> String {
        if self.base.ends_with(".weight") {
            self.base.clone()
        } else {
            format!("{}.weight", self.base)
        }
    }
}

/// The pair bases to try for a layer name, in the original's order of preference.
pub(crate) fn candidate_bases(name: &str) -> [String; 2] {
    [format!("{name}.weight"), name.to_owned()]
}

/// Finds and validates every pair: each `.qdata` needs its `.scale`, with
/// shapes `[out, in/2]` / `[out, in/16]`, `in % 16 == 0`, byte element types.
pub(crate) fn find_pairs(
    entries: &[TensorEntry],
    by_key: &HashMap<String, usize>,
) -> Result<Vec<Nvfp4Pair>> {
    let mut pairs = Vec::new();
    for (qi, q) in entries.iter().enumerate() {
        let Some(base) = q.key.strip_suffix(QDATA_SUFFIX) else {
            continue;
        };
        pairs.push(check_pair(entries, by_key, base, qi)?);
    }
    Ok(pairs)
}

fn check_pair(
    entries: &[TensorEntry],
    by_key: &HashMap<String, usize>,
    base: &str,
    qi: usize,
) -> Result<Nvfp4Pair> {
    let q = &entries[qi];
    if !matches!(q.elem, ElemType::U8 | ElemType::F4E2M1x2) {
        return Err(Error::PairElemType {
            entry: q.entry_ref(qi),
            role: "qdata",
            expected: "u8 (code 0) or f4_e2m1x2 (code 100)",
            got: q.elem,
        });
    }
    let &[rows, half_cols] = q.shape.as_slice() else {
        return Err(Error::BadQdataShape {
            entry: q.entry_ref(qi),
            shape: q.shape.clone(),
        });
    };
    // half_cols <= 2^40 (parser bound), so doubling cannot overflow.
    let cols = half_cols * 2;
    if !cols.is_multiple_of(nvfp4_kernels::BLOCK_SIZE) {
        return Err(Error::ColsNotMultipleOf16 {
            entry: q.entry_ref(qi),
            cols,
        });
    }
    let scale_key = format!("{base}{SCALE_SUFFIX}");
    let Some(&si) = by_key.get(&scale_key) else {
        return Err(Error::MissingScale {
            entry: q.entry_ref(qi),
            scale_key,
        });
    };
    let s = &entries[si];
    if !matches!(s.elem, ElemType::F8E4M3 | ElemType::U8) {
        return Err(Error::PairElemType {
            entry: s.entry_ref(si),
            role: "scale",
            expected: "f8_e4m3 (code 101) or u8 (code 0)",
            got: s.elem,
        });
    }
    let expected = vec![rows, cols / nvfp4_kernels::BLOCK_SIZE];
    if s.shape != expected {
        return Err(Error::BadScaleShape {
            entry: s.entry_ref(si),
            expected,
            got: s.shape.clone(),
        });
    }
    let global_scale = by_key.get(&format!("{base}{GLOBAL_SCALE_SUFFIX}")).copied();
    if let Some(gi) = global_scale {
        check_global_scale_header(&entries[gi], gi)?;
    }
    Ok(Nvfp4Pair {
        base: base.to_owned(),
        qdata: qi,
        scale: si,
        global_scale,
        rows,
        cols,
    })
}

fn check_global_scale_header(g: &TensorEntry, gi: usize) -> Result<()> {
    if g.elem != ElemType::F32 {
        return Err(Error::PairElemType {
            entry: g.entry_ref(gi),
            role: "global_scale",
            expected: "f32 (code 6)",
            got: g.elem,
        });
    }
    if g.numel() != 1 {
        return Err(Error::BadGlobalScale {
            entry: g.entry_ref(gi),
            reason: format!(
                "shape {:?} holds {} values, expected exactly one",
                g.shape,
                g.numel()
            ),
        });
    }
    Ok(())
}
