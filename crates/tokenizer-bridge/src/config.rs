//! The parts of `tokenizer_config.json` and `generation_config.json` this crate uses.

use std::path::PathBuf;

use serde_json::Value as Json;

use crate::error::{Error, Result};
use crate::files::SourceFile;

/// Special-token keys transformers hands to the chat template when they are set.
const SPECIAL_TOKEN_KEYS: [&str; 4] = ["bos_token", "eos_token", "unk_token", "pad_token"];

/// What `tokenizer_config.json` says about templates and special tokens.
#[derive(Debug)]
pub(crate) struct TokenizerConfig {
    pub path: PathBuf,
    /// The Jinja source, if the file has one.
    pub chat_template: Option<String>,
    /// `(key, token)` for each of bos/eos/unk/pad that is set (not null).
    pub special_tokens: Vec<(&'static str, String)>,
    pub additional_special_tokens: Vec<String>,
}

impl TokenizerConfig {
    pub fn parse(file: &SourceFile) -> Result<Self> {
        let json = file.json()?;
        let field = |key: &str, expected: &'static str, got: &Json| Error::ConfigField {
            path: file.path.clone(),
            key: key.to_string(),
            expected,
            got: shorten(got),
        };
        let obj = json
            .as_object()
            .ok_or_else(|| field("<root>", "a JSON object", &json))?;

        let chat_template = match obj.get("chat_template") {
            None | Some(Json::Null) => None,
            Some(Json::String(s)) => Some(s.clone()),
            Some(list @ Json::Array(_)) => Some(named_default_template(list).ok_or_else(|| {
                field(
                    "chat_template",
                    "a string or a list holding {name: \"default\", template}",
                    list,
                )
            })?),
            Some(other) => return Err(field("chat_template", "a string", other)),
        };

        let mut special_tokens = Vec::new();
        for key in SPECIAL_TOKEN_KEYS {
            match obj.get(key) {
                None | Some(Json::Null) => {}
                Some(v) => special_tokens.push((
                    key,
                    token_text(v)
                        .ok_or_else(|| field(key, "a string or {\"content\": string}", v))?,
                )),
            }
        }

        let additional_special_tokens = match obj.get("additional_special_tokens") {
            None | Some(Json::Null) => Vec::new(),
            Some(Json::Array(items)) => items
                .iter()
                .map(|v| {
                    token_text(v)
                        .ok_or_else(|| field("additional_special_tokens", "a list of strings", v))
                })
                .collect::<Result<_>>()?,
            Some(other) => {
                return Err(field(
                    "additional_special_tokens",
                    "a list of strings",
                    other,
                ))
            }
        };

        Ok(Self {
            path: file.path.clone(),
            chat_template,
            special_tokens,
            additional_special_tokens,
        })
    }

    /// The token text configured under `key` (e.g. `eos_token`).
    pub fn special_token(&self, key: &str) -> Option<&str> {
        self.special_tokens
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, t)| t.as_str())
    }
}

/// The `eos_token_id`s of the `generation_config.json` at `path`; no file
/// (or no key) -> empty. For callers that stop generation without a tokenizer.
pub fn generation_config_eos_ids(path: &std::path::Path) -> Result<Vec<u32>> {
    match SourceFile::read_optional(path)? {
        Some(file) => generation_eos_ids(&file),
        None => Ok(Vec::new()),
    }
}

/// `eos_token_id` of `generation_config.json`: one id or a list; absent -> empty.
pub(crate) fn generation_eos_ids(file: &SourceFile) -> Result<Vec<u32>> {
    let json = file.json()?;
    let bad = |got: &Json| Error::ConfigField {
        path: file.path.clone(),
        key: "eos_token_id".into(),
        expected: "a token id or a list of token ids (non-negative integers < 2^32)",
        got: shorten(got),
    };
    let as_id = |v: &Json| {
        v.as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| bad(v))
    };
    match json.get("eos_token_id") {
        None | Some(Json::Null) => Ok(Vec::new()),
        Some(Json::Array(items)) => items.iter().map(as_id).collect(),
        Some(v) => Ok(vec![as_id(v)?]),
    }
}

/// Some configs store several templates as `[{name, template}]`; "default" is the chat one.
fn named_default_template(list: &Json) -> Option<String> {
    list.as_array()?
        .iter()
        .find(|t| t.get("name").and_then(Json::as_str) == Some("default"))
        .and_then(|t| t.get("template"))
        .and_then(Json::as_str)
        .map(str::to_string)
}

/// A token given as `"<|x|>"` or as an AddedToken dict `{"content": "<|x|>", ...}`.
fn token_text(v: &Json) -> Option<String> {
    match v {
        Json::String(s) => Some(s.clone()),
        Json::Object(o) => o.get("content").and_then(Json::as_str).map(str::to_string),
        _ => None,
    }
}

/// JSON text of a value, cut to keep error messages one line long.
fn shorten(v: &Json) -> String {
    let s = v.to_string();
    match s.char_indices().nth(80) {
        Some((cut, _)) => format!("{}...", &s[..cut]),
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> SourceFile {
        SourceFile {
            path: PathBuf::from("/m/tokenizer_config.json"),
            bytes: text.as_bytes().to_vec(),
        }
    }

    #[test]
    fn reads_template_and_special_tokens_in_both_shapes() {
        let cfg = TokenizerConfig::parse(&file(
            r#"{"chat_template": "T", "bos_token": null, "eos_token": "<|im_end|>",
                "pad_token": {"content": "<|endoftext|>", "special": true},
                "additional_special_tokens": ["<|im_start|>", {"content": "<|im_end|>"}]}"#,
        ))
        .unwrap();
        assert_eq!(cfg.chat_template.as_deref(), Some("T"));
        assert_eq!(cfg.special_token("eos_token"), Some("<|im_end|>"));
        assert_eq!(cfg.special_token("pad_token"), Some("<|endoftext|>"));
        assert_eq!(cfg.special_token("bos_token"), None);
        assert_eq!(
            cfg.additional_special_tokens,
            ["<|im_start|>", "<|im_end|>"]
        );
    }

    #[test]
    fn picks_the_default_template_from_a_named_list() {
        let cfg = TokenizerConfig::parse(&file(
            r#"{"chat_template": [{"name": "tool_use", "template": "A"}, {"name": "default", "template": "B"}]}"#,
        ))
        .unwrap();
        assert_eq!(cfg.chat_template.as_deref(), Some("B"));
    }

    #[test]
    fn wrong_types_name_the_key_and_the_file() {
        for (text, key) in [
            (r#"{"chat_template": 3}"#, "chat_template"),
            (
                r#"{"chat_template": [{"name": "x", "template": "A"}]}"#,
                "chat_template",
            ),
            (r#"{"eos_token": 7}"#, "eos_token"),
            (
                r#"{"additional_special_tokens": "<|a|>"}"#,
                "additional_special_tokens",
            ),
            (r#"[1, 2]"#, "<root>"),
        ] {
            let err = TokenizerConfig::parse(&file(text)).unwrap_err();
            let msg = err.to_string();
            assert!(
                matches!(&err, Error::ConfigField { key: k, .. } if k == key),
                "{msg}"
            );
            assert!(msg.contains("/m/tokenizer_config.json"), "{msg}");
        }
    }

    #[test]
    fn generation_eos_accepts_one_id_or_a_list() {
        assert_eq!(
            generation_eos_ids(&file(r#"{"eos_token_id": [151645, 151643]}"#)).unwrap(),
            [151645, 151643]
        );
        assert_eq!(
            generation_eos_ids(&file(r#"{"eos_token_id": 7}"#)).unwrap(),
            [7]
        );
        assert!(generation_eos_ids(&file(r#"{"top_k": 20}"#))
            .unwrap()
            .is_empty());
    }

    #[test]
    fn generation_eos_rejects_negative_and_fractional_ids() {
        for text in [
            r#"{"eos_token_id": -1}"#,
            r#"{"eos_token_id": [1.5]}"#,
            r#"{"eos_token_id": "x"}"#,
        ] {
            let err = generation_eos_ids(&file(text)).unwrap_err();
            assert!(
                matches!(&err, Error::ConfigField { key, .. } if key == "eos_token_id"),
                "{err}"
            );
        }
    }
}
