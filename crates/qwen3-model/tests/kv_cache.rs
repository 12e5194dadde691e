//! KV cache through the model: rewinding, resetting, growing, accounting,
//! and repeated runs (FR-11) all reproduce cache-free results.

mod common;

use common::{random_ids, rel_diff, tiny_cfg, REL_TOL};
use qwen3_model::{Error, LoadOptions, Qwen3Model};
use tch::{Device, Kind, Tensor};

fn model(tied: bool) -> Qwen3Model {
    Qwen3Model::random(&tiny_cfg(tied), &LoadOptions::new(Device::Cpu), 1234).unwrap()
}

/// Logits of the last `n` positions of `ids` computed with no cache.
fn fresh_tail(m: &Qwen3Model, ids: &Tensor, n: i64) -> Tensor {
    let t = ids.size()[1];
    m.forward(ids, None).unwrap().narrow(1, t - n, n)
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

/// Cached and cache-free forwards differ only by float reassociation.
const TOL: f64 = 1e-5;

#[test]
fn truncate_then_reprefill_equals_a_fresh_run() {
    tch::no_grad(|| {
        let m = model(false);
        let a = random_ids(m.config().vocab_size, 1, 10);
        let b = random_ids(m.config().vocab_size, 1, 5);
        let mut cache = m.new_cache(1, 32).unwrap();
        let _ = m.forward(&a, Some(&mut cache)).unwrap();
        cache.truncate(6).unwrap();
        assert_eq!(cache.len(), 6);
        let got = m.forward(&b, Some(&mut cache)).unwrap();
        let want = fresh_tail(&m, &Tensor::cat(&[a.narrow(1, 0, 6), b], 1), 5);
        let d = max_diff(&got, &want);
        println!("truncate(6) + 5 new tokens vs fresh: max diff {d:e}");
        assert!(d <= TOL, "{d}");
    })
}

#[test]
fn reset_makes_the_cache_as_good_as_new() {
    tch::no_grad(|| {
        let m = model(true);
        let a = random_ids(m.config().vocab_size, 1, 7);
        let b = random_ids(m.config().vocab_size, 1, 4);
        let mut cache = m.new_cache(1, 16).unwrap();
        let _ = m.forward(&a, Some(&mut cache)).unwrap();
        cache.reset();
        assert!(cache.is_empty());
        let got = m.forward(&b, Some(&mut cache)).unwrap();
        let d = max_diff(&got, &m.forward(&b, None).unwrap());
        println!("after reset vs fresh: max diff {d:e}");
        assert!(d <= TOL, "{d}");
    })
}

#[test]
fn cache_grows_in_chunks_and_keeps_results_exact() {
    tch::no_grad(|| {
        let m = model(false);
        let ids = random_ids(m.config().vocab_size, 2, 11);
        let mut cache = m.new_cache(2, 2).unwrap().with_grow_chunk(3);
        let mut caps = Vec::new();
        let mut rows = Vec::new();
        for (start, len) in [(0, 1), (1, 4), (5, 1), (6, 5)] {
            rows.push(
                m.forward(&ids.narrow(1, start, len), Some(&mut cache))
                    .unwrap(),
            );
            caps.push(cache.capacity());
        }
        assert_eq!(caps, vec![2, 6, 6, 12], "capacity after each forward");
        assert_eq!(cache.len(), 11);
        let d = max_diff(&Tensor::cat(&rows, 1), &m.forward(&ids, None).unwrap());
        println!("grown cache vs no cache: max diff {d:e}");
        assert!(d <= TOL, "{d}");
    })
}

#[test]
fn memory_accounting_matches_the_layout() {
    let m = model(true);
    let c = m.config();
    let cache = m.new_cache(3, 100).unwrap();
    let per_pos = 2 * c.num_hidden_layers * 3 * c.num_key_value_heads * c.head_dim * 4;
    assert_eq!(cache.memory_bytes(), per_pos * 100);
    let bf16 = Qwen3Model::random(
        c,
        &LoadOptions {
            dtype: Kind::BFloat16,
            ..LoadOptions::new(Device::Cpu)
        },
        1,
    )
    .unwrap();
    assert_eq!(
        bf16.new_cache(3, 100).unwrap().memory_bytes(),
        per_pos * 100 / 2
    );
}

#[test]
fn a_cache_for_another_batch_size_is_rejected() {
    let m = model(true);
    let mut cache = m.new_cache(2, 8).unwrap();
    let ids = random_ids(m.config().vocab_size, 1, 3);
    let e = tch::no_grad(|| m.forward(&ids, Some(&mut cache))).unwrap_err();
    assert!(matches!(e, Error::Cache { .. }), "{e}");
    assert_eq!(
        cache.len(),
        0,
        "a rejected forward must not advance the cache"
    );
}

#[test]
fn out_of_range_token_is_an_error_not_a_crash() {
    let m = model(true);
    let ids = Tensor::from_slice(&[1i64, 96]).view([1, 2]);
    let e = m.forward(&ids, None).unwrap_err();
    assert!(e.to_string().contains("token id 96"), "{e}");
    let e = m
        .forward(&Tensor::from_slice(&[1.0f32]).view([1, 1]), None)
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::BadInput {
                name: "input_ids",
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn repeated_runs_with_and_without_cache_are_identical() {
    // FR-11 in miniature: back-to-back runs in every mode give the same logits.
    tch::no_grad(|| {
        let m = model(false);
        let ids = random_ids(m.config().vocab_size, 1, 9);
        let reference = m.forward(&ids, None).unwrap();
        let mut cache = m.new_cache(1, 4).unwrap();
        for iteration in 0..5 {
            let no_cache = m.forward(&ids, None).unwrap();
            assert_eq!(
                max_diff(&no_cache, &reference),
                0.0,
                "iteration {iteration}, no cache"
            );
            cache.reset();
            let pbp = m.forward(&ids, Some(&mut cache)).unwrap();
            assert!(
                max_diff(&pbp, &reference) <= TOL,
                "iteration {iteration}, prompt-by-prompt"
            );
            cache.reset();
            let tbt: Vec<Tensor> = (0..9)
                .map(|i| m.forward(&ids.narrow(1, i, 1), Some(&mut cache)).unwrap())
                .collect();
            assert!(
                max_diff(&Tensor::cat(&tbt, 1), &reference) <= TOL,
                "iteration {iteration}, token-by-token"
            );
        }
    })
}

#[test]
fn forward_last_is_the_last_row_of_forward_with_and_without_cache() {
    let cfg = tiny_cfg(false);
    let model =
        Qwen3Model::random(&cfg, &LoadOptions::new(Device::Cpu), test_support::seed()).unwrap();
    let ids = random_ids(cfg.vocab_size, 2, 9);
    let full = model.forward(&ids, None).unwrap();
    let last = model.forward_last(&ids, None).unwrap();
    assert_eq!(last.size(), [2, 1, cfg.vocab_size as i64]);
    // The same blocks; only the head matmul's row count (BLAS blocking) differs.
    let r = rel_diff(&last, &full.narrow(1, 8, 1));
    assert!(r <= REL_TOL, "uncached: {r:e}");
    let (mut a, mut b) = (
        model.new_cache(2, 16).unwrap(),
        model.new_cache(2, 16).unwrap(),
    );
    let _ = model.forward(&ids.narrow(1, 0, 5), Some(&mut a)).unwrap();
    let _ = model
        .forward_last(&ids.narrow(1, 0, 5), Some(&mut b))
        .unwrap();
    let want = model.forward(&ids.narrow(1, 5, 4), Some(&mut a)).unwrap();
    let got = model
        .forward_last(&ids.narrow(1, 5, 4), Some(&mut b))
        .unwrap();
    assert_eq!(b.len(), 9, "forward_last feeds every position to the cache");
    let r = rel_diff(&got, &want.narrow(1, 3, 1));
    assert!(r <= REL_TOL, "cached: {r:e}");
}

/// A cache far larger than the machine is refused before anything is
/// allocated, with the bytes in the error; the model is unharmed.
#[test]
fn a_cache_that_cannot_be_allocated_is_an_error_naming_the_bytes() {
    let cfg = tiny_cfg(false);
    let model =
        Qwen3Model::random(&cfg, &LoadOptions::new(Device::Cpu), test_support::seed()).unwrap();
    // 2^36 positions: 2 layers x (k, v) x 2 kv heads x 16 dims x 4 bytes each
    // = 2^45 bytes (32 TiB), far above any host's free memory.
    let capacity = 1usize << 36;
    let per_position = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.head_dim * 4;
    let bytes = (per_position * capacity) as u64;
    let err = model.new_cache(1, capacity).unwrap_err();
    assert!(
        matches!(err, Error::OutOfMemory { bytes: b, .. } if b == bytes),
        "{err}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains(&bytes.to_string()) && msg.contains("kv cache"),
        "{msg}"
    );
    // A size that overflows 64-bit byte counts is an error too, not a wrap.
    let err = model.new_cache(1 << 20, usize::MAX / 4).unwrap_err();
    assert!(err.to_string().contains("overflows"), "{err}");
    // Growing past what fits fails the same way and keeps the cache usable.
    let mut cache = model.new_cache(1, 4).unwrap().with_grow_chunk(capacity);
    let ids = random_ids(cfg.vocab_size, 1, 5); // one more than the capacity
    let err = model.forward(&ids, Some(&mut cache)).unwrap_err();
    assert!(matches!(err, Error::OutOfMemory { .. }), "{err}");
    assert_eq!((cache.len(), cache.capacity()), (0, 4));
    let mut cache = model.new_cache(1, 4).unwrap();
    let _ = tch::no_grad(|| model.forward(&ids, Some(&mut cache))).unwrap();
    assert_eq!(cache.len(), 5);
}

/// On a GPU, libtorch's own out-of-memory comes back as the same error.
#[test]
#[ignore = "needs CUDA"]
fn a_cache_larger_than_the_gpu_is_an_error_naming_the_bytes() {
    let cfg = tiny_cfg(false);
    let model = Qwen3Model::random(
        &cfg,
        &LoadOptions::new(test_support::cuda()),
        test_support::seed(),
    )
    .unwrap();
    // 2^33 positions x 1 KiB (bf16): 8 TiB.
    let err = model.new_cache(2, 1usize << 33).unwrap_err();
    assert!(matches!(err, Error::OutOfMemory { .. }), "{err}");
    println!("{err}");
    let mut cache = model.new_cache(1, 8).unwrap();
    let ids = random_ids(cfg.vocab_size, 1, 3).to_device(model.device());
    let _ = tch::no_grad(|| model.forward(&ids, Some(&mut cache))).unwrap();
}
