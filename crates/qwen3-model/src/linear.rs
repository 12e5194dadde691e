//! `Linear`: the one place where a projection's precision and compute path
//! are decided, so `forward` code never branches on them.
//!
//! - `Packed`: frozen NVFP4 weights; `y = x @ W^T` through the model's
//!   resolved [`Nvfp4Backend`] (kernel or dequantize+matmul, chosen once at
//!   load time; never a silent fallback).
//! - `Master`: a trainable dense weight; the forward uses `ste(W)`, i.e.
//!   dequant(quant(W)), so training sees exactly the NVFP4 rounding of
//!   inference while gradients reach W as if the quantizer were the identity.

use std::sync::Arc;

use nvfp4_kernels::{Nvfp4Backend, Nvfp4Tensor, ScaleMode};
use tch::{Kind, Tensor};

use crate::error::Result;

/// A projection weight: frozen NVFP4 (inference) or a trainable master weight used through `ste()` (QAT).
#[derive(Debug)]
pub enum LinearWeight {
    /// NVFP4 data, `[out, in]` logical.
    Packed(Nvfp4Tensor),
    /// Dense master weight `[out, in]` (e.g. f32 with `requires_grad`).
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
    /// The quantizer `ste` reproduces for a master weight: the mode the
    /// packed weight was stored with, so training rounds like the file.
    mode: ScaleMode,
    backend: Arc<Nvfp4Backend>,
}

impl Linear {
    pub(crate) fn new(weight: LinearWeight, backend: Arc<Nvfp4Backend>) -> Self {
        let mode = match &weight {
            LinearWeight::Packed(q) if q.global_scale().is_some() => ScaleMode::TwoLevel,
            _ => ScaleMode::Single,
        };
        Linear {
            weight,
            mode,
            backend,
        }
    }

    /// x: [..., in] in the compute kind -> [..., out] in the same kind.
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match &self.weight {
            LinearWeight::Packed(q) => Ok(self.backend.linear(x, q)?),
            LinearWeight::Master(w) => {
                // On CUDA with kernels: one fused pass (read W, write dequant(quant(W))
                // in the compute kind) instead of ~20 tch ops over the weight.
                let wq = if self.backend.uses_kernels() && w.device().is_cuda() {
                    nvfp4_kernels::cuda::ste(w, self.mode, x.kind())?
                } else {
                    nvfp4_kernels::ste(w, self.mode).to_kind(x.kind())
                };
                Ok(x.f_linear::<Tensor>(&wq, None)?)
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

    pub(crate) fn is_trainable(&self) -> bool {
        matches!(&self.weight, LinearWeight::Master(w) if w.requires_grad())
    }
}
