//! Inputs and measures shared by the train_ops test binaries (train_ops on
//! the CPU, gpu_train_ops on CUDA).
#![allow(dead_code)] // each binary uses a subset

use tch::{Device, Kind, Tensor};

pub const EPS: f64 = 1e-6;

/// max |got - want| / max |want|, in f64.
pub fn rel(got: &Tensor, want: &Tensor) -> f64 {
    let want = want.to_kind(Kind::Double);
    let diff = (got.to_kind(Kind::Double) - &want)
        .abs()
        .max()
        .double_value(&[]);
    diff / want.abs().max().double_value(&[])
}

/// Normal f32 values whose rows have scales from 0.25 to 4 (so rstd differs
/// per row), rounded to `kind`.
pub fn rows_randn(shape: &[i64], kind: Kind, dev: Device) -> Tensor {
    let scale = Tensor::rand([shape[0], 1], (Kind::Float, dev)) * 3.75 + 0.25;
    let rest = shape.len() - 2;
    let scale = (0..rest).fold(scale, |s, _| s.unsqueeze(-1));
    (Tensor::randn(shape, (Kind::Float, dev)) * scale).to_kind(kind)
}

/// A norm weight near 1 (never 0), as trained RMSNorm weights are.
pub fn norm_weight(len: i64, kind: Kind, dev: Device) -> Tensor {
    (Tensor::randn([len], (Kind::Float, dev)) * 0.2 + 1.0).to_kind(kind)
}

/// cos / sin `[t, d/2]` f32 of positions 0..t with the model's inverse
/// frequencies (`1 / theta^(2i/d)`, the ops of qwen3-model's rope.rs).
pub fn rope_tables(t: i64, d: i64, theta: f64, dev: Device) -> (Tensor, Tensor) {
    let exps = Tensor::arange_start_step(0, d, 2, (Kind::Float, dev)) / d as f64;
    let inv_freq = Tensor::pow_scalar(theta, &exps).reciprocal();
    let pos = Tensor::arange(t, (Kind::Float, dev));
    let freqs = pos.unsqueeze(1) * inv_freq.unsqueeze(0);
    (freqs.cos(), freqs.sin())
}

/// `[n, heads, d]` at columns `start..start + heads * d` of the rows of `buf` `[n, C]`.
pub fn heads_view(buf: &Tensor, start: i64, heads: i64, d: i64) -> Tensor {
    let n = buf.size()[0];
    buf.narrow(1, start, heads * d).view([n, heads, d])
}
