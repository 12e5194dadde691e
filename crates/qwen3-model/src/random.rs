//! Synthetic weights (FR-02 "synthetic first"): projections quantized from
//! N(0, 0.02) master weights, embeddings N(0, 0.02), norms near 1. Built
//! through the same `assemble` path as real files, so a synthetic model has
//! exactly the structure and kinds of a loaded one.
//!
//! Numbers come from a counter-based generator written with tensor ops
//! (a 32-bit integer hash of (seed, tensor key, element index), then
//! Box-Muller), not from libtorch's global generator: the model is the same
//! whatever other threads draw, and needs no global reseeding.

use nvfp4_kernels::{Nvfp4Tensor, ScaleMode};
use tch::{Device, Kind, Tensor};

use crate::config::Qwen3Config;
use crate::error::Result;
use crate::loader::assemble;
use crate::model::{LoadOptions, Qwen3Model};
use crate::weights::schema::TensorSpec;
use crate::weights::source::{Check, WeightSource};

/// Standard deviation of synthetic weights (transformers' `initializer_range`).
const INIT_STD: f64 = 0.02;
/// Elements generated per step, bounding the int64/f64 temporaries.
const CHUNK: i64 = 1 << 22;
const MASK32: i64 = 0xFFFF_FFFF;

/// SplitMix64 finaliser: spreads (seed, stream) over 64 bits.
fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// FNV-1a of a tensor key: its stream id, independent of load order.
pub(crate) fn stream_of(key: &str) -> u64 {
    key.bytes().fold(0xCBF2_9CE4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01B3)
    })
}

/// A 32-bit integer hash (two multiply-xorshift rounds) of int64 values in
/// 0..2^32. Every product stays below 2^59: no int64 overflow on any device.
fn mix32(h: Tensor) -> Tensor {
    let mut h = h;
    for _ in 0..2 {
        h = (h.bitwise_xor_tensor(&h.bitwise_right_shift_tensor_scalar(16)) * 0x045D_9F3B)
            .bitwise_and(MASK32);
    }
    h.bitwise_xor_tensor(&h.bitwise_right_shift_tensor_scalar(16))
}

/// Uniform (0, 1) f64 for each counter in `ctr`. The key enters between two
/// hashes, so streams are not shifted copies of one another.
fn uniform(ctr: &Tensor, key: u64) -> Tensor {
    let h = mix32(ctr.bitwise_and(MASK32));
    let h = mix32((h + (key & MASK32 as u64) as i64).bitwise_and(MASK32));
    (h.to_kind(Kind::Double) + 0.5) / 4_294_967_296.0
}

/// N(0, 1) f32 tensor of `shape`, a pure function of (seed, stream, index).
pub(crate) fn standard_normal(shape: &[i64], seed: u64, stream: u64, device: Device) -> Tensor {
    standard_normal_chunked(shape, seed, stream, device, CHUNK)
}

fn standard_normal_chunked(
    shape: &[i64],
    seed: u64,
    stream: u64,
    device: Device,
    chunk: i64,
) -> Tensor {
    let n: i64 = shape.iter().product();
    let base = splitmix(seed ^ splitmix(stream));
    let mut parts = Vec::new();
    let mut start = 0;
    while start < n {
        let len = chunk.min(n - start);
        let idx = Tensor::arange_start(start, start + len, (Kind::Int64, device));
        let u1 = uniform(&(&idx * 2), base); //     counters 2i and 2i+1:
        let u2 = uniform(&(&idx * 2 + 1), base); // independent draws
        let r = (u1.log() * -2.0).sqrt();
        parts.push((r * (u2 * std::f64::consts::TAU).cos()).to_kind(Kind::Float));
        start += len;
    }
    if parts.is_empty() {
        return Tensor::zeros(shape, (Kind::Float, device));
    }
    Tensor::cat(&parts, 0).view(shape)
}

/// Generates every tensor of the schema on request.
struct RandomSource {
    seed: u64,
}

impl RandomSource {
    /// Normal noise of `spec`'s shape; the stream is named by the key of a
    /// raw tensor and by the base of a packed one.
    fn normal(&self, spec: &TensorSpec, device: Device) -> Tensor {
        let shape: Vec<i64> = spec.shape.iter().map(|&d| d as i64).collect();
        let name = if spec.is_packed() {
            spec.base()
        } else {
            &spec.key
        };
        standard_normal(&shape, self.seed, stream_of(name), device) * INIT_STD
    }
}

impl WeightSource for RandomSource {
    fn describe(&self) -> String {
        format!("synthetic weights (seed {})", self.seed)
    }

    fn keys(&self) -> Vec<String> {
        Vec::new()
    }

    fn check(&self, spec: &TensorSpec) -> Check {
        // A tied synthetic model uses its embedding as lm_head.
        match spec.required {
            true => Check::Present,
            false => Check::Missing,
        }
    }

    fn dense(&mut self, spec: &TensorSpec, kind: Kind, device: Device) -> Result<Tensor> {
        let noise = self.normal(spec, device);
        let t = if noise.dim() == 1 { noise + 1.0 } else { noise }; // norms near 1
        Ok(t.to_kind(kind))
    }

    fn packed(&mut self, spec: &TensorSpec, device: Device) -> Result<Nvfp4Tensor> {
        Ok(nvfp4_kernels::quantize(
            &self.normal(spec, device),
            ScaleMode::Single,
        )?)
    }
}

impl Qwen3Model {
    /// A model with synthetic NVFP4 weights for `cfg`, a pure function of
    /// `seed` (libtorch's global generator is neither used nor reseeded).
    pub fn random(cfg: &Qwen3Config, opts: &LoadOptions, seed: u64) -> Result<Self> {
        assemble(cfg, opts, &mut RandomSource { seed })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generator_gives_standard_normal_moments() {
        let x = standard_normal(&[1 << 16], 7, 1, Device::Cpu).to_kind(Kind::Double);
        let mean = x.mean(Kind::Double).double_value(&[]);
        let var = x.var(true).double_value(&[]);
        let kurt = (x.pow_tensor_scalar(4).mean(Kind::Double).double_value(&[])) / (var * var);
        println!("mean {mean:.4}, var {var:.4}, kurtosis {kurt:.3}");
        // 2^16 samples: standard errors 0.004 (mean), 0.006 (var), 0.04 (kurtosis).
        assert!(mean.abs() < 0.02 && (var - 1.0).abs() < 0.03 && (kurt - 3.0).abs() < 0.2);
    }

    #[test]
    fn streams_and_seeds_differ_and_chunks_join_seamlessly() {
        let draw = |seed, stream| standard_normal(&[4099], seed, stream, Device::Cpu);
        let a = draw(1, 1);
        assert!(a.equal(&draw(1, 1)));
        let (b, c) = (draw(1, 2), draw(2, 1));
        assert!(!a.equal(&b) && !a.equal(&c));
        let corr = (&a * &b).mean(Kind::Float).double_value(&[]);
        assert!(corr.abs() < 0.06, "streams correlate: {corr}");
        // Chunking bounds memory only; it does not change the numbers.
        let chunked = standard_normal_chunked(&[4099], 1, 1, Device::Cpu, 1000);
        assert!(a.equal(&chunked));
    }
}
