//! Every entry point that takes token ids refuses one outside the vocabulary
//! with an error naming the id and the vocabulary size, before any kernel
//! runs (the fused decoder's check is in tests/fused_decode.rs; an out-of-range embedding index is a libtorch abort on the CPU and a
//! device-side assert that poisons the CUDA context on a GPU).

mod common;

use common::tiny_cfg;
use qwen3_model::{generate, Error, GenerateOptions, LoadOptions, Qwen3Model};
use tch::{Device, Kind, Tensor};

fn ids(row: &[i64]) -> Tensor {
    Tensor::from_slice(row).view([1, row.len() as i64])
}

/// The error names `id` and `vocab`.
fn assert_names(err: &Error, id: i64, vocab: usize) {
    let msg = err.to_string();
    assert!(
        msg.contains(&id.to_string()) && msg.contains(&vocab.to_string()),
        "error must name id {id} and vocabulary {vocab}: {msg}"
    );
}

#[test]
fn forward_and_forward_last_refuse_ids_outside_the_vocabulary() {
    let cfg = tiny_cfg(false);
    let vocab = cfg.vocab_size;
    let model =
        Qwen3Model::random(&cfg, &LoadOptions::new(Device::Cpu), test_support::seed()).unwrap();
    for bad in [vocab as i64, vocab as i64 + 1000, -1] {
        let input = ids(&[1, 2, bad, 3]);
        let mut cache = model.new_cache(1, 8).unwrap();
        let err = model.forward(&input, Some(&mut cache)).unwrap_err();
        assert!(matches!(err, Error::BadInput { .. }), "{err}");
        assert_names(&err, bad, vocab);
        assert_eq!(cache.len(), 0, "a refused call leaves the cache as it was");
        let err = model.forward_last(&input, None).unwrap_err();
        assert_names(&err, bad, vocab);
    }
    // The largest valid id still runs.
    let logits = tch::no_grad(|| model.forward(&ids(&[vocab as i64 - 1, 0]), None)).unwrap();
    assert_eq!(logits.size(), [1, 2, vocab as i64]);
    assert_eq!(logits.kind(), Kind::Float);
}

#[test]
fn generate_refuses_a_prompt_id_outside_the_vocabulary() {
    let cfg = tiny_cfg(true);
    let vocab = cfg.vocab_size;
    let model =
        Qwen3Model::random(&cfg, &LoadOptions::new(Device::Cpu), test_support::seed()).unwrap();
    let opts = GenerateOptions {
        max_new_tokens: 2,
        ..GenerateOptions::default()
    };
    let bad = vocab as u32;
    let err = generate(&model, None, &[5, bad], &opts, &mut |_| true).unwrap_err();
    assert_names(&err, bad as i64, vocab);
}
