//! The one error type of this crate: every variant names the file, key or token at fault.

use std::path::PathBuf;

/// Errors raised by the `tokenizers` library (it boxes them).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// `Result` with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// Everything that can go wrong when loading a tokenizer, rendering a chat or decoding.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file could not be read or written (missing, permissions, ...).
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What was attempted ("read", "write", "rename to").
        action: &'static str,
        /// The file at fault.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },

    /// A `.gz` file is not valid gzip data.
    #[error("cannot decompress {} (expected gzip data): {source}", path.display())]
    Gzip {
        /// The compressed file.
        path: PathBuf,
        /// The decompressor's error.
        #[source]
        source: std::io::Error,
    },

    /// A JSON config file does not parse.
    #[error("{} is not valid JSON: {source}", path.display())]
    Json {
        /// The file at fault.
        path: PathBuf,
        /// Line and column are in the message.
        #[source]
        source: serde_json::Error,
    },

    /// `tokenizer.json` is not a tokenizer the `tokenizers` library can build.
    #[error("{} is not a valid tokenizer.json: {source}", path.display())]
    TokenizerFile {
        /// The file at fault.
        path: PathBuf,
        /// The `tokenizers` library's error (line and column for bad JSON).
        #[source]
        source: BoxError,
    },

    /// A config key holds a value of the wrong type.
    #[error("{}: key `{key}` should be {expected}, got {got}", path.display())]
    ConfigField {
        /// The config file.
        path: PathBuf,
        /// The JSON key.
        key: String,
        /// What the key must hold.
        expected: &'static str,
        /// What it holds (JSON text, shortened).
        got: String,
    },

    /// A token this crate relies on (`<|im_start|>`, ...) is not in the vocabulary.
    #[error("{}: token `{token}` is not in the vocabulary (is this a Qwen3 tokenizer?)", path.display())]
    MissingSpecialToken {
        /// The file the token should come from.
        path: PathBuf,
        /// The token text.
        token: String,
    },

    /// `tokenizer_config.json` was loaded but holds no chat template.
    #[error(
        "{} has no chat template (no `chat_template` key and no chat_template.jinja beside it)",
        path.display()
    )]
    MissingChatTemplate {
        /// The tokenizer_config.json that was searched.
        path: PathBuf,
    },

    /// The tokenizer was built without any tokenizer_config.json, so there is no chat template.
    #[error(
        "no chat template: {} was loaded without a tokenizer_config.json \
         (use Qwen3Tokenizer::from_dir, or pass the config to from_files)",
        tokenizer.display()
    )]
    NoTokenizerConfig {
        /// The tokenizer.json that was loaded.
        tokenizer: PathBuf,
    },

    /// The chat template does not compile or failed while rendering.
    #[error("chat template from {origin}{}: {source}", line.map(|n| format!(", line {n}")).unwrap_or_default())]
    Template {
        /// Where the template came from (a file path, with the key).
        origin: String,
        /// Line of the template source at fault, when known.
        line: Option<usize>,
        /// minijinja's error, with the template line.
        #[source]
        source: minijinja::Error,
    },

    /// The tool schemas given to the chat template are not a JSON array.
    #[error("tools must be a JSON array of tool schemas: {reason}")]
    ToolsJson {
        /// What is wrong with the text.
        reason: String,
    },

    /// A training pair needs at least one message before the final assistant reply.
    #[error(
        "training pair needs a conversation ending in an assistant message, got {len} message(s)"
    )]
    ConversationTooShort {
        /// Number of messages given.
        len: usize,
    },

    /// The last message of a training conversation is not the assistant's.
    #[error("training pair: message {index} (the last) has role `{role}`, expected `assistant`")]
    LastMessageNotAssistant {
        /// Index of the last message.
        index: usize,
        /// Its role.
        role: String,
    },

    /// The template renders earlier turns differently once a reply follows them, so the
    /// prompt is not a prefix of the full conversation and cannot be masked cleanly.
    #[error(
        "training pair: the prompt rendered with add_generation_prompt is not a prefix of the \
         full conversation (they first differ at byte {offset}); the template rewrites history"
    )]
    PromptNotPrefix {
        /// First differing byte offset.
        offset: usize,
    },

    /// The rendered conversation does not end with the end-of-turn token.
    #[error("training pair: the rendered reply does not end with `{expected}`: ...{tail:?}")]
    ResponseNotTerminated {
        /// The expected end marker.
        expected: String,
        /// The last characters of the rendered reply.
        tail: String,
    },

    /// A token id is outside the vocabulary.
    #[error("token id {id} at position {position} is outside the vocabulary ({vocab_size} ids)")]
    UnknownTokenId {
        /// The id.
        id: u32,
        /// Its index in the input (for a stream decoder: the number of ids pushed before it).
        position: usize,
        /// Number of ids the tokenizer knows (added tokens included).
        vocab_size: usize,
    },

    /// The `tokenizers` library failed to encode.
    #[error("encoding {chars} characters failed: {source}")]
    Encode {
        /// Length of the input, in characters.
        chars: usize,
        /// The library's error.
        #[source]
        source: BoxError,
    },

    /// The `tokenizers` library failed to decode.
    #[error("decoding {len} token ids failed: {source}")]
    Decode {
        /// Number of ids.
        len: usize,
        /// The library's error.
        #[source]
        source: BoxError,
    },

    /// Decoding a longer window changed text already printed by a stream decoder.
    #[error(
        "stream decoder: decoding ids {start}..{end} no longer starts with the text already \
         emitted ({emitted:?}); the tokenizer's decoder is not prefix-stable"
    )]
    StreamPrefix {
        /// First id of the window (count of ids pushed).
        start: usize,
        /// End of the window.
        end: usize,
        /// Text that was expected as the prefix.
        emitted: String,
    },
}

impl Error {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        Error::Io {
            action,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn template(origin: &str, source: minijinja::Error) -> Self {
        Error::Template {
            origin: origin.to_string(),
            line: source.line(),
            source,
        }
    }
}
