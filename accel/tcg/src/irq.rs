//! External interrupts and wake-ups: the interrupt-controller boundary of the engine
//! and the [`Signal`] that kicks, interrupt requests and CPU events reach a running or
//! halted vCPU through.

use parking_lot::{Condvar, Mutex};
use std::sync::{Arc, OnceLock};
use vireo_core::VcpuKicker;
use vireo_devices::apic::CpuEvent;
use vireo_devices::pic::SharedPic;
use vireo_jit::{Gate, GATE_FLAGS};

/// Called when the controller's interrupt output may have gone high. It may run with
/// the controller locked and on any thread: it must only flag and wake.
pub type IntrNotify = Box<dyn Fn() + Send + Sync>;

/// What delivers external interrupts to the CPU: the 8259A pair alone
/// ([`PicInterrupts`]) or a local APIC with the 8259A behind its LINT0
/// ([`crate::apic::ApicInterrupts`]).
pub trait InterruptController: Send + Sync {
    /// The interrupt output (INTR) is asserted.
    fn pending(&self) -> bool;
    /// The INTA cycle: the vector to deliver, or `None` when nothing is pending any
    /// more (the request went away).
    fn acknowledge(&self) -> Option<u8>;
    /// Installs the callback for a rising interrupt output.
    fn set_notify(&self, notify: IntrNotify);
    /// Installs the callback for a new CPU event (NMI, INIT, SIPI), for controllers
    /// that have them.
    fn set_event_notify(&self, _notify: IntrNotify) {}
    /// Takes the next CPU event (NMI, INIT, SIPI).
    fn take_event(&self) -> Option<CpuEvent> {
        None
    }
    /// Whether this controller delivers CPU events at all: then a CPU halted with IF
    /// clear, or waiting for SIPI, can still be woken.
    fn has_events(&self) -> bool {
        false
    }
}

/// The userspace 8259A pair as the CPU's interrupt controller.
#[derive(Clone)]
pub struct PicInterrupts(pub SharedPic);

impl InterruptController for PicInterrupts {
    fn pending(&self) -> bool {
        self.0.lock().pending()
    }

    fn acknowledge(&self) -> Option<u8> {
        let mut pic = self.0.lock();
        pic.pending().then(|| pic.acknowledge())
    }

    fn set_notify(&self, notify: IntrNotify) {
        self.0.lock().set_intr_notify(notify);
    }
}

/// Flags another thread raises for the vCPU thread, with a condition variable to sleep
/// on while halted. Raising a flag takes the lock before notifying, and the sleeper
/// checks the flags under that lock, so no wake-up is lost.
#[derive(Default)]
pub struct Signal {
    /// Flag `KICK`: return from `run`; `IRQ`: an interrupt may be pending at the
    /// controller (a hint: the controller decides); `EVENT`: a CPU event (NMI, INIT,
    /// SIPI) may be waiting at the controller. Raising one also closes the gate
    /// compiled code checks before chaining to the next block ([`Signal::gate`]).
    gate: Gate,
    lock: Mutex<()>,
    cv: Condvar,
    /// The doorbell of the round-robin group this vCPU belongs to: every raised flag
    /// rings it too, so the group's scheduler wakes for any of its vCPUs.
    doorbell: OnceLock<Arc<Doorbell>>,
}

/// A counter with a condition variable: the scheduler of several vCPUs sleeps on it
/// until any of their [`Signal`]s is raised. Reading the count before looking at the
/// vCPUs and waiting for it to change loses no wake-up.
#[derive(Default)]
pub struct Doorbell {
    rings: Mutex<u64>,
    cv: Condvar,
}

impl Doorbell {
    pub fn new() -> Arc<Doorbell> {
        Arc::new(Doorbell::default())
    }

    /// Rings: wakes a waiter.
    pub fn ring(&self) {
        *self.rings.lock() += 1;
        self.cv.notify_all();
    }

    /// The number of rings so far.
    pub fn count(&self) -> u64 {
        *self.rings.lock()
    }

    /// Sleeps until the count differs from `seen`.
    pub fn wait_past(&self, seen: u64) {
        let mut rings = self.rings.lock();
        while *rings == seen {
            self.cv.wait(&mut rings);
        }
    }
}

const KICK: usize = 0;
const IRQ: usize = 1;
const EVENT: usize = 2;
// (`Gate::raise` ignores a flag beyond its own: each of these must be one.)
const _: () = assert!(KICK < GATE_FLAGS && IRQ < GATE_FLAGS && EVENT < GATE_FLAGS);

impl Signal {
    pub fn new() -> Arc<Signal> {
        Arc::new(Signal::default())
    }

    /// The gate compiled code passes before chaining to the next block: closed by
    /// any raised flag, which means "return to the run loop".
    pub fn gate(&self) -> &Gate {
        &self.gate
    }

    fn wake(&self) {
        {
            let _guard = self.lock.lock();
            self.cv.notify_all();
        }
        if let Some(bell) = self.doorbell.get() {
            bell.ring();
        }
    }

    /// Makes every raised flag ring `bell` too (once; later calls are ignored).
    pub fn set_doorbell(&self, bell: Arc<Doorbell>) {
        let _ = self.doorbell.set(bell);
    }

    /// Asks the vCPU to return from `run` at the next block boundary.
    pub fn kick(&self) {
        self.gate.raise(KICK);
        self.wake();
    }

    /// Notes that the interrupt controller's output went up.
    pub fn raise_irq(&self) {
        self.gate.raise(IRQ);
        self.wake();
    }

    /// Notes that the controller has a CPU event.
    pub fn raise_event(&self) {
        self.gate.raise(EVENT);
        self.wake();
    }

    /// Whether a CPU event may be waiting (cheap: one relaxed load).
    pub fn event_hint(&self) -> bool {
        self.gate.hint(EVENT)
    }

    /// Takes the event hint (before asking the controller).
    pub fn take_event(&self) -> bool {
        self.gate.take(EVENT)
    }

    /// Takes the kick flag.
    pub fn take_kick(&self) -> bool {
        self.gate.hint(KICK) && self.gate.take(KICK)
    }

    /// Whether an interrupt may be pending (cheap: one relaxed load).
    pub fn irq_hint(&self) -> bool {
        self.gate.hint(IRQ)
    }

    /// Takes the interrupt hint (before asking the controller).
    pub fn take_irq(&self) -> bool {
        self.gate.take(IRQ)
    }

    /// Re-arms the interrupt hint (the controller may hold more requests).
    pub fn rearm_irq(&self) {
        self.gate.raise(IRQ);
    }

    /// Sleeps until a kick, an interrupt hint or an event hint (without taking any).
    pub fn wait(&self) {
        self.wait_for(true);
    }

    /// Sleeps until a kick or an event hint: interrupt hints do not wake (the CPU
    /// cannot take an interrupt now).
    pub fn wait_events(&self) {
        self.wait_for(false);
    }

    fn wait_for(&self, irq: bool) {
        let mut guard = self.lock.lock();
        let ready = || {
            self.gate.is_raised(KICK)
                || self.gate.is_raised(EVENT)
                || (irq && self.gate.is_raised(IRQ))
        };
        while !ready() {
            self.cv.wait(&mut guard);
        }
    }
}

impl VcpuKicker for Signal {
    fn kick(&self) {
        Signal::kick(self);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_returns_on_kick_from_another_thread() {
        let s = Signal::new();
        let s2 = s.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(20));
            s2.kick();
        });
        s.wait();
        assert!(s.take_kick());
        assert!(!s.take_kick());
        t.join().unwrap();
    }

    #[test]
    fn pic_requests_raise_the_hint_and_acknowledge_gives_the_vector() {
        // ICW1-4 as a PC BIOS does (vectors 0x08 and 0x70), IRQ 0 unmasked.
        let pic = crate::tests::pc_pic();
        let ic = PicInterrupts(pic.clone());
        let s = Signal::new();
        let s2 = s.clone();
        ic.set_notify(Box::new(move || s2.raise_irq()));
        assert!(!ic.pending() && !s.irq_hint());
        assert_eq!(ic.acknowledge(), None);
        pic.lock().set_irq(0, true);
        assert!(s.irq_hint() && ic.pending());
        s.wait(); // returns at once
        assert_eq!(ic.acknowledge(), Some(0x08));
        assert!(!ic.pending());
    }
}
