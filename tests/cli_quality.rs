//! The quality experiment's journal (issue 12) at toy size on the CPU: a run
//! stopped by `--budget-s` after its base continues with `--resume`, reloading
//! the base instead of pretraining again, running every arm once (QAD taught
//! by the saved control), and never duplicating a finished unit's lines; a
//! second run into the same `--out` without `--resume` is refused.

mod common;

use std::path::Path;
use std::process::Command;

use common::{example, run, text};

/// A few KB of text, different in each file.
fn write_text(path: &Path, seed: &str) {
    let words = [
        "the", "river", "ran", "past", "a", "quiet", "town", "where", "old", "men", "told",
        "stories", "of", "ships", "and", "storms", seed,
    ];
    let body: String = (0..900)
        .map(|i| words[(i * 7 + i / 5) % words.len()])
        .collect::<Vec<_>>()
        .join(" ");
    std::fs::write(path, body).unwrap();
}

fn quality(dir: &Path) -> Command {
    let mut cmd = Command::new(example("quality"));
    for (flag, name) in [("--train", "train"), ("--val", "val"), ("--ood", "ood")] {
        cmd.arg(flag).arg(dir.join(format!("{name}.txt")));
    }
    cmd.arg("--tokenizer-dir")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("crates/tokenizer-bridge/assets/qwen3"))
        .arg("--out")
        .arg(dir.join("out"))
        .args(["--device", "cpu", "--hidden", "32", "--layers", "2"])
        .args(["--intermediate", "64", "--heads", "2", "--kv-heads", "1"])
        .args(["--head-dim", "16", "--seq-len", "32", "--batch", "4"])
        .args([
            "--pretrain-steps",
            "3",
            "--val-every",
            "2",
            "--arm-steps",
            "2",
        ])
        .args([
            "--seeds", "1", "--ptq", "w4a16", "--qat", "w4a4", "--qad", "w4a16",
        ])
        .args(["--eval-tokens", "200", "--val-probe-tokens", "100"]);
    cmd
}

fn lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn a_budget_stop_resumes_without_repeating_a_unit() {
    let dir = tempfile::tempdir().unwrap();
    for (name, seed) in [("train", "alpha"), ("val", "beta"), ("ood", "gamma")] {
        write_text(&dir.path().join(format!("{name}.txt")), seed);
    }
    let out_dir = dir.path().join("out");
    // Budget 0: the base is always made, then the run stops before the first arm.
    let out = run(quality(dir.path()).args(["--budget-s", "0"]));
    assert!(out.status.success(), "{}", text(&out).1);
    let first = lines(&out_dir.join("results.jsonl"));
    assert!(first.iter().any(|v| v["stopped"] == "budget"));
    assert!(out_dir.join("base.safetensors").is_file());

    let out = run(quality(dir.path()).arg("--resume"));
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("base: reloaded"), "{stdout}");
    let all = lines(&out_dir.join("results.jsonl"));
    let done: Vec<&str> = all.iter().filter_map(|v| v["done"].as_str()).collect();
    assert_eq!(
        done,
        ["base", "control-s1", "qat-w4a4-s1", "qad-w4a16-s1"],
        "every unit once, in order"
    );
    assert!(all.iter().any(|v| v["complete"] == true));
    let qad = all
        .iter()
        .find(|v| v["model"] == "qad" && v["val_loss"].is_number())
        .expect("the QAD arm's evaluation");
    assert_eq!(qad["teacher"], "control");
    let pretrain_points = lines(&out_dir.join("curves.jsonl"))
        .iter()
        .filter(|v| v["run"] == "pretrain")
        .count();
    assert_eq!(pretrain_points, 3, "one curve point per pretraining step");

    let out = run(&mut quality(dir.path()));
    assert!(!out.status.success());
    assert!(text(&out).1.contains("--resume"), "{}", text(&out).1);
}
