//! Every way saving or loading can fail, each with the path or
//! tensor name it concerns and a hint on what to do about it.

use std::path::PathBuf;

/// Errors of the checkpoint crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A filesystem operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done ("create", "rename", "fsync", ...).
        op: &'static str,
        /// The file or directory concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// `keep_last` must keep at least the checkpoint just written.
    #[error(
        "keep_last must be at least 1, got {got} (hint: pass 1 to keep only the newest checkpoint)"
    )]
    InvalidKeepLast {
        /// The value passed.
        got: usize,
    },

    /// Two tensors passed to one save share a name.
    #[error("tensor name {name:?} appears more than once in one checkpoint (hint: names must be unique, e.g. \"optim.m.<param>\")")]
    DuplicateTensorName {
        /// The repeated name.
        name: String,
    },

    /// A tensor name that safetensors cannot store.
    #[error("tensor name {name:?} is not allowed: {reason}")]
    InvalidTensorName {
        /// The rejected name.
        name: String,
        /// Why it is rejected.
        reason: &'static str,
    },

    /// A tensor of a kind the checkpoint format has no dtype for.
    #[error("tensor {name:?} has kind {kind}, which checkpoints cannot store (hint: convert complex/quantized tensors to a plain float or integer kind)")]
    UnsupportedKind {
        /// The tensor.
        name: String,
        /// Its tch kind, as text.
        kind: String,
    },

    /// A checkpoint directory without its metadata file.
    #[error("{path} is missing: the checkpoint is incomplete (hint: it was never finished or was damaged; resume from an older one)")]
    MetadataMissing {
        /// The expected metadata file.
        path: PathBuf,
    },

    /// A metadata file that is not valid JSON of the expected shape.
    #[error("{path}: metadata is not valid: {source} (hint: the file is truncated or was edited by hand)")]
    MetadataParse {
        /// The metadata file.
        path: PathBuf,
        /// The JSON error, with line and column.
        #[source]
        source: serde_json::Error,
    },

    /// A metadata file written by something else.
    #[error("{path}: format is {got:?}, expected {expected:?} (hint: this is not a checkpoint written by this crate)")]
    WrongFormat {
        /// The metadata file.
        path: PathBuf,
        /// The format name this crate writes.
        expected: &'static str,
        /// The format name found.
        got: String,
    },

    /// A metadata file of a format version this build cannot read.
    #[error("{path}: checkpoint format version {got}, this build reads version {expected} (hint: load it with the version of the trainer that wrote it)")]
    UnsupportedVersion {
        /// The metadata file.
        path: PathBuf,
        /// The version this build reads.
        expected: u32,
        /// The version found.
        got: u32,
    },

    /// A file listed in the metadata does not exist.
    #[error("{path} is listed in the checkpoint metadata but missing (hint: the checkpoint was damaged; resume from an older one)")]
    MissingFile {
        /// The missing file.
        path: PathBuf,
    },

    /// A file name in the metadata that is not a plain name inside the
    /// checkpoint directory (it could point elsewhere).
    #[error("{path}: file name {name:?} is not a plain file name (hint: the metadata was edited or corrupted)")]
    InvalidFileName {
        /// The metadata file.
        path: PathBuf,
        /// The offending name.
        name: String,
    },

    /// A tensor said to live in a file the metadata does not list.
    #[error("{path}: tensor {tensor:?} is said to be in {file:?}, which the file index does not list (hint: the metadata was edited or corrupted)")]
    UnlistedFile {
        /// The metadata file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// The file it names.
        file: String,
    },

    /// A file of the wrong length: usually a truncated copy.
    #[error("{path} has {got} bytes, metadata says {expected} (hint: the file is truncated or was replaced; resume from an older checkpoint)")]
    FileSizeMismatch {
        /// The file.
        path: PathBuf,
        /// Its recorded length.
        expected: u64,
        /// Its length on disk.
        got: u64,
    },

    /// A file whose content does not match its recorded checksum.
    #[error("{path}: sha256 {got} does not match {expected} recorded at save (hint: the file is corrupt; resume from an older checkpoint)")]
    ChecksumMismatch {
        /// The file.
        path: PathBuf,
        /// The recorded sha256 (hex).
        expected: String,
        /// The sha256 of the bytes on disk (hex).
        got: String,
    },

    /// A safetensors file that does not parse.
    #[error("{path}: not a valid safetensors file: {source}")]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// The parser's error.
        #[source]
        source: safetensors::SafeTensorError,
    },

    /// A tensor listed in the metadata is absent from its file.
    #[error("{path}: tensor {name:?} is listed in the metadata but not in the file")]
    TensorMissing {
        /// The safetensors file.
        path: PathBuf,
        /// The tensor.
        name: String,
    },

    /// A tensor whose dtype or shape differs from what the metadata records.
    #[error("{path}: tensor {name:?} is {got}, metadata says {expected}")]
    TensorMismatch {
        /// The safetensors file.
        path: PathBuf,
        /// The tensor.
        name: String,
        /// dtype and shape from the metadata.
        expected: String,
        /// dtype and shape in the file.
        got: String,
    },

    /// A libtorch operation failed.
    #[error("{context}: {source}")]
    Torch {
        /// What was being done, naming the tensor.
        context: String,
        /// The libtorch error.
        #[source]
        source: tch::TchError,
    },

    /// The group of ranks saving or loading together could not agree
    /// (a rank died, hung past the timeout, or the transport failed).
    #[error("checkpoint {during}: the group of ranks failed: {message} (hint: see the other ranks' logs; nothing was published)")]
    Group {
        /// The step of the collective save or load.
        during: &'static str,
        /// The group's error, as text.
        message: String,
    },

    /// Another rank of a collective save or load failed at this step;
    /// that rank's own error names the file.
    #[error("checkpoint {during}: another rank failed (hint: its log names the file; nothing was published)")]
    OtherRankFailed {
        /// The step of the collective save or load.
        during: &'static str,
    },

    /// A rank's part index, written by that rank into the shared temp
    /// directory, is missing or unreadable when rank 0 assembles the metadata.
    #[error("{path}: rank {rank}'s part of the checkpoint cannot be read: {reason} (hint: every rank must see the same checkpoint directory, e.g. on a shared filesystem)")]
    PartUnreadable {
        /// The part index file.
        path: PathBuf,
        /// The rank that should have written it.
        rank: usize,
        /// Why it cannot be used.
        reason: String,
    },

    /// The test-only crash hook fired: the save stopped as a kill would stop it.
    #[cfg(test)]
    #[error("simulated crash after {files_written} files")]
    SimulatedCrash {
        /// Files completely written before the "kill".
        files_written: usize,
    },
}

/// Result with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// Attaches the operation and path to an `io::Error`.
pub(crate) trait IoContext<T> {
    fn io_ctx(self, op: &'static str, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn io_ctx(self, op: &'static str, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|source| Error::Io {
            op,
            path: path.into(),
            source,
        })
    }
}

/// Attaches a description naming the tensor to a libtorch error.
pub(crate) trait TorchContext<T> {
    fn torch_ctx(self, context: impl FnOnce() -> String) -> Result<T>;
}

impl<T> TorchContext<T> for std::result::Result<T, tch::TchError> {
    fn torch_ctx(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| Error::Torch {
            context: context(),
            source,
        })
    }
}
