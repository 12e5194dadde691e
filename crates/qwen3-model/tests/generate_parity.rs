//! `generate()` against Hugging Face on the parity fixtures
//! (`tests/fixtures/parity/`, written by `scripts/gen_parity_fixtures.py`):
//! greedy ids equal HF `generate`'s in all three ways of running (no cache,
//! cache + pbp, cache + tbt), and the prompt logits each returns match HF's
//! whole-prompt logits within 1e-5 of max |logit|.

mod common;

use common::{assert_close, cases};
use qwen3_model::{generate, FinishReason, GenerateOptions, PrefillMode};

#[test]
fn greedy_ids_equal_transformers_in_every_mode() {
    tch::no_grad(|| {
        for case in cases() {
            let model = case.model();
            for p in ["a", "b"] {
                let prompt: Vec<u32> = case
                    .ids(&format!("prompt_{p}"))
                    .iter()
                    .map(|&i| i as u32)
                    .collect();
                let want: Vec<u32> = case
                    .ids(&format!("greedy_{p}"))
                    .iter()
                    .map(|&i| i as u32)
                    .collect();
                let hf_logits = case.tensor(&format!("logits_{p}"));
                for (mode, cached, prefill) in [
                    ("no cache", false, PrefillMode::PromptByPrompt),
                    ("cache pbp", true, PrefillMode::PromptByPrompt),
                    ("cache tbt", true, PrefillMode::TokenByToken),
                ] {
                    let what = format!("{} prompt {p} {mode}", case.name);
                    let opts = GenerateOptions {
                        max_new_tokens: want.len(),
                        prefill,
                        keep_prompt_logits: true,
                        ..GenerateOptions::default()
                    };
                    let mut cache = cached.then(|| model.new_cache(1, 4).unwrap());
                    let g =
                        generate(&model, cache.as_mut(), &prompt, &opts, &mut |_| true).unwrap();
                    assert_eq!(g.tokens, want, "{what}: greedy ids");
                    assert_eq!(g.finish, FinishReason::MaxTokens, "{what}");
                    assert_close(&what, g.prompt_logits.as_ref().unwrap(), hf_logits);
                }
            }
        }
    })
}
