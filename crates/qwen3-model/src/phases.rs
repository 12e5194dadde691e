//! Where a training step's time goes, for benchmarks and profiling: with
//! `NVFP4_STEP_PHASES=1` the trainer (and the written-out blocks inside it)
//! synchronise the device at each phase boundary of a step (zeroing
//! gradients, the blocks' forward and backward part by part, the loss, the
//! embedding, the gradient norm, the update) and record each phase's wall
//! time; [`take_step_phases`] returns them, summed by name. Off by default:
//! the synchronisations cost the overlap of CPU and GPU.

use std::cell::RefCell;
use std::time::Instant;

use tch::Device;

use crate::error::Result;

/// The switch (`0` or `1`; another value is an error naming it).
pub const SWITCH: &str = "NVFP4_STEP_PHASES";

struct Phases {
    last: Instant,
    done: Vec<(&'static str, f64)>,
}

thread_local! {
    static PHASES: RefCell<Option<Phases>> = const { RefCell::new(None) };
}

/// Whether [`SWITCH`] asks for phase timings.
pub fn enabled() -> Result<bool> {
    Ok(nvfp4_kernels::env_switch(SWITCH, false)?)
}

fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// Starts a step's record when [`enabled`] (dropping an unread one); the
/// marks that follow on this thread then time their phases.
pub fn start(device: Device) -> Result<()> {
    let on = enabled()?;
    if on {
        sync(device);
    }
    PHASES.with(|p| {
        *p.borrow_mut() = on.then(|| Phases {
            last: Instant::now(),
            done: Vec::new(),
        })
    });
    Ok(())
}

/// Ends phase `name`: the time since the previous mark (or the start);
/// nothing unless a record was started.
pub fn mark(device: Device, name: &'static str) {
    PHASES.with(|p| {
        if let Some(ph) = p.borrow_mut().as_mut() {
            sync(device);
            let now = Instant::now();
            ph.done.push((name, (now - ph.last).as_secs_f64()));
            ph.last = now;
        }
    });
}

/// The phases of the last step, in seconds and in order (summed when a
/// phase ran several times, as with gradient accumulation); empty unless
/// the step was started with [`SWITCH`]`=1`.
pub fn take_step_phases() -> Vec<(&'static str, f64)> {
    let done = PHASES.with(|p| p.borrow_mut().take().map(|ph| ph.done).unwrap_or_default());
    let mut summed: Vec<(&'static str, f64)> = Vec::new();
    for (name, s) in done {
        match summed.iter_mut().find(|(n, _)| *n == name) {
            Some((_, total)) => *total += s,
            None => summed.push((name, s)),
        }
    }
    summed
}
