//! Writing a model as a complete Hugging Face directory a serving engine
//! opens as is: sharded safetensors (+ `model.safetensors.index.json` when
//! there is more than one shard), `config.json` (with the layout's
//! `quantization_config`), `hf_quant_config.json` for ModelOpt,
//! `generation_config.json` and the tokenizer files. Everything is written
//! into a temporary directory beside the target and renamed into place, so
//! the target is either absent or complete.
//!
//! Projections are written as the model holds them: packed codes and scales
//! byte for byte (a trainable master is quantized with the mode it trained
//! with); embeddings and norms in bf16 when that is exact, else in their own
//! dtype, so nothing is rounded on the way out.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use nvfp4_kernels::{Nvfp4Host, ScaleMode};
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use serde_json::Value;
use tch::{Device, Kind, Tensor};

use super::dtype::float_dtype;
use super::packed_source::EXACT_GLOBAL_KEY;
use super::quant_config::{PackedLayout, MODELOPT_FILE};
use super::safetensors::{shard_names, split_shards, SHARD_INDEX};
use super::schema::is_packed_key;
use super::{compressed_tensors as ct, modelopt as mo};
use crate::config::Qwen3Config;
use crate::error::{Error, Result};
use crate::model::Qwen3Model;
use crate::train::WeightRef;

/// Files besides the weights that make a directory a usable model; copied
/// by [`model_files_in`] when present.
pub const MODEL_FILES: [&str; 8] = [
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
];

/// Weight layout of an exported directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DirFormat {
    /// NVFP4 in a standard layout (compressed-tensors or ModelOpt).
    Packed(PackedLayout),
    /// Every projection dequantized, every tensor bf16 (what engines without
    /// NVFP4 support load; two-level projections round to bf16).
    Bf16,
}

/// Options of [`export_model_dir`].
#[derive(Clone, Debug)]
pub struct DirExportOptions {
    /// The weight layout.
    pub format: DirFormat,
    /// Largest shard payload; a projection's parts stay in one shard.
    pub max_shard_bytes: u64,
    /// Extra files to write (name, bytes): tokenizer files, a generation
    /// config (see [`model_files_in`]). Without a `generation_config.json`
    /// one is made from the model config's token ids.
    pub files: Vec<(String, Vec<u8>)>,
    /// How a trainable master projection is quantized (the mode it trained with).
    pub master_mode: ScaleMode,
}

impl DirExportOptions {
    /// `format`, 5 GB shards (transformers' default), no extra files, single-level masters.
    pub fn new(format: DirFormat) -> Self {
        Self {
            format,
            max_shard_bytes: 5_000_000_000,
            files: Vec::new(),
            master_mode: ScaleMode::Single,
        }
    }
}

/// The [`MODEL_FILES`] present in `dir`, read.
pub fn model_files_in(dir: &Path) -> Result<Vec<(String, Vec<u8>)>> {
    let mut out = Vec::new();
    for name in MODEL_FILES {
        let path = dir.join(name);
        if path.is_file() {
            let bytes = std::fs::read(&path).map_err(|source| Error::Io { path, source })?;
            out.push((name.to_string(), bytes));
        }
    }
    Ok(out)
}

/// One tensor of the output, bytes ready.
struct OutTensor {
    key: String,
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

/// A model weight and the output tensors it becomes (kept in one shard).
struct Group<'a> {
    key: String,
    weight: WeightRef<'a>,
    nbytes: u64,
}

/// Writes `model` to the directory `dir` (which must not exist or be empty)
/// in `opts.format`; returns the files written, relative to `dir`.
pub fn export_model_dir(
    model: &Qwen3Model,
    dir: &Path,
    opts: &DirExportOptions,
) -> Result<Vec<String>> {
    let staged = Staged::begin(dir, &[])?;
    let mut written = write_weights(model, staged.path(), opts)?;
    written.extend(write_side_files(model, staged.path(), opts)?);
    staged.publish()?;
    tracing::info!(dir = %dir.display(), format = ?opts.format, files = written.len(), "exported model directory");
    Ok(written)
}

/// A directory filled under a temporary name beside its target, then
/// published whole: the target is absent, the previous export, or the
/// complete new one, never half written. Dropped unpublished (an error
/// part-way), the temporary directory is removed.
pub(crate) struct Staged {
    target: PathBuf,
    parent: PathBuf,
    name: String,
    tmp: tempfile::TempDir,
}

impl Staged {
    /// Checks the target: absent, empty, or holding only files named in
    /// `previous` (a previous export, which [`Staged::publish`] replaces);
    /// anything else is refused, as replacing it would delete the user's
    /// files. Then creates the temporary directory beside it.
    pub(crate) fn begin(target: &Path, previous: &[&str]) -> Result<Self> {
        let (parent, name) = split_target(target)?;
        check_target(target, previous)?;
        std::fs::create_dir_all(&parent).map_err(Error::io_at(&parent))?;
        let tmp = tempfile::Builder::new()
            .prefix(&format!(".{name}.tmp-"))
            .tempdir_in(&parent)
            .map_err(Error::io_at(&parent))?;
        Ok(Self {
            target: target.to_path_buf(),
            parent,
            name,
            tmp,
        })
    }

    /// Where to write the files (each written and fsynced by its writer).
    pub(crate) fn path(&self) -> &Path {
        self.tmp.path()
    }

    /// Renames the directory into place; a previous target is first moved
    /// aside (one rename) and removed once the new one is in place.
    pub(crate) fn publish(self) -> Result<()> {
        sync_dir(self.tmp.path())?;
        let old = if self.target.exists() {
            let trash = tempfile::Builder::new()
                .prefix(&format!(".{}.trash-", self.name))
                .tempdir_in(&self.parent)
                .map_err(Error::io_at(&self.parent))?;
            std::fs::rename(&self.target, trash.path()).map_err(Error::io_at(&self.target))?;
            Some(trash)
        } else {
            None
        };
        let staged = self.tmp.keep();
        if let Err(source) = std::fs::rename(&staged, &self.target) {
            if let Some(trash) = &old {
                // Put the previous export back; the new one stays for inspection.
                let _ = std::fs::rename(trash.path(), &self.target);
            }
            return Err(Error::Io {
                path: self.target,
                source,
            });
        }
        sync_dir(&self.parent)?;
        drop(old); // removes the previous export
        Ok(())
    }
}

fn split_target(dir: &Path) -> Result<(PathBuf, String)> {
    let name = dir
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| Error::ExportTarget {
            path: dir.to_path_buf(),
            reason: "the path has no final UTF-8 name".into(),
        })?;
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    Ok((parent, name.to_string()))
}

/// An absent or empty directory, or one holding only `previous` files.
fn check_target(dir: &Path, previous: &[&str]) -> Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    let err = |reason: String| Error::ExportTarget {
        path: dir.to_path_buf(),
        reason,
    };
    if !dir.is_dir() {
        return Err(err("exists and is a file".into()));
    }
    for entry in std::fs::read_dir(dir).map_err(Error::io_at(dir))? {
        let entry = entry.map_err(Error::io_at(dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !(previous.contains(&name.as_str()) && entry.path().is_file()) {
            return Err(err(format!(
                "exists and is not empty (holds {name}, which an export does not write); choose a new directory or remove it; nothing was changed"
            )));
        }
    }
    Ok(())
}

/// The model's config as an export writes it: untied when the model has its
/// own head (a tied config would make loaders replace that head with the
/// embedding), `torch_dtype` the dtype of the exported weights.
pub(crate) fn export_config(model: &Qwen3Model, torch_dtype: &str) -> Qwen3Config {
    let mut cfg = model.config().clone();
    if cfg.tie_word_embeddings && !model.uses_tied_head() {
        tracing::warn!("the model has its own lm_head: exporting with tie_word_embeddings = false");
        cfg.tie_word_embeddings = false;
    }
    cfg.torch_dtype = Some(torch_dtype.into());
    cfg
}

/// The model's weights, sharded and written; returns the file names.
fn write_weights(model: &Qwen3Model, dir: &Path, opts: &DirExportOptions) -> Result<Vec<String>> {
    let groups: Vec<Group<'_>> = model
        .named_weights()
        .into_iter()
        .map(|(key, weight)| {
            let nbytes = group_bytes(&weight, is_packed_key(&key), opts.format);
            Group {
                key,
                weight,
                nbytes,
            }
        })
        .collect();
    let shards = split_shards(groups.iter().map(|g| g.nbytes), opts.max_shard_bytes);
    let names = shard_names(shards.len());
    let mut weight_map = BTreeMap::new();
    let mut total = 0u64;
    for (shard, name) in shards.iter().zip(&names) {
        let mut tensors = Vec::new();
        let mut exact = serde_json::Map::new();
        for &i in shard {
            let g = &groups[i];
            let (out, global) = group_tensors(g, opts)?;
            if let (Some(g_exact), Some(base)) = (global, g.key.strip_suffix(".weight")) {
                exact.insert(base.to_string(), Value::from(g_exact.to_bits()));
            }
            tensors.extend(out);
        }
        let mut metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
        if !exact.is_empty() {
            metadata.insert(EXACT_GLOBAL_KEY.into(), Value::Object(exact).to_string());
        }
        for t in &tensors {
            weight_map.insert(t.key.clone(), name.clone());
            total += t.bytes.len() as u64;
        }
        let path = dir.join(name);
        let views = tensors
            .iter()
            .map(|t| {
                TensorView::new(t.dtype, t.shape.clone(), &t.bytes)
                    .map(|v| (t.key.clone(), v))
                    .map_err(|e| st_err(&path, format!("{}: {e}", t.key)))
            })
            .collect::<Result<Vec<_>>>()?;
        safetensors::serialize_to_file(views, &Some(metadata), &path)
            .map_err(|e| st_err(&path, e))?;
        fsync(&path)?;
    }
    let mut written = names.clone();
    if names.len() > 1 {
        let index =
            serde_json::json!({ "metadata": { "total_size": total }, "weight_map": weight_map });
        written.push(write_json(dir, SHARD_INDEX, &index)?);
    }
    Ok(written)
}

fn st_err(path: &Path, e: impl ToString) -> Error {
    Error::Safetensors {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

/// Payload bytes a weight becomes (for sharding; dense tensors counted at 2 bytes).
fn group_bytes(w: &WeightRef<'_>, quantized_key: bool, format: DirFormat) -> u64 {
    let (numel, packed) = match w {
        WeightRef::Packed(q) => ((q.rows() * q.cols()) as u64, true),
        WeightRef::Dense(t) => (t.numel() as u64, quantized_key),
    };
    match (format, packed) {
        (DirFormat::Packed(_), true) => numel / 2 + numel / 16 + 4,
        _ => numel * 2,
    }
}

/// The output tensors of one weight, and its two-level global scale (for
/// the exact-scale metadata).
fn group_tensors(g: &Group<'_>, opts: &DirExportOptions) -> Result<(Vec<OutTensor>, Option<f32>)> {
    let quantized = is_packed_key(&g.key);
    let host = |mode| -> Result<Option<Nvfp4Host>> {
        Ok(match &g.weight {
            WeightRef::Packed(q) => Some(q.to_host()),
            WeightRef::Dense(t) if quantized => {
                Some(nvfp4_kernels::quantize_named(&g.key, t, mode)?.to_host())
            }
            WeightRef::Dense(_) => None,
        })
    };
    match (opts.format, host(opts.master_mode)?) {
        (DirFormat::Packed(layout), Some(h)) => {
            let base = g.key.strip_suffix(".weight").unwrap_or(&g.key);
            let n = layout.names();
            let stored = layout.stored_global(h.global_scale);
            // compressed-tensors keeps the scale as [1], ModelOpt as a scalar.
            let global_shape = match layout {
                PackedLayout::CompressedTensors => vec![1],
                PackedLayout::ModelOpt => vec![],
            };
            let tensors = vec![
                OutTensor {
                    key: format!("{base}.{}", n.packed),
                    dtype: Dtype::U8,
                    shape: vec![h.rows, h.cols / 2],
                    bytes: h.qdata,
                },
                OutTensor {
                    key: format!("{base}.{}", n.scale),
                    dtype: Dtype::F8_E4M3,
                    shape: vec![h.rows, h.cols / nvfp4_kernels::BLOCK_SIZE],
                    bytes: h.scale,
                },
                OutTensor {
                    key: format!("{base}.{}", n.global),
                    dtype: Dtype::F32,
                    shape: global_shape,
                    bytes: stored.to_le_bytes().to_vec(),
                },
            ];
            Ok((tensors, h.global_scale))
        }
        (DirFormat::Bf16, Some(h)) => {
            let q = nvfp4_kernels::Nvfp4Tensor::from_host(&h.validated_ref()?, Device::Cpu)?;
            let w = nvfp4_kernels::f_dequantize(&q, Kind::BFloat16)?;
            Ok((vec![dense_tensor(&g.key, &w, true)?], None))
        }
        (format, None) => {
            let WeightRef::Dense(t) = &g.weight else {
                unreachable!("host() is None only for dense weights")
            };
            Ok((
                vec![dense_tensor(&g.key, t, format == DirFormat::Bf16)?],
                None,
            ))
        }
    }
}

/// A dense tensor: bf16 when `force_bf16` or when bf16 holds it exactly,
/// else its own float dtype.
fn dense_tensor(key: &str, t: &Tensor, force_bf16: bool) -> Result<OutTensor> {
    let t = t.f_detach()?.f_to_device(Device::Cpu)?;
    let bf16 = t.f_to_kind(Kind::BFloat16)?;
    let exact = bf16.f_to_kind(t.kind())?.f_equal(&t)?;
    let out = if force_bf16 || exact { bf16 } else { t };
    let dtype = float_dtype(out.kind()).ok_or_else(|| Error::InvalidArgument {
        name: "weights",
        reason: format!("{key} has kind {:?}; expected a float kind", out.kind()),
    })?;
    let shape = out.size().iter().map(|&d| d as usize).collect();
    let flat = out
        .f_contiguous()?
        .f_view_dtype(Kind::Uint8)?
        .f_reshape([-1])?;
    Ok(OutTensor {
        key: key.to_string(),
        dtype,
        shape,
        bytes: Vec::<u8>::try_from(&flat)?,
    })
}

/// `config.json` (+ `hf_quant_config.json`), the generation config and the extra files.
fn write_side_files(
    model: &Qwen3Model,
    dir: &Path,
    opts: &DirExportOptions,
) -> Result<Vec<String>> {
    let cfg = export_config(model, "bfloat16");
    let mut config: Value = serde_json::from_str(&cfg.to_json_string())
        .map_err(|source| Error::ConfigJson { path: None, source })?;
    let mut written = Vec::new();
    let ignore: Vec<String> = Vec::new();
    match opts.format {
        DirFormat::Packed(PackedLayout::CompressedTensors) => {
            config["quantization_config"] = ct::quantization_config(&ignore);
        }
        DirFormat::Packed(PackedLayout::ModelOpt) => {
            config["quantization_config"] = mo::quantization_config(&ignore);
            written.push(write_json(
                dir,
                MODELOPT_FILE,
                &mo::hf_quant_config(&ignore),
            )?);
        }
        DirFormat::Bf16 => {}
    }
    written.push(write_json(dir, "config.json", &config)?);
    let has_generation = opts
        .files
        .iter()
        .any(|(n, _)| n == "generation_config.json");
    if !has_generation {
        let generation = serde_json::json!({
            "bos_token_id": cfg.bos_token_id,
            "eos_token_id": cfg.eos_token_ids,
            "pad_token_id": cfg.pad_token_id,
        });
        written.push(write_json(dir, "generation_config.json", &generation)?);
    }
    for (name, bytes) in &opts.files {
        if name.contains('/') || name.contains('\\') || name == "config.json" {
            return Err(Error::InvalidArgument {
                name: "DirExportOptions::files",
                reason: format!("{name:?} is not a side file name"),
            });
        }
        write_file(&dir.join(name), bytes)?;
        written.push(name.clone());
    }
    Ok(written)
}

fn write_json(dir: &Path, name: &str, v: &Value) -> Result<String> {
    let text = serde_json::to_string_pretty(v).expect("a JSON value always serializes");
    write_file(&dir.join(name), text.as_bytes())?;
    Ok(name.to_string())
}

pub(crate) fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut f = File::create(path).map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)
}

pub(crate) fn fsync(path: &Path) -> Result<()> {
    File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })
}

/// Makes the final rename durable (Unix; elsewhere the rename is all there is).
fn sync_dir(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    fsync(dir)?;
    let _ = dir;
    Ok(())
}
