//! Helpers shared by the trainer's integration tests: a tiny Qwen3 with a
//! small vocabulary and random examples over it (no tokenizer needed).
#![allow(dead_code)]

use std::path::PathBuf;

use qwen3_model::{LoadOptions, Qwen3Config, Qwen3Model};
use tch::Device;
use trainer::{DataStats, Dataset, Example};

/// Two blocks, hidden 32, vocabulary `vocab`.
pub fn tiny_config(vocab: usize, tied: bool) -> Qwen3Config {
    let json = format!(
        r#"{{"vocab_size": {vocab}, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "rms_norm_eps": 1e-6,
            "rope_theta": 5000000.0, "max_position_embeddings": 128, "tie_word_embeddings": {tied},
            "bos_token_id": 1, "eos_token_id": 2}}"#
    );
    Qwen3Config::from_json_str(&json).unwrap()
}

/// A synthetic NVFP4 model on the CPU in f32. `Qwen3Model::random` seeds
/// libtorch's *global* generator, which tests running in parallel threads
/// share: the lock makes two calls with one seed give the same weights.
pub fn tiny_model(cfg: &Qwen3Config, seed: u64) -> Qwen3Model {
    tiny_model_on(cfg, seed, Device::Cpu)
}

/// [`tiny_model`] on `device`, in f32 there too.
pub fn tiny_model_on(cfg: &Qwen3Config, seed: u64, device: Device) -> Qwen3Model {
    tiny_model_of(cfg, seed, device, tch::Kind::Float)
}

/// [`tiny_model_on`] computing in `dtype`.
pub fn tiny_model_of(cfg: &Qwen3Config, seed: u64, device: Device, dtype: tch::Kind) -> Qwen3Model {
    static RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = RNG.lock().unwrap_or_else(|e| e.into_inner());
    let opts = LoadOptions {
        dtype,
        ..LoadOptions::new(device)
    };
    Qwen3Model::random(cfg, &opts, seed).unwrap()
}

/// `n` examples of 6..=12 random tokens each; the last 2..=4 are targets.
pub fn random_dataset(n: usize, vocab: u32, seed: u64) -> Dataset {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let examples: Vec<Example> = (0..n)
        .map(|i| {
            let len = rng.gen_range(6..=12);
            let targets = rng.gen_range(2..=4);
            let tokens: Vec<u32> = (0..len).map(|_| rng.gen_range(3..vocab)).collect();
            Example {
                is_target: (0..len).map(|k| k >= len - targets).collect(),
                prompt_ids: tokens[..len - targets].to_vec(),
                prompt: String::new(),
                response: String::new(),
                tokens,
                line: i + 1,
            }
        })
        .collect();
    let target_tokens = examples
        .iter()
        .map(|e| e.is_target.iter().filter(|t| **t).count())
        .sum();
    Dataset {
        path: PathBuf::from("random"),
        stats: DataStats {
            examples: n,
            target_tokens,
            ..Default::default()
        },
        examples,
    }
}

/// Waits for every rank process (killing all after 240 s) and asserts each
/// exited successfully, printing a failed rank's output.
pub fn join_ranks(mut children: Vec<std::process::Child>, start: std::time::Instant) {
    while children.iter_mut().any(|c| c.try_wait().unwrap().is_none()) {
        if start.elapsed() > std::time::Duration::from_secs(240) {
            children.iter_mut().for_each(|c| drop(c.kill()));
            panic!("ranks still running after 240 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    for (rank, child) in children.into_iter().enumerate() {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "rank {rank}: {:?}\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// What rank 0 wrote: one loss a line in `losses.txt`, the weights in `weights.pt`.
pub fn rank_results(dir: &std::path::Path) -> (Vec<f64>, Vec<(String, tch::Tensor)>) {
    let losses = std::fs::read_to_string(dir.join("losses.txt"))
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    let weights = tch::Tensor::load_multi(dir.join("weights.pt")).unwrap();
    (losses, weights)
}

/// A local port free at the time of asking (rendezvous of the test groups).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A process group of this process alone on `backend` (Gloo on the CPU, NCCL on CUDA).
pub fn group_of_one(backend: distributed::Backend) -> distributed::ProcessGroup {
    distributed::ProcessGroup::new(&distributed::GroupOptions {
        master_addr: "127.0.0.1".into(),
        master_port: free_port(),
        rank: 0,
        world_size: 1,
        backend,
        timeout: std::time::Duration::from_secs(60),
    })
    .unwrap()
}

/// Optimizer steps of the data-parallel tests (`data_parallel.rs`, `zero.rs`).
pub const DP_STEPS: u64 = 4;
/// Vocabulary of the data-parallel tests' model.
pub const DP_VOCAB: usize = 96;

/// The training knobs the data-parallel tests share: `DP_STEPS` clipped steps
/// of `grad_accum` micro-batches of 2 examples. AdamW's eps is 1e-4, not
/// PyTorch's 1e-8: with 1e-8 a rounding-level gradient residue is amplified
/// by lr / eps past the tests' 2e-6 tolerance for about one seed in 40 (the
/// numbers are in `zero.rs`'s doc).
pub fn dp_config(grad_accum: usize) -> trainer::TrainConfig {
    trainer::TrainConfig {
        steps: Some(DP_STEPS),
        batch_size: 2,
        grad_accum,
        lr: 3e-3,
        warmup: 1,
        seed: 5,
        // Small enough that clipping by the global norm takes effect.
        clip: Some(0.05),
        adamw: trainer::AdamWConfig {
            eps: 1e-4,
            ..Default::default()
        },
        progress: false,
        ..Default::default()
    }
}

/// A trainer of the data-parallel tests on `device`: the tiny tied model and
/// 13 random examples drawn from `seed`, trained with `cfg`.
pub fn dp_trainer(seed: u64, cfg: trainer::TrainConfig, device: Device) -> trainer::Trainer {
    dp_trainer_of(seed, cfg, device, tch::Kind::Float)
}

/// [`dp_trainer`] computing in `dtype`.
pub fn dp_trainer_of(
    seed: u64,
    cfg: trainer::TrainConfig,
    device: Device,
    dtype: tch::Kind,
) -> trainer::Trainer {
    let model_cfg = tiny_config(DP_VOCAB, true);
    trainer::Trainer::new(
        tiny_model_of(&model_cfg, seed, device, dtype),
        cfg,
        random_dataset(13, DP_VOCAB as u32, seed),
        0,
    )
    .unwrap()
}

/// Copies of a trainer's weights, by name.
pub fn weights(t: &trainer::Trainer) -> Vec<(String, tch::Tensor)> {
    t.model()
        .named_parameters()
        .into_iter()
        .map(|(n, p)| (n, p.detach().copy()))
        .collect()
}
