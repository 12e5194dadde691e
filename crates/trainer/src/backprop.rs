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
//! (at batch 4 x 2048 on Qwen3 that is 3 x 5 GB, now 3 x 0.6 GB through
//! autograd, and one 0.3 GB chunk of bf16 logits written out).
//!
//! Activation checkpointing (libtorch has no checkpoint API): run the blocks
//! without a graph, keeping each block's input; then from the last block
//! down, recompute the block with a graph from its detached input (which
//! requires grad), push the upstream gradient `g` through it with
//! `(out * g).sum().backward()` (whose gradient with respect to `out` is
//! exactly `g`), and read the input's gradient as the next `g`. Peak memory
//! is one block's graph plus one hidden state per block.
//!
//! Written-out blocks ([`BackpropPlan::written_out`], the default whenever
//! every trained block allows it): each block's forward keeps a
//! `qwen3_model::BlockTape` instead of an autograd graph and its backward is
//! `Qwen3Model::block_backward_tape` (fused kernels, less memory), and the
//! loss at the top is `Qwen3Model::head_loss_backward` (no f32 logits).
//! Autograd stays the reference path (`NVFP4_AUTOGRAD_BLOCKS=1`); the tests
//! compare the two.
//!
//! With `--train-last-layers`, the frozen blocks below (and the embedding
//! lookup) run without a graph: a tied embedding then learns through its
//! use as the head only, since its input path would need a backward pass
//! through every frozen block.

use tch::{Kind, Reduction, Tensor};

use qwen3_model::{BlockTape, Qwen3Model};

use crate::batch::IGNORE_INDEX;
use crate::error::Result;
use qwen3_model::phases;

/// Which part of the model trains, and how the backward runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackpropPlan {
    /// First block with trainable weights; blocks below it (and the
    /// embedding lookup) run without a graph.
    pub first_trained_layer: usize,
    /// Recompute every k-th block in the backward pass (blocks 0, k, 2k,
    /// ...; 1: all, 0: none).
    pub recompute_every: usize,
    /// Train the blocks through their written-out forward and backward
    /// (`Qwen3Model::block_forward_tape`) instead of autograd: less memory
    /// and fused kernels; see [`BackpropPlan::written_out_for`].
    pub written_out: bool,
}

impl BackpropPlan {
    /// Whether every trained block of `model` (from `first_trained_layer`)
    /// can train written out; `NVFP4_AUTOGRAD_BLOCKS=1` forces autograd (the
    /// reference path, for comparisons; another value than 0 or 1 is an
    /// error naming the variable).
    pub fn written_out_for(model: &Qwen3Model, first_trained_layer: usize) -> Result<bool> {
        let forced_off = nvfp4_kernels::env_switch("NVFP4_AUTOGRAD_BLOCKS", false)?;
        Ok(!forced_off
            && (first_trained_layer..model.num_layers()).all(|l| model.written_out_ok(l)))
    }

    /// Whether block `layer` is recomputed in the backward pass.
    pub fn recomputes(&self, layer: usize) -> bool {
        self.recompute_every > 0 && layer.is_multiple_of(self.recompute_every)
    }
}

/// The labels flattened, and the indices [N] of the target positions among them.
fn target_rows(labels: &Tensor) -> (Tensor, Tensor) {
    let flat = labels.reshape([-1]);
    let rows = flat.ne(IGNORE_INDEX).nonzero().squeeze_dim(1);
    (flat, rows)
}

/// Sum of cross-entropies over the target positions of `hidden` [B, T, H]
/// (labels [B, T]); a 0-dim f32 tensor attached to the graph.
pub fn masked_ce_sum(model: &Qwen3Model, hidden: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let h = hidden.size()[2];
    let (flat_labels, rows) = target_rows(labels);
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
        ce_sum = ce_backward(model, top, labels, denom, plan)?;
        Ok(())
    })?;
    Ok(ce_sum)
}

/// The loss at the top of the model: given the last hidden state as a leaf
/// that requires grad, computes the loss and runs its backward (which fills
/// the leaf's `.grad` and the head's gradients).
pub(crate) type TopLoss<'a> = dyn FnMut(&Tensor) -> Result<()> + 'a;

/// Target positions whose logits exist at once in the training loss.
pub const CE_CHUNK: usize = 1024;

/// The masked CE of `top` (a leaf), backpropagated with weight `1 / denom`,
/// written out when `plan` says so and the head trains; returns the CE sum.
fn ce_backward(
    model: &Qwen3Model,
    top: &Tensor,
    labels: &Tensor,
    denom: f64,
    plan: BackpropPlan,
) -> Result<f64> {
    if plan.written_out && model.head_loss_ok() {
        return written_out_ce_backward(model, top, labels, denom, CE_CHUNK);
    }
    masked_ce_backward(model, top, labels, denom, CE_CHUNK)
}

/// [`masked_ce_backward`] through `Qwen3Model::head_loss_backward`: no f32
/// logits, no graph; the gradient of the target rows is scattered back into
/// the leaf's `.grad` (through `<top, g>`, which is how tch can set it).
fn written_out_ce_backward(
    model: &Qwen3Model,
    top: &Tensor,
    labels: &Tensor,
    denom: f64,
    chunk: usize,
) -> Result<f64> {
    let h = top.size()[2];
    let (flat_labels, rows) = target_rows(labels);
    let flat = top.detach().reshape([-1, h]);
    let picked = flat.index_select(0, &rows);
    let targets = flat_labels.index_select(0, &rows);
    let (sum, dpicked) = model.head_loss_backward(&picked, &targets, 1.0 / denom, chunk)?;
    let g = flat
        .zeros_like()
        .index_add(0, &rows, &dpicked.to_kind(flat.kind()));
    (top * g.view_as(top)).sum(Kind::Float).f_backward()?;
    Ok(sum)
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
    let (flat_labels, rows) = target_rows(labels);
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
    if plan.recompute_every > 0 || plan.written_out {
        return blockwise(model, input_ids, x0, plan, top, &mut |_| Ok(()));
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
        ce_sum = ce_backward(model, top, labels, denom, plan)?;
        Ok(())
    };
    blockwise(model, input_ids, x0, plan, &mut top, block_done)?;
    Ok(ce_sum)
}

/// The embedding lookup and the frozen blocks (without a graph when frozen,
/// or when the written-out backward handles the lookup itself).
fn embed_and_frozen(model: &Qwen3Model, input_ids: &Tensor, plan: BackpropPlan) -> Result<Tensor> {
    if plan.first_trained_layer == 0 && !plan.written_out {
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

/// What a trained block keeps between its forward and its backward.
enum Kept {
    /// Only its input: recomputed in the backward (activation checkpointing).
    Input(Tensor),
    /// Its autograd graph, from a detached input that requires grad.
    Graph { x: Tensor, out: Tensor },
    /// The written-out block's tape (`Qwen3Model::block_forward_tape`).
    Tape(BlockTape),
}

/// Forward of the trained blocks, each from a detached input, then backward
/// from the top one block at a time. A block `plan` recomputes keeps only its
/// input in the forward and is run again in the backward; the others keep
/// their tape (written-out blocks) or their graph from the forward.
fn blockwise(
    model: &Qwen3Model,
    input_ids: &Tensor,
    x0: Tensor,
    plan: BackpropPlan,
    top: &mut TopLoss<'_>,
    block_done: &mut dyn FnMut(usize) -> Result<()>,
) -> Result<()> {
    let first = plan.first_trained_layer;
    // 1. Forward, keeping what each trained block's backward needs.
    let mut kept: Vec<Kept> = Vec::with_capacity(model.num_layers() - first);
    let mut h = x0.detach();
    for l in first..model.num_layers() {
        let (next, k) = if plan.recomputes(l) {
            let next = tch::no_grad(|| model.block_forward(l, &h, 0))?;
            (next, Kept::Input(h))
        } else {
            block_with_backward(model, plan, l, h)?
        };
        kept.push(k);
        h = next;
    }
    let device = h.device();
    phases::mark(device, "forward");
    // 2. Head and loss with a graph from the last hidden state.
    let leaf = h.detach().set_requires_grad(true);
    top(&leaf)?;
    let mut g = leaf.grad();
    phases::mark(device, "loss");
    // 3. Blocks in reverse: (recompute and) backpropagate g.
    for (l, k) in (first..model.num_layers()).zip(kept).rev() {
        let k = match k {
            Kept::Input(x) => block_with_backward(model, plan, l, x)?.1,
            k => k,
        };
        g = match k {
            Kept::Tape(tape) => model.block_backward_tape(tape, &g)?,
            Kept::Graph { x, out } => {
                (out * &g).sum(Kind::Float).f_backward()?;
                x.grad()
            }
            Kept::Input(_) => unreachable!("recomputed above"),
        };
        block_done(l)?;
    }
    phases::mark(device, "backward");
    // 4. The embedding lookup, when it trains.
    if plan.written_out {
        if plan.first_trained_layer == 0 && model.embedding_trains() {
            model.embedding_backward(input_ids, &g)?;
        }
    } else if x0.requires_grad() {
        (x0 * &g).sum(Kind::Float).f_backward()?;
    }
    phases::mark(device, "embedding");
    Ok(())
}

/// Block `l`'s forward from input `x` (detached), keeping what its backward
/// needs: the written-out block's tape when `plan` says so, else a graph.
fn block_with_backward(
    model: &Qwen3Model,
    plan: BackpropPlan,
    l: usize,
    x: Tensor,
) -> Result<(Tensor, Kept)> {
    if plan.written_out {
        let (out, tape) = model.block_forward_tape(l, &x.detach())?;
        return Ok((out, Kept::Tape(tape)));
    }
    let x = x.detach().set_requires_grad(true);
    let out = model.block_forward(l, &x, 0)?;
    Ok((out.detach(), Kept::Graph { x, out }))
}
