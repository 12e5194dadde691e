//! Held-out loss and perplexity of a model on a text or chat file.
//!
//! ```text
//! cargo run --release --example eval -- --model-dir DIR --data val.txt.gz [--seq-len 512] \
//!     [--device cpu|cuda] [--dtype f32|bf16] [--w4a4] [--nvfp4-head]
//! ```
//!
//! `--data`: plain text (`.txt`, `.txt.gz` or a directory of them; packed
//! windows of `--seq-len`, every token scored) or a chat `.jsonl`/`.tsv`
//! (response tokens only, as in training). Prints tokens scored, mean loss
//! and perplexity, and ends with one JSON line
//! `{"mean_loss", "perplexity", "tokens", "examples", "tokens_per_s", ...}`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use qwen3_model::{LoadOptions, QuantRecipe, Qwen3Model, ScaleMode};
use qwen3_nvfp4::{device_arg, dtype_arg, init_tracing, pick_device, run_main};
use tch::{Device, Kind};
use tokenizer_bridge::Qwen3Tokenizer;
use trainer::{
    evaluate_loss, is_text_path, load_data, load_text_tokens, text_windows, DataOptions,
};

/// Held-out loss and perplexity of a Qwen3 model.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// A directory with one `.dat` (+ config.json) or HF safetensors, or a `.dat` file.
    #[arg(long)]
    model_dir: PathBuf,
    /// Text (`.txt`, `.txt.gz`, directory) or chat (`.jsonl`, `.tsv`) file.
    #[arg(long)]
    data: PathBuf,
    /// Predictions per window (text) / longest example (chat).
    #[arg(long, default_value_t = 512)]
    seq_len: usize,
    /// cpu, cuda or cuda:N [default: cuda when available, else cpu].
    #[arg(long, value_parser = device_arg)]
    device: Option<Device>,
    /// Compute dtype f32|bf16|f16 [default: bf16 on CUDA, f32 on CPU].
    #[arg(long, value_parser = dtype_arg)]
    dtype: Option<Kind>,
    /// Windows per forward.
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    /// Also round every projection's input activations to NVFP4 (W4A4 emulation).
    #[arg(long)]
    w4a4: bool,
    /// Logits of a tied model through an NVFP4 copy of the embedding (run2's --nvfp4-head).
    #[arg(long)]
    nvfp4_head: bool,
    /// Cache the text's token ids in this directory (reused when the text is unchanged).
    #[arg(long)]
    token_cache: Option<PathBuf>,
    /// Hide the progress bar.
    #[arg(long)]
    no_progress: bool,
}

fn main() -> ExitCode {
    init_tracing("warn");
    let args = Args::parse();
    run_main(|| eval(&args))
}

fn eval(args: &Args) -> Result<()> {
    let mut opts = LoadOptions::new(pick_device(args.device));
    if let Some(kind) = args.dtype {
        opts.dtype = kind;
    }
    let mut model = Qwen3Model::load(&args.model_dir, &opts)
        .with_context(|| format!("loading {}", args.model_dir.display()))?;
    let dir = match args.model_dir.is_dir() {
        true => args.model_dir.clone(),
        false => args
            .model_dir
            .parent()
            .map(PathBuf::from)
            .unwrap_or_default(),
    };
    let tok = Qwen3Tokenizer::from_dir(&dir).or_else(|_| Qwen3Tokenizer::bundled())?;
    if args.w4a4 {
        // Packed weights stay as stored; the recipe adds the activation rounding.
        model.set_recipe(&QuantRecipe::nvfp4(ScaleMode::TwoLevel, true));
    }
    if args.nvfp4_head {
        model
            .quantize_tied_head(ScaleMode::TwoLevel)
            .context("--nvfp4-head")?;
    }
    let data = if is_text_path(&args.data) {
        let ids = load_text_tokens(&args.data, &tok, args.token_cache.as_deref())
            .with_context(|| format!("reading {}", args.data.display()))?;
        text_windows(&args.data, &ids, args.seq_len)?
    } else {
        let o = DataOptions {
            seq_len: args.seq_len,
            bad_lines: Default::default(),
            system_prompt: None,
        };
        load_data(&args.data, &tok, &o)?
    };
    let bar = if args.no_progress {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(data.examples.len() as u64)
    };
    bar.set_style(ProgressStyle::with_template(
        "eval {bar:40} {pos}/{len} windows, {eta} left",
    )?);
    let start = Instant::now();
    let report = evaluate_loss(&model, &data, args.batch_size, &mut |done, _| {
        bar.set_position(done as u64)
    })?;
    bar.finish_and_clear();
    let seconds = start.elapsed().as_secs_f64();
    println!(
        "{}: {} tokens scored, mean loss {:.5}, perplexity {:.3}",
        args.data.display(),
        report.tokens,
        report.mean_loss,
        report.perplexity
    );
    let mut line = serde_json::to_value(report)?;
    line["data"] = args.data.display().to_string().into();
    line["model"] = args.model_dir.display().to_string().into();
    line["seq_len"] = args.seq_len.into();
    line["seconds"] = seconds.into();
    line["tokens_per_s"] = (report.tokens as f64 / seconds).into();
    println!("{line}");
    Ok(())
}
