//! The training loop: one optimizer step = `grad_accum` micro-batches of
//! forward/backward, clipping, the non-finite policy, an AdamW update.

use std::path::PathBuf;
use std::time::Instant;

use tch::Tensor;

use checkpoint::CheckpointManager;
use qwen3_model::Qwen3Model;

use crate::backprop::BackpropPlan;
use crate::batch::{make_batch, Batch, DataCursor, DataOrder};
use crate::config::{NonFinitePolicy, TrainConfig};
use crate::data::Dataset;
use crate::distill::{distill_forward_backward, Teacher};
use crate::error::{Error, Result};
use crate::grad::{clip_coefficient, global_grad_norm};
use crate::metrics::{memory_in_use, MetricsLog, StepMetrics};
use crate::optim::{default_decay, AdamW};
use crate::schedule::Schedule;
use qwen3_model::phases;

/// What a [`Trainer::train`] call did.
#[derive(Clone, Debug)]
pub struct TrainReport {
    /// Steps run by this call.
    pub steps_run: u64,
    /// Optimizer step reached (equals the total when the run is complete).
    pub step: u64,
    /// Loss of the first step of this call.
    pub first_loss: f64,
    /// Loss of the last step.
    pub final_loss: f64,
    /// Steps skipped by the non-finite policy (whole run, resumes included).
    pub skipped: u64,
    /// Wall time of this call, seconds.
    pub wall_s: f64,
    /// Checkpoint written at the end, if any.
    pub last_checkpoint: Option<PathBuf>,
}

/// One finished step, as [`Trainer::train_with`] reports it.
#[derive(Clone, Copy, Debug)]
pub struct StepProgress<'a> {
    /// The step's metrics (`metrics.step` is 1-based).
    pub metrics: &'a StepMetrics,
    /// Step the run (re)started from: 0, or the resumed checkpoint's step.
    pub first_step: u64,
    /// Steps of the whole run.
    pub total_steps: u64,
}

/// Quantization-aware trainer of a [`Qwen3Model`] on a [`Dataset`].
#[derive(Debug)]
pub struct Trainer {
    pub(crate) model: Qwen3Model,
    pub(crate) cfg: TrainConfig,
    pub(crate) data: Dataset,
    pub(crate) names: Vec<String>,
    pub(crate) params: Vec<Tensor>,
    pub(crate) optim: AdamW,
    /// ZeRO-1 before the group is known: the optimizer is built (over this
    /// rank's shard, or everything without a group) on first use.
    pub(crate) optim_pending: bool,
    pub(crate) schedule: Schedule,
    order: DataOrder,
    pub(crate) cursor: DataCursor,
    pub(crate) step: u64,
    pub(crate) skipped: u64,
    pub(crate) total_steps: u64,
    pad_id: u32,
    pub(crate) plan: BackpropPlan,
    pub(crate) ckpt: Option<CheckpointManager>,
    log: Option<MetricsLog>,
    pub(crate) append_log: bool,
    history: Vec<StepMetrics>,
    pub(crate) run_args: serde_json::Value,
    /// Data-parallel group (see dist.rs); `None`: a single process.
    pub(crate) dp: Option<crate::dist::DataParallel>,
    teacher: Option<Teacher>,
    last_kl: Option<f64>,
}

impl Trainer {
    /// Makes `model` trainable (master weights of `cfg.master_dtype`, the
    /// last `cfg.train_last_layers` blocks or all) and sets up the optimizer
    /// over exactly the trainable tensors. `pad_id` fills padded positions
    /// (any id: they are masked).
    pub fn new(model: Qwen3Model, cfg: TrainConfig, data: Dataset, pad_id: u32) -> Result<Self> {
        cfg.validate()?;
        // Every id that reaches the model is checked here, once: batches are
        // built only from these examples and `pad_id`.
        let vocab = model.config().vocab_size;
        data.check_vocab(vocab)?;
        if pad_id as usize >= vocab {
            return Err(Error::config(
                "pad id",
                format!("an id below the vocabulary size {vocab}"),
                pad_id,
            ));
        }
        let layers = model.num_layers();
        if let Some(k) = cfg.train_last_layers.filter(|&k| k > layers) {
            return Err(Error::config(
                "train-last-layers",
                format!("at most the model's {layers} layers"),
                k,
            ));
        }
        // Decided before the master weights exist, from the memory free now.
        let recompute_every = crate::budget::resolve_checkpointing(
            model.config(),
            &cfg,
            model.dtype(),
            model.device(),
        );
        let model = model.into_trainable(cfg.master_dtype.kind(), cfg.train_last_layers)?;
        let named = model.named_parameters();
        if named.is_empty() {
            return Err(Error::config(
                "train-last-layers",
                "a setting that leaves something to train",
                "no trainable tensor",
            ));
        }
        let (names, params): (Vec<String>, Vec<Tensor>) = named
            .iter()
            .map(|(n, t)| (n.clone(), t.shallow_clone()))
            .unzip();
        // ZeRO-1 allocates moments only once the shard is known.
        let optim = build_optimizer(&cfg, if cfg.zero1 { Vec::new() } else { named })?;
        let total_steps = cfg.total_steps(data.examples.len());
        let schedule = cfg
            .schedule
            .build(cfg.warmup, total_steps, cfg.min_lr_ratio)?;
        let first_trained_layer = layers - cfg.train_last_layers.unwrap_or(layers);
        let plan = BackpropPlan {
            first_trained_layer,
            recompute_every,
            written_out: BackpropPlan::written_out_for(&model, first_trained_layer)?,
        };
        let ckpt = match &cfg.checkpoint_dir {
            Some(dir) => Some(CheckpointManager::new(dir, cfg.keep_last)?),
            None => None,
        };
        let order = DataOrder::new(cfg.seed, data.examples.len(), cfg.shuffle);
        Ok(Trainer {
            model,
            data,
            names,
            params,
            optim,
            optim_pending: cfg.zero1,
            schedule,
            order,
            cursor: DataCursor::default(),
            step: 0,
            skipped: 0,
            total_steps,
            pad_id,
            plan,
            ckpt,
            log: None,
            append_log: false,
            history: Vec::new(),
            run_args: serde_json::Value::Null,
            dp: None,
            teacher: None,
            last_kl: None,
            cfg,
        })
    }

    /// The model being trained.
    pub fn model(&self) -> &Qwen3Model {
        &self.model
    }

    /// Hands the trained model back (e.g. for export).
    pub fn into_model(self) -> Qwen3Model {
        self.model
    }

    /// The configuration.
    pub fn config(&self) -> &TrainConfig {
        &self.cfg
    }

    /// The optimizer (state size, step count).
    pub fn optimizer(&self) -> &AdamW {
        &self.optim
    }

    /// Trainable tensor names, in optimizer order.
    pub fn param_names(&self) -> &[String] {
        &self.names
    }

    /// Whether the backward recomputes blocks (activation checkpointing as resolved).
    pub fn recomputes_blocks(&self) -> bool {
        self.plan.recompute_every > 0
    }

    /// Activation checkpointing as resolved: every k-th block is recomputed
    /// (1: all, 0: none).
    pub fn recompute_every(&self) -> usize {
        self.plan.recompute_every
    }

    /// Optimizer steps done (resumes included).
    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// Steps the run will take in all.
    pub fn total_steps(&self) -> u64 {
        self.total_steps
    }

    /// Steps skipped by the non-finite policy.
    pub fn skipped_steps(&self) -> u64 {
        self.skipped
    }

    /// Where the data stream stands.
    pub fn cursor(&self) -> DataCursor {
        self.cursor
    }

    /// Metrics of the steps run by this process.
    pub fn history(&self) -> &[StepMetrics] {
        &self.history
    }

    /// Arguments recorded in checkpoints (e.g. the command line, as JSON).
    pub fn set_run_args(&mut self, args: serde_json::Value) {
        self.run_args = args;
    }

    /// Distil from `teacher` from now on (QAD): the loss becomes
    /// `alpha * KL(teacher || student) + (1 - alpha) * CE`; the step's
    /// reported loss stays the data cross-entropy, [`Trainer::last_kl`] the KL.
    pub fn set_teacher(&mut self, teacher: Teacher) {
        self.teacher = Some(teacher);
    }

    /// Mean KL per target token of the last step, when distilling.
    pub fn last_kl(&self) -> Option<f64> {
        self.last_kl
    }

    /// Builds the optimizer of a ZeRO-1 trainer if not built yet: over the
    /// tensors `keep` accepts (this rank's shard), or over all of them.
    pub(crate) fn ensure_optimizer(&mut self, keep: Option<&dyn Fn(usize) -> bool>) -> Result<()> {
        if !self.optim_pending {
            return Ok(());
        }
        let named = self
            .names
            .iter()
            .zip(&self.params)
            .enumerate()
            .filter(|(i, _)| keep.is_none_or(|k| k(*i)))
            .map(|(_, (n, p))| (n.clone(), p.shallow_clone()))
            .collect();
        self.optim = build_optimizer(&self.cfg, named)?;
        self.optim_pending = false;
        Ok(())
    }

    /// Clears every trainable tensor's gradient (under ZeRO-1 the optimizer
    /// holds only this rank's tensors, but every gradient accumulates).
    pub(crate) fn zero_grads(&mut self) {
        for p in &mut self.params {
            p.zero_grad();
        }
    }

    /// One optimizer step on the next `batch_size * grad_accum` examples.
    pub fn step(&mut self) -> Result<StepMetrics> {
        let start = Instant::now();
        self.ensure_optimizer(None)?;
        let batches = self.next_batches();
        let targets: usize = batches.iter().map(|b| b.target_tokens).sum();
        let tokens: usize = batches.iter().map(|b| b.tokens).sum();
        let denom = targets.max(1) as f64;
        let device = self.model.device();
        phases::start(device)?;
        self.zero_grads();
        phases::mark(device, "zero_grads");
        let ce = match &self.teacher {
            None => {
                let mine = self.my_share(batches);
                // A libtorch failure (out of memory in the backward, say) comes
                // back as an error naming the step, before any weight is updated.
                let during = format!("training step {}", self.step);
                qwen3_model::guard_libtorch(&during, || self.accumulate_gradients(&mine, denom))?
            }
            // Its gradients are not reduced across ranks: refuse, never train apart.
            Some(_) if self.dp.is_some() => {
                return Err(Error::config(
                    "distill",
                    "a single process (distillation is not data-parallel yet)",
                    "a data-parallel group",
                ))
            }
            Some(t) => {
                let (mut ce, mut kl) = (0.0, 0.0);
                for b in &batches {
                    let s = distill_forward_backward(
                        &self.model,
                        t,
                        &b.input_ids,
                        &b.labels,
                        denom,
                        self.plan,
                    )?;
                    ce += s.ce;
                    kl += s.kl;
                }
                self.last_kl = Some(kl / denom);
                ce
            }
        };
        let loss = ce / denom;
        // Clipping happens inside the update (AdamW::step_scaled): the fused
        // kernel scales each gradient as it reads it.
        let grad_norm = match self.sharded_grad_norm()? {
            Some(norm) => norm,
            None => global_grad_norm(&self.params),
        };
        phases::mark(device, "grad_norm");
        let grad_scale = clip_coefficient(grad_norm, self.cfg.clip);
        let lr = self.schedule.lr(self.cfg.lr, self.step);
        let skipped = self.apply_update(loss, grad_norm, lr, grad_scale)?;
        phases::mark(device, "update");
        self.step += 1;
        let step_s = start.elapsed().as_secs_f64();
        let m = StepMetrics {
            step: self.step,
            epoch: self.cursor.epoch,
            loss,
            lr,
            grad_norm,
            tokens,
            target_tokens: targets,
            tokens_per_s: tokens as f64 / step_s.max(1e-9),
            step_s,
            skipped,
            mem_bytes: memory_in_use(self.model.device()),
        };
        self.record(&m)?;
        Ok(m)
    }

    fn next_batches(&mut self) -> Vec<Batch> {
        let count = self.global_examples_per_step();
        let idx = self.order.take(&mut self.cursor, count);
        let examples: Vec<_> = idx.iter().map(|&i| &self.data.examples[i]).collect();
        let device = self.model.device();
        examples
            .chunks(self.cfg.batch_size)
            .map(|c| make_batch(c, self.pad_id, device))
            .collect()
    }

    /// The non-finite policy, then the update; returns whether the step was skipped.
    fn apply_update(
        &mut self,
        loss: f64,
        grad_norm: f64,
        lr: f64,
        grad_scale: f64,
    ) -> Result<bool> {
        let bad = if !loss.is_finite() {
            Some(("loss", loss))
        } else if !grad_norm.is_finite() {
            Some(("gradient norm", grad_norm))
        } else {
            None
        };
        match (bad, self.cfg.on_nonfinite) {
            (None, _) => {
                self.optim.step_scaled(lr, grad_scale);
                // ZeRO-1: every rank takes each tensor from its owner.
                self.sync_sharded_weights()?;
                Ok(false)
            }
            (Some((what, value)), NonFinitePolicy::Stop) => {
                self.zero_grads();
                Err(Error::NonFinite {
                    step: self.step + 1,
                    what,
                    value,
                })
            }
            (Some((what, value)), NonFinitePolicy::Skip) => {
                self.zero_grads();
                self.skipped += 1;
                // Numbered as the step lines number it (1-based, after the step).
                tracing::warn!(
                    "step {}: non-finite {what} ({value}); update skipped ({} so far)",
                    self.step + 1,
                    self.skipped
                );
                Ok(true)
            }
        }
    }

    fn record(&mut self, m: &StepMetrics) -> Result<()> {
        if self.log.is_none() && self.is_main_process() {
            if let Some(path) = &self.cfg.metrics {
                self.log = Some(MetricsLog::open(path, self.append_log)?);
            }
        }
        if let Some(log) = &mut self.log {
            log.write(m)?;
        }
        self.history.push(m.clone());
        Ok(())
    }

    /// Runs steps until the total is reached, with periodic checkpoints
    /// (`save_every`) and a final one (when a checkpoint directory is set).
    pub fn train(&mut self) -> Result<TrainReport> {
        self.train_with(&mut |_| {})
    }

    /// [`Trainer::train`], handing every step's metrics to `on_step` (the
    /// caller's progress display; the library itself only logs through `tracing`).
    pub fn train_with(&mut self, on_step: &mut dyn FnMut(&StepProgress)) -> Result<TrainReport> {
        let start = Instant::now();
        let first = self.step;
        // Only rank 0 reports progress (all ranks log through tracing).
        let main_process = self.is_main_process();
        let mut first_loss = f64::NAN;
        let mut final_loss = f64::NAN;
        let mut last_checkpoint = None;
        while self.step < self.total_steps {
            let m = self.step()?;
            if self.step == first + 1 {
                first_loss = m.loss;
            }
            final_loss = m.loss;
            tracing::debug!(
                "step {}/{}: loss {:.4}, lr {:.2e}, grad norm {:.3}",
                m.step,
                self.total_steps,
                m.loss,
                m.lr,
                m.grad_norm
            );
            if main_process {
                on_step(&StepProgress {
                    metrics: &m,
                    first_step: first,
                    total_steps: self.total_steps,
                });
            }
            if self
                .cfg
                .save_every
                .is_some_and(|k| self.step.is_multiple_of(k))
                && self.step < self.total_steps
            {
                last_checkpoint = self.save_checkpoint()?;
            }
        }
        if self.step > first || last_checkpoint.is_none() {
            last_checkpoint = self.save_checkpoint()?;
        }
        Ok(TrainReport {
            steps_run: self.step - first,
            step: self.step,
            first_loss,
            final_loss,
            skipped: self.skipped,
            wall_s: start.elapsed().as_secs_f64(),
            last_checkpoint,
        })
    }
}

/// AdamW over `named` with the run's hyper-parameters and decay rule.
pub(crate) fn build_optimizer(cfg: &TrainConfig, named: Vec<(String, Tensor)>) -> Result<AdamW> {
    let all = cfg.decay_norms_and_embeddings;
    AdamW::new(named, cfg.adamw, |n, p| all || default_decay(n, p))
}
