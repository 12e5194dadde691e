//! Generation on a small random model: the three ways of running it (no cache,
//! cache + prompt-by-prompt, cache + token-by-token) agree, stop conditions
//! work, seeds reproduce, and multi-turn on a persistent cache equals
//! recomputing the whole conversation.

mod common;

use common::GEN_VOCAB as VOCAB;
use qwen3_model::{
    generate, Conversation, FinishReason, GenerateOptions, Generation, PrefillMode, Qwen3Model,
    SamplingParams,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tch::{Device, Tensor};

/// A random model and a random prompt; the seed is printed for reproduction.
fn setup(device: Device) -> (Qwen3Model, Vec<u32>, StdRng) {
    let mut rng = StdRng::seed_from_u64(test_support::seed());
    let model = common::generation_model(device, rng.gen());
    let prompt = (0..rng.gen_range(5..20))
        .map(|_| rng.gen_range(0..VOCAB as u32))
        .collect();
    (model, prompt, rng)
}

fn greedy(max_new_tokens: usize, prefill: PrefillMode) -> GenerateOptions {
    GenerateOptions {
        max_new_tokens,
        prefill,
        keep_prompt_logits: true,
        ..GenerateOptions::default()
    }
}

/// (no cache, cache pbp, cache tbt)
fn three_modes(model: &Qwen3Model, prompt: &[u32], opts: &GenerateOptions) -> [Generation; 3] {
    let run = |cached: bool, prefill| {
        let mut cache = cached.then(|| model.new_cache(1, 8).unwrap());
        let opts = GenerateOptions {
            prefill,
            ..opts.clone()
        };
        generate(model, cache.as_mut(), prompt, &opts, &mut |_| true).unwrap()
    };
    [
        run(false, PrefillMode::PromptByPrompt),
        run(true, PrefillMode::PromptByPrompt),
        run(true, PrefillMode::TokenByToken),
    ]
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

fn modes_agree_on(device: Device, test: &str) {
    let (model, prompt, _) = setup(device);
    let [none, pbp, tbt] = three_modes(&model, &prompt, &greedy(12, PrefillMode::PromptByPrompt));
    assert_eq!(none.tokens.len(), 12);
    assert_eq!(none.tokens, pbp.tokens, "no cache vs cache pbp");
    assert_eq!(none.tokens, tbt.tokens, "no cache vs cache tbt");
    // Prompt logits of every position: f32 on both sides, tolerance 1e-4.
    let ids: Vec<i64> = prompt.iter().map(|&i| i as i64).collect();
    let direct = model
        .forward(&Tensor::from_slice(&ids).view([1, -1]), None)
        .unwrap()
        .get(0);
    for (name, g) in [("no cache", &none), ("pbp", &pbp), ("tbt", &tbt)] {
        let logits = g.prompt_logits.as_ref().unwrap();
        assert_eq!(
            logits.size(),
            vec![prompt.len() as i64, VOCAB as i64],
            "{name}"
        );
        let d = max_diff(logits, &direct);
        eprintln!("{test}: {name} prompt logits max |diff| vs forward = {d:.3e}");
        assert!(d < 1e-4, "{name}: max diff {d}");
    }
}

#[test]
fn greedy_ids_and_prompt_logits_agree_across_the_three_modes() {
    modes_agree_on(Device::Cpu, "cpu modes");
}

#[test]
#[ignore = "needs CUDA"]
fn greedy_ids_agree_across_the_three_modes_on_cuda() {
    test_support::cuda();
    modes_agree_on(Device::Cuda(0), "cuda modes");
}

#[test]
fn a_seed_reproduces_sampled_tokens_in_every_mode() {
    let (model, prompt, mut rng) = setup(Device::Cpu);
    let sampling = SamplingParams {
        temperature: 1.5,
        top_p: Some(0.98),
        seed: rng.gen(),
        ..SamplingParams::greedy()
    };
    let opts = GenerateOptions {
        max_new_tokens: 16,
        sampling: sampling.clone(),
        ..GenerateOptions::default()
    };
    let [a, b, c] = three_modes(&model, &prompt, &opts);
    assert_eq!(a.tokens, b.tokens);
    assert_eq!(a.tokens, c.tokens);
    let other = GenerateOptions {
        sampling: SamplingParams {
            seed: sampling.seed ^ 1,
            ..sampling
        },
        ..opts
    };
    let d = generate(&model, None, &prompt, &other, &mut |_| true).unwrap();
    assert_ne!(
        a.tokens, d.tokens,
        "16 draws at temperature 1.5 from ~384 tokens cannot all coincide"
    );
}

#[test]
fn a_stop_id_ends_generation_and_is_not_streamed() {
    let (model, prompt, _) = setup(Device::Cpu);
    let free = generate(
        &model,
        None,
        &prompt,
        &greedy(10, PrefillMode::PromptByPrompt),
        &mut |_| true,
    )
    .unwrap();
    assert_eq!(free.finish, FinishReason::MaxTokens);
    // The first position whose token has not appeared before it.
    let at = (0..free.tokens.len())
        .find(|&i| !free.tokens[..i].contains(&free.tokens[i]))
        .unwrap();
    let stop = free.tokens[at];
    let opts = GenerateOptions {
        stop_ids: vec![stop],
        ..greedy(10, PrefillMode::TokenByToken)
    };
    let mut streamed = Vec::new();
    let mut cache = model.new_cache(1, 4).unwrap();
    let g = generate(&model, Some(&mut cache), &prompt, &opts, &mut |t| {
        streamed.push(t);
        true
    })
    .unwrap();
    assert_eq!(g.tokens, free.tokens[..=at]);
    assert_eq!(
        (g.finish, g.stopped_on),
        (FinishReason::StopToken, Some(stop))
    );
    assert_eq!(streamed, free.tokens[..at]);
    assert_eq!(
        cache.len(),
        prompt.len() + at,
        "the stop token is returned, not fed"
    );
}

#[test]
fn a_callback_returning_false_stops_after_that_token() {
    let (model, prompt, _) = setup(Device::Cpu);
    let mut seen = 0;
    let g = generate(
        &model,
        None,
        &prompt,
        &greedy(10, PrefillMode::PromptByPrompt),
        &mut |_| {
            seen += 1;
            seen < 3
        },
    )
    .unwrap();
    assert_eq!(
        (g.tokens.len(), g.finish, g.stopped_on),
        (3, FinishReason::Callback, None)
    );
    assert!(g.prefill_tokens_per_s() > 0.0);
}

#[test]
fn zero_new_tokens_still_returns_the_prompt_logits() {
    let (model, prompt, _) = setup(Device::Cpu);
    let g = generate(
        &model,
        None,
        &prompt,
        &greedy(0, PrefillMode::PromptByPrompt),
        &mut |_| true,
    )
    .unwrap();
    assert!(g.tokens.is_empty());
    assert_eq!(
        g.prompt_logits.unwrap().size(),
        vec![prompt.len() as i64, VOCAB as i64]
    );
}

/// Turn-by-turn on one cache equals one no-cache generate over the whole
/// conversation, repetition penalty included (it must see earlier turns).
#[test]
fn conversation_on_a_kept_cache_equals_recomputing_the_whole_sequence() {
    let (model, first, mut rng) = setup(Device::Cpu);
    let second: Vec<u32> = (0..7).map(|_| rng.gen_range(0..VOCAB as u32)).collect();
    let sampling = SamplingParams {
        repetition_penalty: 1.4,
        ..SamplingParams::greedy()
    };
    let opts = GenerateOptions {
        max_new_tokens: 6,
        sampling,
        ..GenerateOptions::default()
    };
    let mut conv = Conversation::new(model.new_cache(1, 4).unwrap());
    let g1 = conv.turn(&model, &first, &opts, &mut |_| true).unwrap();
    assert_eq!(
        conv.unfed(),
        &g1.tokens[g1.tokens.len() - 1..],
        "the last sampled token waits for the next turn"
    );
    let g2 = conv.turn(&model, &second, &opts, &mut |_| true).unwrap();
    assert_eq!(
        g2.prompt_len,
        1 + second.len(),
        "turn 2 feeds only the unfed token and the new ids"
    );

    let whole: Vec<u32> = [first.as_slice(), &g1.tokens, &second].concat();
    let recomputed = generate(&model, None, &whole, &opts, &mut |_| true).unwrap();
    assert_eq!(g2.tokens, recomputed.tokens);
    assert_eq!(conv.ids(), [whole.as_slice(), &g2.tokens].concat());
    assert_eq!(conv.cache().len(), conv.ids().len() - 1);
}

#[test]
fn bad_requests_are_errors_that_leave_the_cache_untouched() {
    let (model, prompt, _) = setup(Device::Cpu);
    let mut cache = model.new_cache(1, 4).unwrap();
    let opts = greedy(4, PrefillMode::PromptByPrompt);
    let cases: [(Vec<u32>, GenerateOptions, &str); 3] = [
        (vec![], opts.clone(), "no tokens"),
        (
            vec![1, VOCAB as u32 + 5],
            opts.clone(),
            "outside the vocabulary",
        ),
        (
            prompt.clone(),
            GenerateOptions {
                sampling: SamplingParams {
                    temperature: -1.0,
                    ..SamplingParams::greedy()
                },
                ..opts
            },
            "temperature",
        ),
    ];
    for (ids, opts, needle) in cases {
        let err = generate(&model, Some(&mut cache), &ids, &opts, &mut |_| true)
            .unwrap_err()
            .to_string();
        assert!(err.contains(needle), "{err}");
        assert_eq!(cache.len(), 0);
    }
}

#[test]
fn prefill_mode_parses_its_spellings() {
    assert_eq!(
        "tbt".parse::<PrefillMode>().unwrap(),
        PrefillMode::TokenByToken
    );
    assert_eq!(
        "pbp".parse::<PrefillMode>().unwrap(),
        PrefillMode::PromptByPrompt
    );
    let err = "batch".parse::<PrefillMode>().unwrap_err().to_string();
    assert!(err.contains("\"batch\"") && err.contains("tbt"), "{err}");
    assert_eq!(PrefillMode::TokenByToken.to_string(), "tbt");
}
