//! A Hugging Face checkpoint directory (`*.safetensors`, sharded or not,
//! bf16/f16/f32) as a weight source: projections are quantized to NVFP4 on
//! load, so users can start from the official checkpoint without converting.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use nvfp4_kernels::{Nvfp4Tensor, ScaleMode};
use safetensors::tensor::{Dtype, TensorInfo};
use safetensors::SafeTensors;
use tch::{Device, Kind, Tensor};

use crate::config::Qwen3Config;
use crate::error::{Error, Result};
use crate::loader::{assemble_as, Projections};
use crate::model::{LoadOptions, Qwen3Model};
use crate::weights::schema::TensorSpec;
use crate::weights::source::{shape_problem, Check, WeightSource};

/// One mapped `.safetensors` file.
struct Shard {
    path: PathBuf,
    mmap: Mmap,
    data_start: usize,
    /// The header's `__metadata__` string map.
    metadata: HashMap<String, String>,
}

/// A stored tensor as it is in its shard: dtype, shape, payload bytes.
pub(crate) struct RawTensor<'a> {
    pub(crate) dtype: Dtype,
    pub(crate) shape: &'a [usize],
    pub(crate) bytes: &'a [u8],
    /// The shard's `__metadata__`.
    pub(crate) metadata: &'a HashMap<String, String>,
}

/// Every tensor of every shard, indexed by key.
pub(crate) struct HfSource {
    dir: PathBuf,
    shards: Vec<Shard>,
    index: HashMap<String, (usize, TensorInfo)>,
}

fn st_err(path: &Path, reason: impl ToString) -> Error {
    Error::Safetensors {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// The shard files: those named by `model.safetensors.index.json`, else every `*.safetensors`.
fn shard_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        let text = std::fs::read_to_string(&index).map_err(|source| Error::Io {
            path: index.clone(),
            source,
        })?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| st_err(&index, e))?;
        let map = v
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| st_err(&index, "no \"weight_map\" object"))?;
        let mut files: Vec<String> = map
            .values()
            .filter_map(|f| f.as_str().map(str::to_string))
            .collect();
        files.sort();
        files.dedup();
        return Ok(files.into_iter().map(|f| dir.join(f)).collect());
    }
    let read = std::fs::read_dir(dir).map_err(|source| Error::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut files: Vec<PathBuf> = read
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(st_err(
            dir,
            "no *.safetensors files (hint: pass the checkpoint directory)",
        ));
    }
    Ok(files)
}

impl HfSource {
    pub(crate) fn open(dir: &Path) -> Result<Self> {
        let mut src = HfSource {
            dir: dir.to_path_buf(),
            shards: Vec::new(),
            index: HashMap::new(),
        };
        for path in shard_files(dir)? {
            let file = File::open(&path).map_err(|source| Error::Io {
                path: path.clone(),
                source,
            })?;
            // SAFETY: the map is read-only and the checkpoint is not expected to
            // change while loading (the same assumption safetensors users make).
            let mmap = unsafe { Mmap::map(&file) }.map_err(|source| Error::Io {
                path: path.clone(),
                source,
            })?;
            let (header_len, meta) =
                SafeTensors::read_metadata(&mmap).map_err(|e| st_err(&path, e))?;
            let shard_idx = src.shards.len();
            for (key, info) in meta.tensors() {
                if src
                    .index
                    .insert(key.clone(), (shard_idx, info.clone()))
                    .is_some()
                {
                    return Err(st_err(
                        &path,
                        format!("tensor {key} appears in more than one shard"),
                    ));
                }
            }
            let metadata = meta.metadata().clone().unwrap_or_default();
            src.shards.push(Shard {
                path,
                mmap,
                data_start: 8 + header_len,
                metadata,
            });
        }
        Ok(src)
    }

    /// The tensor as stored (no conversion), `None` when absent. Errors when
    /// the header's offsets point outside the file.
    pub(crate) fn raw(&self, key: &str) -> Result<Option<RawTensor<'_>>> {
        let Some((shard_idx, info)) = self.index.get(key) else {
            return Ok(None);
        };
        let shard = &self.shards[*shard_idx];
        let (start, end) = info.data_offsets;
        let bytes = shard
            .mmap
            .get(shard.data_start + start..shard.data_start + end)
            .ok_or_else(|| {
                st_err(
                    &shard.path,
                    format!("{key}: data offsets {start}..{end} are outside the file"),
                )
            })?;
        Ok(Some(RawTensor {
            dtype: info.dtype,
            shape: &info.shape,
            bytes,
            metadata: &shard.metadata,
        }))
    }

    /// The tensor under `key`, checked against the logical shape of `spec`.
    fn check_key(&self, key: &str, spec: &TensorSpec) -> Check {
        match self.index.get(key) {
            None => Check::Missing,
            Some((_, info)) if float_kind(info.dtype).is_none() => Check::Problem(format!(
                "{key} has dtype {:?}, expected BF16, F16 or F32",
                info.dtype
            )),
            Some((_, info)) if info.shape != spec.shape => {
                Check::Problem(shape_problem(key, &info.shape, spec))
            }
            Some(_) => Check::Present,
        }
    }

    /// The tensor as stored, on `device` (one host copy out of the map, one upload).
    pub(crate) fn load(&self, key: &str, device: Device) -> Result<Tensor> {
        let t = self
            .raw(key)?
            .ok_or_else(|| st_err(&self.dir, format!("missing {key}")))?;
        let kind = float_kind(t.dtype)
            .ok_or_else(|| st_err(&self.dir, format!("{key}: dtype {:?}", t.dtype)))?;
        let shape: Vec<i64> = t.shape.iter().map(|&d| d as i64).collect();
        Ok(Tensor::f_from_data_size(t.bytes, &shape, kind)?.to_device(device))
    }
}

fn float_kind(dtype: Dtype) -> Option<Kind> {
    match dtype {
        Dtype::BF16 => Some(Kind::BFloat16),
        Dtype::F16 => Some(Kind::Half),
        Dtype::F32 => Some(Kind::Float),
        _ => None,
    }
}

impl WeightSource for HfSource {
    fn describe(&self) -> String {
        self.dir.display().to_string()
    }

    fn keys(&self) -> Vec<String> {
        self.index.keys().cloned().collect()
    }

    fn check(&self, spec: &TensorSpec) -> Check {
        self.check_key(&spec.key, spec)
    }

    fn dense(&mut self, spec: &TensorSpec, kind: Kind, device: Device) -> Result<Tensor> {
        Ok(self.load(&spec.key, device)?.to_kind(kind))
    }

    fn stores_dense(&self) -> bool {
        true
    }

    /// Quantized from f32 (bf16/f16 -> f32 is exact), on the target device,
    /// with the single-level scales the original files use.
    fn packed(&mut self, spec: &TensorSpec, device: Device) -> Result<Nvfp4Tensor> {
        let w = self.load(&spec.key, device)?.to_kind(Kind::Float);
        Ok(nvfp4_kernels::quantize(&w, ScaleMode::Single)?)
    }
}

impl Qwen3Model {
    /// Loads a Hugging Face checkpoint directory (bf16/f16/f32 safetensors,
    /// sharded or not), quantizing every projection to NVFP4 on load. The same
    /// strict audit as [`Qwen3Model::load_dat`] applies; a `lm_head.weight`
    /// present in the files is used even when the config ties embeddings.
    ///
    /// A directory in a standard NVFP4 layout (compressed-tensors
    /// `nvfp4-pack-quantized` or ModelOpt NVFP4, recognised from
    /// `config.json`'s `quantization_config` or `hf_quant_config.json`) loads
    /// its packed codes and scales as stored, without re-quantizing; an
    /// unknown or unsupported quantization config is an error naming the field.
    pub fn load_hf_dir(dir: &Path, cfg: &Qwen3Config, opts: &LoadOptions) -> Result<Self> {
        Self::load_hf_dir_as(dir, cfg, opts, Projections::Nvfp4)
    }

    /// [`Qwen3Model::load_hf_dir`] with the projections held as `projections` says.
    pub(crate) fn load_hf_dir_as(
        dir: &Path,
        cfg: &Qwen3Config,
        opts: &LoadOptions,
        projections: Projections,
    ) -> Result<Self> {
        match crate::weights::quant_config::detect(dir)? {
            Some(spec) => assemble_as(
                cfg,
                opts,
                &mut crate::weights::packed_source::PackedSource::open(dir, spec)?,
                projections,
            ),
            None => assemble_as(cfg, opts, &mut HfSource::open(dir)?, projections),
        }
    }
}
