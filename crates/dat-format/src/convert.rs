//! Hugging Face safetensors model directory -> NVFP4 `.dat`, with the key
//! rules of the original tools: every `*.{q,k,v,o,gate,up,down}_proj.weight`
//! and an untied `lm_head.weight` is quantized to a `<key>.qdata` (u8) +
//! `<key>.scale` (E4M3) pair; everything else (embeddings, norms, ...) is
//! copied raw in its source element type. Entries keep the source order.

use std::path::Path;

use nvfp4_kernels::{Nvfp4Host, ScaleMode};
use tch::{Device, Kind};

use crate::error::{Error, Result};
use crate::hf_source::{elem_of_dtype, HfSource, HfTensor};
use crate::load::payload_to_tensor;
use crate::writer::DatWriter;
use crate::ElemType;

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

/// True for the weight keys the original tools quantized:
/// `*.{q,k,v,o,gate,up,down}_proj.weight` and `lm_head.weight`.
pub fn is_quantized_key(weight_key: &str) -> bool {
    if weight_key == "lm_head.weight" {
        return true;
    }
    let Some(stem) = weight_key.strip_suffix("_proj.weight") else {
        return false;
    };
    matches!(stem.rsplit_once('.'), Some((prefix, "q" | "k" | "v" | "o" | "gate" | "up" | "down")) if !prefix.is_empty())
}

/// Converts the safetensors model in `dir` (bf16/f16/f32, possibly sharded)
/// to an NVFP4 `.dat` file at `out`, written atomically. Every tensor is
/// checked before the output file is created, so a bad source fails fast.
pub fn convert_hf_dir_to_dat(dir: &Path, out: &Path, mode: ScaleMode) -> Result<ConvertReport> {
    let source = HfSource::open(dir)?;
    let plan = source
        .tensors()
        .map(plan_tensor)
        .collect::<Result<Vec<_>>>()?;
    let per_pair = match mode {
        ScaleMode::Single => 2,
        ScaleMode::TwoLevel => 3, // qdata, scale, global_scale
    };
    let count = plan
        .iter()
        .map(|(_, quantize)| if *quantize { per_pair } else { 1 })
        .sum();

    let mut report = ConvertReport {
        source_tensors: plan.len(),
        entries: count,
        ..Default::default()
    };
    let mut writer = DatWriter::create(out, count)?;
    for (t, quantize) in &plan {
        report.source_bytes += t.bytes.len() as u64;
        if *quantize {
            let q = quantize_tensor(t, mode)?;
            writer.write_nvfp4(t.name, &q.as_ref())?;
            report.quantized += 1;
        } else {
            // Checked in plan_tensor: every raw dtype has an element type.
            let elem =
                elem_of_dtype(t.dtype).ok_or_else(|| unsupported(t, "has no .dat element type"))?;
            writer.write_raw(t.name, elem, t.shape, t.bytes)?;
            report.raw += 1;
        }
        tracing::debug!(key = t.name, quantized = *quantize, "converted");
    }
    writer.finish()?;
    report.output_bytes = std::fs::metadata(out)
        .map_err(Error::io(out, "stat"))?
        .len();
    tracing::debug!(?report, out = %out.display(), "converted Hugging Face directory to .dat");
    Ok(report)
}

/// Decides (and validates) what happens to one source tensor.
fn plan_tensor(t: HfTensor<'_>) -> Result<(HfTensor<'_>, bool)> {
    let Some(elem) = elem_of_dtype(t.dtype) else {
        return Err(unsupported(&t, "has no .dat element type"));
    };
    if !is_quantized_key(t.name) {
        return Ok((t, false));
    }
    if !elem.is_float() || elem == ElemType::F64 {
        return Err(unsupported(
            &t,
            "cannot be quantized (bf16, f16 or f32 expected)",
        ));
    }
    let not_quantizable = |reason| Error::NotQuantizable {
        key: t.name.to_owned(),
        shape: t.shape.to_vec(),
        reason,
    };
    match t.shape {
        [_, cols] if cols.is_multiple_of(nvfp4_kernels::BLOCK_SIZE) => Ok((t, true)),
        [_, _] => Err(not_quantizable(
            "`in` (the last dimension) is not a multiple of 16",
        )),
        _ => Err(not_quantizable("not a 2-D [out, in] matrix")),
    }
}

/// Quantizes one source matrix on the CPU (libtorch ops, bit-exact with the
/// scalar reference of `nvfp4-kernels`).
fn quantize_tensor(t: &HfTensor<'_>, mode: ScaleMode) -> Result<Nvfp4Host> {
    let elem = elem_of_dtype(t.dtype).ok_or_else(|| unsupported(t, "has no .dat element type"))?;
    let shape: Vec<i64> = t.shape.iter().map(|&d| d as i64).collect();
    let x = payload_to_tensor(t.name, t.bytes, &shape, elem.kind(), Device::Cpu)?;
    let x = x
        .f_to_kind(Kind::Float)
        .map_err(Error::torch(format!("converting {:?} to f32", t.name)))?;
    let q = nvfp4_kernels::quantize_named(t.name, &x, mode).map_err(Error::nvfp4(t.name))?;
    Ok(q.to_host())
}

fn unsupported(t: &HfTensor<'_>, reason: &'static str) -> Error {
    Error::UnsupportedDtype {
        path: t.path.to_path_buf(),
        key: t.name.to_owned(),
        dtype: format!("{:?}", t.dtype),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn projection_and_untied_head_keys_are_quantized() {
        for key in [
            "model.layers.0.self_attn.q_proj.weight",
            "model.layers.35.self_attn.k_proj.weight",
            "model.layers.1.self_attn.v_proj.weight",
            "model.layers.1.self_attn.o_proj.weight",
            "model.layers.2.mlp.gate_proj.weight",
            "model.layers.2.mlp.up_proj.weight",
            "model.layers.2.mlp.down_proj.weight",
            "lm_head.weight",
        ] {
            assert!(is_quantized_key(key), "{key}");
        }
    }

    #[test]
    fn embeddings_norms_biases_and_lookalikes_stay_raw() {
        for key in [
            "model.embed_tokens.weight",
            "model.norm.weight",
            "model.layers.0.input_layernorm.weight",
            "model.layers.0.self_attn.q_norm.weight",
            "model.layers.0.self_attn.q_proj.bias",
            "model.layers.0.self_attn.qkv_proj.weight",
            "model.layers.0.mlp.gate_up_proj.weight",
            "q_proj.weight",
            "lm_head.bias",
            "model.lm_head.weight",
        ] {
            assert!(!is_quantized_key(key), "{key}");
        }
    }
}
