//! What the full-size GPU benches share: the model they build, from the
//! environment.

use std::path::PathBuf;

use anyhow::{Context, Result};
use nvfp4_kernels::ComputePath;
use qwen3_model::Qwen3Config;

/// The config of `FULL_SIZE_CONFIG` (default: the bundled Qwen3-4B
/// `config.json`) and the compute path of `FULL_SIZE_PATH` (default auto).
pub fn full_size_model() -> Result<(Qwen3Config, ComputePath)> {
    let cfg_path = std::env::var("FULL_SIZE_CONFIG")
        .map(PathBuf::from)
        .unwrap_or_else(|_| tokenizer_bridge::bundled_asset_dir().join("config.json"));
    let cfg = Qwen3Config::from_file(&cfg_path)
        .with_context(|| format!("config {}", cfg_path.display()))?;
    let path: ComputePath = std::env::var("FULL_SIZE_PATH")
        .unwrap_or("auto".into())
        .parse()?;
    Ok((cfg, path))
}
