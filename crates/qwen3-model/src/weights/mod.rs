//! Weights on disk: the one Qwen3 schema (`schema.rs`), the reader trait
//! every file format implements (`source.rs`), the one safetensors dtype
//! table (`dtype.rs`), and the formats: `.dat` (`dat.rs`), Hugging Face
//! safetensors directories (`safetensors.rs`, the one shard reader), and
//! the standard NVFP4 layouts of serving engines (compressed-tensors and
//! ModelOpt: `quant_config.rs` detects them, `packed_source.rs` reads them,
//! `export_dir.rs` writes them).
//!
//! Conversions between files: a Hugging Face directory to `.dat`
//! (`convert.rs`) and back (`export_hf.rs`). Exports of a (trained) model:
//! `.dat` (`export_dat.rs`) and a dense Hugging Face directory
//! (`export_hf_dir.rs`), both through the model's weights by key
//! (`model_weights.rs`).

pub(crate) mod compressed_tensors;
pub(crate) mod convert;
pub(crate) mod dat;
pub(crate) mod dtype;
pub(crate) mod export_dat;
pub(crate) mod export_dir;
pub(crate) mod export_hf;
pub(crate) mod export_hf_dir;
pub(crate) mod model_weights;
pub(crate) mod modelopt;
pub(crate) mod packed_source;
pub(crate) mod quant_config;
pub(crate) mod resolve;
pub(crate) mod safetensors;
pub mod schema;
pub(crate) mod source;
