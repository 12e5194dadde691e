//! Helpers shared by the integration tests: random tensors of every kind,
//! bitwise comparison.
#![allow(dead_code)]

use tch::{Device, Kind, Tensor};

#[allow(unused_imports)] // not every test binary uses both
pub use test_support::{dir_names, raw_bytes};

/// Every kind a checkpoint stores.
pub const ALL_KINDS: [Kind; 12] = [
    Kind::Float,
    Kind::BFloat16,
    Kind::Half,
    Kind::Double,
    Kind::Int8,
    Kind::Uint8,
    Kind::Int16,
    Kind::Int,
    Kind::Int64,
    Kind::Bool,
    Kind::Float8e4m3fn,
    Kind::Float8e5m2,
];

/// A tensor of `kind` and `shape` whose bytes are uniformly random: for
/// float kinds this includes NaNs with payloads, infinities, -0 and
/// subnormals, so only a bit-exact round trip compares equal. Bools are
/// random 0/1 (other bytes are not valid bools).
pub fn random_bits(kind: Kind, shape: &[i64]) -> Tensor {
    let numel: i64 = shape.iter().product();
    if kind == Kind::Bool {
        return Tensor::randint(2, shape, (Kind::Uint8, Device::Cpu)).to_kind(Kind::Bool);
    }
    let width = kind.elt_size_in_bytes() as i64;
    let bytes = Tensor::randint(256, [numel * width], (Kind::Uint8, Device::Cpu));
    bytes.view_dtype(kind).reshape(shape)
}

/// Asserts name, kind, shape and every bit are equal.
pub fn assert_bit_equal(got: &[(String, Tensor)], want: &[(String, Tensor)]) {
    assert_eq!(got.len(), want.len(), "tensor count");
    for ((gn, gt), (wn, wt)) in got.iter().zip(want) {
        assert_eq!(gn, wn, "names (and order)");
        assert_eq!(gt.kind(), wt.kind(), "{gn}: kind");
        assert_eq!(gt.size(), wt.size(), "{gn}: shape");
        assert!(raw_bytes(gt) == raw_bytes(wt), "{gn}: bytes differ");
    }
}
