//! Quantization-aware distillation (QAD): the NVFP4 student learns the
//! frozen teacher's next-token distribution, `KL(teacher || student)` summed
//! over target positions, optionally mixed with the data loss:
//! `alpha * KL + (1 - alpha) * CE`.
//!
//! Memory: the head runs over chunks of positions, each chunk's loss is
//! backpropagated into the last hidden state before the next one, so at
//! most `chunk x vocab` f32 logits of each model live at once (never a full
//! `[tokens, 151936]` tensor for both).

use tch::{Kind, Reduction, Tensor};

use qwen3_model::Qwen3Model;

use crate::backprop::{forward_backward_with, BackpropPlan};
use crate::batch::IGNORE_INDEX;
use crate::error::{Error, Result};

/// Positions whose logits are computed at once.
pub const DEFAULT_DISTILL_CHUNK: usize = 1024;

/// A frozen teacher and how its logits enter the loss.
#[derive(Debug)]
pub struct Teacher {
    /// The teacher (dense; never trained).
    pub model: Qwen3Model,
    /// Weight of the KL term; `1 - alpha` weighs the data cross-entropy.
    pub alpha: f64,
    /// Positions per head chunk.
    pub chunk: usize,
}

impl Teacher {
    /// A teacher with weight `alpha` in [0, 1] on the KL term.
    pub fn new(model: Qwen3Model, alpha: f64) -> Result<Self> {
        if !(0.0..=1.0).contains(&alpha) {
            return Err(Error::config("distill-alpha", "a number in [0, 1]", alpha));
        }
        Ok(Teacher {
            model,
            alpha,
            chunk: DEFAULT_DISTILL_CHUNK,
        })
    }
}

/// Sums of one micro-batch: data cross-entropy and KL, over its target tokens.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct DistillSums {
    /// Cross-entropy of the student against the data, summed.
    pub ce: f64,
    /// KL(teacher || student), summed.
    pub kl: f64,
}

/// Teacher's last hidden state [B, T, H] (no graph).
fn teacher_hidden(teacher: &Qwen3Model, ids: &Tensor) -> Result<Tensor> {
    tch::no_grad(|| {
        let mut h = teacher.embed(&ids.to_device(teacher.device()));
        for l in 0..teacher.num_layers() {
            h = teacher.block_forward(l, &h, 0)?;
        }
        Ok(h)
    })
}

/// Forward and backward of one micro-batch of distillation: gradients of
/// `(alpha * KL + (1 - alpha) * CE) / denom` are added to the student's
/// parameters. Returns the unscaled sums.
pub fn distill_forward_backward(
    student: &Qwen3Model,
    teacher: &Teacher,
    input_ids: &Tensor,
    labels: &Tensor,
    denom: f64,
    plan: BackpropPlan,
) -> Result<DistillSums> {
    let t_hidden = teacher_hidden(&teacher.model, input_ids)?;
    let mut sums = DistillSums::default();
    forward_backward_with(student, input_ids, plan, &mut |top: &Tensor| {
        let h = top.size()[2];
        let flat_labels = labels.reshape([-1]);
        let rows = flat_labels.ne(IGNORE_INDEX).nonzero().squeeze_dim(1); // [N]
        let n = rows.size()[0];
        let s_flat = top.reshape([-1, h]);
        let t_flat = t_hidden.reshape([-1, h]);
        let chunk = teacher.chunk.max(1) as i64;
        let mut start = 0;
        while start < n {
            let len = chunk.min(n - start);
            let r = rows.narrow(0, start, len);
            let t_logp = tch::no_grad(|| -> Result<Tensor> {
                let x = t_flat
                    .index_select(0, &r.to_device(t_flat.device()))
                    .unsqueeze(0);
                let logits = teacher.model.head(&x)?.squeeze_dim(0);
                Ok(logits.to_device(top.device()).log_softmax(-1, Kind::Float))
            })?;
            let s_logits = student
                .head(&s_flat.index_select(0, &r).unsqueeze(0))?
                .squeeze_dim(0);
            let s_logp = s_logits.log_softmax(-1, Kind::Float);
            let kl = (t_logp.exp() * (&t_logp - &s_logp)).sum(Kind::Float);
            let targets = flat_labels.index_select(0, &r);
            let ce = s_logits.f_cross_entropy_loss::<Tensor>(
                &targets,
                None,
                Reduction::Sum,
                IGNORE_INDEX,
                0.0,
            )?;
            let loss = (&kl * teacher.alpha + &ce * (1.0 - teacher.alpha)) / denom;
            loss.f_backward()?;
            sums.kl += kl.double_value(&[]);
            sums.ce += ce.double_value(&[]);
            start += len;
        }
        Ok(())
    })?;
    Ok(sums)
}
