//! Full-size Qwen3-4B on one GPU: load, decode, prefill, memory (and training,
//! through the trainer's own step) of THIS project, printed as JSON lines that
//! `scripts/bench/full_size.sh` merges with the Hugging Face baseline measured in
//! the same run on the same card. Not a criterion bench: each figure is one
//! long, synchronized measurement of a whole pipeline (seconds, not microseconds).
//!
//! Weights are random (speed and memory do not depend on the values), built on
//! the GPU, written as a real NVFP4 `.dat` and loaded back from it, so the load
//! figure is the real path: page cache -> mmap index -> one copy per tensor.
//!
//! Env: FULL_SIZE_CONFIG (default: the bundled Qwen3-4B config.json),
//! FULL_SIZE_DIR (where the .dat goes; default a temp dir), FULL_SIZE_SKIP
//! (comma list of load,decode,prefill,nvfp4_head,train), FULL_SIZE_PATH (compute path, default auto).
mod common;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Result};
use dat_format::DatFile;
use qwen3_model::{generate, GenerateOptions, LoadOptions, Qwen3Model};
use qwen3_nvfp4::MemoryProbe;
use serde_json::json;
use tch::{Device, Kind};

fn emit(value: serde_json::Value) {
    let mut obj = value;
    obj["system"] = json!("qwen3-nvfp4");
    println!("{obj}");
}

fn skip(what: &str) -> bool {
    std::env::var("FULL_SIZE_SKIP")
        .unwrap_or_default()
        .split(',')
        .any(|s| s == what)
}

fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

fn main() -> Result<()> {
    // As examples/train does: what a user of the tool gets.
    trainer::prefer_expandable_segments();
    if std::env::args().any(|a| a == "--list") {
        return Ok(()); // `cargo bench -- --list` probes; nothing to list
    }
    if !tch::Cuda::is_available() {
        println!("SKIPPED (no CUDA): full_size bench needs a GPU");
        return Ok(());
    }
    let device = Device::Cuda(0);
    let (cfg, path) = common::full_size_model()?;
    let dir = match std::env::var("FULL_SIZE_DIR") {
        Ok(d) => PathBuf::from(d),
        Err(_) => std::env::temp_dir().join("qwen3-full-size"),
    };
    std::fs::create_dir_all(&dir)?;
    let dat_path = dir.join("model.dat");
    let opts = LoadOptions {
        device,
        dtype: Kind::BFloat16,
        compute_path: path,
        strict: true,
    };
    let probe = MemoryProbe::new(device)?;
    let base_mem = probe.bytes_in_use()?;

    if !dat_path.exists() {
        let t = Instant::now();
        let model = Qwen3Model::random(&cfg, &opts, 1)?;
        qwen3_model::export_dat(&model, &dat_path, None)?;
        drop(model);
        emit(json!({"metric": "generate_random_dat_s", "value": t.elapsed().as_secs_f64()}));
        // libtorch's caching allocator keeps the generator's memory: measure
        // load and memory at rest in a fresh process.
        let status = std::process::Command::new(std::env::current_exe()?)
            .args(std::env::args_os().skip(1))
            .status()?;
        std::process::exit(status.code().unwrap_or(1));
    }
    let file_bytes = std::fs::metadata(&dat_path)?.len();
    // Warm the page cache so the figure is "from the page cache" as specified.
    std::fs::read(&dat_path).map(drop)?;

    let t = Instant::now();
    let dat = DatFile::open(&dat_path)?;
    let index_s = t.elapsed().as_secs_f64();
    let model = Qwen3Model::load_dat(&dat, &cfg, &opts)?;
    sync(device);
    let load_s = t.elapsed().as_secs_f64();
    drop(dat);
    emit(
        json!({"metric": "load", "file_bytes": file_bytes, "index_s": index_s, "load_s": load_s,
                "gb_per_s": file_bytes as f64 / load_s / 1e9, "backend": model.backend().describe()}),
    );

    let weights_mem = probe.bytes_in_use()? - base_mem;
    let cache = model.new_cache(1, 4096).unwrap();
    let cache_bytes = cache.memory_bytes();
    drop(cache);
    emit(
        json!({"metric": "memory_at_rest", "weights_gib": weights_mem as f64 / 2f64.powi(30),
                "kv_cache_4k_gib": cache_bytes as f64 / 2f64.powi(30),
                "total_gib": (weights_mem + cache_bytes as u64) as f64 / 2f64.powi(30)}),
    );

    if let Ok(tokens) = std::env::var("FULL_SIZE_GEMM_FLOOR") {
        return gemm_floor(model.config(), tokens.parse()?, device);
    }
    if let Ok(spec) = std::env::var("FULL_SIZE_TRAIN") {
        // One training configuration per process, so the caching allocator's
        // reserved memory (what `bytes_in_use` sees) is this configuration's peak.
        return train(model, &spec, &probe, base_mem);
    }
    if std::env::var("FULL_SIZE_PROFILE").is_ok() {
        let twin = LoadOptions {
            dtype: Kind::Float,
            ..opts
        };
        let twin = Qwen3Model::load_dat(&DatFile::open(&dat_path)?, &cfg, &twin)?;
        fused_vs_per_op(&model, &twin)?;
        drop(twin);
        return profile_decode(&model);
    }
    if !skip("decode") {
        decode(&model, 512, 256, "bf16 tied")?;
    }
    if !skip("prefill") {
        prefill(&model, 2048)?;
    }
    // Issue 15: the same decode with an NVFP4 copy of the tied head.
    if !skip("nvfp4_head") && model.uses_tied_head() {
        let mut model = model;
        model.quantize_tied_head(qwen3_model::ScaleMode::TwoLevel)?;
        decode(&model, 512, 256, "nvfp4 copy")?;
    }
    Ok(())
}

/// `spec` = "master,moments,batch[,seq[,checkpointing]]", e.g. "f32,f32,1",
/// "bf16,int8,4,2048" or "bf16,bf16,4,2048,every-2" (checkpointing on | off |
/// every-K | auto, default on).
fn train(model: Qwen3Model, spec: &str, probe: &MemoryProbe, base_mem: u64) -> Result<()> {
    let parts: Vec<&str> = spec.split(',').collect();
    let [master, moments, batch, rest @ ..] = parts.as_slice() else {
        bail!("FULL_SIZE_TRAIN={spec}: want master,moments,batch[,seq[,checkpointing]]");
    };
    let batch: usize = batch.parse()?;
    let seq: usize = rest.first().map(|s| s.parse()).transpose()?.unwrap_or(2048);
    let checkpointing: trainer::Checkpointing = match rest.get(1) {
        Some(c) => c.parse()?,
        None => trainer::Checkpointing::On,
    };
    let flops_per_token = train_flops_per_token(model.config(), seq);
    emit(json!({"metric": "sdpa_backend", "batch": batch, "seq": seq,
                "backend": sdpa_backend(model.config(), batch, seq, model.device())}));
    let mut cfg = trainer::TrainConfig {
        batch_size: batch,
        seq_len: seq,
        steps: Some(4),
        warmup: 0,
        master_dtype: master.parse()?,
        activation_checkpointing: checkpointing,
        progress: false,
        ..trainer::TrainConfig::default()
    };
    cfg.adamw.state = match *moments {
        "f32" => trainer::OptimStateKind::F32,
        "bf16" => trainer::OptimStateKind::BF16,
        "int8" => trainer::OptimStateKind::Int8Block,
        other => bail!("moments {other}: want f32, bf16 or int8"),
    };
    let vocab = model.config().vocab_size;
    let examples = (0..batch * 4)
        .map(|i| {
            let tokens = prompt(seq, vocab)
                .into_iter()
                .map(|t| (t + i as u32) % vocab as u32)
                .collect::<Vec<_>>();
            let mut is_target = vec![true; seq];
            is_target[0] = false;
            trainer::Example {
                tokens,
                is_target,
                prompt_ids: Vec::new(),
                prompt: String::new(),
                response: String::new(),
                line: i + 1,
            }
        })
        .collect();
    let data = trainer::Dataset {
        path: PathBuf::from("synthetic"),
        examples,
        stats: trainer::DataStats::default(),
    };
    let mut t = trainer::Trainer::new(model, cfg, data, 0)?;
    let first = t.step()?; // warm-up: kernel compiles, optimizer state allocation
    let mut times = Vec::new();
    for _ in 0..3 {
        times.push(t.step()?.step_s);
    }
    times.sort_by(f64::total_cmp);
    let step_s = times[1];
    // One more step, only timed by phase (NVFP4_STEP_PHASES=1 synchronises
    // at each phase boundary, so it is not one of the timed steps above).
    if qwen3_model::phases::enabled()? {
        t.step()?;
        let phases: serde_json::Map<String, serde_json::Value> = trainer::take_step_phases()
            .into_iter()
            .map(|(name, s)| (name.to_string(), json!(s)))
            .collect();
        emit(
            json!({"metric": "train_phases", "master": master, "moments": moments,
                    "batch": batch, "seq": seq, "phases_s": phases}),
        );
    }
    let peak = probe.bytes_in_use()? - base_mem;
    let tok_s = (batch * seq) as f64 / step_s;
    emit(
        json!({"metric": "train_step", "master": master, "moments": moments, "batch": batch, "seq": seq,
                "step_s": step_s, "tok_s": tok_s, "first_step_s": first.step_s,
                "loss": first.loss, "peak_reserved_gib": peak as f64 / 2f64.powi(30),
                "mfu": tok_s * flops_per_token / H100_H200_BF16_PEAK_FLOPS,
                "recompute_every": t.recompute_every()}),
    );
    Ok(())
}

/// The floor a training step cannot go below on this card: the time cuBLAS
/// takes for the step's GEMMs alone at `tokens` tokens (every block's
/// projections forward, input gradient and weight gradient, with q/k/v and
/// gate/up fused as the trainer runs them, and the head in chunks of 2048
/// rows), plus SDPA's attention forward and backward at seq 2048. What the
/// step spends beyond it is elementwise work, the optimizer, and overhead.
fn gemm_floor(cfg: &qwen3_model::Qwen3Config, tokens: i64, device: Device) -> Result<()> {
    let opts = (Kind::BFloat16, device);
    let (h, i) = (cfg.hidden_size as i64, cfg.intermediate_size as i64);
    let (q, kv) = (
        (cfg.num_attention_heads * cfg.head_dim) as i64,
        (cfg.num_key_value_heads * cfg.head_dim) as i64,
    );
    let time = |f: &dyn Fn()| {
        f();
        sync(device);
        let t = Instant::now();
        for _ in 0..5 {
            f();
        }
        sync(device);
        t.elapsed().as_secs_f64() / 5.0
    };
    // One projection [m, k] -> [m, n]: (forward, input + weight gradient).
    let proj = |m: i64, k: i64, n: i64| {
        let (x, w, dy) = (
            tch::Tensor::randn([m, k], opts),
            tch::Tensor::randn([n, k], opts),
            tch::Tensor::randn([m, n], opts),
        );
        let fwd = time(&|| {
            let _ = x.mm(&w.tr());
        });
        let bwd = time(&|| {
            let _ = dy.mm(&w);
            let _ = dy.tr().mm(&x);
        });
        (fwd, bwd)
    };
    let layers = cfg.num_hidden_layers as f64;
    let parts = [
        ("qkv", proj(tokens, h, q + 2 * kv)),
        ("o", proj(tokens, q, h)),
        ("gate_up", proj(tokens, h, 2 * i)),
        ("down", proj(tokens, i, h)),
    ];
    let (head_fwd, head_bwd) = proj(2048, h, cfg.vocab_size as i64);
    let head = (head_fwd + head_bwd) * tokens as f64 / 2048.0;
    let (b, t) = (tokens / 2048, 2048);
    let qt = tch::Tensor::randn(
        [b, cfg.num_attention_heads as i64, t, cfg.head_dim as i64],
        opts,
    )
    .set_requires_grad(true);
    let kt = tch::Tensor::randn(
        [b, cfg.num_key_value_heads as i64, t, cfg.head_dim as i64],
        opts,
    )
    .set_requires_grad(true);
    let scale = 1.0 / (cfg.head_dim as f64).sqrt();
    let sdpa = || {
        tch::Tensor::scaled_dot_product_attention::<tch::Tensor>(
            &qt, &kt, &kt, None, 0.0, true, scale, true,
        )
    };
    let attention_fwd = time(&|| {
        let _ = tch::no_grad(sdpa);
    });
    let attention = time(&|| sdpa().sum(Kind::Float).backward());
    let per_part: serde_json::Map<String, serde_json::Value> = parts
        .iter()
        .map(|(name, (f, b))| {
            (
                name.to_string(),
                json!({"forward_s": f * layers, "backward_s": b * layers}),
            )
        })
        .collect();
    let blocks: f64 = parts.iter().map(|(_, (f, b))| f + b).sum::<f64>() * layers;
    emit(
        json!({"metric": "gemm_floor", "tokens": tokens, "blocks_gemm_s": blocks,
                "projections": per_part, "head_gemm_s": head,
                "attention_forward_s": attention_fwd * layers, "attention_s": attention * layers,
                "total_s": blocks + attention * layers + head}),
    );
    Ok(())
}

/// The backend libtorch's SDPA picks for the training attention (causal
/// GQA, bf16, [batch, heads, seq, head_dim]): the name of `SDPBackend`.
fn sdpa_backend(
    cfg: &qwen3_model::Qwen3Config,
    batch: usize,
    seq: usize,
    device: Device,
) -> &'static str {
    let (b, t, d) = (batch as i64, seq as i64, cfg.head_dim as i64);
    let opts = (Kind::BFloat16, device);
    let q = tch::Tensor::randn([b, cfg.num_attention_heads as i64, t, d], opts);
    let kv = tch::Tensor::randn([b, cfg.num_key_value_heads as i64, t, d], opts);
    let scale = 1.0 / (d as f64).sqrt();
    let choice = tch::Tensor::internal_fused_sdp_choice::<tch::Tensor>(
        &q, &kv, &kv, None, 0.0, true, scale, true,
    );
    match choice {
        0 => "math",
        1 => "flash_attention",
        2 => "efficient_attention",
        3 => "cudnn_attention",
        4 => "overrideable",
        _ => "error",
    }
}

/// Dense bf16 tensor-core peak of an H100/H200 SXM (the MFU denominator,
/// the same as scripts/bench/train_baselines.py's --peak-tflops).
const H100_H200_BF16_PEAK_FLOPS: f64 = 989.4e12;

/// Training FLOPs per token: 6 N (every parameter, forward and backward)
/// plus 6 L q_dim T for causal attention's two matmuls, the count
/// scripts/bench/train_baselines.py uses for the baselines.
fn train_flops_per_token(cfg: &qwen3_model::Qwen3Config, seq: usize) -> f64 {
    let (h, i, l) = (
        cfg.hidden_size,
        cfg.intermediate_size,
        cfg.num_hidden_layers,
    );
    let q = cfg.num_attention_heads * cfg.head_dim;
    let kv = cfg.num_key_value_heads * cfg.head_dim;
    let block = h * q + 2 * h * kv + q * h + 3 * h * i + 2 * h + 2 * cfg.head_dim;
    let heads = if cfg.tie_word_embeddings { 1 } else { 2 };
    let n = heads * cfg.vocab_size * h + l * block + h;
    6.0 * n as f64 + 6.0 * (l * q * seq) as f64
}

/// Where a decode step's time goes: one cached single-token forward at several
/// context lengths, the blocks alone (no cache), the head alone, the sampler.
fn profile_decode(model: &Qwen3Model) -> Result<()> {
    let device = model.device();
    let vocab = model.config().vocab_size;
    let time = |n: usize, f: &mut dyn FnMut() -> Result<()>| -> Result<f64> {
        f()?;
        sync(device);
        let t = Instant::now();
        for _ in 0..n {
            f()?;
        }
        sync(device);
        Ok(t.elapsed().as_secs_f64() * 1e3 / n as f64)
    };
    for ctx in [64usize, 512, 1024] {
        let ids = prompt(ctx, vocab);
        let mut cache = model.new_cache(1, ctx + 64).unwrap();
        let ids_t = tch::Tensor::from_slice(&ids.iter().map(|&i| i as i64).collect::<Vec<_>>())
            .view([1, -1]);
        let _prefilled =
            tch::no_grad(|| model.forward(&ids_t.to_device(device), Some(&mut cache)))?;
        let one = tch::Tensor::from_slice(&[17i64])
            .view([1, 1])
            .to_device(device);
        let ms = time(20, &mut || {
            cache.truncate(ctx)?;
            let _logits = tch::no_grad(|| model.forward(&one, Some(&mut cache)))?;
            Ok(())
        })?;
        emit(json!({"metric": "profile_forward_cached_ms", "context": ctx, "value": ms}));
    }
    // The decode loop by hand: forward of one token, argmax, read the id back.
    let ids = prompt(512, vocab);
    let mut cache = model.new_cache(1, 512 + 128).unwrap();
    let ids_t =
        tch::Tensor::from_slice(&ids.iter().map(|&i| i as i64).collect::<Vec<_>>()).view([1, -1]);
    let logits = tch::no_grad(|| model.forward(&ids_t.to_device(device), Some(&mut cache)))?;
    let mut next = logits.get(0).get(-1).argmax(0, false).int64_value(&[]);
    let t = Instant::now();
    for _ in 0..64 {
        let one = tch::Tensor::from_slice(&[next])
            .view([1, 1])
            .to_device(device);
        let l = tch::no_grad(|| model.forward(&one, Some(&mut cache)))?;
        next = l.get(0).get(-1).argmax(0, false).int64_value(&[]);
    }
    emit(
        json!({"metric": "profile_manual_decode_ms_per_token", "value": t.elapsed().as_secs_f64() * 1e3 / 64.0}),
    );
    let opts = GenerateOptions {
        max_new_tokens: 64,
        ..GenerateOptions::default()
    };
    let mut cache = model.new_cache(1, 512 + 128).unwrap();
    let g = tch::no_grad(|| generate(model, Some(&mut cache), &ids, &opts, &mut |_| true))?;
    emit(
        json!({"metric": "profile_generate_ms_per_token", "value": 1e3 / g.decode_tokens_per_s(),
                "fused": g.fused_decode}),
    );
    for graph in [false, true] {
        let mut cache = model.new_cache(1, 512 + 128).unwrap();
        let logits = tch::no_grad(|| model.forward(&ids_t.to_device(device), Some(&mut cache)))?;
        let mut next = logits.get(0).get(-1).argmax(0, false).int64_value(&[]) as u32;
        let mut dec = qwen3_model::FusedDecoder::new(model)?.with_graph(graph);
        let mut step = |token: u32| -> Result<u32> {
            let l = tch::no_grad(|| dec.step(&mut cache, token))?;
            Ok(l.argmax(0, false).int64_value(&[]) as u32)
        };
        next = step(next)?; // the eager first step (and the recording)
        let t = Instant::now();
        for _ in 0..64 {
            next = step(next)?;
        }
        emit(
            json!({"metric": "profile_fused_ms_per_token", "graph": graph,
                     "value": t.elapsed().as_secs_f64() * 1e3 / 64.0}),
        );
    }
    let h = tch::Tensor::randn(
        [1, 1, model.config().hidden_size as i64],
        (Kind::BFloat16, device),
    );
    let layers = model.num_layers();
    let ms = time(5, &mut || {
        let mut x = h.shallow_clone();
        for l in 0..layers {
            x = tch::no_grad(|| model.block_forward(l, &x, 100))?;
        }
        Ok(())
    })?;
    emit(json!({"metric": "profile_blocks_no_cache_ms", "value": ms}));
    let ms = time(20, &mut || {
        tch::no_grad(|| model.head(&h))
            .map(drop)
            .map_err(Into::into)
    })?;
    emit(json!({"metric": "profile_head_ms", "value": ms}));
    let logits = tch::no_grad(|| model.head(&h))?.view([-1]);
    let mut sampler = qwen3_model::Sampler::new(qwen3_model::SamplingParams::greedy());
    let hist = prompt(512, vocab);
    let ms = time(20, &mut || {
        sampler.sample(&logits, &hist).map(drop).map_err(Into::into)
    })?;
    emit(json!({"metric": "profile_sampler_greedy_ms", "value": ms}));
    Ok(())
}

/// Teacher-forced decode of 32 tokens after a 512-token prompt on the fused
/// step, the per-op bf16 forward and `twin` (the same weights with f32
/// activations): each bf16 path's worst logits error against the twin
/// relative to max |logit|, how often the two bf16 paths' argmax agree, and
/// the median gap between the twin's two best logits (random weights give
/// near-flat logits, so greedy paths part at near-ties).
fn fused_vs_per_op(model: &Qwen3Model, twin: &Qwen3Model) -> Result<()> {
    let ids = prompt(512, model.config().vocab_size);
    let ids: Vec<i64> = ids.iter().map(|&i| i as i64).collect();
    let prompt = tch::Tensor::from_slice(&ids)
        .view([1, -1])
        .to_device(model.device());
    let last =
        |m: &Qwen3Model, x: &tch::Tensor, c: &mut qwen3_model::KvCache| -> Result<tch::Tensor> {
            Ok(tch::no_grad(|| m.forward_last(x, Some(c)))?
                .view([-1])
                .to_kind(Kind::Float))
        };
    let (mut a, mut b, mut c) = (
        model.new_cache(1, 600).unwrap(),
        model.new_cache(1, 600).unwrap(),
        twin.new_cache(1, 600).unwrap(),
    );
    let _ = last(model, &prompt, &mut a)?;
    let _ = last(model, &prompt, &mut b)?;
    let mut reference = last(twin, &prompt, &mut c)?;
    let mut dec = qwen3_model::FusedDecoder::new(model)?;
    let (mut fused_err, mut per_op_err, mut agree, mut gaps) = (0f64, 0f64, 0usize, Vec::new());
    for _ in 0..32 {
        let token = reference.argmax(0, false).int64_value(&[]);
        let fused = tch::no_grad(|| dec.step(&mut b, token as u32))?;
        let one = tch::Tensor::from_slice(&[token])
            .view([1, 1])
            .to_device(model.device());
        let per_op = last(model, &one, &mut a)?;
        reference = last(twin, &one, &mut c)?;
        let scale = reference.abs().max().double_value(&[]);
        let err = |x: &tch::Tensor| (x - &reference).abs().max().double_value(&[]) / scale;
        fused_err = fused_err.max(err(&fused));
        per_op_err = per_op_err.max(err(&per_op));
        agree += usize::from(fused.argmax(0, false) == per_op.argmax(0, false));
        let (top, _) = reference.topk(2, 0, true, true);
        gaps.push((top.double_value(&[0]) - top.double_value(&[1])) / scale);
    }
    gaps.sort_by(f64::total_cmp);
    emit(
        json!({"metric": "profile_fused_vs_per_op", "steps": 32, "fused_err_vs_f32": fused_err,
                "per_op_err_vs_f32": per_op_err, "argmax_agree": agree,
                "median_top2_gap_rel": gaps[16]}),
    );
    Ok(())
}

fn prompt(len: usize, vocab: usize) -> Vec<u32> {
    qwen3_nvfp4::synthetic_prompt(len, vocab, 7)
}

/// Decode speed; `head` names how the model's head is stored.
fn decode(model: &Qwen3Model, prompt_len: usize, new: usize, head: &str) -> Result<()> {
    let ids = prompt(prompt_len, model.config().vocab_size);
    let run = |n: usize, fused: bool| -> Result<qwen3_model::Generation> {
        let mut cache = model.new_cache(1, prompt_len + n + 1).unwrap();
        let o = GenerateOptions {
            max_new_tokens: n,
            fused_decode: fused,
            ..GenerateOptions::default()
        };
        let g = tch::no_grad(|| generate(model, Some(&mut cache), &ids, &o, &mut |_| true))?;
        if g.tokens.len() != n {
            bail!("decode produced {} tokens, asked {n}", g.tokens.len());
        }
        if g.fused_decode != fused {
            bail!(
                "asked fused decode = {fused}, generate ran fused = {}",
                g.fused_decode
            );
        }
        Ok(g)
    };
    run(8, true)?; // warm-up: kernel compile, allocator, cuBLAS handles
    let fused = run(new, true)?;
    let reference = run(new, false)?;
    // Greedy on both paths: the same tokens until a near-tie flips one.
    let same_prefix = fused
        .tokens
        .iter()
        .zip(&reference.tokens)
        .take_while(|(a, b)| a == b)
        .count();
    emit(
        json!({"metric": "decode_tok_s", "value": fused.decode_tokens_per_s(), "prompt": prompt_len,
                "new": new, "prefill_tok_s": fused.prefill_tokens_per_s(), "path": "fused+graph", "head": head,
                "reference_tok_s": reference.decode_tokens_per_s(),
                "tokens_equal_to_reference": same_prefix}),
    );
    Ok(())
}

fn prefill(model: &Qwen3Model, len: usize) -> Result<()> {
    let ids = prompt(len, model.config().vocab_size);
    let opts = GenerateOptions {
        max_new_tokens: 1,
        ..GenerateOptions::default()
    };
    let mut best = f64::MAX;
    for _ in 0..3 {
        let mut cache = model.new_cache(1, len + 2).unwrap();
        let g = tch::no_grad(|| generate(model, Some(&mut cache), &ids, &opts, &mut |_| true))?;
        best = best.min(g.prefill_time.as_secs_f64());
    }
    emit(
        json!({"metric": "prefill_tok_s", "value": len as f64 / best, "tokens": len, "seconds": best}),
    );
    Ok(())
}
