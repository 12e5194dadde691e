//! The CPU reference quantizer: plain scalar Rust, one block at a time, written
//! to read like the formulas in [`crate::format`]. It is the oracle every
//! faster path (tch ops, CUDA kernels) is tested against, bit for bit.
//!
//! # Round trip `quantize(dequantize(q)) == q`
//! Exact (every byte equal) in `Single` mode when every block of `q` either
//! * has a scale byte in `0x01..=0x7E` (positive, finite, non-zero) and at
//!   least one `+-6` code (nibble 0x7 or 0xF), so that the block amax is
//!   exactly `6 * scale` and `a / 6` is the scale again; codes 0x8 (-0) are
//!   kept, because `f32_to_e2m1` reads the sign bit; or
//! * has scale 0x00 and every code 0x0 (not 0x8: a block with a zero scale
//!   stores +0 codes, see [`crate::format`]).
//!
//! In `TwoLevel` mode the codes and scales round-trip under the same block
//! condition plus one on the tensor: some block has scale 0x7E (448) and a
//! `+-6` code, so the recomputed global scale is `fl(fl(2688 g) / 2688)`,
//! which is `g` or a neighbour of it; block scales and codes are unaffected
//! by that last-bit change (they are far from any rounding boundary).

use crate::error::{Error, Result};
use crate::format::{
    e2m1_to_f32, e4m3_to_f32, f32_to_e2m1, f32_to_e4m3, global_scale_for_amax, pack_nibbles,
    unpack_nibbles, ScaleMode, BLOCK_SIZE, E2M1_MAX, TWO_LEVEL_DIVISOR,
};
use crate::host::{Nvfp4Host, Nvfp4HostRef};

/// Quantizes a row-major `[rows, cols]` f32 matrix to NVFP4.
///
/// Errors: `cols` not a multiple of 16, `x.len() != rows * cols`, or a
/// non-finite element (the first one is named by index, row and column).
pub fn quantize_ref(x: &[f32], rows: usize, cols: usize, mode: ScaleMode) -> Result<Nvfp4Host> {
    quantize_ref_named("input", x, rows, cols, mode)
}

/// Like [`quantize_ref`], naming the tensor in errors.
pub fn quantize_ref_named(
    name: &str,
    x: &[f32],
    rows: usize,
    cols: usize,
    mode: ScaleMode,
) -> Result<Nvfp4Host> {
    check_input(name, x, rows, cols)?;
    let global = match mode {
        ScaleMode::Single => None,
        ScaleMode::TwoLevel => Some(global_scale_for_amax(
            x.iter().fold(0.0f32, |m, v| m.max(v.abs())),
        )),
    };
    let mut qdata = Vec::with_capacity(rows * cols / 2);
    let mut scale = Vec::with_capacity(rows * cols / BLOCK_SIZE);
    for block in x.chunks_exact(BLOCK_SIZE) {
        let (s, codes) = quantize_block(block, global);
        scale.push(s);
        qdata.extend(codes.chunks_exact(2).map(|p| pack_nibbles(p[0], p[1])));
    }
    Ok(Nvfp4Host {
        qdata,
        scale,
        rows,
        cols,
        global_scale: global,
    })
}

/// Shape and finiteness checks shared by the quantizers.
fn check_input(name: &str, x: &[f32], rows: usize, cols: usize) -> Result<()> {
    if !cols.is_multiple_of(BLOCK_SIZE) {
        return Err(Error::ColsNotMultipleOfBlock {
            name: name.to_string(),
            rows,
            cols,
        });
    }
    let expected = rows.saturating_mul(cols);
    if x.len() != expected {
        return Err(Error::LengthMismatch {
            name: name.to_string(),
            what: "input",
            expected,
            got: x.len(),
        });
    }
    if let Some(index) = x.iter().position(|v| !v.is_finite()) {
        return Err(Error::NonFinite {
            name: name.to_string(),
            index,
            row: index / cols,
            col: index % cols,
            value: x[index],
        });
    }
    Ok(())
}

/// Quantizes one block of 16 finite values; `global` is the two-level scale.
/// Returns the E4M3 scale byte and the 16 E2M1 codes (unpacked).
pub fn quantize_block(block: &[f32], global: Option<f32>) -> (u8, [u8; BLOCK_SIZE]) {
    let amax = block.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let (s, d) = match global {
        None => {
            let s = f32_to_e4m3(amax / E2M1_MAX);
            (s, e4m3_to_f32(s))
        }
        Some(g) => {
            let s = f32_to_e4m3(amax / E2M1_MAX / g);
            (s, e4m3_to_f32(s) * g)
        }
    };
    let mut codes = [0u8; BLOCK_SIZE];
    if d != 0.0 {
        for (c, &v) in codes.iter_mut().zip(block) {
            *c = f32_to_e2m1(v / d);
        }
    }
    (s, codes)
}

/// Dequantizes to a row-major `[rows, cols]` f32 matrix:
/// `(e2m1(code) * e4m3(scale)) * global_scale`.
///
/// # Panics
/// If the public fields of `q` were set by hand to inconsistent lengths
/// (a ref built by [`Nvfp4HostRef::new`] never is).
pub fn dequantize_ref(q: &Nvfp4HostRef<'_>) -> Vec<f32> {
    let half_cols = q.cols / 2;
    let scale_cols = q.cols / BLOCK_SIZE;
    assert!(
        q.cols.is_multiple_of(BLOCK_SIZE)
            && q.qdata.len() == q.rows * half_cols
            && q.scale.len() == q.rows * scale_cols,
        "inconsistent Nvfp4HostRef (rows {}, cols {}, qdata {}, scale {}); build it with Nvfp4HostRef::new",
        q.rows,
        q.cols,
        q.qdata.len(),
        q.scale.len()
    );
    let mut out = Vec::with_capacity(q.rows * q.cols);
    // 8 packed bytes per 16-element block, each block with one scale byte.
    for (bytes, &s) in q.qdata.chunks_exact(BLOCK_SIZE / 2).zip(q.scale) {
        let d = e4m3_to_f32(s);
        for &b in bytes {
            let (even, odd) = unpack_nibbles(b);
            for code in [even, odd] {
                let v = e2m1_to_f32(code) * d;
                out.push(match q.global_scale {
                    Some(g) => v * g,
                    None => v,
                });
            }
        }
    }
    out
}

/// Upper bound on `|x - dequant(quant(x))|` for every element of a block whose
/// `max |x|` is `block_amax`, quantized with global scale `global_scale`
/// (`None` = 1, Single mode).
///
/// # Derivation
/// Let `g` be the global scale (1 in Single mode), `a` the block amax,
/// `t = a / (6 g)` the ideal E4M3 scale, `e = e4m3(s)` the stored (rounded)
/// scale and `D = e g` the block step. Each element is `x ~ c D` with `c` an
/// E2M1 value.
/// 1. **Scale rounding, E4M3 normal range** (`t >= 2^-6`): RNE to 3 mantissa
///    bits gives `|e - t| <= 2^-4 * 2^floor(log2 t) <= t / 16`.
/// 2. **E4M3 subnormal range** (`t < 2^-6`): the grid is `k * 2^-9`, so
///    `|e - t| <= 2^-10`; for `t <= 2^-10` the scale may round to 0.
/// 3. **Element rounding** (`|x| <= 6D`): E2M1 values are spaced 0.5 on [0, 2],
///    1 on [2, 4] and 2 on [4, 6]; nearest rounding of `x / D` is off by at most
///    half a gap, so `|x - cD| <= D` (and `<= D/4` when `|x| <= 2D`).
/// 4. **Clamp** (`|x| > 6D`, only when the scale rounded down, `e < t`): the
///    code is `+-6` and `|x| - 6D <= a - 6D = 6 g (t - e)`, which is
///    `<= 6 g t / 16` (normal) or `<= 6 g 2^-10` (subnormal).
/// 5. **Zero scale** (`e = 0`, so `t <= 2^-10`): every code is 0 and the error
///    is `|x| <= a = 6 g t < 6 g 2^-10`.
/// 6. **Saturation** (Single mode with `t > 448`): `e = 448` and the largest
///    element is off by `a - 2688 g`; two-level mode never saturates.
///
/// Normal range: `max(D, 6 g t / 16) <= (17/16) g t` since `D <= (17/16) g t`.
/// Subnormal range: `max(D, 6 g 2^-10, a) <= g (t + 6 * 2^-10)`.
/// The bound is the larger of that and the saturation term, plus slack for the
/// f32 roundings of `a/6`, `/g`, `x/D`, `e*g` and the dequant products
/// (relative `2^-20`) and for f32-subnormal steps when `g` is tiny
/// (absolute `16 * f32::MIN_POSITIVE`).
pub fn quant_error_bound(block_amax: f32, global_scale: Option<f32>) -> f64 {
    let g = global_scale.unwrap_or(1.0) as f64;
    let a = block_amax as f64;
    let t = a / (E2M1_MAX as f64 * g);
    let rounding = if t >= 2f64.powi(-6) {
        17.0 / 16.0 * g * t
    } else {
        g * (t + 6.0 * 2f64.powi(-10))
    };
    let saturation = a - TWO_LEVEL_DIVISOR as f64 * g;
    rounding.max(saturation) * (1.0 + 2f64.powi(-20)) + 16.0 * f32::MIN_POSITIVE as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_of_known_values_quantizes_exactly() {
        // amax 6 -> scale 1.0 (0x38); values already on the E2M1 grid.
        let block = [
            0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0,
        ];
        let (s, codes) = quantize_block(&block, None);
        assert_eq!(s, 0x38);
        assert_eq!(codes, std::array::from_fn(|i| i as u8));
    }

    #[test]
    fn zero_block_gets_zero_scale_and_positive_zero_codes() {
        let mut block = [0.0f32; 16];
        block[3] = -0.0;
        assert_eq!(quantize_block(&block, None), (0, [0; 16]));
        // Below half the smallest subnormal scale (2^-10 * 6): also all zero.
        let tiny = [5.0 * 2f32.powi(-10); 16];
        assert_eq!(quantize_block(&tiny, None), (0, [0; 16]));
    }

    #[test]
    fn clamp_applies_when_scale_rounds_down() {
        // amax/6 = 1.0625 is an E4M3 tie that rounds to 1.0: the amax element
        // (6.375 in scale units) clamps to code 7 (6.0).
        let mut block = [0.0f32; 16];
        block[0] = 6.375;
        let (s, codes) = quantize_block(&block, None);
        assert_eq!((s, codes[0]), (0x38, 7));
    }

    #[test]
    fn error_bound_is_nearly_attained() {
        // amax/6 = 1.0625 rounds down to scale 1.0; the element 5.0 is an
        // E2M1 tie (4 or 6) and goes to 4: error 1.0 = one full step D.
        let mut block = [0.0f32; 16];
        block[0] = 6.375;
        block[1] = 5.0;
        let q = quantize_ref(&block, 1, 16, ScaleMode::Single).unwrap();
        let y = dequantize_ref(&q.as_ref());
        let bound = quant_error_bound(6.375, None);
        assert_eq!(y[1], 4.0);
        let ratio = (5.0 - y[1] as f64) / bound;
        assert!(ratio > 0.88 && ratio <= 1.0, "error/bound = {ratio}");
    }

    #[test]
    fn quantize_names_first_non_finite_element() {
        let mut x = vec![1.0f32; 64];
        x[37] = f32::NAN;
        x[50] = f32::INFINITY;
        let err = quantize_ref(&x, 2, 32, ScaleMode::Single).unwrap_err();
        assert!(
            matches!(
                err,
                Error::NonFinite {
                    index: 37,
                    row: 1,
                    col: 5,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn quantize_rejects_bad_shapes() {
        let x = vec![1.0f32; 48];
        let err = quantize_ref(&x, 2, 24, ScaleMode::Single).unwrap_err();
        assert!(
            matches!(
                err,
                Error::ColsNotMultipleOfBlock {
                    rows: 2,
                    cols: 24,
                    ..
                }
            ),
            "{err}"
        );
        let err = quantize_ref(&x, 2, 32, ScaleMode::Single).unwrap_err();
        assert!(
            matches!(
                err,
                Error::LengthMismatch {
                    expected: 64,
                    got: 48,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn two_level_puts_largest_block_scale_at_448() {
        let x: Vec<f32> = (0..32).map(|i| (i as f32 - 7.0) * 1e-5).collect();
        let q = quantize_ref(&x, 1, 32, ScaleMode::TwoLevel).unwrap();
        let g = q.global_scale.unwrap();
        assert_eq!(g, x[31].abs() / 2688.0);
        assert_eq!(q.scale[1], 0x7E);
    }

    #[test]
    fn dequantize_repeats_scale_per_16_elements() {
        // Regression for the original's fallback, which tiled scales instead.
        let q = vec![0x22u8; 16]; // every element code 2 (1.0)
        let s = vec![0x38u8, 0x40]; // 1.0, 2.0
        let r = Nvfp4HostRef::new(&q, &s, 1, 32, Some(0.5)).unwrap();
        let out = dequantize_ref(&r);
        assert!(
            out[..16].iter().all(|&v| v == 0.5) && out[16..].iter().all(|&v| v == 1.0),
            "{out:?}"
        );
    }
}
