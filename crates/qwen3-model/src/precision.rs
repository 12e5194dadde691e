//! How a projection rounds its operands ([`Precision`]) and the per-model
//! choice of which projections round how ([`QuantRecipe`]).
//!
//! The choice lives in the projection (`Linear`) and the tied head, never as
//! a branch in the forward code: the same model runs as the bf16 baseline,
//! as STE QAT of weights only (W4A16, what Hopper runs fast) or of weights
//! and activations (W4A4, what Blackwell runs fast), and as post-training
//! quantization (a dense model evaluated with NVFP4 rounding), by changing
//! its recipe.
//!
//! Activations are rounded like the project's W4A4 emulation
//! (`Nvfp4Backend::with_activation_quantization`): blocks of 16 along the
//! input dimension, single-level scales. Under training the rounding is a
//! straight-through estimator, so gradients pass as if it were the identity.

use nvfp4_kernels::ScaleMode;
use tch::{Kind, Tensor};

use crate::error::Result;
use crate::model::Qwen3Model;

/// The rounding one projection applies in its forward.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Precision {
    /// NVFP4 rounding of a dense (master) weight, straight-through when it
    /// trains; `None`: the weight is used as stored (the bf16 baseline). A
    /// packed NVFP4 weight is NVFP4 whatever this says.
    pub weights: Option<ScaleMode>,
    /// Round the input activations to NVFP4 before the matmul (W4A4).
    pub activations: bool,
}

impl Precision {
    /// No rounding: dense weights and activations as they are.
    pub const DENSE: Precision = Precision {
        weights: None,
        activations: false,
    };

    /// NVFP4 weights with `mode`, activations untouched (W4A16).
    pub fn w4a16(mode: ScaleMode) -> Self {
        Precision {
            weights: Some(mode),
            activations: false,
        }
    }

    /// The input as the matmul sees it: `x`, or its NVFP4 rounding (STE).
    /// `kernels`: the fused CUDA quantizer may be used (the model's backend
    /// runs kernels and `x` is on CUDA); both give the same values.
    pub(crate) fn input(&self, x: &Tensor, kernels: bool) -> Result<Tensor> {
        if !self.activations {
            return Ok(x.shallow_clone());
        }
        round(x, ScaleMode::Single, x.kind(), kernels)
    }

    /// A dense weight as the matmul sees it, in `kind`.
    pub(crate) fn weight(&self, w: &Tensor, kind: Kind, kernels: bool) -> Result<Tensor> {
        match self.weights {
            None => Ok(w.f_to_kind(kind)?),
            Some(mode) => round(w, mode, kind, kernels),
        }
    }
}

impl Precision {
    /// [`Precision::weight`] written into `out` (a contiguous [out, in]
    /// tensor of the compute kind, e.g. rows of a stacked q/k/v weight),
    /// without autograd: on CUDA with kernels the rounding kernel writes it
    /// directly, saving the copy.
    pub(crate) fn weight_into(&self, w: &Tensor, out: &Tensor, kernels: bool) -> Result<()> {
        match self.weights {
            Some(mode) if kernels && w.device().is_cuda() => Ok(
                nvfp4_kernels::cuda::fake_quantize_into(&w.detach(), mode, out)?,
            ),
            _ => {
                let rounded = tch::no_grad(|| self.weight(w, out.kind(), kernels))?;
                Ok(out.shallow_clone().f_copy_(&rounded)?)
            }
        }
    }
}

/// `ste(x)` over blocks of 16 along the last dimension, in `kind`.
fn round(x: &Tensor, mode: ScaleMode, kind: Kind, kernels: bool) -> Result<Tensor> {
    if kernels && x.device().is_cuda() {
        let size = x.size();
        let cols = size.last().copied().unwrap_or(0);
        let flat = x.f_reshape([-1, cols])?.f_contiguous()?;
        let y = nvfp4_kernels::cuda::ste(&flat, mode, kind)?;
        return Ok(y.f_reshape(size.as_slice())?);
    }
    Ok(nvfp4_kernels::f_ste(x, mode)?.f_to_kind(kind)?)
}

/// Which parts of a model run in NVFP4 (see the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuantRecipe {
    /// Scale mode of the NVFP4 weights; `None`: everything dense (bf16 baseline).
    pub weights: Option<ScaleMode>,
    /// Also round the projections' input activations (W4A4).
    pub activations: bool,
    /// Round the head too: an untied `lm_head` or, in a tied model, the
    /// embedding matrix where it computes the logits (the lookup stays dense).
    pub head: bool,
    /// Keep the last k decoder blocks dense (0: none).
    pub keep_last_blocks: usize,
}

impl QuantRecipe {
    /// Everything dense: the bf16 (or f32) baseline.
    pub const DENSE: QuantRecipe = QuantRecipe {
        weights: None,
        activations: false,
        head: false,
        keep_last_blocks: 0,
    };

    /// Every block projection in NVFP4 (`mode`), activations optionally, the
    /// head dense, no block kept dense.
    pub fn nvfp4(mode: ScaleMode, activations: bool) -> Self {
        QuantRecipe {
            weights: Some(mode),
            activations,
            head: false,
            keep_last_blocks: 0,
        }
    }

    /// A short name for reports: `bf16`, `w4a16`, `w4a4+head`, `w4a16-2l-keep2`...
    pub fn label(&self) -> String {
        let Some(mode) = self.weights else {
            return "bf16".into();
        };
        let mut s = String::from(if self.activations { "w4a4" } else { "w4a16" });
        if self.head {
            s.push_str("+head");
        }
        if mode == ScaleMode::Single {
            s.push_str("-1l");
        }
        if self.keep_last_blocks > 0 {
            s.push_str(&format!("-keep{}", self.keep_last_blocks));
        }
        s
    }

    /// The precision of block `layer` of `n` blocks.
    fn block(&self, layer: usize, n: usize) -> Precision {
        if self.weights.is_none() || layer + self.keep_last_blocks >= n {
            return Precision::DENSE;
        }
        Precision {
            weights: self.weights,
            activations: self.activations,
        }
    }

    fn head_precision(&self) -> Precision {
        match (self.weights, self.head) {
            (Some(mode), true) => Precision {
                weights: Some(mode),
                activations: self.activations,
            },
            _ => Precision::DENSE,
        }
    }
}

/// Parses a [`QuantRecipe::label`]: `bf16`, or `w4a16` / `w4a4`, then
/// optionally `+head`, `-1l` (single-level scales; two-level otherwise) and
/// `-keep<N>` (the last N blocks dense), in that order.
impl std::str::FromStr for QuantRecipe {
    type Err = crate::error::Error;

    fn from_str(text: &str) -> Result<Self> {
        let bad = || crate::error::Error::InvalidArgument {
            name: "recipe",
            reason: format!(
                "{text:?} is not a recipe; expected bf16, or w4a16 / w4a4 followed by \
                 optional +head, -1l, -keep<N> (e.g. w4a4+head-1l-keep2)"
            ),
        };
        if text == "bf16" {
            return Ok(QuantRecipe::DENSE);
        }
        let (activations, mut rest) = if let Some(r) = text.strip_prefix("w4a16") {
            (false, r)
        } else if let Some(r) = text.strip_prefix("w4a4") {
            (true, r)
        } else {
            return Err(bad());
        };
        let mut take = |suffix: &str| match rest.strip_prefix(suffix) {
            Some(r) => {
                rest = r;
                true
            }
            None => false,
        };
        let head = take("+head");
        let single = take("-1l");
        let keep_last_blocks = match rest.strip_prefix("-keep") {
            Some(n) => n.parse().map_err(|_| bad())?,
            None if rest.is_empty() => 0,
            None => return Err(bad()),
        };
        let mode = if single {
            ScaleMode::Single
        } else {
            ScaleMode::TwoLevel
        };
        Ok(QuantRecipe {
            weights: Some(mode),
            activations,
            head,
            keep_last_blocks,
        })
    }
}

impl Qwen3Model {
    /// Sets the precision of every projection and of the head from `recipe`.
    /// Packed (frozen NVFP4) weights stay NVFP4; the recipe then only
    /// decides whether their activations are rounded.
    pub fn set_recipe(&mut self, recipe: &QuantRecipe) {
        let n = self.layers.len();
        for (l, layer) in self.layers.iter_mut().enumerate() {
            let p = recipe.block(l, n);
            let a = &mut layer.self_attn;
            for lin in [&mut a.q_proj, &mut a.k_proj, &mut a.v_proj, &mut a.o_proj] {
                lin.precision = p;
            }
            let m = &mut layer.mlp;
            for lin in [&mut m.gate_proj, &mut m.up_proj, &mut m.down_proj] {
                lin.precision = p;
            }
        }
        let head = recipe.head_precision();
        match &mut self.lm_head {
            Some(lin) => lin.precision = head,
            None => self.tied_head = head,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_label_parses_back_to_its_recipe_and_bad_ones_are_named() {
        let mut recipes = vec![QuantRecipe::DENSE];
        for mode in [ScaleMode::Single, ScaleMode::TwoLevel] {
            for activations in [false, true] {
                for head in [false, true] {
                    for keep_last_blocks in [0, 3] {
                        recipes.push(QuantRecipe {
                            weights: Some(mode),
                            activations,
                            head,
                            keep_last_blocks,
                        });
                    }
                }
            }
        }
        for r in recipes {
            let label = r.label();
            assert_eq!(label.parse::<QuantRecipe>().unwrap(), r, "{label}");
        }
        for bad in [
            "",
            "w4",
            "w4a8",
            "w4a16+tail",
            "w4a16-keep",
            "w4a4-keepx",
            "w4a16-1l+head",
        ] {
            let e = bad.parse::<QuantRecipe>().unwrap_err().to_string();
            assert!(e.contains("not a recipe"), "{bad}: {e}");
        }
    }
}
