//! Loading a [`Qwen3Tokenizer`] from a model directory, explicit files or the bundled copy.

use std::path::Path;

use tokenizers::Tokenizer;

use crate::bundled;
use crate::config::{generation_eos_ids, TokenizerConfig};
use crate::error::{Error, Result};
use crate::files::SourceFile;
use crate::template::ChatTemplate;
use crate::tokenizer::{Qwen3Tokenizer, TemplateSlot, END_OF_TEXT, IM_END, IM_START};

impl Qwen3Tokenizer {
    /// Loads a model directory: `tokenizer.json` (or `tokenizer.json.gz`) and
    /// `tokenizer_config.json` (both required), `chat_template.jinja` if present (it
    /// overrides the config's template, as in transformers) and `generation_config.json`
    /// if present (its `eos_token_id`s join [`stop_ids`](Self::stop_ids)).
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let plain = dir.join("tokenizer.json");
        let gz = dir.join("tokenizer.json.gz");
        let tokenizer_path = if !plain.exists() && gz.exists() {
            gz
        } else {
            plain
        };
        Self::build(
            SourceFile::read(&tokenizer_path)?,
            Some(SourceFile::read(&dir.join("tokenizer_config.json"))?),
            SourceFile::read_optional(&dir.join("chat_template.jinja"))?,
            SourceFile::read_optional(&dir.join("generation_config.json"))?,
        )
    }

    /// Loads explicit files (a `.gz` tokenizer is decompressed). Without a
    /// `tokenizer_config` there is no chat template and only `<|im_end|>` and
    /// `<|endoftext|>` stop generation.
    pub fn from_files(tokenizer_json: &Path, tokenizer_config: Option<&Path>) -> Result<Self> {
        let config = tokenizer_config.map(SourceFile::read).transpose()?;
        Self::build(SourceFile::read(tokenizer_json)?, config, None, None)
    }

    /// The copy of the Qwen3 tokenizer and configs embedded in this crate
    /// (`assets/qwen3`); needs no files at run time. Parses ~11 MB of JSON: keep the result.
    pub fn bundled() -> Result<Self> {
        let dir = bundled::bundled_asset_dir();
        let tokenizer = bundled::tokenizer_json_bytes()?;
        let file = |name: &str, text: &str| SourceFile {
            path: dir.join(name),
            bytes: text.as_bytes().to_vec(),
        };
        Self::build(
            SourceFile {
                path: dir.join("tokenizer.json.gz"),
                bytes: tokenizer,
            },
            Some(file(
                "tokenizer_config.json",
                bundled::BUNDLED_TOKENIZER_CONFIG_JSON,
            )),
            None,
            Some(file(
                "generation_config.json",
                bundled::BUNDLED_GENERATION_CONFIG_JSON,
            )),
        )
    }

    fn build(
        tokenizer: SourceFile,
        config: Option<SourceFile>,
        template_file: Option<SourceFile>,
        generation: Option<SourceFile>,
    ) -> Result<Self> {
        let path = tokenizer.path;
        let inner =
            Tokenizer::from_bytes(&tokenizer.bytes).map_err(|source| Error::TokenizerFile {
                path: path.clone(),
                source,
            })?;
        let require = |token: &str| {
            inner
                .token_to_id(token)
                .ok_or_else(|| Error::MissingSpecialToken {
                    path: path.clone(),
                    token: token.into(),
                })
        };
        let (im_start, im_end, end_of_text) =
            (require(IM_START)?, require(IM_END)?, require(END_OF_TEXT)?);
        let vocab_size = inner.get_vocab_size(true);
        let cfg = config.as_ref().map(TokenizerConfig::parse).transpose()?;
        let template = TemplateSlot::resolve(cfg.as_ref(), template_file)?;
        let mut stop_ids = vec![im_end, end_of_text];
        stop_ids.extend(extra_stop_ids(
            &inner,
            vocab_size,
            cfg.as_ref(),
            generation.as_ref(),
        )?);
        let mut seen = std::collections::HashSet::new();
        stop_ids.retain(|id| seen.insert(*id));

        Ok(Self {
            inner,
            tokenizer_path: path,
            template,
            im_start,
            im_end,
            end_of_text,
            stop_ids,
            vocab_size,
        })
    }
}

impl TemplateSlot {
    /// A `chat_template.jinja` file wins over the config's `chat_template` key, as in transformers.
    fn resolve(cfg: Option<&TokenizerConfig>, template_file: Option<SourceFile>) -> Result<Self> {
        let (source, origin) = match (cfg, template_file) {
            (_, Some(file)) => (file.text()?.to_string(), file.path.display().to_string()),
            (Some(c), None) => match &c.chat_template {
                Some(src) => (
                    src.clone(),
                    format!("{} (key `chat_template`)", c.path.display()),
                ),
                None => {
                    return Ok(TemplateSlot::Missing {
                        config: c.path.clone(),
                    })
                }
            },
            (None, None) => return Ok(TemplateSlot::NoConfig),
        };
        Ok(TemplateSlot::Ready(Box::new(ChatTemplate::compile(
            source, origin, cfg,
        )?)))
    }
}

/// The config's `eos_token` and generation_config's `eos_token_id`s, checked against the vocabulary.
fn extra_stop_ids(
    inner: &Tokenizer,
    vocab_size: usize,
    cfg: Option<&TokenizerConfig>,
    generation: Option<&SourceFile>,
) -> Result<Vec<u32>> {
    let mut ids = Vec::new();
    if let Some((c, token)) = cfg.and_then(|c| Some((c, c.special_token("eos_token")?))) {
        let id = inner
            .token_to_id(token)
            .ok_or_else(|| Error::MissingSpecialToken {
                path: c.path.clone(),
                token: token.to_string(),
            })?;
        ids.push(id);
    }
    if let Some(file) = generation {
        for id in generation_eos_ids(file)? {
            if id as usize >= vocab_size {
                return Err(Error::ConfigField {
                    path: file.path.clone(),
                    key: "eos_token_id".into(),
                    expected: "ids inside the tokenizer's vocabulary",
                    got: format!("{id} (vocabulary has {vocab_size} ids)"),
                });
            }
            ids.push(id);
        }
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::test_support::*;
    use crate::ChatMessage;

    #[test]
    fn stop_ids_add_config_and_generation_eos_in_order_without_duplicates() {
        let dir = tempfile::tempdir().unwrap();
        write_tiny_model_dir(dir.path(), Some(json!({"eos_token": "<think>"})));
        std::fs::write(
            dir.path().join("generation_config.json"),
            r#"{"eos_token_id": [5, 258, 5]}"#,
        )
        .unwrap();
        let tok = Qwen3Tokenizer::from_dir(dir.path()).unwrap();
        assert_eq!(
            tok.stop_ids(),
            [TINY_IM_END, TINY_END_OF_TEXT, TINY_THINK, 5]
        );
        assert_eq!(
            (tok.im_start_id(), tok.eos_id()),
            (TINY_IM_START, TINY_END_OF_TEXT)
        );
    }

    #[test]
    fn generation_eos_outside_the_vocabulary_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        write_tiny_model_dir(dir.path(), Some(json!({})));
        let gen = dir.path().join("generation_config.json");
        std::fs::write(&gen, r#"{"eos_token_id": 151645}"#).unwrap();
        let err = Qwen3Tokenizer::from_dir(dir.path()).unwrap_err();
        assert!(
            matches!(&err, Error::ConfigField { key, .. } if key == "eos_token_id"),
            "{err}"
        );
        assert!(
            err.to_string().contains(&gen.display().to_string()),
            "{err}"
        );
    }

    #[test]
    fn config_eos_token_missing_from_vocab_names_the_config() {
        let dir = tempfile::tempdir().unwrap();
        write_tiny_model_dir(dir.path(), Some(json!({"eos_token": "<|eot_id|>"})));
        let err = Qwen3Tokenizer::from_dir(dir.path()).unwrap_err();
        assert!(
            matches!(&err, Error::MissingSpecialToken { token, .. } if token == "<|eot_id|>"),
            "{err}"
        );
        assert!(err.to_string().contains("tokenizer_config.json"), "{err}");
    }

    #[test]
    fn tokenizer_without_qwen_special_tokens_is_rejected_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokenizer.json");
        std::fs::write(&path, tiny_tokenizer_json().replace("<|im_start|>", "<s>")).unwrap();
        let err = Qwen3Tokenizer::from_files(&path, None).unwrap_err();
        assert!(
            matches!(&err, Error::MissingSpecialToken { token, .. } if token == IM_START),
            "{err}"
        );
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
    }

    #[test]
    fn chat_template_jinja_overrides_the_config_template() {
        let dir = tempfile::tempdir().unwrap();
        write_tiny_model_dir(
            dir.path(),
            Some(json!({"chat_template": TINY_TEMPLATE, "eos_token": "<|im_end|>"})),
        );
        std::fs::write(
            dir.path().join("chat_template.jinja"),
            "{{ eos_token }}|{{ messages[0].content }}",
        )
        .unwrap();
        let tok = Qwen3Tokenizer::from_dir(dir.path()).unwrap();
        assert_eq!(
            tok.apply_chat_template(&[ChatMessage::user("hi")], false)
                .unwrap(),
            "<|im_end|>|hi"
        );
    }

    #[test]
    fn from_dir_reads_a_gzipped_tokenizer_when_no_plain_one_exists() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(tiny_tokenizer_json().as_bytes()).unwrap();
        std::fs::write(dir.path().join("tokenizer.json.gz"), gz.finish().unwrap()).unwrap();
        std::fs::write(dir.path().join("tokenizer_config.json"), "{}").unwrap();
        let tok = Qwen3Tokenizer::from_dir(dir.path()).unwrap();
        assert!(tok.tokenizer_path().ends_with("tokenizer.json.gz"));
        assert_eq!(
            tok.decode(&tok.encode("ok ü", false).unwrap(), false)
                .unwrap(),
            "ok ü"
        );
    }
}
