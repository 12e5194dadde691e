//! The Qwen3 tokenizer for this workspace: `tokenizer.json` encode/decode through
//! Hugging Face `tokenizers`, the model's own Jinja chat template rendered as
//! transformers renders it, incremental decoding that never prints half a UTF-8
//! character, and the set of ids that stop generation.
//!
//! Key types:
//! - [`Qwen3Tokenizer`]: load with [`from_dir`](Qwen3Tokenizer::from_dir),
//!   [`from_files`](Qwen3Tokenizer::from_files) or [`bundled`](Qwen3Tokenizer::bundled)
//!   (the copy embedded from `assets/qwen3`); [`encode`](Qwen3Tokenizer::encode),
//!   [`decode`](Qwen3Tokenizer::decode),
//!   [`apply_chat_template`](Qwen3Tokenizer::apply_chat_template),
//!   [`render_training_pair`](Qwen3Tokenizer::render_training_pair) (prompt to mask,
//!   reply ending in `<|im_end|>` to learn), [`stop_ids`](Qwen3Tokenizer::stop_ids).
//! - [`ChatMessage`]: one `{role, content}` turn.
//! - [`StreamDecoder`]: push ids, get printable text pieces.
//! - [`bundled_asset_dir`] / [`write_bundled_assets`]: the shipped tokenizer and
//!   Qwen3-4B-Instruct-2507 configs, for examples that build a model directory.
//!
//! The chat template supports the `tools` path
//! ([`apply_chat_template_with_tools`](Qwen3Tokenizer::apply_chat_template_with_tools));
//! structured `tool_calls` on assistant messages are not modelled: put the
//! `<tool_call>...</tool_call>` text the model wrote into `content`.
//!
//! ```
//! use tokenizer_bridge::{ChatMessage, Qwen3Tokenizer};
//!
//! let tok = Qwen3Tokenizer::bundled()?;
//! assert_eq!(tok.encode("Hello! 👋", false)?, [9707, 0, 61804, 233]);
//!
//! let prompt = tok.apply_chat_template(&[ChatMessage::user("Hi")], true)?;
//! assert_eq!(prompt, "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
//!
//! // Print generated ids as they come, never splitting a character.
//! let mut stream = tok.stream_decoder();
//! let mut shown = String::new();
//! for id in tok.encode("Bonjour 👋!", false)? {
//!     if tok.is_stop_id(id) { break; }
//!     shown.extend(stream.push(id)?);
//! }
//! shown.extend(stream.finish()?);
//! assert_eq!(shown, "Bonjour 👋!");
//! # Ok::<(), tokenizer_bridge::Error>(())
//! ```
#![deny(missing_docs)]

mod bundled;
mod config;
mod error;
mod files;
mod load;
mod message;
mod pyjson;
mod stream;
mod template;
mod tokenizer;
mod training;

#[cfg(test)]
mod test_support;

pub use bundled::{
    bundled_asset_dir, bundled_tokenizer_json, write_bundled_assets, BUNDLED_CONFIG_JSON,
    BUNDLED_GENERATION_CONFIG_JSON, BUNDLED_TOKENIZER_CONFIG_JSON,
};
pub use config::generation_config_eos_ids;
pub use error::{BoxError, Error, Result};
pub use message::ChatMessage;
pub use stream::StreamDecoder;
pub use tokenizer::{Qwen3Tokenizer, END_OF_TEXT, IM_END, IM_START};
