//! RMSNorm, always computed in f32: `x / sqrt(mean(x^2) + eps) * weight`.

use tch::{Kind, Tensor};

/// One RMSNorm (`input_layernorm`, `q_norm`, `model.norm`, ...).
#[derive(Debug)]
pub(crate) struct RmsNorm {
    /// [dim]; f32 for inference, the master kind when trainable.
    pub(crate) weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    pub(crate) fn new(weight: Tensor, eps: f64) -> Self {
        RmsNorm { weight, eps }
    }

    /// The epsilon added to the mean square.
    pub(crate) fn eps(&self) -> f64 {
        self.eps
    }

    /// Normalises over the last dim; the result is f32 whatever `x` is, so
    /// callers that keep working in f32 (q/k before RoPE) skip a round trip.
    pub(crate) fn forward_f32(&self, x: &Tensor) -> Tensor {
        let x = x.to_kind(Kind::Float);
        let var = x.square().mean_dim(-1, true, Kind::Float);
        (x * (var + self.eps).rsqrt()) * self.weight.to_kind(Kind::Float)
    }

    /// Normalises over the last dim and returns the kind of `x`.
    pub(crate) fn forward(&self, x: &Tensor) -> Tensor {
        self.forward_f32(x).to_kind(x.kind())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn matches_a_f64_reference_and_returns_the_input_kind() {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as i64;
        println!("seed {seed}");
        tch::manual_seed(seed);
        let x = Tensor::randn([3, 4, 64], (Kind::Float, Device::Cpu)) * 3.0;
        let w = Tensor::randn([64], (Kind::Float, Device::Cpu)) * 0.1 + 1.0;
        let norm = RmsNorm::new(w.shallow_clone(), 1e-6);
        let xd = x.to_kind(Kind::Double);
        let want = &xd / (xd.square().mean_dim(-1, true, Kind::Double) + 1e-6).sqrt()
            * w.to_kind(Kind::Double);
        let got = norm.forward(&x);
        assert_eq!(got.kind(), Kind::Float);
        let diff = (got.to_kind(Kind::Double) - &want)
            .abs()
            .max()
            .double_value(&[]);
        println!("max |f32 - f64| = {diff:e}");
        assert!(diff < 1e-5, "max diff {diff}");

        let got_bf16 = norm.forward(&x.to_kind(Kind::BFloat16));
        assert_eq!(got_bf16.kind(), Kind::BFloat16);
        let diff = (got_bf16.to_kind(Kind::Double) - want)
            .abs()
            .max()
            .double_value(&[]);
        println!("max |bf16 - f64| = {diff:e}");
        assert!(diff < 5e-2, "bf16 max diff {diff}");
    }
}
