//! The NVFP4 formulas of [`crate::format`] written with tch tensor ops, so they
//! run on any device (CPU, CUDA) and give the same bits as
//! [`crate::quantize_ref`] / [`crate::dequantize_ref`].
//!
//! Two details keep the results bit-exact with the scalar reference:
//! * every division is tensor / tensor on the data's own device: on CUDA a
//!   division by a CPU scalar is computed as a multiply by the reciprocal,
//!   which is not the correctly rounded quotient the spec asks for;
//! * the E4M3 rounding is done with integer ops on the f32 bits (and `round`,
//!   which is half-to-even), not with a float8 cast: torch's cast turns values
//!   in [464, 480) into NaN and its rounding may differ between CPU builds.
//!
//! Functions come in pairs after tch's own convention: `f_*` returns a
//! `Result`, the plain name panics on an error (bad shape or kind).

use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};
use crate::format::ScaleMode;
use crate::format::{
    e2m1_to_f32, e4m3_table, BLOCK_SIZE, E2M1_MAX, E2M1_VALUES, E4M3_MAX, TWO_LEVEL_DIVISOR,
};
use crate::tensor::Nvfp4Tensor;

/// Float kinds accepted as input and produced as output.
fn is_float_kind(kind: Kind) -> bool {
    matches!(
        kind,
        Kind::Float | Kind::BFloat16 | Kind::Half | Kind::Double
    )
}

fn check_float(name: &str, what: &'static str, kind: Kind) -> Result<()> {
    if is_float_kind(kind) {
        Ok(())
    } else {
        Err(Error::WrongKind {
            name: name.to_string(),
            what,
            expected: "Float, BFloat16, Half or Double",
            got: kind,
        })
    }
}

/// A 0-dim f32 tensor on `device`, so that ops with it are tensor-tensor ops.
fn scalar_on(v: f32, device: Device) -> Result<Tensor> {
    Ok(Tensor::f_scalar_tensor(v as f64, (Kind::Float, device))?)
}

/// Per-block quantities shared by `quantize` and `fake_quantize`.
struct BlockScales {
    /// Block amax, f32 `[rows, nb, 1]`.
    amax: Tensor,
    /// E4M3 scale bytes, u8 `[rows, nb, 1]`.
    code: Tensor,
    /// Decoded E4M3 scale `e4m3(s)`, f32 `[rows, nb, 1]`.
    e4m3: Tensor,
    /// Global scale `g` as a 0-dim f32 tensor (two-level mode only).
    global: Option<Tensor>,
}

impl BlockScales {
    /// `d = e4m3(s) * g`: the divisor applied to each element.
    fn step(&self) -> Result<Tensor> {
        match &self.global {
            Some(g) => Ok(self.e4m3.f_mul(g)?),
            None => Ok(self.e4m3.shallow_clone()),
        }
    }
}

/// `g = amax / 2688`, or 1 when that is 0 or f32-subnormal
/// ([`crate::format::global_scale_for_amax`]), computed on the device.
fn global_scale_tensor(block_amax: &Tensor) -> Result<Tensor> {
    let device = block_amax.device();
    if block_amax.numel() == 0 {
        return scalar_on(1.0, device);
    }
    let g = block_amax
        .f_max()?
        .f_div(&scalar_on(TWO_LEVEL_DIVISOR, device)?)?;
    let ok = g
        .f_ge(f32::MIN_POSITIVE as f64)?
        .f_logical_and(&g.f_isfinite()?)?;
    Ok(g.f_where_scalarother(&ok, 1.0)?)
}

/// [`crate::f32_to_e4m3`] on every element of an f32 tensor (any device),
/// returning u8 codes of the same shape: RNE, saturating at +-448, NaN -> 0x7F.
///
/// Integer ops on the f32 bits, not a float8 cast (see the module doc).
pub fn f32_to_e4m3_tensor(t: &Tensor) -> Result<Tensor> {
    let t = t.f_to_kind(Kind::Float)?;
    let m = t.f_abs()?.f_clamp_max(E4M3_MAX as f64)?;
    // Normal range: RNE to 3 mantissa bits on the f32 bits, then rebias 127 -> 7.
    let bits = m.f_view_dtype(Kind::Int)?;
    let lsb = bits
        .f_bitwise_right_shift_tensor_scalar(20)?
        .f_bitwise_and(1)?;
    let rounded = bits.f_add_scalar(0x7FFFF)?.f_add(&lsb)?;
    let normal = rounded
        .f_bitwise_right_shift_tensor_scalar(20)?
        .f_sub_scalar((127 - 7) << 3)?;
    // Subnormal range (m < 2^-6): k = round_half_even(m * 512), an exact scaling.
    let sub = m.f_mul_scalar(512.0)?.f_round()?.f_to_kind(Kind::Int)?;
    let mag = sub.f_where_self(&m.f_lt(0.015625)?, &normal)?;
    let sign = t.f_signbit()?.f_to_kind(Kind::Int)?.f_mul_scalar(0x80)?;
    let code = mag
        .f_add(&sign)?
        .f_where_scalarother(&t.f_isnan()?.f_logical_not()?, 0x7F)?;
    Ok(code.f_to_kind(Kind::Uint8)?)
}

/// Looks `codes` (u8, any shape) up in `table` (`[256 or 16, width]` rows),
/// returning a tensor of the codes' shape with the last dim times `width`.
fn lookup(table: &[f32], width: i64, codes: &Tensor) -> Result<Tensor> {
    let device = codes.device();
    let lut = Tensor::f_from_slice(table)?
        .f_view([-1, width])?
        .f_to_device(device)?;
    let idx = codes.f_flatten(0, -1)?.f_to_kind(Kind::Int)?;
    let mut shape = codes.size();
    let vals = lut.f_index_select(0, &idx)?;
    if let Some(last) = shape.last_mut() {
        *last *= width;
    }
    Ok(vals.f_view(shape.as_slice())?)
}

/// Block amax, scale codes and decoded scales from `abs_blocks` (`|x|`, f32
/// `[rows, nb, 16]`).
fn block_scales(abs_blocks: &Tensor, mode: ScaleMode) -> Result<BlockScales> {
    let device = abs_blocks.device();
    let amax = abs_blocks.f_amax([-1i64].as_slice(), true)?;
    let mut t = amax.f_div(&scalar_on(E2M1_MAX, device)?)?;
    let global = match mode {
        ScaleMode::Single => None,
        ScaleMode::TwoLevel => Some(global_scale_tensor(&amax)?),
    };
    if let Some(g) = &global {
        t = t.f_div(g)?;
    }
    let code = f32_to_e4m3_tensor(&t)?;
    let e4m3 = lookup(&e4m3_table(), 1, &code)?;
    Ok(BlockScales {
        amax,
        code,
        e4m3,
        global,
    })
}

/// The unpacked E2M1 codes (u8 `[rows, nb, 16]`) of `blocks` given `|blocks|`
/// (consumed: divided in place) and the block step `d` (`[rows, nb, 1]`).
///
/// Magnitude: one step per threshold of `|x| / d` crossed, `>` where a tie
/// rounds down to the even code, `>=` where it rounds up, and the clamp to 6
/// for free. Sign: the sign bit of `x`, dropped where `d == 0` (those blocks
/// store +0 codes); dividing by +inf there makes their magnitudes 0.
fn e2m1_codes(blocks: &Tensor, mut abs_blocks: Tensor, d: &Tensor) -> Result<Tensor> {
    const STEPS: [(f64, bool); 7] = [
        (0.25, false),
        (0.75, true),
        (1.25, false),
        (1.75, true),
        (2.5, false),
        (3.5, true),
        (5.0, false),
    ];
    let nonzero = d.f_ne(0.0)?;
    let divisor = d.f_where_scalarother(&nonzero, f64::INFINITY)?;
    let m = abs_blocks.f_div_(&divisor)?;
    // One reused bool buffer for the comparisons (a u8 `out` takes a slow
    // casting loop on CPU), accumulated into the u8 codes in place.
    let hit = m.f_gt(STEPS[0].0)?;
    let mut code = hit.f_to_kind(Kind::Uint8)?;
    for (th, inclusive) in STEPS[1..].iter().copied() {
        if inclusive {
            _ = m.f_ge_scalar_out(&hit, th)?;
        } else {
            _ = m.f_gt_scalar_out(&hit, th)?;
        }
        _ = code.f_add_(&hit)?;
    }
    let mut sign = blocks
        .f_signbit()?
        .f_logical_and(&nonzero)?
        .f_to_kind(Kind::Uint8)?;
    _ = code.f_add_(&sign.f_mul_scalar_(8)?)?;
    Ok(code)
}

/// Quantizes a float `[rows, cols]` tensor (any device) to NVFP4 on the same
/// device (f64 input is rounded to f32 first, like the reference's input).
/// On CPU the scalar [`crate::quantize_ref`] is faster; this path exists for
/// GPUs and is kept bit-exact with it. Errors name the first non-finite element, a `cols` that is not a
/// multiple of 16, a rank other than 2, or a non-float kind.
pub fn quantize(x: &Tensor, mode: ScaleMode) -> Result<Nvfp4Tensor> {
    quantize_named("x", x, mode)
}

/// Like [`quantize`], naming the tensor (e.g. its weight key) in errors.
pub fn quantize_named(name: &str, x: &Tensor, mode: ScaleMode) -> Result<Nvfp4Tensor> {
    check_float(name, "x", x.f_kind()?)?;
    let size: Vec<usize> = x.size().iter().map(|&d| d as usize).collect();
    if size.len() != 2 {
        return Err(Error::WrongRank {
            name: name.to_string(),
            what: "x",
            expected: 2,
            got: size,
        });
    }
    let (rows, cols) = (size[0], size[1]);
    if !cols.is_multiple_of(BLOCK_SIZE) {
        return Err(Error::ColsNotMultipleOfBlock {
            name: name.to_string(),
            rows,
            cols,
        });
    }
    let (nb, r, c) = ((cols / BLOCK_SIZE) as i64, rows as i64, cols as i64);
    let blocks = x
        .f_detach()?
        .f_to_kind(Kind::Float)?
        .f_reshape([r, nb, BLOCK_SIZE as i64])?;
    let abs_blocks = blocks.f_abs()?;
    let scales = block_scales(&abs_blocks, mode)?;
    // A block amax is NaN or inf exactly when the block holds such a value, so
    // the full-size scan for the culprit only runs on failure.
    if scales.amax.f_isfinite()?.f_all()?.f_int64_value(&[])? == 0 {
        return Err(first_non_finite(name, &blocks, cols)?);
    }
    let codes = e2m1_codes(&blocks, abs_blocks, &scales.step()?)?;
    let pairs = codes.f_view([r, c / 2, 2])?;
    let mut packed = pairs.f_select(2, 1)?.f_mul_scalar(16)?;
    _ = packed.f_add_(&pairs.f_select(2, 0)?)?;
    let scale = scales.code.f_reshape([r, nb])?;
    let global = match &scales.global {
        Some(g) => Some(g.f_double_value(&[])? as f32),
        None => None,
    };
    Nvfp4Tensor::new_named(name, packed, scale, global)
}

/// The error naming the first non-finite element of `xf` (f32, row-major).
fn first_non_finite(name: &str, xf: &Tensor, cols: usize) -> Result<Error> {
    let bad = xf
        .f_isfinite()?
        .f_logical_not()?
        .f_flatten(0, -1)?
        .f_nonzero()?;
    let index = bad.f_int64_value(&[0, 0])?;
    let value = xf.f_flatten(0, -1)?.f_double_value(&[index])? as f32;
    let index = index as usize;
    Ok(Error::NonFinite {
        name: name.to_string(),
        index,
        row: index / cols,
        col: index % cols,
        value,
    })
}

/// Dequantizes to a `[rows, cols]` tensor of `kind` on `q`'s device:
/// `(e2m1(code) * e4m3(scale)) * global_scale`, each scale repeated for its
/// 16 elements.
///
/// # Panics
/// If `kind` is not a float kind (see [`f_dequantize`]).
pub fn dequantize(q: &Nvfp4Tensor, kind: Kind) -> Tensor {
    match f_dequantize(q, kind) {
        Ok(t) => t,
        Err(e) => panic!("nvfp4 dequantize: {e}"),
    }
}

/// Fallible [`dequantize`].
pub fn f_dequantize(q: &Nvfp4Tensor, kind: Kind) -> Result<Tensor> {
    check_float("nvfp4", "output", kind)?;
    let (r, c) = (q.rows() as i64, q.cols() as i64);
    let nb = c / BLOCK_SIZE as i64;
    // Each packed byte maps to its (even, odd) pair of values.
    let pairs: Vec<f32> = (0u16..256)
        .flat_map(|b| [e2m1_to_f32(b as u8), e2m1_to_f32((b >> 4) as u8)])
        .collect();
    let mut vals = lookup(&pairs, 2, q.qdata())?.f_view([r, nb, BLOCK_SIZE as i64])?;
    let e4m3 = lookup(&e4m3_table(), 1, q.scale())?.f_view([r, nb, 1])?;
    _ = vals.f_mul_(&e4m3)?;
    if let Some(g) = q.global_scale() {
        _ = vals.f_mul_scalar_(g as f64)?;
    }
    Ok(vals.f_view([r, c])?.f_to_kind(kind)?)
}

/// `dequantize(quantize(x))` in `x.kind()`, computed without packing the
/// codes and without autograd history. `x` may have any rank; blocks run along
/// the last dimension, which must be a multiple of 16.
///
/// Blocks that hold a NaN or an infinity come out as NaN (never silently
/// clamped), so a diverging weight stays visible.
///
/// # Panics
/// On a non-float kind, a scalar, or a last dimension not a multiple of 16
/// (see [`f_fake_quantize`]).
pub fn fake_quantize(x: &Tensor, mode: ScaleMode) -> Tensor {
    match f_fake_quantize(x, mode) {
        Ok(t) => t,
        Err(e) => panic!("nvfp4 fake_quantize: {e}"),
    }
}

/// Fallible [`fake_quantize`].
pub fn f_fake_quantize(x: &Tensor, mode: ScaleMode) -> Result<Tensor> {
    let kind = x.f_kind()?;
    check_float("x", "x", kind)?;
    let size = x.size();
    let cols = match size.last() {
        Some(&c) => c as usize,
        None => {
            return Err(Error::WrongRank {
                name: "x".into(),
                what: "x",
                expected: 2,
                got: vec![],
            })
        }
    };
    if !cols.is_multiple_of(BLOCK_SIZE) {
        let rows = x.numel().checked_div(cols).unwrap_or(0);
        return Err(Error::ColsNotMultipleOfBlock {
            name: "x".into(),
            rows,
            cols,
        });
    }
    tch::no_grad(|| {
        let blocks = x.f_detach()?.f_to_kind(Kind::Float)?.f_reshape([
            -1,
            (cols / BLOCK_SIZE) as i64,
            BLOCK_SIZE as i64,
        ])?;
        let abs_blocks = blocks.f_abs()?;
        let scales = block_scales(&abs_blocks, mode)?;
        let codes = e2m1_codes(&blocks, abs_blocks, &scales.step()?)?;
        // Poison blocks with a non-finite element (their amax is NaN or inf).
        let e4m3 = scales
            .e4m3
            .f_where_scalarother(&scales.amax.f_isfinite()?, f64::NAN)?;
        let mut out = lookup(&E2M1_VALUES, 1, &codes)?;
        _ = out.f_mul_(&e4m3)?;
        if let Some(g) = &scales.global {
            _ = out.f_mul_(g)?;
        }
        Ok(out.f_reshape(size.as_slice())?.f_to_kind(kind)?)
    })
}

/// Straight-through estimator: the forward value is exactly
/// `fake_quantize(x, mode)`, the gradient reaches `x` as if the quantizer were
/// the identity.
///
/// Written as `fq - (x.detach() - x)` rather than `x + (fq - x).detach()`:
/// both have the identity gradient, but only the first returns `fq` bit for
/// bit: `x + (fq - x)` can round away from `fq` in bf16/f16, and `fq + 0`
/// would turn a -0 into +0, while `fq - (+0)` keeps it.
///
/// # Panics
/// As [`fake_quantize`].
pub fn ste(x: &Tensor, mode: ScaleMode) -> Tensor {
    match f_ste(x, mode) {
        Ok(t) => t,
        Err(e) => panic!("nvfp4 ste: {e}"),
    }
}

/// Fallible [`ste`].
pub fn f_ste(x: &Tensor, mode: ScaleMode) -> Result<Tensor> {
    let fq = f_fake_quantize(x, mode)?;
    if !x.requires_grad() {
        return Ok(fq);
    }
    Ok(fq.f_sub(&x.f_detach()?.f_sub(x)?)?)
}
