//! Incremental decoding for printing tokens as they are generated.
//!
//! Byte-level BPE tokens are bytes, not characters: "👋" is two tokens in Qwen3, and
//! decoding only the first gives U+FFFD. We keep a small window of ids, decode it
//! whole, and emit only the new text once it no longer ends in U+FFFD. The ids
//! emitted last stay in the window as left context, because some decoders (not
//! Qwen3's) render a token differently at the start of a text (the approach of HF
//! `tokenizers`' `DecodeStream` and text-generation-inference).

use crate::error::{Error, Result};
use crate::tokenizer::Qwen3Tokenizer;

/// Turns a stream of ids into text pieces that never end in a partial UTF-8 character.
/// The concatenated pieces (including [`finish`](Self::finish)) equal
/// `decode(all_ids, skip_special_tokens)`.
#[derive(Debug)]
pub struct StreamDecoder<'a> {
    tokenizer: &'a Qwen3Tokenizer,
    skip_special_tokens: bool,
    /// `window[..context]` was emitted already (left context); the rest is pending.
    window: Vec<u32>,
    context: usize,
    /// Ids pushed so far, for error positions.
    pushed: usize,
}

impl<'a> StreamDecoder<'a> {
    pub(crate) fn new(tokenizer: &'a Qwen3Tokenizer, skip_special_tokens: bool) -> Self {
        Self {
            tokenizer,
            skip_special_tokens,
            window: Vec::new(),
            context: 0,
            pushed: 0,
        }
    }

    /// Adds one id. Returns the text it completes, or `None` while the text so far
    /// ends in an incomplete character (or the id prints nothing, like a skipped
    /// special token).
    pub fn push(&mut self, id: u32) -> Result<Option<String>> {
        self.tokenizer.check_id(id, self.pushed)?;
        self.pushed += 1;
        self.window.push(id);
        let (emitted, text) = self.decode_window()?;
        if text.len() <= emitted.len() || text.ends_with('\u{FFFD}') {
            return Ok(None);
        }
        let piece = self.new_text(&emitted, &text)?;
        // The ids just emitted become the context of the next window.
        self.window.drain(..self.context);
        self.context = self.window.len();
        Ok(Some(piece))
    }

    /// Flushes pending ids at the end of generation. Bytes that never formed a complete
    /// character come out as U+FFFD, as in [`Qwen3Tokenizer::decode`]. Afterwards the
    /// decoder starts afresh.
    pub fn finish(&mut self) -> Result<Option<String>> {
        let (emitted, text) = self.decode_window()?;
        let piece = self.new_text(&emitted, &text)?;
        self.window.clear();
        self.context = 0;
        Ok(if piece.is_empty() { None } else { Some(piece) })
    }

    /// Whether some pushed ids have not been emitted yet.
    pub fn has_pending(&self) -> bool {
        self.window.len() > self.context
    }

    /// (text of the context ids, text of the whole window).
    fn decode_window(&self) -> Result<(String, String)> {
        let emitted = self
            .tokenizer
            .decode(&self.window[..self.context], self.skip_special_tokens)?;
        let text = self
            .tokenizer
            .decode(&self.window, self.skip_special_tokens)?;
        Ok((emitted, text))
    }

    fn new_text(&self, emitted: &str, text: &str) -> Result<String> {
        text.strip_prefix(emitted)
            .map(str::to_string)
            .ok_or_else(|| Error::StreamPrefix {
                start: self.pushed - self.window.len(),
                end: self.pushed,
                emitted: emitted.to_string(),
            })
    }
}

#[cfg(test)]
mod tests {
    use crate::test_support::{tiny, TINY_IM_END, TINY_THINK};

    #[test]
    fn emoji_split_over_four_byte_tokens_is_emitted_once_complete() {
        let tok = tiny();
        let ids = tok.encode("a👋", false).unwrap();
        assert_eq!(ids.len(), 5, "one token per byte: {ids:?}");
        let mut dec = tok.stream_decoder();
        let pieces: Vec<_> = ids.iter().map(|&id| dec.push(id).unwrap()).collect();
        assert_eq!(
            pieces,
            [
                Some("a".to_string()),
                None,
                None,
                None,
                Some("👋".to_string())
            ]
        );
        assert!(!dec.has_pending());
        assert_eq!(dec.finish().unwrap(), None);
    }

    #[test]
    fn finish_flushes_an_incomplete_character_as_replacement() {
        let tok = tiny();
        let ids = tok.encode("é", false).unwrap();
        let mut dec = tok.stream_decoder();
        assert_eq!(dec.push(ids[0]).unwrap(), None);
        assert!(dec.has_pending());
        assert_eq!(dec.finish().unwrap().as_deref(), Some("\u{FFFD}"));
        // Fresh after finish.
        assert_eq!(dec.push(ids[0]).unwrap(), None);
        assert_eq!(dec.push(ids[1]).unwrap().as_deref(), Some("é"));
    }

    #[test]
    fn special_tokens_are_skipped_by_default_but_added_tokens_print() {
        let tok = tiny();
        let mut dec = tok.stream_decoder();
        assert_eq!(dec.push(TINY_THINK).unwrap().as_deref(), Some("<think>"));
        assert_eq!(dec.push(TINY_IM_END).unwrap(), None);
        let mut raw = tok.stream_decoder_with(false);
        assert_eq!(
            raw.push(TINY_IM_END).unwrap().as_deref(),
            Some("<|im_end|>")
        );
    }

    #[test]
    fn unknown_id_reports_its_stream_position() {
        let tok = tiny();
        let mut dec = tok.stream_decoder();
        dec.push(1).unwrap();
        let err = dec.push(99_999).unwrap_err();
        assert!(
            matches!(
                err,
                crate::Error::UnknownTokenId {
                    id: 99_999,
                    position: 1,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn window_stays_small_over_a_long_stream() {
        let tok = tiny();
        let ids = tok.encode(&"héllo wörld 👋 ".repeat(50), false).unwrap();
        let mut dec = tok.stream_decoder();
        let mut out = String::new();
        for &id in &ids {
            out.extend(dec.push(id).unwrap());
            assert!(dec.window.len() <= 8, "window grew to {}", dec.window.len());
        }
        out.extend(dec.finish().unwrap());
        assert_eq!(out, tok.decode(&ids, true).unwrap());
    }
}
