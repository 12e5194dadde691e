//! The non-finite policy with an injected NaN: `skip` drops the update
//! (weights and optimizer untouched), counts and logs it, and training goes
//! on once the NaN is gone; `stop` ends with an error naming the step.

mod common;

use tch::Tensor;
use trainer::{Error, MetricsLog, NonFinitePolicy, TrainConfig, Trainer};

fn trainer(policy: NonFinitePolicy, metrics: Option<std::path::PathBuf>) -> Trainer {
    let seed = test_support::seed();
    let cfg = common::tiny_config(128, true);
    let tc = TrainConfig {
        steps: Some(5),
        batch_size: 4,
        lr: 1e-3,
        on_nonfinite: policy,
        metrics,
        progress: false,
        ..Default::default()
    };
    Trainer::new(
        common::tiny_model(&cfg, seed),
        tc,
        common::random_dataset(12, 128, seed),
        0,
    )
    .unwrap()
}

fn snapshot(t: &Trainer) -> Vec<Tensor> {
    t.model()
        .named_parameters()
        .iter()
        .map(|(_, p)| p.detach().copy())
        .collect()
}

/// Puts a NaN into the final norm's weight; returns its old value.
fn poison(t: &Trainer) -> f64 {
    let (_, norm) = t
        .model()
        .named_parameters()
        .into_iter()
        .find(|(n, _)| n == "model.norm.weight")
        .unwrap();
    let old = norm.get(0).double_value(&[]);
    let _ = tch::no_grad(|| norm.get(0).fill_(f64::NAN));
    old
}

fn restore(t: &Trainer, v: f64) {
    let (_, norm) = t
        .model()
        .named_parameters()
        .into_iter()
        .find(|(n, _)| n == "model.norm.weight")
        .unwrap();
    let _ = tch::no_grad(|| norm.get(0).fill_(v));
}

#[test]
fn skip_policy_drops_the_update_counts_it_and_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("m.jsonl");
    let mut t = trainer(NonFinitePolicy::Skip, Some(log.clone()));
    t.step().unwrap();
    let old = poison(&t);
    let before = snapshot(&t);
    let optim_steps = t.optimizer().steps_taken();
    let m = t.step().unwrap();
    assert!(
        m.skipped && m.loss.is_nan(),
        "NaN loss must be reported as a skipped step: {m:?}"
    );
    assert_eq!(t.skipped_steps(), 1);
    assert_eq!(
        t.optimizer().steps_taken(),
        optim_steps,
        "no optimizer update (bias-correction count unchanged)"
    );
    for (a, b) in before.iter().zip(snapshot(&t)) {
        // NaN != NaN, so compare with the NaN mapped to a sentinel.
        assert!(
            a.nan_to_num(0.0, None, None)
                .equal(&b.nan_to_num(0.0, None, None)),
            "weights changed on a skipped step"
        );
    }
    restore(&t, old);
    let m = t.step().unwrap();
    assert!(
        !m.skipped && m.loss.is_finite(),
        "training goes on after the NaN is gone"
    );
    assert!(
        snapshot(&t)
            .iter()
            .all(|p| p.isfinite().all().int64_value(&[]) == 1),
        "no NaN leaked into the weights"
    );
    let logged = MetricsLog::read(&log).unwrap();
    assert_eq!(
        logged.iter().map(|m| m.skipped).collect::<Vec<_>>(),
        vec![false, true, false]
    );
}

#[test]
fn stop_policy_ends_with_an_error_naming_the_step() {
    let mut t = trainer(NonFinitePolicy::Stop, None);
    t.step().unwrap();
    poison(&t);
    let before = snapshot(&t);
    let e = t.step().unwrap_err();
    assert!(
        matches!(
            e,
            Error::NonFinite {
                step: 2,
                what: "loss",
                ..
            }
        ),
        "{e}"
    );
    // The second step, numbered as the step lines and metrics number it.
    assert!(e.to_string().contains("step 2"), "{e}");
    for (a, b) in before.iter().zip(snapshot(&t)) {
        // The poisoned norm weight holds the NaN we put there: compare with NaN -> 0.
        assert!(
            a.nan_to_num(0.0, None, None)
                .equal(&b.nan_to_num(0.0, None, None)),
            "no update after a non-finite loss"
        );
    }
}
