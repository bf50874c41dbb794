//! The virtual clock: the only source of time for devices.
//!
//! In host mode it follows the host's monotonic clock from machine start, except while
//! it is held ([`VirtualClock::hold`]): the TCG engine holds it while it translates,
//! so that the guest does not see the emulator's own pauses (a timing loop that meets
//! new code would otherwise measure the translator, and Linux's fast PIT calibration
//! of the TSC, which allows a few microseconds of jitter, fails and falls back to one
//! that costs a tenth of a second). In manual mode it only moves when told to:
//! deterministic runs drive it from the instruction count, unit tests step it by hand.

use parking_lot::{Condvar, Mutex};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Nanoseconds per second.
pub const NANOS_PER_SEC: u64 = 1_000_000_000;

enum Source {
    Host(HostTime),
    Manual(AtomicU64),
}

/// Host time from `start`, less the time the clock was held.
struct HostTime {
    start: Instant,
    /// Nanoseconds of host time (since `start`) at which the current hold began, or
    /// [`NOT_HELD`].
    held_at: AtomicU64,
    /// Total nanoseconds of the finished holds.
    held_total: AtomicU64,
    /// The last value read: readers never see the clock go back (a reader racing the
    /// end of a hold may combine the two fields from different moments).
    last: AtomicU64,
}

const NOT_HELD: u64 = u64::MAX;

impl HostTime {
    fn elapsed(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    fn now(&self) -> u64 {
        let at = self.held_at.load(Ordering::Acquire);
        let base = if at == NOT_HELD { self.elapsed() } else { at };
        let t = base.saturating_sub(self.held_total.load(Ordering::Acquire));
        self.last.fetch_max(t, Ordering::AcqRel).max(t)
    }
}

/// A monotonic nanosecond clock starting at 0 when the machine is created.
pub struct VirtualClock {
    source: Source,
}

impl VirtualClock {
    /// A clock that follows host time.
    pub fn host() -> Arc<VirtualClock> {
        Arc::new(VirtualClock {
            source: Source::Host(HostTime {
                start: Instant::now(),
                held_at: AtomicU64::new(NOT_HELD),
                held_total: AtomicU64::new(0),
                last: AtomicU64::new(0),
            }),
        })
    }

    /// A clock that only moves through [`VirtualClock::advance`] / [`VirtualClock::set`].
    pub fn manual() -> Arc<VirtualClock> {
        Arc::new(VirtualClock {
            source: Source::Manual(AtomicU64::new(0)),
        })
    }

    /// Nanoseconds since the machine started.
    pub fn now_ns(&self) -> u64 {
        match &self.source {
            Source::Host(h) => h.now(),
            Source::Manual(t) => t.load(Ordering::Acquire),
        }
    }

    /// Stops a host clock until [`VirtualClock::release`] (no effect on a manual
    /// clock, nor on one already held). For a single thread that runs every vCPU: the
    /// guest's time stands still for all of them, and for the devices.
    pub fn hold(&self) {
        if let Source::Host(h) = &self.source {
            let now = h.elapsed();
            let _ = h
                .held_at
                .compare_exchange(NOT_HELD, now, Ordering::AcqRel, Ordering::Acquire);
        }
    }

    /// Lets a held host clock go on from where it stood.
    pub fn release(&self) {
        if let Source::Host(h) = &self.source {
            let at = h.held_at.load(Ordering::Acquire);
            if at != NOT_HELD {
                h.held_total
                    .fetch_add(h.elapsed().saturating_sub(at), Ordering::AcqRel);
                h.held_at.store(NOT_HELD, Ordering::Release);
            }
        }
    }

    /// Whether the clock follows host time (timer threads may sleep on it).
    pub fn is_host(&self) -> bool {
        matches!(self.source, Source::Host(_))
    }

    /// Moves a manual clock forward by `ns` (no effect on a host clock).
    pub fn advance(&self, ns: u64) {
        if let Source::Manual(t) = &self.source {
            t.fetch_add(ns, Ordering::AcqRel);
        }
    }

    /// Sets a manual clock, never backwards (no effect on a host clock).
    pub fn set(&self, ns: u64) {
        if let Source::Manual(t) = &self.source {
            t.fetch_max(ns, Ordering::AcqRel);
        }
    }
}

/// Converts a tick count at `hz` to nanoseconds (saturating).
pub fn ticks_to_ns(ticks: u64, hz: u64) -> u64 {
    ((ticks as u128 * NANOS_PER_SEC as u128) / hz as u128).min(u64::MAX as u128) as u64
}

/// Converts nanoseconds to whole ticks at `hz`.
pub fn ns_to_ticks(ns: u64, hz: u64) -> u64 {
    ((ns as u128 * hz as u128) / NANOS_PER_SEC as u128) as u64
}

/// A device with time-driven behaviour (periodic IRQs, alarms, counters).
pub trait TimerDevice: Send {
    /// Does whatever became due at or before `now` (clock nanoseconds) and returns the
    /// next time the device needs to be polled, if any.
    fn poll_timer(&mut self, now: u64) -> Option<u64>;
}

/// Wakes the thread that sleeps until the next timer deadline, so that a device that
/// was just reprogrammed is polled again.
#[derive(Default)]
pub struct TimerWaker {
    kicked: Mutex<bool>,
    cv: Condvar,
}

impl TimerWaker {
    pub fn new() -> Arc<TimerWaker> {
        Arc::new(TimerWaker::default())
    }
    /// Asks the timer thread to re-poll now.
    pub fn wake(&self) {
        *self.kicked.lock() = true;
        self.cv.notify_all();
    }
    /// Sleeps for at most `timeout` or until woken. Returns whether it was woken.
    pub fn wait(&self, timeout: Option<Duration>) -> bool {
        let mut k = self.kicked.lock();
        if !*k {
            match timeout {
                Some(t) => {
                    self.cv.wait_for(&mut k, t);
                }
                None => self.cv.wait(&mut k),
            }
        }
        std::mem::replace(&mut *k, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told() {
        let c = VirtualClock::manual();
        assert_eq!(c.now_ns(), 0);
        c.advance(1500);
        c.set(1000); // never backwards
        assert_eq!(c.now_ns(), 1500);
        c.set(2000);
        assert_eq!(c.now_ns(), 2000);
    }

    #[test]
    fn host_clock_is_monotonic() {
        let c = VirtualClock::host();
        let a = c.now_ns();
        std::thread::sleep(Duration::from_millis(2));
        assert!(c.now_ns() >= a + 1_000_000);
    }

    #[test]
    fn a_held_host_clock_stands_still_and_goes_on_from_there() {
        let c = VirtualClock::host();
        std::thread::sleep(Duration::from_millis(2));
        c.hold();
        let a = c.now_ns();
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(c.now_ns(), a, "held");
        c.hold(); // already held: no new start
        c.release();
        let b = c.now_ns();
        assert!(b >= a && b < a + 20_000_000, "went on from {a}: {b}");
        c.release(); // not held: nothing
        std::thread::sleep(Duration::from_millis(2));
        let d = c.now_ns();
        assert!(d >= b + 1_000_000 && d < b + 30_000_000, "{b} -> {d}");
        // A manual clock ignores holds.
        let m = VirtualClock::manual();
        m.hold();
        m.advance(5);
        m.release();
        assert_eq!(m.now_ns(), 5);
    }

    #[test]
    fn tick_conversions() {
        assert_eq!(ticks_to_ns(1_193_182, 1_193_182), NANOS_PER_SEC);
        assert_eq!(ns_to_ticks(NANOS_PER_SEC, 32768), 32768);
        assert_eq!(ns_to_ticks(ticks_to_ns(1000, 1_193_182), 1_193_182), 999); // floor
    }

    #[test]
    fn waker_wakes() {
        let w = TimerWaker::new();
        w.wake();
        assert!(w.wait(Some(Duration::from_secs(5))));
        assert!(!w.wait(Some(Duration::from_millis(1))));
    }
}
