//! Reading a compressed-tensors or ModelOpt NVFP4 checkpoint directory:
//! packed codes and E4M3 scales are taken byte for byte (no bf16 round
//! trip), the per-tensor scale converted to this project's direction;
//! embeddings and norms load raw. A projection the checkpoint left
//! unquantized (its `ignore` / `exclude_modules`) is quantized on load, like
//! a plain safetensors checkpoint, and said so.

use std::collections::HashMap;
use std::path::Path;

use nvfp4_kernels::{Nvfp4HostRef, Nvfp4Tensor, BLOCK_SIZE};
use safetensors::Dtype;
use tch::{Device, Kind, Tensor};

use super::quant_config::{PackedLayout, QuantSpec};
use super::safetensors::{HfSource, RawTensor};
use super::schema::TensorSpec;
use super::source::{Check, WeightSource};
use super::{compressed_tensors as ct, modelopt as mo};
use crate::error::Result;

/// Safetensors metadata key of an export's exact global scales: a JSON
/// object `{ "<module>": <f32 bits as u32> }` for the two-level tensors of
/// that shard (see `compressed_tensors.rs` for why).
pub(crate) const EXACT_GLOBAL_KEY: &str = "qwen3_nvfp4.global_scales";

/// Tensor names and global-scale direction of a layout.
pub(crate) struct Names {
    pub(crate) packed: &'static str,
    pub(crate) scale: &'static str,
    pub(crate) global: &'static str,
}

impl PackedLayout {
    pub(crate) fn names(self) -> Names {
        match self {
            PackedLayout::CompressedTensors => Names {
                packed: ct::PACKED,
                scale: ct::SCALE,
                global: ct::GLOBAL,
            },
            PackedLayout::ModelOpt => Names {
                packed: mo::PACKED,
                scale: mo::SCALE,
                global: mo::GLOBAL,
            },
        }
    }

    /// The stored per-tensor scale for this project's global scale.
    pub(crate) fn stored_global(self, g: Option<f32>) -> f32 {
        match self {
            PackedLayout::CompressedTensors => ct::stored_global(g),
            PackedLayout::ModelOpt => mo::stored_global(g),
        }
    }

    fn global_from_stored(self, stored: f32) -> f32 {
        match self {
            PackedLayout::CompressedTensors => ct::global_from_stored(stored),
            PackedLayout::ModelOpt => mo::global_from_stored(stored),
        }
    }

    /// This project's global scale from a stored one: the exact value an
    /// export recorded when it still encodes to the stored bits; else the
    /// conversion, with 1 meaning single level (`None`).
    pub(crate) fn read_global(self, stored: f32, exact: Option<f32>) -> Option<f32> {
        if let Some(g) =
            exact.filter(|&g| self.stored_global(Some(g)).to_bits() == stored.to_bits())
        {
            return Some(g);
        }
        let g = self.global_from_stored(stored);
        (g != 1.0).then_some(g)
    }
}

/// A quantized checkpoint directory as a weight source.
pub(crate) struct PackedSource {
    st: HfSource,
    spec: QuantSpec,
}

/// The three stored parts of one projection, validated.
struct Parts<'a> {
    qdata: &'a [u8],
    scale: &'a [u8],
    global: Option<f32>,
}

impl PackedSource {
    pub(crate) fn open(dir: &Path, spec: QuantSpec) -> Result<Self> {
        if spec.activations_quantized {
            tracing::warn!(
                layout = %spec.layout,
                "the checkpoint also quantizes activations (W4A4); this project runs them unquantized (weights only)"
            );
        }
        Ok(Self {
            st: HfSource::open(dir)?,
            spec,
        })
    }

    fn key(&self, base: &str, part: &str) -> String {
        format!("{base}.{part}")
    }

    /// `Ok(None)` when `base` has no packed tensor (absent or stored unquantized).
    fn parts(
        &self,
        base: &str,
        rows: usize,
        cols: usize,
    ) -> std::result::Result<Option<Parts<'_>>, String> {
        let n = self.spec.layout.names();
        let raw = |part: &str| {
            self.st
                .raw(&self.key(base, part))
                .map_err(|e| e.to_string())
        };
        let Some(q) = raw(n.packed)? else {
            return Ok(None);
        };
        if n.packed == "weight" && q.dtype != Dtype::U8 {
            return Ok(None); // ModelOpt: a float `weight` is an unquantized layer
        }
        let expect = |t: &RawTensor<'_>, part: &str, dtypes: &[Dtype], shape: &[usize]| {
            if !dtypes.contains(&t.dtype) || t.shape != shape {
                return Err(format!(
                    "{}: {:?} {:?}, expected {:?} {shape:?}",
                    self.key(base, part),
                    t.dtype,
                    t.shape,
                    dtypes[0]
                ));
            }
            Ok(())
        };
        if !cols.is_multiple_of(BLOCK_SIZE) {
            return Err(format!(
                "{base}: {cols} columns is not a multiple of {BLOCK_SIZE}"
            ));
        }
        expect(&q, n.packed, &[Dtype::U8], &[rows, cols / 2])?;
        let missing = |part: &str| {
            format!(
                "missing {} (beside {})",
                self.key(base, part),
                self.key(base, n.packed)
            )
        };
        let s = raw(n.scale)?.ok_or_else(|| missing(n.scale))?;
        expect(
            &s,
            n.scale,
            &[Dtype::F8_E4M3, Dtype::U8],
            &[rows, cols / BLOCK_SIZE],
        )?;
        let g = raw(n.global)?.ok_or_else(|| missing(n.global))?;
        let stored = match (g.dtype, g.bytes) {
            (Dtype::F32, &[a, b, c, d]) => f32::from_le_bytes([a, b, c, d]),
            _ => {
                return Err(format!(
                    "{}: {:?} {:?}, expected one F32",
                    self.key(base, n.global),
                    g.dtype,
                    g.shape
                ))
            }
        };
        let derived = self.spec.layout.global_from_stored(stored);
        if !(stored.is_finite() && stored > 0.0 && derived.is_finite() && derived > 0.0) {
            return Err(format!(
                "{} = {stored} is not a positive finite scale",
                self.key(base, n.global)
            ));
        }
        Ok(Some(Parts {
            qdata: q.bytes,
            scale: s.bytes,
            global: self
                .spec
                .layout
                .read_global(stored, exact_global(g.metadata, base)),
        }))
    }
}

/// The exact global scale an export recorded for `base`, if any.
fn exact_global(metadata: &HashMap<String, String>, base: &str) -> Option<f32> {
    let map: serde_json::Value = serde_json::from_str(metadata.get(EXACT_GLOBAL_KEY)?).ok()?;
    let bits = map.get(base)?.as_u64()?;
    u32::try_from(bits).ok().map(f32::from_bits)
}

impl WeightSource for PackedSource {
    fn describe(&self) -> String {
        format!("{} ({} NVFP4)", self.st.describe(), self.spec.layout)
    }

    fn keys(&self) -> Vec<String> {
        self.st.keys()
    }

    fn check(&self, spec: &TensorSpec) -> Check {
        let &[rows, cols] = spec.shape.as_slice() else {
            return self.st.check(spec);
        };
        if !spec.is_packed() {
            return self.st.check(spec);
        }
        match self.parts(spec.base(), rows, cols) {
            Ok(Some(_)) => Check::Present,
            Ok(None) => self.st.check(spec),
            Err(problem) => Check::Problem(problem),
        }
    }

    fn dense(&mut self, spec: &TensorSpec, kind: Kind, device: Device) -> Result<Tensor> {
        self.st.dense(spec, kind, device)
    }

    fn packed(&mut self, spec: &TensorSpec, device: Device) -> Result<Nvfp4Tensor> {
        let base = spec.base();
        if let &[rows, cols] = spec.shape.as_slice() {
            if let Ok(Some(p)) = self.parts(base, rows, cols) {
                let q = Nvfp4HostRef::new_named(base, p.qdata, p.scale, rows, cols, p.global)?;
                return Ok(Nvfp4Tensor::from_host(&q, device)?);
            }
        }
        let ignored = self.spec.ignore.iter().any(|i| base.ends_with(i.as_str()));
        tracing::warn!(
            module = base,
            listed_as_unquantized = ignored,
            "stored unquantized in a {} checkpoint: quantized to NVFP4 on load (single level)",
            self.spec.layout
        );
        self.st.packed(spec, device)
    }
}
