//! The fused AdamW kernel (`cuda::adamw_update`) against an f64 reference
//! computed with tch ops on the same inputs, for every storage variant:
//! param f32/bf16 x grad f32/bf16 x moments f32/bf16/8-bit, on tensors of
//! odd sizes (1, 4095, 1_000_003 and [333, 517] elements) over several steps
//! with fresh random data (seed printed; replay with NVFP4_TEST_SEED).
//!
//! Each step's reference starts from the kernel's own stored state, so every
//! step is judged on its own (no drift between an f32 and an f64 trajectory).
//! Tolerances, per element, with `scale` the sum of the magnitudes of the
//! terms that make the value (|p| + lr/bc1 * (b1|m| + (1-b1)|g|) / denom for
//! p, b1|m| + (1-b1)|g| for m, v itself for v):
//! * f32 storage: `1e-6 * scale` (about 16 f32 roundings);
//! * bf16 storage: half a bf16 ulp of the reference (the storage rounding)
//!   plus `1e-6 * scale`;
//! * 8-bit moments: codes equal to those of the reference quantization
//!   (QuantMap::quantize as tch ops) or one step away, at least 99 % equal;
//!   each block's absmax within `1e-6` of its scale.
//!
//! The GPU tests are `#[ignore = "needs CUDA"]` (run with `--include-ignored`);
//! the argument checks run everywhere.

mod gpu_common;

use nvfp4_kernels::cuda::{
    adamw_int8_blocks, adamw_update, AdamwStep, MomentRef, ADAMW_INT8_BLOCK,
};
use nvfp4_kernels::Error;
use tch::{Device, Kind, Tensor};

const SHAPES: [&[i64]; 4] = [&[1], &[4095], &[1_000_003], &[333, 517]];
const STEPS: i32 = 3;
const F32_TOL: f64 = 1e-6;

fn hyper(t: i32, lr: f64) -> AdamwStep {
    let (beta1, beta2) = (0.9, 0.999);
    AdamwStep {
        lr,
        beta1,
        beta2,
        eps: 1e-8,
        weight_decay: 0.1,
        bc1: 1.0 - beta1.powi(t),
        bc2: 1.0 - beta2.powi(t),
        // A clipping coefficient: the kernel scales the gradient as it reads.
        grad_scale: 0.73,
    }
}

/// Gradient-like values spanning several decades.
fn grad_like(shape: &[i64], dev: Device) -> Tensor {
    Tensor::randn(shape, (Kind::Float, dev)) * Tensor::randn(shape, (Kind::Float, dev)).exp()
}

fn f64s(t: &Tensor) -> Tensor {
    t.to_kind(Kind::Double)
}

/// One AdamW step in f64 from f64 inputs, with the per-element scales of
/// the module doc.
struct Reference {
    p: Tensor,
    m: Tensor,
    v: Tensor,
    scale_p: Tensor,
    scale_m: Tensor,
}

fn reference(p0: &Tensor, g: &Tensor, m0: &Tensor, v0: &Tensor, s: &AdamwStep) -> Reference {
    let g = &(g * s.grad_scale);
    let m = m0 * s.beta1 + g * (1.0 - s.beta1);
    let scale_m = m0.abs() * s.beta1 + g.abs() * (1.0 - s.beta1);
    let v = v0 * s.beta2 + g.square() * (1.0 - s.beta2);
    let denom = v.sqrt() / s.bc2.sqrt() + s.eps;
    let step = s.lr / s.bc1;
    let p = p0 * (1.0 - s.lr * s.weight_decay) - (&m / &denom) * step;
    let scale_p = p0.abs() + &scale_m / &denom * step;
    Reference {
        p,
        m,
        v,
        scale_p,
        scale_m,
    }
}

/// Max over elements of |got - want| / tolerance (see the module doc); a
/// value above 1 is a failure.
fn error_ratio(got: &Tensor, want: &Tensor, scale: &Tensor) -> f64 {
    let mut tol = scale * F32_TOL;
    if got.kind() == Kind::BFloat16 {
        // Half a bf16 ulp of want: 2^(floor(log2 |want|) - 8); 0 for want = 0.
        let half_ulp = (want.abs().log2().floor() - 8.0).exp2();
        tol += half_ulp;
    }
    let tol = tol.clamp_min(f64::MIN_POSITIVE);
    ((f64s(got) - want).abs() / tol).max().double_value(&[])
}

fn assert_within(what: &str, ratio: f64) {
    assert!(
        ratio <= 1.0,
        "{what}: max error is {ratio:.3} x the tolerance"
    );
}

fn kind_name(k: Kind) -> &'static str {
    if k == Kind::BFloat16 {
        "bf16"
    } else {
        "f32"
    }
}

/// A contiguous tensor of `shape` whose data starts `offset` elements into
/// a larger buffer (offset 1 defeats the kernel's vector accesses).
fn placed(x: &Tensor, offset: i64) -> Tensor {
    if offset == 0 {
        return x.copy();
    }
    let n = x.numel() as i64;
    let buf = Tensor::zeros([n + offset], (x.kind(), x.device()));
    let mut view = buf.narrow(0, offset, n).view(x.size().as_slice());
    view.copy_(x);
    view
}

/// Runs STEPS fused steps on one dense variant and checks each against the
/// reference; returns the largest error ratio seen.
fn dense_case(dev: Device, kinds: [Kind; 3], shape: &[i64], offset: i64) -> f64 {
    let [pk, gk, sk] = kinds;
    let p = placed(
        &Tensor::randn(shape, (Kind::Float, dev)).to_kind(pk),
        offset,
    );
    let m = placed(&(grad_like(shape, dev) * 0.1).to_kind(sk), offset);
    let v = placed(&(grad_like(shape, dev) * 0.1).square().to_kind(sk), offset);
    let mut worst = 0f64;
    for t in 1..=STEPS {
        let g = placed(&grad_like(shape, dev).to_kind(gk), offset);
        let s = hyper(t, 1e-2);
        let r = reference(&f64s(&p), &f64s(&g), &f64s(&m), &f64s(&v), &s);
        adamw_update("w", &p, &g, MomentRef::Dense(&m), MomentRef::Dense(&v), &s).unwrap();
        let what = |x: &str| {
            format!(
                "{x} p={} g={} state={} shape {shape:?} offset {offset} step {t}",
                kind_name(pk),
                kind_name(gk),
                kind_name(sk)
            )
        };
        for (name, got, want, scale) in [
            ("p", &p, &r.p, &r.scale_p),
            ("m", &m, &r.m, &r.scale_m),
            ("v", &v, &r.v, &r.v),
        ] {
            let ratio = error_ratio(got, want, scale);
            assert_within(&what(name), ratio);
            worst = worst.max(ratio);
        }
    }
    worst
}

#[test]
#[ignore = "needs CUDA"]
fn dense_state_matches_the_f64_reference() {
    let dev = test_support::cuda();
    tch::manual_seed(test_support::seed_i64());
    let kinds = [Kind::Float, Kind::BFloat16];
    for pk in kinds {
        for gk in kinds {
            for sk in kinds {
                let mut worst = 0f64;
                for shape in SHAPES {
                    worst = worst.max(dense_case(dev, [pk, gk, sk], shape, 0));
                }
                println!(
                    "dense p={} g={} state={}: max error {worst:.3} x tolerance",
                    kind_name(pk),
                    kind_name(gk),
                    kind_name(sk)
                );
            }
        }
    }
}

#[test]
#[ignore = "needs CUDA"]
fn dense_update_of_misaligned_views_takes_the_scalar_path_correctly() {
    let dev = test_support::cuda();
    tch::manual_seed(test_support::seed_i64());
    for kinds in [
        [Kind::Float, Kind::Float, Kind::Float],
        [Kind::BFloat16, Kind::BFloat16, Kind::BFloat16],
    ] {
        for shape in [&[4095i64][..], &[333, 517]] {
            let worst = dense_case(dev, kinds, shape, 1);
            println!("misaligned {kinds:?} {shape:?}: max error {worst:.3} x tolerance");
        }
    }
}

// ---------------------------------------------------------------------------
// 8-bit moments. The kernel takes any sorted 256-entry map; these tests use
// a cubic one (dense near 0, like the trainer's dynamic map, which this crate
// cannot see: it sits below the trainer) and restate the trainer's
// `QuantMap::quantize` with tch ops as the reference. The trainer's
// tests/fused_adamw.rs checks the kernel with the real map.

/// 256 sorted distinct values in [-1, 1] (signed) or [0, 1], 0 and 1 included.
fn cubic_map(signed: bool) -> Vec<f32> {
    let cube = |k: i32, n: i32| (k as f64 / n as f64).powi(3) as f32;
    if signed {
        (-127..=128)
            .map(|k| if k < 0 { -cube(-k, 127) } else { cube(k, 128) })
            .collect()
    } else {
        (0..256).map(|k| cube(k, 255)).collect()
    }
}

struct Map {
    values: Tensor,
    bounds: Tensor,
    signed: bool,
}

impl Map {
    fn new(signed: bool, dev: Device) -> Map {
        let v = cubic_map(signed);
        let mids: Vec<f32> = v.windows(2).map(|w| (w[0] + w[1]) / 2.0).collect();
        Map {
            values: Tensor::from_slice(&v).to_device(dev),
            bounds: Tensor::from_slice(&mids).to_device(dev),
            signed,
        }
    }

    /// QuantMap::quantize: per-block absmax, x / absmax (1 for a zero
    /// block), clamp, bucketize(right = false).
    fn quantize(&self, x: &Tensor) -> (Tensor, Tensor) {
        let n = x.numel();
        let blocks = adamw_int8_blocks(n);
        let padded = x
            .reshape([-1])
            .to_kind(Kind::Float)
            .constant_pad_nd([0, (blocks * ADAMW_INT8_BLOCK - n) as i64])
            .reshape([blocks as i64, ADAMW_INT8_BLOCK as i64]);
        let absmax = padded.abs().amax([1], true);
        let safe = absmax.where_scalarother(&absmax.gt(0.0), 1.0);
        let normed = (&padded / &safe).clamp(if self.signed { -1.0 } else { 0.0 }, 1.0);
        let codes = normed
            .bucketize(&self.bounds, false, false)
            .to_kind(Kind::Uint8);
        (codes.reshape([-1]), absmax.reshape([-1]))
    }

    /// QuantMap::dequantize, flat, `n` elements.
    fn dequantize(&self, codes: &Tensor, absmax: &Tensor, n: usize) -> Tensor {
        let blocks = absmax.numel() as i64;
        let vals = self.values.index_select(0, &codes.to_kind(Kind::Int64));
        let vals = vals.reshape([blocks, ADAMW_INT8_BLOCK as i64]) * absmax.reshape([blocks, 1]);
        vals.reshape([-1]).narrow(0, 0, n as i64)
    }

    fn moment(&self, codes: &Tensor, absmax: &Tensor) -> Int8Moment {
        Int8Moment {
            codes: codes.shallow_clone(),
            absmax: absmax.shallow_clone(),
            values: self.values.shallow_clone(),
            bounds: self.bounds.shallow_clone(),
        }
    }
}

struct Int8Moment {
    codes: Tensor,
    absmax: Tensor,
    values: Tensor,
    bounds: Tensor,
}

impl Int8Moment {
    fn as_ref(&self) -> MomentRef<'_> {
        MomentRef::Int8 {
            codes: &self.codes,
            absmax: &self.absmax,
            values: &self.values,
            boundaries: &self.bounds,
        }
    }
}

/// Per-block max of a flat f64 tensor (zero padded), one per block.
fn block_max(x: &Tensor) -> Tensor {
    let n = x.numel();
    let blocks = adamw_int8_blocks(n);
    x.reshape([-1])
        .constant_pad_nd([0, (blocks * ADAMW_INT8_BLOCK - n) as i64])
        .reshape([blocks as i64, ADAMW_INT8_BLOCK as i64])
        .amax([1], false)
}

/// Kernel codes vs reference codes: (fraction equal, largest distance).
fn code_agreement(got: &Tensor, want: &Tensor) -> (f64, i64) {
    let d = (got.to_kind(Kind::Int16) - want.to_kind(Kind::Int16)).abs();
    let equal = d
        .eq(0)
        .to_kind(Kind::Double)
        .mean(Kind::Double)
        .double_value(&[]);
    (equal, d.max().int64_value(&[]))
}

/// Fresh moments and a gradient for an 8-bit case; block 1 (when there are
/// more than two) is all zero in m, v and every gradient, to exercise the
/// zero-block rule.
fn zero_block_mask(n: usize, dev: Device) -> Tensor {
    let mask = Tensor::ones([n as i64], (Kind::Float, dev));
    if adamw_int8_blocks(n) > 2 {
        let _ = mask
            .narrow(0, ADAMW_INT8_BLOCK as i64, ADAMW_INT8_BLOCK as i64)
            .fill_(0.0);
    }
    mask
}

fn int8_case(dev: Device, pk: Kind, gk: Kind, shape: &[i64]) -> (f64, f64) {
    let (mmap, vmap) = (Map::new(true, dev), Map::new(false, dev));
    let p = Tensor::randn(shape, (Kind::Float, dev)).to_kind(pk);
    let n = p.numel();
    let mask = zero_block_mask(n, dev);
    let (mc, ma) = mmap.quantize(&(grad_like(&[n as i64], dev) * 0.1 * &mask));
    let (vc, va) = vmap.quantize(&(grad_like(&[n as i64], dev).abs() * 0.1 * &mask));
    let (m, v) = (mmap.moment(&mc, &ma), vmap.moment(&vc, &va));
    let (mut worst_ratio, mut worst_equal) = (0f64, 1f64);
    for t in 1..=STEPS {
        let g = (grad_like(shape, dev) * mask.view(shape)).to_kind(gk);
        let s = hyper(t, 1e-2);
        let m0 = mmap.dequantize(&m.codes, &m.absmax, n);
        let v0 = vmap.dequantize(&v.codes, &v.absmax, n).square();
        let g64 = f64s(&g).reshape([-1]);
        let r = reference(&f64s(&p).reshape([-1]), &g64, &f64s(&m0), &f64s(&v0), &s);
        let (mc_ref, ma_ref) = mmap.quantize(&r.m.to_kind(Kind::Float));
        let (vc_ref, va_ref) = vmap.quantize(&r.v.sqrt().to_kind(Kind::Float));
        adamw_update("w", &p, &g, m.as_ref(), v.as_ref(), &s).unwrap();
        let what = format!(
            "int8 p={} g={} shape {shape:?} step {t}",
            kind_name(pk),
            kind_name(gk)
        );
        let ratio = error_ratio(&p.reshape([-1]), &r.p, &r.scale_p);
        assert_within(&format!("p, {what}"), ratio);
        worst_ratio = worst_ratio.max(ratio);
        for (name, got, want) in [
            ("m codes", &m.codes, &mc_ref),
            ("v codes", &v.codes, &vc_ref),
        ] {
            let (equal, dist) = code_agreement(got, want);
            assert!(dist <= 1, "{name}, {what}: a code is {dist} steps off");
            assert!(equal >= 0.99, "{name}, {what}: only {equal:.4} equal");
            worst_equal = worst_equal.min(equal);
        }
        // absmax: within 1e-6 of the block's scale (exactly 0 for a zero block).
        let ratio_m = error_ratio(&m.absmax, &f64s(&ma_ref), &block_max(&r.scale_m));
        let ratio_v = error_ratio(&v.absmax, &f64s(&va_ref), &f64s(&va_ref));
        assert_within(&format!("m absmax, {what}"), ratio_m);
        assert_within(&format!("v absmax, {what}"), ratio_v);
        worst_ratio = worst_ratio.max(ratio_m).max(ratio_v);
    }
    (worst_ratio, worst_equal)
}

#[test]
#[ignore = "needs CUDA"]
fn int8_state_matches_the_reference_quantization() {
    let dev = test_support::cuda();
    tch::manual_seed(test_support::seed_i64());
    for pk in [Kind::Float, Kind::BFloat16] {
        for gk in [Kind::Float, Kind::BFloat16] {
            let (mut ratio, mut equal) = (0f64, 1f64);
            for shape in SHAPES {
                let (r, e) = int8_case(dev, pk, gk, shape);
                ratio = ratio.max(r);
                equal = equal.min(e);
            }
            println!(
                "int8 p={} g={}: p/absmax max error {ratio:.3} x tolerance, codes equal >= {:.5} \
                 (rest one step off)",
                kind_name(pk),
                kind_name(gk),
                equal
            );
        }
    }
}

#[test]
#[ignore = "needs CUDA"]
fn tensor_on_another_device_is_refused() {
    let dev = test_support::cuda();
    let p = Tensor::randn([8], (Kind::Float, dev));
    let g = Tensor::randn([8], (Kind::Float, Device::Cpu));
    let m = Tensor::zeros([8], (Kind::Float, dev));
    let before = Vec::<f32>::try_from(p.to_device(Device::Cpu)).unwrap();
    let e = adamw_update(
        "w",
        &p,
        &g,
        MomentRef::Dense(&m),
        MomentRef::Dense(&m),
        &hyper(1, 1e-2),
    )
    .unwrap_err();
    assert!(
        matches!(e, Error::DeviceMismatch { what: "grad", .. }),
        "{e}"
    );
    let after = Vec::<f32>::try_from(p.to_device(Device::Cpu)).unwrap();
    assert_eq!(before, after, "nothing is written when a check fails");
}

// ---------------------------------------------------------------------------
// Argument checks (run on any machine: they come before any CUDA call).

fn cpu(shape: &[i64], kind: Kind) -> Tensor {
    Tensor::randn(shape, (Kind::Float, Device::Cpu)).to_kind(kind)
}

fn dense_err(p: &Tensor, g: &Tensor, m: &Tensor, v: &Tensor) -> Error {
    adamw_update(
        "w.weight",
        p,
        g,
        MomentRef::Dense(m),
        MomentRef::Dense(v),
        &hyper(1, 1e-3),
    )
    .unwrap_err()
}

#[test]
fn cpu_tensors_are_refused_as_kernel_unavailable() {
    let p = cpu(&[5, 7], Kind::Float);
    let e = dense_err(&p, &p.copy(), &p.zeros_like(), &p.zeros_like());
    assert!(matches!(e, Error::KernelUnavailable { .. }), "{e}");
    assert!(e.to_string().contains("not a CUDA device"), "{e}");
}

#[test]
fn unsupported_kinds_are_named() {
    let f = |k| cpu(&[16], k);
    let e = dense_err(
        &f(Kind::Half),
        &f(Kind::Half),
        &f(Kind::Float),
        &f(Kind::Float),
    );
    assert!(
        matches!(
            e,
            Error::WrongKind {
                what: "param",
                got: Kind::Half,
                ..
            }
        ),
        "{e}"
    );
    let e = dense_err(
        &f(Kind::Float),
        &f(Kind::Double),
        &f(Kind::Float),
        &f(Kind::Float),
    );
    assert!(matches!(e, Error::WrongKind { what: "grad", .. }), "{e}");
    let e = dense_err(
        &f(Kind::Float),
        &f(Kind::Float),
        &f(Kind::Float),
        &f(Kind::BFloat16),
    );
    assert!(matches!(e, Error::WrongKind { what: "v", .. }), "{e}");
    assert!(e.to_string().contains("w.weight"), "{e}");
}

#[test]
fn shapes_lengths_and_strides_are_checked() {
    let p = cpu(&[4, 6], Kind::Float);
    let e = dense_err(
        &p,
        &cpu(&[6, 4], Kind::Float),
        &p.zeros_like(),
        &p.zeros_like(),
    );
    assert!(
        matches!(e, Error::ShapeMismatch { what: "grad", .. }),
        "{e}"
    );
    let e = dense_err(&p, &p.copy(), &cpu(&[23], Kind::Float), &p.zeros_like());
    assert!(
        matches!(
            e,
            Error::LengthMismatch {
                what: "m",
                expected: 24,
                got: 23,
                ..
            }
        ),
        "{e}"
    );
    // Right shape, transposed layout.
    let g = cpu(&[6, 4], Kind::Float).tr();
    let e = dense_err(&p, &g, &p.zeros_like(), &p.zeros_like());
    assert!(
        matches!(&e, Error::NotContiguous { what: "grad", strides, .. } if strides == &[1, 4]),
        "{e}"
    );
}

#[test]
fn int8_moment_tensors_are_checked() {
    let dev = Device::Cpu;
    let (mmap, vmap) = (Map::new(true, dev), Map::new(false, dev));
    let p = cpu(&[300], Kind::Float); // 2 blocks
    let (mc, ma) = mmap.quantize(&p.zeros_like());
    let (vc, va) = vmap.quantize(&p.zeros_like());
    let good_m = mmap.moment(&mc, &ma);
    let good_v = vmap.moment(&vc, &va);
    let run = |m: MomentRef<'_>, v: MomentRef<'_>| {
        adamw_update("w", &p, &p.copy(), m, v, &hyper(2, 1e-3)).unwrap_err()
    };
    // All right but on the CPU.
    let e = run(good_m.as_ref(), good_v.as_ref());
    assert!(matches!(e, Error::KernelUnavailable { .. }), "{e}");
    // Codes for one block instead of two.
    let short = mmap.moment(&mc.narrow(0, 0, 256), &ma);
    let e = run(short.as_ref(), good_v.as_ref());
    assert!(
        matches!(
            e,
            Error::LengthMismatch {
                what: "m codes",
                expected: 512,
                got: 256,
                ..
            }
        ),
        "{e}"
    );
    let bad_absmax = vmap.moment(&vc, &va.narrow(0, 0, 1));
    let e = run(good_m.as_ref(), bad_absmax.as_ref());
    assert!(
        matches!(
            e,
            Error::LengthMismatch {
                what: "v absmax",
                ..
            }
        ),
        "{e}"
    );
    let mut bad_map = vmap.moment(&vc, &va);
    bad_map.values = bad_map.values.narrow(0, 0, 255);
    let e = run(good_m.as_ref(), bad_map.as_ref());
    assert!(
        matches!(
            e,
            Error::LengthMismatch {
                what: "v map values",
                ..
            }
        ),
        "{e}"
    );
    let float_codes = mmap.moment(&mc.to_kind(Kind::Float), &ma);
    let e = run(float_codes.as_ref(), good_v.as_ref());
    assert!(
        matches!(
            e,
            Error::WrongKind {
                what: "m codes",
                ..
            }
        ),
        "{e}"
    );
    // One dense, one 8-bit.
    let dense = p.zeros_like();
    let e = run(MomentRef::Dense(&dense), good_v.as_ref());
    assert!(matches!(e, Error::WrongKind { what: "v", .. }), "{e}");
}
