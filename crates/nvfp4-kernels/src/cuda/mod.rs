//! CUDA kernels for NVFP4 on Hopper (and any GPU of compute capability 8.0+):
//! quantize, dequantize, the fused STE weight pass, `y = x @ W^T` with a
//! fused W4A16 kernel for decode-sized inputs (one weight, or a group sharing
//! the activations), the decode-step ops (`decode.rs`), the fused AdamW update
//! (`adamw.rs`), the training-step ops (`train.rs`), and CUDA graphs of our
//! launches (`graph.rs`).
//!
//! The training-step kernels (`kernels/train.cu`, reached through
//! [`crate::train_ops`], which holds their tch-op references) cover the
//! small ops of one decoder block's forward and backward in bf16:
//! `tr_rmsnorm_fwd` (y and the per-row rstd), `tr_rmsnorm_bwd` (dx with the
//! residual gradient added, per-CTA partial dw), `tr_swiglu_fwd` /
//! `tr_swiglu_bwd` (SiLU(gate) * up and its gradients, on row-strided
//! views), `tr_qk_norm_rope_fwd` / `tr_qk_norm_rope_bwd` (per-head RMSNorm +
//! RoPE of q or k read in place from the qkv buffer, and its backward written
//! into the qkv gradient) and `tr_colsum`, which adds the partial weight
//! gradients in a fixed order (no float atomics: the results are
//! deterministic).
//! `loss.rs`: fused cross-entropy fwd + bwd (`kernels/loss.cu`), for [`crate::loss`].
//!
//! The CUDA C++ sources (`kernels/*.cu`) are embedded in the binary and
//! compiled at run time by NVRTC for the GPU present (`sm_90a` on Hopper),
//! with an on-disk cache, so building needs no CUDA toolkit and a machine
//! without a GPU still builds and runs everything else. Kernels take the
//! `data_ptr()` of contiguous tch CUDA tensors and run on the legacy default
//! stream, the stream libtorch uses, so they are ordered with torch ops
//! without extra synchronisation.
//!
//! Every function here returns the same bits as the scalar reference
//! ([`crate::quantize_ref`], [`crate::dequantize_ref`]) where the operation is
//! exact; the matmuls accumulate in f32 (see [`linear`]).
//!
//! ```no_run
//! # fn main() -> nvfp4_kernels::Result<()> {
//! use nvfp4_kernels::{cuda, ScaleMode};
//! use tch::{Device, Kind, Tensor};
//! let w = Tensor::randn([4096, 2560], (Kind::BFloat16, Device::Cuda(0)));
//! let q = cuda::quantize(&w, ScaleMode::Single)?;
//! let x = Tensor::randn([1, 2560], (Kind::BFloat16, Device::Cuda(0)));
//! let y = cuda::linear(&x, &q, &cuda::LinearOptions::default())?; // [1, 4096]
//! # let _ = y; Ok(()) }
//! ```

mod adamw;
pub(crate) mod checks;
mod compile;
mod decode;
mod dequant;
mod graph;
mod loss;
mod matmul;
mod quant;
mod runtime;
mod timing;
pub(crate) mod train;

pub use adamw::{adamw_int8_blocks, adamw_update, AdamwStep, MomentRef, ADAMW_INT8_BLOCK};
pub use compile::{cache_dir, KernelModule, Target};
pub use decode::{
    attention, embed_row, qk_norm_rope_append, rmsnorm, silu_mul, AttnScratch, HeadLayout, QkvIo,
    DECODE_HEAD_DIMS, RMSNORM_MAX,
};
pub use dequant::{dequantize, dequantize_into};
pub use graph::{capture_graph, KernelGraph, KernelStream};
pub use matmul::{
    dequant_matmul, gemv, gemv_group_on, gemv_on, gemv_out, linear, GemvConfig, LinearOptions,
    GEMV_GROUP_MAX, GEMV_MAX_ROWS,
};
pub use quant::{
    fake_quantize, fake_quantize_into, fake_quantize_packed, quantize, quantize_named,
    quantize_trusted, ste,
};
pub use runtime::MIN_COMPUTE_CAPABILITY;
pub use timing::time_gpu;

pub(crate) use compile::{nvrtc_version, supported_archs};
pub(crate) use loss::cross_entropy_rows;
pub(crate) use runtime::{libraries_present, runtime};

use tch::Device;

/// Checks that the kernels can run on `device`: a CUDA device whose compute
/// capability is at least [`MIN_COMPUTE_CAPABILITY`], with libcuda and NVRTC
/// loadable and every kernel module compiled and loaded. Err is the reason, in
/// words. The first call on a device compiles the modules (or reads them from
/// the cache).
pub fn check_available(device: Device) -> std::result::Result<(), String> {
    if !tch::Cuda::is_available() {
        return Err("libtorch reports no CUDA device".into());
    }
    let rt = runtime(device).map_err(|e| e.to_string())?;
    rt.load_all().map_err(|e| e.to_string())
}

/// Streaming multiprocessors of `device`'s GPU (sizes split-K launches).
pub fn sm_count(device: Device) -> crate::Result<u32> {
    Ok(runtime(device)?.sm_count)
}
