//! Helpers of the export tests (`export_dat.rs`, `export_hf_dir.rs`): a
//! trained model, logits, and `.dat` files built entry by entry.

use std::path::Path;

use qwen3_model::{ComputePath, LoadOptions, Qwen3Config, Qwen3Model};
use tch::{Device, Kind, Tensor};

#[allow(unused_imports)] // not every test binary uses both
pub use test_support::{dir_names, raw_bytes};

/// A small Qwen3 (2 layers, GQA 2, head_dim 16), wider than the loader
/// tests' so block scales see more values.
pub fn tiny_cfg(tied: bool) -> Qwen3Config {
    Qwen3Config {
        hidden_size: 64,
        intermediate_size: 96,
        rope_theta: 5_000_000.0,
        max_position_embeddings: 256,
        ..super::tiny_cfg(tied)
    }
}

/// Random token ids [batch, seq].
pub fn random_ids(vocab: usize, batch: i64, seq: i64) -> Tensor {
    Tensor::randint(vocab as i64, [batch, seq], (Kind::Int64, Device::Cpu))
}

/// f32 on the CPU through the dequantize+matmul path: the same arithmetic
/// for the in-memory and the reloaded model.
pub fn cpu_opts() -> LoadOptions {
    LoadOptions {
        device: Device::Cpu,
        dtype: Kind::Float,
        compute_path: ComputePath::DequantMatmulOnly,
        strict: true,
    }
}

/// A random model made trainable, with every parameter moved away from its
/// NVFP4 starting point as training would (so a stale export shows), and
/// the dense tensors rounded to bf16 values so a bf16 export is lossless.
/// Perturbation std 0.1 keeps block scales in E4M3's normal range, where
/// re-quantizing a dequantized weight gives back the same codes.
pub fn trained_model(cfg: &Qwen3Config, seed: i64) -> Qwen3Model {
    let model = Qwen3Model::random(cfg, &cpu_opts(), seed as u64)
        .unwrap()
        .into_trainable(Kind::Float, None)
        .unwrap();
    tch::manual_seed(seed.wrapping_add(1));
    tch::no_grad(|| {
        for (key, mut p) in model.named_parameters() {
            let moved = &p + Tensor::randn_like(&p) * 0.1;
            let moved = if qwen3_model::is_packed_key(&key) {
                moved
            } else {
                moved.to_kind(Kind::BFloat16).to_kind(Kind::Float)
            };
            p.copy_(&moved);
        }
    });
    model
}

/// Logits of `model` on `ids`, without autograd.
pub fn logits(model: &Qwen3Model, ids: &Tensor) -> Tensor {
    tch::no_grad(|| model.forward(ids, None).unwrap())
}

/// max |got - want| / max |want|, printed with `what`.
pub fn rel_max_diff(what: &str, got: &Tensor, want: &Tensor) -> f64 {
    assert_eq!(got.size(), want.size(), "{what}: shape");
    let ratio = super::rel_diff(got, want);
    println!("{what}: max |diff| / max |ref| = {ratio:.3e}");
    ratio
}

/// One raw `.dat` entry, for building `like` files in any order and layout.
pub struct RawEntry {
    pub key: String,
    pub elem: dat_format::ElemType,
    pub shape: Vec<usize>,
    pub bytes: Vec<u8>,
}

impl RawEntry {
    /// A dense tensor converted to `elem`.
    pub fn dense(key: &str, elem: dat_format::ElemType, t: &Tensor) -> Self {
        let t = t.detach().to_kind(elem.kind());
        RawEntry {
            key: key.to_string(),
            elem,
            shape: t.size().iter().map(|&d| d as usize).collect(),
            bytes: raw_bytes(&t),
        }
    }

    /// The entries of an NVFP4 pair under `base` (qdata, scale, global scale if any).
    pub fn pair(base: &str, q: &nvfp4_kernels::Nvfp4Host) -> Vec<Self> {
        use dat_format::ElemType;
        let mut out = vec![
            RawEntry {
                key: format!("{base}.qdata"),
                elem: ElemType::U8,
                shape: vec![q.rows, q.cols / 2],
                bytes: q.qdata.clone(),
            },
            RawEntry {
                key: format!("{base}.scale"),
                elem: ElemType::F8E4M3,
                shape: vec![q.rows, q.cols / 16],
                bytes: q.scale.clone(),
            },
        ];
        if let Some(g) = q.global_scale {
            out.push(RawEntry {
                key: format!("{base}.global_scale"),
                elem: ElemType::F32,
                shape: vec![1],
                bytes: g.to_le_bytes().to_vec(),
            });
        }
        out
    }
}

/// Writes entries in the given order.
pub fn write_raw_dat(path: &Path, entries: &[RawEntry]) {
    let mut w = dat_format::DatWriter::create(path, entries.len()).unwrap();
    for e in entries {
        w.write_raw(&e.key, e.elem, &e.shape, &e.bytes).unwrap();
    }
    w.finish().unwrap();
}

/// (key, elem, shape) of every entry, in file order.
pub fn layout(dat: &dat_format::DatFile) -> Vec<(String, dat_format::ElemType, Vec<usize>)> {
    dat.entries()
        .iter()
        .map(|e| (e.key.clone(), e.elem, e.shape.clone()))
        .collect()
}
