//! Loss and backward pass of one micro-batch, with or without activation
//! checkpointing.
//!
//! Loss: next-token cross-entropy summed over target positions only (the
//! labels carry [`IGNORE_INDEX`] elsewhere). Only the target rows of the
//! final hidden state go through the head, so a 151936-word lm_head costs
//! nothing for prompt and padding positions; and they go through it
//! [`CE_CHUNK`] rows at a time, each chunk's loss backpropagated into the
//! (detached) last hidden state before the next chunk's logits exist, so the
//! f32 `[tokens, vocab]` logits, their softmax and gradient are never whole
//! (at batch 4 x 2048 on Qwen3 that is 3 x 5 GB, now 3 x 1.2 GB).
//!
//! Activation checkpointing (libtorch has no checkpoint API): run the blocks
//! without a graph, keeping each block's input; then from the last block
//! down, recompute the block with a graph from its detached input (which
//! requires grad), push the upstream gradient `g` through it with
//! `(out * g).sum().backward()` (whose gradient with respect to `out` is
//! exactly `g`), and read the input's gradient as the next `g`. Peak memory
//! is one block's graph plus one hidden state per block.
//!
//! With `--train-last-layers`, the frozen blocks below (and the embedding
//! lookup) run without a graph: a tied embedding then learns through its
//! use as the head only, since its input path would need a backward pass
//! through every frozen block.

use tch::{Kind, Reduction, Tensor};

use qwen3_model::Qwen3Model;

use crate::batch::IGNORE_INDEX;
use crate::error::Result;

/// Which part of the model trains, and how the backward runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackpropPlan {
    /// First block with trainable weights; blocks below it (and the
    /// embedding lookup) run without a graph.
    pub first_trained_layer: usize,
    /// Recompute every k-th block in the backward pass (blocks 0, k, 2k,
    /// ...; 1: all, 0: none).
    pub recompute_every: usize,
}

impl BackpropPlan {
    /// Whether block `layer` is recomputed in the backward pass.
    pub fn recomputes(&self, layer: usize) -> bool {
        self.recompute_every > 0 && layer.is_multiple_of(self.recompute_every)
    }
}

/// Sum of cross-entropies over the target positions of `hidden` [B, T, H]
/// (labels [B, T]); a 0-dim f32 tensor attached to the graph.
pub fn masked_ce_sum(model: &Qwen3Model, hidden: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let h = hidden.size()[2];
    let flat_labels = labels.reshape([-1]);
    let rows = flat_labels.ne(IGNORE_INDEX).nonzero().squeeze_dim(1); // [N]
    let picked = hidden.reshape([-1, h]).index_select(0, &rows).unsqueeze(0); // [1, N, H]
    let logits = model.head(&picked)?.squeeze_dim(0); // [N, V] f32
    let targets = flat_labels.index_select(0, &rows);
    Ok(logits.f_cross_entropy_loss::<Tensor>(&targets, None, Reduction::Sum, IGNORE_INDEX, 0.0)?)
}

/// Reference for tests: the full forward's logits at every position, then
/// cross-entropy with `ignore_index` (summed). Same value as [`masked_ce_sum`]
/// on the model's last hidden state.
pub fn reference_ce_sum(model: &Qwen3Model, input_ids: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let logits = model.forward(input_ids, None)?; // [B, T, V]
    let v = logits.size()[2];
    Ok(logits.reshape([-1, v]).f_cross_entropy_loss::<Tensor>(
        &labels.reshape([-1]),
        None,
        Reduction::Sum,
        IGNORE_INDEX,
        0.0,
    )?)
}

/// Forward and backward of one micro-batch: gradients of `ce_sum / denom`
/// are *added* to the parameters' `.grad`. Returns the micro-batch's CE sum.
pub fn forward_backward(
    model: &Qwen3Model,
    input_ids: &Tensor,
    labels: &Tensor,
    denom: f64,
    plan: BackpropPlan,
) -> Result<f64> {
    let mut ce_sum = 0.0;
    forward_backward_with(model, input_ids, plan, &mut |top: &Tensor| {
        ce_sum = ce_backward(model, top, labels, denom)?;
        Ok(())
    })?;
    Ok(ce_sum)
}

/// The loss at the top of the model: given the last hidden state as a leaf
/// that requires grad, computes the loss and runs its backward (which fills
/// the leaf's `.grad` and the head's gradients).
pub(crate) type TopLoss<'a> = dyn FnMut(&Tensor) -> Result<()> + 'a;

/// Target positions whose logits exist at once in the training loss.
pub const CE_CHUNK: usize = 2048;

/// The masked CE of `top` (a leaf), backpropagated with weight `1 / denom`;
/// returns the CE sum.
fn ce_backward(model: &Qwen3Model, top: &Tensor, labels: &Tensor, denom: f64) -> Result<f64> {
    masked_ce_backward(model, top, labels, denom, CE_CHUNK)
}

/// [`masked_ce_sum`] of `top` (a leaf [B, T, H] that requires grad),
/// computed and backpropagated (weight `1 / denom`) `chunk` target positions
/// at a time: the gradients equal one whole backward up to summation order.
/// Returns the CE sum.
pub fn masked_ce_backward(
    model: &Qwen3Model,
    top: &Tensor,
    labels: &Tensor,
    denom: f64,
    chunk: usize,
) -> Result<f64> {
    let h = top.size()[2];
    let flat_labels = labels.reshape([-1]);
    let rows = flat_labels.ne(IGNORE_INDEX).nonzero().squeeze_dim(1); // [N]
    let n = rows.size()[0];
    let chunk = i64::try_from(chunk).unwrap_or(i64::MAX).max(1);
    let mut sum = Tensor::zeros([], (Kind::Float, top.device()));
    let mut start = 0;
    // At least one pass, empty when nothing is a target: the caller reads
    // the leaf's gradient, which must then be a defined zero.
    loop {
        let r = rows.narrow(0, start, chunk.min(n - start));
        // A fresh view of the leaf per chunk: each backward frees its own graph.
        let picked = top.reshape([-1, h]).index_select(0, &r).unsqueeze(0);
        let logits = model.head(&picked)?.squeeze_dim(0); // [c, V] f32
        let ce = logits.f_cross_entropy_loss::<Tensor>(
            &flat_labels.index_select(0, &r),
            None,
            Reduction::Sum,
            IGNORE_INDEX,
            0.0,
        )?;
        (&ce / denom).f_backward()?;
        sum += ce.detach();
        start += chunk;
        if start >= n {
            break;
        }
    }
    Ok(sum.double_value(&[]))
}

/// Forward of the blocks, `top` on the last hidden state, then the
/// backward of the blocks (recomputed per block with checkpointing).
pub(crate) fn forward_backward_with(
    model: &Qwen3Model,
    input_ids: &Tensor,
    plan: BackpropPlan,
    top: &mut TopLoss<'_>,
) -> Result<()> {
    let x0 = embed_and_frozen(model, input_ids, plan)?;
    if plan.recompute_every > 0 {
        return blockwise(model, x0, plan, top, &mut |_| Ok(()));
    }
    let mut h = x0;
    for l in plan.first_trained_layer..model.num_layers() {
        h = model.block_forward(l, &h, 0)?;
    }
    // The head's loss backpropagates into a leaf first, so a chunked loss
    // can run several backward passes before the blocks' single one.
    let leaf = h.detach().set_requires_grad(true);
    top(&leaf)?;
    if h.requires_grad() {
        (h * leaf.grad()).sum(Kind::Float).f_backward()?;
    }
    Ok(())
}

/// As [`forward_backward`], but the backward runs block by block from the top
/// (with or without recomputation, as `plan` says) and calls `block_done(l)`
/// as soon as block `l`'s gradients are complete, so that a data-parallel
/// run can start reducing them while the blocks below still run backward.
pub(crate) fn forward_backward_blockwise(
    model: &Qwen3Model,
    input_ids: &Tensor,
    labels: &Tensor,
    denom: f64,
    plan: BackpropPlan,
    block_done: &mut dyn FnMut(usize) -> Result<()>,
) -> Result<f64> {
    let x0 = embed_and_frozen(model, input_ids, plan)?;
    let mut ce_sum = 0.0;
    let mut top = |top: &Tensor| -> Result<()> {
        ce_sum = ce_backward(model, top, labels, denom)?;
        Ok(())
    };
    blockwise(model, x0, plan, &mut top, block_done)?;
    Ok(ce_sum)
}

/// The embedding lookup and the frozen blocks (without a graph when frozen).
fn embed_and_frozen(model: &Qwen3Model, input_ids: &Tensor, plan: BackpropPlan) -> Result<Tensor> {
    if plan.first_trained_layer == 0 {
        return Ok(model.embed(input_ids));
    }
    tch::no_grad(|| {
        let mut h = model.embed(input_ids);
        for l in 0..plan.first_trained_layer {
            h = model.block_forward(l, &h, 0)?;
        }
        Ok(h)
    })
}

/// Forward of the trained blocks, each from a detached input, then backward
/// from the top one block at a time. A block `plan` recomputes keeps only its
/// input in the forward and is run again with a graph in the backward; the
/// others keep their graph from the forward.
fn blockwise(
    model: &Qwen3Model,
    x0: Tensor,
    plan: BackpropPlan,
    top: &mut TopLoss<'_>,
    block_done: &mut dyn FnMut(usize) -> Result<()>,
) -> Result<()> {
    let first = plan.first_trained_layer;
    // 1. Forward, keeping each trained block's input (and its output with a
    //    graph when not recomputing).
    let mut saved: Vec<(Tensor, Option<Tensor>)> = Vec::with_capacity(model.num_layers() - first);
    let mut h = x0.detach();
    for l in first..model.num_layers() {
        if plan.recomputes(l) {
            let next = tch::no_grad(|| model.block_forward(l, &h, 0))?;
            saved.push((h, None));
            h = next;
        } else {
            let x = h.detach().set_requires_grad(true);
            let out = model.block_forward(l, &x, 0)?;
            h = out.detach();
            saved.push((x, Some(out)));
        }
    }
    // 2. Head and loss with a graph from the last hidden state.
    let leaf = h.detach().set_requires_grad(true);
    top(&leaf)?;
    let mut g = leaf.grad();
    // 3. Blocks in reverse: (recompute with a graph and) backpropagate g.
    for (l, (input, out)) in (first..model.num_layers()).zip(saved).rev() {
        let (x, out) = match out {
            Some(out) => (input, out),
            None => {
                let x = input.detach().set_requires_grad(true);
                let out = model.block_forward(l, &x, 0)?;
                (x, out)
            }
        };
        (out * &g).sum(Kind::Float).f_backward()?;
        g = x.grad();
        block_done(l)?;
    }
    // 4. The embedding lookup, when it trains.
    if x0.requires_grad() {
        (x0 * &g).sum(Kind::Float).f_backward()?;
    }
    Ok(())
}
