//! Standard NVFP4 checkpoint layouts (compressed-tensors, ModelOpt):
//! exact round trips from `.dat`, a fixture written by the compressed-tensors
//! library itself, independent Python checks of our exports, and the errors
//! for configs and targets we cannot use.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{assert_close, cases, Case};
use dat_format::{DatFile, DatWriter};
use nvfp4_kernels::{dequantize_ref, quantize_ref, ScaleMode};
use qwen3_model::{
    export_model_dir, DirExportOptions, DirFormat, LoadOptions, PackedLayout, Qwen3Config,
    Qwen3Model, WeightRef,
};
use tch::{Device, Kind, Tensor};

const LAYOUTS: [PackedLayout; 2] = [PackedLayout::CompressedTensors, PackedLayout::ModelOpt];

fn cpu() -> LoadOptions {
    LoadOptions::new(Device::Cpu)
}

/// The parity case's `.dat` with every projection re-quantized two-level
/// (written as `<base>.qdata/.scale/.global_scale`), raw entries copied.
fn two_level_dat(case: &Case, path: &Path) -> DatFile {
    let src = case.dat();
    let count = src.entries().len() + src.nvfp4_pairs().len();
    let mut w = DatWriter::create(path, count).unwrap();
    for e in src.entries() {
        if e.key.ends_with(".scale") {
            continue;
        }
        let Some(base) = e.key.strip_suffix(".qdata") else {
            w.write_raw(&e.key, e.elem, &e.shape, src.bytes(e)).unwrap();
            continue;
        };
        let pair = src.nvfp4_pairs().iter().find(|p| p.base == base).unwrap();
        let q = src.pair(pair).unwrap();
        let x = dequantize_ref(&q);
        let q2 = quantize_ref(&x, q.rows, q.cols, ScaleMode::TwoLevel).unwrap();
        w.write_nvfp4(base, &q2.as_ref()).unwrap();
    }
    w.finish().unwrap();
    DatFile::open(path).unwrap()
}

fn export(model: &Qwen3Model, dir: &Path, layout: PackedLayout, shard: u64) -> Vec<String> {
    let mut opts = DirExportOptions::new(DirFormat::Packed(layout));
    opts.max_shard_bytes = shard;
    opts.files = vec![("tokenizer.json".into(), b"{\"version\": \"1.0\"}".to_vec())];
    export_model_dir(model, dir, &opts).unwrap()
}

fn reload(dir: &Path) -> Qwen3Model {
    let cfg = Qwen3Config::from_file(&dir.join("config.json")).unwrap();
    Qwen3Model::load_hf_dir(dir, &cfg, &cpu()).unwrap()
}

/// Every packed projection of `model` equals the `.dat` pair byte for byte,
/// global scale bits included; returns how many were two-level.
fn assert_packed_equal(what: &str, model: &Qwen3Model, dat: &DatFile) -> usize {
    let mut two_level = 0;
    let mut checked = 0;
    for (key, w) in model.named_weights() {
        let WeightRef::Packed(q) = w else { continue };
        let want = dat
            .nvfp4(key.strip_suffix(".weight").unwrap())
            .unwrap()
            .unwrap();
        let got = q.to_host();
        assert_eq!(got.qdata, want.qdata, "{what}: {key} codes");
        assert_eq!(got.scale, want.scale, "{what}: {key} scales");
        assert_eq!(
            got.global_scale.map(f32::to_bits),
            want.global_scale.map(f32::to_bits),
            "{what}: {key} global scale"
        );
        two_level += got.global_scale.is_some() as usize;
        checked += 1;
    }
    assert!(checked > 0, "{what}: no packed projection");
    two_level
}

#[test]
fn two_level_dat_round_trips_bit_identically_through_both_layouts() {
    for case in cases() {
        let tmp = tempfile::tempdir().unwrap();
        let dat = two_level_dat(&case, &tmp.path().join("two.dat"));
        let model = Qwen3Model::load_dat(&dat, &case.cfg, &cpu()).unwrap();
        for layout in LAYOUTS {
            let dir = tmp.path().join(format!("{layout}"));
            // Small shards: several files and an index.
            let files = export(&model, &dir, layout, 20_000);
            assert!(
                files.iter().any(|f| f == "model.safetensors.index.json"),
                "{files:?}"
            );
            for f in ["config.json", "generation_config.json", "tokenizer.json"] {
                assert!(dir.join(f).is_file(), "{layout}: {f} missing");
            }
            assert_eq!(
                dir.join("hf_quant_config.json").is_file(),
                layout == PackedLayout::ModelOpt
            );
            let back = reload(&dir);
            let n = assert_packed_equal(&format!("{} {layout}", case.name), &back, &dat);
            assert!(n > 0, "no two-level projection");
            let ids = Tensor::from_slice(&case.ids("prompt_a")).view([1, -1]);
            let want = tch::no_grad(|| model.forward(&ids, None)).unwrap();
            let got = tch::no_grad(|| back.forward(&ids, None)).unwrap();
            assert!(
                got.equal(&want),
                "{} {layout}: logits differ after the round trip",
                case.name
            );
        }
    }
}

#[test]
fn single_level_dat_exports_global_scale_one_and_reads_back_single_level() {
    let case = &cases()[0];
    let dat = case.dat();
    let model = case.model();
    let tmp = tempfile::tempdir().unwrap();
    for (layout, global) in [
        (PackedLayout::CompressedTensors, "weight_global_scale"),
        (PackedLayout::ModelOpt, "weight_scale_2"),
    ] {
        let dir = tmp.path().join(format!("{layout}"));
        export(&model, &dir, layout, u64::MAX);
        let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
        let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let scales: Vec<f32> = file
            .tensors()
            .into_iter()
            .filter(|(k, _)| k.ends_with(&format!(".{global}")))
            .map(|(_, t)| f32::from_le_bytes(t.data().try_into().unwrap()))
            .collect();
        assert!(
            !scales.is_empty() && scales.iter().all(|&s| s == 1.0),
            "{scales:?}"
        );
        assert_eq!(
            assert_packed_equal(&format!("{layout}"), &reload(&dir), &dat),
            0
        );
    }
}

/// The checkpoint the compressed-tensors library wrote (`model/`) and its
/// logits (`reference.safetensors`), from `scripts/gen_ct_fixture.py`.
fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/compressed_tensors")
}

#[test]
fn checkpoint_written_by_compressed_tensors_loads_with_its_logits() {
    let model = reload(&fixture_dir().join("model"));
    let reference: std::collections::HashMap<String, Tensor> =
        Tensor::read_safetensors(fixture_dir().join("reference.safetensors"))
            .unwrap()
            .into_iter()
            .collect();
    let ids = reference["prompt"].to_kind(Kind::Int64).view([1, -1]);
    let logits = tch::no_grad(|| model.forward(&ids, None)).unwrap();
    assert_close(
        "compressed-tensors fixture",
        &logits.squeeze_dim(0),
        &reference["logits"],
    );
    // Its per-tensor scales are genuinely two-level (the library's amax-based ones).
    let two_level = model
        .named_weights()
        .iter()
        .filter(|(_, w)| matches!(w, WeightRef::Packed(q) if q.global_scale().is_some()))
        .count();
    assert_eq!(two_level, 2 * 7);
}

/// Copies the fixture with one edit of its config.json text.
fn edited_fixture(tmp: &Path, from: &str, to: &str) -> PathBuf {
    let dir = tmp.join("edited");
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["model.safetensors", "config.json"] {
        std::fs::copy(fixture_dir().join("model").join(f), dir.join(f)).unwrap();
    }
    let text = std::fs::read_to_string(dir.join("config.json")).unwrap();
    let edited = text.replacen(from, to, 1);
    assert_ne!(text, edited, "edit {from:?} did not apply");
    std::fs::write(dir.join("config.json"), edited).unwrap();
    dir
}

#[test]
fn unsupported_quantization_configs_are_errors_naming_the_field() {
    let cases = [
        (
            "\"group_size\": 16",
            "\"group_size\": 32",
            "quantization_config.config_groups.group_0.weights.group_size",
        ),
        (
            "\"quant_method\": \"compressed-tensors\"",
            "\"quant_method\": \"awq\"",
            "quantization_config.quant_method",
        ),
        (
            "\"format\": \"nvfp4-pack-quantized\",\n    \"global",
            "\"format\": \"float-quantized\",\n    \"global",
            "quantization_config.format",
        ),
    ];
    for (from, to, field) in cases {
        let tmp = tempfile::tempdir().unwrap();
        let dir = edited_fixture(tmp.path(), from, to);
        let cfg = Qwen3Config::from_file(&dir.join("config.json")).unwrap();
        let err = Qwen3Model::load_hf_dir(&dir, &cfg, &cpu())
            .unwrap_err()
            .to_string();
        assert!(err.contains(&format!("`{field}`")), "{field}: {err}");
    }
}

#[test]
fn export_refuses_a_non_empty_target_and_leaves_it_alone() {
    let model = cases()[0].model();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("out");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("notes.txt"), "mine").unwrap();
    let opts = DirExportOptions::new(DirFormat::Packed(PackedLayout::CompressedTensors));
    let err = export_model_dir(&model, &dir, &opts)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("not empty") && err.contains("notes.txt"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("notes.txt")).unwrap(),
        "mine"
    );
    // Nothing staged is left beside it.
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 1);
}

/// `.venv/bin/python` of the workspace (installed by scripts/setup.sh).
fn venv_python() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let py = root.join(".venv/bin/python");
    assert!(
        py.exists(),
        "{} missing: run ./scripts/setup.sh",
        py.display()
    );
    py
}

#[test]
fn python_libraries_read_our_exports_with_equal_logits() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let tmp = tempfile::tempdir().unwrap();
    let mut checks = Vec::new();
    for case in cases() {
        let dat = two_level_dat(&case, &tmp.path().join(format!("{}.dat", case.name)));
        let model = Qwen3Model::load_dat(&dat, &case.cfg, &cpu()).unwrap();
        let prompt = Tensor::from_slice(&case.ids("prompt_b"));
        let logits = tch::no_grad(|| model.forward(&prompt.view([1, -1]), None))
            .unwrap()
            .squeeze_dim(0);
        let logits_file = tmp.path().join(format!("{}.logits.safetensors", case.name));
        Tensor::write_safetensors(&[("prompt", &prompt), ("logits", &logits)], &logits_file)
            .unwrap();
        for layout in LAYOUTS {
            let dir = tmp.path().join(format!("{}-{layout}", case.name));
            export(&model, &dir, layout, u64::MAX);
            checks.push((layout.to_string(), dir, logits_file.clone()));
        }
    }
    // One interpreter for every check: importing the libraries dominates.
    let mut cmd = Command::new(venv_python());
    cmd.arg(root.join("scripts/check_nvfp4_export.py"));
    for (format, dir, logits) in &checks {
        cmd.arg("--check").arg(format).arg(dir).arg(logits);
    }
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{}", text.trim());
    assert!(out.status.success(), "{text}");
    assert_eq!(text.matches("-> OK").count(), checks.len(), "{text}");
}

/// Full-size timing for docs/PERF.md: a random Qwen3-4B on the GPU exported
/// to and loaded from both layouts; prints time and size.
#[test]
#[ignore = "needs CUDA"]
fn qwen3_4b_export_and_import_on_gpu() {
    assert!(tch::Cuda::is_available(), "needs CUDA");
    let cfg = Qwen3Config::qwen3_4b();
    let opts = LoadOptions::new(Device::Cuda(0));
    let model = Qwen3Model::random(&cfg, &opts, 1).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    for layout in LAYOUTS {
        let dir = tmp.path().join(format!("{layout}"));
        let start = std::time::Instant::now();
        let files = export_model_dir(
            &model,
            &dir,
            &DirExportOptions::new(DirFormat::Packed(layout)),
        )
        .unwrap();
        let export_s = start.elapsed().as_secs_f64();
        let bytes: u64 = files
            .iter()
            .map(|f| std::fs::metadata(dir.join(f)).unwrap().len())
            .sum();
        let start = std::time::Instant::now();
        let back = Qwen3Model::load_hf_dir(&dir, &cfg, &opts).unwrap();
        tch::Cuda::synchronize(0);
        let load_s = start.elapsed().as_secs_f64();
        println!(
            "qwen3-4b {layout}: export {export_s:.1} s, {:.2} GB in {} files; load {load_s:.1} s",
            bytes as f64 / 1e9,
            files.len()
        );
        let ids = Tensor::from_slice(&[9707i64, 11, 1879])
            .view([1, -1])
            .to_device(Device::Cuda(0));
        let a = tch::no_grad(|| model.forward(&ids, None)).unwrap();
        let b = tch::no_grad(|| back.forward(&ids, None)).unwrap();
        assert!(a.equal(&b), "{layout}: logits differ after the round trip");
    }
}
