//! `export_dat`: the reloaded `.dat` computes what the trained model
//! computes, every trained tensor is in it, and a `like` file's layout is
//! kept. Tolerance of logits comparisons: 1e-5 relative to max |logit|
//! (both sides multiply the same f32 weights; only the matmul call differs).

mod common;

use common::export::*;
use dat_format::{DatFile, ElemType};
use nvfp4_kernels::ScaleMode;
use qwen3_model::{export_dat, Error};
use qwen3_model::{LoadOptions, Qwen3Model, WeightRef};
use tch::{Kind, Tensor};

const REL_TOL: f64 = 1e-5;

fn lenient() -> LoadOptions {
    LoadOptions {
        strict: false,
        ..cpu_opts()
    }
}

#[test]
fn should_reload_to_the_logits_of_the_trained_model() {
    for tied in [false, true] {
        let seed = test_support::seed_i64();
        let cfg = tiny_cfg(tied);
        let model = trained_model(&cfg, seed);
        let ids = random_ids(cfg.vocab_size, 2, 7);
        let want = logits(&model, &ids);

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("trained.dat");
        export_dat(&model, &path, None).unwrap();
        let dat = DatFile::open(&path).unwrap();
        let reloaded = Qwen3Model::load_dat(&dat, &cfg, &cpu_opts()).unwrap();
        let ratio = rel_max_diff(
            &format!("tied={tied}: reloaded vs trained"),
            &logits(&reloaded, &ids),
            &want,
        );
        assert!(ratio <= REL_TOL, "tied={tied}: {ratio:e} > {REL_TOL:e}");

        // The untrained start is far away: the export really carries training.
        let start = Qwen3Model::random(&cfg, &cpu_opts(), seed as u64).unwrap();
        let stale = rel_max_diff("start vs trained", &logits(&start, &ids), &want);
        assert!(
            stale > 1000.0 * REL_TOL,
            "perturbation too small to tell a stale export: {stale:e}"
        );
        assert_eq!(
            dat.get("lm_head.weight.qdata").is_some(),
            !tied,
            "lm_head only when untied"
        );
    }
}

#[test]
fn should_write_trained_embeddings_and_norms_and_requantized_masters() {
    let seed = test_support::seed_i64();
    let cfg = tiny_cfg(false);
    let model = trained_model(&cfg, seed);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("trained.dat");
    export_dat(&model, &path, None).unwrap();
    let dat = DatFile::open(&path).unwrap();

    let entries = layout(&dat);
    assert_eq!(
        entries[0].0, "model.embed_tokens.weight",
        "HF order starts with the embedding"
    );
    assert_eq!(entries[1].0, "model.layers.0.self_attn.q_proj.weight.qdata");
    assert_eq!(entries.last().unwrap().0, "lm_head.weight.scale");
    for (key, w) in model.named_weights() {
        let WeightRef::Dense(trained) = w else {
            panic!("{key}: everything is a master after into_trainable")
        };
        if qwen3_model::is_packed_key(&key) {
            let want = nvfp4_kernels::quantize(trained, ScaleMode::Single)
                .unwrap()
                .to_host();
            let q = dat
                .nvfp4(&key.replace(".weight", ""))
                .unwrap()
                .expect("pair present");
            assert!(
                q.qdata == want.qdata.as_slice() && q.scale == want.scale.as_slice(),
                "{key}: not re-quantized from the master"
            );
            assert_eq!(
                (
                    dat.get(&format!("{key}.qdata")).unwrap().elem,
                    dat.get(&format!("{key}.scale")).unwrap().elem
                ),
                (ElemType::U8, ElemType::F8E4M3)
            );
        } else {
            let e = dat
                .get(&key)
                .unwrap_or_else(|| panic!("{key} dropped from the export"));
            let expected_elem = if key.contains("embed_tokens") {
                ElemType::BF16
            } else {
                ElemType::F32
            };
            assert_eq!(e.elem, expected_elem, "{key}");
            // The trained values are bf16-exact, so even the bf16 embedding is lossless.
            let got = dat.tensor_as(&key, Kind::Float, tch::Device::Cpu).unwrap();
            assert!(
                raw_bytes(&got) == raw_bytes(trained),
                "{key}: exported values differ from the trained ones"
            );
        }
    }
}

/// A `like` file laid out unlike our default: f16 embedding, bf16 norms,
/// legacy bare-base pairs for layer 1, every scale after every qdata, an
/// entry the model does not know, and HF order reversed.
fn unusual_like(model: &Qwen3Model) -> Vec<RawEntry> {
    let mut qdatas = Vec::new();
    let mut others = Vec::new();
    for (key, w) in model.named_weights() {
        match w {
            WeightRef::Packed(q) => {
                let base = if key.starts_with("model.layers.1.") {
                    key.trim_end_matches(".weight").to_string()
                } else {
                    key.clone()
                };
                let mut pair = RawEntry::pair(&base, &q.to_host());
                others.push(pair.pop().unwrap()); // scale
                qdatas.push(pair.pop().unwrap()); // qdata
            }
            WeightRef::Dense(t) => {
                let elem = if key.contains("embed_tokens") {
                    ElemType::F16
                } else {
                    ElemType::BF16
                };
                others.push(RawEntry::dense(&key, elem, t));
            }
        }
    }
    let marker = Tensor::from_slice(&[7i64, -3]);
    others.push(RawEntry::dense("training.marker", ElemType::I64, &marker));
    qdatas.reverse();
    qdatas.extend(others);
    qdatas
}

/// Moves every parameter and rounds dense ones to values f16 and bf16 both hold.
fn perturb(model: &Qwen3Model, seed: i64) {
    tch::manual_seed(seed);
    tch::no_grad(|| {
        for (key, mut p) in model.named_parameters() {
            let moved = &p + Tensor::randn_like(&p) * 0.1;
            let moved = if qwen3_model::is_packed_key(&key) {
                moved
            } else {
                moved
                    .to_kind(Kind::Half)
                    .to_kind(Kind::BFloat16)
                    .to_kind(Kind::Float)
            };
            p.copy_(&moved);
        }
    });
}

#[test]
fn should_keep_the_keys_order_and_elem_types_of_like() {
    let seed = test_support::seed_i64();
    let cfg = tiny_cfg(false);
    let dir = tempfile::tempdir().unwrap();
    let like_path = dir.path().join("like.dat");
    write_raw_dat(
        &like_path,
        &unusual_like(&Qwen3Model::random(&cfg, &cpu_opts(), seed as u64).unwrap()),
    );
    let like = DatFile::open(&like_path).unwrap();

    let model = Qwen3Model::load_dat(&like, &cfg, &lenient())
        .unwrap()
        .into_trainable(Kind::Float, None)
        .unwrap();
    perturb(&model, seed + 1);
    let ids = random_ids(cfg.vocab_size, 2, 5);
    let want = logits(&model, &ids);

    let out_path = dir.path().join("out.dat");
    export_dat(&model, &out_path, Some(&like)).unwrap();
    let out = DatFile::open(&out_path).unwrap();
    assert_eq!(
        layout(&out),
        layout(&like),
        "keys, order, elem types and shapes"
    );
    let marker = |d: &DatFile| d.bytes(d.get("training.marker").unwrap()).to_vec();
    assert_eq!(
        marker(&out),
        marker(&like),
        "unknown entries are copied verbatim"
    );
    let q = "model.layers.1.mlp.down_proj.qdata";
    assert_ne!(
        out.bytes(out.get(q).unwrap()),
        like.bytes(like.get(q).unwrap()),
        "training must show in {q}"
    );

    let reloaded = Qwen3Model::load_dat(&out, &cfg, &lenient()).unwrap();
    let ratio = rel_max_diff(
        "reloaded (like layout) vs trained",
        &logits(&reloaded, &ids),
        &want,
    );
    assert!(ratio <= REL_TOL, "{ratio:e}");

    // Exporting over the `like` file itself (the usual "save back") works too.
    export_dat(&model, &like_path, Some(&like)).unwrap();
    drop(like);
    assert_eq!(
        std::fs::read(&like_path).unwrap(),
        std::fs::read(&out_path).unwrap()
    );
}

#[test]
fn should_write_the_quantized_trained_embedding_as_head_of_a_tied_model() {
    let seed = test_support::seed_i64();
    let cfg = tiny_cfg(true);
    let model = trained_model(&cfg, seed);
    assert!(model.uses_tied_head());
    // The original's files of a tied model still carried an lm_head pair.
    let mut entries: Vec<RawEntry> = Vec::new();
    for (key, w) in model.named_weights() {
        let WeightRef::Dense(t) = w else {
            unreachable!()
        };
        match qwen3_model::is_packed_key(&key) {
            true => entries.extend(RawEntry::pair(
                &key,
                &nvfp4_kernels::quantize(t, ScaleMode::Single)
                    .unwrap()
                    .to_host(),
            )),
            false => entries.push(RawEntry::dense(&key, ElemType::BF16, t)),
        }
    }
    let start = Qwen3Model::random(&cfg, &cpu_opts(), seed as u64).unwrap();
    let WeightRef::Dense(stale_embed) = &start.named_weights()[0].1 else {
        unreachable!()
    };
    entries.extend(RawEntry::pair(
        "lm_head.weight",
        &nvfp4_kernels::quantize(stale_embed, ScaleMode::Single)
            .unwrap()
            .to_host(),
    ));
    let dir = tempfile::tempdir().unwrap();
    let like_path = dir.path().join("like.dat");
    write_raw_dat(&like_path, &entries);
    let like = DatFile::open(&like_path).unwrap();

    let out_path = dir.path().join("out.dat");
    export_dat(&model, &out_path, Some(&like)).unwrap();
    let out = DatFile::open(&out_path).unwrap();
    assert_eq!(layout(&out), layout(&like));
    let WeightRef::Dense(embed) = &model.named_weights()[0].1 else {
        unreachable!()
    };
    let want = nvfp4_kernels::quantize(embed, ScaleMode::Single)
        .unwrap()
        .to_host();
    let head = out.nvfp4("lm_head").unwrap().unwrap();
    assert!(
        head.qdata == want.qdata.as_slice() && head.scale == want.scale.as_slice(),
        "lm_head must be the trained embedding"
    );
}

#[test]
fn should_keep_two_level_scaling_of_like() {
    let seed = test_support::seed_i64();
    let cfg = tiny_cfg(false);
    let start = Qwen3Model::random(&cfg, &cpu_opts(), seed as u64).unwrap();
    let mut entries = Vec::new();
    for (key, w) in start.named_weights() {
        match w {
            WeightRef::Packed(q) => {
                let dense = nvfp4_kernels::dequantize(q, Kind::Float);
                entries.extend(RawEntry::pair(
                    &key,
                    &nvfp4_kernels::quantize(&dense, ScaleMode::TwoLevel)
                        .unwrap()
                        .to_host(),
                ));
            }
            WeightRef::Dense(t) => entries.push(RawEntry::dense(&key, ElemType::F32, t)),
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let like_path = dir.path().join("like.dat");
    write_raw_dat(&like_path, &entries);
    let like = DatFile::open(&like_path).unwrap();
    let model = Qwen3Model::load_dat(&like, &cfg, &cpu_opts())
        .unwrap()
        .into_trainable(Kind::Float, None)
        .unwrap();
    perturb(&model, seed + 1);
    let ids = random_ids(cfg.vocab_size, 1, 6);
    let want = logits(&model, &ids);

    let out_path = dir.path().join("out.dat");
    export_dat(&model, &out_path, Some(&like)).unwrap();
    let out = DatFile::open(&out_path).unwrap();
    assert_eq!(layout(&out), layout(&like));
    assert!(out
        .nvfp4("model.layers.0.mlp.up_proj")
        .unwrap()
        .unwrap()
        .global_scale
        .is_some());
    let reloaded = Qwen3Model::load_dat(&out, &cfg, &cpu_opts()).unwrap();
    let ratio = rel_max_diff(
        "two-level reload vs trained",
        &logits(&reloaded, &ids),
        &want,
    );
    assert!(ratio <= REL_TOL, "{ratio:e}");
}

#[test]
fn should_reject_a_like_file_of_another_shape() {
    let seed = test_support::seed_i64();
    let model = trained_model(&tiny_cfg(false), seed);
    let other_cfg = qwen3_model::Qwen3Config {
        intermediate_size: 128,
        ..tiny_cfg(false)
    };
    let other = Qwen3Model::random(&other_cfg, &cpu_opts(), 1).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let like_path = dir.path().join("other.dat");
    export_dat(&other, &like_path, None).unwrap();
    let like = DatFile::open(&like_path).unwrap();
    let out_path = dir.path().join("out.dat");
    let err = export_dat(&model, &out_path, Some(&like)).unwrap_err();
    println!("{err}");
    assert!(
        matches!(&err, Error::ExportShapeMismatch { key, .. } if key.contains("mlp.")),
        "{err}"
    );
    assert!(!out_path.exists(), "nothing is written on a planning error");
}

#[test]
fn should_reject_a_like_entry_that_cannot_hold_a_float_weight() {
    let seed = test_support::seed_i64();
    let model = trained_model(&tiny_cfg(false), seed);
    let norm = Tensor::ones([64], (Kind::Int, tch::Device::Cpu));
    let dir = tempfile::tempdir().unwrap();
    let like_path = dir.path().join("like.dat");
    write_raw_dat(
        &like_path,
        &[RawEntry::dense("model.norm.weight", ElemType::I32, &norm)],
    );
    let like = DatFile::open(&like_path).unwrap();
    let err = export_dat(&model, &dir.path().join("out.dat"), Some(&like)).unwrap_err();
    assert!(
        matches!(&err, Error::ExportElemType { key, .. } if key == "model.norm.weight"),
        "{err}"
    );
}

#[test]
fn should_refuse_to_export_a_diverged_model() {
    let model = trained_model(&tiny_cfg(false), test_support::seed_i64());
    tch::no_grad(|| {
        let (_, p) = model
            .named_parameters()
            .into_iter()
            .find(|(k, _)| k == "model.norm.weight")
            .unwrap();
        let _ = p.get(3).fill_(f64::NAN);
    });
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.dat");
    let err = export_dat(&model, &path, None).unwrap_err();
    assert!(
        matches!(&err, Error::NonFiniteWeight { key } if key == "model.norm.weight"),
        "{err}"
    );
    assert!(!path.exists());
}
