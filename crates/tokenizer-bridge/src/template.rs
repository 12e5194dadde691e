//! The model's own Jinja chat template, rendered with minijinja the way transformers
//! renders it with jinja2.
//!
//! transformers (`chat_template_utils._compile_jinja_template`) uses an
//! `ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)` with the
//! `loopcontrols` extension, replaces `tojson` by `json.dumps(ensure_ascii=False)` and
//! adds the globals `raise_exception` and `strftime_now`; it renders with `messages`,
//! `tools`, `documents`, `add_generation_prompt` and every special token that is set
//! (`eos_token`, `pad_token`, ..., `additional_special_tokens`). We mirror all of that
//! except `strftime_now` (Qwen3's template does not call it; a template that does gets
//! a clear "unknown function" error) and the `{% generation %}` tag.
//! Python string methods (`.startswith`, `.split`, `.strip`, ...) come from
//! minijinja-contrib's pycompat layer.

use minijinja::value::Value;
use minijinja::{AutoEscape, Environment, ErrorKind};

use crate::config::TokenizerConfig;
use crate::error::{Error, Result};
use crate::message::ChatMessage;

/// Name the template is registered under. No file extension, so minijinja never
/// turns on HTML auto-escaping (jinja2's default is off too).
const TEMPLATE_NAME: &str = "chat_template";

/// A compiled chat template plus the special-token variables it is rendered with.
#[derive(Clone, Debug)]
pub(crate) struct ChatTemplate {
    env: Environment<'static>,
    /// Where the source came from, for error messages.
    origin: String,
    /// `eos_token`, `pad_token`, ..., `additional_special_tokens`, as transformers passes them.
    special_vars: Vec<(String, Value)>,
}

impl ChatTemplate {
    /// Compiles `source`; a syntax error is reported now, naming `origin`.
    pub fn compile(source: String, origin: String, cfg: Option<&TokenizerConfig>) -> Result<Self> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_auto_escape_callback(|_| AutoEscape::None);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_filter("tojson", crate::pyjson::tojson_filter);
        env.add_function("raise_exception", raise_exception);
        env.add_template_owned(TEMPLATE_NAME, source)
            .map_err(|source| Error::template(&origin, source))?;

        let mut special_vars = Vec::new();
        if let Some(cfg) = cfg {
            for (key, token) in &cfg.special_tokens {
                special_vars.push((key.to_string(), Value::from(token.as_str())));
            }
            if !cfg.additional_special_tokens.is_empty() {
                let list = Value::from_serialize(&cfg.additional_special_tokens);
                special_vars.push(("additional_special_tokens".into(), list));
            }
        }
        Ok(Self {
            env,
            origin,
            special_vars,
        })
    }

    /// Renders the conversation. `tools` is a parsed tool list (see [`parse_tools`]).
    pub fn render(
        &self,
        messages: &[ChatMessage],
        tools: Option<&Value>,
        add_generation_prompt: bool,
    ) -> Result<String> {
        let mut vars: Vec<(String, Value)> = vec![
            ("messages".into(), Value::from_serialize(messages)),
            ("tools".into(), tools.cloned().unwrap_or(Value::from(()))),
            ("documents".into(), Value::from(())),
            (
                "add_generation_prompt".into(),
                Value::from(add_generation_prompt),
            ),
        ];
        vars.extend(self.special_vars.iter().cloned());
        let ctx: Value = vars.into_iter().collect();
        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|source| Error::template(&self.origin, source))?;
        template
            .render(ctx)
            .map_err(|source| Error::template(&self.origin, source))
    }
}

/// Parses tool schemas given as JSON text (an array of objects), keeping key order so
/// `tojson` prints them exactly as Python's `json.dumps` prints the same dicts.
pub(crate) fn parse_tools(tools_json: &str) -> Result<Value> {
    let value: Value = serde_json::from_str(tools_json).map_err(|e| Error::ToolsJson {
        reason: e.to_string(),
    })?;
    if value.kind() != minijinja::value::ValueKind::Seq {
        return Err(Error::ToolsJson {
            reason: format!("got a JSON {} instead of an array", value.kind()),
        });
    }
    Ok(value)
}

/// transformers' `raise_exception(message)`: templates call it to reject bad input.
fn raise_exception(message: String) -> std::result::Result<Value, minijinja::Error> {
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compile(source: &str) -> ChatTemplate {
        ChatTemplate::compile(source.to_string(), "test.jinja".into(), None).unwrap()
    }

    #[test]
    fn trim_and_lstrip_blocks_are_on_like_transformers() {
        // jinja2 with trim_blocks+lstrip_blocks renders this as "a\nb\n".
        let t = compile("{% for m in messages %}\n    {% if true %}\n{{ m.content }}\n    {% endif %}\n{% endfor %}");
        let got = t
            .render(
                &[ChatMessage::user("a"), ChatMessage::user("b")],
                None,
                false,
            )
            .unwrap();
        assert_eq!(got, "a\nb\n");
    }

    #[test]
    fn python_string_methods_work_through_pycompat() {
        let t = compile("{{ messages[0].content.startswith('<think>') }} {{ messages[0].content.split('>')[1].rstrip() }}|{{ '  x '.lstrip() }}");
        let got = t
            .render(&[ChatMessage::assistant("<think>ab  ")], None, false)
            .unwrap();
        // jinja2 prints Python's `True`; minijinja does the same.
        assert_eq!(got, "True ab|x ");
    }

    #[test]
    fn raise_exception_surfaces_the_template_message_and_origin() {
        let t = compile(
            "{% if messages|length == 0 %}{{ raise_exception('No messages given') }}{% endif %}",
        );
        let err = t.render(&[], None, false).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("No messages given") && msg.contains("test.jinja"),
            "{msg}"
        );
    }

    #[test]
    fn syntax_errors_are_reported_at_compile_time_naming_the_origin() {
        let err = ChatTemplate::compile("{% if %}".into(), "/m/tokenizer_config.json".into(), None)
            .unwrap_err();
        assert!(matches!(err, Error::Template { .. }), "{err}");
        assert!(
            err.to_string().contains("/m/tokenizer_config.json"),
            "{err}"
        );
    }

    #[test]
    fn html_is_not_escaped() {
        let got = compile("{{ messages[0].content }}").render(
            &[ChatMessage::user("<b>&'\"")],
            None,
            false,
        );
        assert_eq!(got.unwrap(), "<b>&'\"");
    }

    #[test]
    fn parse_tools_requires_an_array_and_keeps_key_order() {
        assert!(matches!(
            parse_tools("{\"a\": 1}"),
            Err(Error::ToolsJson { .. })
        ));
        assert!(matches!(parse_tools("[1,"), Err(Error::ToolsJson { .. })));
        let tools = parse_tools(r#"[{"z": 1, "a": 2, "m": 3}]"#).unwrap();
        let got = compile("{{ tools[0] | tojson }}")
            .render(&[], Some(&tools), false)
            .unwrap();
        assert_eq!(got, r#"{"z": 1, "a": 2, "m": 3}"#);
    }
}
