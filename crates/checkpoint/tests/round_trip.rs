//! Resume: `load` returns the state and every tensor bit-exactly, for every
//! dtype, shape and shard layout.

mod common;

use checkpoint::{CheckpointManager, TrainingState};
use common::{assert_bit_equal, random_bits, ALL_KINDS};
use tch::{Device, Kind, Tensor};

fn state(step: u64) -> TrainingState {
    TrainingState {
        step,
        epoch: 3,
        data_cursor: 12_345_678_901,
        rng_state: (0..5056u32).map(|i| (i * 7 % 251) as u8).collect(),
        // A model config as the trainer stores it: opaque JSON text to this crate.
        config_json: serde_json::json!({
            "architectures": ["Qwen3ForCausalLM"],
            "hidden_size": 2560,
            "num_hidden_layers": 36,
            "rope_theta": 5_000_000.0,
            "tie_word_embeddings": true,
        })
        .to_string(),
        run_args: serde_json::json!({"lr": 3e-5, "batch": 4, "optim_state": "int8-block"}),
        extra: serde_json::json!({"scheduler": {"warmup": 100}, "loss_ema": 1.25}),
    }
}

/// Parameters and optimizer state as the trainer names them: f32 masters,
/// bf16 moments, 8-bit moments with per-block absmax, plus every other kind.
fn trainer_like_tensors() -> Vec<(String, Tensor)> {
    let mut named = vec![
        (
            "model.norm.weight".to_string(),
            random_bits(Kind::Float, &[64]),
        ),
        (
            "optim.m.model.norm.weight".to_string(),
            random_bits(Kind::BFloat16, &[64]),
        ),
        (
            "optim.v.model.norm.weight".to_string(),
            random_bits(Kind::Float, &[64]),
        ),
        (
            "optim.m.lm_head.weight.q".to_string(),
            random_bits(Kind::Int8, &[96, 64]),
        ),
        (
            "optim.m.lm_head.weight.absmax".to_string(),
            random_bits(Kind::Float, &[24]),
        ),
        (
            "optim.v.lm_head.weight.q".to_string(),
            random_bits(Kind::Uint8, &[96, 64]),
        ),
        (
            "optim.v.lm_head.weight.absmax".to_string(),
            random_bits(Kind::Float, &[24]),
        ),
        ("optim.step".to_string(), Tensor::from(1234i64)),
        (
            "empty".to_string(),
            Tensor::zeros([0, 5], (Kind::Float, Device::Cpu)),
        ),
    ];
    for (i, kind) in ALL_KINDS.into_iter().enumerate() {
        let shape = [1 + i as i64, 3, 5];
        named.push((format!("every_kind.{kind:?}"), random_bits(kind, &shape)));
        named.push((
            format!("every_kind.{kind:?}.scalar"),
            random_bits(kind, &[]),
        ));
    }
    named
}

#[test]
fn should_load_every_dtype_bit_exactly_with_its_state() {
    tch::manual_seed(test_support::seed_i64());
    let dir = tempfile::tempdir().unwrap();
    let manager = CheckpointManager::new(dir.path(), 2).unwrap();
    let tensors = trainer_like_tensors();
    let path = manager.save(&state(42), &tensors).unwrap();
    assert!(path.ends_with("step-000042"), "{}", path.display());

    let (loaded_state, loaded) = CheckpointManager::load(&path, Device::Cpu).unwrap();
    assert_eq!(loaded_state, state(42));
    assert_bit_equal(&loaded, &tensors);
}

#[test]
fn should_round_trip_across_many_small_shards() {
    tch::manual_seed(test_support::seed_i64());
    let dir = tempfile::tempdir().unwrap();
    let manager = CheckpointManager::new(dir.path(), 1)
        .unwrap()
        .with_shard_bytes(1000);
    let tensors = trainer_like_tensors();
    let path = manager.save(&state(7), &tensors).unwrap();
    let meta = CheckpointManager::verify(&path).unwrap();
    assert!(
        meta.files.len() > 5,
        "expected several shards, got {}",
        meta.files.len()
    );
    let (_, loaded) = CheckpointManager::load(&path, Device::Cpu).unwrap();
    assert_bit_equal(&loaded, &tensors);
}

#[test]
fn should_write_shards_that_the_safetensors_reader_loads() {
    tch::manual_seed(test_support::seed_i64());
    let dir = tempfile::tempdir().unwrap();
    let manager = CheckpointManager::new(dir.path(), 1).unwrap();
    let tensors = vec![
        ("a".to_string(), random_bits(Kind::Float, &[3, 4])),
        ("b".to_string(), random_bits(Kind::Int8, &[7])),
    ];
    let path = manager.save(&state(1), &tensors).unwrap();
    let meta = CheckpointManager::verify(&path).unwrap();
    // Independent reader: tch's own safetensors loader.
    let read = Tensor::read_safetensors(path.join(&meta.files[0].name)).unwrap();
    let mut read: Vec<(String, Tensor)> = read.into_iter().collect();
    read.sort_by(|a, b| a.0.cmp(&b.0));
    assert_bit_equal(&read, &tensors);
}

#[test]
#[ignore = "needs CUDA"]
fn should_load_onto_cuda_bit_exactly() {
    test_support::cuda();
    tch::manual_seed(test_support::seed_i64());
    let dir = tempfile::tempdir().unwrap();
    let manager = CheckpointManager::new(dir.path(), 1).unwrap();
    let on_gpu: Vec<(String, Tensor)> = trainer_like_tensors()
        .into_iter()
        .map(|(n, t)| (n, t.to_device(Device::Cuda(0))))
        .collect();
    let path = manager.save(&state(3), &on_gpu).unwrap();
    let (_, loaded) = CheckpointManager::load(&path, Device::Cuda(0)).unwrap();
    assert!(loaded.iter().all(|(_, t)| t.device() == Device::Cuda(0)));
    assert_bit_equal(&loaded, &on_gpu);
}
