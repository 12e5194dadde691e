//! Tiny CPU versions of the quality experiment's paths (docs/QUALITY.md):
//! pretraining from a fresh init on a few KB of real text, post-training
//! quantization with scale statistics, one QAD step, and held-out eval.

mod common;

use std::collections::HashMap;

use qwen3_model::{LoadOptions, QuantRecipe, Qwen3Model, ScaleMode};
use tch::{Device, Kind, Tensor};
use tokenizer_bridge::Qwen3Tokenizer;
use trainer::{
    distill_forward_backward, evaluate_loss, load_text_tokens, make_batch, reference_ce_sum,
    text_windows, BackpropPlan, Dataset, Teacher, TrainConfig, Trainer,
};

const TEXT: &str = "It was a bright cold day in April, and the clocks were striking thirteen. \
The hallway smelt of boiled cabbage and old rag mats. At one end of it a coloured poster, \
too large for indoor display, had been tacked to the wall.\n";

fn text_data(seq_len: usize) -> (Dataset, Vec<u32>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("books.txt");
    std::fs::write(&path, TEXT.repeat(12)).unwrap();
    let tok = Qwen3Tokenizer::bundled().unwrap();
    let cache = dir.path().join("cache");
    let ids = load_text_tokens(&path, &tok, Some(&cache)).unwrap();
    assert_eq!(ids, tok.encode(&TEXT.repeat(12), false).unwrap());
    // The second load reads the token file.
    assert!(cache.join("books.txt.tokens").exists());
    assert_eq!(load_text_tokens(&path, &tok, Some(&cache)).unwrap(), ids);
    (text_windows(&path, &ids, seq_len).unwrap(), ids)
}

fn fresh(seed: u64) -> Qwen3Model {
    let cfg = common::tiny_config(151936, true);
    Qwen3Model::init_dense(&cfg, &LoadOptions::new(Device::Cpu), seed, 0.02).unwrap()
}

fn cfg(steps: u64, lr: f64) -> TrainConfig {
    TrainConfig {
        steps: Some(steps),
        batch_size: 4,
        seq_len: 33,
        lr,
        progress: false,
        ..Default::default()
    }
}

#[test]
fn pretraining_from_a_fresh_init_lowers_the_text_loss() {
    let (data, _) = text_data(32);
    let mut t = Trainer::new(fresh(test_support::seed()), cfg(12, 1e-2), data.clone(), 0).unwrap();
    let before = evaluate_loss(t.model(), &data, 8, &mut |_, _| {}).unwrap();
    // A fresh init predicts close to uniformly over the vocabulary.
    assert!(
        (before.mean_loss - (151936f64).ln()).abs() < 0.5,
        "{before:?}"
    );
    t.train().unwrap();
    let after = evaluate_loss(t.model(), &data, 8, &mut |_, _| {}).unwrap();
    assert_eq!(after.tokens, before.tokens);
    assert!(
        after.mean_loss < before.mean_loss - 1.0,
        "{before:?} -> {after:?}"
    );
}

#[test]
fn eval_scores_every_token_once_and_equals_the_full_forward() {
    let (data, ids) = text_data(16);
    let mut model = fresh(test_support::seed());
    model.set_recipe(&QuantRecipe::nvfp4(ScaleMode::TwoLevel, true));
    let r = evaluate_loss(&model, &data, 3, &mut |_, _| {}).unwrap();
    assert_eq!(r.tokens as usize, ids.len() - 1);
    let refs: Vec<_> = data.examples.iter().collect();
    let mut sum = 0.0;
    for chunk in refs.chunks(5) {
        let b = make_batch(chunk, 0, Device::Cpu);
        sum += tch::no_grad(|| reference_ce_sum(&model, &b.input_ids, &b.labels))
            .unwrap()
            .double_value(&[]);
    }
    let want = sum / r.tokens as f64;
    assert!(
        (r.mean_loss - want).abs() <= 1e-5 * want,
        "{} vs {want}",
        r.mean_loss
    );
    assert!((r.perplexity - want.exp()).abs() <= 1e-4 * want.exp());
}

#[test]
fn ptq_costs_loss_and_two_level_scales_leave_the_subnormal_range() {
    let model = fresh(test_support::seed());
    let single = model.scale_stats(ScaleMode::Single, false).unwrap();
    let two = model.scale_stats(ScaleMode::TwoLevel, false).unwrap();
    assert_eq!(single.blocks, two.blocks);
    // normal(0, 0.02) blocks have amax ~0.05: amax / 6 is below 2^-6.
    assert!(single.subnormal_share() > 0.9, "{single:?}");
    assert!(two.subnormal_share() < 0.01, "{two:?}");
    let (data, _) = text_data(16);
    let mut m = model;
    let loss = |m: &mut Qwen3Model, r: QuantRecipe| {
        m.set_recipe(&r);
        evaluate_loss(m, &data, 8, &mut |_, _| {})
            .unwrap()
            .mean_loss
    };
    let dense = loss(&mut m, QuantRecipe::DENSE);
    let w4 = loss(&mut m, QuantRecipe::nvfp4(ScaleMode::TwoLevel, false));
    let mut head = QuantRecipe::nvfp4(ScaleMode::TwoLevel, true);
    head.head = true;
    let w4a4h = loss(&mut m, head);
    assert!(dense != w4 && w4 != w4a4h, "{dense} {w4} {w4a4h}");
    // Keeping every block dense leaves only the (dense) head: the dense loss.
    let mut keep = QuantRecipe::nvfp4(ScaleMode::TwoLevel, true);
    keep.keep_last_blocks = 2;
    assert_eq!(loss(&mut m, keep), dense);
}

fn grads(model: &Qwen3Model) -> HashMap<String, Tensor> {
    model
        .named_parameters()
        .into_iter()
        .map(|(n, t)| (n, t.grad().copy()))
        .collect()
}

#[test]
fn one_qad_step_is_chunk_invariant_and_moves_the_student_towards_the_teacher() {
    let (data, _) = text_data(16);
    let seed = test_support::seed();
    let teacher_model = || fresh(seed).into_trainable(Kind::Float, None).unwrap();
    let mut student = fresh(seed);
    student.set_recipe(&{
        let mut r = QuantRecipe::nvfp4(ScaleMode::TwoLevel, true);
        r.head = true;
        r
    });
    let student = student.into_trainable(Kind::Float, None).unwrap();
    let refs: Vec<_> = data.examples.iter().take(3).collect();
    let b = make_batch(&refs, 0, Device::Cpu);
    let plan = BackpropPlan {
        first_trained_layer: 0,
        recompute_every: 0,
        written_out: false,
    };
    let run = |chunk: usize, recompute_every: usize, written_out: bool| {
        for (_, mut p) in student.named_parameters() {
            p.zero_grad();
        }
        let mut t = Teacher::new(teacher_model(), 0.7).unwrap();
        t.chunk = chunk;
        let plan = BackpropPlan {
            recompute_every,
            written_out,
            ..plan
        };
        let s =
            distill_forward_backward(&student, &t, &b.input_ids, &b.labels, 10.0, plan).unwrap();
        (s, grads(&student))
    };
    let (whole, g_whole) = run(4096, 0, false);
    // Chunked, recomputed, and through the written-out blocks.
    let (chunked, g_chunked) = run(7, 1, true);
    // The student is the teacher quantized: the KL is small but not zero.
    assert!(whole.kl > 0.0 && whole.kl < whole.ce, "{whole:?}");
    assert!((whole.kl - chunked.kl).abs() < 1e-4 * whole.kl);
    assert!((whole.ce - chunked.ce).abs() < 1e-5 * whole.ce);
    for (name, g) in &g_whole {
        let diff = (g - &g_chunked[name]).abs().max().double_value(&[]);
        let scale = g.abs().max().double_value(&[]).max(1e-12);
        assert!(diff <= 1e-4 * scale, "{name}: {diff} vs {scale}");
    }
    // A short step against the pure-KL gradient lowers the KL on that batch.
    // The student here is dense (an exact gradient; through the quantizer the
    // STE gradient is not one, and a step can cross a rounding boundary) and
    // starts from other weights, so the KL is well above zero.
    let teacher = Teacher::new(teacher_model(), 1.0).unwrap();
    let student = fresh(seed ^ 0x9e37_79b9)
        .into_trainable(Kind::Float, None)
        .unwrap();
    for (_, mut p) in student.named_parameters() {
        p.zero_grad();
    }
    let before =
        distill_forward_backward(&student, &teacher, &b.input_ids, &b.labels, 10.0, plan).unwrap();
    let g = grads(&student);
    let norm: f64 = g
        .values()
        .map(|t| t.square().sum(Kind::Double).double_value(&[]))
        .sum::<f64>()
        .sqrt();
    tch::no_grad(|| {
        for (name, mut p) in student.named_parameters() {
            let _ = p.f_sub_(&(&g[&name] * (1e-3 / norm))).unwrap();
        }
    });
    let after =
        distill_forward_backward(&student, &teacher, &b.input_ids, &b.labels, 10.0, plan).unwrap();
    assert!(after.kl < before.kl, "{before:?} -> {after:?}");
    assert!(Teacher::new(teacher_model(), 1.5).is_err());
}
