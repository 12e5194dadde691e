//! Names on disk: `step-000123/` per checkpoint, `.tmp-*` while one is
//! being written, `.trash-*` while one is being deleted, and the data files
//! `tensors-00000.safetensors`, ... inside (a collective save: each rank's
//! `rank-00001-tensors-00000.safetensors`, ..., and while it is being
//! written, the rank's part index `rank-00001.json`).

use std::ops::Range;

/// Prefix of a checkpoint being written (never a valid checkpoint).
pub(crate) const TEMP_PREFIX: &str = ".tmp-";
/// Prefix of a checkpoint being deleted (never a valid checkpoint).
pub(crate) const TRASH_PREFIX: &str = ".trash-";
const STEP_PREFIX: &str = "step-";

/// `step-000123` (at least six digits, more when the step needs them).
pub(crate) fn step_dir_name(step: u64) -> String {
    format!("{STEP_PREFIX}{step:06}")
}

/// The step of a checkpoint directory name, `None` for anything else
/// (temp and trash directories included).
pub(crate) fn parse_step_dir(name: &str) -> Option<u64> {
    let digits = name.strip_prefix(STEP_PREFIX)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Name of the `index`-th data file.
pub(crate) fn shard_file_name(index: usize) -> String {
    format!("tensors-{index:05}.safetensors")
}

/// Name of the `index`-th data file written by `rank` in a collective save.
pub(crate) fn rank_file_name(rank: usize, index: usize) -> String {
    format!("rank-{rank:05}-tensors-{index:05}.safetensors")
}

/// Name of the part index `rank` leaves for rank 0 in a collective save.
pub(crate) fn rank_part_name(rank: usize) -> String {
    format!("rank-{rank:05}.json")
}

/// Name of the temp directory of a collective save: fixed, so that every
/// rank finds the one rank 0 created without being told its name.
pub(crate) fn collective_temp_name(final_name: &str) -> String {
    format!("{TEMP_PREFIX}{final_name}-ranks")
}

/// Splits tensors of the given byte sizes, in order, into consecutive
/// groups of at most `max_bytes` each (a larger tensor gets a file of its
/// own). Several files bound the size of what one checksum covers and keep
/// each file under limits of common filesystems and tools.
pub(crate) fn plan_shards(sizes: &[u64], max_bytes: u64) -> Vec<Range<usize>> {
    let mut shards = Vec::new();
    let mut start = 0;
    let mut filled = 0u64;
    for (i, &size) in sizes.iter().enumerate() {
        if i > start && filled.saturating_add(size) > max_bytes {
            shards.push(start..i);
            start = i;
            filled = 0;
        }
        filled = filled.saturating_add(size);
    }
    // An empty checkpoint still gets one (empty) data file: one layout to read.
    shards.push(start..sizes.len());
    shards
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn should_round_trip_step_names_and_ignore_temp_dirs() {
        for step in [0, 7, 123, 999_999, 1_234_567, u64::MAX] {
            assert_eq!(parse_step_dir(&step_dir_name(step)), Some(step));
        }
        assert_eq!(step_dir_name(123), "step-000123");
        for bad in [
            ".tmp-step-000001-1-2-3",
            ".trash-1",
            "step-",
            "step-12a",
            "step--1",
            "x",
        ] {
            assert_eq!(parse_step_dir(bad), None, "{bad}");
        }
    }

    proptest::proptest! {
        #[test]
        fn should_cover_every_tensor_once_within_the_limit(
            sizes in proptest::collection::vec(0u64..100, 0..40),
            max in 1u64..150,
        ) {
            let shards = plan_shards(&sizes, max);
            let mut next = 0;
            for shard in &shards {
                proptest::prop_assert_eq!(shard.start, next);
                let bytes: u64 = sizes[shard.clone()].iter().sum();
                proptest::prop_assert!(bytes <= max || shard.len() == 1, "{:?} holds {} > {}", shard, bytes, max);
                next = shard.end;
            }
            proptest::prop_assert_eq!(next, sizes.len());
        }
    }

    #[test]
    fn should_split_shards_at_the_byte_limit() {
        assert_eq!(plan_shards(&[4, 4, 4, 4], 8), vec![0..2, 2..4]);
        assert_eq!(plan_shards(&[4, 20, 4], 8), vec![0..1, 1..2, 2..3]);
        assert_eq!(plan_shards(&[1, 2, 3], 100), vec![0..3]);
        assert_eq!(plan_shards(&[], 100), vec![0..0]);
    }
}
