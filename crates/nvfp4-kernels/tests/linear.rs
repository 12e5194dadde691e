//! `Nvfp4Backend::linear` on the dequantize-then-matmul path against an f64
//! matmul of the reference dequantization, and its input checks.

mod common;

use nvfp4_kernels::{
    dequantize_ref, quantize_ref, ComputePath, Error, Nvfp4Backend, Nvfp4Tensor, ScaleMode,
};
use rand::Rng;
use tch::{Device, Kind, Tensor};

/// `x @ w^T` in f64: x `[m, k]`, w `[n, k]` -> `[m, n]`.
fn matmul_t_f64(x: &[f32], w: &[f32], m: usize, k: usize, n: usize) -> Vec<f64> {
    let mut y = vec![0.0f64; m * n];
    for i in 0..m {
        for j in 0..n {
            y[i * n + j] = (0..k)
                .map(|p| x[i * k + p] as f64 * w[j * k + p] as f64)
                .sum();
        }
    }
    y
}

#[test]
fn dequant_matmul_linear_matches_f64_reference() {
    dequant_matmul_linear_matches_f64_reference_on(Device::Cpu);
}

#[test]
#[ignore = "needs CUDA"]
fn dequant_matmul_linear_matches_f64_reference_on_cuda() {
    dequant_matmul_linear_matches_f64_reference_on(test_support::cuda());
}

fn dequant_matmul_linear_matches_f64_reference_on(device: Device) {
    let mut rng = common::rng();
    let backend =
        Nvfp4Backend::resolve(ComputePath::DequantMatmulOnly, device).expect("always available");
    assert!(!backend.uses_kernels());
    // (kind, relative tolerance of the result vs the f64 reference): f32
    // accumulates in f32; bf16 rounds x, W and y to 8 significant bits.
    for (kind, tol) in [
        (Kind::Float, 1e-5),
        (Kind::BFloat16, 2e-2),
        (Kind::Half, 2e-3),
    ] {
        let (n, k) = (rng.gen_range(1..=48), 16 * rng.gen_range(1..=8));
        let (b, t) = (2usize, rng.gen_range(1..=5));
        let w: Vec<f32> = (0..n * k).map(|_| rng.gen_range(-0.1f32..0.1)).collect();
        let q = quantize_ref(&w, n, k, ScaleMode::Single).expect("finite");
        let wd = dequantize_ref(&q.as_ref());
        // x rounded to `kind` first, so the reference sees the same input.
        let xt =
            Tensor::randn([b as i64, t as i64, k as i64], (Kind::Float, Device::Cpu)).to_kind(kind);
        let x = Vec::<f32>::try_from(&xt.to_kind(Kind::Float).flatten(0, -1)).expect("f32");
        let want = matmul_t_f64(&x, &wd, b * t, k, n);
        let wt = Nvfp4Tensor::from_host(&q.as_ref(), device).expect("upload");
        let y = backend.linear(&xt.to_device(device), &wt).expect("linear");
        assert_eq!(
            (y.size(), y.kind()),
            (vec![b as i64, t as i64, n as i64], kind)
        );
        let got =
            Vec::<f32>::try_from(&y.to_kind(Kind::Float).to_device(Device::Cpu).flatten(0, -1))
                .expect("f32");
        let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-3);
        let max_diff = got
            .iter()
            .zip(&want)
            .map(|(g, w)| (*g as f64 - w).abs())
            .fold(0.0, f64::max);
        println!("{kind:?} on {device:?}: [{b},{t},{k}] x [{n},{k}]^T max |diff| {max_diff:e} (scale {scale:e})");
        assert!(
            max_diff <= tol * scale,
            "{kind:?} on {device:?}: max diff {max_diff:e} > {tol} * {scale:e}"
        );
    }
}

#[test]
fn linear_rejects_wrong_inner_dimension_and_kind() {
    let backend =
        Nvfp4Backend::resolve(ComputePath::Auto, Device::Cpu).expect("auto always resolves");
    let q = quantize_ref(&vec![0.5f32; 4 * 32], 4, 32, ScaleMode::Single).expect("finite");
    let w = Nvfp4Tensor::from_host(&q.as_ref(), Device::Cpu).expect("upload");
    let err = backend
        .linear(&Tensor::zeros([3, 16], (Kind::Float, Device::Cpu)), &w)
        .unwrap_err();
    assert!(
        matches!(&err, Error::ShapeMismatch { expected, got, .. } if expected == &vec![3, 32] && got == &vec![3, 16]),
        "{err}"
    );
    let err = backend
        .linear(&Tensor::zeros([3, 32], (Kind::Int64, Device::Cpu)), &w)
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::WrongKind {
                got: Kind::Int64,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
#[ignore = "needs CUDA"]
fn linear_rejects_activation_on_another_device() {
    test_support::cuda();
    let backend =
        Nvfp4Backend::resolve(ComputePath::DequantMatmulOnly, Device::Cuda(0)).expect("resolve");
    let q = quantize_ref(&vec![0.5f32; 4 * 32], 4, 32, ScaleMode::Single).expect("finite");
    let w = Nvfp4Tensor::from_host(&q.as_ref(), Device::Cuda(0)).expect("upload");
    let err = backend
        .linear(&Tensor::zeros([3, 32], (Kind::Float, Device::Cpu)), &w)
        .unwrap_err();
    assert!(matches!(err, Error::DeviceMismatch { .. }), "{err}");
}

#[test]
fn kernel_only_is_refused_on_cpu_with_a_reason() {
    let err = Nvfp4Backend::resolve(ComputePath::KernelOnly, Device::Cpu).unwrap_err();
    assert!(
        matches!(&err, Error::KernelUnavailable { device, .. } if device == "cpu"),
        "{err}"
    );
    assert!(err.to_string().contains("cpu"), "{err}");
}

#[test]
#[ignore = "needs CUDA"]
fn tensor_new_rejects_parts_on_different_devices() {
    test_support::cuda();
    let q = Tensor::zeros([2, 8], (Kind::Uint8, Device::Cuda(0)));
    let s = Tensor::zeros([2, 1], (Kind::Uint8, Device::Cpu));
    let err = Nvfp4Tensor::new(q, s, None).unwrap_err();
    assert!(
        matches!(err, Error::DeviceMismatch { what: "scale", .. }),
        "{err}"
    );
}
