//! The tch path against the scalar reference: packed bytes, scales and the
//! global scale equal bit for bit; dequantized values equal bit for bit;
//! `fake_quantize` equals `dequantize(quantize(x))`; `ste` has the identity
//! gradient. Random shapes, block regimes (tiny, subnormal-scale, zero,
//! ties, large) and input kinds, on CPU and (when present) CUDA.

mod common;

use half::{bf16, f16};
use nvfp4_kernels::{
    dequantize, dequantize_ref, f_fake_quantize, fake_quantize, quantize, quantize_ref, ste, Error,
    Nvfp4HostRef, Nvfp4Tensor, ScaleMode,
};
use tch::{Device, Kind, Tensor};

/// Rounds `x` through `kind` (what the tch path sees for that input kind).
fn through_kind(x: &[f32], kind: Kind) -> Vec<f32> {
    match kind {
        Kind::BFloat16 => x.iter().map(|&v| bf16::from_f32(v).to_f32()).collect(),
        Kind::Half => x.iter().map(|&v| f16::from_f32(v).to_f32()).collect(),
        _ => x.to_vec(),
    }
}

fn tensor(x: &[f32], rows: usize, cols: usize, kind: Kind, device: Device) -> Tensor {
    Tensor::from_slice(x)
        .view([rows as i64, cols as i64])
        .to_kind(kind)
        .to_device(device)
}

/// Bits of `v`, with every NaN mapped to one pattern: NaN payloads are not
/// specified by float conversions (torch and `half` differ), NaN-ness is.
fn canonical_bits(v: f32) -> u32 {
    if v.is_nan() {
        0x7FC0_0000
    } else {
        v.to_bits()
    }
}

fn f32_bits(t: &Tensor) -> Vec<u32> {
    let v = Vec::<f32>::try_from(&t.to_kind(Kind::Float).to_device(Device::Cpu).flatten(0, -1))
        .expect("f32");
    v.iter().map(|&f| canonical_bits(f)).collect()
}

#[test]
fn tch_quantize_matches_reference_bit_for_bit() {
    tch_quantize_matches_reference_bit_for_bit_on(Device::Cpu);
}

#[test]
#[ignore = "needs CUDA"]
fn tch_quantize_matches_reference_bit_for_bit_on_cuda() {
    tch_quantize_matches_reference_bit_for_bit_on(test_support::cuda());
}

fn tch_quantize_matches_reference_bit_for_bit_on(device: Device) {
    let mut rng = common::rng();
    for case in 0..60 {
        let (rows, cols) = common::shape(&mut rng, 9, 9);
        let kind = [Kind::Float, Kind::BFloat16, Kind::Half][case % 3];
        let mode = if case.is_multiple_of(2) {
            ScaleMode::Single
        } else {
            ScaleMode::TwoLevel
        };
        // f16 cannot hold the large or f32-subnormal regimes; the reference
        // quantizes what the tch path sees: x converted to `kind` and back.
        let x = through_kind(&common::matrix(&mut rng, rows, cols), kind);
        let want = quantize_ref(&x, rows, cols, mode).expect("reference");
        let got = quantize(&tensor(&x, rows, cols, kind, device), mode)
            .expect("tch")
            .to_host();
        let ctx = format!("case {case}: [{rows}, {cols}] {kind:?} {mode:?} on {device:?}");
        assert_eq!(got.scale, want.scale, "scales differ, {ctx}");
        assert_eq!(got.qdata, want.qdata, "packed codes differ, {ctx}");
        assert_eq!(
            got.global_scale.map(f32::to_bits),
            want.global_scale.map(f32::to_bits),
            "{ctx}"
        );
    }
}

#[test]
fn tch_dequantize_matches_reference_bit_for_bit() {
    tch_dequantize_matches_reference_bit_for_bit_on(Device::Cpu);
}

#[test]
#[ignore = "needs CUDA"]
fn tch_dequantize_matches_reference_bit_for_bit_on_cuda() {
    tch_dequantize_matches_reference_bit_for_bit_on(test_support::cuda());
}

fn tch_dequantize_matches_reference_bit_for_bit_on(device: Device) {
    let mut rng = common::rng();
    for case in 0..40usize {
        let (rows, cols) = common::shape(&mut rng, 7, 6);
        // Arbitrary bytes: every code and every scale byte, NaN scales included.
        let qd: Vec<u8> = (0..rows * cols / 2)
            .map(|_| rand::Rng::gen(&mut rng))
            .collect();
        let sc: Vec<u8> = (0..rows * cols / 16)
            .map(|_| rand::Rng::gen(&mut rng))
            .collect();
        let g = (!case.is_multiple_of(2)).then(|| rand::Rng::gen_range(&mut rng, 1e-6f32..1e3));
        let r = Nvfp4HostRef::new(&qd, &sc, rows, cols, g).expect("valid");
        let want: Vec<u32> = dequantize_ref(&r)
            .iter()
            .map(|&v| canonical_bits(v))
            .collect();
        let t = Nvfp4Tensor::from_host(&r, device).expect("upload");
        assert_eq!(t.device(), device);
        let got = f32_bits(&dequantize(&t, Kind::Float));
        assert_eq!(
            got, want,
            "case {case} [{rows}, {cols}] g {g:?} on {device:?}"
        );
        // bf16 / f16 outputs are the f32 values rounded to nearest even.
        for kind in [Kind::BFloat16, Kind::Half] {
            let out = dequantize(&t, kind);
            assert_eq!(out.kind(), kind);
            let back = f32_bits(&out);
            let want_k: Vec<u32> = through_kind(&dequantize_ref(&r), kind)
                .iter()
                .map(|&v| canonical_bits(v))
                .collect();
            assert_eq!(back, want_k, "case {case} {kind:?} on {device:?}");
        }
    }
}

#[test]
fn fake_quantize_equals_dequantize_of_quantize() {
    fake_quantize_equals_dequantize_of_quantize_on(Device::Cpu);
}

#[test]
#[ignore = "needs CUDA"]
fn fake_quantize_equals_dequantize_of_quantize_on_cuda() {
    fake_quantize_equals_dequantize_of_quantize_on(test_support::cuda());
}

fn fake_quantize_equals_dequantize_of_quantize_on(device: Device) {
    let mut rng = common::rng();
    for case in 0..30 {
        let (rows, cols) = common::shape(&mut rng, 8, 8);
        let kind = [Kind::Float, Kind::BFloat16, Kind::Half][case % 3];
        let mode = if case.is_multiple_of(2) {
            ScaleMode::Single
        } else {
            ScaleMode::TwoLevel
        };
        let x = tensor(
            &through_kind(&common::matrix(&mut rng, rows, cols), kind),
            rows,
            cols,
            kind,
            device,
        );
        let fq = fake_quantize(&x, mode);
        assert_eq!((fq.kind(), fq.size()), (kind, x.size()));
        let dq = dequantize(&quantize(&x, mode).expect("quantize"), kind);
        assert_eq!(
            f32_bits(&fq),
            f32_bits(&dq),
            "case {case} {kind:?} {mode:?} on {device:?}"
        );
    }
}

#[test]
fn fake_quantize_keeps_leading_dims() {
    let mut rng = common::rng();
    let x = common::matrix(&mut rng, 6, 32);
    let flat = fake_quantize(&Tensor::from_slice(&x).view([6, 32]), ScaleMode::Single);
    let shaped = fake_quantize(&Tensor::from_slice(&x).view([2, 3, 32]), ScaleMode::Single);
    assert_eq!(shaped.size(), vec![2, 3, 32]);
    assert_eq!(f32_bits(&shaped), f32_bits(&flat));
}

#[test]
fn fake_quantize_turns_blocks_with_non_finite_values_into_nan() {
    // 3.0 quantizes exactly (amax 3 -> scale 0.5 -> code 6.0).
    let mut x = vec![3.0f32; 48];
    x[20] = f32::INFINITY;
    x[40] = f32::NAN;
    let out = fake_quantize(&Tensor::from_slice(&x).view([1, 48]), ScaleMode::Single);
    let v = Vec::<f32>::try_from(&out.view([-1])).expect("f32");
    assert!(
        v[..16].iter().all(|&y| y == 3.0),
        "finite block changed: {:?}",
        &v[..16]
    );
    assert!(
        v[16..].iter().all(|y| y.is_nan()),
        "non-finite blocks must be NaN: {:?}",
        &v[16..]
    );
}

#[test]
fn ste_forward_is_fake_quantize_and_gradient_is_identity() {
    ste_forward_is_fake_quantize_and_gradient_is_identity_on(Device::Cpu);
}

#[test]
#[ignore = "needs CUDA"]
fn ste_forward_is_fake_quantize_and_gradient_is_identity_on_cuda() {
    ste_forward_is_fake_quantize_and_gradient_is_identity_on(test_support::cuda());
}

fn ste_forward_is_fake_quantize_and_gradient_is_identity_on(device: Device) {
    let mut rng = common::rng();
    for kind in [Kind::Float, Kind::BFloat16] {
        let (rows, cols) = common::shape(&mut rng, 5, 4);
        let x = tensor(
            &common::matrix(&mut rng, rows, cols),
            rows,
            cols,
            kind,
            device,
        )
        .set_requires_grad(true);
        let y = ste(&x, ScaleMode::Single);
        assert_eq!(
            f32_bits(&y),
            f32_bits(&fake_quantize(&x, ScaleMode::Single)),
            "{kind:?} on {device:?}"
        );
        let w = Tensor::randn([rows as i64, cols as i64], (kind, device));
        (&y * &w).sum(Kind::Float).backward();
        let grad = x.grad();
        assert_eq!(
            f32_bits(&grad),
            f32_bits(&w),
            "d(sum(ste(x) * w))/dx must be w, {kind:?} on {device:?}"
        );
    }
}

#[test]
fn tch_quantize_names_first_non_finite_element() {
    let mut x = vec![1.0f32; 64];
    x[33] = f32::NEG_INFINITY;
    x[60] = f32::NAN;
    let err = quantize(&Tensor::from_slice(&x).view([2, 32]), ScaleMode::Single).unwrap_err();
    assert!(
        matches!(
            err,
            Error::NonFinite {
                index: 33,
                row: 1,
                col: 1,
                ..
            }
        ),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("element 33 (row 1, column 1) is -inf"),
        "{err}"
    );
    // A lone NaN (amax must propagate it) is found too.
    let mut x = vec![1.0f32; 64];
    x[17] = f32::NAN;
    let err = quantize(&Tensor::from_slice(&x).view([2, 32]), ScaleMode::TwoLevel).unwrap_err();
    assert!(
        matches!(
            err,
            Error::NonFinite {
                index: 17,
                row: 0,
                col: 17,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn tch_quantize_rejects_bad_shapes_and_kinds() {
    let err = quantize(
        &Tensor::zeros([4, 24], (Kind::Float, Device::Cpu)),
        ScaleMode::Single,
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            Error::ColsNotMultipleOfBlock {
                rows: 4,
                cols: 24,
                ..
            }
        ),
        "{err}"
    );
    let err = quantize(
        &Tensor::zeros([2, 4, 16], (Kind::Float, Device::Cpu)),
        ScaleMode::Single,
    )
    .unwrap_err();
    assert!(matches!(err, Error::WrongRank { expected: 2, .. }), "{err}");
    let err = quantize(
        &Tensor::zeros([4, 16], (Kind::Int, Device::Cpu)),
        ScaleMode::Single,
    )
    .unwrap_err();
    assert!(
        matches!(err, Error::WrongKind { got: Kind::Int, .. }),
        "{err}"
    );
    let err = f_fake_quantize(
        &Tensor::zeros([3, 20], (Kind::Float, Device::Cpu)),
        ScaleMode::Single,
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            Error::ColsNotMultipleOfBlock {
                rows: 3,
                cols: 20,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn empty_matrix_quantizes_to_empty_buffers() {
    for mode in [ScaleMode::Single, ScaleMode::TwoLevel] {
        let q = quantize(&Tensor::zeros([0, 32], (Kind::Float, Device::Cpu)), mode).expect("empty");
        assert_eq!((q.rows(), q.cols(), q.nbytes()), (0, 32, 0));
        assert_eq!(
            quantize_ref(&[], 0, 32, mode).expect("empty").global_scale,
            q.global_scale()
        );
    }
}
