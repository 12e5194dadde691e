//! `export_hf_dir`: a (trained) model as a Hugging Face safetensors
//! directory (`model.safetensors` + `config.json`), with every projection
//! dequantized from its NVFP4 form, i.e. exactly the weights the NVFP4
//! model computes with. Written into a temporary directory beside the
//! target and renamed into place (`export_dir::Staged`), so the target
//! holds a complete export or the previous one.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::HashMap;
use std::path::Path;

use nvfp4_kernels::ScaleMode;
use safetensors::{Dtype, View};
use tch::Kind;

use crate::error::{Error, Result};
use crate::model::Qwen3Model;
use crate::weights::dtype::float_dtype;
use crate::weights::export_dir::{export_config, fsync, write_file, Staged};
use crate::weights::model_weights::ModelWeights;
use crate::weights::safetensors::SHARD_INDEX;

/// The weights file of the export.
const WEIGHTS_FILE: &str = "model.safetensors";
/// The config file of the export.
const CONFIG_FILE: &str = "config.json";
/// Files a previous export may hold: only a directory of these is replaced.
const EXPORT_FILES: [&str; 3] = [WEIGHTS_FILE, CONFIG_FILE, SHARD_INDEX];

/// Element type of the exported weights.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum HfDtype {
    /// bfloat16: exact for dequantized NVFP4 weights (at most 6 significant
    /// bits), rounds f32 embeddings and norms.
    #[default]
    BF16,
    /// float32: exact for everything.
    F32,
}

impl HfDtype {
    fn kind(self) -> Kind {
        match self {
            HfDtype::BF16 => Kind::BFloat16,
            HfDtype::F32 => Kind::Float,
        }
    }

    /// The `torch_dtype` value of `config.json`.
    fn torch_name(self) -> &'static str {
        match self {
            HfDtype::BF16 => "bfloat16",
            HfDtype::F32 => "float32",
        }
    }
}

/// Options of [`export_hf_dir_with`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HfExportOptions {
    /// Element type of every tensor (default bf16).
    pub dtype: HfDtype,
}

/// [`export_hf_dir_with`] in bf16.
pub fn export_hf_dir(model: &Qwen3Model, dir: &Path) -> Result<()> {
    export_hf_dir_with(model, dir, &HfExportOptions::default())
}

/// Writes `model` to `dir` as a Hugging Face directory: `model.safetensors`
/// (embeddings, norms, dequantized projections; `lm_head.weight` only when
/// the model has its own head) and `config.json`. `dir` must not exist, be
/// empty, or hold only a previous export (which is replaced). Refuses a
/// weight holding NaN or infinity ([`Error::NonFiniteWeight`]).
pub fn export_hf_dir_with(model: &Qwen3Model, dir: &Path, opts: &HfExportOptions) -> Result<()> {
    let staged = Staged::begin(dir, &EXPORT_FILES)?;
    write_weights(model, &staged.path().join(WEIGHTS_FILE), opts.dtype)?;
    let cfg = export_config(model, opts.dtype.torch_name());
    write_file(
        &staged.path().join(CONFIG_FILE),
        cfg.to_json_string().as_bytes(),
    )?;
    staged.publish()?;
    tracing::info!("exported Hugging Face directory {}", dir.display());
    Ok(())
}

/// Streams every weight, converted one at a time when the writer reaches
/// it (no dense copy of the model is ever held).
fn write_weights(model: &Qwen3Model, path: &Path, dtype: HfDtype) -> Result<()> {
    let weights = ModelWeights::new(model);
    let failed = RefCell::new(None);
    let st_dtype = float_dtype(dtype.kind()).expect("bf16 and f32 are weight floats");
    let views: Vec<(&str, LazyWeight<'_, '_>)> = weights
        .keys_hf_order()
        .into_iter()
        .map(|key| {
            let view = LazyWeight {
                weights: &weights,
                key,
                kind: dtype.kind(),
                dtype: st_dtype,
                shape: weights.shape(key),
                failed: &failed,
            };
            (key, view)
        })
        .collect();
    let meta = Some(HashMap::from([("format".to_string(), "pt".to_string())]));
    let written = safetensors::serialize_to_file(views, &meta, path);
    // A conversion error stops the export before any I/O error is reported.
    if let Some(e) = failed.into_inner() {
        return Err(e);
    }
    written.map_err(|e| Error::Safetensors {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    fsync(path)
}

/// One weight, converted to the export dtype only when the writer asks for
/// its bytes. `View::data` cannot fail, so the first error is kept in
/// `failed` (and the file, then incomplete, is discarded with its
/// temporary directory); later weights are not converted.
struct LazyWeight<'w, 'm> {
    weights: &'w ModelWeights<'m>,
    key: &'w str,
    kind: Kind,
    dtype: Dtype,
    shape: Vec<usize>,
    failed: &'w RefCell<Option<Error>>,
}

impl LazyWeight<'_, '_> {
    /// The values the model computes with (a master as its single-level
    /// rounding: no template here), as little-endian bytes.
    fn bytes(&self) -> Result<Vec<u8>> {
        let t = self
            .weights
            .effective(self.key, ScaleMode::Single, self.kind)?;
        let numel = t.numel();
        let mut bytes = vec![0u8; numel * self.kind.elt_size_in_bytes()];
        t.f_copy_data_u8(&mut bytes, numel)
            .map_err(Error::libtorch(format!(
                "copying weight {:?} to host memory",
                self.key
            )))?;
        Ok(bytes)
    }
}

impl View for LazyWeight<'_, '_> {
    fn dtype(&self) -> Dtype {
        self.dtype
    }

    fn shape(&self) -> &[usize] {
        &self.shape
    }

    fn data(&self) -> Cow<'_, [u8]> {
        if self.failed.borrow().is_some() {
            return Cow::Borrowed(&[]);
        }
        match self.bytes() {
            Ok(bytes) => Cow::Owned(bytes),
            Err(e) => {
                *self.failed.borrow_mut() = Some(e);
                Cow::Borrowed(&[])
            }
        }
    }

    fn data_len(&self) -> usize {
        self.shape.iter().product::<usize>() * self.dtype.size()
    }
}
