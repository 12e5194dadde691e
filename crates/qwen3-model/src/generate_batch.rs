//! Batched generation: several prompts of different lengths decoded together
//! on one KV cache of batch B.
//!
//! Prompts are left-padded to the longest one, so every row's next token sits
//! in the same cache slot and one `[B, 1]` forward decodes all rows. Row b's
//! `pad[b]` leading slots are padding: never attended as keys, and its first
//! real token is RoPE position 0 (see `Qwen3Model::forward_left_padded`), so
//! each row computes what [`generate`](crate::generate) computes for its
//! prompt alone, up to the rounding of batched matmuls.
//!
//! Each row stops on its own (stop token or `max_new_tokens`) and leaves the
//! batch: its cache rows are dropped (`KvCache::retain_rows`, one copy of the
//! cache per step in which some row ends), so later steps compute only the
//! rows still going. The batch ends when every row has.

use std::time::{Duration, Instant};

use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};
use crate::generate::{rate, synchronize, FinishReason, GenerateOptions};
use crate::sampling::{Sampler, SamplingParams};
use crate::{KvCache, Qwen3Model};

/// What one row of [`generate_batch`] produced.
#[derive(Debug)]
pub struct RowGeneration {
    /// Generated ids, the stop token (if any) last.
    pub tokens: Vec<u32>,
    /// The stop token that ended this row, if one did.
    pub stopped_on: Option<u32>,
    /// Why this row ended ([`FinishReason::StopToken`] or [`FinishReason::MaxTokens`]).
    pub finish: FinishReason,
    /// Number of prompt tokens of this row.
    pub prompt_len: usize,
    /// Left padding slots in front of the prompt (longest prompt minus this one).
    pub pad: usize,
    /// f32 `[prompt_len, vocab]` (this row's real positions only), when asked for.
    pub prompt_logits: Option<Tensor>,
}

impl RowGeneration {
    /// Appends `token`; true when it ends this row (a stop id, or the last allowed token).
    fn record(&mut self, token: u32, opts: &GenerateOptions) -> bool {
        self.tokens.push(token);
        if opts.stop_ids.contains(&token) {
            (self.finish, self.stopped_on) = (FinishReason::StopToken, Some(token));
            return true;
        }
        self.tokens.len() == opts.max_new_tokens
    }
}

/// The result of one [`generate_batch`] call.
#[derive(Debug)]
pub struct BatchGeneration {
    /// One entry per prompt, in the order given.
    pub rows: Vec<RowGeneration>,
    /// Forward calls of the decode loop (the prefill excluded).
    pub decode_steps: usize,
    /// Wall time of the prefill and the first tokens' draw (device synchronized).
    pub prefill_time: Duration,
    /// Wall time of the remaining decode steps.
    pub decode_time: Duration,
}

impl BatchGeneration {
    /// Real prompt tokens (padding excluded) per second of the prefill, all rows.
    pub fn prefill_tokens_per_s(&self) -> f64 {
        let tokens = self.rows.iter().map(|r| r.prompt_len).sum();
        rate(tokens, self.prefill_time)
    }

    /// Tokens per second of the decode steps, summed over rows (each row's
    /// tokens after its first; a finished row's idle steps count nothing).
    pub fn decode_tokens_per_s(&self) -> f64 {
        rate(self.decode_tokens(), self.decode_time)
    }

    /// Tokens produced by the decode steps (each row's tokens after the first).
    pub fn decode_tokens(&self) -> usize {
        self.rows
            .iter()
            .map(|r| r.tokens.len().saturating_sub(1))
            .sum()
    }
}

/// Generates a continuation of every prompt, all rows in one batch.
///
/// Uses `opts.max_new_tokens`, `opts.stop_ids`, `opts.sampling` and
/// `opts.keep_prompt_logits`; the prompt is always fed in one forward
/// (`opts.prefill` does not apply) and decoding runs the per-op forward
/// (`opts.fused_decode` does not apply: the fused step is batch 1).
/// Row r samples with seed `opts.sampling.seed + r` (wrapping), so it draws
/// what [`generate`](crate::generate) draws for its prompt with that seed;
/// greedy rows equal `generate`'s ids.
///
/// Errors (before anything runs): no prompts, an empty prompt, an id outside
/// the vocabulary (naming the prompt, the index and the id), bad sampling
/// parameters.
pub fn generate_batch(
    model: &Qwen3Model,
    prompts: &[Vec<u32>],
    opts: &GenerateOptions,
) -> Result<BatchGeneration> {
    check_prompts(model, prompts)?;
    opts.sampling.validate()?;
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let pad: Vec<usize> = prompts.iter().map(|p| longest - p.len()).collect();
    let mut samplers: Vec<Sampler> = (0..prompts.len())
        .map(|r| Sampler::new(row_params(&opts.sampling, r)))
        .collect();
    let mut rows: Vec<RowGeneration> = prompts
        .iter()
        .zip(&pad)
        .map(|(p, &pad)| RowGeneration {
            tokens: Vec::new(),
            stopped_on: None,
            finish: FinishReason::MaxTokens,
            prompt_len: p.len(),
            pad,
            prompt_logits: None,
        })
        .collect();
    let mut history: Vec<Vec<u32>> = prompts.to_vec();
    let mut cache = model.new_cache(prompts.len(), longest + opts.max_new_tokens)?;

    let start = Instant::now();
    let mut last = prefill(model, &mut cache, prompts, &pad, opts, &mut rows)?; // [B, vocab]
    let mut prefill_time = None;
    // Batch position j holds row live[j]; a finished row leaves the batch and the cache.
    let mut live: Vec<usize> = match opts.max_new_tokens {
        0 => Vec::new(),
        _ => (0..prompts.len()).collect(),
    };
    let mut decode_steps = 0;
    while !live.is_empty() {
        let picked = pick(&last, &live, &mut samplers, &history, &opts.sampling)?;
        prefill_time.get_or_insert_with(|| start.elapsed());
        let mut keep = Vec::with_capacity(live.len()); // positions of rows going on
        for (j, (&r, &token)) in live.iter().zip(&picked).enumerate() {
            history[r].push(token);
            if !rows[r].record(token, opts) {
                keep.push(j);
            }
        }
        if keep.len() < live.len() && !keep.is_empty() {
            cache.retain_rows(&keep)?;
        }
        let tokens: Vec<u32> = keep.iter().map(|&j| picked[j]).collect();
        live = keep.iter().map(|&j| live[j]).collect();
        if live.is_empty() {
            break;
        }
        let live_pad: Vec<usize> = live.iter().map(|&r| pad[r]).collect();
        let input = ids_tensor(model.device(), &tokens, 1)?; // [B', 1]
        last =
            tch::no_grad(|| model.forward_last_left_padded(&input, &live_pad, Some(&mut cache)))?
                .f_squeeze_dim(1)?; // [B', vocab]
        decode_steps += 1;
    }
    synchronize(model.device());
    let total = start.elapsed();
    let prefill_time = prefill_time.unwrap_or(total);
    tracing::debug!(
        batch = prompts.len(),
        longest,
        decode_steps,
        "batched generation done"
    );
    Ok(BatchGeneration {
        rows,
        decode_steps,
        prefill_time,
        decode_time: total.saturating_sub(prefill_time),
    })
}

/// Row `r`'s sampling parameters: the batch's, with the seed advanced by `r`.
fn row_params(params: &SamplingParams, r: usize) -> SamplingParams {
    SamplingParams {
        seed: params.seed.wrapping_add(r as u64),
        ..params.clone()
    }
}

/// Rejects an empty batch, an empty prompt and ids outside the vocabulary.
fn check_prompts(model: &Qwen3Model, prompts: &[Vec<u32>]) -> Result<()> {
    let bad = |reason: String| Error::BadInput {
        name: "prompts",
        reason,
    };
    if prompts.is_empty() {
        return Err(bad("no prompts: a batch needs at least one".into()));
    }
    let vocab = model.config().vocab_size;
    for (r, prompt) in prompts.iter().enumerate() {
        if prompt.is_empty() {
            return Err(bad(format!("prompt {r} has no tokens to start from")));
        }
        if let Some((i, &id)) = prompt
            .iter()
            .enumerate()
            .find(|(_, &id)| id as usize >= vocab)
        {
            return Err(bad(format!(
                "prompt {r}: id {id} at index {i} is outside the vocabulary (size {vocab})"
            )));
        }
    }
    Ok(())
}

/// Feeds every prompt, left-padded, in one forward; returns the last
/// position's logits f32 `[B, vocab]` and, when asked, stores each row's
/// prompt logits.
fn prefill(
    model: &Qwen3Model,
    cache: &mut KvCache,
    prompts: &[Vec<u32>],
    pad: &[usize],
    opts: &GenerateOptions,
    rows: &mut [RowGeneration],
) -> Result<Tensor> {
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    // Padding slots hold id 0 (any valid id: they are never attended).
    let padded: Vec<u32> = prompts
        .iter()
        .zip(pad)
        .flat_map(|(p, &n)| std::iter::repeat_n(0, n).chain(p.iter().copied()))
        .collect();
    let input = ids_tensor(model.device(), &padded, longest)?; // [B, T]
    if !opts.keep_prompt_logits {
        let logits =
            tch::no_grad(|| model.forward_last_left_padded(&input, pad, Some(&mut *cache)))?;
        return Ok(logits.f_squeeze_dim(1)?); // [B, vocab]
    }
    let logits = tch::no_grad(|| model.forward_left_padded(&input, pad, Some(&mut *cache)))?; // [B, T, vocab]
    for (r, row) in rows.iter_mut().enumerate() {
        let real = logits
            .f_get(r as i64)?
            .f_narrow(0, row.pad as i64, row.prompt_len as i64)?;
        row.prompt_logits = Some(real);
    }
    Ok(logits.f_select(1, longest as i64 - 1)?)
}

/// The next token of each batch position (position j holds row `live[j]`).
/// Greedy without a penalty is one arg max over the batch and one copy to
/// the host; anything else runs each row's own [`Sampler`].
fn pick(
    logits: &Tensor,
    live: &[usize],
    samplers: &mut [Sampler],
    history: &[Vec<u32>],
    params: &SamplingParams,
) -> Result<Vec<u32>> {
    if params.is_greedy() && params.repetition_penalty == 1.0 {
        return greedy_batch(logits, live);
    }
    let mut picked = Vec::with_capacity(live.len());
    for (j, &r) in live.iter().enumerate() {
        picked.push(samplers[r].sample(&logits.f_get(j as i64)?, &history[r])?);
    }
    Ok(picked)
}

/// Arg max of each row of f32 `[B, vocab]` (ties to the lowest id, as
/// [`Sampler`]), with the sampler's check that each maximum is finite.
fn greedy_batch(logits: &Tensor, live: &[usize]) -> Result<Vec<u32>> {
    let best = logits.f_argmax(-1, true)?; // [B, 1]
    let value = logits.f_gather(-1, &best, false)?.f_to_kind(Kind::Double)?; // [B, 1]
    let both =
        Tensor::f_cat(&[best.f_to_kind(Kind::Double)?, value], 1)?.f_to_device(Device::Cpu)?;
    let both: Vec<f64> = Vec::try_from(both.f_view([-1])?)?;
    let mut picked = Vec::with_capacity(live.len());
    for (pair, &r) in both.chunks_exact(2).zip(live) {
        let (id, max) = (pair[0], pair[1]);
        if !max.is_finite() {
            return Err(Error::BadInput {
                name: "logits",
                reason: format!("row {r}: maximum logit is {max} (NaN, +inf, or every logit -inf)"),
            });
        }
        picked.push(id as u32);
    }
    Ok(picked)
}

/// i64 `[len / width, width]` on `device`.
fn ids_tensor(device: Device, ids: &[u32], width: usize) -> Result<Tensor> {
    let ids: Vec<i64> = ids.iter().map(|&id| i64::from(id)).collect();
    Ok(Tensor::f_from_slice(&ids)?
        .f_view([-1, width as i64])?
        .f_to_device(device)?)
}
