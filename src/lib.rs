//! Helpers shared by the examples (`train`, `run2`, `stress`, `dat`) and the
//! workspace-level tests, so that no example copies them from another:
//! - [`parse_device`] / [`parse_dtype`]: the `--device cpu|cuda[:N]` and
//!   `--dtype f32|bf16|f16` spellings, [`device_arg`] / [`dtype_arg`] /
//!   [`parse_arg`] their clap value parsers, [`pick_device`] the one choice
//!   of device (CUDA if available, else CPU, and it says which);
//! - [`run_main`]: errors printed once, no backtrace, exit status 1;
//! - [`JobPrinter`]: the training job's events and progress bar;
//! - [`init_tracing`]: logs to stderr, filtered by `RUST_LOG`;
//! - [`convert_model`]: `dat convert --to-format` / `train --export --format`;
//! - [`ModelFiles`]: `--model-dir` / `--weight` / `--config` / `--tokenizer` resolution;
//! - [`ChatSession`]: multi-turn chat with a KV cache kept across turns, or recomputed;
//! - [`write_atomic`], [`write_logits`]: files a user keeps (`--dump-logits`);
//! - [`MemoryProbe`]: device memory (CUDA) or RSS (CPU);
//! - [`run_stress`], [`StressReport`]: the FR-11 stress matrix and its verdict;
//! - [`run_train_stress`], [`TrainStressReport`]: FR-11 for training (start,
//!   save, resume, export in fresh processes) and its verdict.
//!
//! ```no_run
//! let device = qwen3_nvfp4::parse_device("cpu")?;
//! let files = qwen3_nvfp4::ModelFiles::resolve(Some("models/qwen3-4b".as_ref()), None, None, None)?;
//! # let _ = (device, files);
//! # Ok::<(), anyhow::Error>(())
//! ```
#![deny(missing_docs)]

mod chat;
mod cli;
mod convert;
mod device;
mod logging;
mod logits_dump;
mod memory;
mod model_files;
mod progress;
mod stress;
mod stress_report;
mod train_stress;

/// RSS is per process and unit tests share one: tests that allocate a lot
/// or read RSS take this lock so one never reads another's allocations.
#[cfg(test)]
fn heavy_test_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub use chat::{fit_context, ChatSession, ChatTurn};
pub use cli::{device_arg, dtype_arg, error_text, parse_arg, run_main};
pub use convert::{convert_model, resolve_input, Converted, ModelFormat};
pub use device::{device_name, dtype_name, parse_device, parse_dtype, pick_device};
pub use logging::init_tracing;
pub use logits_dump::{read_logits, write_logits, LOGITS_KEY};
pub use memory::{process_rss, MemoryProbe};
pub use model_files::{ModelFiles, TokenizerSource};
pub use progress::JobPrinter;
pub use stress::{
    run_stress, run_stress_with, synthetic_prompt, write_synthetic_model, StressCase, StressOptions,
};
pub use stress_report::{RunRecord, StressReport, CHILD_REPORT_PREFIX};
pub use train_stress::{
    phase_line, run_train_phase, run_train_stress, PhaseRecord, TrainPhase, TrainStressReport,
    TrainStressSetup, EXPORT_NAME, TRAIN_STRESS_PREFIX,
};
pub use trainer::write_atomic;
