//! Host side of `kernels/adamw.cu`: the whole AdamW update of one tensor
//! (decoupled weight decay, both moments, bias correction, parameter step) in
//! one pass over memory, in place, for f32 / bf16 parameters and gradients
//! and f32 / bf16 / block-wise 8-bit moments.
//!
//! The math is PyTorch's AdamW, evaluated in f32 and rounded once to each
//! storage kind:
//!
//! ```text
//! p <- p - lr*wd*p
//! m <- b1 m + (1 - b1) g
//! v <- b2 v + (1 - b2) g^2
//! p <- p - lr/bc1 * m / (sqrt(v)/sqrt(bc2) + eps)
//! ```
//!
//! 8-bit moments follow the trainer's `QuantMap` layout: blocks of
//! [`ADAMW_INT8_BLOCK`] elements, one f32 absmax each, one byte per element
//! indexing a sorted 256-entry map; the first moment is stored as is, the
//! second as `sqrt(v)`. The kernel dequantizes, updates, takes each block's
//! new absmax and requantizes with the same rules as `QuantMap::quantize`
//! (divide by the absmax, or by 1 for an all-zero block; clamp to `[-1, 1]`
//! for a map with negative values, else `[0, 1]`; `bucketize(right = false)`
//! over the boundaries, ties to the lower code).

use tch::{Device, Kind, Tensor};

use super::checks::{check_placed, check_tensor, dims};
use super::compile::KernelModule;
use super::quant::{THREADS, WAVES};
use super::runtime::{dev_ptr, grid_1d, runtime, KernelArg};
use crate::error::{Error, Result};

/// Elements per block of the 8-bit moments (one f32 absmax each); the int8
/// kernel runs one 256-thread CUDA block over one such block at a time.
pub const ADAMW_INT8_BLOCK: usize = 256;

/// Entries of an 8-bit moment's map (`values`); `boundaries` has one fewer.
const MAP_LEN: usize = 256;

/// The hyper-parameters of one AdamW step. Given in f64 so that the f32
/// constants the kernel uses (`1 - beta2`, `lr / bc1`, `sqrt(bc2)`, ...) are
/// each rounded once from the exact value.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamwStep {
    /// Learning rate.
    pub lr: f64,
    /// First-moment decay.
    pub beta1: f64,
    /// Second-moment decay.
    pub beta2: f64,
    /// Added to the bias-corrected `sqrt(v)`.
    pub eps: f64,
    /// Decoupled weight decay (0: none); the parameter is multiplied by
    /// `1 - lr * weight_decay` before the step.
    pub weight_decay: f64,
    /// First bias correction, `1 - beta1^t`.
    pub bc1: f64,
    /// Second bias correction, `1 - beta2^t`.
    pub bc2: f64,
    /// Multiplies the gradient before the update (gradient clipping's
    /// coefficient, so the clipped gradient is never written; 1: none).
    pub grad_scale: f64,
}

impl AdamwStep {
    /// The kernel's f32 constants, in the order of its parameters:
    /// grad scale, decay, b1, 1 - b1, b2, 1 - b2, step size, sqrt(bc2), eps.
    fn kernel_args(&self) -> [KernelArg; 9] {
        [
            self.grad_scale,
            self.lr * self.weight_decay,
            self.beta1,
            1.0 - self.beta1,
            self.beta2,
            1.0 - self.beta2,
            self.lr / self.bc1,
            self.bc2.sqrt(),
            self.eps,
        ]
        .map(|x| KernelArg::F32(x as f32))
    }
}

/// One AdamW moment, updated in place by [`adamw_update`].
#[derive(Clone, Copy, Debug)]
pub enum MomentRef<'a> {
    /// A contiguous f32 or bf16 tensor with as many elements as the parameter.
    Dense(&'a Tensor),
    /// Block-wise 8 bits (see the module doc).
    Int8 {
        /// u8 codes, `blocks * ADAMW_INT8_BLOCK` of them, where
        /// `blocks = max(1, ceil(numel / ADAMW_INT8_BLOCK))` (the padding is
        /// rewritten with the code of 0).
        codes: &'a Tensor,
        /// f32 absmax, one per block.
        absmax: &'a Tensor,
        /// The map: 256 sorted f32 values (a code's value is `values[code] * absmax`).
        values: &'a Tensor,
        /// The 255 f32 rounding boundaries between neighbouring values.
        boundaries: &'a Tensor,
    },
}

/// Names used in the errors about one moment's tensors.
struct Labels {
    dense: &'static str,
    codes: &'static str,
    absmax: &'static str,
    values: &'static str,
    boundaries: &'static str,
}

const M_LABELS: Labels = Labels {
    dense: "m",
    codes: "m codes",
    absmax: "m absmax",
    values: "m map values",
    boundaries: "m map boundaries",
};

const V_LABELS: Labels = Labels {
    dense: "v",
    codes: "v codes",
    absmax: "v absmax",
    values: "v map values",
    boundaries: "v map boundaries",
};

/// Checks kind f32 or bf16, placement and contiguity; returns whether bf16.
fn check_float(name: &str, what: &'static str, t: &Tensor, device: Device) -> Result<bool> {
    let kind = t.f_kind()?;
    if !matches!(kind, Kind::Float | Kind::BFloat16) {
        return Err(Error::WrongKind {
            name: name.into(),
            what,
            expected: "Float or BFloat16",
            got: kind,
        });
    }
    check_placed(name, what, t, device)?;
    Ok(kind == Kind::BFloat16)
}

/// Blocks of an 8-bit moment of `n` elements (at least one, as `QuantMap`).
pub fn adamw_int8_blocks(n: usize) -> usize {
    n.div_ceil(ADAMW_INT8_BLOCK).max(1)
}

/// Checks the four tensors of one 8-bit moment; returns their pointers
/// (codes, absmax, values, boundaries).
fn check_int8(
    name: &str,
    l: &Labels,
    m: MomentRef<'_>,
    n: usize,
    device: Device,
) -> Result<[u64; 4]> {
    let MomentRef::Int8 {
        codes,
        absmax,
        values,
        boundaries,
    } = m
    else {
        unreachable!("check_int8 is only called on MomentRef::Int8");
    };
    let blocks = adamw_int8_blocks(n);
    check_tensor(
        name,
        l.codes,
        codes,
        Kind::Uint8,
        blocks * ADAMW_INT8_BLOCK,
        device,
    )?;
    check_tensor(name, l.absmax, absmax, Kind::Float, blocks, device)?;
    check_tensor(name, l.values, values, Kind::Float, MAP_LEN, device)?;
    check_tensor(
        name,
        l.boundaries,
        boundaries,
        Kind::Float,
        MAP_LEN - 1,
        device,
    )?;
    Ok([codes, absmax, values, boundaries].map(dev_ptr))
}

fn check_dense(name: &str, l: &Labels, t: &Tensor, n: usize, device: Device) -> Result<bool> {
    let bf16 = check_float(name, l.dense, t, device)?;
    if t.numel() != n {
        return Err(Error::LengthMismatch {
            name: name.into(),
            what: l.dense,
            expected: n,
            got: t.numel(),
        });
    }
    Ok(bf16)
}

fn dense_kernel(p: bool, g: bool, s: bool) -> &'static str {
    match (p, g, s) {
        (false, false, false) => "adamw_dense_f32_f32_f32",
        (false, false, true) => "adamw_dense_f32_f32_bf16",
        (false, true, false) => "adamw_dense_f32_bf16_f32",
        (false, true, true) => "adamw_dense_f32_bf16_bf16",
        (true, false, false) => "adamw_dense_bf16_f32_f32",
        (true, false, true) => "adamw_dense_bf16_f32_bf16",
        (true, true, false) => "adamw_dense_bf16_bf16_f32",
        (true, true, true) => "adamw_dense_bf16_bf16_bf16",
    }
}

fn int8_kernel(p: bool, g: bool) -> &'static str {
    match (p, g) {
        (false, false) => "adamw_int8_f32_f32",
        (false, true) => "adamw_int8_f32_bf16",
        (true, false) => "adamw_int8_bf16_f32",
        (true, true) => "adamw_int8_bf16_bf16",
    }
}

/// One AdamW step of `param` (f32 or bf16, contiguous, on CUDA) from `grad`
/// (f32 or bf16, same shape), updating `param`, `m` and `v` in place with one
/// kernel launch on the default stream (ordered with libtorch's work; nothing
/// is synchronised). `m` and `v` must be of the same storage: both dense of
/// one kind, or both 8-bit. `name` names the tensor in errors.
///
/// Errors: a tensor on another device than `param` ([`Error::DeviceMismatch`]),
/// of an unsupported kind ([`Error::WrongKind`]), not contiguous or of
/// another shape than `param` ([`Error::ShapeMismatch`]), with the wrong
/// number of elements or blocks ([`Error::LengthMismatch`]); a device where
/// the kernels cannot run ([`Error::KernelUnavailable`]); a failed launch
/// ([`Error::Cuda`]). Nothing is written unless every check passes. The map
/// values must be sorted and the boundaries their midpoints (not checked:
/// that would need a device round trip).
pub fn adamw_update(
    name: &str,
    param: &Tensor,
    grad: &Tensor,
    m: MomentRef<'_>,
    v: MomentRef<'_>,
    step: &AdamwStep,
) -> Result<()> {
    let device = param.device();
    let p_bf16 = check_float(name, "param", param, device)?;
    let g_bf16 = check_float(name, "grad", grad, device)?;
    if grad.size() != param.size() {
        return Err(Error::ShapeMismatch {
            name: name.into(),
            what: "grad",
            expected: dims(&param.size()),
            got: dims(&grad.size()),
        });
    }
    let n = param.numel();
    match (m, v) {
        (MomentRef::Dense(mt), MomentRef::Dense(vt)) => {
            let s_bf16 = check_dense(name, &M_LABELS, mt, n, device)?;
            if check_dense(name, &V_LABELS, vt, n, device)? != s_bf16 {
                return Err(Error::WrongKind {
                    name: name.into(),
                    what: "v",
                    expected: "the kind of m",
                    got: vt.kind(),
                });
            }
            launch_dense(param, grad, mt, vt, [p_bf16, g_bf16, s_bf16], step)
        }
        (MomentRef::Int8 { .. }, MomentRef::Int8 { .. }) => {
            let mp = check_int8(name, &M_LABELS, m, n, device)?;
            let vp = check_int8(name, &V_LABELS, v, n, device)?;
            launch_int8(param, grad, mp, vp, [p_bf16, g_bf16], step)
        }
        (MomentRef::Dense(_), MomentRef::Int8 { codes, .. }) => Err(Error::WrongKind {
            name: name.into(),
            what: "v",
            expected: "a dense Float or BFloat16 moment, like m",
            got: codes.kind(),
        }),
        (MomentRef::Int8 { .. }, MomentRef::Dense(vt)) => Err(Error::WrongKind {
            name: name.into(),
            what: "v",
            expected: "8-bit (Uint8 codes) like m",
            got: vt.kind(),
        }),
    }
}

/// Launches the dense kernel; `bf16` = [param, grad, state].
fn launch_dense(
    param: &Tensor,
    grad: &Tensor,
    m: &Tensor,
    v: &Tensor,
    bf16: [bool; 3],
    step: &AdamwStep,
) -> Result<()> {
    let rt = runtime(param.device())?;
    let n = param.numel() as u64;
    if n == 0 {
        return Ok(());
    }
    // Four elements a thread: 16-byte (f32) or 8-byte (bf16) vector accesses
    // when every base address allows them (a view may start anywhere).
    let aligned = |t: &Tensor, bf: bool| dev_ptr(t).is_multiple_of(if bf { 8 } else { 16 });
    let vec = aligned(param, bf16[0])
        && aligned(grad, bf16[1])
        && aligned(m, bf16[2])
        && aligned(v, bf16[2]);
    let work = if vec { n / 4 } else { n };
    let mut args = vec![
        KernelArg::Ptr(dev_ptr(param)),
        KernelArg::Ptr(dev_ptr(grad)),
        KernelArg::Ptr(dev_ptr(m)),
        KernelArg::Ptr(dev_ptr(v)),
        KernelArg::U64(n),
        KernelArg::I32(vec as i32),
    ];
    args.extend(step.kernel_args());
    rt.launch(
        KernelModule::Adamw,
        dense_kernel(bf16[0], bf16[1], bf16[2]),
        grid_1d(work, THREADS, rt.sm_count, WAVES),
        &args,
    )
}

/// Launches the 8-bit kernel; `mp` / `vp` are (codes, absmax, values,
/// boundaries) pointers, `bf16` = [param, grad].
fn launch_int8(
    param: &Tensor,
    grad: &Tensor,
    mp: [u64; 4],
    vp: [u64; 4],
    bf16: [bool; 2],
    step: &AdamwStep,
) -> Result<()> {
    let rt = runtime(param.device())?;
    let n = param.numel();
    let blocks = adamw_int8_blocks(n) as u64;
    let mut args = vec![
        KernelArg::Ptr(dev_ptr(param)),
        KernelArg::Ptr(dev_ptr(grad)),
        KernelArg::Ptr(mp[0]),
        KernelArg::Ptr(mp[1]),
        KernelArg::Ptr(vp[0]),
        KernelArg::Ptr(vp[1]),
        KernelArg::Ptr(mp[2]),
        KernelArg::Ptr(mp[3]),
        KernelArg::Ptr(vp[2]),
        KernelArg::Ptr(vp[3]),
        KernelArg::U64(n as u64),
        KernelArg::U64(blocks),
    ];
    args.extend(step.kernel_args());
    // One CUDA block per quantization block, grid-stride beyond WAVES per SM
    // (the maps are staged in shared memory once per CUDA block).
    let cfg = grid_1d(
        blocks * ADAMW_INT8_BLOCK as u64,
        ADAMW_INT8_BLOCK as u32,
        rt.sm_count,
        WAVES,
    );
    rt.launch(
        KernelModule::Adamw,
        int8_kernel(bf16[0], bf16[1]),
        cfg,
        &args,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step() -> AdamwStep {
        AdamwStep {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.1,
            bc1: 0.1,
            bc2: 0.001,
            grad_scale: 0.5,
        }
    }

    #[test]
    fn constants_are_rounded_once_from_f64() {
        let args = step().kernel_args().map(|a| match a {
            KernelArg::F32(x) => x as f64,
            other => panic!("constants are f32, got {other:?}"),
        });
        let want = [
            0.5,
            1e-4,
            0.9,
            0.1,
            0.999,
            0.001,
            1e-2,
            0.001f64.sqrt(),
            1e-8,
        ];
        for (a, w) in args.iter().zip(want) {
            // Within one f32 rounding of the exact value.
            assert!((a - w).abs() <= w * f32::EPSILON as f64 / 2.0, "{a} vs {w}");
        }
        // 1 - 0.999 rounded once, not 1 - 0.999f32 (1.3e-5 relative off).
        let naive = (1.0 - 0.999f32) as f64;
        assert!((args[5] - 0.001).abs() < (naive - 0.001).abs() / 100.0);
    }

    #[test]
    fn block_count_rounds_up_and_is_at_least_one() {
        assert_eq!(adamw_int8_blocks(0), 1);
        assert_eq!(adamw_int8_blocks(1), 1);
        assert_eq!(adamw_int8_blocks(256), 1);
        assert_eq!(adamw_int8_blocks(257), 2);
    }
}
