//! Loading failures name the file at fault: missing files, corrupt JSON, no chat template.
//! Uses the real tokenizer written by write_bundled_assets where a valid one is needed.

use std::fs;
use std::path::Path;

use tokenizer_bridge::{write_bundled_assets, ChatMessage, Error, Qwen3Tokenizer};

fn model_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write_bundled_assets(dir.path()).unwrap();
    dir
}

fn assert_names(err: &Error, path: &Path) {
    let msg = err.to_string();
    assert!(
        msg.contains(&path.display().to_string()),
        "error does not name {}: {msg}",
        path.display()
    );
}

#[test]
fn written_assets_load_like_the_bundled_copy() {
    let dir = model_dir();
    let tok = Qwen3Tokenizer::from_dir(dir.path()).unwrap();
    assert_eq!(
        tok.encode("Hello! 👋", false).unwrap(),
        [9707, 0, 61804, 233]
    );
    assert_eq!(tok.stop_ids(), [151645, 151643]);
    assert!(tok
        .apply_chat_template(&[ChatMessage::user("x")], true)
        .is_ok());
    // The crate's own asset folder (tokenizer.json.gz) loads too.
    let from_assets = Qwen3Tokenizer::from_dir(&tokenizer_bridge::bundled_asset_dir()).unwrap();
    assert_eq!(
        from_assets.encode("日本語", false).unwrap(),
        tok.encode("日本語", false).unwrap()
    );
}

#[test]
fn missing_directory_names_tokenizer_json() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no_model");
    let err = Qwen3Tokenizer::from_dir(&missing).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err}");
    assert_names(&err, &missing.join("tokenizer.json"));
}

#[test]
fn missing_tokenizer_config_names_it() {
    let dir = model_dir();
    let cfg = dir.path().join("tokenizer_config.json");
    fs::remove_file(&cfg).unwrap();
    let err = Qwen3Tokenizer::from_dir(dir.path()).unwrap_err();
    assert_names(&err, &cfg);
}

#[test]
fn corrupt_tokenizer_json_names_the_file_and_the_position() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.json");
    fs::write(&path, "{\"version\": \"1.0\", \"model\": ").unwrap();
    let err = Qwen3Tokenizer::from_files(&path, None).unwrap_err();
    assert!(matches!(err, Error::TokenizerFile { .. }), "{err}");
    assert_names(&err, &path);
    assert!(err.to_string().contains("line 1"), "{err}");
}

#[test]
fn corrupt_tokenizer_config_names_the_file_and_the_line() {
    let dir = model_dir();
    let cfg = dir.path().join("tokenizer_config.json");
    fs::write(&cfg, "{\n  \"eos_token\": \"<|im_end|>\",\n  oops\n}").unwrap();
    let err = Qwen3Tokenizer::from_dir(dir.path()).unwrap_err();
    assert!(matches!(err, Error::Json { .. }), "{err}");
    assert_names(&err, &cfg);
    assert!(err.to_string().contains("line 3"), "{err}");
}

#[test]
fn corrupt_gzip_tokenizer_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.json.gz");
    fs::write(&path, b"\x1f\x8b\x08\x00garbage").unwrap();
    let err = Qwen3Tokenizer::from_dir(dir.path()).unwrap_err();
    assert!(matches!(err, Error::Gzip { .. }), "{err}");
    assert_names(&err, &path);
}

#[test]
fn config_without_chat_template_fails_at_render_naming_the_config() {
    let dir = model_dir();
    let cfg = dir.path().join("tokenizer_config.json");
    fs::write(&cfg, "{\"eos_token\": \"<|im_end|>\"}").unwrap();
    let tok = Qwen3Tokenizer::from_dir(dir.path()).unwrap();
    // Plain encoding still works without a template.
    assert_eq!(
        tok.encode("Hello! 👋", false).unwrap(),
        [9707, 0, 61804, 233]
    );
    let err = tok
        .apply_chat_template(&[ChatMessage::user("x")], true)
        .unwrap_err();
    assert!(matches!(err, Error::MissingChatTemplate { .. }), "{err}");
    assert_names(&err, &cfg);
    assert!(tok
        .render_training_pair(&[ChatMessage::user("q"), ChatMessage::assistant("a")])
        .is_err());
}

#[test]
fn tokenizer_without_config_explains_how_to_get_a_template() {
    let dir = model_dir();
    let path = dir.path().join("tokenizer.json");
    let tok = Qwen3Tokenizer::from_files(&path, None).unwrap();
    assert_eq!(tok.stop_ids(), [151645, 151643]);
    let err = tok
        .apply_chat_template(&[ChatMessage::user("x")], true)
        .unwrap_err();
    assert!(matches!(err, Error::NoTokenizerConfig { .. }), "{err}");
    assert_names(&err, &path);
}

#[test]
fn broken_template_is_reported_at_load_with_its_line() {
    let dir = model_dir();
    fs::write(
        dir.path().join("chat_template.jinja"),
        "line one\n{% for m in messages %}\n{{ m.content }",
    )
    .unwrap();
    let err = Qwen3Tokenizer::from_dir(dir.path()).unwrap_err();
    assert!(matches!(err, Error::Template { .. }), "{err}");
    assert_names(&err, &dir.path().join("chat_template.jinja"));
    assert!(err.to_string().contains("line 3"), "{err}");
}
