//! Training support: turning packed projections into trainable master
//! weights, and naming every tensor with its Hugging Face / `.dat` key.
//!
//! Gradients reach a master projection through `nvfp4_kernels::ste`: the
//! forward sees dequant(quant(W)), the backward treats the quantizer as the
//! identity. The master stays dense between steps; nothing here re-quantizes
//! it (the original flushed small updates by re-quantizing every step).

use nvfp4_kernels::Nvfp4Tensor;
use tch::{Kind, Tensor};

use crate::error::{Error, Result};
use crate::linear::{Linear, LinearWeight};
use crate::model::Qwen3Model;
use crate::norm::RmsNorm;
use crate::weights::schema::{LayerTensor, TensorRole, WeightSchema};

/// A weight as stored in the model, for export.
#[derive(Debug)]
pub enum WeightRef<'a> {
    /// A frozen NVFP4 projection.
    Packed(&'a Nvfp4Tensor),
    /// A dense tensor: embedding, norm, or a master projection (export quantizes it).
    Dense(&'a Tensor),
}

/// A named piece of the model: a projection or a plain tensor.
pub(crate) enum Item<'a> {
    Linear(&'a Linear),
    Tensor(&'a Tensor),
}

fn make_trainable(t: &Tensor, kind: Kind, train: bool) -> Tensor {
    t.detach().to_kind(kind).set_requires_grad(train)
}

fn norm_trainable(norm: &mut RmsNorm, kind: Kind) {
    norm.weight = make_trainable(&norm.weight, kind, true);
}

impl Qwen3Model {
    /// Training: every projection of the trained blocks becomes a master
    /// weight of `master_kind` (dequantized from NVFP4, `requires_grad`), and
    /// their norms, the final norm and the head become trainable too.
    /// `train_last_layers: Some(k)` trains only the last k blocks (the
    /// embedding then trains only when it is the tied head); `None` trains all.
    pub fn into_trainable(
        mut self,
        master_kind: Kind,
        train_last_layers: Option<usize>,
    ) -> Result<Self> {
        if !matches!(
            master_kind,
            Kind::Float | Kind::Double | Kind::BFloat16 | Kind::Half
        ) {
            return Err(Error::InvalidArgument {
                name: "master_kind",
                reason: format!("{master_kind:?} is not a floating-point kind"),
            });
        }
        let n = self.layers.len();
        let k = train_last_layers.unwrap_or(n);
        if k > n {
            return Err(Error::InvalidArgument {
                name: "train_last_layers",
                reason: format!("{k} > number of layers {n}"),
            });
        }
        for layer in &mut self.layers[n - k..] {
            let a = &mut layer.self_attn;
            for lin in [&mut a.q_proj, &mut a.k_proj, &mut a.v_proj, &mut a.o_proj] {
                lin.make_trainable(master_kind);
            }
            for lin in [
                &mut layer.mlp.gate_proj,
                &mut layer.mlp.up_proj,
                &mut layer.mlp.down_proj,
            ] {
                lin.make_trainable(master_kind);
            }
            for norm in [&mut a.q_norm, &mut a.k_norm] {
                norm_trainable(norm, master_kind);
            }
            norm_trainable(&mut layer.input_layernorm, master_kind);
            norm_trainable(&mut layer.post_attention_layernorm, master_kind);
        }
        norm_trainable(&mut self.norm, master_kind);
        if let Some(head) = &mut self.lm_head {
            head.make_trainable(master_kind);
        }
        if train_last_layers.is_none() || self.lm_head.is_none() {
            self.embed_tokens = make_trainable(&self.embed_tokens, master_kind, true);
        }
        Ok(self)
    }

    /// Every projection (and a separate head) dense in the compute kind,
    /// dequantized where packed, with no rounding: what [`Qwen3Model::load_dense`] returns.
    pub(crate) fn dequantize_projections(&mut self) {
        let kind = self.dtype;
        for layer in &mut self.layers {
            let a = &mut layer.self_attn;
            let m = &mut layer.mlp;
            for lin in [
                &mut a.q_proj,
                &mut a.k_proj,
                &mut a.v_proj,
                &mut a.o_proj,
                &mut m.gate_proj,
                &mut m.up_proj,
                &mut m.down_proj,
            ] {
                lin.make_dense(kind);
            }
        }
        if let Some(head) = &mut self.lm_head {
            head.make_dense(kind);
        }
    }

    /// The tensor of `role`; `None` for the head of a model that uses its embedding.
    fn item(&self, role: TensorRole) -> Option<Item<'_>> {
        Some(match role {
            TensorRole::Embedding => Item::Tensor(&self.embed_tokens),
            TensorRole::FinalNorm => Item::Tensor(&self.norm.weight),
            TensorRole::Head => Item::Linear(self.lm_head.as_ref()?),
            TensorRole::Layer(l, t) => {
                let layer = self.layers.get(l)?;
                let (a, m) = (&layer.self_attn, &layer.mlp);
                match t {
                    LayerTensor::InputNorm => Item::Tensor(&layer.input_layernorm.weight),
                    LayerTensor::QProj => Item::Linear(&a.q_proj),
                    LayerTensor::KProj => Item::Linear(&a.k_proj),
                    LayerTensor::VProj => Item::Linear(&a.v_proj),
                    LayerTensor::OProj => Item::Linear(&a.o_proj),
                    LayerTensor::QNorm => Item::Tensor(&a.q_norm.weight),
                    LayerTensor::KNorm => Item::Tensor(&a.k_norm.weight),
                    LayerTensor::PostNorm => Item::Tensor(&layer.post_attention_layernorm.weight),
                    LayerTensor::GateProj => Item::Linear(&m.gate_proj),
                    LayerTensor::UpProj => Item::Linear(&m.up_proj),
                    LayerTensor::DownProj => Item::Linear(&m.down_proj),
                }
            }
        })
    }

    /// Every tensor with its key, in `.dat` file order (the schema's).
    pub(crate) fn items(&self) -> Vec<(String, Item<'_>)> {
        WeightSchema::new(&self.cfg)
            .tensors()
            .iter()
            .filter_map(|spec| Some((spec.key.clone(), self.item(spec.role)?)))
            .collect()
    }

    /// Trainable tensors (those with `requires_grad`) under their HF keys
    /// (`model.layers.0.self_attn.q_proj.weight`, ...), as shallow clones
    /// sharing storage with the model (an optimizer updates them in place).
    pub fn named_parameters(&self) -> Vec<(String, Tensor)> {
        self.items()
            .into_iter()
            .filter_map(|(key, item)| {
                let t = match item {
                    Item::Linear(Linear {
                        weight: LinearWeight::Master(w),
                        ..
                    }) => w,
                    Item::Linear(_) => return None,
                    Item::Tensor(t) => t,
                };
                t.requires_grad().then(|| (key, t.shallow_clone()))
            })
            .collect()
    }

    /// Every weight under its HF key (`.weight` suffix; a packed one is
    /// written to `.dat` as `{key}.qdata`/`{key}.scale`). A tied model has
    /// no `lm_head.weight` entry.
    pub fn named_weights(&self) -> Vec<(String, WeightRef<'_>)> {
        self.items()
            .into_iter()
            .map(|(key, item)| {
                let r = match item {
                    Item::Linear(lin) => match &lin.weight {
                        LinearWeight::Packed(q) => WeightRef::Packed(q),
                        LinearWeight::Master(w) => WeightRef::Dense(w),
                    },
                    Item::Tensor(t) => WeightRef::Dense(t),
                };
                (key, r)
            })
            .collect()
    }

    /// Bytes held by the weights on the device (packed data and scales, dense
    /// tensors at their kind), for memory reports.
    pub fn weight_bytes(&self) -> usize {
        self.named_weights()
            .iter()
            .map(|(_, w)| match w {
                WeightRef::Packed(q) => q.nbytes(),
                WeightRef::Dense(t) => t.numel() * t.kind().elt_size_in_bytes(),
            })
            .sum()
    }

    /// Number of trainable projections (master weights with gradients).
    pub fn num_trainable_projections(&self) -> usize {
        self.items()
            .iter()
            .filter(|(_, i)| matches!(i, Item::Linear(l) if l.is_trainable()))
            .count()
    }
}
