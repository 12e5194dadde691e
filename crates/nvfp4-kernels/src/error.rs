//! The one error type of this crate: every failure names the tensor, the
//! shape or the element that is wrong, so a caller can act on the message.

use tch::{Kind, TchError};

/// Everything that can go wrong when building, converting or using NVFP4 data.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The logical number of columns is not a multiple of the 16-element block.
    #[error(
        "{name}: logical shape [{rows}, {cols}] has {cols} columns, not a multiple of the \
         NVFP4 block size 16 (hint: pad `in` to a multiple of 16)"
    )]
    ColsNotMultipleOfBlock {
        /// Tensor (or caller) name.
        name: String,
        /// Logical rows.
        rows: usize,
        /// Logical columns (the offending value).
        cols: usize,
    },

    /// A buffer has the wrong number of bytes or elements.
    #[error("{name}: {what} has {got} elements, expected {expected}")]
    LengthMismatch {
        /// Tensor (or caller) name.
        name: String,
        /// Which buffer (`qdata`, `scale`, `input`, ...).
        what: &'static str,
        /// Expected length.
        expected: usize,
        /// Actual length.
        got: usize,
    },

    /// A tensor has the wrong shape.
    #[error("{name}: {what} has shape {got:?}, expected {expected:?}")]
    ShapeMismatch {
        /// Tensor (or caller) name.
        name: String,
        /// Which tensor (`qdata`, `scale`, `x`, ...).
        what: &'static str,
        /// Expected shape (or the constraint written as a shape).
        expected: Vec<usize>,
        /// Actual shape.
        got: Vec<usize>,
    },

    /// An environment switch holds something other than `0` or `1`.
    #[error("environment variable {name}={value:?}: expected 0 or 1")]
    BadEnvSwitch {
        /// The variable.
        name: &'static str,
        /// Its value.
        value: String,
    },

    /// A shape or layout that the operation does not support (the reason says
    /// what would be).
    #[error("{name}: {what} {reason}")]
    Unsupported {
        /// Tensor (or caller) name.
        name: String,
        /// Which tensor.
        what: &'static str,
        /// What is wrong and what is supported, in words.
        reason: String,
    },

    /// A tensor a kernel indexes as flat memory is not contiguous.
    #[error("{name}: {what} must be contiguous, has strides {strides:?}")]
    NotContiguous {
        /// Tensor (or caller) name.
        name: String,
        /// Which tensor.
        what: &'static str,
        /// Its strides.
        strides: Vec<i64>,
    },

    /// A tensor has the wrong number of dimensions.
    #[error("{name}: {what} has shape {got:?} ({} dims), expected {expected} dims", got.len())]
    WrongRank {
        /// Tensor (or caller) name.
        name: String,
        /// Which tensor.
        what: &'static str,
        /// Expected number of dimensions.
        expected: usize,
        /// Actual shape.
        got: Vec<usize>,
    },

    /// A tensor has the wrong element kind.
    #[error("{name}: {what} has kind {got:?}, expected {expected}")]
    WrongKind {
        /// Tensor (or caller) name.
        name: String,
        /// Which tensor.
        what: &'static str,
        /// The kinds that are accepted, in words.
        expected: &'static str,
        /// The kind found.
        got: Kind,
    },

    /// Two tensors that must live together are on different devices.
    #[error("{name}: {what} is on {got:?}, expected {expected:?}")]
    DeviceMismatch {
        /// Tensor (or caller) name.
        name: String,
        /// Which tensor.
        what: &'static str,
        /// Device of the reference tensor.
        expected: tch::Device,
        /// Device found.
        got: tch::Device,
    },

    /// The input to a quantizer holds a NaN or an infinity.
    #[error("{name}: element {index} (row {row}, column {col}) is {value}, not finite")]
    NonFinite {
        /// Tensor (or caller) name.
        name: String,
        /// Flat (row-major) index of the first non-finite element.
        index: usize,
        /// Its row.
        row: usize,
        /// Its column.
        col: usize,
        /// The value found.
        value: f32,
    },

    /// A per-tensor global scale that is not a positive finite number.
    #[error("{name}: global scale {value} must be finite and > 0")]
    BadGlobalScale {
        /// Tensor (or caller) name.
        name: String,
        /// The value found.
        value: f32,
    },

    /// A class index (cross-entropy target) outside `0..classes`.
    #[error("{name}: target {value} at row {row} is outside 0..{classes}")]
    TargetOutOfRange {
        /// Tensor (or caller) name.
        name: String,
        /// The first row holding a bad target.
        row: usize,
        /// Its target.
        value: i64,
        /// Number of classes (the logits' columns).
        classes: usize,
    },

    /// A compute-path name that is not one of the accepted spellings.
    #[error("unknown compute path {got:?}; expected one of \"kernel-only\", \"auto\", \"dequant-matmul\"")]
    UnknownComputePath {
        /// The text given.
        got: String,
    },

    /// `ComputePath::KernelOnly` was asked for where no NVFP4 kernel can run (NFR-02).
    #[error("KernelOnly compute path unavailable on {device}: {reason}")]
    KernelUnavailable {
        /// The device, in words.
        device: String,
        /// Why no kernel can be used there.
        reason: String,
    },

    /// A CUDA driver or NVRTC call failed while running an NVFP4 kernel.
    #[error("CUDA {op}: {message}")]
    Cuda {
        /// The call or launch that failed.
        op: String,
        /// The driver's message.
        message: String,
    },

    /// NVRTC rejected a kernel module; `log` is the compiler's output.
    #[error("NVRTC could not compile kernel module {module} for {arch}:\n{log}")]
    KernelCompile {
        /// Module name (`quantize`, `dequantize`, `gemv`).
        module: String,
        /// The `--gpu-architecture` it was compiled for.
        arch: String,
        /// NVRTC's log.
        log: String,
    },

    /// An error reported by libtorch.
    #[error("torch: {0}")]
    Torch(#[from] TchError),
}

/// Result type of this crate.
pub type Result<T> = std::result::Result<T, Error>;
