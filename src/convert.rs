//! `dat convert --to-format` and `train --export --format`: a model (a
//! `.dat`, or a directory in any layout `Qwen3Model::load_hf_dir` reads) is
//! loaded once, packed weights as stored, and written in the target format.
//! NVFP4 codes and scales carry over without re-quantizing.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use dat_format::DatFile;
use qwen3_model::{
    export_model_dir, model_files_in, DirExportOptions, DirFormat, LoadOptions, PackedLayout,
    Qwen3Config, Qwen3Model,
};
use tch::Device;
use trainer::WeightsSource;

/// Output formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ModelFormat {
    /// compressed-tensors `nvfp4-pack-quantized` directory (vLLM, SGLang).
    CompressedTensors,
    /// NVIDIA ModelOpt NVFP4 directory (TensorRT-LLM, vLLM).
    Modelopt,
    /// The original `.dat` file (`--out` names the file).
    Dat,
    /// Dequantized bf16 safetensors directory.
    Bf16Safetensors,
}

/// What a conversion wrote.
#[derive(Clone, Debug)]
pub struct Converted {
    /// Files written.
    pub files: Vec<PathBuf>,
    /// Their total size in bytes.
    pub bytes: u64,
    /// Seconds spent loading.
    pub load_s: f64,
    /// Seconds spent writing.
    pub write_s: f64,
}

/// Loads `weights` with `cfg` on `device` and writes it to `out` as `format`.
/// Tokenizer and generation files are copied from `files_dir` (the bundled
/// Qwen3 tokenizer when it has none).
pub fn convert_model(
    cfg: &Qwen3Config,
    weights: &WeightsSource,
    files_dir: &Path,
    format: ModelFormat,
    out: &Path,
    device: Device,
) -> Result<Converted> {
    let start = Instant::now();
    let opts = LoadOptions::new(device);
    let model = match weights {
        WeightsSource::Dat(p) => {
            let dat = DatFile::open(p).with_context(|| format!("opening {}", p.display()))?;
            Qwen3Model::load_dat(&dat, cfg, &opts)
        }
        WeightsSource::HfDir(d) => Qwen3Model::load_hf_dir(d, cfg, &opts),
        WeightsSource::Init { .. } => {
            anyhow::bail!("a freshly initialised model has nothing to convert: train it first")
        }
    }
    .context("loading the model")?;
    let load_s = start.elapsed().as_secs_f64();
    let start = Instant::now();
    let files = match format {
        ModelFormat::Dat => {
            qwen3_model::export_dat(&model, out, None)
                .with_context(|| format!("writing {}", out.display()))?;
            vec![out.to_path_buf()]
        }
        other => {
            let format = match other {
                ModelFormat::CompressedTensors => {
                    DirFormat::Packed(PackedLayout::CompressedTensors)
                }
                ModelFormat::Modelopt => DirFormat::Packed(PackedLayout::ModelOpt),
                _ => DirFormat::Bf16,
            };
            let mut opts = DirExportOptions::new(format);
            opts.files = side_files(files_dir)?;
            export_model_dir(&model, out, &opts)
                .with_context(|| format!("exporting to {}", out.display()))?
                .into_iter()
                .map(|f| out.join(f))
                .collect()
        }
    };
    let bytes = files
        .iter()
        .map(|f| std::fs::metadata(f).map(|m| m.len()).unwrap_or(0))
        .sum();
    Ok(Converted {
        files,
        bytes,
        load_s,
        write_s: start.elapsed().as_secs_f64(),
    })
}

/// The model files of `dir`; without a tokenizer there, the bundled one.
fn side_files(dir: &Path) -> Result<Vec<(String, Vec<u8>)>> {
    let mut files = model_files_in(dir)?;
    if !files.iter().any(|(n, _)| n == "tokenizer.json") {
        tracing::info!(
            "no tokenizer.json in {}: exporting the bundled Qwen3 tokenizer",
            dir.display()
        );
        files.push((
            "tokenizer.json".into(),
            tokenizer_bridge::bundled_tokenizer_json()?,
        ));
        if !files.iter().any(|(n, _)| n == "tokenizer_config.json") {
            let cfg = tokenizer_bridge::BUNDLED_TOKENIZER_CONFIG_JSON
                .as_bytes()
                .to_vec();
            files.push(("tokenizer_config.json".into(), cfg));
        }
    }
    Ok(files)
}

/// `dat convert`'s input: a `.dat` file or a model directory, with the
/// config from `config` when given.
pub fn resolve_input(
    input: &Path,
    config: Option<&Path>,
) -> Result<(Qwen3Config, WeightsSource, PathBuf)> {
    let (mut cfg, weights) = match (input.is_file(), config) {
        // A .dat with an explicit config need not have one beside it.
        (true, Some(_)) => (None, WeightsSource::Dat(input.to_path_buf())),
        _ => {
            let (cfg, w) = trainer::resolve_model_dir(input)
                .with_context(|| format!("resolving {}", input.display()))?;
            (Some(cfg), w)
        }
    };
    if let Some(c) = config {
        cfg = Some(Qwen3Config::from_file(c).with_context(|| format!("--config {}", c.display()))?);
    }
    let files_dir = match input.is_dir() {
        true => input.to_path_buf(),
        false => input
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from(".")),
    };
    Ok((cfg.expect("set above"), weights, files_dir))
}
