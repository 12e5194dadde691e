//! Gradients of the training forward:
//! - the STE gradient of every master weight equals the gradient of an
//!   independent dense f64 Qwen3 forward (written here from docs/Formats.md,
//!   "Qwen3 forward")
//!   taken at the dequantized weights dequant(quant(W));
//! - activation checkpointing gives the same gradients as the full graph;
//! - `--train-last-layers` trains (and allocates optimizer state for) only
//!   the last blocks.

mod common;

use std::collections::HashMap;

use tch::{Device, Kind, Reduction, Tensor};
use trainer::{forward_backward, make_batch, BackpropPlan, TrainConfig, Trainer, IGNORE_INDEX};

fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Tensor {
    x / (x.square().mean_dim(-1, true, Kind::Double) + eps).sqrt() * w
}

fn rotate_half(x: &Tensor) -> Tensor {
    let half = x.size()[x.dim() - 1] / 2;
    Tensor::cat(&[-x.narrow(-1, half, half), x.narrow(-1, 0, half)], -1)
}

/// The Qwen3 forward of docs/Formats.md in f64 with dense weights `w` (HF keys);
/// returns the CE sum over labelled positions.
fn reference_ce(
    w: &HashMap<String, Tensor>,
    cfg: &qwen3_model::Qwen3Config,
    ids: &Tensor,
    labels: &Tensor,
) -> Tensor {
    let (b, t) = (ids.size()[0], ids.size()[1]);
    let (nh, nkv, hd) = (
        cfg.num_attention_heads as i64,
        cfg.num_key_value_heads as i64,
        cfg.head_dim as i64,
    );
    let eps = cfg.rms_norm_eps;
    let lin = |x: &Tensor, k: &str| x.matmul(&w[k].tr());
    let mut x = w["model.embed_tokens.weight"]
        .index_select(0, &ids.reshape([-1]))
        .reshape([b, t, -1]);
    // RoPE tables: angle[p, i] = p * theta^(-2i/hd), duplicated over both halves.
    let inv = Tensor::arange_start_step(0, hd, 2, (Kind::Double, Device::Cpu))
        * (-cfg.rope_theta.ln() / hd as f64);
    let ang = Tensor::arange(t, (Kind::Double, Device::Cpu)).unsqueeze(1) * inv.exp().unsqueeze(0);
    let ang = Tensor::cat(&[&ang, &ang], -1); // [T, hd]
    let (cos, sin) = (ang.cos(), ang.sin());
    let causal = Tensor::ones([t, t], (Kind::Bool, Device::Cpu)).triu(1);
    for l in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{l}");
        let h = rms_norm(&x, &w[&format!("{p}.input_layernorm.weight")], eps);
        let q = lin(&h, &format!("{p}.self_attn.q_proj.weight")).reshape([b, t, nh, hd]);
        let k = lin(&h, &format!("{p}.self_attn.k_proj.weight")).reshape([b, t, nkv, hd]);
        let v = lin(&h, &format!("{p}.self_attn.v_proj.weight")).reshape([b, t, nkv, hd]);
        let q = rms_norm(&q, &w[&format!("{p}.self_attn.q_norm.weight")], eps).transpose(1, 2); // [B, nh, T, hd]
        let k = rms_norm(&k, &w[&format!("{p}.self_attn.k_norm.weight")], eps).transpose(1, 2);
        let q = &q * &cos + rotate_half(&q) * &sin;
        let k = &k * &cos + rotate_half(&k) * &sin;
        let k = k.repeat_interleave_self_int(nh / nkv, 1, None);
        let v = v
            .transpose(1, 2)
            .repeat_interleave_self_int(nh / nkv, 1, None);
        let scores = q.matmul(&k.transpose(2, 3)) / (hd as f64).sqrt();
        let att = scores
            .masked_fill(&causal, f64::NEG_INFINITY)
            .softmax(-1, Kind::Double)
            .matmul(&v);
        let att = att.transpose(1, 2).reshape([b, t, nh * hd]);
        x = &x + lin(&att, &format!("{p}.self_attn.o_proj.weight"));
        let h = rms_norm(&x, &w[&format!("{p}.post_attention_layernorm.weight")], eps);
        let gate = lin(&h, &format!("{p}.mlp.gate_proj.weight")).silu();
        let up = lin(&h, &format!("{p}.mlp.up_proj.weight"));
        x = &x + lin(&(gate * up), &format!("{p}.mlp.down_proj.weight"));
    }
    let x = rms_norm(&x, &w["model.norm.weight"], eps);
    let head = w
        .get("lm_head.weight")
        .unwrap_or(&w["model.embed_tokens.weight"]);
    let logits = x.matmul(&head.tr()).reshape([b * t, -1]);
    logits.cross_entropy_loss::<Tensor>(
        &labels.reshape([-1]),
        None,
        Reduction::Sum,
        IGNORE_INDEX,
        0.0,
    )
}

fn is_projection(name: &str) -> bool {
    name.ends_with("_proj.weight") || name == "lm_head.weight"
}

fn max_rel_diff(a: &Tensor, b: &Tensor) -> f64 {
    let scale = b.abs().max().double_value(&[]).max(1e-12);
    (a.to_kind(Kind::Double) - b.to_kind(Kind::Double))
        .abs()
        .max()
        .double_value(&[])
        / scale
}

#[test]
fn ste_gradient_equals_the_dense_gradient_at_the_dequantized_weights() {
    // Through autograd and through the written-out blocks alike.
    for (tied, written_out) in [(true, false), (false, false), (true, true), (false, true)] {
        let seed = test_support::seed();
        let cfg = common::tiny_config(256, tied);
        let model = common::tiny_model(&cfg, seed)
            .into_trainable(Kind::Float, None)
            .unwrap();
        let data = common::random_dataset(4, 256, seed);
        let refs: Vec<_> = data.examples.iter().collect();
        let batch = make_batch(&refs, 0, Device::Cpu);
        let denom = batch.target_tokens as f64;
        let plan = BackpropPlan {
            first_trained_layer: 0,
            recompute_every: 0,
            written_out,
        };
        let ce = forward_backward(&model, &batch.input_ids, &batch.labels, denom, plan).unwrap();

        // Dense f64 leaves: projections at dequant(quant(W)), the rest as is.
        let params = model.named_parameters();
        let leaves: HashMap<String, Tensor> = params
            .iter()
            .map(|(n, p)| {
                let dense = if is_projection(n) {
                    nvfp4_kernels::fake_quantize(&p.detach(), nvfp4_kernels::ScaleMode::Single)
                } else {
                    p.detach()
                };
                (
                    n.clone(),
                    dense.to_kind(Kind::Double).set_requires_grad(true),
                )
            })
            .collect();
        let ref_ce = reference_ce(&leaves, &cfg, &batch.input_ids, &batch.labels);
        println!(
            "tied={tied} written_out={written_out}: loss {:.6} vs f64 reference {:.6}",
            ce / denom,
            ref_ce.double_value(&[]) / denom
        );
        assert!((ce - ref_ce.double_value(&[])).abs() <= 1e-4 * ref_ce.double_value(&[]).abs());
        (ref_ce / denom).backward();
        let mut worst = (0f64, String::new());
        for (name, p) in &params {
            let d = max_rel_diff(&p.grad(), &leaves[name].grad());
            if d > worst.0 {
                worst = (d, name.clone());
            }
        }
        println!(
            "tied={tied} written_out={written_out}: max relative gradient difference {:.3e} ({})",
            worst.0, worst.1
        );
        assert!(
            worst.0 < 1e-4,
            "STE gradient differs from the dense gradient (tolerance 1e-4 of each tensor's max)"
        );
    }
}

fn grads_of(
    model: &qwen3_model::Qwen3Model,
    plan: BackpropPlan,
    batch: &trainer::Batch,
) -> Vec<(String, Tensor)> {
    let params = model.named_parameters();
    for (_, p) in &params {
        let mut p = p.shallow_clone();
        p.zero_grad();
    }
    forward_backward(
        model,
        &batch.input_ids,
        &batch.labels,
        batch.target_tokens as f64,
        plan,
    )
    .unwrap();
    params
        .into_iter()
        .map(|(n, p)| (n, p.grad().copy()))
        .collect()
}

#[test]
fn activation_checkpointing_gives_the_full_graph_gradients() {
    for (tied, first) in [(true, 0usize), (false, 0), (true, 1)] {
        let seed = test_support::seed();
        let cfg = common::tiny_config(256, tied);
        let k = (first > 0).then_some(cfg.num_hidden_layers - first);
        let model = common::tiny_model(&cfg, seed)
            .into_trainable(Kind::Float, k)
            .unwrap();
        let data = common::random_dataset(5, 256, seed);
        let refs: Vec<_> = data.examples.iter().collect();
        let batch = make_batch(&refs, 0, Device::Cpu);
        let plain = grads_of(
            &model,
            BackpropPlan {
                first_trained_layer: first,
                recompute_every: 0,
                written_out: false,
            },
            &batch,
        );
        // Every block, and every 2nd (blocks 0, 2, ...: one recomputed, one
        // kept); through autograd and through the written-out blocks (which
        // also run without recomputation).
        let variants = [(1, false), (2, false), (0, true), (1, true), (2, true)];
        for (every, written_out) in variants {
            let ckpt = grads_of(
                &model,
                BackpropPlan {
                    first_trained_layer: first,
                    recompute_every: every,
                    written_out,
                },
                &batch,
            );
            assert_eq!(plain.len(), ckpt.len());
            let mut worst = 0f64;
            for ((n, a), (_, b)) in plain.iter().zip(&ckpt) {
                assert!(
                    b.abs().max().double_value(&[]) > 0.0 || a.abs().max().double_value(&[]) == 0.0,
                    "{n}: no gradient"
                );
                worst = worst.max(max_rel_diff(b, a));
            }
            println!(
                "tied={tied} first_trained_layer={first} recompute every {every} written_out={written_out}: {} tensors, max relative difference {worst:.3e}",
                plain.len()
            );
            assert!(
                worst < 1e-5,
                "checkpointed and written-out gradients must equal the full-graph ones (tolerance 1e-5)"
            );
        }
    }
}

#[test]
fn train_last_layers_trains_and_allocates_only_the_last_blocks() {
    let seed = test_support::seed();
    let cfg = common::tiny_config(256, false);
    let model = common::tiny_model(&cfg, seed);
    let data = common::random_dataset(8, 256, seed);
    let tc = TrainConfig {
        train_last_layers: Some(1),
        steps: Some(1),
        batch_size: 4,
        progress: false,
        ..Default::default()
    };
    let mut t = Trainer::new(model, tc, data, 0).unwrap();
    let names = t.param_names().to_vec();
    assert!(
        names.iter().all(|n| !n.starts_with("model.layers.0.")),
        "block 0 is frozen: {names:?}"
    );
    assert!(names.iter().any(|n| n.starts_with("model.layers.1.")));
    assert!(
        !names.contains(&"model.embed_tokens.weight".to_string()),
        "untied: the embedding is frozen too"
    );
    let numel: usize = t
        .model()
        .named_parameters()
        .iter()
        .map(|(_, p)| p.numel())
        .sum();
    assert_eq!(
        t.optimizer().state_bytes(),
        8 * numel,
        "f32 moments for the trained tensors only"
    );
    let frozen: Vec<Tensor> = t
        .model()
        .named_weights()
        .iter()
        .filter_map(|(n, w)| match w {
            qwen3_model::WeightRef::Dense(d) if n.starts_with("model.layers.0.") => Some(d.copy()),
            _ => None,
        })
        .collect();
    t.step().unwrap();
    let after: Vec<Tensor> = t
        .model()
        .named_weights()
        .iter()
        .filter_map(|(n, w)| match w {
            qwen3_model::WeightRef::Dense(d) if n.starts_with("model.layers.0.") => Some(d.copy()),
            _ => None,
        })
        .collect();
    assert_eq!(frozen.len(), after.len());
    assert!(
        frozen.iter().zip(&after).all(|(a, b)| a.equal(b)),
        "frozen norms did not move"
    );
}
