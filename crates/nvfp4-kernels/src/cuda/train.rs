//! Host side of `kernels/train.cu`: the fused forward / backward kernels of a
//! decoder block's training step. [`crate::train_ops`] checks shapes, kinds
//! and devices and calls these; here are the checks only the kernels need
//! (bf16, row layouts, sizes), output allocation and the launches, on the
//! legacy default stream like every other kernel of this crate.
//!
//! Launch shapes depend on the tensor shapes only, never on the GPU, so each
//! reduction (and hence each weight gradient) has one summation order.

use cudarc::driver::LaunchConfig;
use tch::{Device, Kind, Tensor};

use super::compile::KernelModule;
use super::runtime::{dev_ptr, grid_1d, runtime, KernelArg};
use crate::error::{Error, Result};

/// Threads of the row kernels (RMSNorm, SwiGLU, column sums).
const THREADS: u32 = 256;
/// Warps per CTA of the q/k kernels (`QK_WARPS` in train.cu).
const QK_WARPS: u32 = 8;
/// Rows per CTA of the RMSNorm backward: one partial dw row per CTA.
const NORM_ROWS_PER_CTA: usize = 16;
/// (row, head) items per CTA of the q/k backward: one partial dw row per CTA.
const QK_ITEMS_PER_CTA: usize = 256;
/// Largest hidden size of the RMSNorm backward kernel: a CTA keeps its
/// partial dw row in shared memory (48 KiB without opting in).
pub(crate) const NORM_MAX_HIDDEN: usize = 8192;
/// Largest head size of the q/k kernels (`32 * QK_MAXP` RoPE pairs).
pub(crate) const QK_MAX_HEAD_DIM: usize = 256;

/// A bf16 tensor the kernels address as rows: its start and row stride in
/// elements. Every dim but the first is laid out contiguously, so a row may
/// be a slice of a wider buffer (the halves of `[N, 2I]`, q inside qkv).
#[derive(Clone, Copy)]
struct Rows {
    ptr: u64,
    stride: i64,
}

impl Rows {
    fn of(op: &str, what: &'static str, t: &Tensor) -> Result<Rows> {
        let kind = t.f_kind()?;
        if kind != Kind::BFloat16 {
            return Err(Error::WrongKind {
                name: op.into(),
                what,
                expected: "BFloat16 (the CUDA kernels' compute kind)",
                got: kind,
            });
        }
        let (size, stride) = (t.size(), t.stride());
        let mut want = 1;
        for d in (1..size.len()).rev() {
            if size[d] != 1 && stride[d] != want {
                return Err(Error::Unsupported {
                    name: op.into(),
                    what,
                    reason: format!(
                        "has shape {size:?} and strides {stride:?}: the kernels need every dim \
                         but the first contiguous"
                    ),
                });
            }
            want *= size[d];
        }
        Ok(Rows {
            ptr: dev_ptr(t),
            stride: stride.first().copied().unwrap_or(0),
        })
    }

    /// (start, row stride) as kernel arguments.
    fn args(self) -> [KernelArg; 2] {
        [KernelArg::Ptr(self.ptr), KernelArg::U64(self.stride as u64)]
    }
}

/// Whether rows of `cols` elements can move 8 at a time (16-byte accesses).
fn vec8(cols: i64, rows: &[Rows]) -> bool {
    cols % 8 == 0 && rows.iter().all(|r| r.ptr % 16 == 0 && r.stride % 8 == 0)
}

/// The `_v8` kernel where `vec8` holds, else the `_v1` one.
fn variant(vec: bool, [v1, v8]: [&'static str; 2]) -> &'static str {
    if vec {
        v8
    } else {
        v1
    }
}

/// A Float or BFloat16 vector as the contiguous f32 the kernels read.
fn f32_contiguous(t: &Tensor) -> Result<Tensor> {
    Ok(t.f_to_kind(Kind::Float)?.f_contiguous()?)
}

fn cta_grid(ctas: usize, threads: u32, shared_mem_bytes: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (ctas as u32, 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes,
    }
}

fn launch(dev: Device, name: &'static str, cfg: LaunchConfig, args: &[KernelArg]) -> Result<()> {
    runtime(dev)?.launch(KernelModule::Train, name, cfg, args)
}

/// Sums the rows of the f32 `[rows, cols]` partials in row order (deterministic).
fn column_sums(part: &Tensor, rows: usize, cols: usize) -> Result<Tensor> {
    let dev = part.device();
    let out = Tensor::f_zeros([cols as i64], (Kind::Float, dev))?;
    if rows == 0 || cols == 0 {
        return Ok(out);
    }
    let args = [
        KernelArg::Ptr(dev_ptr(part)),
        KernelArg::Ptr(dev_ptr(&out)),
        KernelArg::I32(rows as i32),
        KernelArg::I32(cols as i32),
    ];
    let cfg = cta_grid(cols.div_ceil(THREADS as usize), THREADS, 0);
    launch(dev, "tr_colsum", cfg, &args)?;
    Ok(out)
}

/// Kernel side of [`crate::train_ops::rmsnorm_forward`] (shapes checked).
pub(crate) fn rmsnorm_forward(x: &Tensor, w: &Tensor, eps: f64) -> Result<(Tensor, Tensor)> {
    let op = "rmsnorm_forward";
    let (dev, x) = (x.device(), x.f_contiguous()?);
    let xr = Rows::of(op, "x", &x)?;
    let (n, h) = (x.size()[0], x.size()[1]);
    let y = Tensor::f_empty([n, h], (Kind::BFloat16, dev))?;
    let rstd = Tensor::f_empty([n], (Kind::Float, dev))?;
    if n == 0 {
        return Ok((y, rstd));
    }
    let w = f32_contiguous(w)?;
    let yr = Rows::of(op, "y", &y)?;
    let args = [
        KernelArg::Ptr(xr.ptr),
        KernelArg::Ptr(dev_ptr(&w)),
        KernelArg::Ptr(yr.ptr),
        KernelArg::Ptr(dev_ptr(&rstd)),
        KernelArg::I32(h as i32),
        KernelArg::F32(eps as f32),
    ];
    let name = variant(
        vec8(h, &[xr, yr]),
        ["tr_rmsnorm_fwd_v1", "tr_rmsnorm_fwd_v8"],
    );
    launch(dev, name, cta_grid(n as usize, THREADS, 0), &args)?;
    Ok((y, rstd))
}

/// Kernel side of [`crate::train_ops::rmsnorm_backward`] (shapes checked).
pub(crate) fn rmsnorm_backward(
    dy: &Tensor,
    x: &Tensor,
    w: &Tensor,
    rstd: &Tensor,
    residual: Option<&Tensor>,
) -> Result<(Tensor, Tensor)> {
    let op = "rmsnorm_backward";
    let dev = x.device();
    let (n, h) = (x.size()[0] as usize, x.size()[1] as usize);
    if h > NORM_MAX_HIDDEN {
        return Err(Error::Unsupported {
            name: op.into(),
            what: "x",
            reason: format!("has {h} columns; the kernel supports at most {NORM_MAX_HIDDEN}"),
        });
    }
    let (dy, x) = (dy.f_contiguous()?, x.f_contiguous()?);
    let res = residual.map(Tensor::f_contiguous).transpose()?;
    let mut rows = vec![Rows::of(op, "dy", &dy)?, Rows::of(op, "x", &x)?];
    if let Some(r) = &res {
        rows.push(Rows::of(op, "residual", r)?);
    }
    let dx = Tensor::f_empty([n as i64, h as i64], (Kind::BFloat16, dev))?;
    rows.push(Rows::of(op, "dx", &dx)?);
    let ctas = n.div_ceil(NORM_ROWS_PER_CTA);
    let part = Tensor::f_empty([ctas as i64, h as i64], (Kind::Float, dev))?;
    if n > 0 {
        let (w, rstd) = (f32_contiguous(w)?, rstd.f_contiguous()?);
        let args = [
            KernelArg::Ptr(dev_ptr(&dy)),
            KernelArg::Ptr(dev_ptr(&x)),
            KernelArg::Ptr(dev_ptr(&w)),
            KernelArg::Ptr(dev_ptr(&rstd)),
            KernelArg::Ptr(res.as_ref().map_or(0, dev_ptr)),
            KernelArg::Ptr(dev_ptr(&dx)),
            KernelArg::Ptr(dev_ptr(&part)),
            KernelArg::I32(n as i32),
            KernelArg::I32(h as i32),
            KernelArg::I32(NORM_ROWS_PER_CTA as i32),
        ];
        let name = variant(
            vec8(h as i64, &rows),
            ["tr_rmsnorm_bwd_v1", "tr_rmsnorm_bwd_v8"],
        );
        launch(dev, name, cta_grid(ctas, THREADS, 4 * h as u32), &args)?;
    }
    Ok((dx, column_sums(&part, ctas, h)?))
}

/// One SwiGLU launch over `[rows, cols]`: `rows_args` are the row tensors
/// in the kernel's parameter order.
fn swiglu_launch(
    dev: Device,
    names: [&'static str; 2],
    rows_args: &[Rows],
    size: [i64; 2],
) -> Result<()> {
    let [rows, cols] = size;
    if rows * cols == 0 {
        return Ok(());
    }
    let vec = vec8(cols, rows_args);
    let mut args: Vec<KernelArg> = rows_args.iter().flat_map(|r| r.args()).collect();
    args.extend([KernelArg::I32(rows as i32), KernelArg::I32(cols as i32)]);
    let groups = (rows * cols / if vec { 8 } else { 1 }) as u64;
    let sms = runtime(dev)?.sm_count;
    launch(
        dev,
        variant(vec, names),
        grid_1d(groups, THREADS, sms, 8),
        &args,
    )
}

/// Kernel side of [`crate::train_ops::swiglu_forward`] (shapes checked).
pub(crate) fn swiglu_forward(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    let op = "swiglu_forward";
    let size = [gate.size()[0], gate.size()[1]];
    let h = Tensor::f_empty(size, (Kind::BFloat16, gate.device()))?;
    let rows = [
        Rows::of(op, "gate", gate)?,
        Rows::of(op, "up", up)?,
        Rows::of(op, "h", &h)?,
    ];
    let names = ["tr_swiglu_fwd_v1", "tr_swiglu_fwd_v8"];
    swiglu_launch(gate.device(), names, &rows, size)?;
    Ok(h)
}

/// Kernel side of [`crate::train_ops::swiglu_backward`] (shapes checked);
/// with `h`, also writes the forward's output there.
pub(crate) fn swiglu_backward(
    dh: &Tensor,
    gate: &Tensor,
    up: &Tensor,
    out: &Tensor,
    h: Option<&Tensor>,
) -> Result<()> {
    let op = "swiglu_backward";
    let no_h = Rows { ptr: 0, stride: 0 };
    let rows = [
        Rows::of(op, "dh", dh)?,
        Rows::of(op, "gate", gate)?,
        Rows::of(op, "up", up)?,
        Rows::of(op, "out", out)?,
        h.map_or(Ok(no_h), |h| Rows::of(op, "h", h))?,
    ];
    let size = [gate.size()[0], gate.size()[1]];
    let names = ["tr_swiglu_bwd_v1", "tr_swiglu_bwd_v8"];
    swiglu_launch(gate.device(), names, &rows, size)
}

/// The q/k kernels' common arguments after the tensors: f32 `w`, `cos`,
/// `sin` (kept alive by the caller) and the sizes of `x` `[N, heads, D]`.
struct QkShape {
    w: Tensor,
    cos: Tensor,
    sin: Tensor,
    items: usize,
    heads: i64,
    head_dim: i64,
    t_len: i64,
}

impl QkShape {
    fn new(op: &str, x: &Tensor, w: &Tensor, (cos, sin): (&Tensor, &Tensor)) -> Result<QkShape> {
        let size = x.size();
        let head_dim = size[2];
        if head_dim as usize > QK_MAX_HEAD_DIM {
            return Err(Error::Unsupported {
                name: op.into(),
                what: "x",
                reason: format!(
                    "has head dim {head_dim}; the kernels support at most {QK_MAX_HEAD_DIM}"
                ),
            });
        }
        Ok(QkShape {
            w: f32_contiguous(w)?,
            cos: cos.f_contiguous()?,
            sin: sin.f_contiguous()?,
            items: (size[0] * size[1]) as usize,
            heads: size[1],
            head_dim,
            t_len: cos.size()[0],
        })
    }

    fn tables(&self) -> [KernelArg; 3] {
        [&self.w, &self.cos, &self.sin].map(|t| KernelArg::Ptr(dev_ptr(t)))
    }

    fn sizes(&self, eps: f64) -> [KernelArg; 5] {
        [
            KernelArg::I32(self.items as i32),
            KernelArg::I32(self.heads as i32),
            KernelArg::I32((self.head_dim / 2) as i32),
            KernelArg::I32(self.t_len as i32),
            KernelArg::F32(eps as f32),
        ]
    }
}

/// Kernel side of [`crate::train_ops::qk_norm_rope_forward`] (shapes checked).
pub(crate) fn qk_norm_rope_forward(
    x: &Tensor,
    w: &Tensor,
    rope: (&Tensor, &Tensor),
    eps: f64,
) -> Result<Tensor> {
    let op = "qk_norm_rope_forward";
    let xr = Rows::of(op, "x", x)?;
    let qk = QkShape::new(op, x, w, rope)?;
    let out = Tensor::f_empty(x.size(), (Kind::BFloat16, x.device()))?;
    if qk.items == 0 {
        return Ok(out);
    }
    let mut args = xr.args().to_vec();
    args.extend(qk.tables());
    args.push(KernelArg::Ptr(dev_ptr(&out)));
    args.extend(qk.sizes(eps));
    let ctas = qk.items.div_ceil(QK_WARPS as usize);
    let cfg = cta_grid(ctas, 32 * QK_WARPS, 0);
    launch(x.device(), "tr_qk_norm_rope_fwd", cfg, &args)?;
    Ok(out)
}

/// Kernel side of [`crate::train_ops::qk_norm_rope_backward`] (shapes checked).
pub(crate) fn qk_norm_rope_backward(
    dout: &Tensor,
    x: &Tensor,
    w: &Tensor,
    rope: (&Tensor, &Tensor),
    eps: f64,
    dx_out: &Tensor,
) -> Result<Tensor> {
    let op = "qk_norm_rope_backward";
    let dout = dout.f_contiguous()?;
    let dr = Rows::of(op, "dout", &dout)?;
    let xr = Rows::of(op, "x", x)?;
    let dxr = Rows::of(op, "dx_out", dx_out)?;
    let qk = QkShape::new(op, x, w, rope)?;
    let d = qk.head_dim as usize;
    let ctas = qk.items.div_ceil(QK_ITEMS_PER_CTA);
    let part = Tensor::f_empty([ctas as i64, d as i64], (Kind::Float, x.device()))?;
    if qk.items > 0 {
        let mut args = vec![KernelArg::Ptr(dr.ptr)];
        args.extend(xr.args());
        args.extend(qk.tables());
        args.extend(dxr.args());
        args.push(KernelArg::Ptr(dev_ptr(&part)));
        args.extend(qk.sizes(eps));
        args.push(KernelArg::I32(QK_ITEMS_PER_CTA as i32));
        let cfg = cta_grid(ctas, 32 * QK_WARPS, 0);
        launch(x.device(), "tr_qk_norm_rope_bwd", cfg, &args)?;
    }
    column_sums(&part, ctas, d)
}
