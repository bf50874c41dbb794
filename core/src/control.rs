//! Machine-wide stop requests: power-off, reset, debug-exit, user quit.
//!
//! Devices request a stop here; the run loop checks after every exit (and vCPUs are
//! kicked when the request comes from another thread).

use parking_lot::Mutex;
use std::sync::Arc;

/// Why the machine stops running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// ACPI S5 or equivalent: vireo exits with status 0.
    PowerOff,
    /// A reset request (0xCF9, i8042 pulse, triple fault): reboot, or exit with
    /// `-no-reboot`.
    Reset,
    /// isa-debug-exit: vireo exits with this status (`(value << 1) | 1`).
    DebugExit(i32),
    /// The user asked to quit (Ctrl-A X, a signal).
    Quit,
}

type Kick = Box<dyn Fn() + Send + Sync>;

/// Shared stop flag with a hook to kick running vCPUs.
#[derive(Default)]
pub struct MachineControl {
    reason: Mutex<Option<StopReason>>,
    kicks: Mutex<Vec<Kick>>,
}

impl MachineControl {
    pub fn new() -> Arc<MachineControl> {
        Arc::new(MachineControl::default())
    }

    /// Requests a stop. The first request wins; later ones are ignored.
    pub fn request_stop(&self, reason: StopReason) {
        {
            let mut r = self.reason.lock();
            if r.is_some() {
                return;
            }
            log::debug!(target: "vireo::machine", "stop requested: {reason:?}");
            *r = Some(reason);
        }
        for k in self.kicks.lock().iter() {
            k();
        }
    }

    /// The pending stop request, if any.
    pub fn stop_reason(&self) -> Option<StopReason> {
        *self.reason.lock()
    }

    /// Clears the request (after a reset has been carried out).
    pub fn clear(&self) {
        *self.reason.lock() = None;
    }

    /// Registers a function that makes a running vCPU return from `run`.
    pub fn add_kick(&self, kick: Kick) {
        self.kicks.lock().push(kick);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn first_request_wins_and_kicks() {
        let c = MachineControl::new();
        let kicks = Arc::new(AtomicUsize::new(0));
        let k2 = kicks.clone();
        c.add_kick(Box::new(move || {
            k2.fetch_add(1, Ordering::SeqCst);
        }));
        assert_eq!(c.stop_reason(), None);
        c.request_stop(StopReason::DebugExit(3));
        c.request_stop(StopReason::PowerOff);
        assert_eq!(c.stop_reason(), Some(StopReason::DebugExit(3)));
        assert_eq!(kicks.load(Ordering::SeqCst), 1);
        c.clear();
        assert_eq!(c.stop_reason(), None);
    }
}

/// The A20 gate (i8042 output port bit 1, port 0x92 bit 1): when off, physical address
/// bit 20 is forced to 0 for CPU accesses. Shared by the devices that drive it and the
/// engine that honours it (KVM keeps A20 always on).
#[derive(Debug)]
pub struct A20Gate(std::sync::atomic::AtomicBool);

impl A20Gate {
    /// A gate in its power-on state (enabled, as vireo's firmware expects).
    pub fn new() -> Arc<A20Gate> {
        Arc::new(A20Gate(std::sync::atomic::AtomicBool::new(true)))
    }
    pub fn enabled(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Acquire)
    }
    pub fn set(&self, on: bool) {
        self.0.store(on, std::sync::atomic::Ordering::Release);
    }
}
