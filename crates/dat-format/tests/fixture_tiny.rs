//! The tiny fixture (tests/fixtures/tiny, made by scripts/gen_dat_fixture.py
//! with an independent Python quantizer and writer): our reader, converter,
//! writer and exporter must agree with it bit for bit.

mod common;

use std::collections::HashMap;
use std::path::Path;

use common::fixture;
use dat_format::{
    convert_hf_dir_to_dat, export_dat_to_hf_dir_with, DatFile, DatWriter, ElemType, ExportOptions,
};
use nvfp4_kernels::{dequantize_ref, quant_error_bound, Nvfp4Tensor, ScaleMode};
use safetensors::{Dtype, SafeTensors};
use tch::{Device, Kind, Tensor};

/// Tensors of a safetensors file: name -> (dtype, shape, bytes).
fn read_safetensors(path: &Path) -> HashMap<String, (Dtype, Vec<usize>, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(k, v)| (k, (v.dtype(), v.shape().to_vec(), v.data().to_vec())))
        .collect()
}

fn f32_bits(bytes: &[u8]) -> Vec<u32> {
    bytes
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

#[test]
fn tiny_dat_loads_bit_exactly() {
    let dat = DatFile::open(fixture("tiny.dat")).unwrap();
    let expected = read_safetensors(&fixture("expected.safetensors"));
    let mut covered = 0;
    for pair in dat.nvfp4_pairs() {
        let (dtype, shape, bytes) = &expected[&pair.weight_key()];
        assert_eq!(
            (*dtype, shape.as_slice()),
            (Dtype::F32, &[pair.rows, pair.cols][..])
        );
        let layer = pair
            .weight_key()
            .strip_suffix(".weight")
            .unwrap()
            .to_owned();
        let q = dat
            .nvfp4(&layer)
            .unwrap()
            .expect("pair found by layer name");
        let reference: Vec<u32> = dequantize_ref(&q).iter().map(|v| v.to_bits()).collect();
        assert_eq!(
            reference,
            f32_bits(bytes),
            "{layer}: dequantize_ref differs from the Python fixture"
        );
        let t = Nvfp4Tensor::from_host(&q, Device::Cpu).unwrap();
        let d = nvfp4_kernels::dequantize(&t, Kind::Float);
        let mut tch_bytes = vec![0u8; bytes.len()];
        d.copy_data_u8(&mut tch_bytes, d.numel());
        assert_eq!(
            &tch_bytes, bytes,
            "{layer}: torch dequantize differs from the Python fixture"
        );
        covered += 2;
    }
    assert_eq!(dat.nvfp4_pairs().len(), 3);
    for e in dat
        .entries()
        .iter()
        .filter(|e| !e.key.ends_with(".qdata") && !e.key.ends_with(".scale"))
    {
        let (dtype, shape, bytes) = &expected[&e.key];
        assert_eq!(
            (&e.shape, dat.bytes(e)),
            (shape, bytes.as_slice()),
            "{}",
            e.key
        );
        let t = dat.tensor(&e.key, Device::Cpu).unwrap();
        let mut loaded = vec![0u8; bytes.len()];
        t.copy_data_u8(&mut loaded, t.numel());
        assert_eq!(&loaded, bytes, "{}", e.key);
        assert_eq!(
            format!("{dtype:?}"),
            format!("{:?}", dtype_of(e.elem)),
            "{}",
            e.key
        );
        covered += 1;
    }
    assert_eq!(covered, dat.entries().len(), "every entry checked");
    // The i32 regression: elem 3 holds values an f32 cannot.
    assert_eq!(
        &*dat.typed_slice::<i32>("extra.i32").unwrap(),
        &[16777217, -1, i32::MAX, i32::MIN]
    );
}

fn dtype_of(elem: ElemType) -> Dtype {
    match elem {
        ElemType::U8 => Dtype::U8,
        ElemType::I8 => Dtype::I8,
        ElemType::I16 => Dtype::I16,
        ElemType::I32 => Dtype::I32,
        ElemType::I64 => Dtype::I64,
        ElemType::F16 => Dtype::F16,
        ElemType::F32 => Dtype::F32,
        ElemType::F64 => Dtype::F64,
        ElemType::Bool => Dtype::BOOL,
        ElemType::BF16 => Dtype::BF16,
        ElemType::F8E4M3 => Dtype::F8_E4M3,
        ElemType::F4E2M1x2 => Dtype::U8,
    }
}

#[test]
fn scalar_reference_quantizer_agrees_with_the_python_writer() {
    let dat = DatFile::open(fixture("tiny.dat")).unwrap();
    for pair in dat.nvfp4_pairs() {
        let key = pair.weight_key();
        let w = source_weight(&key);
        let ours =
            nvfp4_kernels::quantize_ref(&w, pair.rows, pair.cols, ScaleMode::Single).unwrap();
        let theirs = dat.pair(pair).unwrap();
        assert_eq!(ours.scale.as_slice(), theirs.scale, "{key}: scales");
        assert_eq!(ours.qdata.as_slice(), theirs.qdata, "{key}: codes");
    }
}

#[test]
fn packed_fp4_elem_and_bare_pair_names_load_bit_exactly() {
    let dat = DatFile::open(fixture("packed.dat")).unwrap();
    assert_eq!(dat.get("packed.qdata").unwrap().elem, ElemType::F4E2M1x2);
    let q = dat
        .nvfp4("packed")
        .unwrap()
        .expect("bare `<name>.qdata` spelling");
    let expected = read_safetensors(&fixture("expected.safetensors"));
    let got: Vec<u32> = dequantize_ref(&q).iter().map(|v| v.to_bits()).collect();
    assert_eq!(got, f32_bits(&expected["packed.weight"].2));
}

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
fn read_then_write_of_the_fixtures_is_byte_identical() {
    for name in ["tiny.dat", "packed.dat"] {
        let dat = DatFile::open(fixture(name)).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join(name);
        let mut w = DatWriter::create(&out, dat.entries().len()).unwrap();
        for e in dat.entries() {
            w.write_raw(&e.key, e.elem, &e.shape, dat.bytes(e)).unwrap();
        }
        w.finish().unwrap();
        assert_eq!(
            std::fs::read(&out).unwrap(),
            std::fs::read(fixture(name)).unwrap(),
            "{name}"
        );
    }
}

#[test]
fn export_to_hf_dequantizes_exactly_and_copies_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let opts = ExportOptions {
        dtype: ElemType::F32,
        config: Some(fixture("source/config.json")),
        ..ExportOptions::default()
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
    let bf16 = ExportOptions {
        dtype: ElemType::BF16,
        ..ExportOptions::default()
    };
    export_dat_to_hf_dir_with(&fixture("tiny.dat"), &single, &bf16).unwrap();
    let small = ExportOptions {
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
        let w = source_weight(&key);
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

/// A source weight as f32, read from the fixture's source shards.
fn source_weight(key: &str) -> Vec<f32> {
    for shard in [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ] {
        if let Some((dtype, shape, bytes)) =
            read_safetensors(&fixture("source").join(shard)).remove(key)
        {
            assert_eq!(dtype, Dtype::BF16);
            let shape: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
            let t = Tensor::from_data_size(&bytes, &shape, Kind::BFloat16)
                .to_kind(Kind::Float)
                .flatten(0, -1);
            return Vec::<f32>::try_from(&t).unwrap();
        }
    }
    panic!("{key} not in the source");
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
    export_dat_to_hf_dir_with(dat, out.path(), &ExportOptions::default()).unwrap();
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
