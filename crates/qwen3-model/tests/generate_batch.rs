//! Batched generation on a small random model (f32): every row of a
//! left-padded batch computes what the single-sequence path computes for its
//! prompt alone (greedy ids equal, logits within 1e-4), padding is never
//! attended, rows stop on their own, and bad batches are errors.

mod common;

use common::{generation_cfg as tiny_config, GEN_VOCAB as VOCAB};
use qwen3_model::{
    generate, generate_batch, FinishReason, GenerateOptions, LoadOptions, Qwen3Model,
    SamplingParams,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tch::{Device, Tensor};

/// f32 logits of a padded row vs the same prompt alone (measured ~1e-6).
const LOGITS_TOL: f64 = 1e-4;

/// A random model and 4 random prompts of distinct lengths (1 included, so
/// one row is almost all padding); the seed is printed for reproduction.
fn setup(device: Device) -> (Qwen3Model, Vec<Vec<u32>>, StdRng) {
    let mut rng = StdRng::seed_from_u64(test_support::seed());
    let model = common::generation_model(device, rng.gen());
    let lens = [
        rng.gen_range(9..14),
        1,
        rng.gen_range(2..5),
        rng.gen_range(5..9),
    ];
    let prompts = lens
        .iter()
        .map(|&n| (0..n).map(|_| rng.gen_range(0..VOCAB as u32)).collect())
        .collect();
    (model, prompts, rng)
}

fn greedy(max_new_tokens: usize) -> GenerateOptions {
    GenerateOptions {
        max_new_tokens,
        ..GenerateOptions::default()
    }
}

/// Single-sequence `generate` of each prompt on its own cache.
fn one_by_one(model: &Qwen3Model, prompts: &[Vec<u32>], opts: &GenerateOptions) -> Vec<Vec<u32>> {
    prompts
        .iter()
        .map(|p| {
            let mut cache = model.new_cache(1, 8).unwrap();
            generate(model, Some(&mut cache), p, opts, &mut |_| true)
                .unwrap()
                .tokens
        })
        .collect()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

fn greedy_rows_equal_single_sequence_generation(device: Device) {
    let (model, prompts, _) = setup(device);
    let opts = greedy(10);
    let batch = generate_batch(&model, &prompts, &opts).unwrap();
    let alone = one_by_one(&model, &prompts, &opts);
    assert_eq!(batch.rows.len(), prompts.len());
    for (r, (row, want)) in batch.rows.iter().zip(&alone).enumerate() {
        assert_eq!(
            row.tokens, *want,
            "row {r} (prompt length {})",
            row.prompt_len
        );
        assert_eq!(row.finish, FinishReason::MaxTokens);
        assert_eq!(row.pad, longest(&prompts) - row.prompt_len);
    }
    assert_eq!(batch.decode_steps, 9);
    assert_eq!(batch.decode_tokens(), 9 * prompts.len());
    assert!(batch.prefill_tokens_per_s() > 0.0 && batch.decode_tokens_per_s() > 0.0);
}

fn longest(prompts: &[Vec<u32>]) -> usize {
    prompts.iter().map(Vec::len).max().unwrap()
}

#[test]
fn greedy_rows_equal_single_sequence_generation_on_cpu() {
    greedy_rows_equal_single_sequence_generation(Device::Cpu);
}

#[test]
#[ignore = "needs CUDA"]
fn greedy_rows_equal_single_sequence_generation_on_cuda() {
    greedy_rows_equal_single_sequence_generation(test_support::cuda());
}

/// Prompt logits of each padded row (every real position) and the first
/// decode step's logits equal the unpadded single-row forward within 1e-4.
#[test]
fn padded_rows_have_the_logits_of_the_prompt_alone() {
    let (model, prompts, _) = setup(Device::Cpu);
    let opts = GenerateOptions {
        keep_prompt_logits: true,
        ..greedy(1)
    };
    let batch = generate_batch(&model, &prompts, &opts).unwrap();
    let mut worst = 0f64;
    for (r, (row, prompt)) in batch.rows.iter().zip(&prompts).enumerate() {
        let ids: Vec<i64> = prompt.iter().map(|&i| i64::from(i)).collect();
        let alone = model
            .forward(&Tensor::from_slice(&ids).view([1, -1]), None)
            .unwrap()
            .get(0); // [len, vocab]
        let got = row.prompt_logits.as_ref().unwrap();
        assert_eq!(got.size(), alone.size(), "row {r}");
        let d = max_diff(got, &alone);
        println!("row {r} (pad {}): max |padded - alone| = {d:.3e}", row.pad);
        worst = worst.max(d);
    }
    assert!(worst < LOGITS_TOL, "max diff {worst} >= {LOGITS_TOL}");

    // One decode step on the padded cache vs on each row's own cache.
    let pad: Vec<usize> = batch.rows.iter().map(|r| r.pad).collect();
    let width = longest(&prompts);
    let padded: Vec<i64> = prompts
        .iter()
        .flat_map(|p| {
            let fill = std::iter::repeat_n(0i64, width - p.len());
            fill.chain(p.iter().map(|&i| i64::from(i)))
        })
        .collect();
    let mut cache = model.new_cache(prompts.len(), 4).unwrap();
    let input = Tensor::from_slice(&padded).view([prompts.len() as i64, -1]);
    let _prefilled = model
        .forward_left_padded(&input, &pad, Some(&mut cache))
        .unwrap();
    let next: Vec<i64> = (0..prompts.len() as i64).map(|r| 7 + 31 * r).collect();
    let step = model
        .forward_last_left_padded(
            &Tensor::from_slice(&next).view([-1, 1]),
            &pad,
            Some(&mut cache),
        )
        .unwrap(); // [B, 1, vocab]
    for (r, prompt) in prompts.iter().enumerate() {
        let mut own = model.new_cache(1, 4).unwrap();
        let ids: Vec<i64> = prompt.iter().map(|&i| i64::from(i)).collect();
        let _prefilled = model
            .forward(&Tensor::from_slice(&ids).view([1, -1]), Some(&mut own))
            .unwrap();
        let want = model
            .forward_last(
                &Tensor::from_slice(&next[r..=r]).view([1, 1]),
                Some(&mut own),
            )
            .unwrap();
        let d = max_diff(&step.get(r as i64), &want.get(0));
        println!("row {r}: decode step max |padded - alone| = {d:.3e}");
        assert!(d < LOGITS_TOL, "row {r}: decode step diff {d}");
    }
}

/// The product setting (bf16, packed weights on CUDA): each padded row's prompt
/// logits stay within 3e-2 of max |logit| of the row run alone (the bound the
/// fused-decode tests use for bf16 paths; batched GEMMs and the masked SDPA
/// round differently from the single-row ones).
#[test]
#[ignore = "needs CUDA"]
fn padded_rows_match_the_prompt_alone_in_bf16_on_cuda() {
    let device = test_support::cuda();
    let mut rng = StdRng::seed_from_u64(test_support::seed());
    let model = Qwen3Model::random(&tiny_config(), &LoadOptions::new(device), rng.gen()).unwrap();
    let prompts: Vec<Vec<u32>> = [40usize, 3, 17, 29]
        .iter()
        .map(|&n| (0..n).map(|_| rng.gen_range(0..VOCAB as u32)).collect())
        .collect();
    let opts = GenerateOptions {
        keep_prompt_logits: true,
        ..greedy(8)
    };
    let batch = tch::no_grad(|| generate_batch(&model, &prompts, &opts)).unwrap();
    for (r, (row, prompt)) in batch.rows.iter().zip(&prompts).enumerate() {
        let ids: Vec<i64> = prompt.iter().map(|&i| i64::from(i)).collect();
        let ids = Tensor::from_slice(&ids).view([1, -1]).to_device(device);
        let alone = tch::no_grad(|| model.forward(&ids, None)).unwrap().get(0);
        let scale = alone.abs().max().double_value(&[]);
        let d = max_diff(row.prompt_logits.as_ref().unwrap(), &alone) / scale;
        println!(
            "row {r} (pad {}): max |padded - alone| / max |logit| = {d:.3e}",
            row.pad
        );
        assert!(d < 3e-2, "row {r}: relative diff {d}");
        assert_eq!(row.tokens.len(), 8);
    }
}

/// What sits in the padding slots does not reach the real positions.
#[test]
fn padding_ids_are_never_attended() {
    let (model, prompts, mut rng) = setup(Device::Cpu);
    let width = longest(&prompts);
    let pad: Vec<usize> = prompts.iter().map(|p| width - p.len()).collect();
    let rows = |fill: &mut dyn FnMut() -> i64| -> Tensor {
        let ids: Vec<i64> = prompts
            .iter()
            .flat_map(|p| {
                let mut v: Vec<i64> = (0..width - p.len()).map(|_| fill()).collect();
                v.extend(p.iter().map(|&i| i64::from(i)));
                v
            })
            .collect();
        Tensor::from_slice(&ids).view([prompts.len() as i64, -1])
    };
    let a = model
        .forward_left_padded(&rows(&mut || 0), &pad, None)
        .unwrap();
    let b = model
        .forward_left_padded(&rows(&mut || rng.gen_range(0..VOCAB as i64)), &pad, None)
        .unwrap();
    for (r, &p) in pad.iter().enumerate() {
        let real = |t: &Tensor| t.get(r as i64).narrow(0, p as i64, (width - p) as i64);
        let d = max_diff(&real(&a), &real(&b));
        println!("row {r} (pad {p}): max change from the padding ids = {d:.3e}");
        assert!(d <= 1e-6, "row {r}: padding ids moved real logits by {d}");
    }
}

/// A row that draws a stop token ends there; the others go on to
/// `max_new_tokens`, each equal to its own run up to its own stop.
#[test]
fn a_row_that_stops_ends_while_the_others_continue() {
    let (model, prompts, _) = setup(Device::Cpu);
    let free = one_by_one(&model, &prompts, &greedy(10));
    // A token first drawn by row 0 before its last step that some other row never draws.
    let (at, stop) = free[0]
        .iter()
        .enumerate()
        .take(9)
        .find(|&(i, t)| !free[0][..i].contains(t) && free[1..].iter().any(|f| !f.contains(t)))
        .map(|(i, &t)| (i, t))
        .expect("10 greedy draws from 384 tokens give such a token");
    let opts = GenerateOptions {
        stop_ids: vec![stop],
        ..greedy(10)
    };
    let batch = generate_batch(&model, &prompts, &opts).unwrap();
    let row0 = &batch.rows[0];
    assert_eq!(row0.tokens, free[0][..=at]);
    assert_eq!(
        (row0.finish, row0.stopped_on),
        (FinishReason::StopToken, Some(stop))
    );
    let mut continued = 0;
    for (r, (row, f)) in batch.rows.iter().zip(&free).enumerate().skip(1) {
        match f.iter().position(|&t| t == stop) {
            Some(i) => {
                assert_eq!(row.tokens, f[..=i], "row {r}");
                assert_eq!(row.finish, FinishReason::StopToken, "row {r}");
            }
            None => {
                assert_eq!(row.tokens, *f, "row {r}");
                assert_eq!(
                    (row.finish, row.stopped_on),
                    (FinishReason::MaxTokens, None)
                );
                continued += 1;
            }
        }
    }
    assert!(continued > 0, "some row must run to max_new_tokens");
    assert_eq!(
        batch.decode_steps, 9,
        "the batch runs until its last row ends"
    );
}

/// Row r samples with seed + r: it draws what `generate` draws with that seed.
#[test]
fn sampled_rows_follow_their_own_seeds() {
    let (model, prompts, mut rng) = setup(Device::Cpu);
    let sampling = SamplingParams {
        temperature: 1.3,
        top_k: Some(50),
        repetition_penalty: 1.2,
        seed: rng.gen(),
        ..SamplingParams::greedy()
    };
    let opts = GenerateOptions {
        max_new_tokens: 8,
        sampling: sampling.clone(),
        ..GenerateOptions::default()
    };
    let batch = generate_batch(&model, &prompts, &opts).unwrap();
    for (r, (row, prompt)) in batch.rows.iter().zip(&prompts).enumerate() {
        let own = GenerateOptions {
            sampling: SamplingParams {
                seed: sampling.seed.wrapping_add(r as u64),
                ..sampling.clone()
            },
            ..opts.clone()
        };
        let want = generate(&model, None, prompt, &own, &mut |_| true).unwrap();
        assert_eq!(row.tokens, want.tokens, "row {r}");
    }
}

#[test]
fn bad_batches_are_errors_that_name_the_problem() {
    let (model, prompts, _) = setup(Device::Cpu);
    let opts = greedy(4);
    let mut with_empty = prompts.clone();
    with_empty[2].clear();
    let mut out_of_vocab = prompts.clone();
    out_of_vocab[1] = vec![3, VOCAB as u32];
    let bad_temperature = GenerateOptions {
        sampling: SamplingParams {
            temperature: f64::NAN,
            ..SamplingParams::greedy()
        },
        ..opts.clone()
    };
    let cases: [(&[Vec<u32>], &GenerateOptions, &str); 4] = [
        (&[], &opts, "no prompts"),
        (&with_empty, &opts, "prompt 2 has no tokens"),
        (
            &out_of_vocab,
            &opts,
            "prompt 1: id 384 at index 1 is outside the vocabulary (size 384)",
        ),
        (&prompts, &bad_temperature, "temperature"),
    ];
    for (batch, opts, needle) in cases {
        let err = generate_batch(&model, batch, opts).unwrap_err();
        assert!(
            matches!(
                err,
                qwen3_model::Error::BadInput { .. } | qwen3_model::Error::InvalidArgument { .. }
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains(needle), "{err}");
    }
    // The model-level padding check: a count per row, and a real slot left in each.
    let ids = Tensor::from_slice(&[1i64, 2, 3, 4]).view([2, 2]);
    for (pad, needle) in [
        (vec![0], "1 padding counts for a batch of 2"),
        (vec![0, 2], "row 1 has 2 padding slots of 2"),
    ] {
        let err = model
            .forward_left_padded(&ids, &pad, None)
            .unwrap_err()
            .to_string();
        assert!(err.contains(needle), "{err}");
    }
}
