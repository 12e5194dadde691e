//! Forward and backward ops of one Qwen3 decoder block's training step that
//! torch would otherwise run as many small kernels: RMSNorm, SwiGLU, and the
//! per-head q/k RMSNorm + RoPE.
//!
//! Every op takes `kernels`: when it is true and the data is on CUDA, the
//! fused kernels of `kernels/train.cu` run (bf16 only); otherwise a reference
//! made of tch ops runs, on any device, in Float or BFloat16. The reference
//! rounds exactly where the model's torch code rounds (`RmsNorm::forward`,
//! `gate.silu() * up` and its autograd, `RmsNorm::forward_f32` +
//! `Rotary::apply` in crates/qwen3-model), with the same ops in the same
//! order, so on one device it gives that code's bits.
//!
//! Notation: `N` rows (tokens, the batch flattened; row `n` is at sequence
//! position `n % T`), `H` hidden size, `I` intermediate size, `D` head size;
//! `cd`, the compute kind, is the kind of the first tensor argument and every
//! activation must have it. Norm weights may be Float or BFloat16 (the master
//! kind) and are read as f32. The ops run outside autograd: their results
//! never require grad.
//!
//! Kernel against reference, on the same inputs (tests/gpu_train_ops.rs):
//! the elementwise math is the same f32 ops in the same order, but the
//! reductions (mean squares, row dots) add in another order. So bf16 outputs
//! agree to one bf16 ulp; where an output is the difference of two larger
//! terms (RoPE, and `g - x̂·mean(g·x̂)` in the norm backwards) the f32 noise of
//! the reductions may show beyond that ulp, but stays below 2^-14 of the
//! tensor's largest value. Weight gradients (f32) agree to about 1e-6 relative
//! and are deterministic: per-CTA partial sums added in a fixed order.
//!
//! ```
//! use nvfp4_kernels::train_ops;
//! use tch::{Device, Kind, Tensor};
//! let _guard = tch::no_grad_guard();
//! let x = Tensor::randn([4, 64], (Kind::Float, Device::Cpu));
//! let w = Tensor::ones([64], (Kind::Float, Device::Cpu));
//! let (y, rstd) = train_ops::rmsnorm_forward(&x, &w, 1e-6, true)?; // CPU: the reference
//! let dy = Tensor::randn([4, 64], (Kind::Float, Device::Cpu));
//! let (dx, dw) = train_ops::rmsnorm_backward(&dy, &x, &w, &rstd, None, true)?;
//! assert_eq!((y.size(), dx.size(), dw.size()), (vec![4, 64], vec![4, 64], vec![64]));
//! # Ok::<(), nvfp4_kernels::Error>(())
//! ```

use tch::{Device, Kind, Tensor};

use crate::cuda::checks::{dims, kind_label};
use crate::cuda::train as fused;
use crate::error::{Error, Result};

/// Kinds an argument may have.
#[derive(Clone, Copy)]
enum Kinds {
    /// Float or BFloat16 (a compute kind, or a weight's master kind).
    Real,
    /// Exactly this kind; the text names it in errors.
    Is(Kind, &'static str),
}

/// The lead tensor of an op, whose kind every activation must have: its
/// name and that requirement in words.
type Lead = (&'static str, &'static str);
const X: Lead = ("x", "the kind of x");
const GATE: Lead = ("gate", "the kind of gate");

/// The argument checks of one op, from its lead tensor: every tensor on the
/// lead's device, of an accepted kind and of the expected shape.
struct Args {
    op: &'static str,
    device: Device,
    /// The compute kind (the lead's) and its requirement in words.
    cd: Kind,
    like: &'static str,
    /// The lead's shape.
    size: Vec<i64>,
}

impl Args {
    /// Checks the lead tensor (Float or BFloat16, `rank` dims).
    fn lead(op: &'static str, (what, like): Lead, t: &Tensor, rank: usize) -> Result<Args> {
        let mut args = Args {
            op,
            device: t.device(),
            cd: Kind::Float,
            like,
            size: t.size(),
        };
        args.cd = args.kind(what, t, Kinds::Real)?;
        if args.size.len() != rank {
            return Err(Error::WrongRank {
                name: op.into(),
                what,
                expected: rank,
                got: dims(&args.size),
            });
        }
        Ok(args)
    }

    fn kind(&self, what: &'static str, t: &Tensor, kinds: Kinds) -> Result<Kind> {
        let got = t.f_kind()?;
        let (ok, expected) = match kinds {
            Kinds::Real => (
                matches!(got, Kind::Float | Kind::BFloat16),
                "Float or BFloat16",
            ),
            Kinds::Is(kind, label) => (got == kind, label),
        };
        if !ok {
            return Err(Error::WrongKind {
                name: self.op.into(),
                what,
                expected,
                got,
            });
        }
        Ok(got)
    }

    /// Checks kind, device and shape.
    fn tensor(&self, what: &'static str, t: &Tensor, kinds: Kinds, shape: &[i64]) -> Result<()> {
        self.kind(what, t, kinds)?;
        if t.device() != self.device {
            return Err(Error::DeviceMismatch {
                name: self.op.into(),
                what,
                expected: self.device,
                got: t.device(),
            });
        }
        if t.size() != shape {
            return Err(Error::ShapeMismatch {
                name: self.op.into(),
                what,
                expected: dims(shape),
                got: dims(&t.size()),
            });
        }
        Ok(())
    }

    /// An activation: the compute kind.
    fn activation(&self, what: &'static str, t: &Tensor, shape: &[i64]) -> Result<()> {
        self.tensor(what, t, Kinds::Is(self.cd, self.like), shape)
    }

    /// A norm weight `[len]`: Float or BFloat16.
    fn weight(&self, what: &'static str, t: &Tensor, len: i64) -> Result<()> {
        self.tensor(what, t, Kinds::Real, &[len])
    }

    /// An f32 tensor (`rstd`, `cos`, `sin`).
    fn f32(&self, what: &'static str, t: &Tensor, shape: &[i64]) -> Result<()> {
        let float = Kinds::Is(Kind::Float, kind_label(Kind::Float));
        self.tensor(what, t, float, shape)
    }
}

fn use_kernels(kernels: bool, t: &Tensor) -> bool {
    kernels && t.device().is_cuda()
}

fn f32(t: &Tensor) -> Result<Tensor> {
    Ok(t.f_to_kind(Kind::Float)?)
}

/// Writes `src` into the view `dst` (of a caller's buffer).
fn write(dst: Tensor, src: &Tensor) -> Result<()> {
    let mut dst = dst;
    Ok(dst.f_copy_(src)?)
}

/// `1 / sqrt(mean(x^2) + eps)` over the last dim (kept), of f32 `x`: the ops
/// of `RmsNorm::forward_f32`.
fn rstd_ref(x: &Tensor, eps: f64) -> Result<Tensor> {
    let var = x.f_square()?.f_mean_dim(-1, true, Kind::Float)?;
    Ok(var.f_add_scalar(eps)?.f_rsqrt()?)
}

/// `(x * rstd) * w` in f32 and the rstd (last dim kept), as `RmsNorm::forward_f32`.
fn norm_ref(x: &Tensor, w: &Tensor, eps: f64) -> Result<(Tensor, Tensor)> {
    let x = f32(x)?;
    let rstd = rstd_ref(&x, eps)?;
    Ok((x.f_mul(&rstd)?.f_mul(&f32(w)?)?, rstd))
}

/// Backward of `y = (x * rstd) * w` over the last dim, all f32 (`rstd` with
/// the last dim kept): `dx = (g - x̂ * mean(g * x̂)) * rstd` with `x̂ = x * rstd`,
/// `g = dy * w`, and the per-element terms `dy * x̂` of dw.
fn norm_backward_ref(
    dy: &Tensor,
    x: &Tensor,
    w: &Tensor,
    rstd: &Tensor,
) -> Result<(Tensor, Tensor)> {
    let xhat = x.f_mul(rstd)?;
    let g = dy.f_mul(&f32(w)?)?;
    let mean = g.f_mul(&xhat)?.f_mean_dim(-1, true, Kind::Float)?;
    let dx = g.f_sub(&xhat.f_mul(&mean)?)?.f_mul(rstd)?;
    Ok((dx, dy.f_mul(&xhat)?))
}

/// Rotate-half RoPE of the last dim, the ops of `Rotary::apply`:
/// `[x1 cos - x2 sin, x2 cos + x1 sin]`. With `-sin` it is the inverse
/// rotation (its transpose), `[x1 cos + x2 sin, x2 cos - x1 sin]` to the bit.
fn rotate(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let half = x.size().last().copied().unwrap_or(0) / 2;
    let (x1, x2) = (x.f_narrow(-1, 0, half)?, x.f_narrow(-1, half, half)?);
    let lo = x1.f_mul(cos)?.f_sub(&x2.f_mul(sin)?)?;
    let hi = x2.f_mul(cos)?.f_add(&x1.f_mul(sin)?)?;
    Ok(Tensor::f_cat(&[lo, hi], -1)?)
}

/// The rows of `table` `[T, D/2]` at positions `n % T` of `n` rows, as
/// `[n, 1, D/2]` (broadcast over heads).
fn at_positions(table: &Tensor, n: i64) -> Result<Tensor> {
    let t = table.size()[0];
    let pos = Tensor::f_arange(n, (Kind::Int64, table.device()))?.f_remainder(t)?;
    Ok(table.f_index_select(0, &pos)?.f_unsqueeze(1)?)
}

/// RMSNorm of the rows of `x` `[N, H]`, as the model's `RmsNorm::forward`:
/// in f32, `rstd = 1/sqrt(mean(x^2) + eps)` and `y = cd((x * rstd) * w)`,
/// rounded once. Returns `(y [N, H] cd, rstd [N] f32)`.
///
/// Errors: `x` not a Float / BFloat16 matrix, `w` not Float / BFloat16 `[H]`
/// or on another device; with `kernels` on CUDA, `x` not BFloat16.
pub fn rmsnorm_forward(
    x: &Tensor,
    w: &Tensor,
    eps: f64,
    kernels: bool,
) -> Result<(Tensor, Tensor)> {
    let _no_grad = tch::no_grad_guard();
    let args = Args::lead("rmsnorm_forward", X, x, 2)?;
    args.weight("w", w, args.size[1])?;
    if use_kernels(kernels, x) {
        return fused::rmsnorm_forward(x, w, eps);
    }
    let (y, rstd) = norm_ref(x, w, eps)?;
    Ok((y.f_to_kind(args.cd)?, rstd.f_squeeze_dim(-1)?))
}

/// Backward of [`rmsnorm_forward`] given `dy = dL/dy` and the forward's
/// `rstd`: in f32, with `x̂ = x * rstd` and `g = dy * w`,
/// `dx = rstd * (g - x̂ * mean(g * x̂))` (mean over H), plus `residual` when
/// given (the gradient reaching the block input by the skip connection),
/// rounded once to cd; `dw = sum over rows of dy * x̂` in f32. Returns
/// `(dx [N, H] cd, dw [H] f32)`.
///
/// Errors: as [`rmsnorm_forward`], and `dy` / `residual` not `[N, H]` of
/// x's kind, `rstd` not Float `[N]`; with `kernels` on CUDA, H over 8192.
pub fn rmsnorm_backward(
    dy: &Tensor,
    x: &Tensor,
    w: &Tensor,
    rstd: &Tensor,
    residual: Option<&Tensor>,
    kernels: bool,
) -> Result<(Tensor, Tensor)> {
    let _no_grad = tch::no_grad_guard();
    let args = Args::lead("rmsnorm_backward", X, x, 2)?;
    args.activation("dy", dy, &args.size)?;
    args.weight("w", w, args.size[1])?;
    args.f32("rstd", rstd, &args.size[..1])?;
    if let Some(r) = residual {
        args.activation("residual", r, &args.size)?;
    }
    if use_kernels(kernels, x) {
        return fused::rmsnorm_backward(dy, x, w, rstd, residual);
    }
    let (dx, dw_terms) = norm_backward_ref(&f32(dy)?, &f32(x)?, w, &rstd.f_unsqueeze(-1)?)?;
    let dx = match residual {
        Some(r) => dx.f_add(&f32(r)?)?,
        None => dx,
    };
    let dw = dw_terms.f_sum_dim_intlist(0, false, Kind::Float)?;
    Ok((dx.f_to_kind(args.cd)?, dw))
}

/// Checks `gate` and `up` (`[N, I]`, one kind, any row stride).
fn swiglu_args(op: &'static str, gate: &Tensor, up: &Tensor) -> Result<Args> {
    let args = Args::lead(op, GATE, gate, 2)?;
    args.activation("up", up, &args.size)?;
    Ok(args)
}

/// The MLP's gated activation `h = cd(cd(silu(gate)) * up)`, with the two
/// roundings of `gate.silu() * up` in torch eager. `gate` and `up` are
/// `[N, I]` and may be row-strided views (the column halves of one `[N, 2I]`
/// projection output); `h` is contiguous `[N, I]`.
///
/// Errors: `gate` not a Float / BFloat16 matrix, `up` of another kind, shape
/// or device; with `kernels` on CUDA, not BFloat16, or a last dim that is not
/// contiguous.
pub fn swiglu_forward(gate: &Tensor, up: &Tensor, kernels: bool) -> Result<Tensor> {
    let _no_grad = tch::no_grad_guard();
    swiglu_args("swiglu_forward", gate, up)?;
    if use_kernels(kernels, gate) {
        return fused::swiglu_forward(gate, up);
    }
    Ok(gate.f_silu()?.f_mul(up)?.f_contiguous()?)
}

/// Backward of [`swiglu_forward`] as torch autograd computes it in cd:
/// `dup = cd(dh * cd(silu(g)))`, `ds = cd(dh * up)`, and `dgate =
/// cd(ds * sig(g) * (1 + g * (1 - sig(g))))` in f32 (torch's
/// `silu_backward`). Writes dgate into columns `0..I` of `out` `[N, 2I]` and
/// dup into columns `I..2I` (`out` may be a row-strided view).
///
/// Errors: as [`swiglu_forward`], and `dh` not `[N, I]` / `out` not
/// `[N, 2I]` of gate's kind and device.
pub fn swiglu_backward(
    dh: &Tensor,
    gate: &Tensor,
    up: &Tensor,
    out: &Tensor,
    kernels: bool,
) -> Result<()> {
    swiglu_backward_into(dh, gate, up, out, None, kernels)
}

/// [`swiglu_backward`] that also returns the forward's output `h` (equal to
/// [`swiglu_forward`]'s): a backward that needs `h` again (the down
/// projection's weight gradient) gets it from the same read of gate and up.
pub fn swiglu_backward_with_output(
    dh: &Tensor,
    gate: &Tensor,
    up: &Tensor,
    out: &Tensor,
    kernels: bool,
) -> Result<Tensor> {
    let size = swiglu_args("swiglu_backward", gate, up)?.size;
    let h = Tensor::f_empty(size.as_slice(), (gate.f_kind()?, gate.device()))?;
    swiglu_backward_into(dh, gate, up, out, Some(&h), kernels)?;
    Ok(h)
}

fn swiglu_backward_into(
    dh: &Tensor,
    gate: &Tensor,
    up: &Tensor,
    out: &Tensor,
    h: Option<&Tensor>,
    kernels: bool,
) -> Result<()> {
    let _no_grad = tch::no_grad_guard();
    let args = swiglu_args("swiglu_backward", gate, up)?;
    args.activation("dh", dh, &args.size)?;
    let (n, i) = (args.size[0], args.size[1]);
    args.activation("out", out, &[n, 2 * i])?;
    if use_kernels(kernels, gate) {
        return fused::swiglu_backward(dh, gate, up, out, h);
    }
    let silu = gate.f_silu()?;
    if let Some(h) = h {
        write(h.shallow_clone(), &silu.f_mul(up)?)?;
    }
    let dup = dh.f_mul(&silu)?;
    let dgate = gate.f_silu_backward(&dh.f_mul(up)?)?;
    write(out.f_narrow(1, 0, i)?, &dgate)?;
    write(out.f_narrow(1, i, i)?, &dup)
}

/// Checks the q/k ops' `x` `[N, heads, D]` (D even, at most 256), `w` `[D]`
/// and `cos` / `sin` f32 `[T, D/2]` (T >= 1).
fn qk_args(op: &'static str, x: &Tensor, w: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Args> {
    let args = Args::lead(op, X, x, 3)?;
    let d = args.size[2];
    if d % 2 != 0 || d as usize > fused::QK_MAX_HEAD_DIM {
        return Err(Error::Unsupported {
            name: op.into(),
            what: "x",
            reason: format!(
                "has head dim {d}; RoPE needs an even one, at most {}",
                fused::QK_MAX_HEAD_DIM
            ),
        });
    }
    args.weight("w", w, d)?;
    let t = cos.size().first().copied().unwrap_or(0).max(1);
    args.f32("cos", cos, &[t, d / 2])?;
    args.f32("sin", sin, &[t, d / 2])?;
    Ok(args)
}

/// Per-head RMSNorm then RoPE of q or k, as the model's attention steps 2-3
/// (`RmsNorm::forward_f32`, `Rotary::apply`, then to cd): per (row, head), in
/// f32, `n = (x * rstd) * w` with `rstd = 1/sqrt(mean(x^2) + eps)` over D;
/// with `c, s = cos[t], sin[t]` at `t = row % T`,
/// `out = cd([n1 c - n2 s, n2 c + n1 s])` (n1, n2 the halves of n), rounded once.
/// `x` `[N, heads, D]` may be a row-strided view (q or k inside a `[N, C]`
/// qkv buffer, its last two dims contiguous); `out` is contiguous.
///
/// Errors: `x` not Float / BFloat16 of rank 3 or with an odd head dim or one
/// over 256; `w` not Float / BFloat16 `[D]`; `cos` / `sin` not Float
/// `[T, D/2]`; another device; with `kernels` on CUDA, not BFloat16.
pub fn qk_norm_rope_forward(
    x: &Tensor,
    w: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    eps: f64,
    kernels: bool,
) -> Result<Tensor> {
    let _no_grad = tch::no_grad_guard();
    let args = qk_args("qk_norm_rope_forward", x, w, cos, sin)?;
    if use_kernels(kernels, x) {
        return fused::qk_norm_rope_forward(x, w, (cos, sin), eps);
    }
    let (n, _) = norm_ref(x, w, eps)?;
    let (c, s) = (
        at_positions(cos, args.size[0])?,
        at_positions(sin, args.size[0])?,
    );
    Ok(rotate(&n, &c, &s)?.f_to_kind(args.cd)?)
}

/// Backward of [`qk_norm_rope_forward`] given `dout = dL/dout`: the inverse
/// rotation `dn = [dlo c + dhi s, dhi c - dlo s]`, then the RMSNorm backward
/// over D with the rstd recomputed from `x`: `dx = rstd * (g - x̂ * mean(g * x̂))`,
/// `g = dn * w`, `x̂ = x * rstd`, rounded once to cd and written into `dx_out`
/// `[N, heads, D]` (which may be a row-strided view of a `[N, C]` gradient
/// buffer). Returns `dw [D] f32`, the sum over rows and heads of `dn * x̂`.
///
/// Errors: as [`qk_norm_rope_forward`], and `dout` / `dx_out` not
/// `[N, heads, D]` of x's kind and device.
#[allow(clippy::too_many_arguments)] // the spec'd signature: each tensor stands alone
pub fn qk_norm_rope_backward(
    dout: &Tensor,
    x: &Tensor,
    w: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    eps: f64,
    dx_out: &Tensor,
    kernels: bool,
) -> Result<Tensor> {
    let _no_grad = tch::no_grad_guard();
    let args = qk_args("qk_norm_rope_backward", x, w, cos, sin)?;
    args.activation("dout", dout, &args.size)?;
    args.activation("dx_out", dx_out, &args.size)?;
    if use_kernels(kernels, x) {
        return fused::qk_norm_rope_backward(dout, x, w, (cos, sin), eps, dx_out);
    }
    let xf = f32(x)?;
    let (c, s) = (
        at_positions(cos, args.size[0])?,
        at_positions(sin, args.size[0])?,
    );
    let dn = rotate(&f32(dout)?, &c, &s.f_neg()?)?;
    let (dx, dw_terms) = norm_backward_ref(&dn, &xf, w, &rstd_ref(&xf, eps)?)?;
    write(dx_out.shallow_clone(), &dx.f_to_kind(args.cd)?)?;
    Ok(dw_terms.f_sum_dim_intlist([0, 1].as_slice(), false, Kind::Float)?)
}
