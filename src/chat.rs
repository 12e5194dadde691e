//! Multi-turn chat for `run2 --chat` / `--script`: the messages as text and,
//! with a KV cache, the token-level [`Conversation`] kept across turns.
//!
//! With a cache only what the cache lacks is fed each turn: the tokens that
//! close the previous reply (`<|im_end|>\n`, as the template renders it) and
//! the template's rendering of the new user turn, found as the suffix of the
//! whole conversation's rendering. The reply's tokens stay as generated (no
//! re-tokenization). Should the template ever render earlier turns
//! differently, the cached tokens would no longer match the text: the session
//! then starts the cache over (counted by [`ChatSession::reprefills`]).
//! Without a cache, every turn renders and recomputes the whole conversation.

use anyhow::Result;
use qwen3_model::{generate, Conversation, GenerateOptions, Generation, Qwen3Model};
use tokenizer_bridge::{ChatMessage, Qwen3Tokenizer};

/// What one turn fed and produced.
#[derive(Debug)]
pub struct ChatTurn {
    /// Ids fed by this turn (with a cache: only the new ones).
    pub fed: Vec<u32>,
    /// The generation (its `tokens` end with the stop token, if any).
    pub generation: Generation,
    /// The reply as text (stop token excluded, special tokens skipped).
    pub reply: String,
}

/// A conversation with one model and one tokenizer.
#[derive(Debug)]
pub struct ChatSession {
    messages: Vec<ChatMessage>,
    /// The template's rendering of `messages` (what the cache holds, as text).
    rendered: String,
    conversation: Option<Conversation>,
    /// Tokens that close the previous reply, fed with the next turn.
    closing: Vec<u32>,
    reprefills: usize,
}

impl ChatSession {
    /// A new conversation, with an optional system message; `kv_cache` keeps
    /// one cache across turns, else every turn recomputes everything.
    pub fn new(model: &Qwen3Model, system: Option<&str>, kv_cache: bool) -> Result<Self> {
        let conversation = match kv_cache {
            true => Some(Conversation::new(model.new_cache(1, 1024)?)),
            false => None,
        };
        Ok(Self {
            messages: system.map(ChatMessage::system).into_iter().collect(),
            rendered: String::new(),
            conversation,
            closing: Vec::new(),
            reprefills: 0,
        })
    }

    /// The messages so far.
    pub fn messages(&self) -> &[ChatMessage] {
        &self.messages
    }

    /// With a cache: every id of the conversation so far.
    pub fn ids(&self) -> Option<&[u32]> {
        self.conversation.as_ref().map(Conversation::ids)
    }

    /// Times the cache was started over because the history rendered differently.
    pub fn reprefills(&self) -> usize {
        self.reprefills
    }

    /// One user turn: feeds it, generates the reply (streamed through `on_token`).
    /// The reply is cut to what the model's context (`max_position_embeddings`)
    /// still holds. A turn that fails (a prompt too long for the context, an
    /// id outside the vocabulary) leaves the session as it was before it.
    pub fn turn(
        &mut self,
        model: &Qwen3Model,
        tok: &Qwen3Tokenizer,
        user: &str,
        opts: &GenerateOptions,
        on_token: &mut dyn FnMut(u32) -> bool,
    ) -> Result<ChatTurn> {
        self.messages.push(ChatMessage::user(user));
        let turn = self.turn_inner(model, tok, opts, on_token);
        if turn.is_err() {
            self.messages.pop();
        }
        turn
    }

    fn turn_inner(
        &mut self,
        model: &Qwen3Model,
        tok: &Qwen3Tokenizer,
        opts: &GenerateOptions,
        on_token: &mut dyn FnMut(u32) -> bool,
    ) -> Result<ChatTurn> {
        let context = model.config().max_position_embeddings;
        let full = tok.apply_chat_template(&self.messages, true)?;
        let (fed, generation) = match self.conversation.as_mut() {
            None => {
                let ids = tok.encode(&full, false)?;
                let opts = fit_context(opts, ids.len(), context)?;
                let generation = generate(model, None, &ids, &opts, on_token)?;
                (ids, generation)
            }
            Some(conv) => {
                let delta = match full.strip_prefix(self.rendered.as_str()) {
                    Some(delta) => delta.to_string(),
                    None => {
                        tracing::warn!("the chat template rendered the history differently; starting the cache over");
                        conv.reset();
                        self.closing.clear();
                        self.reprefills += 1;
                        full
                    }
                };
                let ids = [self.closing.clone(), tok.encode(&delta, false)?].concat();
                let opts = fit_context(opts, conv.ids().len() + ids.len(), context)?;
                let generation = conv.turn(model, &ids, &opts, on_token)?;
                self.closing = close_reply(conv, tok, &generation)?;
                (ids, generation)
            }
        };
        let stop = usize::from(generation.stopped_on.is_some());
        let reply = tok.decode(&generation.tokens[..generation.tokens.len() - stop], true)?;
        self.messages.push(ChatMessage::assistant(reply.as_str()));
        self.rendered = tok.apply_chat_template(&self.messages, false)?;
        Ok(ChatTurn {
            fed,
            generation,
            reply,
        })
    }
}

/// `opts` with the reply cut to the room a prompt of `used` tokens leaves in
/// a context of `context` positions; no room at all is an error.
pub fn fit_context(opts: &GenerateOptions, used: usize, context: usize) -> Result<GenerateOptions> {
    if used >= context {
        anyhow::bail!(
            "the prompt is {used} tokens, the model's context holds {context} (max_position_embeddings): shorten it, or /reset the conversation"
        );
    }
    let room = context - used;
    if opts.max_new_tokens > room {
        tracing::warn!(
            "reply cut to {room} tokens: the prompt is {used} of the context's {context}"
        );
    }
    Ok(GenerateOptions {
        max_new_tokens: opts.max_new_tokens.min(room),
        ..opts.clone()
    })
}

/// Tokens that end the reply in the cache as the template renders it
/// (`<|im_end|>\n`). A generated `<|im_end|>` is already there (fed with the
/// next turn); another stop token is replaced by it; a reply cut by the token
/// limit gets one.
fn close_reply(conv: &mut Conversation, tok: &Qwen3Tokenizer, g: &Generation) -> Result<Vec<u32>> {
    let newline = tok.encode("\n", false)?;
    match g.stopped_on {
        Some(id) if id == tok.im_end_id() => Ok(newline),
        stop => {
            if stop.is_some() {
                conv.pop_unfed();
            }
            Ok([vec![tok.im_end_id()], newline].concat())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qwen3_model::{LoadOptions, Qwen3Config};

    /// A one-layer random model over the full Qwen3 vocabulary, so the real
    /// (bundled) tokenizer's ids fit; tied head keeps it small.
    fn setup() -> (Qwen3Model, Qwen3Tokenizer, GenerateOptions) {
        let cfg = Qwen3Config {
            hidden_size: 16,
            intermediate_size: 16,
            num_hidden_layers: 1,
            num_attention_heads: 1,
            num_key_value_heads: 1,
            head_dim: 16,
            tie_word_embeddings: true,
            ..Qwen3Config::qwen3_4b()
        };
        let seed = test_support::seed();
        let model = Qwen3Model::random(&cfg, &LoadOptions::new(tch::Device::Cpu), seed).unwrap();
        let tok = Qwen3Tokenizer::bundled().unwrap();
        let opts = GenerateOptions {
            max_new_tokens: 3,
            stop_ids: tok.stop_ids().to_vec(),
            ..Default::default()
        };
        (model, tok, opts)
    }

    #[test]
    fn with_a_cache_each_turn_feeds_only_what_the_cache_lacks() {
        let _guard = crate::heavy_test_lock();
        let (model, tok, opts) = setup();
        let mut chat = ChatSession::new(&model, Some("Be brief."), true).unwrap();
        let first = chat.turn(&model, &tok, "Hi", &opts, &mut |_| true).unwrap();
        let rendered = tok
            .apply_chat_template(&chat.messages()[..2], true)
            .unwrap();
        assert_eq!(first.fed, tok.encode(&rendered, false).unwrap());

        let second = chat
            .turn(&model, &tok, "Again", &opts, &mut |_| true)
            .unwrap();
        let user = tok
            .encode(
                "<|im_start|>user\nAgain<|im_end|>\n<|im_start|>assistant\n",
                false,
            )
            .unwrap();
        let newline = tok.encode("\n", false).unwrap();
        let closing = match first.generation.stopped_on {
            Some(id) if id == tok.im_end_id() => newline,
            _ => [vec![tok.im_end_id()], newline].concat(),
        };
        assert_eq!(
            second.fed,
            [closing, user].concat(),
            "closing tokens, then the new user turn only"
        );
        assert_eq!(chat.reprefills(), 0);
        // Every id is kept in order: turn 1, its reply (a non-im_end stop token replaced), turn 2, its reply.
        let ids = chat.ids().unwrap();
        assert!(ids.starts_with(&first.fed));
        assert!(ids.ends_with(&[second.fed.as_slice(), &second.generation.tokens].concat()));
    }

    #[test]
    fn without_a_cache_each_turn_recomputes_the_rendered_conversation() {
        let _guard = crate::heavy_test_lock();
        let (model, tok, opts) = setup();
        let mut chat = ChatSession::new(&model, None, false).unwrap();
        let first = chat.turn(&model, &tok, "Hi", &opts, &mut |_| true).unwrap();
        let second = chat
            .turn(&model, &tok, "Again", &opts, &mut |_| true)
            .unwrap();
        let messages = [
            ChatMessage::user("Hi"),
            ChatMessage::assistant(first.reply.as_str()),
            ChatMessage::user("Again"),
        ];
        let whole = tok.apply_chat_template(&messages, true).unwrap();
        assert_eq!(second.fed, tok.encode(&whole, false).unwrap());
        assert!(chat.ids().is_none());
        assert_eq!(chat.messages().len(), 4);
    }
}
