//! A directory of training checkpoints, `step-000123/` each: atomic
//! saves, the newest complete one on resume, the last K kept.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};

use tch::{Device, Tensor};

use crate::dtype::dtype_name;
use crate::error::{Error, IoContext, Result};
use crate::layout::{
    parse_step_dir, plan_shards, shard_file_name, step_dir_name, TEMP_PREFIX, TRASH_PREFIX,
};
use crate::metadata::{CheckpointMetadata, FileRecord, TensorRecord};
use crate::retention::KeepLastCheckpoints;
use crate::safetensors_io::{dtype_and_shape, parse, tensor_from_view, view, write_safetensors};
use crate::staging::{fsync_dir, remove_dir_atomically, sweep_leftovers, StagingDir};
use crate::state::TrainingState;
use crate::verify::{verify_files, verify_selected};

/// Default upper bound on one data file (a larger tensor gets its own file).
pub const DEFAULT_SHARD_BYTES: u64 = 4 << 30;

/// Saves, finds and loads the checkpoints of one run in one directory.
///
/// Only one process may save into a directory at a time: a save removes
/// the temp directories it finds there, assuming they are left over from a
/// killed save.
#[derive(Debug)]
pub struct CheckpointManager {
    pub(crate) dir: PathBuf,
    retention: KeepLastCheckpoints,
    shard_bytes: u64,
    /// Test hook: stop like a kill after this many files of the next save.
    #[cfg(test)]
    crash_after_files: Option<usize>,
}

impl CheckpointManager {
    /// Manages `dir` (created if missing), keeping the last `keep_last` (>= 1).
    pub fn new(dir: &Path, keep_last: usize) -> Result<Self> {
        let retention = KeepLastCheckpoints::new(keep_last)?;
        fs::create_dir_all(dir).io_ctx("create directory", dir)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            retention,
            shard_bytes: DEFAULT_SHARD_BYTES,
            #[cfg(test)]
            crash_after_files: None,
        })
    }

    /// Splits tensor data into files of at most `bytes` each (default 4 GiB).
    pub fn with_shard_bytes(mut self, bytes: u64) -> Self {
        self.shard_bytes = bytes.max(1);
        self
    }

    /// The managed directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// How many checkpoints are kept.
    pub fn keep_last(&self) -> usize {
        self.retention.n()
    }

    /// Writes `state` and `tensors` (unique names; any device and kind with
    /// a safetensors dtype) as `<dir>/step-<state.step>/` and returns that
    /// path. The directory appears complete or not at all; older ones
    /// beyond the last K are deleted only after it is in place (never the
    /// one just written). Saving a step that already exists replaces it
    /// with an atomic swap on Linux, so that step stays loadable throughout.
    pub fn save(&self, state: &TrainingState, tensors: &[(String, Tensor)]) -> Result<PathBuf> {
        let records = check_tensors(tensors)?;
        sweep_leftovers(&self.dir, &[TEMP_PREFIX, TRASH_PREFIX])?;
        let final_name = step_dir_name(state.step);
        let staging = StagingDir::create(&self.dir, &format!("{TEMP_PREFIX}{final_name}-"))?;
        match self.fill(staging.path(), state, tensors, records) {
            Ok(()) => {}
            #[cfg(test)]
            Err(e @ Error::SimulatedCrash { .. }) => {
                staging.abandon();
                return Err(e);
            }
            Err(e) => return Err(e), // dropping `staging` removes it
        }
        let final_path = self.dir.join(&final_name);
        staging.commit_replacing(&final_path, TRASH_PREFIX)?;
        tracing::info!("saved checkpoint {}", final_path.display());
        self.apply_retention(state.step)?;
        Ok(final_path)
    }

    /// Writes the data files, then the metadata (last: it marks completion).
    fn fill(
        &self,
        dir: &Path,
        state: &TrainingState,
        tensors: &[(String, Tensor)],
        mut records: Vec<TensorRecord>,
    ) -> Result<()> {
        self.crash_point(0)?; // killed right after the temp dir was created
        let files = self.write_tensor_files(dir, tensors, &mut records, &shard_file_name)?;
        let meta = CheckpointMetadata::new(state, records, files);
        meta.write(dir)?;
        self.crash_point(meta.files.len() + 1)
    }

    /// Writes `tensors` into data files of at most `shard_bytes` each, named
    /// `file_name(0)`, `file_name(1)`, ..., fsynced; fills in each record's
    /// file and returns the file records.
    pub(crate) fn write_tensor_files(
        &self,
        dir: &Path,
        tensors: &[(String, Tensor)],
        records: &mut [TensorRecord],
        file_name: &dyn Fn(usize) -> String,
    ) -> Result<Vec<FileRecord>> {
        let sizes: Vec<u64> = tensors
            .iter()
            .map(|(_, t)| (t.numel() * t.kind().elt_size_in_bytes()) as u64)
            .collect();
        let mut files = Vec::new();
        for (index, range) in plan_shards(&sizes, self.shard_bytes)
            .into_iter()
            .enumerate()
        {
            let name = file_name(index);
            let shard: Vec<(&str, &Tensor)> = tensors[range.clone()]
                .iter()
                .map(|(n, t)| (n.as_str(), t))
                .collect();
            let written = write_safetensors(&dir.join(&name), &shard, None)?;
            records[range]
                .iter_mut()
                .for_each(|r| r.file = name.clone());
            files.push(FileRecord {
                name,
                bytes: written.bytes,
                sha256: written.sha256,
            });
            self.crash_point(files.len())?;
        }
        Ok(files)
    }

    #[cfg(test)]
    fn crash_point(&self, files_written: usize) -> Result<()> {
        match self.crash_after_files {
            Some(n) if n == files_written => Err(Error::SimulatedCrash { files_written }),
            _ => Ok(()),
        }
    }

    #[cfg(not(test))]
    fn crash_point(&self, _files_written: usize) -> Result<()> {
        Ok(())
    }

    pub(crate) fn apply_retention(&self, just_saved: u64) -> Result<()> {
        let complete = self.list()?;
        let steps: Vec<u64> = complete.iter().map(|(s, _)| *s).collect();
        if let Some(&max) = steps.iter().max().filter(|&&m| m > just_saved) {
            tracing::warn!(
                "{} holds a checkpoint of step {max} > {just_saved}: latest() returns that one",
                self.dir.display()
            );
        }
        let doomed = self.retention.to_delete(&steps, just_saved);
        for (step, path) in complete.iter().filter(|(s, _)| doomed.contains(s)) {
            remove_dir_atomically(path, TRASH_PREFIX)?;
            tracing::info!(
                "deleted checkpoint of step {step} (keeping the last {})",
                self.keep_last()
            );
        }
        if !doomed.is_empty() {
            fsync_dir(&self.dir)?;
        }
        Ok(())
    }

    /// Complete checkpoints (metadata present and readable), by step.
    /// Temp and trash directories are skipped, and so are step directories
    /// without a readable metadata file (logged), which only a crash of
    /// something other than this crate can produce.
    pub fn list(&self) -> Result<Vec<(u64, PathBuf)>> {
        let mut found = Vec::new();
        for entry in fs::read_dir(&self.dir).io_ctx("list directory", &self.dir)? {
            let entry = entry.io_ctx("list directory", &self.dir)?;
            let Some(step) = entry.file_name().to_str().and_then(parse_step_dir) else {
                continue;
            };
            let path = entry.path();
            if !path.is_dir() {
                continue;
            }
            match CheckpointMetadata::read(&path) {
                Ok(_) => found.push((step, path)),
                Err(e @ (Error::MetadataMissing { .. } | Error::MetadataParse { .. })) => {
                    tracing::warn!("ignoring incomplete checkpoint {}: {e}", path.display());
                }
                // A newer format or a foreign file is not "incomplete":
                // skipping it would silently resume from an older state.
                Err(e) => return Err(e),
            }
        }
        found.sort_by_key(|(step, _)| *step);
        Ok(found)
    }

    /// The complete checkpoint with the highest step, if any.
    pub fn latest(&self) -> Result<Option<PathBuf>> {
        Ok(self.list()?.pop().map(|(_, path)| path))
    }

    /// Checks a checkpoint without loading tensors: metadata version, and
    /// every data file present with its recorded length and SHA-256.
    pub fn verify(path: &Path) -> Result<CheckpointMetadata> {
        let meta = CheckpointMetadata::read(path)?;
        verify_files(path, &meta)?;
        Ok(meta)
    }

    /// Loads a checkpoint directory: the state, and the tensors in the
    /// order they were saved, bit-exact, on `device`. Every file is checked
    /// against its checksum first.
    pub fn load(path: &Path, device: Device) -> Result<(TrainingState, Vec<(String, Tensor)>)> {
        Self::load_selected(path, device, &|_| true)
    }

    /// Loads only the tensors `want` accepts (by name, in saved order): what
    /// one rank of a sharded run needs, whatever world size wrote the
    /// checkpoint. Every listed file must be present with its recorded
    /// length; only the files holding a wanted tensor are read and checked
    /// against their checksums.
    pub fn load_selected(
        path: &Path,
        device: Device,
        want: &dyn Fn(&str) -> bool,
    ) -> Result<(TrainingState, Vec<(String, Tensor)>)> {
        let meta = CheckpointMetadata::read(path)?;
        let wanted: Vec<&TensorRecord> = meta.tensors.iter().filter(|t| want(&t.name)).collect();
        let needed: HashSet<&str> = wanted.iter().map(|t| t.file.as_str()).collect();
        let maps = verify_selected(path, &meta, &|f| needed.contains(f))?;
        let mut parsed = HashMap::with_capacity(maps.len());
        for (name, map) in &maps {
            let file = path.join(name);
            parsed.insert(name.as_str(), (parse(&file, map)?, file));
        }
        let mut tensors = Vec::with_capacity(wanted.len());
        for record in wanted {
            let (st, file) = &parsed[record.file.as_str()]; // verify_selected checked the index
            let view = view(file, st, &record.name)?;
            let got = format!("{} {:?}", dtype_name(view.dtype()), view.shape());
            let expected = format!("{} {:?}", record.dtype, record.shape);
            if got != expected {
                return Err(Error::TensorMismatch {
                    path: file.clone(),
                    name: record.name.clone(),
                    expected,
                    got,
                });
            }
            tensors.push((
                record.name.clone(),
                tensor_from_view(file, &record.name, &view, device)?,
            ));
        }
        Ok((meta.state, tensors))
    }
}

/// Rejects duplicate names and unstorable kinds before anything is written;
/// returns the index records (file names filled in while writing).
pub(crate) fn check_tensors(tensors: &[(String, Tensor)]) -> Result<Vec<TensorRecord>> {
    let mut seen = HashSet::with_capacity(tensors.len());
    tensors
        .iter()
        .map(|(name, t)| {
            if !seen.insert(name.as_str()) {
                return Err(Error::DuplicateTensorName { name: name.clone() });
            }
            let (dtype, shape) = dtype_and_shape(name, t)?;
            Ok(TensorRecord {
                name: name.clone(),
                dtype: dtype_name(dtype),
                shape,
                file: String::new(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    fn tensors(seed: i64) -> Vec<(String, Tensor)> {
        tch::manual_seed(seed);
        vec![
            (
                "w".into(),
                Tensor::randn([4, 8], (Kind::Float, Device::Cpu)),
            ),
            (
                "optim.m.w".into(),
                Tensor::randn([4, 8], (Kind::BFloat16, Device::Cpu)),
            ),
            (
                "optim.v.w.q".into(),
                Tensor::randint(127, [32], (Kind::Int8, Device::Cpu)),
            ),
            (
                "optim.v.w.absmax".into(),
                Tensor::rand([2], (Kind::Float, Device::Cpu)),
            ),
        ]
    }

    fn state(step: u64) -> TrainingState {
        TrainingState {
            step,
            epoch: step / 10,
            data_cursor: step * 8,
            rng_state: vec![step as u8; 16],
            ..Default::default()
        }
    }

    fn assert_same(a: &[(String, Tensor)], b: &[(String, Tensor)]) {
        assert_eq!(a.len(), b.len());
        for ((na, ta), (nb, tb)) in a.iter().zip(b) {
            assert_eq!(na, nb);
            assert_eq!(ta.kind(), tb.kind(), "{na}");
            assert!(ta.equal(tb), "{na} differs");
        }
    }

    fn dir_names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn should_keep_the_previous_checkpoint_when_killed_at_any_point_of_a_save() {
        let seed = test_support::seed_i64();
        let root = tempfile::tempdir().unwrap();
        // Tiny shards: three data files + the metadata, and the empty temp
        // dir before them: five crash points.
        let mut manager = CheckpointManager::new(root.path(), 3)
            .unwrap()
            .with_shard_bytes(100);
        let first = tensors(seed);
        let first_path = manager.save(&state(10), &first).unwrap();
        let files_per_save = CheckpointMetadata::read(&first_path).unwrap().files.len() + 1;
        assert_eq!(files_per_save, 4, "test needs several data files per save");

        for crash_after in 0..=files_per_save {
            manager.crash_after_files = Some(crash_after);
            let err = manager.save(&state(20), &tensors(seed + 1)).unwrap_err();
            assert!(
                matches!(err, Error::SimulatedCrash { files_written } if files_written == crash_after)
            );
            assert_eq!(
                manager.latest().unwrap(),
                Some(first_path.clone()),
                "crash after {crash_after}"
            );
            let (loaded_state, loaded) = CheckpointManager::load(&first_path, Device::Cpu).unwrap();
            assert_eq!(loaded_state, state(10));
            assert_same(&loaded, &first);
        }
        assert!(
            dir_names(root.path())
                .iter()
                .any(|n| n.starts_with(TEMP_PREFIX)),
            "kills leave temp dirs"
        );

        manager.crash_after_files = None;
        let second = tensors(seed + 2);
        let second_path = manager.save(&state(20), &second).unwrap();
        assert_eq!(
            dir_names(root.path()),
            vec!["step-000010", "step-000020"],
            "leftovers swept"
        );
        assert_eq!(manager.latest().unwrap(), Some(second_path.clone()));
        assert_same(
            &CheckpointManager::load(&second_path, Device::Cpu)
                .unwrap()
                .1,
            &second,
        );
    }

    #[test]
    fn should_delete_oldest_only_after_the_new_one_is_complete() {
        let root = tempfile::tempdir().unwrap();
        let mut manager = CheckpointManager::new(root.path(), 1).unwrap();
        manager.save(&state(1), &tensors(1)).unwrap();
        // A killed save of step 2 must not have cost us step 1.
        manager.crash_after_files = Some(2);
        manager.save(&state(2), &tensors(2)).unwrap_err();
        assert_eq!(manager.list().unwrap().len(), 1);
        assert!(root.path().join("step-000001").is_dir());
        manager.crash_after_files = None;
        manager.save(&state(2), &tensors(2)).unwrap();
        assert_eq!(dir_names(root.path()), vec!["step-000002"]);
    }

    #[test]
    fn should_replace_a_checkpoint_saved_again_at_the_same_step() {
        let root = tempfile::tempdir().unwrap();
        let manager = CheckpointManager::new(root.path(), 2).unwrap();
        manager.save(&state(5), &tensors(1)).unwrap();
        let again = tensors(2);
        let path = manager.save(&state(5), &again).unwrap();
        assert_same(
            &CheckpointManager::load(&path, Device::Cpu).unwrap().1,
            &again,
        );
        assert_eq!(dir_names(root.path()), vec!["step-000005"]);
    }

    #[test]
    fn should_write_nothing_when_names_repeat() {
        let root = tempfile::tempdir().unwrap();
        let manager = CheckpointManager::new(root.path(), 2).unwrap();
        let mut named = tensors(1);
        named.push(("w".into(), Tensor::zeros([1], (Kind::Float, Device::Cpu))));
        let err = manager.save(&state(1), &named).unwrap_err();
        assert!(
            matches!(err, Error::DuplicateTensorName { ref name } if name == "w"),
            "{err}"
        );
        assert!(dir_names(root.path()).is_empty());
    }
}
