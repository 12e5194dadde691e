//! What the command-line tests share: the example binaries (built on first
//! use, a no-op when `cargo test` has built them already) and a tiny model
//! directory (the embedded default run's small Qwen3: real vocabulary, hidden
//! size 64, two layers), so the tests run the tools as a user would, in seconds.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;

use qwen3_model::Qwen3Config;

/// Path of example `name`, built with the profile of this test binary.
pub fn example(name: &str) -> PathBuf {
    static BUILT: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/<test binary>
    let profile_dir = exe.parent().unwrap().parent().unwrap().to_path_buf();
    let mut built = BUILT.lock().unwrap_or_else(|p| p.into_inner());
    if !built.iter().any(|b| b == name) {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--quiet", "--example", name])
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        if profile_dir.ends_with("release") {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("running cargo build");
        assert!(status.success(), "cargo build --example {name} failed");
        built.push(name.to_string());
    }
    profile_dir.join("examples").join(name)
}

/// Runs `cmd` and returns its output, echoing stderr and stdout for a failing test's log.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("starting the example");
    eprintln!(
        "$ {:?}\n--- status {:?}\n--- stdout\n{}--- stderr\n{}",
        cmd,
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// stdout and stderr as text.
pub fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The tiny model's configuration, with `edit` applied.
pub fn tiny_config(edit: impl FnOnce(&mut Qwen3Config)) -> Qwen3Config {
    let mut cfg = trainer::default_model_config().unwrap();
    edit(&mut cfg);
    cfg
}

/// A model directory: `model.dat` (synthetic NVFP4 weights) and `config.json`,
/// no tokenizer files (the tools fall back to the bundled Qwen3 tokenizer).
pub fn tiny_model_dir(dir: &Path, cfg: &Qwen3Config) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    trainer::write_default_base(cfg, &dir.join("model.dat")).unwrap();
    trainer::write_atomic(&dir.join("config.json"), cfg.to_json_string().as_bytes()).unwrap();
    dir.to_path_buf()
}

/// A model directory whose `config.json` claims a billion layers over the
/// tiny model's weights: the tools must refuse it from the config alone.
pub fn billion_layer_model_dir(dir: &Path) -> PathBuf {
    let dir = tiny_model_dir(dir, &tiny_config(|_| {}));
    let huge = tiny_config(|c| c.num_hidden_layers = 1_000_000_000);
    trainer::write_atomic(&dir.join("config.json"), huge.to_json_string().as_bytes()).unwrap();
    dir
}

/// A small GSM8K-style training file: `{"prompt", "response"}` per line,
/// starting with a UTF-8 byte-order mark as some editors write it.
pub fn pairs_jsonl(dir: &Path) -> PathBuf {
    let p = dir.join("pairs.jsonl");
    let lines: Vec<String> = (1..=6)
        .map(|i| {
            format!(
                "{{\"prompt\": \"What is {i} + {i}?\", \"response\": \"{}\", \"response_raw\": \"x\"}}",
                2 * i
            )
        })
        .collect();
    std::fs::write(&p, format!("\u{feff}{}\n", lines.join("\n"))).unwrap();
    p
}

/// `train` with the flags every test wants (short, quiet, CPU).
pub fn train_cmd(model: &Path, data: &Path) -> Command {
    let mut cmd = Command::new(example("train"));
    cmd.arg("--model-dir")
        .arg(model)
        .arg("--data")
        .arg(data)
        .args(["--steps", "2", "--batch-size", "2", "--seq-len", "48"])
        .args(["--eval-samples", "0", "--no-progress"]);
    cmd
}
