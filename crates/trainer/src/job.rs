//! A whole training job, as `examples/train.rs` runs it: lock the run
//! directory, check the outputs, read the data, check the memory estimate,
//! load the model, train (optionally resuming), draw the loss curve, export
//! a model directory, and measure exact match of the exported model.

use std::path::{Path, PathBuf};
use std::time::Instant;

use dat_format::DatFile;
use nvfp4_kernels::ComputePath;
use qwen3_model::{LoadOptions, QuantRecipe, Qwen3Config, Qwen3Model};
use tch::{Device, Kind};
use tokenizer_bridge::Qwen3Tokenizer;

use crate::config::TrainConfig;
use crate::data::{load_data, DataOptions, Dataset};
use crate::distill::Teacher;
use crate::error::{Error, Result};
use crate::eval::{exact_match, EvalReport};
use crate::metrics::human_bytes;
use crate::plot::{plot_loss_curve, LossCurve};
use crate::run_dir::RunDirLock;
use crate::trainer::{StepProgress, TrainReport, Trainer};

/// Where a job's weights come from.
#[derive(Clone, Debug, PartialEq)]
pub enum WeightsSource {
    /// A `.dat` file (NVFP4 projections, raw embeddings and norms).
    Dat(PathBuf),
    /// A Hugging Face directory of bf16/f16/f32 safetensors (quantized on load).
    HfDir(PathBuf),
    /// No weights: pretraining from scratch. Hugging Face's initialisation
    /// of the job's config (normal(0, `initializer_range` of this
    /// `config.json`), norms at 1), dense, drawn from `seed`.
    Init {
        /// The `config.json` the job's config was read from.
        config: PathBuf,
        /// Seed of the draw.
        seed: u64,
    },
}

/// Which checkpoint to resume from.
#[derive(Clone, Debug, PartialEq)]
pub enum ResumeFrom {
    /// The newest one in the checkpoint directory (none: start fresh, with a note).
    Latest,
    /// A `step-NNNNNN` directory.
    Path(PathBuf),
}

/// Everything a job needs besides the training configuration.
#[derive(Clone, Debug)]
pub struct JobSpec {
    /// Model configuration.
    pub config: Qwen3Config,
    /// Weights.
    pub weights: WeightsSource,
    /// Device to train on.
    pub device: Device,
    /// Compute kind (`None`: bf16 on CUDA, f32 on CPU).
    pub dtype: Option<Kind>,
    /// NVFP4 path of frozen (packed) projections.
    pub compute_path: ComputePath,
    /// Training data file (`.tsv`/`.txt` or `.jsonl`).
    pub data: DataSource,
    /// System message before every TSV pair.
    pub system_prompt: Option<String>,
    /// Training knobs.
    pub train: TrainConfig,
    /// Resume point.
    pub resume: Option<ResumeFrom>,
    /// Run directory (loss curve, defaults for metrics/checkpoints).
    pub run_dir: PathBuf,
    /// Export the trained model as `.dat` here; `config.json` and the
    /// tokenizer files go beside it, making its directory a model directory.
    pub export_dat: Option<PathBuf>,
    /// Export the trained model as a safetensors directory here.
    pub export_hf: Option<PathBuf>,
    /// Prompts for the exact-match check of the exported model (0: none).
    pub eval_samples: usize,
    /// Longest generated answer in the exact-match check.
    pub eval_max_new_tokens: usize,
    /// Recorded in checkpoints.
    pub run_args: serde_json::Value,
    /// Join this data-parallel group (launched by torchrun or srun); `None`:
    /// a single process. Ranks other than 0 train but export, plot and
    /// evaluate nothing.
    pub data_parallel: Option<distributed::GroupOptions>,
    /// Distil from this teacher (QAD) instead of training on the data alone.
    pub teacher: Option<TeacherSpec>,
    /// How the trained projections round in the forward (QAT scheme, or
    /// `bf16` for the dense baseline); `None`: as the weights are stored.
    pub recipe: Option<QuantRecipe>,
}

/// The frozen teacher of a distillation job.
#[derive(Clone, Debug, PartialEq)]
pub struct TeacherSpec {
    /// A model path as [`Qwen3Model::load_dense`] takes it; loaded dense (a
    /// bf16 directory as stored, NVFP4 dequantized). Usually the model being
    /// fine-tuned: the student then learns to stay close to its own
    /// full-precision self while its weights move onto the NVFP4 grid.
    pub path: PathBuf,
    /// Weight of the KL term; `1 - alpha` weighs the data cross-entropy.
    pub alpha: f64,
}

/// Training data: a file, or TSV text held in memory (the embedded default).
#[derive(Clone, Debug, PartialEq)]
pub enum DataSource {
    /// A file; format from its extension.
    File(PathBuf),
    /// Plain text for pretraining-style training (a `.txt`, `.txt.gz` or a
    /// directory of them): tokenized once (cached in the run directory),
    /// packed into windows of `seq_len`, every token a target.
    Text(PathBuf),
    /// TSV text and the name it is reported under.
    TsvText {
        /// Name used in messages.
        name: String,
        /// The text.
        text: String,
    },
}

/// What a job did.
#[derive(Clone, Debug)]
pub struct JobReport {
    /// Training summary.
    pub train: TrainReport,
    /// Loss of every step run by this process, in order.
    pub losses: Vec<(u64, f64)>,
    /// Exact match of the exported (or trained) model, if asked for.
    pub eval: Option<EvalReport>,
    /// The loss-curve PNG, if any step ran.
    pub loss_png: Option<PathBuf>,
    /// Examples in the data.
    pub examples: usize,
    /// Wall time of the whole job, seconds.
    pub wall_s: f64,
}

impl JobSpec {
    fn load_options(&self) -> LoadOptions {
        let mut o = LoadOptions::new(self.device);
        if let Some(k) = self.dtype {
            o.dtype = k;
        }
        o.compute_path = self.compute_path;
        o
    }

    fn load_model(&self) -> Result<(Qwen3Model, Option<DatFile>)> {
        let (mut model, like) = self.load_weights()?;
        if let Some(recipe) = &self.recipe {
            model.set_recipe(recipe);
        }
        Ok((model, like))
    }

    fn load_weights(&self) -> Result<(Qwen3Model, Option<DatFile>)> {
        let opts = self.load_options();
        match &self.weights {
            WeightsSource::Dat(p) => {
                let dat = DatFile::open(p)?;
                let model = Qwen3Model::load_dat(&dat, &self.config, &opts)?;
                Ok((model, Some(dat)))
            }
            WeightsSource::HfDir(d) => Ok((Qwen3Model::load_hf_dir(d, &self.config, &opts)?, None)),
            WeightsSource::Init { config, seed } => {
                let std = qwen3_model::initializer_range(config)?;
                let model = Qwen3Model::init_dense(&self.config, &opts, *seed, std)?;
                Ok((model, None))
            }
        }
    }

    fn load_dataset(&self, tok: &Qwen3Tokenizer) -> Result<Dataset> {
        let opts = DataOptions {
            seq_len: self.train.seq_len,
            bad_lines: self.train.bad_lines,
            system_prompt: self.system_prompt.clone(),
        };
        match &self.data {
            DataSource::File(p) => load_data(p, tok, &opts),
            DataSource::Text(p) => {
                let cache = self.run_dir.join("token-cache");
                std::fs::create_dir_all(&cache).map_err(|e| Error::io(&cache, e))?;
                let ids = crate::text::load_text_tokens(p, tok, Some(&cache))?;
                crate::text::text_windows(p, &ids, self.train.seq_len)
            }
            DataSource::TsvText { name, text } => crate::data::load_tsv_str(name, text, tok, &opts),
        }
    }
}

/// What a job reports as it goes. The library only logs these (`tracing`);
/// the caller decides what to show (`Display` gives a one-line message for
/// each but [`JobEvent::Step`], which a progress display renders).
#[derive(Clone, Copy, Debug)]
pub enum JobEvent<'a> {
    /// The data file was read.
    Data(&'a Dataset),
    /// Training is about to start.
    Training {
        /// Trainable tensors.
        tensors: usize,
        /// Trainable parameters.
        parameters: u64,
        /// The training knobs.
        config: &'a TrainConfig,
        /// Optimizer state size in bytes.
        state_bytes: u64,
        /// Steps of the whole run.
        steps: u64,
        /// Where it runs.
        device: Device,
        /// Activation checkpointing, as resolved: every k-th block is
        /// recomputed (1: all, 0: none).
        recompute_every: usize,
    },
    /// Resumed from a checkpoint.
    Resumed {
        /// The checkpoint directory.
        from: &'a Path,
        /// Its step.
        step: u64,
    },
    /// A dense teacher was loaded: the job distils.
    Teacher {
        /// Where it came from.
        path: &'a Path,
        /// Weight of the KL term.
        alpha: f64,
    },
    /// `--resume latest` found no checkpoint: a fresh start.
    NoCheckpointYet,
    /// One optimizer step finished.
    Step(StepProgress<'a>),
    /// The trained model was written.
    Exported {
        /// "model directory" or "safetensors directory".
        what: &'static str,
        /// The `.dat` file or the directory.
        path: &'a Path,
    },
}

impl std::fmt::Display for JobEvent<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JobEvent::Data(d) => write!(
                f,
                "data: {} examples from {} ({} target tokens, {} bad lines skipped, {} truncated)",
                d.examples.len(),
                d.path.display(),
                d.stats.target_tokens,
                d.stats.skipped,
                d.stats.context_truncated + d.stats.targets_truncated
            ),
            JobEvent::Training {
                tensors,
                parameters,
                config,
                state_bytes,
                steps,
                device,
                recompute_every,
            } => write!(
                f,
                "training {tensors} tensors ({:.2} M parameters, master {}, optimizer state {} = {}), {steps} steps, device {device:?}, activation checkpointing {} ({})",
                *parameters as f64 / 1e6,
                config.master_dtype,
                config.adamw.state,
                human_bytes(*state_bytes),
                match recompute_every {
                    0 => "off".to_string(),
                    1 => "on".to_string(),
                    k => format!("1 block in {k}"),
                },
                config.activation_checkpointing
            ),
            JobEvent::Resumed { from, step } => {
                write!(f, "resumed from {} at step {step}", from.display())
            }
            JobEvent::Teacher { path, alpha } => write!(
                f,
                "distilling from the dense teacher {} (loss = {alpha} * KL + {} * CE)",
                path.display(),
                1.0 - alpha
            ),
            JobEvent::NoCheckpointYet => {
                write!(f, "--resume latest: no checkpoint yet, starting fresh")
            }
            JobEvent::Step(p) => write!(
                f,
                "step {}/{}: loss {:.4}",
                p.metrics.step, p.total_steps, p.metrics.loss
            ),
            JobEvent::Exported { what, path } => write!(f, "exported {what} {}", path.display()),
        }
    }
}

/// Runs a job end to end (see the module doc), reporting nothing but logs.
pub fn run_job(spec: &JobSpec, tok: &Qwen3Tokenizer) -> Result<JobReport> {
    run_job_observed(spec, tok, &mut |_| {})
}

/// [`run_job`], handing each [`JobEvent`] to `observe` as it happens.
///
/// Before the first step it locks the run directory (a second run there is
/// refused), checks that every output can be written, that the batch fits
/// the data, and that the estimated memory fits the device.
pub fn run_job_observed(
    spec: &JobSpec,
    tok: &Qwen3Tokenizer,
    observe: &mut dyn FnMut(&JobEvent<'_>),
) -> Result<JobReport> {
    let lock = RunDirLock::acquire(&spec.run_dir)?;
    run_job_locked(spec, tok, &lock, observe)
}

/// [`run_job_observed`] in a run directory the caller has locked.
pub(crate) fn run_job_locked(
    spec: &JobSpec,
    tok: &Qwen3Tokenizer,
    lock: &RunDirLock,
    observe: &mut dyn FnMut(&JobEvent<'_>),
) -> Result<JobReport> {
    debug_assert_eq!(lock.dir(), spec.run_dir.as_path());
    let start = Instant::now();
    // Only rank 0 of a data-parallel group reports; the others train silently.
    let main_process = spec.data_parallel.as_ref().is_none_or(|g| g.rank == 0);
    let mut emit = |e: &JobEvent<'_>| {
        if !main_process {
            return;
        }
        if !matches!(e, JobEvent::Step(_)) {
            tracing::info!("{e}");
        }
        observe(e);
    };
    spec.check_outputs()?;
    let data = spec.load_dataset(tok)?;
    let examples = data.examples.len();
    emit(&JobEvent::Data(&data));
    if spec.train.batch_size > examples {
        return Err(Error::config(
            "batch-size",
            format!("at most the {examples} examples of {}", data.path.display()),
            spec.train.batch_size,
        ));
    }
    let world = spec.data_parallel.as_ref().map_or(1, |g| g.world_size);
    let mut estimate = crate::budget::training_estimate_per_rank(
        &spec.config,
        &spec.train,
        spec.load_options().dtype,
        world,
    );
    if spec.teacher.is_some() {
        if spec.data_parallel.is_some() {
            return Err(Error::config(
                "distill",
                "a single process (distillation is not data-parallel yet)",
                "a data-parallel group",
            ));
        }
        estimate.add_dense_copy(&spec.config, spec.load_options().dtype);
    }
    estimate.check_fits(spec.device)?;
    let (model, like) = spec.load_model()?;
    let pad = spec.config.pad_token_id.unwrap_or_else(|| tok.eos_id());
    // Exact match asks chat prompts for their answers; text windows have none.
    let eval_set: Vec<_> = match spec.data {
        DataSource::Text(_) => Vec::new(),
        _ => pick_eval_examples(&data, spec.eval_samples),
    };
    let mut trainer = Trainer::new(model, spec.train.clone(), data, pad)?;
    trainer.set_run_args(spec.run_args.clone());
    if let Some(group) = &spec.data_parallel {
        trainer.set_data_parallel(distributed::ProcessGroup::new(group)?)?;
    }
    if let Some(t) = &spec.teacher {
        let model = Qwen3Model::load_dense(&t.path, None, &spec.load_options())?;
        if model.config().to_json_string() != spec.config.to_json_string() {
            return Err(Error::config(
                "teacher",
                "a model of the student's config (same layers, sizes and vocabulary)",
                t.path.display(),
            ));
        }
        emit(&JobEvent::Teacher {
            path: &t.path,
            alpha: t.alpha,
        });
        trainer.set_teacher(Teacher::new(model, t.alpha)?);
    }
    // ZeRO-1 in a single process: the whole state, as without it.
    trainer.ensure_optimizer(None)?;
    emit(&JobEvent::Training {
        tensors: trainer.param_names().len(),
        parameters: trainer.params.iter().map(|p| p.numel() as u64).sum(),
        config: trainer.config(),
        state_bytes: trainer.optimizer().state_bytes() as u64,
        steps: trainer.total_steps(),
        device: trainer.model().device(),
        recompute_every: trainer.recompute_every(),
    });
    if let Some(from) = resume(&mut trainer, spec.resume.as_ref(), &mut emit)? {
        if trainer.step_count() >= trainer.total_steps() {
            return Err(Error::NothingToTrain {
                path: from,
                step: trainer.step_count(),
                total: trainer.total_steps(),
            });
        }
    }
    let train = trainer.train_with(&mut |p| emit(&JobEvent::Step(*p)))?;
    let losses: Vec<(u64, f64)> = trainer.history().iter().map(|m| (m.step, m.loss)).collect();
    if !trainer.is_main_process() {
        return Ok(JobReport {
            train,
            losses,
            eval: None,
            loss_png: None,
            examples,
            wall_s: start.elapsed().as_secs_f64(),
        });
    }
    // After a resume the metrics log holds the earlier steps too: plot them all.
    let history = match &spec.train.metrics {
        Some(p) if trainer.step_count() > losses.len() as u64 => {
            crate::metrics::MetricsLog::read(p)?
        }
        _ => trainer.history().to_vec(),
    };
    let loss_png = if history.is_empty() {
        None
    } else {
        let p = spec.run_dir.join("loss.png");
        let curve: Vec<(u64, f64)> = history.iter().map(|m| (m.step, m.loss)).collect();
        let lr: Vec<(u64, f64)> = history.iter().map(|m| (m.step, m.lr)).collect();
        plot_loss_curve(
            &p,
            &LossCurve {
                train: &curve,
                lr: &lr,
                validation: &[],
            },
        )?;
        Some(p)
    };
    let model = trainer.into_model();
    if let Some(dir) = &spec.export_hf {
        qwen3_model::export_hf_dir(&model, dir)?;
        emit(&JobEvent::Exported {
            what: "safetensors directory",
            path: dir,
        });
    }
    let eval_model = match &spec.export_dat {
        Some(path) => {
            qwen3_model::export_dat(&model, path, like.as_ref())?;
            spec.write_model_dir_files(path)?;
            emit(&JobEvent::Exported {
                what: "model directory",
                path,
            });
            drop(model);
            // Evaluate what a user gets: the exported file, loaded back.
            let dat = DatFile::open(path)?;
            Qwen3Model::load_dat(&dat, &spec.config, &spec.load_options())?
        }
        None => model,
    };
    let eval = if eval_set.is_empty() {
        None
    } else {
        let refs: Vec<_> = eval_set.iter().collect();
        let report = exact_match(&eval_model, tok, &refs, spec.eval_max_new_tokens)?;
        crate::fsutil::write_atomic(
            &spec.run_dir.join("eval.json"),
            &serde_json::to_vec_pretty(&report)?,
        )?;
        Some(report)
    };
    Ok(JobReport {
        train,
        losses,
        eval,
        loss_png,
        examples,
        wall_s: start.elapsed().as_secs_f64(),
    })
}

/// Files beside an exported `.dat` that make its directory a model directory.
const TOKENIZER_FILES: [&str; 4] = [
    "tokenizer.json",
    "tokenizer.json.gz",
    "tokenizer_config.json",
    "generation_config.json",
];

impl JobSpec {
    /// Every output must be writable before the first step: a bad path found
    /// after hours of training loses the run.
    fn check_outputs(&self) -> Result<()> {
        writable_dir(&self.run_dir, "--run-dir")?;
        if let Some(dir) = &self.train.checkpoint_dir {
            writable_dir(dir, "--checkpoint-dir")?;
        }
        if let Some(p) = &self.train.metrics {
            writable_dir(parent_of(p), "--metrics")?;
        }
        if let Some(dir) = &self.export_hf {
            writable_dir(dir, "--export-hf")?;
        }
        if let Some(p) = &self.export_dat {
            if p.is_dir() {
                return Err(Error::Output {
                    flag: "--export-dat",
                    path: p.clone(),
                    reason: "is a directory; name the .dat file to write".into(),
                });
            }
            writable_dir(parent_of(p), "--export-dat")?;
            let config = parent_of(p).join("config.json");
            if let Ok(existing) = std::fs::read_to_string(&config) {
                let same = Qwen3Config::from_json_str(&existing)
                    .is_ok_and(|c| c.to_json_string() == self.config.to_json_string());
                if !same {
                    return Err(Error::Output {
                        flag: "--export-dat",
                        path: p.clone(),
                        reason: format!(
                            "{} holds another model's config; export into a directory of its own",
                            config.display()
                        ),
                    });
                }
            }
        }
        Ok(())
    }

    /// Writes `config.json` and the tokenizer files beside the exported
    /// `.dat`, so that its directory opens as a model (`run2 --model-dir`):
    /// the tokenizer files of the source model directory where it has them,
    /// the bundled Qwen3 ones otherwise.
    fn write_model_dir_files(&self, dat: &Path) -> Result<()> {
        let dir = parent_of(dat);
        crate::fsutil::write_atomic(
            &dir.join("config.json"),
            self.config.to_json_string().as_bytes(),
        )?;
        let source = match &self.weights {
            WeightsSource::Dat(p) => parent_of(p).to_path_buf(),
            WeightsSource::HfDir(d) => d.clone(),
            WeightsSource::Init { config, .. } => parent_of(config).to_path_buf(),
        };
        let mut copied_tokenizer = false;
        for name in TOKENIZER_FILES {
            let from = source.join(name);
            if from.is_file() && source != dir {
                let bytes = std::fs::read(&from).map_err(|e| Error::io(&from, e))?;
                crate::fsutil::write_atomic(&dir.join(name), &bytes)?;
                copied_tokenizer |= name.starts_with("tokenizer.json");
            }
        }
        if !copied_tokenizer && !dir.join("tokenizer.json.gz").exists() {
            tokenizer_bridge::write_bundled_assets(dir)?;
        }
        Ok(())
    }
}

/// The directory a file goes into (`.` for a bare name).
fn parent_of(p: &Path) -> &Path {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// `dir` exists (created if missing) and a file can be created in it.
fn writable_dir(dir: &Path, flag: &'static str) -> Result<()> {
    let fail = |reason: String| Error::Output {
        flag,
        path: dir.to_path_buf(),
        reason,
    };
    std::fs::create_dir_all(dir).map_err(|e| fail(format!("cannot create the directory: {e}")))?;
    let probe = dir.join(format!(".write-probe.{}", std::process::id()));
    std::fs::File::create(&probe).map_err(|e| fail(format!("not writable: {e}")))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// Up to `n` examples spread evenly over the file (all when `n >= len`).
fn pick_eval_examples(data: &Dataset, n: usize) -> Vec<crate::data::Example> {
    let len = data.examples.len();
    if n == 0 {
        return Vec::new();
    }
    if n >= len {
        return data.examples.clone();
    }
    (0..n).map(|i| data.examples[i * len / n].clone()).collect()
}

/// Resumes as asked; returns the checkpoint resumed from, if any.
fn resume(
    trainer: &mut Trainer,
    from: Option<&ResumeFrom>,
    emit: &mut dyn FnMut(&JobEvent<'_>),
) -> Result<Option<PathBuf>> {
    let path = match from {
        None => return Ok(None),
        Some(ResumeFrom::Path(p)) => p.clone(),
        Some(ResumeFrom::Latest) => match trainer.latest_checkpoint()? {
            Some(p) => p,
            None => {
                emit(&JobEvent::NoCheckpointYet);
                return Ok(None);
            }
        },
    };
    trainer.resume_from(&path)?;
    emit(&JobEvent::Resumed {
        from: &path,
        step: trainer.step_count(),
    });
    Ok(Some(path))
}

/// Finds the weights and config of `--model-dir` with the model library's
/// one resolver ([`qwen3_model::ModelPaths`]): a `.dat` file (config.json
/// beside it), a directory with exactly one `.dat`, or a Hugging Face
/// directory (config.json + *.safetensors).
pub fn resolve_model_dir(path: &Path) -> Result<(Qwen3Config, WeightsSource)> {
    let paths = qwen3_model::ModelPaths::resolve(path, None)?;
    let cfg = Qwen3Config::from_file(&paths.config)?;
    let weights = match paths.format {
        qwen3_model::WeightFormat::Dat => WeightsSource::Dat(paths.weights),
        qwen3_model::WeightFormat::Safetensors => WeightsSource::HfDir(paths.weights),
    };
    Ok((cfg, weights))
}
