//! ZeRO-1: the AdamW state sharded across the ranks of a data-parallel group.
//!
//! - Partition: whole tensors, each owned by one rank ([`ShardPlan`]): the
//!   largest tensor first, each to the rank holding the fewest elements so
//!   far (lowest rank on ties). Deterministic from the shapes alone, so every
//!   rank computes the same plan; whole tensors keep the fused per-tensor
//!   AdamW kernel and the checkpoint's per-tensor names unchanged.
//! - Per step: each tensor's gradient is summed into its owner (c10d
//!   `reduce`, the whole-tensor form of reduce-scatter) as the backward
//!   produces it; the global gradient norm is the sum of the owners' partial
//!   sums of squares (one scalar all-reduce); each rank updates its own
//!   tensors; then each tensor is broadcast from its owner (the whole-tensor
//!   form of all-gather), so every rank's weights are bitwise identical.
//! - What is sharded: the moments, and with f32 masters (the default) and
//!   a narrower compute kind (bf16 on CUDA) the master weights too: every
//!   rank keeps the weights and gradients whole in the compute kind, and the
//!   f32 masters of the tensors it owns only, in its optimizer
//!   (`AdamW::shard_masters`); the owner updates a master and broadcasts its
//!   rounding. The gradients stay whole (ZeRO-1, not -2).
//!
//! [`memory_per_gpu`] counts what that leaves on each GPU, exactly, from the
//! tensor shapes of a [`Qwen3Config`].

use qwen3_model::{Qwen3Config, WeightSchema};

use crate::config::MasterDtype;
use crate::optim::{OptimStateKind, QUANT_BLOCK};

/// Which rank owns (updates, and keeps the AdamW state of) each tensor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardPlan {
    owner: Vec<usize>,
    world: usize,
}

impl ShardPlan {
    /// Greedy balance of `sizes` (elements per tensor, in optimizer order)
    /// over `world` ranks: largest first, each to the least loaded rank
    /// (lowest rank on ties, then the earlier tensor first on equal sizes).
    pub fn new(sizes: &[u64], world: usize) -> Self {
        let world = world.max(1);
        let mut order: Vec<usize> = (0..sizes.len()).collect();
        order.sort_by_key(|&i| (std::cmp::Reverse(sizes[i]), i));
        let mut load = vec![0u64; world];
        let mut owner = vec![0; sizes.len()];
        for i in order {
            let rank = (0..world)
                .min_by_key(|&r| (load[r], r))
                .expect("world >= 1");
            owner[i] = rank;
            load[rank] += sizes[i];
        }
        ShardPlan { owner, world }
    }

    /// The rank that owns tensor `i`.
    pub fn owner(&self, i: usize) -> usize {
        self.owner[i]
    }

    /// Number of ranks.
    pub fn world_size(&self) -> usize {
        self.world
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.owner.len()
    }

    /// Whether the plan covers no tensor.
    pub fn is_empty(&self) -> bool {
        self.owner.is_empty()
    }

    /// The tensors `rank` owns, in optimizer order.
    pub fn owned_by(&self, rank: usize) -> Vec<usize> {
        (0..self.owner.len())
            .filter(|&i| self.owner[i] == rank)
            .collect()
    }
}

/// Bytes one AdamW moment of `numel` elements takes in `state`.
pub fn moment_bytes(state: OptimStateKind, numel: u64) -> u64 {
    match state {
        OptimStateKind::F32 => 4 * numel,
        OptimStateKind::BF16 => 2 * numel,
        // u8 codes padded to whole blocks, one f32 absmax per block.
        OptimStateKind::Int8Block => {
            let blocks = numel.div_ceil(QUANT_BLOCK as u64).max(1);
            blocks * QUANT_BLOCK as u64 + 4 * blocks
        }
    }
}

/// Training state on one GPU of a full fine-tuning run (every tensor
/// trained), in bytes. Activations, the CUDA context and allocator slack
/// come on top (see `training_estimate` for an activation estimate).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryPerGpu {
    /// Trainable tensors as the forward reads them, whole on every rank: in
    /// the master precision, or in bf16 when ZeRO-1 shards f32 masters
    /// (nothing stays NVFP4-packed when every block trains).
    pub weights: u64,
    /// Their gradients (same precision), whole on every rank.
    pub gradients: u64,
    /// Both AdamW moments of the tensors this rank updates: all of them
    /// without ZeRO-1, the most loaded rank's shard with it.
    pub moments: u64,
    /// The f32 masters of that shard, when ZeRO-1 shards them (f32 masters
    /// computing in bf16, the CUDA case); 0 when the weights are the masters.
    pub masters: u64,
}

impl MemoryPerGpu {
    /// Sum of the parts.
    pub fn total(&self) -> u64 {
        self.weights + self.gradients + self.moments + self.masters
    }
}

/// Exact per-GPU training state of full fine-tuning of `cfg` at `world`
/// ranks, master weights of `master`, moments of `state`, with or without
/// ZeRO-1 (the per-GPU figure is the most loaded rank's, by the same
/// [`ShardPlan`] the trainer uses), computing in bf16 (CUDA): with ZeRO-1,
/// f32 masters are sharded behind bf16 weights.
pub fn memory_per_gpu(
    cfg: &Qwen3Config,
    master: MasterDtype,
    state: OptimStateKind,
    world: usize,
    zero1: bool,
) -> MemoryPerGpu {
    // The trainable tensors: the schema's, less an absent (tied) head.
    let sizes: Vec<u64> = WeightSchema::new(cfg)
        .tensors()
        .iter()
        .filter(|t| t.required)
        .map(|t| t.shape.iter().product::<usize>() as u64)
        .collect();
    let params: u64 = sizes.iter().sum();
    let sharded_masters = zero1 && master == MasterDtype::F32;
    let weight_bytes = if sharded_masters {
        2
    } else {
        master.kind().elt_size_in_bytes() as u64
    };
    let shards = if zero1 { world.max(1) } else { 1 };
    let plan = ShardPlan::new(&sizes, shards);
    // (moments, masters) of each rank's share; the most loaded rank's.
    let (moments, masters) = (0..shards)
        .map(|r| {
            let owned = plan.owned_by(r);
            let moments = owned
                .iter()
                .map(|&i| 2 * moment_bytes(state, sizes[i]))
                .sum::<u64>();
            let masters = if sharded_masters {
                owned.iter().map(|&i| 4 * sizes[i]).sum::<u64>()
            } else {
                0
            };
            (moments, masters)
        })
        .max_by_key(|(m, w)| m + w)
        .unwrap_or((0, 0));
    MemoryPerGpu {
        weights: params * weight_bytes,
        gradients: params * weight_bytes,
        moments,
        masters,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_balances_whole_tensors_deterministically() {
        let sizes = [10, 3, 7, 7, 1, 5];
        let plan = ShardPlan::new(&sizes, 3);
        // 10 -> r0; 7 (idx 2) -> r1; 7 (idx 3) -> r2; 5 -> r1 (7 < 10, ties: lower);
        // 3 -> r2 (7); 1 -> r0 (10 vs 12 vs 10: r0).
        assert_eq!(
            (0..6).map(|i| plan.owner(i)).collect::<Vec<_>>(),
            vec![0, 2, 1, 2, 0, 1]
        );
        assert_eq!(plan.owned_by(1), vec![2, 5]);
        assert_eq!(plan, ShardPlan::new(&sizes, 3));
        // One rank owns everything; more ranks than tensors leave some empty.
        assert!(ShardPlan::new(&sizes, 1).owned_by(0).len() == 6);
        assert!(ShardPlan::new(&[4, 4], 3).owned_by(2).is_empty());
    }

    /// A config small enough to count by hand.
    fn tiny() -> Qwen3Config {
        Qwen3Config {
            vocab_size: 10,
            hidden_size: 4,
            intermediate_size: 6,
            num_hidden_layers: 2,
            num_attention_heads: 2,
            num_key_value_heads: 1,
            head_dim: 2,
            tie_word_embeddings: false,
            ..Qwen3Config::qwen3_4b()
        }
    }

    #[test]
    fn memory_matches_a_hand_count() {
        let cfg = tiny();
        // Per block: q 4x4=16 (2 heads x 2), k 2x4=8, v 8, o 4x4=16,
        // gate/up/down 6x4=24 each (72), norms 4+4 and q/k norms 2+2: 132.
        // Embedding 40, head 40, final norm 4: 2 * 132 + 84 = 348.
        let one = memory_per_gpu(&cfg, MasterDtype::F32, OptimStateKind::F32, 1, false);
        assert_eq!(one.weights, 348 * 4);
        assert_eq!(one.gradients, 348 * 4);
        assert_eq!(one.moments, 348 * 8);
        let bf16 = memory_per_gpu(&cfg, MasterDtype::Bf16, OptimStateKind::BF16, 1, false);
        assert_eq!(bf16.total(), 348 * 2 * 2 + 348 * 4);
        // Without ZeRO-1 the world size changes nothing.
        assert_eq!(
            memory_per_gpu(&cfg, MasterDtype::F32, OptimStateKind::F32, 4, false),
            one
        );
        // Two ranks: tensors 40, 40, 24 x 6, 16 x 4, 8 x 4, 4 x 5, 2 x 4.
        // Greedy: 40 | 40, the six 24s alternate (112 | 112), then the 16s
        // (144 | 144), the 8s (160 | 160), the five 4s (172 | 168), the 2s
        // to the lighter rank (172 | 172, then 174 | 174): 174 each.
        // ZeRO-1 with f32 masters shards them behind bf16 weights and gradients.
        let two = memory_per_gpu(&cfg, MasterDtype::F32, OptimStateKind::F32, 2, true);
        assert_eq!(two.weights, 348 * 2);
        assert_eq!(two.gradients, 348 * 2);
        assert_eq!(two.moments, 174 * 8);
        assert_eq!(two.masters, 174 * 4);
        assert_eq!(one.masters, 0);
        // int8: per moment one byte per element padded to 256-element blocks,
        // plus a 4-byte absmax per block; every tensor here is one block.
        let int8 = memory_per_gpu(&cfg, MasterDtype::F32, OptimStateKind::Int8Block, 1, false);
        let tensors = 2 * (7 + 4) + 3; // per block: 7 projections + 4 norms
        assert_eq!(int8.moments, tensors * 2 * (256 + 4));
    }

    /// Qwen3-8B: hidden 4096, MLP 12288, 36 blocks, 32/8 heads of 128, untied.
    pub(crate) fn qwen3_8b() -> Qwen3Config {
        Qwen3Config {
            hidden_size: 4096,
            intermediate_size: 12288,
            tie_word_embeddings: false,
            ..Qwen3Config::qwen3_4b()
        }
    }

    /// Prints the table of docs/PERF.md ("Memory per GPU") and checks its shape.
    #[test]
    fn memory_table_for_qwen3_4b_and_8b() {
        let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
        for (model, cfg) in [
            ("Qwen3-4B", Qwen3Config::qwen3_4b()),
            ("Qwen3-8B", qwen3_8b()),
        ] {
            for (master, state, label) in [
                (
                    MasterDtype::Bf16,
                    OptimStateKind::BF16,
                    "bf16 master + bf16 moments",
                ),
                (
                    MasterDtype::F32,
                    OptimStateKind::F32,
                    "f32 master + f32 moments",
                ),
            ] {
                for world in [1, 2, 4, 8] {
                    let plain = memory_per_gpu(&cfg, master, state, world, false);
                    let zero = memory_per_gpu(&cfg, master, state, world, true);
                    println!(
                        "| {model} | {label} | {world} | {:.2} | {:.2} / {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
                        gib(plain.weights + plain.gradients),
                        gib(zero.weights),
                        gib(zero.gradients),
                        gib(zero.masters),
                        gib(plain.moments),
                        gib(zero.moments),
                        gib(plain.total()),
                        gib(zero.total()),
                    );
                    // The most loaded shard is within one tensor of an even split.
                    let largest =
                        2 * moment_bytes(state, (cfg.vocab_size * cfg.hidden_size) as u64);
                    assert!(zero.moments <= plain.moments / world as u64 + largest);
                    assert!(zero.moments >= plain.moments / world as u64);
                }
            }
        }
        let params = memory_per_gpu(&qwen3_8b(), MasterDtype::F32, OptimStateKind::F32, 1, false)
            .weights
            / 4;
        assert!((8.1e9..8.3e9).contains(&(params as f64)), "{params}");
    }
}
