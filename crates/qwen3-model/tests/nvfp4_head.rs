//! The NVFP4 copy of a tied head (issue 15) computes what the quality
//! experiment measured as "+head": the tied embedding rounded to NVFP4
//! where it computes logits, the lookup left dense.

mod common;

use common::{random_ids, tiny_cfg};
use qwen3_model::{LoadOptions, QuantRecipe, Qwen3Model, ScaleMode};
use tch::Device;

fn logits(model: &Qwen3Model, ids: &tch::Tensor) -> tch::Tensor {
    tch::no_grad(|| model.forward(ids, None).unwrap())
}

#[test]
fn a_packed_copy_of_the_tied_head_equals_the_recipe_that_rounds_it() {
    let cfg = tiny_cfg(true);
    let opts = LoadOptions::new(Device::Cpu);
    let seed = test_support::seed();
    let ids = random_ids(cfg.vocab_size, 2, 7);
    for mode in [ScaleMode::Single, ScaleMode::TwoLevel] {
        let dense = Qwen3Model::random(&cfg, &opts, seed).unwrap();
        let mut packed = Qwen3Model::random(&cfg, &opts, seed).unwrap();
        packed.quantize_tied_head(mode).unwrap();
        assert!(!packed.uses_tied_head());
        let mut rounded = Qwen3Model::random(&cfg, &opts, seed).unwrap();
        let mut recipe = QuantRecipe::nvfp4(mode, false);
        recipe.head = true;
        rounded.set_recipe(&recipe);

        let (p, r, d) = (
            logits(&packed, &ids),
            logits(&rounded, &ids),
            logits(&dense, &ids),
        );
        let scale = d.abs().max().double_value(&[]);
        let same = (&p - &r).abs().max().double_value(&[]) / scale;
        let moved = (&p - &d).abs().max().double_value(&[]) / scale;
        println!("{mode:?}: |packed - recipe| = {same:e}, |packed - dense| = {moved:e} (relative)");
        assert!(
            same < 1e-5,
            "{mode:?}: packed head differs from the rounding recipe"
        );
        assert!(moved > 1e-3, "{mode:?}: the head was not rounded at all");
    }
    // A model with its own head has nothing to copy.
    let mut untied = Qwen3Model::random(&tiny_cfg(false), &opts, seed).unwrap();
    let e = untied.quantize_tied_head(ScaleMode::TwoLevel).unwrap_err();
    assert!(e.to_string().contains("own lm_head"), "{e}");
}
