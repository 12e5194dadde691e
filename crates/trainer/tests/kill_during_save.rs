//! Checkpoint safety under real kills: a training run in a child process
//! (this test binary, re-run in child mode) checkpoints after every step and
//! is sent SIGKILL at random moments while it saves, at least
//! `MID_SAVE_KILLS` times; each new child resumes from the latest checkpoint.
//! After every kill, every `step-*` directory verifies (a partial save is
//! never visible under a checkpoint name), the latest one is at least the
//! last save the child reported finished, and at the end resuming from the
//! latest checkpoint continues bit-exactly like one uninterrupted run.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use checkpoint::CheckpointManager;
use rand::{Rng, SeedableRng};
use tch::Tensor;
use trainer::{TrainConfig, Trainer};

const TEST: &str = "sigkill_during_saves_never_exposes_a_partial_checkpoint";
/// Set in the child: the checkpoint directory to train into.
const CHILD_DIR: &str = "QWEN3_KILL_TEST_CHILD_DIR";
const MID_SAVE_KILLS: usize = 20;
const CHILD_SAVES: usize = 300;
const MAX_CHILDREN: usize = 80;
const VOCAB: usize = 96;

fn config(dir: &Path) -> TrainConfig {
    TrainConfig {
        steps: Some(100_000), // the child runs until killed
        batch_size: 2,
        lr: 3e-3,
        warmup: 1,
        seed: 5,
        checkpoint_dir: Some(dir.to_path_buf()),
        keep_last: 2,
        progress: false,
        ..Default::default()
    }
}

fn trainer(dir: &Path, seed: u64) -> Trainer {
    let cfg = common::tiny_config(VOCAB, true);
    Trainer::new(
        common::tiny_model(&cfg, seed),
        config(dir),
        common::random_dataset(7, VOCAB as u32, seed),
        0,
    )
    .unwrap()
}

/// Child mode: resume from the latest checkpoint, then step and save,
/// announcing each save on stdout, until killed (or `CHILD_SAVES` saves, so
/// that a child whose parent died does not run on).
fn child(dir: &Path) {
    let seed = test_support::seed();
    let mut t = trainer(dir, seed);
    if let Some(latest) = t.latest_checkpoint().unwrap() {
        t.resume_from(&latest).unwrap();
    }
    for _ in 0..CHILD_SAVES {
        t.step().unwrap();
        println!("@@saving {}", t.step_count());
        t.save_checkpoint().unwrap();
        println!("@@saved {}", t.step_count());
    }
}

/// Every `step-*` entry verifies; returns the latest complete step.
fn check_dir(dir: &Path) -> Option<u64> {
    let mut latest = None;
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(step) = name.strip_prefix("step-") {
            let meta = CheckpointManager::verify(&entry.path())
                .unwrap_or_else(|e| panic!("{name} is visible but not complete: {e}"));
            assert_eq!(meta.state.step, step.parse::<u64>().unwrap(), "{name}");
            latest = latest.max(Some(meta.state.step));
        }
    }
    let listed = CheckpointManager::new(dir, 2).unwrap().latest().unwrap();
    let listed_step = listed.map(|p| CheckpointManager::verify(&p).unwrap().state.step);
    assert_eq!(
        listed_step, latest,
        "latest() must be the newest complete one"
    );
    latest
}

fn weights(t: &Trainer) -> Vec<Tensor> {
    t.model()
        .named_parameters()
        .iter()
        .map(|(_, p)| p.detach().copy())
        .collect()
}

#[test]
fn sigkill_during_saves_never_exposes_a_partial_checkpoint() {
    if let Ok(dir) = std::env::var(CHILD_DIR) {
        child(Path::new(&dir));
        return;
    }
    let started = Instant::now();
    let seed = test_support::seed();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let root = tempfile::tempdir().unwrap();
    let dir: PathBuf = root.path().join("ck");
    let exe = std::env::current_exe().unwrap();
    // Kill delays are drawn up to the longest save seen so far.
    let mut longest_save = Duration::from_millis(2);
    let (mut children, mut mid_save) = (0, 0);
    while mid_save < MID_SAVE_KILLS {
        assert!(
            children < MAX_CHILDREN,
            "only {mid_save} of {children} kills landed inside a save"
        );
        children += 1;
        let child_log = root.path().join("child.log");
        let mut proc = Command::new(&exe)
            .args(["--exact", TEST, "--nocapture", "--test-threads=1"])
            .env(CHILD_DIR, &dir)
            .env(test_support::SEED_VAR, seed.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(std::fs::File::create(&child_log).unwrap()))
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(proc.stdout.take().unwrap()).lines();
        // Let it finish 0..3 saves, then kill it inside the next one.
        let skip = rng.gen_range(0..3);
        let mut seen = 0;
        let mut last_saved = None;
        let mut save_started = Instant::now();
        let mut reached = false;
        for line in lines.by_ref() {
            let line = line.unwrap();
            if line.contains("@@saving ") {
                save_started = Instant::now();
                if seen == skip {
                    reached = true;
                    break;
                }
                seen += 1;
            } else if let Some(i) = line.find("@@saved ") {
                longest_save = longest_save.max(save_started.elapsed());
                last_saved = Some(line[i + 8..].trim().parse::<u64>().unwrap());
            }
        }
        assert!(
            reached,
            "child {children} ended before its save: {}",
            std::fs::read_to_string(&child_log).unwrap_or_default()
        );
        let delay = rng.gen_range(Duration::ZERO..=longest_save);
        std::thread::sleep(delay);
        proc.kill().unwrap(); // SIGKILL
        let status = proc.wait().unwrap();
        assert!(!status.success(), "the child must have been killed");
        // Whatever it printed before dying: was the save still running?
        let mut in_save = true;
        for line in lines {
            let line = line.unwrap_or_default();
            if let Some(i) = line.find("@@saved ") {
                in_save = false;
                last_saved = Some(line[i + 8..].trim().parse::<u64>().unwrap());
            } else if line.contains("@@saving ") {
                in_save = true;
            }
        }
        mid_save += usize::from(in_save);
        let latest = check_dir(&dir);
        assert!(
            latest >= last_saved,
            "a save reported finished (step {last_saved:?}) was lost: latest {latest:?}"
        );
    }
    let latest = check_dir(&dir).expect("some save finished");
    println!(
        "{children} children, {mid_save} killed inside a save (delays up to {longest_save:?}); \
         latest checkpoint step {latest}; {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // Resume from the survivor and compare with one uninterrupted run.
    let extra = 3;
    let mut resumed = trainer(&dir, seed);
    let path = resumed.latest_checkpoint().unwrap().unwrap();
    resumed.resume_from(&path).unwrap();
    let resumed_losses: Vec<u64> = (0..extra)
        .map(|_| resumed.step().unwrap().loss.to_bits())
        .collect();
    let scratch = tempfile::tempdir().unwrap();
    let mut straight = trainer(scratch.path(), seed);
    for _ in 0..latest {
        straight.step().unwrap();
    }
    let straight_losses: Vec<u64> = (0..extra)
        .map(|_| straight.step().unwrap().loss.to_bits())
        .collect();
    assert_eq!(resumed_losses, straight_losses, "losses after the resume");
    for (a, b) in weights(&straight).iter().zip(weights(&resumed)) {
        assert!(
            a.equal(&b),
            "weights after the resume must be bitwise equal"
        );
    }
    assert_eq!(straight.cursor(), resumed.cursor());
}
