//! The CUDA quantize / dequantize / fake-quantize (STE) kernels against the
//! CPU reference, bit for bit. The GPU tests are
//! `#[ignore = "needs CUDA"]` (run with `--include-ignored`). Inputs are fresh each run (seed
//! printed); shapes are not multiples of any tile; outputs are poisoned
//! before the kernels write them. The matmuls: tests/gpu_matmul.rs.

mod gpu_common;

use gpu_common::*;
use nvfp4_kernels::{
    cuda, dequantize_ref, f_fake_quantize, quantize_ref, ComputePath, Error, Nvfp4Backend,
    Nvfp4HostRef, Nvfp4Tensor, ScaleMode,
};
use tch::{Device, Kind, Tensor};

const SHAPES: [(usize, usize); 3] = [(3, 2576), (1000, 64), (130, 4096)];

#[test]
#[ignore = "needs CUDA"]
fn quantize_matches_reference_bit_for_bit() {
    let dev = test_support::cuda();
    tch::manual_seed(test_support::seed_i64());
    for (rows, cols) in SHAPES {
        for bf16 in [false, true] {
            let host = weight_like(rows, cols, bf16);
            let kind = if bf16 { Kind::BFloat16 } else { Kind::Float };
            let x = upload(&host, rows, cols, kind, dev);
            for mode in [ScaleMode::Single, ScaleMode::TwoLevel] {
                let want = quantize_ref(&host, rows, cols, mode).unwrap();
                poison_allocator(dev, &[rows * cols / 2, rows * cols / 16]);
                let got = cuda::quantize(&x, mode).unwrap().to_host();
                assert_host_eq(&format!("[{rows},{cols}] {kind:?} {mode}"), &got, &want);
                poison_allocator(dev, &[rows * cols / 2, rows * cols / 16]);
                if mode == ScaleMode::Single {
                    let trusted = cuda::quantize_trusted(&x).unwrap().to_host();
                    assert_host_eq(
                        &format!("trusted [{rows},{cols}] {kind:?}"),
                        &trusted,
                        &want,
                    );
                }
            }
        }
    }
}

#[test]
#[ignore = "needs CUDA"]
fn quantize_names_the_first_non_finite_element() {
    let dev = test_support::cuda();
    tch::manual_seed(test_support::seed_i64());
    let (rows, cols) = (5, 48);
    for mode in [ScaleMode::Single, ScaleMode::TwoLevel] {
        let mut host = weight_like(rows, cols, false);
        host[2 * cols + 17] = f32::NAN;
        host[4 * cols + 1] = f32::INFINITY;
        let err = cuda::quantize(&upload(&host, rows, cols, Kind::Float, dev), mode).unwrap_err();
        let expect_index = 2 * cols + 17;
        assert!(
            matches!(err, Error::NonFinite { index, row: 2, col: 17, .. } if index == expect_index),
            "{mode}: {err}"
        );
    }
}

#[test]
#[ignore = "needs CUDA"]
fn dequantize_matches_reference_bit_for_bit() {
    let dev = test_support::cuda();
    tch::manual_seed(test_support::seed_i64());
    let (rows, cols) = (37, 2576);
    // Every byte value, NaN scales (0x7F, 0xFF) and negative scales included.
    let qdata = to_vec_u8(&Tensor::randint(
        256,
        [(rows * cols / 2) as i64],
        (Kind::Uint8, Device::Cpu),
    ));
    let scale = to_vec_u8(&Tensor::randint(
        256,
        [(rows * cols / 16) as i64],
        (Kind::Uint8, Device::Cpu),
    ));
    let g =
        0.25 + f64::try_from(Tensor::rand([1], (Kind::Double, Device::Cpu))).unwrap() as f32 * 0.5;
    for global in [None, Some(g)] {
        let r = Nvfp4HostRef::new(&qdata, &scale, rows, cols, global).unwrap();
        let want = dequantize_ref(&r);
        let q = Nvfp4Tensor::from_host(&r, dev).unwrap();
        // Poison with a value no element can take (|w| <= 6 * 448 * g < 12345).
        let out = Tensor::full([rows as i64, cols as i64], 12345.0, (Kind::Float, dev));
        cuda::dequantize_into(&q, &out).unwrap();
        let got = to_vec_f32(&out);
        assert_eq!(
            first_mismatch(&canon_bits(&got), &canon_bits(&want)),
            None,
            "f32, global {global:?}"
        );
        let out = Tensor::full([rows as i64, cols as i64], 12345.0, (Kind::BFloat16, dev));
        cuda::dequantize_into(&q, &out).unwrap();
        let got = canon_bf16(bf16_bits_of(&out.to_kind(Kind::Float)));
        let want_bf16 = canon_bf16(bf16_bits_of(&Tensor::from_slice(&want)));
        assert_eq!(
            first_mismatch(&got, &want_bf16),
            None,
            "bf16, global {global:?}"
        );
        // The allocating form gives the same values.
        let again = to_vec_f32(&cuda::dequantize(&q, Kind::Float).unwrap());
        assert_eq!(canon_bits(&again), canon_bits(&want));
    }
}

#[test]
#[ignore = "needs CUDA"]
fn fake_quantize_matches_reference_bit_for_bit() {
    let dev = test_support::cuda();
    tch::manual_seed(test_support::seed_i64());
    for (rows, cols) in SHAPES {
        for in_bf16 in [false, true] {
            let host = weight_like(rows, cols, in_bf16);
            let in_kind = if in_bf16 { Kind::BFloat16 } else { Kind::Float };
            let x = upload(&host, rows, cols, in_kind, dev);
            for mode in [ScaleMode::Single, ScaleMode::TwoLevel] {
                let want = fake_quant_ref(&host, rows, cols, mode);
                let want_bf16 = bf16_bits_of(&Tensor::from_slice(&want));
                for out_kind in [Kind::Float, Kind::BFloat16] {
                    let what = format!("[{rows},{cols}] {in_kind:?} -> {out_kind:?} {mode}");
                    poison_allocator(dev, &[rows * cols * 4]);
                    let got = cuda::fake_quantize(&x, mode, out_kind).unwrap();
                    assert_eq!(got.kind(), out_kind, "{what}");
                    let (got_packed, packed) =
                        cuda::fake_quantize_packed(&x, mode, out_kind).unwrap();
                    assert_host_eq(
                        &what,
                        &packed.to_host(),
                        &quantize_ref(&host, rows, cols, mode).unwrap(),
                    );
                    for g in [got, got_packed] {
                        if out_kind == Kind::Float {
                            assert_eq!(
                                first_mismatch(
                                    &to_vec_f32(&g)
                                        .iter()
                                        .map(|v| v.to_bits())
                                        .collect::<Vec<_>>(),
                                    &want.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
                                ),
                                None,
                                "{what}"
                            );
                        } else {
                            assert_eq!(
                                first_mismatch(&bf16_bits_of(&g.to_kind(Kind::Float)), &want_bf16),
                                None,
                                "{what}"
                            );
                        }
                    }
                }
            }
        }
    }
}

#[test]
#[ignore = "needs CUDA"]
fn fake_quantize_poisons_non_finite_blocks_like_the_tch_ops() {
    let dev = test_support::cuda();
    tch::manual_seed(test_support::seed_i64());
    let (rows, cols) = (4, 64);
    let mut host = weight_like(rows, cols, false);
    host[17] = f32::INFINITY;
    host[3 * cols + 40] = f32::NAN;
    for mode in [ScaleMode::Single, ScaleMode::TwoLevel] {
        let x_cpu = Tensor::from_slice(&host).view([rows as i64, cols as i64]);
        let want = canon_bits(&to_vec_f32(&f_fake_quantize(&x_cpu, mode).unwrap()));
        let got = canon_bits(&to_vec_f32(
            &cuda::fake_quantize(&x_cpu.to_device(dev), mode, Kind::Float).unwrap(),
        ));
        assert_eq!(first_mismatch(&got, &want), None, "{mode}");
        assert!(
            got[16..32].iter().all(|&b| b == 0x7FC0_0000),
            "{mode}: the block holding inf must be NaN"
        );
    }
}

#[test]
#[ignore = "needs CUDA"]
fn ste_forward_is_fake_quantize_and_gradient_is_identity() {
    let dev = test_support::cuda();
    tch::manual_seed(test_support::seed_i64());
    let (rows, cols) = (33, 272);
    // bf16 input values, so the bf16 master holds exactly the same weights.
    let host = weight_like(rows, cols, true);
    let want = bf16_bits_of(&Tensor::from_slice(&fake_quant_ref(
        &host,
        rows,
        cols,
        ScaleMode::TwoLevel,
    )));
    for master in [Kind::Float, Kind::BFloat16] {
        let x = upload(&host, rows, cols, master, dev).set_requires_grad(true);
        // Recording autograd: the differentiable copy overwritten by the kernel.
        let y = cuda::ste(&x, ScaleMode::TwoLevel, Kind::BFloat16).unwrap();
        assert!(y.requires_grad(), "{master:?}: y must carry the gradient");
        let got = bf16_bits_of(&y.to_kind(Kind::Float));
        assert_eq!(first_mismatch(&got, &want), None, "{master:?} forward");
        let r = Tensor::randn([rows as i64, cols as i64], (Kind::Float, dev));
        (y.to_kind(Kind::Float) * &r).sum(Kind::Float).backward();
        let want_grad = r.to_kind(Kind::BFloat16).to_kind(master);
        let diff = f64::try_from((x.grad() - want_grad).abs().max()).unwrap();
        assert_eq!(
            diff, 0.0,
            "{master:?}: gradient must be the (bf16-cast) upstream gradient"
        );
        // Not recording: the kernel alone, same bits, nothing to differentiate.
        let y = tch::no_grad(|| cuda::ste(&x, ScaleMode::TwoLevel, Kind::BFloat16)).unwrap();
        assert!(!y.requires_grad(), "{master:?}: no_grad output");
        let got = bf16_bits_of(&y.to_kind(Kind::Float));
        assert_eq!(
            first_mismatch(&got, &want),
            None,
            "{master:?} no_grad forward"
        );
    }
}

#[test]
fn kernel_only_on_cpu_is_refused_with_the_reason() {
    let err = Nvfp4Backend::resolve(ComputePath::KernelOnly, Device::Cpu).unwrap_err();
    assert!(matches!(err, Error::KernelUnavailable { .. }), "{err}");
    assert!(err.to_string().contains("CUDA"), "{err}");
    let err = cuda::quantize(
        &Tensor::zeros([2, 16], (Kind::Float, Device::Cpu)),
        ScaleMode::Single,
    )
    .unwrap_err();
    assert!(matches!(err, Error::KernelUnavailable { .. }), "{err}");
}

/// Runs on every machine and asserts what is true on it.
#[test]
fn diagnose_says_whether_libtorch_sees_cuda() {
    let report = nvfp4_kernels::diagnose();
    println!("{report}");
    assert_eq!(
        report.contains("no CUDA device"),
        !tch::Cuda::is_available(),
        "{report}"
    );
}

#[test]
#[ignore = "needs CUDA"]
fn diagnose_reports_the_device_and_compiled_modules() {
    test_support::cuda();
    let report = nvfp4_kernels::diagnose();
    println!("{report}");
    assert!(report.contains("compute capability"), "{report}");
    for m in ["quantize", "dequantize", "gemv"] {
        assert!(report.contains(&format!("kernel module {m}: ")), "{report}");
    }
    assert!(!report.contains("FAILED"), "{report}");
}
