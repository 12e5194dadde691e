//! "HF order": the order of `Qwen3ForCausalLM.state_dict()` in transformers
//! (embeddings, then per layer attention, MLP, the two layer norms, then
//! the final norm and `lm_head`), used when no `like` file dictates one.

/// Position of a weight inside one decoder layer, in module order.
const LAYER_ORDER: [&str; 11] = [
    "self_attn.q_proj.weight",
    "self_attn.k_proj.weight",
    "self_attn.v_proj.weight",
    "self_attn.o_proj.weight",
    "self_attn.q_norm.weight",
    "self_attn.k_norm.weight",
    "mlp.gate_proj.weight",
    "mlp.up_proj.weight",
    "mlp.down_proj.weight",
    "input_layernorm.weight",
    "post_attention_layernorm.weight",
];

/// Sort key of a weight key; unknown keys sort last, keeping their order
/// under a stable sort.
pub(crate) fn hf_rank(key: &str) -> (u8, usize, usize) {
    if key == "model.embed_tokens.weight" {
        return (0, 0, 0);
    }
    if let Some(rest) = key.strip_prefix("model.layers.") {
        if let Some((layer, name)) = rest.split_once('.') {
            if let (Ok(layer), Some(pos)) = (
                layer.parse::<usize>(),
                LAYER_ORDER.iter().position(|n| *n == name),
            ) {
                return (1, layer, pos);
            }
        }
    }
    match key {
        "model.norm.weight" => (2, 0, 0),
        "lm_head.weight" => (3, 0, 0),
        _ => (4, 0, 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn should_order_like_the_transformers_state_dict() {
        let mut keys = vec![
            "lm_head.weight",
            "model.norm.weight",
            "model.layers.10.self_attn.q_proj.weight",
            "model.layers.2.post_attention_layernorm.weight",
            "model.layers.2.input_layernorm.weight",
            "model.layers.2.mlp.down_proj.weight",
            "model.layers.2.self_attn.k_norm.weight",
            "model.layers.2.self_attn.q_proj.weight",
            "something.else",
            "model.embed_tokens.weight",
        ];
        keys.sort_by_key(|k| hf_rank(k));
        assert_eq!(
            keys,
            vec![
                "model.embed_tokens.weight",
                "model.layers.2.self_attn.q_proj.weight",
                "model.layers.2.self_attn.k_norm.weight",
                "model.layers.2.mlp.down_proj.weight",
                "model.layers.2.input_layernorm.weight",
                "model.layers.2.post_attention_layernorm.weight",
                "model.layers.10.self_attn.q_proj.weight",
                "model.norm.weight",
                "lm_head.weight",
                "something.else",
            ]
        );
    }
}
