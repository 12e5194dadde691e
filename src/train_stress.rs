//! FR-11 for training: start -> save -> resume -> export, repeated for
//! several cycles, every phase in a fresh process (what a user restarting
//! runs does). Each cycle must give the same losses and the same exported
//! bytes as the first (no drift), and each process's resident memory must
//! come back to where it started once the trainer is dropped, and end each
//! cycle where it ended in the first (no growth from cycle to cycle), within
//! a stated tolerance.
//!
//! [`run_train_phase`] is the work of one process; [`run_train_stress`]
//! starts the processes through a caller-supplied command (the workspace test
//! re-runs its own binary) and [`TrainStressReport::problems`] is the verdict.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use nvfp4_kernels::ComputePath;
use qwen3_model::{LoadOptions, Qwen3Config, Qwen3Model};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};
use trainer::{DataStats, Dataset, Example, TrainConfig, Trainer};

use crate::memory::process_rss;

/// Prefix of the line a phase's process prints with its JSON record.
pub const TRAIN_STRESS_PREFIX: &str = "TRAIN-STRESS ";

/// File name of the export each cycle writes in its directory.
pub const EXPORT_NAME: &str = "export.dat";

const MIB: f64 = 1024.0 * 1024.0;

/// One process of a cycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TrainPhase {
    /// Fresh model, `steps` steps, checkpoint.
    Start,
    /// Resume from the checkpoint, `steps` more steps, export `.dat`.
    Resume,
}

/// What one phase's process measured.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PhaseRecord {
    /// Which phase.
    pub phase: TrainPhase,
    /// Resident set after libtorch's warm-up, before the trainer, bytes.
    pub rss_before: u64,
    /// Resident set after everything was dropped, bytes.
    pub rss_after: u64,
    /// Loss of every step of the phase.
    pub losses: Vec<f64>,
}

/// Size of the run: the model and data are tiny and fixed by `seed`.
#[derive(Clone, Copy, Debug)]
pub struct TrainStressSetup {
    /// Seed of the synthetic model, data and data order.
    pub seed: u64,
    /// Optimizer steps per phase.
    pub steps: u64,
}

fn tiny_config() -> Qwen3Config {
    Qwen3Config {
        vocab_size: 128,
        hidden_size: 32,
        intermediate_size: 64,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        head_dim: 16,
        max_position_embeddings: 64,
        tie_word_embeddings: true,
        eos_token_ids: vec![],
        ..Qwen3Config::qwen3_4b()
    }
}

/// 12 examples of 8..=15 ids below `vocab`, the last 3 of each the target,
/// drawn from an LCG so every process builds the same set.
fn synthetic_dataset(vocab: u32, seed: u64) -> Dataset {
    let mut state = seed | 1;
    let mut next = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) as u32
    };
    let examples: Vec<Example> = (0..12)
        .map(|i| {
            let len = 8 + next() as usize % 8;
            let tokens: Vec<u32> = (0..len).map(|_| next() % vocab).collect();
            Example {
                is_target: (0..len).map(|k| k + 3 >= len).collect(),
                prompt_ids: tokens[..len - 3].to_vec(),
                prompt: String::new(),
                response: String::new(),
                tokens,
                line: i + 1,
            }
        })
        .collect();
    Dataset {
        path: PathBuf::from("synthetic"),
        stats: DataStats {
            examples: examples.len(),
            target_tokens: 3 * examples.len(),
            ..Default::default()
        },
        examples,
    }
}

fn trainer(dir: &Path, setup: &TrainStressSetup) -> Result<Trainer> {
    let cfg = tiny_config();
    let load = LoadOptions {
        device: Device::Cpu,
        dtype: Kind::Float,
        compute_path: ComputePath::Auto,
        strict: true,
    };
    let model = Qwen3Model::random(&cfg, &load, setup.seed)?;
    let tc = TrainConfig {
        steps: Some(2 * setup.steps),
        batch_size: 4,
        lr: 3e-3,
        warmup: 1,
        seed: setup.seed,
        checkpoint_dir: Some(dir.join("checkpoints")),
        progress: false,
        ..Default::default()
    };
    let data = synthetic_dataset(cfg.vocab_size as u32, setup.seed);
    Ok(Trainer::new(model, tc, data, 0)?)
}

/// Runs `phase` of the cycle in `dir` in this process and measures it.
pub fn run_train_phase(
    phase: TrainPhase,
    dir: &Path,
    setup: &TrainStressSetup,
) -> Result<PhaseRecord> {
    // libtorch's thread pool and allocator caches appear on first use: warm
    // them up so the baseline holds them.
    let _ = Tensor::randn([64, 64], (Kind::Float, Device::Cpu))
        .matmul(&Tensor::eye(64, (Kind::Float, Device::Cpu)));
    let rss_before = process_rss()?;
    let losses = {
        let mut t = trainer(dir, setup)?;
        if phase == TrainPhase::Resume {
            let latest = t
                .latest_checkpoint()?
                .with_context(|| format!("no checkpoint in {} to resume", dir.display()))?;
            t.resume_from(&latest)?;
        }
        let losses = (0..setup.steps)
            .map(|_| Ok(t.step()?.loss))
            .collect::<Result<Vec<f64>>>()?;
        match phase {
            TrainPhase::Start => {
                t.save_checkpoint()?;
            }
            TrainPhase::Resume => {
                qwen3_model::export_dat(&t.into_model(), &dir.join(EXPORT_NAME), None)?;
            }
        }
        losses
    };
    let rss_after = process_rss()?;
    Ok(PhaseRecord {
        phase,
        rss_before,
        rss_after,
        losses,
    })
}

/// Every phase of every cycle, with the exported bytes of each cycle.
#[derive(Clone, Debug)]
pub struct TrainStressReport {
    /// `cycles[c]` = the records of cycle `c`'s processes, in phase order.
    pub cycles: Vec<Vec<PhaseRecord>>,
    /// The `.dat` each cycle exported.
    pub exports: Vec<Vec<u8>>,
    /// Memory a process may keep after dropping the trainer (libtorch's
    /// autograd engine and allocator arenas stay after the first run), bytes.
    pub kept_tolerance: u64,
    /// How far a process may end above cycle 0's, bytes.
    pub growth_tolerance: u64,
}

/// Runs `cycles` cycles, each in its own directory under `root`; `command`
/// gives the process that runs one phase in one directory (it must print
/// the record line [`phase_line`] makes).
pub fn run_train_stress(
    cycles: usize,
    root: &Path,
    kept_tolerance: u64,
    growth_tolerance: u64,
    command: &dyn Fn(TrainPhase, &Path) -> Command,
) -> Result<TrainStressReport> {
    let mut report = TrainStressReport {
        cycles: Vec::new(),
        exports: Vec::new(),
        kept_tolerance,
        growth_tolerance,
    };
    for cycle in 0..cycles {
        let dir = root.join(format!("cycle-{cycle}"));
        std::fs::create_dir_all(&dir).with_context(|| format!("{}", dir.display()))?;
        let mut records = Vec::new();
        for phase in [TrainPhase::Start, TrainPhase::Resume] {
            let out = command(phase, &dir)
                .output()
                .with_context(|| format!("cycle {cycle}: starting the {phase:?} process"))?;
            let stdout = String::from_utf8_lossy(&out.stdout);
            let line = stdout.lines().find_map(|l| {
                l.find(TRAIN_STRESS_PREFIX)
                    .map(|i| &l[i + TRAIN_STRESS_PREFIX.len()..])
            });
            match (out.status.success(), line) {
                (true, Some(line)) => records.push(
                    serde_json::from_str(line)
                        .with_context(|| format!("cycle {cycle}, {phase:?}: bad record {line}"))?,
                ),
                _ => bail!(
                    "cycle {cycle}, {phase:?}: process failed ({}):\n{stdout}\n{}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                ),
            }
        }
        let export = dir.join(EXPORT_NAME);
        report
            .exports
            .push(std::fs::read(&export).with_context(|| format!("{}", export.display()))?);
        report.cycles.push(records);
    }
    Ok(report)
}

/// The line a phase's process prints for [`run_train_stress`].
pub fn phase_line(record: &PhaseRecord) -> String {
    format!(
        "{TRAIN_STRESS_PREFIX}{}",
        serde_json::to_string(record).expect("a record serializes")
    )
}

impl TrainStressReport {
    /// Every reason the run fails: memory not back to its baseline inside a
    /// process, memory higher than in cycle 0, losses or exports differing
    /// from cycle 0's.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let (tol, grow_tol) = (self.kept_tolerance, self.growth_tolerance);
        let Some(first) = self.cycles.first() else {
            return vec!["no cycle ran".into()];
        };
        for (c, records) in self.cycles.iter().enumerate() {
            for (r, base) in records.iter().zip(first) {
                let kept = r.rss_after.saturating_sub(r.rss_before);
                if kept > tol {
                    problems.push(format!(
                        "cycle {c}, {:?}: {:.1} MiB still resident after the trainer was dropped \
                         (tolerance {:.1} MiB)",
                        r.phase,
                        kept as f64 / MIB,
                        tol as f64 / MIB
                    ));
                }
                let grown = r.rss_after.saturating_sub(base.rss_after);
                if grown > grow_tol {
                    problems.push(format!(
                        "cycle {c}, {:?}: ends {:.1} MiB above cycle 0 (tolerance {:.1} MiB)",
                        r.phase,
                        grown as f64 / MIB,
                        grow_tol as f64 / MIB
                    ));
                }
                let bits = |l: &[f64]| l.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                if bits(&r.losses) != bits(&base.losses) {
                    problems.push(format!(
                        "cycle {c}, {:?}: losses {:?} differ from cycle 0's {:?}",
                        r.phase, r.losses, base.losses
                    ));
                }
            }
            if self.exports[c] != self.exports[0] {
                problems.push(format!("cycle {c}: the export differs from cycle 0's"));
            }
        }
        problems
    }

    /// One row per process: cycle, phase, RSS before/after, last loss.
    pub fn table(&self) -> String {
        let mut out = String::from("cycle  phase    rss before  rss after   last loss\n");
        for (c, records) in self.cycles.iter().enumerate() {
            for r in records {
                out.push_str(&format!(
                    "{c:>5}  {:<7} {:>8.1} MiB {:>8.1} MiB  {:.6}\n",
                    format!("{:?}", r.phase),
                    r.rss_before as f64 / MIB,
                    r.rss_after as f64 / MIB,
                    r.losses.last().copied().unwrap_or(f64::NAN)
                ));
            }
        }
        out
    }
}
