//! The quality experiment of docs/QUALITY.md: pretrain a small Qwen3 (real
//! tokenizer and vocabulary) in bf16 on plain text, then train every arm from
//! that same base for the same tokens and data order (bf16 control, STE QAT,
//! QAD against the frozen base) on text the base never saw, evaluate each
//! under post-training quantization and its own recipe on held-out and
//! out-of-domain text, and write JSON lines and the pretraining loss curve.
//!
//! ```text
//! cargo run --release --example quality -- --train train.txt.gz --val val.txt.gz \
//!     --ood sotu.txt.gz --tokenizer-dir /path/qwen3 --out runs/quality --device cuda
//! ```
//!
//! The run is a journal of units (the base, then one unit per arm and seed):
//! `--budget-s` stops it before a unit that would not finish in time, and
//! `--resume` continues it in the same `--out`, skipping finished units (the
//! base is reloaded from `base.safetensors`), so it fits GPU calls of a few
//! minutes each.
//!
//! Output in `--out`: `results.jsonl` (one line per evaluation, scale
//! statistics, timings, and a `{"done": unit}` line per finished unit),
//! `curves.jsonl` (per-step loss of every training, validation points of the
//! pretraining), `pretrain.png`.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Parser;
use qwen3_model::{LoadOptions, QuantRecipe, Qwen3Config, Qwen3Model, ScaleMode};
use qwen3_nvfp4::{init_tracing, parse_device, run_main};
use serde_json::{json, Value};
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
    /// Continue the run in --out (finished units are skipped).
    #[arg(long)]
    resume: bool,
    /// Stop before a unit that would end later than this many seconds after start.
    #[arg(long)]
    budget_s: Option<f64>,
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
    #[arg(long, default_value_t = 2400)]
    pretrain_steps: u64,
    #[arg(long, default_value_t = 2e-3)]
    pretrain_lr: f64,
    /// Pretraining steps between two validation points (on --val-probe-tokens).
    #[arg(long, default_value_t = 200)]
    val_every: u64,
    #[arg(long, default_value_t = 65536)]
    val_probe_tokens: usize,
    /// Share of the training tokens (the tail) held back from pretraining:
    /// the arms train on it, text the base never saw.
    #[arg(long, default_value_t = 0.25)]
    arm_split: f64,
    /// Steps of every trained arm [default: one pass over the held-back text].
    #[arg(long)]
    arm_steps: Option<u64>,
    #[arg(long, default_value_t = 2e-4)]
    arm_lr: f64,
    /// Decoupled weight decay of every training (projections).
    #[arg(long, default_value_t = 0.1)]
    weight_decay: f64,
    /// Seeds of every trained arm (data order).
    #[arg(long, default_value = "1,2")]
    seeds: String,
    /// Held-out tokens evaluated (from the start of --val).
    #[arg(long, default_value_t = 262144)]
    eval_tokens: usize,
    /// Schemes evaluated as post-training quantization of the base and the controls.
    #[arg(
        long,
        default_value = "w4a16,w4a16+head,w4a4,w4a4+head,w4a16-1l,w4a4+head-1l,w4a4+head-keep1"
    )]
    ptq: String,
    /// Schemes trained with STE QAT (empty: none).
    #[arg(
        long,
        default_value = "w4a16,w4a16+head,w4a4,w4a4+head,w4a4+head-1l,w4a4+head-keep1"
    )]
    qat: String,
    /// Schemes trained with QAD against the frozen base (empty: none).
    #[arg(
        long,
        default_value = "w4a16,w4a16+head,w4a4,w4a4+head,w4a4+head-keep1"
    )]
    qad: String,
    /// Teacher of the QAD arms.
    #[arg(long, value_enum, default_value_t = QadTeacher::Control)]
    qad_teacher: QadTeacher,
    #[arg(long, default_value_t = 1.0)]
    distill_alpha: f64,
}

/// A comma-separated list of recipes (`w4a4+head-1l`, ...); empty: none.
fn recipes(list: &str, flag: &str) -> Result<Vec<QuantRecipe>> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().with_context(|| format!("--{flag}")))
        .collect()
}

/// The kinds of unit, as `--budget-s` estimates them.
const KINDS: [&str; 4] = ["base", "control", "qat", "qad"];

fn kind_name(s: &str) -> Option<&'static str> {
    KINDS.iter().copied().find(|k| *k == s)
}

/// The unit a training run belongs to (pretraining makes the base).
fn unit_of_run(run: &str) -> &str {
    match run {
        "pretrain" => "base",
        other => other,
    }
}

/// What the run has already done: the `{"done": unit}` lines of results.jsonl.
struct Journal {
    results: std::fs::File,
    curves: std::fs::File,
    done: HashSet<String>,
    /// Seconds the last unit of each kind took (to stop before overrunning).
    took: HashMap<&'static str, f64>,
}

impl Journal {
    fn open(out: &Path, resume: bool) -> Result<Journal> {
        let results_path = out.join("results.jsonl");
        let curves_path = out.join("curves.jsonl");
        if !resume && results_path.exists() {
            bail!(
                "{} exists: pass --resume to continue that run, or another --out",
                results_path.display()
            );
        }
        let lines = |p: &Path| -> Vec<Value> {
            std::fs::read_to_string(p)
                .unwrap_or_default()
                .lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect()
        };
        let finished: Vec<Value> = lines(&results_path)
            .into_iter()
            .filter(|v| v["done"].is_string())
            .collect();
        let done: HashSet<String> = finished
            .iter()
            .filter_map(|v| v["done"].as_str().map(String::from))
            .collect();
        let took = finished
            .iter()
            .filter_map(|v| Some((kind_name(v["kind"].as_str()?)?, v["s"].as_f64()?)))
            .collect();
        // Curves of units cut off by a previous call are dropped; their unit reruns.
        let kept: String = lines(&curves_path)
            .iter()
            .filter(|v| {
                v["run"]
                    .as_str()
                    .is_some_and(|r| done.contains(unit_of_run(r)))
            })
            .map(|v| format!("{v}\n"))
            .collect();
        trainer::write_atomic(&curves_path, kept.as_bytes())?;
        let append = |p: &Path| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .with_context(|| p.display().to_string())
        };
        Ok(Journal {
            results: append(&results_path)?,
            curves: append(&curves_path)?,
            done,
            took,
        })
    }

    fn emit(&mut self, v: Value) -> Result<()> {
        println!("{v}");
        writeln!(self.results, "{v}")?;
        self.results.flush()?;
        Ok(())
    }

    fn curve(&mut self, v: Value) -> Result<()> {
        writeln!(self.curves, "{v}")?;
        Ok(())
    }

    fn finish(&mut self, unit: &str, kind: &'static str, started: Instant) -> Result<()> {
        self.curves.flush()?;
        let secs = started.elapsed().as_secs_f64();
        self.took.insert(kind, secs);
        self.done.insert(unit.to_string());
        self.emit(json!({ "done": unit, "kind": kind, "s": secs }))
    }
}

struct Ctx {
    args: Args,
    cfg: Qwen3Config,
    opts: LoadOptions,
    pretrain: Dataset,
    arm_data: Dataset,
    val: Dataset,
    val_probe: Dataset,
    ood: Dataset,
    journal: Journal,
    start: Instant,
}

impl Ctx {
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
        c.adamw.weight_decay = self.args.weight_decay;
        c
    }

    /// False (after saying why) when a unit of `kind` would end past `--budget-s`.
    fn fits(&self, unit: &str, kind: &str) -> bool {
        let Some(budget) = self.args.budget_s else {
            return true;
        };
        let need = self.journal.took.get(kind).copied().unwrap_or(0.0);
        let at = self.start.elapsed().as_secs_f64();
        if at + need <= budget {
            return true;
        }
        println!(
            "stopping before {unit}: {at:.0} s gone, it takes about {need:.0} s, budget {budget:.0} s (continue with --resume)"
        );
        false
    }

    /// A fresh trainable model holding `weights` (or its own init), precision `recipe`.
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

    /// Held-out (and out-of-domain) loss of `model` under `recipe`, one result line.
    fn eval(&mut self, model: &mut Qwen3Model, tag: &Value, recipe: &QuantRecipe) -> Result<()> {
        model.set_recipe(recipe);
        let start = Instant::now();
        let v = evaluate_loss(model, &self.val, 32, &mut |_, _| {})?;
        let o = evaluate_loss(model, &self.ood, 32, &mut |_, _| {})?;
        let mut line = tag.clone();
        line["eval"] = recipe.label().into();
        line["val_loss"] = v.mean_loss.into();
        line["val_ppl"] = v.perplexity.into();
        line["val_tokens"] = v.tokens.into();
        line["ood_loss"] = o.mean_loss.into();
        line["ood_tokens"] = o.tokens.into();
        line["eval_s"] = start.elapsed().as_secs_f64().into();
        self.journal.emit(line)
    }

    /// `model` dense, then under every PTQ scheme.
    fn eval_ptq(&mut self, model: &mut Qwen3Model, tag: Value) -> Result<()> {
        self.eval(model, &tag, &QuantRecipe::DENSE)?;
        let mut ptq = tag;
        ptq["kind"] = "ptq".into();
        for r in recipes(&self.args.ptq, "ptq")? {
            self.eval(model, &ptq, &r)?;
        }
        Ok(())
    }

    fn scale_stats(&mut self, model: &Qwen3Model, name: &str) -> Result<()> {
        for (mode, label) in [
            (ScaleMode::Single, "single"),
            (ScaleMode::TwoLevel, "two-level"),
        ] {
            for head in [false, true] {
                let s = model.scale_stats(mode, head)?;
                self.journal
                    .emit(json!({"scale_stats": label, "model": name, "head": head,
                    "blocks": s.blocks, "subnormal": s.subnormal, "zero": s.zero,
                    "subnormal_share": s.subnormal_share(), "zero_share": s.zero_share()}))?;
            }
        }
        Ok(())
    }

    /// Trains `model` with `cfg` (distilling from `teacher` if given) on
    /// `data`, logging the curve as `run` and, every `val_every` steps,
    /// the loss on the validation probe.
    fn train(
        &mut self,
        model: Qwen3Model,
        cfg: TrainConfig,
        data: Dataset,
        teacher: Option<Teacher>,
        run: &str,
        val_every: Option<u64>,
    ) -> Result<Qwen3Model> {
        let mut t = Trainer::new(model, cfg, data, 0)?;
        if let Some(teacher) = teacher {
            t.set_teacher(teacher);
        }
        let start = Instant::now();
        let mut tokens = 0usize;
        while t.step_count() < t.total_steps() {
            let m = t.step()?;
            tokens += m.tokens;
            let mut line = json!({"run": run, "step": m.step, "loss": m.loss, "lr": m.lr});
            if let Some(kl) = t.last_kl() {
                line["kl"] = kl.into();
            }
            let last = m.step == t.total_steps();
            if let Some(every) = val_every.filter(|&e| m.step % e == 0 || last) {
                let v = evaluate_loss(t.model(), &self.val_probe, 32, &mut |_, _| {})?;
                line["val_loss"] = v.mean_loss.into();
                println!(
                    "{run} step {} val loss {:.4} (every {every})",
                    m.step, v.mean_loss
                );
            }
            self.journal.curve(line)?;
            if m.step % 100 == 0 || m.step == 1 {
                println!(
                    "{run} step {} loss {:.4} ({:.0} tok/s)",
                    m.step, m.loss, m.tokens_per_s
                );
            }
        }
        let secs = start.elapsed().as_secs_f64();
        self.journal
            .emit(json!({"train": run, "tokens": tokens, "seconds": secs,
            "tokens_per_s": tokens as f64 / secs, "final_loss": t.history().last().map(|m| m.loss),
            "mem_bytes": t.history().last().map(|m| m.mem_bytes)}))?;
        Ok(t.into_model())
    }

    /// The bf16 base: pretrained, evaluated and saved, or reloaded when done.
    fn base(&mut self) -> Result<HashMap<String, Tensor>> {
        if self.journal.done.contains("base") {
            println!("base: reloaded from {BASE_FILE}");
            return self.load_weights(BASE_FILE);
        }
        let started = Instant::now();
        let model = self.model_from(None, &QuantRecipe::DENSE)?;
        let steps = self.args.pretrain_steps;
        let cfg = self.train_cfg(steps, self.args.pretrain_lr, 100.min(steps / 10), 0);
        let data = self.pretrain.clone();
        let every = Some(self.args.val_every.max(1));
        let mut base = self.train(model, cfg, data, None, "pretrain", every)?;
        self.plot_pretraining()?;
        self.scale_stats(&base, "base")?;
        self.eval_ptq(&mut base, json!({"model": "base"}))?;
        let weights = snapshot(&base);
        self.save_weights(&weights, BASE_FILE)?;
        self.journal.finish("base", "base", started)?;
        Ok(weights)
    }

    fn plot_pretraining(&self) -> Result<()> {
        let lines: Vec<Value> = std::fs::read_to_string(self.args.out.join("curves.jsonl"))?
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .filter(|v: &Value| v["run"] == "pretrain")
            .collect();
        let series = |key: &str| -> Vec<(u64, f64)> {
            lines
                .iter()
                .filter_map(|v| Some((v["step"].as_u64()?, v[key].as_f64()?)))
                .collect()
        };
        let (train, validation) = (series("loss"), series("val_loss"));
        let curve = trainer::LossCurve {
            train: &train,
            lr: &[],
            validation: &validation,
        };
        plot_loss_curve(&self.args.out.join("pretrain.png"), &curve)?;
        Ok(())
    }

    /// One trained arm: `recipe` (dense for the control) trained from the
    /// base on the held-back text, distilled when `distill`, then evaluated.
    fn arm(
        &mut self,
        base: &HashMap<String, Tensor>,
        kind: &'static str,
        recipe: QuantRecipe,
        seed: u64,
    ) -> Result<bool> {
        let run = match kind {
            "control" => format!("control-s{seed}"),
            _ => format!("{kind}-{}-s{seed}", recipe.label()),
        };
        if self.journal.done.contains(&run) {
            return Ok(true);
        }
        if !self.fits(&run, kind) {
            return Ok(false);
        }
        let started = Instant::now();
        let steps = self.arm_steps();
        let cfg = self.train_cfg(steps, self.args.arm_lr, (steps / 10).min(10), seed);
        let teacher = match kind {
            "qad" => {
                let weights = match self.args.qad_teacher {
                    QadTeacher::Base => None,
                    QadTeacher::Control => Some(self.load_weights(&control_file(seed))?),
                };
                let dense =
                    self.model_from(Some(weights.as_ref().unwrap_or(base)), &QuantRecipe::DENSE)?;
                Some(Teacher::new(dense, self.args.distill_alpha)?)
            }
            _ => None,
        };
        let m = self.model_from(Some(base), &recipe)?;
        let data = self.arm_data.clone();
        let mut m = self.train(m, cfg, data, teacher, &run, None)?;
        match kind {
            "control" => {
                self.eval_ptq(&mut m, json!({"model": "control", "seed": seed}))?;
                self.scale_stats(&m, &run)?;
                self.save_weights(&snapshot(&m), &control_file(seed))?;
            }
            _ => {
                let mut tag = json!({"model": kind, "scheme": recipe.label(), "seed": seed});
                if kind == "qad" {
                    tag["teacher"] = format!("{:?}", self.args.qad_teacher).to_lowercase().into();
                }
                self.eval(&mut m, &tag, &recipe)?;
            }
        }
        self.journal.finish(&run, kind, started)?;
        Ok(true)
    }

    /// Writes `weights` to `name` in --out (whole or not at all: temp file, rename).
    fn save_weights(&self, weights: &HashMap<String, Tensor>, name: &str) -> Result<()> {
        let path = self.args.out.join(name);
        let named: Vec<(&str, &Tensor)> = weights.iter().map(|(n, t)| (n.as_str(), t)).collect();
        let tmp = path.with_extension("safetensors.tmp");
        Tensor::write_safetensors(&named, &tmp)?;
        std::fs::rename(&tmp, &path)?;
        Ok(())
    }

    /// Weights saved by [`Ctx::save_weights`], on the run's device.
    fn load_weights(&self, name: &str) -> Result<HashMap<String, Tensor>> {
        let path = self.args.out.join(name);
        let tensors = Tensor::read_safetensors(&path)
            .with_context(|| format!("{} (saved earlier in this run)", path.display()))?;
        let device = self.opts.device;
        Ok(tensors
            .into_iter()
            .map(|(n, t)| (n, t.to_device(device)))
            .collect())
    }

    fn arm_steps(&self) -> u64 {
        self.args.arm_steps.unwrap_or_else(|| {
            (self.arm_data.examples.len() / self.args.batch.max(1)).max(1) as u64
        })
    }
}

/// The base's weights in --out.
const BASE_FILE: &str = "base.safetensors";

/// The weights of the bf16 control of `seed` in --out (the teacher of QAD).
fn control_file(seed: u64) -> String {
    format!("control-s{seed}.safetensors")
}

/// The frozen bf16 teacher of the QAD arms.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum QadTeacher {
    /// The bf16 control of the same seed: the bf16 model trained on the same
    /// tokens, whose quantization gap QAD is to close.
    Control,
    /// The pretrained base (the student then learns nothing from the new text
    /// with --distill-alpha 1).
    Base,
}

fn snapshot(model: &Qwen3Model) -> HashMap<String, Tensor> {
    model
        .named_parameters()
        .into_iter()
        .map(|(n, t)| (n, t.detach().copy()))
        .collect()
}

fn model_config(args: &Args, tok: &Qwen3Tokenizer) -> Result<Qwen3Config> {
    Ok(Qwen3Config::from_json_str(
        &json!({
            "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3",
            "vocab_size": tok.vocab_size().max(151936), "hidden_size": args.hidden,
            "intermediate_size": args.intermediate, "num_hidden_layers": args.layers,
            "num_attention_heads": args.heads, "num_key_value_heads": args.kv_heads,
            "head_dim": args.head_dim, "rope_theta": 1e6, "tie_word_embeddings": true,
            "max_position_embeddings": 4096, "rms_norm_eps": 1e-6
        })
        .to_string(),
    )?)
}

fn main() -> std::process::ExitCode {
    trainer::prefer_expandable_segments();
    init_tracing("warn");
    let args = Args::parse();
    run_main(|| run(args))
}

fn run(args: Args) -> Result<()> {
    if !(0.0..1.0).contains(&args.arm_split) || args.arm_split <= 0.0 {
        bail!("--arm-split {}: expected a share in (0, 1)", args.arm_split);
    }
    let seeds: Vec<u64> = args
        .seeds
        .split(',')
        .map(|s| s.trim().parse().with_context(|| format!("--seeds {s:?}")))
        .collect::<Result<_>>()?;
    let (qat, qad) = (recipes(&args.qat, "qat")?, recipes(&args.qad, "qad")?);
    recipes(&args.ptq, "ptq")?;
    let device = parse_device(&args.device)?;
    std::fs::create_dir_all(&args.out)?;
    let journal = Journal::open(&args.out, args.resume)?;
    let tok = Qwen3Tokenizer::from_dir(&args.tokenizer_dir)?;
    let start = Instant::now();
    let cache = args.out.join("tokens");
    let ids =
        |p: &Path| load_text_tokens(p, &tok, Some(&cache)).with_context(|| p.display().to_string());
    let train_ids = ids(&args.train)?;
    let mut val_ids = ids(&args.val)?;
    val_ids.truncate(args.eval_tokens + 1);
    let ood_ids = ids(&args.ood)?;
    let split = train_ids.len() - (train_ids.len() as f64 * args.arm_split) as usize;
    let cfg = model_config(&args, &tok)?;
    trainer::write_atomic(
        &args.out.join("config.json"),
        cfg.to_json_string().as_bytes(),
    )?;
    let l = args.seq_len;
    let probe = &val_ids[..val_ids.len().min(args.val_probe_tokens + 1)];
    let mut ctx = Ctx {
        pretrain: text_windows(&args.train, &train_ids[..split], l)?,
        arm_data: text_windows(&args.train, &train_ids[split..], l)?,
        val: text_windows(&args.val, &val_ids, l)?,
        val_probe: text_windows(&args.val, probe, l)?,
        ood: text_windows(&args.ood, &ood_ids, l)?,
        opts: LoadOptions::new(device),
        cfg,
        journal,
        start,
        args,
    };
    let body = {
        let m = ctx.model_from(None, &QuantRecipe::DENSE)?;
        let all: usize = m.named_parameters().iter().map(|(_, t)| t.numel()).sum();
        all - ctx.cfg.vocab_size * ctx.cfg.hidden_size
    };
    ctx.journal.emit(
        json!({"config": ctx.cfg.to_json_string(), "body_params": body,
        "pretrain_tokens": split, "arm_tokens": train_ids.len() - split,
        "val_tokens": val_ids.len(), "ood_tokens": ood_ids.len(), "seq_len": l,
        "batch": ctx.args.batch, "pretrain_steps": ctx.args.pretrain_steps,
        "arm_steps": ctx.arm_steps(), "pretrain_lr": ctx.args.pretrain_lr,
        "arm_lr": ctx.args.arm_lr, "weight_decay": ctx.args.weight_decay,
        "resumed": ctx.args.resume, "tokenized_s": start.elapsed().as_secs_f64()}),
    )?;

    let base = ctx.base()?;
    let mut arms: Vec<(&'static str, QuantRecipe)> = vec![("control", QuantRecipe::DENSE)];
    arms.extend(qat.iter().map(|r| ("qat", *r)));
    arms.extend(qad.iter().map(|r| ("qad", *r)));
    for &seed in &seeds {
        for &(kind, recipe) in &arms {
            if !ctx.arm(&base, kind, recipe, seed)? {
                ctx.journal
                    .emit(json!({"stopped": "budget", "wall_s": start.elapsed().as_secs_f64()}))?;
                return Ok(());
            }
        }
    }
    ctx.journal
        .emit(json!({"complete": true, "wall_s": start.elapsed().as_secs_f64()}))?;
    Ok(())
}
