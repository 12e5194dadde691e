//! Loading a Qwen3-4B-sized `.dat` (shapes of docs/Formats.md, "Qwen3 weights": 36 layers, hidden
//! 2560, NVFP4 projections, bf16 embeddings and norms, tied lm_head; about
//! 2.8 GB of random bytes) must be bound by memory/disk/PCIe, not by parsing.
//!
//! - `cpu/open_index`: mmap + one pass over all headers (FR-10).
//! - `cpu/load_all`: open + every entry as a CPU tensor (one copy each, FR-09).
//! - `cpu/baseline_copy`: open + every payload copied into a fresh `Vec<u8>`:
//!   the same bytes moved without tch, the floor `load_all` is compared to.
//! - `cuda/load_all`, `cuda/baseline_one_copy` (one H2D copy of the whole
//!   mapping as a single tensor) when CUDA is available.
//!
//! The file is generated once per run in a temporary directory (`TMPDIR`,
//! or `DAT_BENCH_DIR` to put it on the disk you want measured) and is in the
//! page cache afterwards, so `load_all` measures the warm path.
//! `DAT_BENCH_LAYERS` (default 36) shrinks the model for a quick try.
//!
//! Run: `cargo bench --bench dat_load`.

use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{black_box, criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use dat_format::{DatFile, DatWriter, ElemType};
use tch::{Device, Tensor};

const HIDDEN: usize = 2560;
const INTERMEDIATE: usize = 9728;
const VOCAB: usize = 151_936;
const Q_OUT: usize = 32 * 128;
const KV_OUT: usize = 8 * 128;
const HEAD_DIM: usize = 128;

/// One entry of the generated file: key, elem type, shape.
type Spec = (String, ElemType, Vec<usize>);

fn layer_specs(i: usize) -> Vec<Spec> {
    let p = format!("model.layers.{i}");
    let mut specs = vec![(
        format!("{p}.input_layernorm.weight"),
        ElemType::BF16,
        vec![HIDDEN],
    )];
    let projections = [
        ("self_attn.q_proj", Q_OUT, HIDDEN),
        ("self_attn.k_proj", KV_OUT, HIDDEN),
        ("self_attn.v_proj", KV_OUT, HIDDEN),
        ("self_attn.o_proj", HIDDEN, Q_OUT),
        ("mlp.gate_proj", INTERMEDIATE, HIDDEN),
        ("mlp.up_proj", INTERMEDIATE, HIDDEN),
        ("mlp.down_proj", HIDDEN, INTERMEDIATE),
    ];
    for (name, out, inp) in projections {
        specs.push((
            format!("{p}.{name}.weight.qdata"),
            ElemType::U8,
            vec![out, inp / 2],
        ));
        specs.push((
            format!("{p}.{name}.weight.scale"),
            ElemType::F8E4M3,
            vec![out, inp / 16],
        ));
    }
    for norm in ["self_attn.q_norm", "self_attn.k_norm"] {
        specs.push((format!("{p}.{norm}.weight"), ElemType::BF16, vec![HEAD_DIM]));
    }
    specs.push((
        format!("{p}.post_attention_layernorm.weight"),
        ElemType::BF16,
        vec![HIDDEN],
    ));
    specs
}

fn model_specs(layers: usize) -> Vec<Spec> {
    let mut specs = vec![(
        "model.embed_tokens.weight".to_owned(),
        ElemType::BF16,
        vec![VOCAB, HIDDEN],
    )];
    specs.extend((0..layers).flat_map(layer_specs));
    specs.push(("model.norm.weight".to_owned(), ElemType::BF16, vec![HIDDEN]));
    specs
}

/// xorshift64*: random bytes at memory speed (the content does not matter).
fn fill_random(buf: &mut [u8], state: &mut u64) {
    for chunk in buf.chunks_mut(8) {
        *state ^= *state >> 12;
        *state ^= *state << 25;
        *state ^= *state >> 27;
        let word = state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
        chunk.copy_from_slice(&word[..chunk.len()]);
    }
}

fn generate(path: &Path, layers: usize) {
    let specs = model_specs(layers);
    let start = Instant::now();
    let mut writer = DatWriter::create(path, specs.len()).expect("create bench file");
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut buf = Vec::new();
    for (key, elem, shape) in &specs {
        buf.resize(shape.iter().product::<usize>() * elem.size(), 0);
        fill_random(&mut buf, &mut state);
        writer
            .write_raw(key, *elem, shape, &buf)
            .expect("write bench entry");
    }
    writer.finish().expect("finish bench file");
    let len = std::fs::metadata(path).expect("bench file").len();
    eprintln!(
        "generated {} ({:.2} GB, {layers} layers) in {:.1} s",
        path.display(),
        len as f64 / 1e9,
        start.elapsed().as_secs_f64()
    );
}

fn load_all(path: &Path, device: Device) -> Vec<Tensor> {
    let dat = DatFile::open(path).expect("open");
    dat.entries()
        .iter()
        .map(|e| dat.entry_tensor(e, device).expect("load"))
        .collect()
}

fn bench_cpu(c: &mut Criterion, path: &Path, file_len: u64) {
    let mut g = c.benchmark_group("cpu");
    g.sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .measurement_time(Duration::from_secs(20));
    g.throughput(Throughput::Bytes(file_len));
    g.bench_function("open_index", |b| {
        b.iter(|| DatFile::open(black_box(path)).expect("open"))
    });
    g.bench_function("baseline_copy", |b| {
        b.iter_with_large_drop(|| {
            let dat = DatFile::open(path).expect("open");
            dat.entries()
                .iter()
                .map(|e| dat.bytes(e).to_vec())
                .collect::<Vec<_>>()
        })
    });
    g.bench_function("load_all", |b| {
        b.iter_with_large_drop(|| load_all(path, Device::Cpu))
    });
    g.finish();
}

fn bench_cuda(c: &mut Criterion, path: &Path, file_len: u64) {
    if !tch::Cuda::is_available() {
        eprintln!("SKIPPED (no CUDA): cuda/load_all, cuda/baseline_one_copy");
        return;
    }
    let device = Device::Cuda(0);
    let mut g = c.benchmark_group("cuda");
    g.sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .measurement_time(Duration::from_secs(20));
    g.throughput(Throughput::Bytes(file_len));
    g.bench_function("baseline_one_copy", |b| {
        let host = Tensor::from_slice(&std::fs::read(path).expect("read bench file"));
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                drop(black_box(host.to_device(device)));
            }
            tch::Cuda::synchronize(0);
            start.elapsed()
        })
    });
    g.bench_function("load_all", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let start = Instant::now();
                let tensors = load_all(path, device);
                tch::Cuda::synchronize(0);
                total += start.elapsed();
                drop(tensors); // freeing device memory is not part of loading
            }
            total
        })
    });
    g.finish();
}

fn benches(c: &mut Criterion) {
    let layers = std::env::var("DAT_BENCH_LAYERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(36);
    let base = std::env::var_os("DAT_BENCH_DIR")
        .map(Into::into)
        .unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::tempdir_in(base).expect("temporary directory");
    let path = dir.path().join("qwen3-4b-random.dat");
    generate(&path, layers);
    let file_len = std::fs::metadata(&path).expect("bench file").len();
    bench_cpu(c, &path, file_len);
    bench_cuda(c, &path, file_len);
}

criterion_group!(dat_load, benches);
criterion_main!(dat_load);
