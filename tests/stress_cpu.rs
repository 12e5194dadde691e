//! FR-11 on CPU: the stress loop (shared with `examples/stress.rs`) runs on a
//! tiny random model written to a real `.dat`, passes, and its leak check
//! catches memory that a run does not give back.

use nvfp4_kernels::ComputePath;
use qwen3_model::Qwen3Config;
use qwen3_nvfp4::{
    run_stress, run_stress_with, synthetic_prompt, write_synthetic_model, StressCase, StressOptions,
};
use tch::{Device, Kind};

/// RSS is per process and tests run on parallel threads: one at a time, or a
/// neighbour's allocations would read as this test's leak.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn tiny() -> Qwen3Config {
    Qwen3Config {
        vocab_size: 512,
        hidden_size: 64,
        intermediate_size: 128,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        head_dim: 16,
        max_position_embeddings: 1024,
        tie_word_embeddings: false,
        eos_token_ids: vec![],
        ..Qwen3Config::qwen3_4b()
    }
}

fn options(dir: &std::path::Path, iterations: usize, tolerance_mib: u64) -> StressOptions {
    let seed = test_support::seed();
    let (weight, config) = write_synthetic_model(&tiny(), seed, dir).unwrap();
    StressOptions {
        weight,
        config,
        device: Device::Cpu,
        dtype: Kind::Float,
        compute_path: ComputePath::Auto,
        iterations,
        prompt: synthetic_prompt(12, 512, seed),
        max_new_tokens: 6,
        tolerance_bytes: tolerance_mib << 20,
        require_identical: true,
    }
}

#[test]
fn stress_matrix_passes_on_a_tiny_cpu_model() {
    let _guard = serial();
    let dir = tempfile::tempdir().unwrap();
    let report = run_stress(&options(dir.path(), 3, 32)).unwrap();
    eprint!("{}", report.table());
    assert_eq!(
        report.records.len(),
        3 * StressCase::ALL.len(),
        "every run completed"
    );
    assert!(report.records.iter().all(|r| r.tokens.len() == 6));
    assert!(
        report.ids_agree(),
        "no cache, pbp and tbt give the same greedy ids, every iteration"
    );
    report.verdict().unwrap();
}

/// A run that keeps 48 MiB alive after it ends (a deliberate leak, touched so
/// it is resident) must fail the 16 MiB tolerance from iteration 1 on.
#[test]
fn stress_leak_check_catches_memory_not_given_back() {
    let _guard = serial();
    let dir = tempfile::tempdir().unwrap();
    let mut leaked: Vec<Vec<u8>> = Vec::new();
    let report = run_stress_with(&options(dir.path(), 2, 16), &mut |iteration, case| {
        if iteration == 1 && case == StressCase::NoCache {
            leaked.push(vec![1u8; 48 << 20]);
        }
    })
    .unwrap();
    eprint!("{}", report.table());
    let problems = report.problems();
    assert_eq!(
        problems.len(),
        StressCase::ALL.len(),
        "every run after the leak is flagged: {problems:?}"
    );
    assert!(problems.iter().all(|p| p.contains("leak")), "{problems:?}");
    assert_eq!(leaked.len(), 1);
}

#[test]
fn a_broken_weight_file_is_a_recorded_failure_not_a_panic() {
    let _guard = serial();
    let dir = tempfile::tempdir().unwrap();
    let opts = options(dir.path(), 2, 32);
    std::fs::write(&opts.weight, b"\x05garbage").unwrap();
    let report = run_stress(&opts).unwrap();
    assert!(report.records.is_empty());
    let err = report.verdict().unwrap_err().to_string();
    assert!(
        err.contains("iteration 0, no-cache") && err.contains("model.dat"),
        "{err}"
    );
}
