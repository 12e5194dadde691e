//! Loading: `.dat` round trips, the strict audit (every problem listed in one
//! error), safetensors directories, and the synthetic model.

mod common;

use std::path::Path;

use common::{entries_of, random_ids, tiny_cfg, write_dat, Entry};
use dat_format::DatFile;
use nvfp4_kernels::ScaleMode;
use qwen3_model::{Error, LoadOptions, Qwen3Model};
use tch::{Device, Kind, Tensor};

fn opts(strict: bool) -> LoadOptions {
    LoadOptions {
        strict,
        ..LoadOptions::new(Device::Cpu)
    }
}

fn logits(model: &Qwen3Model, ids: &Tensor) -> Tensor {
    tch::no_grad(|| model.forward(ids, None).unwrap())
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

fn problems(e: Error) -> Vec<String> {
    match e {
        Error::LoadProblems { problems, .. } => problems,
        other => panic!("expected LoadProblems, got {other}"),
    }
}

#[test]
fn dat_round_trip_reproduces_the_model_exactly() {
    let dir = tempfile::tempdir().unwrap();
    for tied in [true, false] {
        let cfg = tiny_cfg(tied);
        let model = Qwen3Model::random(&cfg, &opts(true), test_support::seed()).unwrap();
        let path = dir.path().join(format!("tied_{tied}.dat"));
        write_dat(&path, &entries_of(&model));
        let loaded =
            Qwen3Model::load_dat(&DatFile::open(&path).unwrap(), &cfg, &opts(true)).unwrap();
        assert_eq!(loaded.uses_tied_head(), tied);
        let ids = random_ids(cfg.vocab_size, 2, 9);
        let d = max_diff(&logits(&model, &ids), &logits(&loaded, &ids));
        println!("tied={tied}: max |random - reloaded| = {d:e}");
        assert_eq!(d, 0.0, "reloaded model differs");
    }
}

#[test]
fn strict_load_lists_every_problem_in_one_error() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny_cfg(false);
    let model = Qwen3Model::random(&cfg, &opts(true), 7).unwrap();
    let mut entries: Vec<Entry> = entries_of(&model)
        .into_iter()
        .filter(|e| e.key() != "model.layers.1.mlp.up_proj.weight" && e.key() != "lm_head.weight")
        .map(|e| match e {
            Entry::Dense(k, _) if k == "model.norm.weight" => {
                Entry::Dense(k, Tensor::ones([24], (Kind::Float, Device::Cpu)))
            }
            other => other,
        })
        .collect();
    entries.push(Entry::Dense(
        "model.layers.9.extra.weight".into(),
        Tensor::ones([2], (Kind::Float, Device::Cpu)),
    ));
    let path = dir.path().join("broken.dat");
    write_dat(&path, &entries);
    let dat = DatFile::open(&path).unwrap();

    let err = Qwen3Model::load_dat(&dat, &cfg, &opts(true)).unwrap_err();
    let msg = err.to_string();
    println!("{msg}");
    assert!(msg.contains("4 problems"), "{msg}");
    let p = problems(err);
    assert!(
        p.contains(&"missing model.layers.1.mlp.up_proj (qdata/scale)".to_string()),
        "{p:?}"
    );
    assert!(
        p.contains(&"missing lm_head (qdata/scale)".to_string()),
        "{p:?}"
    );
    assert!(
        p.contains(&"model.norm.weight shape [24] expected [32]".to_string()),
        "{p:?}"
    );
    assert!(
        p.contains(&"unexpected model.layers.9.extra.weight".to_string()),
        "{p:?}"
    );

    // Not strict: the unused tensor is tolerated, the real problems are not.
    let p = problems(Qwen3Model::load_dat(&dat, &cfg, &opts(false)).unwrap_err());
    assert_eq!(p.len(), 3, "{p:?}");
}

#[test]
fn wrong_element_type_and_wrong_projection_shape_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny_cfg(true);
    let model = Qwen3Model::random(&cfg, &opts(true), 11).unwrap();
    let other = Qwen3Model::random(&tiny_cfg_wider(), &opts(true), 11).unwrap();
    let wide_q = entries_of(&other)
        .into_iter()
        .find(|e| e.key() == "model.layers.0.self_attn.q_proj.weight")
        .unwrap();
    let entries: Vec<Entry> = entries_of(&model)
        .into_iter()
        .map(|e| match e.key() {
            "model.layers.0.self_attn.q_proj.weight" => Entry::Packed(
                e.key().to_string(),
                match &wide_q {
                    Entry::Packed(_, q) => q.clone(),
                    _ => unreachable!(),
                },
            ),
            "model.layers.1.input_layernorm.weight" => Entry::Dense(
                e.key().to_string(),
                Tensor::ones([32], (Kind::Int, Device::Cpu)),
            ),
            _ => e,
        })
        .collect();
    let path = dir.path().join("kinds.dat");
    write_int_aware(&path, &entries);
    let p = problems(
        Qwen3Model::load_dat(&DatFile::open(&path).unwrap(), &cfg, &opts(true)).unwrap_err(),
    );
    println!("{p:?}");
    assert_eq!(p.len(), 2, "{p:?}");
    assert!(
        p.contains(&"model.layers.0.self_attn.q_proj shape [96, 32] expected [64, 32]".to_string()),
        "{p:?}"
    );
    assert!(
        p.iter()
            .any(|s| s.contains("input_layernorm.weight has element type I32")),
        "{p:?}"
    );
}

/// Same as `tiny_cfg` with 6 query heads (q_proj [96, 32] instead of [64, 32]).
fn tiny_cfg_wider() -> qwen3_model::Qwen3Config {
    qwen3_model::Qwen3Config {
        num_attention_heads: 6,
        ..tiny_cfg(true)
    }
}

/// `write_dat`, but a dense i32 tensor keeps its integer type.
fn write_int_aware(path: &Path, entries: &[Entry]) {
    let count = entries
        .iter()
        .map(|e| if matches!(e, Entry::Packed(..)) { 2 } else { 1 })
        .sum();
    let mut w = dat_format::DatWriter::create(path, count).unwrap();
    for e in entries {
        match e {
            Entry::Dense(key, t) if t.kind() == Kind::Int => {
                w.write_tensor(key, dat_format::ElemType::I32, t).unwrap()
            }
            Entry::Dense(key, t) => w.write_tensor(key, dat_format::ElemType::F32, t).unwrap(),
            Entry::Packed(key, q) => w.write_nvfp4(key, &q.as_ref()).unwrap(),
        }
    }
    w.finish().unwrap();
}

#[test]
fn a_file_with_more_layers_than_the_config_is_rejected_when_strict() {
    let dir = tempfile::tempdir().unwrap();
    let big = qwen3_model::Qwen3Config {
        num_hidden_layers: 3,
        ..tiny_cfg(true)
    };
    let model = Qwen3Model::random(&big, &opts(true), 3).unwrap();
    let path = dir.path().join("three.dat");
    write_dat(&path, &entries_of(&model));
    let dat = DatFile::open(&path).unwrap();
    let p = problems(Qwen3Model::load_dat(&dat, &tiny_cfg(true), &opts(true)).unwrap_err());
    assert_eq!(
        p.len(),
        4 + 7 * 2,
        "every entry of layer 2 (4 norms, 7 qdata/scale pairs) is unexpected: {p:?}"
    );
    assert!(
        p.iter()
            .all(|s| s.starts_with("unexpected model.layers.2.")),
        "{p:?}"
    );
    let two = Qwen3Model::load_dat(&dat, &tiny_cfg(true), &opts(false)).unwrap();
    assert_eq!(two.num_layers(), 2);
}

/// Writes the model's weights as a Hugging Face directory: dense bf16 weights
/// (projections dequantized, then perturbed so quantization has work to do),
/// split over two shards with an index.
fn write_hf_dir(model: &Qwen3Model, dir: &Path) {
    let mut tensors: Vec<(String, Tensor)> = Vec::new();
    for (key, w) in model.named_weights() {
        let t = match w {
            qwen3_model::WeightRef::Packed(q) => {
                let d = nvfp4_kernels::dequantize(q, Kind::Float);
                &d + Tensor::randn_like(&d) * 0.003
            }
            qwen3_model::WeightRef::Dense(t) => t.to_kind(Kind::Float),
        };
        tensors.push((key, t.to_kind(Kind::BFloat16).contiguous()));
    }
    let half = tensors.len() / 2;
    let mut weight_map = serde_json::Map::new();
    for (i, chunk) in [&tensors[..half], &tensors[half..]].iter().enumerate() {
        let file = format!("model-0000{}-of-00002.safetensors", i + 1);
        Tensor::write_safetensors(chunk, dir.join(&file)).unwrap();
        for (k, _) in chunk.iter() {
            weight_map.insert(k.clone(), file.clone().into());
        }
    }
    let index = serde_json::json!({ "metadata": {}, "weight_map": weight_map });
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
}

/// A new directory `dir` holding a random model of `cfg` as bf16 safetensors.
fn random_hf_dir(cfg: &qwen3_model::Qwen3Config, dir: &Path, seed: u64) -> std::path::PathBuf {
    std::fs::create_dir(dir).unwrap();
    tch::manual_seed(test_support::seed_i64());
    write_hf_dir(&Qwen3Model::random(cfg, &opts(true), seed).unwrap(), dir);
    dir.to_path_buf()
}

#[test]
fn load_hf_dir_equals_load_dat_of_the_converted_file() {
    let dir = tempfile::tempdir().unwrap();
    for tied in [true, false] {
        let cfg = tiny_cfg(tied);
        let hf = random_hf_dir(&cfg, &dir.path().join(format!("hf_{tied}")), 5);
        let from_hf = Qwen3Model::load_hf_dir(&hf, &cfg, &opts(true)).unwrap();
        let dat_path = dir.path().join(format!("converted_{tied}.dat"));
        qwen3_model::convert_hf_dir_to_dat(&hf, &dat_path, ScaleMode::Single).unwrap();
        let from_dat =
            Qwen3Model::load_dat(&DatFile::open(&dat_path).unwrap(), &cfg, &opts(true)).unwrap();
        let ids = random_ids(cfg.vocab_size, 1, 12);
        let d = max_diff(&logits(&from_hf, &ids), &logits(&from_dat, &ids));
        println!("tied={tied}: max |load_hf_dir - load_dat(converted)| = {d:e}");
        assert_eq!(d, 0.0);
    }
}

#[test]
fn hf_dir_with_an_integer_tensor_or_missing_weights_lists_the_problems() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny_cfg(true);
    let model = Qwen3Model::random(&cfg, &opts(true), 9).unwrap();
    let tensors: Vec<(String, Tensor)> = model
        .named_weights()
        .into_iter()
        .filter(|(k, _)| k != "model.layers.0.mlp.down_proj.weight")
        .map(|(k, w)| {
            let t = match w {
                qwen3_model::WeightRef::Packed(q) => nvfp4_kernels::dequantize(q, Kind::Float),
                qwen3_model::WeightRef::Dense(t) => t.to_kind(Kind::Float),
            };
            let t = if k == "model.norm.weight" {
                t.to_kind(Kind::Int64)
            } else {
                t
            };
            (k, t.contiguous())
        })
        .collect();
    Tensor::write_safetensors(&tensors, dir.path().join("model.safetensors")).unwrap();
    let p = problems(Qwen3Model::load_hf_dir(dir.path(), &cfg, &opts(true)).unwrap_err());
    println!("{p:?}");
    assert_eq!(p.len(), 2, "{p:?}");
    assert!(
        p.contains(&"missing model.layers.0.mlp.down_proj (qdata/scale)".to_string()),
        "{p:?}"
    );
    assert!(
        p.iter()
            .any(|s| s.starts_with("model.norm.weight has dtype I64")),
        "{p:?}"
    );
}

#[test]
fn empty_hf_dir_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let e = Qwen3Model::load_hf_dir(dir.path(), &tiny_cfg(true), &opts(true)).unwrap_err();
    assert!(e.to_string().contains("no *.safetensors files"), "{e}");
}

#[test]
fn random_model_is_deterministic_per_seed_and_has_every_layer() {
    let cfg = tiny_cfg(false);
    let a = Qwen3Model::random(&cfg, &opts(true), 42).unwrap();
    let b = Qwen3Model::random(&cfg, &opts(true), 42).unwrap();
    let c = Qwen3Model::random(&cfg, &opts(true), 43).unwrap();
    let ids = random_ids(cfg.vocab_size, 1, 5);
    assert_eq!(max_diff(&logits(&a, &ids), &logits(&b, &ids)), 0.0);
    assert!(max_diff(&logits(&a, &ids), &logits(&c, &ids)) > 0.0);
    // FR-08: every family of every layer, plus embed, final norm and lm_head.
    let names: Vec<String> = a.named_weights().into_iter().map(|(k, _)| k).collect();
    assert_eq!(names.len(), 1 + cfg.num_hidden_layers * 11 + 2);
    assert!(names.contains(&"model.layers.1.mlp.down_proj.weight".to_string()));
}

#[test]
fn a_non_float_compute_kind_is_rejected() {
    let o = LoadOptions {
        dtype: Kind::Int,
        ..opts(true)
    };
    let e = Qwen3Model::random(&tiny_cfg(true), &o, 1).unwrap_err();
    assert!(
        matches!(
            e,
            Error::InvalidArgument {
                name: "LoadOptions::dtype",
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn kernel_only_without_a_kernel_device_fails_fast() {
    // NFR-02: asking for NVFP4 kernels where none can run is an error, not a
    // quiet fallback to dequantize + matmul.
    let o = LoadOptions {
        compute_path: qwen3_model::ComputePath::KernelOnly,
        ..opts(true)
    };
    let e = Qwen3Model::random(&tiny_cfg(true), &o, 1).unwrap_err();
    assert!(
        matches!(
            e,
            Error::Nvfp4(nvfp4_kernels::Error::KernelUnavailable { .. })
        ),
        "{e}"
    );
}

#[test]
fn weight_bytes_counts_packed_and_dense_storage() {
    let cfg = tiny_cfg(false);
    let m = Qwen3Model::random(&cfg, &opts(true), 2).unwrap();
    let (h, i, v) = (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size);
    let packed = |rows: usize, cols: usize| rows * cols / 2 + rows * cols / 16;
    let per_layer = packed(cfg.q_dim(), h)
        + 2 * packed(cfg.kv_dim(), h)
        + packed(h, cfg.q_dim())
        + 2 * packed(i, h)
        + packed(h, i)
        + 4 * (2 * h + 2 * cfg.head_dim);
    let want = v * h * 4 + cfg.num_hidden_layers * per_layer + 4 * h + packed(v, h);
    assert_eq!(m.weight_bytes(), want);
}

#[test]
fn a_tied_config_uses_an_nvfp4_lm_head_present_in_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let untied = Qwen3Model::random(&tiny_cfg(false), &opts(true), 21).unwrap();
    let path = dir.path().join("with_head.dat");
    write_dat(&path, &entries_of(&untied));
    let tied_cfg = tiny_cfg(true);
    let loaded =
        Qwen3Model::load_dat(&DatFile::open(&path).unwrap(), &tied_cfg, &opts(true)).unwrap();
    assert!(!loaded.uses_tied_head());
    let ids = random_ids(tied_cfg.vocab_size, 1, 6);
    assert_eq!(
        max_diff(&logits(&loaded, &ids), &logits(&untied, &ids)),
        0.0
    );
}

/// `load_dense` (a distillation teacher): a bf16 safetensors directory keeps
/// its stored values exactly, and a `.dat` is its NVFP4 weights dequantized,
/// so it computes the same logits as the packed model.
#[test]
fn load_dense_keeps_stored_bf16_weights_and_dequantizes_nvfp4() {
    let dir = tempfile::tempdir().unwrap();
    for tied in [true, false] {
        let cfg = tiny_cfg(tied);
        let hf = random_hf_dir(&cfg, &dir.path().join(format!("hf_{tied}")), 7);
        std::fs::write(hf.join("config.json"), cfg.to_json_string()).unwrap();
        let stored: std::collections::HashMap<String, Tensor> = std::fs::read_dir(&hf)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
            .flat_map(|p| Tensor::read_safetensors(p).unwrap())
            .collect();
        let dense = Qwen3Model::load_dense(&hf, None, &opts(true)).unwrap();
        let mut compared = 0;
        for (key, w) in dense.named_weights() {
            let qwen3_model::WeightRef::Dense(t) = w else {
                panic!("{key} is packed in a dense load");
            };
            let d = max_diff(&t.to_kind(Kind::Float), &stored[&key].to_kind(Kind::Float));
            assert_eq!(d, 0.0, "{key} differs from the file");
            compared += 1;
        }
        assert_eq!(
            compared,
            stored.len(),
            "every stored tensor is in the model"
        );

        let dat_dir = dir.path().join(format!("dat_{tied}"));
        std::fs::create_dir(&dat_dir).unwrap();
        let packed = Qwen3Model::random(&cfg, &opts(true), test_support::seed()).unwrap();
        write_dat(&dat_dir.join("model.dat"), &entries_of(&packed));
        std::fs::write(dat_dir.join("config.json"), cfg.to_json_string()).unwrap();
        let dequantized = Qwen3Model::load_dense(&dat_dir, None, &opts(true)).unwrap();
        assert!(dequantized
            .named_weights()
            .iter()
            .all(|(_, w)| matches!(w, qwen3_model::WeightRef::Dense(_))));
        let ids = random_ids(cfg.vocab_size, 2, 9);
        let (a, b) = (logits(&packed, &ids), logits(&dequantized, &ids));
        let rel = max_diff(&a, &b) / a.abs().max().double_value(&[]);
        println!("tied={tied}: max |packed - dense(dequantized)| / max |packed| = {rel:e}");
        assert!(rel < 1e-5, "dequantized teacher differs: {rel:e}");
    }
}
