//! The tiny fixture (tests/fixtures/tiny, made by scripts/gen_dat_fixture.py
//! with an independent Python quantizer and writer): our reader and writer
//! must agree with it bit for bit (the converter and exporter are tested
//! against it in qwen3-model's tests/convert_hf.rs).

mod common;

use common::fixture;
use dat_format::{DatFile, DatWriter, ElemType};
use nvfp4_kernels::{dequantize_ref, Nvfp4Tensor, ScaleMode};
use safetensors::Dtype;
use tch::{Device, Kind};
use test_support::read_safetensors;

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
        let w = test_support::tiny_source_weight(&key);
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
