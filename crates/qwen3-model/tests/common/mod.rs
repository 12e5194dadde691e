//! Helpers shared by the integration tests: fixture cases, models, comparisons.
#![allow(dead_code)]

pub mod export;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use dat_format::DatFile;
use qwen3_model::{LoadOptions, Qwen3Config, Qwen3Model};
use tch::{Device, Kind, Tensor};

/// Tolerance of every logits comparison, relative to max |reference logit|.
pub const REL_TOL: f64 = 1e-5;

/// One parity case written by `scripts/gen_parity_fixtures.py`.
pub struct Case {
    pub name: String,
    pub dir: PathBuf,
    pub cfg: Qwen3Config,
    pub reference: HashMap<String, Tensor>,
}

impl Case {
    pub fn tensor(&self, key: &str) -> &Tensor {
        self.reference
            .get(key)
            .unwrap_or_else(|| panic!("{}: reference.safetensors lacks {key}", self.name))
    }

    pub fn ids(&self, key: &str) -> Vec<i64> {
        Vec::try_from(self.tensor(key).to_kind(Kind::Int64)).unwrap()
    }

    pub fn dat(&self) -> DatFile {
        DatFile::open(self.dir.join("model.dat")).unwrap()
    }

    pub fn model(&self) -> Qwen3Model {
        Qwen3Model::load_dat(&self.dat(), &self.cfg, &LoadOptions::new(Device::Cpu)).unwrap()
    }
}

pub fn parity_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/parity")
}

/// Every case directory (sorted), with its reference tensors.
pub fn cases() -> Vec<Case> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(parity_dir())
        .expect("parity fixtures directory")
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("model.dat").exists())
        .collect();
    dirs.sort();
    assert!(
        dirs.len() >= 2,
        "expected the parity cases in {:?}",
        parity_dir()
    );
    dirs.into_iter()
        .map(|dir| Case {
            name: dir.file_name().unwrap().to_string_lossy().into_owned(),
            cfg: Qwen3Config::from_file(&dir.join("config.json")).unwrap(),
            reference: Tensor::read_safetensors(dir.join("reference.safetensors"))
                .unwrap()
                .into_iter()
                .collect(),
            dir,
        })
        .collect()
}

/// max |got - want| and max |want|; asserts the ratio is within `REL_TOL`.
pub fn assert_close(what: &str, got: &Tensor, want: &Tensor) -> f64 {
    assert_eq!(got.size(), want.size(), "{what}: shape");
    let got = got.to_kind(Kind::Double);
    let want = want.to_kind(Kind::Double);
    let diff = (&got - &want).abs().max().double_value(&[]);
    let scale = want.abs().max().double_value(&[]);
    println!(
        "{what}: max |diff| = {diff:.3e}, max |ref| = {scale:.3e}, ratio = {:.3e}",
        diff / scale
    );
    assert!(
        diff <= REL_TOL * scale,
        "{what}: max diff {diff:e} > {REL_TOL:e} * {scale:e}"
    );
    diff / scale
}

/// i64 [1, n] tensor.
pub fn row(ids: &[i64]) -> Tensor {
    Tensor::from_slice(ids).view([1, ids.len() as i64])
}

/// Vocabulary of [`generation_cfg`].
pub const GEN_VOCAB: usize = 384;

/// The small untied config of the generation tests (single and batched):
/// 2 layers, GQA 2, no stop ids of its own.
pub fn generation_cfg() -> Qwen3Config {
    Qwen3Config {
        vocab_size: GEN_VOCAB,
        hidden_size: 64,
        intermediate_size: 128,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        head_dim: 16,
        max_position_embeddings: 512,
        tie_word_embeddings: false,
        eos_token_ids: vec![],
        ..Qwen3Config::qwen3_4b()
    }
}

/// A random f32 model of [`generation_cfg`] on `device`.
pub fn generation_model(device: Device, seed: u64) -> Qwen3Model {
    let opts = LoadOptions {
        device,
        dtype: Kind::Float,
        compute_path: nvfp4_kernels::ComputePath::Auto,
        strict: true,
    };
    Qwen3Model::random(&generation_cfg(), &opts, seed).unwrap()
}

/// A small config: 2 layers, GQA 2, head_dim != hidden/heads.
pub fn tiny_cfg(tied: bool) -> Qwen3Config {
    Qwen3Config {
        vocab_size: 96,
        hidden_size: 32,
        intermediate_size: 48,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        head_dim: 16,
        rope_theta: 1e6,
        tie_word_embeddings: tied,
        max_position_embeddings: 512,
        ..Qwen3Config::qwen3_4b()
    }
}

/// One `.dat` entry as the tests write it.
pub enum Entry {
    Dense(String, Tensor),
    Packed(String, nvfp4_kernels::Nvfp4Host),
}

impl Entry {
    pub fn key(&self) -> &str {
        match self {
            Entry::Dense(k, _) | Entry::Packed(k, _) => k,
        }
    }
}

/// The model's weights as `.dat` entries (original key layout, f32 dense tensors).
pub fn entries_of(model: &Qwen3Model) -> Vec<Entry> {
    model
        .named_weights()
        .into_iter()
        .map(|(key, w)| match w {
            qwen3_model::WeightRef::Packed(q) => Entry::Packed(key, q.to_host()),
            qwen3_model::WeightRef::Dense(t) => Entry::Dense(key, t.to_kind(Kind::Float)),
        })
        .collect()
}

/// Writes entries with `DatWriter` (packed: `{key}.qdata` + `{key}.scale`).
pub fn write_dat(path: &Path, entries: &[Entry]) {
    let count = entries
        .iter()
        .map(|e| if matches!(e, Entry::Packed(..)) { 2 } else { 1 })
        .sum();
    let mut w = dat_format::DatWriter::create(path, count).unwrap();
    for e in entries {
        match e {
            Entry::Dense(key, t) => w.write_tensor(key, dat_format::ElemType::F32, t).unwrap(),
            Entry::Packed(key, q) => w.write_nvfp4(key, &q.as_ref()).unwrap(),
        }
    }
    w.finish().unwrap();
}

/// Random ids in 0..vocab, [batch, len], from a clock seed (printed).
pub fn random_ids(vocab: usize, batch: i64, len: i64) -> Tensor {
    tch::manual_seed(test_support::seed_i64());
    Tensor::randint(vocab as i64, [batch, len], (Kind::Int64, Device::Cpu))
}

/// bf16 activations carry ~3 significant digits through every layer.
#[allow(dead_code)]
pub const BF16_REL_TOL: f64 = 3e-2;

/// max |got - want| / max |want|, in f64 on the CPU.
#[allow(dead_code)]
pub fn rel_diff(got: &Tensor, want: &Tensor) -> f64 {
    let got = got.to_device(Device::Cpu).to_kind(Kind::Double);
    let want = want.to_device(Device::Cpu).to_kind(Kind::Double);
    (&got - &want).abs().max().double_value(&[]) / want.abs().max().double_value(&[])
}
