//! Exact-match evaluation: greedy answers to training prompts compared with
//! the training responses.
//!
//! Prompts of equal token length are decoded together as one batch (no
//! padding is needed, so no attention mask either): the same greedy
//! decoding as `qwen3_model::generate`, one forward per generated token for
//! the whole group instead of one per prompt (`tests/eval.rs` checks that
//! both give the same tokens).

use std::collections::BTreeMap;

use qwen3_model::Qwen3Model;
use tch::{Kind, Tensor};
use tokenizer_bridge::Qwen3Tokenizer;

use crate::data::Example;
use crate::error::Result;

/// Most prompts decoded in one batch.
const MAX_GROUP: usize = 64;

/// One prompt's outcome.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct EvalSample {
    /// Source line of the example.
    pub line: usize,
    /// The user's question.
    pub prompt: String,
    /// Expected answer (the training response).
    pub expected: String,
    /// Greedy answer, special tokens removed.
    pub got: String,
    /// `got == expected` (surrounding whitespace ignored).
    pub matched: bool,
    /// Generation ended on `<|im_end|>`.
    pub stopped_on_im_end: bool,
}

/// Exact-match counts over a set of prompts.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct EvalReport {
    /// Answers equal to the expected response.
    pub matched: usize,
    /// Prompts evaluated.
    pub total: usize,
    /// Answers that ended on `<|im_end|>`.
    pub stopped_on_im_end: usize,
    /// Per-prompt details, in the order of the examples given.
    pub samples: Vec<EvalSample>,
}

impl EvalReport {
    /// matched / total.
    pub fn ratio(&self) -> f64 {
        self.matched as f64 / self.total.max(1) as f64
    }
}

/// A greedy continuation: generated ids (stop token last, if any).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GreedyAnswer {
    /// Generated ids.
    pub tokens: Vec<u32>,
    /// The stop id that ended it, if one did.
    pub stopped_on: Option<u32>,
}

/// Greedy-decodes each example's prompt (at most `max_new_tokens`, stopping
/// on the tokenizer's stop ids) and compares the text with its response.
pub fn exact_match(
    model: &Qwen3Model,
    tok: &Qwen3Tokenizer,
    examples: &[&Example],
    max_new_tokens: usize,
) -> Result<EvalReport> {
    let prompts: Vec<&[u32]> = examples.iter().map(|e| e.prompt_ids.as_slice()).collect();
    let answers = greedy_answers(model, &prompts, max_new_tokens, tok.stop_ids())?;
    let mut samples = Vec::with_capacity(examples.len());
    for (ex, ans) in examples.iter().zip(answers) {
        let got = tok.decode(&ans.tokens, true)?;
        samples.push(EvalSample {
            line: ex.line,
            prompt: ex.prompt.clone(),
            expected: ex.response.clone(),
            matched: got.trim() == ex.response.trim(),
            got,
            stopped_on_im_end: ans.stopped_on == Some(tok.im_end_id()),
        });
    }
    Ok(EvalReport {
        matched: samples.iter().filter(|s| s.matched).count(),
        total: samples.len(),
        stopped_on_im_end: samples.iter().filter(|s| s.stopped_on_im_end).count(),
        samples,
    })
}

/// Greedy answers to `prompts` (non-empty each), in order, batching prompts of equal length.
pub fn greedy_answers(
    model: &Qwen3Model,
    prompts: &[&[u32]],
    max_new_tokens: usize,
    stop_ids: &[u32],
) -> Result<Vec<GreedyAnswer>> {
    let mut by_len: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (i, p) in prompts.iter().enumerate() {
        by_len.entry(p.len()).or_default().push(i);
    }
    let mut out = vec![
        GreedyAnswer {
            tokens: Vec::new(),
            stopped_on: None
        };
        prompts.len()
    ];
    for group in by_len.values() {
        for chunk in group.chunks(MAX_GROUP) {
            let batch: Vec<&[u32]> = chunk.iter().map(|&i| prompts[i]).collect();
            let answers = tch::no_grad(|| greedy_batch(model, &batch, max_new_tokens, stop_ids))?;
            for (&i, a) in chunk.iter().zip(answers) {
                out[i] = a;
            }
        }
    }
    Ok(out)
}

/// Greedy decoding of same-length prompts with one KV cache for the batch.
fn greedy_batch(
    model: &Qwen3Model,
    prompts: &[&[u32]],
    max_new: usize,
    stop_ids: &[u32],
) -> Result<Vec<GreedyAnswer>> {
    let (b, t) = (prompts.len(), prompts[0].len());
    let flat: Vec<i64> = prompts
        .iter()
        .flat_map(|p| p.iter().map(|&x| x as i64))
        .collect();
    let ids = Tensor::from_slice(&flat)
        .view([b as i64, t as i64])
        .to_device(model.device());
    let mut cache = model.new_cache(b, t + max_new)?;
    let mut answers = vec![
        GreedyAnswer {
            tokens: Vec::new(),
            stopped_on: None
        };
        b
    ];
    let mut logits = model.forward(&ids, Some(&mut cache))?; // [B, T, V]
    for step in 0..max_new {
        let next = logits.select(1, -1).argmax(-1, false); // [B]
        let ids = Vec::<i64>::try_from(next.to_kind(Kind::Int64).to_device(tch::Device::Cpu))?;
        for (a, &id) in answers.iter_mut().zip(&ids) {
            if a.stopped_on.is_none() && a.tokens.len() == step {
                a.tokens.push(id as u32);
                if stop_ids.contains(&(id as u32)) {
                    a.stopped_on = Some(id as u32);
                }
            }
        }
        if step + 1 == max_new || answers.iter().all(|a| a.stopped_on.is_some()) {
            break;
        }
        // Finished rows keep decoding (their output is ignored): the batch stays rectangular.
        logits = model.forward(&next.view([b as i64, 1]), Some(&mut cache))?;
    }
    Ok(answers)
}
