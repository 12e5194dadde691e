//! The CUDA kernels against the CPU reference (bit for bit where the
//! operation is exact) and against f64 matmuls (within a stated bound where
//! it accumulates). Without CUDA every test prints `SKIPPED (no CUDA): <name>`
//! and returns. Inputs are fresh each run (seed printed); shapes are chosen
//! not to be multiples of any tile; outputs are poisoned before the kernels
//! write them.

use nvfp4_kernels::{
    cuda, dequantize_ref, f_dequantize, f_fake_quantize, quantize_ref, ComputePath, Error, Nvfp4Backend, Nvfp4Host,
    Nvfp4HostRef, Nvfp4Tensor, ScaleMode,
};
use tch::{Device, Kind, Tensor};

fn cuda_or_skip(name: &str) -> Option<Device> {
    if tch::Cuda::is_available() {
        Some(Device::Cuda(0))
    } else {
        println!("SKIPPED (no CUDA): {name}");
        None
    }
}

/// Seeds libtorch's generator from the clock and prints the seed, so a
/// failure can be replayed with NVFP4_TEST_SEED.
fn fresh_seed(test: &str) -> u64 {
    let seed = std::env::var("NVFP4_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1)
    });
    println!("{test}: seed {seed}");
    tch::manual_seed(seed as i64);
    seed
}

fn to_vec_f32(t: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(t.to_kind(Kind::Float).to_device(Device::Cpu).flatten(0, -1)).expect("f32 vec")
}

fn to_vec_u8(t: &Tensor) -> Vec<u8> {
    Vec::<u8>::try_from(t.to_device(Device::Cpu).flatten(0, -1)).expect("u8 vec")
}

/// Weight-like data exercising every branch of the quantizer: per-row scales
/// from 1e-7 (subnormal and zero E4M3 scales) to 1e4 (saturation in Single
/// mode), all-zero blocks, negative zeros, and blocks of exact E2M1 ties.
fn weight_like(rows: usize, cols: usize, bf16: bool) -> Vec<f32> {
    let exp = Tensor::rand([rows as i64, 1], (Kind::Float, Device::Cpu)) * 11.0 - 7.0;
    let row_scale = Tensor::from(10.0f32).pow(&exp);
    let t = Tensor::randn([rows as i64, cols as i64], (Kind::Float, Device::Cpu)) * row_scale;
    let t = if bf16 { t.to_kind(Kind::BFloat16).to_kind(Kind::Float) } else { t };
    let mut v = to_vec_f32(&t);
    let ties = [6.0f32, 0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, -0.25, -0.75, -1.25, -1.75, -2.5, -3.5, -5.0, 0.5];
    for (b, block) in v.chunks_exact_mut(16).enumerate() {
        match b % 23 {
            0 => block.fill(0.0),
            5 => {
                // amax 6 * 2^k: the block scale is exactly 2^k, the rest are ties.
                let p = 2f32.powi((b % 13) as i32 - 6);
                block.iter_mut().zip(ties).for_each(|(d, t)| *d = t * p);
            }
            _ => {}
        }
        if b % 7 == 3 {
            block[b % 16] = -0.0;
        }
    }
    v
}

fn upload(v: &[f32], rows: usize, cols: usize, kind: Kind, dev: Device) -> Tensor {
    Tensor::from_slice(v).view([rows as i64, cols as i64]).to_kind(kind).to_device(dev)
}

/// Best effort: fill and free blocks of the sizes about to be allocated so
/// libtorch's caching allocator hands out memory holding 0xA5, not zeros.
fn poison_allocator(dev: Device, bytes: &[usize]) {
    let held: Vec<Tensor> = bytes.iter().map(|&n| Tensor::full([n as i64], 0xA5, (Kind::Uint8, dev))).collect();
    drop(held);
}

fn first_mismatch<T: PartialEq + Copy + std::fmt::Debug>(got: &[T], want: &[T]) -> Option<(usize, T, T)> {
    got.iter().zip(want).enumerate().find(|(_, (g, w))| g != w).map(|(i, (g, w))| (i, *g, *w))
}

fn assert_host_eq(what: &str, got: &Nvfp4Host, want: &Nvfp4Host) {
    assert_eq!(got.global_scale.map(f32::to_bits), want.global_scale.map(f32::to_bits), "{what}: global scale");
    assert_eq!(first_mismatch(&got.scale, &want.scale), None, "{what}: scale (index, got, want)");
    assert_eq!(first_mismatch(&got.qdata, &want.qdata), None, "{what}: qdata (index, got, want)");
}

/// f32 bits with every NaN mapped to one pattern (payloads differ by path).
fn canon_bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| if x.is_nan() { 0x7FC0_0000 } else { x.to_bits() }).collect()
}

/// bf16 bits (as u16 in i16 storage) of an f32 CPU tensor rounded by torch (RNE).
fn bf16_bits_of(t: &Tensor) -> Vec<u16> {
    let b = t.to_device(Device::Cpu).to_kind(Kind::BFloat16).view_dtype(Kind::Int16).flatten(0, -1);
    Vec::<i16>::try_from(b).expect("i16").into_iter().map(|x| x as u16).collect()
}

fn canon_bf16(v: Vec<u16>) -> Vec<u16> {
    v.into_iter().map(|h| if h & 0x7FFF > 0x7F80 { 0x7FC0 } else { h }).collect()
}

const SHAPES: [(usize, usize); 3] = [(3, 2576), (1000, 64), (130, 4096)];

#[test]
fn quantize_matches_reference_bit_for_bit() {
    let Some(dev) = cuda_or_skip("quantize_matches_reference_bit_for_bit") else { return };
    fresh_seed("quantize_matches_reference_bit_for_bit");
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
                    assert_host_eq(&format!("trusted [{rows},{cols}] {kind:?}"), &trusted, &want);
                }
            }
        }
    }
}

#[test]
fn quantize_names_the_first_non_finite_element() {
    let Some(dev) = cuda_or_skip("quantize_names_the_first_non_finite_element") else { return };
    fresh_seed("quantize_names_the_first_non_finite_element");
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
fn dequantize_matches_reference_bit_for_bit() {
    let Some(dev) = cuda_or_skip("dequantize_matches_reference_bit_for_bit") else { return };
    fresh_seed("dequantize_matches_reference_bit_for_bit");
    let (rows, cols) = (37, 2576);
    // Every byte value, NaN scales (0x7F, 0xFF) and negative scales included.
    let qdata = to_vec_u8(&Tensor::randint(256, [(rows * cols / 2) as i64], (Kind::Uint8, Device::Cpu)));
    let scale = to_vec_u8(&Tensor::randint(256, [(rows * cols / 16) as i64], (Kind::Uint8, Device::Cpu)));
    let g = 0.25 + f64::try_from(Tensor::rand([1], (Kind::Double, Device::Cpu))).unwrap() as f32 * 0.5;
    for global in [None, Some(g)] {
        let r = Nvfp4HostRef::new(&qdata, &scale, rows, cols, global).unwrap();
        let want = dequantize_ref(&r);
        let q = Nvfp4Tensor::from_host(&r, dev).unwrap();
        // Poison with a value no element can take (|w| <= 6 * 448 * g < 12345).
        let out = Tensor::full([rows as i64, cols as i64], 12345.0, (Kind::Float, dev));
        cuda::dequantize_into(&q, &out).unwrap();
        let got = to_vec_f32(&out);
        assert_eq!(first_mismatch(&canon_bits(&got), &canon_bits(&want)), None, "f32, global {global:?}");
        let out = Tensor::full([rows as i64, cols as i64], 12345.0, (Kind::BFloat16, dev));
        cuda::dequantize_into(&q, &out).unwrap();
        let got = canon_bf16(bf16_bits_of(&out.to_kind(Kind::Float)));
        let want_bf16 = canon_bf16(bf16_bits_of(&Tensor::from_slice(&want)));
        assert_eq!(first_mismatch(&got, &want_bf16), None, "bf16, global {global:?}");
        // The allocating form gives the same values.
        let again = to_vec_f32(&cuda::dequantize(&q, Kind::Float).unwrap());
        assert_eq!(canon_bits(&again), canon_bits(&want));
    }
}

/// `dequantize_ref(quantize_ref(x))` as f32, the exact value fake-quantize must give.
fn fake_quant_ref(host: &[f32], rows: usize, cols: usize, mode: ScaleMode) -> Vec<f32> {
    dequantize_ref(&quantize_ref(host, rows, cols, mode).unwrap().as_ref())
}

#[test]
fn fake_quantize_matches_reference_bit_for_bit() {
    let Some(dev) = cuda_or_skip("fake_quantize_matches_reference_bit_for_bit") else { return };
    fresh_seed("fake_quantize_matches_reference_bit_for_bit");
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
                    let (got_packed, packed) = cuda::fake_quantize_packed(&x, mode, out_kind).unwrap();
                    assert_host_eq(&what, &packed.to_host(), &quantize_ref(&host, rows, cols, mode).unwrap());
                    for g in [got, got_packed] {
                        if out_kind == Kind::Float {
                            assert_eq!(first_mismatch(&to_vec_f32(&g).iter().map(|v| v.to_bits()).collect::<Vec<_>>(), &want.iter().map(|v| v.to_bits()).collect::<Vec<_>>()), None, "{what}");
                        } else {
                            assert_eq!(first_mismatch(&bf16_bits_of(&g.to_kind(Kind::Float)), &want_bf16), None, "{what}");
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn fake_quantize_poisons_non_finite_blocks_like_the_tch_ops() {
    let Some(dev) = cuda_or_skip("fake_quantize_poisons_non_finite_blocks_like_the_tch_ops") else { return };
    fresh_seed("fake_quantize_poisons_non_finite_blocks_like_the_tch_ops");
    let (rows, cols) = (4, 64);
    let mut host = weight_like(rows, cols, false);
    host[17] = f32::INFINITY;
    host[3 * cols + 40] = f32::NAN;
    for mode in [ScaleMode::Single, ScaleMode::TwoLevel] {
        let x_cpu = Tensor::from_slice(&host).view([rows as i64, cols as i64]);
        let want = canon_bits(&to_vec_f32(&f_fake_quantize(&x_cpu, mode).unwrap()));
        let got = canon_bits(&to_vec_f32(&cuda::fake_quantize(&x_cpu.to_device(dev), mode, Kind::Float).unwrap()));
        assert_eq!(first_mismatch(&got, &want), None, "{mode}");
        assert!(got[16..32].iter().all(|&b| b == 0x7FC0_0000), "{mode}: the block holding inf must be NaN");
    }
}

#[test]
fn ste_forward_is_fake_quantize_and_gradient_is_identity() {
    let Some(dev) = cuda_or_skip("ste_forward_is_fake_quantize_and_gradient_is_identity") else { return };
    fresh_seed("ste_forward_is_fake_quantize_and_gradient_is_identity");
    let (rows, cols) = (33, 272);
    let host = weight_like(rows, cols, false);
    let x = upload(&host, rows, cols, Kind::Float, dev).set_requires_grad(true);
    let y = cuda::ste(&x, ScaleMode::TwoLevel, Kind::BFloat16).unwrap();
    let want = bf16_bits_of(&Tensor::from_slice(&fake_quant_ref(&host, rows, cols, ScaleMode::TwoLevel)));
    assert_eq!(first_mismatch(&bf16_bits_of(&y.to_kind(Kind::Float)), &want), None, "forward");
    let r = Tensor::randn([rows as i64, cols as i64], (Kind::Float, dev));
    (y.to_kind(Kind::Float) * &r).sum(Kind::Float).backward();
    let grad = x.grad();
    let want_grad = r.to_kind(Kind::BFloat16).to_kind(Kind::Float);
    let diff = f64::try_from((grad - want_grad).abs().max()).unwrap();
    assert_eq!(diff, 0.0, "gradient must be the (bf16-cast) upstream gradient");
}

/// Random NVFP4 weight on `dev`: every code, scales across the E4M3 range
/// (subnormal, negative, 448; no NaN), optional global scale.
fn random_weight(rows: usize, cols: usize, global: Option<f32>, dev: Device) -> Nvfp4Tensor {
    let qdata = to_vec_u8(&Tensor::randint(256, [(rows * cols / 2) as i64], (Kind::Uint8, Device::Cpu)));
    let scale: Vec<u8> = to_vec_u8(&Tensor::randint(0x7F, [(rows * cols / 16) as i64], (Kind::Uint8, Device::Cpu)))
        .into_iter()
        .enumerate()
        .map(|(i, s)| if i % 5 == 0 { s | 0x80 } else { s })
        .collect();
    let r = Nvfp4HostRef::new(&qdata, &scale, rows, cols, global).unwrap();
    Nvfp4Tensor::from_host(&r, dev).unwrap()
}

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
    let reduce = if accum == Accum::CublasBf16 { 2f64.powi(-8) } else { 0.0 };
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
fn gemv_matches_f64_matmul_on_odd_shapes() {
    let Some(dev) = cuda_or_skip("gemv_matches_f64_matmul_on_odd_shapes") else { return };
    fresh_seed("gemv_matches_f64_matmul_on_odd_shapes");
    // N not a multiple of 16, K not a multiple of 32 or 128, K < 128, long K.
    for (n, k) in [(1000, 2576), (1000, 2560), (17, 64), (200, 9728)] {
        for global in [None, Some(0.0371f32)] {
            let w = random_weight(n, k, global, dev);
            for m in [1usize, 3, 8, 9, 16] {
                let x = Tensor::randn([m as i64, k as i64], (Kind::BFloat16, dev));
                let out = Tensor::full([m as i64, n as i64], f64::NAN, (Kind::BFloat16, dev));
                cuda::gemv_out(&x, &w, &out, None).unwrap();
                check_matmul(&format!("gemv M={m} [{n},{k}] g={global:?}"), &out, &x, &w, Accum::F32);
            }
        }
    }
}

#[test]
fn gemv_block_shapes_all_agree_with_f64() {
    let Some(dev) = cuda_or_skip("gemv_block_shapes_all_agree_with_f64") else { return };
    fresh_seed("gemv_block_shapes_all_agree_with_f64");
    let (n, k) = (1000, 2576);
    let w = random_weight(n, k, None, dev);
    for (row_tiles, k_warps, depth) in [(1, 1, 1), (1, 16, 2), (2, 8, 1), (4, 4, 2), (2, 3, 2), (8, 2, 1), (1, 5, 2)] {
        for m in [2usize, 13] {
            let x = Tensor::randn([m as i64, k as i64], (Kind::BFloat16, dev));
            let out = Tensor::full([m as i64, n as i64], f64::NAN, (Kind::BFloat16, dev));
            cuda::gemv_out(&x, &w, &out, Some(cuda::GemvConfig { row_tiles, k_warps, depth })).unwrap();
            check_matmul(&format!("gemv {row_tiles}x{k_warps} depth {depth} M={m}"), &out, &x, &w, Accum::F32);
        }
    }
}

#[test]
fn kernel_backend_linear_dispatches_and_matches_f64() {
    let Some(dev) = cuda_or_skip("kernel_backend_linear_dispatches_and_matches_f64") else { return };
    fresh_seed("kernel_backend_linear_dispatches_and_matches_f64");
    let backend = Nvfp4Backend::resolve(ComputePath::KernelOnly, dev).unwrap();
    assert!(backend.uses_kernels(), "{}", backend.describe());
    let (n, k) = (1000, 2576);
    let w = random_weight(n, k, Some(0.5), dev);
    // [2,3,K] bf16 -> fused kernel; [5,40,K] bf16 and f32 -> dequant + GEMM.
    for (shape, kind) in [(vec![2i64, 3, k as i64], Kind::BFloat16), (vec![5, 40, k as i64], Kind::BFloat16), (vec![3, k as i64], Kind::Float)] {
        let x = Tensor::randn(shape.as_slice(), (kind, dev));
        let y = backend.linear(&x, &w).unwrap();
        let mut want_shape = shape.clone();
        *want_shape.last_mut().unwrap() = n as i64;
        assert_eq!((y.size(), y.kind()), (want_shape, kind));
        let rows = x.numel() / k;
        let accum = if rows <= cuda::GEMV_MAX_ROWS && kind == Kind::BFloat16 { Accum::F32 } else { Accum::CublasBf16 };
        check_matmul(&format!("linear {shape:?} {kind:?}"), &y, &x, &w, accum);
        if accum == Accum::CublasBf16 {
            // Same dense GEMM on the same (independently dequantized) weight:
            // identical bits, so the kernel dequantization is exact.
            let dense = x.matmul(&f_dequantize(&w, kind).unwrap().tr());
            let diff = f64::try_from((&dense - &y).abs().max()).unwrap();
            assert_eq!(diff, 0.0, "linear {shape:?} {kind:?} vs torch matmul on tch-ops dequantized weight");
        }
    }
    // Chunked dequantization writes column slices of y in place.
    let x = Tensor::randn([70, k as i64], (Kind::BFloat16, dev));
    let y = cuda::dequant_matmul(&x, &w, k * 300).unwrap();
    check_matmul("dequant_matmul chunks of 300 rows", &y, &x, &w, Accum::CublasBf16);
}

#[test]
fn activation_quantization_matches_quantized_reference() {
    let Some(dev) = cuda_or_skip("activation_quantization_matches_quantized_reference") else { return };
    fresh_seed("activation_quantization_matches_quantized_reference");
    let backend = Nvfp4Backend::resolve(ComputePath::KernelOnly, dev).unwrap().with_activation_quantization(true);
    let (n, k) = (300, 1040);
    let w = random_weight(n, k, None, dev);
    for m in [4usize, 33] {
        let x = Tensor::randn([m as i64, k as i64], (Kind::BFloat16, dev));
        let y = backend.linear(&x, &w).unwrap();
        let xh = to_vec_f32(&x);
        let xq = Tensor::from_slice(&fake_quant_ref(&xh, m, k, ScaleMode::Single)).view([m as i64, k as i64]).to_device(dev);
        let accum = if m <= cuda::GEMV_MAX_ROWS { Accum::F32 } else { Accum::CublasBf16 };
        check_matmul(&format!("W4A4 emulation M={m}"), &y, &xq, &w, accum);
    }
}

#[test]
fn bad_inputs_are_clear_errors() {
    let Some(dev) = cuda_or_skip("bad_inputs_are_clear_errors") else { return };
    let w = random_weight(32, 64, None, dev);
    let x17 = Tensor::randn([17, 64], (Kind::BFloat16, dev));
    assert!(matches!(cuda::gemv(&x17, &w, None), Err(Error::ShapeMismatch { .. })));
    let xf = Tensor::randn([2, 64], (Kind::Float, dev));
    assert!(matches!(cuda::gemv(&xf, &w, None), Err(Error::WrongKind { .. })));
    let xk = Tensor::randn([2, 48], (Kind::BFloat16, dev));
    let err = cuda::linear(&xk, &w, &cuda::LinearOptions::default()).unwrap_err();
    assert!(matches!(err, Error::ShapeMismatch { .. }), "{err}");
    let x_cols = Tensor::randn([2, 40], (Kind::Float, dev));
    assert!(matches!(cuda::quantize(&x_cols, ScaleMode::Single), Err(Error::ColsNotMultipleOfBlock { cols: 40, .. })));
    let bad_cfg = cuda::GemvConfig { row_tiles: 4, k_warps: 8, depth: 1 };
    let x2 = Tensor::randn([2, 64], (Kind::BFloat16, dev));
    assert!(cuda::gemv(&x2, &w, Some(bad_cfg)).is_err());
}

#[test]
fn kernel_only_on_cpu_is_refused_with_the_reason() {
    let err = Nvfp4Backend::resolve(ComputePath::KernelOnly, Device::Cpu).unwrap_err();
    assert!(matches!(err, Error::KernelUnavailable { .. }), "{err}");
    assert!(err.to_string().contains("CUDA"), "{err}");
    let err = cuda::quantize(&Tensor::zeros([2, 16], (Kind::Float, Device::Cpu)), ScaleMode::Single).unwrap_err();
    assert!(matches!(err, Error::KernelUnavailable { .. }), "{err}");
}

#[test]
fn diagnose_reports_the_device_and_compiled_modules() {
    let report = nvfp4_kernels::diagnose();
    println!("{report}");
    let Some(_dev) = cuda_or_skip("diagnose_reports_the_device_and_compiled_modules") else {
        assert!(report.contains("no CUDA device"), "{report}");
        return;
    };
    assert!(report.contains("compute capability"), "{report}");
    for m in ["quantize", "dequantize", "gemv"] {
        assert!(report.contains(&format!("kernel module {m}: ")), "{report}");
    }
    assert!(!report.contains("FAILED"), "{report}");
}
