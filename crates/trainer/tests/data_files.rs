//! Data files through the real Qwen3 tokenizer: rendering, target masking
//! (assistant turns + `<|im_end|>` only), and errors that name file and line.

use std::path::Path;

use tokenizer_bridge::{ChatMessage, Qwen3Tokenizer};
use trainer::{inputs_and_labels, load_data, BadLinePolicy, DataOptions, Error, IGNORE_INDEX};

fn tok() -> Qwen3Tokenizer {
    Qwen3Tokenizer::bundled().unwrap()
}

fn opts(bad_lines: BadLinePolicy) -> DataOptions {
    DataOptions {
        seq_len: 256,
        bad_lines,
        system_prompt: None,
    }
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn tsv_targets_are_the_response_and_im_end_and_the_prompt_is_masked() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        dir.path(),
        "d.tsv",
        "# comment\n\nWhat is your name?\tMy name is Pico.\n",
    );
    let tok = tok();
    let data = load_data(&p, &tok, &opts(BadLinePolicy::Fail)).unwrap();
    assert_eq!(data.examples.len(), 1);
    let ex = &data.examples[0];
    assert_eq!(ex.line, 3);
    let prompt = tok
        .apply_chat_template(&[ChatMessage::user("What is your name?")], true)
        .unwrap();
    let prompt_ids = tok.encode(&prompt, false).unwrap();
    let mut answer = tok.encode("My name is Pico.", false).unwrap();
    answer.push(tok.im_end_id());
    assert_eq!(
        ex.prompt_ids, prompt_ids,
        "the prompt is tokenized as at generation time"
    );
    assert_eq!(ex.tokens, [prompt_ids.clone(), answer.clone()].concat());
    let targets: Vec<u32> = ex
        .tokens
        .iter()
        .zip(&ex.is_target)
        .filter(|(_, t)| **t)
        .map(|(x, _)| *x)
        .collect();
    assert_eq!(targets, answer);
    assert_eq!(
        *targets.last().unwrap(),
        151645,
        "the last target is <|im_end|>"
    );
    // Labels: -100 for every prompt position, then the answer (shifted by one).
    let (inputs, labels) = inputs_and_labels(ex);
    assert_eq!(inputs.len(), ex.tokens.len() - 1);
    let n_prompt = prompt_ids.len();
    assert!(labels[..n_prompt - 1].iter().all(|&l| l == IGNORE_INDEX));
    assert_eq!(
        labels[n_prompt - 1..]
            .iter()
            .map(|&l| l as u32)
            .collect::<Vec<_>>(),
        answer
    );
    assert_eq!(
        tok.decode(&targets, false).unwrap(),
        "My name is Pico.<|im_end|>"
    );
}

#[test]
fn jsonl_multi_turn_trains_every_assistant_turn_only() {
    let dir = tempfile::tempdir().unwrap();
    let line = r#"{"messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Hi"},{"role":"assistant","content":"Hello!"},{"role":"user","content":"Name?"},{"role":"assistant","content":"Pico."}]}"#;
    let p = write(dir.path(), "c.jsonl", &format!("\n{line}\n"));
    let tok = tok();
    let data = load_data(&p, &tok, &opts(BadLinePolicy::Fail)).unwrap();
    let ex = &data.examples[0];
    assert_eq!(ex.line, 2);
    let targets: Vec<u32> = ex
        .tokens
        .iter()
        .zip(&ex.is_target)
        .filter(|(_, t)| **t)
        .map(|(x, _)| *x)
        .collect();
    assert_eq!(
        tok.decode(&targets, false).unwrap(),
        "Hello!<|im_end|>Pico.<|im_end|>"
    );
    // The whole sequence is the template's rendering of the conversation.
    let msgs = vec![
        ChatMessage::system("Be brief."),
        ChatMessage::user("Hi"),
        ChatMessage::assistant("Hello!"),
        ChatMessage::user("Name?"),
        ChatMessage::assistant("Pico."),
    ];
    let full = tok.apply_chat_template(&msgs, false).unwrap();
    let text = tok.decode(&ex.tokens, false).unwrap();
    assert!(
        full.starts_with(&text),
        "rendered:\n{full}\ntokenized:\n{text}"
    );
    assert_eq!(ex.response, "Pico.");
}

#[test]
fn a_bad_tsv_line_is_reported_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        dir.path(),
        "bad.tsv",
        "# header\nq1\ta1\nno tab on this line\nq3\ta3\n",
    );
    let e = load_data(&p, &tok(), &opts(BadLinePolicy::Fail)).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, Error::BadLine { line: 3, .. }), "{msg}");
    assert!(msg.contains("bad.tsv:3:") && msg.contains("TAB"), "{msg}");
}

#[test]
fn skip_policy_counts_bad_lines_and_keeps_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "bad.jsonl", "{\"messages\":[{\"role\":\"user\",\"content\":\"a\"},{\"role\":\"assistant\",\"content\":\"b\"}]}\n{not json\n{\"messages\":[{\"role\":\"user\",\"content\":\"a\"}]}\n");
    let data = load_data(&p, &tok(), &opts(BadLinePolicy::Skip)).unwrap();
    assert_eq!(data.examples.len(), 1);
    assert_eq!(data.stats.skipped, 2);
    let e = load_data(&p, &tok(), &opts(BadLinePolicy::Fail))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("bad.jsonl:2:") && e.contains("invalid JSON"),
        "{e}"
    );
}

#[test]
fn empty_missing_and_unknown_files_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "empty.tsv", "# only a comment\n\n");
    let e = load_data(&p, &tok(), &opts(BadLinePolicy::Fail))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("empty.tsv") && e.contains("no usable training example"),
        "{e}"
    );
    let e = load_data(
        &dir.path().join("missing.tsv"),
        &tok(),
        &opts(BadLinePolicy::Fail),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("missing.tsv"), "{e}");
    let p = write(dir.path(), "data.csv", "a,b\n");
    let e = load_data(&p, &tok(), &opts(BadLinePolicy::Fail))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("data.csv") && e.contains("unknown data format"),
        "{e}"
    );
}

#[test]
fn invalid_utf8_names_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("latin1.tsv");
    std::fs::write(&p, b"q1\ta1\nq2\tcaf\xe9\n").unwrap();
    let e = load_data(&p, &tok(), &opts(BadLinePolicy::Skip))
        .unwrap_err()
        .to_string();
    assert!(e.contains("latin1.tsv:2:") && e.contains("UTF-8"), "{e}");
}

#[test]
fn long_examples_lose_prompt_tokens_first() {
    let dir = tempfile::tempdir().unwrap();
    let long_prompt = "word ".repeat(200);
    let p = write(
        dir.path(),
        "long.tsv",
        &format!("{long_prompt}\tShort answer.\n"),
    );
    let tok = tok();
    let o = DataOptions {
        seq_len: 32,
        bad_lines: BadLinePolicy::Fail,
        system_prompt: None,
    };
    let data = load_data(&p, &tok, &o).unwrap();
    let ex = &data.examples[0];
    assert_eq!(ex.tokens.len(), 32);
    assert_eq!(data.stats.context_truncated, 1);
    assert_eq!(data.stats.targets_truncated, 0);
    assert_eq!(
        *ex.tokens.last().unwrap(),
        tok.im_end_id(),
        "the answer and <|im_end|> survive"
    );
}

#[test]
fn the_shipped_default_data_parses_without_a_bad_line() {
    let tok = tok();
    let data = trainer::load_tsv_str(
        "default_train.tsv",
        trainer::DEFAULT_TRAIN_TSV,
        &tok,
        &opts(BadLinePolicy::Fail),
    )
    .unwrap();
    assert!(
        data.examples.len() >= 200,
        "a few hundred pairs, got {}",
        data.examples.len()
    );
    assert_eq!(
        data.stats.context_truncated + data.stats.targets_truncated,
        0
    );
    let longest = data.examples.iter().map(|e| e.tokens.len()).max().unwrap();
    let cfg = trainer::default_train_config(Path::new("unused"));
    assert!(
        longest <= cfg.seq_len,
        "longest example {longest} tokens > default seq-len {}",
        cfg.seq_len
    );
}

#[test]
fn jsonl_prompt_response_with_a_byte_order_mark_loads_like_the_chat_form() {
    let dir = tempfile::tempdir().unwrap();
    let pairs = write(
        dir.path(),
        "pairs.jsonl",
        "\u{feff}{\"prompt\": \"What is 2+3?\", \"response\": \"5\", \"response_raw\": \"2+3=<<5>>5\"}\n",
    );
    let chat = write(
        dir.path(),
        "chat.jsonl",
        "{\"messages\": [{\"role\": \"user\", \"content\": \"What is 2+3?\"}, {\"role\": \"assistant\", \"content\": \"5\"}]}\n",
    );
    let tok = tok();
    let a = load_data(&pairs, &tok, &opts(BadLinePolicy::Fail)).unwrap();
    let b = load_data(&chat, &tok, &opts(BadLinePolicy::Fail)).unwrap();
    assert_eq!(a.examples.len(), 1);
    assert_eq!(a.examples[0].tokens, b.examples[0].tokens);
    assert_eq!(a.examples[0].is_target, b.examples[0].is_target);
    assert_eq!(a.examples[0].response, "5");
}

#[test]
fn a_byte_order_mark_inside_a_file_is_named_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        dir.path(),
        "d.jsonl",
        "{\"prompt\": \"a\", \"response\": \"b\"}\n\u{feff}{\"prompt\": \"c\", \"response\": \"d\"}\n",
    );
    let e = load_data(&p, &tok(), &opts(BadLinePolicy::Fail))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("d.jsonl:2:") && e.contains("invalid JSON"),
        "{e}"
    );
}
