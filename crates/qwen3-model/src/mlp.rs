//! The SiLU-gated MLP: `down(silu(gate(x)) * up(x))`.

use tch::Tensor;

use crate::error::Result;
use crate::linear::Linear;

/// `model.layers.{i}.mlp`.
#[derive(Debug)]
pub(crate) struct Mlp {
    pub(crate) gate_proj: Linear, // [intermediate, hidden]
    pub(crate) up_proj: Linear,   // [intermediate, hidden]
    pub(crate) down_proj: Linear, // [hidden, intermediate]
}

impl Mlp {
    /// x: [B, T, hidden] -> [B, T, hidden], in the compute kind.
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let gate = self.gate_proj.forward(x)?.silu(); // [B, T, I]
        let up = self.up_proj.forward(x)?; //            [B, T, I]
        self.down_proj.forward(&(gate * up)) //          [B, T, H]
    }
}
