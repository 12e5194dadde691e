//! Keep-last-K over real saves: the K newest survive, in step (not name or
//! time) order.

mod common;

use checkpoint::{CheckpointManager, Error, TrainingState};
use common::dir_names;
use tch::Tensor;

fn save(manager: &CheckpointManager, step: u64) {
    let t = Tensor::from_slice(&[step as f32, 1.5, -2.0]);
    let state = TrainingState {
        step,
        ..Default::default()
    };
    manager.save(&state, &[("w".to_string(), t)]).unwrap();
}

#[test]
fn should_keep_only_the_last_k_by_step() {
    let dir = tempfile::tempdir().unwrap();
    let manager = CheckpointManager::new(dir.path(), 2).unwrap();
    // 999_999 -> 1_000_000 changes the name's width: order must be numeric.
    for step in [5, 999_998, 999_999, 1_000_000] {
        save(&manager, step);
    }
    assert_eq!(dir_names(dir.path()), vec!["step-1000000", "step-999999"]);
    let steps: Vec<u64> = manager
        .list()
        .unwrap()
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    assert_eq!(steps, vec![999_999, 1_000_000]);
    assert_eq!(
        manager.latest().unwrap(),
        Some(dir.path().join("step-1000000"))
    );
}

#[test]
fn should_keep_a_lower_step_saved_by_a_restarted_run() {
    let dir = tempfile::tempdir().unwrap();
    let manager = CheckpointManager::new(dir.path(), 2).unwrap();
    for step in [100, 200, 3] {
        save(&manager, step);
    }
    assert_eq!(dir_names(dir.path()), vec!["step-000003", "step-000200"]);
}

#[test]
fn should_keep_everything_up_to_k() {
    let dir = tempfile::tempdir().unwrap();
    let manager = CheckpointManager::new(dir.path(), 3).unwrap();
    for step in 1..=3 {
        save(&manager, step);
    }
    assert_eq!(dir_names(dir.path()).len(), 3);
}

#[test]
fn should_refuse_keep_last_zero() {
    let dir = tempfile::tempdir().unwrap();
    let err = CheckpointManager::new(dir.path(), 0).unwrap_err();
    assert!(matches!(err, Error::InvalidKeepLast { got: 0 }), "{err}");
}
