//! Gradient utilities: global L2 norm, clipping by that norm, finiteness.

use tch::{Kind, Tensor};

/// The sum of squares of `grads` (undefined ones skipped), a 0-dim f64
/// tensor on `device` (0 when there is none): per-tensor L2 norms in f32
/// straight from each gradient's kind (no f32 copy of bf16 gradients),
/// stacked once and combined in f64. One launch per tensor and four in all,
/// not two per tensor: with ~400 tensors the launches were the cost.
pub(crate) fn sum_of_squares(grads: impl Iterator<Item = Tensor>, device: tch::Device) -> Tensor {
    let norms: Vec<Tensor> = grads
        .filter(|g| g.defined())
        .map(|g| g.norm_scalaropt_dtype(2, Kind::Float))
        .collect();
    if norms.is_empty() {
        return Tensor::zeros([], (Kind::Double, device));
    }
    Tensor::stack(&norms, 0)
        .to_kind(Kind::Double)
        .square()
        .sum(Kind::Double)
}

/// L2 norm of all gradients taken together (tensors without a gradient
/// count as zero). NaN or infinite if any gradient element is. One device
/// sync.
pub fn global_grad_norm(params: &[Tensor]) -> f64 {
    let Some(device) = params.first().map(|p| p.device()) else {
        return 0.0;
    };
    // The square root in Rust (IEEE, correctly rounded), as ZeRO-1's sharded
    // norm takes it: libtorch's vectorized sqrt may differ by one ulp, which
    // made a ZeRO-1 group of one differ from the plain trainer for some seeds.
    sum_of_squares(params.iter().map(|p| p.grad()), device)
        .double_value(&[])
        .sqrt()
}

/// What clipping multiplies the gradients by: `max_norm / (norm + 1e-6)`
/// when a finite `norm` exceeds `max_norm`, else 1 (no clipping, or a
/// non-finite norm that the non-finite policy handles).
pub fn clip_coefficient(norm: f64, max_norm: Option<f64>) -> f64 {
    match max_norm {
        Some(max) if norm.is_finite() && norm > max => max / (norm + 1e-6),
        _ => 1.0,
    }
}

/// Scales every gradient by `max_norm / norm` when the global norm exceeds
/// `max_norm`; returns the norm *before* clipping. A non-finite norm is
/// returned untouched and nothing is scaled (the caller's non-finite policy
/// decides what happens to the step).
pub fn clip_grad_norm(params: &[Tensor], max_norm: f64) -> f64 {
    let norm = global_grad_norm(params);
    let coef = clip_coefficient(norm, Some(max_norm));
    if coef != 1.0 {
        tch::no_grad(|| {
            for p in params {
                let mut g = p.grad();
                if g.defined() {
                    let _ = g.g_mul_scalar_(coef);
                }
            }
        });
    }
    norm
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    fn params_with_grads(seed: i64) -> (Vec<Tensor>, Vec<Vec<f64>>) {
        tch::manual_seed(seed);
        let shapes: [&[i64]; 3] = [&[7, 5], &[13], &[2, 3, 4]];
        let mut ps = Vec::new();
        let mut gs = Vec::new();
        for s in shapes {
            let p = Tensor::randn(s, (Kind::Float, Device::Cpu)).set_requires_grad(true);
            let w = Tensor::randn(s, (Kind::Float, Device::Cpu)) * 3.0;
            (&p * &w).sum(Kind::Float).backward(); // grad = w
            gs.push(Vec::<f64>::try_from(w.reshape([-1]).to_kind(Kind::Double)).unwrap());
            ps.push(p);
        }
        (ps, gs)
    }

    #[test]
    fn global_norm_matches_an_f64_sum_of_squares() {
        let (ps, gs) = params_with_grads(test_support::seed_i64());
        let want: f64 = gs.iter().flatten().map(|x| x * x).sum::<f64>().sqrt();
        let got = global_grad_norm(&ps);
        println!("norm {got} vs f64 {want}, diff {:.2e}", (got - want).abs());
        assert!((got - want).abs() <= 1e-5 * want);
    }

    #[test]
    fn clipping_scales_to_max_norm_and_keeps_direction() {
        let (ps, gs) = params_with_grads(test_support::seed_i64());
        let before = global_grad_norm(&ps);
        let max = before / 4.0;
        let returned = clip_grad_norm(&ps, max);
        assert_eq!(returned, before, "returns the pre-clip norm");
        let after = global_grad_norm(&ps);
        assert!(
            (after - max).abs() <= 1e-4 * max,
            "clipped norm {after} vs {max}"
        );
        let coef = after / before;
        let mut worst = 0f64;
        for (p, g) in ps.iter().zip(&gs) {
            let now = Vec::<f64>::try_from(p.grad().reshape([-1]).to_kind(Kind::Double)).unwrap();
            for (a, b) in now.iter().zip(g) {
                worst = worst.max((a - b * coef).abs());
            }
        }
        println!("max direction error {worst:.2e}");
        assert!(worst < 1e-5);
    }

    #[test]
    fn clipping_leaves_small_gradients_alone() {
        let (ps, gs) = params_with_grads(test_support::seed_i64());
        let before = global_grad_norm(&ps);
        clip_grad_norm(&ps, before * 2.0);
        let now = Vec::<f64>::try_from(ps[1].grad().to_kind(Kind::Double)).unwrap();
        assert_eq!(now, gs[1]);
    }

    #[test]
    fn a_nan_gradient_gives_a_non_finite_norm_and_no_scaling() {
        let (ps, _) = params_with_grads(test_support::seed_i64());
        let g = ps[2].grad();
        let _ = g.get(0).get(1).get(2).fill_(f64::NAN);
        let g0 = Vec::<f64>::try_from(ps[0].grad().reshape([-1]).to_kind(Kind::Double)).unwrap();
        let n = clip_grad_norm(&ps, 1e-3);
        assert!(n.is_nan());
        let g0_after =
            Vec::<f64>::try_from(ps[0].grad().reshape([-1]).to_kind(Kind::Double)).unwrap();
        assert_eq!(g0, g0_after, "no scaling applied when the norm is NaN");
    }
}
