//! The CUDA matmul paths (fused W4A16 kernel for M <= 16, kernel
//! dequantize + cuBLAS above, W4A4 emulation, the kernel backend) against f64
//! matmuls within a stated bound, on shapes that are not multiples of any
//! tile, with poisoned outputs. The GPU tests are
//! `#[ignore = "needs CUDA"]` (run with `--include-ignored`).

mod gpu_common;

use gpu_common::*;
use nvfp4_kernels::{cuda, f_dequantize, ComputePath, Error, Nvfp4Backend, Nvfp4Tensor, ScaleMode};
use tch::{Kind, Tensor};

/// Which accumulation produced the result being checked.
#[derive(Clone, Copy, PartialEq)]
enum Accum {
    /// The fused kernel: f32 accumulation throughout.
    F32,
    /// libtorch's bf16 GEMM (cuBLAS), which may reduce split-K partial sums
    /// in bf16 (PyTorch's default `allow_bf16_reduced_precision_reduction`).
    CublasBf16,
}

/// Checks `y` ([M, N], any float kind) against the f64 product with the weight
/// dequantized by the tch ops (an implementation independent of the kernels).
///
/// Bound per element, with u = 2^-8 the bf16 unit roundoff and
/// S = sum_k |x_k w_k|: `2u |ref| + K 2^-23 S` (output rounding, doubled for
/// slack, plus the classic worst case of f32 accumulation, gamma_K ~ K 2^-24,
/// doubled), plus `u S` for cuBLAS's bf16 reduction of partial sums.
fn check_matmul(what: &str, y: &Tensor, x: &Tensor, w: &Nvfp4Tensor, accum: Accum) {
    let k = w.cols() as f64;
    let w64 = f_dequantize(w, Kind::Double).unwrap();
    let x64 = x.to_kind(Kind::Double).reshape([-1, w.cols() as i64]);
    let y64 = y.to_kind(Kind::Double).reshape([-1, w.rows() as i64]);
    let want = x64.matmul(&w64.tr());
    let mag = x64.abs().matmul(&w64.abs().tr());
    let reduce = if accum == Accum::CublasBf16 {
        2f64.powi(-8)
    } else {
        0.0
    };
    let bound = want.abs() * 2f64.powi(-7) + mag * (k * 2f64.powi(-23) + reduce) + 1e-30;
    let err = (&y64 - &want).abs();
    let nan = i64::try_from(y64.isnan().sum(Kind::Int64)).unwrap();
    let worst = f64::try_from((&err / &bound).max()).unwrap();
    let max_err = f64::try_from(err.max()).unwrap();
    println!("{what}: max |err| {max_err:.3e}, max err/bound {worst:.3}");
    assert_eq!(nan, 0, "{what}: {nan} NaN outputs (unwritten or wrong)");
    assert!(worst <= 1.0, "{what}: error {worst:.3} x the bound");
}

#[test]
#[ignore = "needs CUDA"]
fn gemv_matches_f64_matmul_on_odd_shapes() {
    let dev = test_support::cuda();
    tch::manual_seed(test_support::seed_i64());
    // N not a multiple of 16, K not a multiple of 32 or 128, K < 128, long K.
    for (n, k) in [(1000, 2576), (1000, 2560), (17, 64), (200, 9728)] {
        for global in [None, Some(0.0371f32)] {
            let w = random_weight(n, k, global, dev);
            for m in [1usize, 3, 8, 9, 16] {
                let x = Tensor::randn([m as i64, k as i64], (Kind::BFloat16, dev));
                let out = Tensor::full([m as i64, n as i64], f64::NAN, (Kind::BFloat16, dev));
                cuda::gemv_out(&x, &w, &out, None).unwrap();
                check_matmul(
                    &format!("gemv M={m} [{n},{k}] g={global:?}"),
                    &out,
                    &x,
                    &w,
                    Accum::F32,
                );
            }
        }
    }
}

#[test]
#[ignore = "needs CUDA"]
fn grouped_gemv_computes_each_weight_as_its_own_launch() {
    let dev = test_support::cuda();
    tch::manual_seed(test_support::seed_i64());
    let stream = cuda::KernelStream::eager(dev).unwrap();
    // q/k/v-like (rows not multiples of 16, mixed global scales), gate/up-like.
    for (rows, k) in [
        (vec![1000usize, 17, 250], 2560usize),
        (vec![700, 700], 2576),
    ] {
        let ws: Vec<Nvfp4Tensor> = rows
            .iter()
            .enumerate()
            .map(|(i, &n)| random_weight(n, k, (i == 1).then_some(0.0371f32), dev))
            .collect();
        for m in [1usize, 5] {
            let x = Tensor::randn([m as i64, k as i64], (Kind::BFloat16, dev));
            let nan =
                |n: usize| Tensor::full([m as i64, n as i64], f64::NAN, (Kind::BFloat16, dev));
            let outs: Vec<Tensor> = rows.iter().map(|&n| nan(n)).collect();
            let parts: Vec<(&Nvfp4Tensor, &Tensor)> = ws.iter().zip(&outs).collect();
            let cfg = cuda::GemvConfig {
                row_tiles: 1,
                k_warps: 8,
                depth: 2,
            };
            cuda::gemv_group_on(&stream, &x, &parts, Some(cfg)).unwrap();
            for (i, (w, out)) in parts.iter().enumerate() {
                check_matmul(
                    &format!("group part {i} M={m} [{},{k}]", w.rows()),
                    out,
                    &x,
                    w,
                    Accum::F32,
                );
                // Same launch shape alone: the same bits.
                let alone = nan(w.rows());
                cuda::gemv_out(&x, w, &alone, Some(cfg)).unwrap();
                let diff = (&alone.to_kind(Kind::Float) - out.to_kind(Kind::Float))
                    .abs()
                    .max();
                assert_eq!(
                    diff.double_value(&[]),
                    0.0,
                    "part {i}: grouped and alone differ"
                );
            }
        }
    }
    let w = random_weight(64, 256, None, dev);
    let x = Tensor::randn([9, 256], (Kind::BFloat16, dev));
    let out = Tensor::zeros([9, 64], (Kind::BFloat16, dev));
    assert!(
        cuda::gemv_group_on(&stream, &x, &[(&w, &out)], None).is_err(),
        "9 rows"
    );
    assert!(
        cuda::gemv_group_on(&stream, &x.narrow(0, 0, 1), &[], None).is_err(),
        "no weights"
    );
}

#[test]
#[ignore = "needs CUDA"]
fn gemv_block_shapes_all_agree_with_f64() {
    let dev = test_support::cuda();
    tch::manual_seed(test_support::seed_i64());
    let (n, k) = (1000, 2576);
    let w = random_weight(n, k, None, dev);
    for (row_tiles, k_warps, depth) in [
        (1, 1, 1),
        (1, 16, 2),
        (2, 8, 1),
        (4, 4, 2),
        (2, 3, 2),
        (8, 2, 1),
        (1, 5, 2),
    ] {
        for m in [2usize, 13] {
            let x = Tensor::randn([m as i64, k as i64], (Kind::BFloat16, dev));
            let out = Tensor::full([m as i64, n as i64], f64::NAN, (Kind::BFloat16, dev));
            cuda::gemv_out(
                &x,
                &w,
                &out,
                Some(cuda::GemvConfig {
                    row_tiles,
                    k_warps,
                    depth,
                }),
            )
            .unwrap();
            check_matmul(
                &format!("gemv {row_tiles}x{k_warps} depth {depth} M={m}"),
                &out,
                &x,
                &w,
                Accum::F32,
            );
        }
    }
}

#[test]
#[ignore = "needs CUDA"]
fn kernel_backend_linear_dispatches_and_matches_f64() {
    let dev = test_support::cuda();
    tch::manual_seed(test_support::seed_i64());
    let backend = Nvfp4Backend::resolve(ComputePath::KernelOnly, dev).unwrap();
    assert!(backend.uses_kernels(), "{}", backend.describe());
    let (n, k) = (1000, 2576);
    let w = random_weight(n, k, Some(0.5), dev);
    // [2,3,K] bf16 -> fused kernel; [5,40,K] bf16 and f32 -> dequant + GEMM.
    for (shape, kind) in [
        (vec![2i64, 3, k as i64], Kind::BFloat16),
        (vec![5, 40, k as i64], Kind::BFloat16),
        (vec![3, k as i64], Kind::Float),
    ] {
        let x = Tensor::randn(shape.as_slice(), (kind, dev));
        let y = backend.linear(&x, &w).unwrap();
        let mut want_shape = shape.clone();
        *want_shape.last_mut().unwrap() = n as i64;
        assert_eq!((y.size(), y.kind()), (want_shape, kind));
        let rows = x.numel() / k;
        let accum = if rows <= cuda::GEMV_MAX_ROWS && kind == Kind::BFloat16 {
            Accum::F32
        } else {
            Accum::CublasBf16
        };
        check_matmul(&format!("linear {shape:?} {kind:?}"), &y, &x, &w, accum);
        if accum == Accum::CublasBf16 {
            // Same dense GEMM on the same (independently dequantized) weight:
            // identical bits, so the kernel dequantization is exact.
            let dense = x.matmul(&f_dequantize(&w, kind).unwrap().tr());
            let diff = f64::try_from((&dense - &y).abs().max()).unwrap();
            assert_eq!(
                diff, 0.0,
                "linear {shape:?} {kind:?} vs torch matmul on tch-ops dequantized weight"
            );
        }
    }
    // Chunked dequantization writes column slices of y in place.
    let x = Tensor::randn([70, k as i64], (Kind::BFloat16, dev));
    let y = cuda::dequant_matmul(&x, &w, k * 300).unwrap();
    check_matmul(
        "dequant_matmul chunks of 300 rows",
        &y,
        &x,
        &w,
        Accum::CublasBf16,
    );
}

#[test]
#[ignore = "needs CUDA"]
fn activation_quantization_matches_quantized_reference() {
    let dev = test_support::cuda();
    tch::manual_seed(test_support::seed_i64());
    let backend = Nvfp4Backend::resolve(ComputePath::KernelOnly, dev)
        .unwrap()
        .with_activation_quantization(true);
    let (n, k) = (300, 1040);
    let w = random_weight(n, k, None, dev);
    for m in [4usize, 33] {
        let x = Tensor::randn([m as i64, k as i64], (Kind::BFloat16, dev));
        let y = backend.linear(&x, &w).unwrap();
        let xh = to_vec_f32(&x);
        let xq = Tensor::from_slice(&fake_quant_ref(&xh, m, k, ScaleMode::Single))
            .view([m as i64, k as i64])
            .to_device(dev);
        let accum = if m <= cuda::GEMV_MAX_ROWS {
            Accum::F32
        } else {
            Accum::CublasBf16
        };
        check_matmul(&format!("W4A4 emulation M={m}"), &y, &xq, &w, accum);
    }
}

#[test]
#[ignore = "needs CUDA"]
fn bad_inputs_are_clear_errors() {
    let dev = test_support::cuda();
    let w = random_weight(32, 64, None, dev);
    let x17 = Tensor::randn([17, 64], (Kind::BFloat16, dev));
    assert!(matches!(
        cuda::gemv(&x17, &w, None),
        Err(Error::ShapeMismatch { .. })
    ));
    let xf = Tensor::randn([2, 64], (Kind::Float, dev));
    assert!(matches!(
        cuda::gemv(&xf, &w, None),
        Err(Error::WrongKind { .. })
    ));
    let xk = Tensor::randn([2, 48], (Kind::BFloat16, dev));
    let err = cuda::linear(&xk, &w, &cuda::LinearOptions::default()).unwrap_err();
    assert!(matches!(err, Error::ShapeMismatch { .. }), "{err}");
    let x_cols = Tensor::randn([2, 40], (Kind::Float, dev));
    assert!(matches!(
        cuda::quantize(&x_cols, ScaleMode::Single),
        Err(Error::ColsNotMultipleOfBlock { cols: 40, .. })
    ));
    let bad_cfg = cuda::GemvConfig {
        row_tiles: 4,
        k_warps: 8,
        depth: 1,
    };
    let x2 = Tensor::randn([2, 64], (Kind::BFloat16, dev));
    assert!(cuda::gemv(&x2, &w, Some(bad_cfg)).is_err());
}
