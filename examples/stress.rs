//! `stress` (FR-11): load -> prefill -> generate -> drop, over the matrix
//! {no KV cache, KV cache pbp, KV cache tbt}, `--iterations` times in one
//! process and, with `--processes N`, in N processes one after another (the
//! program re-executes itself as a child). Fails with a non-zero exit and a
//! clear message on any error, panic, crash (a child killed by a signal) or
//! memory that does not come back to its post-warm-up baseline within
//! `--tolerance-mib`.
//!
//! ```text
//! cargo run --release --example stress -- --synthetic --device cpu --iterations 5 --processes 3
//! cargo run --release --example stress -- --model-dir models/qwen3-4b --device cuda --iterations 10
//! ```

use std::path::PathBuf;
use std::process::{Command, ExitCode};

use anyhow::{bail, Context, Result};
use clap::Parser;
use nvfp4_kernels::ComputePath;
use qwen3_model::{LoadOptions, Qwen3Config};
use qwen3_nvfp4::{
    device_arg, device_name, dtype_arg, dtype_name, init_tracing, parse_arg, pick_device, run_main,
    run_stress, synthetic_prompt, write_synthetic_model, ModelFiles, StressOptions, StressReport,
};
use tch::{Device, Kind};

/// Repeated load/prefill/generate/drop with and without KV cache, watching memory.
#[derive(Parser, Debug, Clone)]
#[command(version)]
struct Args {
    /// Model directory with config.json and one `.dat`.
    #[arg(long, value_name = "DIR")]
    model_dir: Option<PathBuf>,
    /// The `.dat` weights (overrides --model-dir).
    #[arg(long, value_name = "FILE")]
    weight: Option<PathBuf>,
    /// config.json (default: in --model-dir or beside --weight).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Use a random NVFP4 model of this config.json, written to a temporary `.dat` and loaded from it.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["model_dir", "weight", "synthetic"])]
    random_config: Option<PathBuf>,
    /// Use a small built-in random model (2 layers, hidden 128), written to a temporary `.dat`.
    #[arg(long, conflicts_with_all = ["model_dir", "weight"])]
    synthetic: bool,
    /// Seed of the random model's weights.
    #[arg(long, default_value_t = 0)]
    model_seed: u64,
    /// Device: cpu, cuda or cuda:N [default: cuda when available, else cpu].
    #[arg(long, value_parser = device_arg)]
    device: Option<Device>,
    /// Compute dtype: f32, bf16 or f16 [default: bf16 on CUDA, f32 on CPU].
    #[arg(long, value_parser = dtype_arg)]
    dtype: Option<Kind>,
    /// NVFP4 compute path: kernel-only, auto or dequant-matmul.
    #[arg(long, default_value = "auto", value_parser = parse_arg::<ComputePath>)]
    compute_path: ComputePath,
    /// Times the whole matrix runs in each process (the first is the memory warm-up).
    #[arg(long, default_value_t = 3)]
    iterations: usize,
    /// Run the iterations in N fresh processes, one after another.
    #[arg(long, default_value_t = 1)]
    processes: usize,
    /// Prompt length (ids drawn from a fixed sequence below the vocabulary size).
    #[arg(long, default_value_t = 32)]
    prompt_len: usize,
    /// Greedy tokens generated per run.
    #[arg(long, default_value_t = 16)]
    max_tokens: usize,
    /// Allowed growth of memory in use over the post-warm-up baseline, MiB.
    #[arg(long, default_value_t = 64.0)]
    tolerance_mib: f64,
    /// Fail when any run's ids differ (default on CPU with f32, where runs are deterministic).
    #[arg(long)]
    require_identical: Option<bool>,
    /// Internal: run as a child of `--processes`, print the report line, exit.
    #[arg(long, hide = true)]
    child: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    init_tracing("warn");
    run_main(|| run(&args))
}

fn run(args: &Args) -> Result<()> {
    if args.iterations == 0 || args.processes == 0 {
        bail!("--iterations and --processes must be at least 1");
    }
    let device = pick_device(args.device);
    // A random model lives in a temp dir for the whole run (children included).
    let temp =
        tempfile::tempdir().context("creating a temporary directory for the random model")?;
    let (weight, config) = model_files(args, temp.path())?;
    let opts = stress_options(args, device, weight, config)?;
    let processes = if args.child {
        "in a child process".to_string()
    } else {
        format!("x {} process(es)", args.processes)
    };
    eprintln!(
        "stress: {} on {} as {}, {} iteration(s) {processes}, prompt {} ids, {} new tokens",
        opts.weight.display(),
        device_name(device),
        dtype_name(opts.dtype),
        opts.iterations,
        opts.prompt.len(),
        opts.max_new_tokens
    );
    if args.child || args.processes == 1 {
        let report = run_stress(&opts)?;
        eprint!("{}", report.table());
        if args.child {
            println!("{}", report.to_child_line());
        }
        return report.verdict();
    }
    run_processes(args, &opts)
}

fn model_files(args: &Args, temp: &std::path::Path) -> Result<(PathBuf, PathBuf)> {
    if args.synthetic || args.random_config.is_some() {
        let cfg = match &args.random_config {
            Some(path) => Qwen3Config::from_file(path)
                .with_context(|| format!("--random-config {}", path.display()))?,
            None => synthetic_config(),
        };
        eprintln!(
            "writing a random model ({} layers, hidden {}) to {}",
            cfg.num_hidden_layers,
            cfg.hidden_size,
            temp.display()
        );
        return write_synthetic_model(&cfg, args.model_seed, temp);
    }
    let files = ModelFiles::resolve(
        args.model_dir.as_deref(),
        args.weight.as_deref(),
        args.config.as_deref(),
        None,
    )?;
    Ok((files.weight, files.config))
}

/// The `--synthetic` model: small enough for CPU, big enough that a leaked
/// copy of it per run (a few MiB) would show against the tolerance over many runs.
fn synthetic_config() -> Qwen3Config {
    Qwen3Config {
        vocab_size: 4096,
        hidden_size: 128,
        intermediate_size: 384,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        head_dim: 32,
        max_position_embeddings: 4096,
        tie_word_embeddings: false,
        eos_token_ids: vec![],
        ..Qwen3Config::qwen3_4b()
    }
}

fn stress_options(
    args: &Args,
    device: Device,
    weight: PathBuf,
    config: PathBuf,
) -> Result<StressOptions> {
    let dtype = args.dtype.unwrap_or(LoadOptions::new(device).dtype);
    let compute_path = args.compute_path;
    let cfg = Qwen3Config::from_file(&config).with_context(|| config.display().to_string())?;
    let deterministic = device == Device::Cpu && dtype == tch::Kind::Float;
    Ok(StressOptions {
        weight,
        config,
        device,
        dtype,
        compute_path,
        iterations: args.iterations,
        prompt: synthetic_prompt(args.prompt_len.max(1), cfg.vocab_size, 7),
        max_new_tokens: args.max_tokens,
        tolerance_bytes: (args.tolerance_mib * 1024.0 * 1024.0) as u64,
        require_identical: args.require_identical.unwrap_or(deterministic),
    })
}

/// Runs each process in turn with the same options, collects its report line,
/// and fails on any non-zero exit, signal, missing report or failed verdict.
fn run_processes(args: &Args, opts: &StressOptions) -> Result<()> {
    let exe = std::env::current_exe().context("locating this executable to re-run it")?;
    let mut failures = Vec::new();
    let mut summary = Vec::new();
    let mut first_ids: Option<Vec<u32>> = None;
    for p in 1..=args.processes {
        eprintln!("--- process {p}/{} ---", args.processes);
        let output = Command::new(&exe)
            .args(child_args(args, opts))
            .stderr(std::process::Stdio::inherit())
            .output()
            .with_context(|| format!("starting {}", exe.display()))?;
        let report = StressReport::from_child_output(&String::from_utf8_lossy(&output.stdout));
        summary.push(match &report {
            Ok(r) => format!("process {p:>3}: {}", r.summary_line()),
            Err(_) => format!("process {p:>3}: no report"),
        });
        match (exit_description(&output.status), report) {
            (None, Ok(report)) => {
                let ids = report.records.first().map(|r| r.tokens.clone());
                if opts.require_identical && first_ids.is_some() && ids != first_ids {
                    failures.push(format!(
                        "process {p}: ids {ids:?} differ from the first process's {first_ids:?}"
                    ));
                }
                first_ids = first_ids.or(ids);
            }
            (Some(exit), report) => {
                let detail = report
                    .ok()
                    .and_then(|r| r.verdict().err())
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default();
                failures.push(format!("process {p}: {exit}{detail}"));
            }
            (None, Err(e)) => failures.push(format!("process {p}: exited 0 but {e}")),
        }
    }
    eprintln!(
        "=== summary: {} process(es), {} failed ===\n{}",
        args.processes,
        failures.len(),
        summary.join("\n")
    );
    if failures.is_empty() {
        eprintln!("result: PASS");
        return Ok(());
    }
    bail!("stress failed:\n  {}", failures.join("\n  "))
}

/// `None` for success, else "exited with code N" / "crashed (signal N)".
fn exit_description(status: &std::process::ExitStatus) -> Option<String> {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(0), _) => None,
        (Some(code), _) => Some(format!("exited with code {code}")),
        (None, Some(signal)) => Some(format!("crashed (signal {signal})")),
        (None, None) => Some("ended without an exit code".to_string()),
    }
}

/// A child gets the resolved files and every setting, explicitly.
fn child_args(args: &Args, opts: &StressOptions) -> Vec<String> {
    vec![
        "--child".into(),
        "--weight".into(),
        opts.weight.display().to_string(),
        "--config".into(),
        opts.config.display().to_string(),
        "--device".into(),
        device_name(opts.device),
        "--dtype".into(),
        dtype_name(opts.dtype).into(),
        "--compute-path".into(),
        args.compute_path.to_string(),
        "--iterations".into(),
        opts.iterations.to_string(),
        "--prompt-len".into(),
        opts.prompt.len().to_string(),
        "--max-tokens".into(),
        opts.max_new_tokens.to_string(),
        "--tolerance-mib".into(),
        args.tolerance_mib.to_string(),
        "--require-identical".into(),
        opts.require_identical.to_string(),
    ]
}
