//! `--dump-logits`: the prompt's logits as a safetensors file with one f32
//! tensor `logits` of shape `[T, vocab]`, written atomically.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use safetensors::tensor::{Dtype, TensorView};
use tch::{Device, Kind, Tensor};

use crate::write_atomic;

/// Name of the one tensor in the file.
pub const LOGITS_KEY: &str = "logits";

/// Writes `logits` (float `[T, vocab]`, any device) to `path` as f32.
pub fn write_logits(path: &Path, logits: &Tensor) -> Result<()> {
    let shape = logits.size();
    if shape.len() != 2 {
        bail!("logits to dump have shape {shape:?}, expected [T, vocab]");
    }
    let host = logits
        .f_to_device(Device::Cpu)?
        .f_to_kind(Kind::Float)?
        .f_contiguous()?;
    let values = Vec::<f32>::try_from(host.f_view([-1])?)?;
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let dims: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
    let view = TensorView::new(Dtype::F32, dims, &bytes)
        .context("logits: building the safetensors view")?;
    let file = safetensors::serialize([(LOGITS_KEY, view)], &None::<HashMap<String, String>>)
        .context("logits: serializing safetensors")?;
    write_atomic(path, &file).with_context(|| format!("--dump-logits {}", path.display()))
}

/// Reads back a file written by [`write_logits`] (for tests and comparisons).
pub fn read_logits(path: &Path) -> Result<Tensor> {
    let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let file = safetensors::SafeTensors::deserialize(&bytes)
        .with_context(|| format!("{}: not safetensors", path.display()))?;
    let view = file
        .tensor(LOGITS_KEY)
        .with_context(|| format!("{}: no tensor `{LOGITS_KEY}`", path.display()))?;
    if view.dtype() != Dtype::F32 {
        bail!(
            "{}: `{LOGITS_KEY}` is {:?}, expected F32",
            path.display(),
            view.dtype()
        );
    }
    let values: Vec<f32> = view
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
    Ok(Tensor::from_slice(&values).view(shape.as_slice()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_keeps_shape_and_values() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("logits.safetensors");
        let logits = Tensor::randn([5, 37], (Kind::Float, Device::Cpu));
        write_logits(&path, &logits).unwrap();
        let back = read_logits(&path).unwrap();
        assert_eq!(back.size(), vec![5, 37]);
        let diff = (&back - &logits).abs().max().double_value(&[]);
        assert_eq!(diff, 0.0, "f32 round trip must be exact");
    }

    #[test]
    fn rejects_a_non_matrix() {
        let dir = tempfile::tempdir().unwrap();
        let err = write_logits(
            &dir.path().join("x"),
            &Tensor::zeros([3], (Kind::Float, Device::Cpu)),
        )
        .unwrap_err();
        assert!(err.to_string().contains("[T, vocab]"), "{err}");
    }
}
