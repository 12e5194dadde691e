//! The tiny `.dat` fixture (crates/dat-format/tests/fixtures/tiny, made by
//! scripts/gen_dat_fixture.py with an independent Python quantizer and
//! writer), shared by the codec's tests and the converters' tests.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};
use tch::{Kind, Tensor};

/// A file of the tiny fixture directory.
pub fn tiny_fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../dat-format/tests/fixtures/tiny")
        .join(name)
}

/// Tensors of a safetensors file: name -> (dtype, shape, bytes).
///
/// # Panics
/// When the file cannot be read or parsed (a test failure).
pub fn read_safetensors(path: &Path) -> HashMap<String, (Dtype, Vec<usize>, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = SafeTensors::deserialize(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    st.tensors()
        .into_iter()
        .map(|(k, v)| (k, (v.dtype(), v.shape().to_vec(), v.data().to_vec())))
        .collect()
}

/// A bf16 weight of the fixture's source model, as f32 values.
///
/// # Panics
/// When `key` is not in the source shards.
pub fn tiny_source_weight(key: &str) -> Vec<f32> {
    for shard in [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ] {
        if let Some((dtype, shape, bytes)) =
            read_safetensors(&tiny_fixture("source").join(shard)).remove(key)
        {
            assert_eq!(dtype, Dtype::BF16, "{key}");
            let shape: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
            let t = Tensor::from_data_size(&bytes, &shape, Kind::BFloat16)
                .to_kind(Kind::Float)
                .flatten(0, -1);
            return Vec::<f32>::try_from(&t).expect("f32 values");
        }
    }
    panic!("{key} not in the source");
}
