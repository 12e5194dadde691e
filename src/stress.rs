//! FR-11 stress: load -> prefill -> generate -> drop, repeated over the matrix
//! {no KV cache, KV cache pbp, KV cache tbt} for N iterations, with the memory
//! in use read before and after every run. The original crashed intermittently
//! in host-to-device copies when runs were repeated back to back; this loop is
//! how the KV cache earns the word "stable".
//!
//! Shared by `examples/stress.rs` (which adds the multi-process mode) and the
//! workspace test `tests/stress_cpu.rs`. The verdict lives in `stress_report`.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use nvfp4_kernels::ComputePath;
use qwen3_model::{
    generate, GenerateOptions, LoadOptions, PrefillMode, Qwen3Config, Qwen3Model, SamplingParams,
};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind};

use crate::memory::MemoryProbe;
use crate::stress_report::{RunRecord, StressReport};
use crate::write_atomic;

/// One cell of the stress matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum StressCase {
    /// No KV cache: every step recomputes the whole sequence.
    NoCache,
    /// KV cache, prompt fed in one forward.
    CachePbp,
    /// KV cache, prompt fed one token per forward.
    CacheTbt,
}

impl StressCase {
    /// The matrix, in the order it runs.
    pub const ALL: [StressCase; 3] = [
        StressCase::NoCache,
        StressCase::CachePbp,
        StressCase::CacheTbt,
    ];

    /// Short name for tables.
    pub fn name(self) -> &'static str {
        match self {
            Self::NoCache => "no-cache",
            Self::CachePbp => "kv-pbp",
            Self::CacheTbt => "kv-tbt",
        }
    }
}

/// What one stress run loads and does.
#[derive(Clone, Debug)]
pub struct StressOptions {
    /// The `.dat` loaded by every run.
    pub weight: PathBuf,
    /// Its `config.json`.
    pub config: PathBuf,
    /// Where the model lives.
    pub device: Device,
    /// Activation dtype.
    pub dtype: Kind,
    /// NVFP4 compute path.
    pub compute_path: ComputePath,
    /// Times the whole matrix is repeated.
    pub iterations: usize,
    /// Prompt ids (the same every run).
    pub prompt: Vec<u32>,
    /// Greedy tokens generated per run (no stop ids, so every run does the same work).
    pub max_new_tokens: usize,
    /// Allowed growth of the memory in use over the warm-up baseline, in bytes.
    pub tolerance_bytes: u64,
    /// Fail when any run's ids differ from the first run's (set on CPU f32,
    /// where the three modes are deterministic and must agree).
    pub require_identical: bool,
}

/// Runs the matrix `opts.iterations` times. Errors and panics of a run are
/// recorded in the report (which then fails) and end the loop; only a failure
/// to set up the memory probe is returned as `Err`.
pub fn run_stress(opts: &StressOptions) -> Result<StressReport> {
    run_stress_with(opts, &mut |_, _| {})
}

/// [`run_stress`] with `after_drop(iteration, case)` called after each run has
/// dropped its model and before memory is read again; tests use it to inject a leak.
pub fn run_stress_with(
    opts: &StressOptions,
    after_drop: &mut dyn FnMut(usize, StressCase),
) -> Result<StressReport> {
    let probe = MemoryProbe::new(opts.device)?;
    let mut report = StressReport::new(probe.what(), opts.tolerance_bytes, opts.require_identical);
    'outer: for iteration in 0..opts.iterations {
        for case in StressCase::ALL {
            let mem_before = probe.bytes_in_use()?;
            let outcome = catch_unwind(AssertUnwindSafe(|| run_once(opts, case)));
            after_drop(iteration, case);
            let mem_after = probe.bytes_in_use()?;
            let outcome = match outcome {
                Ok(result) => result.map_err(|e| format!("{e:#}")),
                Err(panic) => Err(format!("panic: {}", panic_message(&panic))),
            };
            match outcome {
                Ok(stats) => report.push(RunRecord {
                    iteration,
                    case,
                    mem_before,
                    mem_after,
                    ..stats
                }),
                Err(message) => {
                    report.fail(format!("iteration {iteration}, {}: {message}", case.name()));
                    break 'outer;
                }
            }
        }
    }
    Ok(report)
}

/// load -> prefill -> generate -> drop for one case; memory fields left 0.
fn run_once(opts: &StressOptions, case: StressCase) -> Result<RunRecord> {
    let start = Instant::now();
    let load = LoadOptions {
        device: opts.device,
        dtype: opts.dtype,
        compute_path: opts.compute_path,
        strict: true,
    };
    // The model library's one opener: a `.dat` or a safetensors directory.
    let model = Qwen3Model::load_with_config(&opts.weight, Some(&opts.config), &load)
        .with_context(|| format!("{}", opts.weight.display()))?;
    let load_s = start.elapsed().as_secs_f64();
    let gen = GenerateOptions {
        max_new_tokens: opts.max_new_tokens,
        sampling: SamplingParams::greedy(),
        stop_ids: Vec::new(),
        prefill: if case == StressCase::CacheTbt {
            PrefillMode::TokenByToken
        } else {
            PrefillMode::PromptByPrompt
        },
        keep_prompt_logits: false,
        fused_decode: true,
    };
    let mut cache = (case != StressCase::NoCache)
        .then(|| model.new_cache(1, opts.prompt.len() + opts.max_new_tokens))
        .transpose()?;
    let generation = generate(&model, cache.as_mut(), &opts.prompt, &gen, &mut |_| true)?;
    drop(cache);
    drop(model);
    Ok(RunRecord {
        iteration: 0,
        case,
        mem_before: 0,
        mem_after: 0,
        load_s,
        prefill_tps: generation.prefill_tokens_per_s(),
        decode_tps: generation.decode_tokens_per_s(),
        tokens: generation.tokens,
    })
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    match (panic.downcast_ref::<&str>(), panic.downcast_ref::<String>()) {
        (Some(s), _) => s.to_string(),
        (_, Some(s)) => s.clone(),
        _ => "(non-text panic payload)".to_string(),
    }
}

/// Writes a random NVFP4 model of `cfg` as `dir/model.dat` + `dir/config.json`
/// (so every stress run exercises the real `.dat` load path); returns
/// `(weight, config)`.
pub fn write_synthetic_model(
    cfg: &Qwen3Config,
    seed: u64,
    dir: &Path,
) -> Result<(PathBuf, PathBuf)> {
    cfg.validate().context("synthetic model config")?;
    let opts = LoadOptions {
        device: Device::Cpu,
        dtype: Kind::Float,
        compute_path: ComputePath::Auto,
        strict: true,
    };
    let model = Qwen3Model::random(cfg, &opts, seed).context("building the synthetic model")?;
    let weight = dir.join("model.dat");
    let config = dir.join("config.json");
    // The export the trainer uses: original keys, NVFP4 pairs, raw embeddings and norms.
    qwen3_model::export_dat(&model, &weight, None)
        .with_context(|| format!("writing {}", weight.display()))?;
    write_atomic(&config, cfg.to_json_string().as_bytes())?;
    Ok((weight, config))
}

/// `len` prompt ids drawn from a fixed LCG below `vocab` (the same every run
/// and every process, so the runs can be compared).
pub fn synthetic_prompt(len: usize, vocab: usize, seed: u64) -> Vec<u32> {
    let mut state = seed ^ 0x9E37_79B9_7F4A_7C15;
    (0..len)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 33) % vocab.max(1) as u64) as u32
        })
        .collect()
}
