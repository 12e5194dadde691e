//! Multi-process collectives for data-parallel training, on libtorch's own c10d
//! (the engine under PyTorch DDP/FSDP): TCPStore rendezvous, Gloo for CPU
//! tensors, NCCL for CUDA tensors, reached through a small C++ shim (cpp/).
//!
//! [`LaunchEnv::from_env`] reads torchrun's or Slurm's variables (none: a plain
//! single-process run); [`ProcessGroup::new`] joins the group; the collectives
//! work in place on contiguous tensors and fail with [`DistError`] (never hang)
//! when a peer dies or stalls past the timeout.
mod error;
mod ffi;
mod group;
mod launch;

pub use error::{DistError, Result};
pub use group::{Backend, GroupOptions, ProcessGroup, ReduceOp, Work, DEFAULT_TIMEOUT};
pub use launch::{first_node, local_launch_vars, LaunchEnv, Launcher};
