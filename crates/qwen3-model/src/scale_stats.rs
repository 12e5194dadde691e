//! How the E4M3 block scales of a model's projections fall: the share that
//! lands in the E4M3 subnormal range (exponent field 0: at most 3
//! significant bits) under single-level or two-level scaling. Single-level
//! scales are `amax / 6` itself, so the small weights of a trained model put
//! most of them below 2^-6; two-level scaling divides by a per-tensor global
//! scale first, which moves the largest block scale to 448.

use nvfp4_kernels::ScaleMode;
use tch::{Kind, Tensor};

use crate::error::Result;
use crate::linear::LinearWeight;
use crate::model::Qwen3Model;
use crate::train::Item;

/// Counts of block scales over the projections of a model.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ScaleStats {
    /// Blocks of 16 weights (one E4M3 scale each).
    pub blocks: u64,
    /// Scales in the E4M3 subnormal range, zero excluded.
    pub subnormal: u64,
    /// Scales that are exactly zero (all-zero blocks, or blocks whose amax
    /// rounds to a zero scale: those weights all become 0).
    pub zero: u64,
}

impl ScaleStats {
    /// `subnormal / blocks`.
    pub fn subnormal_share(&self) -> f64 {
        self.subnormal as f64 / self.blocks.max(1) as f64
    }

    /// `zero / blocks`.
    pub fn zero_share(&self) -> f64 {
        self.zero as f64 / self.blocks.max(1) as f64
    }

    /// Adds the scale codes (u8, any shape) of one tensor.
    pub fn add_codes(&mut self, codes: &Tensor) -> Result<()> {
        let magnitude = codes.f_bitwise_and(0x7F)?;
        let exponent_zero = magnitude.f_lt(8)?;
        let zero = magnitude.f_eq(0)?;
        let count =
            |t: &Tensor| -> Result<u64> { Ok(t.f_sum(Kind::Int64)?.f_int64_value(&[])? as u64) };
        let z = count(&zero)?;
        self.blocks += codes.numel() as u64;
        self.zero += z;
        self.subnormal += count(&exponent_zero)? - z;
        Ok(())
    }
}

impl Qwen3Model {
    /// Block-scale statistics of every projection quantized with `mode`
    /// (dense weights are quantized for the count; packed ones are counted
    /// as stored, whatever `mode`). `head`: also count the head (the tied
    /// embedding or `lm_head`).
    pub fn scale_stats(&self, mode: ScaleMode, head: bool) -> Result<ScaleStats> {
        let mut stats = ScaleStats::default();
        for (key, item) in self.items() {
            let is_head = key == "lm_head.weight" || key == "model.embed_tokens.weight";
            let t = match item {
                Item::Linear(lin) if !is_head || head => &lin.weight,
                Item::Tensor(t) if is_head && head && self.lm_head.is_none() => {
                    stats.add_codes(nvfp4_kernels::quantize_named(&key, t, mode)?.scale())?;
                    continue;
                }
                _ => continue,
            };
            match t {
                LinearWeight::Packed(q) => stats.add_codes(q.scale())?,
                LinearWeight::Master(w) => {
                    stats.add_codes(nvfp4_kernels::quantize_named(&key, w, mode)?.scale())?
                }
            }
        }
        Ok(stats)
    }
}
