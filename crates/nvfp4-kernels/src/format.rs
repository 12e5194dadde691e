//! NVFP4 format constants and scalar codecs: the spec (docs/Formats.md, "NVFP4")
//! written as code. Every other path (tch ops, CUDA kernels) must produce the
//! same bits as the functions here.
//!
//! # Layout
//! * Value: an E2M1 nibble, bit 3 = sign, magnitudes {0, 0.5, 1, 1.5, 2, 3, 4, 6}.
//! * Packing: byte `j` of a row holds element `2j` in the LOW nibble and `2j+1`
//!   in the HIGH nibble.
//! * Block: 16 consecutive elements of a row share one FP8 E4M3FN scale
//!   (bias 7, max 448, no infinities, only 0x7F/0xFF are NaN, exponent field 0
//!   is subnormal: `m/8 * 2^-6`).
//!
//! # Quantization formulas (bit-exact contract for every implementation)
//! All arithmetic is IEEE-754 binary32 with round-to-nearest-even; every `/` is a
//! true, correctly rounded division (CUDA: no `--use_fast_math`, no multiply by a
//! reciprocal), evaluated left to right exactly as written.
//!
//! Inputs in bf16/f16 are first converted to f32 (exact; f64 is rounded to f32). For a block `x[0..16]`
//! let `a = max |x[i]|` (f32).
//!
//! **Single** (`ScaleMode::Single`, the original files):
//! ```text
//! s    = f32_to_e4m3(a / 6.0)             // scale byte, RNE, saturates at 448
//! d    = e4m3_to_f32(s)                   // decoded block scale
//! c[i] = if d == 0 { 0 } else { f32_to_e2m1(x[i] / d) }
//! deq  = e2m1_to_f32(c[i]) * e4m3_to_f32(s)
//! ```
//!
//! **TwoLevel** (`ScaleMode::TwoLevel`), with `A = max |x|` over the whole tensor:
//! ```text
//! g    = global_scale_for_amax(A)         // A / 2688.0, or 1.0 if that is 0 or f32-subnormal
//! s    = f32_to_e4m3(a / 6.0 / g)         // i.e. (a / 6.0) / g
//! d    = e4m3_to_f32(s) * g
//! c[i] = if d == 0 { 0 } else { f32_to_e2m1(x[i] / d) }
//! deq  = e2m1_to_f32(c[i]) * e4m3_to_f32(s) * g   // i.e. (e2m1 * e4m3) * g
//! ```
//! A block whose decoded scale is 0 (all-zero block, or `a/6` below half the
//! smallest E4M3 subnormal 2^-9) stores code 0 (+0) for every element: the sign
//! of a zero is not kept there, so the block dequantizes to +0.
//!
//! A zero with its sign bit set in a block whose scale is non-zero gets code 8
//! (-0): `f32_to_e2m1` takes the sign from the sign bit.
//!
//! The error bound these formulas give is derived on
//! [`crate::quant_error_bound`].

/// Elements per E4M3 block scale.
pub const BLOCK_SIZE: usize = 16;
/// Largest E2M1 magnitude.
pub const E2M1_MAX: f32 = 6.0;
/// Largest finite E4M3FN magnitude.
pub const E4M3_MAX: f32 = 448.0;
/// `E2M1_MAX * E4M3_MAX`: the divisor of the two-level global scale.
pub const TWO_LEVEL_DIVISOR: f32 = E2M1_MAX * E4M3_MAX;

/// Value of each 4-bit E2M1 code; bit 3 is the sign (code 8 is -0.0).
pub const E2M1_VALUES: [f32; 16] = [
    0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0,
];

/// E4M3FN byte of the largest positive finite value (448).
pub const E4M3_MAX_CODE: u8 = 0x7E;
/// E4M3FN byte used for NaN.
pub const E4M3_NAN_CODE: u8 = 0x7F;

/// How block scales relate to the tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Hash)]
pub enum ScaleMode {
    /// One E4M3 scale per 16 elements, no global scale (the original's files).
    #[default]
    Single,
    /// E4M3 block scales times one f32 per-tensor scale `amax(tensor) / (6*448)`,
    /// which keeps every block scale inside E4M3's range.
    TwoLevel,
}

impl std::fmt::Display for ScaleMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ScaleMode::Single => "single",
            ScaleMode::TwoLevel => "two-level",
        })
    }
}

impl std::str::FromStr for ScaleMode {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "single" => Ok(ScaleMode::Single),
            "two-level" | "two_level" | "twolevel" => Ok(ScaleMode::TwoLevel),
            other => Err(format!(
                "unknown scale mode {other:?}; expected \"single\" or \"two-level\""
            )),
        }
    }
}

/// Decodes the low 4 bits of `code` as E2M1.
#[inline]
pub fn e2m1_to_f32(code: u8) -> f32 {
    E2M1_VALUES[(code & 0x0F) as usize]
}

/// Encodes `x` as the nearest E2M1 code.
///
/// Magnitudes are rounded to the nearest of {0, 0.5, 1, 1.5, 2, 3, 4, 6}; an
/// exact tie goes to the even code (mantissa bit 0): 0.25 -> 0, 0.75 -> 1,
/// 1.25 -> 1, 1.75 -> 2, 2.5 -> 2, 3.5 -> 4, 5 -> 4. Magnitudes above 6
/// (infinity included) clamp to 6. The sign comes from the sign bit (so -0.0
/// gives code 8). NaN gives code 0.
#[inline]
pub fn f32_to_e2m1(x: f32) -> u8 {
    if x.is_nan() {
        return 0;
    }
    let m = x.abs();
    // Each comparison adds one step of the magnitude code; `>` at thresholds
    // whose tie must go down (to an even code), `>=` where it must go up.
    let mag = (m > 0.25) as u8
        + (m >= 0.75) as u8
        + (m > 1.25) as u8
        + (m >= 1.75) as u8
        + (m > 2.5) as u8
        + (m >= 3.5) as u8
        + (m > 5.0) as u8;
    mag | ((x.is_sign_negative() as u8) << 3)
}

/// Decodes an FP8 E4M3FN byte: bias 7, exponent field 0 is subnormal
/// (`m/8 * 2^-6`), no infinities, only 0x7F and 0xFF are NaN (exponent-15
/// codes 0x78..=0x7E are the finite values 256..448).
#[inline]
pub fn e4m3_to_f32(byte: u8) -> f32 {
    let sign = if byte & 0x80 != 0 { -1.0f32 } else { 1.0 };
    let exp = ((byte >> 3) & 0x0F) as i32;
    let man = (byte & 0x07) as f32;
    let mag = match (exp, byte & 0x07) {
        (15, 7) => return f32::NAN,
        (0, _) => man * (1.0 / 512.0), // m/8 * 2^-6, exact
        _ => (1.0 + man / 8.0) * f32::from_bits(((exp - 7 + 127) as u32) << 23),
    };
    sign * mag
}

/// Encodes `x` as FP8 E4M3FN, rounding to nearest with ties to even.
///
/// Saturation rule: `|x| >= 448` (infinity included) gives 0x7E / 0xFE
/// (+-448), never NaN; values in (448, 464) would round to 448 anyway, and
/// E4M3FN has no infinity to overflow to. NaN gives 0x7F. Values below the
/// smallest subnormal round to (signed) zero; -0.0 gives 0x80.
#[inline]
pub fn f32_to_e4m3(x: f32) -> u8 {
    if x.is_nan() {
        return E4M3_NAN_CODE;
    }
    let sign = ((x.to_bits() >> 24) & 0x80) as u8;
    let m = x.abs();
    if m >= E4M3_MAX {
        return sign | E4M3_MAX_CODE;
    }
    if m < 0.015625 {
        // 2^-6, the smallest normal E4M3 magnitude.
        // Subnormal E4M3: value = k * 2^-9, k in 0..=8 (k = 8 is the smallest
        // normal, whose code 0x08 is also 8). Scaling by 512 is exact.
        return sign | (m * 512.0).round_ties_even() as u8;
    }
    // Normal: keep 3 of the 23 mantissa bits, rounding to nearest even with the
    // classic add-half-minus-one-plus-lsb trick; a carry bumps the exponent.
    let bits = m.to_bits();
    let lsb = (bits >> 20) & 1;
    let rounded = bits + 0x0007_FFFF + lsb;
    let exp = (rounded >> 23) as i32 - 127 + 7; // 1..=15 here
    let man = (rounded >> 20) & 0x07;
    sign | ((exp as u8) << 3) | man as u8
}

/// Packs two E2M1 codes into one byte: `even` (element 2j) in the low nibble.
#[inline]
pub fn pack_nibbles(even: u8, odd: u8) -> u8 {
    (even & 0x0F) | ((odd & 0x0F) << 4)
}

/// Splits a packed byte into `(even, odd)` codes.
#[inline]
pub fn unpack_nibbles(byte: u8) -> (u8, u8) {
    (byte & 0x0F, byte >> 4)
}

/// The two-level per-tensor scale for a tensor whose `max |x|` is `amax`:
/// `amax / 2688` (so the largest block scale lands on E4M3's 448), or 1.0 when
/// that quotient is 0 or f32-subnormal (all-zero or vanishingly small tensors,
/// where a subnormal global scale would lose the precision it exists for).
#[inline]
pub fn global_scale_for_amax(amax: f32) -> f32 {
    let g = amax / TWO_LEVEL_DIVISOR;
    if g >= f32::MIN_POSITIVE && g.is_finite() {
        g
    } else {
        1.0
    }
}

/// All 256 E4M3FN bytes decoded (index = byte), as used by lookup-table paths.
pub fn e4m3_table() -> [f32; 256] {
    std::array::from_fn(|b| e4m3_to_f32(b as u8))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e2m1_ties_go_to_even_codes() {
        let cases = [
            (0.25, 0u8),
            (0.75, 2),
            (1.25, 2),
            (1.75, 4),
            (2.5, 4),
            (3.5, 6),
            (5.0, 6),
            (6.0, 7),
            (1e30, 7),
            (f32::INFINITY, 7),
        ];
        for (x, code) in cases {
            assert_eq!(f32_to_e2m1(x), code, "x = {x}");
            assert_eq!(f32_to_e2m1(-x), code | 8, "x = -{x}");
        }
    }

    #[test]
    fn e2m1_keeps_sign_of_negative_zero_and_maps_nan_to_zero() {
        assert_eq!(f32_to_e2m1(-0.0), 8);
        assert_eq!(f32_to_e2m1(0.0), 0);
        assert_eq!(f32_to_e2m1(f32::NAN), 0);
        assert_eq!(f32_to_e2m1(-f32::NAN), 0);
    }

    #[test]
    fn e2m1_codes_round_trip() {
        for code in 0u8..16 {
            assert_eq!(f32_to_e2m1(e2m1_to_f32(code)), code);
        }
    }

    #[test]
    fn e4m3_exponent_15_codes_are_finite_except_0x7f() {
        // Regression: the original decoded every exponent-15 code as NaN.
        let expect = [256.0, 288.0, 320.0, 352.0, 384.0, 416.0, 448.0];
        for (i, v) in expect.iter().enumerate() {
            assert_eq!(e4m3_to_f32(0x78 + i as u8), *v);
            assert_eq!(e4m3_to_f32(0xF8 + i as u8), -*v);
        }
        assert!(e4m3_to_f32(0x7F).is_nan());
        assert!(e4m3_to_f32(0xFF).is_nan());
    }

    #[test]
    fn e4m3_subnormals_decode_as_m_over_8_times_2_pow_minus_6() {
        for m in 0u8..8 {
            assert_eq!(e4m3_to_f32(m), m as f32 / 8.0 * 2f32.powi(-6));
        }
        assert_eq!(e4m3_to_f32(0x08), 2f32.powi(-6));
    }

    #[test]
    fn e4m3_round_trips_every_non_nan_byte() {
        for b in 0u8..=255 {
            if b & 0x7F == 0x7F {
                continue;
            }
            assert_eq!(f32_to_e4m3(e4m3_to_f32(b)), b, "byte {b:#04x}");
        }
    }

    #[test]
    fn e4m3_saturates_and_maps_nan() {
        assert_eq!(f32_to_e4m3(448.0), 0x7E);
        assert_eq!(f32_to_e4m3(470.0), 0x7E);
        assert_eq!(f32_to_e4m3(1e30), 0x7E);
        assert_eq!(f32_to_e4m3(f32::INFINITY), 0x7E);
        assert_eq!(f32_to_e4m3(f32::NEG_INFINITY), 0xFE);
        assert_eq!(f32_to_e4m3(f32::NAN), 0x7F);
        assert_eq!(f32_to_e4m3(-0.0), 0x80);
    }

    #[test]
    fn e4m3_ties_round_to_even() {
        // 1.0625 lies halfway between 1.0 (0x38) and 1.125 (0x39).
        assert_eq!(f32_to_e4m3(1.0625), 0x38);
        // 1.1875 lies halfway between 1.125 (0x39) and 1.25 (0x3A).
        assert_eq!(f32_to_e4m3(1.1875), 0x3A);
        // Subnormal tie: 0.5 * 2^-9 goes to 0; 1.5 * 2^-9 goes to 2 * 2^-9.
        assert_eq!(f32_to_e4m3(0.5 / 512.0), 0x00);
        assert_eq!(f32_to_e4m3(1.5 / 512.0), 0x02);
        // Tie between the largest subnormal (7/512) and 2^-6 (8/512) goes to 8.
        assert_eq!(f32_to_e4m3(7.5 / 512.0), 0x08);
    }

    #[test]
    fn nibbles_pack_even_element_low() {
        assert_eq!(pack_nibbles(0x3, 0xC), 0xC3);
        assert_eq!(unpack_nibbles(0xC3), (0x3, 0xC));
        for b in 0u8..=255 {
            let (e, o) = unpack_nibbles(b);
            assert_eq!(pack_nibbles(e, o), b);
        }
    }

    #[test]
    fn global_scale_guards_zero_and_subnormal() {
        assert_eq!(global_scale_for_amax(0.0), 1.0);
        assert_eq!(global_scale_for_amax(1e-40), 1.0);
        assert_eq!(global_scale_for_amax(2688.0), 1.0);
        assert_eq!(global_scale_for_amax(5376.0), 2.0);
    }

    #[test]
    fn scale_mode_parses_its_display() {
        for m in [ScaleMode::Single, ScaleMode::TwoLevel] {
            assert_eq!(m.to_string().parse::<ScaleMode>().unwrap(), m);
        }
        assert!("three".parse::<ScaleMode>().is_err());
    }
}
