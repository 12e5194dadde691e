//! Exact resume: N steps straight and N/2 + save + (new process state:
//! fresh model, fresh trainer) resume + N/2 give bitwise the same losses and
//! weights on CPU f32, for each optimizer-state precision. Everything the
//! continuation depends on (master weights, moments, step, epoch, data
//! cursor, seed) goes through the checkpoint crate.

mod common;

use tch::Tensor;
use trainer::{OptimStateKind, TrainConfig, Trainer};

const N: u64 = 6;

fn config(state: OptimStateKind, dir: Option<std::path::PathBuf>) -> TrainConfig {
    let mut c = TrainConfig {
        steps: Some(N),
        batch_size: 3,
        grad_accum: 2,
        lr: 2e-3,
        warmup: 2,
        seed: 11,
        checkpoint_dir: dir,
        progress: false,
        ..Default::default()
    };
    c.adamw.state = state;
    c.adamw.weight_decay = 0.01;
    c
}

fn weights(t: &Trainer) -> Vec<Tensor> {
    t.model()
        .named_parameters()
        .iter()
        .map(|(_, p)| p.detach().copy())
        .collect()
}

#[test]
fn half_run_save_resume_half_equals_the_straight_run_bitwise() {
    let seed = test_support::seed();
    let cfg = common::tiny_config(128, true);
    // 10 examples, 6 per step: the run crosses epoch boundaries mid-step.
    let data = common::random_dataset(10, 128, seed);
    for state in [
        OptimStateKind::F32,
        OptimStateKind::BF16,
        OptimStateKind::Int8Block,
    ] {
        let mut straight = Trainer::new(
            common::tiny_model(&cfg, seed),
            config(state, None),
            data.clone(),
            0,
        )
        .unwrap();
        let losses: Vec<f64> = (0..N).map(|_| straight.step().unwrap().loss).collect();

        let dir = tempfile::tempdir().unwrap();
        let ckdir = dir.path().join("ck");
        let mut first = Trainer::new(
            common::tiny_model(&cfg, seed),
            config(state, Some(ckdir.clone())),
            data.clone(),
            0,
        )
        .unwrap();
        let mut resumed_losses: Vec<f64> = (0..N / 2).map(|_| first.step().unwrap().loss).collect();
        let path = first.save_checkpoint().unwrap().unwrap();
        drop(first);

        let mut second = Trainer::new(
            common::tiny_model(&cfg, seed),
            config(state, Some(ckdir)),
            data.clone(),
            0,
        )
        .unwrap();
        second.resume_from(&path).unwrap();
        assert_eq!(second.step_count(), N / 2);
        resumed_losses.extend((N / 2..N).map(|_| second.step().unwrap().loss));

        println!("{state:?}: straight {losses:?}\n{state:?}: resumed  {resumed_losses:?}");
        assert!(
            losses[N as usize - 1] < losses[0],
            "the run must learn something"
        );
        assert_eq!(
            losses.iter().map(|l| l.to_bits()).collect::<Vec<_>>(),
            resumed_losses
                .iter()
                .map(|l| l.to_bits())
                .collect::<Vec<_>>(),
            "{state:?}: losses must be bitwise equal"
        );
        for (a, b) in weights(&straight).iter().zip(weights(&second)) {
            assert!(
                a.equal(&b),
                "{state:?}: final weights must be bitwise equal"
            );
        }
        assert_eq!(straight.cursor(), second.cursor());
    }
}

#[test]
fn resume_rejects_a_checkpoint_of_another_setup() {
    let seed = test_support::seed();
    let cfg = common::tiny_config(128, true);
    let data = common::random_dataset(10, 128, seed);
    let dir = tempfile::tempdir().unwrap();
    let ck = dir.path().join("ck");
    let mut t = Trainer::new(
        common::tiny_model(&cfg, seed),
        config(OptimStateKind::F32, Some(ck.clone())),
        data.clone(),
        0,
    )
    .unwrap();
    t.step().unwrap();
    let path = t.save_checkpoint().unwrap().unwrap();

    let mut other = Trainer::new(
        common::tiny_model(&cfg, seed),
        config(OptimStateKind::Int8Block, Some(ck.clone())),
        data.clone(),
        0,
    )
    .unwrap();
    let e = other.resume_from(&path).unwrap_err().to_string();
    assert!(e.contains("optim-state"), "{e}");

    let mut tc = config(OptimStateKind::F32, Some(ck.clone()));
    tc.train_last_layers = Some(1);
    let mut partial = Trainer::new(common::tiny_model(&cfg, seed), tc, data.clone(), 0).unwrap();
    let e = partial.resume_from(&path).unwrap_err().to_string();
    assert!(e.contains("does not train"), "{e}");

    let mut tc = config(OptimStateKind::F32, Some(ck));
    tc.seed = 12;
    let mut reseeded = Trainer::new(common::tiny_model(&cfg, seed), tc, data, 0).unwrap();
    let e = reseeded.resume_from(&path).unwrap_err().to_string();
    assert!(e.contains("--seed 11"), "{e}");
}
