//! Weights on disk: the one Qwen3 schema (`schema.rs`), the reader trait
//! every file format implements (`source.rs`), and the formats: `.dat`
//! (`dat.rs`) and Hugging Face safetensors directories (`safetensors.rs`).

pub(crate) mod dat;
pub(crate) mod resolve;
pub(crate) mod safetensors;
pub mod schema;
pub(crate) mod source;
