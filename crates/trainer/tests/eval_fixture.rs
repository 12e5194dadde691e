//! `evaluate_loss` against transformers' Qwen3ForCausalLM loss on the same
//! dequantized weights (fixture made by scripts/gen_eval_fixture.py from the
//! tied parity model): f32 CPU, 1e-5 relative.

use std::path::PathBuf;

use qwen3_model::{LoadOptions, Qwen3Config, Qwen3Model};
use tch::Device;
use trainer::{evaluate_loss, text_windows};

#[test]
fn eval_loss_matches_transformers() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let reference: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("tests/fixtures/eval/reference.json")).unwrap(),
    )
    .unwrap();
    let case = root
        .join("../qwen3-model/tests/fixtures/parity")
        .join(reference["case"].as_str().unwrap());
    let cfg = Qwen3Config::from_file(&case.join("config.json")).unwrap();
    let dat = dat_format::DatFile::open(case.join("model.dat")).unwrap();
    let model = Qwen3Model::load_dat(&dat, &cfg, &LoadOptions::new(Device::Cpu)).unwrap();
    let ids: Vec<u32> = reference["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    let seq_len = reference["seq_len"].as_u64().unwrap() as usize;
    let data = text_windows(&case, &ids, seq_len).unwrap();
    // Batches of 2 windows: the short last window is padded in its batch.
    let r = evaluate_loss(&model, &data, 2, &mut |_, _| {}).unwrap();
    let want = reference["mean_loss"].as_f64().unwrap();
    assert_eq!(r.tokens, reference["tokens"].as_u64().unwrap());
    let rel = (r.mean_loss - want).abs() / want.abs();
    println!(
        "mean loss {} vs transformers {want}: relative {rel:.2e}",
        r.mean_loss
    );
    assert!(rel <= 1e-5, "relative difference {rel:.2e}");
}
