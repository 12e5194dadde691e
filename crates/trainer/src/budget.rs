//! Memory estimates made from the configuration before anything is
//! allocated, so that a run that cannot fit is refused with the numbers
//! instead of being killed by the kernel (or the CUDA allocator) half-way.
//!
//! The estimates are deliberately on the low side (they leave out libtorch's
//! own overhead and allocator slack): a refusal means the run certainly does
//! not fit, and a run that passes may still be tight.

use qwen3_model::Qwen3Config;
use tch::{Device, Kind};

use crate::backprop::CE_CHUNK;
use crate::config::{Checkpointing, TrainConfig};
use crate::error::{Error, Result};
use crate::metrics::{human_bytes, memory_available};
use crate::optim::OptimStateKind;

/// Bytes per NVFP4-packed weight: 4 bits plus one FP8 scale per 16 values.
const PACKED_BYTES_PER_WEIGHT: f64 = 0.5 + 1.0 / 16.0;

/// Parameter counts of a Qwen3 configuration (f64: a hostile config must
/// not overflow the arithmetic that is about to refuse it).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ParamCounts {
    /// Token embedding (and the separate head when untied).
    pub embeddings: f64,
    /// Every projection of one block (q, k, v, o, gate, up, down).
    pub projections_per_layer: f64,
    /// Norm weights of one block.
    pub norms_per_layer: f64,
    /// Blocks.
    pub layers: f64,
}

impl ParamCounts {
    /// Counts for `cfg`.
    pub fn of(cfg: &Qwen3Config) -> Self {
        let h = cfg.hidden_size as f64;
        let (q, kv) = (cfg.q_dim() as f64, cfg.kv_dim() as f64);
        let heads = if cfg.tie_word_embeddings { 1.0 } else { 2.0 };
        Self {
            embeddings: heads * cfg.vocab_size as f64 * h,
            projections_per_layer: h * q
                + 2.0 * h * kv
                + q * h
                + 3.0 * h * cfg.intermediate_size as f64,
            norms_per_layer: 2.0 * h + 2.0 * cfg.head_dim as f64,
            layers: cfg.num_hidden_layers as f64,
        }
    }

    /// All parameters.
    pub fn total(&self) -> f64 {
        self.embeddings + self.layers * (self.projections_per_layer + self.norms_per_layer)
    }
}

/// Policies [`Checkpointing::Auto`] chooses from, fastest first.
const AUTO_POLICIES: [Checkpointing; 4] = [
    Checkpointing::Off,
    Checkpointing::Every(4),
    Checkpointing::Every(2),
    Checkpointing::On,
];

/// Which blocks a run of `train` recomputes, as "every k-th block" (0:
/// none, 1: all): as asked, or for [`Checkpointing::Auto`] the fastest
/// policy whose estimate fits the memory free on `device` now (every block
/// when none fits; none when the free memory is unknown).
pub fn resolve_checkpointing(
    cfg: &Qwen3Config,
    train: &TrainConfig,
    dtype: Kind,
    device: Device,
) -> usize {
    if let Some(k) = train.activation_checkpointing.recompute_every() {
        return k;
    }
    let free = memory_available(device);
    let need = |policy: Checkpointing| {
        let t = TrainConfig {
            activation_checkpointing: policy,
            ..train.clone()
        };
        training_estimate(cfg, &t, dtype).total()
    };
    let chosen = AUTO_POLICIES
        .into_iter()
        .find(|&p| free.is_none_or(|free| need(p) <= free as f64))
        .unwrap_or(Checkpointing::On);
    tracing::info!(
        "activation checkpointing auto: {chosen} (estimate {}, free {})",
        human_bytes(need(chosen) as u64),
        free.map_or("unknown".into(), human_bytes)
    );
    chosen.recompute_every().unwrap_or(1)
}

/// An estimate, by part, in bytes.
#[derive(Clone, Debug, PartialEq)]
pub struct MemoryEstimate {
    /// What the estimate is for ("training", "inference").
    pub what: &'static str,
    /// (part, bytes), e.g. ("weights", ..), ("optimizer state", ..).
    pub parts: Vec<(&'static str, f64)>,
}

impl MemoryEstimate {
    /// Adds a dense copy of every weight of `cfg` in `kind` (a distillation teacher).
    pub fn add_dense_copy(&mut self, cfg: &Qwen3Config, kind: Kind) {
        self.parts.push((
            "teacher weights",
            ParamCounts::of(cfg).total() * kind_bytes(kind),
        ));
    }

    /// The sum of the parts.
    pub fn total(&self) -> f64 {
        self.parts.iter().map(|p| p.1).sum()
    }

    /// Refuses with [`Error::WontFit`] when the total exceeds what `device`
    /// has available now (unknown availability: no check).
    pub fn check_fits(&self, device: Device) -> Result<()> {
        let Some(available) = memory_available(device) else {
            tracing::debug!(
                "available memory on {device:?} unknown: {} not checked",
                self.what
            );
            return Ok(());
        };
        let need = self.total();
        if need <= available as f64 {
            return Ok(());
        }
        let parts = self
            .parts
            .iter()
            .map(|(name, b)| format!("{name} {}", human_bytes_f(*b)))
            .collect::<Vec<_>>()
            .join(" + ");
        Err(Error::WontFit {
            what: self.what,
            need: human_bytes_f(need),
            parts,
            available: human_bytes(available),
            device: format!("{device:?}"),
        })
    }
}

fn human_bytes_f(b: f64) -> String {
    if b >= u64::MAX as f64 {
        format!("{b:.3e} bytes")
    } else {
        human_bytes(b as u64)
    }
}

fn kind_bytes(kind: Kind) -> f64 {
    match kind {
        Kind::Float => 4.0,
        Kind::Double => 8.0,
        _ => 2.0,
    }
}

/// Training: frozen packed weights, trainable masters, their gradients and
/// optimizer moments, and the activations of one micro-batch (`dtype` is the
/// compute kind).
pub fn training_estimate(cfg: &Qwen3Config, train: &TrainConfig, dtype: Kind) -> MemoryEstimate {
    training_estimate_per_rank(cfg, train, dtype, 1)
}

/// [`training_estimate`] for one rank of `world` data-parallel ranks: with
/// `train.zero1` the optimizer state is split `world` ways (an even split,
/// the low side of the shard plan's; `zero::memory_per_gpu` has the exact
/// count), the rest is the same on every rank.
pub fn training_estimate_per_rank(
    cfg: &Qwen3Config,
    train: &TrainConfig,
    dtype: Kind,
    world: usize,
) -> MemoryEstimate {
    let shards = if train.zero1 {
        world.max(1) as f64
    } else {
        1.0
    };
    let p = ParamCounts::of(cfg);
    let layers = p.layers;
    let trained_layers = train
        .train_last_layers
        .map_or(layers, |k| (k as f64).min(layers));
    let trainable = p.embeddings + trained_layers * (p.projections_per_layer + p.norms_per_layer);
    let frozen = (layers - trained_layers) * p.projections_per_layer;
    let master = kind_bytes(train.master_dtype.kind());
    let moment = match train.adamw.state {
        OptimStateKind::F32 => 4.0,
        OptimStateKind::BF16 => 2.0,
        OptimStateKind::Int8Block => 1.0,
    };
    let tokens = (train.batch_size as f64) * train.seq_len as f64;
    let act = kind_bytes(dtype);
    let h = cfg.hidden_size as f64;
    // Kept per token and block for the backward pass of a written-out block
    // (`qwen3_model::BlockTape`): its input and the residual after attention,
    // q/k/v before and q/k after their norm and RoPE, the attention output,
    // gate and up. A block recomputed in the backward keeps only its input.
    let (q, kv) = (cfg.q_dim() as f64, cfg.kv_dim() as f64);
    let per_token_layer = 2.0 * h + 3.0 * q + 3.0 * kv + 2.0 * cfg.intermediate_size as f64;
    // Recomputed blocks; `Auto` can always fall back to recomputing all: the
    // lowest estimate. The others keep their tape, and so does the block
    // being recomputed.
    let recomputed = match train.activation_checkpointing.recompute_every() {
        Some(0) => 0.0,
        Some(k) => (trained_layers / k as f64).ceil(),
        None => trained_layers,
    };
    let taped = trained_layers - recomputed + if recomputed > 0.0 { 1.0 } else { 0.0 };
    let activations = tokens * act * (per_token_layer * taped + h * recomputed)
        // One chunk of the written-out loss's logits, in the compute kind
        // (they become their own gradient in place).
        + tokens.min(CE_CHUNK as f64) * cfg.vocab_size as f64 * act;
    // ZeRO-1 with f32 masters and a narrower compute kind shards the masters
    // too: weights and gradients in the compute kind on every rank, the f32
    // masters split like the moments (`Trainer::shards_masters`).
    let weights: Vec<(&'static str, f64)> = if train.zero1 && master == 4.0 && act < 4.0 {
        vec![
            ("weights (compute kind)", trainable * act),
            ("f32 master shard", trainable * master / shards),
            ("gradients", trainable * act),
        ]
    } else {
        vec![
            ("master weights", trainable * master),
            ("gradients", trainable * master),
        ]
    };
    let mut parts = vec![("frozen weights", frozen * PACKED_BYTES_PER_WEIGHT)];
    parts.extend(weights);
    parts.extend([
        ("optimizer state", trainable * 2.0 * moment / shards),
        ("activations", activations),
    ]);
    MemoryEstimate {
        what: "training",
        parts,
    }
}

/// Inference: packed projections, embeddings and norms in `dtype`, and a KV
/// cache of `cache_tokens` positions.
pub fn inference_estimate(cfg: &Qwen3Config, dtype: Kind, cache_tokens: usize) -> MemoryEstimate {
    let p = ParamCounts::of(cfg);
    let b = kind_bytes(dtype);
    let kv = 2.0 * p.layers * cfg.kv_dim() as f64 * cache_tokens as f64 * b;
    MemoryEstimate {
        what: "inference",
        parts: vec![
            (
                "weights",
                p.layers * p.projections_per_layer * PACKED_BYTES_PER_WEIGHT,
            ),
            (
                "embeddings and norms",
                (p.embeddings + p.layers * p.norms_per_layer) * b,
            ),
            ("KV cache", kv),
            ("logits", cfg.vocab_size as f64 * 4.0 * cache_tokens as f64),
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qwen3_4b_has_about_four_billion_parameters() {
        let n = ParamCounts::of(&Qwen3Config::qwen3_4b()).total();
        assert!((3.9e9..4.1e9).contains(&n), "{n}");
    }

    #[test]
    fn a_billion_layers_is_refused_with_the_numbers() {
        let cfg = Qwen3Config {
            num_hidden_layers: 1_000_000_000,
            ..Qwen3Config::qwen3_4b()
        };
        let e = training_estimate(&cfg, &TrainConfig::default(), Kind::Float)
            .check_fits(Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("training needs") && e.contains("master weights"),
            "{e}"
        );
        assert!(e.contains("available"), "{e}");
        let e = inference_estimate(&cfg, Kind::Float, 128)
            .check_fits(Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("inference needs") && e.contains("KV cache"),
            "{e}"
        );
    }

    #[test]
    fn optimizer_state_shrinks_with_its_precision_and_checkpointing_saves_activations() {
        let cfg = Qwen3Config::qwen3_4b();
        let part = |e: &MemoryEstimate, name: &str| e.parts.iter().find(|p| p.0 == name).unwrap().1;
        let mut t = TrainConfig {
            activation_checkpointing: Checkpointing::Off,
            ..TrainConfig::default()
        };
        let f32_state = part(&training_estimate(&cfg, &t, Kind::Float), "optimizer state");
        t.adamw.state = OptimStateKind::Int8Block;
        let int8 = training_estimate(&cfg, &t, Kind::Float);
        assert_eq!(f32_state / part(&int8, "optimizer state"), 4.0);
        t.activation_checkpointing = Checkpointing::On;
        let ckpt = training_estimate(&cfg, &t, Kind::Float);
        assert!(part(&ckpt, "activations") < part(&int8, "activations") / 4.0);
    }

    /// The estimate against the H200 measurements of docs/PERF.md (session
    /// 6, full-size Qwen3-4B, bf16 master and moments, seq 2048): at most the
    /// measured peak (the estimate leaves out libtorch's overhead) and within
    /// 8 % of it, so `auto` neither refuses nor recomputes what fits.
    #[test]
    fn estimate_tracks_the_measured_peaks() {
        let cfg = Qwen3Config::qwen3_4b();
        for (batch, ckpt, measured_gib) in [
            (4, Checkpointing::Off, 53.76),
            (1, Checkpointing::On, 31.42),
            (1, Checkpointing::Off, 36.46),
        ] {
            let mut t = TrainConfig {
                activation_checkpointing: ckpt,
                batch_size: batch,
                seq_len: 2048,
                master_dtype: crate::config::MasterDtype::Bf16,
                ..TrainConfig::default()
            };
            t.adamw.state = OptimStateKind::BF16;
            let gib = training_estimate(&cfg, &t, Kind::BFloat16).total() / 2f64.powi(30);
            println!("batch {batch}, checkpointing {ckpt}: estimate {gib:.2} GiB, measured {measured_gib}");
            assert!(
                gib <= measured_gib && gib >= 0.92 * measured_gib,
                "{gib} vs {measured_gib}"
            );
        }
    }

    #[test]
    fn each_auto_policy_needs_less_memory_than_the_one_before() {
        let cfg = Qwen3Config::qwen3_4b();
        let need = |p| {
            let t = TrainConfig {
                activation_checkpointing: p,
                batch_size: 4,
                seq_len: 2048,
                ..TrainConfig::default()
            };
            training_estimate(&cfg, &t, Kind::BFloat16).total()
        };
        let needs: Vec<f64> = AUTO_POLICIES.into_iter().map(need).collect();
        assert!(
            needs.windows(2).all(|w| w[0] > w[1]),
            "off, every-4, every-2, on must need less and less: {needs:?}"
        );
        assert_eq!(
            "every-2".parse::<Checkpointing>().unwrap(),
            Checkpointing::Every(2)
        );
        assert_eq!(
            "every-1".parse::<Checkpointing>().unwrap(),
            Checkpointing::On
        );
        assert_eq!(Checkpointing::Every(3).to_string(), "every-3");
        for bad in ["every-0", "every-", "every-x", "sometimes"] {
            assert!(bad.parse::<Checkpointing>().is_err(), "{bad}");
        }
    }

    #[test]
    fn auto_checkpointing_recomputes_only_when_the_run_would_not_fit() {
        let small = Qwen3Config {
            num_hidden_layers: 2,
            hidden_size: 64,
            intermediate_size: 128,
            vocab_size: 512,
            ..Qwen3Config::qwen3_4b()
        };
        let t = |c| TrainConfig {
            activation_checkpointing: c,
            ..TrainConfig::default()
        };
        let resolve =
            |cfg: &Qwen3Config, c| resolve_checkpointing(cfg, &t(c), Kind::Float, Device::Cpu);
        assert_eq!(resolve(&small, Checkpointing::On), 1);
        assert_eq!(resolve(&small, Checkpointing::Off), 0);
        assert_eq!(resolve(&small, Checkpointing::Every(3)), 3);
        assert_eq!(resolve(&small, Checkpointing::Auto), 0, "a tiny run fits");
        // Activations of 100k layers without recomputation exceed any host.
        let deep = Qwen3Config {
            num_hidden_layers: 100_000,
            ..small
        };
        assert_eq!(resolve(&deep, Checkpointing::Auto), 1);
        assert_eq!(
            resolve(&deep, Checkpointing::Off),
            0,
            "an explicit choice stands"
        );
    }
}
