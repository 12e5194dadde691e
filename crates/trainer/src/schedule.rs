//! Learning-rate schedules: linear warmup, then constant or cosine decay.

use std::f64::consts::PI;
use std::str::FromStr;

use crate::error::{Error, Result};

/// Learning-rate multiplier as a function of the optimizer step.
///
/// Warmup is linear and never yields zero: step `s < warmup` gets
/// `(s + 1) / warmup`, so the first update already moves the weights.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Schedule {
    /// Warmup, then the base rate for ever.
    Constant {
        /// Warmup steps.
        warmup: u64,
    },
    /// Warmup, then half a cosine from the base rate down to
    /// `min_lr_ratio * base` at step `total` (held there afterwards).
    Cosine {
        /// Warmup steps.
        warmup: u64,
        /// Step at which the decay ends (usually the run's total steps).
        total: u64,
        /// Final rate as a fraction of the base rate, in `[0, 1]`.
        min_lr_ratio: f64,
    },
}

/// The schedule family chosen on the command line (`constant` | `cosine`);
/// [`ScheduleKind::build`] adds the numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScheduleKind {
    /// [`Schedule::Constant`].
    Constant,
    /// [`Schedule::Cosine`].
    #[default]
    Cosine,
}

impl FromStr for ScheduleKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "constant" => Ok(Self::Constant),
            "cosine" => Ok(Self::Cosine),
            _ => Err(Error::ParseOption {
                name: "schedule",
                expected: "constant, cosine",
                got: s.into(),
            }),
        }
    }
}

/// The spelling [`FromStr`] accepts (for `--help` defaults and logs).
impl std::fmt::Display for ScheduleKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Constant => "constant",
            Self::Cosine => "cosine",
        })
    }
}

impl ScheduleKind {
    /// The concrete schedule for a run of `total` steps.
    pub fn build(self, warmup: u64, total: u64, min_lr_ratio: f64) -> Result<Schedule> {
        let s = match self {
            ScheduleKind::Constant => Schedule::Constant { warmup },
            ScheduleKind::Cosine => Schedule::Cosine {
                warmup,
                total,
                min_lr_ratio,
            },
        };
        s.validate()?;
        Ok(s)
    }
}

impl Schedule {
    /// Rejects a ratio outside `[0, 1]` or a warmup longer than the run.
    pub fn validate(&self) -> Result<()> {
        if let Schedule::Cosine {
            warmup,
            total,
            min_lr_ratio,
        } = *self
        {
            if !(0.0..=1.0).contains(&min_lr_ratio) {
                return Err(Error::config(
                    "min_lr_ratio",
                    "a number in [0, 1]",
                    min_lr_ratio,
                ));
            }
            if warmup > total {
                return Err(Error::config(
                    "warmup",
                    format!("at most the total steps ({total})"),
                    warmup,
                ));
            }
        }
        Ok(())
    }

    /// Multiplier of the base rate at optimizer step `step` (0-based).
    pub fn factor(&self, step: u64) -> f64 {
        let warmup = match *self {
            Schedule::Constant { warmup } | Schedule::Cosine { warmup, .. } => warmup,
        };
        if step < warmup {
            return (step + 1) as f64 / warmup as f64;
        }
        match *self {
            Schedule::Constant { .. } => 1.0,
            Schedule::Cosine {
                warmup,
                total,
                min_lr_ratio,
            } => {
                let span = total.saturating_sub(warmup).max(1) as f64;
                let progress = ((step - warmup) as f64 / span).min(1.0);
                min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + (PI * progress).cos())
            }
        }
    }

    /// Learning rate at `step` for base rate `base_lr`.
    pub fn lr(&self, base_lr: f64, step: u64) -> f64 {
        base_lr * self.factor(step)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_rises_linearly_and_never_starts_at_zero() {
        let s = Schedule::Constant { warmup: 4 };
        let f: Vec<f64> = (0..6).map(|i| s.factor(i)).collect();
        assert_eq!(f, vec![0.25, 0.5, 0.75, 1.0, 1.0, 1.0]);
    }

    #[test]
    fn cosine_hits_base_after_warmup_and_min_at_total() {
        let s = Schedule::Cosine {
            warmup: 10,
            total: 110,
            min_lr_ratio: 0.1,
        };
        assert!((s.factor(10) - 1.0).abs() < 1e-12);
        // Half-way through the decay the cosine is at its midpoint.
        assert!((s.factor(60) - 0.55).abs() < 1e-12, "{}", s.factor(60));
        assert!((s.factor(110) - 0.1).abs() < 1e-12);
        assert!(
            (s.factor(500) - 0.1).abs() < 1e-12,
            "held at the floor after total"
        );
        let mut prev = f64::INFINITY;
        for step in 10..=110 {
            let f = s.factor(step);
            assert!(f <= prev + 1e-15, "cosine must not increase (step {step})");
            prev = f;
        }
    }

    #[test]
    fn lr_scales_the_base_rate() {
        let s = Schedule::Cosine {
            warmup: 0,
            total: 2,
            min_lr_ratio: 0.0,
        };
        assert!((s.lr(3e-4, 0) - 3e-4).abs() < 1e-18);
        assert!((s.lr(3e-4, 1) - 1.5e-4).abs() < 1e-15);
        assert_eq!(s.lr(3e-4, 2), 0.0);
    }

    #[test]
    fn bad_ratio_and_overlong_warmup_are_rejected() {
        let e = ScheduleKind::Cosine.build(0, 10, 1.5).unwrap_err();
        assert!(e.to_string().contains("min_lr_ratio"), "{e}");
        let e = ScheduleKind::Cosine.build(20, 10, 0.1).unwrap_err();
        assert!(e.to_string().contains("warmup"), "{e}");
        assert!("linear"
            .parse::<ScheduleKind>()
            .unwrap_err()
            .to_string()
            .contains("constant, cosine"));
    }
}
