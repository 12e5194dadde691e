//! Held-out loss and perplexity of a model on a text or chat file.
//!
//! ```text
//! cargo run --release --example eval -- --model-dir DIR --data val.txt.gz [--seq-len 512] \
//!     [--device cpu|cuda] [--dtype f32|bf16] [--w4a4]
//! ```
//!
//! `--data`: plain text (`.txt`, `.txt.gz` or a directory of them; packed
//! windows of `--seq-len`, every token scored) or a chat `.jsonl`/`.tsv`
//! (response tokens only, as in training). Prints tokens scored, mean loss
//! and perplexity, and ends with one JSON line
//! `{"mean_loss", "perplexity", "tokens", "examples", ...}`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use qwen3_model::{LoadOptions, QuantRecipe, Qwen3Model, ScaleMode};
use qwen3_nvfp4::{init_tracing, parse_device, parse_dtype};
use tokenizer_bridge::Qwen3Tokenizer;
use trainer::{
    evaluate_loss, is_text_path, load_data, load_text_tokens, resolve_model_dir, text_windows,
    DataOptions, WeightsSource,
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
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Compute dtype f32|bf16|f16 (default: bf16 on CUDA, f32 on CPU).
    #[arg(long)]
    dtype: Option<String>,
    /// Windows per forward.
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    /// Also round every projection's input activations to NVFP4 (W4A4 emulation).
    #[arg(long)]
    w4a4: bool,
    /// Cache the text's token ids in this directory (reused when the text is unchanged).
    #[arg(long)]
    token_cache: Option<PathBuf>,
    /// Hide the progress bar.
    #[arg(long)]
    no_progress: bool,
}

fn main() -> Result<()> {
    init_tracing("warn");
    let args = Args::parse();
    let device = parse_device(&args.device)?;
    let mut opts = LoadOptions::new(device);
    if let Some(d) = &args.dtype {
        opts.dtype = parse_dtype(d)?;
    }
    let (cfg, weights) = resolve_model_dir(&args.model_dir)?;
    let dir = if args.model_dir.is_dir() {
        args.model_dir.clone()
    } else {
        args.model_dir
            .parent()
            .map(PathBuf::from)
            .unwrap_or_default()
    };
    let tok = Qwen3Tokenizer::from_dir(&dir).or_else(|_| Qwen3Tokenizer::bundled())?;
    let mut model = match &weights {
        WeightsSource::Dat(p) => Qwen3Model::load_dat(&dat_format::DatFile::open(p)?, &cfg, &opts)?,
        WeightsSource::HfDir(d) => Qwen3Model::load_hf_dir(d, &cfg, &opts)?,
    };
    if args.w4a4 {
        // Packed weights stay as stored; the recipe adds the activation rounding.
        model.set_recipe(&QuantRecipe::nvfp4(ScaleMode::TwoLevel, true));
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
    let report = evaluate_loss(&model, &data, args.batch_size, &mut |done, _| {
        bar.set_position(done as u64)
    })?;
    bar.finish_and_clear();
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
    println!("{line}");
    Ok(())
}
