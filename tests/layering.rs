//! The crates depend strictly downward:
//! nvfp4-kernels <- dat-format <- qwen3-model <- trainer; checkpoint (the
//! training-state store: tensors and JSON, no model, format or kernels),
//! tokenizer-bridge and distributed stand alone (used by trainer and the examples).
//! `test-support` is a dev-only leaf: it depends on no sibling and every crate
//! may use it, but only as a dev-dependency.
//! Read from `cargo metadata`, so a new dependency edge that breaks the layering
//! fails CI instead of slowly tangling the workspace.
use std::collections::BTreeMap;
use std::process::Command;

/// The dev-only helper crate of the tests.
const TEST_SUPPORT: &str = "test-support";

/// Which sibling crates each workspace crate may depend on (any dependency kind).
fn allowed() -> BTreeMap<&'static str, Vec<&'static str>> {
    let chain = ["nvfp4-kernels", "dat-format", "qwen3-model", "trainer"];
    let mut allowed: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (i, name) in chain.iter().enumerate() {
        allowed.insert(name, chain[..i].to_vec());
    }
    let trainer = allowed.get_mut("trainer").expect("in chain");
    trainer.push("checkpoint");
    trainer.push("tokenizer-bridge");
    trainer.push("distributed");
    allowed.insert("checkpoint", vec![]);
    allowed.insert("tokenizer-bridge", vec![]);
    allowed.insert("distributed", vec![]);
    allowed.insert(TEST_SUPPORT, vec![]);
    allowed
}

#[test]
fn crates_depend_strictly_downward() {
    let out = Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).expect("metadata is JSON");
    let allowed = allowed();
    let packages = meta["packages"].as_array().expect("packages array");
    let mut seen = 0;
    let mut violations = Vec::new();
    for package in packages {
        let name = package["name"].as_str().expect("package name");
        let deps = package["dependencies"]
            .as_array()
            .expect("dependencies array");
        // `kind` is null for a normal dependency, "dev" or "build" otherwise.
        for dep in deps.iter().filter(|d| d["name"] == TEST_SUPPORT) {
            if dep["kind"].as_str() != Some("dev") {
                violations.push(format!("{name} -> {TEST_SUPPORT} (not a dev-dependency)"));
            }
        }
        let Some(may_use) = allowed.get(name) else {
            continue;
        };
        seen += 1;
        for dep in deps {
            let dep_name = dep["name"].as_str().expect("dependency name");
            if dep_name == TEST_SUPPORT {
                continue; // checked for every package above
            }
            let is_sibling = allowed.contains_key(dep_name);
            if is_sibling && !may_use.contains(&dep_name) {
                violations.push(format!("{name} -> {dep_name}"));
            }
        }
    }
    assert_eq!(
        seen,
        allowed.len(),
        "every layered crate is in the workspace"
    );
    assert!(violations.is_empty(), "layering violated: {violations:?}");
}

#[test]
fn layering_table_rejects_upward_edges() {
    // The table itself must forbid the edges the docs forbid.
    let allowed = allowed();
    assert!(!allowed["nvfp4-kernels"].contains(&"dat-format"));
    assert!(!allowed["qwen3-model"].contains(&"tokenizer-bridge"));
    assert!(!allowed["dat-format"].contains(&"qwen3-model"));
    assert!(
        allowed["checkpoint"].is_empty(),
        "a training-state store needs no model"
    );
    assert!(allowed["trainer"].contains(&"checkpoint"));
    assert!(allowed["distributed"].is_empty());
}
