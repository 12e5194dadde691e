//! The decode-step kernels (`kernels/decode.cu`) against f64 references on
//! fresh random inputs, plus CUDA-graph recording and replay. Every test is
//! `#[ignore = "needs CUDA"]`: run with `--include-ignored` on a GPU machine.

mod gpu_common;

use nvfp4_kernels::cuda::{self, AttnScratch, HeadLayout, KernelStream, QkvIo};
use tch::{Device, Kind, Tensor};

/// bf16 unit roundoff: every kernel output is rounded to bf16 once.
const U: f64 = 1.0 / 256.0;

fn f64_of(t: &Tensor) -> Tensor {
    t.to_kind(Kind::Double)
}

/// max |got - want| / max |want|.
fn rel(got: &Tensor, want: &Tensor) -> f64 {
    let d = (f64_of(got) - want).abs().max().double_value(&[]);
    d / want.abs().max().double_value(&[])
}

fn meta(token: i32, pos: i32, dev: Device) -> Tensor {
    Tensor::from_slice(&[token, pos]).to_device(dev)
}

fn bf16_randn(shape: &[i64], dev: Device) -> Tensor {
    Tensor::randn(shape, (Kind::Float, dev)).to_kind(Kind::BFloat16)
}

/// f64 attention of one query per head over rows 0..=pos, q head h reading kv head h / group.
fn attention_ref(q: &Tensor, kc: &Tensor, vc: &Tensor, l: &HeadLayout, pos: i64) -> Tensor {
    let (hq, hkv, d) = (l.q_heads as i64, l.kv_heads as i64, l.head_dim as i64);
    let q = f64_of(q).view([hkv, hq / hkv, d]); // [Hkv, G, D]
    let k = f64_of(kc).view([hkv, -1, d]).narrow(1, 0, pos + 1); // [Hkv, L, D]
    let v = f64_of(vc).view([hkv, -1, d]).narrow(1, 0, pos + 1);
    let scores = q.matmul(&k.transpose(1, 2)) / (d as f64).sqrt(); // [Hkv, G, L]
    scores.softmax(-1, Kind::Double).matmul(&v).view([hq * d])
}

#[test]
#[ignore = "needs CUDA"]
fn split_attention_matches_f64_softmax_at_every_length() {
    let dev = test_support::cuda();
    tch::manual_seed(test_support::seed_i64());
    let s = KernelStream::eager(dev).unwrap();
    for (d, hq, hkv) in [
        (128usize, 32usize, 8usize),
        (64, 8, 8),
        (32, 6, 2),
        (256, 4, 1),
    ] {
        let layout = HeadLayout {
            q_heads: hq,
            kv_heads: hkv,
            head_dim: d,
            capacity: 3001,
        };
        let kc = bf16_randn(&[hkv as i64, 3001, d as i64], dev);
        let vc = bf16_randn(&[hkv as i64, 3001, d as i64], dev);
        let scratch = AttnScratch::new(&layout, cuda::sm_count(dev).unwrap(), dev).unwrap();
        // One key, fewer keys than splits, unroll tails, every row.
        for pos in [0i64, 3, 66, 1001, 3000] {
            let q = (bf16_randn(&[(hq * d) as i64], dev).to_kind(Kind::Float) * 3.0)
                .to_kind(Kind::BFloat16);
            let out = Tensor::full([(hq * d) as i64], f64::NAN, (Kind::BFloat16, dev));
            let m = meta(0, pos as i32, dev);
            cuda::attention(&s, &layout, &q, (&kc, &vc), &m, &scratch, &out).unwrap();
            let r = rel(&out, &attention_ref(&q, &kc, &vc, &layout, pos));
            println!("D {d}, {hq}/{hkv} heads, pos {pos}: rel err {r:.2e}");
            // Output rounding plus f32 softmax/accumulation noise.
            assert!(r <= 2.0 * U, "rel err {r:e}");
        }
    }
}

#[test]
#[ignore = "needs CUDA"]
fn rmsnorm_adds_the_residual_in_bf16_then_normalises() {
    let dev = test_support::cuda();
    tch::manual_seed(test_support::seed_i64());
    let s = KernelStream::eager(dev).unwrap();
    for n in [2560i64, 1000, 8192] {
        let resid = bf16_randn(&[n], dev);
        let delta = bf16_randn(&[n], dev);
        let w = Tensor::rand([n], (Kind::Float, dev)) + 0.5;
        let want_resid = &resid + &delta; // libtorch's bf16 add
        let x = f64_of(&want_resid);
        let want = &x / (x.square().mean(Kind::Double) + 1e-6).sqrt() * f64_of(&w);
        let out = Tensor::full([n], f64::NAN, (Kind::BFloat16, dev));
        let r = resid.copy();
        cuda::rmsnorm(&s, &r, Some(&delta), &w, &out, 1e-6).unwrap();
        let same = (f64_of(&r) - f64_of(&want_resid))
            .abs()
            .max()
            .double_value(&[]);
        assert_eq!(same, 0.0, "n {n}: residual differs from bf16 x + h");
        let e = rel(&out, &want);
        println!("n {n}: rel err {e:.2e}");
        assert!(e <= 1.5 * U, "n {n}: {e:e}");
        // Without delta the residual is left as is.
        cuda::rmsnorm(&s, &r, None, &w, &out, 1e-6).unwrap();
        assert!(rel(&out, &want) <= 1.5 * U);
        assert_eq!(
            (f64_of(&r) - f64_of(&want_resid))
                .abs()
                .max()
                .double_value(&[]),
            0.0
        );
    }
    let too_long = Tensor::zeros([cuda::RMSNORM_MAX as i64 + 1], (Kind::BFloat16, dev));
    let w = Tensor::ones([cuda::RMSNORM_MAX as i64 + 1], (Kind::Float, dev));
    assert!(cuda::rmsnorm(&s, &too_long, None, &w, &too_long, 1e-6).is_err());
}

#[test]
#[ignore = "needs CUDA"]
fn qk_norm_rope_writes_rotated_queries_and_the_cache_row() {
    let dev = test_support::cuda();
    tch::manual_seed(test_support::seed_i64());
    let s = KernelStream::eager(dev).unwrap();
    let (hq, hkv, d, cap, pos) = (8i64, 2i64, 128i64, 40i64, 37i64);
    let layout = HeadLayout {
        q_heads: hq as usize,
        kv_heads: hkv as usize,
        head_dim: d as usize,
        capacity: cap as usize,
    };
    let (q, k, v) = (
        bf16_randn(&[hq * d], dev),
        bf16_randn(&[hkv * d], dev),
        bf16_randn(&[hkv * d], dev),
    );
    let qw = Tensor::rand([d], (Kind::Float, dev)) + 0.5;
    let kw = Tensor::rand([d], (Kind::Float, dev)) + 0.5;
    let exps = Tensor::arange_start_step(0, d, 2, (Kind::Float, dev)) / d as f64;
    let inv_freq = Tensor::pow_scalar(1e6, &exps).reciprocal();
    let q_out = Tensor::full([hq * d], f64::NAN, (Kind::BFloat16, dev));
    let kc = Tensor::zeros([hkv, cap, d], (Kind::BFloat16, dev));
    let vc = Tensor::zeros([hkv, cap, d], (Kind::BFloat16, dev));
    let io = QkvIo {
        q: &q,
        k: &k,
        v: &v,
        q_out: &q_out,
        k_cache: &kc,
        v_cache: &vc,
    };
    let m = meta(0, pos as i32, dev);
    cuda::qk_norm_rope_append(&s, &layout, &io, &qw, &kw, &inv_freq, &m, 1e-6).unwrap();
    // f64 reference: per-head RMSNorm, then rotate pairs (i, i + D/2).
    let reference = |x: &Tensor, w: &Tensor, heads: i64| {
        let x = f64_of(x).view([heads, d]);
        let x = &x / (x.square().mean_dim(-1, true, Kind::Double) + 1e-6).sqrt() * f64_of(w);
        let ang = f64_of(&inv_freq) * pos as f64;
        let (c, s) = (ang.cos(), ang.sin());
        let (x1, x2) = (x.narrow(1, 0, d / 2), x.narrow(1, d / 2, d / 2));
        Tensor::cat(&[&x1 * &c - &x2 * &s, &x2 * &c + &x1 * &s], 1).view([-1])
    };
    let eq = rel(&q_out, &reference(&q, &qw, hq));
    let ek = rel(
        &kc.narrow(1, pos, 1).reshape([-1]),
        &reference(&k, &kw, hkv),
    );
    println!("q rel err {eq:.2e}, k rel err {ek:.2e}");
    assert!(eq <= 1.5 * U && ek <= 1.5 * U, "q {eq:e}, k {ek:e}");
    let got_v = vc.narrow(1, pos, 1).reshape([-1]);
    assert_eq!(
        (f64_of(&got_v) - f64_of(&v)).abs().max().double_value(&[]),
        0.0
    );
    // Only row `pos` was written.
    let others = kc.narrow(1, 0, pos).abs().max().double_value(&[]);
    assert_eq!(others, 0.0, "rows before pos were touched");
}

#[test]
#[ignore = "needs CUDA"]
fn silu_mul_rounds_like_the_bf16_reference() {
    let dev = test_support::cuda();
    tch::manual_seed(test_support::seed_i64());
    let s = KernelStream::eager(dev).unwrap();
    let (g, u) = (bf16_randn(&[9728], dev), bf16_randn(&[9728], dev));
    let out = Tensor::full([9728], f64::NAN, (Kind::BFloat16, dev));
    cuda::silu_mul(&s, &g, &u, &out).unwrap();
    let want = g.silu() * &u; // bf16 ops, as the MLP
    let e = rel(&out, &f64_of(&want));
    println!("silu_mul rel diff to bf16 ops {e:.2e}");
    assert!(e <= U, "{e:e}");
}

#[test]
#[ignore = "needs CUDA"]
fn a_recorded_graph_replays_with_new_inputs_from_device_memory() {
    let dev = test_support::cuda();
    tch::manual_seed(test_support::seed_i64());
    let table = bf16_randn(&[50, 256], dev);
    let mut m = meta(3, 0, dev);
    let row = Tensor::zeros([256], (Kind::BFloat16, dev));
    let normed = Tensor::zeros([256], (Kind::BFloat16, dev));
    let w = Tensor::ones([256], (Kind::Float, dev));
    let eager = KernelStream::eager(dev).unwrap();
    cuda::embed_row(&eager, &table, &m, &row).unwrap(); // loads the module first
    let graph = cuda::capture_graph(dev, |s| {
        cuda::embed_row(s, &table, &m, &row)?;
        cuda::rmsnorm(s, &row, None, &w, &normed, 1e-6)
    })
    .unwrap();
    assert_eq!(graph.nodes(), 2);
    for token in [7i32, 42, 0] {
        m.copy_(&Tensor::from_slice(&[token, 0]));
        graph.replay().unwrap();
        let want = table.get(token as i64);
        assert_eq!(
            (f64_of(&row) - f64_of(&want)).abs().max().double_value(&[]),
            0.0
        );
        let x = f64_of(&want);
        let normed_ref = &x / (x.square().mean(Kind::Double) + 1e-6).sqrt();
        assert!(rel(&normed, &normed_ref) <= 1.5 * U);
    }
    // An error inside the recording ends it and comes back unchanged.
    let short = Tensor::zeros([7], (Kind::BFloat16, dev));
    let err = cuda::capture_graph(dev, |s| cuda::embed_row(s, &table, &m, &short)).unwrap_err();
    assert!(err.to_string().contains("table"), "{err}");
}
