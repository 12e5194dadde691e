//! Helpers shared by the integration tests: seeds, random tensors of every
//! kind, bitwise comparison, small models.
#![allow(dead_code)]

use std::path::Path;

use qwen3_model::{ComputePath, LoadOptions, Qwen3Config, Qwen3Model};
use tch::{Device, Kind, Tensor};

/// Every kind a checkpoint stores.
pub const ALL_KINDS: [Kind; 12] = [
    Kind::Float,
    Kind::BFloat16,
    Kind::Half,
    Kind::Double,
    Kind::Int8,
    Kind::Uint8,
    Kind::Int16,
    Kind::Int,
    Kind::Int64,
    Kind::Bool,
    Kind::Float8e4m3fn,
    Kind::Float8e5m2,
];

/// A tensor of `kind` and `shape` whose bytes are uniformly random: for
/// float kinds this includes NaNs with payloads, infinities, -0 and
/// subnormals, so only a bit-exact round trip compares equal. Bools are
/// random 0/1 (other bytes are not valid bools).
pub fn random_bits(kind: Kind, shape: &[i64]) -> Tensor {
    let numel: i64 = shape.iter().product();
    if kind == Kind::Bool {
        return Tensor::randint(2, shape, (Kind::Uint8, Device::Cpu)).to_kind(Kind::Bool);
    }
    let width = kind.elt_size_in_bytes() as i64;
    let bytes = Tensor::randint(256, [numel * width], (Kind::Uint8, Device::Cpu));
    bytes.view_dtype(kind).reshape(shape)
}

/// The raw bytes of a tensor (any device), for bitwise comparison.
pub fn raw_bytes(t: &Tensor) -> Vec<u8> {
    let numel = t.numel();
    let mut out = vec![0u8; numel * t.kind().elt_size_in_bytes()];
    t.copy_data_u8(&mut out, numel);
    out
}

/// Asserts name, kind, shape and every bit are equal.
pub fn assert_bit_equal(got: &[(String, Tensor)], want: &[(String, Tensor)]) {
    assert_eq!(got.len(), want.len(), "tensor count");
    for ((gn, gt), (wn, wt)) in got.iter().zip(want) {
        assert_eq!(gn, wn, "names (and order)");
        assert_eq!(gt.kind(), wt.kind(), "{gn}: kind");
        assert_eq!(gt.size(), wt.size(), "{gn}: shape");
        assert!(raw_bytes(gt) == raw_bytes(wt), "{gn}: bytes differ");
    }
}

/// A small Qwen3: 2 layers, GQA 2, head_dim 16.
pub fn tiny_cfg(tied: bool) -> Qwen3Config {
    Qwen3Config {
        vocab_size: 96,
        hidden_size: 64,
        intermediate_size: 96,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        head_dim: 16,
        tie_word_embeddings: tied,
        max_position_embeddings: 256,
        ..Qwen3Config::qwen3_4b()
    }
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

/// Random token ids [batch, seq].
pub fn random_ids(vocab: usize, batch: i64, seq: i64) -> Tensor {
    Tensor::randint(vocab as i64, [batch, seq], (Kind::Int64, Device::Cpu))
}

/// Logits of `model` on `ids`, without autograd.
pub fn logits(model: &Qwen3Model, ids: &Tensor) -> Tensor {
    tch::no_grad(|| model.forward(ids, None).unwrap())
}

/// max |got - want| / max |want|, printed with `what`.
pub fn rel_max_diff(what: &str, got: &Tensor, want: &Tensor) -> f64 {
    assert_eq!(got.size(), want.size(), "{what}: shape");
    let got = got.to_kind(Kind::Double);
    let want = want.to_kind(Kind::Double);
    let diff = (&got - &want).abs().max().double_value(&[]);
    let scale = want.abs().max().double_value(&[]);
    println!(
        "{what}: max |diff| = {diff:.3e}, max |ref| = {scale:.3e}, ratio = {:.3e}",
        diff / scale
    );
    diff / scale
}

/// Names in a directory, sorted.
pub fn dir_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
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
