//! AdamW against a plain-Rust f64 reference on random tensors, for each
//! moment precision, plus the property the original lacked: updates smaller
//! than one FP4 step accumulate in the master weights.

mod common;

use tch::{Device, Kind, Tensor};
use trainer::{default_decay, AdamW, AdamWConfig, OptimStateKind};

fn to_f64(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(t.reshape([-1]).to_kind(Kind::Double)).unwrap()
}

/// PyTorch's AdamW, in f64.
struct RefAdamW {
    p: Vec<f64>,
    m: Vec<f64>,
    v: Vec<f64>,
    t: i32,
}

impl RefAdamW {
    fn step(&mut self, g: &[f64], lr: f64, c: &AdamWConfig, decay: bool) {
        self.t += 1;
        let bc1 = 1.0 - c.beta1.powi(self.t);
        let bc2 = 1.0 - c.beta2.powi(self.t);
        for (i, &gi) in g.iter().enumerate() {
            if decay {
                self.p[i] *= 1.0 - lr * c.weight_decay;
            }
            self.m[i] = c.beta1 * self.m[i] + (1.0 - c.beta1) * gi;
            self.v[i] = c.beta2 * self.v[i] + (1.0 - c.beta2) * gi * gi;
            let denom = (self.v[i] / bc2).sqrt() + c.eps;
            self.p[i] -= lr * (self.m[i] / bc1) / denom;
        }
    }
}

/// Runs `steps` AdamW steps on two tensors (one decayed, one not) with
/// fresh random gradients; returns the max |p - p_ref| and the max total
/// movement of the reference.
fn compare(state: OptimStateKind, steps: usize, lr: f64) -> (f64, f64) {
    tch::manual_seed(test_support::seed_i64());
    let cfg = AdamWConfig {
        beta1: 0.9,
        beta2: 0.99,
        eps: 1e-8,
        weight_decay: 0.1,
        state,
    };
    let names = ["model.layers.0.mlp.up_proj.weight", "model.norm.weight"];
    let params: Vec<Tensor> = [vec![48i64, 40], vec![300]]
        .iter()
        .map(|s| Tensor::randn(s.as_slice(), (Kind::Float, Device::Cpu)).set_requires_grad(true))
        .collect();
    let mut refs: Vec<RefAdamW> = params
        .iter()
        .map(|p| RefAdamW {
            p: to_f64(p),
            m: vec![0.0; p.numel()],
            v: vec![0.0; p.numel()],
            t: 0,
        })
        .collect();
    let start: Vec<Vec<f64>> = refs.iter().map(|r| r.p.clone()).collect();
    let named = names
        .iter()
        .zip(&params)
        .map(|(n, p)| (n.to_string(), p.shallow_clone()))
        .collect();
    let mut opt = AdamW::new(named, cfg, default_decay).unwrap();
    for _ in 0..steps {
        for (k, p) in params.iter().enumerate() {
            // Gradients spanning several decades, as real ones do.
            let g = Tensor::randn(p.size(), (Kind::Float, Device::Cpu))
                * Tensor::randn(p.size(), (Kind::Float, Device::Cpu)).exp();
            (p * &g).sum(Kind::Float).backward();
            refs[k].step(&to_f64(&g), lr, &cfg, default_decay(names[k], p));
        }
        opt.step(lr);
        opt.zero_grad();
    }
    let mut err = 0f64;
    let mut moved = 0f64;
    for (k, p) in params.iter().enumerate() {
        for ((a, b), s) in to_f64(p).iter().zip(&refs[k].p).zip(&start[k]) {
            err = err.max((a - b).abs());
            moved = moved.max((b - s).abs());
        }
    }
    (err, moved)
}

#[test]
fn f32_state_matches_the_f64_reference_tightly() {
    let (err, moved) = compare(OptimStateKind::F32, 6, 1e-2);
    println!("f32 state: max |p - ref| = {err:.3e} (weights moved up to {moved:.3e})");
    assert!(moved > 1e-2, "the optimizer must actually move the weights");
    assert!(
        err < 2e-6,
        "tolerance 2e-6 (f32 rounding of ~1-magnitude weights)"
    );
}

#[test]
fn bf16_state_matches_the_reference_within_a_stated_tolerance() {
    // bf16 keeps 8 significant bits: each stored moment is off by up to
    // 2^-9 relative, so each update by ~0.4 % of lr. Tolerance: 2 % of lr a step.
    let (lr, steps) = (1e-2, 6);
    let (err, moved) = compare(OptimStateKind::BF16, steps, lr);
    println!(
        "bf16 state: max |p - ref| = {err:.3e} (bound {:.3e}, moved {moved:.3e})",
        0.02 * lr * steps as f64
    );
    assert!(err < 0.02 * lr * steps as f64);
}

#[test]
fn int8_state_matches_the_reference_within_a_stated_tolerance() {
    // The dynamic map keeps a value within ~7 % of itself (worst case at the
    // bottom of a decade); m and sqrt(v) errors enter the update ratio, which
    // Adam bounds by ~1/sqrt(1-beta2)·... in practice updates stay within
    // ~15 % of lr. Tolerance: 25 % of lr per step, far below the
    // reference's own movement (which must be several times larger).
    let (lr, steps) = (1e-2, 6);
    let (err, moved) = compare(OptimStateKind::Int8Block, steps, lr);
    println!(
        "int8 state: max |p - ref| = {err:.3e} (bound {:.3e}, moved {moved:.3e})",
        0.25 * lr * steps as f64
    );
    assert!(err < 0.25 * lr * steps as f64);
    assert!(
        err < moved / 3.0,
        "the error must be small next to the update itself"
    );
}

#[test]
fn updates_smaller_than_an_fp4_step_accumulate_in_the_master() {
    tch::manual_seed(test_support::seed_i64());
    let w = (Tensor::randn([32, 64], (Kind::Float, Device::Cpu)) * 0.02).set_requires_grad(true);
    let w0 = w.detach().copy();
    let q0 = nvfp4_kernels::fake_quantize(&w0, nvfp4_kernels::ScaleMode::Single);
    let mut opt = AdamW::new(
        vec![(
            "model.layers.0.mlp.up_proj.weight".into(),
            w.shallow_clone(),
        )],
        AdamWConfig::default(),
        default_decay,
    )
    .unwrap();
    // A constant gradient: every Adam step moves each weight by ~lr = 1e-6,
    // about 1/1000 of the FP4 step at this scale (0.02 * 0.5 / 6 ~ 1.7e-3).
    let lr = 1e-6;
    let g = Tensor::randn([32, 64], (Kind::Float, Device::Cpu)).sign();
    for _ in 0..20 {
        (&w * &g).sum(Kind::Float).backward();
        opt.step(lr);
        opt.zero_grad();
    }
    let moved = (&w.detach() - &w0).abs();
    let min_moved = moved.min().double_value(&[]);
    println!("every master weight moved by >= {min_moved:.3e} (20 steps of lr {lr:.0e})");
    assert!(
        min_moved > 15.0 * lr,
        "each update must accumulate in the master"
    );
    let q1 = nvfp4_kernels::fake_quantize(&w.detach(), nvfp4_kernels::ScaleMode::Single);
    let changed = q1.ne_tensor(&q0).sum(Kind::Int64).int64_value(&[]);
    println!("{changed} of {} quantized values changed", w.numel());
    assert!(
        (changed as usize) < w.numel() / 10,
        "the drift is mostly below one FP4 step"
    );
}

#[test]
fn checkpointed_state_restores_bit_exactly() {
    for state in [
        OptimStateKind::F32,
        OptimStateKind::BF16,
        OptimStateKind::Int8Block,
    ] {
        tch::manual_seed(test_support::seed_i64());
        let w = Tensor::randn([20, 30], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let cfg = AdamWConfig {
            state,
            ..Default::default()
        };
        let mut a = AdamW::new(vec![("w".into(), w.shallow_clone())], cfg, default_decay).unwrap();
        let g = Tensor::randn([20, 30], (Kind::Float, Device::Cpu));
        (&w * &g).sum(Kind::Float).backward();
        a.step(1e-3);
        let saved: Vec<(String, Tensor)> = a
            .state_tensors()
            .into_iter()
            .map(|(n, t)| (n, t.copy()))
            .collect();
        let w2 = w.detach().copy().set_requires_grad(true);
        let mut b = AdamW::new(vec![("w".into(), w2.shallow_clone())], cfg, default_decay).unwrap();
        let mut map: std::collections::HashMap<_, _> = saved.into_iter().collect();
        b.restore(a.steps_taken(), &mut |n| map.remove(n)).unwrap();
        assert!(map.is_empty());
        // One more identical step on both: bitwise equal weights.
        for (p, o) in [(&w, &mut a), (&w2, &mut b)] {
            o.zero_grad();
            (p * &g).sum(Kind::Float).backward();
            o.step(1e-3);
        }
        assert!(
            w.detach().equal(&w2.detach()),
            "{state:?}: restored optimizer diverged"
        );
    }
}

#[test]
fn restoring_a_wrong_shape_names_the_tensor() {
    let w = Tensor::randn([4, 8], (Kind::Float, Device::Cpu)).set_requires_grad(true);
    let mut a = AdamW::new(vec![("w".into(), w)], AdamWConfig::default(), default_decay).unwrap();
    let e = a
        .restore(1, &mut |_| {
            Some(Tensor::zeros([3], (Kind::Float, Device::Cpu)))
        })
        .unwrap_err()
        .to_string();
    assert!(e.contains("optim.w.m") && e.contains("[3]"), "{e}");
}
