//! Helpers shared by the integration tests: a hand-rolled `.dat` byte
//! builder (independent of `DatWriter`, so hostile files can be crafted
//! field by field) and time-seeded randomness with the seed printed.
#![allow(dead_code)]

use std::path::PathBuf;

/// Unsigned LEB128, minimal.
pub fn varint(mut v: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return out;
        }
        out.push(b | 0x80);
    }
}

/// Header bytes of one entry (no payload).
pub fn header(key: &[u8], elem: u64, shape: &[u64]) -> Vec<u8> {
    let mut out = varint(key.len() as u64);
    out.extend_from_slice(key);
    out.extend(varint(elem));
    out.extend(varint(shape.len() as u64));
    for &d in shape {
        out.extend(varint(d));
    }
    out
}

/// A whole file: count, then each (key, elem, shape, payload).
pub fn dat_bytes(entries: &[(&str, u64, &[u64], &[u8])]) -> Vec<u8> {
    let mut out = varint(entries.len() as u64);
    for (key, elem, shape, payload) in entries {
        out.extend(header(key.as_bytes(), *elem, shape));
        out.extend_from_slice(payload);
    }
    out
}

/// The tiny fixture directory.
pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tiny")
        .join(name)
}
