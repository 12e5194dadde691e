//! ZeRO-1 (sharded AdamW state) on real processes (Gloo on the CPU) against
//! the single-process trainer at the same global batch, and checkpoints that
//! resume at another world size.
//!
//! The test binary re-executes itself once per rank (the ignored `rank` test,
//! selected by `ZERO_TEST_DIR`) with torchrun's variables set; what the rank
//! does comes in `ZERO_TEST_SPEC`. Rank 0 saves its losses and final weights.
//!
//! Tolerance: the ranks sum the same per-micro-batch gradients as the single
//! process in another order (per rank, then across ranks in the backend's
//! reduce), and ZeRO-1 sums the gradient norm from per-rank partial sums, so
//! gradients differ by f32 rounding only. AdamW then divides each element's
//! moment by `sqrt(v) + eps`: for an element whose gradient is a rounding-level
//! residue, a difference of rounding size becomes up to `lr * residue / eps`.
//! With eps = 1e-8 (PyTorch's) that reached 1.6e-5 on the weights after 4
//! steps (6 micro-batches, lr 3e-3) for about one seed in 40, and 7.3e-5 with
//! eps = 1e-6 for one seed in about 70, for plain data parallelism exactly as
//! for ZeRO-1. These tests use eps = 1e-4, which keeps that amplification
//! below rounding, and one intra-op thread everywhere (libtorch's CPU
//! reductions split by thread count). Then losses agree within 2e-6 relative
//! and weights within 2e-6 absolute (measured over about 30 runs of each test:
//! losses 8e-8, weights 1.2e-7, one f32 ulp of the weights' scale).
//! ZeRO-1 and plain data parallelism at the same world size agree within
//! 1e-7 whatever eps (the reduction order is the only difference).
//! A group of one is bitwise the plain trainer.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use distributed::{Backend, GroupOptions, LaunchEnv, ProcessGroup};
use tch::Tensor;
use trainer::{TrainConfig, Trainer};

use common::{weights, DP_STEPS as STEPS};
const DIR_VAR: &str = "ZERO_TEST_DIR";
const SPEC_VAR: &str = "ZERO_TEST_SPEC";
const LOSS_TOL: f64 = 2e-6;
const WEIGHT_TOL: f64 = 2e-6;

fn config(grad_accum: usize, zero1: bool, checkpoint_dir: Option<PathBuf>) -> TrainConfig {
    let mut cfg = TrainConfig {
        zero1,
        checkpoint_dir,
        ..common::dp_config(grad_accum)
    };
    // Decay too, so that the decay flags of the shards matter.
    cfg.adamw.weight_decay = 0.1;
    cfg
}

fn trainer(seed: u64, grad_accum: usize, zero1: bool, ckpt: Option<PathBuf>) -> Trainer {
    trainer_of(seed, grad_accum, zero1, ckpt, tch::Kind::Float)
}

/// [`trainer`] computing in `dtype` (bf16: ZeRO-1 then shards the f32 masters).
fn trainer_of(
    seed: u64,
    grad_accum: usize,
    zero1: bool,
    ckpt: Option<PathBuf>,
    dtype: tch::Kind,
) -> Trainer {
    // One intra-op thread, as the ranks run (OMP_NUM_THREADS=1): libtorch's
    // CPU reductions split by thread count, and the tests of this binary
    // run side by side, so the count would otherwise vary from run to run.
    tch::set_num_threads(1);
    common::dp_trainer_of(
        seed,
        config(grad_accum, zero1, ckpt),
        tch::Device::Cpu,
        dtype,
    )
}

/// What one launch of ranks does.
#[derive(Clone, Debug, Default)]
struct Spec {
    zero1: bool,
    /// Per-rank micro-batches per step.
    grad_accum: usize,
    /// Steps to run (from the start or the resumed step).
    run: u64,
    /// Checkpoint to resume from.
    resume: Option<PathBuf>,
    /// The resume must fail: each rank writes its error to `error-<rank>.txt`.
    resume_fails: bool,
    /// After the run and its checkpoint, one more step whose collective save
    /// rank 1 does not survive (SIGKILL once its shard is written).
    kill_in_save: bool,
    /// Compute in bf16 (with ZeRO-1: the f32 masters sharded).
    bf16: bool,
}

impl Spec {
    fn encode(&self) -> String {
        format!(
            "{}|{}|{}|{}|{}|{}|{}",
            u8::from(self.zero1),
            self.grad_accum,
            self.run,
            u8::from(self.resume_fails),
            u8::from(self.kill_in_save),
            u8::from(self.bf16),
            self.resume
                .as_ref()
                .map_or(String::new(), |p| p.display().to_string())
        )
    }

    fn decode(s: &str) -> Self {
        let parts: Vec<&str> = s.splitn(7, '|').collect();
        Spec {
            zero1: parts[0] == "1",
            grad_accum: parts[1].parse().unwrap(),
            run: parts[2].parse().unwrap(),
            resume_fails: parts[3] == "1",
            kill_in_save: parts[4] == "1",
            bf16: parts[5] == "1",
            resume: (!parts[6].is_empty()).then(|| PathBuf::from(parts[6])),
        }
    }
}

/// Runs `world` ranks of `spec` in `dir`; returns rank 0's losses and weights
/// (and the ranks write a checkpoint under `dir/ckpt` at the end).
fn run_ranks(
    world: usize,
    seed: u64,
    spec: &Spec,
    dir: &Path,
) -> (Vec<f64>, Vec<(String, Tensor)>) {
    common::join_ranks(spawn_ranks(world, seed, spec, dir), Instant::now());
    common::rank_results(dir)
}

fn spawn_ranks(world: usize, seed: u64, spec: &Spec, dir: &Path) -> Vec<Child> {
    let port = common::free_port();
    let exe = std::env::current_exe().unwrap();
    (0..world)
        .map(|rank| {
            Command::new(&exe)
                .args([
                    "--exact",
                    "rank",
                    "--include-ignored",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(DIR_VAR, dir)
                .env(SPEC_VAR, spec.encode())
                .env("ZERO_TEST_SEED", seed.to_string())
                .envs(distributed::local_launch_vars(rank, world, port))
                .env("OMP_NUM_THREADS", "1")
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect()
}

/// The uninterrupted single process with `micro_batches` micro-batches per step.
fn single(seed: u64, micro_batches: usize) -> (Vec<f64>, Vec<(String, Tensor)>) {
    let mut t = trainer(seed, micro_batches, false, None);
    let losses = (0..STEPS).map(|_| t.step().unwrap().loss).collect();
    (losses, weights(&t))
}

fn assert_close(
    what: &str,
    (losses, got): (&[f64], &[(String, Tensor)]),
    (want_losses, want): (&[f64], &[(String, Tensor)]),
) {
    assert_eq!(losses.len(), want_losses.len(), "{what}: step count");
    let mut worst_loss = 0f64;
    for (step, (a, b)) in losses.iter().zip(want_losses).enumerate() {
        worst_loss = worst_loss.max((a - b).abs() / b.abs());
        assert!(
            (a - b).abs() <= LOSS_TOL * b.abs(),
            "{what}: step {step}: loss {a} vs {b} (one process)"
        );
    }
    assert_eq!(got.len(), want.len());
    let mut worst = 0f64;
    for ((name, a), (want_name, b)) in got.iter().zip(want) {
        assert_eq!(name, want_name);
        let diff = (a - b).abs().max().double_value(&[]);
        worst = worst.max(diff);
        assert!(diff <= WEIGHT_TOL, "{what}: {name}: max |diff| {diff}");
    }
    println!(
        "{what}: losses within {worst_loss:e} (relative), weights within {worst:e} of one process"
    );
}

#[test]
fn zero1_two_processes_match_one_process() {
    let seed = test_support::seed();
    let dir = tempfile::tempdir().unwrap();
    let spec = Spec {
        zero1: true,
        grad_accum: 1,
        run: STEPS,
        resume: None,
        ..Default::default()
    };
    let (losses, w) = run_ranks(2, seed, &spec, dir.path());
    let (want_losses, want) = single(seed, 2);
    assert_close("zero1 world 2", (&losses, &w), (&want_losses, &want));
}

/// Two ZeRO-1 ranks train half the steps and checkpoint; three ZeRO-1 ranks
/// resume (re-sharding the moments on load) and finish. Same global batch of
/// 6 micro-batches throughout, so the result is the single process's.
#[test]
fn zero1_checkpoint_at_two_resumes_at_three() {
    let seed = test_support::seed();
    let first = tempfile::tempdir().unwrap();
    let spec = Spec {
        zero1: true,
        grad_accum: 3,
        run: STEPS / 2,
        resume: None,
        ..Default::default()
    };
    let (mut losses, _) = run_ranks(2, seed, &spec, first.path());
    let ckpt = latest(&first.path().join("ckpt"));
    // Each rank wrote its own files; the tensors are those of an unsharded run.
    let meta = checkpoint::CheckpointManager::verify(&ckpt).unwrap();
    for rank in 0..2 {
        let prefix = format!("rank-{rank:05}-");
        assert!(
            meta.files.iter().any(|f| f.name.starts_with(&prefix)),
            "{prefix}"
        );
        assert!(meta
            .tensors
            .iter()
            .any(|t| t.file.starts_with(&prefix) && t.name.starts_with("optim.")));
    }
    let mut plain = trainer(seed, 6, false, Some(first.path().join("plain")));
    plain.step().unwrap();
    let plain_ckpt = plain.save_checkpoint().unwrap().unwrap();
    assert_eq!(tensor_names(&ckpt), tensor_names(&plain_ckpt));

    let second = tempfile::tempdir().unwrap();
    let spec = Spec {
        zero1: true,
        grad_accum: 2,
        run: STEPS / 2,
        resume: Some(ckpt),
        ..Default::default()
    };
    let (rest, w) = run_ranks(3, seed, &spec, second.path());
    losses.extend(rest);
    let (want_losses, want) = single(seed, 6);
    assert_close(
        "zero1 world 2, resumed at world 3",
        (&losses, &w),
        (&want_losses, &want),
    );
}

/// The ZeRO-1 checkpoint of two ranks (`STEPS / 2` steps of 3 micro-batches
/// each), in `dir/ckpt`.
fn zero1_checkpoint_of_two(seed: u64, dir: &Path) -> (Vec<f64>, PathBuf) {
    let spec = Spec {
        zero1: true,
        grad_accum: 3,
        run: STEPS / 2,
        ..Default::default()
    };
    let (losses, _) = run_ranks(2, seed, &spec, dir);
    (losses, latest(&dir.join("ckpt")))
}

/// Runs `t` to its last step; returns the losses.
fn finish(t: &mut Trainer) -> Vec<f64> {
    let mut losses = Vec::new();
    while t.step_count() < t.total_steps() {
        losses.push(t.step().unwrap().loss);
    }
    losses
}

/// Two ZeRO-1 ranks checkpoint per-rank shards; world size 1 resumes: one
/// process without a group (reads every shard), and a ZeRO-1 group of one
/// (owns every tensor: reads every shard by name). Both match the
/// uninterrupted run.
#[test]
fn zero1_checkpoint_at_two_resumes_at_one() {
    let seed = test_support::seed();
    let first = tempfile::tempdir().unwrap();
    let (losses, ckpt) = zero1_checkpoint_of_two(seed, first.path());
    let (want_losses, want) = single(seed, 6);

    let mut alone = trainer(seed, 6, false, None);
    alone.resume_from(&ckpt).unwrap();
    let mut all = losses.clone();
    all.extend(finish(&mut alone));
    assert_close(
        "zero1 world 2, resumed in one process",
        (&all, &weights(&alone)),
        (&want_losses, &want),
    );

    let mut zero = trainer(seed, 6, true, None);
    zero.set_data_parallel(group_of_one()).unwrap();
    zero.resume_from(&ckpt).unwrap();
    let mut all = losses;
    all.extend(finish(&mut zero));
    assert_close(
        "zero1 world 2, resumed by a ZeRO-1 group of one",
        (&all, &weights(&zero)),
        (&want_losses, &want),
    );
}

/// A copy of checkpoint `ckpt` under `dir` with `damage` done to the first
/// data file rank 1 wrote; returns the copy and that file's name.
fn damaged_copy(ckpt: &Path, dir: &Path, damage: impl Fn(&Path)) -> (PathBuf, String) {
    let copy = dir.join(ckpt.file_name().unwrap());
    std::fs::create_dir_all(&copy).unwrap();
    for entry in std::fs::read_dir(ckpt).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), copy.join(entry.file_name())).unwrap();
    }
    let name = "rank-00001-tensors-00000.safetensors".to_string();
    damage(&copy.join(&name));
    (copy, name)
}

/// A shard file missing, or with one byte changed, stops a resume with an
/// error naming that file: in one process, and at world size 3, where every
/// rank fails (none waits in a collective for a rank that gave up): the
/// ranks that read the file name it, the others report another rank's failure.
#[test]
fn zero1_missing_or_corrupt_shard_is_named() {
    let seed = test_support::seed();
    let first = tempfile::tempdir().unwrap();
    let (_, ckpt) = zero1_checkpoint_of_two(seed, first.path());
    let missing = tempfile::tempdir().unwrap();
    let (gone, name) = damaged_copy(&ckpt, missing.path(), |f| std::fs::remove_file(f).unwrap());
    let corrupt = tempfile::tempdir().unwrap();
    let (bad, _) = damaged_copy(&ckpt, corrupt.path(), |f| {
        let mut bytes = std::fs::read(f).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x40;
        std::fs::write(f, bytes).unwrap();
    });
    for (path, what) in [(&gone, "missing"), (&bad, "sha256")] {
        let mut t = trainer(seed, 6, false, None);
        let err = t.resume_from(path).unwrap_err().to_string();
        assert!(err.contains(&name) && err.contains(what), "{err}");
    }

    for (path, what) in [(&gone, "missing"), (&bad, "sha256")] {
        let dir = tempfile::tempdir().unwrap();
        let spec = Spec {
            zero1: true,
            grad_accum: 2,
            run: STEPS / 2,
            resume: Some(path.clone()),
            resume_fails: true,
            ..Default::default()
        };
        common::join_ranks(spawn_ranks(3, seed, &spec, dir.path()), Instant::now());
        let errors: Vec<String> = (0..3)
            .map(|r| std::fs::read_to_string(dir.path().join(format!("error-{r}.txt"))).unwrap())
            .collect();
        let naming = errors
            .iter()
            .filter(|e| e.contains(&name) && e.contains(what));
        assert!(naming.count() >= 1, "{errors:#?}");
        for e in &errors {
            assert!(
                e.contains(&name) || e.contains("another rank failed"),
                "{e}"
            );
        }
    }
}

/// Two ZeRO-1 ranks checkpoint at step 2, take step 3 and save again; rank
/// 1 is killed after writing its shard of that save, before rank 0 may
/// publish. Rank 0's save fails, step 3 never appears as a checkpoint (its
/// temp directory is not one), and resuming from the latest (step 2) in one
/// process matches the uninterrupted run.
#[test]
fn zero1_rank_killed_during_save_publishes_nothing() {
    let seed = test_support::seed();
    let dir = tempfile::tempdir().unwrap();
    let spec = Spec {
        zero1: true,
        grad_accum: 3,
        run: STEPS / 2,
        kill_in_save: true,
        ..Default::default()
    };
    let mut children = spawn_ranks(2, seed, &spec, dir.path());
    let killed = children.pop().unwrap().wait_with_output().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        killed.status.signal(),
        Some(libc::SIGKILL),
        "rank 1: {killed:?}"
    );
    common::join_ranks(children, Instant::now());
    let err = std::fs::read_to_string(dir.path().join("save-error.txt")).unwrap();
    assert!(
        err.contains("write the ranks' shards: the group of ranks failed"),
        "{err}"
    );

    let ckpt_dir = dir.path().join("ckpt");
    let manager = checkpoint::CheckpointManager::new(&ckpt_dir, 3).unwrap();
    let listed: Vec<u64> = manager
        .list()
        .unwrap()
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    assert_eq!(
        listed,
        [STEPS / 2],
        "only the complete checkpoint is listed"
    );
    assert!(!ckpt_dir.join(format!("step-{:06}", STEPS / 2 + 1)).exists());

    let (mut losses, _) = common::rank_results(dir.path());
    let mut t = trainer(seed, 6, false, None);
    t.resume_from(&manager.latest().unwrap().unwrap()).unwrap();
    losses.extend(finish(&mut t));
    let (want_losses, want) = single(seed, 6);
    assert_close(
        "zero1 world 2 (rank killed in the next save), resumed in one process",
        (&losses, &weights(&t)),
        (&want_losses, &want),
    );
}

/// Plain data parallelism at three ranks checkpoints; one process resumes
/// with the same global batch (6 micro-batches) and matches the
/// uninterrupted run.
#[test]
fn data_parallel_checkpoint_at_three_resumes_in_one_process() {
    let seed = test_support::seed();
    let first = tempfile::tempdir().unwrap();
    let spec = Spec {
        zero1: false,
        grad_accum: 2,
        run: STEPS / 2,
        resume: None,
        ..Default::default()
    };
    let (mut losses, _) = run_ranks(3, seed, &spec, first.path());
    let ckpt = latest(&first.path().join("ckpt"));
    let mut t = trainer(seed, 6, false, None);
    t.resume_from(&ckpt).unwrap();
    while t.step_count() < t.total_steps() {
        losses.push(t.step().unwrap().loss);
    }
    let (want_losses, want) = single(seed, 6);
    assert_close(
        "data parallel world 3, resumed in one process",
        (&losses, &weights(&t)),
        (&want_losses, &want),
    );
}

/// ZeRO-1 in a group of one (reduce to itself, broadcast from itself) is
/// bitwise the plain trainer with activation checkpointing... and the plain
/// trainer's blockwise backward is the data-parallel one, so compare with a
/// plain group of one.
#[test]
fn zero1_group_of_one_is_bitwise_plain_data_parallel() {
    let seed = test_support::seed();
    let mut plain = trainer(seed, 2, false, None);
    plain.set_data_parallel(group_of_one()).unwrap();
    let mut zero = trainer(seed, 2, true, None);
    zero.set_data_parallel(group_of_one()).unwrap();
    assert_eq!(
        zero.optimizer().state_bytes(),
        plain.optimizer().state_bytes()
    );
    for step in 0..STEPS {
        let (a, b) = (plain.step().unwrap(), zero.step().unwrap());
        assert_eq!(a.loss.to_bits(), b.loss.to_bits(), "step {step}: loss");
        assert_eq!(a.grad_norm.to_bits(), b.grad_norm.to_bits(), "step {step}");
    }
    for ((name, a), (_, b)) in weights(&plain).iter().zip(&weights(&zero)) {
        assert!(a.equal(b), "{name} differs");
    }
}

/// ZeRO-1 with f32 masters (the default) and bf16 compute shards the master
/// weights: after joining, every weight is bf16 and this rank's optimizer
/// holds the f32 masters of its share; after each step every weight is its
/// master's bf16 rounding; the collective checkpoint holds the f32 masters,
/// and a trainer resuming it in a new group continues bitwise like the
/// uninterrupted one.
#[test]
fn zero1_shards_f32_masters_under_bf16_compute() {
    tch::set_num_threads(1);
    let seed = test_support::seed();
    let dir = tempfile::tempdir().unwrap();
    let make = |ckpt: Option<PathBuf>| sharded_group_of_one(seed, ckpt);
    let mut whole = make(Some(dir.path().join("ckpt")));
    let names: Vec<String> = weights(&whole).into_iter().map(|(n, _)| n).collect();
    let masters = |t: &Trainer| -> Vec<Tensor> {
        names
            .iter()
            .map(|n| {
                t.optimizer()
                    .master_of(n)
                    .expect("a group of one owns every master")
            })
            .collect()
    };
    let rounded_masters = |t: &Trainer| {
        for ((name, w), m) in weights(t).iter().zip(masters(t)) {
            assert_eq!(
                (w.kind(), m.kind()),
                (tch::Kind::BFloat16, tch::Kind::Float),
                "{name}"
            );
            assert!(
                w.equal(&m.to_kind(tch::Kind::BFloat16)),
                "{name}: not its master's rounding"
            );
        }
    };
    rounded_masters(&whole);
    let mut losses = Vec::new();
    for step in 0..STEPS {
        losses.push(whole.step().unwrap().loss);
        rounded_masters(&whole);
        if step + 1 == STEPS / 2 {
            whole.save_checkpoint().unwrap();
            // The checkpoint holds the f32 masters, not their bf16 rounding.
            let moved = masters(&whole)
                .iter()
                .any(|m| !m.equal(&m.to_kind(tch::Kind::BFloat16).to_kind(tch::Kind::Float)));
            assert!(moved, "the masters should hold more than bf16 after a step");
        }
    }
    let ckpt = latest(&dir.path().join("ckpt"));
    for (name, dtype, _) in tensor_names(&ckpt)
        .iter()
        .filter(|(n, ..)| !n.starts_with("optim."))
    {
        assert_eq!(dtype, "F32", "{name}: the checkpoint holds the master");
    }
    let mut resumed = make(None);
    resumed.resume_from(&ckpt).unwrap();
    rounded_masters(&resumed);
    for (step, want) in losses.iter().enumerate().skip(STEPS as usize / 2) {
        let got = resumed.step().unwrap().loss;
        assert_eq!(got.to_bits(), want.to_bits(), "step {step}");
    }
    for (a, b) in masters(&whole).iter().zip(masters(&resumed)) {
        assert!(a.equal(&b), "masters differ after the resume");
    }
    println!(
        "sharded f32 masters: {} tensors, losses {losses:?}",
        names.len()
    );
}

/// A group of one training in bf16 with sharded f32 masters, 2 micro-batches a step.
fn sharded_group_of_one(seed: u64, ckpt: Option<PathBuf>) -> Trainer {
    let mut t = trainer_of(seed, 2, true, ckpt, tch::Kind::BFloat16);
    t.set_data_parallel(group_of_one()).unwrap();
    t
}

/// Two ranks with sharded f32 masters (each keeps the masters of its half,
/// updates them and broadcasts their bf16 rounding) against one rank of the
/// same scheme at the same global batch. The two sum their bf16 gradients
/// in another order than one rank accumulating two micro-batches, so the
/// measure is how far apart the two ended relative to how far training
/// moved the weights: at most 5 % (a tensor updated on one side only, or
/// from the wrong owner, would be ~100 %).
#[test]
fn zero1_sharded_masters_two_processes_match_one() {
    let seed = test_support::seed();
    let dir = tempfile::tempdir().unwrap();
    let spec = Spec {
        zero1: true,
        grad_accum: 1,
        run: STEPS,
        bf16: true,
        ..Default::default()
    };
    let (losses, two) = run_ranks(2, seed, &spec, dir.path());
    let mut one = sharded_group_of_one(seed, None);
    let start = weights(&one);
    let want: Vec<f64> = (0..STEPS).map(|_| one.step().unwrap().loss).collect();
    let one = weights(&one);
    let flat = |w: &[(String, Tensor)]| {
        Tensor::cat(
            &w.iter()
                .map(|(_, t)| t.to_kind(tch::Kind::Float).reshape([-1]))
                .collect::<Vec<_>>(),
            0,
        )
    };
    let moved = (flat(&one) - flat(&start)).norm().double_value(&[]);
    let apart = (flat(&two) - flat(&one)).norm().double_value(&[]);
    println!("sharded masters, world 2 vs 1: losses {losses:?} vs {want:?}; apart {apart:e}, moved {moved:e}");
    assert!(
        moved > 0.0 && apart <= 0.05 * moved,
        "apart {apart} vs moved {moved}"
    );
    for (a, b) in losses.iter().zip(&want) {
        assert!((a - b).abs() <= 1e-2 * b.abs(), "loss {a} vs {b}");
    }
}

/// ZeRO-1 without a group is plain training (the whole state on one process).
#[test]
fn zero1_without_a_group_is_plain_training() {
    let seed = test_support::seed();
    let mut plain = trainer(seed, 2, false, None);
    let mut zero = trainer(seed, 2, true, None);
    for _ in 0..2 {
        let (a, b) = (plain.step().unwrap().loss, zero.step().unwrap().loss);
        assert_eq!(a.to_bits(), b.to_bits());
    }
    assert_eq!(
        zero.optimizer().state_bytes(),
        plain.optimizer().state_bytes()
    );
}

/// World size 1 through NCCL on the GPU with ZeRO-1 against the
/// non-distributed trainer (both f32, blockwise backward), including a
/// collective checkpoint half-way (its agreements run on the GPU through
/// NCCL) from which the non-distributed trainer resumes. Bitwise is
/// expected but for the norm (ZeRO-1 sums per-tensor sums of squares); the
/// 1e-6 bounds are data_parallel.rs's NCCL test's.
#[test]
#[ignore = "needs CUDA"]
fn nccl_zero1_group_of_one_matches_the_plain_trainer() {
    let seed = test_support::seed();
    let device = test_support::cuda();
    let dir = tempfile::tempdir().unwrap();
    let make = |zero1: bool, ckpt: Option<PathBuf>| {
        let train = TrainConfig {
            activation_checkpointing: trainer::Checkpointing::On,
            ..config(2, zero1, ckpt)
        };
        common::dp_trainer(seed, train, device)
    };
    let mut plain = make(false, None);
    let mut zero = make(true, Some(dir.path().join("ckpt")));
    let group = common::group_of_one(Backend::Nccl);
    zero.set_data_parallel(group).unwrap();
    assert!(zero.data_parallel().unwrap().is_zero1());
    let compare = |what: &str, a: &Trainer, b: &Trainer| {
        for ((name, x), (_, y)) in weights(a).iter().zip(&weights(b)) {
            let diff = (x - y).abs().max().double_value(&[]);
            println!("{what}: {name}: max |diff| {diff:e}");
            assert!(diff <= 1e-6, "{what}: {name}: max |diff| {diff}");
        }
    };
    let mut saved = None;
    for step in 0..STEPS {
        let (a, b) = (plain.step().unwrap().loss, zero.step().unwrap().loss);
        assert!((a - b).abs() <= 1e-6 * a.abs(), "step {step}: {a} vs {b}");
        if step + 1 == STEPS / 2 {
            saved = zero.save_checkpoint().unwrap();
        }
    }
    compare("ZeRO-1 over NCCL", &plain, &zero);
    let mut resumed = make(false, None);
    resumed
        .resume_from(&saved.expect("a collective checkpoint"))
        .unwrap();
    while resumed.step_count() < resumed.total_steps() {
        resumed.step().unwrap();
    }
    compare("resumed from the NCCL checkpoint", &plain, &resumed);
}

/// A Gloo group of this process alone.
fn group_of_one() -> ProcessGroup {
    common::group_of_one(Backend::Gloo)
}

fn latest(dir: &Path) -> PathBuf {
    checkpoint::CheckpointManager::new(dir, 3)
        .unwrap()
        .latest()
        .unwrap()
        .expect("a checkpoint")
}

/// Name, dtype and shape of every tensor, sorted by name.
fn tensor_names(ckpt: &Path) -> Vec<(String, String, Vec<usize>)> {
    let mut names: Vec<_> = checkpoint::CheckpointManager::verify(ckpt)
        .unwrap()
        .tensors
        .into_iter()
        .map(|t| (t.name, t.dtype, t.shape))
        .collect();
    names.sort();
    names
}

/// One rank of the tests above; does nothing unless started by them.
#[test]
#[ignore = "one rank of the ZeRO-1 tests, which start it themselves"]
fn rank() {
    let Ok(dir) = std::env::var(DIR_VAR) else {
        return;
    };
    let dir = PathBuf::from(dir);
    let spec = Spec::decode(&std::env::var(SPEC_VAR).unwrap());
    let seed: u64 = std::env::var("ZERO_TEST_SEED").unwrap().parse().unwrap();
    let env = LaunchEnv::from_env().unwrap().expect("launched with RANK");
    let group = ProcessGroup::new(&GroupOptions::from_launch(
        &env,
        Backend::Gloo,
        Duration::from_secs(60),
    ))
    .unwrap();
    let kind = if spec.bf16 {
        tch::Kind::BFloat16
    } else {
        tch::Kind::Float
    };
    let mut t = trainer_of(
        seed,
        spec.grad_accum,
        spec.zero1,
        Some(dir.join("ckpt")),
        kind,
    );
    t.set_data_parallel(group).unwrap();
    assert_eq!(t.total_steps(), STEPS);
    if let Some(path) = &spec.resume {
        let resumed = t.resume_from(path);
        if spec.resume_fails {
            let err = resumed.expect_err("the resume must fail").to_string();
            let rank = t.data_parallel().unwrap().rank();
            trainer::write_atomic(&dir.join(format!("error-{rank}.txt")), err.as_bytes()).unwrap();
            return;
        }
        resumed.unwrap();
    }
    let losses: Vec<String> = (0..spec.run)
        .map(|_| t.step().unwrap().loss.to_string())
        .collect();
    // Every rank takes part; under ZeRO-1 every rank writes and gets the path.
    let saved = t.save_checkpoint().unwrap();
    assert_eq!(saved.is_some(), spec.zero1 || t.is_main_process());
    if t.is_main_process() {
        trainer::write_atomic(&dir.join("losses.txt"), losses.join("\n").as_bytes()).unwrap();
        Tensor::save_multi(&weights(&t), dir.join("weights.pt")).unwrap();
    }
    if spec.kill_in_save {
        t.step().unwrap();
        save_killing_rank_1(&t, &dir);
    }
}

/// The trainer's group, except that rank 1 is killed (SIGKILL: no cleanup,
/// sockets closed by the kernel) on its second agreement, i.e. once its
/// shard files and part index are written and before rank 0 may publish.
struct KillRank1<'a> {
    dp: &'a trainer::DataParallel,
    votes: std::cell::Cell<usize>,
}

impl checkpoint::RankGroup for KillRank1<'_> {
    fn rank(&self) -> usize {
        self.dp.rank()
    }
    fn world_size(&self) -> usize {
        self.dp.world_size()
    }
    fn all_ok(&self, ok: bool) -> Result<bool, String> {
        self.votes.set(self.votes.get() + 1);
        if self.dp.rank() == 1 && self.votes.get() == 2 {
            // SAFETY: kill(2) on this process's own id; nothing is borrowed.
            unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
        }
        self.dp.all_ok(ok)
    }
}

/// A collective save into `dir/ckpt` of the trainer's weights, each rank
/// a share (as `save_checkpoint` shares them), through [`KillRank1`].
/// Rank 0 records the error it gets in `dir/save-error.txt`.
fn save_killing_rank_1(t: &Trainer, dir: &Path) {
    let dp = t.data_parallel().unwrap();
    let group = KillRank1 {
        dp,
        votes: std::cell::Cell::new(0),
    };
    let mine: Vec<(String, Tensor)> = weights(t)
        .into_iter()
        .enumerate()
        .filter(|(i, _)| i % dp.world_size() == dp.rank())
        .map(|(_, named)| named)
        .collect();
    let state = checkpoint::TrainingState {
        step: t.step_count(),
        ..Default::default()
    };
    let manager = checkpoint::CheckpointManager::new(&dir.join("ckpt"), 3).unwrap();
    let err = manager
        .save_collective(&group, &state, &mine)
        .expect_err("rank 1 died: the save must fail");
    if dp.rank() == 0 {
        trainer::write_atomic(&dir.join("save-error.txt"), err.to_string().as_bytes()).unwrap();
    }
}
