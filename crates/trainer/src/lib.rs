//! NVFP4 quantization-aware full-parameter training of Qwen3.
//!
//! Every projection trains as an f32 (or bf16) *master* weight that the
//! forward pass sees through `nvfp4_kernels::ste`: dequant(quant(W)) going
//! forward, the identity going backward. The optimizer ([`AdamW`], moments
//! in f32, bf16 or block-wise 8 bits) updates the masters and never
//! re-quantizes them, so updates smaller than one FP4 step accumulate;
//! export (`qwen3_model::export_dat`) quantizes once at the end.
//!
//! Key types:
//! - [`TrainConfig`]: every knob of `examples/train.rs`; [`Trainer`]: the loop
//!   (micro-batches, accumulation, clipping, [`NonFinitePolicy`], activation
//!   checkpointing, checkpoints and exact resume);
//! - [`Dataset`] from [`load_tsv`] / [`load_jsonl`]: targets are the
//!   assistant turns plus `<|im_end|>`, prompts masked with [`IGNORE_INDEX`];
//! - [`Schedule`] (warmup + constant/cosine), [`MetricsLog`], [`plot_loss_curve`];
//! - [`run_job`] (a whole job, in a locked [`RunDirLock`] run directory, after
//!   checking outputs and the [`MemoryEstimate`]) and [`run_default`] (the
//!   embedded default run); both report through `tracing` and, with
//!   [`run_job_observed`], [`JobEvent`]s: the library never prints.
//!
//! ```no_run
//! use trainer::{run_default, DefaultRunOptions};
//!
//! # fn main() -> trainer::Result<()> {
//! let report = run_default(&DefaultRunOptions { run_dir: "runs/default".into(), progress: true, steps: None })?;
//! let eval = report.job.eval.expect("the default run evaluates");
//! println!("exact_match: {}/{}", eval.matched, eval.total);
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]

mod alloc;
mod backprop;
mod batch;
mod budget;
mod config;
mod data;
mod demo;
mod dist;
mod distill;
mod error;
mod eval;
mod evaluate;
mod fsutil;
mod grad;
mod job;
mod metrics;
mod optim;
mod plot;
mod resume;
mod run_dir;
mod schedule;
mod text;
mod trainer;
mod zero;

pub use alloc::{keep_freed_memory, prefer_expandable_segments};
pub use backprop::{
    forward_backward, masked_ce_backward, masked_ce_sum, reference_ce_sum, BackpropPlan, CE_CHUNK,
};
pub use batch::{inputs_and_labels, make_batch, Batch, DataCursor, DataOrder, IGNORE_INDEX};
pub use budget::{
    inference_estimate, training_estimate, training_estimate_per_rank, MemoryEstimate, ParamCounts,
};
pub use config::{Checkpointing, MasterDtype, NonFinitePolicy, TrainConfig};
pub use data::{
    load_data, load_jsonl, load_tsv, load_tsv_str, parse_jsonl_line, parse_tsv_line, tokenize,
    BadLinePolicy, DataOptions, DataStats, Dataset, Example,
};
pub use demo::{
    default_model_config, default_train_config, run_default, run_default_observed,
    write_default_base, DefaultRunOptions, DefaultRunReport, DEFAULT_MODEL_CONFIG,
    DEFAULT_TRAIN_TSV, DEFAULT_WEIGHTS_SEED,
};
pub use dist::DataParallel;
pub use distill::{distill_forward_backward, DistillSums, Teacher, DEFAULT_DISTILL_CHUNK};
pub use error::{Error, Result};
pub use eval::{exact_match, greedy_answers, EvalReport, EvalSample, GreedyAnswer};
pub use evaluate::{evaluate_loss, LossReport};
pub use fsutil::write_atomic;
pub use grad::{clip_coefficient, clip_grad_norm, global_grad_norm};
pub use job::{
    resolve_model_dir, run_job, run_job_observed, DataSource, JobEvent, JobReport, JobSpec,
    ResumeFrom, TeacherSpec, WeightsSource,
};
pub use metrics::{
    human_bytes, memory_available, memory_in_use, memory_in_use_checked, process_rss, MetricsLog,
    StepMetrics,
};
pub use optim::{
    default_decay, dynamic_map, AdamW, AdamWConfig, OptimStateKind, QuantMap, QUANT_BLOCK,
};
pub use plot::{plot_loss_curve, LossCurve};
pub use qwen3_model::phases::take_step_phases;
pub use run_dir::{timestamped_run_dir, RunDirLock, LOCK_FILE};
pub use schedule::{Schedule, ScheduleKind};
pub use text::{is_text_path, load_text_tokens, read_text, text_windows, tokenize_text};
pub use trainer::{StepProgress, TrainReport, Trainer};
pub use zero::{memory_per_gpu, moment_bytes, MemoryPerGpu, ShardPlan};
