//! One turn of a chat, in the `{role, content}` shape chat templates expect.

use serde::{Deserialize, Serialize};

/// One message of a conversation. `role` is `system`, `user`, `assistant` or `tool`
/// (the Qwen3 template wraps consecutive `tool` messages in one `user` turn).
///
/// Assistant tool calls are written into `content` as the model emits them
/// (`<tool_call>\n{"name": ..., "arguments": ...}\n</tool_call>`); the structured
/// `tool_calls` field of transformers is not modelled.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ChatMessage {
    /// Who speaks: `system`, `user`, `assistant` or `tool`.
    pub role: String,
    /// The text of the turn, verbatim (may contain `<think>...</think>`).
    pub content: String,
}

impl ChatMessage {
    /// A message with any role.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }

    /// A `system` message.
    pub fn system(content: impl Into<String>) -> Self {
        Self::new("system", content)
    }

    /// A `user` message.
    pub fn user(content: impl Into<String>) -> Self {
        Self::new("user", content)
    }

    /// An `assistant` message.
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new("assistant", content)
    }

    /// A `tool` message: the result of a tool call, as text.
    pub fn tool(content: impl Into<String>) -> Self {
        Self::new("tool", content)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constructors_set_role_and_keep_content_verbatim() {
        let m = ChatMessage::assistant("<think>\nx\n</think>\n\n y ");
        assert_eq!(m.role, "assistant");
        assert_eq!(m.content, "<think>\nx\n</think>\n\n y ");
        assert_eq!(ChatMessage::system("s").role, "system");
        assert_eq!(ChatMessage::user("u").role, "user");
        assert_eq!(ChatMessage::tool("t").role, "tool");
    }

    #[test]
    fn serde_uses_the_openai_field_names() {
        let m: ChatMessage = serde_json::from_str(r#"{"role":"user","content":"hi"}"#).unwrap();
        assert_eq!(m, ChatMessage::user("hi"));
        assert_eq!(
            serde_json::to_string(&m).unwrap(),
            r#"{"role":"user","content":"hi"}"#
        );
    }
}
