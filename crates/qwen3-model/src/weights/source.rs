//! The reader side of a file format: a `WeightSource` answers for each
//! [`TensorSpec`] of the schema whether it holds it, and hands it over.
//! The loader (`loader.rs`) walks the schema against one source: audit
//! first, then one copy per tensor. A new format is one impl of this trait.

use nvfp4_kernels::Nvfp4Tensor;
use tch::{Device, Kind, Tensor};

use crate::error::Result;
use crate::weights::schema::TensorSpec;

/// What a source holds for one tensor of the schema.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Check {
    /// Present with the expected shape and a usable element type.
    Present,
    /// Not in the source at all.
    Missing,
    /// Present but unusable: the message names the key and what was expected.
    Problem(String),
}

/// Where weights come from. `check` and `keys` only read metadata; `dense`
/// and `packed` are called once per tensor, after the audit passed.
pub(crate) trait WeightSource {
    /// The file or directory, for messages.
    fn describe(&self) -> String;
    /// Every key the source holds (for the unexpected-key check); a packed
    /// tensor's storage keys must start with its `base()` and a dot.
    fn keys(&self) -> Vec<String>;
    /// Whether `spec` is present and usable (shape, element type).
    fn check(&self, spec: &TensorSpec) -> Check;
    /// A raw tensor (embedding, norm) as `kind` on `device`.
    fn dense(&mut self, spec: &TensorSpec, kind: Kind, device: Device) -> Result<Tensor>;
    /// A packed tensor (projection, head) as NVFP4 on `device`; a source
    /// holding it in high precision quantizes it here.
    fn packed(&mut self, spec: &TensorSpec, device: Device) -> Result<Nvfp4Tensor>;
    /// True when projections are stored in high precision, so that
    /// [`WeightSource::dense`] serves them too (a bf16 teacher stays bf16).
    fn stores_dense(&self) -> bool {
        false
    }
}

/// The shape problem message every source uses.
pub(crate) fn shape_problem(key: &str, got: &[usize], spec: &TensorSpec) -> String {
    format!("{key} shape {got:?} expected {:?}", spec.shape)
}
