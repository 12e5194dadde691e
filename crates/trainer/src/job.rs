//! A whole training job, as `examples/train.rs` runs it: load the model and
//! tokenizer, read the data, train (optionally resuming), draw the loss
//! curve, export, and measure exact match of the exported model.

use std::path::{Path, PathBuf};
use std::time::Instant;

use dat_format::DatFile;
use nvfp4_kernels::ComputePath;
use qwen3_model::{LoadOptions, Qwen3Config, Qwen3Model};
use tch::{Device, Kind};
use tokenizer_bridge::Qwen3Tokenizer;

use crate::config::TrainConfig;
use crate::data::{load_data, DataOptions, Dataset};
use crate::error::{Error, Result};
use crate::eval::{exact_match, EvalReport};
use crate::plot::plot_loss_curve;
use crate::trainer::{TrainReport, Trainer};

/// Where a job's weights come from.
#[derive(Clone, Debug, PartialEq)]
pub enum WeightsSource {
    /// A `.dat` file (NVFP4 projections, raw embeddings and norms).
    Dat(PathBuf),
    /// A Hugging Face directory of bf16/f16/f32 safetensors (quantized on load).
    HfDir(PathBuf),
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
    /// Export the trained model as `.dat` here.
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
}

/// Training data: a file, or TSV text held in memory (the embedded default).
#[derive(Clone, Debug, PartialEq)]
pub enum DataSource {
    /// A file; format from its extension.
    File(PathBuf),
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
        let opts = self.load_options();
        match &self.weights {
            WeightsSource::Dat(p) => {
                let dat = DatFile::open(p)?;
                let model = Qwen3Model::load_dat(&dat, &self.config, &opts)?;
                Ok((model, Some(dat)))
            }
            WeightsSource::HfDir(d) => Ok((Qwen3Model::load_hf_dir(d, &self.config, &opts)?, None)),
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
            DataSource::TsvText { name, text } => crate::data::load_tsv_str(name, text, tok, &opts),
        }
    }
}

/// Runs a job end to end (see the module doc).
pub fn run_job(spec: &JobSpec, tok: &Qwen3Tokenizer) -> Result<JobReport> {
    let start = Instant::now();
    std::fs::create_dir_all(&spec.run_dir).map_err(|e| Error::io(&spec.run_dir, e))?;
    let data = spec.load_dataset(tok)?;
    let examples = data.examples.len();
    let main_process = spec.data_parallel.as_ref().is_none_or(|g| g.rank == 0);
    if main_process {
        println!(
            "data: {} examples from {} ({} target tokens, {} bad lines skipped, {} truncated)",
            examples,
            data.path.display(),
            data.stats.target_tokens,
            data.stats.skipped,
            data.stats.context_truncated + data.stats.targets_truncated
        );
    }
    let (model, like) = spec.load_model()?;
    let pad = spec.config.pad_token_id.unwrap_or_else(|| tok.eos_id());
    let eval_set: Vec<_> = pick_eval_examples(&data, spec.eval_samples);
    let mut trainer = Trainer::new(model, spec.train.clone(), data, pad)?;
    trainer.set_run_args(spec.run_args.clone());
    if let Some(group) = &spec.data_parallel {
        trainer.set_data_parallel(distributed::ProcessGroup::new(group)?)?;
    }
    if main_process {
        describe(&trainer);
    }
    resume(&mut trainer, spec.resume.as_ref())?;
    let train = trainer.train()?;
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
    let curve = match &spec.train.metrics {
        Some(p) if trainer.step_count() > losses.len() as u64 => {
            crate::metrics::MetricsLog::read(p)?
                .iter()
                .map(|m| (m.step, m.loss))
                .collect()
        }
        _ => losses.clone(),
    };
    let loss_png = if curve.is_empty() {
        None
    } else {
        let p = spec.run_dir.join("loss.png");
        plot_loss_curve(&p, &curve)?;
        Some(p)
    };
    let model = trainer.into_model();
    if let Some(dir) = &spec.export_hf {
        checkpoint::export_hf_dir(&model, dir)?;
        println!("exported safetensors to {}", dir.display());
    }
    let eval_model = match &spec.export_dat {
        Some(path) => {
            checkpoint::export_dat(&model, path, like.as_ref())?;
            println!("exported {}", path.display());
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

fn describe(t: &Trainer) {
    let cfg = t.config();
    let params: i64 = t.params.iter().map(|p| p.numel() as i64).sum();
    println!(
        "training {} tensors ({:.2} M parameters, master {:?}, optimizer state {} = {}), {} steps, device {:?}",
        t.param_names().len(),
        params as f64 / 1e6,
        cfg.master_dtype,
        cfg.adamw.state.as_str(),
        crate::metrics::human_bytes(t.optimizer().state_bytes() as u64),
        t.total_steps(),
        t.model().device()
    );
}

fn resume(trainer: &mut Trainer, from: Option<&ResumeFrom>) -> Result<()> {
    let path = match from {
        None => return Ok(()),
        Some(ResumeFrom::Path(p)) => p.clone(),
        Some(ResumeFrom::Latest) => match trainer.latest_checkpoint()? {
            Some(p) => p,
            None => {
                println!("--resume latest: no checkpoint yet, starting fresh");
                return Ok(());
            }
        },
    };
    trainer.resume_from(&path)?;
    println!(
        "resumed from {} at step {}",
        path.display(),
        trainer.step_count()
    );
    Ok(())
}

/// Finds the weights and config of `--model-dir`: a `.dat` file (config.json
/// beside it), a directory with exactly one `.dat`, or a Hugging Face
/// directory (config.json + *.safetensors).
pub fn resolve_model_dir(path: &Path) -> Result<(Qwen3Config, WeightsSource)> {
    let missing = |p: &Path| {
        Error::io(
            p,
            std::io::Error::new(std::io::ErrorKind::NotFound, "not found"),
        )
    };
    if path.is_file() {
        if path.extension().and_then(|e| e.to_str()) != Some("dat") {
            return Err(Error::config(
                "model-dir",
                "a directory or a .dat file",
                path.display(),
            ));
        }
        let cfg_path = path.with_file_name("config.json");
        let cfg = Qwen3Config::from_file(&cfg_path).map_err(|e| {
            if cfg_path.exists() {
                e.into()
            } else {
                missing(&cfg_path)
            }
        })?;
        return Ok((cfg, WeightsSource::Dat(path.to_path_buf())));
    }
    if !path.is_dir() {
        return Err(missing(path));
    }
    let cfg_path = path.join("config.json");
    if !cfg_path.exists() {
        return Err(missing(&cfg_path));
    }
    let cfg = Qwen3Config::from_file(&cfg_path)?;
    let entries = std::fs::read_dir(path).map_err(|e| Error::io(path, e))?;
    let mut dats = Vec::new();
    let mut safetensors = 0;
    for entry in entries {
        let p = entry.map_err(|e| Error::io(path, e))?.path();
        match p.extension().and_then(|e| e.to_str()) {
            Some("dat") => dats.push(p),
            Some("safetensors") => safetensors += 1,
            _ => {}
        }
    }
    dats.sort();
    match (dats.len(), safetensors) {
        (1, _) => Ok((cfg, WeightsSource::Dat(dats.remove(0)))),
        (0, n) if n > 0 => Ok((cfg, WeightsSource::HfDir(path.to_path_buf()))),
        (0, _) => Err(Error::config(
            "model-dir",
            "a directory holding a .dat file or *.safetensors",
            path.display(),
        )),
        _ => Err(Error::config(
            "model-dir",
            "one .dat file (pass the file itself to choose)",
            dats.iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        )),
    }
}
