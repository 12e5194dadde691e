//! NVFP4 (4-bit E2M1 values with one FP8 E4M3 scale per 16 elements) for
//! Qwen3 weights: the format math, a scalar CPU reference, the same math as
//! tch ops on any device, the Blackwell blocked scale layout, and the policy
//! that picks how projections are computed.
//!
//! Key types and functions:
//! * [`format`](crate::f32_to_e2m1) codecs: [`f32_to_e2m1`], [`e2m1_to_f32`],
//!   [`f32_to_e4m3`], [`e4m3_to_f32`], [`pack_nibbles`]; the quantization
//!   formulas every path follows are written out in the `format` module doc
//!   (see [`ScaleMode`]).
//! * [`Nvfp4Host`] / [`Nvfp4HostRef`]: packed data in host memory;
//!   [`quantize_ref`] / [`dequantize_ref`] are the oracle for everything else.
//! * [`Nvfp4Tensor`]: packed data as tch tensors; [`quantize`],
//!   [`dequantize`], [`fake_quantize`] and [`ste`] work on any device and are
//!   bit-exact with the reference.
//! * [`swizzle_scales`] / [`unswizzle_scales`]: the 128x4 blocked scale layout.
//! * [`ComputePath`] / [`Nvfp4Backend`]: `y = x @ W^T` on the resolved path.
//! * [`cuda`]: the CUDA kernels (NVRTC-compiled at run time, nothing CUDA
//!   needed to build): bit-exact quantize / dequantize / fused STE pass, a
//!   fused W4A16 matmul for decode (also grouped over weights that share the
//!   activations), the small fused ops of a batch-1 decode step, CUDA-graph
//!   recording of our launches ([`cuda::capture_graph`]), and a fused AdamW
//!   update ([`cuda::adamw_update`]); [`diagnose`] reports what runs here.
//! * [`train_ops`]: the fused forward / backward ops of a decoder block's
//!   training step (RMSNorm, SwiGLU, q/k norm + RoPE), each with its tch-op
//!   reference.
//! * [`loss::cross_entropy_fused`]: the trainer's cross-entropy forward and
//!   backward in one call (a fused kernel over bf16 logits on CUDA).
//!
//! ```
//! use nvfp4_kernels::{dequantize_ref, quant_error_bound, quantize_ref, ScaleMode};
//! let x: Vec<f32> = (0..32).map(|i| (i as f32 - 16.0) / 8.0).collect(); // [1, 32], |x| <= 2
//! let q = quantize_ref(&x, 1, 32, ScaleMode::Single)?;
//! assert_eq!((q.qdata.len(), q.scale.len()), (16, 2)); // 2 codes a byte, 1 scale per 16
//! let y = dequantize_ref(&q.as_ref());
//! let bound = quant_error_bound(2.0, None); // every block's amax is <= 2
//! assert!(x.iter().zip(&y).all(|(a, b)| ((a - b).abs() as f64) <= bound));
//! # Ok::<(), nvfp4_kernels::Error>(())
//! ```
#![deny(missing_docs)]

pub mod cuda;
mod diagnose;
mod env;
mod error;
mod format;
mod host;
pub mod loss;
mod policy;
mod reference;
mod swizzle;
mod tensor;
mod torch_ops;
pub mod train_ops;

pub use diagnose::diagnose;
pub use env::env_switch;
pub use error::{Error, Result};
pub use format::{
    e2m1_to_f32, e4m3_table, e4m3_to_f32, f32_to_e2m1, f32_to_e4m3, global_scale_for_amax,
    pack_nibbles, unpack_nibbles, ScaleMode, BLOCK_SIZE, E2M1_MAX, E2M1_VALUES, E4M3_MAX,
    E4M3_MAX_CODE, E4M3_NAN_CODE, TWO_LEVEL_DIVISOR,
};
pub use host::{check_pair_shapes, Nvfp4Host, Nvfp4HostRef};
pub use policy::{ComputePath, Nvfp4Backend};
pub use reference::{
    dequantize_ref, quant_error_bound, quantize_block, quantize_ref, quantize_ref_named,
};
pub use swizzle::{blocked_offset, blocked_shape, swizzle_scales, unswizzle_scales};
pub use tensor::Nvfp4Tensor;
pub use torch_ops::{
    dequantize, f32_to_e4m3_tensor, f_dequantize, f_fake_quantize, f_ste, fake_quantize, quantize,
    quantize_named, ste,
};
