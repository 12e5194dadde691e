//! Held-out loss and perplexity of a model on a [`Dataset`]: packed text
//! windows (every token scored, see `text.rs`) or chat examples (response
//! tokens only, as in training). Deterministic: examples in file order,
//! no sampling, no dropout.

use qwen3_model::Qwen3Model;

use crate::backprop::masked_ce_sum;
use crate::batch::make_batch;
use crate::data::Dataset;
use crate::error::Result;

/// The outcome of [`evaluate_loss`].
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct LossReport {
    /// Mean next-token cross-entropy over the scored tokens, nats.
    pub mean_loss: f64,
    /// `exp(mean_loss)`.
    pub perplexity: f64,
    /// Tokens scored.
    pub tokens: u64,
    /// Windows (or examples) evaluated.
    pub examples: usize,
}

/// Mean loss of `model` over every target token of `data`, `batch_size`
/// examples per forward; `on_batch(done, total)` is called after each batch
/// (a progress bar). Runs without a graph.
pub fn evaluate_loss(
    model: &Qwen3Model,
    data: &Dataset,
    batch_size: usize,
    on_batch: &mut dyn FnMut(usize, usize),
) -> Result<LossReport> {
    let batch_size = batch_size.max(1);
    let total = data.examples.len();
    let mut sum = 0.0f64;
    let mut tokens = 0u64;
    let refs: Vec<_> = data.examples.iter().collect();
    for (i, chunk) in refs.chunks(batch_size).enumerate() {
        let b = make_batch(chunk, 0, model.device());
        if b.target_tokens > 0 {
            sum += tch::no_grad(|| -> Result<f64> {
                let mut h = model.embed(&b.input_ids);
                for l in 0..model.num_layers() {
                    h = model.block_forward(l, &h, 0)?;
                }
                Ok(masked_ce_sum(model, &h, &b.labels)?.double_value(&[]))
            })?;
            tokens += b.target_tokens as u64;
        }
        on_batch(((i + 1) * batch_size).min(total), total);
    }
    let mean_loss = sum / tokens.max(1) as f64;
    Ok(LossReport {
        mean_loss,
        perplexity: mean_loss.exp(),
        tokens,
        examples: total,
    })
}
