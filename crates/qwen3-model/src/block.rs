//! One pre-norm decoder block: attention and MLP, each wrapped in a residual.

use tch::Tensor;

use crate::attention::{Attention, AttnContext};
use crate::error::Result;
use crate::kv_cache::KvCache;
use crate::mlp::Mlp;
use crate::norm::RmsNorm;

/// `model.layers.{i}`.
#[derive(Debug)]
pub(crate) struct DecoderLayer {
    pub(crate) input_layernorm: RmsNorm, // [hidden]
    pub(crate) self_attn: Attention,
    pub(crate) post_attention_layernorm: RmsNorm, // [hidden]
    pub(crate) mlp: Mlp,
}

impl DecoderLayer {
    /// x: [B, T, hidden] -> [B, T, hidden].
    pub(crate) fn forward(
        &self,
        x: &Tensor,
        ctx: &AttnContext,
        cache: Option<(&mut KvCache, usize)>,
    ) -> Result<Tensor> {
        let h = self
            .self_attn
            .forward(&self.input_layernorm.forward(x), ctx, cache)?;
        let x = x + h; //                                                   residual 1
        let h = self
            .mlp
            .forward(&self.post_attention_layernorm.forward(&x))?;
        Ok(x + h) //                                                        residual 2
    }
}
