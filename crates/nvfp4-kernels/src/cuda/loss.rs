//! Launcher of `kernels/loss.cu`: the fused cross-entropy forward + backward
//! of [`crate::loss::cross_entropy_fused`], one CUDA block per row.

use cudarc::driver::LaunchConfig;
use tch::{Kind, Tensor};

use super::checks::{check_placed, dims};
use super::compile::KernelModule;
use super::runtime::{dev_ptr, runtime, KernelArg};
use crate::error::{Error, Result};

/// Threads per row (`CE_THREADS` in `kernels/loss.cu`).
const CE_THREADS: u32 = 512;

const NAME: &str = "cross_entropy_fused";

/// Writes `-log_softmax(logits_i)[targets_i]` to `losses[i]` (f32 `[c]`) and
/// overwrites `logits` (bf16 `[c, V]`, contiguous) with
/// `scale * (softmax - one_hot)`, on the default stream. The caller has
/// checked kinds, shapes, devices and that every target is in `0..V`; here
/// only what the kernel's raw indexing needs is checked again (placement,
/// contiguity, sizes that fit its `int` arguments and the grid).
pub(crate) fn cross_entropy_rows(
    logits: &Tensor,
    targets: &Tensor,
    losses: &Tensor,
    scale: f32,
) -> Result<()> {
    let device = logits.device();
    check_placed(NAME, "logits", logits, device)?;
    check_placed(NAME, "targets", targets, device)?;
    check_placed(NAME, "losses", losses, device)?;
    let size = logits.size();
    let too_big = || Error::ShapeMismatch {
        name: NAME.into(),
        what: "logits (at most 2^31 - 1 rows and columns)",
        expected: vec![i32::MAX as usize, i32::MAX as usize],
        got: dims(&size),
    };
    let [rows, cols] = [size[0], size[1]].map(i32::try_from);
    let (Ok(rows), Ok(cols)) = (rows, cols) else {
        return Err(too_big());
    };
    debug_assert_eq!(logits.kind(), Kind::BFloat16);
    if rows == 0 {
        return Ok(()); // an empty grid is not a valid launch
    }
    let cfg = LaunchConfig {
        grid_dim: (rows as u32, 1, 1),
        block_dim: (CE_THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    let args = [
        KernelArg::Ptr(dev_ptr(logits)),
        KernelArg::Ptr(dev_ptr(targets)),
        KernelArg::Ptr(dev_ptr(losses)),
        KernelArg::I32(cols),
        KernelArg::F32(scale),
    ];
    runtime(device)?.launch(KernelModule::Loss, "ce_fused_bf16", cfg, &args)
}
