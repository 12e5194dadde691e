//! The model's weights as an exporter sees them: by HF key, with the
//! NVFP4 data a projection stores and the dense values the model computes
//! with.

use std::collections::HashMap;

use nvfp4_kernels::{Nvfp4Host, ScaleMode};
use tch::{Kind, Tensor};

use crate::error::{Error, Result};
use crate::model::Qwen3Model;
use crate::train::WeightRef;
use crate::weights::schema::{hf_rank, is_packed_key, EMBED_KEY, LM_HEAD_KEY};

/// Every weight of a model under its HF key.
pub(crate) struct ModelWeights<'a> {
    items: Vec<(String, WeightRef<'a>)>,
    index: HashMap<String, usize>,
    tied_head: bool,
}

impl<'a> ModelWeights<'a> {
    pub(crate) fn new(model: &'a Qwen3Model) -> Self {
        let items = model.named_weights();
        let index = items
            .iter()
            .enumerate()
            .map(|(i, (k, _))| (k.clone(), i))
            .collect();
        Self {
            items,
            index,
            tied_head: model.uses_tied_head(),
        }
    }

    /// Keys in HF order (transformers' `state_dict()` order, `hf_rank`).
    pub(crate) fn keys_hf_order(&self) -> Vec<&str> {
        let mut keys: Vec<&str> = self.items.iter().map(|(k, _)| k.as_str()).collect();
        keys.sort_by_key(|k| hf_rank(k));
        keys
    }

    pub(crate) fn contains(&self, key: &str) -> bool {
        self.index.contains_key(key)
    }

    fn get(&self, key: &str) -> Option<&WeightRef<'a>> {
        self.index.get(key).map(|&i| &self.items[i].1)
    }

    /// The weight whose NVFP4 form belongs under projection key `key`: the
    /// key itself, or, for `lm_head.weight` of a tied model, the embedding
    /// (the head it really computes with; the original exported a stale
    /// head instead).
    pub(crate) fn projection_source(&self, key: &str) -> Option<&str> {
        if let Some(&i) = self.index.get(key) {
            return Some(self.items[i].0.as_str());
        }
        (key == LM_HEAD_KEY && self.tied_head && self.contains(EMBED_KEY)).then_some(EMBED_KEY)
    }

    /// Logical shape of a weight (`[out, in]` for a projection).
    pub(crate) fn shape(&self, key: &str) -> Vec<usize> {
        match self.get(key) {
            Some(WeightRef::Packed(q)) => vec![q.rows(), q.cols()],
            Some(WeightRef::Dense(t)) => t.size().iter().map(|&d| d as usize).collect(),
            None => Vec::new(),
        }
    }

    /// The global scale of a frozen two-level projection, if any.
    pub(crate) fn packed_global_scale(&self, key: &str) -> Option<f32> {
        match self.get(key) {
            Some(WeightRef::Packed(q)) => q.global_scale(),
            _ => None,
        }
    }

    /// NVFP4 data for `key`: a frozen projection as stored, a dense (master)
    /// weight quantized with `mode` — the same rounding its `ste` forward used.
    pub(crate) fn quantized(&self, key: &str, mode: ScaleMode) -> Result<Nvfp4Host> {
        match self.get(key) {
            Some(WeightRef::Packed(q)) => Ok(q.to_host()),
            Some(WeightRef::Dense(t)) => Ok(nvfp4_kernels::quantize_named(key, t, mode)
                .map_err(Error::nvfp4_at(key))?
                .to_host()),
            None => unreachable!("callers plan only keys the model has: {key}"),
        }
    }

    /// The values the model computes with for `key`, as `kind`: projections
    /// dequantized from NVFP4 (fake-quantized with `mode` for a master),
    /// everything else as stored. Errors on a non-finite value.
    pub(crate) fn effective(&self, key: &str, mode: ScaleMode, kind: Kind) -> Result<Tensor> {
        let t = self.effective_unchecked(key, mode, kind)?;
        check_finite(key, &t)?;
        Ok(t)
    }

    fn effective_unchecked(&self, key: &str, mode: ScaleMode, kind: Kind) -> Result<Tensor> {
        let ctx = || Error::libtorch(format!("converting weight {key:?} to {kind:?}"));
        match self.get(key) {
            Some(WeightRef::Packed(q)) => {
                nvfp4_kernels::f_dequantize(q, kind).map_err(Error::nvfp4_at(key))
            }
            Some(WeightRef::Dense(t)) if is_packed_key(key) => {
                let fq = nvfp4_kernels::f_fake_quantize(t, mode).map_err(Error::nvfp4_at(key))?;
                fq.f_to_kind(kind).map_err(ctx())
            }
            Some(WeightRef::Dense(t)) => t.detach().f_to_kind(kind).map_err(ctx()),
            None => unreachable!("callers plan only keys the model has: {key}"),
        }
    }

    /// A dense weight as stored (kind unchanged); errors on a non-finite value.
    pub(crate) fn dense(&self, key: &str) -> Result<Option<Tensor>> {
        match self.get(key) {
            Some(WeightRef::Dense(t)) => {
                check_finite(key, t)?;
                Ok(Some(t.detach()))
            }
            _ => Ok(None),
        }
    }
}

/// Refuses NaN and infinities (fake quantization would carry them through).
fn check_finite(key: &str, t: &Tensor) -> Result<()> {
    let finite = t
        .f_isfinite()
        .and_then(|f| f.f_all())
        .and_then(|a| a.f_int64_value(&[]))
        .map_err(Error::libtorch(format!(
            "checking weight {key:?} for non-finite values"
        )))?;
    if finite == 0 {
        return Err(Error::NonFiniteWeight {
            key: key.to_string(),
        });
    }
    Ok(())
}
