//! Hugging Face safetensors model directories: the one shard reader of the
//! workspace (`HfSource`), and a directory as a weight source (projections
//! quantized to NVFP4 on load, so users can start from the official
//! checkpoint without converting).
//!
//! The shards are `model.safetensors`, or those named by
//! `model.safetensors.index.json` (checked against the shards' own headers),
//! or else every `*.safetensors` file, all memory-mapped. Tensor order is:
//! shards in file-name order, and within a shard the order of the payloads
//! in the file (safetensors headers are JSON objects whose key order carries
//! no meaning, so payload order is the only order a file really has).

use std::collections::{BTreeSet, HashMap};
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
use crate::weights::dtype::float_kind;
use crate::weights::schema::TensorSpec;
use crate::weights::source::{shape_problem, Check, WeightSource};

/// Name of the single-file checkpoint.
const SINGLE_FILE: &str = "model.safetensors";
/// Name of the shard index of a sharded checkpoint.
pub(crate) const SHARD_INDEX: &str = "model.safetensors.index.json";

/// A shard index's `weight_map`: tensor name -> shard file name.
type WeightMap = HashMap<String, String>;

/// One mapped `.safetensors` file.
struct Shard {
    path: PathBuf,
    mmap: Mmap,
    data_start: usize,
    /// The header's `__metadata__` string map.
    metadata: HashMap<String, String>,
    /// Sorted by data offset; every range checked to lie inside the file.
    tensors: Vec<(String, TensorInfo)>,
}

/// A stored tensor as it is in its shard: dtype, shape, payload bytes.
pub(crate) struct RawTensor<'a> {
    pub(crate) name: &'a str,
    pub(crate) dtype: Dtype,
    pub(crate) shape: &'a [usize],
    pub(crate) bytes: &'a [u8],
    /// The shard holding it.
    pub(crate) path: &'a Path,
    /// The shard's `__metadata__`.
    pub(crate) metadata: &'a HashMap<String, String>,
}

/// Every tensor of every shard of a directory, indexed by key.
pub(crate) struct HfSource {
    dir: PathBuf,
    shards: Vec<Shard>,
    /// Key -> (shard, position in the shard's `tensors`).
    index: HashMap<String, (usize, usize)>,
}

fn st_err(path: &Path, reason: impl ToString) -> Error {
    Error::Safetensors {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl HfSource {
    /// Finds and maps the shards of `dir`, checking the index (if any)
    /// against the shards' own headers: no tensor in two shards, every
    /// indexed tensor in the shard the index names, every tensor indexed.
    pub(crate) fn open(dir: &Path) -> Result<Self> {
        let (files, weight_map) = shard_files(dir)?;
        let mut src = HfSource {
            dir: dir.to_path_buf(),
            shards: Vec::with_capacity(files.len()),
            index: HashMap::new(),
        };
        for path in files {
            let shard = open_shard(path)?;
            let shard_idx = src.shards.len();
            for (pos, (key, _)) in shard.tensors.iter().enumerate() {
                if let Some((first, _)) = src.index.insert(key.clone(), (shard_idx, pos)) {
                    return Err(st_err(
                        &shard.path,
                        format!(
                            "tensor {key:?} is also in {}; hint: the shards overlap, re-download the model",
                            src.shards[first].path.display()
                        ),
                    ));
                }
                if let Some(map) = &weight_map {
                    let listed = map.get(key);
                    if listed.map(String::as_str) != shard.path.file_name().and_then(|n| n.to_str())
                    {
                        return Err(st_err(
                            &shard.path,
                            format!("tensor {key:?} is here but {SHARD_INDEX} lists {listed:?}; hint: the index does not match the shards, re-download the model"),
                        ));
                    }
                }
            }
            src.shards.push(shard);
        }
        for (key, file) in weight_map.iter().flatten() {
            if !src.index.contains_key(key) {
                return Err(st_err(
                    &dir.join(SHARD_INDEX),
                    format!("tensor {key:?} is listed for {file} but not found there; hint: the index does not match the shards, re-download the model"),
                ));
            }
        }
        Ok(src)
    }

    fn tensor<'a>(
        &'a self,
        shard: &'a Shard,
        name: &'a str,
        info: &'a TensorInfo,
    ) -> RawTensor<'a> {
        let (start, end) = info.data_offsets;
        RawTensor {
            name,
            dtype: info.dtype,
            shape: &info.shape,
            // In bounds: checked against the file length in `open_shard`.
            bytes: &shard.mmap[shard.data_start + start..shard.data_start + end],
            path: &shard.path,
            metadata: &shard.metadata,
        }
    }

    /// Every tensor, in source order (see the module doc).
    pub(crate) fn tensors(&self) -> impl Iterator<Item = RawTensor<'_>> {
        self.shards.iter().flat_map(move |shard| {
            shard
                .tensors
                .iter()
                .map(move |(name, info)| self.tensor(shard, name, info))
        })
    }

    /// The tensor as stored (no conversion), `None` when absent.
    pub(crate) fn raw(&self, key: &str) -> Result<Option<RawTensor<'_>>> {
        Ok(self.index.get(key).map(|&(s, pos)| {
            let shard = &self.shards[s];
            let (name, info) = &shard.tensors[pos];
            self.tensor(shard, name, info)
        }))
    }

    fn info(&self, key: &str) -> Option<&TensorInfo> {
        self.index
            .get(key)
            .map(|&(s, pos)| &self.shards[s].tensors[pos].1)
    }

    /// The tensor under `key`, checked against the logical shape of `spec`.
    fn check_key(&self, key: &str, spec: &TensorSpec) -> Check {
        match self.info(key) {
            None => Check::Missing,
            Some(info) if float_kind(info.dtype).is_none() => Check::Problem(format!(
                "{key} has dtype {:?}, expected BF16, F16 or F32",
                info.dtype
            )),
            Some(info) if info.shape != spec.shape => {
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
            .ok_or_else(|| st_err(t.path, format!("{key}: dtype {:?}", t.dtype)))?;
        let shape: Vec<i64> = t.shape.iter().map(|&d| d as i64).collect();
        Ok(Tensor::f_from_data_size(t.bytes, &shape, kind)?.to_device(device))
    }
}

/// Greedy split of tensors (or groups kept together) of `sizes` bytes, in
/// order, into shards of at most `max_bytes` (a larger item gets a shard of
/// its own); every shard holds at least one item. The writers' side of the
/// directory layout `shard_files` reads.
pub(crate) fn split_shards(
    sizes: impl IntoIterator<Item = u64>,
    max_bytes: u64,
) -> Vec<Vec<usize>> {
    let mut shards: Vec<Vec<usize>> = vec![Vec::new()];
    let mut size = 0u64;
    for (i, nbytes) in sizes.into_iter().enumerate() {
        let last = shards.last_mut().expect("never empty");
        if !last.is_empty() && size + nbytes > max_bytes {
            shards.push(vec![i]);
            size = nbytes;
        } else {
            last.push(i);
            size += nbytes;
        }
    }
    shards
}

/// The file names of `n` shards, as transformers writes them.
pub(crate) fn shard_names(n: usize) -> Vec<String> {
    match n {
        1 => vec![SINGLE_FILE.to_owned()],
        n => (1..=n)
            .map(|i| format!("model-{i:05}-of-{n:05}.safetensors"))
            .collect(),
    }
}

/// The shard files of `dir` in order, and the index's weight map if there is one.
fn shard_files(dir: &Path) -> Result<(Vec<PathBuf>, Option<WeightMap>)> {
    let index_path = dir.join(SHARD_INDEX);
    if index_path.is_file() {
        let weight_map = read_weight_map(&index_path)?;
        let files: BTreeSet<&String> = weight_map.values().collect();
        let files = files.into_iter().map(|f| dir.join(f)).collect();
        return Ok((files, Some(weight_map)));
    }
    let single = dir.join(SINGLE_FILE);
    if single.is_file() {
        return Ok((vec![single], None));
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io_err(dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors") && p.is_file())
        .collect();
    if files.is_empty() {
        return Err(st_err(
            dir,
            "no *.safetensors files (no model.safetensors or model.safetensors.index.json either); hint: pass the checkpoint directory",
        ));
    }
    files.sort();
    Ok((files, None))
}

fn read_weight_map(path: &Path) -> Result<WeightMap> {
    let text = std::fs::read_to_string(path).map_err(io_err(path))?;
    let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| st_err(path, e))?;
    let map = value
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| st_err(path, "no \"weight_map\" object"))?;
    map.iter()
        .map(|(k, v)| match v.as_str() {
            Some(file) if !file.contains('/') && !file.contains('\\') => {
                Ok((k.clone(), file.to_owned()))
            }
            _ => Err(st_err(
                path,
                format!("weight_map[{k:?}] = {v} is not a file name in this directory"),
            )),
        })
        .collect()
}

fn open_shard(path: PathBuf) -> Result<Shard> {
    let file = File::open(&path).map_err(io_err(&path))?;
    // SAFETY: the map is read-only and the checkpoint is not expected to
    // change while it is read (the same assumption safetensors users make).
    let mmap = unsafe { Mmap::map(&file) }.map_err(io_err(&path))?;
    let (header_len, meta) = SafeTensors::read_metadata(&mmap).map_err(|e| st_err(&path, e))?;
    let data_start = 8 + header_len;
    let data_len = mmap.len().saturating_sub(data_start);
    let mut tensors: Vec<(String, TensorInfo)> = meta
        .tensors()
        .into_iter()
        .map(|(name, info)| (name, info.clone()))
        .collect();
    tensors.sort_by_key(|(_, info)| info.data_offsets);
    if let Some((name, info)) = tensors.iter().find(|(_, i)| i.data_offsets.1 > data_len) {
        let (start, end) = info.data_offsets;
        return Err(st_err(
            &path,
            format!("tensor {name:?}: data offsets {start}..{end} are outside the file ({data_len} data bytes); hint: the file is cut short"),
        ));
    }
    let metadata = meta.metadata().clone().unwrap_or_default();
    Ok(Shard {
        path,
        mmap,
        data_start,
        metadata,
        tensors,
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_directory_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let err = HfSource::open(dir.path()).err().expect("no shards");
        assert!(err.to_string().contains("no *.safetensors files"), "{err}");
    }
}
