//! A tiny byte-level tokenizer for fast unit tests: one token per byte (so every
//! multi-byte character is split across tokens), no merges, and the Qwen3 special
//! tokens at ids 256.. . Same normalizer, pre-tokenizer and decoder types as Qwen3.

use std::path::Path;

use serde_json::json;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;

/// Special ids of the tiny tokenizer.
pub(crate) const TINY_END_OF_TEXT: u32 = 256;
pub(crate) const TINY_IM_START: u32 = 257;
pub(crate) const TINY_IM_END: u32 = 258;
pub(crate) const TINY_THINK: u32 = 259;

/// The tokenizer.json text.
pub(crate) fn tiny_tokenizer_json() -> String {
    let mut alphabet: Vec<char> = ByteLevel::alphabet().into_iter().collect();
    alphabet.sort_unstable();
    let vocab: serde_json::Map<String, serde_json::Value> = alphabet
        .iter()
        .enumerate()
        .map(|(i, c)| (c.to_string(), json!(i)))
        .collect();
    let added = |id: u32, content: &str, special: bool| {
        json!({"id": id, "content": content, "single_word": false, "lstrip": false,
               "rstrip": false, "normalized": false, "special": special})
    };
    json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [
            added(TINY_END_OF_TEXT, "<|endoftext|>", true),
            added(TINY_IM_START, "<|im_start|>", true),
            added(TINY_IM_END, "<|im_end|>", true),
            added(TINY_THINK, "<think>", false),
        ],
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": true},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": "",
                  "end_of_word_suffix": "", "fuse_unk": false, "byte_fallback": false,
                  "ignore_merges": false, "vocab": vocab, "merges": []}
    })
    .to_string()
}

/// A ChatML-like template with the same shape as Qwen3's non-tool path.
pub(crate) const TINY_TEMPLATE: &str = "{%- for m in messages %}{{- '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}";

/// Writes `tokenizer.json` and (optionally) a `tokenizer_config.json` into `dir`.
pub(crate) fn write_tiny_model_dir(dir: &Path, config: Option<serde_json::Value>) {
    std::fs::write(dir.join("tokenizer.json"), tiny_tokenizer_json()).unwrap();
    if let Some(cfg) = config {
        std::fs::write(dir.join("tokenizer_config.json"), cfg.to_string()).unwrap();
    }
}

/// A loaded tiny tokenizer with [`TINY_TEMPLATE`] and eos `<|im_end|>`.
pub(crate) fn tiny() -> crate::Qwen3Tokenizer {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_model_dir(
        dir.path(),
        Some(json!({"chat_template": TINY_TEMPLATE, "eos_token": "<|im_end|>"})),
    );
    crate::Qwen3Tokenizer::from_dir(dir.path()).unwrap()
}
