//! Finding the files of a model from `--model-dir` and the per-file flags
//! (`--weight`, `--config`, `--tokenizer`); a flag always wins over the directory.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use tokenizer_bridge::Qwen3Tokenizer;

/// Where a tokenizer comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenizerSource {
    /// A `tokenizer.json` (with `tokenizer_config.json` beside it, if present).
    File(PathBuf),
    /// A model directory holding `tokenizer.json` (or `.json.gz`).
    Dir(PathBuf),
    /// None found: the copy bundled with the repository.
    Bundled,
}

/// The files one model run needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelFiles {
    /// The weights: a `.dat` file, or a safetensors model directory (bf16,
    /// compressed-tensors or ModelOpt NVFP4), as [`qwen3_model::ModelPaths`] finds them.
    pub weight: PathBuf,
    /// `config.json`.
    pub config: PathBuf,
    /// The tokenizer to use when text must be encoded.
    pub tokenizer: TokenizerSource,
}

impl ModelFiles {
    /// Resolves every file. The weight is `weight`, or the only `*.dat` in
    /// `model_dir`, else `model_dir` itself when it holds safetensors; the config is `config`, `model_dir/config.json` or the
    /// `config.json` beside the weight; the tokenizer is `tokenizer`, the model
    /// directory's, or the bundled one.
    pub fn resolve(
        model_dir: Option<&Path>,
        weight: Option<&Path>,
        config: Option<&Path>,
        tokenizer: Option<&Path>,
    ) -> Result<Self> {
        if let Some(dir) = model_dir {
            if !dir.is_dir() {
                bail!("--model-dir {}: not a directory", dir.display());
            }
        }
        let config_flag = config.map(|c| existing_file(c, "--config")).transpose()?;
        let weight = match (weight, model_dir) {
            (Some(w), _) => existing_file(w, "--weight")?,
            // The model library's one resolver: one `.dat`, or safetensors.
            (None, Some(dir)) => qwen3_model::ModelPaths::resolve(dir, config_flag.as_deref())
                .map(|p| p.weights)
                .map_err(|e| anyhow::anyhow!("{e} (hint: --weight FILE)"))?,
            (None, None) => {
                bail!("no weights: pass --model-dir DIR (holding one .dat) or --weight FILE")
            }
        };
        let config = match config_flag {
            Some(c) => c,
            None => {
                let beside = weight.parent().map(|p| p.join("config.json"));
                let candidates: Vec<PathBuf> = model_dir
                    .map(|d| d.join("config.json"))
                    .into_iter()
                    .chain(beside)
                    .collect();
                match candidates.iter().find(|p| p.is_file()) {
                    Some(found) => found.clone(),
                    None => bail!("no config.json in {candidates:?} (hint: --config FILE)"),
                }
            }
        };
        let tokenizer = match (tokenizer, model_dir) {
            (Some(t), _) => TokenizerSource::File(existing_file(t, "--tokenizer")?),
            (None, Some(dir)) if has_tokenizer(dir) => TokenizerSource::Dir(dir.to_path_buf()),
            _ => TokenizerSource::Bundled,
        };
        Ok(Self {
            weight,
            config,
            tokenizer,
        })
    }

    /// Loads the tokenizer named by [`ModelFiles::tokenizer`].
    pub fn load_tokenizer(&self) -> Result<Qwen3Tokenizer> {
        match &self.tokenizer {
            TokenizerSource::File(path) => {
                let cfg = path
                    .parent()
                    .map(|d| d.join("tokenizer_config.json"))
                    .filter(|p| p.is_file());
                Qwen3Tokenizer::from_files(path, cfg.as_deref())
                    .with_context(|| format!("--tokenizer {}", path.display()))
            }
            TokenizerSource::Dir(dir) => Qwen3Tokenizer::from_dir(dir)
                .with_context(|| format!("tokenizer in {}", dir.display())),
            TokenizerSource::Bundled => {
                tracing::info!("no tokenizer given or found beside the model: using the bundled Qwen3 tokenizer");
                Qwen3Tokenizer::bundled().context("bundled tokenizer")
            }
        }
    }
}

fn has_tokenizer(dir: &Path) -> bool {
    dir.join("tokenizer.json").is_file() || dir.join("tokenizer.json.gz").is_file()
}

fn existing_file(path: &Path, flag: &str) -> Result<PathBuf> {
    if !path.is_file() {
        bail!("{flag} {}: no such file", path.display());
    }
    Ok(path.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn directory_with_one_dat_and_config_resolves() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("model.dat"), b"").unwrap();
        fs::write(dir.path().join("config.json"), b"{}").unwrap();
        let files = ModelFiles::resolve(Some(dir.path()), None, None, None).unwrap();
        assert_eq!(files.weight, dir.path().join("model.dat"));
        assert_eq!(files.config, dir.path().join("config.json"));
        assert_eq!(files.tokenizer, TokenizerSource::Bundled);
        fs::write(dir.path().join("tokenizer.json"), b"{}").unwrap();
        let files = ModelFiles::resolve(Some(dir.path()), None, None, None).unwrap();
        assert_eq!(
            files.tokenizer,
            TokenizerSource::Dir(dir.path().to_path_buf())
        );
    }

    #[test]
    fn several_or_no_dat_files_are_errors_with_a_hint() {
        let dir = tempfile::tempdir().unwrap();
        let err = ModelFiles::resolve(Some(dir.path()), None, None, None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no .dat file") && err.contains("--weight"),
            "{err}"
        );
        fs::write(dir.path().join("a.dat"), b"").unwrap();
        fs::write(dir.path().join("b.dat"), b"").unwrap();
        let err = ModelFiles::resolve(Some(dir.path()), None, None, None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("several .dat files"), "{err}");
    }

    #[test]
    fn explicit_flags_win_and_missing_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let w = dir.path().join("w.dat");
        fs::write(&w, b"").unwrap();
        let err = ModelFiles::resolve(None, Some(&w), None, None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("config.json"), "{err}");
        let missing = dir.path().join("nope.json");
        let err = ModelFiles::resolve(None, Some(&w), Some(&missing), None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--config") && err.contains("nope.json"),
            "{err}"
        );
        fs::write(dir.path().join("config.json"), b"{}").unwrap();
        let files = ModelFiles::resolve(None, Some(&w), None, None).unwrap();
        assert_eq!(files.config, dir.path().join("config.json"));
    }
}
