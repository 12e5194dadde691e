//! NVIDIA Model Optimizer NVFP4 (read by TensorRT-LLM and vLLM), as facts
//! about bytes:
//!
//! * `<module>.weight`: u8 `[out, in/2]`, element `2j` in the low nibble:
//!   the same bytes as this project's `qdata`.
//! * `<module>.weight_scale`: float8_e4m3fn `[out, in/16]`, not swizzled.
//! * `<module>.weight_scale_2`: f32 scalar, MULTIPLYING the block scale
//!   (`value = code * (weight_scale * weight_scale_2)`, written as
//!   `amax / (6 * 448)`): exactly this project's global scale `g`, and `1`
//!   for a single-level tensor.
//! * `<module>.input_scale`: f32, the static activation scale of W4A4
//!   (`quant_algo: NVFP4`); weight-only exports (`W4A16_NVFP4`) have none.
//!
//! `hf_quant_config.json` says `quant_algo`, `group_size` and
//! `exclude_modules`; `config.json` carries ModelOpt's compressed-tensors
//! style copy with `quant_method: modelopt`.

use serde_json::{json, Value};

/// Packed codes (u8, unlike an unquantized layer's float `weight`).
pub(crate) const PACKED: &str = "weight";
/// E4M3 block scales.
pub(crate) const SCALE: &str = "weight_scale";
/// The multiplying per-tensor scale.
pub(crate) const GLOBAL: &str = "weight_scale_2";
/// The weight-only algorithm this project exports.
const EXPORT_ALGO: &str = "W4A16_NVFP4";

/// The stored `weight_scale_2` for this project's global scale `g`.
pub(crate) fn stored_global(g: Option<f32>) -> f32 {
    g.unwrap_or(1.0)
}

/// This project's global scale from the stored one (the same number).
pub(crate) fn global_from_stored(stored: f32) -> f32 {
    stored
}

/// `hf_quant_config.json` of a weight-only export.
pub(crate) fn hf_quant_config(ignore: &[String]) -> Value {
    json!({
        "producer": { "name": "qwen3-nvfp4", "version": env!("CARGO_PKG_VERSION") },
        "quantization": {
            "quant_algo": EXPORT_ALGO,
            "group_size": 16,
            "exclude_modules": ignore,
            "kv_cache_quant_algo": null,
        }
    })
}

/// The copy ModelOpt puts into `config.json` as `quantization_config`.
pub(crate) fn quantization_config(ignore: &[String]) -> Value {
    json!({
        "quant_method": "modelopt",
        "quant_algo": EXPORT_ALGO,
        "config_groups": {
            "group_0": {
                "weights": { "dynamic": false, "num_bits": 4, "type": "float", "group_size": 16 },
                "targets": ["Linear"],
            }
        },
        "ignore": ignore,
        "producer": { "name": "qwen3-nvfp4", "version": env!("CARGO_PKG_VERSION") },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use nvfp4_kernels::{e2m1_to_f32, e4m3_to_f32};

    #[test]
    fn global_scale_is_ours_unchanged_and_one_for_single_level() {
        assert_eq!(stored_global(None), 1.0);
        for g in [1e-4f32, 0.0212, 7.0e3] {
            assert_eq!(
                global_from_stored(stored_global(Some(g))).to_bits(),
                g.to_bits()
            );
        }
    }

    #[test]
    fn dequantized_values_agree_to_one_rounding() {
        // ModelOpt: code * (scale * s2); ours: (code * scale) * g. Both are
        // exact products of a 2-bit and a 4-bit significand before the last
        // multiply, so they are equal when that product is exact too.
        for (code, scale, g) in [(7u8, 0x7Eu8, 0.0212f32), (0xB, 0x31, 3.5e-3)] {
            let ours = e2m1_to_f32(code) * e4m3_to_f32(scale) * g;
            let theirs = e2m1_to_f32(code) * (e4m3_to_f32(scale) * g);
            assert!(
                (ours - theirs).abs() <= ours.abs() * 1.2e-7,
                "{ours} vs {theirs}"
            );
        }
    }

    #[test]
    fn configs_are_accepted_by_our_own_reader() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = json!({ "quantization_config": quantization_config(&[]) });
        std::fs::write(dir.path().join("config.json"), cfg.to_string()).unwrap();
        let spec = super::super::quant_config::detect(dir.path())
            .unwrap()
            .unwrap();
        assert_eq!(
            spec.layout,
            super::super::quant_config::PackedLayout::ModelOpt
        );
        std::fs::write(
            dir.path().join(super::super::quant_config::MODELOPT_FILE),
            hf_quant_config(&["lm_head".into()]).to_string(),
        )
        .unwrap();
        let spec = super::super::quant_config::detect(dir.path())
            .unwrap()
            .unwrap();
        assert_eq!(spec.ignore, vec!["lm_head".to_string()]);
        assert!(!spec.activations_quantized);
    }
}
