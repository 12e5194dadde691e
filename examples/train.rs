//! `train`: NVFP4 quantization-aware fine-tuning of Qwen3 (the original's
//! `run-training`).
//!
//! With no arguments it runs the embedded default: a small Qwen3 (real
//! tokenizer and vocabulary) with synthetic NVFP4 weights written to a
//! `.dat` and loaded back, trained on the shipped "Pico" data set on the CPU
//! in a few minutes; it saves a checkpoint, exports the trained model,
//! reloads it, answers the training prompts and ends with
//! `exact_match: <matched>/<total>`.
//!
//! With `--model-dir` it fine-tunes a real model (`.dat` or Hugging Face
//! safetensors) on `--data`:
//!
//! ```text
//! cargo run --release --example train -- --model-dir models/qwen3-4b --data chat.jsonl \
//!     --steps 200 --batch-size 4 --seq-len 512 --lr 1e-5 --optim-state int8 \
//!     --activation-checkpointing --save-every 50
//! ```
//!
//! Every run writes into a run directory of its own (`runs/train-<UTC time>`
//! unless `--run-dir` names one), locked while the run lasts.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser};
use nvfp4_kernels::ComputePath;
use qwen3_model::{QuantRecipe, Qwen3Config};
use qwen3_nvfp4::{
    convert_model, device_arg, dtype_arg, init_tracing, parse_arg, pick_device, run_main,
    JobPrinter, ModelFormat,
};
use tch::{Device, Kind};
use tokenizer_bridge::Qwen3Tokenizer;
use trainer::{
    resolve_model_dir, run_default_observed, run_job_observed, timestamped_run_dir, BadLinePolicy,
    Checkpointing, DataSource, DefaultRunOptions, EvalReport, JobSpec, MasterDtype,
    NonFinitePolicy, OptimStateKind, ResumeFrom, ScheduleKind, TeacherSpec, TrainConfig,
    WeightsSource,
};

/// The library's defaults, shown by `--help` (one place: `TrainConfig::default`).
fn defaults() -> TrainConfig {
    TrainConfig::default()
}

/// Fine-tunes a Qwen3 model with NVFP4 quantization-aware training and exports it
/// as a model directory. Without --model-dir: a small built-in demo run on the CPU.
#[derive(Parser, Debug)]
#[command(version, args_override_self = true)]
struct Args {
    /// Model to fine-tune: a directory with one `.dat` (+ config.json) or HF safetensors, or a `.dat` file.
    #[arg(long)]
    model_dir: Option<PathBuf>,
    /// Training data: `.tsv`/`.txt` (prompt<TAB>response) or `.jsonl`
    /// ({"messages": [...]} or {"prompt": .., "response": ..} per line);
    /// with --text, plain text.
    #[arg(long)]
    data: Option<PathBuf>,
    /// --data is plain text (`.txt`, `.txt.gz` or a directory of them):
    /// tokenized once, packed into windows of --seq-len, every token a target.
    #[arg(long)]
    text: bool,
    /// Pretraining from scratch: --model-dir names a `config.json` (or a
    /// directory holding one) and the model starts from Hugging Face's random
    /// initialisation (normal(0, initializer_range), norms at 1; drawn from
    /// --seed). With --text and --recipe bf16 it is the dense baseline.
    #[arg(long)]
    init_random: bool,
    /// Quantization-aware distillation: the loss is KL to a frozen dense
    /// teacher (the --model-dir weights, dequantized; or --teacher).
    #[arg(long)]
    distill: bool,
    /// Teacher of --distill: a model path (a bf16 safetensors directory keeps
    /// full precision) [default: --model-dir].
    #[arg(long, requires = "distill")]
    teacher: Option<PathBuf>,
    /// QAT scheme of the trained projections: w4a16 | w4a4 (activations too, what
    /// Blackwell runs) | bf16 (no fake quantization: the dense baseline), then
    /// optionally +head (round the head too), -1l (single-level scales), -keepN
    /// (last N blocks dense), e.g. w4a4+head-1l [default: W4A16 with the scales
    /// the weights are stored with].
    #[arg(long, value_parser = parse_arg::<QuantRecipe>)]
    recipe: Option<QuantRecipe>,
    /// Weight of the KL term of --distill; 1 - alpha weighs the data loss.
    #[arg(long, default_value_t = 1.0, requires = "distill")]
    distill_alpha: f64,
    /// cpu, cuda or cuda:N [default: cuda when available, else cpu].
    /// Under torchrun or srun, cuda means cuda:LOCAL_RANK.
    #[arg(long, value_parser = device_arg)]
    device: Option<Device>,
    /// Under torchrun or srun: seconds a rank waits for the others (rendezvous
    /// and each collective) before failing.
    #[arg(long, default_value_t = 300)]
    dist_timeout_s: u64,
    /// Compute dtype f32|bf16|f16 [default: bf16 on CUDA, f32 on CPU].
    #[arg(long, value_parser = dtype_arg)]
    dtype: Option<Kind>,
    /// NVFP4 path of frozen projections: kernel-only | auto | dequant-matmul.
    #[arg(long, default_value = "auto", value_parser = parse_arg::<ComputePath>)]
    compute_path: ComputePath,
    /// Passes over the data (with --steps: whichever ends first) [default: 1 unless --steps].
    #[arg(long)]
    epochs: Option<f64>,
    /// Optimizer steps [default: one epoch].
    #[arg(long)]
    steps: Option<u64>,
    /// Examples per micro-batch.
    #[arg(long, default_value_t = defaults().batch_size)]
    batch_size: usize,
    /// Longest example in tokens (prompt cut on the left first).
    #[arg(long, default_value_t = defaults().seq_len)]
    seq_len: usize,
    /// Peak learning rate.
    #[arg(long, default_value_t = defaults().lr)]
    lr: f64,
    /// Linear warmup steps.
    #[arg(long, default_value_t = defaults().warmup)]
    warmup: u64,
    /// LR schedule after warmup: constant | cosine.
    #[arg(long, default_value_t = defaults().schedule, value_parser = parse_arg::<ScheduleKind>)]
    schedule: ScheduleKind,
    /// Cosine floor as a fraction of --lr.
    #[arg(long, default_value_t = defaults().min_lr_ratio)]
    min_lr_ratio: f64,
    /// Micro-batches per optimizer step.
    #[arg(long, default_value_t = defaults().grad_accum)]
    grad_accum: usize,
    /// Clip the global gradient norm to this value (0: no clipping).
    #[arg(long, default_value_t = defaults().clip.unwrap_or(0.0), value_parser = clip_arg)]
    clip: f64,
    /// Decoupled weight decay (projections only unless --decay-all).
    #[arg(long, default_value_t = defaults().adamw.weight_decay)]
    weight_decay: f64,
    /// Also decay norms and embeddings.
    #[arg(long)]
    decay_all: bool,
    /// Master weights: f32 | bf16.
    #[arg(long, default_value_t = defaults().master_dtype, value_parser = parse_arg::<MasterDtype>)]
    master_dtype: MasterDtype,
    /// Optimizer moments: f32 | bf16 | int8 (block-wise, dynamic map).
    #[arg(long, default_value_t = defaults().adamw.state, value_parser = parse_arg::<OptimStateKind>)]
    optim_state: OptimStateKind,
    /// Checkpoint directory [default: <run-dir>/checkpoints].
    #[arg(long)]
    checkpoint_dir: Option<PathBuf>,
    /// Save a checkpoint every N steps (and always at the end) [default: only at the end].
    #[arg(long)]
    save_every: Option<u64>,
    /// Checkpoints to keep.
    #[arg(long, default_value_t = defaults().keep_last)]
    keep_last: usize,
    /// Resume: `latest` (newest in the checkpoint directory) or a step-NNNNNN directory.
    #[arg(long)]
    resume: Option<String>,
    /// Export the trained model as `.dat`, with config.json and tokenizer files beside it
    /// [default: <run-dir>/model/model.dat].
    #[arg(long)]
    export_dat: Option<PathBuf>,
    /// Also export a Hugging Face safetensors directory.
    #[arg(long)]
    export_hf: Option<PathBuf>,
    /// Also export the trained model as a complete model directory in --format
    /// (compressed-tensors: ready for vLLM / SGLang).
    #[arg(long, value_name = "DIR")]
    export: Option<PathBuf>,
    /// Format of --export [default: compressed-tensors].
    #[arg(long, value_enum, default_value_t = ModelFormat::CompressedTensors)]
    format: ModelFormat,
    /// Seed of the data order.
    #[arg(long, default_value_t = defaults().seed)]
    seed: u64,
    /// Train only the last N blocks (plus final norm and head) [default: all].
    #[arg(long)]
    train_last_layers: Option<usize>,
    /// Recompute blocks in the backward pass to save activation memory:
    /// on | off | every-K (every K-th block) | auto (the fastest of off,
    /// every-4, every-2 and on that fits the free memory). A bare flag means on.
    #[arg(long, default_value_t = defaults().activation_checkpointing,
          value_parser = parse_arg::<Checkpointing>, num_args = 0..=1, default_missing_value = "on")]
    activation_checkpointing: Checkpointing,
    /// Under torchrun or srun: shard the AdamW state across the ranks (ZeRO-1):
    /// each rank keeps the moments of its share of the tensors (and, with f32
    /// masters computing in bf16, their f32 masters: the weights are then bf16),
    /// gradients are reduced to their owner, weights broadcast from it.
    /// Checkpoints stay resumable at any world size. A single process trains
    /// as without it.
    #[arg(long)]
    zero1: bool,
    /// NaN/inf loss or gradient: skip (drop the step, count it) | stop.
    #[arg(long, default_value_t = defaults().on_nonfinite, value_parser = parse_arg::<NonFinitePolicy>)]
    on_nonfinite: NonFinitePolicy,
    /// Bad data line: skip (warn with file:line) | fail.
    #[arg(long, default_value_t = defaults().bad_lines, value_parser = parse_arg::<BadLinePolicy>)]
    bad_lines: BadLinePolicy,
    /// JSONL metrics file, one object per step [default: <run-dir>/metrics.jsonl].
    #[arg(long)]
    metrics: Option<PathBuf>,
    /// Run directory (loss curve, metrics, checkpoints, export), locked while the run lasts
    /// [default: a new runs/train-<UTC time>].
    #[arg(long)]
    run_dir: Option<PathBuf>,
    /// System message put before every prompt/response pair.
    #[arg(long)]
    system_prompt: Option<String>,
    /// Training prompts answered by the exported model at the end (exact match).
    #[arg(long, default_value_t = 16)]
    eval_samples: usize,
    /// Hide the progress bar (log lines remain).
    #[arg(long)]
    no_progress: bool,
    /// CPU threads libtorch may use [default: its own choice, one per core].
    #[arg(long)]
    threads: Option<i32>,
}

/// `--clip`: 0 turns clipping off; NaN and negative values are errors.
fn clip_arg(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(c) if c.is_finite() && c >= 0.0 => Ok(c),
        Ok(c) => Err(format!(
            "{c} is not a clipping norm (a positive number, or 0 for none)"
        )),
        Err(e) => Err(e.to_string()),
    }
}

/// Flags the embedded default run accepts (it has its own model, data and settings).
const DEFAULT_RUN_FLAGS: [&str; 5] = ["run_dir", "steps", "no_progress", "threads", "device"];

fn main() -> ExitCode {
    trainer::prefer_expandable_segments();
    init_tracing("warn");
    let matches = Args::command().get_matches();
    run_main(|| {
        let args = Args::from_arg_matches(&matches)?;
        if let Some(n) = args.threads {
            if n < 1 {
                bail!("--threads {n}: expected at least 1");
            }
            tch::set_num_threads(n);
        }
        let eval = match &args.model_dir {
            None => default_run(&args, &matches)?,
            Some(dir) => model_run(&args, dir)?,
        };
        if let Some(e) = eval {
            println!("exact_match: {}/{}", e.matched, e.total);
        }
        Ok(())
    })
}

/// The run directory: `--run-dir`, or a new one named by the time.
fn run_dir(args: &Args, prefix: &str) -> PathBuf {
    args.run_dir
        .clone()
        .unwrap_or_else(|| timestamped_run_dir(Path::new("runs"), prefix))
}

/// The embedded default; only the flags in [`DEFAULT_RUN_FLAGS`] apply.
fn default_run(args: &Args, matches: &ArgMatches) -> Result<Option<EvalReport>> {
    let given: Vec<String> = Args::command()
        .get_arguments()
        .map(|a| a.get_id().as_str().to_string())
        .filter(|id| matches.value_source(id) == Some(ValueSource::CommandLine))
        .filter(|id| !DEFAULT_RUN_FLAGS.contains(&id.as_str()))
        .map(|id| format!("--{}", id.replace('_', "-")))
        .collect();
    if !given.is_empty() {
        bail!(
            "{} need(s) --model-dir: without it the embedded default runs (its own model, data and settings; only --run-dir, --steps, --no-progress and --threads apply)",
            given.join(", ")
        );
    }
    if args.device.is_some_and(|d| d != Device::Cpu) {
        bail!("the embedded default runs on the CPU; --device applies with --model-dir");
    }
    let run_dir = run_dir(args, "default");
    println!(
        "default run: small Qwen3 + Pico data set, CPU, run dir {}",
        run_dir.display()
    );
    let mut printer = JobPrinter::new(!args.no_progress);
    let report = run_default_observed(
        &DefaultRunOptions {
            run_dir: run_dir.clone(),
            progress: !args.no_progress,
            steps: args.steps,
        },
        &mut |e| printer.event(e),
    )?;
    printer.finish();
    let job = &report.job;
    println!(
        "trained {} steps in {:.1} s: loss {:.4} -> {:.4}",
        job.train.steps_run, job.train.wall_s, job.train.first_loss, job.train.final_loss
    );
    if let Some(c) = &job.train.last_checkpoint {
        println!("checkpoint: {}", c.display());
    }
    println!(
        "model: {} (reloaded for the answers below)",
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

fn model_run(args: &Args, dir: &Path) -> Result<Option<EvalReport>> {
    let data = args
        .data
        .clone()
        .context("--model-dir needs --data FILE (.tsv or .jsonl; plain text with --text)")?;
    if !(data.is_file() || args.text && data.is_dir()) {
        bail!("--data {}: no such file", data.display());
    }
    let data = match args.text {
        true => DataSource::Text(data),
        false => DataSource::File(data),
    };
    if args.init_random && args.distill && args.teacher.is_none() {
        bail!("--distill with --init-random needs --teacher DIR (a random model is no teacher)");
    }
    let teacher = args.distill.then(|| TeacherSpec {
        path: args.teacher.clone().unwrap_or_else(|| dir.to_path_buf()),
        alpha: args.distill_alpha,
    });
    let (config, weights) = match args.init_random {
        true => random_init(dir, args.seed)?,
        false => resolve_model_dir(dir)?,
    };
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
    let resume = args.resume.as_deref().map(|r| match r {
        "latest" => ResumeFrom::Latest,
        path => ResumeFrom::Path(PathBuf::from(path)),
    });
    match &resume {
        Some(ResumeFrom::Path(p)) if !p.is_dir() => bail!(
            "--resume {}: not a checkpoint directory (expected `latest` or a step-NNNNNN directory)",
            p.display()
        ),
        Some(ResumeFrom::Latest) if args.run_dir.is_none() && args.checkpoint_dir.is_none() => {
            bail!("--resume latest needs the run to continue: pass its --run-dir (or --checkpoint-dir)")
        }
        _ => {}
    }
    let device = pick_device(args.device);
    // torchrun / srun: one process per GPU, picked by the local rank; NCCL on
    // CUDA, Gloo on the CPU. No launcher variables: a single process.
    let launch = distributed::LaunchEnv::from_env()?;
    let device = match (&launch, device) {
        (Some(env), Device::Cuda(_)) => Device::Cuda(env.local_rank),
        (_, device) => device,
    };
    let data_parallel = launch.as_ref().map(|env| {
        let timeout = std::time::Duration::from_secs(args.dist_timeout_s);
        distributed::GroupOptions::from_launch(
            env,
            distributed::Backend::for_device(device),
            timeout,
        )
    });
    if device == Device::Cpu {
        trainer::keep_freed_memory();
    }
    let run_dir = run_dir(args, "train");
    let train = train_config(args, &run_dir)?;
    println!("run dir: {}", run_dir.display());
    let trained_dat = args
        .export_dat
        .clone()
        .unwrap_or_else(|| run_dir.join("model").join("model.dat"));
    let export_cfg = config.clone();
    let spec = JobSpec {
        config,
        weights,
        device,
        dtype: args.dtype,
        compute_path: args.compute_path,
        data,
        system_prompt: args.system_prompt.clone(),
        train,
        resume,
        export_dat: Some(trained_dat.clone()),
        export_hf: args.export_hf.clone(),
        eval_samples: args.eval_samples,
        eval_max_new_tokens: 64,
        run_args: serde_json::json!(std::env::args().collect::<Vec<_>>()),
        run_dir,
        data_parallel,
        teacher,
        recipe: args.recipe,
    };
    let mut printer =
        JobPrinter::new(!args.no_progress && launch.as_ref().is_none_or(|e| e.rank == 0));
    let job = run_job_observed(&spec, &tok, &mut |e| printer.event(e))?;
    printer.finish();
    if launch.is_some_and(|env| env.rank != 0) {
        return Ok(None);
    }
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

/// `--init-random`: the config of `path` (a `config.json` or a directory
/// holding one) and no weights.
fn random_init(path: &Path, seed: u64) -> Result<(Qwen3Config, WeightsSource)> {
    let config = match path.is_dir() {
        true => path.join("config.json"),
        false => path.to_path_buf(),
    };
    if !config.is_file() {
        bail!(
            "--model-dir {} with --init-random: no config.json there",
            path.display()
        );
    }
    let cfg = Qwen3Config::from_file(&config)
        .with_context(|| format!("--model-dir {}", config.display()))?;
    Ok((cfg, WeightsSource::Init { config, seed }))
}

/// TrainConfig from the flags (whose defaults are the library's).
fn train_config(args: &Args, run_dir: &Path) -> Result<TrainConfig> {
    let mut c = TrainConfig {
        epochs: args.epochs,
        steps: args.steps,
        batch_size: args.batch_size,
        seq_len: args.seq_len,
        lr: args.lr,
        warmup: args.warmup,
        schedule: args.schedule,
        min_lr_ratio: args.min_lr_ratio,
        grad_accum: args.grad_accum,
        clip: (args.clip > 0.0).then_some(args.clip),
        decay_norms_and_embeddings: args.decay_all,
        master_dtype: args.master_dtype,
        seed: args.seed,
        train_last_layers: args.train_last_layers,
        activation_checkpointing: args.activation_checkpointing,
        zero1: args.zero1,
        on_nonfinite: args.on_nonfinite,
        bad_lines: args.bad_lines,
        save_every: args.save_every,
        keep_last: args.keep_last,
        progress: !args.no_progress,
        checkpoint_dir: Some(
            args.checkpoint_dir
                .clone()
                .unwrap_or_else(|| run_dir.join("checkpoints")),
        ),
        metrics: Some(
            args.metrics
                .clone()
                .unwrap_or_else(|| run_dir.join("metrics.jsonl")),
        ),
        ..TrainConfig::default()
    };
    c.adamw.weight_decay = args.weight_decay;
    c.adamw.state = args.optim_state;
    c.validate()?;
    Ok(c)
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
    let weights = WeightsSource::Dat(trained_dat.to_path_buf());
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
