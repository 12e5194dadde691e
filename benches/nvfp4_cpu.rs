//! CPU throughput of NVFP4 quantize / dequantize for one Qwen3-4B q_proj-sized
//! matrix [4096, 2560]: the scalar reference (`ref`) against the tch tensor-op
//! path (`tch`), measured in the same run. Throughput is bytes of the f32
//! matrix (input of quantize, output of dequantize).
//!
//! Run: `cargo bench --bench nvfp4_cpu` (add `-- --quick` for a short run).

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use nvfp4_kernels::{dequantize, dequantize_ref, quantize, quantize_ref, Nvfp4Tensor, ScaleMode};
use rand::{Rng, SeedableRng};
use tch::{Device, Kind, Tensor};

const ROWS: usize = 4096;
const COLS: usize = 2560;

/// Weight-like values: normal-ish, std 0.02, fixed seed so runs compare.
fn weights() -> Vec<f32> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5EED);
    (0..ROWS * COLS)
        .map(|_| (rng.gen::<f32>() + rng.gen::<f32>() + rng.gen::<f32>() - 1.5) * 0.04)
        .collect()
}

fn bench_quantize(c: &mut Criterion, x: &[f32], xt: &Tensor) {
    let mut g = c.benchmark_group("cpu/quantize");
    g.sample_size(10);
    g.throughput(Throughput::Bytes((ROWS * COLS * 4) as u64));
    for mode in [ScaleMode::Single, ScaleMode::TwoLevel] {
        g.bench_function(BenchmarkId::new("ref", mode), |b| {
            b.iter(|| quantize_ref(black_box(x), ROWS, COLS, mode).expect("finite input"))
        });
        g.bench_function(BenchmarkId::new("tch", mode), |b| {
            b.iter(|| quantize(black_box(xt), mode).expect("finite input"))
        });
    }
    g.finish();
}

fn bench_dequantize(c: &mut Criterion, x: &[f32]) {
    let host = quantize_ref(x, ROWS, COLS, ScaleMode::Single).expect("finite input");
    let t = Nvfp4Tensor::from_host(&host.as_ref(), Device::Cpu).expect("valid shapes");
    let mut g = c.benchmark_group("cpu/dequantize");
    g.sample_size(10);
    g.throughput(Throughput::Bytes((ROWS * COLS * 4) as u64));
    g.bench_function("ref/f32", |b| {
        b.iter(|| dequantize_ref(black_box(&host.as_ref())))
    });
    g.bench_function("tch/f32", |b| {
        b.iter(|| dequantize(black_box(&t), Kind::Float))
    });
    g.bench_function("tch/bf16", |b| {
        b.iter(|| dequantize(black_box(&t), Kind::BFloat16))
    });
    g.finish();
}

fn benches(c: &mut Criterion) {
    let x = weights();
    let xt = Tensor::from_slice(&x).view([ROWS as i64, COLS as i64]);
    bench_quantize(c, &x, &xt);
    bench_dequantize(c, &x);
}

criterion_group!(nvfp4_cpu, benches);
criterion_main!(nvfp4_cpu);
