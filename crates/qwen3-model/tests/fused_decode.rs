//! The fused decode step (`FusedDecoder`) against the per-op forward, its
//! reference: same logits within bf16 summation-order noise, same cache
//! contents, and graph replays equal to eager launches bit for bit. The CUDA
//! tests are `#[ignore = "needs CUDA"]`; the CPU halves run anywhere.

mod common;

use common::{entries_of, rel_diff, tiny_cfg, write_dat, BF16_REL_TOL};
use dat_format::DatFile;
use qwen3_model::{
    generate, Error, FusedDecoder, GenerateOptions, KvCache, LoadOptions, Qwen3Config, Qwen3Model,
};
use tch::{Device, Kind, Tensor};

/// The fused step must be as accurate as the per-op bf16 forward: its error
/// against an f32 forward of the same weights may exceed the per-op path's
/// by this factor (both round to bf16 at the same places; summation orders
/// and the attention's probabilities, which the reference kernel rounds to
/// bf16, differ) ...
const ERROR_RATIO: f64 = 1.5;
/// ... and never exceeds the tolerance of any bf16 forward.
const ABS_TOL: f64 = BF16_REL_TOL;

/// A small model the kernels take: GQA `q_heads / kv_heads`, `head_dim`.
fn cfg(head_dim: usize, q_heads: usize, kv_heads: usize, tied: bool) -> Qwen3Config {
    Qwen3Config {
        vocab_size: 1000,
        hidden_size: 384,
        intermediate_size: 640,
        num_hidden_layers: 3,
        num_attention_heads: q_heads,
        num_key_value_heads: kv_heads,
        head_dim,
        tie_word_embeddings: tied,
        max_position_embeddings: 4096,
        ..Qwen3Config::qwen3_4b()
    }
}

fn argmax(logits: &Tensor) -> u32 {
    logits.argmax(-1, false).int64_value(&[]) as u32
}

/// Prefills `prompt` into a fresh cache through the per-op forward.
fn prefilled(model: &Qwen3Model, prompt: &[i64], capacity: usize) -> (KvCache, Tensor) {
    let mut cache = model.new_cache(1, capacity).unwrap();
    let ids = Tensor::from_slice(prompt)
        .view([1, -1])
        .to_device(model.device());
    let logits = model.forward(&ids, Some(&mut cache)).unwrap();
    (cache, logits.get(0).get(-1))
}

/// The same weights with f32 activations (the accuracy reference).
fn f32_twin(model: &Qwen3Model) -> Qwen3Model {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.dat");
    write_dat(&path, &entries_of(model));
    let opts = LoadOptions {
        dtype: Kind::Float,
        ..LoadOptions::new(model.device())
    };
    Qwen3Model::load_dat(&DatFile::open(&path).unwrap(), model.config(), &opts).unwrap()
}

/// Worst logits error (relative to max |logit|) of each path against the
/// f32 twin, and the share of steps whose argmax agrees between the paths.
struct Comparison {
    fused_err: f64,
    per_op_err: f64,
    argmax_agreement: f64,
}

/// Teacher-forced decode of `steps` tokens (the f32 twin's greedy choices)
/// on the fused step, the per-op bf16 forward and the f32 twin.
fn compare_paths(model: &Qwen3Model, prompt_len: usize, steps: usize) -> Comparison {
    let vocab = model.config().vocab_size as i64;
    let twin = f32_twin(model);
    tch::manual_seed(test_support::seed_i64());
    let prompt: Vec<i64> = Vec::try_from(Tensor::randint(
        vocab,
        [prompt_len as i64],
        (Kind::Int64, Device::Cpu),
    ))
    .unwrap();
    let capacity = prompt_len + steps;
    let (mut f32_cache, mut f32_logits) = prefilled(&twin, &prompt, capacity);
    let (mut ref_cache, _) = prefilled(model, &prompt, capacity);
    let (mut fused_cache, _) = prefilled(model, &prompt, capacity);
    let mut decoder = FusedDecoder::new(model).unwrap();
    let mut c = Comparison {
        fused_err: 0.0,
        per_op_err: 0.0,
        argmax_agreement: 0.0,
    };
    let one = |t: u32| {
        Tensor::from_slice(&[t as i64])
            .view([1, 1])
            .to_device(model.device())
    };
    for _ in 0..steps {
        let token = argmax(&f32_logits);
        let fused = decoder.step(&mut fused_cache, token).unwrap();
        let per_op = model
            .forward(&one(token), Some(&mut ref_cache))
            .unwrap()
            .get(0)
            .get(0);
        f32_logits = twin
            .forward(&one(token), Some(&mut f32_cache))
            .unwrap()
            .get(0)
            .get(0);
        c.fused_err = c.fused_err.max(rel_diff(&fused, &f32_logits));
        c.per_op_err = c.per_op_err.max(rel_diff(&per_op, &f32_logits));
        c.argmax_agreement += f64::from(u8::from(argmax(&fused) == argmax(&per_op))) / steps as f64;
    }
    assert_eq!(fused_cache.len(), ref_cache.len());
    c
}

#[test]
#[ignore = "needs CUDA"]
fn fused_step_tracks_the_per_op_forward() {
    let gpu = test_support::cuda();
    tch::no_grad(|| {
        // head_dim 128 / 64 / 32 (4, 2, 1 values a lane), groups of 4, 2, 1,
        // tied and NVFP4 heads; prompts that leave many splits empty (5) or
        // give each several keys (300).
        for (d, hq, hkv, tied, prompt) in [
            (128, 8, 2, true, 300),
            (64, 4, 2, false, 5),
            (32, 4, 4, false, 70),
        ] {
            let model = Qwen3Model::random(
                &cfg(d, hq, hkv, tied),
                &LoadOptions::new(gpu),
                test_support::seed(),
            )
            .unwrap();
            let c = compare_paths(&model, prompt, 24);
            println!(
                "head_dim {d}, {hq}/{hkv} heads, tied {tied}, prompt {prompt}: error vs f32 \
                 fused {:.3e}, per-op {:.3e}; argmax agreement {:.0}%",
                c.fused_err,
                c.per_op_err,
                c.argmax_agreement * 100.0
            );
            assert!(c.fused_err <= ABS_TOL, "fused error {:e}", c.fused_err);
            assert!(
                c.fused_err <= ERROR_RATIO * c.per_op_err,
                "fused error {:e} > {ERROR_RATIO} x per-op error {:e}",
                c.fused_err,
                c.per_op_err
            );
            assert!(
                c.argmax_agreement >= 0.9,
                "argmax agreement {}",
                c.argmax_agreement
            );
        }
    });
}

#[test]
#[ignore = "needs CUDA"]
fn graph_replays_equal_eager_launches_bit_for_bit() {
    let gpu = test_support::cuda();
    tch::no_grad(|| {
        let model = Qwen3Model::random(
            &cfg(128, 8, 2, false),
            &LoadOptions::new(gpu),
            test_support::seed(),
        )
        .unwrap();
        let prompt: Vec<i64> = (0..40).map(|i| (i * 37 + 11) % 1000).collect();
        let (mut eager_cache, _) = prefilled(&model, &prompt, 80);
        let (mut graph_cache, _) = prefilled(&model, &prompt, 80);
        let mut eager = FusedDecoder::new(&model).unwrap().with_graph(false);
        let mut graph = FusedDecoder::new(&model).unwrap().with_graph(true);
        let mut token = 7u32;
        for step in 0..12 {
            let a = eager.step(&mut eager_cache, token).unwrap();
            let b = graph.step(&mut graph_cache, token).unwrap();
            let diff = (&a - &b).abs().max().double_value(&[]);
            assert_eq!(diff, 0.0, "step {step}: graph and eager differ by {diff}");
            token = argmax(&a);
        }
        let nodes = graph.graph_nodes().expect("a recorded graph");
        println!("recorded step: {nodes} kernel launches");
        // embedding + 10 a block + final norm + NVFP4 head.
        assert_eq!(nodes, 1 + 10 * model.num_layers() + 2);
        assert_eq!(eager.graph_nodes(), None);
        for layer in 0..model.num_layers() {
            let (ka, va) = eager_cache.layer_buffers(layer);
            let (kb, vb) = graph_cache.layer_buffers(layer);
            assert_eq!((ka - kb).abs().max().double_value(&[]), 0.0);
            assert_eq!((va - vb).abs().max().double_value(&[]), 0.0);
        }
    });
}

#[test]
fn generate_decodes_per_op_on_the_cpu() {
    generate_decodes_through_the_fused_step_on_cuda_only(Device::Cpu, tiny_cfg(false));
}

#[test]
#[ignore = "needs CUDA"]
fn generate_decodes_through_the_fused_step_on_cuda() {
    generate_decodes_through_the_fused_step_on_cuda_only(
        test_support::cuda(),
        cfg(64, 4, 2, false),
    );
}

fn generate_decodes_through_the_fused_step_on_cuda_only(device: Device, cfg: Qwen3Config) {
    let model = Qwen3Model::random(&cfg, &LoadOptions::new(device), test_support::seed()).unwrap();
    let opts = GenerateOptions {
        max_new_tokens: 6,
        ..GenerateOptions::default()
    };
    let mut cache = model.new_cache(1, 4).unwrap();
    let gen = generate(
        &model,
        Some(&mut cache),
        &[3, 1, 4, 1, 5],
        &opts,
        &mut |_| true,
    )
    .unwrap();
    assert_eq!(gen.tokens.len(), 6);
    assert_eq!(gen.fused_decode, device.is_cuda(), "on {device:?}");
    assert_eq!(cache.len(), 5 + 5, "every token but the last is fed");
    let reference = GenerateOptions {
        fused_decode: false,
        ..opts
    };
    let mut cache = model.new_cache(1, 4).unwrap();
    let gen = generate(
        &model,
        Some(&mut cache),
        &[3, 1, 4, 1, 5],
        &reference,
        &mut |_| true,
    )
    .unwrap();
    assert!(!gen.fused_decode);
}

#[test]
fn a_cpu_or_f32_model_is_refused_with_the_reason() {
    let model = Qwen3Model::random(&tiny_cfg(false), &LoadOptions::new(Device::Cpu), 1).unwrap();
    match FusedDecoder::new(&model) {
        Err(Error::FusedDecodeUnsupported { reason }) => {
            assert!(reason.contains("not a CUDA device"), "{reason}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
#[ignore = "needs CUDA"]
fn an_f32_model_on_cuda_is_refused_with_the_reason() {
    let gpu = test_support::cuda();
    let opts = LoadOptions {
        dtype: Kind::Float,
        ..LoadOptions::new(gpu)
    };
    let model = Qwen3Model::random(&cfg(64, 4, 2, false), &opts, 2).unwrap();
    let err = FusedDecoder::new(&model).unwrap_err();
    assert!(err.to_string().contains("bf16"), "{err}");
}

#[test]
#[ignore = "needs CUDA"]
fn the_fused_step_refuses_an_id_outside_the_vocabulary() {
    let model = Qwen3Model::random(
        &cfg(64, 4, 2, false),
        &LoadOptions::new(test_support::cuda()),
        test_support::seed(),
    )
    .unwrap();
    let vocab = model.config().vocab_size;
    let mut decoder = FusedDecoder::new(&model).unwrap();
    let mut cache = model.new_cache(1, 8).unwrap();
    let err = decoder
        .step(&mut cache, vocab as u32)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!("id {vocab} ")) && err.contains(&format!("0..{vocab}")),
        "{err}"
    );
    assert_eq!(cache.len(), 0);
    // Refused before any launch: the context still decodes a valid id.
    let logits = decoder.step(&mut cache, 1).unwrap();
    assert_eq!(logits.size(), [vocab as i64]);
}
