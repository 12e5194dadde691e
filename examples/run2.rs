//! `run2`: chat inference with NVFP4 weights, and the parity tool.
//!
//! One prompt (`--prompt TEXT` through the chat template, `--raw` without it,
//! or `--prompt-ids 1,2,3` with no tokenizer at all), an interactive REPL
//! (`--chat`), or a scripted conversation (`--script FILE`, one user turn per
//! line). `--print-ids` and `--dump-logits` make the output comparable with
//! Hugging Face. Timing goes to stderr. In the chat, Ctrl-C stops the reply
//! being written (not the session); a turn that fails is reported and the
//! session goes on.
//!
//! ```text
//! cargo run --release --example run2 -- --model-dir models/qwen3-4b --prompt "Hello!"
//! cargo run --release --example run2 -- --model-dir DIR --prompt-ids 9707,0 --print-ids --max-tokens 8
//! cargo run --release --example run2 -- --model-dir DIR --chat --kv-cache true --prefill pbp --temp 0.7
//! ```

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{ArgAction, Parser};
use nvfp4_kernels::ComputePath;
use qwen3_model::{
    generate, GenerateOptions, Generation, LoadOptions, PrefillMode, Qwen3Config, Qwen3Model,
    SamplingParams,
};
use qwen3_nvfp4::{
    device_arg, dtype_arg, dtype_name, error_text, fit_context, init_tracing, parse_arg,
    pick_device, run_main, write_logits, ChatSession, ModelFiles, TokenizerSource,
};
use tch::{Device, Kind};
use tokenizer_bridge::{ChatMessage, Qwen3Tokenizer};

/// Qwen3 NVFP4 inference: one prompt, an interactive chat, or a scripted conversation.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Model directory: config.json, tokenizer files and one `.dat`, or a
    /// Hugging Face safetensors directory (bf16, compressed-tensors or ModelOpt NVFP4).
    #[arg(long, value_name = "DIR")]
    model_dir: Option<PathBuf>,
    /// The `.dat` weights (overrides the one in --model-dir).
    #[arg(long, value_name = "FILE")]
    weight: Option<PathBuf>,
    /// config.json (default: the one in --model-dir, else beside --weight).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// tokenizer.json (default: the one in --model-dir, else the bundled Qwen3 tokenizer).
    #[arg(long, value_name = "FILE")]
    tokenizer: Option<PathBuf>,
    /// Device: cpu, cuda or cuda:N [default: cuda when available, else cpu].
    #[arg(long, value_parser = device_arg)]
    device: Option<Device>,
    /// Compute dtype: f32, bf16 or f16 [default: bf16 on CUDA, f32 on CPU].
    #[arg(long, value_parser = dtype_arg)]
    dtype: Option<Kind>,
    /// NVFP4 compute path: kernel-only (fail if no kernel), auto, or dequant-matmul.
    #[arg(long, default_value = "auto", value_parser = parse_arg::<ComputePath>)]
    compute_path: ComputePath,
    /// The user prompt (through the chat template unless --raw).
    #[arg(long, conflicts_with = "prompt_ids")]
    prompt: Option<String>,
    /// Prompt token ids, comma-separated; skips the tokenizer entirely.
    #[arg(long, value_name = "IDS")]
    prompt_ids: Option<String>,
    /// Encode --prompt as is, without the chat template.
    #[arg(long, requires = "prompt", conflicts_with_all = ["chat", "script"])]
    raw: bool,
    /// Interactive multi-turn chat on stdin with streaming output (/reset, /exit).
    #[arg(long, conflicts_with_all = ["prompt", "prompt_ids", "script"])]
    chat: bool,
    /// Scripted multi-turn conversation: one user turn per non-empty line of FILE.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["prompt", "prompt_ids"])]
    script: Option<PathBuf>,
    /// System message for the chat template.
    #[arg(long)]
    system: Option<String>,
    /// Maximum new tokens per reply (at most the model's context; a reply is cut where the context ends).
    #[arg(long, default_value_t = 128)]
    max_tokens: usize,
    /// Sampling temperature; 0 = greedy.
    #[arg(long, default_value_t = 0.0)]
    temp: f64,
    /// Nucleus sampling: keep the most likely tokens up to this mass (the crossing token included).
    #[arg(long)]
    top_p: Option<f64>,
    /// Keep only the K most likely tokens (0 = off).
    #[arg(long)]
    top_k: Option<usize>,
    /// Drop tokens less likely than MIN_P times the most likely one.
    #[arg(long)]
    min_p: Option<f64>,
    /// Hugging Face repetition penalty (1 = off).
    #[arg(long, default_value_t = 1.0)]
    repetition_penalty: f64,
    /// Seed of the sampler (same seed, same tokens).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// true: one KV cache kept across turns; false: recompute the whole sequence every step.
    #[arg(long, default_value_t = true, action = ArgAction::Set, value_name = "true|false")]
    kv_cache: bool,
    /// Prefill with the KV cache: tbt (token by token) or pbp (whole prompt at once).
    #[arg(long, default_value = "pbp", value_parser = parse_prefill)]
    prefill: PrefillMode,
    /// Write the prompt's logits at every position (f32 [T, vocab], tensor `logits`) as safetensors.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["chat", "script"])]
    dump_logits: Option<PathBuf>,
    /// Print `prompt_ids: ...` and `generated_ids: ...` lines.
    #[arg(long)]
    print_ids: bool,
    /// Do not stop on <|im_end|>/<|endoftext|>/eos: always generate --max-tokens tokens.
    #[arg(long)]
    no_stop: bool,
    /// Decode through the per-op forward instead of the fused CUDA-graph step
    /// (the reference; the fused step only runs on CUDA with packed weights).
    #[arg(long)]
    no_fused_decode: bool,
    /// Compute the logits of a tied model through an NVFP4 copy of the
    /// embedding (a quarter of the bytes a decode step reads on Qwen3-4B; its
    /// quality cost is in docs/QUALITY.md, "+head").
    #[arg(long)]
    nvfp4_head: bool,
    /// Print the NVFP4 kernel diagnosis (device, driver, NVRTC, kernels) and exit.
    #[arg(long)]
    diagnose: bool,
}

fn parse_prefill(s: &str) -> std::result::Result<PrefillMode, String> {
    s.parse().map_err(|e: qwen3_model::Error| e.to_string())
}

fn main() -> ExitCode {
    let args = Args::parse();
    init_tracing("warn");
    run_main(|| run(args))
}

fn run(args: Args) -> Result<()> {
    if args.diagnose {
        println!("{}", nvfp4_kernels::diagnose());
        return Ok(());
    }
    if args.prompt.is_none() && args.prompt_ids.is_none() && !args.chat && args.script.is_none() {
        bail!("nothing to do: pass --prompt TEXT, --prompt-ids IDS, --chat or --script FILE");
    }
    if args.temp == 0.0 {
        let ignored: Vec<&str> = [
            (args.top_p.is_some(), "--top-p"),
            (args.top_k.is_some(), "--top-k"),
            (args.min_p.is_some(), "--min-p"),
        ]
        .iter()
        .filter_map(|&(given, flag)| given.then_some(flag))
        .collect();
        if !ignored.is_empty() {
            eprintln!(
                "warning: {} ha{} no effect at --temp 0 (greedy decoding)",
                ignored.join(", "),
                if ignored.len() == 1 { "s" } else { "ve" }
            );
        }
    }
    let device = pick_device(args.device);
    let runner = Runner::load(&args, device)?;
    match (&args.script, args.chat) {
        (Some(script), _) => {
            let text = std::fs::read_to_string(script)
                .with_context(|| format!("--script {}", script.display()))?;
            let turns: Vec<String> = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(String::from)
                .collect();
            if turns.is_empty() {
                bail!(
                    "--script {}: no user turns (one per non-empty line)",
                    script.display()
                );
            }
            let failed = runner.converse(&args, turns.into_iter(), true)?;
            if failed > 0 {
                bail!("--script {}: {failed} turn(s) failed", script.display());
            }
            Ok(())
        }
        (None, true) => runner.converse(&args, stdin_turns(), false).map(|_| ()),
        (None, false) => runner.single(&args),
    }
}

/// The loaded model and what goes with it.
struct Runner {
    model: Qwen3Model,
    tokenizer: Option<Qwen3Tokenizer>,
    options: GenerateOptions,
}

impl Runner {
    fn load(args: &Args, device: Device) -> Result<Self> {
        let dtype = args.dtype.unwrap_or(LoadOptions::new(device).dtype);
        let compute_path = args.compute_path;
        let files = ModelFiles::resolve(
            args.model_dir.as_deref(),
            args.weight.as_deref(),
            args.config.as_deref(),
            args.tokenizer.as_deref(),
        )?;
        let cfg = Qwen3Config::from_file(&files.config)?;
        let context = cfg.max_position_embeddings;
        if args.max_tokens > context {
            bail!(
                "--max-tokens {}: the model's context holds {context} tokens (max_position_embeddings in {})",
                args.max_tokens,
                files.config.display()
            );
        }
        // Refuse before allocating: weights plus a cache for a reply and a long prompt.
        trainer::inference_estimate(&cfg, dtype, context.min(args.max_tokens + 1024))
            .check_fits(device)?;
        // Ids need no tokenizer: only an explicitly present one is loaded, for display.
        let tokenizer = match (args.prompt_ids.is_some(), &files.tokenizer) {
            (true, TokenizerSource::Bundled) => None,
            _ => Some(files.load_tokenizer()?),
        };
        let start = Instant::now();
        let load = LoadOptions {
            device,
            dtype,
            compute_path,
            strict: true,
        };
        let mut model = Qwen3Model::load_with_config(&files.weight, Some(&files.config), &load)
            .with_context(|| format!("loading {}", files.weight.display()))?;
        if args.nvfp4_head {
            model
                .quantize_tied_head(qwen3_model::ScaleMode::TwoLevel)
                .context("--nvfp4-head")?;
        }
        eprintln!(
            "loaded {} ({} layers, vocab {}) on {device:?} as {} in {:.2}s; {}",
            files.weight.display(),
            model.num_layers(),
            cfg.vocab_size,
            dtype_name(dtype),
            start.elapsed().as_secs_f64(),
            model.backend().describe()
        );
        let options = generate_options(args, &cfg, &files, tokenizer.as_ref())?;
        Ok(Self {
            model,
            tokenizer,
            options,
        })
    }

    fn tokenizer(&self) -> Result<&Qwen3Tokenizer> {
        self.tokenizer
            .as_ref()
            .context("this mode needs a tokenizer")
    }

    /// One prompt, one reply.
    fn single(&self, args: &Args) -> Result<()> {
        let prompt = match (&args.prompt_ids, &args.prompt) {
            (Some(ids), _) => parse_ids(ids)?,
            (None, Some(text)) if args.raw => self.tokenizer()?.encode(text, false)?,
            (None, Some(text)) => {
                let tok = self.tokenizer()?;
                let messages = with_system(args, vec![ChatMessage::user(text.as_str())]);
                tok.encode(&tok.apply_chat_template(&messages, true)?, false)?
            }
            (None, None) => unreachable!("checked in run()"),
        };
        let opts = GenerateOptions {
            keep_prompt_logits: args.dump_logits.is_some(),
            ..fit_context(
                &self.options,
                prompt.len(),
                self.model.config().max_position_embeddings,
            )?
        };
        let mut cache = args
            .kv_cache
            .then(|| self.model.new_cache(1, prompt.len() + opts.max_new_tokens))
            .transpose()?;
        let generation = self.streamed(|on_token| {
            Ok(generate(
                &self.model,
                cache.as_mut(),
                &prompt,
                &opts,
                on_token,
            )?)
        })?;
        report(args, &prompt, &generation);
        if self.tokenizer.is_none() && !args.print_ids {
            // Nothing was streamed as text: the ids are the answer.
            println!("{}", join(&generation.tokens));
        }
        if let (Some(path), Some(logits)) = (&args.dump_logits, &generation.prompt_logits) {
            write_logits(path, logits)?;
            eprintln!(
                "wrote prompt logits {:?} to {}",
                logits.size(),
                path.display()
            );
        }
        Ok(())
    }

    /// Runs `f` with a callback that prints each token's text as it arrives.
    fn streamed<T>(&self, f: impl FnOnce(&mut dyn FnMut(u32) -> bool) -> Result<T>) -> Result<T> {
        let mut decoder = self.tokenizer.as_ref().map(|t| t.stream_decoder());
        let mut stdout = std::io::stdout();
        let mut failed = None;
        let out = f(&mut |id| {
            if let Some(dec) = decoder.as_mut() {
                match dec.push(id) {
                    Ok(Some(text)) => {
                        let _ = write!(stdout, "{text}");
                        let _ = stdout.flush();
                    }
                    Ok(None) => {}
                    Err(e) => failed = Some(e),
                }
            }
            failed.is_none() && !CtrlC::fired()
        })?;
        if let Some(text) = decoder.as_mut().map(|d| d.finish()).transpose()?.flatten() {
            print!("{text}");
        }
        if let Some(e) = failed {
            return Err(e).context("decoding a generated token");
        }
        if decoder.is_some() {
            println!();
        }
        Ok(out)
    }

    /// A multi-turn conversation over `turns`; `echo` prints each user turn.
    /// A failed turn is reported and the conversation goes on; returns how
    /// many failed.
    fn converse(
        &self,
        args: &Args,
        turns: impl Iterator<Item = String>,
        echo: bool,
    ) -> Result<usize> {
        let tok = self.tokenizer()?;
        let new_chat = || ChatSession::new(&self.model, args.system.as_deref(), args.kv_cache);
        let mut chat = new_chat()?;
        let mut failed = 0;
        for line in turns {
            match line.as_str() {
                "/exit" | "/quit" => break,
                "/reset" => {
                    chat = new_chat()?;
                    eprintln!("(conversation reset)");
                    continue;
                }
                _ => {}
            }
            if echo {
                println!("user: {line}");
            }
            print!("assistant: ");
            let _ = std::io::stdout().flush();
            let ctrl_c = CtrlC::stop_reply();
            let turn = self.streamed(|cb| chat.turn(&self.model, tok, &line, &self.options, cb));
            let stopped = CtrlC::fired();
            drop(ctrl_c);
            match turn {
                Ok(turn) => {
                    if stopped {
                        eprintln!("(reply stopped by Ctrl-C)");
                    }
                    report(args, &turn.fed, &turn.generation);
                }
                Err(e) => {
                    println!();
                    eprintln!("error: {}", error_text(&e));
                    failed += 1;
                }
            }
        }
        Ok(failed)
    }
}

/// Ctrl-C during a reply: while a [`CtrlC`] guard lives, SIGINT sets a flag
/// that ends the reply at the next token instead of ending the process; at
/// the prompt (no guard) Ctrl-C ends the session as usual.
struct CtrlC;

static CTRL_C: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    CTRL_C.store(true, Ordering::SeqCst);
}

impl CtrlC {
    fn stop_reply() -> Self {
        CTRL_C.store(false, Ordering::SeqCst);
        // SAFETY: the handler only stores to an atomic (async-signal-safe).
        unsafe { libc::signal(libc::SIGINT, on_sigint as *const () as libc::sighandler_t) };
        CtrlC
    }

    fn fired() -> bool {
        CTRL_C.load(Ordering::SeqCst)
    }
}

impl Drop for CtrlC {
    fn drop(&mut self) {
        // SAFETY: restores the default disposition.
        unsafe { libc::signal(libc::SIGINT, libc::SIG_DFL) };
        CTRL_C.store(false, Ordering::SeqCst);
    }
}

/// Generation options from the flags. Stop ids come from the model's files:
/// the tokenizer's (`<|im_end|>`, `<|endoftext|>`, its eos), config.json's
/// `eos_token_id` and generation_config.json's, so that `--prompt-ids`
/// without a tokenizer stops where the tokenizer would.
fn generate_options(
    args: &Args,
    cfg: &Qwen3Config,
    files: &ModelFiles,
    tok: Option<&Qwen3Tokenizer>,
) -> Result<GenerateOptions> {
    let mut stop_ids: Vec<u32> = Vec::new();
    if !args.no_stop {
        stop_ids.extend(tok.map(|t| t.stop_ids().to_vec()).unwrap_or_default());
        stop_ids.extend(&cfg.eos_token_ids);
        if let Some(dir) = files.config.parent() {
            stop_ids.extend(tokenizer_bridge::generation_config_eos_ids(
                &dir.join("generation_config.json"),
            )?);
        }
        stop_ids.sort_unstable();
        stop_ids.dedup();
        if stop_ids.is_empty() {
            eprintln!("note: no eos token id in the model's files: replies run to --max-tokens");
        }
    }
    Ok(GenerateOptions {
        max_new_tokens: args.max_tokens,
        sampling: SamplingParams {
            temperature: args.temp,
            top_k: args.top_k,
            top_p: args.top_p,
            min_p: args.min_p,
            repetition_penalty: args.repetition_penalty,
            seed: args.seed,
        },
        stop_ids,
        prefill: args.prefill,
        keep_prompt_logits: false,
        fused_decode: !args.no_fused_decode,
    })
}

fn with_system(args: &Args, mut messages: Vec<ChatMessage>) -> Vec<ChatMessage> {
    if let Some(system) = &args.system {
        messages.insert(0, ChatMessage::system(system.as_str()));
    }
    messages
}

fn parse_ids(text: &str) -> Result<Vec<u32>> {
    let ids = text
        .split(',')
        .map(str::trim)
        .enumerate()
        .map(|(i, s)| {
            s.parse::<u32>()
                .with_context(|| format!("--prompt-ids: item {} ({s:?}) is not a token id", i + 1))
        })
        .collect::<Result<Vec<u32>>>()?;
    if ids.is_empty() {
        bail!("--prompt-ids: no ids");
    }
    Ok(ids)
}

/// `--print-ids` lines on stdout, timing on stderr.
fn report(args: &Args, prompt: &[u32], g: &Generation) {
    if args.print_ids {
        println!("prompt_ids: {}", join(prompt));
        println!("generated_ids: {}", join(&g.tokens));
    }
    eprintln!(
        "prefill: {} tokens in {:.3}s ({:.1} tok/s); decode ({}): {} tokens in {:.3}s ({:.1} tok/s); finish: {:?}",
        g.prompt_len,
        g.prefill_time.as_secs_f64(),
        g.prefill_tokens_per_s(),
        if g.fused_decode { "fused CUDA graph" } else { "per-op" },
        g.tokens.len().saturating_sub(1),
        g.decode_time.as_secs_f64(),
        g.decode_tokens_per_s(),
        g.finish
    );
}

fn join(ids: &[u32]) -> String {
    ids.iter().map(u32::to_string).collect::<Vec<_>>().join(" ")
}

/// User turns typed on stdin, with a prompt on stderr; ends at EOF. A line
/// that is not UTF-8 is reported and asked for again.
fn stdin_turns() -> impl Iterator<Item = String> {
    let stdin = std::io::stdin();
    std::iter::from_fn(move || loop {
        eprint!("user> ");
        let mut bytes = Vec::new();
        match stdin.lock().read_until(b'\n', &mut bytes) {
            Ok(0) => return None,
            Ok(_) => {}
            Err(e) => {
                eprintln!("error: reading stdin: {e}");
                return None;
            }
        }
        match String::from_utf8(bytes) {
            Ok(line) if line.trim().is_empty() => continue,
            Ok(line) => return Some(line.trim().to_string()),
            Err(e) => eprintln!(
                "error: the line is not UTF-8 text (invalid byte at offset {}); type it again",
                e.utf8_error().valid_up_to()
            ),
        }
    })
}
