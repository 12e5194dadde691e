//! On CUDA: the fused AdamW kernel against the tch-op reference AdamW, for
//! every moment precision and f32 / bf16 master weights, over several steps
//! of fresh random gradients (seed printed).
//!
//! Before each step the reference optimizer is given the fused one's weights
//! and state (`restore`), so each step is compared from identical inputs.
//! Tolerances per element, with `scale` the sum of the magnitudes of the
//! terms that make the value (|p| + lr/bc1 * (b1|m| + (1-b1)|g|) / denom for
//! the weight, b1|m| + (1-b1)|g| for m, v itself for v):
//! * f32 storage: `2e-6 * scale`: each path is within about 12 f32
//!   roundings (7e-7 * scale) of the exact value, in different orders;
//! * bf16 storage: one bf16 ulp (both round an f32 value to nearest, and two
//!   f32 values a few ulps apart can straddle a rounding midpoint) plus
//!   `2e-6 * scale`, and at least 99 % of the values bit-identical;
//! * 8-bit moments: codes equal or one step apart, at least 99 % equal;
//!   block absmax within `2e-6` of the block's largest scale.
//!
//! The CUDA test is `#[ignore = "needs CUDA"]` (run with `--include-ignored`).

mod common;

use std::collections::HashMap;

use tch::{Device, Kind, Tensor};
use trainer::{default_decay, AdamW, AdamWConfig, OptimStateKind, QuantMap, QUANT_BLOCK};

/// Odd sizes (none a multiple of the 256-element block); names pick decay
/// (projections and lm_head decay, norms do not).
const PARAMS: [(&str, &[i64]); 4] = [
    ("model.layers.0.mlp.up_proj.weight", &[300, 77]),
    ("model.layers.0.self_attn.q_proj.weight", &[4095]),
    ("model.norm.weight", &[1000]),
    ("lm_head.weight", &[1]),
];
const STEPS: i32 = 4;
const LR: f64 = 1e-2;
const F32_TOL: f64 = 2e-6;

fn f64s(t: &Tensor) -> Tensor {
    t.to_kind(Kind::Double).reshape([-1])
}

/// One slot's moments before a step, as f64 (dequantized for 8-bit state).
struct Moments {
    m: Tensor,
    v: Tensor,
}

fn moments(
    state: &HashMap<String, Tensor>,
    name: &str,
    shape: &[i64],
    maps: &(QuantMap, QuantMap),
) -> Moments {
    let get = |k: String| state.get(&k).unwrap_or_else(|| panic!("no {k}"));
    let m = format!("optim.{name}.m");
    let v = format!("optim.{name}.v");
    match state.get(&m) {
        Some(t) => Moments {
            m: f64s(t),
            v: f64s(get(v)),
        },
        None => {
            let deq = |map: &QuantMap, p: &str| {
                map.dequantize(get(format!("{p}.codes")), get(format!("{p}.absmax")), shape)
            };
            Moments {
                m: f64s(&deq(&maps.0, &m)),
                v: f64s(&deq(&maps.1, &v).square()),
            }
        }
    }
}

/// Per-element scales of the weight, m and v for one step (module doc).
struct Scales {
    p: Tensor,
    m: Tensor,
    v: Tensor,
}

fn scales(p0: &Tensor, g: &Tensor, mo: &Moments, cfg: &AdamWConfig, t: i32) -> Scales {
    let (b1, b2) = (cfg.beta1, cfg.beta2);
    let bc1 = 1.0 - b1.powi(t);
    let bc2 = 1.0 - b2.powi(t);
    let m = mo.m.abs() * b1 + g.abs() * (1.0 - b1);
    let v = &mo.v * b2 + g.square() * (1.0 - b2);
    let denom = v.sqrt() / bc2.sqrt() + cfg.eps;
    let p = p0.abs() + &m / denom * (LR / bc1);
    Scales { p, m, v }
}

/// Largest |a - b| / tolerance, and the fraction of bit-identical values.
fn compare(a: &Tensor, b: &Tensor, scale: &Tensor) -> (f64, f64) {
    let (a64, b64) = (f64s(a), f64s(b));
    let mut tol = scale * F32_TOL;
    if a.kind() == Kind::BFloat16 {
        // One bf16 ulp of the larger: 2^(floor(log2 |x|) - 7).
        let mag = a64.abs().maximum(&b64.abs());
        tol += (mag.log2().floor() - 7.0).exp2();
    }
    let tol = tol.clamp_min(f64::MIN_POSITIVE);
    let ratio = ((&a64 - &b64).abs() / tol).max().double_value(&[]);
    let same = a64
        .eq_tensor(&b64)
        .to_kind(Kind::Double)
        .mean(Kind::Double)
        .double_value(&[]);
    (ratio, same)
}

fn block_max(x: &Tensor) -> Tensor {
    let n = x.numel();
    let blocks = n.div_ceil(QUANT_BLOCK).max(1);
    x.reshape([-1])
        .constant_pad_nd([0, (blocks * QUANT_BLOCK - n) as i64])
        .reshape([blocks as i64, QUANT_BLOCK as i64])
        .amax([1], false)
}

/// Compares the states after a step; returns the worst ratio and the
/// smallest fraction of identical values / codes.
fn compare_state(
    what: &str,
    fused: &HashMap<String, Tensor>,
    reference: &HashMap<String, Tensor>,
    name: &str,
    sc: &Scales,
) -> (f64, f64) {
    let (mut worst, mut same) = (0f64, 1f64);
    for (moment, scale) in [("m", &sc.m), ("v", &sc.v)] {
        let key = format!("optim.{name}.{moment}");
        if let (Some(a), Some(b)) = (fused.get(&key), reference.get(&key)) {
            let (r, s) = compare(a, b, scale);
            assert!(r <= 1.0, "{key}, {what}: error {r:.3} x tolerance");
            let bf16 = a.kind() == Kind::BFloat16;
            assert!(!bf16 || s >= 0.99, "{key}, {what}: only {s:.4} identical");
            (worst, same) = (worst.max(r), same.min(s));
            continue;
        }
        let codes = format!("{key}.codes");
        let (a, b) = (&fused[&codes], &reference[&codes]);
        let d = (a.to_kind(Kind::Int16) - b.to_kind(Kind::Int16)).abs();
        let dist = d.max().int64_value(&[]);
        let s = d
            .eq(0)
            .to_kind(Kind::Double)
            .mean(Kind::Double)
            .double_value(&[]);
        assert!(dist <= 1, "{codes}, {what}: a code is {dist} steps off");
        assert!(s >= 0.99, "{codes}, {what}: only {s:.4} equal");
        // absmax is the block max of |m| or sqrt(v).
        let amax = format!("{key}.absmax");
        let block_scale = if moment == "m" {
            block_max(scale)
        } else {
            block_max(&scale.sqrt())
        };
        let (r, _) = compare(&fused[&amax], &reference[&amax], &block_scale);
        assert!(r <= 1.0, "{amax}, {what}: error {r:.3} x tolerance");
        (worst, same) = (worst.max(r), same.min(s));
    }
    (worst, same)
}

fn snapshot(opt: &AdamW) -> HashMap<String, Tensor> {
    opt.state_tensors()
        .into_iter()
        .map(|(n, t)| (n, t.copy()))
        .collect()
}

fn new_opt(params: &[Tensor], cfg: AdamWConfig) -> AdamW {
    let named = PARAMS
        .iter()
        .zip(params)
        .map(|((n, _), p)| (n.to_string(), p.shallow_clone()))
        .collect();
    AdamW::new(named, cfg, default_decay).unwrap()
}

fn run(dev: Device, state: OptimStateKind, master: Kind) {
    let what = format!("state {state:?}, master {master:?}");
    let cfg = AdamWConfig {
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.1,
        state,
    };
    let init: Vec<Tensor> = PARAMS
        .iter()
        .map(|(_, s)| Tensor::randn(*s, (Kind::Float, dev)).to_kind(master))
        .collect();
    let fused_p: Vec<Tensor> = init
        .iter()
        .map(|t| t.copy().set_requires_grad(true))
        .collect();
    let ref_p: Vec<Tensor> = init
        .iter()
        .map(|t| t.copy().set_requires_grad(true))
        .collect();
    let mut fused = new_opt(&fused_p, cfg);
    let mut reference = new_opt(&ref_p, cfg);
    reference.use_reference_path();
    assert!(
        fused.is_fused(),
        "{what}: the fused kernel must run on CUDA: {:?}",
        nvfp4_kernels::cuda::check_available(dev)
    );
    assert!(!reference.is_fused());
    let maps = (QuantMap::new(true, dev), QuantMap::new(false, dev));
    let (mut worst, mut same) = (0f64, 1f64);
    for t in 1..=STEPS {
        // Identical inputs: the reference takes the fused weights and state.
        tch::no_grad(|| {
            for (r, f) in ref_p.iter().zip(&fused_p) {
                r.shallow_clone().copy_(f);
            }
        });
        let before = snapshot(&fused);
        reference
            .restore(fused.steps_taken(), &mut |n| {
                before.get(n).map(Tensor::copy)
            })
            .unwrap();
        let grads: Vec<Tensor> = PARAMS
            .iter()
            .map(|(_, s)| {
                (Tensor::randn(*s, (Kind::Float, dev))
                    * Tensor::randn(*s, (Kind::Float, dev)).exp())
                .to_kind(master)
            })
            .collect();
        let mut sc = Vec::new();
        for (k, (name, shape)) in PARAMS.iter().enumerate() {
            let mo = moments(&before, name, shape, &maps);
            sc.push(scales(&f64s(&fused_p[k]), &f64s(&grads[k]), &mo, &cfg, t));
            for p in [&fused_p[k], &ref_p[k]] {
                (p * &grads[k]).sum(Kind::Float).backward();
            }
        }
        fused.step(LR);
        reference.step(LR);
        fused.zero_grad();
        reference.zero_grad();
        let (fs, rs) = (snapshot(&fused), snapshot(&reference));
        for (k, (name, _)) in PARAMS.iter().enumerate() {
            let at = format!("{what}, step {t}");
            let (r, s) = compare(&fused_p[k].detach(), &ref_p[k].detach(), &sc[k].p);
            assert!(r <= 1.0, "{name}, {at}: error {r:.3} x tolerance");
            if master == Kind::BFloat16 {
                assert!(s >= 0.99, "{name}, {at}: only {s:.4} identical");
            }
            let (rs_, ss) = compare_state(&at, &fs, &rs, name, &sc[k]);
            worst = worst.max(r).max(rs_);
            same = same.min(s).min(ss);
        }
    }
    println!("{what}: max error {worst:.3} x tolerance, >= {same:.4} identical values/codes");
}

#[test]
#[ignore = "needs CUDA"]
fn fused_and_reference_adamw_agree_on_cuda() {
    test_support::cuda();
    tch::manual_seed(test_support::seed_i64());
    let dev = Device::Cuda(0);
    for state in [
        OptimStateKind::F32,
        OptimStateKind::BF16,
        OptimStateKind::Int8Block,
    ] {
        for master in [Kind::Float, Kind::BFloat16] {
            run(dev, state, master);
        }
    }
}

#[test]
fn optimizer_off_cuda_uses_the_tch_ops() {
    let p = Tensor::randn([10], (Kind::Float, Device::Cpu)).set_requires_grad(true);
    let opt = AdamW::new(vec![("w".into(), p)], AdamWConfig::default(), default_decay).unwrap();
    assert!(!opt.is_fused());
}
