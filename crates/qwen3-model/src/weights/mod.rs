//! Weights on disk: the one Qwen3 schema (`schema.rs`), the reader trait
//! every file format implements (`source.rs`), and the formats: `.dat`
//! (`dat.rs`), Hugging Face safetensors directories (`safetensors.rs`), and
//! the standard NVFP4 layouts of serving engines (compressed-tensors and
//! ModelOpt: `quant_config.rs` detects them, `packed_source.rs` reads them,
//! `export_dir.rs` writes them).

pub(crate) mod compressed_tensors;
pub(crate) mod dat;
pub(crate) mod export_dir;
pub(crate) mod modelopt;
pub(crate) mod packed_source;
pub(crate) mod quant_config;
pub(crate) mod resolve;
pub(crate) mod safetensors;
pub mod schema;
pub(crate) mod source;
