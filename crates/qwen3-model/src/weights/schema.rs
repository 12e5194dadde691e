//! The Qwen3 weight schema: the one place that knows every tensor a config
//! needs — its key, logical shape, whether it is stored NVFP4-packed or raw,
//! its kind, and the two orders files use. Loading, the load audit, training
//! names, export and conversion all walk this; a file format only maps a
//! [`TensorSpec`] to its own storage.

use crate::config::Qwen3Config;

/// Key of the token embedding (`[vocab, hidden]`), also the head of a tied model.
pub const EMBED_KEY: &str = "model.embed_tokens.weight";
/// Key of the final RMSNorm weight.
pub const FINAL_NORM_KEY: &str = "model.norm.weight";
/// Key of an untied output head.
pub const LM_HEAD_KEY: &str = "lm_head.weight";

/// What a tensor is to the model (decides packing, weight decay, export dtype).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TensorClass {
    /// The token embedding.
    Embedding,
    /// An RMSNorm weight (a vector).
    Norm,
    /// A block projection (q/k/v/o, gate/up/down).
    Projection,
    /// The output head `lm_head`.
    Head,
}

impl TensorClass {
    /// True when files store the tensor as an NVFP4 pair (projections and an untied head).
    pub fn is_packed(self) -> bool {
        matches!(self, TensorClass::Projection | TensorClass::Head)
    }
}

/// The tensors of one decoder block, in `.dat` file order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LayerTensor {
    /// `input_layernorm`
    InputNorm,
    /// `self_attn.q_proj`
    QProj,
    /// `self_attn.k_proj`
    KProj,
    /// `self_attn.v_proj`
    VProj,
    /// `self_attn.o_proj`
    OProj,
    /// `self_attn.q_norm`
    QNorm,
    /// `self_attn.k_norm`
    KNorm,
    /// `post_attention_layernorm`
    PostNorm,
    /// `mlp.gate_proj`
    GateProj,
    /// `mlp.up_proj`
    UpProj,
    /// `mlp.down_proj`
    DownProj,
}

impl LayerTensor {
    /// `.dat` file order (the original tools').
    pub const FILE_ORDER: [LayerTensor; 11] = [
        Self::InputNorm,
        Self::QProj,
        Self::KProj,
        Self::VProj,
        Self::OProj,
        Self::QNorm,
        Self::KNorm,
        Self::PostNorm,
        Self::GateProj,
        Self::UpProj,
        Self::DownProj,
    ];

    /// Module order of `Qwen3ForCausalLM.state_dict()` in transformers.
    pub const HF_ORDER: [LayerTensor; 11] = [
        Self::QProj,
        Self::KProj,
        Self::VProj,
        Self::OProj,
        Self::QNorm,
        Self::KNorm,
        Self::GateProj,
        Self::UpProj,
        Self::DownProj,
        Self::InputNorm,
        Self::PostNorm,
    ];

    /// Module path inside a block, without `.weight`.
    pub fn module(self) -> &'static str {
        match self {
            Self::InputNorm => "input_layernorm",
            Self::QProj => "self_attn.q_proj",
            Self::KProj => "self_attn.k_proj",
            Self::VProj => "self_attn.v_proj",
            Self::OProj => "self_attn.o_proj",
            Self::QNorm => "self_attn.q_norm",
            Self::KNorm => "self_attn.k_norm",
            Self::PostNorm => "post_attention_layernorm",
            Self::GateProj => "mlp.gate_proj",
            Self::UpProj => "mlp.up_proj",
            Self::DownProj => "mlp.down_proj",
        }
    }

    /// Norm or projection.
    pub fn class(self) -> TensorClass {
        match self {
            Self::InputNorm | Self::QNorm | Self::KNorm | Self::PostNorm => TensorClass::Norm,
            _ => TensorClass::Projection,
        }
    }

    /// Logical shape (`[out, in]` for a projection) under `cfg`.
    pub fn shape(self, cfg: &Qwen3Config) -> Vec<usize> {
        let (h, i, q, kv) = (
            cfg.hidden_size,
            cfg.intermediate_size,
            cfg.q_dim(),
            cfg.kv_dim(),
        );
        match self {
            Self::InputNorm | Self::PostNorm => vec![h],
            Self::QNorm | Self::KNorm => vec![cfg.head_dim],
            Self::QProj => vec![q, h],
            Self::KProj | Self::VProj => vec![kv, h],
            Self::OProj => vec![h, q],
            Self::GateProj | Self::UpProj => vec![i, h],
            Self::DownProj => vec![h, i],
        }
    }

    /// The weight key of this tensor in block `layer`.
    pub fn key(self, layer: usize) -> String {
        format!("model.layers.{layer}.{}.weight", self.module())
    }
}

/// Which tensor of the model a key names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TensorRole {
    /// `model.embed_tokens.weight`
    Embedding,
    /// A tensor of decoder block `.0`.
    Layer(usize, LayerTensor),
    /// `model.norm.weight`
    FinalNorm,
    /// `lm_head.weight`
    Head,
}

impl TensorRole {
    /// Parses a weight key (with `.weight`); `None` for keys the model does not know.
    pub fn of_key(key: &str) -> Option<Self> {
        match key {
            EMBED_KEY => return Some(Self::Embedding),
            FINAL_NORM_KEY => return Some(Self::FinalNorm),
            LM_HEAD_KEY => return Some(Self::Head),
            _ => {}
        }
        let rest = key.strip_prefix("model.layers.")?.strip_suffix(".weight")?;
        let (layer, module) = rest.split_once('.')?;
        if layer.is_empty() || !layer.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let t = LayerTensor::FILE_ORDER
            .into_iter()
            .find(|t| t.module() == module)?;
        Some(Self::Layer(layer.parse().ok()?, t))
    }

    /// The weight key.
    pub fn key(self) -> String {
        match self {
            Self::Embedding => EMBED_KEY.into(),
            Self::Layer(l, t) => t.key(l),
            Self::FinalNorm => FINAL_NORM_KEY.into(),
            Self::Head => LM_HEAD_KEY.into(),
        }
    }

    /// What the tensor is.
    pub fn class(self) -> TensorClass {
        match self {
            Self::Embedding => TensorClass::Embedding,
            Self::Layer(_, t) => t.class(),
            Self::FinalNorm => TensorClass::Norm,
            Self::Head => TensorClass::Head,
        }
    }

    /// Sort key of transformers' `state_dict()` order.
    fn hf_rank(self) -> (u8, usize, usize) {
        match self {
            Self::Embedding => (0, 0, 0),
            Self::Layer(l, t) => (
                1,
                l,
                LayerTensor::HF_ORDER
                    .iter()
                    .position(|x| *x == t)
                    .unwrap_or(0),
            ),
            Self::FinalNorm => (2, 0, 0),
            Self::Head => (3, 0, 0),
        }
    }
}

/// True for keys files store NVFP4-packed (`*.{q,k,v,o,gate,up,down}_proj.weight`
/// of a block and `lm_head.weight`), whatever the config: what conversion uses.
pub fn is_packed_key(key: &str) -> bool {
    TensorRole::of_key(key).is_some_and(|r| r.class().is_packed())
}

/// Sort key placing weight keys in transformers' `state_dict()` order;
/// unknown keys sort last (a stable sort keeps their order).
pub fn hf_rank(key: &str) -> (u8, usize, usize) {
    TensorRole::of_key(key).map_or((4, 0, 0), TensorRole::hf_rank)
}

/// One tensor of the schema.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorSpec {
    /// Which tensor.
    pub role: TensorRole,
    /// Weight key, with `.weight` (`model.layers.0.mlp.up_proj.weight`).
    pub key: String,
    /// Logical shape (`[out, in]` for projections; packed storage differs).
    pub shape: Vec<usize>,
    /// False only for the head of a tied config (used when a file has one).
    pub required: bool,
}

impl TensorSpec {
    /// What the tensor is.
    pub fn class(&self) -> TensorClass {
        self.role.class()
    }

    /// Stored as an NVFP4 pair.
    pub fn is_packed(&self) -> bool {
        self.class().is_packed()
    }

    /// The key without `.weight`: the base of the `.qdata`/`.scale` keys of a packed tensor.
    pub fn base(&self) -> &str {
        self.key.strip_suffix(".weight").unwrap_or(&self.key)
    }
}

/// Every tensor of one config, in `.dat` file order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WeightSchema {
    tensors: Vec<TensorSpec>,
}

impl WeightSchema {
    /// The schema of `cfg`: embedding, every block in file order, final
    /// norm, and `lm_head` (optional when the config ties embeddings).
    pub fn new(cfg: &Qwen3Config) -> Self {
        let spec = |role: TensorRole, shape: Vec<usize>, required| TensorSpec {
            role,
            key: role.key(),
            shape,
            required,
        };
        let (v, h) = (cfg.vocab_size, cfg.hidden_size);
        let mut tensors = vec![spec(TensorRole::Embedding, vec![v, h], true)];
        for l in 0..cfg.num_hidden_layers {
            for t in LayerTensor::FILE_ORDER {
                tensors.push(spec(TensorRole::Layer(l, t), t.shape(cfg), true));
            }
        }
        tensors.push(spec(TensorRole::FinalNorm, vec![h], true));
        tensors.push(spec(TensorRole::Head, vec![v, h], !cfg.tie_word_embeddings));
        WeightSchema { tensors }
    }

    /// Every tensor in `.dat` file order.
    pub fn tensors(&self) -> &[TensorSpec] {
        &self.tensors
    }

    /// The spec of `key`, if the schema has it.
    pub fn get(&self, key: &str) -> Option<&TensorSpec> {
        let role = TensorRole::of_key(key)?;
        self.tensors.iter().find(|t| t.role == role)
    }

    /// Every tensor in transformers' `state_dict()` order.
    pub fn hf_order(&self) -> Vec<&TensorSpec> {
        let mut out: Vec<&TensorSpec> = self.tensors.iter().collect();
        out.sort_by_key(|t| t.role.hf_rank());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_back_to_their_roles() {
        let cfg = Qwen3Config::qwen3_4b();
        let schema = WeightSchema::new(&cfg);
        assert_eq!(schema.tensors().len(), 1 + 11 * cfg.num_hidden_layers + 2);
        for t in schema.tensors() {
            assert_eq!(TensorRole::of_key(&t.key), Some(t.role), "{}", t.key);
            assert_eq!(schema.get(&t.key), Some(t));
        }
    }

    #[test]
    fn projection_and_head_keys_are_packed() {
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
            assert!(is_packed_key(key), "{key}");
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
            "model.layers.x.mlp.up_proj.weight",
            "q_proj.weight",
            "lm_head.bias",
            "model.lm_head.weight",
        ] {
            assert!(!is_packed_key(key), "{key}");
        }
    }

    #[test]
    fn hf_order_is_the_transformers_state_dict_order() {
        let mut keys = vec![
            "lm_head.weight",
            "model.norm.weight",
            "model.layers.10.self_attn.q_proj.weight",
            "model.layers.2.post_attention_layernorm.weight",
            "model.layers.2.input_layernorm.weight",
            "model.layers.2.mlp.down_proj.weight",
            "model.layers.2.self_attn.k_norm.weight",
            "model.layers.2.self_attn.q_proj.weight",
            "something.else",
            "model.embed_tokens.weight",
        ];
        keys.sort_by_key(|k| hf_rank(k));
        assert_eq!(
            keys,
            vec![
                "model.embed_tokens.weight",
                "model.layers.2.self_attn.q_proj.weight",
                "model.layers.2.self_attn.k_norm.weight",
                "model.layers.2.mlp.down_proj.weight",
                "model.layers.2.input_layernorm.weight",
                "model.layers.2.post_attention_layernorm.weight",
                "model.layers.10.self_attn.q_proj.weight",
                "model.norm.weight",
                "lm_head.weight",
                "something.else",
            ]
        );
    }

    #[test]
    fn tied_config_makes_the_head_optional() {
        let mut cfg = Qwen3Config::qwen3_4b();
        cfg.num_hidden_layers = 1;
        cfg.tie_word_embeddings = true;
        let head = WeightSchema::new(&cfg).get(LM_HEAD_KEY).cloned().unwrap();
        assert!(!head.required && head.is_packed() && head.base() == "lm_head");
        cfg.tie_word_embeddings = false;
        assert!(WeightSchema::new(&cfg).get(LM_HEAD_KEY).unwrap().required);
    }
}
