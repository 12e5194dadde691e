//! The batch-1 decode step on fused CUDA kernels, replayed as one CUDA graph.
//!
//! The per-op forward (`Qwen3Model::forward`) costs about 60 libtorch
//! launches per block; at batch 1 the GPU finishes each in microseconds, so
//! decode speed is the host's launch rate (docs/PERF.md: 32 ms a token on
//! Qwen3-4B). Here a block is 10 launches of our own kernels (4 NVFP4 GEMVs:
//! q/k/v as one grouped launch, gate/up as one, o and down;
//! 2 RMSNorms with the residual adds folded in, q/k norm + RoPE + cache
//! append, split-K attention and its merge, SiLU*up), all reading the token
//! and position from a device buffer, so the whole step is recorded once
//! into a CUDA graph and replayed with one launch per token.
//!
//! It computes what the per-op forward computes, rounding to bf16 at the same
//! places; only f32 summation orders differ (tests/fused_decode.rs
//! compares the two). The per-op forward stays the reference and the path
//! for everything this step does not cover (CPU, f32, trainable weights,
//! batches, prefill).

use nvfp4_kernels::cuda::{self, AttnScratch, HeadLayout, KernelGraph, KernelStream, QkvIo};
use nvfp4_kernels::Nvfp4Tensor;
use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};
use crate::kv_cache::KvCache;
use crate::linear::{Linear, LinearWeight};
use crate::model::Qwen3Model;
use crate::norm::RmsNorm;
use crate::weights::schema::{LayerTensor, LM_HEAD_KEY};

/// Weights of one block, as the kernels take them.
struct BlockWeights {
    q: Nvfp4Tensor,
    k: Nvfp4Tensor,
    v: Nvfp4Tensor,
    o: Nvfp4Tensor,
    gate: Nvfp4Tensor,
    up: Nvfp4Tensor,
    down: Nvfp4Tensor,
    /// f32 copies of the norm weights (the kernels scale in f32, as the reference).
    input_norm: Tensor,
    post_norm: Tensor,
    q_norm: Tensor,
    k_norm: Tensor,
}

/// Activations of one token; every launch reads and writes these same
/// buffers, so a recorded graph stays valid while they live.
struct StepBuffers {
    /// i32 `[2]`: token id, position.
    meta: Tensor,
    resid: Tensor,
    normed: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    q_rot: Tensor,
    attn: Tensor,
    delta: Tensor,
    gate: Tensor,
    up: Tensor,
    act: Tensor,
    /// bf16 `[vocab]` when the head is an NVFP4 `lm_head`.
    logits: Option<Tensor>,
    scratch: AttnScratch,
}

/// A recorded step and the cache buffers it was recorded with.
struct RecordedStep {
    graph: KernelGraph,
    cache_key: Vec<usize>,
}

/// Batch-1 decoding on fused kernels (see the module docs). Holds shallow
/// clones of the model's weights as they were when it was created.
pub struct FusedDecoder {
    device: Device,
    heads: (usize, usize, usize),
    vocab: usize,
    eps: f32,
    embed: Tensor,
    blocks: Vec<BlockWeights>,
    final_norm: Tensor,
    lm_head: Option<Nvfp4Tensor>,
    inv_freq: Tensor,
    bufs: StepBuffers,
    use_graph: bool,
    recorded: Option<RecordedStep>,
}

impl std::fmt::Debug for FusedDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FusedDecoder")
            .field("device", &self.device)
            .field("blocks", &self.blocks.len())
            .field("use_graph", &self.use_graph)
            .field("graph_nodes", &self.graph_nodes())
            .finish()
    }
}

fn unsupported(reason: impl Into<String>) -> Error {
    Error::FusedDecodeUnsupported {
        reason: reason.into(),
    }
}

fn packed(linear: &Linear, name: &str) -> Result<Nvfp4Tensor> {
    if linear.precision.activations {
        return Err(unsupported(format!(
            "{name} rounds its activations to NVFP4 (W4A4); the fused step runs W4A16"
        )));
    }
    match &linear.weight {
        LinearWeight::Packed(q) => Ok(q.shallow_clone()),
        LinearWeight::Master(_) => Err(unsupported(format!(
            "{name} holds trainable master weights (the fused step reads packed NVFP4)"
        ))),
    }
}

fn norm_f32(norm: &RmsNorm) -> Result<Tensor> {
    Ok(norm.weight.f_to_kind(Kind::Float)?.f_contiguous()?)
}

impl FusedDecoder {
    /// A decoder for `model`, or [`Error::FusedDecodeUnsupported`] naming
    /// the first unmet requirement: a CUDA device whose kernels load, bf16
    /// compute, the kernel compute path, packed NVFP4 projections, and head
    /// sizes the kernels handle. CUDA graphs are on unless the environment
    /// sets `QWEN3_CUDA_GRAPH=0` (another value than 0 or 1 is an error).
    pub fn new(model: &Qwen3Model) -> Result<FusedDecoder> {
        check_model(model)?;
        let c = model.config();
        let blocks = model
            .layers
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let a = &l.self_attn;
                let m = &l.mlp;
                let name = |t: LayerTensor| t.key(i);
                Ok(BlockWeights {
                    q: packed(&a.q_proj, &name(LayerTensor::QProj))?,
                    k: packed(&a.k_proj, &name(LayerTensor::KProj))?,
                    v: packed(&a.v_proj, &name(LayerTensor::VProj))?,
                    o: packed(&a.o_proj, &name(LayerTensor::OProj))?,
                    gate: packed(&m.gate_proj, &name(LayerTensor::GateProj))?,
                    up: packed(&m.up_proj, &name(LayerTensor::UpProj))?,
                    down: packed(&m.down_proj, &name(LayerTensor::DownProj))?,
                    input_norm: norm_f32(&l.input_layernorm)?,
                    post_norm: norm_f32(&l.post_attention_layernorm)?,
                    q_norm: norm_f32(&a.q_norm)?,
                    k_norm: norm_f32(&a.k_norm)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let lm_head = match &model.lm_head {
            Some(h) => Some(packed(h, LM_HEAD_KEY)?),
            None => None,
        };
        let heads = (c.num_attention_heads, c.num_key_value_heads, c.head_dim);
        let bufs = StepBuffers::new(model, lm_head.is_some(), heads)?;
        let use_graph = nvfp4_kernels::env_switch("QWEN3_CUDA_GRAPH", true)?;
        Ok(FusedDecoder {
            device: model.device,
            heads,
            vocab: c.vocab_size,
            eps: model.norm.eps() as f32,
            embed: model.embed_tokens.shallow_clone(),
            blocks,
            final_norm: norm_f32(&model.norm)?,
            lm_head,
            inv_freq: model.rotary.inv_freq().shallow_clone(),
            bufs,
            use_graph,
            recorded: None,
        })
    }

    /// Records and replays CUDA graphs (`true`, the default) or launches
    /// every kernel from the host (`false`: the same kernels, for tests and
    /// for measuring what the graph buys).
    pub fn with_graph(mut self, on: bool) -> Self {
        self.use_graph = on;
        self.recorded = None;
        self
    }

    /// Kernel launches in the recorded step, once one is recorded.
    pub fn graph_nodes(&self) -> Option<usize> {
        self.recorded.as_ref().map(|r| r.graph.nodes())
    }

    /// Feeds `token` at position `cache.len()`, appends its keys and values
    /// to `cache` (batch 1, bf16, made for this model) and returns the next
    /// token's logits, f32 `[vocab]`.
    ///
    /// The first step on a cache runs eagerly and records the graph that
    /// later steps replay; a cache whose buffers moved (another cache, or one
    /// that grew) is recorded anew, so reserve capacity up front.
    pub fn step(&mut self, cache: &mut KvCache, token: u32) -> Result<Tensor> {
        self.check_cache(cache)?;
        if token as usize >= self.vocab {
            return Err(Error::BadInput {
                name: "token",
                reason: format!("id {token} is outside the vocabulary 0..{}", self.vocab),
            });
        }
        cache.reserve(1)?;
        let pos = i32::try_from(cache.len()).map_err(|_| Error::Cache {
            reason: format!("position {} exceeds i32", cache.len()),
        })?;
        let meta = Tensor::f_from_slice(&[token as i32, pos])?;
        self.bufs.meta.f_copy_(&meta)?;
        let key = cache_key(cache);
        match &self.recorded {
            Some(r) if self.use_graph && r.cache_key == key => r.graph.replay()?,
            _ => {
                self.record(&KernelStream::eager(self.device)?, cache)?;
                if self.use_graph {
                    let graph = cuda::capture_graph(self.device, |s| self.record(s, cache))?;
                    self.recorded = Some(RecordedStep {
                        graph,
                        cache_key: key,
                    });
                }
            }
        }
        cache.commit(1);
        self.logits()
    }

    fn check_cache(&self, cache: &KvCache) -> Result<()> {
        let (_, kv_heads, head_dim) = self.heads;
        let layers = self.blocks.len();
        cache.check_fits(layers, 1, kv_heads, head_dim, Kind::BFloat16, self.device)
    }

    /// Launches one step on `s`: embedding, every block, final norm and
    /// (for an NVFP4 head) the logits.
    fn record(&self, s: &KernelStream, cache: &KvCache) -> Result<()> {
        let b = &self.bufs;
        let (hq, hkv, d) = self.heads;
        let layout = HeadLayout {
            q_heads: hq,
            kv_heads: hkv,
            head_dim: d,
            capacity: cache.capacity(),
        };
        cuda::embed_row(s, &self.embed, &b.meta, &b.resid)?;
        for (i, w) in self.blocks.iter().enumerate() {
            // The previous block's MLP output is still to be added.
            let delta = (i > 0).then_some(&b.delta);
            cuda::rmsnorm(s, &b.resid, delta, &w.input_norm, &b.normed, self.eps)?;
            self.attention(s, &layout, w, cache.layer_buffers(i))?;
            cuda::rmsnorm(
                s,
                &b.resid,
                Some(&b.delta),
                &w.post_norm,
                &b.normed,
                self.eps,
            )?;
            self.mlp(s, w)?;
        }
        cuda::rmsnorm(
            s,
            &b.resid,
            Some(&b.delta),
            &self.final_norm,
            &b.normed,
            self.eps,
        )?;
        if let (Some(head), Some(logits)) = (&self.lm_head, &b.logits) {
            cuda::gemv_on(
                s,
                &b.normed.view([1, -1]),
                head,
                &logits.view([1, -1]),
                None,
            )?;
        }
        Ok(())
    }

    /// normed -> q/k/v (one launch) -> norm + RoPE + cache append -> attention -> o_proj -> delta.
    fn attention(
        &self,
        s: &KernelStream,
        layout: &HeadLayout,
        w: &BlockWeights,
        (k_cache, v_cache): (&Tensor, &Tensor),
    ) -> Result<()> {
        let b = &self.bufs;
        let x = b.normed.view([1, -1]);
        let (q, k, v) = (b.q.view([1, -1]), b.k.view([1, -1]), b.v.view([1, -1]));
        cuda::gemv_group_on(s, &x, &[(&w.q, &q), (&w.k, &k), (&w.v, &v)], None)?;
        let io = QkvIo {
            q: &b.q,
            k: &b.k,
            v: &b.v,
            q_out: &b.q_rot,
            k_cache,
            v_cache,
        };
        let (meta, inv_freq) = (&b.meta, &self.inv_freq);
        cuda::qk_norm_rope_append(
            s, layout, &io, &w.q_norm, &w.k_norm, inv_freq, meta, self.eps,
        )?;
        let cache = (k_cache, v_cache);
        cuda::attention(s, layout, &b.q_rot, cache, meta, &b.scratch, &b.attn)?;
        cuda::gemv_on(s, &b.attn.view([1, -1]), &w.o, &b.delta.view([1, -1]), None)?;
        Ok(())
    }

    /// normed -> gate/up (one launch) -> SiLU(gate) * up -> down_proj -> delta.
    fn mlp(&self, s: &KernelStream, w: &BlockWeights) -> Result<()> {
        let b = &self.bufs;
        let x = b.normed.view([1, -1]);
        let (gate, up) = (b.gate.view([1, -1]), b.up.view([1, -1]));
        cuda::gemv_group_on(s, &x, &[(&w.gate, &gate), (&w.up, &up)], None)?;
        cuda::silu_mul(s, &b.gate, &b.up, &b.act)?;
        cuda::gemv_on(
            s,
            &b.act.view([1, -1]),
            &w.down,
            &b.delta.view([1, -1]),
            None,
        )?;
        Ok(())
    }

    /// f32 `[vocab]` logits of the step just run (a fresh tensor: the
    /// buffers are overwritten by the next step).
    fn logits(&self) -> Result<Tensor> {
        let logits = match &self.bufs.logits {
            Some(l) => l.f_to_kind(Kind::Float)?,
            // Tied head: the bf16 embedding as a dense projection, as Qwen3Model::head.
            None => self
                .bufs
                .normed
                .f_linear::<Tensor>(&self.embed, None)?
                .f_to_kind(Kind::Float)?,
        };
        Ok(logits)
    }
}

/// Addresses of every cache buffer: a recorded graph writes to exactly these.
fn cache_key(cache: &KvCache) -> Vec<usize> {
    (0..cache.num_layers())
        .flat_map(|i| {
            let (k, v) = cache.layer_buffers(i);
            [k.data_ptr() as usize, v.data_ptr() as usize]
        })
        .chain([cache.capacity()])
        .collect()
}

/// What the fused step needs of the model (see [`FusedDecoder::new`]).
fn check_model(model: &Qwen3Model) -> Result<()> {
    let c = model.config();
    if !model.device.is_cuda() {
        return Err(unsupported(format!(
            "{:?} is not a CUDA device",
            model.device
        )));
    }
    if model.dtype != Kind::BFloat16 {
        return Err(unsupported(format!(
            "compute kind {:?}; the fused step runs bf16",
            model.dtype
        )));
    }
    if model.lm_head.is_none() && model.tied_head != crate::precision::Precision::DENSE {
        return Err(unsupported(
            "the tied head rounds to NVFP4; the fused step reads the dense embedding",
        ));
    }
    if !model.backend.uses_kernels() {
        return Err(unsupported(
            "the model's compute path is dequantize + matmul, not the NVFP4 kernels",
        ));
    }
    if model.embed_tokens.kind() != Kind::BFloat16 {
        return Err(unsupported(format!(
            "embedding kind {:?}, expected bf16",
            model.embed_tokens.kind()
        )));
    }
    if c.hidden_size > cuda::RMSNORM_MAX {
        return Err(unsupported(format!(
            "hidden size {} exceeds {}",
            c.hidden_size,
            cuda::RMSNORM_MAX
        )));
    }
    let layout = HeadLayout {
        q_heads: c.num_attention_heads,
        kv_heads: c.num_key_value_heads,
        head_dim: c.head_dim,
        capacity: 0,
    };
    layout
        .check()
        .map_err(|e| unsupported(format!("attention shape: {e}")))?;
    cuda::check_available(model.device).map_err(unsupported)
}

impl StepBuffers {
    fn new(model: &Qwen3Model, packed_head: bool, heads: (usize, usize, usize)) -> Result<Self> {
        let c = model.config();
        let dev = model.device;
        let bf16 = |n: usize| Tensor::f_zeros([n as i64], (Kind::BFloat16, dev));
        let (hq, hkv, d) = heads;
        let layout = HeadLayout {
            q_heads: hq,
            kv_heads: hkv,
            head_dim: d,
            capacity: 0,
        };
        let sm_count = nvfp4_kernels::cuda::sm_count(dev)?;
        Ok(StepBuffers {
            meta: Tensor::f_zeros([2], (Kind::Int, dev))?,
            resid: bf16(c.hidden_size)?,
            normed: bf16(c.hidden_size)?,
            q: bf16(hq * d)?,
            k: bf16(hkv * d)?,
            v: bf16(hkv * d)?,
            q_rot: bf16(hq * d)?,
            attn: bf16(hq * d)?,
            delta: bf16(c.hidden_size)?,
            gate: bf16(c.intermediate_size)?,
            up: bf16(c.intermediate_size)?,
            act: bf16(c.intermediate_size)?,
            logits: packed_head.then(|| bf16(c.vocab_size)).transpose()?,
            scratch: AttnScratch::new(&layout, sm_count, dev)?,
        })
    }
}
