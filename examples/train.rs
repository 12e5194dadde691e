//! The training runner (the original's `run-training`): NVFP4
//! quantization-aware fine-tuning of Qwen3.
//!
//! With no arguments it runs the embedded default: a small Qwen3 (real
//! tokenizer and vocabulary) with synthetic NVFP4 weights written to a
//! `.dat` and loaded back, trained on the shipped "Pico" data set on the CPU
//! in a few minutes; it saves a checkpoint, exports the trained `.dat`,
//! reloads it, answers the training prompts and ends with
//! `exact_match: <matched>/<total>`.
//!
//! With `--model-dir` it fine-tunes a real model (`.dat` or Hugging Face
//! safetensors) on `--data`:
//!
//! ```text
//! cargo run --release --example train -- --model-dir models/qwen3-4b --data chat.jsonl \
//!     --device cuda --steps 200 --batch-size 4 --seq-len 512 --lr 1e-5 --optim-state int8 \
//!     --activation-checkpointing --checkpoint-dir runs/ft/ckpt --save-every 50 --export-dat runs/ft/out.dat
//! ```

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Parser;
use qwen3_nvfp4::{convert_model, init_tracing, parse_device, parse_dtype, ModelFormat};
use tokenizer_bridge::Qwen3Tokenizer;
use trainer::{
    resolve_model_dir, run_default, run_job, DataSource, DefaultRunOptions, EvalReport, JobSpec,
    ResumeFrom, TrainConfig,
};

/// NVFP4 quantization-aware training of Qwen3 (no arguments: the embedded default run).
#[derive(Parser, Debug, serde::Serialize)]
#[command(version, about)]
struct Args {
    /// Model to fine-tune: a directory with one `.dat` (+ config.json) or HF safetensors, or a `.dat` file.
    #[arg(long)]
    model_dir: Option<PathBuf>,
    /// Training data: `.tsv`/`.txt` (prompt<TAB>response) or `.jsonl` ({"messages": [...]}).
    #[arg(long)]
    data: Option<PathBuf>,
    /// cpu, cuda or cuda:N (default: cuda with --model-dir, cpu for the default run).
    #[arg(long)]
    device: Option<String>,
    /// Compute dtype f32|bf16|f16 (default: bf16 on CUDA, f32 on CPU).
    #[arg(long)]
    dtype: Option<String>,
    /// NVFP4 path of frozen projections: kernel-only | auto | dequant-matmul.
    #[arg(long, default_value = "auto")]
    compute_path: String,
    /// Passes over the data (with --steps: whichever ends first).
    #[arg(long)]
    epochs: Option<f64>,
    /// Optimizer steps.
    #[arg(long)]
    steps: Option<u64>,
    /// Examples per micro-batch.
    #[arg(long)]
    batch_size: Option<usize>,
    /// Longest example in tokens (prompt cut on the left first).
    #[arg(long)]
    seq_len: Option<usize>,
    /// Peak learning rate.
    #[arg(long)]
    lr: Option<f64>,
    /// Linear warmup steps.
    #[arg(long)]
    warmup: Option<u64>,
    /// LR schedule after warmup: constant | cosine.
    #[arg(long)]
    schedule: Option<String>,
    /// Cosine floor as a fraction of --lr.
    #[arg(long)]
    min_lr_ratio: Option<f64>,
    /// Micro-batches per optimizer step.
    #[arg(long)]
    grad_accum: Option<usize>,
    /// Clip the global gradient norm to this value (0: no clipping).
    #[arg(long)]
    clip: Option<f64>,
    /// Decoupled weight decay (projections only unless --decay-all).
    #[arg(long)]
    weight_decay: Option<f64>,
    /// Also decay norms and embeddings.
    #[arg(long)]
    decay_all: bool,
    /// Master weights: f32 | bf16.
    #[arg(long)]
    master_dtype: Option<String>,
    /// Optimizer moments: f32 | bf16 | int8 (block-wise, dynamic map).
    #[arg(long)]
    optim_state: Option<String>,
    /// Checkpoint directory (default: <run-dir>/checkpoints).
    #[arg(long)]
    checkpoint_dir: Option<PathBuf>,
    /// Save a checkpoint every N steps (and always at the end).
    #[arg(long)]
    save_every: Option<u64>,
    /// Checkpoints to keep.
    #[arg(long)]
    keep_last: Option<usize>,
    /// Resume: `latest` (newest in the checkpoint directory) or a step-NNNNNN directory.
    #[arg(long)]
    resume: Option<String>,
    /// Export the trained model as `.dat` (default: <run-dir>/trained.dat).
    #[arg(long)]
    export_dat: Option<PathBuf>,
    /// Also export a Hugging Face safetensors directory.
    #[arg(long)]
    export_hf: Option<PathBuf>,
    /// Also export the trained model as a complete model directory in --format
    /// (compressed-tensors: ready for vLLM / SGLang).
    #[arg(long, value_name = "DIR")]
    export: Option<PathBuf>,
    /// Format of --export.
    #[arg(long, value_enum, default_value_t = ModelFormat::CompressedTensors)]
    format: ModelFormat,
    /// Seed of the data order.
    #[arg(long)]
    seed: Option<u64>,
    /// Train only the last N blocks (plus final norm and head).
    #[arg(long)]
    train_last_layers: Option<usize>,
    /// Recompute blocks in the backward pass to save activation memory.
    #[arg(long)]
    activation_checkpointing: bool,
    /// NaN/inf loss or gradient: skip (drop the step, count it) | stop.
    #[arg(long)]
    on_nonfinite: Option<String>,
    /// Bad data line: skip (warn with file:line) | fail.
    #[arg(long)]
    bad_lines: Option<String>,
    /// JSONL metrics file, one object per step (default: <run-dir>/metrics.jsonl).
    #[arg(long)]
    metrics: Option<PathBuf>,
    /// Run directory: loss curve, defaults for metrics, checkpoints and export.
    #[arg(long)]
    run_dir: Option<PathBuf>,
    /// System message put before every TSV pair.
    #[arg(long)]
    system_prompt: Option<String>,
    /// Training prompts answered by the exported model at the end (exact match).
    #[arg(long, default_value_t = 16)]
    eval_samples: usize,
    /// Hide the progress bar (log lines remain).
    #[arg(long)]
    no_progress: bool,
    /// CPU threads libtorch may use (default: its own choice, one per core).
    #[arg(long)]
    threads: Option<i32>,
}

fn main() -> Result<()> {
    init_tracing("warn");
    let args = Args::parse();
    if let Some(n) = args.threads {
        if n < 1 {
            bail!("--threads {n}: expected at least 1");
        }
        tch::set_num_threads(n);
    }
    let eval = match &args.model_dir {
        None => default_run(&args)?,
        Some(dir) => model_run(&args, dir)?,
    };
    if let Some(e) = eval {
        println!("exact_match: {}/{}", e.matched, e.total);
    }
    Ok(())
}

/// The embedded default; only --run-dir, --steps and --no-progress apply.
fn default_run(args: &Args) -> Result<Option<EvalReport>> {
    if args.data.is_some()
        || args.device.as_deref().is_some_and(|d| d != "cpu")
        || args.resume.is_some()
    {
        bail!("--data, --device and --resume need --model-dir (without it the embedded default runs on the CPU)");
    }
    let run_dir = args
        .run_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("runs/train-default"));
    println!(
        "default run: small Qwen3 + Pico data set, CPU, run dir {}",
        run_dir.display()
    );
    let report = run_default(&DefaultRunOptions {
        run_dir: run_dir.clone(),
        progress: !args.no_progress,
        steps: args.steps,
    })?;
    let job = &report.job;
    println!(
        "trained {} steps in {:.1} s: loss {:.4} -> {:.4}",
        job.train.steps_run, job.train.wall_s, job.train.first_loss, job.train.final_loss
    );
    if let Some(c) = &job.train.last_checkpoint {
        println!("checkpoint: {}", c.display());
    }
    println!(
        "exported: {} (reloaded for the answers below)",
        report.trained_dat.display()
    );
    if let Some(p) = &job.loss_png {
        println!("loss curve: {}", p.display());
    }
    print_samples(job.eval.as_ref());
    println!("wall time: {:.1} s", job.wall_s);
    let cfg = trainer::default_model_config()?;
    export_trained(args, &cfg, &report.trained_dat, &run_dir, tch::Device::Cpu)?;
    Ok(job.eval.clone())
}

fn model_run(args: &Args, dir: &std::path::Path) -> Result<Option<EvalReport>> {
    let data = args
        .data
        .clone()
        .context("--model-dir needs --data FILE (.tsv or .jsonl)")?;
    let device = parse_device(args.device.as_deref().unwrap_or("cuda"))?;
    if device == tch::Device::Cpu {
        trainer::keep_freed_memory();
    }
    let dtype = args.dtype.as_deref().map(parse_dtype).transpose()?;
    let (config, weights) = resolve_model_dir(dir)?;
    let model_dir = if dir.is_dir() {
        dir.to_path_buf()
    } else {
        dir.parent().map(PathBuf::from).unwrap_or_default()
    };
    let tok = if model_dir.join("tokenizer.json").exists()
        || model_dir.join("tokenizer.json.gz").exists()
    {
        Qwen3Tokenizer::from_dir(&model_dir)?
    } else {
        eprintln!(
            "note: no tokenizer.json in {}; using the bundled Qwen3 tokenizer",
            model_dir.display()
        );
        Qwen3Tokenizer::bundled()?
    };
    let run_dir = args
        .run_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("runs/train"));
    let train = train_config(args, &run_dir)?;
    let resume = args.resume.as_deref().map(|r| match r {
        "latest" => ResumeFrom::Latest,
        path => ResumeFrom::Path(PathBuf::from(path)),
    });
    if let Some(ResumeFrom::Path(p)) = &resume {
        if !p.is_dir() {
            bail!(
                "--resume {}: not a checkpoint directory (expected `latest` or a step-NNNNNN directory)",
                p.display()
            );
        }
    }
    let trained_dat = args
        .export_dat
        .clone()
        .unwrap_or_else(|| run_dir.join("trained.dat"));
    let export_cfg = config.clone();
    let spec = JobSpec {
        config,
        weights,
        device,
        dtype,
        compute_path: args
            .compute_path
            .parse()
            .map_err(|e| anyhow::anyhow!("--compute-path: {e}"))?,
        data: DataSource::File(data),
        system_prompt: args.system_prompt.clone(),
        train,
        resume,
        export_dat: Some(trained_dat.clone()),
        export_hf: args.export_hf.clone(),
        eval_samples: args.eval_samples,
        eval_max_new_tokens: 64,
        run_args: serde_json::to_value(args)?,
        run_dir,
    };
    let job = run_job(&spec, &tok)?;
    println!(
        "trained {} steps in {:.1} s: loss {:.4} -> {:.4} ({} skipped)",
        job.train.steps_run,
        job.train.wall_s,
        job.train.first_loss,
        job.train.final_loss,
        job.train.skipped
    );
    if let Some(p) = &job.loss_png {
        println!("loss curve: {}", p.display());
    }
    print_samples(job.eval.as_ref());
    export_trained(args, &export_cfg, &trained_dat, &model_dir, device)?;
    Ok(job.eval)
}

/// `--export DIR --format F`: the exported `.dat` converted to F (NVFP4
/// codes and scales carry over without re-quantizing).
fn export_trained(
    args: &Args,
    cfg: &qwen3_model::Qwen3Config,
    trained_dat: &std::path::Path,
    files_dir: &std::path::Path,
    device: tch::Device,
) -> Result<()> {
    let Some(out) = &args.export else {
        return Ok(());
    };
    let weights = trainer::WeightsSource::Dat(trained_dat.to_path_buf());
    let r = convert_model(cfg, &weights, files_dir, args.format, out, device)
        .with_context(|| format!("--export {}", out.display()))?;
    println!(
        "exported {:?}: {} ({} files)",
        args.format,
        out.display(),
        r.files.len()
    );
    Ok(())
}

/// TrainConfig from the flags, starting from the library defaults.
fn train_config(args: &Args, run_dir: &std::path::Path) -> Result<TrainConfig> {
    let mut c = TrainConfig::default();
    macro_rules! set {
        ($field:ident) => {
            if let Some(v) = args.$field.clone() {
                c.$field = v;
            }
        };
    }
    set!(batch_size);
    set!(seq_len);
    set!(lr);
    set!(warmup);
    set!(min_lr_ratio);
    set!(grad_accum);
    set!(keep_last);
    set!(seed);
    c.epochs = args.epochs;
    c.steps = args.steps;
    c.train_last_layers = args.train_last_layers;
    c.save_every = args.save_every;
    c.activation_checkpointing = args.activation_checkpointing;
    c.decay_norms_and_embeddings = args.decay_all;
    c.progress = !args.no_progress;
    if let Some(clip) = args.clip {
        c.clip = (clip > 0.0).then_some(clip);
    }
    if let Some(wd) = args.weight_decay {
        c.adamw.weight_decay = wd;
    }
    if let Some(s) = &args.schedule {
        c.schedule = s.parse()?;
    }
    if let Some(s) = &args.master_dtype {
        c.master_dtype = s.parse()?;
    }
    if let Some(s) = &args.optim_state {
        c.adamw.state = s.parse()?;
    }
    if let Some(s) = &args.on_nonfinite {
        c.on_nonfinite = s.parse()?;
    }
    if let Some(s) = &args.bad_lines {
        c.bad_lines = s.parse()?;
    }
    c.checkpoint_dir = Some(
        args.checkpoint_dir
            .clone()
            .unwrap_or_else(|| run_dir.join("checkpoints")),
    );
    c.metrics = Some(
        args.metrics
            .clone()
            .unwrap_or_else(|| run_dir.join("metrics.jsonl")),
    );
    c.validate()?;
    Ok(c)
}

fn print_samples(eval: Option<&EvalReport>) {
    let Some(e) = eval else { return };
    for s in e.samples.iter().take(6) {
        let miss = if s.matched {
            String::new()
        } else {
            format!("   (expected: {})", s.expected)
        };
        println!("  Q: {}\n  A: {}{miss}", s.prompt, s.got.trim());
    }
    println!(
        "answers ending on <|im_end|>: {}/{}",
        e.stopped_on_im_end, e.total
    );
}
