//! Key/value cache: one preallocated buffer pair per layer,
//! `[batch, kv_heads, capacity, head_dim]`, written in place.
//!
//! Appending never copies what is already cached; only when a request does
//! not fit is every buffer reallocated, once, rounded up to a whole number of
//! `grow_chunk` positions. `truncate` rewinds a conversation without
//! touching memory: later appends overwrite the dropped positions.

use tch::{Device, Kind, Tensor};

use crate::alloc;
use crate::error::{Error, Result};

/// Positions added per growth step when a forward does not fit.
pub const DEFAULT_GROW_CHUNK: usize = 512;

/// The cached keys and values of every layer, for one batch of sequences.
#[derive(Debug)]
pub struct KvCache {
    layers: Vec<(Tensor, Tensor)>, // (k, v), each [B, kv_heads, capacity, head_dim]
    len: usize,
    capacity: usize,
    batch: usize,
    kv_heads: usize,
    head_dim: usize,
    kind: Kind,
    device: Device,
    grow_chunk: usize,
}

impl KvCache {
    /// A cache for `num_layers` layers with room for `capacity` positions.
    /// `Qwen3Model::new_cache` is the usual way to get one. A capacity that
    /// cannot be allocated is an [`Error::OutOfMemory`] naming the bytes.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        num_layers: usize,
        batch: usize,
        kv_heads: usize,
        head_dim: usize,
        capacity: usize,
        kind: Kind,
        device: Device,
    ) -> Result<Self> {
        let mut cache = KvCache {
            layers: Vec::with_capacity(num_layers),
            len: 0,
            capacity,
            batch,
            kv_heads,
            head_dim,
            kind,
            device,
            grow_chunk: DEFAULT_GROW_CHUNK,
        };
        cache.layers = cache.alloc_layers(num_layers, capacity)?;
        Ok(cache)
    }

    /// Sets how many positions each growth step adds (at least 1).
    pub fn with_grow_chunk(mut self, chunk: usize) -> Self {
        self.grow_chunk = chunk.max(1);
        self
    }

    /// Zeroed (k, v) buffers for `num_layers` layers of `capacity`
    /// positions; the total is checked before the first one is allocated.
    fn alloc_layers(&self, num_layers: usize, capacity: usize) -> Result<Vec<(Tensor, Tensor)>> {
        let shape = [self.batch, self.kv_heads, capacity, self.head_dim];
        let what = format!(
            "kv cache of {num_layers} layers x 2 x {shape:?} {:?}",
            self.kind
        );
        let [b, h, c, d] = shape;
        let total = alloc::bytes_of(&what, &[2 * num_layers, b, h, c, d], self.kind)?;
        alloc::ensure_fits(&what, total, self.device)?;
        let one = || alloc::zeros(&what, &shape, self.kind, self.device);
        (0..num_layers).map(|_| Ok((one()?, one()?))).collect()
    }

    /// Number of cached positions.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Positions that fit before the buffers must grow.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Sequences per batch.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// Number of layers held.
    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// Forgets every cached position (memory is kept for reuse).
    pub fn reset(&mut self) {
        self.len = 0;
    }

    /// Keeps the first `len` positions (rewinding a conversation).
    pub fn truncate(&mut self, len: usize) -> Result<()> {
        if len > self.len {
            return Err(Error::Cache {
                reason: format!(
                    "cannot truncate to {len} positions: only {} are cached",
                    self.len
                ),
            });
        }
        self.len = len;
        Ok(())
    }

    /// Bytes allocated for keys and values (all layers, whole capacity).
    pub fn memory_bytes(&self) -> usize {
        let per_position = 2 * self.layers.len() * self.batch * self.kv_heads * self.head_dim;
        per_position * self.capacity * self.kind.elt_size_in_bytes()
    }

    /// Bytes holding live positions (`len` of `capacity`).
    pub fn used_bytes(&self) -> usize {
        match self.capacity {
            0 => 0,
            cap => self.memory_bytes() / cap * self.len,
        }
    }

    /// Keeps the sequences at batch positions `rows` (strictly increasing,
    /// each below `batch()`), in that order, and drops the others: every
    /// buffer is copied once and the batch becomes `rows.len()`. Lengths and
    /// capacity are unchanged. On error the cache is untouched.
    pub fn retain_rows(&mut self, rows: &[usize]) -> Result<()> {
        let increasing = rows.windows(2).all(|w| w[0] < w[1]);
        if rows.is_empty() || !increasing || rows.last().is_some_and(|&r| r >= self.batch) {
            return Err(Error::Cache {
                reason: format!(
                    "cannot keep rows {rows:?} of a batch of {}: want a non-empty, strictly \
                     increasing list of row indices below it",
                    self.batch
                ),
            });
        }
        let idx: Vec<i64> = rows.iter().map(|&r| r as i64).collect();
        let idx = Tensor::f_from_slice(&idx)?.f_to_device(self.device)?;
        let kept = self
            .layers
            .iter()
            .map(|(k, v)| Ok((k.f_index_select(0, &idx)?, v.f_index_select(0, &idx)?)))
            .collect::<Result<Vec<_>>>()?;
        self.layers = kept;
        self.batch = rows.len();
        Ok(())
    }

    /// Checks that a model with this layout can use the cache.
    pub(crate) fn check_fits(
        &self,
        num_layers: usize,
        batch: usize,
        kv_heads: usize,
        head_dim: usize,
        kind: Kind,
        device: Device,
    ) -> Result<()> {
        let want = (num_layers, batch, kv_heads, head_dim, kind, device);
        let got = (
            self.layers.len(),
            self.batch,
            self.kv_heads,
            self.head_dim,
            self.kind,
            self.device,
        );
        if want != got {
            return Err(Error::Cache {
                reason: format!(
                    "(layers, batch, kv_heads, head_dim, kind, device) = {got:?}, the model and input need {want:?}"
                ),
            });
        }
        Ok(())
    }

    /// Makes room for `extra` more positions, reallocating at most once.
    pub(crate) fn reserve(&mut self, extra: usize) -> Result<()> {
        let needed = self.len.checked_add(extra).ok_or_else(|| Error::Cache {
            reason: format!("{} + {extra} positions overflow", self.len),
        })?;
        if needed <= self.capacity {
            return Ok(());
        }
        let new_cap = needed.div_ceil(self.grow_chunk) * self.grow_chunk;
        tracing::debug!(from = self.capacity, to = new_cap, "growing kv cache");
        let live = self.len as i64;
        let grown = self.alloc_layers(self.layers.len(), new_cap)?;
        for ((k, v), (k2, v2)) in self.layers.iter().zip(&grown) {
            k2.f_narrow(2, 0, live)?.f_copy_(&k.f_narrow(2, 0, live)?)?;
            v2.f_narrow(2, 0, live)?.f_copy_(&v.f_narrow(2, 0, live)?)?;
        }
        self.layers = grown;
        self.capacity = new_cap;
        Ok(())
    }

    /// Writes k/v ([B, kv_heads, T, head_dim]) of `layer` after the cached
    /// positions and returns views of everything cached so far plus them,
    /// [B, kv_heads, len+T, head_dim]. `reserve(T)` must have been called;
    /// `commit(T)` advances `len` once every layer has been written.
    pub(crate) fn append(&mut self, layer: usize, k: &Tensor, v: &Tensor) -> (Tensor, Tensor) {
        let t = k.size()[2];
        let start = self.len as i64;
        let (kc, vc) = &self.layers[layer];
        kc.narrow(2, start, t).copy_(k);
        vc.narrow(2, start, t).copy_(v);
        (kc.narrow(2, 0, start + t), vc.narrow(2, 0, start + t))
    }

    /// Marks `t` appended positions as cached.
    /// The (k, v) buffers of `layer`, each `[B, kv_heads, capacity, head_dim]`
    /// (rows `len()..` hold stale or zero values).
    ///
    /// # Panics
    /// If `layer >= num_layers()`.
    pub fn layer_buffers(&self, layer: usize) -> (&Tensor, &Tensor) {
        let (k, v) = &self.layers[layer];
        (k, v)
    }

    pub(crate) fn commit(&mut self, t: usize) {
        self.len += t;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(cap: usize) -> KvCache {
        KvCache::new(2, 1, 2, 4, cap, Kind::Float, Device::Cpu)
            .unwrap()
            .with_grow_chunk(8)
    }

    fn kv(t: i64, fill: f64) -> Tensor {
        Tensor::full([1, 2, t, 4], fill, (Kind::Float, Device::Cpu))
    }

    #[test]
    fn memory_accounting_counts_both_buffers_of_every_layer() {
        let c = cache(10);
        assert_eq!(c.memory_bytes(), 2 * 2 * 2 * 4 * 10 * 4);
        assert_eq!(c.used_bytes(), 0);
    }

    #[test]
    fn growth_rounds_up_to_whole_chunks_and_keeps_cached_values() {
        let mut c = cache(4);
        c.reserve(3).unwrap();
        for layer in 0..2 {
            let _ = c.append(layer, &kv(3, 1.0), &kv(3, 2.0));
        }
        c.commit(3);
        c.reserve(6).unwrap(); // 9 needed -> 16
        assert_eq!(c.capacity(), 16);
        let (k, v) = c.append(1, &kv(6, 3.0), &kv(6, 4.0));
        assert_eq!(k.size(), [1, 2, 9, 4]);
        assert_eq!(k.narrow(2, 0, 3).mean(Kind::Float).double_value(&[]), 1.0);
        assert_eq!(v.narrow(2, 0, 3).mean(Kind::Float).double_value(&[]), 2.0);
        assert_eq!(k.narrow(2, 3, 6).mean(Kind::Float).double_value(&[]), 3.0);
        assert_eq!(c.memory_bytes(), 2 * 2 * 2 * 4 * 16 * 4);
    }

    #[test]
    fn reserve_within_capacity_does_not_reallocate() {
        let mut c = cache(8);
        let before = c.layers[0].0.data_ptr();
        c.reserve(8).unwrap();
        assert_eq!(c.layers[0].0.data_ptr(), before);
        assert_eq!(c.capacity(), 8);
    }

    #[test]
    fn truncate_beyond_len_is_an_error_and_reset_empties() {
        let mut c = cache(8);
        c.reserve(5).unwrap();
        c.commit(5);
        assert!(matches!(c.truncate(6), Err(Error::Cache { .. })));
        c.truncate(2).unwrap();
        assert_eq!(c.len(), 2);
        assert_eq!(c.used_bytes(), c.memory_bytes() / 8 * 2);
        c.reset();
        assert!(c.is_empty());
    }

    #[test]
    fn retained_rows_keep_their_values_in_order_and_bad_lists_are_refused() {
        let mut c = KvCache::new(2, 3, 2, 4, 4, Kind::Float, Device::Cpu).unwrap();
        c.reserve(2).unwrap();
        let rows = |fill: [f64; 3]| {
            let parts: Vec<Tensor> = fill
                .iter()
                .map(|&f| Tensor::full([1, 2, 2, 4], f, (Kind::Float, Device::Cpu)))
                .collect();
            Tensor::cat(&parts, 0)
        };
        for layer in 0..2 {
            let _ = c.append(layer, &rows([1.0, 2.0, 3.0]), &rows([-1.0, -2.0, -3.0]));
        }
        c.commit(2);
        for bad in [vec![], vec![2, 0], vec![1, 1], vec![3]] {
            assert!(c.retain_rows(&bad).is_err(), "{bad:?}");
        }
        assert_eq!(c.batch(), 3);
        c.retain_rows(&[0, 2]).unwrap();
        assert_eq!((c.batch(), c.len(), c.capacity()), (2, 2, 4));
        let (k, v) = c.layer_buffers(1);
        let first = |t: &Tensor, row: i64| {
            t.get(row)
                .narrow(1, 0, 2)
                .mean(Kind::Float)
                .double_value(&[])
        };
        assert_eq!((first(k, 0), first(k, 1)), (1.0, 3.0));
        assert_eq!((first(v, 0), first(v, 1)), (-1.0, -3.0));
    }

    #[test]
    fn a_cache_of_another_layout_is_rejected() {
        let c = cache(8);
        let e = c
            .check_fits(2, 3, 2, 4, Kind::Float, Device::Cpu)
            .unwrap_err();
        assert!(e.to_string().contains("kv cache"), "{e}");
        c.check_fits(2, 1, 2, 4, Kind::Float, Device::Cpu).unwrap();
    }
}
