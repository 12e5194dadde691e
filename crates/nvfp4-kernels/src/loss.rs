//! The trainer's cross-entropy, forward and backward in one call, over a
//! chunk of logits: the summed loss comes back and the logits are overwritten
//! by their gradient, so neither f32 logits nor their log-softmax nor an f32
//! gradient (3 x 1.2 GB for 2048 rows of Qwen3's 151936-entry vocabulary)
//! stays alive. On CUDA with bf16 logits a fused kernel (`kernels/loss.cu`,
//! Liger-style: one pass for max and sum of exponentials, one for the
//! gradient) does it without any `[rows, V]` temporary; elsewhere the same
//! f32 math runs as tch ops (the reference the kernel is tested against).
//!
//! ```
//! use nvfp4_kernels::loss::cross_entropy_fused;
//! use tch::Tensor;
//! let logits = Tensor::from_slice(&[0.0f32, 0.0, 0.0, 0.0]).view([1, 4]);
//! let targets = Tensor::from_slice(&[2i64]);
//! let loss = tch::no_grad(|| cross_entropy_fused(&logits, &targets, 0.5, true))?;
//! assert!((loss.double_value(&[]) - 4f64.ln()).abs() < 1e-6);
//! // 0.5 * (softmax - one_hot): 0.125 everywhere but -0.375 at the target.
//! assert!((logits.double_value(&[0, 1]) - 0.125).abs() < 1e-7);
//! assert!((logits.double_value(&[0, 2]) + 0.375).abs() < 1e-7);
//! # Ok::<(), nvfp4_kernels::Error>(())
//! ```

use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};

/// Names the call in errors.
const NAME: &str = "cross_entropy_fused";

/// Cross-entropy of each row of `logits` (`[rows, V]`) against its class in
/// `targets` (Int64 `[rows]`, each in `0..V`), summed over the rows and
/// returned unscaled as an f32 scalar (0-dim) on the logits' device; `logits`
/// is overwritten in place, in its own kind, by the gradient of
/// `scale * loss_sum`: `scale * (softmax(logits_i)_j - [j == target_i])`.
///
/// Everything is computed in f32 from the stored logits and rounded once when
/// the gradient is written. With `kernels` and CUDA logits the fused kernel
/// runs (BFloat16 logits only); otherwise tch ops do (BFloat16 or Float, any
/// device). Neither records autograd history: call under `tch::no_grad`.
/// The range check of the targets reads their min and max back to the host
/// (one synchronisation); the kernel path then only enqueues work.
///
/// Errors (nothing is written then): logits of another kind or rank, targets
/// not Int64 `[rows]` or on another device ([`Error::WrongKind`],
/// [`Error::WrongRank`], [`Error::ShapeMismatch`], [`Error::DeviceMismatch`]);
/// a target outside `0..V`, naming the first such row and its value
/// ([`Error::TargetOutOfRange`]); on the kernel path, non-contiguous logits
/// ([`Error::NotContiguous`]) or a device where the kernels cannot run
/// ([`Error::KernelUnavailable`]).
pub fn cross_entropy_fused(
    logits: &Tensor,
    targets: &Tensor,
    scale: f64,
    kernels: bool,
) -> Result<Tensor> {
    let kernel = kernels && logits.device().is_cuda();
    let (rows, classes) = check_args(logits, targets, kernel)?;
    if rows == 0 {
        return Ok(Tensor::f_zeros([], (Kind::Float, logits.device()))?);
    }
    check_targets(targets, classes)?;
    if kernel {
        fused(logits, targets, scale)
    } else {
        reference(logits, targets, scale)
    }
}

fn dims(t: &Tensor) -> Vec<usize> {
    t.size().iter().map(|&d| d as usize).collect()
}

/// Kinds, ranks, shapes and devices; returns (rows, classes).
fn check_args(logits: &Tensor, targets: &Tensor, kernel: bool) -> Result<(usize, usize)> {
    let kind = logits.f_kind()?;
    let (ok, expected) = if kernel {
        (
            kind == Kind::BFloat16,
            "BFloat16 (Float logits need kernels = false)",
        )
    } else {
        (
            matches!(kind, Kind::BFloat16 | Kind::Float),
            "BFloat16 or Float",
        )
    };
    if !ok {
        return Err(wrong_kind("logits", expected, kind));
    }
    let size = dims(logits);
    let [rows, classes] = size[..] else {
        return Err(Error::WrongRank {
            name: NAME.into(),
            what: "logits",
            expected: 2,
            got: size,
        });
    };
    let tkind = targets.f_kind()?;
    if tkind != Kind::Int64 {
        return Err(wrong_kind("targets", "Int64 (class indices)", tkind));
    }
    if targets.device() != logits.device() {
        return Err(Error::DeviceMismatch {
            name: NAME.into(),
            what: "targets",
            expected: logits.device(),
            got: targets.device(),
        });
    }
    if dims(targets) != [rows] {
        return Err(Error::ShapeMismatch {
            name: NAME.into(),
            what: "targets (one per row of logits)",
            expected: vec![rows],
            got: dims(targets),
        });
    }
    Ok((rows, classes))
}

fn wrong_kind(what: &'static str, expected: &'static str, got: Kind) -> Error {
    Error::WrongKind {
        name: NAME.into(),
        what,
        expected,
        got,
    }
}

/// Every target in `0..classes`, from their min and max (a kernel would read
/// out of bounds otherwise); only when that fails is the first bad row found.
fn check_targets(targets: &Tensor, classes: usize) -> Result<()> {
    let (lo, hi) = targets.f_aminmax(None::<i64>, false)?;
    let bounds = Tensor::f_stack(&[lo, hi], 0)?.f_to_device(Device::Cpu)?;
    let bounds = Vec::<i64>::try_from(bounds)?;
    if bounds[0] >= 0 && bounds[1] < classes as i64 {
        return Ok(());
    }
    let bad = targets
        .f_lt(0)?
        .f_logical_or(&targets.f_ge(classes as i64)?)?;
    let row = bad.f_nonzero()?.f_int64_value(&[0, 0])?;
    Err(Error::TargetOutOfRange {
        name: NAME.into(),
        row: row as usize,
        value: targets.f_int64_value(&[row])?,
        classes,
    })
}

/// The kernel: per-row losses into a scratch vector, then a deterministic
/// sum (no float atomics: the same inputs give the same bits).
fn fused(logits: &Tensor, targets: &Tensor, scale: f64) -> Result<Tensor> {
    let targets = targets.f_contiguous()?;
    let losses = Tensor::f_empty([targets.numel() as i64], (Kind::Float, logits.device()))?;
    crate::cuda::cross_entropy_rows(logits, &targets, &losses, scale as f32)?;
    Ok(losses.f_sum(Kind::Float)?)
}

/// tch ops in f32: `log_softmax`, minus the sum of its values at the targets;
/// the gradient `(exp(log_softmax) - one_hot) * scale` is built in place of
/// the log-softmax (one `[rows, V]` f32 buffer) and copied into `logits`.
fn reference(logits: &Tensor, targets: &Tensor, scale: f64) -> Result<Tensor> {
    let index = targets.f_unsqueeze(1)?;
    let mut lsm = logits.f_log_softmax(-1, Kind::Float)?;
    let loss = lsm
        .f_gather(1, &index, false)?
        .f_sum(Kind::Float)?
        .f_neg()?;
    let minus_one = Tensor::f_full(
        [targets.numel() as i64, 1],
        -1.0,
        (Kind::Float, lsm.device()),
    )?;
    let _ = lsm.f_exp_()?;
    let _ = lsm.f_scatter_add_(1, &index, &minus_one)?;
    let _ = lsm.f_mul_scalar_(scale)?;
    logits.shallow_clone().f_copy_(&lsm)?;
    Ok(loss)
}
