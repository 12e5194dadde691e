//! `Linear`: the one place where a projection's precision and compute path
//! are decided, so `forward` code never branches on them.
//!
//! - `Packed`: frozen NVFP4 weights; `y = x @ W^T` through the model's
//!   resolved [`Nvfp4Backend`] (kernel or dequantize+matmul, chosen once at
//!   load time; never a silent fallback).
//! - `Master`: a dense weight (trainable or not); the forward rounds it as
//!   its [`Precision`] says: `ste(W)`, i.e. dequant(quant(W)), so training
//!   sees exactly the NVFP4 rounding of inference while gradients reach W
//!   as if the quantizer were the identity; or W as stored (the dense
//!   baseline).
//!
//! The [`Precision`] also says whether the input activations are rounded
//! to NVFP4 first (W4A4), for packed and master weights alike.

use std::sync::Arc;

use nvfp4_kernels::{Nvfp4Backend, Nvfp4Tensor, ScaleMode};
use tch::{Kind, Tensor};

use crate::error::Result;
use crate::precision::Precision;

/// A projection weight: frozen NVFP4 (inference) or a trainable master weight used through `ste()` (QAT).
#[derive(Debug)]
pub enum LinearWeight {
    /// NVFP4 data, `[out, in]` logical.
    Packed(Nvfp4Tensor),
    /// Dense weight `[out, in]` (e.g. an f32 master with `requires_grad`).
    Master(Tensor),
}

impl LinearWeight {
    /// Logical `[out, in]`.
    pub fn shape(&self) -> [usize; 2] {
        match self {
            LinearWeight::Packed(q) => [q.rows(), q.cols()],
            LinearWeight::Master(w) => {
                let s = w.size();
                [s[0] as usize, s[1] as usize]
            }
        }
    }
}

/// A bias-free projection `y = x @ W^T`.
#[derive(Debug)]
pub(crate) struct Linear {
    pub(crate) weight: LinearWeight,
    /// How the forward rounds the weight (a master one) and the input.
    pub(crate) precision: Precision,
    backend: Arc<Nvfp4Backend>,
}

impl Linear {
    /// A packed weight keeps its file's scale mode when it becomes a master
    /// (training rounds like the file); a dense one starts dense.
    pub(crate) fn new(weight: LinearWeight, backend: Arc<Nvfp4Backend>) -> Self {
        let precision = match &weight {
            LinearWeight::Packed(q) if q.global_scale().is_some() => {
                Precision::w4a16(ScaleMode::TwoLevel)
            }
            LinearWeight::Packed(_) => Precision::w4a16(ScaleMode::Single),
            LinearWeight::Master(_) => Precision::DENSE,
        };
        Linear {
            weight,
            precision,
            backend,
        }
    }

    /// x: [..., in] in the compute kind -> [..., out] in the same kind.
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // On CUDA with kernels the rounding is one fused pass instead of ~20 tch ops.
        let kernels = self.backend.uses_kernels();
        let x = self.precision.input(x, kernels)?;
        match &self.weight {
            LinearWeight::Packed(q) => Ok(self.backend.linear(&x, q)?),
            LinearWeight::Master(w) => {
                let w = self.precision.weight(w, x.kind(), kernels)?;
                Ok(x.f_linear::<Tensor>(&w, None)?)
            }
        }
    }

    /// Turns a packed weight into a dense master of `kind` (dequantized, so
    /// the first training forward reproduces inference exactly).
    pub(crate) fn make_trainable(&mut self, kind: Kind) {
        let w = match &self.weight {
            LinearWeight::Packed(q) => nvfp4_kernels::dequantize(q, kind),
            LinearWeight::Master(w) => w.detach().to_kind(kind),
        };
        self.weight = LinearWeight::Master(w.set_requires_grad(true));
    }

    /// Holds the weight dense in `kind` (dequantized if packed) and uses it
    /// as it is: no rounding of weight or input, no gradient.
    pub(crate) fn make_dense(&mut self, kind: Kind) {
        let w = match &self.weight {
            LinearWeight::Packed(q) => nvfp4_kernels::dequantize(q, kind),
            LinearWeight::Master(w) => w.detach().to_kind(kind),
        };
        self.weight = LinearWeight::Master(w);
        self.precision = Precision::DENSE;
    }

    pub(crate) fn is_trainable(&self) -> bool {
        matches!(&self.weight, LinearWeight::Master(w) if w.requires_grad())
    }
}
