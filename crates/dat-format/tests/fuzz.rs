//! Fuzzing the parser (bounded, so it runs in CI in a few seconds): random
//! bytes, and random mutations and truncations of a valid file, must give Ok
//! or a typed error, never a panic; and whatever is accepted must describe
//! payloads that lie inside the file.

mod common;

use common::dat_bytes;
use dat_format::{parse_index, ElemType, TensorEntry};
use proptest::prelude::*;
use proptest::sample::Index;

/// A valid file touching every header path: several elem types, a 0-d
/// tensor, an empty tensor, multi-byte varints and an NVFP4 pair.
fn valid_file() -> Vec<u8> {
    let long_key = "k".repeat(200); // two-byte key length varint
    dat_bytes(&[
        ("a.qdata", 0, &[2, 8], &[0x21; 16]),
        ("a.scale", 101, &[2, 1], &[0x38, 0x40]),
        ("f32", 6, &[3], &[0; 12]),
        ("scalar", 3, &[], &[1, 0, 0, 0]),
        ("empty", 15, &[0, 300], &[]),
        (long_key.as_str(), 11, &[2], &[0, 1]),
        ("bf16", 15, &[1, 2], &[0, 0x3f, 0, 0x40]),
    ])
}

/// Invariants of an accepted index, checked against the bytes it came from.
fn check_accepted(bytes: &[u8], entries: &[TensorEntry]) {
    let mut end_of_previous = 0;
    for e in entries {
        assert!(e.header_offset >= end_of_previous, "entries overlap");
        assert!(e.data_offset > e.header_offset);
        let numel: u64 = e.shape.iter().map(|&d| d as u64).product();
        assert_eq!(e.nbytes, numel * e.elem.size() as u64);
        assert!(
            e.data_offset + e.nbytes <= bytes.len() as u64,
            "payload beyond the file"
        );
        assert_eq!(ElemType::from_code(e.elem.code()), Some(e.elem));
        end_of_previous = e.data_offset + e.nbytes;
    }
    if let Some(last) = entries.last() {
        assert_eq!(
            last.data_offset + last.nbytes,
            bytes.len() as u64,
            "bytes after the last entry"
        );
    }
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 3000,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn random_bytes_give_ok_or_a_typed_error(bytes in proptest::collection::vec(any::<u8>(), 0..96)) {
        if let Ok(entries) = parse_index(&bytes) {
            check_accepted(&bytes, &entries);
        }
    }

    #[test]
    fn mutated_valid_file_gives_ok_or_a_typed_error(
        edits in proptest::collection::vec((any::<Index>(), any::<u8>()), 1..6),
        cut in proptest::option::of(any::<Index>()),
    ) {
        let mut bytes = valid_file();
        for (at, value) in edits {
            let i = at.index(bytes.len());
            bytes[i] = value;
        }
        if let Some(cut) = cut {
            bytes.truncate(cut.index(bytes.len()));
        }
        match parse_index(&bytes) {
            Ok(entries) => check_accepted(&bytes, &entries),
            Err(e) => prop_assert!(e.to_string().contains("hint:"), "{}", e),
        }
    }

    #[test]
    fn every_strict_prefix_of_a_valid_file_is_rejected(cut in any::<Index>()) {
        let bytes = valid_file();
        let len = cut.index(bytes.len());
        prop_assert!(parse_index(&bytes[..len]).is_err(), "prefix of {} bytes accepted", len);
    }
}

#[test]
fn the_fuzzed_file_itself_is_valid() {
    let bytes = valid_file();
    let entries = parse_index(&bytes).unwrap();
    assert_eq!(entries.len(), 7);
    check_accepted(&bytes, &entries);
}

#[test]
fn mutations_reach_accepted_files_and_many_distinct_errors() {
    // Guards the fuzz tests against testing nothing: single-byte edits of the
    // valid file must sometimes be accepted (payload bytes) and otherwise hit
    // a variety of header checks.
    let mut state = test_support::seed() | 1;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let valid = valid_file();
    let (mut ok, mut variants) = (0, std::collections::HashSet::new());
    for _ in 0..4000 {
        let mut bytes = valid.clone();
        let i = (next() % bytes.len() as u64) as usize;
        bytes[i] = next() as u8;
        match parse_index(&bytes) {
            Ok(entries) => {
                check_accepted(&bytes, &entries);
                ok += 1;
            }
            Err(e) => {
                variants.insert(
                    format!("{e:?}")
                        .split([' ', '{', '('])
                        .next()
                        .unwrap()
                        .to_owned(),
                );
            }
        }
    }
    println!("accepted {ok} of 4000; error variants seen: {variants:?}");
    assert!(ok > 0, "no mutation was accepted");
    assert!(variants.len() >= 5, "only {variants:?}");
}
