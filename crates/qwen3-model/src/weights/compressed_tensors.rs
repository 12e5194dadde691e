//! compressed-tensors `nvfp4-pack-quantized` (llm-compressor's output, read
//! by vLLM and SGLang), as facts about bytes:
//!
//! * `<module>.weight_packed`: u8 `[out, in/2]`, element `2j` in the low
//!   nibble, `2j+1` in the high one, E2M1 codes with bit 3 the sign: the
//!   same bytes as this project's `qdata`.
//! * `<module>.weight_scale`: float8_e4m3fn `[out, in/16]`, row-major, not
//!   swizzled (engines swizzle at load time): the same bytes as `scale`.
//! * `<module>.weight_global_scale`: f32 `[1]`. The library DIVIDES the
//!   block scale by it (`value = code * (scale / global)`), so it is the
//!   reciprocal of this project's multiplying global scale `g`
//!   (`value = (code * scale) * g`): stored `1/g`, and `1` for a
//!   single-level tensor.
//!
//! `1/(1/g)` is not `g` for every f32 (about one value in eight differs in
//! the last bit), so an export also records each exact `g` in the shard's
//! safetensors metadata; the reader uses it only when it still matches the
//! stored tensor, so files edited by other tools read as their tensors say.

use serde_json::{json, Value};

use super::quant_config::CT_FORMAT;

/// Packed codes.
pub(crate) const PACKED: &str = "weight_packed";
/// E4M3 block scales.
pub(crate) const SCALE: &str = "weight_scale";
/// The dividing per-tensor scale.
pub(crate) const GLOBAL: &str = "weight_global_scale";

/// The stored `weight_global_scale` for this project's global scale `g`
/// (`None` = single level = 1).
pub(crate) fn stored_global(g: Option<f32>) -> f32 {
    g.map_or(1.0, |g| 1.0 / g)
}

/// This project's multiplying global scale from the stored divisor.
pub(crate) fn global_from_stored(stored: f32) -> f32 {
    1.0 / stored
}

/// `config.json`'s `quantization_config` for a weight-only (W4A16) export:
/// every `Linear` NVFP4, nothing ignored (a tied model has no `lm_head`
/// module of its own; an untied one is exported NVFP4 as the model computes it).
pub(crate) fn quantization_config(ignore: &[String]) -> Value {
    json!({
        "quant_method": "compressed-tensors",
        "format": CT_FORMAT,
        "quantization_status": "compressed",
        "config_groups": {
            "group_0": {
                "targets": ["Linear"],
                "format": CT_FORMAT,
                "weights": {
                    "num_bits": 4,
                    "type": "float",
                    "strategy": "tensor_group",
                    "group_size": 16,
                    "symmetric": true,
                    "dynamic": false,
                    "scale_dtype": "torch.float8_e4m3fn",
                },
                "input_activations": null,
                "output_activations": null,
            }
        },
        "ignore": ignore,
        "kv_cache_scheme": null,
        "sparsity_config": {},
        "transform_config": {},
        "global_compression_ratio": null,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use nvfp4_kernels::{e2m1_to_f32, e4m3_to_f32, pack_nibbles};

    /// The library's dequantization of one element, written from its
    /// definition: `code * (scale / global)` in f32.
    fn ct_value(code: u8, scale: u8, stored: f32) -> f32 {
        e2m1_to_f32(code) * (e4m3_to_f32(scale) / stored)
    }

    #[test]
    fn single_level_stores_one_and_dequantizes_identically() {
        assert_eq!(stored_global(None), 1.0);
        for code in 0u8..16 {
            for scale in [0x01u8, 0x38, 0x5A, 0x7E] {
                let ours = e2m1_to_f32(code) * e4m3_to_f32(scale);
                assert_eq!(ct_value(code, scale, 1.0).to_bits(), ours.to_bits());
            }
        }
    }

    #[test]
    fn two_level_value_matches_within_rounding_of_the_reciprocal() {
        for g in [1e-4f32, 3.7e-3, 0.0212, 1.5, 7.0e3] {
            let stored = stored_global(Some(g));
            let back = global_from_stored(stored);
            // One f32 rounding each way: at most one ulp apart.
            assert!(
                (back.to_bits() as i64 - g.to_bits() as i64).abs() <= 1,
                "g {g} -> {back}"
            );
            for (code, scale) in [(7u8, 0x7Eu8), (0x9, 0x30), (0x3, 0x01)] {
                let ours = e2m1_to_f32(code) * e4m3_to_f32(scale) * g;
                let theirs = ct_value(code, scale, stored);
                assert!(
                    (ours - theirs).abs() <= ours.abs() * 3e-7,
                    "{ours} vs {theirs}"
                );
            }
        }
    }

    #[test]
    fn packed_byte_holds_the_even_element_low() {
        // compressed-tensors packs `idx[2j] | idx[2j+1] << 4`: our `pack_nibbles`.
        assert_eq!(pack_nibbles(0x1, 0xF), 0xF1);
    }

    #[test]
    fn config_is_accepted_by_our_own_reader() {
        let qc = quantization_config(&[]);
        let text = serde_json::to_string(&json!({ "quantization_config": qc })).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), text).unwrap();
        let spec = super::super::quant_config::detect(dir.path())
            .unwrap()
            .unwrap();
        assert!(!spec.activations_quantized && spec.ignore.is_empty());
    }
}
