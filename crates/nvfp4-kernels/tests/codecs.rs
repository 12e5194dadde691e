//! The scalar codecs against brute-force nearest searches, and the tensor E4M3
//! encoders (ours and torch's float8 cast) against the scalar one.
//!
//! Why the tensor checks cover every f32: E4M3 rounding of a finite f32
//! depends only on its sign, exponent, the mantissa bits that are kept (at most
//! the top 3), the round bit right after them and whether any lower bit is set
//! (sticky). For every exponent the kept and round bits lie within the top 11
//! mantissa bits, so the set {every sign, exponent and top-11-bit pattern} x
//! {low 12 bits in 0, 1, 0x7FF, 0x800, 0x801, 0xFFF} holds a representative of
//! every rounding class, both tie cases included.

mod common;

use nvfp4_kernels::{e2m1_to_f32, e4m3_to_f32, f32_to_e2m1, f32_to_e4m3, f32_to_e4m3_tensor};
use rand::Rng;
use tch::{Device, Kind, Tensor};

/// Nearest finite E4M3 code of the input's sign, ties to the even code;
/// values beyond 448 pick 448 (the nearest finite value), which is the
/// documented saturation.
fn e4m3_brute_force(x: f32) -> u8 {
    if x.is_nan() {
        return 0x7F;
    }
    let sign = if x.is_sign_negative() { 0x80u8 } else { 0 };
    // Clamping first makes "nearest" well defined for infinity.
    let target = (x.abs() as f64).min(448.0);
    let mut best = 0u8;
    let mut best_err = f64::INFINITY;
    for code in 0u8..=0x7E {
        let err = (e4m3_to_f32(code) as f64 - target).abs();
        if err < best_err || (err == best_err && code.is_multiple_of(2)) {
            best = code;
            best_err = err;
        }
    }
    best | sign
}

/// Nearest E2M1 code, ties to the even code, sign from the sign bit.
fn e2m1_brute_force(x: f32) -> u8 {
    if x.is_nan() {
        return 0;
    }
    let target = (x.abs() as f64).min(6.0); // the clamp to +-6
    let mut best = 0u8;
    let mut best_err = f64::INFINITY;
    for code in 0u8..8 {
        let err = (e2m1_to_f32(code) as f64 - target).abs();
        if err < best_err || (err == best_err && code.is_multiple_of(2)) {
            best = code;
            best_err = err;
        }
    }
    best | if x.is_sign_negative() { 8 } else { 0 }
}

/// Every value, midpoint between neighbours and their f32 neighbours.
fn e4m3_boundary_points() -> Vec<f32> {
    let mut pts = Vec::new();
    let vals: Vec<f32> = (0u8..=0x7E).map(e4m3_to_f32).collect();
    for w in vals.windows(2) {
        let mid = (w[0] + w[1]) / 2.0; // exact: both have few mantissa bits
        for p in [w[0], mid, w[1]] {
            pts.extend([p, p.next_up(), p.next_down()]);
        }
    }
    pts.extend([
        448.0,
        464.0,
        464.0f32.next_down(),
        464.0f32.next_up(),
        480.0,
        1e30,
        f32::MAX,
        f32::INFINITY,
    ]);
    pts.extend([f32::MIN_POSITIVE, f32::from_bits(1), 0.0]);
    let neg: Vec<f32> = pts.iter().map(|p| -p).collect();
    pts.extend(neg);
    pts
}

#[test]
fn e4m3_encoder_matches_brute_force_on_boundaries() {
    for x in e4m3_boundary_points() {
        assert_eq!(
            f32_to_e4m3(x),
            e4m3_brute_force(x),
            "x = {x:e} ({:#010x})",
            x.to_bits()
        );
    }
}

#[test]
fn e4m3_encoder_matches_brute_force_on_random_f32() {
    let mut rng = common::rng();
    for i in 0..150_000 {
        let x = match i % 3 {
            0 => f32::from_bits(rng.gen()), // any bit pattern, NaN included
            1 => rng.gen_range(-500.0f32..500.0),
            _ => rng.gen_range(-1.0f32..1.0) * 2f32.powi(rng.gen_range(-14..=9)),
        };
        assert_eq!(
            f32_to_e4m3(x),
            e4m3_brute_force(x),
            "x = {x:e} ({:#010x})",
            x.to_bits()
        );
    }
}

#[test]
fn e2m1_encoder_matches_brute_force() {
    let mut rng = common::rng();
    let mut pts: Vec<f32> = Vec::new();
    for code in 0u8..8 {
        let v = e2m1_to_f32(code);
        pts.extend([v, v.next_up(), v.next_down()]);
        if code < 7 {
            let mid = (v + e2m1_to_f32(code + 1)) / 2.0;
            pts.extend([mid, mid.next_up(), mid.next_down()]);
        }
    }
    pts.extend((0..100_000).map(|_| rng.gen_range(-7.0f32..7.0)));
    pts.extend([1e9, f32::INFINITY, f32::MIN_POSITIVE, -0.0]);
    for x in pts.iter().flat_map(|&p| [p, -p]) {
        assert_eq!(f32_to_e2m1(x), e2m1_brute_force(x), "x = {x:e}");
    }
}

/// One representative of every E4M3 rounding class (see the file doc), both signs.
fn class_representatives() -> Vec<f32> {
    const LOW: [u32; 6] = [0, 1, 0x7FF, 0x800, 0x801, 0xFFF];
    let mut out = Vec::with_capacity(2 * 256 * 2048 * LOW.len());
    for sign in [0u32, 1] {
        for exp in 0u32..256 {
            for top in 0u32..2048 {
                for low in LOW {
                    out.push(f32::from_bits(sign << 31 | exp << 23 | top << 12 | low));
                }
            }
        }
    }
    out
}

/// Compares `encoded` (u8 tensor) with the scalar encoder on `xs`.
fn assert_codes_match(label: &str, xs: &[f32], encoded: &Tensor) {
    let got =
        Vec::<u8>::try_from(&encoded.to_device(Device::Cpu).flatten(0, -1)).expect("u8 tensor");
    let mut mismatches = 0usize;
    for (x, g) in xs.iter().zip(&got) {
        let want = f32_to_e4m3(*x);
        if want != *g {
            if mismatches < 5 {
                println!(
                    "{label}: x = {x:e} ({:#010x}): got {g:#04x}, want {want:#04x}",
                    x.to_bits()
                );
            }
            mismatches += 1;
        }
    }
    assert_eq!(
        mismatches,
        0,
        "{label}: {mismatches} of {} inputs differ",
        xs.len()
    );
}

#[test]
fn tensor_e4m3_encoder_matches_scalar_on_every_rounding_class() {
    tensor_e4m3_encoder_matches_scalar_on_every_rounding_class_on(Device::Cpu);
}

#[test]
#[ignore = "needs CUDA"]
fn tensor_e4m3_encoder_matches_scalar_on_every_rounding_class_on_cuda() {
    tensor_e4m3_encoder_matches_scalar_on_every_rounding_class_on(test_support::cuda());
}

fn tensor_e4m3_encoder_matches_scalar_on_every_rounding_class_on(device: Device) {
    let xs = class_representatives();
    let t = Tensor::from_slice(&xs).to_device(device);
    let codes = f32_to_e4m3_tensor(&t).expect("encode");
    assert_eq!(codes.kind(), Kind::Uint8);
    assert_codes_match(&format!("f32_to_e4m3_tensor on {device:?}"), &xs, &codes);
}

/// torch's float8_e4m3fn cast after clamping to +-448 is RNE like ours: checked
/// so that kernels or other code may rely on it. Without the clamp torch gives
/// NaN from 464 up, which is why the clamp is part of the contract.
#[test]
fn torch_float8_cast_after_clamp_matches_scalar_encoder() {
    torch_float8_cast_after_clamp_matches_scalar_encoder_on(Device::Cpu);
}

#[test]
#[ignore = "needs CUDA"]
fn torch_float8_cast_after_clamp_matches_scalar_encoder_on_cuda() {
    torch_float8_cast_after_clamp_matches_scalar_encoder_on(test_support::cuda());
}

fn torch_float8_cast_after_clamp_matches_scalar_encoder_on(device: Device) {
    let xs: Vec<f32> = class_representatives()
        .into_iter()
        .filter(|x| !x.is_nan())
        .collect();
    let t = Tensor::from_slice(&xs).to_device(device);
    let cast = t
        .clamp(-448.0, 448.0)
        .to_kind(Kind::Float8e4m3fn)
        .view_dtype(Kind::Uint8);
    assert_codes_match(&format!("torch float8 cast on {device:?}"), &xs, &cast);
    let unclamped = Tensor::from_slice(&[470.0f32])
        .to_device(device)
        .to_kind(Kind::Float8e4m3fn);
    let byte =
        Vec::<u8>::try_from(&unclamped.view_dtype(Kind::Uint8).to_device(Device::Cpu)).expect("u8");
    println!(
        "torch float8 cast of 470 without clamp on {device:?}: {:#04x}",
        byte[0]
    );
}
