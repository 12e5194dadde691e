//! Which NVFP4 layout a Hugging Face checkpoint directory uses, read from
//! `config.json`'s `quantization_config` or ModelOpt's `hf_quant_config.json`,
//! and checked field by field: anything this project would load wrongly
//! (another format, other bit widths or group sizes, transforms, a quantized
//! KV cache) is an error naming the JSON field, never silently ignored.

use std::path::Path;

use serde_json::Value;

use crate::error::{Error, Result};

/// The two standard NVFP4 checkpoint layouts (see docs/SD.md for the mapping).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PackedLayout {
    /// compressed-tensors `nvfp4-pack-quantized` (llm-compressor; vLLM, SGLang).
    CompressedTensors,
    /// NVIDIA Model Optimizer NVFP4 (TensorRT-LLM, vLLM).
    ModelOpt,
}

impl std::fmt::Display for PackedLayout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PackedLayout::CompressedTensors => "compressed-tensors",
            PackedLayout::ModelOpt => "modelopt",
        })
    }
}

/// What a checkpoint's quantization config says, once validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct QuantSpec {
    /// The tensor layout.
    pub(crate) layout: PackedLayout,
    /// The checkpoint also quantizes input activations (W4A4); this project
    /// runs activations unquantized, so only the weights are taken.
    pub(crate) activations_quantized: bool,
    /// Modules the config leaves unquantized (`ignore` / `exclude_modules`).
    pub(crate) ignore: Vec<String>,
}

/// The compressed-tensors format this project reads and writes.
pub(crate) const CT_FORMAT: &str = "nvfp4-pack-quantized";
/// ModelOpt's separate quantization file.
pub(crate) const MODELOPT_FILE: &str = "hf_quant_config.json";
/// ModelOpt `quant_algo` values whose weights are NVFP4 with 16-element groups.
const MODELOPT_ALGOS: [&str; 2] = ["NVFP4", "W4A16_NVFP4"];

/// One JSON object being validated, with its file and JSON path for errors.
struct Obj<'a> {
    path: &'a Path,
    at: String,
    v: &'a Value,
}

impl<'a> Obj<'a> {
    fn err(&self, key: &str, reason: impl Into<String>) -> Error {
        Error::QuantizationConfig {
            path: self.path.to_path_buf(),
            field: self.field(key),
            reason: reason.into(),
        }
    }

    fn field(&self, key: &str) -> String {
        match (self.at.is_empty(), key.is_empty()) {
            (true, _) => key.to_string(),
            (false, true) => self.at.clone(),
            (false, false) => format!("{}.{key}", self.at),
        }
    }

    /// The value of `key`; JSON `null` counts as absent.
    fn get(&self, key: &str) -> Option<&'a Value> {
        self.v.get(key).filter(|v| !v.is_null())
    }

    fn child(&self, key: &str) -> Result<Obj<'a>> {
        match self.get(key) {
            Some(v) if v.is_object() => Ok(Obj {
                path: self.path,
                at: self.field(key),
                v,
            }),
            Some(v) => Err(self.err(key, format!("expected an object, found {v}"))),
            None => Err(self.err(key, "missing")),
        }
    }

    fn str_is(&self, key: &str, allowed: &[&str], default: Option<&str>) -> Result<String> {
        let got = match (self.get(key), default) {
            (Some(Value::String(s)), _) => s.clone(),
            (None, Some(d)) => d.to_string(),
            (None, None) => {
                return Err(self.err(key, format!("missing; expected one of {allowed:?}")))
            }
            (Some(v), _) => return Err(self.err(key, format!("expected a string, found {v}"))),
        };
        if !allowed.contains(&got.as_str()) {
            return Err(self.err(
                key,
                format!("unsupported {got:?}; this project reads {allowed:?}"),
            ));
        }
        Ok(got)
    }

    fn num_is(&self, key: &str, want: u64, default: Option<u64>) -> Result<()> {
        let got = match (self.get(key), default) {
            (Some(v), _) => v
                .as_u64()
                .ok_or_else(|| self.err(key, format!("expected an integer, found {v}")))?,
            (None, Some(d)) => d,
            (None, None) => return Err(self.err(key, format!("missing; expected {want}"))),
        };
        if got != want {
            return Err(self.err(key, format!("unsupported {got}; NVFP4 needs {want}")));
        }
        Ok(())
    }

    fn bool_is(&self, key: &str, want: bool, default: bool) -> Result<()> {
        match self.get(key) {
            None if default == want => Ok(()),
            Some(Value::Bool(b)) if *b == want => Ok(()),
            None => Err(self.err(key, format!("missing; NVFP4 needs {want}"))),
            Some(v) => Err(self.err(key, format!("unsupported {v}; NVFP4 needs {want}"))),
        }
    }

    /// Absent, `null`, or an empty object / list.
    fn empty(&self, key: &str, what: &str) -> Result<()> {
        match self.get(key) {
            None => Ok(()),
            Some(Value::Object(m)) if m.is_empty() => Ok(()),
            Some(Value::Array(a)) if a.is_empty() => Ok(()),
            Some(v) => Err(self.err(key, format!("{what} are not supported (found {v})"))),
        }
    }

    fn strings(&self, key: &str) -> Result<Vec<String>> {
        match self.get(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|i| {
                    i.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| self.err(key, format!("expected strings, found {i}")))
                })
                .collect(),
            Some(v) => Err(self.err(key, format!("expected a list of strings, found {v}"))),
        }
    }
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|source| Error::ConfigJson {
        path: Some(path.to_path_buf()),
        source,
    })
}

/// The quantization of the checkpoint in `dir`: `None` for a plain
/// (unquantized) checkpoint, else the validated layout.
pub(crate) fn detect(dir: &Path) -> Result<Option<QuantSpec>> {
    let config_path = dir.join("config.json");
    let modelopt_path = dir.join(MODELOPT_FILE);
    let config = match config_path.is_file() {
        true => Some(read_json(&config_path)?),
        false => None,
    };
    let qc = config
        .as_ref()
        .and_then(|c| c.get("quantization_config"))
        .filter(|v| !v.is_null());
    if let Some(qc) = qc {
        let obj = Obj {
            path: &config_path,
            at: "quantization_config".into(),
            v: qc,
        };
        let method = obj.str_is("quant_method", &["compressed-tensors", "modelopt"], None)?;
        if method == "compressed-tensors" {
            return compressed_tensors(&obj).map(Some);
        }
        if !modelopt_path.is_file() {
            return modelopt_from_config(&obj).map(Some);
        }
    }
    if modelopt_path.is_file() {
        return modelopt_file(&modelopt_path).map(Some);
    }
    Ok(None)
}

/// The standard NVFP4 layout of the checkpoint directory `dir`, `None` for
/// a plain (unquantized) one; errors name an unknown or unsupported field.
pub fn detect_packed_layout(dir: &Path) -> Result<Option<PackedLayout>> {
    Ok(detect(dir)?.map(|q| q.layout))
}

/// Parses a compressed-tensors `quantization_config` from a JSON string
/// (for tests and callers that hold the config already).
#[cfg(test)]
fn compressed_tensors_str(json: &str) -> Result<QuantSpec> {
    let v: Value = serde_json::from_str(json).expect("test JSON");
    compressed_tensors(&Obj {
        path: Path::new("config.json"),
        at: "quantization_config".into(),
        v: &v,
    })
}

fn compressed_tensors(qc: &Obj<'_>) -> Result<QuantSpec> {
    qc.str_is("format", &[CT_FORMAT], None)?;
    qc.str_is("quantization_status", &["compressed"], Some("compressed"))?;
    qc.empty("kv_cache_scheme", "quantized KV caches")?;
    qc.empty("transform_config", "transforms (rotations)")?;
    qc.empty("sparsity_config", "sparsity configs")?;
    let groups = qc.child("config_groups")?;
    let map = groups.v.as_object().expect("child() checked");
    if map.is_empty() {
        return Err(qc.err("config_groups", "no config group"));
    }
    let mut activations_quantized = false;
    for name in map.keys() {
        let g = groups.child(name)?;
        g.str_is("format", &[CT_FORMAT], Some(CT_FORMAT))?;
        nvfp4_args(&g.child("weights")?, false)?;
        g.empty("output_activations", "quantized output activations")?;
        if g.get("input_activations").is_some() {
            nvfp4_args(&g.child("input_activations")?, true)?;
            activations_quantized = true;
        }
    }
    Ok(QuantSpec {
        layout: PackedLayout::CompressedTensors,
        activations_quantized,
        ignore: qc.strings("ignore")?,
    })
}

/// compressed-tensors `QuantizationArgs` of NVFP4: 4-bit float, symmetric,
/// one scale per 16 elements times a per-tensor scale; weights static,
/// activations dynamic per group (`"local"`).
fn nvfp4_args(args: &Obj<'_>, activations: bool) -> Result<()> {
    args.num_is("num_bits", 4, None)?;
    args.str_is("type", &["float"], None)?;
    args.str_is("strategy", &["tensor_group"], None)?;
    args.num_is("group_size", 16, None)?;
    args.bool_is("symmetric", true, true)?;
    match (activations, args.get("dynamic")) {
        (false, _) => args.bool_is("dynamic", false, false),
        (true, Some(Value::String(s))) if s == "local" => Ok(()),
        (true, v) => Err(args.err(
            "dynamic",
            format!(
                "unsupported {}; NVFP4 activations are quantized dynamically per group (\"local\")",
                v.map(Value::to_string)
                    .unwrap_or_else(|| "(missing)".into())
            ),
        )),
    }
}

fn modelopt_file(path: &Path) -> Result<QuantSpec> {
    let v = read_json(path)?;
    let top = Obj {
        path,
        at: String::new(),
        v: &v,
    };
    modelopt_quantization(&top.child("quantization")?)
}

/// `hf_quant_config.json`'s `quantization` object.
fn modelopt_quantization(q: &Obj<'_>) -> Result<QuantSpec> {
    let algo = q.str_is("quant_algo", &MODELOPT_ALGOS, None)?;
    q.num_is("group_size", 16, Some(16))?;
    q.empty("kv_cache_quant_algo", "quantized KV caches")?;
    Ok(QuantSpec {
        layout: PackedLayout::ModelOpt,
        activations_quantized: algo == "NVFP4",
        ignore: q.strings("exclude_modules")?,
    })
}

/// ModelOpt's copy inside `config.json` (`quant_method: modelopt`), used
/// when `hf_quant_config.json` is absent.
fn modelopt_from_config(qc: &Obj<'_>) -> Result<QuantSpec> {
    let algo = qc.str_is("quant_algo", &MODELOPT_ALGOS, None)?;
    qc.empty("kv_cache_scheme", "quantized KV caches")?;
    Ok(QuantSpec {
        layout: PackedLayout::ModelOpt,
        activations_quantized: algo == "NVFP4",
        ignore: qc.strings("ignore")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const W4A16: &str = r#"{
        "quant_method": "compressed-tensors", "format": "nvfp4-pack-quantized",
        "quantization_status": "compressed", "ignore": ["lm_head"], "kv_cache_scheme": null,
        "sparsity_config": {}, "transform_config": {},
        "config_groups": {"group_0": {"targets": ["Linear"], "input_activations": null,
            "weights": {"num_bits": 4, "type": "float", "strategy": "tensor_group",
                        "group_size": 16, "symmetric": true, "dynamic": false}}}}"#;

    fn field_of(err: Error) -> String {
        match err {
            Error::QuantizationConfig { field, .. } => field,
            other => panic!("not a quantization config error: {other}"),
        }
    }

    #[test]
    fn w4a16_config_is_accepted_with_its_ignore_list() {
        let q = compressed_tensors_str(W4A16).unwrap();
        assert_eq!(q.layout, PackedLayout::CompressedTensors);
        assert!(!q.activations_quantized);
        assert_eq!(q.ignore, vec!["lm_head".to_string()]);
    }

    #[test]
    fn w4a4_config_is_accepted_and_flagged() {
        let json = W4A16.replace(
            r#""input_activations": null"#,
            r#""input_activations": {"num_bits": 4, "type": "float", "strategy": "tensor_group",
                "group_size": 16, "symmetric": true, "dynamic": "local"}"#,
        );
        assert!(compressed_tensors_str(&json).unwrap().activations_quantized);
    }

    #[test]
    fn each_unsupported_field_is_named() {
        let cases = [
            (
                r#""format": "nvfp4-pack-quantized","#,
                r#""format": "pack-quantized","#,
                "quantization_config.format",
            ),
            (
                r#""num_bits": 4"#,
                r#""num_bits": 8"#,
                "quantization_config.config_groups.group_0.weights.num_bits",
            ),
            (
                r#""group_size": 16"#,
                r#""group_size": 32"#,
                "quantization_config.config_groups.group_0.weights.group_size",
            ),
            (
                r#""strategy": "tensor_group""#,
                r#""strategy": "group""#,
                "quantization_config.config_groups.group_0.weights.strategy",
            ),
            (
                r#""symmetric": true"#,
                r#""symmetric": false"#,
                "quantization_config.config_groups.group_0.weights.symmetric",
            ),
            (
                r#""kv_cache_scheme": null"#,
                r#""kv_cache_scheme": {"num_bits": 8}"#,
                "quantization_config.kv_cache_scheme",
            ),
            (
                r#""transform_config": {}"#,
                r#""transform_config": {"r1": 1}"#,
                "quantization_config.transform_config",
            ),
            (
                r#""quantization_status": "compressed""#,
                r#""quantization_status": "frozen""#,
                "quantization_config.quantization_status",
            ),
        ];
        for (from, to, field) in cases {
            let json = W4A16.replacen(from, to, 1);
            assert_ne!(json, W4A16, "case {field} did not apply");
            let err = compressed_tensors_str(&json).unwrap_err();
            let msg = err.to_string();
            assert_eq!(field_of(err), field, "{msg}");
        }
    }

    #[test]
    fn unknown_quant_method_is_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("config.json"),
            r#"{"quantization_config": {"quant_method": "gptq", "bits": 4}}"#,
        )
        .unwrap();
        let err = detect(dir.path()).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("quantization_config.quant_method") && msg.contains("gptq"),
            "{msg}"
        );
    }

    #[test]
    fn modelopt_file_is_read_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), "{}").unwrap();
        let file = dir.path().join(MODELOPT_FILE);
        std::fs::write(
            &file,
            r#"{"producer": {"name": "modelopt"}, "quantization": {"quant_algo": "W4A16_NVFP4",
                "group_size": 16, "exclude_modules": ["lm_head"], "kv_cache_quant_algo": null}}"#,
        )
        .unwrap();
        let q = detect(dir.path()).unwrap().unwrap();
        assert_eq!(
            (q.layout, q.activations_quantized),
            (PackedLayout::ModelOpt, false)
        );
        assert_eq!(q.ignore, vec!["lm_head".to_string()]);
        std::fs::write(&file, r#"{"quantization": {"quant_algo": "FP8"}}"#).unwrap();
        let msg = detect(dir.path()).unwrap_err().to_string();
        assert!(
            msg.contains("`quantization.quant_algo`") && msg.contains("FP8"),
            "{msg}"
        );
    }

    #[test]
    fn plain_checkpoint_has_no_quantization() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), r#"{"hidden_size": 64}"#).unwrap();
        assert_eq!(detect(dir.path()).unwrap(), None);
    }
}
