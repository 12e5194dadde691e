//! Parity with Hugging Face transformers' Qwen3ForCausalLM (f32, CPU) on the
//! small random models of `tests/fixtures/parity/` (written by
//! `scripts/gen_parity_fixtures.py`, with NVFP4 weights dequantized into the
//! HF model). Every comparison: max |logit - ref| <= 1e-5 * max |ref logit|.

mod common;

use common::{assert_close, cases, row, Case};
use dat_format::DatFile;
use qwen3_model::{LoadOptions, Qwen3Model};
use tch::{Device, Tensor};

const PROMPTS: [&str; 2] = ["a", "b"];

/// Logits of `ids` fed one token at a time through a cache, [T, V].
fn token_by_token(model: &Qwen3Model, ids: &[i64]) -> Tensor {
    let mut cache = model.new_cache(1, 4).unwrap();
    let rows: Vec<Tensor> = ids
        .iter()
        .map(|&id| {
            model
                .forward(&row(&[id]), Some(&mut cache))
                .unwrap()
                .squeeze_dim(0)
        })
        .collect();
    assert_eq!(cache.len(), ids.len());
    Tensor::cat(&rows, 0)
}

fn for_each_prompt(mut f: impl FnMut(&Case, &Qwen3Model, &str, &[i64], &Tensor)) {
    tch::no_grad(|| {
        for case in cases() {
            let model = case.model();
            for p in PROMPTS {
                let ids = case.ids(&format!("prompt_{p}"));
                f(&case, &model, p, &ids, case.tensor(&format!("logits_{p}")));
            }
        }
    })
}

#[test]
fn full_prompt_without_cache_matches_transformers() {
    for_each_prompt(|case, model, p, ids, want| {
        let got = model.forward(&row(ids), None).unwrap().squeeze_dim(0);
        assert_close(&format!("{} prompt {p} no cache", case.name), &got, want);
    });
}

#[test]
fn token_by_token_with_cache_matches_transformers() {
    // The cache starts at capacity 4, so this also crosses growth steps.
    for_each_prompt(|case, model, p, ids, want| {
        let got = token_by_token(model, ids);
        assert_close(
            &format!("{} prompt {p} token-by-token", case.name),
            &got,
            want,
        );
    });
}

#[test]
fn prompt_by_prompt_with_cache_matches_transformers() {
    for_each_prompt(|case, model, p, ids, want| {
        let mut cache = model.new_cache(1, 64).unwrap();
        let got = model
            .forward(&row(ids), Some(&mut cache))
            .unwrap()
            .squeeze_dim(0);
        assert_eq!(cache.len(), ids.len());
        assert_close(
            &format!("{} prompt {p} prompt-by-prompt", case.name),
            &got,
            want,
        );
    });
}

#[test]
fn chunk_prefilled_on_a_nonempty_cache_matches_transformers() {
    // Regression for the original's defect: a chunk on top of a non-empty
    // cache ran with no causal mask, so its first tokens saw later ones.
    tch::no_grad(|| {
        for case in cases() {
            let model = case.model();
            let ids = case.ids("prompt_b");
            let split = case.ids("chunk_split_b")[0] as usize;
            let mut cache = model.new_cache(1, 64).unwrap();
            let _ = model
                .forward(&row(&ids[..split]), Some(&mut cache))
                .unwrap();
            let got = model
                .forward(&row(&ids[split..]), Some(&mut cache))
                .unwrap()
                .squeeze_dim(0);
            assert_close(
                &format!("{} chunk on cache vs HF chunk", case.name),
                &got,
                case.tensor("chunk_logits_b"),
            );
            let full_tail =
                case.tensor("logits_b")
                    .narrow(0, split as i64, (ids.len() - split) as i64);
            assert_close(
                &format!("{} chunk on cache vs HF full prompt", case.name),
                &got,
                &full_tail,
            );
        }
    })
}

/// Greedy decoding: prefill (whole prompt or token by token), then argmax steps.
fn greedy(model: &Qwen3Model, prompt: &[i64], new_tokens: usize, token_by_token: bool) -> Vec<i64> {
    let mut cache = model.new_cache(1, 8).unwrap();
    let mut logits = if token_by_token {
        prompt
            .iter()
            .map(|&id| model.forward(&row(&[id]), Some(&mut cache)).unwrap())
            .last()
            .unwrap()
    } else {
        model.forward(&row(prompt), Some(&mut cache)).unwrap()
    };
    let mut out = Vec::new();
    for _ in 0..new_tokens {
        let next = logits.select(1, -1).argmax(-1, false).int64_value(&[0]);
        out.push(next);
        logits = model.forward(&row(&[next]), Some(&mut cache)).unwrap();
    }
    out
}

#[test]
fn greedy_continuation_equals_transformers_generate() {
    tch::no_grad(|| {
        for case in cases() {
            let model = case.model();
            for p in PROMPTS {
                let prompt = case.ids(&format!("prompt_{p}"));
                let want = case.ids(&format!("greedy_{p}"));
                for tbt in [false, true] {
                    let got = greedy(&model, &prompt, want.len(), tbt);
                    assert_eq!(got, want, "{} prompt {p} (token_by_token={tbt})", case.name);
                }
                println!(
                    "{} prompt {p}: greedy ids equal ({} tokens)",
                    case.name,
                    want.len()
                );
            }
        }
    })
}

#[test]
fn batched_prompts_match_per_sequence_references() {
    // Row 0: prompt a; row 1: the first |a| tokens of prompt b (causal, so
    // their logits are the first rows of b's reference).
    tch::no_grad(|| {
        for case in cases() {
            let model = case.model();
            let (a, b) = (case.ids("prompt_a"), case.ids("prompt_b"));
            let t = a.len();
            let ids = Tensor::stack(&[Tensor::from_slice(&a), Tensor::from_slice(&b[..t])], 0); // [2, T]
            let want = Tensor::stack(
                &[
                    case.tensor("logits_a").shallow_clone(),
                    case.tensor("logits_b").narrow(0, 0, t as i64),
                ],
                0,
            );
            let got = model.forward(&ids, None).unwrap();
            assert_close(&format!("{} batch of 2, no cache", case.name), &got, &want);
            let mut cache = model.new_cache(2, 4).unwrap();
            let first = model
                .forward(&ids.narrow(1, 0, 3), Some(&mut cache))
                .unwrap();
            let rest = model
                .forward(&ids.narrow(1, 3, t as i64 - 3), Some(&mut cache))
                .unwrap();
            assert_close(
                &format!("{} batch of 2, chunked cache", case.name),
                &Tensor::cat(&[first, rest], 1),
                &want,
            );
        }
    })
}

#[test]
fn rope_theta_comes_from_the_config() {
    // Negative control: the same weights with another theta (the original's
    // training graph hard-coded 1e6) must NOT match the reference.
    tch::no_grad(|| {
        for case in cases() {
            let mut cfg = case.cfg.clone();
            cfg.rope_theta = if cfg.rope_theta == 1e6 { 5e6 } else { 1e6 };
            let dat = DatFile::open(case.dir.join("model.dat")).unwrap();
            let model = Qwen3Model::load_dat(&dat, &cfg, &LoadOptions::new(Device::Cpu)).unwrap();
            let ids = case.ids("prompt_b");
            let got = model.forward(&row(&ids), None).unwrap().squeeze_dim(0);
            let want = case.tensor("logits_b");
            let diff = (&got - want).abs().max().double_value(&[]);
            let scale = want.abs().max().double_value(&[]);
            println!(
                "{}: theta {} instead of {} -> ratio {:.3e}",
                case.name,
                cfg.rope_theta,
                case.cfg.rope_theta,
                diff / scale
            );
            assert!(
                diff > 1e-3 * scale,
                "{}: a wrong theta went unnoticed",
                case.name
            );
        }
    })
}
