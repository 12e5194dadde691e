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

    /// The fused decode step cannot run this model (it then decodes through
    /// the per-op forward); names the first unmet requirement.
    #[error("fused decode unavailable: {reason}")]
    FusedDecodeUnsupported {
        /// The unmet requirement.
        reason: String,
    },

    /// An error from the NVFP4 crate (quantizer, compute path).
    #[error(transparent)]
    Nvfp4(#[from] nvfp4_kernels::Error),

    /// An error from the `.dat` reader.
    #[error(transparent)]
    Dat(#[from] dat_format::Error),

    /// An error reported by libtorch.
    #[error("torch: {0}")]
    Torch(#[from] tch::TchError),
}

/// Result type of this crate.
pub type Result<T> = std::result::Result<T, Error>;

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
