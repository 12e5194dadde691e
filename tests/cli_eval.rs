//! `eval` as a user runs it (issue 12): held-out loss of a model directory
//! on plain text, one JSON line at the end, the device picked as everywhere,
//! bad paths named.

mod common;

use std::process::Command;

use common::{example, run, text, tiny_config, tiny_model_dir};

fn eval_cmd(model: &std::path::Path, data: &std::path::Path) -> Command {
    let mut cmd = Command::new(example("eval"));
    cmd.arg("--model-dir")
        .arg(model)
        .arg("--data")
        .arg(data)
        .args(["--seq-len", "16", "--no-progress"]);
    cmd
}

#[test]
fn text_loss_ends_with_one_json_line_and_the_nvfp4_head_changes_it() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model_dir(&dir.path().join("m"), &tiny_config(|_| {}));
    let data = dir.path().join("val.txt");
    std::fs::write(
        &data,
        "Call me Ishmael. Some years ago, never mind how long.\n".repeat(8),
    )
    .unwrap();
    let json = |extra: &[&str]| -> serde_json::Value {
        let out = run(eval_cmd(&model, &data).args(extra));
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{stderr}");
        let last = stdout.lines().last().unwrap();
        serde_json::from_str(last).unwrap_or_else(|e| panic!("{e}: {last}"))
    };
    let dense = json(&[]);
    let loss = dense["mean_loss"].as_f64().unwrap();
    let ppl = dense["perplexity"].as_f64().unwrap();
    assert!(loss.is_finite() && loss > 0.0, "{dense}");
    assert!((ppl - loss.exp()).abs() < 1e-6 * ppl, "{dense}");
    assert!(dense["tokens"].as_u64().unwrap() > 100, "{dense}");
    assert!(dense["tokens_per_s"].as_f64().unwrap() > 0.0, "{dense}");
    // Deterministic, and the NVFP4 head is a different (rounded) model.
    assert_eq!(json(&[])["mean_loss"], dense["mean_loss"]);
    let head = json(&["--nvfp4-head"]);
    assert_ne!(head["mean_loss"], dense["mean_loss"]);
    assert_eq!(head["tokens"], dense["tokens"]);
}

#[test]
fn a_missing_model_or_data_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model_dir(&dir.path().join("m"), &tiny_config(|_| {}));
    let missing = dir.path().join("nope.txt");
    let out = run(&mut eval_cmd(&model, &missing));
    assert!(!out.status.success());
    assert!(text(&out).1.contains("nope.txt"), "{}", text(&out).1);
    let out = run(&mut eval_cmd(&dir.path().join("no-model"), &missing));
    assert!(!out.status.success());
    assert!(text(&out).1.contains("no-model"), "{}", text(&out).1);
}
