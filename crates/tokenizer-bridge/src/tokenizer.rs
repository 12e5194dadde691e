//! [`Qwen3Tokenizer`]: encode/decode, chat template, stop tokens (loading is in load.rs).

use std::path::{Path, PathBuf};

use tokenizers::{NormalizedString, Normalizer, Tokenizer};

use crate::error::{Error, Result};
use crate::message::ChatMessage;
use crate::stream::StreamDecoder;
use crate::template::{parse_tools, ChatTemplate};

/// Start of a chat turn; id 151644 in Qwen3.
pub const IM_START: &str = "<|im_start|>";
/// End of a chat turn; id 151645 in Qwen3. Generation stops here.
pub const IM_END: &str = "<|im_end|>";
/// End of a document (also the pad token); id 151643 in Qwen3.
pub const END_OF_TEXT: &str = "<|endoftext|>";

/// Where the chat template stands after loading.
#[derive(Clone, Debug)]
pub(crate) enum TemplateSlot {
    Ready(Box<ChatTemplate>),
    /// A tokenizer_config.json was loaded but holds no template.
    Missing {
        config: PathBuf,
    },
    /// No tokenizer_config.json was given at all.
    NoConfig,
}

/// The Qwen3 tokenizer: byte-level BPE from `tokenizer.json` (HF `tokenizers`), the
/// model's chat template from `tokenizer_config.json`, and the stop-token set.
#[derive(Clone)]
pub struct Qwen3Tokenizer {
    pub(crate) inner: Tokenizer,
    pub(crate) tokenizer_path: PathBuf,
    pub(crate) template: TemplateSlot,
    pub(crate) im_start: u32,
    pub(crate) im_end: u32,
    pub(crate) end_of_text: u32,
    pub(crate) stop_ids: Vec<u32>,
    pub(crate) vocab_size: usize,
}

/// Summary only: the derived form would print all 151k vocabulary entries.
impl std::fmt::Debug for Qwen3Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let template = match &self.template {
            TemplateSlot::Ready(_) => "ready",
            TemplateSlot::Missing { .. } => "missing from tokenizer_config.json",
            TemplateSlot::NoConfig => "none (no tokenizer_config.json)",
        };
        f.debug_struct("Qwen3Tokenizer")
            .field("tokenizer_path", &self.tokenizer_path)
            .field("vocab_size", &self.vocab_size)
            .field("stop_ids", &self.stop_ids)
            .field("chat_template", &template)
            .finish()
    }
}

impl Qwen3Tokenizer {
    /// Token ids of `text`. Special and added tokens written in the text
    /// (`<|im_start|>`, `<think>`) become their single ids, as in transformers.
    /// `add_special_tokens` asks the post-processor for BOS/EOS; Qwen3's adds none.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let encoding = self
            .inner
            .encode_fast(text, add_special_tokens)
            .map_err(|source| Error::Encode {
                chars: text.chars().count(),
                source,
            })?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Text of `ids`. Ids outside the vocabulary are an error (the library would drop them
    /// silently). Incomplete UTF-8 at the end decodes to U+FFFD; for streaming output use
    /// [`stream_decoder`](Self::stream_decoder).
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        for (position, &id) in ids.iter().enumerate() {
            self.check_id(id, position)?;
        }
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|source| Error::Decode {
                len: ids.len(),
                source,
            })
    }

    /// The text `encode` actually tokenizes (Qwen3: Unicode NFC), so
    /// `decode(encode(x)) == normalize(x)`; equal to `x` for text already in NFC.
    pub fn normalize(&self, text: &str) -> Result<String> {
        let mut normalized = NormalizedString::from(text);
        if let Some(normalizer) = self.inner.get_normalizer() {
            normalizer
                .normalize(&mut normalized)
                .map_err(|source| Error::Encode {
                    chars: text.chars().count(),
                    source,
                })?;
        }
        Ok(normalized.get().to_string())
    }

    /// Renders `messages` with the model's chat template. With
    /// `add_generation_prompt` the text ends in `<|im_start|>assistant\n`, ready for
    /// the model to answer.
    pub fn apply_chat_template(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String> {
        self.template()?
            .render(messages, None, add_generation_prompt)
    }

    /// As [`apply_chat_template`](Self::apply_chat_template), with tool schemas:
    /// `tools_json` is a JSON array (OpenAI style `{"type": "function", "function": {...}}`),
    /// printed into the system turn exactly as Python's `json.dumps` prints it, key order kept.
    pub fn apply_chat_template_with_tools(
        &self,
        messages: &[ChatMessage],
        tools_json: &str,
        add_generation_prompt: bool,
    ) -> Result<String> {
        let tools = parse_tools(tools_json)?;
        self.template()?
            .render(messages, Some(&tools), add_generation_prompt)
    }

    pub(crate) fn template(&self) -> Result<&ChatTemplate> {
        match &self.template {
            TemplateSlot::Ready(t) => Ok(t),
            TemplateSlot::Missing { config } => Err(Error::MissingChatTemplate {
                path: config.clone(),
            }),
            TemplateSlot::NoConfig => Err(Error::NoTokenizerConfig {
                tokenizer: self.tokenizer_path.clone(),
            }),
        }
    }

    /// Id of a token given as text (`"<|im_end|>"`, `"Hello"`), if it is one token.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The token text of an id (byte-level form, e.g. `"Ġworld"`), if the id exists.
    pub fn token_text(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// `<|im_start|>` (151644).
    pub fn im_start_id(&self) -> u32 {
        self.im_start
    }

    /// `<|im_end|>` (151645): the end of every chat turn.
    pub fn im_end_id(&self) -> u32 {
        self.im_end
    }

    /// `<|endoftext|>` (151643).
    pub fn eos_id(&self) -> u32 {
        self.end_of_text
    }

    /// Ids that end generation: `<|im_end|>`, `<|endoftext|>`, the config's `eos_token`
    /// and generation_config's `eos_token_id`s, in that order, without duplicates.
    pub fn stop_ids(&self) -> &[u32] {
        &self.stop_ids
    }

    /// Whether `id` ends generation.
    pub fn is_stop_id(&self, id: u32) -> bool {
        self.stop_ids.contains(&id)
    }

    /// Number of ids the tokenizer knows, added tokens included (151669 for Qwen3).
    /// The model's embedding is padded larger (151936); ids in between have no text.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// An incremental decoder that skips special tokens (`<|im_end|>` prints nothing;
    /// `<think>` is an ordinary added token and prints).
    pub fn stream_decoder(&self) -> StreamDecoder<'_> {
        StreamDecoder::new(self, true)
    }

    /// An incremental decoder with an explicit choice about special tokens.
    pub fn stream_decoder_with(&self, skip_special_tokens: bool) -> StreamDecoder<'_> {
        StreamDecoder::new(self, skip_special_tokens)
    }

    /// The tokenizer.json this tokenizer was loaded from.
    pub fn tokenizer_path(&self) -> &Path {
        &self.tokenizer_path
    }

    /// The underlying HF `tokenizers` object, for anything not wrapped here.
    pub fn inner(&self) -> &Tokenizer {
        &self.inner
    }

    pub(crate) fn check_id(&self, id: u32, position: usize) -> Result<()> {
        if (id as usize) < self.vocab_size {
            Ok(())
        } else {
            Err(Error::UnknownTokenId {
                id,
                position,
                vocab_size: self.vocab_size,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::*;

    #[test]
    fn debug_output_is_a_short_summary() {
        let shown = format!("{:?}", tiny());
        assert!(
            shown.len() < 300 && shown.contains("vocab_size: 260"),
            "{shown}"
        );
    }

    #[test]
    fn decode_rejects_ids_beyond_the_vocabulary() {
        let tok = tiny();
        assert_eq!(tok.vocab_size(), 260);
        let err = tok.decode(&[1, 2, 260], false).unwrap_err();
        assert!(
            matches!(
                err,
                Error::UnknownTokenId {
                    id: 260,
                    position: 2,
                    vocab_size: 260
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn normalize_composes_decomposed_accents() {
        let tok = tiny();
        assert_eq!(tok.normalize("e\u{301}").unwrap(), "\u{e9}");
        assert_eq!(
            tok.decode(&tok.encode("e\u{301}", false).unwrap(), false)
                .unwrap(),
            "\u{e9}"
        );
    }
}
