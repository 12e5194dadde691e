//! Training checkpoints that survive a kill: a training-state store that
//! knows nothing of the model, the weight formats or the kernels (named
//! tch tensors and a JSON state in, the same bits out). Exporting a trained
//! model for inference is `qwen3_model::export_dat` / `export_hf_dir`.
//!
//! A checkpoint is a directory `step-000123/` holding the master weights,
//! optimizer state and any other named tensors in safetensors files (every
//! dtype kept bit-exact), plus `checkpoint.json` with the format version,
//! the [`TrainingState`] (step, epoch, data cursor, RNG state, config, run
//! arguments) and the length and SHA-256 of every file. It is written into
//! a temp directory beside the final one, fsynced and renamed into place,
//! so a kill at any moment leaves the previous checkpoint intact;
//! [`CheckpointManager`] keeps the last K, and loading checks every file
//! so damage is reported by file name.
//!
//! The ranks of a sharded (ZeRO) run save together
//! ([`CheckpointManager::save_collective`], over any [`RankGroup`]): each
//! writes its own files into the one temp directory, rank 0 writes the
//! metadata last and publishes; each rank of a later run, at any world
//! size, reads only the tensors it needs ([`CheckpointManager::load_selected`]).
//!
//! Key types: [`CheckpointManager`] (save / latest / load),
//! [`TrainingState`], [`RankGroup`], [`KeepLastCheckpoints`], [`CheckpointMetadata`],
//! [`Error`].
//!
//! ```no_run
//! use checkpoint::{CheckpointManager, TrainingState};
//! use tch::{Device, Kind, Tensor};
//!
//! # fn main() -> checkpoint::Result<()> {
//! let manager = CheckpointManager::new("runs/ckpt".as_ref(), 3)?;
//! let w = Tensor::randn([4, 16], (Kind::Float, Device::Cpu));
//! let state = TrainingState { step: 100, ..Default::default() };
//! manager.save(&state, &[("model.norm.weight".to_string(), w)])?;
//!
//! if let Some(path) = manager.latest()? {
//!     let (state, tensors) = CheckpointManager::load(&path, Device::Cpu)?;
//!     println!("resuming at step {} with {} tensors", state.step, tensors.len());
//! }
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]

mod collective;
mod digest;
mod dtype;
mod error;
mod layout;
mod manager;
mod metadata;
mod retention;
mod safetensors_io;
mod staging;
mod state;
mod verify;

pub use collective::RankGroup;
pub use error::{Error, Result};
pub use manager::{CheckpointManager, DEFAULT_SHARD_BYTES};
pub use metadata::{
    CheckpointMetadata, FileRecord, TensorRecord, FORMAT_NAME, FORMAT_VERSION, METADATA_FILE,
};
pub use retention::KeepLastCheckpoints;
pub use state::TrainingState;
