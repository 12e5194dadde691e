//! `Qwen3Config`: both config.json layouts, and one specific error per
//! unsupported option or inconsistent number.
use qwen3_model::{Error, Qwen3Config};
use serde_json::Value;

const REAL: &str = include_str!("fixtures/config/qwen3_4b_instruct_2507.json");

fn with(key: &str, value: Value) -> String {
    let mut v: Value = serde_json::from_str(REAL).unwrap();
    v[key] = value;
    v.to_string()
}

fn unsupported_key(s: &str) -> String {
    match Qwen3Config::from_json_str(s) {
        Err(Error::UnsupportedConfig { key, .. }) => key,
        other => panic!("expected UnsupportedConfig, got {other:?}"),
    }
}

#[test]
fn real_4b_config_parses_to_the_published_numbers() {
    assert_eq!(
        Qwen3Config::from_json_str(REAL).unwrap(),
        Qwen3Config::qwen3_4b()
    );
}

#[test]
fn to_json_string_round_trips() {
    let mut cfg = Qwen3Config::qwen3_4b();
    cfg.eos_token_ids = vec![151645, 151643];
    cfg.head_dim = 64;
    let back = Qwen3Config::from_json_str(&cfg.to_json_string()).unwrap();
    assert_eq!(back, cfg);
}

#[test]
fn transformers5_rope_parameters_and_dtype_are_read() {
    let mut v: Value = serde_json::from_str(REAL).unwrap();
    let obj = v.as_object_mut().unwrap();
    obj.remove("rope_theta");
    obj.remove("rope_scaling");
    obj.remove("torch_dtype");
    obj.insert("dtype".into(), "float32".into());
    obj.insert(
        "rope_parameters".into(),
        serde_json::json!({"rope_theta": 1e6, "rope_type": "default"}),
    );
    obj.insert(
        "layer_types".into(),
        serde_json::json!(vec!["full_attention"; 36]),
    );
    let cfg = Qwen3Config::from_json_str(&v.to_string()).unwrap();
    assert_eq!(cfg.rope_theta, 1e6);
    assert_eq!(cfg.torch_dtype.as_deref(), Some("float32"));
}

#[test]
fn each_unsupported_option_is_rejected_by_name() {
    let cases = [
        (
            "use_sliding_window",
            serde_json::json!(true),
            "use_sliding_window",
        ),
        (
            "rope_scaling",
            serde_json::json!({"type": "yarn", "factor": 4.0}),
            "rope_scaling",
        ),
        ("attention_bias", serde_json::json!(true), "attention_bias"),
        ("hidden_act", serde_json::json!("gelu"), "hidden_act"),
        (
            "architectures",
            serde_json::json!(["LlamaForCausalLM"]),
            "architectures",
        ),
        ("model_type", serde_json::json!("qwen2"), "model_type"),
        (
            "attention_dropout",
            serde_json::json!(0.1),
            "attention_dropout",
        ),
        (
            "layer_types",
            serde_json::json!(["sliding_attention"]),
            "layer_types",
        ),
        (
            "rope_parameters",
            serde_json::json!({"rope_type": "yarn", "rope_theta": 1e6}),
            "rope_parameters.rope_type",
        ),
    ];
    for (key, value, expected) in cases {
        assert_eq!(
            unsupported_key(&with(key, value)),
            expected,
            "setting {key}"
        );
    }
}

#[test]
fn sliding_window_value_without_use_flag_is_accepted() {
    // HF ignores `sliding_window` unless `use_sliding_window` is true.
    assert!(Qwen3Config::from_json_str(&with("sliding_window", 4096.into())).is_ok());
}

#[test]
fn missing_rope_theta_is_an_error_not_a_default() {
    let mut v: Value = serde_json::from_str(REAL).unwrap();
    v.as_object_mut().unwrap().remove("rope_theta");
    let e = Qwen3Config::from_json_str(&v.to_string()).unwrap_err();
    assert!(
        matches!(e, Error::MissingConfigKey { key: "rope_theta" }),
        "{e}"
    );
}

#[test]
fn inconsistent_numbers_are_rejected() {
    let cases = [
        ("num_key_value_heads", Value::from(5), "num_key_value_heads"),
        ("head_dim", Value::from(127), "head_dim"),
        ("hidden_size", Value::from(2568), "hidden_size"),
        ("vocab_size", Value::from(0), "vocab_size"),
        ("rms_norm_eps", Value::from(-1.0), "rms_norm_eps"),
    ];
    for (key, value, expected) in cases {
        match Qwen3Config::from_json_str(&with(key, value)) {
            Err(Error::InvalidConfig { key, .. }) => assert_eq!(key, expected),
            other => panic!("{key}: expected InvalidConfig, got {other:?}"),
        }
    }
}

#[test]
fn bad_json_reports_line_and_column() {
    let e = Qwen3Config::from_json_str("{\n \"vocab_size\": \"many\"\n}").unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("line 2"), "{msg}");
}

#[test]
fn eos_token_id_list_is_read() {
    let cfg = Qwen3Config::from_json_str(&with("eos_token_id", serde_json::json!([1, 2]))).unwrap();
    assert_eq!(cfg.eos_token_ids, vec![1, 2]);
}

#[test]
fn from_file_reads_the_real_config_and_names_a_missing_file() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/config");
    let cfg = Qwen3Config::from_file(&dir.join("qwen3_4b_instruct_2507.json")).unwrap();
    assert_eq!(cfg.rope_theta, 5e6);
    let missing = dir.join("no_such_config.json");
    let e = Qwen3Config::from_file(&missing).unwrap_err();
    assert!(matches!(e, Error::Io { .. }), "{e}");
    assert!(e.to_string().contains("no_such_config.json"), "{e}");
}

#[test]
fn bad_json_in_a_file_names_the_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.json");
    std::fs::write(&path, "{\n  \"hidden_size\": 64,\n  oops\n}").unwrap();
    let msg = Qwen3Config::from_file(&path).unwrap_err().to_string();
    assert!(
        msg.contains("config.json") && msg.contains("line 3"),
        "{msg}"
    );
}
