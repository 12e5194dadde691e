//! Training data: TSV `prompt<TAB>response` and JSONL chat files, parsed
//! line by line (every bad line reported with its file and line number),
//! rendered with the model's chat template and tokenized.
//!
//! Targets are the assistant turns' tokens followed by `<|im_end|>`, so the
//! model learns to stop (the original's targets lacked it). Everything else
//! (system/user turns, the `<|im_start|>assistant\n` header) is context only.
//!
//! Truncation to `seq_len` tokens: context is cut from the *left* first (the
//! end of the prompt, next to the answer, matters most); if the targets alone
//! do not fit, the example is cut on the right (and no longer ends with
//! `<|im_end|>`); both cases are counted in [`Dataset::stats`].

use std::path::{Path, PathBuf};
use std::str::FromStr;

use tokenizer_bridge::{ChatMessage, Qwen3Tokenizer};

use crate::error::{Error, Result};

/// What to do with a data line that cannot be parsed or rendered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BadLinePolicy {
    /// Stop with an error naming the file and line.
    #[default]
    Fail,
    /// Warn (file:line: reason), count it and go on.
    Skip,
}

/// The spelling [`FromStr`] accepts (for `--help` defaults and logs).
impl std::fmt::Display for BadLinePolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Fail => "fail",
            Self::Skip => "skip",
        })
    }
}

impl FromStr for BadLinePolicy {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "fail" => Ok(Self::Fail),
            "skip" => Ok(Self::Skip),
            _ => Err(Error::ParseOption {
                name: "bad-lines",
                expected: "skip, fail",
                got: s.into(),
            }),
        }
    }
}

/// How data files are read.
#[derive(Clone, Debug, PartialEq)]
pub struct DataOptions {
    /// Longest tokenized example kept (context + targets).
    pub seq_len: usize,
    /// Bad-line policy.
    pub bad_lines: BadLinePolicy,
    /// Optional system message put before every TSV pair.
    pub system_prompt: Option<String>,
}

/// One tokenized training example.
#[derive(Clone, Debug, PartialEq)]
pub struct Example {
    /// Context and target tokens, in order.
    pub tokens: Vec<u32>,
    /// `true` where the token is a target (predicted by the loss).
    pub is_target: Vec<bool>,
    /// Tokens of the prompt that precedes the last assistant turn (untruncated).
    pub prompt_ids: Vec<u32>,
    /// Text of the user turn before the last assistant turn.
    pub prompt: String,
    /// Text of the last assistant turn (what generation should reproduce).
    pub response: String,
    /// 1-based line in the source file.
    pub line: usize,
}

/// Counters of a loaded data file.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct DataStats {
    /// Lines that became examples.
    pub examples: usize,
    /// Bad lines skipped (`--bad-lines skip`).
    pub skipped: usize,
    /// Examples whose context was cut on the left.
    pub context_truncated: usize,
    /// Examples whose targets were cut on the right (lost their `<|im_end|>`).
    pub targets_truncated: usize,
    /// Target tokens over all examples.
    pub target_tokens: usize,
}

/// A tokenized data file.
#[derive(Clone, Debug)]
pub struct Dataset {
    /// The file read.
    pub path: PathBuf,
    /// Examples in file order.
    pub examples: Vec<Example>,
    /// Counters.
    pub stats: DataStats,
}

impl Dataset {
    /// Checks every token against a model's vocabulary of `vocab` ids: the
    /// first id outside it is an error naming the file, line and id.
    pub fn check_vocab(&self, vocab: usize) -> Result<()> {
        for ex in &self.examples {
            if let Some(&id) = ex.tokens.iter().find(|&&id| id as usize >= vocab) {
                return Err(Error::TokenOutOfVocab {
                    path: self.path.clone(),
                    line: ex.line,
                    id,
                    vocab,
                });
            }
        }
        Ok(())
    }
}

/// Reads a `.tsv`/`.txt` (TSV) or `.jsonl` file according to its extension.
pub fn load_data(path: &Path, tok: &Qwen3Tokenizer, opts: &DataOptions) -> Result<Dataset> {
    match path.extension().and_then(|e| e.to_str()) {
        Some("tsv") | Some("txt") => load_tsv(path, tok, opts),
        Some("jsonl") => load_jsonl(path, tok, opts),
        _ => Err(Error::UnknownDataFormat {
            path: path.to_path_buf(),
        }),
    }
}

/// Reads a TSV file: one `prompt<TAB>response` pair a line; `#` lines and
/// blank lines are skipped; `\n`, `\t` and `\\` in fields are unescaped.
pub fn load_tsv(path: &Path, tok: &Qwen3Tokenizer, opts: &DataOptions) -> Result<Dataset> {
    let system = opts.system_prompt.clone();
    load_lines(path, tok, opts, &move |line| {
        parse_tsv_line(line, system.as_deref())
    })
}

/// Reads a JSONL file: one `{"messages": [{"role": .., "content": ..}, ..]}`
/// a line, ending with an assistant message (every assistant turn is a
/// target), or one `{"prompt": .., "response": ..}` pair a line (other keys of
/// such a line, like GSM8K's `response_raw`, are ignored); blank lines are
/// skipped. A system prompt from [`DataOptions`] goes before every pair.
pub fn load_jsonl(path: &Path, tok: &Qwen3Tokenizer, opts: &DataOptions) -> Result<Dataset> {
    let system = opts.system_prompt.clone();
    load_lines(path, tok, opts, &move |line| {
        parse_jsonl_line(line, system.as_deref())
    })
}

/// Tokenizes TSV text held in memory (the embedded default dataset);
/// `name` stands for the file in messages.
pub fn load_tsv_str(
    name: &str,
    text: &str,
    tok: &Qwen3Tokenizer,
    opts: &DataOptions,
) -> Result<Dataset> {
    let system = opts.system_prompt.clone();
    build(Path::new(name), text, tok, opts, &move |line| {
        parse_tsv_line(line, system.as_deref())
    })
}

/// Parses one line into the messages of one example (`Ok(None)`: nothing on the line).
type LineParser<'a> = dyn Fn(&str) -> std::result::Result<Option<Vec<ChatMessage>>, String> + 'a;

/// The UTF-8 byte-order mark some editors put at the start of a file.
const BOM: char = '\u{feff}';

fn load_lines(
    path: &Path,
    tok: &Qwen3Tokenizer,
    opts: &DataOptions,
    parse: &LineParser<'_>,
) -> Result<Dataset> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        let good = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        let line = good.iter().filter(|&&b| b == b'\n').count() + 1;
        Error::BadLine {
            path: path.to_path_buf(),
            line,
            reason: "not valid UTF-8".into(),
        }
    })?;
    // Editors on Windows start files with a byte-order mark: not part of line 1.
    build(
        path,
        text.strip_prefix(BOM).unwrap_or(&text),
        tok,
        opts,
        parse,
    )
}

fn build(
    path: &Path,
    text: &str,
    tok: &Qwen3Tokenizer,
    opts: &DataOptions,
    parse: &LineParser<'_>,
) -> Result<Dataset> {
    if opts.seq_len < 2 {
        return Err(Error::config("seq-len", "at least 2", opts.seq_len));
    }
    let mut stats = DataStats::default();
    let mut examples = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let outcome = parse(raw.strip_suffix('\r').unwrap_or(raw)).and_then(|c| {
            c.map(|c| tokenize(&c, tok, line).map_err(reason_of))
                .transpose()
        });
        match outcome {
            Ok(None) => {}
            Ok(Some(mut ex)) => {
                truncate(&mut ex, opts.seq_len, &mut stats);
                stats.target_tokens += ex.is_target.iter().filter(|t| **t).count();
                examples.push(ex);
            }
            Err(reason) => {
                let err = Error::BadLine {
                    path: path.to_path_buf(),
                    line,
                    reason,
                };
                match opts.bad_lines {
                    BadLinePolicy::Fail => return Err(err),
                    BadLinePolicy::Skip => {
                        tracing::warn!("skipping bad line: {err}");
                        stats.skipped += 1;
                    }
                }
            }
        }
    }
    if examples.is_empty() {
        return Err(Error::EmptyDataset {
            path: path.to_path_buf(),
            skipped: stats.skipped,
        });
    }
    stats.examples = examples.len();
    if stats.context_truncated + stats.targets_truncated > 0 {
        tracing::warn!(
            "{}: {} example(s) lost context on the left, {} lost targets on the right (seq-len {})",
            path.display(),
            stats.context_truncated,
            stats.targets_truncated,
            opts.seq_len
        );
    }
    Ok(Dataset {
        path: path.to_path_buf(),
        examples,
        stats,
    })
}

/// One TSV line: `Ok(None)` for comments and blank lines.
pub fn parse_tsv_line(
    line: &str,
    system: Option<&str>,
) -> std::result::Result<Option<Vec<ChatMessage>>, String> {
    if line.trim().is_empty() || line.starts_with('#') {
        return Ok(None);
    }
    let fields: Vec<&str> = line.split('\t').collect();
    if fields.len() != 2 {
        return Err(format!(
            "expected prompt<TAB>response (1 TAB), found {} TAB(s)",
            fields.len() - 1
        ));
    }
    let prompt = unescape(fields[0].trim());
    let response = unescape(fields[1].trim());
    if prompt.is_empty() {
        return Err("empty prompt".into());
    }
    if response.is_empty() {
        return Err("empty response".into());
    }
    Ok(Some(pair(system, prompt, response)))
}

/// `[system,] user, assistant`.
fn pair(system: Option<&str>, prompt: String, response: String) -> Vec<ChatMessage> {
    let mut messages = Vec::with_capacity(3);
    if let Some(s) = system {
        messages.push(ChatMessage::system(s));
    }
    messages.push(ChatMessage::user(prompt));
    messages.push(ChatMessage::assistant(response));
    messages
}

/// One JSONL line: `Ok(None)` for blank lines. Either `{"messages": [..]}`
/// (exactly that key) or `{"prompt": "..", "response": ".."}` (other keys
/// ignored); `system` goes before a prompt/response pair.
pub fn parse_jsonl_line(
    line: &str,
    system: Option<&str>,
) -> std::result::Result<Option<Vec<ChatMessage>>, String> {
    if line.trim().is_empty() {
        return Ok(None);
    }
    let value: serde_json::Value =
        serde_json::from_str(line).map_err(|e| format!("invalid JSON: {e}"))?;
    let Some(object) = value.as_object() else {
        return Err("expected a JSON object".into());
    };
    if object.contains_key("messages") {
        return parse_messages(value);
    }
    let field = |key: &str| match object.get(key) {
        Some(serde_json::Value::String(s)) if !s.trim().is_empty() => Ok(s.clone()),
        Some(serde_json::Value::String(_)) => Err(format!("empty \"{key}\"")),
        Some(_) => Err(format!("\"{key}\" is not a string")),
        None => Err(format!(
            "expected {{\"messages\": [..]}} or {{\"prompt\", \"response\"}}; no \"{key}\" key"
        )),
    };
    Ok(Some(pair(system, field("prompt")?, field("response")?)))
}

fn parse_messages(
    value: serde_json::Value,
) -> std::result::Result<Option<Vec<ChatMessage>>, String> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Line {
        messages: Vec<ChatMessage>,
    }
    let parsed: Line =
        serde_json::from_value(value).map_err(|e| format!("invalid JSON chat line: {e}"))?;
    let msgs = parsed.messages;
    for (k, m) in msgs.iter().enumerate() {
        if !matches!(m.role.as_str(), "system" | "user" | "assistant") {
            return Err(format!(
                "messages[{k}].role is {:?}: expected system, user or assistant",
                m.role
            ));
        }
        if m.role == "assistant" && m.content.trim().is_empty() {
            return Err(format!("messages[{k}] is an empty assistant message"));
        }
    }
    match msgs.last() {
        None => Err("\"messages\" is empty".into()),
        Some(m) if m.role != "assistant" => Err(format!(
            "last message has role {:?}: expected assistant",
            m.role
        )),
        Some(_) if !msgs.iter().any(|m| m.role == "user") => Err("no user message".into()),
        Some(_) => Ok(Some(msgs)),
    }
}

/// The bare reason of a tokenization error (file and line are added by the caller).
fn reason_of(e: Error) -> String {
    match e {
        Error::BadLine { reason, .. } => reason,
        other => other.to_string(),
    }
}

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('\\') => out.push('\\'),
            // Anything else stays as written: a lone backslash is text.
            Some(other) => {
                out.push('\\');
                out.push(other);
            }
            None => out.push('\\'),
        }
    }
    out
}

/// Renders `msgs` with the chat template and tokenizes it segment by segment:
/// the text before each assistant turn is context, the turn's content plus
/// `<|im_end|>` are targets. Each prompt is encoded on its own, exactly as at
/// generation time, so training and inference see the same token boundaries.
pub fn tokenize(msgs: &[ChatMessage], tok: &Qwen3Tokenizer, line: usize) -> Result<Example> {
    let end_marker = "<|im_end|>";
    let mut tokens = Vec::new();
    let mut is_target = Vec::new();
    let mut consumed = 0usize; // bytes of the rendered text already tokenized
    let mut prompt_ids = Vec::new();
    for (i, m) in msgs
        .iter()
        .enumerate()
        .filter(|(_, m)| m.role == "assistant")
    {
        let prefix = tok.apply_chat_template(&msgs[..i], true)?;
        let upto = tok.apply_chat_template(&msgs[..=i], false)?;
        let turn = format!("{}{end_marker}", m.content);
        let consistent = prefix.len() >= consumed
            && upto
                .get(prefix.len()..)
                .is_some_and(|rest| rest.starts_with(&turn));
        if !consistent {
            return Err(Error::BadLine {
                path: PathBuf::new(),
                line,
                reason: format!(
                    "chat template does not render assistant turn {i} verbatim after its prompt"
                ),
            });
        }
        let context = tok.encode(&prefix[consumed..], false)?;
        tokens.extend_from_slice(&context);
        is_target.resize(tokens.len(), false);
        prompt_ids = tok.encode(&prefix, false)?;
        let answer = tok.encode(&m.content, false)?;
        tokens.extend_from_slice(&answer);
        tokens.push(tok.im_end_id());
        is_target.resize(tokens.len(), true);
        consumed = prefix.len() + turn.len();
    }
    let response = msgs.last().map(|m| m.content.clone()).unwrap_or_default();
    let prompt = msgs
        .iter()
        .rev()
        .find(|m| m.role == "user")
        .map(|m| m.content.clone())
        .unwrap_or_default();
    Ok(Example {
        tokens,
        is_target,
        prompt_ids,
        prompt,
        response,
        line,
    })
}

/// Applies the truncation policy of the module doc to one example.
fn truncate(ex: &mut Example, seq_len: usize, stats: &mut DataStats) {
    if ex.tokens.len() <= seq_len {
        return;
    }
    let first_target = ex
        .is_target
        .iter()
        .position(|t| *t)
        .unwrap_or(ex.tokens.len());
    // Keep at least one context token: the first target needs something to be predicted from.
    let can_drop = first_target.saturating_sub(1);
    let drop = (ex.tokens.len() - seq_len).min(can_drop);
    if drop > 0 {
        ex.tokens.drain(..drop);
        ex.is_target.drain(..drop);
        stats.context_truncated += 1;
    }
    if ex.tokens.len() > seq_len {
        ex.tokens.truncate(seq_len);
        ex.is_target.truncate(seq_len);
        stats.targets_truncated += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tsv_comments_and_blank_lines_are_skipped() {
        assert_eq!(parse_tsv_line("# a comment\twith tab", None), Ok(None));
        assert_eq!(parse_tsv_line("   ", None), Ok(None));
        assert_eq!(parse_tsv_line("", None), Ok(None));
    }

    #[test]
    fn tsv_line_becomes_user_then_assistant_with_escapes() {
        let c = parse_tsv_line("Say hi\\ttwice\tHi!\\nHi!", Some("Be brief."))
            .unwrap()
            .unwrap();
        let roles: Vec<&str> = c.iter().map(|m| m.role.as_str()).collect();
        assert_eq!(roles, ["system", "user", "assistant"]);
        assert_eq!(c[1].content, "Say hi\ttwice");
        assert_eq!(c[2].content, "Hi!\nHi!");
    }

    #[test]
    fn tsv_errors_say_what_is_wrong() {
        assert!(parse_tsv_line("no tab here", None)
            .unwrap_err()
            .contains("found 0 TAB"));
        assert!(parse_tsv_line("a\tb\tc", None)
            .unwrap_err()
            .contains("found 2 TAB"));
        assert!(parse_tsv_line("\tanswer", None)
            .unwrap_err()
            .contains("empty prompt"));
        assert!(parse_tsv_line("question\t  ", None)
            .unwrap_err()
            .contains("empty response"));
    }

    #[test]
    fn jsonl_errors_name_the_field() {
        let e =
            parse_jsonl_line(r#"{"messages":[{"role":"user","content":"hi"}]}"#, None).unwrap_err();
        assert!(e.contains("expected assistant"), "{e}");
        let e =
            parse_jsonl_line(r#"{"messages":[{"role":"bot","content":"hi"}]}"#, None).unwrap_err();
        assert!(e.contains("messages[0].role"), "{e}");
        let e = parse_jsonl_line(r#"{"messages":[]}"#, None).unwrap_err();
        assert!(e.contains("empty"), "{e}");
        let e = parse_jsonl_line(r#"{"messages":[{"role":"assistant","content":"x"}]}"#, None)
            .unwrap_err();
        assert!(e.contains("no user"), "{e}");
        let e = parse_jsonl_line(r#"{"messages":[], "x": 1}"#, None).unwrap_err();
        assert!(e.contains("invalid JSON chat line"), "{e}");
        let e = parse_jsonl_line(r#"{"msgs":[]}"#, None).unwrap_err();
        assert!(e.contains("no \"prompt\" key"), "{e}");
        let e = parse_jsonl_line(r#"{"prompt":"q","response":7}"#, None).unwrap_err();
        assert!(e.contains("\"response\" is not a string"), "{e}");
        let e = parse_jsonl_line("[1]", None).unwrap_err();
        assert!(e.contains("JSON object"), "{e}");
        assert_eq!(parse_jsonl_line("  ", None), Ok(None));
    }

    #[test]
    fn jsonl_prompt_response_pairs_become_a_chat_with_the_system_prompt() {
        let line = r#"{"prompt": "2+2?", "response": "4", "response_raw": "2+2=<<4>>4"}"#;
        let c = parse_jsonl_line(line, Some("Be brief.")).unwrap().unwrap();
        assert_eq!(
            c,
            vec![
                ChatMessage::system("Be brief."),
                ChatMessage::user("2+2?"),
                ChatMessage::assistant("4")
            ]
        );
    }

    #[test]
    fn truncation_cuts_context_on_the_left_first() {
        let mut ex = Example {
            tokens: (0..10).collect(),
            is_target: [vec![false; 6], vec![true; 4]].concat(),
            prompt_ids: vec![],
            prompt: String::new(),
            response: String::new(),
            line: 1,
        };
        let mut st = DataStats::default();
        truncate(&mut ex, 7, &mut st);
        assert_eq!(ex.tokens, vec![3, 4, 5, 6, 7, 8, 9]);
        assert_eq!(st.context_truncated, 1);
        assert_eq!(st.targets_truncated, 0);
        // Too long even with one context token left: cut the targets on the right.
        truncate(&mut ex, 3, &mut st);
        assert_eq!(ex.tokens, vec![5, 6, 7]);
        assert_eq!(ex.is_target, vec![false, true, true]);
        assert_eq!(st.targets_truncated, 1);
    }
}
