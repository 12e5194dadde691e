//! Splitting a finished conversation into the prompt the trainer masks and the reply it learns.
//!
//! How it relates to the template: for messages `m[0..n]` whose last is the assistant's,
//! - `prompt   = apply_chat_template(m[0..n-1], add_generation_prompt = true)`, which
//!   ends in `<|im_start|>assistant\n`;
//! - `full     = apply_chat_template(m[0..n], add_generation_prompt = false)`;
//! - `response = full[prompt.len()..]` minus the single `\n` the template writes after
//!   the final `<|im_end|>`: generation stops at `<|im_end|>`, so the model never has
//!   to predict what follows, but it must learn to emit `<|im_end|>` itself (the
//!   original trainer dropped it and its model never stopped).
//!
//! So `full` is `prompt + response`, plus the template's trailing `\n` when it writes
//! one. If a template rewrites history once a reply follows (e.g. Qwen3's thinking
//! templates strip `<think>` from old turns), the prompt is not a prefix of `full` and
//! we return [`Error::PromptNotPrefix`] rather than train on text the model would
//! never see.

use crate::error::{Error, Result};
use crate::message::ChatMessage;
use crate::tokenizer::{Qwen3Tokenizer, IM_END};

impl Qwen3Tokenizer {
    /// `(prompt, response)` for a conversation ending in an assistant message; see the
    /// module docs for the exact relation to [`apply_chat_template`](Self::apply_chat_template).
    pub fn render_training_pair(&self, messages: &[ChatMessage]) -> Result<(String, String)> {
        self.split_training_pair(messages, None)
    }

    /// [`render_training_pair`](Self::render_training_pair) with tool schemas in the system turn.
    pub fn render_training_pair_with_tools(
        &self,
        messages: &[ChatMessage],
        tools_json: &str,
    ) -> Result<(String, String)> {
        self.split_training_pair(messages, Some(tools_json))
    }

    /// Token ids of [`render_training_pair`](Self::render_training_pair): `(prompt_ids,
    /// response_ids)`, encoded separately so the mask boundary is a token boundary. The
    /// prompt ends in `\n` and the response begins with the reply, so this equals
    /// encoding `prompt + response` whole unless the reply itself starts with a newline
    /// (then BPE would merge the two `\n`s).
    pub fn encode_training_pair(&self, messages: &[ChatMessage]) -> Result<(Vec<u32>, Vec<u32>)> {
        let (prompt, response) = self.render_training_pair(messages)?;
        Ok((self.encode(&prompt, false)?, self.encode(&response, false)?))
    }

    fn split_training_pair(
        &self,
        messages: &[ChatMessage],
        tools_json: Option<&str>,
    ) -> Result<(String, String)> {
        let n = messages.len();
        if n < 2 {
            return Err(Error::ConversationTooShort { len: n });
        }
        if messages[n - 1].role != "assistant" {
            return Err(Error::LastMessageNotAssistant {
                index: n - 1,
                role: messages[n - 1].role.clone(),
            });
        }
        let render = |msgs: &[ChatMessage], gen: bool| match tools_json {
            Some(tools) => self.apply_chat_template_with_tools(msgs, tools, gen),
            None => self.apply_chat_template(msgs, gen),
        };
        let prompt = render(&messages[..n - 1], true)?;
        let full = render(messages, false)?;
        let Some(rest) = full.strip_prefix(prompt.as_str()) else {
            let offset = prompt
                .bytes()
                .zip(full.bytes())
                .take_while(|(a, b)| a == b)
                .count();
            return Err(Error::PromptNotPrefix { offset });
        };
        let response = rest.strip_suffix('\n').unwrap_or(rest);
        if !response.ends_with(IM_END) {
            let tail: String = rest
                .chars()
                .rev()
                .take(20)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            return Err(Error::ResponseNotTerminated {
                expected: IM_END.into(),
                tail,
            });
        }
        Ok((prompt, response.to_string()))
    }
}
