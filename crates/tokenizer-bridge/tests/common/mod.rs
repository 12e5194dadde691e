//! Shared by the integration tests: one bundled tokenizer per test binary, and the
//! fixtures written by scripts/gen_tokenizer_fixtures.py.

#![allow(dead_code)] // each test binary uses a different part

use std::path::PathBuf;
use std::sync::OnceLock;

use serde::Deserialize;
use tokenizer_bridge::{ChatMessage, Qwen3Tokenizer};

/// The bundled tokenizer, parsed once per test binary (~11 MB of JSON).
pub fn tok() -> &'static Qwen3Tokenizer {
    static TOK: OnceLock<Qwen3Tokenizer> = OnceLock::new();
    TOK.get_or_init(|| Qwen3Tokenizer::bundled().expect("bundled tokenizer loads"))
}

pub fn fixture_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("fixtures")
        .join(name)
}

/// Versions and checksum of the files the reference was produced from.
#[derive(Deserialize)]
pub struct Source {
    pub tokenizers_version: String,
    pub tokenizer_json_sha256: String,
}

#[derive(Deserialize)]
pub struct TextCase {
    pub name: String,
    pub text: String,
    pub ids: Vec<u32>,
    pub decoded: String,
    pub decoded_skip_special: String,
}

#[derive(Deserialize)]
pub struct TextFixture {
    pub source: Source,
    pub cases: Vec<TextCase>,
}

#[derive(Deserialize)]
pub struct ChatCase {
    pub name: String,
    pub messages: Vec<ChatMessage>,
    pub tools_json: Option<String>,
    pub add_generation_prompt: bool,
    pub rendered: String,
    pub ids: Vec<u32>,
}

#[derive(Deserialize)]
pub struct ChatFixture {
    pub source: Source,
    pub cases: Vec<ChatCase>,
}

fn load<T: for<'de> Deserialize<'de>>(name: &str) -> T {
    let path = fixture_path(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn text_fixture() -> TextFixture {
    load("reference_ids.json")
}

pub fn chat_fixture() -> ChatFixture {
    load("chat_templates.json")
}
