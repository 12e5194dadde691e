//! Rotary position embedding (rotate-half form), the ONE implementation used
//! by training and inference alike. The original computed it twice, with
//! theta 1e6 in the training graph and 5e6 in inference; here the base always
//! comes from `Qwen3Config::rope_theta`.

use tch::{Device, Kind, Tensor};

/// Inverse frequencies of one head, computed once per model.
#[derive(Debug)]
pub(crate) struct Rotary {
    inv_freq: Tensor, // [head_dim/2] f32
}

impl Rotary {
    /// `inv_freq[i] = 1 / theta^(2i / head_dim)`, computed in f32 with the same
    /// ops as transformers so the angles agree bit for bit.
    pub(crate) fn new(head_dim: usize, theta: f64, device: Device) -> Self {
        let exps = Tensor::arange_start_step(0, head_dim as i64, 2, (Kind::Float, device))
            / head_dim as f64;
        let inv_freq = Tensor::pow_scalar(theta, &exps).reciprocal();
        Rotary { inv_freq }
    }

    /// f32 `[head_dim/2]` inverse frequencies on the model's device.
    pub(crate) fn inv_freq(&self) -> &Tensor {
        &self.inv_freq
    }

    /// Cosines and sines of positions `offset..offset+len`, each [len, head_dim/2] f32.
    pub(crate) fn cos_sin(&self, offset: usize, len: usize) -> (Tensor, Tensor) {
        let device = self.inv_freq.device();
        let start = offset as i64;
        let pos = Tensor::arange_start(start, start + len as i64, (Kind::Float, device));
        let freqs = pos.unsqueeze(1) * self.inv_freq.unsqueeze(0); // [len, hd/2]
        (freqs.cos(), freqs.sin())
    }

    /// Cosines and sines of per-row positions: `positions` i64 `[B, T]` ->
    /// each `[B, 1, T, head_dim/2]` f32 (broadcast over heads by [`Rotary::apply`]).
    /// The same ops as [`Rotary::cos_sin`], so equal positions give equal bits.
    pub(crate) fn cos_sin_at(&self, positions: &Tensor) -> (Tensor, Tensor) {
        let pos = positions.to_kind(Kind::Float).unsqueeze(-1); // [B, T, 1]
        let freqs = (pos * self.inv_freq.view([1, 1, -1])).unsqueeze(1); // [B, 1, T, hd/2]
        (freqs.cos(), freqs.sin())
    }

    /// Rotates x: [B, heads, T, head_dim] (f32) by the angles of its positions
    /// (`cos`/`sin` [T, head_dim/2], or [B, 1, T, head_dim/2] per row).
    /// First half `x1*cos - x2*sin`, second half `x2*cos + x1*sin`.
    pub(crate) fn apply(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Tensor {
        let half = x.size()[3] / 2;
        let x1 = x.narrow(3, 0, half);
        let x2 = x.narrow(3, half, half);
        let lo = &x1 * cos - &x2 * sin;
        let hi = &x2 * cos + &x1 * sin;
        Tensor::cat(&[lo, hi], 3)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn max_abs(a: &Tensor) -> f64 {
        a.abs().max().double_value(&[])
    }

    #[test]
    fn inverse_frequencies_follow_theta_from_the_config() {
        for theta in [1e6, 5e6] {
            let r = Rotary::new(8, theta, Device::Cpu);
            let got: Vec<f32> = Vec::try_from(&r.inv_freq).unwrap();
            for (i, g) in got.iter().enumerate() {
                let want = 1.0 / theta.powf(2.0 * i as f64 / 8.0);
                assert!(
                    ((*g as f64) - want).abs() <= 1e-6 * want,
                    "theta {theta} i {i}: {g} vs {want}"
                );
            }
        }
    }

    #[test]
    fn rotation_preserves_norm_and_position_zero_is_identity() {
        let seed = test_support::seed_i64();
        tch::manual_seed(seed);
        let r = Rotary::new(16, 5e6, Device::Cpu);
        let x = Tensor::randn([2, 3, 5, 16], (Kind::Float, Device::Cpu));
        let (cos, sin) = r.cos_sin(0, 5);
        let y = Rotary::apply(&x, &cos, &sin);
        let d0 = max_abs(&(y.narrow(2, 0, 1) - x.narrow(2, 0, 1)));
        assert!(d0 == 0.0, "position 0 moved by {d0}");
        let dn = max_abs(
            &(y.square().sum_dim_intlist(-1, false, Kind::Float)
                - x.square().sum_dim_intlist(-1, false, Kind::Float)),
        );
        println!("max norm change {dn:e}");
        assert!(dn < 1e-4, "norm changed by {dn}");
    }

    #[test]
    fn offset_angles_equal_the_tail_of_a_longer_table() {
        // What makes cached decoding agree with full-prompt decoding.
        let r = Rotary::new(32, 1e6, Device::Cpu);
        let (c_all, s_all) = r.cos_sin(0, 12);
        let (c_tail, s_tail) = r.cos_sin(7, 5);
        assert_eq!(max_abs(&(c_all.narrow(0, 7, 5) - c_tail)), 0.0);
        assert_eq!(max_abs(&(s_all.narrow(0, 7, 5) - s_tail)), 0.0);
    }

    #[test]
    fn per_row_positions_give_the_angles_of_the_shared_table() {
        // Left padding: row 1 starts two slots later, so its positions lag by 2.
        let r = Rotary::new(16, 1e6, Device::Cpu);
        let pos = Tensor::from_slice(&[3i64, 4, 5, 1, 2, 3]).view([2, 3]);
        let (c, s) = r.cos_sin_at(&pos);
        assert_eq!(c.size(), [2, 1, 3, 8]);
        let (c_all, s_all) = r.cos_sin(0, 6);
        for (row, start) in [(0i64, 3i64), (1, 1)] {
            let want_c = c_all.narrow(0, start, 3);
            let want_s = s_all.narrow(0, start, 3);
            assert_eq!(max_abs(&(c.get(row).get(0) - want_c)), 0.0, "row {row}");
            assert_eq!(max_abs(&(s.get(row).get(0) - want_s)), 0.0, "row {row}");
        }
    }

    #[test]
    fn rotation_matches_a_scalar_twin() {
        let r = Rotary::new(4, 1e4, Device::Cpu);
        let x = Tensor::from_slice(&[0.3f32, -1.2, 0.7, 2.0]).view([1, 1, 1, 4]);
        let (cos, sin) = r.cos_sin(3, 1);
        let y: Vec<f32> = Vec::try_from(Rotary::apply(&x, &cos, &sin).view([-1])).unwrap();
        let (x1, x2) = ([0.3f64, -1.2], [0.7f64, 2.0]);
        for i in 0..2 {
            let ang = 3.0 / 1e4f64.powf(2.0 * i as f64 / 4.0);
            let lo = x1[i] * ang.cos() - x2[i] * ang.sin();
            let hi = x2[i] * ang.cos() + x1[i] * ang.sin();
            assert!((y[i] as f64 - lo).abs() < 1e-5, "lo {i}: {} vs {lo}", y[i]);
            assert!(
                (y[i + 2] as f64 - hi).abs() < 1e-5,
                "hi {i}: {} vs {hi}",
                y[i + 2]
            );
        }
    }
}
