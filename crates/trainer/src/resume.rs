//! Saving and restoring everything a resume needs through the checkpoint
//! crate: master weights, optimizer moments, step, epoch, data cursor and
//! the data order's seed, so that N steps straight and N/2 + resume + N/2
//! give the same losses.
//!
//! Frozen tensors (`--train-last-layers`) are not saved: they come from the
//! base model, which a resumed run must load the same way.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use checkpoint::{CheckpointManager, CheckpointMetadata, TrainingState};
use serde_json::json;
use tch::Tensor;

use crate::batch::DataCursor;
use crate::error::{Error, Result};
use crate::trainer::Trainer;

/// Layout of [`TrainingState::rng_state`]: the data order is a pure function
/// of (seed, epoch) (ChaCha8, stream = epoch), so the seed is the state.
const RNG_TAG: &[u8; 8] = b"chacha8s";

impl Trainer {
    /// Writes a checkpoint for the current step (no-op without a checkpoint
    /// directory, and on data-parallel ranks other than 0, whose state equals
    /// rank 0's) and returns its path.
    ///
    /// Under ZeRO-1 in a group every rank must call it, and every rank gets
    /// the path: the save is collective (`CheckpointManager::save_collective`).
    /// Each rank writes the tensors it owns, master weights and AdamW
    /// moments, to its own files in the one temp directory; rank 0 writes
    /// the metadata last and publishes the directory by rename. Tensor names,
    /// dtypes and shapes are those of an unsharded run, so any world size
    /// (or a single process) resumes from it.
    pub fn save_checkpoint(&self) -> Result<Option<PathBuf>> {
        let Some(mgr) = self.ckpt.as_ref() else {
            return Ok(None);
        };
        if let Some(owned) = self.owned_checkpoint_tensors()? {
            let dp = self.dp.as_ref().expect("ZeRO-1 tensors come with a group");
            return Ok(Some(mgr.save_collective(
                dp,
                &self.training_state(),
                &owned,
            )?));
        }
        if !self.is_main_process() {
            return Ok(None);
        }
        let mut tensors: Vec<(String, Tensor)> = self
            .names
            .iter()
            .zip(&self.params)
            .map(|(n, p)| (n.clone(), p.detach()))
            .collect();
        if self.optim_pending {
            // ZeRO-1 without a group, before the first step: a fresh state.
            let named = self
                .names
                .iter()
                .cloned()
                .zip(self.params.iter().map(Tensor::shallow_clone));
            let fresh = crate::trainer::build_optimizer(&self.cfg, named.collect())?;
            tensors.extend(fresh.state_tensors());
        } else {
            tensors.extend(self.optim.state_tensors());
        }
        Ok(Some(mgr.save(&self.training_state(), &tensors)?))
    }

    /// Everything but the tensors, as the checkpoint stores it.
    fn training_state(&self) -> TrainingState {
        let mut rng_state = RNG_TAG.to_vec();
        rng_state.extend_from_slice(&self.cfg.seed.to_le_bytes());
        TrainingState {
            step: self.step,
            epoch: self.cursor.epoch,
            data_cursor: self.cursor.index,
            rng_state,
            config_json: self.model.config().to_json_string(),
            run_args: self.run_args.clone(),
            extra: json!({
                "optim_steps": self.optim.steps_taken(),
                "optim_state": self.cfg.adamw.state.as_str(),
                "master_dtype": self.cfg.master_dtype,
                "skipped_steps": self.skipped,
                "examples": self.data.examples.len(),
                "train_config": self.cfg,
            }),
        }
    }

    /// The latest checkpoint of this run's checkpoint directory, if any.
    pub fn latest_checkpoint(&self) -> Result<Option<PathBuf>> {
        match &self.ckpt {
            Some(mgr) => Ok(mgr.latest()?),
            None => Ok(None),
        }
    }

    /// Restores weights, optimizer state, step, cursor and seed from a
    /// checkpoint written by [`Trainer::save_checkpoint`] for the same model,
    /// data and trainable set. The metrics log is cut to the checkpoint's
    /// step and then appended to.
    ///
    /// The checkpoint does not depend on the world size: any group (or none)
    /// resumes from it. Under ZeRO-1 in a group every rank must call it:
    /// each reads (into CPU memory) and checks only the files holding the
    /// tensors it owns at this world size, weights and moments
    /// (re-sharding on load); the ranks agree that all succeeded, then every
    /// weight is broadcast from its owner.
    pub fn resume_from(&mut self, path: &Path) -> Result<()> {
        self.ensure_optimizer(None)?;
        let local = self.restore_local(path);
        let state = match &self.dp {
            Some(dp) if dp.is_zero1() => dp.agree(local, |why| Error::BadCheckpoint {
                path: path.to_path_buf(),
                reason: format!("resuming: {why}"),
            })?,
            _ => local?,
        };
        // ZeRO-1: the weights each rank restored, to every rank.
        self.sync_sharded_weights()?;
        self.step = state.step;
        self.cursor = DataCursor {
            epoch: state.epoch,
            index: state.data_cursor,
        };
        self.skipped = state.extra["skipped_steps"].as_u64().unwrap_or(0);
        // A run killed after its last checkpoint logged steps that will run
        // again: cut them, so each step is in the log once.
        if let Some(log) = &self.cfg.metrics {
            if self.is_main_process() {
                crate::metrics::MetricsLog::truncate_after(log, self.step)?;
            }
        }
        self.append_log = true;
        tracing::info!(
            "resumed from {} at step {} (epoch {}, example {})",
            path.display(),
            self.step,
            state.epoch,
            state.data_cursor
        );
        Ok(())
    }

    /// This rank's part of a resume: reads its tensors (all of them, or
    /// under ZeRO-1 the ones it owns), checks them against the run and
    /// restores them into the weights and the optimizer.
    fn restore_local(&mut self, path: &Path) -> Result<TrainingState> {
        let bad = |reason: String| Error::BadCheckpoint {
            path: path.to_path_buf(),
            reason,
        };
        let owned: Option<Vec<String>> = self
            .owned_names()
            .map(|v| v.into_iter().map(str::to_string).collect());
        let (state, tensors) = match &owned {
            None => CheckpointManager::load(path, self.model.device())?,
            Some(owned) => {
                let meta = CheckpointMetadata::read(path)?;
                let foreign: Vec<&str> = meta
                    .tensors
                    .iter()
                    .map(|t| t.name.as_str())
                    .filter(|n| self.param_of_key(n).is_none())
                    .collect();
                if !foreign.is_empty() {
                    return Err(bad(format!(
                        "holds tensors this run does not train: {}",
                        foreign.join(", ")
                    )));
                }
                // ZeRO-1: no rank holds the whole state, not even in CPU memory.
                let want = |key: &str| {
                    self.param_of_key(key)
                        .is_some_and(|p| owned.iter().any(|o| o == p))
                };
                CheckpointManager::load_selected(path, tch::Device::Cpu, &want)?
            }
        };
        self.check_compatible(&state, &bad)?;
        let mut map: HashMap<String, Tensor> = tensors.into_iter().collect();
        for (name, param) in self.names.iter().zip(&self.params) {
            if owned.as_ref().is_some_and(|o| !o.contains(name)) {
                continue; // another rank's: broadcast from it after the load
            }
            let t = map.remove(name).ok_or_else(|| {
                bad(format!(
                    "no tensor {name} (saved with another --train-last-layers?)"
                ))
            })?;
            // Under ZeRO-1 with sharded masters the checkpoint holds the f32
            // master of a narrower parameter.
            let master = self.optim.master_of(name);
            let kind = master.as_ref().map_or(param.kind(), Tensor::kind);
            if t.size() != param.size() || t.kind() != kind {
                return Err(bad(format!(
                    "tensor {name} is {:?} {:?}, the model has {:?} {:?}",
                    t.kind(),
                    t.size(),
                    kind,
                    param.size()
                )));
            }
            match master {
                Some(_) => self.optim.restore_master(name, &t),
                None => tch::no_grad(|| param.shallow_clone().copy_(&t)),
            }
        }
        let optim_steps = state.extra["optim_steps"]
            .as_u64()
            .ok_or_else(|| bad("extra.optim_steps missing".into()))?;
        self.optim
            .restore(optim_steps, &mut |n| map.remove(n))
            .map_err(|e| bad(e.to_string()))?;
        if !map.is_empty() {
            let mut extra: Vec<_> = map.into_keys().collect();
            extra.sort();
            return Err(bad(format!(
                "holds tensors this run does not train: {}",
                extra.join(", ")
            )));
        }
        Ok(state)
    }

    /// The trainable tensor a checkpoint key belongs to: the tensor itself,
    /// or `optim.<name>.<moment>`; `None` for anything else.
    fn param_of_key<'a>(&'a self, key: &str) -> Option<&'a str> {
        let moment = key.strip_prefix("optim.");
        self.names
            .iter()
            .find(|n| {
                *n == key
                    || moment.is_some_and(|k| {
                        k.strip_prefix(n.as_str())
                            .is_some_and(|rest| rest.starts_with('.'))
                    })
            })
            .map(String::as_str)
    }

    fn check_compatible(
        &mut self,
        state: &TrainingState,
        bad: &dyn Fn(String) -> Error,
    ) -> Result<()> {
        let seed = match state.rng_state.as_slice() {
            [tag @ .., a, b, c, d, e, f, g, h] if tag == RNG_TAG => {
                u64::from_le_bytes([*a, *b, *c, *d, *e, *f, *g, *h])
            }
            _ => return Err(bad("rng_state is not the trainer's (chacha8 seed)".into())),
        };
        if seed != self.cfg.seed {
            return Err(bad(format!(
                "data order seed {seed} differs from --seed {}; resume with --seed {seed}",
                self.cfg.seed
            )));
        }
        let want = self.cfg.adamw.state.as_str();
        match state.extra["optim_state"].as_str() {
            Some(s) if s == want => {}
            got => {
                return Err(bad(format!(
                    "optimizer state is {got:?}, this run uses {want:?} (--optim-state)"
                )))
            }
        }
        let examples = self.data.examples.len() as u64;
        match state.extra["examples"].as_u64() {
            Some(n) if n == examples => {}
            got => {
                return Err(bad(format!(
                "trained on {got:?} examples, the data now has {examples}: the order would differ"
            )))
            }
        }
        if state.config_json != self.model.config().to_json_string() {
            return Err(bad("model config differs from the checkpoint's".into()));
        }
        Ok(())
    }
}
