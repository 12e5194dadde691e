//! Plain text for pretraining and held-out evaluation: a `.txt`, a
//! `.txt.gz`, or a directory of them (sorted by name), tokenized once as the
//! tokenizer does with no special tokens added, cached as a token file, and
//! cut into packed windows.
//!
//! Tokenization runs in parallel over pieces that end at a newline followed
//! by a non-space character: Qwen3's pre-tokenizer always ends a piece
//! there, so the ids equal those of the whole text in one call.
//!
//! Windows: window i holds tokens `i*L .. i*L + L + 1` (L = `seq_len`), so
//! consecutive windows share one token and every token but the first is
//! predicted exactly once; the last window may be shorter, and a text
//! shorter than one window is one window.

use std::io::Read;
use std::path::{Path, PathBuf};

use tokenizer_bridge::Qwen3Tokenizer;

use crate::data::{DataStats, Dataset, Example};
use crate::error::{Error, Result};

/// Bytes of text per tokenization piece (a piece ends at the next safe newline).
const PIECE_BYTES: usize = 1 << 16;
/// First bytes of a token cache file.
const MAGIC: &[u8; 8] = b"QTOKENS1";

/// True for the text formats this module reads.
pub fn is_text_path(path: &Path) -> bool {
    let name = path.to_string_lossy();
    path.is_dir() || name.ends_with(".txt") || name.ends_with(".txt.gz")
}

/// The files of `path` in order: itself, or a directory's `.txt`/`.txt.gz` files by name.
fn text_files(path: &Path) -> Result<Vec<PathBuf>> {
    if !path.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(path).map_err(|e| Error::io(path, e))? {
        let p = entry.map_err(|e| Error::io(path, e))?.path();
        if p.is_file() && is_text_path(&p) {
            files.push(p);
        }
    }
    files.sort();
    if files.is_empty() {
        return Err(Error::EmptyDataset {
            path: path.to_path_buf(),
            skipped: 0,
        });
    }
    Ok(files)
}

/// The text of one `.txt` or `.txt.gz` file.
pub fn read_text(path: &Path) -> Result<String> {
    let raw = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let bytes = if path.to_string_lossy().ends_with(".gz") {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(raw.as_slice())
            .read_to_end(&mut out)
            .map_err(|e| Error::io(path, e))?;
        out
    } else {
        raw
    };
    String::from_utf8(bytes).map_err(|e| {
        let offset = e.utf8_error().valid_up_to();
        Error::BadLine {
            path: path.to_path_buf(),
            line: e.as_bytes()[..offset]
                .iter()
                .filter(|&&b| b == b'\n')
                .count()
                + 1,
            reason: format!("not valid UTF-8 at byte {offset}"),
        }
    })
}

/// Splits `text` into pieces of about [`PIECE_BYTES`] that end after a
/// newline followed by a non-space character (see the module doc).
fn pieces(text: &str) -> Vec<&str> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = PIECE_BYTES;
    while i < bytes.len() {
        if bytes[i - 1] == b'\n' && !bytes[i].is_ascii_whitespace() && bytes[i].is_ascii() {
            out.push(&text[start..i]);
            start = i;
            i += PIECE_BYTES;
        } else {
            i += 1;
        }
    }
    out.push(&text[start..]);
    out
}

/// Token ids of `text` (no special tokens), equal to one `encode` of the whole text.
pub fn tokenize_text(tok: &Qwen3Tokenizer, text: &str) -> Result<Vec<u32>> {
    let encodings = tok
        .inner()
        .encode_batch(pieces(text), false)
        .map_err(|e| Error::Tokenize(e.to_string()))?;
    Ok(encodings
        .iter()
        .flat_map(|e| e.get_ids().iter().copied())
        .collect())
}

/// Token ids of the text at `path` (a file or a directory, see the module
/// doc). With `cache`, ids are read from `<cache>/<name>.tokens` when that
/// file was made from the same source (size and modification time), and
/// written there (atomically) otherwise.
pub fn load_text_tokens(
    path: &Path,
    tok: &Qwen3Tokenizer,
    cache: Option<&Path>,
) -> Result<Vec<u32>> {
    let files = text_files(path)?;
    let mut stamp = Vec::new();
    for f in &files {
        let meta = std::fs::metadata(f).map_err(|e| Error::io(f, e))?;
        let mtime = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos() as u64);
        stamp.extend_from_slice(f.to_string_lossy().as_bytes());
        stamp.extend_from_slice(&meta.len().to_le_bytes());
        stamp.extend_from_slice(&mtime.to_le_bytes());
    }
    stamp.extend_from_slice(&(tok.vocab_size() as u64).to_le_bytes());
    let key = stamp.iter().fold(0xCBF2_9CE4_8422_2325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01B3)
    });
    let cache_file = cache.map(|dir| {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        dir.join(format!("{name}.tokens"))
    });
    if let Some(cf) = &cache_file {
        if let Some(ids) = read_token_file(cf, key)? {
            return Ok(ids);
        }
    }
    let mut ids = Vec::new();
    for f in &files {
        ids.extend(tokenize_text(tok, &read_text(f)?)?);
    }
    if ids.is_empty() {
        return Err(Error::EmptyDataset {
            path: path.to_path_buf(),
            skipped: 0,
        });
    }
    if let Some(cf) = &cache_file {
        if let Some(dir) = cf.parent() {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        let mut bytes = Vec::with_capacity(24 + 4 * ids.len());
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&key.to_le_bytes());
        bytes.extend_from_slice(&(ids.len() as u64).to_le_bytes());
        for id in &ids {
            bytes.extend_from_slice(&id.to_le_bytes());
        }
        crate::fsutil::write_atomic(cf, &bytes)?;
    }
    Ok(ids)
}

/// The ids of a token file made with source stamp `key`; `None` when the
/// file is absent or was made from another source. A damaged file is an error.
fn read_token_file(path: &Path, key: u64) -> Result<Option<Vec<u32>>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(path, e)),
    };
    let bad = |reason: &str| Error::BadLine {
        path: path.to_path_buf(),
        line: 1,
        reason: format!("token cache {reason}; delete the file to rebuild it"),
    };
    if bytes.len() < 24 || &bytes[..8] != MAGIC {
        return Err(bad("has no QTOKENS1 header"));
    }
    let word = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap_or_default());
    if word(8) != key {
        return Ok(None);
    }
    let n = word(16) as usize;
    if bytes.len() != 24 + 4 * n {
        return Err(bad(&format!(
            "is truncated ({} bytes for {n} tokens)",
            bytes.len()
        )));
    }
    Ok(Some(
        bytes[24..]
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
    ))
}

/// Packed windows of `seq_len` predictions over `ids` (see the module doc),
/// every token a target; `name` stands for the source in messages.
pub fn text_windows(name: &Path, ids: &[u32], seq_len: usize) -> Result<Dataset> {
    if seq_len < 1 {
        return Err(Error::config("seq-len", "at least 1", seq_len));
    }
    if ids.len() < 2 {
        return Err(Error::EmptyDataset {
            path: name.to_path_buf(),
            skipped: 0,
        });
    }
    let examples: Vec<Example> = (0..ids.len() - 1)
        .step_by(seq_len)
        .enumerate()
        .map(|(i, start)| {
            let tokens = ids[start..(start + seq_len + 1).min(ids.len())].to_vec();
            Example {
                is_target: (0..tokens.len()).map(|t| t > 0).collect(),
                tokens,
                prompt_ids: Vec::new(),
                prompt: String::new(),
                response: String::new(),
                line: i + 1,
            }
        })
        .collect();
    let stats = DataStats {
        examples: examples.len(),
        target_tokens: ids.len() - 1,
        ..Default::default()
    };
    Ok(Dataset {
        path: name.to_path_buf(),
        examples,
        stats,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_predict_every_token_but_the_first_once() {
        let ids: Vec<u32> = (0..10).collect();
        let d = text_windows(Path::new("t"), &ids, 4).unwrap();
        let spans: Vec<Vec<u32>> = d.examples.iter().map(|e| e.tokens.clone()).collect();
        assert_eq!(
            spans,
            vec![vec![0, 1, 2, 3, 4], vec![4, 5, 6, 7, 8], vec![8, 9]]
        );
        assert_eq!(d.stats.target_tokens, 9);
        let short = text_windows(Path::new("t"), &ids[..3], 100).unwrap();
        assert_eq!(short.examples.len(), 1, "a short text is one window");
    }

    #[test]
    fn pieces_end_at_a_newline_before_text_and_rejoin() {
        let text = "ab\n cd\n\nef\n".repeat(PIECE_BYTES / 4);
        let p = pieces(&text);
        assert!(p.len() > 1);
        assert_eq!(p.concat(), text);
        for (a, b) in p.iter().zip(&p[1..]) {
            assert!(a.ends_with('\n') && !b.starts_with(char::is_whitespace));
        }
    }

    #[test]
    fn parallel_tokenization_equals_one_encode_of_the_whole_text() {
        let tok = Qwen3Tokenizer::bundled().unwrap();
        let para = "It was the best of times,  it was the worst of times.\n\n  Indented line.\nNext: 12345 \u{e9}t\u{e9}!\n";
        let text = para.repeat(3 * PIECE_BYTES / para.len());
        assert!(pieces(&text).len() >= 3);
        assert_eq!(
            tokenize_text(&tok, &text).unwrap(),
            tok.encode(&text, false).unwrap()
        );
    }
}
