//! `.dat` -> Hugging Face safetensors model directory: NVFP4 pairs are
//! dequantized to `<name>.weight`, float entries converted to the chosen
//! dtype, other entries copied as they are. Shards of at most
//! `max_shard_bytes` (plus `model.safetensors.index.json` when there are
//! several); each file is written atomically, the index last.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use safetensors::{Dtype, View};
use tch::{Device, Tensor};

use dat_format::{write_atomic, AtomicFile, DatFile, ElemType};

use crate::error::{Error, Result};
use crate::weights::dtype::{dtype_of_elem, float_kind};
use crate::weights::safetensors::{shard_names, split_shards, SHARD_INDEX};

/// How to export a `.dat` file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DatToHfOptions {
    /// Element type of float and dequantized tensors: BF16, F16 or F32.
    pub dtype: ElemType,
    /// `config.json` to copy; `None` copies the one beside the `.dat` file, if any.
    pub config: Option<PathBuf>,
    /// Largest shard payload in bytes (a tensor larger than this gets a shard of its own).
    pub max_shard_bytes: u64,
}

impl Default for DatToHfOptions {
    fn default() -> Self {
        // 5 GB is the shard size `transformers` writes by default.
        Self {
            dtype: ElemType::BF16,
            config: None,
            max_shard_bytes: 5_000_000_000,
        }
    }
}

/// Exports `dat` to `out_dir` as safetensors in `dtype` (BF16, F16 or F32),
/// copying a `config.json` found beside the `.dat` file.
pub fn export_dat_to_hf_dir(dat: &Path, out_dir: &Path, dtype: ElemType) -> Result<()> {
    export_dat_to_hf_dir_with(
        dat,
        out_dir,
        &DatToHfOptions {
            dtype,
            ..DatToHfOptions::default()
        },
    )
    .map(|_| ())
}

/// Like [`export_dat_to_hf_dir`] with every option; returns the files written.
pub fn export_dat_to_hf_dir_with(
    dat: &Path,
    out_dir: &Path,
    opts: &DatToHfOptions,
) -> Result<Vec<PathBuf>> {
    if !matches!(opts.dtype, ElemType::BF16 | ElemType::F16 | ElemType::F32) {
        return Err(Error::InvalidArgument {
            name: "DatToHfOptions::dtype",
            reason: format!(
                "{} is not an export dtype; use bf16, f16 or f32",
                opts.dtype
            ),
        });
    }
    let file = DatFile::open(dat)?;
    let plan = plan_export(&file, opts.dtype)?;
    std::fs::create_dir_all(out_dir).map_err(Error::io_at(out_dir))?;
    let shards = split_shards(plan.iter().map(|p| p.nbytes), opts.max_shard_bytes);
    let names = shard_names(shards.len());
    let mut written = Vec::new();
    let metadata = Some(HashMap::from([("format".to_owned(), "pt".to_owned())]));
    for (shard, name) in shards.iter().zip(&names) {
        let views = shard
            .iter()
            .map(|&i| Ok((plan[i].key.clone(), materialize(&file, &plan[i])?)));
        let views = views.collect::<Result<Vec<_>>>()?;
        let path = out_dir.join(name);
        let out = AtomicFile::create(&path)?;
        safetensors::serialize_to_file(views, &metadata, out.tmp_path()).map_err(|e| {
            Error::Safetensors {
                path: path.clone(),
                reason: format!("{e:?}"),
            }
        })?;
        out.commit()?;
        written.push(path);
    }
    if shards.len() > 1 {
        let path = out_dir.join(SHARD_INDEX);
        write_atomic(&path, shard_index_json(&plan, &shards, &names).as_bytes())?;
        written.push(path);
    }
    if let Some(config) = config_source(dat, opts) {
        let bytes = std::fs::read(&config).map_err(Error::io_at(&config))?;
        let has_head = plan.iter().any(|p| p.key == "lm_head.weight");
        let bytes = untie_if_head_present(&config, bytes, has_head)?;
        let path = out_dir.join("config.json");
        write_atomic(&path, &bytes)?;
        written.push(path);
    }
    tracing::debug!(tensors = plan.len(), files = written.len(), out = %out_dir.display(), "exported .dat to Hugging Face directory");
    Ok(written)
}

/// One output tensor and where it comes from.
struct Planned {
    key: String,
    dtype: Dtype,
    nbytes: u64,
    source: Source,
}

enum Source {
    /// Index into `DatFile::nvfp4_pairs`.
    Pair(usize),
    /// Entry index of a raw tensor.
    Raw(usize),
}

fn plan_export(file: &DatFile, dtype: ElemType) -> Result<Vec<Planned>> {
    let pairs = file.nvfp4_pairs();
    let mut role: HashMap<usize, Option<usize>> = HashMap::new(); // entry -> Some(pair) for qdata, None for scales
    for (pi, p) in pairs.iter().enumerate() {
        role.insert(p.qdata, Some(pi));
        role.insert(p.scale, None);
        if let Some(g) = p.global_scale {
            role.insert(g, None);
        }
    }
    let mut plan = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (i, e) in file.entries().iter().enumerate() {
        let planned = match role.get(&i) {
            Some(None) => continue,
            Some(&Some(pi)) => {
                let p = &pairs[pi];
                let nbytes = (p.rows * p.cols * dtype.size()) as u64;
                Planned {
                    key: p.weight_key(),
                    dtype: dtype_of_elem(dtype),
                    nbytes,
                    source: Source::Pair(pi),
                }
            }
            None => {
                let out = if e.elem.is_float() { dtype } else { e.elem };
                let nbytes = (e.numel() * out.size()) as u64;
                Planned {
                    key: e.key.clone(),
                    dtype: dtype_of_elem(out),
                    nbytes,
                    source: Source::Raw(i),
                }
            }
        };
        if let Some(first) = seen.insert(planned.key.clone(), i) {
            return Err(Error::Convert {
                path: file.path().to_path_buf(),
                key: planned.key,
                reason: format!("produced twice on export (entries #{first} and #{i}); hint: the file holds both a raw and a quantized copy of this weight"),
            });
        }
        plan.push(planned);
    }
    Ok(plan)
}

fn shard_index_json(plan: &[Planned], shards: &[Vec<usize>], names: &[String]) -> String {
    let mut weight_map = BTreeMap::new();
    for (shard, name) in shards.iter().zip(names) {
        for &i in shard {
            weight_map.insert(plan[i].key.clone(), name.clone());
        }
    }
    let total: u64 = plan.iter().map(|p| p.nbytes).sum();
    let json = serde_json::json!({ "metadata": { "total_size": total }, "weight_map": weight_map });
    serde_json::to_string_pretty(&json).expect("a JSON value always serializes")
}

/// A tied config exported beside a separate `lm_head.weight` would make
/// transformers tie the head to the embedding and drop the stored head, so
/// such a config is written with `tie_word_embeddings: false`; a tied file
/// (no head) keeps its config byte for byte.
fn untie_if_head_present(config: &Path, bytes: Vec<u8>, has_head: bool) -> Result<Vec<u8>> {
    if !has_head {
        return Ok(bytes);
    }
    let mut json: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|source| Error::ConfigJson {
            path: Some(config.to_path_buf()),
            source,
        })?;
    if json.get("tie_word_embeddings") != Some(&serde_json::Value::Bool(true)) {
        return Ok(bytes);
    }
    tracing::warn!(config = %config.display(), "the .dat has its own lm_head: exporting with tie_word_embeddings = false");
    json["tie_word_embeddings"] = serde_json::Value::Bool(false);
    Ok(serde_json::to_vec_pretty(&json).expect("a JSON value always serializes"))
}

fn config_source(dat: &Path, opts: &DatToHfOptions) -> Option<PathBuf> {
    if let Some(c) = &opts.config {
        return Some(c.clone());
    }
    let sibling = dat.parent().unwrap_or(Path::new(".")).join("config.json");
    sibling.is_file().then_some(sibling)
}

/// The bytes of one output tensor: borrowed from the mapping when no
/// conversion is needed, else a CPU tensor in the output dtype.
struct OutTensor<'a> {
    dtype: Dtype,
    shape: Vec<usize>,
    data: OutData<'a>,
}

enum OutData<'a> {
    Mapped(&'a [u8]),
    Owned(Tensor),
}

fn materialize<'a>(file: &'a DatFile, p: &Planned) -> Result<OutTensor<'a>> {
    // Only float export dtypes reach here (raw entries keep their bytes).
    let kind = float_kind(p.dtype).unwrap_or(tch::Kind::BFloat16);
    match p.source {
        Source::Pair(pi) => {
            let pair = &file.nvfp4_pairs()[pi];
            let host = file.pair(pair)?;
            let q = nvfp4_kernels::Nvfp4Tensor::from_host(&host, Device::Cpu)
                .map_err(Error::nvfp4_at(&pair.base))?;
            let w = nvfp4_kernels::f_dequantize(&q, kind).map_err(Error::nvfp4_at(&pair.base))?;
            Ok(OutTensor {
                dtype: p.dtype,
                shape: vec![pair.rows, pair.cols],
                data: owned(&pair.base, w)?,
            })
        }
        Source::Raw(i) => {
            let e = &file.entries()[i];
            let data = if e.elem.is_float() && e.elem.kind() != kind {
                owned(&e.key, file.tensor_as(&e.key, kind, Device::Cpu)?)?
            } else {
                OutData::Mapped(file.bytes(e))
            };
            Ok(OutTensor {
                dtype: p.dtype,
                shape: e.shape.clone(),
                data,
            })
        }
    }
}

/// Wraps a CPU tensor, made contiguous so its memory can be borrowed as bytes.
fn owned(key: &str, t: Tensor) -> Result<OutData<'static>> {
    let t = t
        .f_contiguous()
        .map_err(Error::libtorch(format!("exporting {key:?}")))?;
    Ok(OutData::Owned(t))
}

impl View for OutTensor<'_> {
    fn dtype(&self) -> Dtype {
        self.dtype
    }

    fn shape(&self) -> &[usize] {
        &self.shape
    }

    fn data(&self) -> Cow<'_, [u8]> {
        match &self.data {
            OutData::Mapped(bytes) => Cow::Borrowed(bytes),
            OutData::Owned(t) => {
                let len = self.data_len();
                if len == 0 {
                    return Cow::Borrowed(&[]);
                }
                // SAFETY: `t` was made a contiguous CPU tensor of `len` bytes
                // in `owned`, and lives as long as `self`, which the Cow borrows.
                Cow::Borrowed(unsafe { std::slice::from_raw_parts(t.data_ptr() as *const u8, len) })
            }
        }
    }

    fn data_len(&self) -> usize {
        match &self.data {
            OutData::Mapped(bytes) => bytes.len(),
            OutData::Owned(t) => t.numel() * t.kind().elt_size_in_bytes(),
        }
    }
}
