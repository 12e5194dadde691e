//! Integrity check of a checkpoint's data files against its metadata:
//! every file present, of the recorded length and SHA-256. Run before any
//! tensor is loaded, so a damaged checkpoint fails with the file's name
//! instead of resuming from garbage.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::digest::sha256_hex;
use crate::error::{Error, Result};
use crate::metadata::{CheckpointMetadata, FileRecord, METADATA_FILE};
use crate::safetensors_io::map_file;

/// Maps and checks every file `meta` lists in `dir`; returns the mappings
/// by file name for the loader to reuse. Files are hashed in parallel
/// (a multi-GB checkpoint is otherwise bound by one core's SHA-256 speed).
pub(crate) fn verify_files(dir: &Path, meta: &CheckpointMetadata) -> Result<HashMap<String, Mmap>> {
    verify_selected(dir, meta, &|_| true)
}

/// Checks that every file `meta` lists is present with its recorded length
/// (cheap: a missing or truncated shard is reported whoever needs it), then
/// maps and hashes the files `read` selects (by name) and returns those
/// mappings. A rank of a sharded load reads only the files its tensors are in.
pub(crate) fn verify_selected(
    dir: &Path,
    meta: &CheckpointMetadata,
    read: &dyn Fn(&str) -> bool,
) -> Result<HashMap<String, Mmap>> {
    check_index(dir, meta)?;
    for record in &meta.files {
        check_length(dir, record)?;
    }
    let selected: Vec<&FileRecord> = meta.files.iter().filter(|f| read(&f.name)).collect();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let per_thread = selected.len().div_ceil(threads).max(1);
    let results: Vec<Result<Vec<(String, Mmap)>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = selected
            .chunks(per_thread)
            .map(|chunk| scope.spawn(move || chunk.iter().map(|f| verify_one(dir, f)).collect()))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("hashing thread does not panic"))
            .collect()
    });
    let mut mapped = HashMap::with_capacity(selected.len());
    for chunk in results {
        mapped.extend(chunk?);
    }
    Ok(mapped)
}

/// The file exists and has its recorded length.
fn check_length(dir: &Path, record: &FileRecord) -> Result<()> {
    let path: PathBuf = dir.join(&record.name);
    let got = match std::fs::metadata(&path) {
        Ok(m) if m.is_file() => m.len(),
        _ => return Err(Error::MissingFile { path }),
    };
    if got != record.bytes {
        return Err(Error::FileSizeMismatch {
            path,
            expected: record.bytes,
            got,
        });
    }
    Ok(())
}

/// File names are plain names, and every tensor's file is listed.
fn check_index(dir: &Path, meta: &CheckpointMetadata) -> Result<()> {
    let meta_path = dir.join(METADATA_FILE);
    for file in &meta.files {
        let plain = Path::new(&file.name)
            .file_name()
            .map(|n| n == file.name.as_str());
        if plain != Some(true) || file.name == METADATA_FILE {
            return Err(Error::InvalidFileName {
                path: meta_path,
                name: file.name.clone(),
            });
        }
    }
    for t in &meta.tensors {
        if !meta.files.iter().any(|f| f.name == t.file) {
            return Err(Error::UnlistedFile {
                path: meta_path,
                tensor: t.name.clone(),
                file: t.file.clone(),
            });
        }
    }
    Ok(())
}

fn verify_one(dir: &Path, record: &FileRecord) -> Result<(String, Mmap)> {
    let path: PathBuf = dir.join(&record.name);
    if !path.is_file() {
        return Err(Error::MissingFile { path });
    }
    let map = map_file(&path)?;
    let got = map.len() as u64;
    if got != record.bytes {
        return Err(Error::FileSizeMismatch {
            path,
            expected: record.bytes,
            got,
        });
    }
    let sha = sha256_hex(&map);
    if !sha.eq_ignore_ascii_case(&record.sha256) {
        return Err(Error::ChecksumMismatch {
            path,
            expected: record.sha256.clone(),
            got: sha,
        });
    }
    Ok((record.name.clone(), map))
}
