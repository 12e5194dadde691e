//! `run2` as a user runs it (issue 18): the chat REPL (Ctrl-C stops a reply,
//! not the session; non-UTF-8 input and a failed turn are reported and the
//! session goes on; `--raw --chat` is refused), `--max-tokens` against the
//! context, memory refused from the estimate, sampling flags that do nothing
//! at temperature 0, ids printed without a tokenizer, errors printed once.

mod common;

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{billion_layer_model_dir, example, run, text, tiny_config, tiny_model_dir};

fn run2(model: &std::path::Path) -> Command {
    let mut cmd = Command::new(example("run2"));
    cmd.arg("--model-dir").arg(model);
    cmd
}

#[test]
fn raw_with_chat_is_an_error_not_ignored() {
    let out = run(Command::new(example("run2")).args(["--chat", "--raw"]));
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "a usage error");
    assert!(stderr.contains("--raw"), "{stderr}");
}

#[test]
fn a_failed_turn_or_a_non_utf8_line_is_reported_and_the_chat_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model_dir(dir.path(), &tiny_config(|c| c.max_position_embeddings = 64));
    let mut child = run2(&model)
        .args(["--chat", "--max-tokens", "4"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let long = "tell me about it ".repeat(40);
    let mut input = b"Hi\n\xff\xfe not text\n".to_vec();
    input.extend_from_slice(format!("{long}\nHello again\n").as_bytes());
    child.stdin.take().unwrap().write_all(&input).unwrap();
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr) = text(&out);
    eprintln!("stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        out.status.success(),
        "the session ends at EOF with status 0"
    );
    assert!(stderr.contains("not UTF-8"), "{stderr}");
    assert!(stderr.contains("the model's context holds 64"), "{stderr}");
    assert_eq!(
        stderr.matches("prefill:").count(),
        2,
        "the turns before and after the failures both ran: {stderr}"
    );
}

#[test]
fn ctrl_c_stops_the_reply_and_not_the_session() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model_dir(
        dir.path(),
        &tiny_config(|c| c.max_position_embeddings = 8192),
    );
    let mut child = run2(&model)
        .args(["--chat", "--no-stop", "--max-tokens", "8000"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"Hi\n").unwrap();
    stdin.flush().unwrap();
    // Wait for the reply to stream, then interrupt it.
    let mut stdout = child.stdout.take().unwrap();
    let mut seen = Vec::new();
    let start = Instant::now();
    let mut buf = [0u8; 256];
    while !String::from_utf8_lossy(&seen).contains("assistant: ") || seen.len() < 40 {
        let n = stdout.read(&mut buf).unwrap();
        assert!(
            n > 0,
            "run2 ended early: {}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buf[..n]);
        assert!(start.elapsed() < Duration::from_secs(60));
    }
    // SAFETY: signals our own child.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    stdin.write_all(b"/exit\n").unwrap();
    drop(stdin);
    let mut rest = Vec::new();
    stdout.read_to_end(&mut rest).unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let status = child.wait().unwrap();
    eprintln!("stderr:\n{stderr}");
    assert!(status.success(), "{status:?}");
    assert!(stderr.contains("(reply stopped by Ctrl-C)"), "{stderr}");
    assert!(
        stderr.contains("finish: Callback"),
        "the reply ended at the interrupt, not at --max-tokens: {stderr}"
    );
}

#[test]
fn max_tokens_beyond_the_context_memory_and_useless_sampling_flags() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model_dir(&dir.path().join("m"), &tiny_config(|_| {}));
    let out = run(run2(&model).args(["--prompt", "Hi", "--max-tokens", "5000"]));
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains("--max-tokens 5000: the model's context holds 512"),
        "{stderr}"
    );

    let out = run(run2(&model).args(["--prompt", "Hi", "--max-tokens", "2", "--top-p", "0.9"]));
    let (_, stderr) = text(&out);
    assert!(out.status.success());
    assert!(
        stderr.contains("warning: --top-p has no effect at --temp 0"),
        "{stderr}"
    );

    let huge = billion_layer_model_dir(&dir.path().join("huge"));
    let out = run(run2(&huge).args(["--prompt", "Hi"]));
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains("inference needs at least"), "{stderr}");
}

#[test]
fn prompt_ids_without_a_tokenizer_print_the_generated_ids() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model_dir(dir.path(), &tiny_config(|_| {}));
    let out = run(run2(&model).args([
        "--prompt-ids",
        "9707,11,1879",
        "--max-tokens",
        "3",
        "--no-stop",
    ]));
    let (stdout, _) = text(&out);
    assert!(out.status.success());
    let ids: Vec<u32> = stdout
        .trim()
        .split(' ')
        .map(|s| s.parse().unwrap())
        .collect();
    assert_eq!(ids.len(), 3, "{stdout}");
    assert!(ids.iter().all(|&id| id < 151936));
}

#[test]
fn errors_print_once_without_a_backtrace() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(Command::new(example("run2"))
        .arg("--model-dir")
        .arg(dir.path().join("nowhere"))
        .args(["--prompt", "Hi"])
        .env("RUST_BACKTRACE", "1"));
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stderr.matches("error:").count(), 1, "{stderr}");
    assert_eq!(stderr.matches("nowhere").count(), 1, "{stderr}");
    assert!(!stderr.contains("backtrace"), "{stderr}");
}

/// Issue 11: `run2 --model-dir` opens a Hugging Face safetensors directory
/// (quantized on load) and gives the same greedy ids as the `.dat` converted
/// from that directory (the same single-level quantization, done ahead).
#[test]
fn a_safetensors_directory_decodes_like_the_dat_converted_from_it() {
    let dir = tempfile::tempdir().unwrap();
    let dat_dir = tiny_model_dir(&dir.path().join("dat"), &tiny_config(|_| {}));
    let hf = dir.path().join("hf");
    qwen3_model::export_dat_to_hf_dir_with(
        &dat_dir.join("model.dat"),
        &hf,
        &qwen3_model::DatToHfOptions::default(),
    )
    .unwrap();
    let converted = dir.path().join("converted");
    std::fs::create_dir_all(&converted).unwrap();
    qwen3_model::convert_hf_dir_to_dat(
        &hf,
        &converted.join("model.dat"),
        nvfp4_kernels::ScaleMode::Single,
    )
    .unwrap();
    std::fs::copy(hf.join("config.json"), converted.join("config.json")).unwrap();
    let greedy = |model: &std::path::Path| {
        let out = run(run2(model).args([
            "--prompt-ids",
            "9707,11,1879",
            "--max-tokens",
            "6",
            "--no-stop",
        ]));
        assert!(out.status.success(), "{}", text(&out).1);
        text(&out).0.trim().to_string()
    };
    let from_hf = greedy(&hf);
    assert_eq!(from_hf.split(' ').count(), 6, "{from_hf}");
    assert_eq!(from_hf, greedy(&converted));
}

/// `--nvfp4-head` runs a tied model with a packed head, and refuses an untied one by name.
#[test]
fn nvfp4_head_runs_a_tied_model_and_names_an_untied_one() {
    let dir = tempfile::tempdir().unwrap();
    for (tied, ok) in [(true, true), (false, false)] {
        let model = tiny_model_dir(
            &dir.path().join(format!("m{tied}")),
            &tiny_config(|c| c.tie_word_embeddings = tied),
        );
        let out = run(Command::new(example("run2"))
            .arg("--model-dir")
            .arg(&model)
            .args(["--nvfp4-head", "--prompt-ids", "1,2,3", "--max-tokens", "3"])
            .arg("--print-ids"));
        let (stdout, stderr) = text(&out);
        assert_eq!(out.status.success(), ok, "tied={tied}: {stderr}");
        if ok {
            assert!(stdout.contains("generated_ids"), "{stdout}");
        } else {
            assert!(
                stderr.contains("--nvfp4-head") && stderr.contains("lm_head"),
                "{stderr}"
            );
        }
    }
}
