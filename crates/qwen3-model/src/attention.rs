//! Causal grouped-query self-attention with per-head q/k RMSNorm and RoPE.
//!
//! Dimension legend: B batch, T new positions, P cached positions before
//! them, S = P + T key positions, Hq query heads, Hkv key/value heads, D head_dim.

use tch::{Device, Kind, Tensor};

use crate::error::Result;
use crate::kv_cache::KvCache;
use crate::linear::Linear;
use crate::norm::RmsNorm;
use crate::rope::Rotary;

/// Which key positions each query may see.
#[derive(Debug)]
pub(crate) enum AttnMask {
    /// Every query sees every key (one new token on top of a cache).
    All,
    /// Square causal mask (no cache, or an empty one): SDPA's `is_causal`.
    Causal,
    /// A chunk on top of a non-empty cache: bool [T, S], true = visible;
    /// query i (absolute position P+i) sees keys 0..=P+i. The original had no
    /// mask here, letting a chunk's early tokens see its later ones.
    /// Left-padded batches: bool [B, 1, T, S], one mask per row (see
    /// [`AttnContext::left_padded`]).
    Explicit(Tensor),
}

impl AttnMask {
    /// The mask for `t` new positions after `past` cached ones.
    pub(crate) fn for_chunk(past: usize, t: usize, device: Device) -> Self {
        match (past, t) {
            (_, 1) => AttnMask::All,
            (0, _) => AttnMask::Causal,
            _ => {
                let (p, t) = (past as i64, t as i64);
                let keys = Tensor::arange(p + t, (Kind::Int64, device)).unsqueeze(0); //      [1, S]
                let last = Tensor::arange_start(p, p + t, (Kind::Int64, device)).unsqueeze(1); // [T, 1]
                AttnMask::Explicit(keys.le_tensor(&last)) //                                   [T, S]
            }
        }
    }
}

/// Per-forward context shared by every layer: RoPE angles and the mask.
#[derive(Debug)]
pub(crate) struct AttnContext {
    pub(crate) cos: Tensor, // [T, D/2] f32, or [B, 1, T, D/2] per row
    pub(crate) sin: Tensor, // [T, D/2] f32, or [B, 1, T, D/2] per row
    pub(crate) mask: AttnMask,
}

impl AttnContext {
    /// `t` new positions starting at absolute position `offset`, of which
    /// `cached` earlier positions are held in a KV cache (0 without one).
    pub(crate) fn new(
        rotary: &Rotary,
        offset: usize,
        cached: usize,
        t: usize,
        device: Device,
    ) -> Self {
        let (cos, sin) = rotary.cos_sin(offset, t);
        AttnContext {
            cos,
            sin,
            mask: AttnMask::for_chunk(cached, t, device),
        }
    }

    /// `t` new slots after `cached` ones (all in one cache, or none) for a
    /// batch whose row b begins with `pad[b]` padding slots (left padding).
    /// Row b's first real token is RoPE position 0, so slot s has position
    /// `s - pad[b]`. A real query sees the real keys up to its own slot and
    /// never a padding key; a padding query sees only itself, which keeps
    /// its (unused) output finite: a query that sees nothing is NaN in SDPA,
    /// and a NaN value times a zero weight would leak into the real rows.
    /// Without padding this is [`AttnContext::new`], bit for bit.
    pub(crate) fn left_padded(
        rotary: &Rotary,
        pad: &[usize],
        cached: usize,
        t: usize,
        device: Device,
    ) -> Self {
        if pad.iter().all(|&p| p == 0) {
            return Self::new(rotary, cached, cached, t, device);
        }
        let (b, p, t) = (pad.len() as i64, cached as i64, t as i64);
        let pad: Vec<i64> = pad.iter().map(|&n| n as i64).collect();
        let pad = Tensor::from_slice(&pad).to_device(device).view([b, 1, 1]); //   [B, 1, 1]
        let slots = Tensor::arange_start(p, p + t, (Kind::Int64, device)); //       [T]
        let positions = (slots.view([1, t]) - pad.view([b, 1])).clamp_min(0); //   [B, T]
        let (cos, sin) = rotary.cos_sin_at(&positions);
        let keys = Tensor::arange(p + t, (Kind::Int64, device)).view([1, 1, -1]); // [1, 1, S]
        let query = slots.view([1, t, 1]); //                                        [1, T, 1]
        let own = keys.eq_tensor(&query); //                                         [1, T, S]
        let seen = keys.le_tensor(&query).logical_and(&keys.ge_tensor(&pad)); //     [B, T, S]
        AttnContext {
            cos,
            sin,
            mask: AttnMask::Explicit(seen.logical_or(&own).unsqueeze(1)), //        [B, 1, T, S]
        }
    }
}

/// `model.layers.{i}.self_attn`.
#[derive(Debug)]
pub(crate) struct Attention {
    pub(crate) q_proj: Linear,  // [Hq*D, hidden]
    pub(crate) k_proj: Linear,  // [Hkv*D, hidden]
    pub(crate) v_proj: Linear,  // [Hkv*D, hidden]
    pub(crate) o_proj: Linear,  // [hidden, Hq*D]
    pub(crate) q_norm: RmsNorm, // [D]
    pub(crate) k_norm: RmsNorm, // [D]
    pub(crate) num_heads: usize,
    pub(crate) num_kv_heads: usize,
    pub(crate) head_dim: usize,
}

impl Attention {
    /// x: [B, T, hidden] -> [B, T, hidden]. With a cache, this layer's new
    /// K/V are written after the cached positions and attention spans both.
    pub(crate) fn forward(
        &self,
        x: &Tensor,
        ctx: &AttnContext,
        cache: Option<(&mut KvCache, usize)>,
    ) -> Result<Tensor> {
        let (b, t) = (x.size()[0], x.size()[1]);
        let (hq, hkv, d) = (
            self.num_heads as i64,
            self.num_kv_heads as i64,
            self.head_dim as i64,
        );
        let kind = x.kind();

        // 1. Projections, split into heads.
        let q = self.q_proj.forward(x)?.view([b, t, hq, d]); //  [B, T, Hq, D]
        let k = self.k_proj.forward(x)?.view([b, t, hkv, d]); // [B, T, Hkv, D]
        let v = self.v_proj.forward(x)?.view([b, t, hkv, d]).transpose(1, 2); // [B, Hkv, T, D]

        // 2. Per-head RMSNorm on q and k, before RoPE (Qwen3's QK-norm), in f32.
        let q = self.q_norm.forward_f32(&q).transpose(1, 2); // [B, Hq, T, D] f32
        let k = self.k_norm.forward_f32(&k).transpose(1, 2); // [B, Hkv, T, D] f32

        // 3. RoPE at absolute positions P..P+T, then back to the compute kind.
        let q = Rotary::apply(&q, &ctx.cos, &ctx.sin).to_kind(kind);
        let k = Rotary::apply(&k, &ctx.cos, &ctx.sin).to_kind(kind);

        // 4. Append to the cache; attend over cached + new keys.
        let (k, v) = match cache {
            Some((cache, layer)) => cache.append(layer, &k, &v), // [B, Hkv, S, D]
            None => (k, v),
        };

        // 5. Causal GQA attention (each KV head serves Hq/Hkv query heads).
        let (mask, is_causal) = match &ctx.mask {
            AttnMask::All => (None, false),
            AttnMask::Causal => (None, true),
            AttnMask::Explicit(m) => (Some(m), false),
        };
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let y =
            Tensor::f_scaled_dot_product_attention(&q, &k, &v, mask, 0.0, is_causal, scale, true)?; // [B, Hq, T, D]

        // 6. Merge heads and project out.
        let y = y.transpose(1, 2).contiguous().view([b, t, hq * d]); // [B, T, Hq*D]
        self.o_proj.forward(&y) //                                        [B, T, hidden]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_mask_lets_each_query_see_the_cache_and_its_own_past_only() {
        let AttnMask::Explicit(m) = AttnMask::for_chunk(3, 2, Device::Cpu) else {
            panic!("expected an explicit mask");
        };
        let got: Vec<bool> = Vec::try_from(m.view([-1])).unwrap();
        let want = [
            true, true, true, true, false, // query at position 3
            true, true, true, true, true, //  query at position 4
        ];
        assert_eq!(got, want);
    }

    #[test]
    fn left_padding_hides_padding_keys_and_shifts_positions() {
        let r = Rotary::new(4, 1e4, Device::Cpu);
        // Row 0: no padding; row 1: 2 padding slots. 1 cached slot, 3 new.
        let ctx = AttnContext::left_padded(&r, &[0, 2], 1, 3, Device::Cpu);
        let AttnMask::Explicit(m) = &ctx.mask else {
            panic!("expected an explicit mask");
        };
        assert_eq!(m.size(), [2, 1, 3, 4]);
        let got: Vec<bool> = Vec::try_from(m.view([-1])).unwrap();
        let (t, f) = (true, false);
        let want = [
            t, t, f, f, t, t, t, f, t, t, t, t, // row 0: causal
            f, t, f, f, f, f, t, f, f, f, t, t, // row 1: slot 1 is padding (sees itself)
        ];
        assert_eq!(got, want);
        // Positions: row 0 slots 1..4 -> 1, 2, 3; row 1 -> 0 (clamped), 0, 1.
        let (cos_shared, _) = r.cos_sin(0, 4);
        let want_rows = [[1i64, 2, 3], [0, 0, 1]];
        for (row, pos) in want_rows.iter().enumerate() {
            for (j, &p) in pos.iter().enumerate() {
                let d = (ctx.cos.get(row as i64).get(0).get(j as i64) - cos_shared.get(p))
                    .abs()
                    .max()
                    .double_value(&[]);
                assert_eq!(d, 0.0, "row {row} slot {j}");
            }
        }
    }

    #[test]
    fn left_padding_of_zero_is_the_plain_context() {
        let r = Rotary::new(4, 1e4, Device::Cpu);
        let ctx = AttnContext::left_padded(&r, &[0, 0], 0, 3, Device::Cpu);
        assert!(matches!(ctx.mask, AttnMask::Causal));
        assert_eq!(ctx.cos.size(), [3, 2]);
    }

    #[test]
    fn single_token_and_empty_cache_need_no_explicit_mask() {
        assert!(matches!(
            AttnMask::for_chunk(5, 1, Device::Cpu),
            AttnMask::All
        ));
        assert!(matches!(
            AttnMask::for_chunk(0, 1, Device::Cpu),
            AttnMask::All
        ));
        assert!(matches!(
            AttnMask::for_chunk(0, 4, Device::Cpu),
            AttnMask::Causal
        ));
    }
}
