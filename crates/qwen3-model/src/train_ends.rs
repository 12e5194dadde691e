//! The two ends of the model in a written-out training step: the loss at
//! the top (final RMSNorm, head, cross-entropy; [`Qwen3Model::head_loss_backward`])
//! and the embedding lookup at the bottom ([`Qwen3Model::embedding_backward`]).
//!
//! The loss: the tied embedding or `lm_head`, rounded as its precision says,
//! and cross-entropy, forward and backward in one pass per chunk of rows.
//!
//! Why: through autograd each chunk materialises the logits in f32, their
//! log-softmax and its gradient (3 x 1.2 GB for 2048 rows of Qwen3's
//! 151936 words). Here a chunk's logits exist once, in the compute kind, and
//! the fused cross-entropy (`nvfp4_kernels::loss`) overwrites them with their
//! own gradient, which then feeds the two GEMMs of the head's backward.
//! Values equal the autograd path's (the logits are the same bf16 GEMM
//! output; the softmax runs in f32 in both); `tests/train_block.rs` compares.

use tch::{Kind, Tensor};

use nvfp4_kernels::{loss, train_ops};

use crate::error::{Error, Result};
use crate::grad_accumulate::{add_norm_grad, add_rows_grad, add_weight_grad};
use crate::model::Qwen3Model;
use crate::precision::Precision;
use crate::train_block::master;

impl Qwen3Model {
    /// Whether [`Qwen3Model::head_loss_backward`] applies: the final norm
    /// and the head's weight (the embedding when tied) train.
    pub fn head_loss_ok(&self) -> bool {
        let head_trains = match &self.lm_head {
            Some(lin) => lin.is_trainable(),
            None => self.embed_tokens.requires_grad(),
        };
        head_trains && self.norm.weight.requires_grad()
    }

    /// The head's rounding and its trainable weight [V, H].
    fn head_weight(&self) -> Result<(Precision, &Tensor)> {
        Ok(match &self.lm_head {
            Some(lin) => (lin.precision, master(lin)?),
            None => (self.tied_head, &self.embed_tokens),
        })
    }

    /// Cross-entropy of `hidden` [N, H] (the last hidden state of the
    /// target positions) against `targets` [N], `chunk` rows of logits at a
    /// time: adds the gradients of `scale * CE sum` to the head's and the
    /// final norm's `.grad` and returns the CE sum (unscaled) and the
    /// gradient of `hidden`.
    pub fn head_loss_backward(
        &self,
        hidden: &Tensor,
        targets: &Tensor,
        scale: f64,
        chunk: usize,
    ) -> Result<(f64, Tensor)> {
        if !self.head_loss_ok() {
            return Err(Error::InvalidArgument {
                name: "head_loss_backward",
                reason: "the head or the final norm does not train".into(),
            });
        }
        tch::no_grad(|| {
            let (kernels, fused) = (self.backend.uses_kernels(), self.fused_training());
            let hidden = hidden.to_kind(self.dtype).contiguous();
            let rows = hidden.size()[0];
            if rows == 0 {
                // No target in the batch: no loss, no gradient (and no kernel
                // launch over zero rows).
                return Ok((0.0, hidden.zeros_like()));
            }
            let norm = &self.norm;
            let (n, rstd) = train_ops::rmsnorm_forward(&hidden, &norm.weight, norm.eps(), fused)?;
            let (precision, w_param) = self.head_weight()?;
            let x = precision.input(&n, kernels)?;
            let w = precision.weight(w_param, self.dtype, kernels)?; // [V, H]
            let dn = Tensor::f_empty_like(&n)?;
            let mut sum = Tensor::zeros([], (Kind::Float, hidden.device()));
            let chunk = i64::try_from(chunk).unwrap_or(i64::MAX).max(1);
            for start in (0..rows).step_by(chunk as usize) {
                let c = chunk.min(rows - start);
                let xc = x.narrow(0, start, c);
                let logits = xc.f_mm(&w.tr())?; // [c, V], becomes its own gradient
                sum +=
                    loss::cross_entropy_fused(&logits, &targets.narrow(0, start, c), scale, fused)?;
                add_weight_grad(w_param, &logits, &xc)?;
                dn.narrow(0, start, c).f_copy_(&logits.f_mm(&w)?)?;
            }
            let (dh, dw) =
                train_ops::rmsnorm_backward(&dn, &hidden, &norm.weight, &rstd, None, fused)?;
            add_norm_grad(&norm.weight, &dw)?;
            Ok((sum.double_value(&[]), dh))
        })
    }

    /// Whether the embedding table trains.
    pub fn embedding_trains(&self) -> bool {
        self.embed_tokens.requires_grad()
    }

    /// The embedding lookup's backward: adds `g` [B, T, H] (the gradient of
    /// the embedded `input_ids` [B, T]) to the rows of the embedding's
    /// `.grad` they were looked up from. Autograd's embedding backward builds
    /// a dense [V, H] gradient first (0.7 GiB on Qwen3) and then adds it.
    pub fn embedding_backward(&self, input_ids: &Tensor, g: &Tensor) -> Result<()> {
        if !self.embed_tokens.requires_grad() {
            return Err(Error::InvalidArgument {
                name: "embedding_backward",
                reason: "the embedding does not train".into(),
            });
        }
        let h = self.cfg.hidden_size as i64;
        tch::no_grad(|| {
            add_rows_grad(
                &self.embed_tokens,
                &input_ids.reshape([-1]),
                &g.reshape([-1, h]),
            )
        })
    }
}
