//! HF <-> `.dat` conversion against the tiny fixture of `dat-format`
//! (crates/dat-format/tests/fixtures/tiny, made by scripts/gen_dat_fixture.py
//! with an independent Python quantizer and writer): the converter must
//! reproduce its `.dat` byte for byte, the exporter its tensors.

use std::collections::HashMap;

use dat_format::{DatFile, DatWriter, ElemType};
use nvfp4_kernels::{dequantize_ref, quant_error_bound, ScaleMode};
use qwen3_model::{convert_hf_dir_to_dat, export_dat_to_hf_dir_with, DatToHfOptions};
use safetensors::Dtype;
use tch::{Kind, Tensor};
use test_support::{read_safetensors, tiny_fixture as fixture, tiny_source_weight};

#[test]
fn converting_the_source_model_reproduces_tiny_dat_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("tiny.dat");
    let report = convert_hf_dir_to_dat(&fixture("source"), &out, ScaleMode::Single).unwrap();
    let expected = std::fs::read(fixture("tiny.dat")).unwrap();
    let got = std::fs::read(&out).unwrap();
    if got != expected {
        let ours = DatFile::open(&out).unwrap();
        let theirs = DatFile::open(fixture("tiny.dat")).unwrap();
        for (a, b) in ours.entries().iter().zip(theirs.entries()) {
            assert_eq!(
                (&a.key, a.elem, &a.shape),
                (&b.key, b.elem, &b.shape),
                "entry order or header differs"
            );
            assert!(
                ours.bytes(a) == theirs.bytes(b),
                "payload of {} differs",
                a.key
            );
        }
        panic!("files differ ({} vs {} bytes)", got.len(), expected.len());
    }
    assert_eq!(
        (
            report.source_tensors,
            report.quantized,
            report.raw,
            report.entries
        ),
        (16, 3, 13, 19)
    );
    assert_eq!(report.output_bytes, expected.len() as u64);
}

#[test]
fn export_to_hf_dequantizes_exactly_and_copies_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let opts = DatToHfOptions {
        dtype: ElemType::F32,
        config: Some(fixture("source/config.json")),
        ..DatToHfOptions::default()
    };
    export_dat_to_hf_dir_with(&fixture("tiny.dat"), dir.path(), &opts).unwrap();
    let got = read_safetensors(&dir.path().join("model.safetensors"));
    let expected = read_safetensors(&fixture("expected.safetensors"));
    assert_eq!(
        got.len(),
        expected.len() - 1,
        "every tensor but packed.weight"
    );
    for (key, (dtype, shape, bytes)) in &got {
        let (edtype, eshape, ebytes) = &expected[key];
        assert_eq!(shape, eshape, "{key}");
        if matches!(edtype, Dtype::BF16 | Dtype::F16 | Dtype::F64) {
            // Float sources come out as f32: compare with tch's conversion.
            let kind = match edtype {
                Dtype::BF16 => Kind::BFloat16,
                Dtype::F16 => Kind::Half,
                _ => Kind::Double,
            };
            let shape_i64: Vec<i64> = eshape.iter().map(|&d| d as i64).collect();
            let src = Tensor::from_data_size(ebytes, &shape_i64, kind).to_kind(Kind::Float);
            let mut want = vec![0u8; bytes.len()];
            src.copy_data_u8(&mut want, src.numel());
            assert_eq!((*dtype, bytes), (Dtype::F32, &want), "{key}");
        } else {
            assert_eq!((dtype, bytes), (edtype, ebytes), "{key}");
        }
    }
    let config = std::fs::read(dir.path().join("config.json")).unwrap();
    assert_eq!(
        config,
        std::fs::read(fixture("source/config.json")).unwrap()
    );
}

#[test]
fn sharded_export_holds_the_same_tensors_and_converts_back() {
    let dir = tempfile::tempdir().unwrap();
    let single = dir.path().join("single");
    let sharded = dir.path().join("sharded");
    let bf16 = DatToHfOptions {
        dtype: ElemType::BF16,
        ..DatToHfOptions::default()
    };
    export_dat_to_hf_dir_with(&fixture("tiny.dat"), &single, &bf16).unwrap();
    let small = DatToHfOptions {
        max_shard_bytes: 4096,
        ..bf16
    };
    let files = export_dat_to_hf_dir_with(&fixture("tiny.dat"), &sharded, &small).unwrap();
    assert!(
        files.len() >= 3,
        "expected several shards and an index, got {files:?}"
    );
    assert!(
        !single.join("config.json").exists(),
        "no config beside tiny.dat, none asked for"
    );
    let index: serde_json::Value = serde_json::from_slice(
        &std::fs::read(sharded.join("model.safetensors.index.json")).unwrap(),
    )
    .unwrap();
    let mut merged = HashMap::new();
    for (key, file) in index["weight_map"].as_object().unwrap() {
        let shard = read_safetensors(&sharded.join(file.as_str().unwrap()));
        merged.insert(key.clone(), shard[key].clone());
    }
    assert_eq!(merged, read_safetensors(&single.join("model.safetensors")));
    // The sharded directory is a valid converter source.
    let back = dir.path().join("back.dat");
    let report = convert_hf_dir_to_dat(&sharded, &back, ScaleMode::Single).unwrap();
    assert_eq!((report.quantized, report.source_tensors), (3, 16));
}

#[test]
fn two_level_conversion_stays_within_the_error_bound() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("two.dat");
    let report = convert_hf_dir_to_dat(&fixture("source"), &out, ScaleMode::TwoLevel).unwrap();
    assert_eq!(report.entries, 16 + 3 * 2);
    let dat = DatFile::open(&out).unwrap();
    for pair in dat.nvfp4_pairs() {
        let q = dat.pair(pair).unwrap();
        let g = q
            .global_scale
            .expect("two-level pairs carry a global scale");
        let key = pair.weight_key();
        let w = tiny_source_weight(&key);
        let d = dequantize_ref(&q);
        let mut max_diff = 0f64;
        for (block, (ws, ds)) in w.chunks(16).zip(d.chunks(16)).enumerate() {
            let amax = ws.iter().fold(0f32, |m, v| m.max(v.abs()));
            let bound = quant_error_bound(amax, Some(g));
            for (a, b) in ws.iter().zip(ds) {
                let diff = (f64::from(*a) - f64::from(*b)).abs();
                max_diff = max_diff.max(diff);
                assert!(
                    diff <= bound,
                    "{key} block {block}: |{a} - {b}| = {diff} > bound {bound}"
                );
            }
        }
        println!("{key}: two-level max |w - dequant| = {max_diff:e} (global {g:e})");
    }
}

/// A `.dat` with `entries` (f32 [4, 2] each) and a config saying tied.
fn tied_config_model(dir: &std::path::Path, entries: &[&str]) -> std::path::PathBuf {
    let dat = dir.join("model.dat");
    let mut w = DatWriter::create(&dat, entries.len()).unwrap();
    let values: Vec<u8> = (1..=8u32).flat_map(|v| (v as f32).to_le_bytes()).collect();
    for key in entries {
        w.write_raw(key, ElemType::F32, &[4, 2], &values).unwrap();
    }
    w.finish().unwrap();
    let config = r#"{"tie_word_embeddings": true, "vocab_size": 4, "hidden_size": 2}"#;
    std::fs::write(dir.join("config.json"), config).unwrap();
    dat
}

fn exported_tie(dat: &std::path::Path) -> serde_json::Value {
    let out = tempfile::tempdir().unwrap();
    export_dat_to_hf_dir_with(dat, out.path(), &DatToHfOptions::default()).unwrap();
    let text = std::fs::read_to_string(out.path().join("config.json")).unwrap();
    serde_json::from_str::<serde_json::Value>(&text).unwrap()["tie_word_embeddings"].clone()
}

#[test]
fn to_hf_unties_a_tied_config_when_the_dat_has_its_own_lm_head() {
    let dir = tempfile::tempdir().unwrap();
    let dat = tied_config_model(dir.path(), &["model.embed_tokens.weight", "lm_head.weight"]);
    assert_eq!(exported_tie(&dat), serde_json::Value::Bool(false));
}

#[test]
fn to_hf_keeps_a_tied_model_tied() {
    let dir = tempfile::tempdir().unwrap();
    let dat = tied_config_model(dir.path(), &["model.embed_tokens.weight"]);
    assert_eq!(exported_tie(&dat), serde_json::Value::Bool(true));
}
