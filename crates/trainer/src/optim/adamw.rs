//! AdamW (Loshchilov & Hutter) with decoupled weight decay, bias correction
//! and moments kept in f32, bf16 or block-wise 8 bits. The state belongs to
//! this struct (not to libtorch), so it can be checkpointed and restored
//! exactly.
//!
//! The optimizer updates the *master* weights it is given and nothing else:
//! it never re-quantizes them, so updates smaller than one FP4 step
//! accumulate until they cross a quantization boundary (the original
//! re-quantized to FP4 every step and lost them).
//!
//! Two implementations of one update: on CUDA (when the NVFP4 kernels can
//! run there) one fused kernel per tensor, `nvfp4_kernels::cuda::adamw_update`,
//! which reads and writes each parameter and moment once; elsewhere, or with
//! `NVFP4_ADAMW_REFERENCE=1`, the same math as tch ops ([`update_slot`], the
//! reference). Both keep the same state layout, so checkpoints do not care.

use nvfp4_kernels::cuda::{self, AdamwStep};
use qwen3_model::{TensorClass, TensorRole};
use tch::{Device, Kind, Tensor};

use super::moments::{Moment, MomentStore, OptimStateKind};
use super::quant8::QuantMap;
use crate::error::{Error, Result};

/// AdamW hyper-parameters other than the learning rate (which the schedule
/// passes to every [`AdamW::step`]).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AdamWConfig {
    /// First-moment decay.
    pub beta1: f64,
    /// Second-moment decay.
    pub beta2: f64,
    /// Added to `sqrt(v_hat)` in the denominator.
    pub eps: f64,
    /// Decoupled weight decay (multiplies `lr`), applied to decayed params only.
    pub weight_decay: f64,
    /// Precision of the moments between steps.
    pub state: OptimStateKind,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            state: OptimStateKind::F32,
        }
    }
}

impl AdamWConfig {
    /// Rejects betas outside `[0, 1)`, a non-positive eps or a negative decay.
    pub fn validate(&self) -> Result<()> {
        for (name, b) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            if !(0.0..1.0).contains(&b) {
                return Err(Error::config(name, "a number in [0, 1)", b));
            }
        }
        if self.eps.is_nan() || self.eps <= 0.0 {
            return Err(Error::config("eps", "a positive number", self.eps));
        }
        if self.weight_decay.is_nan() || self.weight_decay < 0.0 {
            return Err(Error::config(
                "weight_decay",
                "a non-negative number",
                self.weight_decay,
            ));
        }
        Ok(())
    }
}

/// Default weight-decay rule, from the data rather than the name: matrices
/// decay (projections, an untied lm_head), vectors (norms, whose scale is
/// meaningful on its own) do not, and neither does the embedding table, the
/// one matrix the schema knows to be a lookup.
pub fn default_decay(name: &str, param: &Tensor) -> bool {
    let embedding = TensorRole::of_key(name).is_some_and(|r| r.class() == TensorClass::Embedding);
    param.dim() >= 2 && !embedding
}

#[derive(Debug)]
struct Slot {
    name: String,
    /// What the update changes: the model's parameter, or (with
    /// [`AdamW::shard_masters`]) an f32 master of it that only this slot holds.
    param: Tensor,
    /// With an f32 master: the model's narrower parameter, which holds the
    /// gradient and receives the master's rounding after each update.
    compute: Option<Tensor>,
    decay: bool,
    m: MomentStore,
    v: MomentStore,
    /// Whether the fused kernel takes this tensor (f32/bf16, contiguous,
    /// on CUDA); cleared if it ever fails on it.
    fusable: bool,
}

impl Slot {
    /// The model's tensor: the one holding the gradient.
    fn model_tensor(&self) -> Tensor {
        self.compute.as_ref().unwrap_or(&self.param).shallow_clone()
    }

    /// With an f32 master, writes its rounding into the model's parameter.
    fn publish(&self) {
        if let Some(c) = &self.compute {
            tch::no_grad(|| c.shallow_clone().copy_(&self.param));
        }
    }
}

/// Environment switch forcing the tch-op update on CUDA (to compare or
/// benchmark against the fused kernel): `NVFP4_ADAMW_REFERENCE=1`.
const REFERENCE_ENV: &str = "NVFP4_ADAMW_REFERENCE";

/// The optimizer: one slot (weight, moments, decay flag) per trainable tensor.
///
/// On CUDA each tensor is updated by one fused kernel when the NVFP4 kernels
/// can run on the device (decided once, in [`AdamW::new`]); otherwise, with
/// `NVFP4_ADAMW_REFERENCE=1` in the environment (another value than 0 or 1
/// is an error), or after
/// [`AdamW::use_reference_path`], by tch ops. The two agree to f32 rounding
/// (see the trainer's `fused_adamw` test).
#[derive(Debug)]
pub struct AdamW {
    cfg: AdamWConfig,
    slots: Vec<Slot>,
    steps: u64,
    signed_map: QuantMap,
    unsigned_map: QuantMap,
    /// Whether fusable slots use the fused kernel.
    fused: bool,
    /// f32 work buffer of the tch-op path, as large as the largest tensor
    /// that takes that path (see `update_slot`); none while none does.
    scratch: Option<Tensor>,
}

/// Whether the fused kernel should run on `device`: CUDA, the kernels load
/// there, and [`REFERENCE_ENV`] does not ask for the tch ops.
fn fused_on(device: Device) -> Result<bool> {
    if !device.is_cuda() {
        return Ok(false);
    }
    if nvfp4_kernels::env_switch(REFERENCE_ENV, false)? {
        tracing::info!("AdamW: tch-op update ({REFERENCE_ENV}=1)");
        return Ok(false);
    }
    Ok(match cuda::check_available(device) {
        Ok(()) => true,
        Err(reason) => {
            tracing::warn!(
                "AdamW: fused CUDA update unavailable on {device:?} ({reason}); using tch ops"
            );
            false
        }
    })
}

/// An f32 buffer of `numel` elements on `device` (zeroed: fresh multi-MB
/// allocations are touched once here, not on every step).
fn work_buffer(numel: usize, device: Device) -> Tensor {
    Tensor::zeros([numel as i64], (Kind::Float, device))
}

impl AdamW {
    /// An optimizer over `params` (shallow clones of leaf tensors that
    /// require grad); `decay(name)` says which ones get weight decay.
    pub fn new(
        params: Vec<(String, Tensor)>,
        cfg: AdamWConfig,
        decay: impl Fn(&str, &Tensor) -> bool,
    ) -> Result<Self> {
        cfg.validate()?;
        let device = params
            .first()
            .map(|(_, p)| p.device())
            .unwrap_or(tch::Device::Cpu);
        let signed_map = QuantMap::new(true, device);
        let unsigned_map = QuantMap::new(false, device);
        let mut slots = Vec::with_capacity(params.len());
        for (name, param) in params {
            if !param.requires_grad() {
                return Err(Error::TensorMismatch {
                    name,
                    expected: "requires_grad".into(),
                    got: "frozen".into(),
                });
            }
            if !param.is_floating_point() {
                return Err(Error::TensorMismatch {
                    name,
                    expected: "a float tensor".into(),
                    got: format!("{:?}", param.kind()),
                });
            }
            let m = MomentStore::zeros(cfg.state, &param, &signed_map);
            let v = MomentStore::zeros(cfg.state, &param, &unsigned_map);
            let fusable = param.device().is_cuda()
                && matches!(param.kind(), Kind::Float | Kind::BFloat16)
                && param.is_contiguous();
            slots.push(Slot {
                decay: decay(&name, &param),
                name,
                param,
                compute: None,
                m,
                v,
                fusable,
            });
        }
        let decayed = slots.iter().filter(|s| s.decay).count();
        tracing::info!(
            decayed,
            not_decayed = slots.len() - decayed,
            "weight decay: matrices decay; vectors and the embedding do not"
        );
        let mut opt = AdamW {
            cfg,
            slots,
            steps: 0,
            signed_map,
            unsigned_map,
            fused: fused_on(device)?,
            scratch: None,
        };
        opt.reserve_scratch(device);
        Ok(opt)
    }

    /// Allocates the work buffer for the largest tensor on the tch-op path.
    fn reserve_scratch(&mut self, device: Device) {
        let fused = self.fused;
        let largest = self
            .slots
            .iter()
            .filter(|s| !(fused && s.fusable))
            .map(|s| s.param.numel())
            .max();
        if let Some(n) = largest {
            if self.scratch.as_ref().is_none_or(|t| t.numel() < n) {
                self.scratch = Some(work_buffer(n, device));
            }
        }
    }

    /// Whether updates run as the fused CUDA kernel (one per tensor) rather
    /// than as tch ops.
    pub fn is_fused(&self) -> bool {
        self.fused && self.slots.iter().any(|s| s.fusable)
    }

    /// Uses the tch-op update from now on, even where the fused kernel
    /// could run (the reference, to compare or benchmark against).
    pub fn use_reference_path(&mut self) {
        self.fused = false;
        let device = self.scratch_device();
        self.reserve_scratch(device);
    }

    fn scratch_device(&self) -> Device {
        self.slots
            .first()
            .map(|s| s.param.device())
            .unwrap_or(Device::Cpu)
    }

    /// The hyper-parameters.
    pub fn config(&self) -> &AdamWConfig {
        &self.cfg
    }

    /// Updates applied so far (the bias-correction step count).
    pub fn steps_taken(&self) -> u64 {
        self.steps
    }

    /// Names of the optimized tensors and whether each gets weight decay.
    pub fn param_names(&self) -> Vec<(&str, bool)> {
        self.slots
            .iter()
            .map(|s| (s.name.as_str(), s.decay))
            .collect()
    }

    /// Bytes of moment state held (what `--optim-state` trades), and of the
    /// f32 masters when it holds them; on the tch-op path an f32 work buffer
    /// of the largest tensor's size comes on top, the fused kernel needs none.
    pub fn state_bytes(&self) -> usize {
        self.slots
            .iter()
            .map(|s| {
                let master = if s.compute.is_some() {
                    s.param.numel() * 4
                } else {
                    0
                };
                s.m.nbytes() + s.v.nbytes() + master
            })
            .sum()
    }

    /// One update with learning rate `lr` from the gradients in `param.grad()`.
    /// Tensors without a gradient (unused this step) are left alone, as in PyTorch.
    pub fn step(&mut self, lr: f64) {
        self.step_scaled(lr, 1.0);
    }

    /// [`AdamW::step`] on the gradients times `grad_scale` (gradient
    /// clipping's coefficient). The fused kernel scales as it reads, so the
    /// clipped gradients are never written; the tch-op path scales them in place.
    pub fn step_scaled(&mut self, lr: f64, grad_scale: f64) {
        self.steps += 1;
        let t = self.steps as i32;
        let bc1 = 1.0 - self.cfg.beta1.powi(t);
        let bc2 = 1.0 - self.cfg.beta2.powi(t);
        let cfg = self.cfg;
        let fused = self.fused;
        let maps = (&self.signed_map, &self.unsigned_map);
        let scratch = &mut self.scratch;
        tch::no_grad(|| {
            for slot in &mut self.slots {
                let grad = slot.model_tensor().grad();
                if !grad.defined() {
                    continue;
                }
                if fused && slot.fusable {
                    let step = kernel_step(slot, lr, (bc1, bc2), &cfg, grad_scale);
                    match fused_update(slot, &grad, &step, maps) {
                        Ok(()) => {
                            slot.publish();
                            continue;
                        }
                        // The argument checks run before the launch and a
                        // failed launch starts nothing: the tensors are as
                        // they were, so the tch ops do this update.
                        Err(e) => {
                            tracing::warn!(
                                "AdamW: fused update of {} failed ({e}); using tch ops for it",
                                slot.name
                            );
                            slot.fusable = false;
                        }
                    }
                }
                let n = slot.param.numel();
                if scratch.as_ref().is_none_or(|s| s.numel() < n) {
                    *scratch = Some(work_buffer(n, slot.param.device()));
                }
                let s = scratch.as_ref().expect("work buffer allocated above");
                if grad_scale != 1.0 {
                    let _ = grad.shallow_clone().g_mul_scalar_(grad_scale);
                }
                update_slot(slot, &grad, lr, bc1, bc2, &cfg, maps, s);
                slot.publish();
            }
        });
    }

    /// Clears every gradient (sets it to zero, keeping its buffer).
    pub fn zero_grad(&mut self) {
        for slot in &mut self.slots {
            slot.model_tensor().zero_grad();
        }
    }

    /// Gives every slot an f32 master copy of its parameter, which the
    /// updates change from now on; the parameter then only holds the
    /// gradient and the master's rounding after each update. Call it while
    /// the parameters still hold the f32 values (before the caller narrows
    /// them, e.g. to bf16, with `set_data`): ZeRO-1 shards master weights this
    /// way, each rank keeping the masters of the tensors it owns only.
    pub fn shard_masters(&mut self) {
        for slot in &mut self.slots {
            if slot.compute.is_none() {
                let master = slot.param.detach().to_kind(Kind::Float).copy();
                slot.compute = Some(std::mem::replace(&mut slot.param, master));
            }
        }
    }

    /// The f32 master of tensor `name` (a shallow clone), when this
    /// optimizer holds one ([`AdamW::shard_masters`]).
    pub fn master_of(&self, name: &str) -> Option<Tensor> {
        let s = self.slots.iter().find(|s| s.name == name)?;
        s.compute.is_some().then(|| s.param.shallow_clone())
    }

    /// Restores the f32 master of tensor `name` from `value` (and its
    /// rounding into the parameter); nothing when it holds no master.
    pub fn restore_master(&mut self, name: &str, value: &Tensor) {
        if let Some(s) = self
            .slots
            .iter_mut()
            .find(|s| s.name == name && s.compute.is_some())
        {
            tch::no_grad(|| s.param.copy_(value));
            s.publish();
        }
    }

    /// The moment tensors, named `optim.<param>.m` / `.v` (plus `.codes` /
    /// `.absmax` for 8-bit state), for a checkpoint.
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for s in &self.slots {
            out.extend(s.m.tensors(&format!("optim.{}.m", s.name)));
            out.extend(s.v.tensors(&format!("optim.{}.v", s.name)));
        }
        out
    }

    /// Drops the slots (and so the moments) of the tensors `keep` rejects:
    /// ZeRO-1 keeps only this rank's shard. The step count is kept.
    pub fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        self.slots.retain(|s| keep(&s.name));
    }

    /// Whether this optimizer updates the tensor `name`.
    pub fn holds(&self, name: &str) -> bool {
        self.slots.iter().any(|s| s.name == name)
    }

    /// The checkpoint tensors of one optimized tensor, named as in
    /// [`AdamW::state_tensors`] (shallow clones); `None` when not held.
    pub fn state_tensors_of(&self, name: &str) -> Option<Vec<(String, Tensor)>> {
        let s = self.slots.iter().find(|s| s.name == name)?;
        let mut out = s.m.tensors(&format!("optim.{name}.m"));
        out.extend(s.v.tensors(&format!("optim.{name}.v")));
        Some(out)
    }

    /// Restores the moments written by [`AdamW::state_tensors`] and the step count.
    pub fn restore(
        &mut self,
        steps: u64,
        get: &mut dyn FnMut(&str) -> Option<Tensor>,
    ) -> Result<()> {
        for s in &mut self.slots {
            s.m.restore(&format!("optim.{}.m", s.name), get)?;
            s.v.restore(&format!("optim.{}.v", s.name), get)?;
        }
        self.steps = steps;
        Ok(())
    }
}

/// The fused kernel's constants for `slot` at this step.
fn kernel_step(
    slot: &Slot,
    lr: f64,
    (bc1, bc2): (f64, f64),
    cfg: &AdamWConfig,
    grad_scale: f64,
) -> AdamwStep {
    AdamwStep {
        lr,
        beta1: cfg.beta1,
        beta2: cfg.beta2,
        eps: cfg.eps,
        weight_decay: if slot.decay { cfg.weight_decay } else { 0.0 },
        bc1,
        bc2,
        grad_scale,
    }
}

/// The fused CUDA update of one tensor: the math of [`update_slot`] in one
/// kernel that updates the parameter and both moments in place.
fn fused_update(
    slot: &Slot,
    grad: &Tensor,
    step: &AdamwStep,
    maps: (&QuantMap, &QuantMap),
) -> nvfp4_kernels::Result<()> {
    // A no-op for the gradients autograd accumulates for a contiguous leaf.
    let grad = grad.f_contiguous()?;
    cuda::adamw_update(
        &slot.name,
        &slot.param,
        &grad,
        slot.m.kernel_ref(maps.0),
        slot.v.kernel_ref(maps.1),
        step,
    )
}

/// The AdamW update of one tensor as tch ops (the reference, and the path
/// off CUDA), in f32 whatever the storage precisions.
/// `scratch` is a reusable f32 buffer of at least the tensor's size: the
/// update allocates nothing for f32 masters and moments (fresh multi-MB
/// temporaries cost page faults on every step).
#[allow(clippy::too_many_arguments)]
fn update_slot(
    slot: &mut Slot,
    grad: &Tensor,
    lr: f64,
    bc1: f64,
    bc2: f64,
    cfg: &AdamWConfig,
    maps: (&QuantMap, &QuantMap),
    scratch: &Tensor,
) {
    let g = grad.to_kind(Kind::Float);
    let master_is_f32 = slot.param.kind() == Kind::Float;
    let mut p = if master_is_f32 {
        slot.param.shallow_clone()
    } else {
        slot.param.to_kind(Kind::Float)
    };
    if slot.decay && cfg.weight_decay > 0.0 {
        let _ = p.g_mul_scalar_(1.0 - lr * cfg.weight_decay);
    }
    let mut s = scratch.narrow(0, 0, g.numel() as i64).view_(g.size());
    // m <- b1 m + (1 - b1) g
    let mut m = slot.m.load(Moment::First, maps.0);
    let _ = m.lerp_(&g, 1.0 - cfg.beta1);
    // v <- b2 v + (1 - b2) g^2, as b2 v + (sqrt(1 - b2) g)^2
    let mut v = slot.v.load(Moment::Second, maps.1);
    s.copy_(&g);
    let _ = s.g_mul_scalar_((1.0 - cfg.beta2).sqrt());
    let _ = v.g_mul_scalar_(cfg.beta2);
    let _ = v.addcmul_(&s, &s);
    // p <- p - lr/bc1 * m / (sqrt(v)/sqrt(bc2) + eps)   (PyTorch's AdamW),
    // as p + m / s with s = -(bc1/lr) (sqrt(v)/sqrt(bc2) + eps).
    if lr > 0.0 {
        let _ = v.sqrt_out(&s);
        let _ = s.g_mul_scalar_(-bc1 / (lr * bc2.sqrt()));
        let _ = s.g_add_scalar_(-cfg.eps * bc1 / lr);
        let _ = p.addcdiv_(&m, &s);
    }
    if !master_is_f32 {
        slot.param.copy_(&p);
    }
    slot.m.store(&m, Moment::First, maps.0);
    slot.v.store(&v, Moment::Second, maps.1);
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn default_decay_follows_rank_and_spares_the_embedding() {
        let matrix = Tensor::ones([4, 8], (Kind::Float, tch::Device::Cpu));
        let vector = Tensor::ones([8], (Kind::Float, tch::Device::Cpu));
        assert!(default_decay(
            "model.layers.0.self_attn.q_proj.weight",
            &matrix
        ));
        assert!(default_decay("lm_head.weight", &matrix));
        // By rank: any vector is spared, whatever its name says.
        assert!(!default_decay(
            "model.layers.3.input_layernorm.weight",
            &vector
        ));
        assert!(!default_decay("model.norm.weight", &vector));
        assert!(!default_decay("some.other.bias", &vector));
        assert!(default_decay("some.other.matrix", &matrix));
        // The embedding is the one matrix that is not decayed.
        assert!(!default_decay("model.embed_tokens.weight", &matrix));
    }

    #[test]
    fn frozen_tensor_is_rejected_by_name() {
        let p = Tensor::ones([4], (Kind::Float, Device::Cpu));
        let e =
            AdamW::new(vec![("w".into(), p)], AdamWConfig::default(), default_decay).unwrap_err();
        assert!(
            e.to_string().contains("tensor w") && e.to_string().contains("frozen"),
            "{e}"
        );
    }

    #[test]
    fn bad_hyperparameters_are_rejected() {
        let cfg = AdamWConfig {
            beta2: 1.0,
            ..Default::default()
        };
        assert!(cfg.validate().unwrap_err().to_string().contains("beta2"));
        let cfg = AdamWConfig {
            eps: 0.0,
            ..Default::default()
        };
        assert!(cfg.validate().unwrap_err().to_string().contains("eps"));
    }

    #[test]
    fn int8_state_is_a_byte_per_element_plus_block_absmax() {
        let p = Tensor::randn([1024, 64], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let mk = |state| {
            AdamW::new(
                vec![("w".into(), p.shallow_clone())],
                AdamWConfig {
                    state,
                    ..Default::default()
                },
                default_decay,
            )
            .unwrap()
        };
        let f32b = mk(OptimStateKind::F32).state_bytes();
        let bf16b = mk(OptimStateKind::BF16).state_bytes();
        let i8b = mk(OptimStateKind::Int8Block).state_bytes();
        assert_eq!(f32b, 2 * 4 * 1024 * 64);
        assert_eq!(bf16b, f32b / 2);
        // Per moment: one byte per element plus one f32 absmax per 256-element block.
        let n = 1024 * 64;
        assert_eq!(
            i8b,
            2 * (n + 4 * n / 256),
            "int8 state {i8b} bytes vs f32 {f32b}"
        );
    }
}
