//! Saving and restoring everything a resume needs through the checkpoint
//! crate: master weights, optimizer moments, step, epoch, data cursor and
//! the data order's seed, so that N steps straight and N/2 + resume + N/2
//! give the same losses.
//!
//! Frozen tensors (`--train-last-layers`) are not saved: they come from the
//! base model, which a resumed run must load the same way.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use checkpoint::{CheckpointManager, TrainingState};
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
    /// rank 0's) and returns its path. Under ZeRO-1 every rank must call it:
    /// the moments are gathered to rank 0 (one tensor at a time, into CPU
    /// memory), so the checkpoint is the one an unsharded run writes.
    pub fn save_checkpoint(&self) -> Result<Option<PathBuf>> {
        let Some(mgr) = self.ckpt.as_ref() else {
            return Ok(None);
        };
        let gathered = self.gather_sharded_state()?;
        if !self.is_main_process() {
            return Ok(None);
        }
        let mut rng_state = RNG_TAG.to_vec();
        rng_state.extend_from_slice(&self.cfg.seed.to_le_bytes());
        let state = TrainingState {
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
        };
        let mut tensors: Vec<(String, Tensor)> = self
            .names
            .iter()
            .zip(&self.params)
            .map(|(n, p)| (n.clone(), p.detach()))
            .collect();
        match gathered {
            Some(optim) => tensors.extend(optim),
            // ZeRO-1 without a group, before the first step: a fresh state.
            None if self.optim_pending => {
                let named = self
                    .names
                    .iter()
                    .cloned()
                    .zip(self.params.iter().map(Tensor::shallow_clone));
                let fresh = crate::trainer::build_optimizer(&self.cfg, named.collect())?;
                tensors.extend(fresh.state_tensors());
            }
            None => tensors.extend(self.optim.state_tensors()),
        }
        Ok(Some(mgr.save(&state, &tensors)?))
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
    /// resumes from it. Under ZeRO-1 it is read into CPU memory and each rank
    /// keeps the moments of its own share (re-sharding on load).
    pub fn resume_from(&mut self, path: &Path) -> Result<()> {
        self.ensure_optimizer(None)?;
        let sharded = self.zero1().is_some();
        // ZeRO-1: no rank holds the whole state on the device, even briefly.
        let device = if sharded {
            tch::Device::Cpu
        } else {
            self.model.device()
        };
        let (state, tensors) = CheckpointManager::load(path, device)?;
        let bad = |reason: String| Error::BadCheckpoint {
            path: path.to_path_buf(),
            reason,
        };
        self.check_compatible(&state, &bad)?;
        let mut map: HashMap<String, Tensor> = tensors.into_iter().collect();
        for (name, param) in self.names.iter().zip(&self.params) {
            let t = map.remove(name).ok_or_else(|| {
                bad(format!(
                    "no tensor {name} (saved with another --train-last-layers?)"
                ))
            })?;
            if t.size() != param.size() || t.kind() != param.kind() {
                return Err(bad(format!(
                    "tensor {name} is {:?} {:?}, the model has {:?} {:?}",
                    t.kind(),
                    t.size(),
                    param.kind(),
                    param.size()
                )));
            }
            let mut p = param.shallow_clone();
            tch::no_grad(|| p.copy_(&t));
        }
        let optim_steps = state.extra["optim_steps"]
            .as_u64()
            .ok_or_else(|| bad("extra.optim_steps missing".into()))?;
        self.optim
            .restore(optim_steps, &mut |n| map.remove(n))
            .map_err(|e| bad(e.to_string()))?;
        if sharded {
            // Other ranks' shards.
            map.retain(|key, _| {
                !self.names.iter().any(|n| {
                    key.strip_prefix("optim.")
                        .is_some_and(|k| k.starts_with(&format!("{n}.")))
                })
            });
        }
        if !map.is_empty() {
            let mut extra: Vec<_> = map.into_keys().collect();
            extra.sort();
            return Err(bad(format!(
                "holds tensors this run does not train: {}",
                extra.join(", ")
            )));
        }
        self.step = state.step;
        self.cursor = DataCursor {
            epoch: state.epoch,
            index: state.data_cursor,
        };
        self.skipped = state.extra["skipped_steps"].as_u64().unwrap_or(0);
        // A run killed after its last checkpoint logged steps that will run
        // again: cut them, so each step is in the log once.
        if let Some(log) = &self.cfg.metrics {
            crate::metrics::MetricsLog::truncate_after(log, self.step)?;
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
