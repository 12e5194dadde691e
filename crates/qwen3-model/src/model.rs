//! `Qwen3Model`: embedding -> N decoder blocks -> final RMSNorm -> lm_head.
//!
//! Construction lives in `loader.rs` (from `.dat`, safetensors or random
//! weights), training helpers in `train.rs`; this file is the forward pass.

use std::sync::Arc;

use nvfp4_kernels::{ComputePath, Nvfp4Backend};
use tch::{Device, Kind, Tensor};

use crate::alloc::guard_libtorch;
use crate::attention::AttnContext;
use crate::block::DecoderLayer;
use crate::config::Qwen3Config;
use crate::error::{Error, Result};
use crate::kv_cache::KvCache;
use crate::linear::Linear;
use crate::norm::RmsNorm;
use crate::precision::Precision;
use crate::rope::Rotary;

/// How to build a model: where, in which compute precision, through which NVFP4 path.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LoadOptions {
    /// Device that holds the weights and runs the forward.
    pub device: Device,
    /// Compute kind of activations and dense weights (f32, bf16 or f16); norms always run in f32.
    pub dtype: Kind,
    /// NVFP4 compute path, resolved once per model (never a silent fallback).
    pub compute_path: ComputePath,
    /// Also reject tensors the model does not use (missing or misshapen ones are always errors).
    pub strict: bool,
}

impl LoadOptions {
    /// f32 on CPU (parity with references), bf16 on CUDA; `Auto` path; strict.
    pub fn new(device: Device) -> Self {
        let dtype = if device.is_cuda() {
            Kind::BFloat16
        } else {
            Kind::Float
        };
        LoadOptions {
            device,
            dtype,
            compute_path: ComputePath::Auto,
            strict: true,
        }
    }

    pub(crate) fn validate(&self) -> Result<()> {
        match self.dtype {
            Kind::Float | Kind::BFloat16 | Kind::Half => Ok(()),
            other => Err(Error::InvalidArgument {
                name: "LoadOptions::dtype",
                reason: format!("{other:?} is not a compute kind; use Float, BFloat16 or Half"),
            }),
        }
    }
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions::new(Device::Cpu)
    }
}

/// A Qwen3 decoder with NVFP4 projections (or trainable master weights).
#[derive(Debug)]
pub struct Qwen3Model {
    pub(crate) cfg: Qwen3Config,
    pub(crate) embed_tokens: Tensor, // [V, H]
    pub(crate) layers: Vec<DecoderLayer>,
    pub(crate) norm: RmsNorm, // [H]
    /// `None`: logits use `embed_tokens` (tied, and no `lm_head` in the weights).
    pub(crate) lm_head: Option<Linear>, // [V, H]
    /// How the tied head (the embedding as logits projection) rounds its operands.
    pub(crate) tied_head: Precision,
    pub(crate) rotary: Rotary,
    pub(crate) backend: Arc<Nvfp4Backend>,
    pub(crate) device: Device,
    pub(crate) dtype: Kind,
}

impl Qwen3Model {
    /// The configuration the model was built for.
    pub fn config(&self) -> &Qwen3Config {
        &self.cfg
    }

    /// Device of every weight.
    pub fn device(&self) -> Device {
        self.device
    }

    /// Compute kind of activations.
    pub fn dtype(&self) -> Kind {
        self.dtype
    }

    /// The NVFP4 compute path every packed projection uses.
    pub fn backend(&self) -> &Nvfp4Backend {
        &self.backend
    }

    /// Number of decoder blocks.
    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// True when the logits come from the embedding matrix (no `lm_head` weight).
    pub fn uses_tied_head(&self) -> bool {
        self.lm_head.is_none()
    }

    /// An empty cache for `batch` sequences with room for `capacity`
    /// positions; [`Error::OutOfMemory`](crate::Error::OutOfMemory) with the
    /// bytes when that cannot be allocated.
    pub fn new_cache(&self, batch: usize, capacity: usize) -> Result<KvCache> {
        let c = &self.cfg;
        KvCache::new(
            self.layers.len(),
            batch,
            c.num_key_value_heads,
            c.head_dim,
            capacity,
            self.dtype,
            self.device,
        )
    }

    /// input_ids: i64 [B, T]. With a cache, positions continue from
    /// `cache.len()`, K/V are appended, and each query of the chunk sees the
    /// cache plus the chunk positions up to its own. Returns logits [B, T, vocab] f32.
    pub fn forward(&self, input_ids: &Tensor, cache: Option<&mut KvCache>) -> Result<Tensor> {
        self.logits(input_ids, cache, None, false)
    }

    /// [`Qwen3Model::forward`] that projects only the last position: logits
    /// `[B, 1, vocab]` f32. What generation needs after a prompt, without
    /// the `[T, vocab]` head matmul and its f32 copy for the other positions.
    pub fn forward_last(&self, input_ids: &Tensor, cache: Option<&mut KvCache>) -> Result<Tensor> {
        self.logits(input_ids, cache, None, true)
    }

    /// [`Qwen3Model::forward`] of a left-padded batch: row b's first `pad[b]`
    /// slots (counted from the cache's first slot, or from the input's without
    /// a cache) are padding. Padding keys are never attended, and row b's
    /// first real token is RoPE position 0, so each row's logits are those of
    /// its real tokens run alone (up to rounding). A cache must be used with
    /// the same `pad` in every call. The ids in padding slots are any valid ids.
    /// Returns logits `[B, T, vocab]` f32 (padding rows' values are meaningless).
    pub fn forward_left_padded(
        &self,
        input_ids: &Tensor,
        pad: &[usize],
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        self.logits(input_ids, cache, Some(pad), false)
    }

    /// [`Qwen3Model::forward_left_padded`] that projects only the last
    /// position (the one each row's next token follows): logits `[B, 1, vocab]` f32.
    pub fn forward_last_left_padded(
        &self,
        input_ids: &Tensor,
        pad: &[usize],
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        self.logits(input_ids, cache, Some(pad), true)
    }

    /// The forward behind the four `forward*` entry points: the hidden
    /// states (left-padded when `pad` is given), then the head over every
    /// position or only the last.
    fn logits(
        &self,
        input_ids: &Tensor,
        cache: Option<&mut KvCache>,
        pad: Option<&[usize]>,
        last_only: bool,
    ) -> Result<Tensor> {
        guard_libtorch("forward", || {
            let x = self.hidden_states(input_ids, cache, pad)?;
            if !last_only {
                return self.head(&x);
            }
            let t = x.size()[1];
            self.head(&x.f_narrow(1, t - 1, 1)?)
        })
    }

    /// Embedding and every block (the final norm excluded): `[B, T, H]`.
    /// `pad`: left padding per row (see [`Qwen3Model::forward_left_padded`]).
    fn hidden_states(
        &self,
        input_ids: &Tensor,
        cache: Option<&mut KvCache>,
        pad: Option<&[usize]>,
    ) -> Result<Tensor> {
        let (b, t) = self.check_ids(input_ids)?;
        let past = cache.as_deref().map_or(0, KvCache::len);
        if let Some(pad) = pad {
            check_pad(pad, b, past + t)?;
        }
        let context = |past: usize| match pad {
            Some(pad) => AttnContext::left_padded(&self.rotary, pad, past, t, self.device),
            None => AttnContext::new(&self.rotary, past, past, t, self.device),
        };
        let mut x = self.embed(&input_ids.to_device(self.device)); // [B, T, H]
        match cache {
            None => {
                let ctx = context(0);
                for layer in &self.layers {
                    x = layer.forward(&x, &ctx, None)?;
                }
            }
            Some(cache) => {
                let c = &self.cfg;
                cache.check_fits(
                    self.layers.len(),
                    b,
                    c.num_key_value_heads,
                    c.head_dim,
                    self.dtype,
                    self.device,
                )?;
                cache.reserve(t)?;
                let ctx = context(past);
                for (i, layer) in self.layers.iter().enumerate() {
                    x = layer.forward(&x, &ctx, Some((&mut *cache, i)))?;
                }
                cache.commit(t);
            }
        }
        Ok(x)
    }

    /// Checks kind, rank and id range (an out-of-range id would otherwise
    /// abort inside a device kernel); returns (B, T).
    fn check_ids(&self, ids: &Tensor) -> Result<(usize, usize)> {
        let bad = |reason: String| Error::BadInput {
            name: "input_ids",
            reason,
        };
        let size = ids.size();
        if ids.kind() != Kind::Int64 || size.len() != 2 {
            return Err(bad(format!(
                "expected i64 [batch, seq], got {:?} {size:?}",
                ids.kind()
            )));
        }
        if size[0] == 0 || size[1] == 0 {
            return Err(bad(format!("shape {size:?} holds no tokens")));
        }
        let (lo, hi) = (ids.f_min()?.int64_value(&[]), ids.f_max()?.int64_value(&[]));
        let vocab = self.cfg.vocab_size as i64;
        if lo < 0 || hi >= vocab {
            let id = if lo < 0 { lo } else { hi };
            return Err(bad(format!(
                "token id {id} is outside the vocabulary 0..{vocab}"
            )));
        }
        Ok((size[0] as usize, size[1] as usize))
    }

    /// Token embeddings [B, T, H] in the compute kind (FR-06: a plain lookup).
    ///
    /// # Panics
    /// If an id is outside the vocabulary; [`Qwen3Model::forward`] checks ids first.
    pub fn embed(&self, input_ids: &Tensor) -> Tensor {
        Tensor::embedding(&self.embed_tokens, input_ids, -1, false, false).to_kind(self.dtype)
    }

    /// Runs block `layer` on hidden [B, T, H] at positions
    /// `positions_offset..+T`, causal within the block input, without a cache.
    /// With `embed` and `head`, this lets a trainer checkpoint activations per block.
    pub fn block_forward(
        &self,
        layer: usize,
        hidden: &Tensor,
        positions_offset: usize,
    ) -> Result<Tensor> {
        let block = self
            .layers
            .get(layer)
            .ok_or_else(|| Error::InvalidArgument {
                name: "layer",
                reason: format!("{layer} >= number of layers {}", self.layers.len()),
            })?;
        let (_, t, _) = self.check_hidden(hidden)?;
        let ctx = AttnContext::new(&self.rotary, positions_offset, 0, t as usize, self.device);
        block.forward(&hidden.to_kind(self.dtype), &ctx, None)
    }

    /// [B, T, H] in the model's hidden size, or an error naming the shape.
    pub(crate) fn check_hidden(&self, hidden: &Tensor) -> Result<(i64, i64, i64)> {
        let size = hidden.size();
        match size.as_slice() {
            &[b, t, h] if h == self.cfg.hidden_size as i64 => Ok((b, t, h)),
            _ => Err(Error::BadInput {
                name: "hidden",
                reason: format!(
                    "shape {size:?}, expected [batch, seq, {}]",
                    self.cfg.hidden_size
                ),
            }),
        }
    }

    /// Final RMSNorm and lm_head (or the tied embedding): hidden [B, T, H] -> logits [B, T, V] f32.
    pub fn head(&self, hidden: &Tensor) -> Result<Tensor> {
        let x = self.norm.forward(hidden);
        let logits = match &self.lm_head {
            Some(lm_head) => lm_head.forward(&x)?,
            None => {
                let kernels = self.backend.uses_kernels();
                let x = self.tied_head.input(&x, kernels)?;
                let w = self
                    .tied_head
                    .weight(&self.embed_tokens, x.kind(), kernels)?;
                x.f_linear::<Tensor>(&w, None)?
            }
        };
        Ok(logits.to_kind(Kind::Float))
    }
}

/// One padding count per row, each row keeping at least one real slot of the
/// `slots` the forward will have seen (cached ones included).
fn check_pad(pad: &[usize], batch: usize, slots: usize) -> Result<()> {
    let bad = |reason: String| Error::BadInput {
        name: "pad",
        reason,
    };
    if pad.len() != batch {
        return Err(bad(format!(
            "{} padding counts for a batch of {batch} rows",
            pad.len()
        )));
    }
    if let Some((row, &p)) = pad.iter().enumerate().find(|(_, &p)| p >= slots) {
        return Err(bad(format!(
            "row {row} has {p} padding slots of {slots}: no real token left"
        )));
    }
    Ok(())
}
