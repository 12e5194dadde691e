//! Property tests of the format (proptest; failures are shrunk and saved by
//! proptest, replay them with the printed seed):
//! * `dequant(quant(x))` stays within [`quant_error_bound`] (derived on that
//!   function) for every finite `x`, both scale modes;
//! * `quant(dequant(q)) == q` for every `q` meeting the precondition stated in
//!   the `reference` module doc (reference and tch path);
//! * swizzle / unswizzle round-trip for any shape;
//! * the tch path's bytes equal the reference's for any finite input and kind.

use half::{bf16, f16};
use nvfp4_kernels::{
    dequantize, dequantize_ref, global_scale_for_amax, quant_error_bound, quantize, quantize_ref,
    swizzle_scales, unswizzle_scales, Nvfp4HostRef, Nvfp4Tensor, ScaleMode, BLOCK_SIZE,
};
use proptest::prelude::*;
use tch::{Device, Kind, Tensor};

/// One block of 16 finite values from one of several regimes.
fn block() -> impl Strategy<Value = Vec<f32>> {
    let unit = || prop::collection::vec(-1.0f32..=1.0, BLOCK_SIZE);
    let tie = prop::sample::select(vec![
        0.0f32, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 3.5, 4.0, 5.0,
    ]);
    prop_oneof![
        // Ordinary weights over a wide range of magnitudes.
        (unit(), -24i32..=12).prop_map(|(v, e)| v.iter().map(|x| x * 2f32.powi(e)).collect()),
        // Exact E2M1 ties, with a 6 * 2^e element so the scale is exactly 2^e.
        (
            prop::collection::vec((tie, any::<bool>()), BLOCK_SIZE),
            -8i32..=6,
            0..BLOCK_SIZE
        )
            .prop_map(|(v, e, at)| {
                let mut b: Vec<f32> = v
                    .iter()
                    .map(|&(t, neg)| if neg { -t } else { t } * 2f32.powi(e))
                    .collect();
                b[at] = 6.0 * 2f32.powi(e);
                b
            }),
        // amax/6 in or below E4M3's subnormal range.
        (unit(), 6.0f32 * 2f32.powi(-12)..6.0 * 2f32.powi(-6))
            .prop_map(|(v, a)| v.iter().map(|x| x * a).collect()),
        // Zero blocks, signed zeros included.
        prop::collection::vec(prop::sample::select(vec![0.0f32, -0.0]), BLOCK_SIZE),
        // f32 subnormals and values near f32's limits.
        (
            unit(),
            prop::sample::select(vec![f32::MIN_POSITIVE, 1e-40, 1e30, 1e38])
        )
            .prop_map(|(v, s)| v.iter().map(|x| x * s).collect()),
        // Any finite bit pattern.
        prop::collection::vec(
            any::<u32>()
                .prop_map(f32::from_bits)
                .prop_filter("finite", |x| x.is_finite()),
            BLOCK_SIZE
        ),
    ]
}

/// A `[rows, cols]` matrix: (rows, cols, row-major values).
fn matrix() -> impl Strategy<Value = (usize, usize, Vec<f32>)> {
    (1usize..=5, 1usize..=5).prop_flat_map(|(rows, nb)| {
        prop::collection::vec(block(), rows * nb)
            .prop_map(move |blocks| (rows, nb * BLOCK_SIZE, blocks.concat()))
    })
}

fn mode() -> impl Strategy<Value = ScaleMode> {
    prop::sample::select(vec![ScaleMode::Single, ScaleMode::TwoLevel])
}

/// A valid `q` meeting the round-trip precondition: each block has a scale in
/// 0x01..=0x7E and a +-6 code, or is all zero with scale 0.
fn round_trip_blocks(rows: usize, nb: usize) -> impl Strategy<Value = (Vec<u8>, Vec<u8>)> {
    let one = (
        any::<bool>(),
        0x01u8..=0x7E,
        prop::collection::vec(0u8..16, BLOCK_SIZE),
        0..BLOCK_SIZE,
        any::<bool>(),
    )
        .prop_map(|(zero, s, mut codes, at, neg)| {
            if zero {
                return (0u8, vec![0u8; BLOCK_SIZE]);
            }
            codes[at] = if neg { 0xF } else { 0x7 };
            (s, codes)
        });
    prop::collection::vec(one, rows * nb).prop_map(|blocks| {
        let scale = blocks.iter().map(|b| b.0).collect();
        let qdata = blocks
            .iter()
            .flat_map(|b| {
                b.1.chunks_exact(2)
                    .map(|p| p[0] | p[1] << 4)
                    .collect::<Vec<_>>()
            })
            .collect();
        (qdata, scale)
    })
}

fn tensor_of(x: &[f32], rows: usize, cols: usize, kind: Kind) -> Tensor {
    Tensor::from_slice(x)
        .view([rows as i64, cols as i64])
        .to_kind(kind)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn dequant_of_quant_is_within_the_format_bound((rows, cols, x) in matrix(), mode in mode()) {
        let q = quantize_ref(&x, rows, cols, mode).unwrap();
        let y = dequantize_ref(&q.as_ref());
        let mut worst = 0.0f64; // largest error / bound seen, printed on failure
        for (blk, (xb, yb)) in x.chunks(BLOCK_SIZE).zip(y.chunks(BLOCK_SIZE)).enumerate() {
            let amax = xb.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let bound = quant_error_bound(amax, q.global_scale);
            for (a, b) in xb.iter().zip(yb) {
                let err = (*a as f64 - *b as f64).abs();
                worst = worst.max(err / bound);
                prop_assert!(err <= bound, "block {blk}: x {a:e} -> {b:e}, err {err:e} > bound {bound:e} (amax {amax:e}, {mode:?}, g {:?})", q.global_scale);
            }
        }
        prop_assert!(worst <= 1.0, "max err/bound {worst}");
    }

    #[test]
    fn two_level_global_scale_follows_the_tensor_amax((rows, cols, x) in matrix()) {
        let q = quantize_ref(&x, rows, cols, ScaleMode::TwoLevel).unwrap();
        let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        prop_assert_eq!(q.global_scale, Some(global_scale_for_amax(amax)));
        // No block scale exceeds 448: two-level never saturates.
        prop_assert!(q.scale.iter().all(|&s| s <= 0x7E));
    }

    #[test]
    fn quant_of_dequant_is_identity_in_single_mode(
        (rows, nb, (qdata, scale)) in (1usize..=4, 1usize..=4).prop_flat_map(|(r, n)| (Just(r), Just(n), round_trip_blocks(r, n)))
    ) {
        let cols = nb * BLOCK_SIZE;
        let q = Nvfp4HostRef::new(&qdata, &scale, rows, cols, None).unwrap();
        let x = dequantize_ref(&q);
        let back = quantize_ref(&x, rows, cols, ScaleMode::Single).unwrap();
        prop_assert_eq!(&back.scale, &scale);
        prop_assert_eq!(&back.qdata, &qdata);
        prop_assert_eq!(back.global_scale, None);
        // The tch path agrees, from the packed tensor through dequantize and quantize.
        let t = Nvfp4Tensor::from_host(&q, Device::Cpu).unwrap();
        let again = quantize(&dequantize(&t, Kind::Float), ScaleMode::Single).unwrap().to_host();
        prop_assert_eq!(again, back);
    }

    #[test]
    fn quant_of_dequant_is_identity_in_two_level_mode(
        (rows, nb, (qdata, mut scale)) in (1usize..=4, 1usize..=4).prop_flat_map(|(r, n)| (Just(r), Just(n), round_trip_blocks(r, n))),
        g in prop::sample::select(vec![1.0f32, 2f32.powi(-100), 1e-30, 3.7e-7, 0.123, 17.0, 1e20]),
        at in any::<prop::sample::Index>(),
    ) {
        // Tensor precondition: some block with scale 448 and a +-6 code.
        let cols = nb * BLOCK_SIZE;
        let blk = at.index(rows * nb);
        let mut qdata = qdata;
        if scale[blk] == 0 { qdata[blk * 8] = 0x07; }
        scale[blk] = 0x7E;
        let q = Nvfp4HostRef::new(&qdata, &scale, rows, cols, Some(g)).unwrap();
        let back = quantize_ref(&dequantize_ref(&q), rows, cols, ScaleMode::TwoLevel).unwrap();
        prop_assert_eq!(&back.scale, &scale);
        prop_assert_eq!(&back.qdata, &qdata);
        prop_assert_eq!(back.global_scale, Some((2688.0 * g) / 2688.0));
    }

    #[test]
    fn swizzle_round_trips_any_shape(rows in 0usize..300, scale_cols in 0usize..24, seed in any::<u64>()) {
        let scale: Vec<u8> = (0..rows * scale_cols).map(|i| (seed.wrapping_mul(i as u64 + 1) >> 29) as u8).collect();
        let blocked = swizzle_scales(&scale, rows, scale_cols);
        prop_assert_eq!(blocked.len(), rows.div_ceil(128) * 128 * scale_cols.div_ceil(4) * 4);
        prop_assert_eq!(unswizzle_scales(&blocked, rows, scale_cols), scale);
    }

    #[test]
    fn tch_bytes_equal_reference_bytes((rows, cols, x) in matrix(), mode in mode(), kind in prop::sample::select(vec![Kind::Float, Kind::BFloat16, Kind::Half])) {
        // The reference quantizes exactly what the tch path sees.
        let seen: Vec<f32> = match kind {
            Kind::BFloat16 => x.iter().map(|&v| bf16::from_f32(v).to_f32()).collect(),
            Kind::Half => x.iter().map(|&v| f16::from_f32(v).to_f32()).collect(),
            _ => x.clone(),
        };
        prop_assume!(seen.iter().all(|v| v.is_finite())); // f16 overflows to inf above 65504
        let want = quantize_ref(&seen, rows, cols, mode).unwrap();
        let got = quantize(&tensor_of(&x, rows, cols, kind), mode).unwrap().to_host();
        prop_assert_eq!(got, want);
    }
}
