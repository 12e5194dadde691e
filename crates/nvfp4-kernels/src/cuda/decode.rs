//! Launchers of `kernels/decode.cu`: the small fused ops of a batch-1 decode
//! step. Every launcher takes a [`KernelStream`] so a whole step can be
//! recorded into a CUDA graph, and only inspects tensor metadata (no
//! libtorch op runs, which a recording would not allow). Per-token inputs
//! come from `meta`, an i32 `[2]` device tensor holding (token id, position).

use cudarc::driver::LaunchConfig;
use tch::{Device, Kind, Tensor};

use super::checks::check_tensor;
use super::compile::KernelModule;
use super::graph::KernelStream;
use super::runtime::{dev_ptr, KernelArg};
use crate::error::{Error, Result};

/// Largest row [`rmsnorm`] normalises (threads x values per thread in the kernel).
pub const RMSNORM_MAX: usize = 512 * 16;

/// Head sizes the per-head kernels support (one warp per head, `D / 32` values a lane).
pub const DECODE_HEAD_DIMS: [usize; 4] = [32, 64, 128, 256];

/// Shapes of the attention side of a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeadLayout {
    /// Query heads.
    pub q_heads: usize,
    /// Key/value heads (divides `q_heads`).
    pub kv_heads: usize,
    /// Elements per head, one of [`DECODE_HEAD_DIMS`].
    pub head_dim: usize,
    /// Rows of each `[kv_heads, capacity, head_dim]` cache buffer.
    pub capacity: usize,
}

impl HeadLayout {
    /// Checks the layout against what the kernels support.
    pub fn check(&self) -> Result<()> {
        let bad = |message: String| Error::Cuda {
            op: "decode head layout".into(),
            message,
        };
        if !DECODE_HEAD_DIMS.contains(&self.head_dim) {
            return Err(bad(format!(
                "head_dim {} is not one of {DECODE_HEAD_DIMS:?}",
                self.head_dim
            )));
        }
        if self.kv_heads == 0 || !self.q_heads.is_multiple_of(self.kv_heads) {
            return Err(bad(format!(
                "{} query heads do not split into groups of {} kv heads",
                self.q_heads, self.kv_heads
            )));
        }
        if self.q_heads / self.kv_heads > 32 {
            return Err(bad("more than 32 query heads per kv head".into()));
        }
        Ok(())
    }

    fn epl(&self) -> usize {
        self.head_dim / 32
    }
}

/// [`check_tensor`] plus a 16-byte aligned start (the kernels' vector loads).
fn expect(
    name: &str,
    what: &'static str,
    t: &Tensor,
    kind: Kind,
    numel: usize,
    device: Device,
) -> Result<()> {
    check_tensor(name, what, t, kind, numel, device)?;
    if !dev_ptr(t).is_multiple_of(16) {
        return Err(Error::Cuda {
            op: name.into(),
            message: format!("{what} must start on a 16-byte boundary"),
        });
    }
    Ok(())
}

fn blocks(n: usize, threads: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: ((n as u32).div_ceil(threads).max(1), 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn launch(
    s: &KernelStream,
    name: &'static str,
    cfg: LaunchConfig,
    args: &[KernelArg],
) -> Result<()> {
    s.rt.launch_on(&s.stream, KernelModule::Decode, name, cfg, args)
}

/// `out[H] = table[meta[0], :]` (bf16). The caller checks the id (a
/// recorded step cannot report an error).
pub fn embed_row(s: &KernelStream, table: &Tensor, meta: &Tensor, out: &Tensor) -> Result<()> {
    let size = table.size();
    let hidden = out.numel();
    let dev = out.device();
    if size.len() != 2 || size[1] as usize != hidden {
        return Err(Error::ShapeMismatch {
            name: "embed_row".into(),
            what: "table",
            expected: vec![0, hidden],
            got: size.iter().map(|&d| d as usize).collect(),
        });
    }
    expect(
        "embed_row",
        "table",
        table,
        Kind::BFloat16,
        table.numel(),
        dev,
    )?;
    expect("embed_row", "meta", meta, Kind::Int, 2, dev)?;
    expect("embed_row", "out", out, Kind::BFloat16, hidden, dev)?;
    let args = [
        KernelArg::Ptr(dev_ptr(table)),
        KernelArg::Ptr(dev_ptr(meta)),
        KernelArg::Ptr(dev_ptr(out)),
        KernelArg::I32(hidden as i32),
    ];
    launch(s, "dec_embed_row", blocks(hidden, 256), &args)
}

/// RMSNorm of one bf16 row with the residual add folded in: with `delta`,
/// first `resid = bf16(resid + delta)` (in place); then
/// `out = bf16(resid * rsqrt(mean(resid^2) + eps) * weight)`, `weight` f32.
pub fn rmsnorm(
    s: &KernelStream,
    resid: &Tensor,
    delta: Option<&Tensor>,
    weight: &Tensor,
    out: &Tensor,
    eps: f32,
) -> Result<()> {
    let n = resid.numel();
    let dev = resid.device();
    if n == 0 || n > RMSNORM_MAX {
        return Err(Error::LengthMismatch {
            name: "rmsnorm".into(),
            what: "resid (at most RMSNORM_MAX)",
            expected: RMSNORM_MAX,
            got: n,
        });
    }
    expect("rmsnorm", "resid", resid, Kind::BFloat16, n, dev)?;
    if let Some(d) = delta {
        expect("rmsnorm", "delta", d, Kind::BFloat16, n, dev)?;
    }
    expect("rmsnorm", "weight", weight, Kind::Float, n, dev)?;
    expect("rmsnorm", "out", out, Kind::BFloat16, n, dev)?;
    let args = [
        KernelArg::Ptr(dev_ptr(resid)),
        KernelArg::Ptr(delta.map_or(0, dev_ptr)),
        KernelArg::Ptr(dev_ptr(weight)),
        KernelArg::Ptr(dev_ptr(out)),
        KernelArg::I32(n as i32),
        KernelArg::F32(eps),
    ];
    let cfg = LaunchConfig {
        grid_dim: (1, 1, 1),
        block_dim: (512, 1, 1),
        shared_mem_bytes: 0,
    };
    launch(s, "dec_rmsnorm", cfg, &args)
}

/// The projections' outputs of one token and where they go.
pub struct QkvIo<'a> {
    /// q_proj output, bf16 `[q_heads * D]`.
    pub q: &'a Tensor,
    /// k_proj output, bf16 `[kv_heads * D]`.
    pub k: &'a Tensor,
    /// v_proj output, bf16 `[kv_heads * D]`.
    pub v: &'a Tensor,
    /// Normalised, rotated queries, bf16 `[q_heads * D]`.
    pub q_out: &'a Tensor,
    /// Key cache of the layer, bf16 `[kv_heads, capacity, D]`.
    pub k_cache: &'a Tensor,
    /// Value cache of the layer, bf16 `[kv_heads, capacity, D]`.
    pub v_cache: &'a Tensor,
}

/// Per-head RMSNorm (`q_norm` / `k_norm`, f32 `[D]`), RoPE at position
/// `meta[1]` (frequencies `inv_freq`, f32 `[D/2]`), then the rotated key and
/// the value are written to cache row `meta[1]`.
#[allow(clippy::too_many_arguments)]
pub fn qk_norm_rope_append(
    s: &KernelStream,
    layout: &HeadLayout,
    io: &QkvIo<'_>,
    q_norm: &Tensor,
    k_norm: &Tensor,
    inv_freq: &Tensor,
    meta: &Tensor,
    eps: f32,
) -> Result<()> {
    layout.check()?;
    let (hq, hkv, d) = (layout.q_heads, layout.kv_heads, layout.head_dim);
    let dev = io.q.device();
    let name = "qk_norm_rope_append";
    let cache = hkv * layout.capacity * d;
    expect(name, "q", io.q, Kind::BFloat16, hq * d, dev)?;
    expect(name, "k", io.k, Kind::BFloat16, hkv * d, dev)?;
    expect(name, "v", io.v, Kind::BFloat16, hkv * d, dev)?;
    expect(name, "q_out", io.q_out, Kind::BFloat16, hq * d, dev)?;
    expect(name, "k_cache", io.k_cache, Kind::BFloat16, cache, dev)?;
    expect(name, "v_cache", io.v_cache, Kind::BFloat16, cache, dev)?;
    expect(name, "q_norm", q_norm, Kind::Float, d, dev)?;
    expect(name, "k_norm", k_norm, Kind::Float, d, dev)?;
    expect(name, "inv_freq", inv_freq, Kind::Float, d / 2, dev)?;
    expect(name, "meta", meta, Kind::Int, 2, dev)?;
    let kernel = match layout.epl() {
        1 => "dec_qk_rope_append_e1",
        2 => "dec_qk_rope_append_e2",
        4 => "dec_qk_rope_append_e4",
        _ => "dec_qk_rope_append_e8",
    };
    let warps_per_block = 4;
    let cfg = LaunchConfig {
        grid_dim: ((hq + hkv).div_ceil(warps_per_block) as u32, 1, 1),
        block_dim: (32 * warps_per_block as u32, 1, 1),
        shared_mem_bytes: 0,
    };
    let args = [
        KernelArg::Ptr(dev_ptr(io.q)),
        KernelArg::Ptr(dev_ptr(io.k)),
        KernelArg::Ptr(dev_ptr(io.v)),
        KernelArg::Ptr(dev_ptr(q_norm)),
        KernelArg::Ptr(dev_ptr(k_norm)),
        KernelArg::Ptr(dev_ptr(inv_freq)),
        KernelArg::Ptr(dev_ptr(meta)),
        KernelArg::Ptr(dev_ptr(io.q_out)),
        KernelArg::Ptr(dev_ptr(io.k_cache)),
        KernelArg::Ptr(dev_ptr(io.v_cache)),
        KernelArg::I32(hq as i32),
        KernelArg::I32(hkv as i32),
        KernelArg::I32(layout.capacity as i32),
        KernelArg::F32(eps),
    ];
    launch(s, kernel, cfg, &args)
}

/// Work buffers of [`attention`] for `splits` key splits.
pub struct AttnScratch {
    /// f32 `[q_heads, splits, D]` unnormalised partial outputs.
    pub part_o: Tensor,
    /// f32 `[q_heads, splits, 2]` (running max, sum of exponentials).
    pub part_ml: Tensor,
    /// Key splits (blocks per kv head).
    pub splits: usize,
}

impl AttnScratch {
    /// Buffers for `layout` on `device`, with enough splits to give every SM
    /// about two blocks.
    pub fn new(layout: &HeadLayout, sm_count: u32, device: Device) -> Result<AttnScratch> {
        let splits = (2 * sm_count as usize)
            .div_ceil(layout.kv_heads.max(1))
            .clamp(1, 64);
        let (hq, d) = (layout.q_heads as i64, layout.head_dim as i64);
        Ok(AttnScratch {
            part_o: Tensor::f_empty([hq, splits as i64, d], (Kind::Float, device))?,
            part_ml: Tensor::f_empty([hq, splits as i64, 2], (Kind::Float, device))?,
            splits,
        })
    }
}

/// Attention of one query token (bf16 `[q_heads * D]`, already rotated) over
/// cache rows `0..=meta[1]` of `(k_cache, v_cache)`, with grouped-query heads; `out` bf16
/// `[q_heads * D]`. Two launches: split-K partials, then their merge.
pub fn attention(
    s: &KernelStream,
    layout: &HeadLayout,
    q: &Tensor,
    (k_cache, v_cache): (&Tensor, &Tensor),
    meta: &Tensor,
    scratch: &AttnScratch,
    out: &Tensor,
) -> Result<()> {
    layout.check()?;
    let (hq, hkv, d) = (layout.q_heads, layout.kv_heads, layout.head_dim);
    let dev = q.device();
    let name = "attention";
    let cache = hkv * layout.capacity * d;
    let splits = scratch.splits;
    expect(name, "q", q, Kind::BFloat16, hq * d, dev)?;
    expect(name, "k_cache", k_cache, Kind::BFloat16, cache, dev)?;
    expect(name, "v_cache", v_cache, Kind::BFloat16, cache, dev)?;
    expect(name, "meta", meta, Kind::Int, 2, dev)?;
    expect(
        name,
        "part_o",
        &scratch.part_o,
        Kind::Float,
        hq * splits * d,
        dev,
    )?;
    expect(
        name,
        "part_ml",
        &scratch.part_ml,
        Kind::Float,
        hq * splits * 2,
        dev,
    )?;
    expect(name, "out", out, Kind::BFloat16, hq * d, dev)?;
    let group = hq / hkv;
    let kernel = match layout.epl() {
        1 => "dec_attn_split_e1",
        2 => "dec_attn_split_e2",
        4 => "dec_attn_split_e4",
        _ => "dec_attn_split_e8",
    };
    let split_cfg = LaunchConfig {
        grid_dim: (hkv as u32, splits as u32, 1),
        block_dim: (32 * group as u32, 1, 1),
        shared_mem_bytes: 0,
    };
    let scale = 1.0 / (d as f32).sqrt();
    let split_args = [
        KernelArg::Ptr(dev_ptr(q)),
        KernelArg::Ptr(dev_ptr(k_cache)),
        KernelArg::Ptr(dev_ptr(v_cache)),
        KernelArg::Ptr(dev_ptr(meta)),
        KernelArg::Ptr(dev_ptr(&scratch.part_o)),
        KernelArg::Ptr(dev_ptr(&scratch.part_ml)),
        KernelArg::I32(group as i32),
        KernelArg::I32(layout.capacity as i32),
        KernelArg::I32(splits as i32),
        KernelArg::F32(scale),
    ];
    launch(s, kernel, split_cfg, &split_args)?;
    let combine_cfg = LaunchConfig {
        grid_dim: (hq as u32, 1, 1),
        block_dim: (d.min(256) as u32, 1, 1),
        shared_mem_bytes: 0,
    };
    let combine_args = [
        KernelArg::Ptr(dev_ptr(&scratch.part_o)),
        KernelArg::Ptr(dev_ptr(&scratch.part_ml)),
        KernelArg::Ptr(dev_ptr(out)),
        KernelArg::I32(splits as i32),
        KernelArg::I32(d as i32),
    ];
    launch(s, "dec_attn_combine", combine_cfg, &combine_args)
}

/// `out = bf16(bf16(silu(gate)) * up)`, all bf16 of one length.
pub fn silu_mul(s: &KernelStream, gate: &Tensor, up: &Tensor, out: &Tensor) -> Result<()> {
    let n = gate.numel();
    let dev = gate.device();
    expect("silu_mul", "gate", gate, Kind::BFloat16, n, dev)?;
    expect("silu_mul", "up", up, Kind::BFloat16, n, dev)?;
    expect("silu_mul", "out", out, Kind::BFloat16, n, dev)?;
    let args = [
        KernelArg::Ptr(dev_ptr(gate)),
        KernelArg::Ptr(dev_ptr(up)),
        KernelArg::Ptr(dev_ptr(out)),
        KernelArg::I32(n as i32),
    ];
    launch(s, "dec_silu_mul", blocks(n, 256), &args)
}
