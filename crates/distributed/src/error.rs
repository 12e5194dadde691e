use thiserror::Error;

/// Everything that can go wrong in launching a process group or a collective.
#[derive(Debug, Error)]
pub enum DistError {
    /// A launcher variable is present but unusable (named, with its value).
    #[error("launch environment: {var}={value:?}: {reason}")]
    BadVar {
        var: &'static str,
        value: String,
        reason: String,
    },
    /// A launcher set some variables of its set but not this one.
    #[error("launch environment: {var} is not set, but {because} is: {launcher} sets both")]
    MissingVar {
        var: &'static str,
        because: &'static str,
        launcher: &'static str,
    },
    /// Rendezvous or backend construction failed (peer missing past the timeout, port taken, ...).
    #[error(
        "process group init (rank {rank} of {world_size}, {backend}, master {master}): {message}"
    )]
    Init {
        rank: usize,
        world_size: usize,
        backend: &'static str,
        master: String,
        message: String,
    },
    /// A collective failed: a peer died, hung past the timeout, or the tensors disagree.
    #[error("{op} on rank {rank} of {world_size} failed: {message}")]
    Collective {
        op: &'static str,
        rank: usize,
        world_size: usize,
        message: String,
    },
    /// A tensor this process passed is unusable for the collective (checked before the call).
    #[error("{op}: {reason}")]
    BadTensor { op: &'static str, reason: String },
}

pub type Result<T> = std::result::Result<T, DistError>;
