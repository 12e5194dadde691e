//! The Qwen3 tokenizer and Qwen3-4B-Instruct-2507 configs kept in this crate
//! (`assets/qwen3`), embedded in the binary so a clone works without `../shared`.
//! `tokenizer.json` is stored gzip-compressed (11 MB -> 2 MB); see assets/qwen3/README.md.

use std::path::{Path, PathBuf};

use crate::error::Result;
use crate::files::{gunzip, write_atomic};

const TOKENIZER_JSON_GZ: &[u8] = include_bytes!("../assets/qwen3/tokenizer.json.gz");

/// `tokenizer_config.json` of Qwen3-4B-Instruct-2507 (special tokens, chat template).
pub const BUNDLED_TOKENIZER_CONFIG_JSON: &str =
    include_str!("../assets/qwen3/tokenizer_config.json");
/// `config.json` of Qwen3-4B-Instruct-2507 (model shapes, rope_theta 5e6).
pub const BUNDLED_CONFIG_JSON: &str = include_str!("../assets/qwen3/config.json");
/// `generation_config.json` of Qwen3-4B-Instruct-2507 (eos ids, default sampling).
pub const BUNDLED_GENERATION_CONFIG_JSON: &str =
    include_str!("../assets/qwen3/generation_config.json");

/// The crate's `assets/qwen3` folder in the source tree (holds `tokenizer.json.gz`,
/// which [`Qwen3Tokenizer::from_dir`](crate::Qwen3Tokenizer::from_dir) reads). It exists
/// in a checkout of this repository, not necessarily beside an installed binary; use
/// [`write_bundled_assets`] to materialise the files anywhere.
pub fn bundled_asset_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("assets")
        .join("qwen3")
}

/// The uncompressed bytes of the bundled `tokenizer.json`.
pub fn bundled_tokenizer_json() -> Result<Vec<u8>> {
    tokenizer_json_bytes()
}

pub(crate) fn tokenizer_json_bytes() -> Result<Vec<u8>> {
    gunzip(
        &bundled_asset_dir().join("tokenizer.json.gz"),
        TOKENIZER_JSON_GZ,
    )
}

/// Writes `tokenizer.json` (uncompressed), `tokenizer_config.json`, `config.json` and
/// `generation_config.json` into `dir` (which must exist), each atomically. Files that
/// already exist are left alone, so a model's own config is never overwritten.
/// Returns the paths written.
pub fn write_bundled_assets(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    let small = [
        ("tokenizer_config.json", BUNDLED_TOKENIZER_CONFIG_JSON),
        ("config.json", BUNDLED_CONFIG_JSON),
        ("generation_config.json", BUNDLED_GENERATION_CONFIG_JSON),
    ];
    for (name, text) in small {
        let path = dir.join(name);
        if !path.exists() {
            write_atomic(&path, text.as_bytes())?;
            written.push(path);
        }
    }
    let path = dir.join("tokenizer.json");
    if !path.exists() {
        write_atomic(&path, &tokenizer_json_bytes()?)?;
        written.push(path);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn asset_dir_holds_the_embedded_files() {
        let dir = bundled_asset_dir();
        assert_eq!(
            std::fs::read(dir.join("tokenizer.json.gz")).unwrap(),
            TOKENIZER_JSON_GZ
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("config.json")).unwrap(),
            BUNDLED_CONFIG_JSON
        );
    }

    #[test]
    fn bundled_configs_are_the_qwen3_4b_instruct_2507_ones() {
        let cfg: serde_json::Value = serde_json::from_str(BUNDLED_CONFIG_JSON).unwrap();
        assert_eq!(cfg["hidden_size"], 2560);
        assert_eq!(cfg["rope_theta"], 5_000_000);
        let gen: serde_json::Value = serde_json::from_str(BUNDLED_GENERATION_CONFIG_JSON).unwrap();
        assert_eq!(gen["eos_token_id"], serde_json::json!([151645, 151643]));
    }

    #[test]
    fn write_bundled_assets_keeps_existing_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), "{\"mine\": true}").unwrap();
        let written = write_bundled_assets(dir.path()).unwrap();
        let names: Vec<_> = written
            .iter()
            .map(|p| p.file_name().unwrap().to_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "tokenizer_config.json",
                "generation_config.json",
                "tokenizer.json"
            ]
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join("config.json")).unwrap(),
            "{\"mine\": true}"
        );
        let tokenizer = std::fs::read(dir.path().join("tokenizer.json")).unwrap();
        assert!(
            tokenizer.len() > 10_000_000 && tokenizer.starts_with(b"{"),
            "{} bytes",
            tokenizer.len()
        );
        assert!(write_bundled_assets(dir.path()).unwrap().is_empty());
    }
}
