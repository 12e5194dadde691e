//! `train` as a user runs it (issue 18): device choice, `--help` defaults,
//! run directories and their lock, outputs checked before the first step, an
//! export that is a model directory, resource guards, resume past the end
//! and a metrics log without repeated steps, errors printed once.

mod common;

use std::process::Command;

use common::{
    billion_layer_model_dir, example, pairs_jsonl, run, text, tiny_config, tiny_model_dir,
    train_cmd,
};

#[test]
fn help_says_what_each_tool_is_for_and_shows_every_default() {
    let (help, _) = text(&run(Command::new(example("train")).arg("--help")));
    assert!(help.starts_with("Fine-tunes a Qwen3 model"), "{help}");
    for default in [
        "[default: 0.00001]", // --lr
        "[default: 8]",       // --batch-size
        "[default: 512]",     // --seq-len
        "[default: cosine]",  // --schedule
        "[default: 1]",       // --clip, --grad-accum
        "[default: 3]",       // --keep-last
        "[default: f32]",     // --master-dtype, --optim-state
    ] {
        assert!(help.contains(default), "--help lacks {default}:\n{help}");
    }
    // Every option's entry (its line and the lines up to the next option) names a default.
    let mut entries: Vec<String> = Vec::new();
    for line in help.lines() {
        if line.trim_start().starts_with('-') {
            entries.push(String::new());
        }
        if let Some(e) = entries.last_mut() {
            e.push_str(line);
            e.push('\n');
        }
    }
    let takes_value = |e: &&String| e.lines().next().unwrap().contains('<');
    let without: Vec<&String> = entries
        .iter()
        .filter(takes_value)
        .filter(|e| !e.contains("default"))
        .filter(|e| {
            ![
                "--model-dir",
                "--data",
                "--resume",
                "--export-hf",
                "--export ",
                "--system-prompt",
            ]
            .iter()
            .any(|f| e.trim_start().starts_with(f))
        })
        .collect();
    assert!(
        without.is_empty(),
        "options without a stated default: {without:#?}"
    );
    let (dat, _) = text(&run(Command::new(example("dat")).arg("--help")));
    assert!(dat.starts_with("Inspect `.dat` weight files"), "{dat}");
}

#[test]
fn a_run_gets_a_new_run_directory_picks_the_device_and_exports_a_model_directory() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model_dir(&dir.path().join("base"), &tiny_config(|_| {}));
    let data = pairs_jsonl(dir.path());
    let out = run(train_cmd(&model, &data).current_dir(dir.path()));
    let (stdout, stderr) = text(&out);
    assert!(out.status.success());
    let expected = if tch::Cuda::is_available() {
        "device: cuda:0 (CUDA is available)"
    } else {
        "device: cpu (no CUDA device available)"
    };
    assert!(stderr.contains(expected), "{stderr}");
    assert!(
        !stderr.contains('\u{1b}'),
        "no colour codes into a pipe: {stderr:?}"
    );
    assert!(stdout.contains("data: 6 examples"), "{stdout}");
    let runs: Vec<_> = std::fs::read_dir(dir.path().join("runs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(runs.len(), 1, "{runs:?}");
    let run_dir = &runs[0];
    let name = run_dir.file_name().unwrap().to_string_lossy().into_owned();
    assert!(name.starts_with("train-20"), "named by the time: {name}");
    let metrics = std::fs::read_to_string(run_dir.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 2);
    assert!(run_dir.join("loss.png").is_file());
    let export = run_dir.join("model");
    for f in [
        "model.dat",
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        assert!(export.join(f).is_file(), "{f} missing from the export");
    }
    // The export opens as a model directory.
    let out = run(Command::new(example("run2"))
        .arg("--model-dir")
        .arg(&export)
        .args(["--prompt", "What is 1 + 1?", "--max-tokens", "2"]));
    assert!(out.status.success());

    // A second run without --run-dir does not touch the first one's files.
    let out = run(train_cmd(&model, &data).current_dir(dir.path()));
    assert!(out.status.success());
    assert_eq!(
        std::fs::read_dir(dir.path().join("runs")).unwrap().count(),
        2
    );
    assert_eq!(
        std::fs::read_to_string(run_dir.join("metrics.jsonl")).unwrap(),
        metrics
    );
}

#[test]
fn a_second_writer_of_a_run_directory_is_refused_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model_dir(&dir.path().join("base"), &tiny_config(|_| {}));
    let data = pairs_jsonl(dir.path());
    let run_dir = dir.path().join("run");
    let held = trainer::RunDirLock::acquire(&run_dir).unwrap();
    let out = run(train_cmd(&model, &data).arg("--run-dir").arg(&run_dir));
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains("is in use by another run")
            && stderr.contains(&std::process::id().to_string()),
        "{stderr}"
    );
    assert!(!run_dir.join("metrics.jsonl").exists(), "nothing written");
    drop(held);
    assert!(run(train_cmd(&model, &data).arg("--run-dir").arg(&run_dir))
        .status
        .success());
}

#[test]
fn bad_outputs_and_impossible_sizes_are_refused_before_the_first_step() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model_dir(&dir.path().join("base"), &tiny_config(|_| {}));
    let data = pairs_jsonl(dir.path());
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            // A directory cannot be made below a file.
            vec![
                "--export-dat".into(),
                data.join("dir/m.dat").display().to_string(),
            ],
            "--export-dat",
        ),
        (vec!["--batch-size".into(), "100000".into()], "batch-size"),
        (vec!["--clip".into(), "nan".into()], "--clip"),
        (vec!["--clip=-1".into()], "--clip"),
    ];
    for (i, (flags, named)) in cases.iter().enumerate() {
        let run_dir = dir.path().join(format!("run{i}"));
        let out = run(train_cmd(&model, &data)
            .args(flags)
            .arg("--run-dir")
            .arg(&run_dir));
        let (stdout, stderr) = text(&out);
        assert!(!out.status.success(), "{flags:?}");
        assert!(stderr.contains(named), "{flags:?}: {stderr}");
        assert!(
            !stdout.contains("step "),
            "{flags:?} failed after training: {stdout}"
        );
        assert!(!run_dir.join("metrics.jsonl").exists());
    }
    // A billion layers: refused from the estimate, with the numbers, before any allocation.
    let huge = billion_layer_model_dir(&dir.path().join("huge"));
    // Its .dat holds 2 layers: the refusal must come before the weights are read.
    let out = run(train_cmd(&huge, &data)
        .arg("--run-dir")
        .arg(dir.path().join("runh")));
    let (_, stderr) = text(&out);
    assert!(
        stderr.contains("training needs at least") && stderr.contains("available"),
        "{stderr}"
    );
}

#[test]
fn resuming_past_the_end_says_so_and_a_resumed_log_has_each_step_once() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model_dir(&dir.path().join("base"), &tiny_config(|_| {}));
    let data = pairs_jsonl(dir.path());
    let run_dir = dir.path().join("run");
    let first = run(train_cmd(&model, &data)
        .args(["--save-every", "1"])
        .arg("--run-dir")
        .arg(&run_dir));
    assert!(first.status.success());
    let out = run(train_cmd(&model, &data)
        .args(["--resume", "latest"])
        .arg("--run-dir")
        .arg(&run_dir));
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains("is at step 2, the run ends at step 2: nothing to train"),
        "{stderr}"
    );
    // As if killed after step 2 was logged but before its checkpoint: resume from step 1.
    let step1 = run_dir.join("checkpoints").join("step-000001");
    assert!(step1.is_dir());
    let out = run(train_cmd(&model, &data)
        .arg("--resume")
        .arg(&step1)
        .args(["--steps", "3"])
        .arg("--run-dir")
        .arg(&run_dir));
    assert!(out.status.success());
    let steps: Vec<u64> = trainer::MetricsLog::read(&run_dir.join("metrics.jsonl"))
        .unwrap()
        .iter()
        .map(|m| m.step)
        .collect();
    assert_eq!(steps, [1, 2, 3]);
}

#[test]
fn errors_print_once_without_a_backtrace() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model_dir(&dir.path().join("base"), &tiny_config(|_| {}));
    let missing = dir.path().join("missing.jsonl");
    let out = run(train_cmd(&model, &missing).env("RUST_BACKTRACE", "1"));
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stderr.matches("error:").count(), 1, "{stderr}");
    assert_eq!(stderr.matches("missing.jsonl").count(), 1, "{stderr}");
    assert!(
        !stderr.contains("backtrace") && !stderr.contains("Caused by"),
        "{stderr}"
    );
}

#[test]
fn the_embedded_default_names_the_flags_it_does_not_take() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(Command::new(example("train"))
        .args(["--lr", "0.1", "--steps", "1"])
        .arg("--run-dir")
        .arg(dir.path().join("run")));
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1));
    // Only --lr is named: --steps and --run-dir apply to the default run.
    assert!(
        stderr.contains("error: --lr need(s) --model-dir"),
        "{stderr}"
    );
}

/// Issue 12's path on a model directory: plain text (packed windows, every
/// token a target) and distillation from the dense teacher, which is the
/// model itself unless --teacher names another of the same config.
#[test]
fn text_data_and_distillation_from_the_dense_teacher() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model_dir(&dir.path().join("base"), &tiny_config(|_| {}));
    let corpus = dir.path().join("books.txt");
    let line = "It was the best of times, it was the worst of times.\n";
    std::fs::write(&corpus, line.repeat(40)).unwrap();
    let run_dir = dir.path().join("run");
    let out = run(train_cmd(&model, &corpus)
        .args(["--text", "--distill", "--distill-alpha", "0.5"])
        .arg("--run-dir")
        .arg(&run_dir));
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.contains("distilling from the dense teacher"),
        "{stdout}"
    );
    assert!(stdout.contains("0.5 * KL + 0.5 * CE"), "{stdout}");
    assert!(run_dir.join("token-cache").read_dir().unwrap().count() == 1);
    let metrics = std::fs::read_to_string(run_dir.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 2, "{metrics}");

    // A teacher of another shape is refused before training, naming it.
    let other = tiny_model_dir(
        &dir.path().join("other"),
        &tiny_config(|c| c.num_hidden_layers += 1),
    );
    let out = run(train_cmd(&model, &corpus)
        .args(["--text", "--distill", "--teacher"])
        .arg(&other)
        .arg("--run-dir")
        .arg(dir.path().join("run2")));
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(
        stderr.contains("teacher") && stderr.contains("other"),
        "{stderr}"
    );
    // --teacher means nothing without --distill.
    let out = run(train_cmd(&model, &corpus).arg("--teacher").arg(&other));
    assert!(!out.status.success());
    assert!(text(&out).1.contains("--distill"), "{}", text(&out).1);
}

/// `--recipe` sets the QAT scheme: W4A4 rounds activations too, so its first
/// loss differs from the default W4A16; a bad recipe is named with the grammar.
#[test]
fn recipe_changes_the_scheme_and_a_bad_one_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model_dir(&dir.path().join("base"), &tiny_config(|_| {}));
    let data = pairs_jsonl(dir.path());
    let first_loss = |extra: &[&str], name: &str| -> f64 {
        let run_dir = dir.path().join(name);
        let out = run(train_cmd(&model, &data)
            .args(["--steps", "1"])
            .args(extra)
            .arg("--run-dir")
            .arg(&run_dir));
        assert!(out.status.success(), "{}", text(&out).1);
        let metrics = std::fs::read_to_string(run_dir.join("metrics.jsonl")).unwrap();
        let line: serde_json::Value =
            serde_json::from_str(metrics.lines().next().unwrap()).unwrap();
        line["loss"].as_f64().unwrap()
    };
    let w4a16 = first_loss(&[], "default");
    let w4a4 = first_loss(&["--recipe", "w4a4"], "w4a4");
    assert_ne!(w4a16, w4a4, "W4A4 rounds the activations");
    let out = run(train_cmd(&model, &data).args(["--recipe", "w4a8"]));
    assert!(!out.status.success());
    assert!(text(&out).1.contains("not a recipe"), "{}", text(&out).1);
}

/// Training never silently unties a tied model: the exported `.dat` has no
/// `lm_head` of its own, its config stays tied, and the reloaded model
/// computes its logits through the (trained) embedding.
#[test]
fn training_a_tied_model_exports_a_tied_model() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny_config(|c| c.tie_word_embeddings = true);
    let model = tiny_model_dir(&dir.path().join("base"), &cfg);
    let data = pairs_jsonl(dir.path());
    let run_dir = dir.path().join("run");
    let out = run(train_cmd(&model, &data).arg("--run-dir").arg(&run_dir));
    assert!(out.status.success(), "{}", text(&out).1);
    let export = run_dir.join("model");
    let dat = dat_format::DatFile::open(export.join("model.dat")).unwrap();
    let heads: Vec<_> = dat
        .entries()
        .iter()
        .filter(|e| e.key.starts_with("lm_head"))
        .map(|e| e.key.clone())
        .collect();
    assert!(heads.is_empty(), "a tied model gained {heads:?}");
    let config = std::fs::read_to_string(export.join("config.json")).unwrap();
    let config = qwen3_model::Qwen3Config::from_json_str(&config).unwrap();
    assert!(config.tie_word_embeddings, "the exported config was untied");
    let reloaded = qwen3_model::Qwen3Model::load(&export, &Default::default()).unwrap();
    assert!(reloaded.uses_tied_head());
}

/// Pretraining from scratch (issue 12): `--init-random` starts from Hugging
/// Face's random initialisation of a `config.json` (no weights there), so
/// the first loss is near ln(vocab), the loss of a uniform guess, and far
/// from that of the trained-looking synthetic weights; the dense baseline
/// (`--recipe bf16`) trains and exports a model directory. Without a
/// config.json, or distilling from a random model, it is refused by name.
#[test]
fn init_random_pretrains_from_a_config_alone() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny_config(|_| {});
    let cfg_dir = dir.path().join("cfg");
    std::fs::create_dir_all(&cfg_dir).unwrap();
    std::fs::write(cfg_dir.join("config.json"), cfg.to_json_string()).unwrap();
    let corpus = dir.path().join("books.txt");
    let line = "It was the best of times, it was the worst of times.\n";
    std::fs::write(&corpus, line.repeat(40)).unwrap();
    let run_dir = dir.path().join("run");
    let out = run(train_cmd(&cfg_dir, &corpus)
        .args(["--text", "--init-random", "--recipe", "bf16"])
        .arg("--run-dir")
        .arg(&run_dir));
    let (_, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let metrics = std::fs::read_to_string(run_dir.join("metrics.jsonl")).unwrap();
    let first: serde_json::Value = serde_json::from_str(metrics.lines().next().unwrap()).unwrap();
    let loss = first["loss"].as_f64().unwrap();
    let uniform = (cfg.vocab_size as f64).ln();
    assert!(
        (loss - uniform).abs() < 0.25,
        "first loss {loss} of a random init, uniform guess {uniform}"
    );
    assert!(run_dir.join("model").join("model.dat").is_file());
    assert!(run_dir.join("model").join("config.json").is_file());

    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let out = run(train_cmd(&empty, &corpus).args(["--text", "--init-random"]));
    assert!(!out.status.success());
    assert!(text(&out).1.contains("no config.json"), "{}", text(&out).1);
    let out = run(train_cmd(&cfg_dir, &corpus).args(["--text", "--init-random", "--distill"]));
    assert!(!out.status.success());
    assert!(text(&out).1.contains("--teacher"), "{}", text(&out).1);
}

/// `--activation-checkpointing every-K` recomputes one block in K (the run
/// says so) and trains; K = 0 or a word that is no policy is refused, naming
/// the flag and the accepted spellings.
#[test]
fn checkpointing_every_kth_block_is_a_policy() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model_dir(&dir.path().join("base"), &tiny_config(|_| {}));
    let data = pairs_jsonl(dir.path());
    let out = run(train_cmd(&model, &data)
        .args(["--activation-checkpointing", "every-2"])
        .arg("--run-dir")
        .arg(dir.path().join("run")));
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.contains("activation checkpointing 1 block in 2 (every-2)"),
        "{stdout}"
    );
    for bad in ["every-0", "sometimes"] {
        let out = run(train_cmd(&model, &data).args(["--activation-checkpointing", bad]));
        assert!(!out.status.success());
        let (_, stderr) = text(&out);
        assert!(
            stderr.contains("activation-checkpointing") && stderr.contains("every-K"),
            "{stderr}"
        );
    }
}

/// The training path's switches (`NVFP4_AUTOGRAD_BLOCKS`: the autograd
/// reference path; `NVFP4_STEP_PHASES`: phase timings) take 0 or 1; another
/// value stops the run before any update, naming the variable. `1`
/// trains.
#[test]
fn training_switches_take_0_or_1_and_a_bad_value_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model_dir(&dir.path().join("base"), &tiny_config(|_| {}));
    let data = pairs_jsonl(dir.path());
    for var in ["NVFP4_AUTOGRAD_BLOCKS", "NVFP4_STEP_PHASES"] {
        let out = run(train_cmd(&model, &data).env(var, "yes"));
        assert!(!out.status.success(), "{var}=yes was accepted");
        let (_, stderr) = text(&out);
        assert!(stderr.contains(var) && stderr.contains("yes"), "{stderr}");
        let out = run(train_cmd(&model, &data)
            .env(var, "1")
            .arg("--run-dir")
            .arg(dir.path().join(format!("run-{var}"))));
        assert!(out.status.success(), "{var}=1: {}", text(&out).1);
    }
}
