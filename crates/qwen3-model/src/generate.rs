//! Autoregressive generation: prefill the prompt, then sample one token at a
//! time, with or without a KV cache.
//!
//! Three ways to run the same computation, which must give the same greedy ids:
//! - KV cache, [`PrefillMode::PromptByPrompt`]: one forward of the whole prompt;
//! - KV cache, [`PrefillMode::TokenByToken`]: one forward per prompt token;
//! - no cache: every step recomputes the full sequence (the prefill mode does
//!   not apply: there is nothing to split).
//!
//! Decoding stops on a token of [`GenerateOptions::stop_ids`], after
//! `max_new_tokens`, or when the callback returns `false`. A KV cache grows as
//! needed (see `KvCache`), so its initial capacity is only a hint.

use std::str::FromStr;
use std::time::{Duration, Instant};

use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};
use crate::sampling::{out_of_vocab, Sampler, SamplingParams};
use crate::{FusedDecoder, KvCache, Qwen3Model};

/// How the prompt is fed into a KV cache before decoding.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum PrefillMode {
    /// One forward call per prompt token (`tbt`).
    TokenByToken,
    /// One forward call for the whole prompt (`pbp`).
    #[default]
    PromptByPrompt,
}

impl FromStr for PrefillMode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "tbt" | "token-by-token" => Ok(Self::TokenByToken),
            "pbp" | "prompt-by-prompt" => Ok(Self::PromptByPrompt),
            _ => Err(Error::InvalidArgument {
                name: "prefill mode",
                reason: format!(
                    "got {s:?}, expected \"tbt\" (token by token) or \"pbp\" (prompt by prompt)"
                ),
            }),
        }
    }
}

impl std::fmt::Display for PrefillMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::TokenByToken => "tbt",
            Self::PromptByPrompt => "pbp",
        })
    }
}

/// What [`generate`] does; `Default` is greedy, 256 tokens, no stop ids, pbp.
#[derive(Clone, Debug, PartialEq)]
pub struct GenerateOptions {
    /// Upper bound on generated tokens (the stop token included).
    pub max_new_tokens: usize,
    /// How each token is chosen.
    pub sampling: SamplingParams,
    /// Tokens that end generation (e.g. `Qwen3Tokenizer::stop_ids()`).
    pub stop_ids: Vec<u32>,
    /// How the prompt enters the cache (ignored without a cache).
    pub prefill: PrefillMode,
    /// Return the prompt's logits at every position in [`Generation::prompt_logits`].
    pub keep_prompt_logits: bool,
    /// Decode through [`FusedDecoder`] (fused kernels replayed as a CUDA
    /// graph) when there is a cache and the model allows it; `false` forces
    /// the per-op forward, the reference.
    pub fused_decode: bool,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self {
            max_new_tokens: 256,
            sampling: SamplingParams::greedy(),
            stop_ids: Vec::new(),
            prefill: PrefillMode::PromptByPrompt,
            keep_prompt_logits: false,
            fused_decode: true,
        }
    }
}

/// Why decoding ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// A token of `stop_ids` was generated (it is the last of `tokens`).
    StopToken,
    /// `max_new_tokens` were generated.
    MaxTokens,
    /// The `on_token` callback returned `false`.
    Callback,
}

/// The result of one [`generate`] call.
#[derive(Debug)]
pub struct Generation {
    /// Generated ids, the stop token (if any) last.
    pub tokens: Vec<u32>,
    /// The stop token that ended generation, if one did.
    pub stopped_on: Option<u32>,
    /// f32 `[prompt_len, vocab]` on the model's device, when asked for.
    pub prompt_logits: Option<Tensor>,
    /// Why decoding ended.
    pub finish: FinishReason,
    /// Number of prompt tokens fed by this call.
    pub prompt_len: usize,
    /// Whether the tokens after the first came from [`FusedDecoder`].
    pub fused_decode: bool,
    /// Wall time of the prefill and the first token's draw (device synchronized).
    pub prefill_time: Duration,
    /// Wall time of the remaining decode steps.
    pub decode_time: Duration,
}

impl Generation {
    /// Prompt tokens per second of the prefill.
    pub fn prefill_tokens_per_s(&self) -> f64 {
        rate(self.prompt_len, self.prefill_time)
    }

    /// Tokens per second of the decode steps (each token after the first).
    pub fn decode_tokens_per_s(&self) -> f64 {
        rate(self.tokens.len().saturating_sub(1), self.decode_time)
    }
}

/// `count` per second of `time` (0 for no time).
pub(crate) fn rate(count: usize, time: Duration) -> f64 {
    if time.is_zero() {
        0.0
    } else {
        count as f64 / time.as_secs_f64()
    }
}

/// Generates a continuation of `prompt` (batch of one).
///
/// With `cache`, the prompt is appended to whatever the cache already holds
/// (multi-turn: pass only the new tokens) and the cache keeps every token fed,
/// i.e. all but the last generated one. The repetition penalty sees only
/// `prompt` and the generated tokens; [`Conversation`] also counts earlier turns.
/// `on_token` is called for each generated token except a stop token; returning
/// `false` ends generation after that token.
pub fn generate(
    model: &Qwen3Model,
    cache: Option<&mut KvCache>,
    prompt: &[u32],
    opts: &GenerateOptions,
    on_token: &mut dyn FnMut(u32) -> bool,
) -> Result<Generation> {
    generate_after(model, cache, &[], prompt, opts, on_token)
}

/// [`generate`] with `context`: tokens already in the cache, seen by the penalty.
fn generate_after(
    model: &Qwen3Model,
    mut cache: Option<&mut KvCache>,
    context: &[u32],
    prompt: &[u32],
    opts: &GenerateOptions,
    on_token: &mut dyn FnMut(u32) -> bool,
) -> Result<Generation> {
    check_request(model, cache.as_deref(), prompt, opts)?;
    let mut sampler = Sampler::new(opts.sampling.clone());
    let mut history: Vec<u32> = context.iter().chain(prompt).copied().collect();
    let start = Instant::now();
    let all_logits = prefill(model, cache.as_deref_mut(), prompt, opts)?;
    let mut last = all_logits.f_get(-1)?;
    let prompt_logits = opts.keep_prompt_logits.then_some(all_logits);
    let mut fused = match cache.as_deref_mut() {
        Some(c) if opts.fused_decode && opts.max_new_tokens > 1 => fused_decoder(model, c, opts)?,
        _ => None,
    };
    let mut prefill_time = None;
    let mut tokens = Vec::new();
    let mut finish = FinishReason::MaxTokens;
    let mut stopped_on = None;
    while tokens.len() < opts.max_new_tokens {
        let token = sampler.sample(&last, &history)?;
        prefill_time.get_or_insert_with(|| start.elapsed());
        tokens.push(token);
        history.push(token);
        if opts.stop_ids.contains(&token) {
            (finish, stopped_on) = (FinishReason::StopToken, Some(token));
            break;
        }
        if !on_token(token) {
            finish = FinishReason::Callback;
            break;
        }
        if tokens.len() == opts.max_new_tokens {
            break;
        }
        last = match (cache.as_deref_mut(), fused.as_mut()) {
            (Some(c), Some(f)) => tch::no_grad(|| f.step(c, token))?,
            (Some(c), None) => forward_last(model, Some(c), &[token])?,
            (None, _) => forward_last(model, None, &history[context.len()..])?,
        };
    }
    synchronize(model.device());
    let total = start.elapsed();
    let prefill_time = prefill_time.unwrap_or(total);
    let decode_time = total.saturating_sub(prefill_time);
    Ok(Generation {
        tokens,
        stopped_on,
        prompt_logits,
        finish,
        prompt_len: prompt.len(),
        fused_decode: fused.is_some(),
        prefill_time,
        decode_time,
    })
}

/// A fused decoder for `model` with `cache` grown to hold every token to
/// come (a recorded step is tied to the cache's buffers), or None when the
/// model does not allow one (the reason is logged).
fn fused_decoder(
    model: &Qwen3Model,
    cache: &mut KvCache,
    opts: &GenerateOptions,
) -> Result<Option<FusedDecoder>> {
    match FusedDecoder::new(model) {
        Ok(f) => {
            cache.reserve(opts.max_new_tokens)?;
            Ok(Some(f))
        }
        Err(Error::FusedDecodeUnsupported { reason }) => {
            tracing::debug!("decoding through the per-op forward: {reason}");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Rejects what would fail half-way: empty prompt, ids outside the vocabulary,
/// a cache for a batch other than one, bad sampling parameters.
fn check_request(
    model: &Qwen3Model,
    cache: Option<&KvCache>,
    prompt: &[u32],
    opts: &GenerateOptions,
) -> Result<()> {
    opts.sampling.validate()?;
    if prompt.is_empty() {
        return Err(Error::BadInput {
            name: "prompt",
            reason: "no tokens to start from".into(),
        });
    }
    let vocab = model.config().vocab_size;
    if let Some((index, &id)) = prompt
        .iter()
        .enumerate()
        .find(|(_, &id)| id as usize >= vocab)
    {
        return Err(out_of_vocab("prompt", index, id, vocab));
    }
    if let Some(c) = cache {
        if c.batch() != 1 {
            return Err(Error::Cache {
                reason: format!("generation runs batch 1, the cache has batch {}", c.batch()),
            });
        }
    }
    Ok(())
}

/// Feeds the prompt; returns its logits f32 `[prompt_len, vocab]` (only the
/// last row unless `keep_prompt_logits`).
fn prefill(
    model: &Qwen3Model,
    cache: Option<&mut KvCache>,
    prompt: &[u32],
    opts: &GenerateOptions,
) -> Result<Tensor> {
    match (cache, opts.prefill) {
        (Some(c), PrefillMode::TokenByToken) => {
            let mut rows = Vec::with_capacity(if opts.keep_prompt_logits {
                prompt.len()
            } else {
                1
            });
            for (i, &id) in prompt.iter().enumerate() {
                let row = forward_all(model, Some(&mut *c), &[id])?;
                // Without a dump only the last row is needed; the others are freed at once.
                if opts.keep_prompt_logits || i + 1 == prompt.len() {
                    rows.push(row);
                }
            }
            Ok(Tensor::f_cat(&rows, 0)?)
        }
        (cache, _) if opts.keep_prompt_logits => forward_all(model, cache, prompt),
        (cache, _) => {
            let input = ids_tensor(model, prompt)?;
            let logits = tch::no_grad(|| model.forward_last(&input, cache))?; // [1, 1, vocab]
            Ok(logits.f_get(0)?)
        }
    }
}

/// i64 `[1, ids.len()]` on the model's device.
fn ids_tensor(model: &Qwen3Model, ids: &[u32]) -> Result<Tensor> {
    let ids: Vec<i64> = ids.iter().map(|&id| i64::from(id)).collect();
    Ok(Tensor::f_from_slice(&ids)?
        .f_view([1, -1])?
        .f_to_device(model.device())?)
}

/// Logits f32 `[ids.len(), vocab]` of one forward call.
fn forward_all(model: &Qwen3Model, cache: Option<&mut KvCache>, ids: &[u32]) -> Result<Tensor> {
    let input = ids_tensor(model, ids)?;
    // Generation never needs gradients, even on a trainable (QAT) model.
    let logits = tch::no_grad(|| model.forward(&input, cache))?; // [1, T, vocab]
    Ok(logits.f_get(0)?.f_to_kind(Kind::Float)?)
}

/// Logits f32 `[vocab]` of the last position.
fn forward_last(model: &Qwen3Model, cache: Option<&mut KvCache>, ids: &[u32]) -> Result<Tensor> {
    Ok(forward_all(model, cache, ids)?.f_get(-1)?)
}

/// Waits for the device's queued work (so wall times include it).
pub(crate) fn synchronize(device: Device) {
    if let Device::Cuda(index) = device {
        tch::Cuda::synchronize(index as i64);
    }
}

/// Token-level multi-turn state on a persistent KV cache: every id of the
/// conversation, of which the cache holds a prefix (all but ids generated and
/// not yet fed). Each turn feeds only what the cache lacks.
#[derive(Debug)]
pub struct Conversation {
    cache: KvCache,
    ids: Vec<u32>,
}

impl Conversation {
    /// A new conversation on `cache` (emptied first).
    pub fn new(mut cache: KvCache) -> Self {
        cache.reset();
        Self {
            cache,
            ids: Vec::new(),
        }
    }

    /// Every id so far (prompts and generated tokens, in order).
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }

    /// Ids generated but not yet in the cache (at most the last one).
    pub fn unfed(&self) -> &[u32] {
        &self.ids[self.cache.len()..]
    }

    /// Removes the last id if it is not in the cache yet (e.g. an
    /// `<|endoftext|>` to be replaced by `<|im_end|>`); returns it.
    pub fn pop_unfed(&mut self) -> Option<u32> {
        (self.ids.len() > self.cache.len())
            .then(|| self.ids.pop())
            .flatten()
    }

    /// The cache (its `len()` is the number of ids fed).
    pub fn cache(&self) -> &KvCache {
        &self.cache
    }

    /// Forgets everything: empty cache, no ids.
    pub fn reset(&mut self) {
        self.cache.reset();
        self.ids.clear();
    }

    /// Appends `new_ids` (e.g. the rendered next user turn) and generates the
    /// reply; feeds the unfed ids first. The repetition penalty sees the whole
    /// conversation, as Hugging Face's `generate` on the full ids would.
    pub fn turn(
        &mut self,
        model: &Qwen3Model,
        new_ids: &[u32],
        opts: &GenerateOptions,
        on_token: &mut dyn FnMut(u32) -> bool,
    ) -> Result<Generation> {
        let fed = self.cache.len();
        let prompt: Vec<u32> = self.ids[fed..].iter().chain(new_ids).copied().collect();
        let generation = generate_after(
            model,
            Some(&mut self.cache),
            &self.ids[..fed],
            &prompt,
            opts,
            on_token,
        )
        .inspect_err(|_| {
            // Keep ids and cache consistent: drop whatever a failed turn fed.
            let _ = self.cache.truncate(fed);
        })?;
        self.ids.extend_from_slice(new_ids);
        self.ids.extend_from_slice(&generation.tokens);
        Ok(generation)
    }
}
