//! The quality experiment of docs/QUALITY.md, in one process: pretrain a
//! small Qwen3 (real tokenizer and vocabulary) in bf16 on plain text, then
//! train every arm from that same base for the same tokens and data order
//! (bf16 control, STE QAT, QAD against the frozen base), evaluate each under
//! post-training quantization and its own recipe on held-out and
//! out-of-domain text, and write JSON lines and the pretraining loss curve.
//!
//! ```text
//! cargo run --release --example quality -- --train train.txt.gz --val val.txt.gz \
//!     --ood sotu.txt.gz --tokenizer-dir /path/qwen3 --out runs/quality --device cuda
//! ```
//!
//! Output in `--out`: `results.jsonl` (one line per evaluation, scale
//! statistics, timings), `curves.jsonl` (per-step loss of every training),
//! `pretrain.png`.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Parser;
use qwen3_model::{LoadOptions, QuantRecipe, Qwen3Config, Qwen3Model, ScaleMode};
use qwen3_nvfp4::{init_tracing, parse_device};
use tch::Tensor;
use tokenizer_bridge::Qwen3Tokenizer;
use trainer::{
    evaluate_loss, load_text_tokens, plot_loss_curve, text_windows, Dataset, ScheduleKind, Teacher,
    TrainConfig, Trainer,
};

#[derive(Parser, Debug)]
struct Args {
    #[arg(long)]
    train: PathBuf,
    #[arg(long)]
    val: PathBuf,
    #[arg(long)]
    ood: PathBuf,
    #[arg(long)]
    tokenizer_dir: PathBuf,
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value = "cuda")]
    device: String,
    #[arg(long, default_value_t = 384)]
    hidden: usize,
    #[arg(long, default_value_t = 6)]
    layers: usize,
    #[arg(long, default_value_t = 1024)]
    intermediate: usize,
    #[arg(long, default_value_t = 6)]
    heads: usize,
    #[arg(long, default_value_t = 2)]
    kv_heads: usize,
    #[arg(long, default_value_t = 64)]
    head_dim: usize,
    #[arg(long, default_value_t = 256)]
    seq_len: usize,
    #[arg(long, default_value_t = 64)]
    batch: usize,
    #[arg(long, default_value_t = 1000)]
    pretrain_steps: u64,
    #[arg(long, default_value_t = 2e-3)]
    pretrain_lr: f64,
    #[arg(long, default_value_t = 200)]
    arm_steps: u64,
    #[arg(long, default_value_t = 2e-4)]
    arm_lr: f64,
    /// Seeds of every trained arm (data order).
    #[arg(long, default_value = "1,2")]
    seeds: String,
    /// Held-out tokens evaluated (from the start of --val).
    #[arg(long, default_value_t = 262144)]
    eval_tokens: usize,
    /// Which trained arms run: control, qat, qad, qat1l (comma-separated).
    #[arg(long, default_value = "control,qat,qad,qat1l")]
    arms: String,
    #[arg(long, default_value_t = 1.0)]
    distill_alpha: f64,
    /// Size the run by time instead: seconds of bf16 pretraining (overrides
    /// --pretrain-steps after a short calibration of the step time).
    #[arg(long)]
    pretrain_s: Option<f64>,
    /// Seconds of one bf16 control arm (overrides --arm-steps likewise).
    #[arg(long)]
    arm_s: Option<f64>,
}

/// The schemes of the experiment (two-level scales unless said).
fn schemes() -> Vec<(&'static str, QuantRecipe)> {
    let two = ScaleMode::TwoLevel;
    let with_head = |mut r: QuantRecipe| {
        r.head = true;
        r
    };
    vec![
        ("w4a16", QuantRecipe::nvfp4(two, false)),
        ("w4a16+head", with_head(QuantRecipe::nvfp4(two, false))),
        ("w4a4", QuantRecipe::nvfp4(two, true)),
        ("w4a4+head", with_head(QuantRecipe::nvfp4(two, true))),
        ("w4a16-1l", QuantRecipe::nvfp4(ScaleMode::Single, false)),
        (
            "w4a4+head-1l",
            with_head(QuantRecipe::nvfp4(ScaleMode::Single, true)),
        ),
    ]
}

struct Ctx {
    args: Args,
    cfg: Qwen3Config,
    opts: LoadOptions,
    train: Dataset,
    val: Dataset,
    ood: Dataset,
    results: std::fs::File,
    curves: std::fs::File,
}

impl Ctx {
    fn emit(&mut self, v: serde_json::Value) -> Result<()> {
        println!("{v}");
        writeln!(self.results, "{v}")?;
        self.results.flush()?;
        Ok(())
    }

    fn train_cfg(&self, steps: u64, lr: f64, warmup: u64, seed: u64) -> TrainConfig {
        let mut c = TrainConfig {
            steps: Some(steps),
            batch_size: self.args.batch,
            seq_len: self.args.seq_len + 1,
            lr,
            warmup,
            schedule: ScheduleKind::Cosine,
            min_lr_ratio: 0.1,
            seed,
            progress: false,
            ..Default::default()
        };
        c.adamw.weight_decay = 0.0;
        c
    }

    /// A fresh model holding `weights` (or its own init), precision `recipe`, trainable.
    fn model_from(
        &self,
        weights: Option<&HashMap<String, Tensor>>,
        recipe: &QuantRecipe,
    ) -> Result<Qwen3Model> {
        let mut m = Qwen3Model::init_dense(&self.cfg, &self.opts, 0, 0.02)?;
        m.set_recipe(recipe);
        let m = m.into_trainable(tch::Kind::Float, None)?;
        if let Some(w) = weights {
            tch::no_grad(|| {
                for (name, mut p) in m.named_parameters() {
                    p.copy_(&w[&name]);
                }
            });
        }
        Ok(m)
    }

    fn eval(
        &mut self,
        model: &mut Qwen3Model,
        base: serde_json::Value,
        recipe: &QuantRecipe,
        ood: bool,
    ) -> Result<()> {
        model.set_recipe(recipe);
        let start = Instant::now();
        let v = evaluate_loss(model, &self.val, 32, &mut |_, _| {})?;
        let o = if ood {
            Some(evaluate_loss(model, &self.ood, 32, &mut |_, _| {})?)
        } else {
            None
        };
        let mut line = base;
        line["eval"] = recipe.label().into();
        line["val_loss"] = v.mean_loss.into();
        line["val_ppl"] = v.perplexity.into();
        line["val_tokens"] = v.tokens.into();
        if let Some(o) = o {
            line["ood_loss"] = o.mean_loss.into();
            line["ood_tokens"] = o.tokens.into();
        }
        line["eval_s"] = start.elapsed().as_secs_f64().into();
        self.emit(line)
    }

    /// Trains `model` with `cfg` (optionally distilling), logging the curve as `run`.
    fn train(
        &mut self,
        model: Qwen3Model,
        cfg: TrainConfig,
        teacher: Option<Teacher>,
        run: &str,
    ) -> Result<Qwen3Model> {
        let pad = 0;
        let mut t = Trainer::new(model, cfg, self.train.clone(), pad)?;
        if let Some(teacher) = teacher {
            t.set_teacher(teacher);
        }
        let start = Instant::now();
        let mut tokens = 0usize;
        while t.step_count() < t.total_steps() {
            let m = t.step()?;
            tokens += m.tokens;
            let mut line =
                serde_json::json!({"run": run, "step": m.step, "loss": m.loss, "lr": m.lr});
            if let Some(kl) = t.last_kl() {
                line["kl"] = kl.into();
            }
            writeln!(self.curves, "{line}")?;
            if m.step % 100 == 0 || m.step == 1 {
                println!(
                    "{run} step {} loss {:.4} ({:.0} tok/s)",
                    m.step, m.loss, m.tokens_per_s
                );
            }
        }
        self.curves.flush()?;
        let secs = start.elapsed().as_secs_f64();
        self.emit(
            serde_json::json!({"train": run, "tokens": tokens, "seconds": secs,
            "tokens_per_s": tokens as f64 / secs, "final_loss": t.history().last().map(|m| m.loss),
            "mem_bytes": t.history().last().map(|m| m.mem_bytes)}),
        )?;
        Ok(t.into_model())
    }
}

fn snapshot(model: &Qwen3Model) -> HashMap<String, Tensor> {
    model
        .named_parameters()
        .into_iter()
        .map(|(n, t)| (n, t.detach().copy()))
        .collect()
}

fn main() -> Result<()> {
    init_tracing("warn");
    let args = Args::parse();
    let device = parse_device(&args.device)?;
    std::fs::create_dir_all(&args.out)?;
    let tok = Qwen3Tokenizer::from_dir(&args.tokenizer_dir)?;
    let start = Instant::now();
    let cache = args.out.join("tokens");
    let ids =
        |p: &Path| load_text_tokens(p, &tok, Some(&cache)).with_context(|| p.display().to_string());
    let train_ids = ids(&args.train)?;
    let mut val_ids = ids(&args.val)?;
    val_ids.truncate(args.eval_tokens + 1);
    let ood_ids = ids(&args.ood)?;
    println!(
        "tokens: train {}, val {} (evaluated), ood {}; tokenized in {:.1} s",
        train_ids.len(),
        val_ids.len(),
        ood_ids.len(),
        start.elapsed().as_secs_f64()
    );
    let cfg = Qwen3Config::from_json_str(
        &serde_json::json!({
            "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3",
            "vocab_size": tok.vocab_size().max(151936), "hidden_size": args.hidden,
            "intermediate_size": args.intermediate, "num_hidden_layers": args.layers,
            "num_attention_heads": args.heads, "num_key_value_heads": args.kv_heads,
            "head_dim": args.head_dim, "rope_theta": 1e6, "tie_word_embeddings": true,
            "max_position_embeddings": 4096, "rms_norm_eps": 1e-6
        })
        .to_string(),
    )?;
    std::fs::write(args.out.join("config.json"), cfg.to_json_string())?;
    let l = args.seq_len;
    let mut ctx = Ctx {
        train: text_windows(&args.train, &train_ids, l)?,
        val: text_windows(&args.val, &val_ids, l)?,
        ood: text_windows(&args.ood, &ood_ids, l)?,
        opts: LoadOptions::new(device),
        cfg,
        results: std::fs::File::create(args.out.join("results.jsonl"))?,
        curves: std::fs::File::create(args.out.join("curves.jsonl"))?,
        args,
    };
    let seeds: Vec<u64> = ctx
        .args
        .seeds
        .split(',')
        .map(|s| s.trim().parse())
        .collect::<std::result::Result<_, _>>()?;
    let arms: Vec<String> = ctx
        .args
        .arms
        .split(',')
        .map(|s| s.trim().to_string())
        .collect();
    let dense = QuantRecipe::DENSE;
    let body: i64 = {
        let m = ctx.model_from(None, &dense)?;
        let all: i64 = m
            .named_parameters()
            .iter()
            .map(|(_, t)| t.numel() as i64)
            .sum();
        all - (ctx.cfg.vocab_size * ctx.cfg.hidden_size) as i64
    };
    ctx.emit(serde_json::json!({"config": ctx.cfg.to_json_string(), "body_params": body,
        "train_tokens": train_ids.len(), "val_tokens": val_ids.len(), "ood_tokens": ood_ids.len(),
        "seq_len": l, "batch": ctx.args.batch, "pretrain_steps": ctx.args.pretrain_steps,
        "arm_steps": ctx.args.arm_steps, "pretrain_lr": ctx.args.pretrain_lr, "arm_lr": ctx.args.arm_lr}))?;

    // 0. Optional: steps from a time budget, at the measured bf16 step time.
    if ctx.args.pretrain_s.is_some() || ctx.args.arm_s.is_some() {
        let model = ctx.model_from(None, &dense)?;
        let mut t = Trainer::new(model, ctx.train_cfg(8, 1e-4, 0, 0), ctx.train.clone(), 0)?;
        for _ in 0..3 {
            t.step()?;
        }
        let s0 = Instant::now();
        for _ in 0..5 {
            t.step()?;
        }
        let step_s = s0.elapsed().as_secs_f64() / 5.0;
        if let Some(p) = ctx.args.pretrain_s {
            ctx.args.pretrain_steps = (p / step_s).max(10.0) as u64;
        }
        if let Some(a) = ctx.args.arm_s {
            ctx.args.arm_steps = (a / step_s).max(2.0) as u64;
        }
        ctx.emit(serde_json::json!({"calibration_step_s": step_s,
            "pretrain_steps": ctx.args.pretrain_steps, "arm_steps": ctx.args.arm_steps}))?;
    }

    // 1. The bf16 base.
    let model = ctx.model_from(None, &dense)?;
    let pcfg = ctx.train_cfg(
        ctx.args.pretrain_steps,
        ctx.args.pretrain_lr,
        100.min(ctx.args.pretrain_steps / 10),
        0,
    );
    let mut base = ctx.train(model, pcfg, None, "pretrain")?;
    let curve: Vec<(u64, f64)> = std::fs::read_to_string(ctx.args.out.join("curves.jsonl"))?
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["run"] == "pretrain")
        .filter_map(|v| Some((v["step"].as_u64()?, v["loss"].as_f64()?)))
        .collect();
    let curve = trainer::LossCurve {
        train: &curve,
        lr: &[],
        validation: &[],
    };
    plot_loss_curve(&ctx.args.out.join("pretrain.png"), &curve)?;
    let base_w = snapshot(&base);
    for (mode, name) in [
        (ScaleMode::Single, "single"),
        (ScaleMode::TwoLevel, "two-level"),
    ] {
        for head in [false, true] {
            let s = base.scale_stats(mode, head)?;
            ctx.emit(
                serde_json::json!({"scale_stats": name, "model": "base", "head": head,
                "blocks": s.blocks, "subnormal": s.subnormal, "zero": s.zero,
                "subnormal_share": s.subnormal_share(), "zero_share": s.zero_share()}),
            )?;
        }
    }
    ctx.eval(
        &mut base,
        serde_json::json!({"model": "base"}),
        &dense,
        true,
    )?;
    for (_, r) in schemes() {
        ctx.eval(
            &mut base,
            serde_json::json!({"model": "base", "kind": "ptq"}),
            &r,
            true,
        )?;
    }
    drop(base);

    // 2. The arms, same steps and data order per seed.
    let trained: Vec<(&str, QuantRecipe)> = schemes()
        .into_iter()
        .filter(|(n, _)| ["w4a16", "w4a4+head"].contains(n))
        .collect();
    for &seed in &seeds {
        let acfg = ctx.train_cfg(
            ctx.args.arm_steps,
            ctx.args.arm_lr,
            (ctx.args.arm_steps / 10).min(10),
            seed,
        );
        if arms.iter().any(|a| a == "control") {
            let m = ctx.model_from(Some(&base_w), &dense)?;
            let mut m = ctx.train(m, acfg.clone(), None, &format!("control-s{seed}"))?;
            let tag = serde_json::json!({"model": "control", "seed": seed});
            ctx.eval(&mut m, tag.clone(), &dense, true)?;
            for (_, r) in schemes() {
                let mut t = tag.clone();
                t["kind"] = "ptq".into();
                ctx.eval(&mut m, t, &r, true)?;
            }
            for (mode, name) in [
                (ScaleMode::Single, "single"),
                (ScaleMode::TwoLevel, "two-level"),
            ] {
                let s = m.scale_stats(mode, false)?;
                ctx.emit(serde_json::json!({"scale_stats": name, "model": format!("control-s{seed}"),
                    "head": false, "blocks": s.blocks, "subnormal_share": s.subnormal_share(), "zero_share": s.zero_share()}))?;
            }
        }
        let mut runs: Vec<(String, &str, QuantRecipe, bool)> = Vec::new();
        for (name, r) in &trained {
            if arms.iter().any(|a| a == "qat") {
                runs.push(("qat".into(), name, *r, false));
            }
            if arms.iter().any(|a| a == "qad") {
                runs.push(("qad".into(), name, *r, true));
            }
        }
        if arms.iter().any(|a| a == "qat1l") {
            for (name, r) in schemes() {
                if name == "w4a4+head-1l" {
                    runs.push(("qat".into(), name, r, false));
                }
            }
        }
        for (arm, name, recipe, distill) in runs {
            let m = ctx.model_from(Some(&base_w), &recipe)?;
            let teacher = if distill {
                Some(Teacher::new(
                    ctx.model_from(Some(&base_w), &dense)?,
                    ctx.args.distill_alpha,
                )?)
            } else {
                None
            };
            let run = format!("{arm}-{name}-s{seed}");
            let mut m = ctx.train(m, acfg.clone(), teacher, &run)?;
            let tag = serde_json::json!({"model": arm, "scheme": name, "seed": seed});
            ctx.eval(&mut m, tag, &recipe, true)?;
        }
    }
    ctx.emit(serde_json::json!({"done": true, "wall_s": start.elapsed().as_secs_f64()}))?;
    Ok(())
}
