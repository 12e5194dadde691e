//! The checkpoint's metadata file: format version, training state, the
//! index of every tensor (name, dtype, shape, file) and the length and
//! SHA-256 of every data file. Written last, so its presence marks a
//! complete checkpoint.

use std::fs::{self, File};
use std::io::Write;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::error::{Error, IoContext, Result};
use crate::state::TrainingState;

/// Name of the metadata file inside a checkpoint directory.
pub const METADATA_FILE: &str = "checkpoint.json";
/// The `format` field: marks the file as one of ours.
pub const FORMAT_NAME: &str = "qwen3-nvfp4-checkpoint";
/// The `format_version` this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// Everything in `checkpoint.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckpointMetadata {
    /// Always [`FORMAT_NAME`].
    pub format: String,
    /// Always [`FORMAT_VERSION`] for files this build writes.
    pub format_version: u32,
    /// Seconds since the Unix epoch when the checkpoint was written.
    pub created_unix_s: u64,
    /// The training state passed to the save.
    pub state: TrainingState,
    /// Every tensor, in the order the save received them.
    pub tensors: Vec<TensorRecord>,
    /// Every data file of the checkpoint.
    pub files: Vec<FileRecord>,
}

/// One tensor of a checkpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorRecord {
    /// The name the trainer gave it (e.g. `optim.m.<param>`).
    pub name: String,
    /// Its safetensors dtype name (`F32`, `BF16`, `I8`, ...).
    pub dtype: String,
    /// Its shape.
    pub shape: Vec<usize>,
    /// The data file (in the same directory) that holds it.
    pub file: String,
}

/// One data file of a checkpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    /// File name inside the checkpoint directory.
    pub name: String,
    /// Its length in bytes.
    pub bytes: u64,
    /// Hex SHA-256 of its content.
    pub sha256: String,
}

impl CheckpointMetadata {
    /// Reads and checks `<dir>/checkpoint.json`: present, valid JSON, our
    /// format name and a version this build reads. Data files are not
    /// touched (see [`crate::CheckpointManager::verify`]).
    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join(METADATA_FILE);
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::MetadataMissing { path })
            }
            Err(e) => return Err(e).io_ctx("read", &path),
        };
        let parse_err = |source| Error::MetadataParse {
            path: path.clone(),
            source,
        };
        // Format and version first, so a newer layout is reported as such
        // rather than as a confusing missing-field error.
        let value: serde_json::Value = serde_json::from_str(&text).map_err(parse_err)?;
        let format = value.get("format").and_then(|v| v.as_str()).unwrap_or("");
        if format != FORMAT_NAME {
            return Err(Error::WrongFormat {
                path,
                expected: FORMAT_NAME,
                got: format.to_string(),
            });
        }
        let version = value.get("format_version").and_then(|v| v.as_u64());
        if version != Some(u64::from(FORMAT_VERSION)) {
            return Err(Error::UnsupportedVersion {
                path,
                expected: FORMAT_VERSION,
                got: version.map_or(0, |v| u32::try_from(v).unwrap_or(u32::MAX)),
            });
        }
        serde_json::from_value(value).map_err(parse_err)
    }

    /// The metadata of a checkpoint of `state` made of `tensors` in `files`,
    /// stamped now.
    pub(crate) fn new(
        state: &TrainingState,
        tensors: Vec<TensorRecord>,
        files: Vec<FileRecord>,
    ) -> Self {
        CheckpointMetadata {
            format: FORMAT_NAME.to_string(),
            format_version: FORMAT_VERSION,
            created_unix_s: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            state: state.clone(),
            tensors,
            files,
        }
    }

    /// Writes `<dir>/checkpoint.json` and fsyncs it.
    pub(crate) fn write(&self, dir: &Path) -> Result<()> {
        write_json_synced(&dir.join(METADATA_FILE), self)
    }
}

/// Writes `value` as pretty JSON to a new file at `path` and fsyncs it (a
/// file inside a temp directory; the directory's rename publishes it).
pub(crate) fn write_json_synced(path: &Path, value: &impl Serialize) -> Result<()> {
    let text = serde_json::to_vec_pretty(value).expect("metadata serializes");
    let mut file = File::create(path).io_ctx("create", path)?;
    file.write_all(&text).io_ctx("write", path)?;
    file.sync_all().io_ctx("fsync", path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CheckpointMetadata {
        CheckpointMetadata {
            format: FORMAT_NAME.into(),
            format_version: FORMAT_VERSION,
            created_unix_s: 1,
            state: TrainingState {
                step: 7,
                ..Default::default()
            },
            tensors: vec![TensorRecord {
                name: "w".into(),
                dtype: "F32".into(),
                shape: vec![2, 3],
                file: "tensors-00000.safetensors".into(),
            }],
            files: vec![FileRecord {
                name: "tensors-00000.safetensors".into(),
                bytes: 100,
                sha256: "00".repeat(32),
            }],
        }
    }

    #[test]
    fn should_read_back_what_it_wrote() {
        let dir = tempfile::tempdir().unwrap();
        sample().write(dir.path()).unwrap();
        assert_eq!(CheckpointMetadata::read(dir.path()).unwrap(), sample());
    }

    #[test]
    fn should_report_missing_metadata_as_incomplete() {
        let dir = tempfile::tempdir().unwrap();
        let err = CheckpointMetadata::read(dir.path()).unwrap_err();
        assert!(matches!(err, Error::MetadataMissing { .. }), "{err}");
        assert!(err.to_string().contains("incomplete"), "{err}");
    }

    #[test]
    fn should_reject_a_newer_format_version_with_both_versions() {
        let dir = tempfile::tempdir().unwrap();
        let mut meta = sample();
        meta.format_version = FORMAT_VERSION + 1;
        meta.write(dir.path()).unwrap();
        let err = CheckpointMetadata::read(dir.path()).unwrap_err();
        match err {
            Error::UnsupportedVersion { expected, got, .. } => {
                assert_eq!((expected, got), (FORMAT_VERSION, FORMAT_VERSION + 1))
            }
            other => panic!("unexpected {other}"),
        }
    }

    #[test]
    fn should_reject_foreign_json_and_truncated_json() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(METADATA_FILE);
        fs::write(
            &path,
            br#"{"format": "something-else", "format_version": 1}"#,
        )
        .unwrap();
        let err = CheckpointMetadata::read(dir.path()).unwrap_err();
        assert!(matches!(err, Error::WrongFormat { .. }), "{err}");

        let full = serde_json::to_vec(&sample()).unwrap();
        fs::write(&path, &full[..full.len() / 2]).unwrap();
        let err = CheckpointMetadata::read(dir.path()).unwrap_err();
        assert!(matches!(err, Error::MetadataParse { .. }), "{err}");
        assert!(err.to_string().contains(METADATA_FILE), "{err}");
    }
}
