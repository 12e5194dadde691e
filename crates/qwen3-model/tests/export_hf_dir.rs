//! `export_hf_dir`: the directory holds exactly the weights the NVFP4 model
//! computes with, so converting it back with `convert_hf_dir_to_dat` gives
//! the same NVFP4 codes and the same logits; the target is replaced
//! atomically and never when it holds foreign files. Logits tolerance:
//! 1e-5 relative to max |logit|.

mod common;

use std::fs;

use common::export::*;
use dat_format::DatFile;
use nvfp4_kernels::ScaleMode;
use qwen3_model::convert_hf_dir_to_dat;
use qwen3_model::{export_dat, export_hf_dir, export_hf_dir_with, Error, HfDtype, HfExportOptions};
use qwen3_model::{Qwen3Config, Qwen3Model};
use tch::{Kind, Tensor};

const REL_TOL: f64 = 1e-5;

#[test]
fn should_convert_back_to_the_same_codes_and_logits() {
    for tied in [false, true] {
        let seed = test_support::seed_i64();
        let cfg = tiny_cfg(tied);
        let model = trained_model(&cfg, seed);
        let ids = random_ids(cfg.vocab_size, 2, 6);
        let want = logits(&model, &ids);

        let root = tempfile::tempdir().unwrap();
        let hf = root.path().join("hf");
        export_hf_dir(&model, &hf).unwrap();
        assert_eq!(dir_names(&hf), vec!["config.json", "model.safetensors"]);
        let names: Vec<String> = Tensor::read_safetensors(hf.join("model.safetensors"))
            .unwrap()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(
            names.contains(&"lm_head.weight".to_string()),
            !tied,
            "lm_head only when untied"
        );
        let cfg_back = Qwen3Config::from_file(&hf.join("config.json")).unwrap();
        assert_eq!(
            Qwen3Config {
                torch_dtype: cfg.torch_dtype.clone(),
                ..cfg_back
            },
            cfg
        );

        let converted = root.path().join("converted.dat");
        convert_hf_dir_to_dat(&hf, &converted, ScaleMode::Single).unwrap();
        let converted = DatFile::open(&converted).unwrap();
        let direct = root.path().join("direct.dat");
        export_dat(&model, &direct, None).unwrap();
        let direct = DatFile::open(&direct).unwrap();
        for pair in direct.nvfp4_pairs() {
            let (a, b) = (
                direct.pair(pair).unwrap(),
                converted
                    .nvfp4(&pair.base)
                    .unwrap()
                    .expect("pair converted"),
            );
            assert!(
                a.qdata == b.qdata && a.scale == b.scale,
                "{}: codes changed through the HF directory",
                pair.base
            );
        }

        let reloaded = Qwen3Model::load_dat(&converted, &cfg, &cpu_opts()).unwrap();
        let ratio = rel_max_diff(
            &format!("tied={tied}: HF -> .dat vs trained"),
            &logits(&reloaded, &ids),
            &want,
        );
        assert!(ratio <= REL_TOL, "{ratio:e}");
        let from_hf = Qwen3Model::load_hf_dir(&hf, &cfg, &cpu_opts()).unwrap();
        let ratio = rel_max_diff(
            &format!("tied={tied}: load_hf_dir vs trained"),
            &logits(&from_hf, &ids),
            &want,
        );
        assert!(ratio <= REL_TOL, "{ratio:e}");
    }
}

#[test]
fn should_write_f32_values_exactly_when_asked() {
    let cfg = tiny_cfg(false);
    let model = trained_model(&cfg, test_support::seed_i64());
    let root = tempfile::tempdir().unwrap();
    let hf = root.path().join("hf32");
    export_hf_dir_with(
        &model,
        &hf,
        &HfExportOptions {
            dtype: HfDtype::F32,
        },
    )
    .unwrap();
    let tensors: std::collections::HashMap<String, Tensor> =
        Tensor::read_safetensors(hf.join("model.safetensors"))
            .unwrap()
            .into_iter()
            .collect();
    for (key, w) in model.named_weights() {
        let qwen3_model::WeightRef::Dense(trained) = w else {
            unreachable!()
        };
        let got = &tensors[&key];
        assert_eq!(got.kind(), Kind::Float, "{key}");
        let want = if qwen3_model::is_packed_key(&key) {
            nvfp4_kernels::fake_quantize(trained, ScaleMode::Single)
        } else {
            trained.detach()
        };
        assert!(
            raw_bytes(got) == raw_bytes(&want),
            "{key}: not the values the model computes with"
        );
    }
    assert!(fs::read_to_string(hf.join("config.json"))
        .unwrap()
        .contains("\"float32\""));
}

#[test]
fn should_replace_a_previous_export_atomically() {
    let cfg = tiny_cfg(true);
    let root = tempfile::tempdir().unwrap();
    let hf = root.path().join("hf");
    export_hf_dir(&trained_model(&cfg, test_support::seed_i64()), &hf).unwrap();
    let second = trained_model(&cfg, test_support::seed_i64() + 7);
    export_hf_dir(&second, &hf).unwrap();
    assert_eq!(
        dir_names(root.path()),
        vec!["hf"],
        "no temp or trash directory left"
    );
    let embed = Tensor::read_safetensors(hf.join("model.safetensors"))
        .unwrap()
        .into_iter()
        .find(|(n, _)| n == "model.embed_tokens.weight")
        .unwrap()
        .1;
    let qwen3_model::WeightRef::Dense(want) = &second.named_weights()[0].1 else {
        unreachable!()
    };
    assert!(
        raw_bytes(&embed) == raw_bytes(&want.to_kind(Kind::BFloat16)),
        "the second export won"
    );
}

#[test]
fn should_leave_the_previous_export_when_an_export_fails() {
    let cfg = tiny_cfg(false);
    let root = tempfile::tempdir().unwrap();
    let hf = root.path().join("hf");
    export_hf_dir(&trained_model(&cfg, test_support::seed_i64()), &hf).unwrap();
    let before = fs::read(hf.join("model.safetensors")).unwrap();

    let broken = trained_model(&cfg, test_support::seed_i64() + 1);
    tch::no_grad(|| {
        let (_, p) = broken
            .named_parameters()
            .into_iter()
            .find(|(k, _)| k.ends_with("1.mlp.up_proj.weight"))
            .unwrap();
        let _ = p.get(0).get(5).fill_(f64::INFINITY);
    });
    let err = export_hf_dir(&broken, &hf).unwrap_err();
    assert!(
        matches!(&err, Error::NonFiniteWeight { key } if key.ends_with("1.mlp.up_proj.weight")),
        "{err}"
    );
    assert_eq!(fs::read(hf.join("model.safetensors")).unwrap(), before);
    assert_eq!(
        dir_names(root.path()),
        vec!["hf"],
        "the failed export's temp dir is removed"
    );
}

#[test]
fn should_refuse_a_target_holding_foreign_files() {
    let model = trained_model(&tiny_cfg(false), test_support::seed_i64());
    let root = tempfile::tempdir().unwrap();
    let target = root.path().join("mine");
    fs::create_dir(&target).unwrap();
    fs::write(target.join("notes.txt"), b"keep me").unwrap();
    let err = export_hf_dir(&model, &target).unwrap_err();
    assert!(
        matches!(&err, Error::ExportTarget { reason, .. } if reason.contains("notes.txt")),
        "{err}"
    );
    assert_eq!(fs::read(target.join("notes.txt")).unwrap(), b"keep me");
    assert_eq!(dir_names(root.path()), vec!["mine"]);
}
