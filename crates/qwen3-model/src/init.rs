//! A freshly initialised dense model for pretraining, as Hugging Face
//! initialises `Qwen3ForCausalLM`: every projection and the embedding drawn
//! from normal(0, `initializer_range`), every RMSNorm weight at 1. The
//! projections are dense master weights with [`Precision::DENSE`]; a
//! [`crate::QuantRecipe`] decides later whether they train through NVFP4.
//!
//! Numbers come from the same counter-based generator as the synthetic
//! weights (`random.rs`), so a model is a pure function of (config, seed).

use std::path::Path;

use tch::{Kind, Tensor};

use crate::config::Qwen3Config;
use crate::error::{Error, Result};
use crate::linear::LinearWeight;
use crate::model::{LoadOptions, Qwen3Model};
use crate::norm::RmsNorm;
use crate::precision::Precision;
use crate::random::{standard_normal, stream_of};
use crate::weights::schema::{LayerTensor, TensorRole};

/// transformers' default `initializer_range`.
pub const DEFAULT_INITIALIZER_RANGE: f64 = 0.02;

/// The `initializer_range` of a `config.json` (transformers' default 0.02
/// when absent); an error names a value that is not a positive number.
pub fn initializer_range(config_json: &Path) -> Result<f64> {
    let text = std::fs::read_to_string(config_json).map_err(|source| Error::Io {
        path: config_json.to_path_buf(),
        source,
    })?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|source| Error::ConfigJson {
        path: Some(config_json.to_path_buf()),
        source,
    })?;
    match v.get("initializer_range") {
        None | Some(serde_json::Value::Null) => Ok(DEFAULT_INITIALIZER_RANGE),
        Some(r) => match r.as_f64() {
            Some(x) if x.is_finite() && x > 0.0 => Ok(x),
            _ => Err(Error::InvalidConfig {
                key: "initializer_range",
                got: r.to_string(),
                reason: "must be a positive number".into(),
            }),
        },
    }
}

impl Qwen3Model {
    /// A dense model for `cfg` with Hugging Face's initialisation (see the
    /// module doc): projections normal(0, `std`) in f32, the embedding
    /// normal(0, `std`) in the compute kind, norms at 1.
    pub fn init_dense(cfg: &Qwen3Config, opts: &LoadOptions, seed: u64, std: f64) -> Result<Self> {
        if !(std.is_finite() && std > 0.0) {
            return Err(Error::InvalidArgument {
                name: "std",
                reason: format!("{std} is not a positive number"),
            });
        }
        // The structure (and the backend) come from the synthetic path; every
        // tensor is then replaced.
        let mut model = Qwen3Model::random(cfg, opts, seed)?;
        let device = opts.device;
        let draw =
            |key: &str, shape: &[i64]| standard_normal(shape, seed, stream_of(key), device) * std;
        let v = cfg.vocab_size as i64;
        let h = cfg.hidden_size as i64;
        model.embed_tokens = draw(&TensorRole::Embedding.key(), &[v, h]).to_kind(opts.dtype);
        let ones = |norm: &mut RmsNorm| {
            norm.weight = Tensor::ones_like(&norm.weight);
        };
        for (l, layer) in model.layers.iter_mut().enumerate() {
            let a = &mut layer.self_attn;
            let m = &mut layer.mlp;
            let projections = [
                (LayerTensor::QProj, &mut a.q_proj),
                (LayerTensor::KProj, &mut a.k_proj),
                (LayerTensor::VProj, &mut a.v_proj),
                (LayerTensor::OProj, &mut a.o_proj),
                (LayerTensor::GateProj, &mut m.gate_proj),
                (LayerTensor::UpProj, &mut m.up_proj),
                (LayerTensor::DownProj, &mut m.down_proj),
            ];
            for (tensor, lin) in projections {
                let [rows, cols] = lin.weight.shape();
                let w = draw(&tensor.key(l), &[rows as i64, cols as i64]);
                lin.weight = LinearWeight::Master(w.to_kind(Kind::Float));
                lin.precision = Precision::DENSE;
            }
            ones(&mut a.q_norm);
            ones(&mut a.k_norm);
            ones(&mut layer.input_layernorm);
            ones(&mut layer.post_attention_layernorm);
        }
        ones(&mut model.norm);
        if let Some(lin) = &mut model.lm_head {
            lin.weight = LinearWeight::Master(draw(&TensorRole::Head.key(), &[v, h]));
            lin.precision = Precision::DENSE;
        }
        Ok(model)
    }
}
