//! The one error type of this crate. Every variant names what is wrong and
//! where (config key, tensor name, file), so a caller can act on the message.

use std::path::PathBuf;

/// Everything that can go wrong while configuring, loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },

    /// `config.json` is not valid JSON or a key has the wrong type.
    #[error("{}: invalid config JSON: {source}", path.as_deref().map(|p| p.display().to_string()).unwrap_or_else(|| "<config>".into()))]
    ConfigJson {
        /// The file, when the config came from one.
        path: Option<PathBuf>,
        /// The parser's error (it names line and column).
        #[source]
        source: serde_json::Error,
    },

    /// A config key is required but absent.
    #[error("config: missing required key `{key}`")]
    MissingConfigKey {
        /// The key.
        key: &'static str,
    },

    /// The config asks for something this implementation does not do; it is
    /// rejected rather than ignored so a model never runs with wrong wiring.
    #[error("config: unsupported `{key}` = {got} ({hint})")]
    UnsupportedConfig {
        /// The key (e.g. `use_sliding_window`, `rope_scaling`).
        key: String,
        /// The value found, as JSON.
        got: String,
        /// What is supported instead.
        hint: &'static str,
    },

    /// A config value is inconsistent or out of range.
    #[error("config: invalid `{key}` = {got}: {reason}")]
    InvalidConfig {
        /// The key.
        key: &'static str,
        /// The value found.
        got: String,
        /// Why it is invalid.
        reason: String,
    },

    /// Loading found problems with the weights: every one is listed (missing
    /// tensors, wrong shapes, wrong element types, unexpected keys).
    #[error("{source_name}: {} problem{}: {}", problems.len(), if problems.len() == 1 { "" } else { "s" }, summarize(problems))]
    LoadProblems {
        /// The file or directory loaded.
        source_name: String,
        /// One line per problem.
        problems: Vec<String>,
    },

    /// A model path does not lead to weights and a config.
    #[error("{}: {reason}", path.display())]
    ModelPath {
        /// The path given (file or directory).
        path: PathBuf,
        /// What was found and what was expected.
        reason: String,
    },

    /// A Hugging Face safetensors file could not be parsed or holds an unusable tensor.
    #[error("{}: {reason}", path.display())]
    Safetensors {
        /// The shard.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },

    /// A tensor handed to the model has the wrong shape, kind or content.
    #[error("{name}: {reason}")]
    BadInput {
        /// The argument (e.g. `input_ids`).
        name: &'static str,
        /// What is wrong with it.
        reason: String,
    },

    /// An argument is out of range (layer index, cache length, option value).
    #[error("invalid {name}: {reason}")]
    InvalidArgument {
        /// The argument.
        name: &'static str,
        /// Why it is invalid.
        reason: String,
    },

    /// A KV cache does not fit the model or the request.
    #[error("kv cache: {reason}")]
    Cache {
        /// What does not fit.
        reason: String,
    },

    /// A checkpoint's quantization config (`quantization_config` in
    /// `config.json`, or `hf_quant_config.json`) is unknown or asks for
    /// something this project cannot load; `field` is its JSON path.
    #[error("{}: `{field}`: {reason}", path.display())]
    QuantizationConfig {
        /// The file holding the field.
        path: PathBuf,
        /// JSON path of the field, e.g. `quantization_config.format`.
        field: String,
        /// What is wrong and what is supported.
        reason: String,
    },

    /// An export target cannot be written (exists and is not empty, has no name).
    #[error("export to {}: {reason}", path.display())]
    ExportTarget {
        /// The target directory.
        path: PathBuf,
        /// Why it cannot be used.
        reason: String,
    },

    /// A buffer the request needs cannot be allocated: what, how big, where
    /// and why (libtorch's out-of-memory message, or the host's free memory).
    #[error("cannot allocate {what}: {bytes} bytes ({:.2} GiB) on {device}: {reason}", crate::alloc::gib(*bytes))]
    OutOfMemory {
        /// The buffer (e.g. "kv cache of 4 layers x 2 x [1, 8, 4096, 128] BFloat16").
        what: String,
        /// Bytes requested.
        bytes: u64,
        /// The device asked.
        device: String,
        /// Why it failed.
        reason: String,
    },

    /// libtorch failed inside a call (out of memory in an op, a kernel
    /// error): what was running and libtorch's message.
    #[error("libtorch failed during {during}: {reason}")]
    Libtorch {
        /// The call (e.g. "forward").
        during: String,
        /// libtorch's message (for out-of-memory it names the bytes).
        reason: String,
    },

    /// The fused decode step cannot run this model (it then decodes through
    /// the per-op forward); names the first unmet requirement.
    #[error("fused decode unavailable: {reason}")]
    FusedDecodeUnsupported {
        /// The unmet requirement.
        reason: String,
    },

    /// A tensor a conversion or an export cannot handle: a dtype the target
    /// cannot hold, a shape that cannot be quantized, a key produced twice.
    #[error("{}: tensor {key:?}: {reason}", path.display())]
    Convert {
        /// The file holding (or receiving) the tensor.
        path: PathBuf,
        /// The tensor.
        key: String,
        /// What is wrong, with a hint.
        reason: String,
    },

    /// A model weight whose shape differs from the entry of the `like` file.
    #[error("{}: entry {key:?} has shape {expected:?} but the model's {model_key:?} needs {got:?} (hint: pass the .dat the model was loaded from as `like`, or none)", like.display())]
    ExportShapeMismatch {
        /// The `like` file.
        like: PathBuf,
        /// The entry key in the `like` file.
        key: String,
        /// The model weight written there.
        model_key: String,
        /// The shape of the `like` entry.
        expected: Vec<usize>,
        /// The shape the model weight gives it.
        got: Vec<usize>,
    },

    /// A `like` entry whose element type cannot hold a model weight.
    #[error("{}: entry {key:?} has element type {elem}, which cannot hold the float weight {key:?} (hint: a raw weight needs f16, bf16, f32 or f64)", like.display())]
    ExportElemType {
        /// The `like` file.
        like: PathBuf,
        /// The entry key.
        key: String,
        /// Its element type, as text.
        elem: String,
    },

    /// A weight holding NaN or infinity: exporting it would ship a broken model.
    #[error("weight {key:?} holds a non-finite value (hint: training diverged; export an earlier checkpoint)")]
    NonFiniteWeight {
        /// The weight's key.
        key: String,
    },

    /// An NVFP4 operation on one named tensor failed.
    #[error("{key:?}: {source}")]
    Nvfp4Tensor {
        /// The tensor.
        key: String,
        /// The NVFP4 crate's error.
        #[source]
        source: nvfp4_kernels::Error,
    },

    /// An error from the NVFP4 crate (quantizer, compute path).
    #[error(transparent)]
    Nvfp4(#[from] nvfp4_kernels::Error),

    /// An error from the `.dat` codec (reading, or writing a `.dat` file).
    #[error(transparent)]
    Dat(#[from] dat_format::Error),

    /// An error reported by libtorch.
    #[error("torch: {0}")]
    Torch(#[from] tch::TchError),
}

/// Result type of this crate.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// An [`Error::Io`] for `path`.
    pub(crate) fn io_at(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Error::Io { path, source }
    }

    /// An [`Error::Libtorch`] saying what was running (naming the tensor).
    pub(crate) fn libtorch(during: impl Into<String>) -> impl FnOnce(tch::TchError) -> Self {
        let during = during.into();
        move |e| Error::Libtorch {
            during,
            reason: e.to_string(),
        }
    }

    /// An [`Error::Nvfp4Tensor`] for tensor `key`.
    pub(crate) fn nvfp4_at(key: impl Into<String>) -> impl FnOnce(nvfp4_kernels::Error) -> Self {
        let key = key.into();
        move |source| Error::Nvfp4Tensor { key, source }
    }
}

/// Problem lists of a broken 4B file can run to hundreds of lines; the message
/// shows the first ones and a count, the variant keeps them all.
fn summarize(problems: &[String]) -> String {
    const SHOWN: usize = 20;
    let mut s = problems
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join("; ");
    if problems.len() > SHOWN {
        s.push_str(&format!("; ... and {} more", problems.len() - SHOWN));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_problems_message_counts_and_lists_each_problem() {
        let e = Error::LoadProblems {
            source_name: "m.dat".into(),
            problems: vec![
                "missing a (qdata/scale)".into(),
                "b shape [1] expected [2]".into(),
            ],
        };
        assert_eq!(
            e.to_string(),
            "m.dat: 2 problems: missing a (qdata/scale); b shape [1] expected [2]"
        );
    }

    #[test]
    fn load_problems_message_is_capped_but_keeps_the_count() {
        let problems: Vec<String> = (0..25).map(|i| format!("p{i}")).collect();
        let e = Error::LoadProblems {
            source_name: "x".into(),
            problems,
        };
        let msg = e.to_string();
        assert!(msg.starts_with("x: 25 problems: p0; p1;"), "{msg}");
        assert!(msg.ends_with("p19; ... and 5 more"), "{msg}");
    }
}
