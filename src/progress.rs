//! How the examples show a training job: the [`JobEvent`]s as lines on
//! stdout and a progress bar (loss, tokens/s, lr, memory) on stderr, plus a
//! plain step line every twentieth of the run so the curve is visible when
//! stderr is not a terminal (CI logs, pipes). The library draws nothing.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};
use trainer::{human_bytes, JobEvent, StepProgress};

/// Prints a job's events; `show_bar` asks for the bar (shown only on a terminal).
pub struct JobPrinter {
    bar: Option<ProgressBar>,
    show_bar: bool,
}

impl JobPrinter {
    /// A printer; the bar appears with the first step.
    pub fn new(show_bar: bool) -> Self {
        Self {
            bar: None,
            show_bar: show_bar && std::io::stderr().is_terminal(),
        }
    }

    /// Shows one event.
    pub fn event(&mut self, e: &JobEvent<'_>) {
        match e {
            JobEvent::Step(p) => self.step(p),
            other => {
                self.finish();
                println!("{other}");
            }
        }
    }

    fn step(&mut self, p: &StepProgress<'_>) {
        let m = p.metrics;
        let total = p.total_steps;
        if self.bar.is_none() && self.show_bar {
            let bar = ProgressBar::new(total);
            let style = ProgressStyle::with_template(
                "{bar:30.cyan/blue} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar());
            bar.set_style(style);
            bar.set_position(p.first_step);
            self.bar = Some(bar);
        }
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
        let every = (total / 20).max(1);
        let line = (m.step.is_multiple_of(every)
            || m.step == total
            || m.step == p.first_step + 1
            || m.skipped)
            .then(|| {
                format!(
                    "step {:>5}/{total} epoch {} {msg} | grad norm {:.3}",
                    m.step, m.epoch, m.grad_norm
                )
            });
        match &self.bar {
            Some(bar) => {
                bar.set_position(m.step);
                bar.set_message(msg);
                if let Some(line) = line {
                    bar.println(line);
                }
            }
            None => {
                if let Some(line) = line {
                    println!("{line}");
                }
            }
        }
    }

    /// Clears the bar (before other output, and at the end).
    pub fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}
