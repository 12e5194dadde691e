//! GPU benchmarks of the NVFP4 kernels and their dense baselines, measured in
//! one run on one card, for the Qwen3-4B projection shapes:
//! * `y = x @ W^T` at M = 1, 16 (fused W4A16 kernel vs torch bf16 matmul) and
//!   M = 2048, 8192 (kernel dequantize + cuBLAS vs torch bf16 matmul);
//! * quantize (bf16 -> NVFP4), the fused STE weight pass (f32/bf16 master ->
//!   bf16 fake-quantized), dequantize, against the device-to-device copy
//!   bandwidth measured in the same run.
//!
//! Times are GPU times: each criterion sample enqueues its batch behind a
//! spin kernel and reads CUDA events (`cuda::time_gpu`), so the CPU's launch
//! overhead is excluded for ours and the baselines alike. Weight buffers
//! rotate so that at least 256 MB is touched between reuses (L2 is 50 MB).
//!
//! `cargo bench --bench nvfp4_gpu` prints criterion's report, then a compact
//! table (also written to `$NVFP4_BENCH_TABLE` if set). `NVFP4_BENCH_TUNE=1`
//! first sweeps the fused kernel's block shapes and the dequantize chunk size.
//! Without CUDA it prints `SKIPPED (no CUDA)` and exits.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

use criterion::Criterion;
use nvfp4_kernels::{cuda, f_fake_quantize, Nvfp4Tensor, ScaleMode};
use tch::{Device, Kind, Tensor};

const SHAPES: [(usize, usize); 6] = [
    (4096, 2560),
    (1024, 2560),
    (2560, 4096),
    (9728, 2560),
    (2560, 9728),
    (151936, 2560),
];
const BIG: [(usize, usize); 1] = [(9728, 2560)];
/// Iterations enqueued behind one spin kernel.
const BATCH: usize = 256;
/// Bytes touched between two uses of the same weight buffer.
const ROTATE_BYTES: usize = 256 << 20;

/// Per-iteration GPU seconds of every criterion sample, by benchmark id.
static SAMPLES: Mutex<BTreeMap<String, Vec<f64>>> = Mutex::new(BTreeMap::new());

fn record(id: &str, secs: f64) {
    SAMPLES
        .lock()
        .unwrap()
        .entry(id.to_string())
        .or_default()
        .push(secs);
}

fn median(id: &str) -> Option<f64> {
    let map = SAMPLES.lock().unwrap();
    let mut v = map.get(id)?.clone();
    v.sort_by(f64::total_cmp);
    Some(v[v.len() / 2])
}

/// GPU seconds of `iters` calls of `f`, in batches behind a spin kernel.
fn gpu_secs(dev: Device, iters: usize, offset: usize, f: &mut dyn FnMut(usize)) -> f64 {
    let mut total = 0.0;
    let mut done = 0;
    while done < iters {
        let n = (iters - done).min(BATCH);
        total += cuda::time_gpu(dev, n, |i| {
            f(offset + done + i);
            Ok(())
        })
        .expect("timing");
        done += n;
    }
    total
}

fn bench(c: &mut Criterion, dev: Device, id: &str, mut f: impl FnMut(usize)) {
    let mut calls = 0usize;
    c.bench_function(id, |b| {
        b.iter_custom(|iters| {
            let secs = gpu_secs(dev, iters as usize, calls, &mut f);
            calls += iters as usize;
            record(id, secs / iters as f64);
            Duration::from_secs_f64(secs)
        })
    });
}

/// `count` buffers built by `make`, enough that `count * bytes >= ROTATE_BYTES`.
fn rotation<T>(bytes: usize, mut make: impl FnMut() -> T) -> Vec<T> {
    let count = ROTATE_BYTES.div_ceil(bytes.max(1)).clamp(2, 64);
    (0..count).map(|_| make()).collect()
}

fn bf16_weight(n: usize, k: usize, dev: Device) -> Tensor {
    (Tensor::randn([n as i64, k as i64], (Kind::Float, dev)) * 0.02).to_kind(Kind::BFloat16)
}

fn nvfp4_weight(n: usize, k: usize, dev: Device) -> Nvfp4Tensor {
    cuda::quantize(&bf16_weight(n, k, dev), ScaleMode::Single).expect("quantize")
}

fn key(n: usize, k: usize, what: &str) -> String {
    format!("[{n},{k}] {what}")
}

/// Device-to-device copy of 1 GiB: the bandwidth ceiling (read + write bytes).
fn copy_bandwidth(c: &mut Criterion, dev: Device) -> f64 {
    let src = Tensor::randn([256 << 20], (Kind::Float, dev));
    let mut dst = src.zeros_like();
    bench(c, dev, "copy 1 GiB d2d", |_| dst.copy_(&src));
    2.0 * (1u64 << 30) as f64 / median("copy 1 GiB d2d").unwrap()
}

fn bench_decode(c: &mut Criterion, dev: Device, n: usize, k: usize, m: usize) {
    let w4 = rotation(n * k * 9 / 16, || nvfp4_weight(n, k, dev));
    let w16 = rotation(n * k * 2, || bf16_weight(n, k, dev));
    let x = Tensor::randn([m as i64, k as i64], (Kind::BFloat16, dev));
    let opts = cuda::LinearOptions::default();
    bench(c, dev, &key(n, k, &format!("M={m} nvfp4")), |i| {
        let _ = cuda::linear(&x, &w4[i % w4.len()], &opts).expect("linear");
    });
    bench(c, dev, &key(n, k, &format!("M={m} bf16")), |i| {
        let _ = x.matmul(&w16[i % w16.len()].tr());
    });
}

fn bench_prefill(c: &mut Criterion, dev: Device, n: usize, k: usize, m: usize) {
    let w4: Vec<_> = (0..2).map(|_| nvfp4_weight(n, k, dev)).collect();
    let w16: Vec<_> = (0..2).map(|_| bf16_weight(n, k, dev)).collect();
    let x = Tensor::randn([m as i64, k as i64], (Kind::BFloat16, dev));
    let opts = cuda::LinearOptions::default();
    bench(c, dev, &key(n, k, &format!("M={m} nvfp4")), |i| {
        let _ = cuda::linear(&x, &w4[i % 2], &opts).expect("linear");
    });
    bench(c, dev, &key(n, k, &format!("M={m} bf16")), |i| {
        let _ = x.matmul(&w16[i % 2].tr());
    });
}

fn bench_weight_passes(c: &mut Criterion, dev: Device, n: usize, k: usize) {
    let masters = rotation(n * k * 4, || {
        Tensor::randn([n as i64, k as i64], (Kind::Float, dev)) * 0.02
    });
    bench(c, dev, &key(n, k, "ste f32->bf16"), |i| {
        let _ = cuda::fake_quantize(
            &masters[i % masters.len()],
            ScaleMode::Single,
            Kind::BFloat16,
        )
        .expect("ste");
    });
    if n * k <= 9728 * 2560 {
        bench(c, dev, &key(n, k, "ste f32->bf16 tch-ops"), |i| {
            let fq = f_fake_quantize(&masters[i % masters.len()], ScaleMode::Single).expect("fq");
            let _ = fq.to_kind(Kind::BFloat16);
        });
    }
    drop(masters);
    let w16 = rotation(n * k * 2, || bf16_weight(n, k, dev));
    bench(c, dev, &key(n, k, "ste bf16->bf16"), |i| {
        let _ = cuda::fake_quantize(&w16[i % w16.len()], ScaleMode::Single, Kind::BFloat16)
            .expect("ste");
    });
    bench(c, dev, &key(n, k, "quantize bf16"), |i| {
        let _ = cuda::quantize_trusted(&w16[i % w16.len()]).expect("quantize");
    });
    drop(w16);
    let w4 = rotation(n * k * 9 / 16, || nvfp4_weight(n, k, dev));
    bench(c, dev, &key(n, k, "dequantize bf16"), |i| {
        let _ = cuda::dequantize(&w4[i % w4.len()], Kind::BFloat16).expect("dequantize");
    });
}

/// Sweeps the fused kernel's block shapes and prints one line per config.
fn tune(dev: Device, out: &mut String) {
    let configs = [
        (1, 4, 1),
        (1, 4, 2),
        (1, 8, 1),
        (1, 8, 2),
        (1, 16, 1),
        (1, 16, 2),
        (2, 4, 1),
        (2, 8, 2),
    ];
    let _ = writeln!(
        out,
        "\n## Tuning sweep (GPU us per call; auto = GemvConfig::auto)\n"
    );
    for m in [1usize, 16] {
        for (n, k) in SHAPES {
            let w4 = rotation(n * k * 9 / 16, || nvfp4_weight(n, k, dev));
            let x = Tensor::randn([m as i64, k as i64], (Kind::BFloat16, dev));
            let y = Tensor::empty([m as i64, n as i64], (Kind::BFloat16, dev));
            let mut line = format!("M={m:<2} [{n},{k}]:");
            let auto = cuda::GemvConfig::auto(n, k, 132);
            for (rt, kw, d) in
                configs
                    .iter()
                    .copied()
                    .chain([(auto.row_tiles, auto.k_warps, auto.depth)])
            {
                let cfg = cuda::GemvConfig {
                    row_tiles: rt,
                    k_warps: kw,
                    depth: d,
                };
                let mut f =
                    |i: usize| cuda::gemv_out(&x, &w4[i % w4.len()], &y, Some(cfg)).expect("gemv");
                gpu_secs(dev, 20, 0, &mut f);
                let t = (0..3)
                    .map(|r| gpu_secs(dev, 200, r * 200, &mut f) / 200.0)
                    .fold(f64::MAX, f64::min);
                let _ = write!(line, " {rt}x{kw}d{d}={:.1}", t * 1e6);
            }
            let _ = writeln!(
                out,
                "{line}  (auto {}x{}d{})",
                auto.row_tiles, auto.k_warps, auto.depth
            );
        }
    }
    // One point of the chunked dequantize path (slower on every shape measured; kept for memory).
    let (n, k) = BIG[0];
    let w4 = nvfp4_weight(n, k, dev);
    let x = Tensor::randn([2048, k as i64], (Kind::BFloat16, dev));
    let mut line = format!("M=2048 [{n},{k}] dequant chunk elems:");
    for chunk in [0usize, 16 << 20] {
        let opts = cuda::LinearOptions {
            chunk_elems: chunk,
            ..Default::default()
        };
        let mut f = |_: usize| {
            let _ = cuda::linear(&x, &w4, &opts).expect("linear");
        };
        gpu_secs(dev, 3, 0, &mut f);
        let t = gpu_secs(dev, 10, 0, &mut f) / 10.0;
        let _ = write!(line, " {}M={:.1}us", chunk >> 20, t * 1e6);
    }
    let _ = writeln!(out, "{line}");
}

fn table(copy_bw: f64, device: &str) -> String {
    let mut t = String::new();
    let us = |id: &str| median(id).map(|s| s * 1e6);
    let _ = writeln!(
        t,
        "\n## NVFP4 kernels on {device}: GPU time per call, median of criterion samples\n"
    );
    let _ = writeln!(
        t,
        "Copy bandwidth (d2d, read+write): {:.0} GB/s\n",
        copy_bw / 1e9
    );
    let _ = writeln!(
        t,
        "| shape [N,K] | op | nvfp4 us | bf16 us | ratio | weight GB/s | % copy BW |"
    );
    let _ = writeln!(t, "|---|---|---:|---:|---:|---:|---:|");
    for (n, k) in SHAPES {
        let wbytes = (n * k * 9 / 16) as f64;
        for m in [1usize, 16, 2048, 8192] {
            let (Some(a), Some(b)) = (
                us(&key(n, k, &format!("M={m} nvfp4"))),
                us(&key(n, k, &format!("M={m} bf16"))),
            ) else {
                continue;
            };
            let bw = wbytes / (a * 1e-6);
            let _ = writeln!(
                t,
                "| [{n},{k}] | linear M={m} | {a:.1} | {b:.1} | {:.2} | {:.0} | {:.0}% |",
                a / b,
                bw / 1e9,
                100.0 * bw / copy_bw
            );
        }
        let nk = (n * k) as f64;
        for (op, bytes, base) in [
            ("ste f32->bf16", 6.0 * nk, Some("ste f32->bf16 tch-ops")),
            ("ste bf16->bf16", 4.0 * nk, None),
            ("quantize bf16", 2.5625 * nk, None),
            ("dequantize bf16", 2.5625 * nk, None),
        ] {
            let Some(a) = us(&key(n, k, op)) else {
                continue;
            };
            let base_us = base.and_then(|b| us(&key(n, k, b)));
            let bw = bytes / (a * 1e-6);
            let (b_txt, r_txt) = match base_us {
                Some(b) => (format!("{b:.1} (tch ops)"), format!("{:.2}", a / b)),
                None => ("-".into(), "-".into()),
            };
            let _ = writeln!(
                t,
                "| [{n},{k}] | {op} | {a:.1} | {b_txt} | {r_txt} | {:.0} (all bytes) | {:.0}% |",
                bw / 1e9,
                100.0 * bw / copy_bw
            );
        }
    }
    t
}

fn main() {
    if !tch::Cuda::is_available() {
        println!("SKIPPED (no CUDA): nvfp4_gpu bench");
        return;
    }
    let dev = Device::Cuda(0);
    let report = nvfp4_kernels::diagnose();
    println!("{report}");
    let device = report
        .lines()
        .find(|l| l.starts_with("cuda:0:"))
        .unwrap_or("cuda:0")
        .to_string();
    tch::manual_seed(std::process::id() as i64);
    let mut extra = String::new();
    if std::env::var("NVFP4_BENCH_TUNE").is_ok_and(|v| v == "1") {
        tune(dev, &mut extra);
        println!("{extra}");
    }
    let mut c = Criterion::default()
        .configure_from_args()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(50))
        .measurement_time(Duration::from_millis(150));
    let copy_bw = copy_bandwidth(&mut c, dev);
    let only = std::env::var("NVFP4_BENCH_ONLY").unwrap_or_default();
    for (n, k) in SHAPES {
        if !only.is_empty() && !only.split(',').any(|s| s == format!("{n}x{k}")) {
            continue;
        }
        for m in [1, 16] {
            bench_decode(&mut c, dev, n, k, m);
        }
        for m in [2048, 8192] {
            bench_prefill(&mut c, dev, n, k, m);
        }
        bench_weight_passes(&mut c, dev, n, k);
    }
    c.final_summary();
    let t = format!("{extra}{}", table(copy_bw, &device));
    println!("{t}");
    if let Ok(path) = std::env::var("NVFP4_BENCH_TABLE") {
        if let Err(e) = std::fs::write(&path, &t) {
            eprintln!("could not write {path}: {e}");
        }
    }
}
