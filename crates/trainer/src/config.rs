//! [`TrainConfig`]: every training knob of `examples/train.rs`, with
//! validation that names the flag at fault.

use std::path::PathBuf;
use std::str::FromStr;

use tch::Kind;

use crate::data::BadLinePolicy;
use crate::error::{Error, Result};
use crate::optim::AdamWConfig;
use crate::schedule::ScheduleKind;

/// Precision of the master weights the optimizer updates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MasterDtype {
    /// f32: updates far below one FP4 step still accumulate.
    #[default]
    F32,
    /// bf16: half the memory; an update below half a bf16 ulp of the weight is lost.
    Bf16,
}

impl MasterDtype {
    /// The libtorch kind.
    pub fn kind(self) -> Kind {
        match self {
            MasterDtype::F32 => Kind::Float,
            MasterDtype::Bf16 => Kind::BFloat16,
        }
    }
}

/// The spelling [`FromStr`] accepts (for `--help` defaults and logs).
impl std::fmt::Display for MasterDtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::F32 => "f32",
            Self::Bf16 => "bf16",
        })
    }
}

impl FromStr for MasterDtype {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "f32" | "fp32" => Ok(Self::F32),
            "bf16" => Ok(Self::Bf16),
            _ => Err(Error::ParseOption {
                name: "master-dtype",
                expected: "f32, bf16",
                got: s.into(),
            }),
        }
    }
}

/// Activation checkpointing: recompute blocks in the backward pass instead
/// of keeping their activations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Checkpointing {
    /// Keep every block's activations (fastest, most memory).
    Off,
    /// Recompute every block (one block's activations at a time).
    On,
    /// Recompute every k-th block (blocks 0, k, 2k, ...), keep the others'
    /// activations: between `Off` and `On` in memory and in time.
    Every(usize),
    /// The fastest of off, every 4th, every 2nd block and on whose memory
    /// estimate fits the memory free on the device when training starts;
    /// the choice is logged.
    #[default]
    Auto,
}

impl Checkpointing {
    /// The resolved policy as "recompute every k-th block" (0: none).
    pub fn recompute_every(self) -> Option<usize> {
        match self {
            Self::Off => Some(0),
            Self::On => Some(1),
            Self::Every(k) => Some(k),
            Self::Auto => None,
        }
    }
}

impl std::fmt::Display for Checkpointing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Off => f.write_str("off"),
            Self::On => f.write_str("on"),
            Self::Every(k) => write!(f, "every-{k}"),
            Self::Auto => f.write_str("auto"),
        }
    }
}

impl FromStr for Checkpointing {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = || Error::ParseOption {
            name: "activation-checkpointing",
            expected: "on, off, auto, every-K (K >= 1: every K-th block)",
            got: s.into(),
        };
        match s {
            "off" | "false" => Ok(Self::Off),
            "on" | "true" => Ok(Self::On),
            "auto" => Ok(Self::Auto),
            _ => match s.strip_prefix("every-").map(str::parse::<usize>) {
                Some(Ok(1)) => Ok(Self::On),
                Some(Ok(k)) if k > 1 => Ok(Self::Every(k)),
                _ => Err(bad()),
            },
        }
    }
}

/// What a step with a NaN/infinite loss or gradient norm does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NonFinitePolicy {
    /// Drop the step's update (weights and optimizer state untouched), count
    /// it, log it, and go on with the next batch.
    Skip,
    /// Stop with [`Error::NonFinite`].
    #[default]
    Stop,
}

/// The spelling [`FromStr`] accepts (for `--help` defaults and logs).
impl std::fmt::Display for NonFinitePolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Skip => "skip",
            Self::Stop => "stop",
        })
    }
}

impl FromStr for NonFinitePolicy {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "skip" => Ok(Self::Skip),
            "stop" => Ok(Self::Stop),
            _ => Err(Error::ParseOption {
                name: "on-nonfinite",
                expected: "skip, stop",
                got: s.into(),
            }),
        }
    }
}

/// Everything the training loop needs besides the model and the data.
///
/// Length of the run: `steps` if given, else `epochs` worth of steps
/// (`ceil(epochs * examples / (batch_size * grad_accum))`), else one epoch;
/// with both, whichever ends first.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TrainConfig {
    /// Passes over the data (see the type doc for how it combines with `steps`).
    pub epochs: Option<f64>,
    /// Optimizer steps.
    pub steps: Option<u64>,
    /// Examples per micro-batch.
    pub batch_size: usize,
    /// Longest example in tokens (longer ones are truncated, see `data`).
    pub seq_len: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Linear warmup steps.
    pub warmup: u64,
    /// Constant or cosine after warmup.
    pub schedule: ScheduleKind,
    /// Cosine floor as a fraction of `lr`.
    pub min_lr_ratio: f64,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    /// Clip the global gradient norm to this value (`None`: no clipping).
    pub clip: Option<f64>,
    /// AdamW betas, eps, weight decay and moment precision.
    pub adamw: AdamWConfig,
    /// Also decay norms and embeddings (off by default).
    pub decay_norms_and_embeddings: bool,
    /// Master-weight precision.
    pub master_dtype: MasterDtype,
    /// Seed of the data order (the only randomness of training: no dropout).
    pub seed: u64,
    /// Shuffle the examples each epoch.
    pub shuffle: bool,
    /// Train only the last N blocks (plus final norm and head).
    pub train_last_layers: Option<usize>,
    /// Recompute each block in the backward pass instead of keeping its activations.
    pub activation_checkpointing: Checkpointing,
    /// ZeRO-1 under data parallelism: each rank keeps the AdamW moments of
    /// its share of the tensors only (see `zero.rs`). Without a group (one
    /// process) it is plain training.
    #[serde(default)]
    pub zero1: bool,
    /// NaN/inf policy.
    pub on_nonfinite: NonFinitePolicy,
    /// Bad data line policy.
    pub bad_lines: BadLinePolicy,
    /// Where checkpoints go (`None`: no checkpoints).
    pub checkpoint_dir: Option<PathBuf>,
    /// Save every N steps (and at the end) when `checkpoint_dir` is set.
    pub save_every: Option<u64>,
    /// Checkpoints kept.
    pub keep_last: usize,
    /// JSONL metrics file (`None`: no log).
    pub metrics: Option<PathBuf>,
    /// Whether the caller shows a progress bar (the library draws nothing:
    /// it hands each step to the observer of [`crate::Trainer::train_with`]).
    pub progress: bool,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            epochs: None,
            steps: None,
            batch_size: 8,
            seq_len: 512,
            lr: 1e-5,
            warmup: 0,
            schedule: ScheduleKind::Cosine,
            min_lr_ratio: 0.1,
            grad_accum: 1,
            clip: Some(1.0),
            adamw: AdamWConfig {
                weight_decay: 0.0,
                ..Default::default()
            },
            decay_norms_and_embeddings: false,
            master_dtype: MasterDtype::F32,
            seed: 0,
            shuffle: true,
            train_last_layers: None,
            activation_checkpointing: Checkpointing::Auto,
            zero1: false,
            on_nonfinite: NonFinitePolicy::Stop,
            bad_lines: BadLinePolicy::Fail,
            checkpoint_dir: None,
            save_every: None,
            keep_last: 3,
            metrics: None,
            progress: true,
        }
    }
}

impl TrainConfig {
    /// Checks every value; the error names the flag.
    pub fn validate(&self) -> Result<()> {
        let positive = |name: &'static str, v: usize| {
            if v == 0 {
                Err(Error::config(name, "at least 1", v))
            } else {
                Ok(())
            }
        };
        positive("batch-size", self.batch_size)?;
        positive("grad-accum", self.grad_accum)?;
        positive("keep-last", self.keep_last)?;
        if self.seq_len < 2 {
            return Err(Error::config("seq-len", "at least 2", self.seq_len));
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(Error::config("lr", "a positive number", self.lr));
        }
        if let Some(e) = self.epochs {
            if !(e.is_finite() && e > 0.0) {
                return Err(Error::config("epochs", "a positive number", e));
            }
        }
        if self.steps == Some(0) {
            return Err(Error::config("steps", "at least 1", 0));
        }
        if let Some(c) = self.clip {
            if !(c.is_finite() && c > 0.0) {
                return Err(Error::config("clip", "a positive number", c));
            }
        }
        if self.save_every == Some(0) {
            return Err(Error::config("save-every", "at least 1", 0));
        }
        if self.train_last_layers == Some(0) {
            return Err(Error::config("train-last-layers", "at least 1", 0));
        }
        if !(0.0..=1.0).contains(&self.min_lr_ratio) {
            return Err(Error::config(
                "min-lr-ratio",
                "a number in [0, 1]",
                self.min_lr_ratio,
            ));
        }
        self.adamw.validate()
    }

    /// Examples per optimizer step.
    pub fn examples_per_step(&self) -> usize {
        self.batch_size * self.grad_accum
    }

    /// Total optimizer steps for `examples` training examples (see the type doc).
    pub fn total_steps(&self, examples: usize) -> u64 {
        let per_step = self.examples_per_step() as f64;
        let from_epochs = (self.epochs.unwrap_or(1.0) * examples as f64 / per_step)
            .ceil()
            .max(1.0) as u64;
        match (self.steps, self.epochs) {
            (Some(s), Some(_)) => s.min(from_epochs),
            (Some(s), None) => s,
            (None, _) => from_epochs,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_is_valid() {
        TrainConfig::default().validate().unwrap();
    }

    #[test]
    fn each_bad_value_names_its_flag() {
        let cases: Vec<(TrainConfig, &str)> = vec![
            (
                TrainConfig {
                    batch_size: 0,
                    ..Default::default()
                },
                "batch-size",
            ),
            (
                TrainConfig {
                    grad_accum: 0,
                    ..Default::default()
                },
                "grad-accum",
            ),
            (
                TrainConfig {
                    seq_len: 1,
                    ..Default::default()
                },
                "seq-len",
            ),
            (
                TrainConfig {
                    lr: -1.0,
                    ..Default::default()
                },
                "lr",
            ),
            (
                TrainConfig {
                    lr: f64::NAN,
                    ..Default::default()
                },
                "lr",
            ),
            (
                TrainConfig {
                    epochs: Some(0.0),
                    ..Default::default()
                },
                "epochs",
            ),
            (
                TrainConfig {
                    steps: Some(0),
                    ..Default::default()
                },
                "steps",
            ),
            (
                TrainConfig {
                    clip: Some(0.0),
                    ..Default::default()
                },
                "clip",
            ),
            (
                TrainConfig {
                    save_every: Some(0),
                    ..Default::default()
                },
                "save-every",
            ),
            (
                TrainConfig {
                    train_last_layers: Some(0),
                    ..Default::default()
                },
                "train-last-layers",
            ),
            (
                TrainConfig {
                    keep_last: 0,
                    ..Default::default()
                },
                "keep-last",
            ),
        ];
        for (cfg, flag) in cases {
            let e = cfg.validate().unwrap_err().to_string();
            assert!(e.contains(flag), "{flag}: {e}");
        }
    }

    #[test]
    fn run_length_comes_from_steps_or_epochs() {
        let c = TrainConfig {
            batch_size: 4,
            grad_accum: 2,
            ..Default::default()
        };
        assert_eq!(
            c.total_steps(20),
            3,
            "one epoch of 20 examples at 8 per step"
        );
        let c = TrainConfig {
            epochs: Some(2.0),
            ..c
        };
        assert_eq!(c.total_steps(20), 5);
        let c = TrainConfig {
            steps: Some(4),
            ..c
        };
        assert_eq!(c.total_steps(20), 4, "whichever ends first");
        let c = TrainConfig { epochs: None, ..c };
        assert_eq!(c.total_steps(20), 4);
    }

    #[test]
    fn options_parse_and_reject_unknown_spellings() {
        assert_eq!("bf16".parse::<MasterDtype>().unwrap(), MasterDtype::Bf16);
        assert_eq!(
            "skip".parse::<NonFinitePolicy>().unwrap(),
            NonFinitePolicy::Skip
        );
        let e = "f16".parse::<MasterDtype>().unwrap_err().to_string();
        assert!(e.contains("master-dtype") && e.contains("f32, bf16"), "{e}");
        let e = "ignore".parse::<NonFinitePolicy>().unwrap_err().to_string();
        assert!(e.contains("on-nonfinite"), "{e}");
    }
}
