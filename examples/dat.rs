//! `dat`: inspect `.dat` weight files and convert models to and from them.
//!
//! ```text
//! cargo run --release --example dat -- inspect model.dat
//! cargo run --release --example dat -- convert --from-hf models/Qwen3-4B-Instruct-2507 --to qwen3-4b.dat
//! cargo run --release --example dat -- convert qwen3-4b.dat --config config.json --to-format compressed-tensors --out qwen3-4b-nvfp4/
//! cargo run --release --example dat -- to-hf qwen3-4b.dat --out exported/ --dtype bf16
//! ```
//!
//! The work is done by `dat_format` (reader, writer) and `qwen3_model`
//! (`convert_hf_dir_to_dat`, `export_dat_to_hf_dir_with`); this file only
//! parses flags and prints.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use dat_format::{DatFile, ElemType};
use nvfp4_kernels::ScaleMode;
use qwen3_model::{convert_hf_dir_to_dat, export_dat_to_hf_dir_with, DatToHfOptions};
use qwen3_nvfp4::{
    convert_model, init_tracing, parse_device, resolve_input, run_main, ModelFormat,
};

/// Inspect `.dat` weight files; convert Hugging Face safetensors models to NVFP4 `.dat` and back.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print every entry (key, elem type, shape, bytes), the totals and the NVFP4 pair count.
    Inspect {
        /// The `.dat` file.
        file: PathBuf,
        /// Print only the totals, not one line per entry.
        #[arg(long)]
        summary: bool,
    },
    /// Convert a model between formats.
    ///
    /// `convert INPUT --to-format FORMAT --out DIR`: INPUT is a `.dat` file or a model
    /// directory (`.dat`, bf16/f16/f32 safetensors, compressed-tensors or ModelOpt NVFP4);
    /// NVFP4 codes and scales carry over without re-quantizing. `--from-hf DIR --to FILE`
    /// quantizes a bf16/f16/f32 safetensors directory to `.dat` (`--two-level` adds global scales).
    Convert {
        /// A `.dat` file or a model directory.
        #[arg(conflicts_with = "from_hf")]
        input: Option<PathBuf>,
        /// Output format (with INPUT).
        #[arg(long, value_enum, requires = "out")]
        to_format: Option<ModelFormat>,
        /// Output directory (for `dat`: the `.dat` file), written to a temporary name, then renamed into place.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// config.json of INPUT (default: the one in INPUT or beside it).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Device to load on: cpu, cuda, cuda:N.
        #[arg(long, default_value = "cpu")]
        device: String,
        /// Model directory with model.safetensors or model.safetensors.index.json and its shards.
        #[arg(long, value_name = "DIR", requires = "to")]
        from_hf: Option<PathBuf>,
        /// Output `.dat` file of `--from-hf`.
        #[arg(long, value_name = "FILE")]
        to: Option<PathBuf>,
        /// With --from-hf: add a per-tensor global scale (amax / (6 * 448)) to every quantized weight; not readable by the original tools.
        #[arg(long)]
        two_level: bool,
    },
    /// Dequantize a `.dat` file into a Hugging Face safetensors directory (+ config.json).
    ToHf {
        /// The `.dat` file.
        file: PathBuf,
        /// Output directory (created if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Element type of float and dequantized tensors.
        #[arg(long, value_enum, default_value_t = Dtype::Bf16)]
        dtype: Dtype,
        /// config.json to copy (default: the one beside FILE, if any).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
}

/// Export dtypes.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum Dtype {
    Bf16,
    F16,
    F32,
}

impl From<Dtype> for ElemType {
    fn from(d: Dtype) -> Self {
        match d {
            Dtype::Bf16 => ElemType::BF16,
            Dtype::F16 => ElemType::F16,
            Dtype::F32 => ElemType::F32,
        }
    }
}

fn main() -> ExitCode {
    init_tracing("info");
    let args = Args::parse();
    run_main(|| run(args.command))
}

fn run(command: Command) -> Result<()> {
    match command {
        Command::Inspect { file, summary } => inspect(&file, summary),
        Command::Convert {
            input: Some(input),
            to_format,
            out,
            config,
            device,
            ..
        } => {
            let (Some(format), Some(out)) = (to_format, out) else {
                bail!(
                    "convert {}: pass --to-format FORMAT and --out DIR",
                    input.display()
                );
            };
            let (cfg, weights, files_dir) = resolve_input(&input, config.as_deref())?;
            let device = parse_device(&device)?;
            let r = convert_model(&cfg, &weights, &files_dir, format, &out, device)
                .with_context(|| format!("converting {} to {}", input.display(), out.display()))?;
            r.files
                .iter()
                .for_each(|f| println!("wrote {}", f.display()));
            println!(
                "{}: {} in {} files; load {:.1} s, write {:.1} s",
                out.display(),
                human(r.bytes),
                r.files.len(),
                r.load_s,
                r.write_s
            );
            Ok(())
        }
        Command::Convert {
            from_hf: Some(from_hf),
            to: Some(to),
            two_level,
            ..
        } => {
            if let Some(layout) = qwen3_model::detect_packed_layout(&from_hf)? {
                bail!(
                    "{} is already NVFP4 ({layout}); convert it without re-quantizing: convert {} --to-format dat --out FILE",
                    from_hf.display(),
                    from_hf.display()
                );
            }
            let mode = if two_level {
                ScaleMode::TwoLevel
            } else {
                ScaleMode::Single
            };
            let start = Instant::now();
            let r = convert_hf_dir_to_dat(&from_hf, &to, mode)
                .with_context(|| format!("converting {} to {}", from_hf.display(), to.display()))?;
            println!(
                "{}: {} tensors ({} quantized, {} raw) -> {} entries, {} -> {} in {:.1} s",
                to.display(),
                r.source_tensors,
                r.quantized,
                r.raw,
                r.entries,
                human(r.source_bytes),
                human(r.output_bytes),
                start.elapsed().as_secs_f64()
            );
            Ok(())
        }
        Command::Convert { .. } => {
            bail!("convert: pass INPUT --to-format FORMAT --out DIR (or --from-hf DIR --to FILE)")
        }
        Command::ToHf {
            file,
            out,
            dtype,
            config,
        } => {
            let opts = DatToHfOptions {
                dtype: dtype.into(),
                config,
                ..DatToHfOptions::default()
            };
            let files = export_dat_to_hf_dir_with(&file, &out, &opts)
                .with_context(|| format!("exporting {} to {}", file.display(), out.display()))?;
            files.iter().for_each(|f| println!("wrote {}", f.display()));
            Ok(())
        }
    }
}

fn inspect(path: &Path, summary: bool) -> Result<()> {
    let start = Instant::now();
    let dat = DatFile::open(path).with_context(|| format!("inspecting {}", path.display()))?;
    let indexed = start.elapsed();
    let rows: Vec<[String; 4]> = dat
        .entries()
        .iter()
        .map(|e| {
            [
                e.key.clone(),
                e.elem.to_string(),
                format!("{:?}", e.shape),
                e.nbytes.to_string(),
            ]
        })
        .collect();
    if !summary {
        let header = ["key", "elem type", "shape", "bytes"].map(String::from);
        let widths: Vec<usize> = (0..4)
            .map(|c| {
                rows.iter()
                    .chain([&header])
                    .map(|r| r[c].len())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        for row in std::iter::once(&header).chain(&rows) {
            println!(
                "{:<w0$}  {:<w1$}  {:<w2$}  {:>w3$}",
                row[0],
                row[1],
                row[2],
                row[3],
                w0 = widths[0],
                w1 = widths[1],
                w2 = widths[2],
                w3 = widths[3]
            );
        }
        println!();
    }
    let pairs = dat.nvfp4_pairs();
    let quantized_params: usize = pairs.iter().map(|p| p.rows * p.cols).sum();
    let raw_params: usize = dat
        .entries()
        .iter()
        .filter(|e| e.elem.is_float())
        .map(|e| e.numel())
        .sum();
    println!("entries:        {}", dat.entries().len());
    println!(
        "payload:        {} ({} bytes)",
        human(dat.payload_bytes()),
        dat.payload_bytes()
    );
    println!(
        "file:           {} ({} bytes)",
        human(dat.file_len()),
        dat.file_len()
    );
    println!(
        "NVFP4 pairs:    {} ({} parameters)",
        pairs.len(),
        quantized_params
    );
    println!("raw float:      {raw_params} parameters");
    println!("indexed in:     {:.2} ms", indexed.as_secs_f64() * 1e3);
    Ok(())
}

/// Bytes in binary units, for people.
fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}
