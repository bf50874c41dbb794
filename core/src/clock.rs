//! The virtual clock: the only source of time for devices.
//!
//! In host mode it follows the host's monotonic clock from machine start. In manual
//! mode it only moves when told to: deterministic runs drive it from the instruction
//! count, unit tests step it by hand.

use parking_lot::{Condvar, Mutex};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Nanoseconds per second.
pub const NANOS_PER_SEC: u64 = 1_000_000_000;

enum Source {
    Host(Instant),
    Manual(AtomicU64),
}

/// A monotonic nanosecond clock starting at 0 when the machine is created.
pub struct VirtualClock {
    source: Source,
}

impl VirtualClock {
    /// A clock that follows host time.
    pub fn host() -> Arc<VirtualClock> {
        Arc::new(VirtualClock {
            source: Source::Host(Instant::now()),
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
            Source::Host(start) => start.elapsed().as_nanos() as u64,
            Source::Manual(t) => t.load(Ordering::Acquire),
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
