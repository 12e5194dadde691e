//! The optimizer: AdamW whose moments live in f32, bf16 or 8-bit blocks.

mod adamw;
mod moments;
pub(crate) mod quant8;

pub use adamw::{default_decay, AdamW, AdamWConfig};
pub use moments::OptimStateKind;
pub use quant8::{dynamic_map, QuantMap, QUANT_BLOCK};
