//! The tch-op references of `train_ops` on the CPU: each against torch
//! autograd of the plain formula in f64, the bf16 roundings against torch's
//! own bf16 autograd and attention code, and argument errors. The CUDA
//! kernels against these references: tests/gpu_train_ops.rs.

mod train_common;

use nvfp4_kernels::{train_ops, Error};
use tch::{Device, Kind, Tensor};
use train_common::{heads_view, norm_weight, rel, rope_tables, rows_randn, EPS};

const CPU: Device = Device::Cpu;

/// f32 reference against f64: every output is a few f32 roundings (unit
/// 6e-8) of terms no larger than the output's scale, plus sums over at most
/// 100 terms (error at most ~100 units, typically ~10 of them), so 1e-5 of
/// the largest output (max-norm relative) leaves a margin of ~10x while
/// catching any wrong term (an error of 1e-3 or more).
const F32_TOL: f64 = 1e-5;

/// A leaf of the f64 autograd graph holding `t`'s values.
fn leaf(t: &Tensor) -> Tensor {
    t.to_kind(Kind::Double).detach().set_requires_grad(true)
}

/// Backpropagates the upstream gradient `dy` through `y`.
fn backprop(y: &Tensor, dy: &Tensor) {
    (y * dy.to_kind(Kind::Double)).sum(Kind::Double).backward();
}

fn check(what: &str, got: &Tensor, want: &Tensor) {
    let e = rel(got, want);
    println!("{what}: rel err {e:.2e}");
    assert!(e <= F32_TOL, "{what}: rel err {e:e} > {F32_TOL:e}");
}

fn same_bits(a: &Tensor, b: &Tensor) -> bool {
    a.size() == b.size() && test_support::raw_bytes(a) == test_support::raw_bytes(b)
}

/// `x / sqrt(mean(x^2) + eps) * w` over the last dim, in f64.
fn rmsnorm64(x: &Tensor, w: &Tensor) -> Tensor {
    x / (x.square().mean_dim(-1, true, Kind::Double) + EPS).sqrt() * w
}

#[test]
fn rmsnorm_reference_matches_f64_autograd() {
    tch::manual_seed(test_support::seed_i64());
    let (n, h) = (7, 100);
    let x = rows_randn(&[n, h], Kind::Float, CPU);
    // A trainable weight: the ops must neither need nor record autograd.
    let w = norm_weight(h, Kind::Float, CPU).set_requires_grad(true);
    let dy = Tensor::randn([n, h], (Kind::Float, CPU));
    let res = Tensor::randn([n, h], (Kind::Float, CPU));

    let (y, rstd) = train_ops::rmsnorm_forward(&x, &w, EPS, false).unwrap();
    let (dx, dw) = train_ops::rmsnorm_backward(&dy, &x, &w, &rstd, None, false).unwrap();
    let (dx_res, _) = train_ops::rmsnorm_backward(&dy, &x, &w, &rstd, Some(&res), false).unwrap();
    assert!(!y.requires_grad() && !dx.requires_grad() && !dw.requires_grad());
    assert_eq!(
        (y.kind(), dx.kind(), dw.kind()),
        (Kind::Float, Kind::Float, Kind::Float)
    );

    let (xd, wd) = (leaf(&x), leaf(&w));
    let yd = rmsnorm64(&xd, &wd);
    backprop(&yd, &dy);
    let rstd64 = (xd.square().mean_dim(-1, false, Kind::Double) + EPS).rsqrt();
    check("y", &y, &yd);
    check("rstd", &rstd, &rstd64);
    check("dx", &dx, &xd.grad());
    check(
        "dx + residual",
        &dx_res,
        &(xd.grad() + res.to_kind(Kind::Double)),
    );
    check("dw", &dw, &wd.grad());

    // `kernels` on the CPU runs the reference; a bf16 weight is read as f32.
    let (y2, _) = train_ops::rmsnorm_forward(&x, &w, EPS, true).unwrap();
    assert!(same_bits(&y, &y2));
    let w_bf16 = w.detach().to_kind(Kind::BFloat16);
    let (y_bf16, _) = train_ops::rmsnorm_forward(&x, &w_bf16, EPS, false).unwrap();
    let (y_up, _) =
        train_ops::rmsnorm_forward(&x, &w_bf16.to_kind(Kind::Float), EPS, false).unwrap();
    assert!(same_bits(&y_bf16, &y_up));
}

#[test]
fn swiglu_reference_matches_f64_autograd_on_strided_halves() {
    tch::manual_seed(test_support::seed_i64());
    let (n, i) = (5, 40);
    let gate_up = Tensor::randn([n, 2 * i], (Kind::Float, CPU)) * 2.0;
    let (gate, up) = (gate_up.narrow(1, 0, i), gate_up.narrow(1, i, i));
    let dh = Tensor::randn([n, i], (Kind::Float, CPU));

    let h = train_ops::swiglu_forward(&gate, &up, false).unwrap();
    assert!(h.is_contiguous() && h.size() == [n, i]);
    let out = Tensor::full([n, 2 * i], f64::NAN, (Kind::Float, CPU));
    train_ops::swiglu_backward(&dh, &gate, &up, &out, false).unwrap();

    let (gd, ud) = (leaf(&gate), leaf(&up));
    let hd = gd.silu() * &ud;
    backprop(&hd, &dh);
    check("h", &h, &hd);
    check("dgate", &out.narrow(1, 0, i), &gd.grad());
    check("dup", &out.narrow(1, i, i), &ud.grad());

    // The backward that also returns h: the forward's h, the same gradients.
    let out_h = Tensor::full([n, 2 * i], f64::NAN, (Kind::Float, CPU));
    let h2 = train_ops::swiglu_backward_with_output(&dh, &gate, &up, &out_h, false).unwrap();
    assert!(same_bits(&h2, &h) && same_bits(&out_h, &out));
}

/// The bf16 roundings are torch autograd's own: `gate.silu() * up` in bf16,
/// backpropagated by torch, gives the reference's bits.
#[test]
fn swiglu_reference_is_torch_bf16_autograd_bit_for_bit() {
    tch::manual_seed(test_support::seed_i64());
    let (n, i) = (6, 64);
    let bf16 = |t: Tensor| t.to_kind(Kind::BFloat16);
    let gate = bf16(Tensor::randn([n, i], (Kind::Float, CPU)) * 3.0);
    let up = bf16(Tensor::randn([n, i], (Kind::Float, CPU)));
    let dh = bf16(Tensor::randn([n, i], (Kind::Float, CPU)));

    let h = train_ops::swiglu_forward(&gate, &up, false).unwrap();
    let out = Tensor::zeros([n, 2 * i], (Kind::BFloat16, CPU));
    train_ops::swiglu_backward(&dh, &gate, &up, &out, false).unwrap();

    let (g, u) = (gate.set_requires_grad(true), up.set_requires_grad(true));
    let want = g.silu() * &u;
    // dh is exact in any kind, so this hands torch exactly dh as want's gradient.
    backprop(&want, &dh);
    assert!(same_bits(&h, &want.detach()), "h");
    assert!(
        same_bits(&out.narrow(1, 0, i).contiguous(), &g.grad()),
        "dgate"
    );
    assert!(
        same_bits(&out.narrow(1, i, i).contiguous(), &u.grad()),
        "dup"
    );
}

/// `[n, heads, d]` RMSNorm then rotate-half RoPE at positions `row % t`, in f64.
fn qk64(x: &Tensor, w: &Tensor, cos: &Tensor, sin: &Tensor) -> Tensor {
    let (n, d) = (x.size()[0], x.size()[2]);
    let pos = Tensor::arange(n, (Kind::Int64, CPU)).remainder(cos.size()[0]);
    let at = |t: &Tensor| t.to_kind(Kind::Double).index_select(0, &pos).unsqueeze(1);
    let (c, s) = (at(cos), at(sin));
    let nrm = rmsnorm64(x, w);
    let (n1, n2) = (nrm.narrow(2, 0, d / 2), nrm.narrow(2, d / 2, d / 2));
    Tensor::cat(&[&n1 * &c - &n2 * &s, &n2 * &c + &n1 * &s], 2)
}

#[test]
fn qk_norm_rope_reference_matches_f64_autograd_on_strided_views() {
    tch::manual_seed(test_support::seed_i64());
    // 7 rows of a 3-position table: positions 0 1 2 0 1 2 0.
    let (n, heads, d, t, c) = (7, 3, 10, 3, 41);
    let qkv = rows_randn(&[n, c], Kind::Float, CPU);
    let x = heads_view(&qkv, 4, heads, d);
    let w = norm_weight(d, Kind::Float, CPU);
    let (cos, sin) = rope_tables(t, d, 1e4, CPU);
    let dout = Tensor::randn([n, heads, d], (Kind::Float, CPU));

    let out = train_ops::qk_norm_rope_forward(&x, &w, &cos, &sin, EPS, false).unwrap();
    assert!(out.is_contiguous() && out.size() == [n, heads, d]);
    let dqkv = Tensor::full([n, c], f64::NAN, (Kind::Float, CPU));
    let dx = heads_view(&dqkv, 4, heads, d);
    let dw = train_ops::qk_norm_rope_backward(&dout, &x, &w, &cos, &sin, EPS, &dx, false).unwrap();

    let (xd, wd) = (leaf(&x), leaf(&w));
    let outd = qk64(&xd, &wd, &cos, &sin);
    backprop(&outd, &dout);
    check("out", &out, &outd);
    check("dx", &dx, &xd.grad());
    check("dw", &dw, &wd.grad());
    // Only the view's columns of the gradient buffer were written.
    let untouched = Tensor::cat(
        &[
            dqkv.narrow(1, 0, 4),
            dqkv.narrow(1, 4 + heads * d, c - 4 - heads * d),
        ],
        1,
    );
    assert!(bool::try_from(untouched.isnan().all()).unwrap());
}

/// The q/k reference is the model's attention steps 2-3 (crates/qwen3-model
/// attention.rs: `RmsNorm::forward_f32`, transpose, `Rotary::apply` with
/// `[T, D/2]` tables, `to_kind`), restated here op for op on its
/// `[B, T, heads, D]` layout: same bits.
#[test]
fn qk_norm_rope_reference_is_the_attention_code_bit_for_bit() {
    tch::manual_seed(test_support::seed_i64());
    let (b, t, heads, d) = (2, 5, 4, 16);
    let q = rows_randn(&[b * t, heads * d], Kind::BFloat16, CPU);
    let w = norm_weight(d, Kind::Float, CPU);
    let (cos, sin) = rope_tables(t, d, 1e6, CPU);

    let got =
        train_ops::qk_norm_rope_forward(&q.view([b * t, heads, d]), &w, &cos, &sin, EPS, false)
            .unwrap();

    let x = q.view([b, t, heads, d]).to_kind(Kind::Float);
    let var = x.square().mean_dim(-1, true, Kind::Float);
    let normed = ((x * (var + EPS).rsqrt()) * w.to_kind(Kind::Float)).transpose(1, 2);
    let (x1, x2) = (normed.narrow(3, 0, d / 2), normed.narrow(3, d / 2, d / 2));
    let rotated = Tensor::cat(&[&x1 * &cos - &x2 * &sin, &x2 * &cos + &x1 * &sin], 3);
    let want = rotated.to_kind(Kind::BFloat16).transpose(1, 2).contiguous();
    assert!(same_bits(&got, &want.view([b * t, heads, d])));
}

fn err_of<T: std::fmt::Debug>(r: nvfp4_kernels::Result<T>) -> Error {
    let e = r.expect_err("bad arguments must be an error");
    println!("{e}");
    e
}

#[test]
fn bad_arguments_are_errors_naming_the_argument() {
    let f = |shape: &[i64]| Tensor::ones(shape, (Kind::Float, CPU));
    let (x, w, rstd) = (f(&[4, 16]), f(&[16]), f(&[4]));
    let what = |e: Error| match e {
        Error::WrongKind { what, .. }
        | Error::ShapeMismatch { what, .. }
        | Error::WrongRank { what, .. }
        | Error::Unsupported { what, .. } => what,
        other => panic!("unexpected error {other}"),
    };
    let ints = Tensor::ones([4, 16], (Kind::Int64, CPU));
    assert_eq!(
        what(err_of(train_ops::rmsnorm_forward(&ints, &w, EPS, false))),
        "x"
    );
    assert_eq!(
        what(err_of(train_ops::rmsnorm_forward(
            &x,
            &f(&[17]),
            EPS,
            false
        ))),
        "w"
    );
    assert_eq!(
        what(err_of(train_ops::rmsnorm_forward(
            &f(&[4, 4, 16]),
            &w,
            EPS,
            false
        ))),
        "x"
    );
    let dy_bf16 = x.to_kind(Kind::BFloat16);
    let e = err_of(train_ops::rmsnorm_backward(
        &dy_bf16, &x, &w, &rstd, None, false,
    ));
    assert!(e.to_string().starts_with("rmsnorm_backward: dy"), "{e}");
    let rstd64 = rstd.to_kind(Kind::Double);
    assert_eq!(
        what(err_of(train_ops::rmsnorm_backward(
            &x, &x, &w, &rstd64, None, false
        ))),
        "rstd"
    );
    let res = f(&[4, 15]);
    assert_eq!(
        what(err_of(train_ops::rmsnorm_backward(
            &x,
            &x,
            &w,
            &rstd,
            Some(&res),
            false
        ))),
        "residual"
    );

    assert_eq!(
        what(err_of(train_ops::swiglu_forward(&x, &f(&[4, 8]), false))),
        "up"
    );
    assert_eq!(
        what(err_of(train_ops::swiglu_backward(&x, &x, &x, &x, false))),
        "out"
    );

    let (cos, sin) = rope_tables(2, 16, 1e4, CPU);
    let q = f(&[4, 2, 16]);
    let qk = |x: &Tensor, w: &Tensor, cos: &Tensor| {
        train_ops::qk_norm_rope_forward(x, w, cos, &sin, EPS, false)
    };
    assert_eq!(what(err_of(qk(&f(&[4, 2, 15]), &f(&[15]), &cos))), "x"); // odd head dim
    assert_eq!(what(err_of(qk(&f(&[4, 1, 258]), &f(&[258]), &cos))), "x"); // over 256
    assert_eq!(what(err_of(qk(&x, &w, &cos))), "x"); // rank 2
    assert_eq!(what(err_of(qk(&q, &w, &cos.narrow(1, 0, 7)))), "cos");
    let dx = f(&[4, 2, 8]);
    let e = err_of(train_ops::qk_norm_rope_backward(
        &q, &q, &w, &cos, &sin, EPS, &dx, false,
    ));
    assert_eq!(what(e), "dx_out");
}
