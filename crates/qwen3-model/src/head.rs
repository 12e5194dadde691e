//! An NVFP4 head for a tied model (issue 15): decode reads the whole head
//! once per token, and in bf16 the 151936 x 2560 tied embedding of Qwen3-4B
//! is 778 MB of the ~2.9 GB a token reads. A packed copy of the embedding
//! is 4.5 bits per weight (219 MB); the lookup keeps the dense embedding.
//!
//! Its quality cost is the "w4a16+head" minus "w4a16" rows of
//! docs/QUALITY.md (the same rounding: [`QuantRecipe::head`] rounds the
//! tied embedding where it computes logits).
//!
//! [`QuantRecipe::head`]: crate::QuantRecipe::head

use nvfp4_kernels::ScaleMode;
use tch::Kind;

use crate::error::{Error, Result};
use crate::linear::{Linear, LinearWeight};
use crate::model::Qwen3Model;

impl Qwen3Model {
    /// Computes logits through an NVFP4 copy of the tied embedding (scales
    /// `mode`) instead of the dense embedding; the lookup is unchanged.
    /// Refused for a model with its own `lm_head` (nothing to copy) and for
    /// a trainable embedding (the copy would not follow the training).
    pub fn quantize_tied_head(&mut self, mode: ScaleMode) -> Result<()> {
        if self.lm_head.is_some() {
            return Err(Error::InvalidArgument {
                name: "quantize_tied_head",
                reason: "the model has its own lm_head; only a tied head is copied".into(),
            });
        }
        if self.embed_tokens.requires_grad() {
            return Err(Error::InvalidArgument {
                name: "quantize_tied_head",
                reason: "the embedding is training; quantize the head after training".into(),
            });
        }
        let packed = nvfp4_kernels::quantize(&self.embed_tokens.to_kind(Kind::Float), mode)?;
        self.lm_head = Some(Linear::new(
            LinearWeight::Packed(packed),
            self.backend.clone(),
        ));
        Ok(())
    }
}
