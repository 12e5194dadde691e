//! Adding written-out gradients to parameters' `.grad` (what autograd's
//! accumulator does for recorded graphs), for the written-out block and head.

use tch::{Kind, Tensor};

use crate::error::Result;

/// `param.grad`, created (zero) if the parameter has none yet. The zero
/// comes from a backward through `0 * sum(param)`: tch cannot assign
/// `.grad`, and autograd's accumulator gives it the parameter's layout. Runs
/// once per parameter, before its first gradient.
fn grad_of(param: &Tensor) -> Result<Tensor> {
    let g = param.grad();
    if g.defined() {
        return Ok(g);
    }
    tch::with_grad(|| (param.sum(Kind::Float) * 0.0).f_backward())?;
    Ok(param.grad())
}

/// `param.grad += a^T @ b` (a: [N, out], b: [N, in]).
pub(crate) fn add_weight_grad(param: &Tensor, a: &Tensor, b: &Tensor) -> Result<()> {
    let mut g = grad_of(param)?;
    if g.kind() == a.kind() {
        let _ = g.f_addmm_(&a.tr(), b)?;
    } else {
        // An f32 master with bf16 activations: the product in bf16, then added.
        let _ = g.f_add_(&a.tr().f_mm(b)?)?;
    }
    Ok(())
}

/// `param.grad += d` for a norm weight (`d` f32).
pub(crate) fn add_norm_grad(param: &Tensor, d: &Tensor) -> Result<()> {
    let _ = grad_of(param)?.f_add_(d)?;
    Ok(())
}

/// `param.grad[rows[i]] += d[i]` (repeated rows add up), for a lookup table.
pub(crate) fn add_rows_grad(param: &Tensor, rows: &Tensor, d: &Tensor) -> Result<()> {
    let mut g = grad_of(param)?;
    let _ = g.f_index_add_(0, rows, &d.f_to_kind(g.kind())?)?;
    Ok(())
}
