//! Data parallelism: one process per device, each running the same model on a
//! disjoint shard of every global batch, gradients averaged across processes.
//!
//! - Global batch: `batch_size * grad_accum * world_size` examples per step,
//!   drawn from the one data order that every rank computes identically. Its
//!   micro-batches (of `batch_size`, padded as a single process would pad
//!   them) are dealt round-robin: micro-batch `j` goes to rank `j % world`.
//!   So the per-micro-batch gradients are the ones a single process with
//!   `grad_accum * world` micro-batches computes; only the order in which they
//!   are summed differs.
//! - Loss scaling: every rank divides by the *global* target count (known to
//!   all ranks from the global batch), so summing the ranks' gradients gives
//!   the global mean gradient without a further division.
//! - Overlap: on a rank's last micro-batch the backward runs block by block
//!   from the top ([`forward_backward_blockwise`]); as soon as block `l` is
//!   done, its gradients are flattened into one bucket and all-reduced
//!   asynchronously while the blocks below run backward. The remaining
//!   tensors (embedding, final norm, head) form the last bucket. All buckets
//!   are waited on before the norm and the optimizer step.
//! - Gradients are then identical on every rank, so the global norm, clipping
//!   and the AdamW update need no further communication, and the weights stay
//!   identical (the initial weights are broadcast from rank 0 once).
//! - Rank 0 alone draws progress, writes metrics and checkpoints.
//! - ZeRO-1 (`TrainConfig::zero1`, see zero.rs): instead of the bucketed
//!   all-reduce, each tensor's gradient is reduced into its owner as soon as
//!   its block is done; the norm is summed from the owners' shares; each
//!   rank updates its own tensors and broadcasts them. Checkpoints are
//!   collective: each rank writes the tensors it owns (weights and moments)
//!   to its own files, rank 0 the metadata last (`checkpoint::RankGroup`,
//!   implemented here); a resume at any world size reads each rank's share
//!   by name and broadcasts the weights from their new owners.
use std::collections::BTreeMap;

use distributed::{ProcessGroup, ReduceOp, Work};
use tch::{Device, Kind, Tensor};

use crate::backprop::forward_backward_blockwise;
use crate::batch::Batch;
use crate::error::{Error, Result};
use crate::trainer::Trainer;
use crate::zero::ShardPlan;

/// A trainer's membership of a data-parallel group.
#[derive(Debug)]
pub struct DataParallel {
    group: ProcessGroup,
    /// Parameter indices (into `Trainer::params`) per block, then the rest.
    buckets: BTreeMap<usize, Vec<usize>>,
    rest: Vec<usize>,
    /// ZeRO-1: which rank owns each trainable tensor.
    zero: Option<ShardPlan>,
    /// Where the group's own small tensors live (NCCL reduces device memory only).
    device: Device,
}

/// Gradients in flight.
enum Pending {
    /// A bucket's flat copy being all-reduced, and the indices it covers.
    Bucket {
        flat: Tensor,
        members: Vec<usize>,
        work: Work,
    },
    /// One gradient being reduced into its owner, in place (ZeRO-1).
    InPlace { member: usize, work: Work },
}

impl Pending {
    fn members(&self) -> Vec<usize> {
        match self {
            Pending::Bucket { members, .. } => members.clone(),
            Pending::InPlace { member, .. } => vec![*member],
        }
    }
}

impl DataParallel {
    /// This process's rank.
    pub fn rank(&self) -> usize {
        self.group.rank()
    }

    /// Number of processes.
    pub fn world_size(&self) -> usize {
        self.group.world_size()
    }

    /// Whether the optimizer state is sharded (ZeRO-1).
    pub fn is_zero1(&self) -> bool {
        self.zero.is_some()
    }

    /// Every rank's verdict on one stage: this rank's result when every rank
    /// succeeded; else this rank's own error, or `other(why)` when another
    /// rank failed or the group itself did. Keeps the ranks from running
    /// into the next collective with one of them gone.
    pub(crate) fn agree<T>(
        &self,
        local: Result<T>,
        other: impl FnOnce(String) -> Error,
    ) -> Result<T> {
        use checkpoint::RankGroup;
        match (self.all_ok(local.is_ok()), local) {
            (_, Err(e)) => Err(e),
            (Ok(true), ok) => ok,
            (Ok(false), Ok(_)) => Err(other(
                "another rank failed (its log names the cause)".into(),
            )),
            (Err(message), Ok(_)) => Err(other(format!("the group failed: {message}"))),
        }
    }
}

/// The checkpoint crate's view of the group: collective saves agree through it.
impl checkpoint::RankGroup for DataParallel {
    fn rank(&self) -> usize {
        self.group.rank()
    }

    fn world_size(&self) -> usize {
        self.group.world_size()
    }

    fn all_ok(&self, ok: bool) -> std::result::Result<bool, String> {
        let mut vote = Tensor::from_slice(&[f32::from(u8::from(ok))]).to_device(self.device);
        self.group
            .all_reduce(&mut vote, ReduceOp::Min)
            .map_err(|e| e.to_string())?;
        Ok(vote.double_value(&[0]) == 1.0)
    }
}

/// Block index of a parameter name (`model.layers.7.mlp...` -> 7).
fn block_of(name: &str) -> Option<usize> {
    let rest = name.split("layers.").nth(1)?;
    rest.split('.').next()?.parse().ok()
}

impl Trainer {
    /// Joins a data-parallel group: from now on each step draws the global
    /// batch (`world_size` times the per-process examples), runs this rank's
    /// share and averages gradients across ranks. Rank 0's weights are
    /// broadcast so that every rank starts equal; the step count and schedule
    /// are recomputed for the global batch.
    pub fn set_data_parallel(&mut self, group: ProcessGroup) -> Result<()> {
        for p in &self.params {
            let mut data = p.detach();
            group.broadcast(&mut data, 0)?;
        }
        let mut buckets: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        let mut rest = Vec::new();
        for (i, name) in self.names.iter().enumerate() {
            match block_of(name) {
                Some(l) => buckets.entry(l).or_default().push(i),
                None => rest.push(i),
            }
        }
        let world = group.world_size();
        self.set_global_batch(world)?;
        let zero = if self.cfg.zero1 {
            let sizes: Vec<u64> = self.params.iter().map(|p| p.numel() as u64).collect();
            let plan = ShardPlan::new(&sizes, world);
            let rank = group.rank();
            if self.optim_pending {
                self.ensure_optimizer(Some(&|i| plan.owner(i) == rank))?;
            } else {
                // Built already (a resume before joining): keep this rank's share.
                let owned: Vec<&str> = plan
                    .owned_by(rank)
                    .into_iter()
                    .map(|i| self.names[i].as_str())
                    .collect();
                self.optim.retain(|n| owned.contains(&n));
            }
            if self.shards_masters() {
                self.narrow_to_compute_copies()?;
            }
            let mine = plan.owned_by(rank);
            tracing::info!(
                rank,
                tensors = mine.len(),
                elements = mine.iter().map(|&i| sizes[i]).sum::<u64>(),
                total = sizes.iter().sum::<u64>(),
                "ZeRO-1: AdamW state of this rank's share only"
            );
            Some(plan)
        } else {
            None
        };
        self.dp = Some(DataParallel {
            group,
            buckets,
            rest,
            zero,
            device: self.model.device(),
        });
        Ok(())
    }

    /// Whether ZeRO-1 shards the master weights too: f32 masters (the
    /// default) with a narrower compute kind (bf16 on CUDA). Every rank then
    /// holds the weights and gradients in the compute kind, and the f32
    /// master of the tensors it owns only.
    pub(crate) fn shards_masters(&self) -> bool {
        self.cfg.zero1
            && self.cfg.master_dtype == crate::config::MasterDtype::F32
            && self.model.dtype() != Kind::Float
    }

    /// ZeRO-1 with sharded masters, on joining the group: the optimizer
    /// (this rank's share) copies its tensors' f32 values as masters, then
    /// every trainable tensor of the model becomes its compute-kind
    /// rounding, in place (`set_data`: the model and the optimizer hold the
    /// same tensors). Before the first step only: an f32 gradient would not
    /// fit a narrowed parameter.
    fn narrow_to_compute_copies(&mut self) -> Result<()> {
        if self.params.iter().any(|p| p.grad().defined()) {
            return Err(Error::config(
                "zero1",
                "joining the group before the first step (the master weights are sharded then)",
                "a trainer that has already stepped",
            ));
        }
        self.optim.shard_masters();
        let kind = self.model.dtype();
        tch::no_grad(|| -> Result<()> {
            for p in &self.params {
                let narrow = p.f_to_kind(kind)?;
                p.shallow_clone().f_set_data(&narrow)?;
            }
            Ok(())
        })?;
        tracing::info!(
            "ZeRO-1: weights and gradients in {kind:?}, f32 masters of this rank's share only"
        );
        Ok(())
    }

    /// The data-parallel group, if any.
    pub fn data_parallel(&self) -> Option<&DataParallel> {
        self.dp.as_ref()
    }

    /// Whether this process prints, draws progress and writes files.
    pub fn is_main_process(&self) -> bool {
        self.dp.as_ref().is_none_or(|dp| dp.rank() == 0)
    }

    /// Step count and schedule for a global batch `world` times the
    /// per-process one (epochs count global examples).
    fn set_global_batch(&mut self, world: usize) -> Result<()> {
        let mut global = self.cfg.clone();
        global.grad_accum *= world;
        self.total_steps = global.total_steps(self.data.examples.len());
        self.schedule =
            self.cfg
                .schedule
                .build(self.cfg.warmup, self.total_steps, self.cfg.min_lr_ratio)?;
        Ok(())
    }

    /// Examples drawn per optimizer step by all processes together.
    pub(crate) fn global_examples_per_step(&self) -> usize {
        self.cfg.examples_per_step() * self.dp.as_ref().map_or(1, DataParallel::world_size)
    }

    /// This rank's micro-batches of the global batch (all of them without a group).
    pub(crate) fn my_share(&self, batches: Vec<Batch>) -> Vec<Batch> {
        match &self.dp {
            None => batches,
            Some(dp) => batches
                .into_iter()
                .enumerate()
                .filter(|(j, _)| j % dp.world_size() == dp.rank())
                .map(|(_, b)| b)
                .collect(),
        }
    }

    /// Forward and backward of this rank's micro-batches; with a group, the
    /// gradients are summed across ranks (bucket by bucket, overlapped with
    /// the last micro-batch's backward) and the returned CE sum is global.
    pub(crate) fn accumulate_gradients(&mut self, mine: &[Batch], denom: f64) -> Result<f64> {
        // With a group the last micro-batch runs blockwise, reducing as it goes.
        let (earlier, last) = match (&self.dp, mine.split_last()) {
            (None, _) => (mine, None),
            (Some(_), Some((last, earlier))) => (earlier, Some(last)),
            (Some(_), None) => {
                return Err(Error::config(
                    "batch-size",
                    "at least one micro-batch per process",
                    "none for this rank",
                ))
            }
        };
        let mut ce = 0.0;
        for b in earlier {
            ce += crate::backprop::forward_backward(
                &self.model,
                &b.input_ids,
                &b.labels,
                denom,
                self.plan,
            )?;
        }
        let (Some(dp), Some(last)) = (&self.dp, last) else {
            return Ok(ce);
        };
        let mut pending = Vec::with_capacity(dp.buckets.len() + 1);
        let params = &self.params;
        ce += forward_backward_blockwise(
            &self.model,
            &last.input_ids,
            &last.labels,
            denom,
            self.plan,
            &mut |l| {
                if let Some(members) = dp.buckets.get(&l) {
                    pending.extend(launch(dp, params, members)?);
                }
                Ok(())
            },
        )?;
        // Buckets of blocks below the trained ones never fire; send what is left.
        let launched: Vec<usize> = pending.iter().flat_map(Pending::members).collect();
        let left: Vec<usize> = dp
            .buckets
            .values()
            .flatten()
            .chain(&dp.rest)
            .copied()
            .filter(|i| !launched.contains(i))
            .collect();
        if !left.is_empty() {
            pending.extend(launch(dp, params, &left)?);
        }
        for p in pending {
            finish(p, params)?;
        }
        // On the model's device: NCCL reduces device memory only.
        let mut total = Tensor::from_slice(&[ce]).to_device(self.model.device());
        dp.group.all_reduce(&mut total, ReduceOp::Sum)?;
        Ok(total.double_value(&[0]))
    }
}

/// Starts the reduction of the gradients of `members`: into each owner
/// (ZeRO-1), or as all-reduced buckets.
fn launch(dp: &DataParallel, params: &[Tensor], members: &[usize]) -> Result<Vec<Pending>> {
    match &dp.zero {
        Some(plan) => launch_to_owners(&dp.group, plan, params, members),
        None => launch_buckets(&dp.group, params, members),
    }
}

/// Starts one in-place reduce per gradient, into the rank that owns it.
fn launch_to_owners(
    group: &ProcessGroup,
    plan: &ShardPlan,
    params: &[Tensor],
    members: &[usize],
) -> Result<Vec<Pending>> {
    let mut out = Vec::with_capacity(members.len());
    for &i in members {
        let mut g = params[i].grad();
        if !g.defined() {
            continue;
        }
        let work = group.reduce_async(&mut g, plan.owner(i), ReduceOp::Sum)?;
        out.push(Pending::InPlace { member: i, work });
    }
    Ok(out)
}

/// Flattens the gradients of `members` and starts their all-reduce, one
/// bucket per gradient kind. Tensors without a gradient take no part (the same
/// on every rank: all run the same graph).
fn launch_buckets(
    group: &ProcessGroup,
    params: &[Tensor],
    members: &[usize],
) -> Result<Vec<Pending>> {
    let mut by_kind: Vec<(Kind, Vec<usize>)> = Vec::new();
    for &i in members {
        let g = params[i].grad();
        if !g.defined() {
            continue;
        }
        match by_kind.iter_mut().find(|(k, _)| *k == g.kind()) {
            Some((_, list)) => list.push(i),
            None => by_kind.push((g.kind(), vec![i])),
        }
    }
    by_kind
        .into_iter()
        .map(|(_, members)| {
            let grads: Vec<Tensor> = members
                .iter()
                .map(|&i| params[i].grad().reshape([-1]))
                .collect();
            let mut flat = Tensor::cat(&grads, 0);
            let work = group.all_reduce_async(&mut flat, ReduceOp::Sum)?;
            Ok(Pending::Bucket {
                flat,
                members,
                work,
            })
        })
        .collect()
}

/// Waits for a reduction and writes bucketed sums back.
fn finish(pending: Pending, params: &[Tensor]) -> Result<()> {
    let (flat, members, work) = match pending {
        Pending::InPlace { work, .. } => return Ok(work.wait()?),
        Pending::Bucket {
            flat,
            members,
            work,
        } => (flat, members, work),
    };
    work.wait()?;
    let mut offset = 0;
    tch::no_grad(|| {
        for &i in &members {
            let mut g = params[i].grad();
            let n = g.numel() as i64;
            let piece = flat.narrow(0, offset, n).view_as(&g);
            g.copy_(&piece);
            offset += n;
        }
    });
    Ok(())
}

impl Trainer {
    /// ZeRO-1's global gradient norm: each rank's sum of squares over the
    /// tensors it owns (the only gradients it holds reduced), summed across
    /// ranks. `None` without ZeRO-1 (every rank holds every gradient).
    pub(crate) fn sharded_grad_norm(&self) -> Result<Option<f64>> {
        let Some((dp, plan)) = self.zero1() else {
            return Ok(None);
        };
        let mine = plan
            .owned_by(dp.rank())
            .into_iter()
            .map(|i| self.params[i].grad());
        let mut sum = crate::grad::sum_of_squares(mine, self.model.device()).reshape([1]);
        dp.group.all_reduce(&mut sum, ReduceOp::Sum)?;
        Ok(Some(sum.double_value(&[0]).sqrt()))
    }

    /// ZeRO-1, after the update: every tensor from its owner to every rank.
    pub(crate) fn sync_sharded_weights(&self) -> Result<()> {
        let Some((dp, plan)) = self.zero1() else {
            return Ok(());
        };
        let works = self
            .params
            .iter()
            .enumerate()
            .map(|(i, p)| dp.group.broadcast_async(&mut p.detach(), plan.owner(i)))
            .collect::<distributed::Result<Vec<Work>>>()?;
        for w in works {
            w.wait()?;
        }
        Ok(())
    }

    /// ZeRO-1: what this rank writes to its own checkpoint files: the
    /// tensors it owns and their AdamW state, named as an unsharded run
    /// names them. `None` without ZeRO-1 in a group.
    pub(crate) fn owned_checkpoint_tensors(&self) -> Result<Option<Vec<(String, Tensor)>>> {
        let Some((dp, plan)) = self.zero1() else {
            return Ok(None);
        };
        let rank = dp.rank();
        let mut out = Vec::new();
        for i in plan.owned_by(rank) {
            let name = &self.names[i];
            // The f32 master where this rank holds one: exact resumes.
            let weight = self.optim.master_of(name);
            out.push((
                name.clone(),
                weight.unwrap_or_else(|| self.params[i].detach()),
            ));
            let moments =
                self.optim
                    .state_tensors_of(name)
                    .ok_or_else(|| Error::TensorMismatch {
                        name: name.clone(),
                        expected: format!("AdamW state on rank {rank}, its ZeRO-1 owner"),
                        got: "none".into(),
                    })?;
            out.extend(moments);
        }
        Ok(Some(out))
    }

    /// ZeRO-1: the names of the tensors this rank owns. `None` without ZeRO-1
    /// in a group.
    pub(crate) fn owned_names(&self) -> Option<Vec<&str>> {
        let (dp, plan) = self.zero1()?;
        Some(
            plan.owned_by(dp.rank())
                .into_iter()
                .map(|i| self.names[i].as_str())
                .collect(),
        )
    }

    /// The group and shard plan under ZeRO-1.
    pub(crate) fn zero1(&self) -> Option<(&DataParallel, &ShardPlan)> {
        let dp = self.dp.as_ref()?;
        Some((dp, dp.zero.as_ref()?))
    }
}

#[cfg(test)]
mod tests {
    use super::block_of;

    #[test]
    fn parameter_names_map_to_blocks() {
        assert_eq!(block_of("model.layers.12.mlp.up_proj.weight"), Some(12));
        assert_eq!(block_of("model.layers.0.input_layernorm.weight"), Some(0));
        assert_eq!(block_of("model.embed_tokens.weight"), None);
        assert_eq!(block_of("lm_head.weight"), None);
    }
}
