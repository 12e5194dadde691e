//! The stress verdict: what each run recorded, the memory check against the
//! warm-up baseline, the id agreement check, and the summary table.

use std::fmt::Write as _;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use crate::stress::StressCase;

/// Prefix of the line a child process prints with its JSON report.
pub const CHILD_REPORT_PREFIX: &str = "STRESS-REPORT ";

const MIB: f64 = 1024.0 * 1024.0;

/// What one run (one case of one iteration) measured.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    /// Iteration index (0 is the warm-up that sets the memory baseline).
    pub iteration: usize,
    /// Which cell of the matrix.
    pub case: StressCase,
    /// Memory in use before the load, bytes.
    pub mem_before: u64,
    /// Memory in use after everything was dropped, bytes.
    pub mem_after: u64,
    /// Seconds to read the config and load the weights.
    pub load_s: f64,
    /// Prefill throughput, tokens/s.
    pub prefill_tps: f64,
    /// Decode throughput, tokens/s.
    pub decode_tps: f64,
    /// The greedy ids generated.
    pub tokens: Vec<u32>,
}

/// All runs of one process, plus the first failure if one happened.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StressReport {
    /// What the memory numbers measure, in words.
    pub memory_kind: String,
    /// Allowed growth over the baseline, bytes.
    pub tolerance_bytes: u64,
    /// Whether differing ids fail the run.
    pub require_identical: bool,
    /// Completed runs, in order.
    pub records: Vec<RunRecord>,
    /// The error or panic that stopped the loop.
    pub failure: Option<String>,
}

impl StressReport {
    /// An empty report.
    pub fn new(memory_kind: &str, tolerance_bytes: u64, require_identical: bool) -> Self {
        Self {
            memory_kind: memory_kind.to_string(),
            tolerance_bytes,
            require_identical,
            records: Vec::new(),
            failure: None,
        }
    }

    /// Adds a completed run.
    pub fn push(&mut self, record: RunRecord) {
        self.records.push(record);
    }

    /// Records the failure that ended the loop.
    pub fn fail(&mut self, message: String) {
        self.failure = Some(message);
    }

    /// Memory in use after the warm-up iteration (the last run of iteration 0),
    /// once all of iteration 0 completed.
    pub fn baseline(&self) -> Option<u64> {
        let warmup: Vec<&RunRecord> = self.records.iter().filter(|r| r.iteration == 0).collect();
        (warmup.len() == StressCase::ALL.len()).then(|| warmup[warmup.len() - 1].mem_after)
    }

    /// Every reason this report fails: the recorded failure, each run whose
    /// memory ends more than the tolerance above the baseline, and (when
    /// required) each run whose ids differ from the first run's.
    pub fn problems(&self) -> Vec<String> {
        let mut problems: Vec<String> = self.failure.iter().cloned().collect();
        if let Some(base) = self.baseline() {
            for r in self.records.iter().filter(|r| r.iteration > 0) {
                let growth = r.mem_after.saturating_sub(base);
                if growth > self.tolerance_bytes {
                    problems.push(format!(
                        "iteration {}, {}: memory in use {:.1} MiB after drop is {:.1} MiB above the warm-up \
                         baseline {:.1} MiB (tolerance {:.1} MiB): a leak",
                        r.iteration,
                        r.case.name(),
                        r.mem_after as f64 / MIB,
                        growth as f64 / MIB,
                        base as f64 / MIB,
                        self.tolerance_bytes as f64 / MIB
                    ));
                }
            }
        }
        if self.require_identical {
            if let Some(first) = self.records.first() {
                for r in self.records.iter().filter(|r| r.tokens != first.tokens) {
                    problems.push(format!(
                        "iteration {}, {}: ids {:?} differ from iteration 0, {}: {:?}",
                        r.iteration,
                        r.case.name(),
                        r.tokens,
                        first.case.name(),
                        first.tokens
                    ));
                }
            }
        }
        problems
    }

    /// Largest growth of memory in use over the baseline after the warm-up,
    /// in bytes (negative when memory shrank); `None` before iteration 1.
    pub fn max_growth(&self) -> Option<i64> {
        let base = self.baseline()? as i64;
        self.records
            .iter()
            .filter(|r| r.iteration > 0)
            .map(|r| r.mem_after as i64 - base)
            .max()
    }

    /// One line for a multi-process summary: runs, baseline, worst growth, ids, verdict.
    pub fn summary_line(&self) -> String {
        let mib = |b: Option<i64>| {
            b.map(|b| format!("{:+.1}", b as f64 / MIB))
                .unwrap_or_else(|| "-".into())
        };
        let base = self
            .baseline()
            .map(|b| format!("{:.1}", b as f64 / MIB))
            .unwrap_or_else(|| "-".into());
        let problems = self.problems().len();
        format!(
            "{:>4} runs  baseline {base:>9} MiB  worst {:>8} MiB  ids agree: {:<3}  {}",
            self.records.len(),
            mib(self.max_growth()),
            if self.ids_agree() { "yes" } else { "no" },
            if problems == 0 {
                "PASS".to_string()
            } else {
                format!("FAIL ({problems})")
            }
        )
    }

    /// True when every run generated the same ids.
    pub fn ids_agree(&self) -> bool {
        self.records.windows(2).all(|w| w[0].tokens == w[1].tokens)
    }

    /// `Ok` when [`StressReport::problems`] is empty, else all of them in one error.
    pub fn verdict(&self) -> Result<()> {
        let problems = self.problems();
        if problems.is_empty() {
            return Ok(());
        }
        bail!(
            "stress failed ({} problem(s)):\n  {}",
            problems.len(),
            problems.join("\n  ")
        )
    }

    /// The summary table (one row per run) and the verdict line.
    pub fn table(&self) -> String {
        let base = self.baseline();
        let mut out = String::new();
        let _ = writeln!(
            out,
            "memory: {}; tolerance {:.1} MiB over the warm-up baseline",
            self.memory_kind,
            self.tolerance_bytes as f64 / MIB
        );
        let _ = writeln!(
            out,
            "{:>4}  {:<8}  {:>7}  {:>10}  {:>10}  {:>10}  {:>10}  {:>9}  ids",
            "iter", "case", "load s", "prefill/s", "decode/s", "before MiB", "after MiB", "vs base"
        );
        for r in &self.records {
            let delta = match base {
                Some(b) if r.iteration > 0 => {
                    format!("{:+.1}", (r.mem_after as f64 - b as f64) / MIB)
                }
                _ => "warm-up".to_string(),
            };
            let _ = writeln!(
                out,
                "{:>4}  {:<8}  {:>7.2}  {:>10.1}  {:>10.1}  {:>10.1}  {:>10.1}  {:>9}  {}",
                r.iteration,
                r.case.name(),
                r.load_s,
                r.prefill_tps,
                r.decode_tps,
                r.mem_before as f64 / MIB,
                r.mem_after as f64 / MIB,
                delta,
                short_ids(&r.tokens)
            );
        }
        if base.is_none() || !self.records.iter().any(|r| r.iteration > 0) {
            let _ = writeln!(
                out,
                "note: the memory check needs 2 or more completed iterations"
            );
        }
        let _ = writeln!(
            out,
            "ids identical across runs: {}",
            if self.ids_agree() { "yes" } else { "no" }
        );
        let problems = self.problems();
        let verdict = if problems.is_empty() {
            "PASS".to_string()
        } else {
            format!("FAIL ({} problem(s))", problems.len())
        };
        let _ = writeln!(out, "result: {verdict}");
        out
    }

    /// The line a child process prints for its parent.
    pub fn to_child_line(&self) -> String {
        format!(
            "{CHILD_REPORT_PREFIX}{}",
            serde_json::to_string(self).expect("a report always serializes")
        )
    }

    /// Finds and parses the report line in a child's stdout.
    pub fn from_child_output(stdout: &str) -> Result<Self> {
        let Some(line) = stdout
            .lines()
            .rev()
            .find_map(|l| l.strip_prefix(CHILD_REPORT_PREFIX))
        else {
            bail!(
                "the child printed no `{}` line",
                CHILD_REPORT_PREFIX.trim_end()
            );
        };
        Ok(serde_json::from_str(line)?)
    }
}

fn short_ids(ids: &[u32]) -> String {
    const SHOWN: usize = 8;
    let head: Vec<String> = ids.iter().take(SHOWN).map(u32::to_string).collect();
    let more = if ids.len() > SHOWN {
        format!(" .. ({} total)", ids.len())
    } else {
        String::new()
    };
    format!("{}{more}", head.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: u64 = 1 << 20;

    fn report(afters: &[u64], ids: &[&[u32]]) -> StressReport {
        let mut rep = StressReport::new("test", 8 * MB, true);
        for (i, &after) in afters.iter().enumerate() {
            rep.push(RunRecord {
                iteration: i / 3,
                case: StressCase::ALL[i % 3],
                mem_before: 0,
                mem_after: after,
                load_s: 0.1,
                prefill_tps: 1.0,
                decode_tps: 1.0,
                tokens: ids[i % ids.len()].to_vec(),
            });
        }
        rep
    }

    #[test]
    fn steady_memory_after_warm_up_passes() {
        // Warm-up grows (allocator caches), later runs stay within 8 MiB of it.
        let rep = report(
            &[50 * MB, 80 * MB, 100 * MB, 104 * MB, 99 * MB, 107 * MB],
            &[&[1, 2]],
        );
        assert_eq!(rep.baseline(), Some(100 * MB));
        assert_eq!(rep.max_growth(), Some(7 * MB as i64));
        rep.verdict().unwrap();
        assert!(
            rep.summary_line().contains("worst     +7.0 MiB"),
            "{}",
            rep.summary_line()
        );
        assert!(rep.table().contains("result: PASS"), "{}", rep.table());
    }

    #[test]
    fn growth_beyond_tolerance_is_reported_as_a_leak() {
        let rep = report(
            &[100 * MB, 100 * MB, 100 * MB, 105 * MB, 110 * MB, 120 * MB],
            &[&[1, 2]],
        );
        let problems = rep.problems();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(
            problems[0].contains("iteration 1, kv-pbp") && problems[0].contains("leak"),
            "{problems:?}"
        );
        assert!(rep.table().contains("FAIL (2 problem(s))"));
    }

    #[test]
    fn differing_ids_fail_only_when_required() {
        let mut rep = report(&[MB; 3], &[&[1, 2], &[1, 3]]);
        assert!(!rep.ids_agree());
        assert_eq!(rep.problems().len(), 1, "{:?}", rep.problems());
        rep.require_identical = false;
        rep.verdict().unwrap();
    }

    #[test]
    fn a_recorded_failure_fails_and_a_single_iteration_skips_the_memory_check() {
        let mut rep = report(&[MB, 900 * MB, 5 * MB], &[&[4]]);
        rep.verdict().unwrap();
        assert!(rep.table().contains("needs 2 or more"));
        rep.fail("iteration 1, kv-tbt: panic: boom".into());
        let err = rep.verdict().unwrap_err().to_string();
        assert!(err.contains("panic: boom"), "{err}");
    }

    #[test]
    fn child_line_round_trips() {
        let rep = report(&[MB, 2 * MB, 3 * MB], &[&[7, 8, 9]]);
        let stdout = format!("some log\n{}\n", rep.to_child_line());
        assert_eq!(StressReport::from_child_output(&stdout).unwrap(), rep);
        assert!(StressReport::from_child_output("nothing here").is_err());
    }
}
