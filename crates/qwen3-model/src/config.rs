//! `Qwen3Config`: the hyper-parameters read from a Hugging Face `config.json`.
//!
//! Both serialisations in the wild are read: transformers 4.x (`rope_theta`,
//! `rope_scaling`, `torch_dtype` at the top level, as in the official
//! Qwen3-4B-Instruct-2507 file) and transformers 5.x (`rope_parameters`,
//! `dtype`, `layer_types`). Options this implementation does not wire
//! (sliding window, RoPE scaling, biases, other activations, other
//! architectures) are errors naming the key: a model that silently ignored
//! them would run with the wrong math.

use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use crate::error::{Error, Result};

/// Hyper-parameters of a Qwen3 decoder (dense, no sliding window).
#[derive(Clone, Debug, PartialEq)]
pub struct Qwen3Config {
    /// Rows of the embedding and of the logits.
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the SiLU-gated MLP.
    pub intermediate_size: usize,
    /// Number of decoder blocks.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (GQA: each serves `num_attention_heads / num_key_value_heads` query heads).
    pub num_key_value_heads: usize,
    /// Width of one head; independent of `hidden_size / num_attention_heads`.
    pub head_dim: usize,
    /// Epsilon of every RMSNorm.
    pub rms_norm_eps: f64,
    /// RoPE base; the one value used by training and inference alike.
    pub rope_theta: f64,
    /// Longest context the checkpoint was trained for (informational).
    pub max_position_embeddings: usize,
    /// When true and the weights hold no `lm_head`, logits use the embedding matrix.
    pub tie_word_embeddings: bool,
    /// Beginning-of-sequence token, if the config names one.
    pub bos_token_id: Option<u32>,
    /// End-of-sequence token(s) (`eos_token_id` may be a number or a list).
    pub eos_token_ids: Vec<u32>,
    /// Padding token, if any.
    pub pad_token_id: Option<u32>,
    /// Storage dtype of the published checkpoint (`torch_dtype`, or `dtype` in transformers 5).
    pub torch_dtype: Option<String>,
}

/// The raw JSON keys; every option that changes the wiring is kept as a
/// `Value` so it can be checked (and rejected) rather than ignored.
#[derive(Deserialize)]
struct RawConfig {
    architectures: Option<Vec<String>>,
    model_type: Option<String>,
    vocab_size: Option<usize>,
    hidden_size: Option<usize>,
    intermediate_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    hidden_act: Option<String>,
    rms_norm_eps: Option<f64>,
    rope_theta: Option<f64>,
    rope_scaling: Option<Value>,
    rope_parameters: Option<Value>,
    max_position_embeddings: Option<usize>,
    tie_word_embeddings: Option<bool>,
    attention_bias: Option<bool>,
    mlp_bias: Option<bool>,
    attention_dropout: Option<f64>,
    use_sliding_window: Option<bool>,
    layer_types: Option<Vec<String>>,
    bos_token_id: Option<u32>,
    eos_token_id: Option<Value>,
    pad_token_id: Option<u32>,
    torch_dtype: Option<String>,
    dtype: Option<String>,
}

const ARCHITECTURES: [&str; 1] = ["Qwen3ForCausalLM"];

fn unsupported(key: &str, got: impl ToString, hint: &'static str) -> Error {
    Error::UnsupportedConfig {
        key: key.to_string(),
        got: got.to_string(),
        hint,
    }
}

fn json(v: &impl serde::Serialize) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "?".into())
}

impl RawConfig {
    /// Rejects every option whose wiring this crate does not implement.
    fn check_supported(&self) -> Result<()> {
        if let Some(archs) = &self.architectures {
            if archs.is_empty() || archs.iter().any(|a| !ARCHITECTURES.contains(&a.as_str())) {
                return Err(unsupported(
                    "architectures",
                    json(archs),
                    "only Qwen3ForCausalLM",
                ));
            }
        }
        if let Some(t) = self.model_type.as_deref().filter(|t| *t != "qwen3") {
            return Err(unsupported("model_type", json(&t), "only \"qwen3\""));
        }
        if let Some(act) = self.hidden_act.as_deref().filter(|a| *a != "silu") {
            return Err(unsupported("hidden_act", json(&act), "only \"silu\""));
        }
        if self.attention_bias == Some(true) {
            return Err(unsupported(
                "attention_bias",
                true,
                "Qwen3 projections have no bias",
            ));
        }
        if self.mlp_bias == Some(true) {
            return Err(unsupported(
                "mlp_bias",
                true,
                "Qwen3 projections have no bias",
            ));
        }
        if self.use_sliding_window == Some(true) {
            return Err(unsupported(
                "use_sliding_window",
                true,
                "only full causal attention",
            ));
        }
        if let Some(t) = self
            .layer_types
            .iter()
            .flatten()
            .find(|t| *t != "full_attention")
        {
            return Err(unsupported(
                "layer_types",
                json(t),
                "only \"full_attention\" layers",
            ));
        }
        if let Some(s) = self.rope_scaling.as_ref().filter(|v| !v.is_null()) {
            return Err(unsupported(
                "rope_scaling",
                s,
                "only plain RoPE (rope_scaling: null)",
            ));
        }
        if let Some(p) = self.attention_dropout.filter(|p| *p != 0.0) {
            return Err(unsupported("attention_dropout", p, "only 0.0"));
        }
        Ok(())
    }

    /// `rope_theta` (4.x) or `rope_parameters.rope_theta` (5.x); required,
    /// because a silent default is how the original ended up with two thetas.
    fn rope_theta(&self) -> Result<f64> {
        let from_params = match self.rope_parameters.as_ref().filter(|v| !v.is_null()) {
            None => None,
            Some(p) => {
                let kind = p.get("rope_type").or_else(|| p.get("type"));
                if let Some(k) = kind.filter(|k| k.as_str() != Some("default")) {
                    return Err(unsupported(
                        "rope_parameters.rope_type",
                        k,
                        "only \"default\" RoPE",
                    ));
                }
                let theta = p.get("rope_theta").ok_or(Error::MissingConfigKey {
                    key: "rope_parameters.rope_theta",
                })?;
                Some(theta.as_f64().ok_or_else(|| Error::InvalidConfig {
                    key: "rope_theta",
                    got: theta.to_string(),
                    reason: "not a number".into(),
                })?)
            }
        };
        match (self.rope_theta, from_params) {
            (Some(a), Some(b)) if a != b => Err(Error::InvalidConfig {
                key: "rope_theta",
                got: format!("{a} (top level) vs {b} (rope_parameters)"),
                reason: "the two places disagree".into(),
            }),
            (Some(t), _) | (None, Some(t)) => Ok(t),
            (None, None) => Err(Error::MissingConfigKey { key: "rope_theta" }),
        }
    }

    fn eos_token_ids(&self) -> Result<Vec<u32>> {
        let bad = |v: &Value| Error::InvalidConfig {
            key: "eos_token_id",
            got: v.to_string(),
            reason: "expected a token id or a list of token ids".into(),
        };
        let as_id = |v: &Value| {
            v.as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| bad(v))
        };
        match &self.eos_token_id {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::Array(items)) => items.iter().map(as_id).collect(),
            Some(v) => Ok(vec![as_id(v)?]),
        }
    }
}

fn required(v: Option<usize>, key: &'static str) -> Result<usize> {
    v.ok_or(Error::MissingConfigKey { key })
}

impl Qwen3Config {
    /// Reads and validates a `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text).map_err(|e| match e {
            Error::ConfigJson { source, .. } => Error::ConfigJson {
                path: Some(path.to_path_buf()),
                source,
            },
            other => other,
        })
    }

    /// Parses and validates the text of a `config.json`.
    pub fn from_json_str(s: &str) -> Result<Self> {
        Self::parse(s)
    }

    fn parse(s: &str) -> Result<Self> {
        let raw: RawConfig =
            serde_json::from_str(s).map_err(|source| Error::ConfigJson { path: None, source })?;
        raw.check_supported()?;
        let num_attention_heads = required(raw.num_attention_heads, "num_attention_heads")?;
        let cfg = Qwen3Config {
            vocab_size: required(raw.vocab_size, "vocab_size")?,
            hidden_size: required(raw.hidden_size, "hidden_size")?,
            intermediate_size: required(raw.intermediate_size, "intermediate_size")?,
            num_hidden_layers: required(raw.num_hidden_layers, "num_hidden_layers")?,
            num_attention_heads,
            // Defaults below are those of transformers' Qwen3Config.
            num_key_value_heads: raw.num_key_value_heads.unwrap_or(num_attention_heads),
            head_dim: raw.head_dim.unwrap_or(128),
            rms_norm_eps: raw.rms_norm_eps.unwrap_or(1e-6),
            rope_theta: raw.rope_theta()?,
            max_position_embeddings: raw.max_position_embeddings.unwrap_or(32768),
            tie_word_embeddings: raw.tie_word_embeddings.unwrap_or(false),
            bos_token_id: raw.bos_token_id,
            eos_token_ids: raw.eos_token_ids()?,
            pad_token_id: raw.pad_token_id,
            torch_dtype: raw.torch_dtype.clone().or_else(|| raw.dtype.clone()),
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// The published Qwen3-4B-Instruct-2507 configuration (handy as a base:
    /// `Qwen3Config { num_hidden_layers: 2, ..Qwen3Config::qwen3_4b() }`).
    pub fn qwen3_4b() -> Self {
        Qwen3Config {
            vocab_size: 151936,
            hidden_size: 2560,
            intermediate_size: 9728,
            num_hidden_layers: 36,
            num_attention_heads: 32,
            num_key_value_heads: 8,
            head_dim: 128,
            rms_norm_eps: 1e-6,
            rope_theta: 5_000_000.0,
            max_position_embeddings: 262144,
            tie_word_embeddings: true,
            bos_token_id: Some(151643),
            eos_token_ids: vec![151645],
            pad_token_id: None,
            torch_dtype: Some("bfloat16".into()),
        }
    }

    /// Checks that the numbers describe a model this crate can build.
    pub fn validate(&self) -> Result<()> {
        let positive: [(&'static str, usize); 7] = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("head_dim", self.head_dim),
        ];
        for (key, v) in positive {
            if v == 0 {
                return Err(invalid(key, v, "must be > 0"));
            }
        }
        if !self
            .num_attention_heads
            .is_multiple_of(self.num_key_value_heads)
        {
            let reason = format!(
                "num_attention_heads {} is not a multiple of it (GQA)",
                self.num_attention_heads
            );
            return Err(invalid(
                "num_key_value_heads",
                self.num_key_value_heads,
                &reason,
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(invalid(
                "head_dim",
                self.head_dim,
                "must be even (rotate-half RoPE)",
            ));
        }
        // Every projection is NVFP4 with 16-element blocks along its input.
        let block = nvfp4_kernels::BLOCK_SIZE;
        let inputs = [
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("head_dim", self.num_attention_heads * self.head_dim),
        ];
        for (key, v) in inputs {
            if !v.is_multiple_of(block) {
                let reason = format!(
                    "a projection input of {v} is not a multiple of the NVFP4 block {block}"
                );
                return Err(invalid(key, v, &reason));
            }
        }
        for (key, v) in [
            ("rms_norm_eps", self.rms_norm_eps),
            ("rope_theta", self.rope_theta),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return Err(invalid(key, v, "must be finite and > 0"));
            }
        }
        Ok(())
    }

    /// A transformers-4.x style `config.json` that `from_json_str` reads back equal.
    pub fn to_json_string(&self) -> String {
        let eos = match self.eos_token_ids.as_slice() {
            [] => Value::Null,
            [one] => Value::from(*one),
            many => Value::from(many.to_vec()),
        };
        let v = serde_json::json!({
            "architectures": ["Qwen3ForCausalLM"],
            "attention_bias": false,
            "attention_dropout": 0.0,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": eos,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "max_position_embeddings": self.max_position_embeddings,
            "model_type": "qwen3",
            "num_attention_heads": self.num_attention_heads,
            "num_hidden_layers": self.num_hidden_layers,
            "num_key_value_heads": self.num_key_value_heads,
            "pad_token_id": self.pad_token_id,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_scaling": null,
            "rope_theta": self.rope_theta,
            "sliding_window": null,
            "tie_word_embeddings": self.tie_word_embeddings,
            "torch_dtype": self.torch_dtype,
            "use_cache": true,
            "use_sliding_window": false,
            "vocab_size": self.vocab_size,
        });
        serde_json::to_string_pretty(&v).unwrap_or_default()
    }

    /// Query heads served by one key/value head.
    pub fn kv_groups(&self) -> usize {
        self.num_attention_heads / self.num_key_value_heads
    }

    /// Output width of `q_proj` (`num_attention_heads * head_dim`).
    pub fn q_dim(&self) -> usize {
        self.num_attention_heads * self.head_dim
    }

    /// Output width of `k_proj` / `v_proj` (`num_key_value_heads * head_dim`).
    pub fn kv_dim(&self) -> usize {
        self.num_key_value_heads * self.head_dim
    }
}

fn invalid(key: &'static str, got: impl ToString, reason: &str) -> Error {
    Error::InvalidConfig {
        key,
        got: got.to_string(),
        reason: reason.to_string(),
    }
}
