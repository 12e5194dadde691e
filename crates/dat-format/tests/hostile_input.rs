//! One negative test per failure mode of a hostile `.dat` file: each must be
//! its own error variant naming the entry and byte offset, with a hint, and
//! never a panic or an allocation sized by an unchecked header field.

mod common;

use common::{dat_bytes, header, varint};
use dat_format::{parse_index, DatFile, EntryRef, Error, MAX_DIM, MAX_NDIM};

fn parse_err(bytes: &[u8]) -> Error {
    let err = parse_index(bytes).expect_err("hostile input must be rejected");
    let msg = err.to_string();
    println!("{msg}");
    assert!(msg.contains("; hint: "), "message lacks a hint: {msg}");
    err
}

fn named(index: usize, key: &str) -> EntryRef {
    EntryRef {
        index: Some(index),
        key: Some(key.to_owned()),
    }
}

fn unnamed(index: usize) -> EntryRef {
    EntryRef {
        index: Some(index),
        key: None,
    }
}

#[test]
fn empty_file_is_a_truncated_header_at_the_entry_count() {
    let err = parse_err(&[]);
    assert!(
        matches!(&err, Error::TruncatedHeader { entry, field: "entry count", offset: 0, file_len: 0, .. } if entry.index.is_none()),
        "{err:?}"
    );
}

#[test]
fn key_cut_short_is_a_truncated_header_naming_the_entry_and_offset() {
    let mut bytes = varint(1);
    bytes.extend(varint(5));
    bytes.extend_from_slice(b"ab");
    let err = parse_err(&bytes);
    assert!(
        matches!(&err, Error::TruncatedHeader { entry, field: "key bytes", offset: 2, needed: 5, file_len: 4 } if *entry == unnamed(0)),
        "{err:?}"
    );
    assert!(err.to_string().contains("entry #0") && err.to_string().contains("byte 2"));
}

#[test]
fn varint_cut_short_inside_a_dim_is_a_truncated_header() {
    let mut bytes = varint(1);
    bytes.extend(header(b"w", 6, &[]));
    bytes.pop(); // drop ndim 0 ...
    bytes.extend([1, 0x80]); // ... ndim 1, then a dim varint that never ends
    let err = parse_err(&bytes);
    assert!(
        matches!(&err, Error::TruncatedHeader { entry, field: "dim 0", offset: 5, .. } if *entry == named(0, "w")),
        "{err:?}"
    );
}

#[test]
fn count_far_beyond_the_file_is_truncation_not_a_huge_allocation() {
    let mut bytes = varint(1 << 60);
    bytes.extend(header(b"a", 0, &[1]));
    bytes.push(7);
    let err = parse_err(&bytes);
    assert!(
        matches!(&err, Error::TruncatedHeader { entry, field: "key length", .. } if *entry == unnamed(1)),
        "{err:?}"
    );
}

#[test]
fn huge_key_length_is_truncation_not_a_huge_allocation() {
    let mut bytes = varint(1);
    bytes.extend(varint(1 << 62));
    bytes.extend_from_slice(b"abc");
    let err = parse_err(&bytes);
    assert!(
        matches!(&err, Error::TruncatedHeader { field: "key bytes", needed, .. } if *needed == 1 << 62),
        "{err:?}"
    );
}

#[test]
fn short_payload_is_a_truncated_payload_with_sizes() {
    let mut bytes = dat_bytes(&[("ok", 0, &[2], &[1, 2])]);
    let data_offset = bytes.len() as u64 + header(b"w", 6, &[2, 2]).len() as u64;
    bytes.extend(header(b"w", 6, &[2, 2]));
    bytes.extend_from_slice(&[0u8; 10]);
    bytes[0] = 2; // two entries
    let err = parse_err(&bytes);
    assert!(
        matches!(&err, Error::TruncatedPayload { entry, offset, needed: 16, available: 10 } if *entry == named(1, "w") && *offset == data_offset),
        "{err:?}"
    );
}

#[test]
fn varint_longer_than_64_bits_is_an_overflow() {
    let mut bytes = varint(1);
    bytes.extend([0xff; 10]);
    bytes.push(0x01);
    let err = parse_err(&bytes);
    assert!(
        matches!(&err, Error::VarintOverflow { entry, field: "key length", offset: 1 } if *entry == unnamed(0)),
        "{err:?}"
    );
}

#[test]
fn absurd_ndim_is_rejected_before_reading_dims() {
    let mut bytes = varint(1);
    bytes.extend(header(b"w", 6, &[]));
    bytes.pop();
    bytes.extend(varint(1_000_000));
    let err = parse_err(&bytes);
    assert!(
        matches!(&err, Error::TooManyDims { entry, offset: 4, ndim: 1_000_000, max } if *entry == named(0, "w") && *max == MAX_NDIM),
        "{err:?}"
    );
}

#[test]
fn absurd_dim_is_rejected_with_its_axis() {
    let bytes = dat_bytes(&[("w", 0, &[1, MAX_DIM + 1], &[])]);
    let err = parse_err(&bytes);
    assert!(
        matches!(&err, Error::AbsurdDim { entry, offset: 6, axis: 1, dim, .. } if *entry == named(0, "w") && *dim == MAX_DIM + 1),
        "{err:?}"
    );
}

#[test]
fn numel_times_size_overflow_is_reported() {
    // 2^40 * 2^23 = 2^63 elements fit in u64, 8 bytes each do not.
    let bytes = dat_bytes(&[("big", 7, &[1 << 40, 1 << 23], &[])]);
    let err = parse_err(&bytes);
    assert!(
        matches!(&err, Error::SizeOverflow { entry, offset: 1, .. } if *entry == named(0, "big")),
        "{err:?}"
    );
    // And numel itself overflowing.
    let bytes = dat_bytes(&[("big", 0, &[1 << 40, 1 << 40], &[])]);
    assert!(matches!(parse_err(&bytes), Error::SizeOverflow { .. }));
}

#[test]
fn unknown_elem_type_names_the_code() {
    let bytes = dat_bytes(&[("w", 8, &[1], &[0])]);
    let err = parse_err(&bytes);
    assert!(
        matches!(&err, Error::UnknownElemType { entry, offset: 3, code: 8 } if *entry == named(0, "w")),
        "{err:?}"
    );
}

#[test]
fn non_utf8_key_is_rejected_with_the_bad_position() {
    let mut bytes = varint(1);
    bytes.extend(header(&[b'f', 0xff, b'g'], 0, &[]));
    bytes.push(0);
    let err = parse_err(&bytes);
    assert!(
        matches!(&err, Error::NonUtf8Key { entry, offset: 2, valid_up_to: 1, .. } if *entry == unnamed(0)),
        "{err:?}"
    );
}

#[test]
fn duplicate_key_names_both_entries() {
    let bytes = dat_bytes(&[
        ("a", 0, &[1], &[1]),
        ("b", 0, &[1], &[2]),
        ("a", 0, &[1], &[3]),
    ]);
    let err = parse_err(&bytes);
    let second_offset = 1 + 2 * (header(b"a", 0, &[1]).len() as u64 + 1);
    assert!(
        matches!(&err, Error::DuplicateKey { entry, offset, first: 0 } if *entry == named(2, "a") && *offset == second_offset),
        "{err:?}"
    );
}

#[test]
fn bytes_after_the_last_entry_are_rejected() {
    let mut bytes = dat_bytes(&[("a", 0, &[1], &[1])]);
    let len = bytes.len() as u64;
    bytes.extend([0, 0, 0]);
    let err = parse_err(&bytes);
    assert!(
        matches!(&err, Error::TrailingBytes { offset, extra: 3, count: 1 } if *offset == len),
        "{err:?}"
    );
}

#[test]
fn qdata_without_scale_is_rejected() {
    let bytes = dat_bytes(&[("x.weight.qdata", 0, &[2, 8], &[0; 16])]);
    let err = parse_err(&bytes);
    assert!(
        matches!(&err, Error::MissingScale { entry, scale_key } if *entry == named(0, "x.weight.qdata") && scale_key == "x.weight.scale"),
        "{err:?}"
    );
}

#[test]
fn scale_shape_other_than_out_by_in_over_16_is_rejected() {
    let bytes = dat_bytes(&[
        ("x.weight.qdata", 0, &[2, 8], &[0; 16]),
        ("x.weight.scale", 101, &[2, 2], &[0; 4]),
    ]);
    let err = parse_err(&bytes);
    assert!(
        matches!(&err, Error::BadScaleShape { entry, expected, got } if *entry == named(1, "x.weight.scale") && expected == &[2, 1] && got == &[2, 2]),
        "{err:?}"
    );
}

#[test]
fn in_not_a_multiple_of_16_is_rejected() {
    let bytes = dat_bytes(&[
        ("x.qdata", 0, &[2, 4], &[0; 8]),
        ("x.scale", 101, &[2, 0], &[]),
    ]);
    let err = parse_err(&bytes);
    assert!(
        matches!(&err, Error::ColsNotMultipleOf16 { entry, cols: 8 } if *entry == named(0, "x.qdata")),
        "{err:?}"
    );
}

#[test]
fn qdata_that_is_not_a_matrix_is_rejected() {
    let bytes = dat_bytes(&[
        ("x.qdata", 0, &[16], &[0; 16]),
        ("x.scale", 101, &[2], &[0; 2]),
    ]);
    let err = parse_err(&bytes);
    assert!(
        matches!(&err, Error::BadQdataShape { entry, shape } if *entry == named(0, "x.qdata") && shape == &[16]),
        "{err:?}"
    );
}

#[test]
fn scales_stored_as_f16_are_rejected() {
    // The original once broke its kernels by writing scales as f16
    // (docs/Formats.md, "Defects of the original").
    let bytes = dat_bytes(&[
        ("x.qdata", 0, &[1, 8], &[0; 8]),
        ("x.scale", 5, &[1, 1], &[0; 2]),
    ]);
    let err = parse_err(&bytes);
    assert!(
        matches!(&err, Error::PairElemType { entry, role: "scale", .. } if *entry == named(1, "x.scale")),
        "{err:?}"
    );
}

#[test]
fn global_scale_of_several_values_is_rejected_at_parse() {
    let bytes = dat_bytes(&[
        ("x.qdata", 0, &[1, 8], &[0; 8]),
        ("x.scale", 101, &[1, 1], &[0x38]),
        ("x.global_scale", 6, &[2], &[0; 8]),
    ]);
    let err = parse_err(&bytes);
    assert!(
        matches!(&err, Error::BadGlobalScale { entry, .. } if *entry == named(2, "x.global_scale")),
        "{err:?}"
    );
}

fn open_bytes(bytes: &[u8]) -> (tempfile::TempDir, DatFile) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.dat");
    std::fs::write(&path, bytes).unwrap();
    let dat = DatFile::open(&path).unwrap();
    (dir, dat)
}

#[test]
fn negative_global_scale_is_rejected_when_the_pair_is_read() {
    let bytes = dat_bytes(&[
        ("x.qdata", 0, &[1, 8], &[0; 8]),
        ("x.scale", 101, &[1, 1], &[0x38]),
        ("x.global_scale", 6, &[1], &(-1.0f32).to_le_bytes()),
    ]);
    let (_dir, dat) = open_bytes(&bytes);
    let err = dat.nvfp4("x").unwrap_err();
    assert!(
        matches!(&err, Error::BadGlobalScale { entry, reason } if *entry == named(2, "x.global_scale") && reason.contains("-1")),
        "{err}"
    );
}

#[test]
fn scale_without_qdata_is_an_error_when_asked_for() {
    let bytes = dat_bytes(&[("x.weight.scale", 101, &[1, 1], &[0x38])]);
    let (_dir, dat) = open_bytes(&bytes);
    let err = dat.nvfp4("x").unwrap_err();
    assert!(
        matches!(&err, Error::MissingQdata { entry, qdata_key } if *entry == named(0, "x.weight.scale") && qdata_key == "x.weight.qdata"),
        "{err}"
    );
    assert!(
        dat.nvfp4("y").unwrap().is_none(),
        "an absent layer is Ok(None)"
    );
}

#[test]
fn missing_file_is_an_io_error_naming_the_path() {
    let err = DatFile::open("/nonexistent/dir/model.dat").unwrap_err();
    assert!(matches!(&err, Error::Io { op: "open", .. }), "{err:?}");
    assert!(
        err.to_string().contains("/nonexistent/dir/model.dat") && err.to_string().contains("hint:"),
        "{err}"
    );
}

#[test]
fn file_opened_from_disk_reports_the_same_errors_as_the_parser() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.dat");
    std::fs::write(&path, dat_bytes(&[("w", 200, &[1], &[0])])).unwrap();
    let err = DatFile::open(&path).unwrap_err();
    assert!(
        matches!(err, Error::UnknownElemType { code: 200, .. }),
        "{err:?}"
    );
}
