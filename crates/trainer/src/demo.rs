//! The embedded default run of `examples/train.rs` (no arguments): a small
//! Qwen3 (real Qwen3 tokenizer and vocabulary, hidden size 64, tied
//! embeddings) with synthetic NVFP4 weights written to a `.dat` and loaded
//! back, fine-tuned on the shipped "Pico" data set until it answers the
//! training prompts exactly, on a 2-core CPU in a few minutes. The CI test
//! calls [`run_default`] too, so the example and the test are one code path.

use std::path::{Path, PathBuf};

use qwen3_model::{LoadOptions, Qwen3Config, Qwen3Model};
use tch::Device;
use tokenizer_bridge::Qwen3Tokenizer;

use crate::config::TrainConfig;
use crate::data::BadLinePolicy;
use crate::error::{Error, Result};
use crate::job::{run_job_locked, DataSource, JobEvent, JobReport, JobSpec, WeightsSource};
use crate::optim::AdamWConfig;
use crate::run_dir::RunDirLock;
use crate::schedule::ScheduleKind;

/// `config.json` of the default model.
pub const DEFAULT_MODEL_CONFIG: &str = include_str!("../assets/default_config.json");
/// The default training data (TSV).
pub const DEFAULT_TRAIN_TSV: &str = include_str!("../assets/default_train.tsv");
/// Seed of the synthetic base weights.
pub const DEFAULT_WEIGHTS_SEED: u64 = 1234;

/// Knobs of the default run.
#[derive(Clone, Debug)]
pub struct DefaultRunOptions {
    /// Where the base `.dat`, checkpoints, metrics, loss curve and export go.
    pub run_dir: PathBuf,
    /// Show the progress bar.
    pub progress: bool,
    /// Override the number of steps (tests use the default).
    pub steps: Option<u64>,
}

/// What the default run produced.
#[derive(Clone, Debug)]
pub struct DefaultRunReport {
    /// The job's report (losses, exact match, timings).
    pub job: JobReport,
    /// Synthetic starting weights.
    pub base_dat: PathBuf,
    /// Exported trained weights (`config.json` and tokenizer files beside them).
    pub trained_dat: PathBuf,
    /// Checkpoint directory.
    pub checkpoint_dir: PathBuf,
    /// Metrics log.
    pub metrics: PathBuf,
}

/// The default model configuration.
pub fn default_model_config() -> Result<Qwen3Config> {
    Ok(Qwen3Config::from_json_str(DEFAULT_MODEL_CONFIG)?)
}

/// Training settings of the default run, writing under `run_dir`.
pub fn default_train_config(run_dir: &Path) -> TrainConfig {
    TrainConfig {
        epochs: None,
        steps: Some(240),
        batch_size: 16,
        seq_len: 64,
        lr: 3e-3,
        warmup: 10,
        schedule: ScheduleKind::Cosine,
        min_lr_ratio: 0.05,
        grad_accum: 1,
        clip: Some(1.0),
        adamw: AdamWConfig {
            weight_decay: 0.0,
            ..Default::default()
        },
        decay_norms_and_embeddings: false,
        seed: 7,
        shuffle: true,
        bad_lines: BadLinePolicy::Fail,
        checkpoint_dir: Some(run_dir.join("checkpoints")),
        save_every: None,
        keep_last: 2,
        metrics: Some(run_dir.join("metrics.jsonl")),
        progress: true,
        ..TrainConfig::default()
    }
}

/// Writes the synthetic base model of the default run to `path` (`.dat`).
pub fn write_default_base(cfg: &Qwen3Config, path: &Path) -> Result<()> {
    let model = Qwen3Model::random(cfg, &LoadOptions::new(Device::Cpu), DEFAULT_WEIGHTS_SEED)?;
    qwen3_model::export_dat(&model, path, None)?;
    Ok(())
}

/// Runs the default job: synthetic base `.dat` -> train -> checkpoint ->
/// export a model directory (`<run_dir>/model/`) -> reload -> exact match on
/// every training prompt.
pub fn run_default(opts: &DefaultRunOptions) -> Result<DefaultRunReport> {
    run_default_observed(opts, &mut |_| {})
}

/// [`run_default`], handing each [`JobEvent`] to `observe`.
pub fn run_default_observed(
    opts: &DefaultRunOptions,
    observe: &mut dyn FnMut(&JobEvent<'_>),
) -> Result<DefaultRunReport> {
    let dir = &opts.run_dir;
    crate::alloc::keep_freed_memory();
    // Locked before the base model is written into it.
    let lock = RunDirLock::acquire(dir)?;
    let tok = Qwen3Tokenizer::bundled()?;
    let config = default_model_config()?;
    // Base and export in directories of their own: each is a model directory.
    let base_dir = dir.join("base");
    std::fs::create_dir_all(&base_dir).map_err(|e| Error::io(&base_dir, e))?;
    let base_dat = base_dir.join("base.dat");
    write_default_base(&config, &base_dat)?;
    tracing::info!(
        "wrote synthetic NVFP4 base weights to {}",
        base_dat.display()
    );
    let mut train = default_train_config(dir);
    train.progress = opts.progress;
    if let Some(s) = opts.steps {
        train.steps = Some(s);
        // A shorter run keeps a warmup that fits in it.
        train.warmup = train.warmup.min(s);
    }
    let trained_dat = dir.join("model").join("model.dat");
    let spec = JobSpec {
        config,
        weights: WeightsSource::Dat(base_dat.clone()),
        device: Device::Cpu,
        dtype: None,
        compute_path: Default::default(),
        data: DataSource::TsvText {
            name: "default_train.tsv".into(),
            text: DEFAULT_TRAIN_TSV.into(),
        },
        system_prompt: None,
        resume: None,
        run_dir: dir.clone(),
        export_dat: Some(trained_dat.clone()),
        export_hf: None,
        eval_samples: usize::MAX,
        eval_max_new_tokens: 32,
        run_args: serde_json::json!({ "mode": "default" }),
        train: train.clone(),
        data_parallel: None,
        teacher: None,
        recipe: None,
    };
    let job = run_job_locked(&spec, &tok, &lock, observe)?;
    Ok(DefaultRunReport {
        job,
        base_dat,
        trained_dat,
        checkpoint_dir: train.checkpoint_dir.unwrap_or_default(),
        metrics: train.metrics.unwrap_or_default(),
    })
}
