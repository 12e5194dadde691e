//! The training forward and backward of one decoder block, written out by
//! hand instead of recorded by autograd.
//!
//! Why: autograd keeps every intermediate its ops need (the f32 norm and RoPE
//! chains, each STE-rounded weight, the SiLU output), about 52k values per
//! token and block, and runs each elementwise op as its own pass. Written out,
//! the forward keeps only what the backward cannot cheaply recompute, 40k
//! values per token and block ([`BlockTape`]; the normed inputs and the
//! SwiGLU output are recomputed, q/k/v are kept rather than recomputed by a
//! GEMM), the elementwise work runs as fused kernels
//! (`nvfp4_kernels::train_ops`: RMSNorm, q/k-norm + RoPE, SwiGLU, forward
//! and backward), q/k/v and gate/up are one GEMM each, and weight gradients
//! are accumulated by the GEMM that computes them (`addmm_` into `.grad`). The rounded (STE) weights are recomputed in the
//! backward rather than kept: one fake-quantization pass costs far less than
//! holding a second copy of every weight.
//!
//! Only attention keeps a small autograd graph (q, k, v -> SDPA), so its
//! backward is the fused one SDPA picks (cuDNN's on the H200).
//!
//! Gradients equal the autograd block's (`block_forward` + backward) up to
//! rounding: the roundings of the forward are the same ones, and the
//! straight-through estimator passes gradients through the weight and
//! activation rounding as the identity, as `Precision` does under autograd.
//! Tests: `tests/train_block.rs`.

use tch::{Kind, Tensor};

use nvfp4_kernels::train_ops;

use crate::block::DecoderLayer;
use crate::error::{Error, Result};
use crate::grad_accumulate::{add_norm_grad, add_weight_grad};
use crate::linear::{Linear, LinearWeight};
use crate::model::Qwen3Model;
use crate::norm::RmsNorm;
use crate::phases;

/// What one block's forward keeps for its backward ([`Qwen3Model::block_forward_tape`]).
#[derive(Debug)]
pub struct BlockTape {
    layer: usize,
    batch: i64,
    seq: i64,
    x: Tensor,       // [N, H] block input
    rstd1: Tensor,   // [N] f32, input_layernorm
    qkv: Tensor,     // [N, (Hq + 2 Hkv) D] q/k/v before their norms
    q: Tensor,       // [B, Hq, T, D] after q-norm and RoPE, a leaf of the attention graph
    k: Tensor,       // [B, Hkv, T, D], a leaf
    v: Tensor,       // [B, Hkv, T, D], a leaf viewing `qkv`
    y: Tensor,       // [B, Hq, T, D] attention output, with its graph
    x_mid: Tensor,   // [N, H] after the attention residual
    rstd2: Tensor,   // [N] f32, post_attention_layernorm
    gate_up: Tensor, // [N, 2I] gate and up projections
}

/// The weights of a fused group (q/k/v, gate/up) as the GEMM sees them
/// (`ste(W)` or W), stacked along the output dimension, in `kind`: each
/// rounded straight into its rows.
fn rounded_stack(lins: &[&Linear], kind: Kind, kernels: bool) -> Result<Tensor> {
    let w = master(lins[0])?;
    if let [lin] = lins {
        if lin.precision.weights.is_none() && w.kind() == kind {
            return Ok(w.detach()); // a dense weight alone is used as stored
        }
    }
    let rows: Vec<i64> = lins.iter().map(|l| l.weight.shape()[0] as i64).collect();
    let cols = lins[0].weight.shape()[1] as i64;
    let out = Tensor::f_empty([rows.iter().sum::<i64>(), cols], (kind, w.device()))?;
    let mut start = 0;
    for (lin, r) in lins.iter().zip(rows) {
        lin.precision
            .weight_into(master(lin)?, &out.narrow(0, start, r), kernels)?;
        start += r;
    }
    Ok(out)
}

/// The trainable weight of a projection (`written_out_ok` and `head_loss_ok`
/// admit no other), or an error naming the frozen one.
pub(crate) fn master(lin: &Linear) -> Result<&Tensor> {
    match &lin.weight {
        LinearWeight::Master(w) => Ok(w),
        LinearWeight::Packed(_) => Err(Error::InvalidArgument {
            name: "projection",
            reason: "a frozen NVFP4 projection has no master weight to train".into(),
        }),
    }
}

impl DecoderLayer {
    fn linears(&self) -> [&Linear; 7] {
        let (a, m) = (&self.self_attn, &self.mlp);
        [
            &a.q_proj,
            &a.k_proj,
            &a.v_proj,
            &a.o_proj,
            &m.gate_proj,
            &m.up_proj,
            &m.down_proj,
        ]
    }

    fn norms(&self) -> [&RmsNorm; 4] {
        let a = &self.self_attn;
        [
            &self.input_layernorm,
            &a.q_norm,
            &a.k_norm,
            &self.post_attention_layernorm,
        ]
    }
}

impl Qwen3Model {
    /// Whether block `layer` can train through [`Qwen3Model::block_forward_tape`]:
    /// every projection and norm is trainable, and q/k/v (and gate/up) round
    /// their shared input alike, so each group can be one GEMM.
    pub fn written_out_ok(&self, layer: usize) -> bool {
        let Some(block) = self.layers.get(layer) else {
            return false;
        };
        let [q, k, v, _, g, u, _] = block.linears();
        block.linears().iter().all(|l| l.is_trainable())
            && block.norms().iter().all(|n| n.weight.requires_grad())
            && q.precision.activations == k.precision.activations
            && q.precision.activations == v.precision.activations
            && g.precision.activations == u.precision.activations
    }

    fn trained_block(&self, layer: usize) -> Result<&DecoderLayer> {
        if !self.written_out_ok(layer) {
            return Err(Error::InvalidArgument {
                name: "layer",
                reason: format!(
                    "block {layer} cannot train through the written-out backward \
                     (it does not exist, or not every projection and norm is trainable)"
                ),
            });
        }
        Ok(&self.layers[layer])
    }

    /// The training forward of block `layer` on `hidden` [B, T, H] (positions
    /// 0..T, causal): the same output as [`Qwen3Model::block_forward`], and a
    /// tape for [`Qwen3Model::block_backward_tape`]. Records no autograd graph
    /// except attention's own.
    pub fn block_forward_tape(&self, layer: usize, hidden: &Tensor) -> Result<(Tensor, BlockTape)> {
        let block = self.trained_block(layer)?;
        let (b, t, h) = self.check_hidden(hidden)?;
        let x = hidden.to_kind(self.dtype).reshape([b * t, h]).contiguous();
        let a = &block.self_attn;
        let (hq, hkv, d) = (a.num_heads as i64, a.num_kv_heads as i64, a.head_dim as i64);
        // 1. Norm, q/k/v in one GEMM, q/k-norm + RoPE.
        let (qkv, q, k, rstd1) = tch::no_grad(|| self.qkv_forward(block, &x, t))?;
        phases::mark(x.device(), "forward: norm, q/k/v, q/k-norm + RoPE");
        // 2. Attention, the one recorded graph, from leaves [B, heads, T, D].
        let leaf = |x: &Tensor, heads: i64| {
            x.view([b, t, heads, d])
                .transpose(1, 2)
                .detach()
                .set_requires_grad(true)
        };
        let (q, k, v) = (
            leaf(&q, hq),
            leaf(&k, hkv),
            leaf(&split_qkv(&qkv, hq, hkv, d).2, hkv),
        );
        let scale = 1.0 / (d as f64).sqrt();
        let y = tch::with_grad(|| {
            Tensor::f_scaled_dot_product_attention::<Tensor>(
                &q, &k, &v, None, 0.0, true, scale, true,
            )
        })?; // [B, Hq, T, D]
        phases::mark(x.device(), "forward: attention");
        // 3. o-projection, residual, norm, gate/up in one GEMM, SwiGLU, down, residual.
        let (out, x_mid, rstd2, gate_up) = tch::no_grad(|| self.mlp_forward(block, &x, &y))?;
        phases::mark(x.device(), "forward: o, norm, MLP");
        let tape = BlockTape {
            layer,
            batch: b,
            seq: t,
            x,
            rstd1,
            qkv,
            q,
            k,
            v,
            y,
            x_mid,
            rstd2,
            gate_up,
        };
        Ok((out.view([b, t, h]), tape))
    }

    /// The backward of the block `tape` came from: adds the gradients of
    /// `<out, g>` to every parameter's `.grad` (`g` [B, T, H], the gradient
    /// of the block's output) and returns the gradient of its input.
    pub fn block_backward_tape(&self, tape: BlockTape, g: &Tensor) -> Result<Tensor> {
        let block = self.trained_block(tape.layer)?;
        let (b, t) = (tape.batch, tape.seq);
        let g = g.to_kind(self.dtype).reshape([b * t, -1]);
        // 1. down, SwiGLU, gate/up, post-attention norm (+ the residual), o.
        let (dx_mid, dy) = tch::no_grad(|| self.mlp_backward(block, &tape, &g))?;
        phases::mark(g.device(), "backward: MLP, norm, o");
        // 2. Attention through its graph: the leaves' gradients.
        let dy = dy
            .view([b, t, -1, block.self_attn.head_dim as i64])
            .transpose(1, 2);
        tch::with_grad(|| (&tape.y * dy).sum(Kind::Float).f_backward())?;
        phases::mark(g.device(), "backward: attention");
        // 3. q/k-norm + RoPE, q/k/v, input norm (+ the residual).
        let dx = tch::no_grad(|| self.qkv_backward(block, &tape, &dx_mid))?;
        phases::mark(g.device(), "backward: q/k-norm + RoPE, q/k/v, norm");
        Ok(dx.view([b, t, -1]))
    }

    /// Step 1 of the forward on `x` [N, H] (T positions a row): the input
    /// norm's output and rstd, `[q | k | v]` before their norms, and q, k
    /// after norm + RoPE ([N, heads, D]).
    fn qkv_forward(
        &self,
        block: &DecoderLayer,
        x: &Tensor,
        t: i64,
    ) -> Result<(Tensor, Tensor, Tensor, Tensor)> {
        let (kernels, fused) = (self.backend.uses_kernels(), self.fused_training());
        let a = &block.self_attn;
        let ln = &block.input_layernorm;
        let (n1, rstd1) = train_ops::rmsnorm_forward(x, &ln.weight, ln.eps(), fused)?;
        let qkv = group_forward(&[&a.q_proj, &a.k_proj, &a.v_proj], &n1, self.dtype, kernels)?;
        let (q_pre, k_pre, _) = split_qkv(
            &qkv,
            a.num_heads as i64,
            a.num_kv_heads as i64,
            a.head_dim as i64,
        );
        let (cos, sin) = self.rotary.cos_sin(0, t as usize);
        let rope = |norm: &RmsNorm, pre: &Tensor| {
            train_ops::qk_norm_rope_forward(pre, &norm.weight, &cos, &sin, norm.eps(), fused)
        };
        let (q, k) = (rope(&a.q_norm, &q_pre)?, rope(&a.k_norm, &k_pre)?);
        Ok((qkv, q, k, rstd1))
    }

    /// Step 3 of the forward from the block input `x` and the attention
    /// output `y`: the block output, the residual after attention, the post
    /// norm's rstd, and `[gate | up]`.
    fn mlp_forward(
        &self,
        block: &DecoderLayer,
        x: &Tensor,
        y: &Tensor,
    ) -> Result<(Tensor, Tensor, Tensor, Tensor)> {
        let (kernels, fused) = (self.backend.uses_kernels(), self.fused_training());
        let (m, cd) = (&block.mlp, self.dtype);
        let y2 = merge_heads(&y.detach(), x.size()[0]); // [N, Hq D]
        let x_mid = x + group_forward(&[&block.self_attn.o_proj], &y2, cd, kernels)?;
        let ln = &block.post_attention_layernorm;
        let (n2, rstd2) = train_ops::rmsnorm_forward(&x_mid, &ln.weight, ln.eps(), fused)?;
        let gate_up = group_forward(&[&m.gate_proj, &m.up_proj], &n2, cd, kernels)?; // [N, 2I]
        let (gate, up) = split_halves(&gate_up);
        let hmid = train_ops::swiglu_forward(&gate, &up, fused)?;
        let out = &x_mid + group_forward(&[&m.down_proj], &hmid, cd, kernels)?;
        Ok((out, x_mid, rstd2, gate_up))
    }

    /// Backward step 1 for the block output's gradient `g` [N, H]: the
    /// gradients of the residual after attention and of the attention output.
    fn mlp_backward(
        &self,
        block: &DecoderLayer,
        tape: &BlockTape,
        g: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let (kernels, fused) = (self.backend.uses_kernels(), self.fused_training());
        let (m, cd) = (&block.mlp, self.dtype);
        let (gate, up) = split_halves(&tape.gate_up);
        // dh first: the SwiGLU backward then recomputes h in the same pass.
        let dh = g.f_mm(&rounded_stack(&[&m.down_proj], cd, kernels)?)?;
        let dgate_up = Tensor::f_empty_like(&tape.gate_up)?;
        let hmid = train_ops::swiglu_backward_with_output(&dh, &gate, &up, &dgate_up, fused)?;
        drop(dh);
        let down_in = m.down_proj.precision.input(&hmid, kernels)?;
        add_weight_grad(master(&m.down_proj)?, g, &down_in)?;
        drop((hmid, down_in));
        let ln = &block.post_attention_layernorm;
        let (n2, _) = train_ops::rmsnorm_forward(&tape.x_mid, &ln.weight, ln.eps(), fused)?;
        let dn2 = backward_group(&[&m.gate_proj, &m.up_proj], &dgate_up, &n2, cd, kernels)?;
        let (dx_mid, dw) = train_ops::rmsnorm_backward(
            &dn2,
            &tape.x_mid,
            &ln.weight,
            &tape.rstd2,
            Some(g),
            fused,
        )?;
        add_norm_grad(&ln.weight, &dw)?;
        let y2 = merge_heads(&tape.y.detach(), g.size()[0]);
        let dy = backward_group(&[&block.self_attn.o_proj], &dx_mid, &y2, cd, kernels)?;
        Ok((dx_mid, dy))
    }

    /// Backward step 3, once attention's backward has filled the q/k/v
    /// leaves' gradients: the gradient of the block input.
    fn qkv_backward(
        &self,
        block: &DecoderLayer,
        tape: &BlockTape,
        dx_mid: &Tensor,
    ) -> Result<Tensor> {
        let (kernels, fused) = (self.backend.uses_kernels(), self.fused_training());
        let a = &block.self_attn;
        let (hq, hkv, d) = (a.num_heads as i64, a.num_kv_heads as i64, a.head_dim as i64);
        let n = tape.x.size()[0];
        // The leaves' gradients as [N, heads, D] (their layout is the leaves', [B, T, heads, D]).
        let leaf_grad = |x: &Tensor| x.grad().transpose(1, 2).reshape([n, -1, d]);
        let (q_pre, k_pre, _) = split_qkv(&tape.qkv, hq, hkv, d);
        let dqkv = Tensor::f_empty([n, (hq + 2 * hkv) * d], (self.dtype, tape.x.device()))?;
        let (dq_pre, dk_pre, mut dv_pre) = split_qkv(&dqkv, hq, hkv, d);
        let (cos, sin) = self.rotary.cos_sin(0, tape.seq as usize);
        for (norm, leaf, pre, into) in [
            (&a.q_norm, &tape.q, &q_pre, &dq_pre),
            (&a.k_norm, &tape.k, &k_pre, &dk_pre),
        ] {
            let dw = train_ops::qk_norm_rope_backward(
                &leaf_grad(leaf),
                pre,
                &norm.weight,
                &cos,
                &sin,
                norm.eps(),
                into,
                fused,
            )?;
            add_norm_grad(&norm.weight, &dw)?;
        }
        dv_pre.f_copy_(&leaf_grad(&tape.v))?;
        let ln = &block.input_layernorm;
        let (n1, _) = train_ops::rmsnorm_forward(&tape.x, &ln.weight, ln.eps(), fused)?;
        let dn1 = backward_group(
            &[&a.q_proj, &a.k_proj, &a.v_proj],
            &dqkv,
            &n1,
            self.dtype,
            kernels,
        )?;
        let (dx, dw) = train_ops::rmsnorm_backward(
            &dn1,
            &tape.x,
            &ln.weight,
            &tape.rstd1,
            Some(dx_mid),
            fused,
        )?;
        add_norm_grad(&ln.weight, &dw)?;
        Ok(dx)
    }

    /// Whether the fused training kernels run: CUDA kernels allowed and a
    /// bf16 compute kind (the kernels' only one; f32 compute, as in the
    /// exactness tests, runs the tch-op references, which are exact there).
    pub(crate) fn fused_training(&self) -> bool {
        self.backend.uses_kernels() && self.dtype == Kind::BFloat16
    }
}

/// Projections sharing one input, as one GEMM: [N, sum of out].
fn group_forward(lins: &[&Linear], x: &Tensor, kind: Kind, kernels: bool) -> Result<Tensor> {
    let x = lins[0].precision.input(x, kernels)?;
    let w = rounded_stack(lins, kind, kernels)?;
    Ok(x.f_mm(&w.tr())?)
}

/// Backward of `y = input(x) @ [W1; W2; ...]^T` (projections sharing the
/// input `x`) given dy [N, sum of out], the group's output gradients side by
/// side: adds dy_i^T input(x) to each W_i's gradient, returns dx = dy @
/// [rounded(W_i)] (straight through the rounding).
fn backward_group(
    lins: &[&Linear],
    dy: &Tensor,
    x: &Tensor,
    kind: Kind,
    kernels: bool,
) -> Result<Tensor> {
    let xin = lins[0].precision.input(x, kernels)?;
    let mut col = 0;
    for lin in lins {
        let out = lin.weight.shape()[0] as i64;
        add_weight_grad(master(lin)?, &dy.narrow(1, col, out), &xin)?;
        col += out;
    }
    drop(xin);
    let w = rounded_stack(lins, kind, kernels)?;
    Ok(dy.f_mm(&w)?)
}

/// Column views `[q | k | v]` of a [N, (Hq + 2 Hkv) D] buffer as [N, heads, D].
fn split_qkv(qkv: &Tensor, hq: i64, hkv: i64, d: i64) -> (Tensor, Tensor, Tensor) {
    let n = qkv.size()[0];
    (
        qkv.narrow(1, 0, hq * d).view([n, hq, d]),
        qkv.narrow(1, hq * d, hkv * d).view([n, hkv, d]),
        qkv.narrow(1, (hq + hkv) * d, hkv * d).view([n, hkv, d]),
    )
}

/// The two column halves of [N, 2I].
fn split_halves(x: &Tensor) -> (Tensor, Tensor) {
    let half = x.size()[1] / 2;
    (x.narrow(1, 0, half), x.narrow(1, half, half))
}

/// [B, Hq, T, D] -> [N, Hq D] (a view when SDPA's output is stored
/// [B, T, Hq, D], as the flash kernel stores it; a copy otherwise).
fn merge_heads(y: &Tensor, n: i64) -> Tensor {
    y.transpose(1, 2).contiguous().view([n, -1])
}
