//! `y = x @ W^T` with an NVFP4 `W` on CUDA: the fused W4A16 kernel
//! (`kernels/gemv.cu`) for a few rows of activations, and
//! dequantize-into-a-workspace + libtorch's dense GEMM (cuBLAS) for many.
//! Measured choices and their numbers: docs/PERF.md, "NVFP4 kernels".

use tch::{Kind, Tensor};

use super::compile::KernelModule;
use super::dequant::{aligned_q, dequantize_rows_into};
use super::graph::KernelStream;
use super::quant::fake_quantize;
use super::runtime::{dev_ptr, fresh_copy, runtime, KernelArg};
use crate::error::{Error, Result};
use crate::format::ScaleMode;
use crate::tensor::Nvfp4Tensor;
use cudarc::driver::LaunchConfig;

/// Most activation rows the fused kernel takes (two 8-token mma tiles).
pub const GEMV_MAX_ROWS: usize = 16;

/// Options of [`linear`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinearOptions {
    /// Quantize the activations to NVFP4 (16 along K, single scale) and
    /// dequantize them before the matmul: W4A4 emulation, as the original's
    /// Blackwell kernel computed.
    pub quantize_activations: bool,
    /// Largest row count sent to the fused kernel (at most [`GEMV_MAX_ROWS`]);
    /// more rows go through dequantize + dense GEMM.
    pub gemv_max_rows: usize,
    /// Dequantize at most this many weight elements at a time on the GEMM
    /// path (0 = the whole weight): bounds the workspace (the lm_head weight
    /// is 778 MB in bf16) and keeps each chunk L2-sized.
    pub chunk_elems: usize,
}

impl Default for LinearOptions {
    fn default() -> Self {
        LinearOptions {
            quantize_activations: false,
            gemv_max_rows: GEMV_MAX_ROWS,
            chunk_elems: 0,
        }
    }
}

/// Launch shape of the fused kernel: `row_tiles` tiles of 16 weight rows per
/// block times `k_warps` warps splitting K (at most 16 warps a block), with
/// `depth` chunks of loads in flight ahead of the one computed (1 or 2; more
/// than 8 activation rows always run with depth 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GemvConfig {
    /// 16-row tiles per block (1, 2, 4, ...).
    pub row_tiles: u32,
    /// Warps per row tile, each taking every `k_warps`-th chunk of 128 along K.
    pub k_warps: u32,
    /// Software-pipeline depth: 1 or 2 chunks of loads ahead.
    pub depth: u32,
}

impl GemvConfig {
    /// The shape used when none is given, for `n` rows, `k` columns and
    /// `sm_count` SMs (from the sweep in docs/PERF.md): one 16-row tile per
    /// block; 16, 8 or 4 K-warps for fewer than 1, 4 or more row tiles per SM,
    /// so that about 16 warps per SM stream weights; two chunks of loads in
    /// flight unless there are many blocks to hide latency.
    pub fn auto(n: usize, k: usize, sm_count: u32) -> GemvConfig {
        let tiles = n.div_ceil(16);
        let chunks = k.div_ceil(128).max(1) as u32;
        let sms = sm_count.max(1) as usize;
        let k_warps = if tiles < sms {
            16
        } else if tiles < 4 * sms {
            8
        } else {
            4
        };
        let depth = if tiles < 4 * sms { 2 } else { 1 };
        GemvConfig {
            row_tiles: 1,
            k_warps: k_warps.min(chunks),
            depth,
        }
    }

    fn check(self) -> Result<()> {
        let warps = self.row_tiles * self.k_warps;
        if self.row_tiles == 0 || self.k_warps == 0 || warps > 16 || !(1..=2).contains(&self.depth)
        {
            return Err(Error::Cuda {
                op: "gemv config".into(),
                message: format!("{self:?}: need row_tiles, k_warps >= 1, row_tiles * k_warps <= 16, depth 1 or 2"),
            });
        }
        Ok(())
    }
}

/// Returns `t` if its data starts on an `align`-byte boundary, else an
/// aligned contiguous copy (vector loads need aligned bases).
fn aligned(t: &Tensor, align: u64) -> Result<Tensor> {
    let t = t.f_contiguous()?;
    Ok(if dev_ptr(&t).is_multiple_of(align) {
        t
    } else {
        fresh_copy(&t)?
    })
}

/// The fused W4A16 kernel: `x` bf16 `[M, K]` with `1 <= M <= 16` on the
/// weight's CUDA device -> `[M, N]` bf16. `cfg` None = [`GemvConfig::auto`].
pub fn gemv(x: &Tensor, w: &Nvfp4Tensor, cfg: Option<GemvConfig>) -> Result<Tensor> {
    let m = x.size().first().copied().unwrap_or(0);
    let y = Tensor::f_empty([m, w.rows() as i64], (Kind::BFloat16, x.device()))?;
    gemv_out(x, w, &y, cfg)?;
    Ok(y)
}

/// [`gemv`] into a preallocated contiguous bf16 `out` `[M, N]` (decode loops
/// reuse one buffer; tests poison it to catch unwritten elements).
pub fn gemv_out(x: &Tensor, w: &Nvfp4Tensor, out: &Tensor, cfg: Option<GemvConfig>) -> Result<()> {
    check_gemv(x, w, out)?;
    let stream = KernelStream::eager(x.device())?;
    let x = aligned(x, 16)?;
    let qdata = aligned(w.qdata(), 16)?;
    launch_gemv(&stream, &x, w, &qdata, out, cfg)
}

/// [`gemv_out`] launched on `stream` (which may be recording a graph). It
/// makes no copies (a copy is a libtorch op, which a graph cannot record):
/// `x` and the weight codes must already start on 16-byte boundaries.
pub fn gemv_on(
    stream: &KernelStream,
    x: &Tensor,
    w: &Nvfp4Tensor,
    out: &Tensor,
    cfg: Option<GemvConfig>,
) -> Result<()> {
    check_gemv(x, w, out)?;
    for (what, t) in [("x", x), ("weight codes", w.qdata())] {
        if !t.is_contiguous() || !dev_ptr(t).is_multiple_of(16) {
            return Err(Error::Cuda {
                op: "gemv_on".into(),
                message: format!("{what} must be contiguous and 16-byte aligned"),
            });
        }
    }
    launch_gemv(stream, x, w, w.qdata(), out, cfg)
}

/// Most weights one [`gemv_group_on`] launch takes.
pub const GEMV_GROUP_MAX: usize = 3;

/// `out_i = x @ W_i^T` for up to [`GEMV_GROUP_MAX`] weights sharing `x`
/// (q/k/v, gate/up) in ONE launch on `stream`: the grid is the weights' row
/// tiles one after the other. Same operand rules as [`gemv_on`], at most 8
/// activation rows; `cfg` None = [`GemvConfig::auto`] for the summed rows.
pub fn gemv_group_on(
    stream: &KernelStream,
    x: &Tensor,
    parts: &[(&Nvfp4Tensor, &Tensor)],
    cfg: Option<GemvConfig>,
) -> Result<()> {
    let bad = |message: String| Error::Cuda {
        op: "gemv_group_on".into(),
        message,
    };
    if parts.is_empty() || parts.len() > GEMV_GROUP_MAX {
        return Err(bad(format!(
            "{} weights, expected 1..={GEMV_GROUP_MAX}",
            parts.len()
        )));
    }
    let m = x.size().first().copied().unwrap_or(0) as usize;
    if m > 8 {
        return Err(bad(format!(
            "{m} activation rows, the grouped kernel takes at most 8"
        )));
    }
    for (w, out) in parts {
        check_gemv(x, w, out)?;
        if !w.qdata().is_contiguous() || !dev_ptr(w.qdata()).is_multiple_of(16) {
            return Err(bad(
                "weight codes must be contiguous and 16-byte aligned".into()
            ));
        }
    }
    if !x.is_contiguous() || !dev_ptr(x).is_multiple_of(16) {
        return Err(bad("x must be contiguous and 16-byte aligned".into()));
    }
    let k = parts[0].0.cols();
    let total: usize = parts.iter().map(|(w, _)| w.rows()).sum();
    let cfg = cfg.unwrap_or_else(|| GemvConfig::auto(total, k, stream.rt.sm_count));
    cfg.check()?;
    let rows_per_block = 16 * cfg.row_tiles as usize;
    let blocks: usize = parts
        .iter()
        .map(|(w, _)| w.rows().div_ceil(rows_per_block))
        .sum();
    let name = match (k.is_multiple_of(32), cfg.depth == 2) {
        (true, false) => "nvfp4_gemv_group_m8_v16_d1",
        (false, false) => "nvfp4_gemv_group_m8_v8_d1",
        (true, true) => "nvfp4_gemv_group_m8_v16_d2",
        (false, true) => "nvfp4_gemv_group_m8_v8_d2",
    };
    let mut args = vec![
        KernelArg::Ptr(dev_ptr(x)),
        KernelArg::I32(m as i32),
        KernelArg::I32(k as i32),
        KernelArg::I32(cfg.row_tiles as i32),
    ];
    for i in 0..GEMV_GROUP_MAX {
        match parts.get(i) {
            Some((w, out)) => args.extend([
                KernelArg::Ptr(dev_ptr(w.qdata())),
                KernelArg::Ptr(dev_ptr(w.scale())),
                KernelArg::Ptr(dev_ptr(out)),
                KernelArg::I32(w.rows() as i32),
                // The kernel's f32 sums are value * 2^-7 (see gemv.cu).
                KernelArg::F32(128.0 * w.global_scale().unwrap_or(1.0)),
            ]),
            None => args.extend([
                KernelArg::Ptr(0),
                KernelArg::Ptr(0),
                KernelArg::Ptr(0),
                KernelArg::I32(0),
                KernelArg::F32(0.0),
            ]),
        }
    }
    let launch = LaunchConfig {
        grid_dim: (blocks as u32, 1, 1),
        block_dim: (32 * cfg.row_tiles * cfg.k_warps, 1, 1),
        shared_mem_bytes: 0,
    };
    stream
        .rt
        .launch_on(&stream.stream, KernelModule::Gemv, name, launch, &args)
}

/// Shape, kind and device checks of the fused kernel's operands.
fn check_gemv(x: &Tensor, w: &Nvfp4Tensor, out: &Tensor) -> Result<()> {
    let size = x.size();
    let (m, k, n) = (
        size.first().copied().unwrap_or(0) as usize,
        w.cols(),
        w.rows(),
    );
    if size.len() != 2 || size[1] as usize != k || m == 0 || m > GEMV_MAX_ROWS {
        return Err(Error::ShapeMismatch {
            name: "gemv".into(),
            what: "x",
            expected: vec![GEMV_MAX_ROWS, k],
            got: size.iter().map(|&d| d as usize).collect(),
        });
    }
    if x.kind() != Kind::BFloat16 {
        return Err(Error::WrongKind {
            name: "gemv".into(),
            what: "x",
            expected: "BFloat16",
            got: x.kind(),
        });
    }
    if x.device() != w.device() {
        return Err(Error::DeviceMismatch {
            name: "gemv".into(),
            what: "x",
            expected: w.device(),
            got: x.device(),
        });
    }
    if n > i32::MAX as usize || k > i32::MAX as usize {
        return Err(Error::Cuda {
            op: "gemv".into(),
            message: format!("weight [{n}, {k}] exceeds i32 indexing"),
        });
    }
    let out_size: Vec<usize> = out.size().iter().map(|&d| d as usize).collect();
    if out_size != [m, n]
        || out.kind() != Kind::BFloat16
        || !out.is_contiguous()
        || out.device() != x.device()
    {
        return Err(Error::ShapeMismatch {
            name: "gemv".into(),
            what: "out (contiguous bf16, same device)",
            expected: vec![m, n],
            got: out_size,
        });
    }
    Ok(())
}

fn launch_gemv(
    stream: &KernelStream,
    x: &Tensor,
    w: &Nvfp4Tensor,
    qdata: &Tensor,
    y: &Tensor,
    cfg: Option<GemvConfig>,
) -> Result<()> {
    let (m, n, k) = (x.size()[0] as usize, w.rows(), w.cols());
    let cfg = cfg.unwrap_or_else(|| GemvConfig::auto(n, k, stream.rt.sm_count));
    cfg.check()?;
    // 16-byte code loads need 16-byte rows (K % 32 == 0); else two 8-byte loads.
    let vec16 = k % 32 == 0;
    // 9..16 tokens always use depth 1 (depth 2 would spill registers).
    let name = match (m > 8, vec16, cfg.depth == 2) {
        (false, true, false) => "nvfp4_gemv_m8_v16_d1",
        (false, false, false) => "nvfp4_gemv_m8_v8_d1",
        (false, true, true) => "nvfp4_gemv_m8_v16_d2",
        (false, false, true) => "nvfp4_gemv_m8_v8_d2",
        (true, true, _) => "nvfp4_gemv_m16_v16_d1",
        (true, false, _) => "nvfp4_gemv_m16_v8_d1",
    };
    let tiles = n.div_ceil(16) as u32;
    let launch = LaunchConfig {
        grid_dim: (tiles.div_ceil(cfg.row_tiles), 1, 1),
        block_dim: (32 * cfg.row_tiles * cfg.k_warps, 1, 1),
        shared_mem_bytes: 0,
    };
    // The kernel's f32 sums are value * 2^-7 (see gemv.cu): scale back here.
    let out_mul = 128.0f32 * w.global_scale().unwrap_or(1.0);
    stream.rt.launch_on(
        &stream.stream,
        KernelModule::Gemv,
        name,
        launch,
        &[
            KernelArg::Ptr(dev_ptr(x)),
            KernelArg::Ptr(dev_ptr(qdata)),
            KernelArg::Ptr(dev_ptr(w.scale())),
            KernelArg::Ptr(dev_ptr(y)),
            KernelArg::I32(m as i32),
            KernelArg::I32(n as i32),
            KernelArg::I32(k as i32),
            KernelArg::F32(out_mul),
            KernelArg::I32(cfg.row_tiles as i32),
        ],
    )
}

/// Dequantizes `w` (in chunks of about `chunk_elems` elements, 0 = whole)
/// to `x.kind()` (bf16 or f32) and multiplies with libtorch's dense matmul.
/// `x`: `[M, K]`. The workspace comes from libtorch's caching allocator, so
/// repeated calls reuse the same memory.
pub fn dequant_matmul(x: &Tensor, w: &Nvfp4Tensor, chunk_elems: usize) -> Result<Tensor> {
    let rt = runtime(w.device())?;
    let kind = x.kind();
    let wkind = if kind == Kind::BFloat16 {
        Kind::BFloat16
    } else {
        Kind::Float
    };
    let x = if kind == wkind {
        x.shallow_clone()
    } else {
        x.f_to_kind(wkind)?
    };
    let (n, k) = (w.rows(), w.cols());
    let rows_per_chunk = if chunk_elems == 0 {
        n
    } else {
        (chunk_elems / k.max(1)).clamp(1, n.max(1))
    };
    let w = aligned_q(w)?;
    let y = if rows_per_chunk >= n {
        let wd = Tensor::f_empty([n as i64, k as i64], (wkind, w.device()))?;
        dequantize_rows_into(&rt, &w, 0, &wd)?;
        x.f_matmul(&wd.f_tr()?)?
    } else {
        let m = x.size()[0];
        let y = Tensor::f_empty([m, n as i64], (wkind, w.device()))?;
        let ws = Tensor::f_empty([rows_per_chunk as i64, k as i64], (wkind, w.device()))?;
        for row0 in (0..n).step_by(rows_per_chunk) {
            let len = rows_per_chunk.min(n - row0);
            let wd = ws.f_narrow(0, 0, len as i64)?;
            dequantize_rows_into(&rt, &w, row0, &wd)?;
            // A column slice of y is a row-major matrix with ld = N, which
            // cuBLAS writes in place (no temporary).
            let out = y.f_narrow(1, row0 as i64, len as i64)?;
            let _written_in_place = x.f_mm_out(&out, &wd.f_tr()?)?;
        }
        y
    };
    Ok(if kind == wkind { y } else { y.f_to_kind(kind)? })
}

/// `y = x @ W^T` on the kernel path: `x` `[..., K]` (bf16/f32/f16) on the
/// weight's CUDA device -> `[..., N]` in `x.kind()`. bf16 inputs of at most
/// `opts.gemv_max_rows` rows go to the fused kernel, everything else to
/// [`dequant_matmul`].
pub fn linear(x: &Tensor, w: &Nvfp4Tensor, opts: &LinearOptions) -> Result<Tensor> {
    let size = x.size();
    let k = w.cols() as i64;
    if size.last() != Some(&k) {
        return Err(Error::ShapeMismatch {
            name: "linear".into(),
            what: "x",
            expected: vec![w.cols()],
            got: size.iter().map(|&d| d as usize).collect(),
        });
    }
    let mut x2 = x.f_reshape([-1, k])?;
    if opts.quantize_activations {
        x2 = fake_quantize(&x2, ScaleMode::Single, x2.kind())?;
    }
    let m = x2.size()[0] as usize;
    let y = if m == 0 {
        Tensor::f_empty([0, w.rows() as i64], (x.kind(), x.device()))?
    } else if x2.kind() == Kind::BFloat16 && m <= opts.gemv_max_rows.min(GEMV_MAX_ROWS) {
        gemv(&x2, w, None)?
    } else {
        dequant_matmul(&x2, w, opts.chunk_elems)?
    };
    let mut out_size = size.clone();
    if let Some(last) = out_size.last_mut() {
        *last = w.rows() as i64;
    }
    Ok(y.f_reshape(out_size.as_slice())?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_config_fills_the_gpu_and_respects_the_block_limit() {
        for (n, k) in [
            (4096, 2560),
            (1024, 2560),
            (2560, 4096),
            (9728, 2560),
            (2560, 9728),
            (151936, 2560),
            (1000, 2576),
        ] {
            let c = GemvConfig::auto(n, k, 132);
            assert!(
                c.row_tiles * c.k_warps <= 16 && c.k_warps >= 1,
                "{n}x{k}: {c:?}"
            );
            c.check().unwrap();
        }
        assert_eq!(
            GemvConfig::auto(151936, 2560, 132),
            GemvConfig {
                row_tiles: 1,
                k_warps: 4,
                depth: 1
            }
        );
        assert_eq!(
            GemvConfig::auto(1024, 2560, 132),
            GemvConfig {
                row_tiles: 1,
                k_warps: 16,
                depth: 2
            }
        );
        assert_eq!(
            GemvConfig::auto(2560, 9728, 132),
            GemvConfig {
                row_tiles: 1,
                k_warps: 8,
                depth: 2
            }
        );
        // K shorter than 16 chunks: no idle warps.
        assert_eq!(GemvConfig::auto(64, 256, 132).k_warps, 2);
    }

    #[test]
    fn bad_config_is_an_error() {
        assert!(GemvConfig {
            row_tiles: 4,
            k_warps: 8,
            depth: 1
        }
        .check()
        .is_err());
        assert!(GemvConfig {
            row_tiles: 0,
            k_warps: 1,
            depth: 1
        }
        .check()
        .is_err());
        assert!(GemvConfig {
            row_tiles: 1,
            k_warps: 1,
            depth: 3
        }
        .check()
        .is_err());
    }
}
