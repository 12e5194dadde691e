//! DatWriter and DatFile together: round trips of every element type, the
//! writer's refusals, atomic replacement, loading as tch tensors and slices.

mod common;

use std::collections::HashSet;

use dat_format::{DatFile, DatWriter, ElemType, Error};
use nvfp4_kernels::{quantize_ref, ScaleMode};
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use tch::{Device, Kind, Tensor};

fn rng() -> rand::rngs::StdRng {
    rand::rngs::StdRng::seed_from_u64(test_support::seed())
}

fn random_payload(rng: &mut impl Rng, elem: ElemType, numel: usize) -> Vec<u8> {
    let mut bytes: Vec<u8> = (0..numel * elem.size()).map(|_| rng.gen()).collect();
    if elem == ElemType::Bool {
        bytes.iter_mut().for_each(|b| *b &= 1);
    }
    bytes
}

fn dir_entries(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() })]

    /// Written entries read back identically, the bytes equal an independent
    /// encoding of the format, and a read -> write copy is byte-identical.
    #[test]
    fn write_read_write_round_trip_is_byte_identical(
        specs in proptest::collection::vec(
            (0..ElemType::ALL.len(), proptest::collection::vec(0usize..5, 0..4), any::<u64>()), 0..8),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.dat");
        let mut entries = Vec::new();
        for (i, (e, shape, seed)) in specs.iter().enumerate() {
            let elem = ElemType::ALL[*e];
            let numel = shape.iter().product();
            let payload = random_payload(&mut rand::rngs::StdRng::seed_from_u64(*seed), elem, numel);
            entries.push((format!("t{i}.{}", elem.name()), elem, shape.clone(), payload));
        }
        let mut w = DatWriter::create(&path, entries.len()).unwrap();
        for (key, elem, shape, payload) in &entries {
            w.write_raw(key, *elem, shape, payload).unwrap();
        }
        w.finish().unwrap();

        let shapes: Vec<Vec<u64>> = entries.iter().map(|e| e.2.iter().map(|&d| d as u64).collect()).collect();
        let reference: Vec<(&str, u64, &[u64], &[u8])> = entries.iter().zip(&shapes)
            .map(|((k, e, _, p), s)| (k.as_str(), e.code(), s.as_slice(), p.as_slice())).collect();
        let written = std::fs::read(&path).unwrap();
        prop_assert_eq!(&written, &common::dat_bytes(&reference));

        let dat = DatFile::open(&path).unwrap();
        prop_assert_eq!(dat.entries().len(), entries.len());
        for ((key, elem, shape, payload), e) in entries.iter().zip(dat.entries()) {
            prop_assert_eq!((&e.key, e.elem, &e.shape), (key, *elem, shape));
            prop_assert_eq!(dat.bytes(e), payload.as_slice());
        }
        let copy = dir.path().join("b.dat");
        let mut w = DatWriter::create(&copy, dat.entries().len()).unwrap();
        for e in dat.entries() {
            w.write_raw(&e.key, e.elem, &e.shape, dat.bytes(e)).unwrap();
        }
        w.finish().unwrap();
        prop_assert_eq!(std::fs::read(&copy).unwrap(), written);
    }
}

#[test]
fn every_elem_type_loads_as_its_kind_with_the_same_bytes() {
    let mut rng = rng();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("all.dat");
    let payloads: Vec<Vec<u8>> = ElemType::ALL
        .iter()
        .map(|&e| random_payload(&mut rng, e, 6))
        .collect();
    let mut w = DatWriter::create(&path, ElemType::ALL.len()).unwrap();
    for (elem, payload) in ElemType::ALL.iter().zip(&payloads) {
        w.write_raw(elem.name(), *elem, &[2, 3], payload).unwrap();
    }
    w.finish().unwrap();
    let dat = DatFile::open(&path).unwrap();
    for (elem, payload) in ElemType::ALL.iter().zip(&payloads) {
        let t = dat.tensor(elem.name(), Device::Cpu).unwrap();
        assert_eq!((t.kind(), t.size()), (elem.kind(), vec![2, 3]), "{elem}");
        let mut back = vec![0u8; payload.len()];
        t.copy_data_u8(&mut back, t.numel());
        assert_eq!(&back, payload, "{elem}");
    }
    // Elem 3 is i32: the original read these bytes as f32.
    let ints = dat.typed_slice::<i32>("i32").unwrap();
    let expected: Vec<i32> = payloads[3]
        .chunks(4)
        .map(|c| i32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(&*ints, expected.as_slice());
    let err = dat.typed_slice::<f32>("i32").unwrap_err();
    assert!(
        matches!(
            err,
            Error::KindMismatch {
                elem: ElemType::I32,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn float_entries_convert_to_other_float_kinds_and_others_refuse() {
    let mut rng = rng();
    let values: Vec<f32> = (0..12).map(|_| rng.gen_range(-4.0..4.0)).collect();
    let t = Tensor::from_slice(&values).reshape([3, 4]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f.dat");
    let mut w = DatWriter::create(&path, 2).unwrap();
    w.write_tensor("w", ElemType::BF16, &t).unwrap();
    w.write_tensor("ids", ElemType::I64, &Tensor::from_slice(&[1i64, 2, 3]))
        .unwrap();
    w.finish().unwrap();
    let dat = DatFile::open(&path).unwrap();
    assert_eq!(dat.get("w").unwrap().elem, ElemType::BF16);
    let as_f32 = dat.tensor_as("w", Kind::Float, Device::Cpu).unwrap();
    let reference = t.to_kind(Kind::BFloat16).to_kind(Kind::Float);
    let max_diff = (&as_f32 - &reference).abs().max().double_value(&[]);
    println!("bf16 -> f32 max diff vs tch conversion: {max_diff}");
    assert_eq!(max_diff, 0.0);
    let err = dat.tensor_as("ids", Kind::Float, Device::Cpu).unwrap_err();
    assert!(
        matches!(
            err,
            Error::KindMismatch {
                elem: ElemType::I64,
                ..
            }
        ),
        "{err}"
    );
    let err = dat.tensor("nope", Device::Cpu).unwrap_err();
    assert!(
        matches!(&err, Error::KeyNotFound { key, .. } if key == "nope"),
        "{err}"
    );
}

#[test]
fn nvfp4_pair_round_trips_with_and_without_global_scale() {
    let mut rng = rng();
    let x: Vec<f32> = (0..4 * 32).map(|_| rng.gen_range(-3.0..3.0)).collect();
    let single = quantize_ref(&x, 4, 32, ScaleMode::Single).unwrap();
    let two = quantize_ref(&x, 4, 32, ScaleMode::TwoLevel).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q.dat");
    let mut w = DatWriter::create(&path, 5).unwrap();
    w.write_nvfp4("a.weight", &single.as_ref()).unwrap();
    w.write_nvfp4("b", &two.as_ref()).unwrap();
    w.finish().unwrap();
    let dat = DatFile::open(&path).unwrap();
    assert_eq!(dat.get("a.weight.scale").unwrap().elem, ElemType::F8E4M3);
    assert_eq!(dat.get("a.weight.qdata").unwrap().shape, [4, 16]);
    let a = dat.nvfp4("a").unwrap().unwrap();
    assert_eq!(
        (a.qdata, a.scale, a.rows, a.cols, a.global_scale),
        (&single.qdata[..], &single.scale[..], 4, 32, None)
    );
    let b = dat.nvfp4("b").unwrap().unwrap();
    assert_eq!(
        (b.qdata, b.scale, b.global_scale),
        (&two.qdata[..], &two.scale[..], two.global_scale)
    );
    assert_eq!(dat.nvfp4_pairs().len(), 2);
}

#[test]
fn finish_with_fewer_entries_than_declared_fails_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.dat");
    let mut w = DatWriter::create(&path, 2).unwrap();
    w.write_raw("a", ElemType::U8, &[1], &[1]).unwrap();
    let err = w.finish().unwrap_err();
    assert!(
        matches!(
            err,
            Error::CountMismatch {
                declared: 2,
                written: 1,
                ..
            }
        ),
        "{err}"
    );
    assert!(
        dir_entries(dir.path()).is_empty(),
        "left behind: {:?}",
        dir_entries(dir.path())
    );
}

#[test]
fn writing_more_entries_than_declared_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = DatWriter::create(dir.path().join("m.dat"), 1).unwrap();
    w.write_raw("a", ElemType::U8, &[1], &[1]).unwrap();
    let err = w.write_raw("b", ElemType::U8, &[1], &[1]).unwrap_err();
    assert!(
        matches!(
            err,
            Error::CountMismatch {
                declared: 1,
                written: 2,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn duplicate_keys_and_wrong_payload_sizes_are_refused_before_writing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.dat");
    let mut w = DatWriter::create(&path, 2).unwrap();
    w.write_raw("a", ElemType::F32, &[2], &[0; 8]).unwrap();
    let err = w.write_raw("a", ElemType::F32, &[2], &[0; 8]).unwrap_err();
    assert!(
        matches!(&err, Error::DuplicateWrite { key, first: 0 } if key == "a"),
        "{err}"
    );
    let err = w.write_raw("b", ElemType::F32, &[2], &[0; 7]).unwrap_err();
    assert!(
        matches!(
            err,
            Error::PayloadSize {
                expected: 8,
                got: 7,
                ..
            }
        ),
        "{err}"
    );
    // The refusals wrote nothing: the file is still consistent and finishes.
    w.write_raw("b", ElemType::F32, &[2], &[0; 8]).unwrap();
    w.finish().unwrap();
    assert_eq!(DatFile::open(&path).unwrap().entries().len(), 2);
}

#[test]
fn finish_refuses_a_qdata_without_its_scale() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.dat");
    let mut w = DatWriter::create(&path, 1).unwrap();
    w.write_raw("x.weight.qdata", ElemType::U8, &[1, 8], &[0; 8])
        .unwrap();
    let err = w.finish().unwrap_err();
    assert!(matches!(err, Error::MissingScale { .. }), "{err}");
    assert!(!path.exists());
}

#[test]
fn existing_file_is_untouched_until_finish_and_replaced_whole() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.dat");
    std::fs::write(&path, b"old").unwrap();
    {
        let mut w = DatWriter::create(&path, 1).unwrap();
        w.write_raw("a", ElemType::U8, &[3], &[1, 2, 3]).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
        // Dropped without finish: a crash stand-in.
    }
    assert_eq!(std::fs::read(&path).unwrap(), b"old");
    assert_eq!(dir_entries(dir.path()), ["m.dat"]);
    let mut w = DatWriter::create(&path, 1).unwrap();
    w.write_raw("a", ElemType::U8, &[3], &[1, 2, 3]).unwrap();
    w.finish().unwrap();
    assert_eq!(
        DatFile::open(&path)
            .unwrap()
            .bytes(&DatFile::open(&path).unwrap().entries()[0]),
        [1, 2, 3]
    );
    assert_eq!(dir_entries(dir.path()), ["m.dat"]);
}

#[test]
fn write_tensor_refuses_floats_as_nvfp4_storage_types() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = DatWriter::create(dir.path().join("m.dat"), 1).unwrap();
    let err = w
        .write_tensor("s", ElemType::F8E4M3, &Tensor::from_slice(&[1.0f32]))
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::KindMismatch {
                elem: ElemType::F8E4M3,
                ..
            }
        ),
        "{err}"
    );
    w.write_tensor("s", ElemType::F8E4M3, &Tensor::from_slice(&[0x38u8]))
        .unwrap();
}

#[test]
#[ignore = "needs CUDA"]
fn loads_to_cuda_with_the_same_values() {
    test_support::cuda();
    let mut rng = rng();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.dat");
    let payloads: Vec<Vec<u8>> = ElemType::ALL
        .iter()
        .map(|&e| random_payload(&mut rng, e, 10))
        .collect();
    let mut w = DatWriter::create(&path, ElemType::ALL.len()).unwrap();
    for (elem, payload) in ElemType::ALL.iter().zip(&payloads) {
        w.write_raw(elem.name(), *elem, &[5, 2], payload).unwrap();
    }
    w.finish().unwrap();
    let dat = DatFile::open(&path).unwrap();
    let seen: HashSet<_> = dat.entries().iter().map(|e| e.key.clone()).collect();
    assert_eq!(seen.len(), ElemType::ALL.len());
    for (elem, payload) in ElemType::ALL.iter().zip(&payloads) {
        let t = dat.tensor(elem.name(), Device::Cuda(0)).unwrap();
        assert_eq!(
            (t.device(), t.kind(), t.size()),
            (Device::Cuda(0), elem.kind(), vec![5, 2])
        );
        let back = t.to_device(Device::Cpu);
        let mut bytes = vec![0u8; payload.len()];
        back.copy_data_u8(&mut bytes, back.numel());
        assert_eq!(&bytes, payload, "{elem}");
    }
}
