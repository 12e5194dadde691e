//! The fused training kernels (`kernels/train.cu`, `train_ops::*` with
//! `kernels = true`) against their tch-op references (`kernels = false`) on
//! the same CUDA bf16 inputs, at Qwen3-4B's shapes (N = 4096 rows, H = 2560,
//! I = 9728, 32 q / 8 kv heads of D = 128, T = 2048) and at small odd ones
//! that take the kernels' scalar paths. Every test is
//! `#[ignore = "needs CUDA"]`: run with `--include-ignored` on a GPU machine.
//!
//! Tolerances, and why:
//! * SwiGLU (h, dgate, dup): bitwise. No reduction is involved: the kernels
//!   do torch's f32 ops in torch's order (`--fmad=false` keeps each product
//!   and sum rounded, as torch's separate ops and its uncontracted
//!   `silu_backward` round them; same `expf`), then the same bf16 roundings.
//!   Seen equal on all 40M elements of Qwen3-4B's MLP on an H200.
//! * The other bf16 outputs: at most one bf16 ulp apart. The f32 values before
//!   the one rounding differ only through reductions added in another order
//!   (mean squares, row dots); a few f32 ulps of difference round to the same
//!   bf16 or to its neighbour (about 1 element in 10^5 does).
//! * Where an output is a small difference of larger terms (RoPE's
//!   `n1 c - n2 s`, the norm backwards' `g - x̂ mean(g x̂)`), those f32 ulps of
//!   the larger terms can exceed the small output's bf16 ulp; there the
//!   difference must stay within `2^-14` of the tensor's largest value
//!   (1000x the f32 noise, 64x below a bf16 ulp of that value).
//! * rstd: 1e-5 relative (f32 summation noise of 2560 squares).
//! * Weight gradients (f32, sums over 4096 or 131072 terms in another
//!   order): 1e-3 of the largest |dw|, as specified; expected ~1e-6. Two runs
//!   of a kernel give the same bits (no atomics).

mod train_common;

use nvfp4_kernels::{train_ops, Error};
use tch::{Device, Kind, Tensor};
use train_common::{heads_view, norm_weight, rel, rope_tables, rows_randn, EPS};

const BF16: Kind = Kind::BFloat16;
/// Qwen3-4B.
const N: i64 = 4096;
const H: i64 = 2560;
const I: i64 = 9728;
const HQ: i64 = 32;
const HKV: i64 = 8;
const D: i64 = 128;
const T: i64 = 2048;
const THETA: f64 = 1e6;
const DW_TOL: f64 = 1e-3;

/// bf16 values as integers in value order: neighbouring bf16 values differ by 1.
fn ordered(t: &Tensor) -> Tensor {
    let bits = t.contiguous().view_dtype(Kind::Int16).to_kind(Kind::Int);
    let mag = bits.bitwise_and(0x7fff);
    mag.where_self(&bits.ge(0), &(-&mag))
}

/// How far a bf16 output may be from the reference (see the module doc).
#[derive(Clone, Copy)]
struct Tol {
    /// bf16 ulps, anywhere.
    ulps: i64,
    /// Beyond that, this fraction of the tensor's largest |value|.
    cancel: f64,
}

const BITWISE: Tol = Tol {
    ulps: 0,
    cancel: 0.0,
};
const ONE_ULP: Tol = Tol {
    ulps: 1,
    cancel: 0.0,
};
/// One ulp, or `2^-14` of the largest value where terms cancel.
const CANCELLING: Tol = Tol {
    ulps: 1,
    cancel: 1.0 / 16384.0,
};

/// Asserts bf16 `got` within `tol` of `want`; prints how many differ.
fn assert_close(what: &str, got: &Tensor, want: &Tensor, tol: Tol) {
    assert_eq!(
        (got.kind(), got.size()),
        (want.kind(), want.size()),
        "{what}"
    );
    let ulps = (ordered(got) - ordered(want)).abs();
    let diff = (got.to_kind(Kind::Double) - want.to_kind(Kind::Double)).abs();
    let atol = tol.cancel * want.to_kind(Kind::Double).abs().max().double_value(&[]);
    let count = |m: Tensor| m.sum(Kind::Int64).int64_value(&[]);
    let differ = count(ulps.gt(0));
    let beyond = count(ulps.gt(tol.ulps));
    let bad = count(ulps.gt(tol.ulps).logical_and(&diff.gt(atol)));
    let worst = ulps.max().int64_value(&[]);
    println!(
        "{what}: {differ} of {} differ, max {worst} ulp; {beyond} beyond {} ulp, \
         {bad} of them beyond {atol:.1e}",
        got.numel(),
        tol.ulps
    );
    assert_eq!(bad, 0, "{what}: {bad} elements beyond tolerance");
}

fn assert_dw(what: &str, got: &Tensor, want: &Tensor) {
    let e = rel(got, want);
    println!("{what}: rel err {e:.2e}");
    assert!(e <= DW_TOL, "{what}: {e:e}");
}

fn same_bits(a: &Tensor, b: &Tensor) -> bool {
    test_support::raw_bytes(a) == test_support::raw_bytes(b)
}

fn nan(shape: &[i64], dev: Device) -> Tensor {
    Tensor::full(shape, f64::NAN, (BF16, dev))
}

fn all_nan(t: &Tensor) -> bool {
    bool::try_from(t.isnan().all()).unwrap()
}

#[test]
#[ignore = "needs CUDA"]
fn rmsnorm_kernels_match_the_reference() {
    let dev = test_support::cuda();
    tch::manual_seed(test_support::seed_i64());
    // Qwen3-4B (8 elements a thread), then an odd width (one at a time) and
    // 33 rows (the backward's last CTA has one row).
    for (n, h) in [(N, H), (33, 100)] {
        let x = rows_randn(&[n, h], BF16, dev);
        let dy = rows_randn(&[n, h], BF16, dev);
        let res = rows_randn(&[n, h], BF16, dev);
        for w_kind in [Kind::Float, BF16] {
            let w = norm_weight(h, w_kind, dev);
            let what = format!("[{n}, {h}] w {w_kind:?}");
            let (y, rstd) = train_ops::rmsnorm_forward(&x, &w, EPS, true).unwrap();
            let (y_ref, rstd_ref) = train_ops::rmsnorm_forward(&x, &w, EPS, false).unwrap();
            assert_close(&format!("{what} y"), &y, &y_ref, ONE_ULP);
            let e = ((&rstd - &rstd_ref).abs() / &rstd_ref)
                .max()
                .double_value(&[]);
            println!("{what} rstd: max rel diff {e:.2e}");
            assert!(e <= 1e-5, "{what} rstd: {e:e}");
            for residual in [None, Some(&res)] {
                let what = format!("{what} residual {}", residual.is_some());
                let run =
                    |k| train_ops::rmsnorm_backward(&dy, &x, &w, &rstd_ref, residual, k).unwrap();
                let ((dx, dw), (dx_ref, dw_ref)) = (run(true), run(false));
                assert_close(&format!("{what} dx"), &dx, &dx_ref, CANCELLING);
                assert_dw(&format!("{what} dw"), &dw, &dw_ref);
                assert!(
                    same_bits(&dw, &run(true).1),
                    "{what}: dw differs between runs"
                );
            }
        }
    }
}

#[test]
#[ignore = "needs CUDA"]
fn swiglu_kernels_match_the_reference_on_strided_halves() {
    let dev = test_support::cuda();
    tch::manual_seed(test_support::seed_i64());
    // The halves of one gate_up output (8 at a time), then views starting at
    // an odd column (2-byte aligned: one at a time).
    for (n, i, start) in [(N, I, 0), (37, 101, 1)] {
        let width = 2 * i + 2 * start;
        let gate_up = (rows_randn(&[n, width], Kind::Float, dev) * 2.0).to_kind(BF16);
        let gate = gate_up.narrow(1, start, i);
        let up = gate_up.narrow(1, start + i, i);
        let dh = rows_randn(&[n, i], BF16, dev);
        let what = format!("[{n}, {i}] from column {start}");

        let h = train_ops::swiglu_forward(&gate, &up, true).unwrap();
        let h_ref = train_ops::swiglu_forward(&gate, &up, false).unwrap();
        assert_close(&format!("{what} h"), &h, &h_ref, BITWISE);

        // out: a view into a wider buffer, whose other columns stay untouched.
        let buf = nan(&[n, width], dev);
        let out = buf.narrow(1, start, 2 * i);
        train_ops::swiglu_backward(&dh, &gate, &up, &out, true).unwrap();
        let out_ref = nan(&[n, 2 * i], dev);
        train_ops::swiglu_backward(&dh, &gate, &up, &out_ref, false).unwrap();
        // The backward that also writes h: the same gradients, and h as the forward's.
        let out_h = nan(&[n, 2 * i], dev);
        let h_bwd = train_ops::swiglu_backward_with_output(&dh, &gate, &up, &out_h, true).unwrap();
        assert_close(
            &format!("{what} h from the backward"),
            &h_bwd,
            &h_ref,
            BITWISE,
        );
        assert_close(
            &format!("{what} gradients with h"),
            &out_h,
            &out_ref,
            BITWISE,
        );
        assert_close(
            &format!("{what} dgate"),
            &out.narrow(1, 0, i),
            &out_ref.narrow(1, 0, i),
            BITWISE,
        );
        assert_close(
            &format!("{what} dup"),
            &out.narrow(1, i, i),
            &out_ref.narrow(1, i, i),
            BITWISE,
        );
        assert!(all_nan(&buf.narrow(1, 0, start)) && all_nan(&buf.narrow(1, start + 2 * i, start)));
    }
}

/// A `[N, (hq + 2 hkv) d]` qkv buffer; q and k are views of it.
struct Qkv {
    buf: Tensor,
    hq: i64,
    hkv: i64,
    d: i64,
}

impl Qkv {
    /// `n` rows of `hq` q heads and `hkv` k and v heads of `d`, from `fill(shape)`.
    fn new(n: i64, (hq, hkv, d): (i64, i64, i64), fill: impl Fn(&[i64]) -> Tensor) -> Qkv {
        let buf = fill(&[n, (hq + 2 * hkv) * d]);
        Qkv { buf, hq, hkv, d }
    }

    fn q(&self) -> Tensor {
        heads_view(&self.buf, 0, self.hq, self.d)
    }
    fn k(&self) -> Tensor {
        heads_view(&self.buf, self.hq * self.d, self.hkv, self.d)
    }
    fn v(&self) -> Tensor {
        heads_view(&self.buf, (self.hq + self.hkv) * self.d, self.hkv, self.d)
    }
}

/// (rows, q heads, kv heads, D, T): Qwen3-4B, then a small head, then the
/// largest, with rows that are no multiple of T.
const QK_SHAPES: [(i64, i64, i64, i64, i64); 3] =
    [(N, HQ, HKV, D, T), (6, 3, 1, 10, 4), (50, 2, 1, 256, 7)];

#[test]
#[ignore = "needs CUDA"]
fn qk_norm_rope_kernels_match_the_reference_on_qkv_views() {
    let dev = test_support::cuda();
    tch::manual_seed(test_support::seed_i64());
    for (n, hq, hkv, d, t) in QK_SHAPES {
        let qkv = Qkv::new(n, (hq, hkv, d), |s| rows_randn(s, BF16, dev));
        let (cos, sin) = rope_tables(t, d, THETA, dev);
        for w_kind in [Kind::Float, BF16] {
            let w = norm_weight(d, w_kind, dev);
            // The gradient buffer: dq and dk written in place, dv left alone.
            let dqkv = Qkv::new(n, (hq, hkv, d), |s| nan(s, dev));
            for (name, x, dx) in [("q", qkv.q(), dqkv.q()), ("k", qkv.k(), dqkv.k())] {
                let what = format!("{name} [{n}, {}, {d}] T {t} w {w_kind:?}", x.size()[1]);
                let fwd = |k| train_ops::qk_norm_rope_forward(&x, &w, &cos, &sin, EPS, k).unwrap();
                assert_close(&format!("{what} out"), &fwd(true), &fwd(false), CANCELLING);

                let dout = rows_randn(&x.size(), BF16, dev);
                let bwd = |dx: &Tensor, k| {
                    train_ops::qk_norm_rope_backward(&dout, &x, &w, &cos, &sin, EPS, dx, k).unwrap()
                };
                let dx_ref = nan(&x.size(), dev);
                let (dw, dw_ref) = (bwd(&dx, true), bwd(&dx_ref, false));
                assert_close(&format!("{what} dx"), &dx, &dx_ref, CANCELLING);
                assert_dw(&format!("{what} dw"), &dw, &dw_ref);
                assert!(
                    same_bits(&dw, &bwd(&dx, true)),
                    "{what}: dw differs between runs"
                );
            }
            assert!(all_nan(&dqkv.v()), "the kernels wrote outside dq / dk");
        }
    }
}

#[test]
#[ignore = "needs CUDA"]
fn kernels_refuse_float_activations_naming_the_argument() {
    let dev = test_support::cuda();
    let x = Tensor::ones([4, 64], (Kind::Float, dev));
    let w = Tensor::ones([64], (Kind::Float, dev));
    let e = train_ops::rmsnorm_forward(&x, &w, EPS, true).unwrap_err();
    assert!(matches!(e, Error::WrongKind { what: "x", .. }), "{e}");
    let e = train_ops::swiglu_forward(&x, &x, true).unwrap_err();
    assert!(matches!(e, Error::WrongKind { what: "gate", .. }), "{e}");
    // The reference takes them.
    assert!(train_ops::rmsnorm_forward(&x, &w, EPS, false).is_ok());
}

/// GPU time of one call of `op` (seconds), kernels on or off.
fn seconds(dev: Device, op: &dyn Fn(bool), kernels: bool) -> f64 {
    op(kernels); // compiles the module, warms the allocator
    let iters = 20;
    let t = nvfp4_kernels::cuda::time_gpu(dev, iters, |_| {
        op(kernels);
        Ok(())
    });
    t.unwrap() / iters as f64
}

/// Times each op at Qwen3-4B's shapes, kernel against reference, and prints
/// the kernel's bandwidth (bytes it must move: bf16 activations in and out).
/// The fused kernel must beat the several torch ops it replaces.
#[test]
#[ignore = "needs CUDA"]
fn fused_kernels_are_faster_than_the_references() {
    let dev = test_support::cuda();
    tch::manual_seed(test_support::seed_i64());
    let _guard = tch::no_grad_guard();
    let x = rows_randn(&[N, H], BF16, dev);
    let w = norm_weight(H, Kind::Float, dev);
    let (_, rstd) = train_ops::rmsnorm_forward(&x, &w, EPS, false).unwrap();
    let gate_up = rows_randn(&[N, 2 * I], BF16, dev);
    let (gate, up) = (gate_up.narrow(1, 0, I), gate_up.narrow(1, I, I));
    let dh = rows_randn(&[N, I], BF16, dev);
    let out = nan(&[N, 2 * I], dev);
    let qkv = Qkv::new(N, (HQ, HKV, D), |s| rows_randn(s, BF16, dev));
    let dqkv = Qkv::new(N, (HQ, HKV, D), |s| nan(s, dev));
    let (q, dq) = (qkv.q(), dqkv.q());
    let dout = rows_randn(&q.size(), BF16, dev);
    let wd = norm_weight(D, Kind::Float, dev);
    let (cos, sin) = rope_tables(T, D, THETA, dev);
    let (nh, ni, nq) = ((N * H) as f64, (N * I) as f64, (N * HQ * D) as f64);
    let time = |name: &str, bytes: f64, op: &dyn Fn(bool)| {
        let (fused, reference) = (seconds(dev, op, true), seconds(dev, op, false));
        println!(
            "{name}: kernel {:.1} us ({:.0} GB/s), reference {:.1} us, {:.1}x",
            fused * 1e6,
            bytes / fused * 1e-9,
            reference * 1e6,
            reference / fused
        );
        assert!(
            fused < reference,
            "{name}: the kernel is slower than the torch ops"
        );
    };
    // Bytes moved: the bf16 activations read and written.
    time("rmsnorm_forward", 4.0 * nh, &|k| {
        drop(train_ops::rmsnorm_forward(&x, &w, EPS, k).unwrap())
    });
    time("rmsnorm_backward", 8.0 * nh, &|k| {
        drop(train_ops::rmsnorm_backward(&x, &x, &w, &rstd, Some(&x), k).unwrap())
    });
    time("swiglu_forward", 6.0 * ni, &|k| {
        drop(train_ops::swiglu_forward(&gate, &up, k).unwrap())
    });
    time("swiglu_backward", 10.0 * ni, &|k| {
        train_ops::swiglu_backward(&dh, &gate, &up, &out, k).unwrap()
    });
    time("qk_norm_rope_forward (q)", 4.0 * nq, &|k| {
        drop(train_ops::qk_norm_rope_forward(&q, &wd, &cos, &sin, EPS, k).unwrap())
    });
    time("qk_norm_rope_backward (q)", 6.0 * nq, &|k| {
        drop(train_ops::qk_norm_rope_backward(&dout, &q, &wd, &cos, &sin, EPS, &dq, k).unwrap())
    });
}
