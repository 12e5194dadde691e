//! The batched greedy decoding of the exact-match check gives the same
//! tokens as the project's `qwen3_model::generate`, prompt by prompt.

mod common;

use qwen3_model::{generate, GenerateOptions};
use rand::{Rng, SeedableRng};
use trainer::greedy_answers;

#[test]
fn batched_greedy_answers_equal_generate_one_by_one() {
    let seed = test_support::seed();
    let cfg = common::tiny_config(300, true);
    let model = common::tiny_model(&cfg, seed);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    // Three lengths, several prompts each: batches of equal length.
    let prompts: Vec<Vec<u32>> = (0..9)
        .map(|i| (0..(4 + i % 3)).map(|_| rng.gen_range(3..300)).collect())
        .collect();
    let stops = [7u32, 11];
    let refs: Vec<&[u32]> = prompts.iter().map(|p| p.as_slice()).collect();
    let batched = greedy_answers(&model, &refs, 12, &stops).unwrap();
    let opts = GenerateOptions {
        max_new_tokens: 12,
        stop_ids: stops.to_vec(),
        ..Default::default()
    };
    for (p, b) in prompts.iter().zip(&batched) {
        let mut cache = model.new_cache(1, 32).unwrap();
        let g =
            tch::no_grad(|| generate(&model, Some(&mut cache), p, &opts, &mut |_| true)).unwrap();
        assert_eq!(b.tokens, g.tokens, "prompt {p:?}");
        assert_eq!(b.stopped_on, g.stopped_on);
    }
    println!("{} prompts: batched greedy == generate", prompts.len());
}
