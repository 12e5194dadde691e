//! File access with errors that name the path: plain or gzip reads, JSON parsing,
//! atomic writes.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use flate2::read::GzDecoder;

use crate::error::{Error, Result};

/// The bytes of one input file, with the path kept for error messages.
pub(crate) struct SourceFile {
    pub path: PathBuf,
    pub bytes: Vec<u8>,
}

impl SourceFile {
    /// Reads `path`, gunzipping it when its name ends in `.gz`.
    pub fn read(path: &Path) -> Result<Self> {
        let raw = fs::read(path).map_err(|e| Error::io("read", path, e))?;
        let bytes = if path.extension().is_some_and(|ext| ext == "gz") {
            gunzip(path, &raw)?
        } else {
            raw
        };
        Ok(Self {
            path: path.to_path_buf(),
            bytes,
        })
    }

    /// Reads `path` if it exists; `Ok(None)` if it does not.
    pub fn read_optional(path: &Path) -> Result<Option<Self>> {
        match path.try_exists() {
            Ok(true) => Self::read(path).map(Some),
            Ok(false) => Ok(None),
            Err(e) => Err(Error::io("read", path, e)),
        }
    }

    /// Parses the bytes as JSON.
    pub fn json(&self) -> Result<serde_json::Value> {
        serde_json::from_slice(&self.bytes).map_err(|source| Error::Json {
            path: self.path.clone(),
            source,
        })
    }

    /// The bytes as UTF-8 text.
    pub fn text(&self) -> Result<&str> {
        std::str::from_utf8(&self.bytes).map_err(|e| {
            let msg = format!("not UTF-8 text: {e}");
            Error::io(
                "read",
                &self.path,
                std::io::Error::new(std::io::ErrorKind::InvalidData, msg),
            )
        })
    }
}

/// Decompresses gzip data; `path` only names the source in errors.
pub(crate) fn gunzip(path: &Path, compressed: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(compressed.len() * 6);
    GzDecoder::new(compressed)
        .read_to_end(&mut out)
        .map_err(|source| Error::Gzip {
            path: path.to_path_buf(),
            source,
        })?;
    Ok(out)
}

/// Writes `bytes` to `path` atomically: a temp file in the same directory, fsync, rename.
/// A reader sees either the old file or the complete new one, never a torn write.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = fs::File::create(&tmp).map_err(|e| Error::io("write", &tmp, e))?;
        f.write_all(bytes)
            .map_err(|e| Error::io("write", &tmp, e))?;
        f.sync_all().map_err(|e| Error::io("write", &tmp, e))?;
        fs::rename(&tmp, path).map_err(|e| Error::io("rename to", path, e))
    })();
    if result.is_err() {
        // Best effort: a failed write must not leave a stray temp file behind.
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gz_files_are_decompressed_and_plain_files_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let payload = "{\"a\": [1, 2, \"ü\"]}".as_bytes();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(payload).unwrap();
        let gz_path = dir.path().join("x.json.gz");
        fs::write(&gz_path, gz.finish().unwrap()).unwrap();
        let plain_path = dir.path().join("x.json");
        fs::write(&plain_path, payload).unwrap();

        assert_eq!(SourceFile::read(&gz_path).unwrap().bytes, payload);
        assert_eq!(SourceFile::read(&plain_path).unwrap().bytes, payload);
        assert_eq!(
            SourceFile::read(&gz_path).unwrap().json().unwrap()["a"][2],
            "ü"
        );
    }

    #[test]
    fn bad_gzip_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokenizer.json.gz");
        fs::write(&path, b"not gzip at all").unwrap();
        let err = SourceFile::read(&path).err().unwrap();
        assert!(matches!(err, Error::Gzip { .. }), "{err}");
        assert!(err.to_string().contains("tokenizer.json.gz"), "{err}");
    }

    #[test]
    fn missing_optional_file_is_none_but_missing_required_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent.json");
        assert!(SourceFile::read_optional(&path).unwrap().is_none());
        let err = SourceFile::read(&path).err().unwrap();
        assert!(err.to_string().contains("absent.json"), "{err}");
    }

    #[test]
    fn write_atomic_replaces_content_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.json");
        write_atomic(&path, b"first").unwrap();
        write_atomic(&path, b"second").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"second");
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("out.json")]);
    }

    #[test]
    fn write_atomic_into_missing_dir_names_the_temp_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("no_such_dir").join("f.json");
        let err = write_atomic(&path, b"x").err().unwrap();
        assert!(err.to_string().contains("no_such_dir"), "{err}");
    }
}
