//! Progress display: an indicatif bar with loss, tokens/s, lr and memory,
//! plus a plain log line every twentieth of the run, so the loss curve is
//! visible even when stderr is not a terminal (CI logs, pipes).

use indicatif::{ProgressBar, ProgressStyle};

use crate::metrics::{human_bytes, StepMetrics};

pub(crate) struct Progress {
    bar: ProgressBar,
    every: u64,
}

impl Progress {
    pub(crate) fn new(total: u64, done: u64, show_bar: bool) -> Self {
        let bar = if show_bar {
            ProgressBar::new(total)
        } else {
            ProgressBar::hidden()
        };
        let style = ProgressStyle::with_template(
            "{bar:30.cyan/blue} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style);
        bar.set_position(done);
        Progress {
            bar,
            every: (total / 20).max(1),
        }
    }

    pub(crate) fn update(&self, m: &StepMetrics, total: u64) {
        let msg = format!(
            "loss {:.4} | {:.0} tok/s | lr {:.2e} | mem {}{}",
            m.loss,
            m.tokens_per_s,
            m.lr,
            human_bytes(m.mem_bytes),
            if m.skipped {
                " | SKIPPED (non-finite)"
            } else {
                ""
            }
        );
        self.bar.set_position(m.step);
        self.bar.set_message(msg.clone());
        if m.step.is_multiple_of(self.every) || m.step == total || m.step == 1 || m.skipped {
            let line = format!(
                "step {:>5}/{total} epoch {} {msg} | grad norm {:.3}",
                m.step, m.epoch, m.grad_norm
            );
            if self.bar.is_hidden() {
                println!("{line}");
            } else {
                self.bar.println(line);
            }
        }
    }

    pub(crate) fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
