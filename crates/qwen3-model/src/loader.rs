//! Building a model from a source of weights: the list of every tensor a
//! config needs (all layer families of all layers, FR-08), one audit that
//! reports every problem at once, then one copy per tensor to the device
//! (FR-09). `.dat` files, safetensors directories (`hf.rs`) and synthetic
//! weights (`random.rs`) are all `WeightSource`s, so they share this path.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use dat_format::DatFile;
use nvfp4_kernels::{Nvfp4Backend, Nvfp4Tensor};
use tch::{Device, Kind, Tensor};

use crate::attention::Attention;
use crate::block::DecoderLayer;
use crate::config::Qwen3Config;
use crate::error::{Error, Result};
use crate::linear::{Linear, LinearWeight};
use crate::mlp::Mlp;
use crate::model::{LoadOptions, Qwen3Model};
use crate::norm::RmsNorm;
use crate::rope::Rotary;

/// Names of the projections of one block, in file order.
pub(crate) const ATTN_PROJ: [&str; 4] = ["q_proj", "k_proj", "v_proj", "o_proj"];
/// Names of the MLP projections.
pub(crate) const MLP_PROJ: [&str; 3] = ["gate_proj", "up_proj", "down_proj"];

/// One tensor the model needs.
#[derive(Clone, Debug)]
pub(crate) enum Slot {
    /// A raw float tensor (embedding, norms), loaded as `kind`.
    Dense {
        key: String,
        shape: Vec<usize>,
        kind: Kind,
    },
    /// An NVFP4 projection named by its base, e.g. `model.layers.0.self_attn.q_proj`.
    Projection {
        base: String,
        rows: usize,
        cols: usize,
        required: bool,
    },
}

/// Every tensor of `cfg`, in the order of the original files. Embeddings are
/// loaded in the compute kind, norms in f32 (they are computed in f32).
pub(crate) fn plan(cfg: &Qwen3Config, compute: Kind) -> Vec<Slot> {
    let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
    let dense = |key: String, n: usize, kind| Slot::Dense {
        key,
        shape: vec![n],
        kind,
    };
    let proj = |base: String, rows, cols| Slot::Projection {
        base,
        rows,
        cols,
        required: true,
    };
    let mut slots = vec![Slot::Dense {
        key: "model.embed_tokens.weight".into(),
        shape: vec![cfg.vocab_size, h],
        kind: compute,
    }];
    for l in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{l}");
        slots.push(dense(format!("{p}.input_layernorm.weight"), h, Kind::Float));
        let attn_shapes = [
            (cfg.q_dim(), h),
            (cfg.kv_dim(), h),
            (cfg.kv_dim(), h),
            (h, cfg.q_dim()),
        ];
        for (name, (rows, cols)) in ATTN_PROJ.iter().zip(attn_shapes) {
            slots.push(proj(format!("{p}.self_attn.{name}"), rows, cols));
        }
        slots.push(dense(
            format!("{p}.self_attn.q_norm.weight"),
            cfg.head_dim,
            Kind::Float,
        ));
        slots.push(dense(
            format!("{p}.self_attn.k_norm.weight"),
            cfg.head_dim,
            Kind::Float,
        ));
        slots.push(dense(
            format!("{p}.post_attention_layernorm.weight"),
            h,
            Kind::Float,
        ));
        for (name, (rows, cols)) in MLP_PROJ.iter().zip([(i, h), (i, h), (h, i)]) {
            slots.push(proj(format!("{p}.mlp.{name}"), rows, cols));
        }
    }
    slots.push(dense("model.norm.weight".into(), h, Kind::Float));
    // A tied model may still carry an NVFP4 lm_head; it is used when present.
    slots.push(Slot::Projection {
        base: "lm_head".into(),
        rows: cfg.vocab_size,
        cols: h,
        required: !cfg.tie_word_embeddings,
    });
    slots
}

/// Result of checking one projection in a source.
pub(crate) enum ProjCheck {
    Present,
    Missing,
    Problem(String),
}

/// Where weights come from. `check_*` must only read metadata; `dense` and
/// `projection` are called once per tensor, after the audit passed.
pub(crate) trait WeightSource {
    /// The file or directory, for messages.
    fn describe(&self) -> String;
    /// Every key the source holds (for the unexpected-key check).
    fn keys(&self) -> Vec<String>;
    /// `Some(problem)` when the tensor is missing or unusable.
    fn check_dense(&self, key: &str, shape: &[usize]) -> Option<String>;
    fn check_projection(&self, base: &str, rows: usize, cols: usize) -> ProjCheck;
    fn dense(&mut self, key: &str, kind: Kind, device: Device) -> Result<Tensor>;
    fn projection(&mut self, base: &str, device: Device) -> Result<Nvfp4Tensor>;
}

/// Checks every slot; returns the bases of the projections to load (an
/// optional `lm_head` may be absent) or ONE error listing every problem.
fn audit(plan: &[Slot], strict: bool, src: &dyn WeightSource) -> Result<HashSet<String>> {
    let mut problems = Vec::new();
    let mut present = HashSet::new();
    let mut owned_exact = HashSet::new();
    let mut owned_prefix = Vec::new();
    for slot in plan {
        match slot {
            Slot::Dense { key, shape, .. } => {
                problems.extend(src.check_dense(key, shape));
                owned_exact.insert(key.clone());
            }
            Slot::Projection {
                base,
                rows,
                cols,
                required,
            } => {
                match src.check_projection(base, *rows, *cols) {
                    ProjCheck::Present => {
                        present.insert(base.clone());
                    }
                    ProjCheck::Missing if *required => {
                        problems.push(format!("missing {base} (qdata/scale)"))
                    }
                    ProjCheck::Missing => {}
                    ProjCheck::Problem(p) => problems.push(p),
                }
                owned_prefix.push(format!("{base}."));
            }
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

/// Audits `src` against `cfg`, then copies each tensor once to the device.
pub(crate) fn assemble(
    cfg: &Qwen3Config,
    opts: &LoadOptions,
    src: &mut dyn WeightSource,
) -> Result<Qwen3Model> {
    cfg.validate()?;
    opts.validate()?;
    let backend = Arc::new(Nvfp4Backend::resolve(opts.compute_path, opts.device)?);
    tracing::info!(path = %backend.describe(), source = %src.describe(), "loading Qwen3");
    let plan = plan(cfg, opts.dtype);
    let present = audit(&plan, opts.strict, src)?;
    let mut parts = Parts {
        dense: HashMap::new(),
        packed: HashMap::new(),
        backend,
        eps: cfg.rms_norm_eps,
    };
    for slot in &plan {
        match slot {
            Slot::Dense { key, kind, .. } => {
                let t = src.dense(key, *kind, opts.device)?;
                parts.dense.insert(key.clone(), t);
            }
            Slot::Projection { base, .. } if present.contains(base) => {
                let q = src.projection(base, opts.device)?;
                parts.packed.insert(base.clone(), q);
            }
            Slot::Projection { .. } => {}
        }
    }
    parts.into_model(cfg, opts)
}

/// Loaded tensors by key, consumed while the model is wired together.
struct Parts {
    dense: HashMap<String, Tensor>,
    packed: HashMap<String, Nvfp4Tensor>,
    backend: Arc<Nvfp4Backend>,
    eps: f64,
}

impl Parts {
    fn tensor(&mut self, key: &str) -> Result<Tensor> {
        self.dense.remove(key).ok_or_else(|| missing(key))
    }

    fn norm(&mut self, key: &str) -> Result<RmsNorm> {
        Ok(RmsNorm::new(self.tensor(key)?, self.eps))
    }

    fn linear(&mut self, base: &str) -> Result<Linear> {
        let q = self.packed.remove(base).ok_or_else(|| missing(base))?;
        Ok(Linear::new(LinearWeight::Packed(q), self.backend.clone()))
    }

    fn layer(&mut self, cfg: &Qwen3Config, l: usize) -> Result<DecoderLayer> {
        let p = format!("model.layers.{l}");
        let a = format!("{p}.self_attn");
        let self_attn = Attention {
            q_proj: self.linear(&format!("{a}.q_proj"))?,
            k_proj: self.linear(&format!("{a}.k_proj"))?,
            v_proj: self.linear(&format!("{a}.v_proj"))?,
            o_proj: self.linear(&format!("{a}.o_proj"))?,
            q_norm: self.norm(&format!("{a}.q_norm.weight"))?,
            k_norm: self.norm(&format!("{a}.k_norm.weight"))?,
            num_heads: cfg.num_attention_heads,
            num_kv_heads: cfg.num_key_value_heads,
            head_dim: cfg.head_dim,
        };
        let mlp = Mlp {
            gate_proj: self.linear(&format!("{p}.mlp.gate_proj"))?,
            up_proj: self.linear(&format!("{p}.mlp.up_proj"))?,
            down_proj: self.linear(&format!("{p}.mlp.down_proj"))?,
        };
        Ok(DecoderLayer {
            input_layernorm: self.norm(&format!("{p}.input_layernorm.weight"))?,
            self_attn,
            post_attention_layernorm: self.norm(&format!("{p}.post_attention_layernorm.weight"))?,
            mlp,
        })
    }

    fn into_model(mut self, cfg: &Qwen3Config, opts: &LoadOptions) -> Result<Qwen3Model> {
        let layers = (0..cfg.num_hidden_layers)
            .map(|l| self.layer(cfg, l))
            .collect::<Result<Vec<_>>>()?;
        let lm_head = match self.packed.contains_key("lm_head") {
            true => Some(self.linear("lm_head")?),
            false => None,
        };
        Ok(Qwen3Model {
            cfg: cfg.clone(),
            embed_tokens: self.tensor("model.embed_tokens.weight")?,
            layers,
            norm: self.norm("model.norm.weight")?,
            lm_head,
            tied_head: crate::precision::Precision::DENSE,
            rotary: Rotary::new(cfg.head_dim, cfg.rope_theta, opts.device),
            backend: self.backend,
            device: opts.device,
            dtype: opts.dtype,
        })
    }
}

/// Only reachable if a source's `check_*` and loads disagree.
fn missing(key: &str) -> Error {
    Error::InvalidArgument {
        name: "weights",
        reason: format!("{key} was not loaded"),
    }
}

/// A `.dat` file as a weight source.
struct DatSource<'a> {
    dat: &'a DatFile,
}

impl WeightSource for DatSource<'_> {
    fn describe(&self) -> String {
        self.dat.path().display().to_string()
    }

    fn keys(&self) -> Vec<String> {
        self.dat.entries().iter().map(|e| e.key.clone()).collect()
    }

    fn check_dense(&self, key: &str, shape: &[usize]) -> Option<String> {
        match self.dat.get(key) {
            None => Some(format!("missing {key}")),
            Some(e) if !e.elem.is_float() => Some(format!(
                "{key} has element type {:?}, expected a float type",
                e.elem
            )),
            Some(e) if e.shape != shape => {
                Some(format!("{key} shape {:?} expected {shape:?}", e.shape))
            }
            Some(_) => None,
        }
    }

    fn check_projection(&self, base: &str, rows: usize, cols: usize) -> ProjCheck {
        match self.dat.nvfp4(base) {
            Ok(None) => ProjCheck::Missing,
            Err(e) => ProjCheck::Problem(e.to_string()),
            Ok(Some(q)) if (q.rows, q.cols) != (rows, cols) => ProjCheck::Problem(format!(
                "{base} shape [{}, {}] expected [{rows}, {cols}]",
                q.rows, q.cols
            )),
            Ok(Some(_)) => ProjCheck::Present,
        }
    }

    fn dense(&mut self, key: &str, kind: Kind, device: Device) -> Result<Tensor> {
        Ok(self.dat.tensor_as(key, kind, device)?)
    }

    fn projection(&mut self, base: &str, device: Device) -> Result<Nvfp4Tensor> {
        let q = self.dat.nvfp4(base)?.ok_or_else(|| missing(base))?;
        Ok(Nvfp4Tensor::from_host(&q, device)?)
    }
}

impl Qwen3Model {
    /// Loads every tensor of `cfg` from a `.dat` file (FR-08), each copied
    /// once to `opts.device` (FR-09). Missing tensors, wrong shapes or
    /// element types (and, when strict, unused tensors) are reported together
    /// in one [`Error::LoadProblems`].
    pub fn load_dat(dat: &DatFile, cfg: &Qwen3Config, opts: &LoadOptions) -> Result<Self> {
        assemble(cfg, opts, &mut DatSource { dat })
    }
}
