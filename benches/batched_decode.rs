//! Batched decode throughput of the full-size Qwen3-4B (random NVFP4 weights)
//! on one GPU: `generate_batch` at several batch sizes, tokens/s summed over
//! rows, printed as JSON lines that `scripts/bench/batched_decode.sh` merges
//! with the Hugging Face baseline measured in the same run on the same card.
//! Not a criterion bench: each figure is one synchronized generation of
//! `new` tokens per row (seconds, not microseconds), after a short warm-up of
//! the same batch shape.
//!
//! Prompts have different lengths (row r: `prompt - (7 r mod 32)` tokens, the
//! rule `scripts/bench/hf_batched_decode.py` uses too), so the batch is left
//! padded as a real one would be. Greedy, no stop ids: every row decodes
//! exactly `new` tokens. Decode tokens/s counts each row's tokens after its
//! first (the first comes from the prefill).
//!
//! Env: FULL_SIZE_CONFIG (default: the bundled Qwen3-4B config.json),
//! BATCHED_BATCHES (default 1,8,32,64), BATCHED_PROMPT (longest prompt,
//! default 128, at least 32), BATCHED_NEW (new tokens per row, default 64),
//! FULL_SIZE_PATH (compute path, default auto), BATCHED_DEVICE=cpu (a smoke test of
//! this program with a tiny FULL_SIZE_CONFIG, f32, on a machine without a GPU).
mod common;

use std::time::Instant;

use anyhow::{bail, Context, Result};
use qwen3_model::{generate, generate_batch, GenerateOptions, LoadOptions, Qwen3Model};
use qwen3_nvfp4::MemoryProbe;
use serde_json::json;
use tch::{Device, Kind};

fn emit(value: serde_json::Value) {
    let mut obj = value;
    obj["system"] = json!("qwen3-nvfp4");
    println!("{obj}");
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> Result<T>
where
    T::Err: std::fmt::Display,
{
    match std::env::var(name) {
        Ok(s) => s
            .trim()
            .parse()
            .map_err(|e| anyhow::anyhow!("{name}={s:?}: {e}")),
        Err(_) => Ok(default),
    }
}

/// Row `r`'s prompt length: the longest minus `7 r mod 32` (shared with the HF script).
fn prompt_len(longest: usize, row: usize) -> usize {
    longest - (7 * row) % 32
}

fn main() -> Result<()> {
    if std::env::args().any(|a| a == "--list") {
        return Ok(()); // `cargo bench -- --list` probes; nothing to list
    }
    let cpu = std::env::var("BATCHED_DEVICE").is_ok_and(|d| d == "cpu");
    if !cpu && !tch::Cuda::is_available() {
        println!("SKIPPED (no CUDA): batched_decode bench needs a GPU");
        return Ok(());
    }
    let device = if cpu { Device::Cpu } else { Device::Cuda(0) };
    let (cfg, path) = common::full_size_model()?;
    let batches: Vec<usize> = std::env::var("BATCHED_BATCHES")
        .unwrap_or("1,8,32,64".into())
        .split(',')
        .map(|b| b.trim().parse().context("BATCHED_BATCHES"))
        .collect::<Result<_>>()?;
    let longest: usize = env_or("BATCHED_PROMPT", 128)?;
    let new: usize = env_or("BATCHED_NEW", 64)?;
    if longest < 32 || new < 2 {
        bail!("BATCHED_PROMPT must be >= 32 and BATCHED_NEW >= 2 (got {longest}, {new})");
    }
    let opts = LoadOptions {
        device,
        dtype: if cpu { Kind::Float } else { Kind::BFloat16 },
        compute_path: path,
        strict: true,
    };
    let probe = MemoryProbe::new(device)?;
    let t = Instant::now();
    let model = Qwen3Model::random(&cfg, &opts, 1)?;
    emit(
        json!({"metric": "random_model_s", "value": t.elapsed().as_secs_f64(),
                "backend": model.backend().describe(), "memory": probe.what()}),
    );
    let vocab = cfg.vocab_size;

    for &batch in &batches {
        let prompts: Vec<Vec<u32>> = (0..batch)
            .map(|r| qwen3_nvfp4::synthetic_prompt(prompt_len(longest, r), vocab, 1000 + r as u64))
            .collect();
        let run = |n: usize| {
            let o = GenerateOptions {
                max_new_tokens: n,
                ..GenerateOptions::default()
            };
            tch::no_grad(|| generate_batch(&model, &prompts, &o))
        };
        run(4)?; // warm-up of this shape: cuBLAS heuristics, allocator
        let g = run(new)?;
        if let Some(short) = g.rows.iter().find(|r| r.tokens.len() != new) {
            bail!(
                "batch {batch}: a row produced {} tokens, asked {new}",
                short.tokens.len()
            );
        }
        let decode_s = g.decode_time.as_secs_f64();
        emit(
            json!({"metric": "batched_decode_tok_s", "batch": batch, "value": g.decode_tokens_per_s(),
                    "path": "per-op generate_batch", "prompt_max": longest,
                    "prompt_min": g.rows.iter().map(|r| r.prompt_len).min(), "new": new,
                    "decode_s": decode_s, "ms_per_step": decode_s * 1e3 / g.decode_steps as f64,
                    "prefill_tok_s": g.prefill_tokens_per_s(),
                    "mem_in_use_gib": probe.bytes_in_use()? as f64 / 2f64.powi(30)}),
        );
    }

    // The batch-1 product path for comparison: `generate` through the fused step.
    let ids = qwen3_nvfp4::synthetic_prompt(longest, vocab, 1000);
    let o = GenerateOptions {
        max_new_tokens: new,
        ..GenerateOptions::default()
    };
    let mut cache = model.new_cache(1, longest + new + 1)?;
    let _warm = tch::no_grad(|| generate(&model, Some(&mut cache), &ids[..32], &o, &mut |_| true))?;
    let mut cache = model.new_cache(1, longest + new + 1)?;
    let g = tch::no_grad(|| generate(&model, Some(&mut cache), &ids, &o, &mut |_| true))?;
    emit(
        json!({"metric": "batched_decode_tok_s", "batch": 1, "value": g.decode_tokens_per_s(),
                "path": if g.fused_decode { "fused+graph generate" } else { "per-op generate" },
                "prompt_max": longest, "new": g.tokens.len()}),
    );
    Ok(())
}
