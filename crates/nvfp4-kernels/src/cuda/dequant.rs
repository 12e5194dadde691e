//! Host side of `kernels/dequantize.cu`: NVFP4 -> bf16 / f32 on CUDA,
//! bit-identical to [`crate::dequantize_ref`].

use tch::{Kind, Tensor};

use super::compile::KernelModule;
use super::quant::{direct_kind, THREADS, WAVES};
use super::runtime::{dev_ptr, fresh_copy, grid_1d, runtime, DeviceRuntime, KernelArg};
use crate::error::{Error, Result};
use crate::format::BLOCK_SIZE;
use crate::tensor::Nvfp4Tensor;

/// Dequantizes rows `[row0, row0 + out.size()[0])` of `q` into the
/// contiguous bf16/f32 tensor `out` (same device).
pub(crate) fn dequantize_rows_into(
    rt: &DeviceRuntime,
    q: &Nvfp4Tensor,
    row0: usize,
    out: &Tensor,
) -> Result<()> {
    let rows = out.size()[0] as usize;
    let cols = q.cols();
    let n = (rows * cols) as u64;
    if n == 0 {
        return Ok(());
    }
    let bf16 = out.kind() == Kind::BFloat16;
    let ept: u64 = if bf16 { 8 } else { 4 };
    let (g, has_g) = match q.global_scale() {
        Some(g) => (g, 1),
        None => (1.0, 0),
    };
    let qptr = dev_ptr(q.qdata()) + (row0 * cols / 2) as u64;
    let sptr = dev_ptr(q.scale()) + (row0 * cols / BLOCK_SIZE) as u64;
    rt.launch(
        KernelModule::Dequantize,
        if bf16 {
            "nvfp4_dequant_bf16"
        } else {
            "nvfp4_dequant_f32"
        },
        grid_1d(n / ept, THREADS, rt.sm_count, WAVES),
        &[
            KernelArg::Ptr(qptr),
            KernelArg::Ptr(sptr),
            KernelArg::Ptr(dev_ptr(out)),
            KernelArg::U64(n),
            KernelArg::F32(g),
            KernelArg::I32(has_g),
        ],
    )
}

/// [`dequantize`] into a preallocated contiguous bf16 or f32 `out`
/// `[rows, cols]` on `q`'s device.
pub fn dequantize_into(q: &Nvfp4Tensor, out: &Tensor) -> Result<()> {
    let size: Vec<usize> = out.size().iter().map(|&d| d as usize).collect();
    let ok_kind = matches!(out.kind(), Kind::BFloat16 | Kind::Float);
    if size != [q.rows(), q.cols()]
        || !ok_kind
        || !out.is_contiguous()
        || out.device() != q.device()
    {
        return Err(Error::ShapeMismatch {
            name: "dequantize_into".into(),
            what: "out (contiguous bf16/f32, same device)",
            expected: vec![q.rows(), q.cols()],
            got: size,
        });
    }
    if !dev_ptr(out).is_multiple_of(16) {
        return Err(Error::Cuda {
            op: "dequantize_into".into(),
            message: "out must start on a 16-byte boundary".into(),
        });
    }
    let rt = runtime(q.device())?;
    dequantize_rows_into(&rt, &aligned_q(q)?, 0, out)
}

/// `q` with its code buffer on a 16-byte boundary (a copy only if a view
/// started elsewhere).
pub(crate) fn aligned_q(q: &Nvfp4Tensor) -> Result<Nvfp4Tensor> {
    if dev_ptr(q.qdata()).is_multiple_of(16) {
        return Ok(q.shallow_clone());
    }
    Nvfp4Tensor::new(
        fresh_copy(q.qdata())?,
        q.scale().shallow_clone(),
        q.global_scale(),
    )
}

/// Dequantizes `q` (on a CUDA device) to a `[rows, cols]` tensor of `kind`:
/// `(e2m1(code) * e4m3(scale)) * global_scale`, bit-exact with
/// [`crate::dequantize_ref`] (bf16/f32 written directly, f16/f64 via f32).
pub fn dequantize(q: &Nvfp4Tensor, kind: Kind) -> Result<Tensor> {
    let rt = runtime(q.device())?;
    let direct = direct_kind(kind)?;
    let out = Tensor::f_empty([q.rows() as i64, q.cols() as i64], (direct, q.device()))?;
    dequantize_rows_into(&rt, &aligned_q(q)?, 0, &out)?;
    Ok(if direct == kind {
        out
    } else {
        out.f_to_kind(kind)?
    })
}
