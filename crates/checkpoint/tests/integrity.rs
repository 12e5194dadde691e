//! A damaged checkpoint fails at load with an error naming the file, and
//! `latest()` never returns a temp or incomplete directory. Each case
//! damages a good checkpoint the way a crash, a bad disk or a bad copy would.

mod common;

use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};

use checkpoint::{CheckpointManager, Error, TrainingState, FORMAT_VERSION, METADATA_FILE};
use common::random_bits;
use tch::{Device, Kind, Tensor};

fn save(manager: &CheckpointManager, step: u64) -> PathBuf {
    let tensors: Vec<(String, Tensor)> = vec![
        ("w".into(), random_bits(Kind::Float, &[32, 16])),
        ("optim.m.w".into(), random_bits(Kind::BFloat16, &[32, 16])),
    ];
    let state = TrainingState {
        step,
        ..Default::default()
    };
    manager.save(&state, &tensors).unwrap()
}

fn setup() -> (tempfile::TempDir, CheckpointManager, PathBuf) {
    tch::manual_seed(test_support::seed_i64());
    let dir = tempfile::tempdir().unwrap();
    let manager = CheckpointManager::new(dir.path(), 5).unwrap();
    let path = save(&manager, 10);
    (dir, manager, path)
}

fn data_file(ckpt: &Path) -> PathBuf {
    let meta = CheckpointManager::verify(ckpt).unwrap();
    ckpt.join(&meta.files[0].name)
}

fn load_err(path: &Path) -> Error {
    let err = CheckpointManager::load(path, Device::Cpu).unwrap_err();
    println!("error: {err}");
    err
}

#[test]
fn should_name_a_truncated_file() {
    let (_dir, _manager, path) = setup();
    let file = data_file(&path);
    let len = fs::metadata(&file).unwrap().len();
    OpenOptions::new()
        .write(true)
        .open(&file)
        .unwrap()
        .set_len(len - 100)
        .unwrap();
    match load_err(&path) {
        Error::FileSizeMismatch {
            path: p,
            expected,
            got,
        } => {
            assert_eq!(p, file);
            assert_eq!((expected, got), (len, len - 100));
        }
        other => panic!("unexpected {other}"),
    }
}

#[test]
fn should_name_a_file_whose_bytes_changed() {
    let (_dir, _manager, path) = setup();
    let file = data_file(&path);
    let mut bytes = fs::read(&file).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01; // one bit of tensor data: same length, different content
    fs::write(&file, &bytes).unwrap();
    let err = load_err(&path);
    assert!(
        matches!(&err, Error::ChecksumMismatch { path: p, .. } if *p == file),
        "{err}"
    );
    assert!(
        err.to_string().contains("older checkpoint"),
        "hint missing: {err}"
    );
}

#[test]
fn should_name_a_missing_data_file() {
    let (_dir, _manager, path) = setup();
    let file = data_file(&path);
    fs::remove_file(&file).unwrap();
    assert!(matches!(load_err(&path), Error::MissingFile { path: p } if p == file));
}

#[test]
fn should_reject_a_newer_format_version() {
    let (_dir, manager, path) = setup();
    let meta_path = path.join(METADATA_FILE);
    let mut meta: serde_json::Value =
        serde_json::from_slice(&fs::read(&meta_path).unwrap()).unwrap();
    meta["format_version"] = (FORMAT_VERSION + 1).into();
    fs::write(&meta_path, serde_json::to_vec(&meta).unwrap()).unwrap();
    let err = load_err(&path);
    assert!(
        matches!(err, Error::UnsupportedVersion { expected, got, .. } if expected == FORMAT_VERSION && got == FORMAT_VERSION + 1)
    );
    // A complete checkpoint of another version is not silently skipped.
    assert!(matches!(
        manager.latest(),
        Err(Error::UnsupportedVersion { .. })
    ));
}

#[test]
fn should_report_missing_metadata_and_skip_it_in_latest() {
    let (_dir, manager, older) = setup();
    let newer = save(&manager, 20);
    fs::remove_file(newer.join(METADATA_FILE)).unwrap();
    assert!(matches!(load_err(&newer), Error::MetadataMissing { .. }));
    assert_eq!(manager.latest().unwrap(), Some(older));
}

#[test]
fn should_skip_truncated_metadata_in_latest() {
    let (_dir, manager, older) = setup();
    let newer = save(&manager, 20);
    let meta_path = newer.join(METADATA_FILE);
    let text = fs::read(&meta_path).unwrap();
    fs::write(&meta_path, &text[..text.len() / 3]).unwrap();
    assert!(matches!(load_err(&newer), Error::MetadataParse { .. }));
    assert_eq!(manager.latest().unwrap(), Some(older));
}

#[test]
fn should_ignore_temp_and_trash_dirs_in_latest_and_sweep_them_on_save() {
    let (dir, manager, path) = setup();
    // What a kill leaves: a half-written temp dir with a higher step, and
    // a checkpoint caught between its rename to trash and its removal.
    let temp = dir.path().join(".tmp-step-000099-1-2-3");
    fs::create_dir(&temp).unwrap();
    fs::copy(data_file(&path), temp.join("tensors-00000.safetensors")).unwrap();
    fs::copy(path.join(METADATA_FILE), temp.join(METADATA_FILE)).unwrap();
    let trash = dir.path().join(".trash-4-5-6");
    fs::create_dir(&trash).unwrap();
    fs::copy(path.join(METADATA_FILE), trash.join(METADATA_FILE)).unwrap();
    assert_eq!(manager.latest().unwrap(), Some(path.clone()));

    let newer = save(&manager, 11);
    assert_eq!(
        common::dir_names(dir.path()),
        vec!["step-000010", "step-000011"]
    );
    assert_eq!(manager.latest().unwrap(), Some(newer));
}

#[test]
fn should_return_none_for_an_empty_directory() {
    let dir = tempfile::tempdir().unwrap();
    let manager = CheckpointManager::new(&dir.path().join("new/nested"), 1).unwrap();
    assert_eq!(manager.latest().unwrap(), None);
}
