//! Where a training step's time goes, for benchmarks and profiling: with
//! `NVFP4_STEP_PHASES=1` the trainer (and the written-out blocks inside it)
//! synchronise the device at each phase boundary of a step (zeroing
//! gradients, the blocks' forward and backward part by part, the loss, the
//! embedding, the gradient norm, the update) and record each phase's wall
//! time; [`take_step_phases`] returns them, summed by name. Off by default:
//! the synchronisations cost the overlap of CPU and GPU.

use std::cell::RefCell;
use std::sync::OnceLock;
use std::time::Instant;

use tch::Device;

struct Phases {
    last: Instant,
    done: Vec<(&'static str, f64)>,
}

thread_local! {
    static PHASES: RefCell<Option<Phases>> = const { RefCell::new(None) };
}

fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var("NVFP4_STEP_PHASES").is_ok_and(|v| v == "1"))
}

fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// Starts a step's record (drops an unread one); nothing unless enabled.
pub fn start(device: Device) {
    if enabled() {
        sync(device);
        PHASES.with(|p| {
            *p.borrow_mut() = Some(Phases {
                last: Instant::now(),
                done: Vec::new(),
            })
        });
    }
}

/// Ends phase `name`: the time since the previous mark (or the start);
/// nothing unless enabled and started.
pub fn mark(device: Device, name: &'static str) {
    if enabled() {
        sync(device);
        PHASES.with(|p| {
            if let Some(ph) = p.borrow_mut().as_mut() {
                let now = Instant::now();
                ph.done.push((name, (now - ph.last).as_secs_f64()));
                ph.last = now;
            }
        });
    }
}

/// The phases of the last step, in seconds and in order (summed when a
/// phase ran several times, as with gradient accumulation); empty unless
/// `NVFP4_STEP_PHASES=1`.
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
