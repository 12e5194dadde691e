//! Block-wise 8-bit quantization of optimizer moments, after bitsandbytes'
//! 8-bit optimizers (Dettmers et al., "8-bit Optimizers via Block-wise
//! Quantization").
//!
//! A moment tensor is flattened and cut into blocks of [`QUANT_BLOCK`]
//! elements; each block keeps its absolute maximum as f32 and every element
//! as the index (one byte) of the nearest entry of a 256-entry *dynamic map*
//! applied to `x / absmax`.
//!
//! Choice of map: the **dynamic** (tree) map of bitsandbytes, not a linear
//! one. Its entries are spread over seven decades (1e-6 .. 1) with finer
//! steps near 1, so a value keeps roughly constant *relative* precision
//! instead of flushing to zero as soon as it is 1/128 of its block's maximum
//! (a linear map would zero most of a block whose values span a few decades,
//! which is exactly the second-moment flush the original suffered).

use tch::{Device, Kind, Tensor};

/// Elements per quantization block (one f32 absmax each).
pub const QUANT_BLOCK: usize = 256;

// The fused CUDA update (nvfp4_kernels::cuda::adamw_update) runs one
// 256-thread block per quantization block.
const _: () = assert!(QUANT_BLOCK == nvfp4_kernels::cuda::ADAMW_INT8_BLOCK);

/// The 256 sorted values of the bitsandbytes dynamic map
/// (`create_dynamic_map(signed, max_exponent_bits = 7, total_bits = 8)`).
///
/// Signed: 0, 1 and ±(decade `10^(i-6)` times the midpoints of `2^i + 1`
/// points spaced evenly on `[0.1, 1]`), i = 0..7: 2 + 2·127 = 256 entries.
/// Unsigned: 0, 1 and the midpoints of `2^(i+1) + 1` points per decade:
/// 2 + 254 = 256 entries, all non-negative (for `sqrt(v)`).
pub fn dynamic_map(signed: bool) -> Vec<f32> {
    let mut data: Vec<f64> = Vec::with_capacity(256);
    for i in 0..7u32 {
        let items = if signed {
            (1usize << i) + 1
        } else {
            (1usize << (i + 1)) + 1
        };
        let decade = 10f64.powi(i as i32 - 6);
        let bound = |k: usize| 0.1 + 0.9 * k as f64 / (items - 1) as f64;
        for k in 0..items - 1 {
            let mean = (bound(k) + bound(k + 1)) / 2.0;
            data.push(decade * mean);
            if signed {
                data.push(-decade * mean);
            }
        }
    }
    data.push(0.0);
    data.push(1.0);
    debug_assert_eq!(data.len(), 256);
    data.sort_by(|a, b| a.total_cmp(b));
    data.into_iter().map(|x| x as f32).collect()
}

/// A dynamic map on a device, with the midpoints used to round to nearest.
#[derive(Debug)]
pub struct QuantMap {
    values: Tensor,     // f32 [256], sorted
    boundaries: Tensor, // f32 [255], midpoints between neighbours
    signed: bool,
}

impl QuantMap {
    /// The signed or unsigned dynamic map on `device`.
    pub fn new(signed: bool, device: Device) -> Self {
        let v = dynamic_map(signed);
        let mids: Vec<f32> = v.windows(2).map(|w| (w[0] + w[1]) / 2.0).collect();
        QuantMap {
            values: Tensor::from_slice(&v).to_device(device),
            boundaries: Tensor::from_slice(&mids).to_device(device),
            signed,
        }
    }

    /// Whether the map holds negative values.
    pub fn signed(&self) -> bool {
        self.signed
    }

    /// The 256 sorted map values (f32, on the map's device): code `i`
    /// means `values[i] * absmax`.
    pub fn values(&self) -> &Tensor {
        &self.values
    }

    /// The 255 rounding boundaries (f32): the midpoints between neighbouring
    /// values, computed in f32 (what `quantize` bucketizes against).
    pub fn boundaries(&self) -> &Tensor {
        &self.boundaries
    }

    /// Quantizes the flat f32 tensor `x` (any length). Returns the codes
    /// (u8, length rounded up to whole blocks, padding quantizes 0) and the
    /// per-block absmax (f32).
    pub fn quantize(&self, x: &Tensor) -> (Tensor, Tensor) {
        let n = x.numel();
        let blocks = n.div_ceil(QUANT_BLOCK).max(1);
        let padded = x
            .reshape([-1])
            .to_kind(Kind::Float)
            .constant_pad_nd([0, (blocks * QUANT_BLOCK - n) as i64]);
        let padded = padded.reshape([blocks as i64, QUANT_BLOCK as i64]);
        let absmax = padded.abs().amax([1], true); // [blocks, 1]
                                                   // An all-zero block divides by 1 instead of 0; its codes all mean 0.
        let safe = absmax.where_scalarother(&absmax.gt(0.0), 1.0);
        let normed = (&padded / &safe).clamp(if self.signed { -1.0 } else { 0.0 }, 1.0);
        // bucketize(right = false) gives i with mid[i-1] < x <= mid[i]: the
        // index of the nearest map value (ties go to the lower one).
        let codes = normed
            .bucketize(&self.boundaries, false, false)
            .to_kind(Kind::Uint8);
        (codes.reshape([-1]), absmax.reshape([-1]))
    }

    /// Inverse of [`QuantMap::quantize`]: `numel` f32 values shaped like `shape`.
    pub fn dequantize(&self, codes: &Tensor, absmax: &Tensor, shape: &[i64]) -> Tensor {
        let blocks = absmax.numel() as i64;
        let vals = self.values.index_select(0, &codes.to_kind(Kind::Int64));
        let vals = vals.reshape([blocks, QUANT_BLOCK as i64]) * absmax.reshape([blocks, 1]);
        let numel: i64 = shape.iter().product();
        vals.reshape([-1]).narrow(0, 0, numel).reshape(shape)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dynamic_maps_have_256_sorted_distinct_values_spanning_the_range() {
        for signed in [true, false] {
            let m = dynamic_map(signed);
            assert_eq!(m.len(), 256);
            assert!(
                m.windows(2).all(|w| w[0] < w[1]),
                "sorted and distinct (signed={signed})"
            );
            assert_eq!(*m.last().unwrap(), 1.0);
            assert!(m.contains(&0.0));
            if signed {
                assert!(m[0] < -0.99 && m[0] > -1.0, "most negative {}", m[0]);
            } else {
                assert_eq!(m[0], 0.0);
                // Smallest positive value: 1e-6 times the mean of 0.1 and 0.55.
                assert!((m[1] - 3.25e-7).abs() < 1e-12, "smallest positive {}", m[1]);
            }
        }
    }

    #[test]
    fn roundtrip_error_is_bounded_relative_to_block_absmax() {
        tch::manual_seed(test_support::seed_i64());
        let x = Tensor::randn([3 * QUANT_BLOCK as i64 + 17], (Kind::Float, Device::Cpu));
        let map = QuantMap::new(true, Device::Cpu);
        let (codes, absmax) = map.quantize(&x);
        assert_eq!(codes.numel(), 4 * QUANT_BLOCK);
        let back = map.dequantize(&codes, &absmax, &[x.size()[0]]);
        // Largest gap of the signed map is between its top entries (0.9/64
        // wide), so the rounding error is at most half that times absmax.
        let err = (&back - &x).abs().max().double_value(&[]);
        let bound = 0.9 / 64.0 / 2.0 * x.abs().max().double_value(&[]) + 1e-6;
        println!("max abs error {err:.3e} (bound {bound:.3e})");
        assert!(err <= bound);
    }

    #[test]
    fn small_values_keep_relative_precision_with_the_dynamic_map() {
        // A block whose values span 1e-4 .. 1: a linear 8-bit map would zero
        // every value below 1/510; the dynamic map keeps each within 20 %
        // (worst at the bottom of a decade, where its steps are coarsest).
        let vals: Vec<f32> = (0..QUANT_BLOCK)
            .map(|i| 10f32.powf(-4.0 * i as f32 / 255.0))
            .collect();
        let x = Tensor::from_slice(&vals);
        let map = QuantMap::new(false, Device::Cpu);
        let (codes, absmax) = map.quantize(&x);
        let back = map.dequantize(&codes, &absmax, &[QUANT_BLOCK as i64]);
        let rel = ((&back - &x).abs() / &x).max().double_value(&[]);
        println!("max relative error over 4 decades: {rel:.3}");
        assert!(rel < 0.2);
    }

    #[test]
    fn zero_block_stays_zero() {
        let x = Tensor::zeros([QUANT_BLOCK as i64], (Kind::Float, Device::Cpu));
        let map = QuantMap::new(true, Device::Cpu);
        let (codes, absmax) = map.quantize(&x);
        let back = map.dequantize(&codes, &absmax, &[QUANT_BLOCK as i64]);
        assert_eq!(back.abs().max().double_value(&[]), 0.0);
    }
}
