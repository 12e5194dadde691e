//! The one way from a path to a model's files: a `.dat` file, a directory
//! holding one `.dat`, or a Hugging Face safetensors directory; the config
//! is the one given, else `config.json` in the directory or beside the `.dat`.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// How the weights are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightFormat {
    /// An NVFP4 `.dat` file.
    Dat,
    /// A directory of `*.safetensors` shards (bf16/f16/f32), quantized on load.
    Safetensors,
}

/// The files of one model, found by [`ModelPaths::resolve`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelPaths {
    /// The storage format of `weights`.
    pub format: WeightFormat,
    /// The `.dat` file, or the safetensors directory.
    pub weights: PathBuf,
    /// `config.json`.
    pub config: PathBuf,
}

fn bad(path: &Path, reason: impl Into<String>) -> Error {
    Error::ModelPath {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

impl ModelPaths {
    /// Resolves `path` (a `.dat`, a directory with exactly one `.dat`, or a
    /// directory of `*.safetensors`) and the config (`config`, else
    /// `config.json` in the directory or beside the `.dat`).
    pub fn resolve(path: &Path, config: Option<&Path>) -> Result<Self> {
        let (format, weights) = if path.is_dir() {
            weights_in_dir(path)?
        } else if path.is_file() {
            if path.extension().is_none_or(|x| x != "dat") {
                return Err(bad(
                    path,
                    "not a .dat file; expected a .dat file, a directory holding one, or a safetensors model directory",
                ));
            }
            (WeightFormat::Dat, path.to_path_buf())
        } else {
            return Err(bad(
                path,
                "no such file or directory (expected a .dat file or a model directory)",
            ));
        };
        let config = match config {
            Some(c) if c.is_file() => c.to_path_buf(),
            Some(c) => return Err(bad(c, "config: no such file (expected a config.json)")),
            None => {
                let mut candidates = Vec::new();
                if path.is_dir() {
                    candidates.push(path.join("config.json"));
                }
                if let Some(parent) = weights.parent().filter(|_| format == WeightFormat::Dat) {
                    candidates.push(parent.join("config.json"));
                }
                candidates.into_iter().find(|p| p.is_file()).ok_or_else(|| {
                    bad(path, "no config.json in the directory or beside the .dat (give the config explicitly)")
                })?
            }
        };
        Ok(ModelPaths {
            format,
            weights,
            config,
        })
    }
}

/// The one `.dat` in `dir`, else the directory itself when it holds safetensors.
fn weights_in_dir(dir: &Path) -> Result<(WeightFormat, PathBuf)> {
    let files = |ext: &str| -> Result<Vec<PathBuf>> {
        let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|source| Error::Io {
                path: dir.to_path_buf(),
                source,
            })?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == ext))
            .collect();
        out.sort();
        Ok(out)
    };
    let mut dats = files("dat")?;
    match dats.len() {
        1 => return Ok((WeightFormat::Dat, dats.remove(0))),
        0 => {}
        _ => {
            return Err(bad(
                dir,
                format!("several .dat files {dats:?}; expected one (pass the file itself)"),
            ))
        }
    }
    if files("safetensors")?.is_empty() {
        return Err(bad(
            dir,
            "no .dat file and no *.safetensors files; expected one .dat or a safetensors model directory",
        ));
    }
    Ok((WeightFormat::Safetensors, dir.to_path_buf()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn dat_file_dat_dir_and_safetensors_dir_resolve() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        fs::write(d.join("config.json"), b"{}").unwrap();
        fs::write(d.join("model.dat"), b"").unwrap();
        let by_dir = ModelPaths::resolve(d, None).unwrap();
        assert_eq!(by_dir.format, WeightFormat::Dat);
        assert_eq!(by_dir.weights, d.join("model.dat"));
        assert_eq!(by_dir.config, d.join("config.json"));
        assert_eq!(
            ModelPaths::resolve(&d.join("model.dat"), None).unwrap(),
            by_dir
        );

        let hf = tempfile::tempdir().unwrap();
        fs::write(hf.path().join("model.safetensors"), b"").unwrap();
        fs::write(hf.path().join("config.json"), b"{}").unwrap();
        let st = ModelPaths::resolve(hf.path(), None).unwrap();
        assert_eq!(st.format, WeightFormat::Safetensors);
        assert_eq!(st.weights, hf.path());
    }

    #[test]
    fn errors_name_the_path_and_what_was_expected() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let err = ModelPaths::resolve(d, None).unwrap_err().to_string();
        assert!(
            err.contains(&d.display().to_string()) && err.contains("expected one .dat"),
            "{err}"
        );
        fs::write(d.join("a.dat"), b"").unwrap();
        let err = ModelPaths::resolve(d, None).unwrap_err().to_string();
        assert!(err.contains("no config.json"), "{err}");
        fs::write(d.join("b.dat"), b"").unwrap();
        let err = ModelPaths::resolve(d, None).unwrap_err().to_string();
        assert!(err.contains("several .dat files"), "{err}");
        let other = d.join("notes.txt");
        fs::write(&other, b"").unwrap();
        let err = ModelPaths::resolve(&other, None).unwrap_err().to_string();
        assert!(
            err.contains("notes.txt") && err.contains("not a .dat"),
            "{err}"
        );
        let missing = d.join("nope.json");
        let err = ModelPaths::resolve(&d.join("a.dat"), Some(&missing))
            .unwrap_err()
            .to_string();
        assert!(err.contains("nope.json"), "{err}");
    }
}
