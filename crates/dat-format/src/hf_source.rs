//! A Hugging Face model directory as a source of tensors: one
//! `model.safetensors`, or shards named by `model.safetensors.index.json`,
//! or else every `*.safetensors` file, all memory-mapped.
//!
//! Tensor order is defined as: shards in file-name order, and within a shard
//! the order of the payloads in the file (the order its writer laid them
//! out). safetensors headers are JSON objects whose key order carries no
//! meaning, so payload order is the only order a file really has.

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::tensor::TensorInfo;
use safetensors::{Dtype, SafeTensors};

use crate::elem::ElemType;
use crate::error::{Error, Result};

/// Name of the single-file checkpoint.
const SINGLE_FILE: &str = "model.safetensors";
/// Name of the shard index of a sharded checkpoint.
const SHARD_INDEX: &str = "model.safetensors.index.json";

/// A shard index's `weight_map`: tensor name -> shard file name.
type WeightMap = HashMap<String, String>;

/// One tensor of the source, borrowed from its shard's mapping.
#[derive(Debug)]
pub(crate) struct HfTensor<'a> {
    pub(crate) name: &'a str,
    pub(crate) dtype: Dtype,
    pub(crate) shape: &'a [usize],
    pub(crate) bytes: &'a [u8],
    pub(crate) path: &'a Path,
}

#[derive(Debug)]
struct Shard {
    path: PathBuf,
    mmap: Mmap,
    data_start: usize,
    /// Sorted by data offset.
    tensors: Vec<(String, TensorInfo)>,
}

/// All shards of a model directory, opened and indexed.
#[derive(Debug)]
pub(crate) struct HfSource {
    shards: Vec<Shard>,
}

impl HfSource {
    /// Finds and maps the shards of `dir`, checking the index (if any)
    /// against the shards' own headers.
    pub(crate) fn open(dir: &Path) -> Result<Self> {
        let (files, weight_map) = shard_files(dir)?;
        let shards = files
            .iter()
            .map(|f| open_shard(f))
            .collect::<Result<Vec<_>>>()?;
        let source = Self { shards };
        source.check_consistency(weight_map.as_ref())?;
        Ok(source)
    }

    /// Every tensor, in source order (see the module doc).
    pub(crate) fn tensors(&self) -> impl Iterator<Item = HfTensor<'_>> {
        self.shards.iter().flat_map(|shard| {
            shard.tensors.iter().map(move |(name, info)| {
                let (start, end) = info.data_offsets;
                HfTensor {
                    name,
                    dtype: info.dtype,
                    shape: &info.shape,
                    // In bounds: safetensors validated the offsets against the file length.
                    bytes: &shard.mmap[shard.data_start + start..shard.data_start + end],
                    path: &shard.path,
                }
            })
        })
    }

    /// No tensor in two shards; with an index, every indexed tensor is in the
    /// shard it names and every shard tensor is indexed.
    fn check_consistency(&self, weight_map: Option<&WeightMap>) -> Result<()> {
        let mut seen: HashMap<&str, &Path> = HashMap::new();
        for t in self.tensors() {
            if let Some(first) = seen.insert(t.name, t.path) {
                let message = format!(
                    "present in both {} and {}",
                    first.display(),
                    t.path.display()
                );
                return Err(Error::ShardMismatch {
                    key: t.name.to_owned(),
                    message,
                });
            }
            if let Some(map) = weight_map {
                let listed = map
                    .get(t.name)
                    .map(|f| t.path.file_name() == Some(f.as_ref()));
                if listed != Some(true) {
                    let message = format!(
                        "found in {} but the index lists {:?}",
                        t.path.display(),
                        map.get(t.name)
                    );
                    return Err(Error::ShardMismatch {
                        key: t.name.to_owned(),
                        message,
                    });
                }
            }
        }
        for (name, file) in weight_map.into_iter().flatten() {
            if !seen.contains_key(name.as_str()) {
                let message = format!("listed in the index for {file} but not found there");
                return Err(Error::ShardMismatch {
                    key: name.clone(),
                    message,
                });
            }
        }
        Ok(())
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
        .map_err(Error::io(dir, "list"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors") && p.is_file())
        .collect();
    if files.is_empty() {
        return Err(Error::NoSafetensors {
            dir: dir.to_path_buf(),
        });
    }
    files.sort();
    Ok((files, None))
}

fn read_weight_map(path: &Path) -> Result<WeightMap> {
    let text = std::fs::read_to_string(path).map_err(Error::io(path, "read"))?;
    let json_err = |message: String| Error::Json {
        path: path.to_path_buf(),
        message,
    };
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| json_err(e.to_string()))?;
    let map = value
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| json_err("no \"weight_map\" object".to_owned()))?;
    map.iter()
        .map(|(k, v)| match v.as_str() {
            Some(file) if !file.contains('/') && !file.contains('\\') => {
                Ok((k.clone(), file.to_owned()))
            }
            _ => Err(json_err(format!(
                "weight_map[{k:?}] = {v} is not a file name in this directory"
            ))),
        })
        .collect()
}

fn open_shard(path: &Path) -> Result<Shard> {
    let file = File::open(path).map_err(Error::io(path, "open"))?;
    // SAFETY: read-only mapping of a file we do not modify; as with any
    // mmap-based reader, the caller must not truncate it while converting.
    let mmap = unsafe { Mmap::map(&file) }.map_err(Error::io(path, "memory-map"))?;
    let st_err = |e: safetensors::SafeTensorError| Error::Safetensors {
        path: path.to_path_buf(),
        message: format!("{e:?}"),
    };
    let (header_len, metadata) = SafeTensors::read_metadata(&mmap).map_err(st_err)?;
    let mut tensors: Vec<(String, TensorInfo)> = metadata
        .tensors()
        .into_iter()
        .map(|(name, info)| (name, info.clone()))
        .collect();
    tensors.sort_by_key(|(_, info)| info.data_offsets);
    Ok(Shard {
        path: path.to_path_buf(),
        mmap,
        data_start: 8 + header_len,
        tensors,
    })
}

/// The `.dat` element type of a safetensors dtype, `None` for dtypes the
/// format cannot hold (unsigned 16/32/64-bit, FP8 E5M2).
pub(crate) fn elem_of_dtype(dtype: Dtype) -> Option<ElemType> {
    Some(match dtype {
        Dtype::BOOL => ElemType::Bool,
        Dtype::U8 => ElemType::U8,
        Dtype::I8 => ElemType::I8,
        Dtype::F8_E4M3 => ElemType::F8E4M3,
        Dtype::I16 => ElemType::I16,
        Dtype::F16 => ElemType::F16,
        Dtype::BF16 => ElemType::BF16,
        Dtype::I32 => ElemType::I32,
        Dtype::F32 => ElemType::F32,
        Dtype::F64 => ElemType::F64,
        Dtype::I64 => ElemType::I64,
        _ => return None,
    })
}

/// The safetensors dtype that stores `elem` (packed FP4 pairs as raw `U8`,
/// safetensors having no such dtype).
pub(crate) fn dtype_of_elem(elem: ElemType) -> Dtype {
    match elem {
        ElemType::U8 | ElemType::F4E2M1x2 => Dtype::U8,
        ElemType::I8 => Dtype::I8,
        ElemType::I16 => Dtype::I16,
        ElemType::I32 => Dtype::I32,
        ElemType::I64 => Dtype::I64,
        ElemType::F16 => Dtype::F16,
        ElemType::F32 => Dtype::F32,
        ElemType::F64 => Dtype::F64,
        ElemType::Bool => Dtype::BOOL,
        ElemType::BF16 => Dtype::BF16,
        ElemType::F8E4M3 => Dtype::F8_E4M3,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dtype_mapping_round_trips_for_every_storable_elem() {
        for elem in ElemType::ALL {
            let back = elem_of_dtype(dtype_of_elem(elem));
            let expected = if elem == ElemType::F4E2M1x2 {
                ElemType::U8
            } else {
                elem
            };
            assert_eq!(back, Some(expected), "{elem}");
        }
        assert_eq!(elem_of_dtype(Dtype::U32), None);
        assert_eq!(elem_of_dtype(Dtype::F8_E5M2), None);
    }

    #[test]
    fn empty_directory_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let err = HfSource::open(dir.path()).unwrap_err();
        assert!(matches!(err, Error::NoSafetensors { .. }), "{err}");
    }
}
