//! Helpers shared by the integration tests: seeded randomness (the workspace's
//! test seed), random matrices whose blocks
//! cover every regime of the format.
#![allow(dead_code)]

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A ChaCha RNG seeded by the workspace's test seed (printed; replay with
/// `QWEN3_TEST_SEED=<seed>`).
pub fn rng() -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(test_support::seed())
}

/// The regimes a 16-element block is drawn from.
#[derive(Clone, Copy, Debug)]
pub enum Regime {
    /// Uniform values scaled by 2^e, e in [-20, 10].
    Normal,
    /// Exact E2M1 ties times a power of two, with a 6 x 2^e element so the
    /// scale is exact and every tie is exercised.
    Ties,
    /// amax/6 inside E4M3's subnormal range (scale codes 1..=7).
    SubnormalScale,
    /// amax/6 below half the smallest E4M3 subnormal: scale 0, codes 0.
    Vanishing,
    /// All zeros, with some -0.0.
    Zero,
    /// f32-subnormal inputs.
    F32Subnormal,
    /// Large magnitudes up to ~1e4 (Single mode saturates above 2688).
    Large,
}

const REGIMES: [Regime; 7] = [
    Regime::Normal,
    Regime::Ties,
    Regime::SubnormalScale,
    Regime::Vanishing,
    Regime::Zero,
    Regime::F32Subnormal,
    Regime::Large,
];

/// Fills one block of 16 values drawn from `regime`.
pub fn block(rng: &mut impl Rng, regime: Regime) -> [f32; 16] {
    let mut b = [0.0f32; 16];
    let unit = |rng: &mut dyn rand::RngCore| rng.gen_range(-1.0f32..=1.0);
    match regime {
        Regime::Normal => {
            let s = 2f32.powi(rng.gen_range(-20..=10)) * rng.gen_range(0.5f32..2.0);
            b.iter_mut().for_each(|v| *v = unit(rng) * s);
        }
        Regime::Ties => {
            const TIES: [f32; 14] = [
                0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 0.0,
            ];
            let s = 2f32.powi(rng.gen_range(-8..=6));
            b.iter_mut().for_each(|v| {
                let sign = if rng.gen_bool(0.5) { -1.0 } else { 1.0 };
                *v = sign * TIES[rng.gen_range(0..TIES.len())] * s;
            });
            b[rng.gen_range(0..16)] = 6.0 * s;
        }
        Regime::SubnormalScale => {
            let amax = rng.gen_range(6.0 * 2f32.powi(-10)..6.0 * 2f32.powi(-6));
            b.iter_mut().for_each(|v| *v = unit(rng) * amax);
            b[rng.gen_range(0..16)] = amax;
        }
        Regime::Vanishing => {
            let amax = rng.gen_range(0.0..6.0 * 2f32.powi(-10));
            b.iter_mut().for_each(|v| *v = unit(rng) * amax);
        }
        Regime::Zero => {
            b.iter_mut()
                .for_each(|v| *v = if rng.gen_bool(0.3) { -0.0 } else { 0.0 });
        }
        Regime::F32Subnormal => {
            b.iter_mut()
                .for_each(|v| *v = unit(rng) * f32::MIN_POSITIVE);
        }
        Regime::Large => {
            let s = rng.gen_range(100.0f32..10_000.0);
            b.iter_mut().for_each(|v| *v = unit(rng) * s);
        }
    }
    b
}

/// A random `[rows, cols]` matrix whose blocks come from random regimes.
pub fn matrix(rng: &mut impl Rng, rows: usize, cols: usize) -> Vec<f32> {
    let mut x = Vec::with_capacity(rows * cols);
    for _ in 0..rows * cols / 16 {
        let regime = REGIMES[rng.gen_range(0..REGIMES.len())];
        x.extend_from_slice(&block(rng, regime));
    }
    x
}

/// Random shape: 1..=max_rows rows, 16 x 1..=max_blocks columns.
pub fn shape(rng: &mut impl Rng, max_rows: usize, max_blocks: usize) -> (usize, usize) {
    (
        rng.gen_range(1..=max_rows),
        16 * rng.gen_range(1..=max_blocks),
    )
}
