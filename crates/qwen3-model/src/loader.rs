//! Building a model from a source of weights: the schema of the config
//! (every tensor of every layer, FR-08), one audit that reports every
//! problem at once, then one copy per tensor to the device (FR-09). `.dat`
//! files, safetensors directories and synthetic weights (`random.rs`) are
//! all `WeightSource`s, so they share this path.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use dat_format::DatFile;
use nvfp4_kernels::{Nvfp4Backend, Nvfp4Tensor};
use tch::{Kind, Tensor};

use crate::attention::Attention;
use crate::block::DecoderLayer;
use crate::config::Qwen3Config;
use crate::error::{Error, Result};
use crate::linear::{Linear, LinearWeight};
use crate::mlp::Mlp;
use crate::model::{LoadOptions, Qwen3Model};
use crate::norm::RmsNorm;
use crate::rope::Rotary;
use crate::weights::dat::DatSource;
use crate::weights::resolve::{ModelPaths, WeightFormat};
use crate::weights::schema::{LayerTensor, TensorClass, TensorRole, TensorSpec, WeightSchema};
use crate::weights::source::{Check, WeightSource};

/// Checks every tensor of the schema; returns the roles to load (an
/// optional head may be absent) or ONE error listing every problem.
fn audit(
    schema: &WeightSchema,
    strict: bool,
    src: &dyn WeightSource,
) -> Result<HashSet<TensorRole>> {
    let mut problems = Vec::new();
    let mut present = HashSet::new();
    let mut owned_exact = HashSet::new();
    let mut owned_prefix = Vec::new();
    for spec in schema.tensors() {
        match src.check(spec) {
            Check::Present => {
                present.insert(spec.role);
            }
            Check::Missing if !spec.required => {}
            Check::Missing if spec.is_packed() => {
                problems.push(format!("missing {} (qdata/scale)", spec.base()))
            }
            Check::Missing => problems.push(format!("missing {}", spec.key)),
            Check::Problem(p) => problems.push(p),
        }
        owned_exact.insert(spec.key.clone());
        if spec.is_packed() {
            owned_prefix.push(format!("{}.", spec.base()));
        }
    }
    // Keys the model does not use: a sign of a config/file mismatch (e.g.
    // more layers in the file than in the config). Rotary buffers are harmless.
    let unexpected: Vec<String> = src
        .keys()
        .into_iter()
        .filter(|k| {
            !owned_exact.contains(k) && !owned_prefix.iter().any(|p| k.starts_with(p.as_str()))
        })
        .filter(|k| !k.ends_with("rotary_emb.inv_freq"))
        .collect();
    if strict {
        problems.extend(unexpected.iter().map(|k| format!("unexpected {k}")));
    } else if !unexpected.is_empty() {
        tracing::warn!(count = unexpected.len(), first = %unexpected[0], "ignoring tensors the model does not use");
    }
    if !problems.is_empty() {
        return Err(Error::LoadProblems {
            source_name: src.describe(),
            problems,
        });
    }
    Ok(present)
}

/// The kind a raw tensor is loaded as: embeddings in the compute kind,
/// norms in f32 (they are computed in f32).
fn dense_kind(spec: &TensorSpec, compute: Kind) -> Kind {
    match spec.class() {
        TensorClass::Norm => Kind::Float,
        _ => compute,
    }
}

/// Audits `src` against `cfg`, then copies each tensor once to the device.
/// How the projections of a loaded model hold their weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Projections {
    /// NVFP4 as stored (a dense file is quantized on load).
    Nvfp4,
    /// Dense in the compute kind: as stored where the file is dense, else
    /// dequantized from NVFP4 (a distillation teacher, a bf16 baseline).
    Dense,
}

pub(crate) fn assemble(
    cfg: &Qwen3Config,
    opts: &LoadOptions,
    src: &mut dyn WeightSource,
) -> Result<Qwen3Model> {
    assemble_as(cfg, opts, src, Projections::Nvfp4)
}

pub(crate) fn assemble_as(
    cfg: &Qwen3Config,
    opts: &LoadOptions,
    src: &mut dyn WeightSource,
    projections: Projections,
) -> Result<Qwen3Model> {
    cfg.validate()?;
    opts.validate()?;
    let backend = Arc::new(Nvfp4Backend::resolve(opts.compute_path, opts.device)?);
    tracing::info!(path = %backend.describe(), source = %src.describe(), "loading Qwen3");
    let schema = WeightSchema::new(cfg);
    let present = audit(&schema, opts.strict, src)?;
    let mut parts = Parts {
        dense: HashMap::new(),
        packed: HashMap::new(),
        backend,
        eps: cfg.rms_norm_eps,
    };
    for spec in schema.tensors() {
        if !present.contains(&spec.role) {
            continue;
        }
        let read_dense = projections == Projections::Dense && src.stores_dense();
        if spec.is_packed() && !read_dense {
            let q = src.packed(spec, opts.device)?;
            parts.packed.insert(spec.role, q);
        } else {
            let t = src.dense(spec, dense_kind(spec, opts.dtype), opts.device)?;
            parts.dense.insert(spec.role, t);
        }
    }
    let mut model = parts.into_model(cfg, opts)?;
    if projections == Projections::Dense {
        model.dequantize_projections();
    }
    Ok(model)
}

/// Loaded tensors by role, consumed while the model is wired together.
struct Parts {
    dense: HashMap<TensorRole, Tensor>,
    packed: HashMap<TensorRole, Nvfp4Tensor>,
    backend: Arc<Nvfp4Backend>,
    eps: f64,
}

impl Parts {
    fn tensor(&mut self, role: TensorRole) -> Result<Tensor> {
        self.dense.remove(&role).ok_or_else(|| missing(role))
    }

    fn norm(&mut self, role: TensorRole) -> Result<RmsNorm> {
        Ok(RmsNorm::new(self.tensor(role)?, self.eps))
    }

    /// A projection as loaded: NVFP4, or dense where the source was read dense.
    fn linear(&mut self, role: TensorRole) -> Result<Linear> {
        let weight = match self.packed.remove(&role) {
            Some(q) => LinearWeight::Packed(q),
            None => LinearWeight::Master(self.tensor(role)?),
        };
        Ok(Linear::new(weight, self.backend.clone()))
    }

    fn layer(&mut self, cfg: &Qwen3Config, l: usize) -> Result<DecoderLayer> {
        let r = |t| TensorRole::Layer(l, t);
        let self_attn = Attention {
            q_proj: self.linear(r(LayerTensor::QProj))?,
            k_proj: self.linear(r(LayerTensor::KProj))?,
            v_proj: self.linear(r(LayerTensor::VProj))?,
            o_proj: self.linear(r(LayerTensor::OProj))?,
            q_norm: self.norm(r(LayerTensor::QNorm))?,
            k_norm: self.norm(r(LayerTensor::KNorm))?,
            num_heads: cfg.num_attention_heads,
            num_kv_heads: cfg.num_key_value_heads,
            head_dim: cfg.head_dim,
        };
        let mlp = Mlp {
            gate_proj: self.linear(r(LayerTensor::GateProj))?,
            up_proj: self.linear(r(LayerTensor::UpProj))?,
            down_proj: self.linear(r(LayerTensor::DownProj))?,
        };
        Ok(DecoderLayer {
            input_layernorm: self.norm(r(LayerTensor::InputNorm))?,
            self_attn,
            post_attention_layernorm: self.norm(r(LayerTensor::PostNorm))?,
            mlp,
        })
    }

    fn into_model(mut self, cfg: &Qwen3Config, opts: &LoadOptions) -> Result<Qwen3Model> {
        let layers = (0..cfg.num_hidden_layers)
            .map(|l| self.layer(cfg, l))
            .collect::<Result<Vec<_>>>()?;
        // A tied model may still carry an NVFP4 lm_head; it is used when present.
        let head = TensorRole::Head;
        let lm_head = match self.packed.contains_key(&head) || self.dense.contains_key(&head) {
            true => Some(self.linear(TensorRole::Head)?),
            false => None,
        };
        Ok(Qwen3Model {
            cfg: cfg.clone(),
            embed_tokens: self.tensor(TensorRole::Embedding)?,
            layers,
            norm: self.norm(TensorRole::FinalNorm)?,
            lm_head,
            tied_head: crate::precision::Precision::DENSE,
            rotary: Rotary::new(cfg.head_dim, cfg.rope_theta, opts.device),
            backend: self.backend,
            device: opts.device,
            dtype: opts.dtype,
        })
    }
}

/// Only reachable if a source's `check` and loads disagree.
fn missing(role: TensorRole) -> Error {
    Error::InvalidArgument {
        name: "weights",
        reason: format!("{} was not loaded", role.key()),
    }
}

impl Qwen3Model {
    /// Opens a model: `path` is a `.dat` file, a directory holding one
    /// `.dat`, or a Hugging Face safetensors directory (quantized on load);
    /// the config is `config.json` in the directory or beside the `.dat`
    /// (see [`ModelPaths::resolve`]).
    pub fn load(path: &Path, opts: &LoadOptions) -> Result<Self> {
        Self::load_with_config(path, None, opts)
    }

    /// [`Qwen3Model::load`] with the `config.json` given explicitly (`None`:
    /// the one in the directory or beside the `.dat`).
    pub fn load_with_config(
        path: &Path,
        config: Option<&Path>,
        opts: &LoadOptions,
    ) -> Result<Self> {
        Self::load_as(path, config, opts, Projections::Nvfp4)
    }

    /// [`Qwen3Model::load_with_config`] with every projection dense in the
    /// compute kind: as stored in a bf16/f16/f32 safetensors directory, else
    /// dequantized from NVFP4. The frozen teacher of distillation, or the
    /// dense baseline of a comparison.
    pub fn load_dense(path: &Path, config: Option<&Path>, opts: &LoadOptions) -> Result<Self> {
        Self::load_as(path, config, opts, Projections::Dense)
    }

    fn load_as(
        path: &Path,
        config: Option<&Path>,
        opts: &LoadOptions,
        projections: Projections,
    ) -> Result<Self> {
        let paths = ModelPaths::resolve(path, config)?;
        let cfg = Qwen3Config::from_file(&paths.config)?;
        match paths.format {
            WeightFormat::Dat => assemble_as(
                &cfg,
                opts,
                &mut DatSource {
                    dat: &DatFile::open(&paths.weights)?,
                },
                projections,
            ),
            WeightFormat::Safetensors => {
                Self::load_hf_dir_as(&paths.weights, &cfg, opts, projections)
            }
        }
    }

    /// Loads every tensor of `cfg` from a `.dat` file (FR-08), each copied
    /// once to `opts.device` (FR-09). Missing tensors, wrong shapes or
    /// element types (and, when strict, unused tensors) are reported together
    /// in one [`Error::LoadProblems`].
    pub fn load_dat(dat: &DatFile, cfg: &Qwen3Config, opts: &LoadOptions) -> Result<Self> {
        crate::loader::assemble(cfg, opts, &mut DatSource { dat })
    }
}
