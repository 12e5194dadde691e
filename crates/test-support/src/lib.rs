//! Dev-only helpers for the workspace's tests (a dev-dependency of every
//! crate, never a normal one: `tests/layering.rs` checks that).
//!
//! - [`seed`]: every random test input starts from one seed, read from
//!   `QWEN3_TEST_SEED` or drawn fresh, and printed with the test's name. The
//!   test harness shows a test's stdout only when it fails, so a failure
//!   always carries the line that replays it.
//! - [`cuda`]: the device of a GPU-only test. Those tests are
//!   `#[ignore = "needs CUDA"]`, so a CPU run reports them as ignored; run
//!   with `--include-ignored` on a GPU machine, where a missing GPU is a
//!   failure, not a silent pass.
//! - [`tiny_fixture`], [`read_safetensors`], [`tiny_source_weight`]: the
//!   tiny `.dat` fixture and its safetensors source, for the codec's and the
//!   converters' tests.
//! - [`raw_bytes`], [`dir_names`]: bitwise tensor comparison, directory listings.

mod tiny;

pub use tiny::{read_safetensors, tiny_fixture, tiny_source_weight};

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::time::{SystemTime, UNIX_EPOCH};

/// The environment variable that fixes the seed of every test.
pub const SEED_VAR: &str = "QWEN3_TEST_SEED";

/// The seed for this test: `QWEN3_TEST_SEED` when set, otherwise fresh.
/// Below 2^63, so `as i64` (libtorch's `manual_seed`) keeps it unchanged.
///
/// # Panics
/// When `QWEN3_TEST_SEED` is set but is not an unsigned integer: a typo must
/// not silently turn a replay into a fresh run.
pub fn seed() -> u64 {
    let seed = match std::env::var(SEED_VAR) {
        Ok(s) => s
            .trim()
            .parse::<u64>()
            .unwrap_or_else(|_| panic!("{SEED_VAR}={s:?} is not an unsigned integer seed")),
        Err(_) => fresh(),
    } & (i64::MAX as u64);
    // The harness names each test's thread after the test.
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("test");
    println!("{test}: seed {seed} (replay with {SEED_VAR}={seed})");
    seed
}

/// [`seed`] as libtorch's seed type.
pub fn seed_i64() -> i64 {
    seed() as i64
}

/// A fresh seed: the clock mixed with the process's random hash keys, so
/// tests starting in the same nanosecond still differ.
fn fresh() -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let mut h = RandomState::new().build_hasher();
    h.write_u64(nanos);
    h.finish()
}

/// `cuda:0` for a GPU-only test.
///
/// # Panics
/// When libtorch sees no CUDA device: such a test only runs when asked for
/// with `--include-ignored`, and then a missing GPU is a failure.
pub fn cuda() -> tch::Device {
    assert!(
        tch::Cuda::is_available(),
        "this test needs CUDA (it is #[ignore = \"needs CUDA\"] and was run with \
         --include-ignored), but libtorch sees no CUDA device"
    );
    tch::Device::Cuda(0)
}

/// The raw bytes of a tensor (any device), for bitwise comparison.
pub fn raw_bytes(t: &tch::Tensor) -> Vec<u8> {
    let numel = t.numel();
    let mut out = vec![0u8; numel * t.kind().elt_size_in_bytes()];
    t.copy_data_u8(&mut out, numel);
    out
}

/// The names in a directory, sorted.
///
/// # Panics
/// When the directory cannot be listed (a test failure).
pub fn dir_names(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            let name = e.expect("a directory entry").file_name();
            name.to_string_lossy().into_owned()
        })
        .collect();
    names.sort();
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_seeds_differ_and_fit_in_i64() {
        let a = fresh() & (i64::MAX as u64);
        let b = fresh() & (i64::MAX as u64);
        assert_ne!(a, b, "two fresh seeds in a row");
        assert!(a as i64 >= 0 && b as i64 >= 0);
    }
}
