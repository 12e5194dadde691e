//! The trainer's error type: one variant per failure mode, with the
//! file/line/flag/tensor that caused it.

use std::path::PathBuf;

/// Everything that can go wrong while preparing data, training, saving or
/// resuming.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A data line could not be parsed or rendered.
    #[error("{}:{line}: {reason} (use --bad-lines skip to skip such lines)", path.display())]
    BadLine {
        /// The data file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong with the line.
        reason: String,
    },
    /// A data line tokenizes to an id the model's vocabulary does not hold
    /// (the tokenizer and the model do not match); caught before any step,
    /// where libtorch would abort or a CUDA kernel assert.
    #[error("{}:{line}: token id {id} is outside the model's vocabulary 0..{vocab} (does the tokenizer match the model?)", path.display())]
    TokenOutOfVocab {
        /// The data file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The offending id.
        id: u32,
        /// The model's `vocab_size`.
        vocab: usize,
    },
    /// A data file held no usable example.
    #[error("{}: no usable training example ({skipped} bad line(s) skipped)", path.display())]
    EmptyDataset {
        /// The data file.
        path: PathBuf,
        /// How many lines were skipped as bad.
        skipped: usize,
    },
    /// A data file's extension names no supported format.
    #[error("{}: unknown data format (expected .tsv, .txt or .jsonl)", path.display())]
    UnknownDataFormat {
        /// The data file.
        path: PathBuf,
    },
    /// A configuration value is out of range or inconsistent.
    #[error("invalid setting {name} = {got}: expected {expected}")]
    InvalidConfig {
        /// Flag or key name.
        name: &'static str,
        /// What is accepted.
        expected: String,
        /// What was given.
        got: String,
    },
    /// A string option did not parse.
    #[error("cannot parse {name} from {got:?}: expected one of {expected}")]
    ParseOption {
        /// Flag or key name.
        name: &'static str,
        /// Accepted spellings.
        expected: &'static str,
        /// What was given.
        got: String,
    },
    /// The loss or the gradient norm is NaN or infinite and the policy is `stop`.
    #[error("non-finite {what} ({value}) at step {step}; stopped (--on-nonfinite skip would skip such steps)")]
    NonFinite {
        /// Optimizer step (1-based, as the step lines count) where it happened.
        step: u64,
        /// "loss" or "gradient norm".
        what: &'static str,
        /// The offending value.
        value: f64,
    },
    /// Two tensors that must agree do not.
    #[error("tensor {name}: expected {expected}, got {got}")]
    TensorMismatch {
        /// Tensor (parameter or state) name.
        name: String,
        /// What was expected (shape, kind).
        expected: String,
        /// What was found.
        got: String,
    },
    /// A checkpoint lacks something a resume needs, or holds something unknown.
    #[error("checkpoint {}: {reason}", path.display())]
    BadCheckpoint {
        /// The checkpoint directory.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The loss curve could not be drawn.
    #[error("plot {}: {reason}", path.display())]
    Plot {
        /// The PNG being written.
        path: PathBuf,
        /// The drawing backend's message.
        reason: String,
    },
    /// Another live run holds the run directory's lock.
    #[error("run directory {} is in use by another run (process {holder}); wait for it to end or pass another --run-dir", path.display())]
    RunDirBusy {
        /// The run directory.
        path: PathBuf,
        /// The holder's pid, as it wrote it into the lock file.
        holder: String,
    },
    /// An output path cannot be written; found before the first step.
    #[error("{flag} {}: {reason}", path.display())]
    Output {
        /// The flag that names the path.
        flag: &'static str,
        /// The path.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A resumed run has nothing left to do.
    #[error("checkpoint {} is at step {step}, the run ends at step {total}: nothing to train (raise --steps or --epochs to continue training)", path.display())]
    NothingToTrain {
        /// The checkpoint resumed from.
        path: PathBuf,
        /// Its step.
        step: u64,
        /// The run's total steps.
        total: u64,
    },
    /// The estimated memory exceeds what the device has available.
    #[error(
        "{what} needs at least {need} ({parts}), but only {available} is available on {device}"
    )]
    WontFit {
        /// "training" or "inference".
        what: &'static str,
        /// The estimate.
        need: String,
        /// The estimate by part.
        parts: String,
        /// Available memory.
        available: String,
        /// The device.
        device: String,
    },
    /// A libtorch call failed.
    #[error("torch: {0}")]
    Torch(#[from] tch::TchError),
    /// JSON (de)serialisation failed.
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
    /// The model crate reported an error.
    #[error("model: {0}")]
    Model(#[from] qwen3_model::Error),
    /// The checkpoint crate reported an error.
    #[error("checkpoint: {0}")]
    Checkpoint(#[from] checkpoint::Error),
    /// The tokenizer reported an error.
    #[error("tokenizer: {0}")]
    Tokenizer(#[from] tokenizer_bridge::Error),
    /// The tokenizer library failed on a text.
    #[error("tokenizing text: {0}")]
    Tokenize(String),
    /// The `.dat` reader or writer reported an error.
    #[error("dat: {0}")]
    Dat(#[from] dat_format::Error),
    /// A collective or the data-parallel launch failed.
    #[error("distributed: {0}")]
    Distributed(#[from] distributed::DistError),
    /// The NVFP4 library reported an error.
    #[error("nvfp4: {0}")]
    Nvfp4(#[from] nvfp4_kernels::Error),
}

/// Result with the trainer's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// An [`Error::Io`] for `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// An [`Error::InvalidConfig`].
    pub fn config(name: &'static str, expected: impl Into<String>, got: impl ToString) -> Self {
        Error::InvalidConfig {
            name,
            expected: expected.into(),
            got: got.to_string(),
        }
    }
}
