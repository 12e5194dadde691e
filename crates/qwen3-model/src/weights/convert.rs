//! Hugging Face safetensors model directory -> NVFP4 `.dat`, with the key
//! rules of the original tools: every packed key of the schema
//! ([`is_packed_key`]: `*.{q,k,v,o,gate,up,down}_proj.weight` of a block and
//! an untied `lm_head.weight`) is quantized to a `<key>.qdata` (u8) +
//! `<key>.scale` (E4M3) pair; everything else (embeddings, norms, ...) is
//! copied raw in its source element type. Entries keep the source order.

use std::path::Path;

use dat_format::{DatWriter, ElemType};
use nvfp4_kernels::{Nvfp4Host, ScaleMode};
use tch::{Kind, Tensor};

use crate::error::{Error, Result};
use crate::weights::dtype::{elem_of_dtype, weight_float};
use crate::weights::safetensors::{HfSource, RawTensor};
use crate::weights::schema::is_packed_key;

/// What a conversion did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConvertReport {
    /// Tensors read from the source directory.
    pub source_tensors: usize,
    /// Of those, how many were quantized to NVFP4.
    pub quantized: usize,
    /// Of those, how many were copied raw.
    pub raw: usize,
    /// Entries written to the `.dat` file.
    pub entries: usize,
    /// Payload bytes read from the source.
    pub source_bytes: u64,
    /// Length of the written `.dat` file.
    pub output_bytes: u64,
}

/// What happens to one source tensor.
enum Plan {
    /// Copied as stored, in this element type.
    Raw(ElemType),
    /// Quantized from this float type.
    Quantize(ElemType),
}

/// Converts the safetensors model in `dir` (bf16/f16/f32, possibly sharded)
/// to an NVFP4 `.dat` file at `out`, written atomically. Every tensor is
/// checked before the output file is created, so a bad source fails fast.
pub fn convert_hf_dir_to_dat(dir: &Path, out: &Path, mode: ScaleMode) -> Result<ConvertReport> {
    let source = HfSource::open(dir)?;
    let plan = source
        .tensors()
        .map(|t| plan_tensor(&t).map(|p| (t, p)))
        .collect::<Result<Vec<_>>>()?;
    let per_pair = match mode {
        ScaleMode::Single => 2,
        ScaleMode::TwoLevel => 3, // qdata, scale, global_scale
    };
    let count = plan
        .iter()
        .map(|(_, p)| match p {
            Plan::Quantize(_) => per_pair,
            Plan::Raw(_) => 1,
        })
        .sum();

    let mut report = ConvertReport {
        source_tensors: plan.len(),
        entries: count,
        ..Default::default()
    };
    let mut writer = DatWriter::create(out, count)?;
    for (t, p) in &plan {
        report.source_bytes += t.bytes.len() as u64;
        match *p {
            Plan::Quantize(elem) => {
                let q = quantize_tensor(t, elem, mode)?;
                writer.write_nvfp4(t.name, &q.as_ref())?;
                report.quantized += 1;
            }
            Plan::Raw(elem) => {
                writer.write_raw(t.name, elem, t.shape, t.bytes)?;
                report.raw += 1;
            }
        }
        tracing::debug!(key = t.name, "converted");
    }
    writer.finish()?;
    report.output_bytes = std::fs::metadata(out).map_err(Error::io_at(out))?.len();
    tracing::debug!(?report, out = %out.display(), "converted Hugging Face directory to .dat");
    Ok(report)
}

/// Decides (and validates) what happens to one source tensor.
fn plan_tensor(t: &RawTensor<'_>) -> Result<Plan> {
    let refuse = |reason: String| Error::Convert {
        path: t.path.to_path_buf(),
        key: t.name.to_owned(),
        reason,
    };
    let Some(elem) = elem_of_dtype(t.dtype) else {
        return Err(refuse(format!(
            "dtype {:?} has no .dat element type; hint: convert it to bf16/f16/f32 first",
            t.dtype
        )));
    };
    if !is_packed_key(t.name) {
        return Ok(Plan::Raw(elem));
    }
    let Some(elem) = weight_float(t.dtype) else {
        return Err(refuse(format!(
            "dtype {:?} cannot be quantized (bf16, f16 or f32 expected)",
            t.dtype
        )));
    };
    match t.shape {
        [_, cols] if cols.is_multiple_of(nvfp4_kernels::BLOCK_SIZE) => Ok(Plan::Quantize(elem)),
        shape => Err(refuse(format!(
            "cannot quantize shape {shape:?}: {}; hint: only [out, in] projections with in a multiple of 16 are quantized",
            if shape.len() == 2 {
                "`in` (the last dimension) is not a multiple of 16"
            } else {
                "not a 2-D [out, in] matrix"
            }
        ))),
    }
}

/// Quantizes one source matrix on the CPU (libtorch ops, bit-exact with the
/// scalar reference of `nvfp4-kernels`).
fn quantize_tensor(t: &RawTensor<'_>, elem: ElemType, mode: ScaleMode) -> Result<Nvfp4Host> {
    let shape: Vec<i64> = t.shape.iter().map(|&d| d as i64).collect();
    let x = Tensor::f_from_data_size(t.bytes, &shape, elem.kind())
        .and_then(|x| x.f_to_kind(Kind::Float))
        .map_err(Error::libtorch(format!(
            "reading {:?} from {} as f32",
            t.name,
            t.path.display()
        )))?;
    let q = nvfp4_kernels::quantize_named(t.name, &x, mode).map_err(Error::nvfp4_at(t.name))?;
    Ok(q.to_host())
}
