//! `export_hf_dir`: a trained model as a Hugging Face safetensors
//! directory (`model.safetensors` + `config.json`), with every projection
//! dequantized from its NVFP4 form, i.e. exactly the weights the NVFP4
//! model computes with. Written into a temp directory and renamed into
//! place, so the target holds a complete export or the previous one.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use nvfp4_kernels::ScaleMode;
use qwen3_model::Qwen3Model;
use safetensors::Dtype;
use tch::Kind;

use crate::error::{Error, IoContext, Result};
use crate::safetensors_io::{tensor_bytes, write_safetensors_with, TensorSpec};
use crate::staging::{sweep_leftovers, StagingDir};

use super::weights::ModelWeights;

/// The weights file of the export.
const WEIGHTS_FILE: &str = "model.safetensors";
/// The config file of the export.
const CONFIG_FILE: &str = "config.json";
/// Files a previous export may hold: only a directory of these is replaced.
const EXPORT_FILES: [&str; 3] = [WEIGHTS_FILE, CONFIG_FILE, "model.safetensors.index.json"];

/// Element type of the exported weights.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum HfDtype {
    /// bfloat16: exact for dequantized NVFP4 weights (at most 6 significant
    /// bits), rounds f32 embeddings and norms.
    #[default]
    BF16,
    /// float32: exact for everything.
    F32,
}

impl HfDtype {
    fn kind(self) -> Kind {
        match self {
            HfDtype::BF16 => Kind::BFloat16,
            HfDtype::F32 => Kind::Float,
        }
    }

    fn dtype(self) -> Dtype {
        match self {
            HfDtype::BF16 => Dtype::BF16,
            HfDtype::F32 => Dtype::F32,
        }
    }

    /// The `torch_dtype` value of `config.json`.
    fn torch_name(self) -> &'static str {
        match self {
            HfDtype::BF16 => "bfloat16",
            HfDtype::F32 => "float32",
        }
    }
}

/// Options of [`export_hf_dir_with`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HfExportOptions {
    /// Element type of every tensor (default bf16).
    pub dtype: HfDtype,
}

/// [`export_hf_dir_with`] in bf16.
pub fn export_hf_dir(model: &Qwen3Model, dir: &Path) -> Result<()> {
    export_hf_dir_with(model, dir, &HfExportOptions::default())
}

/// Writes `model` to `dir` as a Hugging Face directory: `model.safetensors`
/// (embeddings, norms, dequantized projections; `lm_head.weight` only when
/// the model has its own head) and `config.json`. `dir` must not exist, be
/// empty, or hold only a previous export (which is replaced atomically).
pub fn export_hf_dir_with(model: &Qwen3Model, dir: &Path, opts: &HfExportOptions) -> Result<()> {
    let (parent, name) = split_target(dir)?;
    check_target(dir)?;
    fs::create_dir_all(&parent).io_ctx("create directory", &parent)?;
    let tmp_prefix = format!(".{name}.tmp-");
    let trash_prefix = format!(".{name}.trash-");
    sweep_leftovers(&parent, &[&tmp_prefix, &trash_prefix])?;

    let staging = StagingDir::create(&parent, &tmp_prefix)?;
    write_weights(model, &staging.path().join(WEIGHTS_FILE), opts.dtype)?;
    write_config(model, &staging.path().join(CONFIG_FILE), opts.dtype)?;
    staging.commit_replacing(dir, &trash_prefix)?;
    tracing::info!("exported Hugging Face directory {}", dir.display());
    Ok(())
}

/// Streams every weight, converted one at a time (no dense copy of the model).
fn write_weights(model: &Qwen3Model, path: &Path, dtype: HfDtype) -> Result<()> {
    let weights = ModelWeights::new(model);
    let keys = weights.keys_hf_order();
    let specs: Vec<TensorSpec> = keys
        .iter()
        .map(|k| TensorSpec {
            name: k.to_string(),
            dtype: dtype.dtype(),
            shape: weights.shape(k),
        })
        .collect();
    let meta = BTreeMap::from([("format".to_string(), "pt".to_string())]);
    write_safetensors_with(path, &specs, Some(&meta), |i| {
        // No template here: a master is exported as its single-level rounding.
        let t = weights.effective(keys[i], ScaleMode::Single, dtype.kind())?;
        tensor_bytes(keys[i], &t)
    })?;
    Ok(())
}

/// The model's config, saying untied when the model has its own head (a
/// tied config would make loaders replace that head with the embedding).
fn write_config(model: &Qwen3Model, path: &Path, dtype: HfDtype) -> Result<()> {
    let mut cfg = model.config().clone();
    if cfg.tie_word_embeddings && !model.uses_tied_head() {
        tracing::warn!("the model has its own lm_head: exporting with tie_word_embeddings = false");
        cfg.tie_word_embeddings = false;
    }
    cfg.torch_dtype = Some(dtype.torch_name().to_string());
    let mut file = File::create(path).io_ctx("create", path)?;
    file.write_all(cfg.to_json_string().as_bytes())
        .io_ctx("write", path)?;
    file.sync_all().io_ctx("fsync", path)
}

/// Parent directory and file name of the target.
fn split_target(dir: &Path) -> Result<(PathBuf, String)> {
    let name = dir
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| Error::Io {
            op: "export to",
            path: dir.to_path_buf(),
            source: std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "the path has no final UTF-8 name",
            ),
        })?;
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    Ok((parent, name.to_string()))
}

/// Refuses a target that holds anything but a previous export: replacing a
/// directory deletes it, which must never hit the user's other files.
fn check_target(dir: &Path) -> Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    if !dir.is_dir() {
        return Err(Error::ExportTargetNotEmpty {
            path: dir.to_path_buf(),
            found: "(a file, not a directory)".into(),
        });
    }
    for entry in fs::read_dir(dir).io_ctx("list directory", dir)? {
        let entry = entry.io_ctx("list directory", dir)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let ours = EXPORT_FILES.contains(&name.as_str()) && entry.path().is_file();
        if !ours {
            return Err(Error::ExportTargetNotEmpty {
                path: dir.to_path_buf(),
                found: name,
            });
        }
    }
    Ok(())
}
