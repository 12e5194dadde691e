//! Storage of one AdamW moment tensor in the chosen precision.
//!
//! The update itself always runs in f32: a moment is loaded to f32, updated,
//! used, then stored back (rounded to bf16 or quantized to 8 bits). So the
//! precision choice only affects what is carried between steps.

use std::str::FromStr;

use nvfp4_kernels::cuda::MomentRef;
use tch::{Kind, Tensor};

use super::quant8::QuantMap;
use crate::error::{Error, Result};

/// How the optimizer keeps its first and second moments between steps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum OptimStateKind {
    /// 8 bytes per parameter.
    #[default]
    F32,
    /// 4 bytes per parameter (round to nearest even on store).
    BF16,
    /// About 2 bytes per parameter: block-wise 8-bit with a dynamic map,
    /// see [`QuantMap`](crate::QuantMap) for the layout and map choice.
    Int8Block,
}

impl FromStr for OptimStateKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "f32" | "fp32" => Ok(Self::F32),
            "bf16" => Ok(Self::BF16),
            "int8" | "8bit" | "int8-block" => Ok(Self::Int8Block),
            _ => Err(Error::ParseOption {
                name: "optim-state",
                expected: "f32, bf16, int8",
                got: s.into(),
            }),
        }
    }
}

/// The spelling [`FromStr`] accepts (for `--help` defaults and logs).
impl std::fmt::Display for OptimStateKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl OptimStateKind {
    /// The spelling used on the command line and in checkpoints.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::BF16 => "bf16",
            Self::Int8Block => "int8",
        }
    }
}

/// Which moment a store holds: the first (signed) or second (non-negative).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Moment {
    First,
    Second,
}

/// One moment tensor in its storage precision.
#[derive(Debug)]
pub(crate) enum MomentStore {
    Dense(Tensor),
    /// The first moment is quantized as is; the second as `sqrt(v)`, which
    /// halves the range of exponents the map must cover (v spans the square
    /// of the gradient's range) so small second moments do not flush to 0.
    Int8 {
        codes: Tensor,
        absmax: Tensor,
        shape: Vec<i64>,
    },
}

impl MomentStore {
    /// A zero moment shaped like `param`.
    pub fn zeros(kind: OptimStateKind, param: &Tensor, map: &QuantMap) -> Self {
        let dev = param.device();
        match kind {
            OptimStateKind::F32 => Self::Dense(Tensor::zeros(param.size(), (Kind::Float, dev))),
            OptimStateKind::BF16 => Self::Dense(Tensor::zeros(param.size(), (Kind::BFloat16, dev))),
            OptimStateKind::Int8Block => {
                let (codes, absmax) =
                    map.quantize(&Tensor::zeros([param.numel() as i64], (Kind::Float, dev)));
                Self::Int8 {
                    codes,
                    absmax,
                    shape: param.size(),
                }
            }
        }
    }

    /// The moment as f32 (a new tensor for bf16/int8, a shallow clone for f32).
    pub fn load(&self, moment: Moment, map: &QuantMap) -> Tensor {
        match self {
            Self::Dense(t) if t.kind() == Kind::Float => t.shallow_clone(),
            Self::Dense(t) => t.to_kind(Kind::Float),
            Self::Int8 {
                codes,
                absmax,
                shape,
            } => {
                let x = map.dequantize(codes, absmax, shape);
                match moment {
                    Moment::First => x,
                    Moment::Second => x.square(),
                }
            }
        }
    }

    /// Stores the updated f32 moment `x` (no-op for f32, which was updated in place).
    pub fn store(&mut self, x: &Tensor, moment: Moment, map: &QuantMap) {
        match self {
            Self::Dense(t) if t.kind() == Kind::Float => {
                if t.data_ptr() != x.data_ptr() {
                    t.copy_(x);
                }
            }
            Self::Dense(t) => t.copy_(x),
            Self::Int8 { codes, absmax, .. } => {
                let src = match moment {
                    Moment::First => x.shallow_clone(),
                    Moment::Second => x.sqrt(),
                };
                let (c, a) = map.quantize(&src);
                *codes = c;
                *absmax = a;
            }
        }
    }

    /// The moment as the fused kernel takes it (updated in place there).
    pub fn kernel_ref<'a>(&'a self, map: &'a QuantMap) -> MomentRef<'a> {
        match self {
            Self::Dense(t) => MomentRef::Dense(t),
            Self::Int8 { codes, absmax, .. } => MomentRef::Int8 {
                codes,
                absmax,
                values: map.values(),
                boundaries: map.boundaries(),
            },
        }
    }

    /// Bytes held on the device.
    pub fn nbytes(&self) -> usize {
        let size = |t: &Tensor| t.numel() * t.kind().elt_size_in_bytes();
        match self {
            Self::Dense(t) => size(t),
            Self::Int8 { codes, absmax, .. } => size(codes) + size(absmax),
        }
    }

    /// Named tensors to checkpoint, under `prefix` (".codes"/".absmax" suffixes for int8).
    pub fn tensors(&self, prefix: &str) -> Vec<(String, Tensor)> {
        match self {
            Self::Dense(t) => vec![(prefix.to_string(), t.shallow_clone())],
            Self::Int8 { codes, absmax, .. } => vec![
                (format!("{prefix}.codes"), codes.shallow_clone()),
                (format!("{prefix}.absmax"), absmax.shallow_clone()),
            ],
        }
    }

    /// Replaces the content with checkpointed tensors, checking shapes and kinds.
    pub fn restore(
        &mut self,
        prefix: &str,
        get: &mut dyn FnMut(&str) -> Option<Tensor>,
    ) -> Result<()> {
        let mut take = |name: String, like: &Tensor| -> Result<Tensor> {
            let t = get(&name).ok_or_else(|| Error::TensorMismatch {
                name: name.clone(),
                expected: "present in the checkpoint".into(),
                got: "missing".into(),
            })?;
            if t.size() != like.size() || t.kind() != like.kind() {
                return Err(Error::TensorMismatch {
                    name,
                    expected: format!("{:?} {:?}", like.kind(), like.size()),
                    got: format!("{:?} {:?}", t.kind(), t.size()),
                });
            }
            // Contiguous: the fused kernel updates the codes in place.
            Ok(t.to_device(like.device()).contiguous())
        };
        match self {
            Self::Dense(t) => {
                let src = take(prefix.to_string(), t)?;
                tch::no_grad(|| t.copy_(&src));
            }
            Self::Int8 { codes, absmax, .. } => {
                *codes = take(format!("{prefix}.codes"), codes)?;
                *absmax = take(format!("{prefix}.absmax"), absmax)?;
            }
        }
        Ok(())
    }
}
