//! FR-11 for training (src/train_stress.rs): three cycles of start -> save
//! -> resume -> export, every phase in a fresh process (this test binary,
//! re-run in child mode), give bitwise the same losses and export; each
//! process's resident memory comes back within `KEPT` of its start once the
//! trainer is dropped and ends within `GROWTH` of cycle 0's.

use std::path::Path;
use std::process::Command;

use qwen3_nvfp4::{phase_line, run_train_phase, run_train_stress, TrainPhase, TrainStressSetup};

const TEST: &str = "training_cycles_in_fresh_processes_repeat_exactly_without_growth";
/// Set in a child: "start" or "resume", and the cycle directory.
const CHILD_PHASE: &str = "QWEN3_TRAIN_STRESS_PHASE";
const CHILD_DIR: &str = "QWEN3_TRAIN_STRESS_DIR";
const CYCLES: usize = 3;
/// Resident memory a process may keep after dropping the trainer: libtorch's
/// autograd engine threads and allocator arenas stay once created (measured
/// 20 MiB, the same in every process).
const KEPT: u64 = 32 << 20;
/// How far a process may end above the same phase of cycle 0 (measured
/// under 0.5 MiB): this is the leak check across runs.
const GROWTH: u64 = 4 << 20;

fn setup(seed: u64) -> TrainStressSetup {
    TrainStressSetup { seed, steps: 3 }
}

#[test]
fn training_cycles_in_fresh_processes_repeat_exactly_without_growth() {
    if let (Ok(phase), Ok(dir)) = (std::env::var(CHILD_PHASE), std::env::var(CHILD_DIR)) {
        let phase = match phase.as_str() {
            "start" => TrainPhase::Start,
            _ => TrainPhase::Resume,
        };
        let record = run_train_phase(phase, Path::new(&dir), &setup(test_support::seed())).unwrap();
        println!("{}", phase_line(&record));
        return;
    }
    let seed = test_support::seed();
    let root = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let command = |phase: TrainPhase, dir: &Path| {
        let mut c = Command::new(&exe);
        c.args(["--exact", TEST, "--nocapture", "--test-threads=1"])
            .env(
                CHILD_PHASE,
                if phase == TrainPhase::Start {
                    "start"
                } else {
                    "resume"
                },
            )
            .env(CHILD_DIR, dir)
            .env(test_support::SEED_VAR, seed.to_string());
        c
    };
    let report = run_train_stress(CYCLES, root.path(), KEPT, GROWTH, &command).unwrap();
    println!("{}", report.table());
    assert_eq!(report.cycles.len(), CYCLES);
    let first = &report.cycles[0];
    assert!(
        first[1].losses.last() < first[0].losses.first(),
        "the run must learn something: {first:?}"
    );
    let problems = report.problems();
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
