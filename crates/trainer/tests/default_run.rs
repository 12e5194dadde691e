//! The default training run of `examples/train.rs`, end to end, through the
//! same library function the example calls ([`trainer::run_default`]): the
//! loss falls, a checkpoint and the exported `.dat` are written, and the
//! reloaded export answers at least 90 % of the training prompts exactly,
//! ending each answer with `<|im_end|>`. Takes a few minutes on 2 cores.

use trainer::{run_default, DefaultRunOptions, MetricsLog};

#[test]
fn default_run_learns_the_facts_and_stops_at_im_end() {
    let dir = tempfile::tempdir().unwrap();
    let report = run_default(&DefaultRunOptions {
        run_dir: dir.path().to_path_buf(),
        progress: false,
        steps: None,
    })
    .unwrap();
    let job = &report.job;

    let losses: Vec<f64> = job.losses.iter().map(|(_, l)| *l).collect();
    let head: f64 = losses[..5].iter().sum::<f64>() / 5.0;
    let tail: f64 = losses[losses.len() - 5..].iter().sum::<f64>() / 5.0;
    println!(
        "loss: first 5 steps {head:.4}, last 5 steps {tail:.4} ({} steps, {:.1} s)",
        losses.len(),
        job.wall_s
    );
    assert!(tail < head / 10.0, "the loss must fall by 10x at least");

    let eval = job
        .eval
        .as_ref()
        .expect("the default run evaluates the export");
    for s in eval.samples.iter().filter(|s| !s.matched).take(10) {
        println!(
            "miss (line {}): {:?} -> {:?} (expected {:?})",
            s.line, s.prompt, s.got, s.expected
        );
    }
    println!(
        "exact_match: {}/{}, ending on <|im_end|>: {}",
        eval.matched, eval.total, eval.stopped_on_im_end
    );
    assert_eq!(eval.total, job.examples, "every training prompt is asked");
    assert!(
        eval.matched * 10 >= eval.total * 9,
        "exact match must reach 90 %"
    );
    assert!(
        eval.samples
            .iter()
            .filter(|s| s.matched)
            .all(|s| s.stopped_on_im_end),
        "matched answers end on <|im_end|>"
    );

    assert!(report.base_dat.is_file() && report.trained_dat.is_file());
    assert!(job.loss_png.as_ref().is_some_and(|p| p.is_file()));
    assert!(job
        .train
        .last_checkpoint
        .as_ref()
        .is_some_and(|p| p.join("checkpoint.json").is_file()));
    assert_eq!(
        MetricsLog::read(&report.metrics).unwrap().len() as u64,
        job.train.steps_run,
        "one metrics line per step"
    );
}
