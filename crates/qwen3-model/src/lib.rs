//! Qwen3 decoder written out in full on tch (FR-07): config, NVFP4 linear
//! layers, KV cache, loading from `.dat` and safetensors, training hooks, and
//! generation; and everything that knows the Qwen3 weight names on disk:
//! Hugging Face directory <-> `.dat` conversion ([`convert_hf_dir_to_dat`],
//! [`export_dat_to_hf_dir_with`]) and export of a (trained) model
//! ([`export_dat`], [`export_hf_dir`], [`export_model_dir`]).
//!
//! The forward pass is the one of transformers' `Qwen3ForCausalLM`: embedding
//! lookup -> N x [RMSNorm -> q/k/v -> per-head q/k RMSNorm -> RoPE (theta from
//! the config) -> causal GQA attention (SDPA) -> o -> residual; RMSNorm ->
//! down(silu(gate) * up) -> residual] -> RMSNorm -> lm_head (or the tied
//! embedding). Every projection is a [`LinearWeight`]: frozen NVFP4 run
//! through the model's resolved `Nvfp4Backend`, or a trainable master weight
//! used through `ste()`. Logits match transformers within 1e-5 relative on
//! CPU f32 (see `tests/parity.rs`).
//!
//! Generation: [`generate`] (one sequence, multi-turn through [`Conversation`])
//! and [`generate_batch`] (prompts of different lengths, left-padded, one cache).
//!
//! Key types: [`Qwen3Config`], [`LoadOptions`], [`Qwen3Model`], [`KvCache`],
//! [`LinearWeight`], [`WeightRef`], [`Error`].
//!
//! ```no_run
//! use qwen3_model::{KvCache, LoadOptions, Qwen3Config, Qwen3Model};
//! use tch::{Device, Tensor};
//!
//! # fn main() -> qwen3_model::Result<()> {
//! let cfg = Qwen3Config::from_file("config.json".as_ref())?;
//! let dat = dat_format::DatFile::open("model.dat")?;
//! let model = Qwen3Model::load_dat(&dat, &cfg, &LoadOptions::new(Device::cuda_if_available()))?;
//! let mut cache = model.new_cache(1, 256)?;
//! let prompt = Tensor::from_slice(&[9707i64, 0]).view([1, 2]);
//! let logits = tch::no_grad(|| model.forward(&prompt, Some(&mut cache)))?; // [1, 2, vocab] f32
//! let next = logits.select(1, -1).argmax(-1, false);                       // greedy
//! # let _ = (next, &mut cache as &mut KvCache);
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]

mod alloc;
mod attention;
mod block;
mod config;
mod error;
mod fused_decode;
mod generate;
mod generate_batch;
mod grad_accumulate;
mod head;
mod init;
mod kv_cache;
mod linear;
mod loader;
mod mlp;
mod model;
mod norm;
pub mod phases;
mod precision;
mod random;
mod rope;
mod sampling;
mod scale_stats;
mod train;
mod train_block;
mod train_ends;
mod weights;

pub use alloc::guard_libtorch;
pub use config::Qwen3Config;
pub use error::{Error, Result};
pub use fused_decode::FusedDecoder;
pub use generate::{
    generate, Conversation, FinishReason, GenerateOptions, Generation, PrefillMode,
};
pub use generate_batch::{generate_batch, BatchGeneration, RowGeneration};
pub use init::{initializer_range, DEFAULT_INITIALIZER_RANGE};
pub use kv_cache::{KvCache, DEFAULT_GROW_CHUNK};
pub use linear::LinearWeight;
pub use model::{LoadOptions, Qwen3Model};
pub use nvfp4_kernels::{ComputePath, ScaleMode};
pub use precision::{Precision, QuantRecipe};
pub use sampling::{Sampler, SamplingParams};
pub use scale_stats::ScaleStats;
pub use train::WeightRef;
pub use train_block::BlockTape;
pub use weights::convert::{convert_hf_dir_to_dat, ConvertReport};
pub use weights::export_dat::export_dat;
pub use weights::export_dir::{
    export_model_dir, model_files_in, DirExportOptions, DirFormat, MODEL_FILES,
};
pub use weights::export_hf::{export_dat_to_hf_dir, export_dat_to_hf_dir_with, DatToHfOptions};
pub use weights::export_hf_dir::{export_hf_dir, export_hf_dir_with, HfDtype, HfExportOptions};
pub use weights::quant_config::{detect_packed_layout, PackedLayout};
pub use weights::resolve::{ModelPaths, WeightFormat};
pub use weights::schema::{
    hf_rank, is_packed_key, LayerTensor, TensorClass, TensorRole, TensorSpec, WeightSchema,
    EMBED_KEY, FINAL_NORM_KEY, LM_HEAD_KEY,
};
