//! Host side of `kernels/quantize.cu`: quantize and fake-quantize (the fused
//! STE weight pass) on CUDA tensors. Results are bit-identical to
//! [`crate::quantize_ref`] and to the tch-ops versions.

use tch::{Device, Kind, Tensor};

use super::checks::{check_tensor, dims};
use super::compile::KernelModule;
use super::runtime::{dev_ptr, fresh_copy, grid_1d, runtime, DeviceRuntime, KernelArg};
use crate::error::{Error, Result};
use crate::format::{global_scale_for_amax, ScaleMode, BLOCK_SIZE};
use crate::tensor::Nvfp4Tensor;

/// Blocks per SM for the streaming kernels' grid-stride launches.
pub(super) const WAVES: u32 = 8;
/// Threads per block of the streaming kernels.
pub(super) const THREADS: u32 = 256;

/// A float input checked and converted to what the kernels read: contiguous
/// f32 or bf16 (f16 and f64 go through f32, exactly as the tch ops do).
struct Input {
    x: Tensor,
    bf16: bool,
    cols: usize,
}

fn prepare_input(name: &str, x: &Tensor) -> Result<Input> {
    let kind = x.f_kind()?;
    if !matches!(
        kind,
        Kind::Float | Kind::BFloat16 | Kind::Half | Kind::Double
    ) {
        return Err(Error::WrongKind {
            name: name.into(),
            what: "x",
            expected: "Float, BFloat16, Half or Double",
            got: kind,
        });
    }
    let size = x.size();
    let cols = match size.last() {
        Some(&c) => c as usize,
        None => {
            return Err(Error::WrongRank {
                name: name.into(),
                what: "x",
                expected: 2,
                got: vec![],
            })
        }
    };
    if !cols.is_multiple_of(BLOCK_SIZE) {
        let rows = x.numel().checked_div(cols).unwrap_or(0);
        return Err(Error::ColsNotMultipleOfBlock {
            name: name.into(),
            rows,
            cols,
        });
    }
    let bf16 = kind == Kind::BFloat16;
    let x = x.f_detach()?;
    let x = if bf16 || kind == Kind::Float {
        x.f_contiguous()?
    } else {
        x.f_to_kind(Kind::Float)?.f_contiguous()?
    };
    // 16-byte vector loads need an aligned base (a view may start anywhere).
    let x = if dev_ptr(&x).is_multiple_of(16) {
        x
    } else {
        fresh_copy(&x)?
    };
    Ok(Input { x, bf16, cols })
}

/// `[amax bits as u32 (low word), !(first non-finite index) or 0]`, zeroed
/// on the device (a memset: no host copy, so no synchronisation).
fn stats_buffer(device: Device) -> Result<Tensor> {
    Ok(Tensor::f_zeros([2], (Kind::Int64, device))?)
}

fn launch_amax(rt: &DeviceRuntime, input: &Input, base: u64) -> Result<()> {
    let n = input.x.numel() as u64;
    let ept = if input.bf16 { 8 } else { 4 };
    let name = if input.bf16 {
        "nvfp4_amax_bf16"
    } else {
        "nvfp4_amax_f32"
    };
    rt.launch(
        KernelModule::Quantize,
        name,
        grid_1d(n / ept, THREADS, rt.sm_count, WAVES),
        &[
            KernelArg::Ptr(dev_ptr(&input.x)),
            KernelArg::U64(n),
            KernelArg::Ptr(base),
            KernelArg::Ptr(base + 8),
        ],
    )
}

/// Pointers of the optional outputs of one quantize-kernel launch.
struct QuantOutputs {
    qdata: u64,
    scale: u64,
    deq: u64,
}

/// Runs the amax scan (two-level) and one quantize-family kernel. `stats`
/// is the address of a [`stats_buffer`] (two-level mode and `check_finite`
/// need one; 0 otherwise); `check_finite` records the first non-finite index.
fn launch_quant(
    rt: &DeviceRuntime,
    input: &Input,
    mode: ScaleMode,
    kernel: &'static str,
    out: &QuantOutputs,
    stats: u64,
    check_finite: bool,
) -> Result<()> {
    let n = input.x.numel() as u64;
    let base = stats;
    let amax_ptr = match mode {
        ScaleMode::Single => 0,
        ScaleMode::TwoLevel => {
            launch_amax(rt, input, base)?;
            base
        }
    };
    // The amax scan already records the first non-finite element.
    let bad_ptr = if check_finite && mode == ScaleMode::Single {
        base + 8
    } else {
        0
    };
    let ept = if input.bf16 { 8 } else { 4 };
    rt.launch(
        KernelModule::Quantize,
        kernel,
        grid_1d(n / ept, THREADS, rt.sm_count, WAVES),
        &[
            KernelArg::Ptr(dev_ptr(&input.x)),
            KernelArg::Ptr(out.qdata),
            KernelArg::Ptr(out.scale),
            KernelArg::Ptr(out.deq),
            KernelArg::U64(n),
            KernelArg::Ptr(amax_ptr),
            KernelArg::Ptr(bad_ptr),
        ],
    )
}

/// Reads `stats` back (one synchronising copy): Err on a non-finite input,
/// else the global scale of two-level mode.
fn finish_stats(name: &str, input: &Input, stats: &Tensor, mode: ScaleMode) -> Result<Option<f32>> {
    let host: Vec<i64> = Vec::<i64>::try_from(stats.f_to_device(Device::Cpu)?)?;
    let bad = host[1] as u64;
    if bad != 0 {
        let index = !bad as usize;
        let value = input.x.f_flatten(0, -1)?.f_double_value(&[index as i64])? as f32;
        let cols = input.cols;
        return Err(Error::NonFinite {
            name: name.into(),
            index,
            row: index / cols,
            col: index % cols,
            value,
        });
    }
    Ok(match mode {
        ScaleMode::Single => None,
        ScaleMode::TwoLevel => Some(global_scale_for_amax(f32::from_bits(host[0] as u32))),
    })
}

/// Quantizes a float `[rows, cols]` CUDA tensor to NVFP4 on the same device
/// (bit-exact with [`crate::quantize_ref`]). Errors name a non-finite
/// element, a bad rank, kind or column count, or a kernel that cannot run.
pub fn quantize(x: &Tensor, mode: ScaleMode) -> Result<Nvfp4Tensor> {
    quantize_named("x", x, mode)
}

/// Like [`quantize`], naming the tensor in errors.
pub fn quantize_named(name: &str, x: &Tensor, mode: ScaleMode) -> Result<Nvfp4Tensor> {
    let size = x.size();
    if size.len() != 2 {
        return Err(Error::WrongRank {
            name: name.into(),
            what: "x",
            expected: 2,
            got: dims(&size),
        });
    }
    let input = prepare_input(name, x)?;
    let rt = runtime(x.device())?;
    let (rows, cols) = (size[0], size[1]);
    let dev = x.device();
    let qdata = Tensor::f_empty([rows, cols / 2], (Kind::Uint8, dev))?;
    let scale = Tensor::f_empty([rows, cols / BLOCK_SIZE as i64], (Kind::Uint8, dev))?;
    let stats = stats_buffer(dev)?;
    if input.x.numel() > 0 {
        let kernel = if input.bf16 {
            "nvfp4_quantize_bf16"
        } else {
            "nvfp4_quantize_f32"
        };
        let out = QuantOutputs {
            qdata: dev_ptr(&qdata),
            scale: dev_ptr(&scale),
            deq: 0,
        };
        launch_quant(&rt, &input, mode, kernel, &out, dev_ptr(&stats), true)?;
    }
    let global = finish_stats(name, &input, &stats, mode)?;
    Nvfp4Tensor::new_named(name, qdata, scale, global)
}

/// Single-mode [`quantize`] for inputs known to be finite (e.g. weights just
/// produced by an optimizer step): no scan for NaN/inf and no host
/// synchronisation, so it can be enqueued back to back. A non-finite input
/// gives unspecified codes instead of an error.
pub fn quantize_trusted(x: &Tensor) -> Result<Nvfp4Tensor> {
    let size = x.size();
    if size.len() != 2 {
        return Err(Error::WrongRank {
            name: "x".into(),
            what: "x",
            expected: 2,
            got: dims(&size),
        });
    }
    let input = prepare_input("x", x)?;
    let rt = runtime(x.device())?;
    let dev = x.device();
    let qdata = Tensor::f_empty([size[0], size[1] / 2], (Kind::Uint8, dev))?;
    let scale = Tensor::f_empty([size[0], size[1] / BLOCK_SIZE as i64], (Kind::Uint8, dev))?;
    if input.x.numel() > 0 {
        let kernel = if input.bf16 {
            "nvfp4_quantize_bf16"
        } else {
            "nvfp4_quantize_f32"
        };
        let out = QuantOutputs {
            qdata: dev_ptr(&qdata),
            scale: dev_ptr(&scale),
            deq: 0,
        };
        // Single mode without the finiteness check reads no stats buffer.
        launch_quant(&rt, &input, ScaleMode::Single, kernel, &out, 0, false)?;
    }
    Nvfp4Tensor::new(qdata, scale, None)
}

fn fake_quant_kernel(bf16_in: bool, out_kind: Kind, packed: bool) -> &'static str {
    match (packed, bf16_in, out_kind == Kind::BFloat16) {
        (false, false, true) => "nvfp4_fake_quant_f32_to_bf16",
        (false, false, false) => "nvfp4_fake_quant_f32_to_f32",
        (false, true, true) => "nvfp4_fake_quant_bf16_to_bf16",
        (false, true, false) => "nvfp4_fake_quant_bf16_to_f32",
        (true, false, true) => "nvfp4_fake_quant_packed_f32_to_bf16",
        (true, false, false) => "nvfp4_fake_quant_packed_f32_to_f32",
        (true, true, true) => "nvfp4_fake_quant_packed_bf16_to_bf16",
        (true, true, false) => "nvfp4_fake_quant_packed_bf16_to_f32",
    }
}

/// The kind the kernels write directly (bf16 or f32) for a requested kind.
pub(super) fn direct_kind(kind: Kind) -> Result<Kind> {
    match kind {
        Kind::BFloat16 => Ok(Kind::BFloat16),
        Kind::Float | Kind::Half | Kind::Double => Ok(Kind::Float),
        other => Err(Error::WrongKind {
            name: "nvfp4".into(),
            what: "output",
            expected: "Float, BFloat16, Half or Double",
            got: other,
        }),
    }
}

/// `dequantize(quantize(x))` in one read of `x` and one write, in `out_kind`
/// (bf16/f32 written directly; f16/f64 converted from f32). No autograd
/// history; blocks holding a NaN or an infinity come out as NaN (as
/// [`crate::fake_quantize`]). `x`: any rank, last dim a multiple of 16.
pub fn fake_quantize(x: &Tensor, mode: ScaleMode, out_kind: Kind) -> Result<Tensor> {
    let direct = direct_kind(out_kind)?;
    let out = Tensor::f_empty(x.size().as_slice(), (direct, x.device()))?;
    fake_quantize_into(x, mode, &out)?;
    Ok(if direct == out_kind {
        out
    } else {
        out.f_to_kind(out_kind)?
    })
}

/// [`fake_quantize`] into `out`: contiguous, `x`'s shape, bf16 or f32.
pub fn fake_quantize_into(x: &Tensor, mode: ScaleMode, out: &Tensor) -> Result<()> {
    let input = prepare_input("x", x)?;
    let rt = runtime(x.device())?;
    let direct = direct_kind(out.kind())?;
    if direct != out.kind() {
        return Err(Error::WrongKind {
            name: "fake_quantize_into".into(),
            what: "out",
            expected: "BFloat16 or Float",
            got: out.kind(),
        });
    }
    check_tensor(
        "fake_quantize_into",
        "out",
        out,
        direct,
        x.numel(),
        x.device(),
    )?;
    if out.size() != x.size() {
        return Err(Error::ShapeMismatch {
            name: "fake_quantize_into".into(),
            what: "out",
            expected: dims(&x.size()),
            got: dims(&out.size()),
        });
    }
    if input.x.numel() == 0 {
        return Ok(());
    }
    // Only two-level mode reads the stats (the tensor amax).
    let stats = match mode {
        ScaleMode::TwoLevel => Some(stats_buffer(x.device())?),
        ScaleMode::Single => None,
    };
    let ptrs = QuantOutputs {
        qdata: 0,
        scale: 0,
        deq: dev_ptr(out),
    };
    let kernel = fake_quant_kernel(input.bf16, direct, false);
    let stats_ptr = stats.as_ref().map_or(0, dev_ptr);
    launch_quant(&rt, &input, mode, kernel, &ptrs, stats_ptr, false)
}

/// [`fake_quantize`] of a `[rows, cols]` weight that also returns the packed
/// NVFP4 form (for export), still one read of `x`. Errors on non-finite input.
pub fn fake_quantize_packed(
    x: &Tensor,
    mode: ScaleMode,
    out_kind: Kind,
) -> Result<(Tensor, Nvfp4Tensor)> {
    let size = x.size();
    if size.len() != 2 {
        return Err(Error::WrongRank {
            name: "x".into(),
            what: "x",
            expected: 2,
            got: dims(&size),
        });
    }
    let input = prepare_input("x", x)?;
    let rt = runtime(x.device())?;
    let direct = direct_kind(out_kind)?;
    let dev = x.device();
    let out = Tensor::f_empty(size.as_slice(), (direct, dev))?;
    let qdata = Tensor::f_empty([size[0], size[1] / 2], (Kind::Uint8, dev))?;
    let scale = Tensor::f_empty([size[0], size[1] / BLOCK_SIZE as i64], (Kind::Uint8, dev))?;
    let stats = stats_buffer(dev)?;
    if input.x.numel() > 0 {
        let ptrs = QuantOutputs {
            qdata: dev_ptr(&qdata),
            scale: dev_ptr(&scale),
            deq: dev_ptr(&out),
        };
        let kernel = fake_quant_kernel(input.bf16, direct, true);
        launch_quant(&rt, &input, mode, kernel, &ptrs, dev_ptr(&stats), true)?;
    }
    let global = finish_stats("x", &input, &stats, mode)?;
    let out = if direct == out_kind {
        out
    } else {
        out.f_to_kind(out_kind)?
    };
    Ok((out, Nvfp4Tensor::new(qdata, scale, global)?))
}

/// Straight-through estimator with the fused kernel: the forward value is
/// exactly [`fake_quantize`]`(x, mode, out_kind)`, the gradient reaches `x`
/// unchanged (cast back to `x.kind()`), as [`crate::ste`].
pub fn ste(x: &Tensor, mode: ScaleMode, out_kind: Kind) -> Result<Tensor> {
    // A view made now requires grad only if autograd is recording (not
    // under no_grad) and x requires grad: only then is there a gradient to carry.
    if !x.f_alias()?.requires_grad() {
        return fake_quantize(x, mode, out_kind);
    }
    if direct_kind(out_kind)? != out_kind {
        // fq - (+0) keeps every bit of fq, -0 included (fq + 0 would turn -0
        // into +0); the zero carries x's identity gradient.
        let fq = fake_quantize(x, mode, out_kind)?;
        let zero = x.f_detach()?.f_sub(x)?.f_to_kind(out_kind)?;
        return Ok(fq.f_sub(&zero)?);
    }
    // A differentiable copy of x in out_kind: its backward casts the
    // gradient back to x.kind() (the straight-through identity) and keeps
    // nothing of the copy's values, so they are replaced by the fake-quantized
    // ones in place. One read of x and one write more than the kernel alone,
    // against four elementwise passes (and two in the backward) for the
    // subtraction trick above.
    let y = x.f_to_dtype(out_kind, false, true)?;
    fake_quantize_into(x, mode, &y)?;
    Ok(y)
}

#[cfg(test)]
mod tests {
    use crate::format::{e4m3_to_f32, f32_to_e2m1};

    // The CUDA kernels replace `f32_to_e2m1(x / d)` by comparisons against
    // per-block thresholds (kernels/common.cuh, e2m1_thresholds). These tests
    // emulate that code exactly on the CPU (the fma's exact sum is formed in
    // f64, where it fits, then rounded down/up to f32 as __fmaf_rd/_ru do) and
    // check it against the division for every positive E4M3 step, random
    // two-level steps, and inputs on, next to and between the thresholds.

    fn round_down(v: f64) -> f32 {
        let r = v as f32;
        if r as f64 > v {
            r.next_down()
        } else {
            r
        }
    }

    fn round_up(v: f64) -> f32 {
        let r = v as f32;
        if (r as f64) < v {
            r.next_up()
        } else {
            r
        }
    }

    fn thresholds(d: f32) -> [f32; 7] {
        let d64 = d as f64;
        let fma = |t: f64, delta: f64| d64 * t + d64 * delta; // exact in f64
        [
            round_down(fma(0.25, 2f64.powi(-26))),
            round_up(fma(0.75, -(2f64.powi(-25)))),
            round_down(fma(1.25, 2f64.powi(-24))),
            round_up(fma(1.75, -(2f64.powi(-24)))),
            round_down(fma(2.5, 2f64.powi(-23))),
            round_up(fma(3.5, -(2f64.powi(-23)))),
            round_down(fma(5.0, 2f64.powi(-22))),
        ]
    }

    fn code(x: f32, t: &[f32; 7]) -> u8 {
        if x.is_nan() {
            return 0;
        }
        let a = x.abs();
        let b2 = a >= t[3];
        let b1 = a >= if b2 { t[5] } else { t[1] };
        let lo = match (b2, b1) {
            (true, true) => t[6],
            (true, false) => t[4],
            (false, true) => t[2],
            (false, false) => t[0],
        };
        let b0 = a > lo;
        (b2 as u8) << 2 | (b1 as u8) << 1 | b0 as u8 | ((x.is_sign_negative() as u8) << 3)
    }

    fn check_step(d: f32, extra: &[f32]) {
        let t = thresholds(d);
        let mut xs: Vec<f32> = extra.to_vec();
        for &m in &[0.25f32, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 6.0, 0.5, 1.0] {
            let c = (m as f64 * d as f64) as f32;
            let mut lo = c;
            let mut hi = c;
            for _ in 0..4 {
                xs.extend([lo, hi, -lo, -hi]);
                lo = lo.next_down();
                hi = hi.next_up();
            }
        }
        xs.extend(t.iter().flat_map(|&v| [v, v.next_up(), v.next_down()]));
        for x in xs {
            assert_eq!(
                code(x, &t),
                f32_to_e2m1(x / d),
                "d = {d:e} ({:#x}), x = {x:e} ({:#x})",
                d.to_bits(),
                x.to_bits()
            );
        }
    }

    #[test]
    fn threshold_codes_equal_division_codes_for_every_e4m3_step() {
        let specials = [
            0.0f32,
            -0.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            f32::MAX,
            f32::MIN_POSITIVE,
        ];
        for s in 1u8..=0x7E {
            check_step(e4m3_to_f32(s), &specials);
        }
    }

    #[test]
    fn threshold_codes_equal_division_codes_for_two_level_steps() {
        // Deterministic spread of global scales down to the kernels' 2^-100 guard.
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..3000 {
            let g = f32::from_bits(((next() % (150 << 23)) as u32) + (27 << 23)); // ~2^-100 .. 2^50
            let s = (next() % 0x7E) as u8 + 1;
            let d = e4m3_to_f32(s) * g;
            if d.is_nan() || d < 2f32.powi(-100) || !d.is_finite() {
                continue;
            }
            let r: Vec<f32> = (0..32)
                .map(|_| f32::from_bits(next() as u32 & 0x7FFF_FFFF) % (7.0 * d))
                .collect();
            check_step(d, &r);
        }
    }
}
