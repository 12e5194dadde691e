//! Which old checkpoints to delete once a new one is complete.

use crate::error::{Error, Result};

/// Keeps the checkpoint just saved plus the `n - 1` others with the highest
/// steps, and deletes the rest.
///
/// The one just saved is never deleted even if older ones have higher
/// steps (a run restarted into a used directory), so a save always leaves
/// its checkpoint on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeepLastCheckpoints {
    n: usize,
}

impl KeepLastCheckpoints {
    /// `n` must be at least 1: the checkpoint just written is always kept.
    pub fn new(n: usize) -> Result<Self> {
        if n == 0 {
            return Err(Error::InvalidKeepLast { got: n });
        }
        Ok(Self { n })
    }

    /// How many checkpoints are kept.
    pub fn n(&self) -> usize {
        self.n
    }

    /// The steps to delete among `steps` (any order, including `just_saved`).
    pub fn to_delete(&self, steps: &[u64], just_saved: u64) -> Vec<u64> {
        let mut others: Vec<u64> = steps.iter().copied().filter(|&s| s != just_saved).collect();
        others.sort_unstable();
        others.dedup();
        let excess = others.len().saturating_sub(self.n - 1);
        others.truncate(excess);
        others
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn should_delete_oldest_when_more_than_n() {
        let keep = KeepLastCheckpoints::new(2).unwrap();
        assert_eq!(keep.to_delete(&[30, 10, 40, 20], 40), vec![10, 20]);
    }

    #[test]
    fn should_delete_nothing_when_at_most_n() {
        let keep = KeepLastCheckpoints::new(3).unwrap();
        assert!(keep.to_delete(&[5, 1, 9], 9).is_empty());
        assert!(keep.to_delete(&[7], 7).is_empty());
    }

    #[test]
    fn should_never_delete_the_checkpoint_just_saved() {
        let keep = KeepLastCheckpoints::new(2).unwrap();
        // A restarted run saved step 3 next to steps 100 and 200.
        assert_eq!(keep.to_delete(&[100, 200, 3], 3), vec![100]);
        let keep_one = KeepLastCheckpoints::new(1).unwrap();
        assert_eq!(keep_one.to_delete(&[100, 200, 3], 3), vec![100, 200]);
    }

    #[test]
    fn should_reject_keeping_zero() {
        assert!(matches!(
            KeepLastCheckpoints::new(0),
            Err(Error::InvalidKeepLast { got: 0 })
        ));
    }
}
