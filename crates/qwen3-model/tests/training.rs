//! Training hooks: master weights reproduce the packed forward, gradients
//! reach every trainable tensor through `ste`, keys equal HF keys, and the
//! per-block pieces compose to the full forward.

mod common;

use common::{random_ids, tiny_cfg, write_dat, Entry};
use dat_format::DatFile;
use nvfp4_kernels::ScaleMode;
use qwen3_model::{LoadOptions, Qwen3Model, WeightRef};
use tch::{Device, Kind, Reduction, Tensor};

fn model(tied: bool) -> Qwen3Model {
    Qwen3Model::random(&tiny_cfg(tied), &LoadOptions::new(Device::Cpu), 77).unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

#[test]
fn training_forward_is_exactly_what_inference_computes_after_export() {
    // The master forward runs ste(W) = dequant(quant(W)); quantizing the
    // masters and loading them as a packed model must give the same logits.
    let dir = tempfile::tempdir().unwrap();
    for tied in [true, false] {
        let packed = model(tied);
        let ids = random_ids(packed.config().vocab_size, 2, 6);
        let before = tch::no_grad(|| packed.forward(&ids, None).unwrap());
        let cfg = packed.config().clone();
        let trainable = packed.into_trainable(Kind::Float, None).unwrap();
        let train_logits = tch::no_grad(|| trainable.forward(&ids, None).unwrap());

        let entries: Vec<Entry> = trainable
            .named_weights()
            .into_iter()
            .map(|(key, w)| match w {
                WeightRef::Dense(t) if qwen3_model::is_packed_key(&key) => Entry::Packed(
                    key,
                    nvfp4_kernels::quantize(&t.detach(), ScaleMode::Single)
                        .unwrap()
                        .to_host(),
                ),
                WeightRef::Dense(t) => Entry::Dense(key, t.detach()),
                WeightRef::Packed(_) => panic!("{key} should be a master weight"),
            })
            .collect();
        let path = dir.path().join(format!("exported_{tied}.dat"));
        write_dat(&path, &entries);
        let exported = Qwen3Model::load_dat(
            &DatFile::open(&path).unwrap(),
            &cfg,
            &LoadOptions::new(Device::Cpu),
        )
        .unwrap();
        let infer_logits = tch::no_grad(|| exported.forward(&ids, None).unwrap());
        let d = max_diff(&train_logits, &infer_logits);
        println!("tied={tied}: training forward vs exported inference forward: max diff {d:e}");
        assert_eq!(d, 0.0);

        // Re-quantizing a dequantized weight is exact except in blocks whose
        // E4M3 scale is subnormal (tiny weights): the masters start close to,
        // not bit-equal with, the packed model.
        let (d0, scale) = (
            max_diff(&train_logits, &before),
            before.abs().max().double_value(&[]),
        );
        println!("tied={tied}: initial master forward vs packed forward: max diff {d0:e} (max |logit| {scale:e})");
        assert!(d0 <= 5e-2 * scale, "{d0}");
    }
}

#[test]
fn gradients_reach_every_trainable_tensor() {
    let m = model(false).into_trainable(Kind::Float, None).unwrap();
    let ids = random_ids(m.config().vocab_size, 2, 8);
    let logits = m.forward(&ids.narrow(1, 0, 7), None).unwrap(); // [B, 7, V]
    let v = logits.size()[2];
    let targets = ids.narrow(1, 1, 7).reshape([-1]);
    let loss = logits.reshape([-1, v]).cross_entropy_loss::<Tensor>(
        &targets,
        None,
        Reduction::Mean,
        -100,
        0.0,
    );
    loss.backward();
    let params = m.named_parameters();
    let cfg = m.config();
    assert_eq!(
        params.len(),
        1 + cfg.num_hidden_layers * 11 + 2,
        "embed, 11 per layer, norm, lm_head"
    );
    for (key, p) in &params {
        let g = p.grad();
        assert!(g.defined(), "{key}: no gradient");
        let norm = g.norm().double_value(&[]);
        assert!(
            norm.is_finite() && norm > 0.0,
            "{key}: gradient norm {norm}"
        );
    }
    println!(
        "loss {:.4}, {} parameters with gradients",
        loss.double_value(&[]),
        params.len()
    );
}

#[test]
fn named_parameters_use_hf_keys_and_follow_train_last_layers() {
    let untied = model(false).into_trainable(Kind::Float, Some(1)).unwrap();
    let keys: Vec<String> = untied
        .named_parameters()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert!(
        keys.contains(&"model.layers.1.self_attn.q_proj.weight".to_string()),
        "{keys:?}"
    );
    assert!(
        keys.contains(&"model.layers.1.self_attn.k_norm.weight".to_string()),
        "{keys:?}"
    );
    assert!(keys.contains(&"lm_head.weight".to_string()), "{keys:?}");
    assert!(keys.contains(&"model.norm.weight".to_string()), "{keys:?}");
    assert!(
        !keys.iter().any(|k| k.starts_with("model.layers.0.")),
        "layer 0 must stay frozen: {keys:?}"
    );
    assert!(
        !keys.contains(&"model.embed_tokens.weight".to_string()),
        "{keys:?}"
    );
    assert_eq!(keys.len(), 11 + 2);

    // Tied: the embedding is the head, so it trains.
    let tied = model(true).into_trainable(Kind::Float, Some(1)).unwrap();
    let keys: Vec<String> = tied
        .named_parameters()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert!(
        keys.contains(&"model.embed_tokens.weight".to_string()),
        "{keys:?}"
    );
    assert!(
        model(true).into_trainable(Kind::Float, Some(3)).is_err(),
        "more layers than the model has"
    );
}

#[test]
fn embed_blocks_and_head_compose_to_forward() {
    tch::no_grad(|| {
        let m = model(false);
        let ids = random_ids(m.config().vocab_size, 2, 9);
        let mut h = m.embed(&ids);
        for layer in 0..m.num_layers() {
            h = m.block_forward(layer, &h, 0).unwrap();
        }
        let d = max_diff(&m.head(&h).unwrap(), &m.forward(&ids, None).unwrap());
        println!("pieces vs forward: max diff {d:e}");
        assert_eq!(d, 0.0);
        assert!(
            m.block_forward(2, &h, 0).is_err(),
            "layer index out of range"
        );
    })
}

#[test]
fn sgd_step_on_masters_changes_the_model_and_keeps_it_dense() {
    let m = model(false).into_trainable(Kind::Float, None).unwrap();
    let ids = random_ids(m.config().vocab_size, 1, 6);
    let before = tch::no_grad(|| m.forward(&ids, None).unwrap());
    let loss = m.forward(&ids, None).unwrap().square().mean(Kind::Float);
    loss.backward();
    tch::no_grad(|| {
        for (_, mut p) in m.named_parameters() {
            let step = p.grad() * 0.5;
            let _ = p.f_sub_(&step).unwrap();
        }
    });
    let after = tch::no_grad(|| m.forward(&ids, None).unwrap());
    let d = max_diff(&before, &after);
    println!("one SGD step moved logits by {d:e}");
    assert!(d > 0.0);
    assert_eq!(
        m.named_parameters().len(),
        m.named_weights().len(),
        "every weight is a dense trainable master"
    );
}
