//! Collective saves: every rank of a group writes its own shard of the
//! training state, in parallel, into one temp directory; rank 0 lists every
//! rank's files in the metadata, written last, and publishes the directory
//! by the same rename as a single-process save. So a sharded checkpoint is
//! one ordinary checkpoint directory (same metadata, same format version),
//! visible only once complete, and any reader (one process, or each rank of
//! another world size through [`CheckpointManager::load_selected`]) finds
//! every tensor by name in the metadata.
//!
//! The ranks agree after each stage ([`RankGroup::all_ok`]): a rank that
//! fails, dies or hangs stops the others at the next agreement, before
//! anything is published; rank 0 then removes the temp directory (a killed
//! rank 0 leaves it, and the next save sweeps it).
//!
//! The directory must be the same one on every rank: a shared filesystem
//! when the ranks span hosts.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::error::{Error, IoContext, Result};
use crate::layout::{
    collective_temp_name, rank_file_name, rank_part_name, step_dir_name, TEMP_PREFIX, TRASH_PREFIX,
};
use crate::manager::{check_tensors, CheckpointManager};
use crate::metadata::{write_json_synced, CheckpointMetadata, FileRecord, TensorRecord};
use crate::staging::{sweep_leftovers, StagingDir};
use crate::state::TrainingState;

/// What a collective save needs of a group of processes. The trainer
/// implements it over its process group; this crate knows no transport.
pub trait RankGroup {
    /// This process's rank, `0..world_size()`.
    fn rank(&self) -> usize;
    /// Number of ranks.
    fn world_size(&self) -> usize;
    /// Called by every rank with its own verdict; returns `true` on every
    /// rank if and only if every rank passed `true`, or the group's error
    /// as text when the group itself failed (a rank died, a timeout).
    fn all_ok(&self, ok: bool) -> std::result::Result<bool, String>;
}

/// What one rank wrote: the records rank 0 copies into the metadata.
#[derive(Debug, Serialize, Deserialize)]
struct Part {
    rank: usize,
    tensors: Vec<TensorRecord>,
    files: Vec<FileRecord>,
}

impl CheckpointManager {
    /// Saves one checkpoint of `state` together with the other ranks of
    /// `group`, each passing its own `tensors` (names unique across all
    /// ranks; `state` is rank 0's). Every rank must call it, with the same
    /// step; every rank gets the published path, or an error on every rank
    /// (the failing rank's own error names the file) with nothing published.
    ///
    /// Rank `r` writes `rank-<r>-tensors-<i>.safetensors` (split at the
    /// shard size like a single-process save); rank 0 writes the metadata
    /// last, renames the directory into place and applies the retention.
    pub fn save_collective(
        &self,
        group: &dyn RankGroup,
        state: &TrainingState,
        tensors: &[(String, Tensor)],
    ) -> Result<PathBuf> {
        let rank = group.rank();
        let final_name = step_dir_name(state.step);
        let temp_name = collective_temp_name(&final_name);
        // 1. Rank 0 clears what killed saves left and creates the temp dir.
        let staging = match rank {
            0 => sweep_leftovers(&self.dir, &[TEMP_PREFIX, TRASH_PREFIX])
                .and_then(|_| StagingDir::create_named(&self.dir, &temp_name))
                .map(Some),
            _ => Ok(None),
        };
        let staging = agree(group, "create the temp directory", staging)?;
        // 2. Every rank writes its shard and its part index.
        let written = self.write_part(&self.dir.join(&temp_name), rank, tensors);
        agree(group, "write the ranks' shards", written)?;
        // 3. Rank 0 lists every part in the metadata and publishes.
        let final_path = self.dir.join(&final_name);
        let published = match staging {
            Some(staging) => publish_parts(staging, &final_path, state, group.world_size()),
            None => Ok(()),
        };
        agree(group, "publish", published)?;
        if rank == 0 {
            tracing::info!(
                "saved checkpoint {} ({} ranks' shards)",
                final_path.display(),
                group.world_size()
            );
            self.apply_retention(state.step)?;
        }
        Ok(final_path)
    }

    /// Writes this rank's data files and, last, its part index, all fsynced.
    fn write_part(&self, dir: &Path, rank: usize, tensors: &[(String, Tensor)]) -> Result<()> {
        let mut records = check_tensors(tensors)?;
        let files =
            self.write_tensor_files(dir, tensors, &mut records, &|i| rank_file_name(rank, i))?;
        let part = Part {
            rank,
            tensors: records,
            files,
        };
        write_json_synced(&dir.join(rank_part_name(rank)), &part)
    }
}

/// Rank 0: reads every rank's part index, writes the metadata listing all
/// of them (the part indexes removed: the metadata is the one manifest),
/// and renames the directory into place.
fn publish_parts(
    staging: StagingDir,
    final_path: &Path,
    state: &TrainingState,
    world: usize,
) -> Result<()> {
    let dir = staging.path();
    let mut tensors = Vec::new();
    let mut files = Vec::new();
    for rank in 0..world {
        let part = read_part(dir, rank)?;
        tensors.extend(part.tensors);
        files.extend(part.files);
    }
    let mut seen = std::collections::HashSet::with_capacity(tensors.len());
    if let Some(t) = tensors.iter().find(|t| !seen.insert(t.name.as_str())) {
        return Err(Error::DuplicateTensorName {
            name: t.name.clone(),
        });
    }
    for rank in 0..world {
        let path = dir.join(rank_part_name(rank));
        fs::remove_file(&path).io_ctx("remove part index", &path)?;
    }
    CheckpointMetadata::new(state, tensors, files).write(dir)?;
    staging.commit_replacing(final_path, TRASH_PREFIX)
}

fn read_part(dir: &Path, rank: usize) -> Result<Part> {
    let path = dir.join(rank_part_name(rank));
    let unreadable = |reason: String| Error::PartUnreadable {
        path: path.clone(),
        rank,
        reason,
    };
    let text = fs::read_to_string(&path).map_err(|e| unreadable(e.to_string()))?;
    let part: Part = serde_json::from_str(&text).map_err(|e| unreadable(e.to_string()))?;
    if part.rank != rank {
        return Err(unreadable(format!("it says it is rank {}'s", part.rank)));
    }
    Ok(part)
}

/// Every rank's verdict on one stage: this rank's result when all
/// succeeded; else this rank's own error, or one saying another rank failed.
fn agree<T>(group: &dyn RankGroup, during: &'static str, local: Result<T>) -> Result<T> {
    match (group.all_ok(local.is_ok()), local) {
        (_, Err(e)) => Err(e),
        (Ok(true), ok) => ok,
        (Ok(false), Ok(_)) => Err(Error::OtherRankFailed { during }),
        (Err(message), Ok(_)) => Err(Error::Group { during, message }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Barrier, Mutex};
    use tch::{Device, Kind};

    /// Ranks as threads: `all_ok` meets at a barrier. `die_at` makes one
    /// rank fail the group at its n-th agreement, as a killed peer would.
    struct Threads {
        rank: usize,
        world: usize,
        barrier: Arc<Barrier>,
        votes: Arc<Mutex<Vec<bool>>>,
        calls: Mutex<usize>,
        die_at: Option<(usize, usize)>,
    }

    impl RankGroup for Threads {
        fn rank(&self) -> usize {
            self.rank
        }
        fn world_size(&self) -> usize {
            self.world
        }
        fn all_ok(&self, ok: bool) -> std::result::Result<bool, String> {
            let mut calls = self.calls.lock().unwrap();
            *calls += 1;
            let dead = self
                .die_at
                .is_some_and(|(rank, n)| rank == self.rank && n == *calls);
            self.votes.lock().unwrap().push(ok && !dead);
            self.barrier.wait();
            let all = self.votes.lock().unwrap().iter().all(|&v| v);
            self.barrier.wait();
            self.votes.lock().unwrap().clear();
            self.barrier.wait();
            match dead {
                true => Err("killed".into()),
                false => Ok(all),
            }
        }
    }

    fn rank_tensors(rank: usize, step: u64) -> Vec<(String, Tensor)> {
        let v = (rank as f64) + step as f64 / 10.0;
        vec![
            (
                format!("w{rank}"),
                Tensor::full([3, 2], v, (Kind::Float, Device::Cpu)),
            ),
            (
                format!("optim.w{rank}.m"),
                Tensor::full([5], -v, (Kind::BFloat16, Device::Cpu)),
            ),
        ]
    }

    /// Runs a save of `step` by `world` thread ranks; returns each rank's result.
    fn save_all(
        dir: &Path,
        world: usize,
        step: u64,
        die_at: Option<(usize, usize)>,
    ) -> Vec<Result<PathBuf>> {
        let barrier = Arc::new(Barrier::new(world));
        let votes = Arc::new(Mutex::new(Vec::new()));
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..world)
                .map(|rank| {
                    let group = Threads {
                        rank,
                        world,
                        barrier: barrier.clone(),
                        votes: votes.clone(),
                        calls: Mutex::new(0),
                        die_at,
                    };
                    s.spawn(move || {
                        let manager = CheckpointManager::new(dir, 2).unwrap().with_shard_bytes(30);
                        let state = TrainingState {
                            step,
                            ..Default::default()
                        };
                        manager.save_collective(&group, &state, &rank_tensors(rank, step))
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        })
    }

    #[test]
    fn should_publish_every_ranks_shard_under_one_metadata() {
        let root = tempfile::tempdir().unwrap();
        let results = save_all(root.path(), 3, 4, None);
        let path = root.path().join("step-000004");
        for r in &results {
            assert_eq!(r.as_ref().unwrap(), &path);
        }
        let meta = CheckpointManager::verify(&path).unwrap();
        // Shard bytes 30: each rank's 24-byte weight and 10-byte moment in two files.
        let names: Vec<&str> = meta.files.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(
            names,
            [0, 1, 2]
                .iter()
                .flat_map(|r| [rank_file_name(*r, 0), rank_file_name(*r, 1)])
                .collect::<Vec<_>>()
        );
        let (_, all) = CheckpointManager::load(&path, Device::Cpu).unwrap();
        let want: Vec<(String, Tensor)> = (0..3).flat_map(|r| rank_tensors(r, 4)).collect();
        assert_eq!(all.len(), want.len());
        for ((n, t), (wn, wt)) in all.iter().zip(&want) {
            assert_eq!(n, wn);
            assert!(t.equal(wt), "{n}");
        }
        // Another world size reads only what it needs.
        let (_, some) =
            CheckpointManager::load_selected(&path, Device::Cpu, &|n| n.contains("w1")).unwrap();
        assert_eq!(
            some.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
            ["w1", "optim.w1.m"]
        );
        // Only the metadata and the data files: no part index, no temp dir.
        assert_eq!(std::fs::read_dir(&path).unwrap().count(), 7);
        assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 1);
    }

    #[test]
    fn should_publish_nothing_when_a_rank_dies_before_rank_0_publishes() {
        for die_at in 1..=2 {
            for dying in [0, 2] {
                let root = tempfile::tempdir().unwrap();
                let first = save_all(root.path(), 3, 1, None);
                assert!(first.iter().all(|r| r.is_ok()));
                let results = save_all(root.path(), 3, 2, Some((dying, die_at)));
                assert!(results.iter().all(|r| r.is_err()), "{results:?}");
                let manager = CheckpointManager::new(root.path(), 2).unwrap();
                assert_eq!(
                    manager.latest().unwrap(),
                    Some(root.path().join("step-000001")),
                    "rank {dying} dead at agreement {die_at}"
                );
                // Rank 0 alive: it removed the temp dir.
                if dying != 0 {
                    assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 1);
                }
            }
        }
    }

    #[test]
    fn should_name_the_other_ranks_failure_and_the_group_error() {
        let root = tempfile::tempdir().unwrap();
        let results = save_all(root.path(), 2, 1, Some((1, 2)));
        let text: Vec<String> = results
            .iter()
            .map(|r| r.as_ref().unwrap_err().to_string())
            .collect();
        assert!(text[0].contains("another rank failed"), "{}", text[0]);
        assert!(text[1].contains("killed"), "{}", text[1]);
    }
}
